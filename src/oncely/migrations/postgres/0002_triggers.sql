-- One row per trigger identity (a scheduler run, an idempotency key, an event): a retried
-- trigger finds its row and replays the recorded summary instead of running again.
CREATE TABLE oncely_triggers (
    id text PRIMARY KEY,
    route text NOT NULL,
    identity text NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    fence integer NOT NULL DEFAULT 1,
    worker text NOT NULL,
    started_at timestamptz NOT NULL,
    lease_expires_at timestamptz NOT NULL,
    finished_at timestamptz,
    summary jsonb
);
CREATE INDEX oncely_triggers_started ON oncely_triggers (started_at);
