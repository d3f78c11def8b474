"""PgQueuer (its own venv): enqueue N no-op jobs in one batch, drain them with one
QueueManager over asyncpg (its fastest driver) in ``mode=drain``.

    python pgqueuer_peer.py DSN N BATCH

Settings: ``batch_size=BATCH`` (documented default 10; the knob its docs and benchmark
tool turn for throughput), ``max_concurrent_tasks`` unlimited (the default),
durability ``durable`` (the default, as durable as oncely), everything else default.
"""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg
from common import emit, measured
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode


async def main() -> None:
    dsn, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    await queries.uninstall() if await conn.fetchval(
        "SELECT to_regclass('pgqueuer') IS NOT NULL") else None
    await queries.install()
    started = time.perf_counter()
    for i in range(0, n, 10000):
        k = min(10000, n - i)
        await queries.enqueue(["noop"] * k, [None] * k, [0] * k)
    report = {"jobs": n, "enqueue_seconds": time.perf_counter() - started}
    await conn.execute("VACUUM ANALYZE pgqueuer")

    qm = QueueManager(Queries(AsyncpgDriver(await asyncpg.connect(dsn))))

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        pass

    with measured(report):
        await qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
    left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
    if left:
        raise SystemExit(f"pgqueuer left {left} jobs")
    emit(report)


if __name__ == "__main__":
    asyncio.run(main())
