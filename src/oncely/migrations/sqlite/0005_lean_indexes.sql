-- Fewer indexes on the hot path. A claim and a completion each rewrite the row with a
-- new state, so every index on oncely_jobs gets a new entry per write unless a partial
-- index leaves the row out. Before: 4 entries per write; after: 2 (the primary key and
-- the lease index on a claim, the primary key and the finished index on a completion).
-- The lease index is keyed on holding a lease instead of on state = 'running' (the
-- same rows: every write that ends a run clears the lease). A completion finds its
-- rows by id = ANY(...) AND state = 'running'; with the old predicate the planner,
-- misled by statistics that count no running rows, walked every held lease instead of
-- the primary key.
DROP INDEX oncely_jobs_leases;
CREATE INDEX oncely_jobs_leases ON oncely_jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
-- Jobs without a key are no longer in the key index at all:
DROP INDEX oncely_jobs_key_hold;
CREATE UNIQUE INDEX oncely_jobs_key_hold ON oncely_jobs (key_hold) WHERE key_hold IS NOT NULL;
-- Listing by state reads the index its state already has (due, leases, finished) or
-- walks the primary key; dead and cancelled jobs, rare and looked for, get their own:
DROP INDEX oncely_jobs_state_id;
CREATE INDEX oncely_jobs_failed ON oncely_jobs (id) WHERE state IN ('dead', 'cancelled');
