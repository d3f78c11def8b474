"""CPU per job of oncely's runner alone: claim, run, complete against a store that keeps
nothing, so the figure is the Python a job costs before any database work.

    .venv/bin/python bench/runner_overhead.py [--jobs 200000] [--runs 3]

Used in bench/README.md to split a drain's client CPU into the runner's share and the
store's (psycopg or sqlite3, row decoding, parameters).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from oncely import Oncely
from oncely.model import Completion, JobRecord, JobState
from oncely.worker import Runner


class NullStore:
    """Hands out N jobs in batches and accepts every completion."""

    def __init__(self, jobs: int):
        self.left, self.next_id = jobs, 1

    async def job_rescue(self, now: datetime) -> list[Any]:
        return []

    async def job_claim(self, *, tasks: Sequence[str], queues: Any, limit: int, worker: str,
                        now: datetime, lease_until: datetime) -> list[JobRecord]:
        n = min(limit, self.left)
        first, self.next_id, self.left = self.next_id, self.next_id + n, self.left - n
        await asyncio.sleep(0)  # a real store yields while the database works
        return [JobRecord(id=i, task="noop", queue="default", args={}, key=None,
                          state=JobState.RUNNING, priority=0, run_at=now, created_at=now,
                          attempt=1, max_attempts=3, fence=1, attempted_at=now,
                          attempted_by=worker, lease_expires_at=lease_until, finished_at=None,
                          result=None, errors=[], scheduled_for=None)
                for i in range(first, first + n)]

    async def job_complete(self, completions: Sequence[Completion]) -> set[int]:
        await asyncio.sleep(0)
        return {c.id for c in completions}

    async def job_count_due(self, **_: Any) -> int:
        return 0


async def noop() -> None:
    pass


async def one_run(jobs: int, concurrency: int, batch: int) -> float:
    app = Oncely("sqlite:///:memory:")
    app.task(noop)
    runner = Runner(store=NullStore(jobs), tasks=app.tasks,  # type: ignore[arg-type]
                    worker="bench", clock=lambda: datetime.now(UTC), concurrency=concurrency,
                    lease=timedelta(seconds=60), batch_size=batch, queues=None,
                    executor=ThreadPoolExecutor(1))
    cpu = time.process_time()
    summary = await runner.run(3600)
    cpu = time.process_time() - cpu
    if summary.succeeded != jobs:
        raise SystemExit(f"runner completed {summary.succeeded} of {jobs}")
    return cpu / jobs * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--batch", type=int, default=100)
    a = p.parse_args()
    per_job = [asyncio.run(one_run(a.jobs, a.concurrency, a.batch)) for _ in range(a.runs)]
    print(f"runner alone, c{a.concurrency}/b{a.batch}: {statistics.median(per_job):.1f} us CPU "
          f"per job (median of {a.runs}: {', '.join(f'{x:.1f}' for x in per_job)})")


if __name__ == "__main__":
    main()
