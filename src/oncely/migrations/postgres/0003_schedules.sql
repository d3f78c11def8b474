-- Periodic tasks: the occurrence a job runs for, each schedule's progress, and one row per
-- occurrence (enqueued, missed or paused). The primary key on (task, scheduled_for) is
-- what makes an occurrence fire once however many replicas receive the same tick.
ALTER TABLE oncely_jobs ADD COLUMN scheduled_for timestamptz;
CREATE TABLE oncely_schedules (
    task text PRIMARY KEY,
    created_at timestamptz NOT NULL,
    last_occurrence timestamptz,
    last_tick_at timestamptz,
    paused boolean NOT NULL DEFAULT false
);
CREATE TABLE oncely_occurrences (
    task text NOT NULL,
    scheduled_for timestamptz NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('enqueued', 'missed', 'paused')),
    job_id bigint,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (task, scheduled_for)
);
