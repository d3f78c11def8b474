-- Every statement oncely sends to PostgreSQL. One block per statement:
-- "-- name: <name>" followed by comment lines saying what it does, then the SQL.
-- Parameters use psycopg's %(name)s style.

-- name: schema_create
-- The table recording applied migrations.
CREATE TABLE IF NOT EXISTS oncely_schema (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL
);

-- name: schema_lock
-- Serialise migrations across processes for the rest of the transaction.
SELECT pg_advisory_xact_lock(7244518209114);

-- name: schema_version
SELECT coalesce(max(version), 0) AS version FROM oncely_schema;

-- name: schema_record
INSERT INTO oncely_schema (version, name, applied_at) VALUES (%(version)s, %(name)s, %(now)s);

-- name: job_release_key
-- Let a key go once its succeeded job is older than the retention window.
UPDATE oncely_jobs SET key_hold = NULL
WHERE key_hold = %(key)s AND state = 'succeeded' AND finished_at < %(retained_after)s;

-- name: job_insert
-- Insert a job; a job already holding the same key wins and nothing is inserted.
INSERT INTO oncely_jobs (task, queue, args, key, key_hold, priority, run_at, created_at, max_attempts, scheduled_for)
VALUES (%(task)s, %(queue)s, %(args)s::jsonb, %(key)s, %(key)s, %(priority)s, %(run_at)s, %(now)s, %(max_attempts)s, %(scheduled_for)s)
ON CONFLICT (key_hold) WHERE key_hold IS NOT NULL DO NOTHING
RETURNING *;

-- name: job_get_by_key
-- The job currently holding a key.
SELECT * FROM oncely_jobs WHERE key_hold = %(key)s;

-- name: job_insert_many
-- Bulk insert of jobs without keys.
INSERT INTO oncely_jobs (task, queue, args, priority, run_at, created_at, max_attempts)
SELECT t.task, t.queue, t.args::jsonb, t.priority, t.run_at, %(now)s, t.max_attempts
FROM unnest(%(tasks)s::text[], %(queues)s::text[], %(args)s::text[], %(priorities)s::smallint[],
            %(run_ats)s::timestamptz[], %(max_attempts)s::integer[])
    AS t(task, queue, args, priority, run_at, max_attempts)
RETURNING id;

-- name: job_claim
-- Claim up to %(limit)s due jobs of the given tasks in priority order, skipping rows
-- another worker holds. Each claimed job gets a lease and a new fence. Returns only
-- the columns the claim did not set itself (the store fills in the rest; a claimable
-- job has no result, and errors is NULL while it has none).
-- The picked ids go through an array, not a join: a join lets the planner choose a
-- hash join over a scan of the whole table when its statistics are stale (they are
-- whenever the queue moved since the last ANALYZE); id = ANY(array) is always the
-- primary key.
UPDATE oncely_jobs AS j
SET state = 'running', attempt = j.attempt + 1, fence = j.fence + 1,
    attempted_at = %(now)s, attempted_by = %(worker)s, lease_expires_at = %(lease_until)s
WHERE j.id = ANY(ARRAY(
    SELECT id FROM oncely_jobs
    WHERE state IN ('pending', 'retrying') AND run_at <= %(now)s
      AND task = ANY(%(tasks)s::text[])
      AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
RETURNING j.id, j.task, j.queue, j.args, j.key, j.priority, j.run_at, j.created_at, j.attempt,
    j.max_attempts, j.fence, nullif(j.errors, '[]'::jsonb), j.scheduled_for;

-- name: job_heartbeat
-- Extend the leases of jobs this worker still holds; returns the ids it still holds.
-- %(fences)s[i] is the fence of %(ids)s[i]. Rows are found by id = ANY (the primary
-- key, whatever the statistics say) and each checked against its own fence by position:
-- no join, so no plan that rescans the arrays or the table.
UPDATE oncely_jobs SET lease_expires_at = %(lease_until)s
WHERE id = ANY(%(ids)s::bigint[]) AND state = 'running'
  AND fence = (%(fences)s::integer[])[array_position(%(ids)s::bigint[], id)]
RETURNING id;

-- name: job_complete
-- Apply attempt outcomes, fenced: a row is written only while it is still running
-- under the fence of the claim. Returns the ids written; the others lost their lease.
UPDATE oncely_jobs AS j
SET state = c.state,
    result = c.result::jsonb,
    run_at = coalesce(c.run_at, j.run_at),
    finished_at = CASE WHEN c.state IN ('succeeded', 'dead') THEN c.at END,
    lease_expires_at = NULL,
    errors = CASE WHEN c.error IS NULL THEN j.errors ELSE j.errors || jsonb_build_array(c.error::jsonb) END,
    key_hold = CASE WHEN c.state = 'dead' THEN NULL ELSE j.key_hold END
FROM unnest(%(ids)s::bigint[], %(fences)s::integer[], %(states)s::text[], %(results)s::text[],
            %(errors)s::text[], %(run_ats)s::timestamptz[], %(ats)s::timestamptz[])
    AS c(id, fence, state, result, error, run_at, at)
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = c.id AND j.fence = c.fence
  AND j.state = 'running'
RETURNING j.id;

-- name: job_rescue
-- Jobs whose lease expired (the worker died or stalled) become claimable again, or
-- dead when that was their last attempt. The lost attempt is recorded as an error.
UPDATE oncely_jobs AS j
SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'dead' ELSE 'retrying' END,
    finished_at = CASE WHEN j.attempt >= j.max_attempts THEN %(now)s::timestamptz END,
    run_at = %(now)s,
    lease_expires_at = NULL,
    key_hold = CASE WHEN j.attempt >= j.max_attempts THEN NULL ELSE j.key_hold END,
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'attempt', j.attempt, 'at', %(now)s::timestamptz, 'started_at', j.attempted_at,
        'worker', j.attempted_by,
        'error', 'LeaseExpired: the worker stopped renewing its lease (it died or stalled)'))
FROM (
    SELECT id FROM oncely_jobs
    WHERE state = 'running' AND lease_expires_at <= %(now)s
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS expired
WHERE j.id = expired.id
RETURNING j.id, j.state, j.attempted_by;

-- name: job_get
SELECT * FROM oncely_jobs WHERE id = %(id)s;

-- name: job_list
-- Newest first, keyset-paginated by id.
SELECT * FROM oncely_jobs
WHERE (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: job_count_due
SELECT count(*) AS n FROM oncely_jobs
WHERE state IN ('pending', 'retrying') AND run_at <= %(now)s
  AND task = ANY(%(tasks)s::text[])
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]));

-- name: job_count_by_state
SELECT state, count(*) AS n FROM oncely_jobs GROUP BY state;

-- name: job_cancel
-- Cancel a job that has not finished. A running handler is not interrupted, but its
-- completion is fenced out because the row is no longer running.
UPDATE oncely_jobs
SET state = 'cancelled', finished_at = %(now)s, lease_expires_at = NULL, key_hold = NULL
WHERE id = %(id)s AND state IN ('pending', 'retrying', 'running')
RETURNING *;

-- name: job_retry
-- Run a dead or cancelled job again now, with at least one more attempt.
UPDATE oncely_jobs
SET state = 'pending', run_at = %(now)s, finished_at = NULL, key_hold = key,
    max_attempts = greatest(max_attempts, attempt + 1)
WHERE id = %(id)s AND state IN ('dead', 'cancelled')
RETURNING *;

-- name: trigger_begin
-- Start a trigger. A new identity inserts a running row; an identity whose earlier
-- run failed, or whose replica died (lease expired), is taken over with a new fence.
-- No row comes back when the identity is done or still running elsewhere.
INSERT INTO oncely_triggers AS t (id, route, identity, state, worker, started_at, lease_expires_at)
VALUES (%(id)s, %(route)s, %(identity)s, 'running', %(worker)s, %(now)s, %(lease_until)s)
ON CONFLICT (id) DO UPDATE
SET state = 'running', fence = t.fence + 1, worker = excluded.worker,
    started_at = excluded.started_at, lease_expires_at = excluded.lease_expires_at,
    finished_at = NULL, summary = NULL
WHERE t.state = 'failed' OR (t.state = 'running' AND t.lease_expires_at <= excluded.started_at)
RETURNING *;

-- name: trigger_finish
-- Record how a trigger ended, fenced like a job completion.
UPDATE oncely_triggers
SET state = %(state)s, finished_at = %(now)s, summary = %(summary)s::jsonb
WHERE id = %(id)s AND fence = %(fence)s AND state = 'running'
RETURNING id;

-- name: trigger_get
SELECT * FROM oncely_triggers WHERE id = %(id)s;

-- name: schedule_register
-- Know a periodic task from now on (missed occurrences are counted from its first sight).
INSERT INTO oncely_schedules (task, created_at) VALUES (%(task)s, %(now)s)
ON CONFLICT (task) DO NOTHING;

-- name: schedule_list
SELECT * FROM oncely_schedules ORDER BY task;

-- name: schedule_touch
-- A tick arrived for this task.
UPDATE oncely_schedules SET last_tick_at = %(now)s WHERE task = %(task)s;

-- name: schedule_set_paused
UPDATE oncely_schedules SET paused = %(paused)s WHERE task = %(task)s RETURNING task;

-- name: occurrence_insert
-- Record an occurrence once: a second tick for the same (task, time) inserts nothing.
INSERT INTO oncely_occurrences (task, scheduled_for, outcome, recorded_at)
VALUES (%(task)s, %(scheduled_for)s, %(outcome)s, %(now)s)
ON CONFLICT (task, scheduled_for) DO NOTHING
RETURNING task;

-- name: occurrence_set_job
UPDATE oncely_occurrences SET job_id = %(job_id)s
WHERE task = %(task)s AND scheduled_for = %(scheduled_for)s;

-- name: schedule_advance
-- The last occurrence seen only moves forward (a late or reordered tick cannot move it back).
UPDATE oncely_schedules SET last_occurrence = %(scheduled_for)s
WHERE task = %(task)s AND (last_occurrence IS NULL OR last_occurrence < %(scheduled_for)s);

-- name: occurrence_list
-- The most recent occurrences of a task.
SELECT * FROM oncely_occurrences WHERE task = %(task)s ORDER BY scheduled_for DESC LIMIT %(limit)s;

-- name: job_health
-- What an external monitor alerts on: the oldest due job (queue lag) and recent deaths.
SELECT
    (SELECT min(run_at) FROM oncely_jobs
     WHERE state IN ('pending', 'retrying') AND run_at <= %(now)s) AS oldest_due,
    (SELECT count(*) FROM oncely_jobs
     WHERE state = 'dead' AND finished_at >= %(since)s) AS dead_since;

-- name: job_prune
-- Delete finished jobs older than the retention window, a bounded batch at a time.
-- finished_at is set exactly while a job is succeeded, dead or cancelled (the finished
-- index's predicate, which the comparison implies).
DELETE FROM oncely_jobs WHERE id IN (
    SELECT id FROM oncely_jobs
    WHERE finished_at < %(before)s
    LIMIT %(limit)s
);

-- name: trigger_prune
DELETE FROM oncely_triggers WHERE id IN (
    SELECT id FROM oncely_triggers
    WHERE state <> 'running' AND started_at < %(before)s
    LIMIT %(limit)s
);

-- name: occurrence_prune
DELETE FROM oncely_occurrences WHERE (task, scheduled_for) IN (
    SELECT task, scheduled_for FROM oncely_occurrences
    WHERE recorded_at < %(before)s
    LIMIT %(limit)s
);

-- name: job_complete_succeeded
-- The common outcome in a lighter statement: jobs that succeeded, fenced as in
-- job_complete, all recorded as finished at %(at)s (when the batch was written).
-- Arrays by position as in job_heartbeat; %(results)s may be NULL when no job returned
-- anything.
UPDATE oncely_jobs
SET state = 'succeeded', finished_at = %(at)s, lease_expires_at = NULL,
    result = (%(results)s::jsonb[])[array_position(%(ids)s::bigint[], id)]
WHERE id = ANY(%(ids)s::bigint[]) AND state = 'running'
  AND fence = (%(fences)s::integer[])[array_position(%(ids)s::bigint[], id)]
RETURNING id;
