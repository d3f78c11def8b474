-- Periodic tasks: the occurrence a job runs for, each schedule's progress, and one row per
-- occurrence (enqueued, missed or paused). The primary key on (task, scheduled_for) is
-- what makes an occurrence fire once however many replicas receive the same tick.
ALTER TABLE oncely_jobs ADD COLUMN scheduled_for TEXT;
CREATE TABLE oncely_schedules (
    task TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    last_occurrence TEXT,
    last_tick_at TEXT,
    paused INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE oncely_occurrences (
    task TEXT NOT NULL,
    scheduled_for TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('enqueued', 'missed', 'paused')),
    job_id INTEGER,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (task, scheduled_for)
);
