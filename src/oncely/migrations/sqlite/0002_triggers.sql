-- One row per trigger identity (a scheduler run, an idempotency key, an event): a retried
-- trigger finds its row and replays the recorded summary instead of running again.
CREATE TABLE oncely_triggers (
    id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    identity TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    fence INTEGER NOT NULL DEFAULT 1,
    worker TEXT NOT NULL,
    started_at TEXT NOT NULL,
    lease_expires_at TEXT NOT NULL,
    finished_at TEXT,
    summary TEXT
);
CREATE INDEX oncely_triggers_started ON oncely_triggers (started_at);
