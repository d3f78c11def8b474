"""Procrastinate (its own venv): enqueue N no-op jobs with ``batch_defer_async``, drain
them with one worker.

    python procrastinate_peer.py CONNINFO N CONCURRENCY

Settings: ``concurrency=CONCURRENCY`` (default 1), ``wait=False`` (exit when the queue
is empty), ``listen_notify=False`` (nothing to wake: the queue is full when it starts),
the psycopg connector, everything else default.
"""

from __future__ import annotations

import asyncio
import sys
import time

import procrastinate
import psycopg
from common import emit, measured


async def main() -> None:
    conninfo, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name="noop")
    async def noop() -> None:
        pass

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        started = time.perf_counter()
        for i in range(0, n, 10000):
            await noop.batch_defer_async(*[{} for _ in range(min(10000, n - i))])
        report = {"jobs": n, "enqueue_seconds": time.perf_counter() - started}
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE procrastinate_jobs")
        with measured(report):
            await app.run_worker_async(concurrency=concurrency, wait=False,
                                       listen_notify=False, install_signal_handlers=False)
        with psycopg.connect(conninfo) as conn:
            row = conn.execute("SELECT count(*) FROM procrastinate_jobs "
                               "WHERE status <> 'succeeded'").fetchone()
        if row and row[0]:
            raise SystemExit(f"procrastinate left {row[0]} jobs")
    emit(report)


if __name__ == "__main__":
    asyncio.run(main())
