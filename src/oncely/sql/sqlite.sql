-- Every statement oncely sends to SQLite. One block per statement:
-- "-- name: <name>" followed by comment lines saying what it does, then the SQL.
-- Parameters use the :name style. Lists arrive as JSON arrays, read with json_each.

-- name: schema_create
-- The table recording applied migrations.
CREATE TABLE IF NOT EXISTS oncely_schema (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
);

-- name: schema_version
SELECT coalesce(max(version), 0) AS version FROM oncely_schema;

-- name: schema_record
INSERT INTO oncely_schema (version, name, applied_at) VALUES (:version, :name, :now);

-- name: job_release_key
-- Let a key go once its succeeded job is older than the retention window.
UPDATE oncely_jobs SET key_hold = NULL
WHERE key_hold = :key AND state = 'succeeded' AND finished_at < :retained_after;

-- name: job_insert
-- Insert a job; a job already holding the same key wins and nothing is inserted.
INSERT INTO oncely_jobs (task, queue, args, key, key_hold, priority, run_at, created_at, max_attempts, scheduled_for)
VALUES (:task, :queue, :args, :key, :key, :priority, :run_at, :now, :max_attempts, :scheduled_for)
ON CONFLICT (key_hold) WHERE key_hold IS NOT NULL DO NOTHING
RETURNING *;

-- name: job_get_by_key
-- The job currently holding a key.
SELECT * FROM oncely_jobs WHERE key_hold = :key;

-- name: job_insert_many
-- Insert one job without a key; the store runs it for each job in one transaction.
INSERT INTO oncely_jobs (task, queue, args, priority, run_at, created_at, max_attempts)
VALUES (:task, :queue, :args, :priority, :run_at, :now, :max_attempts)
RETURNING id;

-- name: job_claim_pick
-- The first half of a claim, inside a BEGIN IMMEDIATE transaction (SQLite has one
-- writer at a time, so no row is seen by two claimers): up to :limit due jobs of the
-- given tasks in priority order. Returns one row: the picked ids and the picked jobs,
-- each a JSON array, with attempt and fence as job_claim sets them; the store fills in
-- the rest (a claimable job has no result, and errors is null while it has none).
-- One row, not one per job: the sqlite3 module releases and retakes the GIL around
-- every step, and each retake waits for the event loop thread (bench/README.md).
-- INDEXED BY: left to itself, SQLite reads another index and sorts every due job.
SELECT json_group_array(id),
       json_group_array(json_array(id, task, queue, json(args), key, priority, run_at,
                                   created_at, attempt + 1, max_attempts, fence + 1,
                                   json(nullif(errors, '[]')), scheduled_for))
FROM (SELECT * FROM oncely_jobs INDEXED BY oncely_jobs_due
      WHERE state IN ('pending', 'retrying') AND run_at <= :now
        AND task IN (SELECT value FROM json_each(:tasks))
        AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
      ORDER BY priority, run_at, id
      LIMIT :limit);

-- name: job_claim
-- The second half, in the same transaction: the picked jobs (:ids, a JSON array) get a
-- lease and a new fence.
UPDATE oncely_jobs
SET state = 'running', attempt = attempt + 1, fence = fence + 1,
    attempted_at = :now, attempted_by = :worker, lease_expires_at = :lease_until
WHERE id IN (SELECT value FROM json_each(:ids));

-- name: job_heartbeat
-- Extend the lease of one job this worker still holds.
UPDATE oncely_jobs SET lease_expires_at = :lease_until
WHERE id = :id AND fence = :fence AND state = 'running';

-- name: job_complete
-- Apply one attempt's outcome, fenced: written only while the row is still running
-- under the fence of the claim.
UPDATE oncely_jobs
SET state = :state,
    result = :result,
    run_at = coalesce(:run_at, run_at),
    finished_at = CASE WHEN :state IN ('succeeded', 'dead') THEN :at END,
    lease_expires_at = NULL,
    errors = CASE WHEN :error IS NULL THEN errors ELSE json_insert(errors, '$[#]', json(:error)) END,
    key_hold = CASE WHEN :state = 'dead' THEN NULL ELSE key_hold END
WHERE id = :id AND fence = :fence AND state = 'running';

-- name: job_rescue
-- Jobs whose lease expired (the worker died or stalled) become claimable again, or
-- dead when that was their last attempt. The lost attempt is recorded as an error.
UPDATE oncely_jobs
SET state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'retrying' END,
    finished_at = CASE WHEN attempt >= max_attempts THEN :now END,
    run_at = :now,
    lease_expires_at = NULL,
    key_hold = CASE WHEN attempt >= max_attempts THEN NULL ELSE key_hold END,
    errors = json_insert(errors, '$[#]', json_object(
        'attempt', attempt, 'at', :now, 'started_at', attempted_at, 'worker', attempted_by,
        'error', 'LeaseExpired: the worker stopped renewing its lease (it died or stalled)'))
WHERE id IN (
    SELECT id FROM oncely_jobs
    WHERE state = 'running' AND lease_expires_at <= :now
    ORDER BY lease_expires_at
    LIMIT :limit
)
RETURNING id, state, attempted_by;

-- name: job_get
SELECT * FROM oncely_jobs WHERE id = :id;

-- name: job_list
-- Newest first, keyset-paginated by id.
SELECT * FROM oncely_jobs
WHERE (:state IS NULL OR state = :state)
  AND (:task IS NULL OR task = :task)
  AND (:before_id IS NULL OR id < :before_id)
ORDER BY id DESC
LIMIT :limit;

-- name: job_count_due
SELECT count(*) AS n FROM oncely_jobs
WHERE state IN ('pending', 'retrying') AND run_at <= :now
  AND task IN (SELECT value FROM json_each(:tasks))
  AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)));

-- name: job_count_by_state
SELECT state, count(*) AS n FROM oncely_jobs GROUP BY state;

-- name: job_cancel
-- Cancel a job that has not finished. A running handler is not interrupted, but its
-- completion is fenced out because the row is no longer running.
UPDATE oncely_jobs
SET state = 'cancelled', finished_at = :now, lease_expires_at = NULL, key_hold = NULL
WHERE id = :id AND state IN ('pending', 'retrying', 'running')
RETURNING *;

-- name: job_retry
-- Run a dead or cancelled job again now, with at least one more attempt.
UPDATE oncely_jobs
SET state = 'pending', run_at = :now, finished_at = NULL, key_hold = key,
    max_attempts = max(max_attempts, attempt + 1)
WHERE id = :id AND state IN ('dead', 'cancelled')
RETURNING *;

-- name: trigger_begin
-- Start a trigger. A new identity inserts a running row; an identity whose earlier
-- run failed, or whose replica died (lease expired), is taken over with a new fence.
-- No row comes back when the identity is done or still running elsewhere.
INSERT INTO oncely_triggers AS t (id, route, identity, state, worker, started_at, lease_expires_at)
VALUES (:id, :route, :identity, 'running', :worker, :now, :lease_until)
ON CONFLICT (id) DO UPDATE
SET state = 'running', fence = t.fence + 1, worker = excluded.worker,
    started_at = excluded.started_at, lease_expires_at = excluded.lease_expires_at,
    finished_at = NULL, summary = NULL
WHERE t.state = 'failed' OR (t.state = 'running' AND t.lease_expires_at <= excluded.started_at)
RETURNING *;

-- name: trigger_finish
-- Record how a trigger ended, fenced like a job completion.
UPDATE oncely_triggers
SET state = :state, finished_at = :now, summary = :summary
WHERE id = :id AND fence = :fence AND state = 'running'
RETURNING id;

-- name: trigger_get
SELECT * FROM oncely_triggers WHERE id = :id;

-- name: schedule_register
-- Know a periodic task from now on (missed occurrences are counted from its first sight).
INSERT INTO oncely_schedules (task, created_at) VALUES (:task, :now)
ON CONFLICT (task) DO NOTHING;

-- name: schedule_list
SELECT * FROM oncely_schedules ORDER BY task;

-- name: schedule_touch
-- A tick arrived for this task.
UPDATE oncely_schedules SET last_tick_at = :now WHERE task = :task;

-- name: schedule_set_paused
UPDATE oncely_schedules SET paused = :paused WHERE task = :task RETURNING task;

-- name: occurrence_insert
-- Record an occurrence once: a second tick for the same (task, time) inserts nothing.
INSERT INTO oncely_occurrences (task, scheduled_for, outcome, recorded_at)
VALUES (:task, :scheduled_for, :outcome, :now)
ON CONFLICT (task, scheduled_for) DO NOTHING
RETURNING task;

-- name: occurrence_set_job
UPDATE oncely_occurrences SET job_id = :job_id
WHERE task = :task AND scheduled_for = :scheduled_for;

-- name: schedule_advance
-- The last occurrence seen only moves forward (a late or reordered tick cannot move it back).
UPDATE oncely_schedules SET last_occurrence = :scheduled_for
WHERE task = :task AND (last_occurrence IS NULL OR last_occurrence < :scheduled_for);

-- name: occurrence_list
-- The most recent occurrences of a task.
SELECT * FROM oncely_occurrences WHERE task = :task ORDER BY scheduled_for DESC LIMIT :limit;

-- name: job_health
-- What an external monitor alerts on: the oldest due job (queue lag) and recent deaths.
SELECT
    (SELECT min(run_at) FROM oncely_jobs
     WHERE state IN ('pending', 'retrying') AND run_at <= :now) AS oldest_due,
    (SELECT count(*) FROM oncely_jobs
     WHERE state = 'dead' AND finished_at >= :since) AS dead_since;

-- name: job_prune
-- Delete finished jobs older than the retention window, a bounded batch at a time.
-- finished_at is set exactly while a job is succeeded, dead or cancelled (the finished
-- index's predicate, which the comparison implies).
DELETE FROM oncely_jobs WHERE id IN (
    SELECT id FROM oncely_jobs
    WHERE finished_at < :before
    LIMIT :limit
);

-- name: trigger_prune
DELETE FROM oncely_triggers WHERE id IN (
    SELECT id FROM oncely_triggers
    WHERE state <> 'running' AND started_at < :before
    LIMIT :limit
);

-- name: occurrence_prune
DELETE FROM oncely_occurrences WHERE (task, scheduled_for) IN (
    SELECT task, scheduled_for FROM oncely_occurrences
    WHERE recorded_at < :before
    LIMIT :limit
);

-- name: job_complete_succeeded
-- The common outcome in one statement for a batch: jobs that succeeded, fenced as in
-- job_complete. :done is a JSON array of [id, fence, result JSON or null]. No RETURNING
-- (a step per row, each retaking the GIL): when changes() is the batch's size every
-- job was written; otherwise the store rolls back and asks job_complete_held first.
-- (The + keeps the planner off the state index, so it looks the batch up by id instead
-- of scanning every running row.)
UPDATE oncely_jobs
SET state = 'succeeded', result = c.result, finished_at = :at, lease_expires_at = NULL
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS fence,
             json_extract(value, '$[2]') AS result
      FROM json_each(:done)) AS c
WHERE oncely_jobs.id = c.id AND oncely_jobs.fence = c.fence AND +oncely_jobs.state = 'running';

-- name: job_complete_held
-- The jobs of :done still running under their fence: the ones job_complete_succeeded
-- will write, asked in its transaction just before it when some job lost its lease.
SELECT json_group_array(oncely_jobs.id)
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS fence
      FROM json_each(:done)) AS c
JOIN oncely_jobs ON oncely_jobs.id = c.id
WHERE oncely_jobs.fence = c.fence AND +oncely_jobs.state = 'running';
