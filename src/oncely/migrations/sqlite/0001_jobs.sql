-- The job table. Every statement ends with a semicolon at the end of a line.
-- Times are TEXT in one fixed-width UTC format, 'YYYY-MM-DDTHH:MM:SS.ffffff+00:00',
-- so they sort and compare as strings.
CREATE TABLE oncely_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    args TEXT NOT NULL CHECK (json_valid(args)),
    key TEXT,
    key_hold TEXT,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'retrying', 'succeeded', 'dead', 'cancelled')),
    priority INTEGER NOT NULL DEFAULT 0,
    run_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL CHECK (max_attempts > 0),
    fence INTEGER NOT NULL DEFAULT 0,
    attempted_at TEXT,
    attempted_by TEXT,
    lease_expires_at TEXT,
    finished_at TEXT,
    result TEXT,
    errors TEXT NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX oncely_jobs_key_hold ON oncely_jobs (key_hold);
CREATE INDEX oncely_jobs_due ON oncely_jobs (priority, run_at, id) WHERE state IN ('pending', 'retrying');
CREATE INDEX oncely_jobs_leases ON oncely_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX oncely_jobs_state_id ON oncely_jobs (state, id);
