"""The floor: a plain ``FOR UPDATE SKIP LOCKED`` loop on its own minimal table.

    python plain.py CONNINFO N BATCH

One sync psycopg connection; each round is BEGIN; SELECT id ... ORDER BY id LIMIT
BATCH FOR UPDATE SKIP LOCKED; UPDATE ... SET state = 'done' WHERE id = ANY(...);
COMMIT. BATCH=1 is the one-job-per-round-trip loop.
"""

from __future__ import annotations

import sys
import time

import psycopg
from common import emit, measured

SETUP = """
DROP TABLE IF EXISTS plain_jobs;
CREATE TABLE plain_jobs (id bigserial PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
                         payload jsonb NOT NULL DEFAULT '{}', finished_at timestamptz);
CREATE INDEX plain_jobs_due ON plain_jobs (id) WHERE state = 'pending';
"""
PICK = ("SELECT id FROM plain_jobs WHERE state = 'pending' ORDER BY id LIMIT %s "
        "FOR UPDATE SKIP LOCKED")
DONE = "UPDATE plain_jobs SET state = 'done', finished_at = now() WHERE id = ANY(%s)"


def main() -> None:
    conninfo, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(SETUP)
        started = time.perf_counter()
        conn.execute("INSERT INTO plain_jobs (payload) SELECT '{}' FROM generate_series(1, %s)",
                     (n,))
        report = {"jobs": 0, "enqueue_seconds": time.perf_counter() - started}
        conn.execute("VACUUM ANALYZE plain_jobs")
        conn.autocommit = False
        with measured(report):
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
