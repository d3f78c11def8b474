"""The floor: plain ``FOR UPDATE SKIP LOCKED`` loops on their own minimal table.

    python plain.py CONNINFO N BATCH [lease]

One sync psycopg connection. Each round of the default loop is BEGIN; SELECT id ...
ORDER BY id LIMIT BATCH FOR UPDATE SKIP LOCKED; UPDATE ... SET state = 'done' WHERE
id = ANY(...); COMMIT: one write per job, inside the transaction that locked it (a job
in flight holds a transaction open). BATCH=1 is the one-job-per-round-trip loop.

``lease`` is the same loop with the guarantee oncely gives: the claim commits a lease
and a new fence before the jobs run (so a job in flight holds no transaction, and a
dead worker's jobs come back when the lease ends), and the completion is a second,
fenced write. Two writes per job: the SQL floor of a leased job queue.
"""

from __future__ import annotations

import sys
import time

import psycopg
from common import emit, measured

SETUP = """
DROP TABLE IF EXISTS plain_jobs;
CREATE TABLE plain_jobs (id bigserial PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
                         payload jsonb NOT NULL DEFAULT '{}', fence integer NOT NULL DEFAULT 0,
                         lease_expires_at timestamptz, finished_at timestamptz);
CREATE INDEX plain_jobs_due ON plain_jobs (id) WHERE state = 'pending';
CREATE INDEX plain_jobs_leases ON plain_jobs (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
"""
PICK = ("SELECT id FROM plain_jobs WHERE state = 'pending' ORDER BY id LIMIT %s "
        "FOR UPDATE SKIP LOCKED")
DONE = "UPDATE plain_jobs SET state = 'done', finished_at = now() WHERE id = ANY(%s)"
CLAIM = """UPDATE plain_jobs SET state = 'running', fence = fence + 1,
    lease_expires_at = now() + interval '30 seconds'
WHERE id = ANY(ARRAY(SELECT id FROM plain_jobs WHERE state = 'pending' ORDER BY id
                     LIMIT %s FOR UPDATE SKIP LOCKED))
RETURNING id, fence"""
COMPLETE = """UPDATE plain_jobs SET state = 'done', finished_at = now(), lease_expires_at = NULL
WHERE id = ANY(%(ids)s) AND state = 'running'
  AND fence = (%(fences)s::integer[])[array_position(%(ids)s::bigint[], id)]"""


def main() -> None:
    conninfo, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    lease = sys.argv[4:] == ["lease"]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(SETUP)
        started = time.perf_counter()
        conn.execute("INSERT INTO plain_jobs (payload) SELECT '{}' FROM generate_series(1, %s)",
                     (n,))
        report = {"jobs": 0, "enqueue_seconds": time.perf_counter() - started}
        conn.execute("VACUUM ANALYZE plain_jobs")
        with measured(report):
            if lease:
                while claimed := conn.execute(CLAIM, (batch,)).fetchall():
                    ids, fences = [r[0] for r in claimed], [r[1] for r in claimed]
                    conn.execute(COMPLETE, {"ids": ids, "fences": fences})
                    report["jobs"] += len(ids)
            else:
                conn.autocommit = False
                while True:
                    with conn.transaction():
                        ids = [r[0] for r in conn.execute(PICK, (batch,)).fetchall()]
                        if not ids:
                            break
                        conn.execute(DONE, (ids,))
                    report["jobs"] += len(ids)
                conn.autocommit = True
        conn.execute("DROP TABLE plain_jobs")
    emit(report)


if __name__ == "__main__":
    main()
