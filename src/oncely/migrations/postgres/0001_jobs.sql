-- The job table. Every statement ends with a semicolon at the end of a line.
CREATE TABLE oncely_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task text NOT NULL,
    queue text NOT NULL,
    args jsonb NOT NULL,
    key text,
    key_hold text,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'retrying', 'succeeded', 'dead', 'cancelled')),
    priority smallint NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    attempt integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL CHECK (max_attempts > 0),
    fence integer NOT NULL DEFAULT 0,
    attempted_at timestamptz,
    attempted_by text,
    lease_expires_at timestamptz,
    finished_at timestamptz,
    result jsonb,
    errors jsonb NOT NULL DEFAULT '[]'
);
-- A key is held while its job is pending, running, retrying or succeeded (until the
-- retention window passes); dead and cancelled jobs release it.
CREATE UNIQUE INDEX oncely_jobs_key_hold ON oncely_jobs (key_hold);
-- What claims read: due jobs in priority order. Partial, so finished rows cost nothing.
CREATE INDEX oncely_jobs_due ON oncely_jobs (priority, run_at, id) WHERE state IN ('pending', 'retrying');
-- What the lease rescuer reads.
CREATE INDEX oncely_jobs_leases ON oncely_jobs (lease_expires_at) WHERE state = 'running';
-- What listings read.
CREATE INDEX oncely_jobs_state_id ON oncely_jobs (state, id);
