-- The finished index is keyed on finished_at being set, which holds for exactly the
-- finished states (succeeded, dead, cancelled), as in the SQLite schema. There the old
-- predicate (state IN three values) cost every claim and completion ~2 us; PostgreSQL
-- tests such a list cheaply, and this migration keeps the two schemas alike.
DROP INDEX oncely_jobs_finished;
CREATE INDEX oncely_jobs_finished ON oncely_jobs (finished_at) WHERE finished_at IS NOT NULL;
