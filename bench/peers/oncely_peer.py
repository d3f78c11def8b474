"""oncely through the library (the main venv): enqueue N no-op jobs with
``enqueue_many`` (bulk, one round trip), then drain them with one ``process()`` call.
Also times ``enqueue`` one job at a time for min(N, 1000) jobs (single).

    python oncely_peer.py STORE_URL N CONCURRENCY BATCH [sleep_ms]
"""

from __future__ import annotations

import asyncio
import sys
import time

import psycopg
from common import emit, measured

from oncely import Oncely


async def noop() -> None:
    pass


async def sleep10() -> None:
    await asyncio.sleep(0.01)


def jobs_conninfo(url: str) -> str:
    """libpq conninfo for an oncely store URL (``...?schema=s``)."""
    base, _, schema = url.partition("?schema=")
    return psycopg.conninfo.make_conninfo(base, options=f"-c search_path={schema}")


def main() -> None:
    url, n, concurrency, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    task = sleep10 if sys.argv[5:] == ["sleep"] else noop
    jobs = Oncely(url, concurrency=concurrency, batch_size=batch)
    jobs.task(noop)
    jobs.task(sleep10)
    try:
        single = min(n, 1000)
        started = time.perf_counter()
        for _ in range(single):
            jobs.enqueue(task)
        single_seconds = time.perf_counter() - started
        started = time.perf_counter()
        jobs.enqueue_many(task, [{} for _ in range(n - single)])
        report = {"jobs": n, "enqueue_seconds": time.perf_counter() - started,
                  "enqueue_bulk_jobs": n - single, "enqueue_single_seconds": single_seconds,
                  "enqueue_single_jobs": single}
        if url.startswith("postgresql"):  # fresh statistics, as the peer scripts do
            with psycopg.connect(jobs_conninfo(url), autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE oncely_jobs")
        with measured(report):
            summary = jobs.process(budget=3600)
        if summary.succeeded != n or summary.remaining:
            raise SystemExit(f"oncely processed {summary.succeeded} of {n}")
    finally:
        jobs.close()
    emit(report)


if __name__ == "__main__":
    main()
