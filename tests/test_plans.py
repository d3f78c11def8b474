"""The statements on the hot path find their rows through indexes, never by scanning
the jobs table, even when the planner's statistics are stale (they always are while a
queue drains: the last ANALYZE saw every job pending and none running).

A scan here cost PostgreSQL 30 us per job at 20,000 rows and grew with the table
(bench/README.md); this test keeps it from coming back.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from oncely import queries
from oncely.model import NewJob
from oncely.postgres_store import int_array
from oncely.store import open_store

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
JOBS = 20_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def test_claim_complete_and_heartbeat_read_indexes_not_the_table(store_url: str) -> None:
    store = open_store(store_url)
    await store.open(T0)
    try:
        new = NewJob(task="t", args_json="{}", queue="default", priority=0, run_at=T0,
                     max_attempts=3)
        await store.job_insert_many([new] * JOBS, T0)
        if store.dialect == "postgres":
            base, _, schema = store_url.partition("?schema=")
            conn = psycopg.connect(base, options=f"-c search_path={schema}", autocommit=True)
            conn.execute("VACUUM ANALYZE oncely_jobs")  # the statistics: all pending
        claimed = []
        for _ in range(3):  # now they are stale: 300 jobs run that ANALYZE never saw
            claimed = await store.job_claim(tasks=["t"], queues=None, limit=100, worker="w",
                                            now=T0, lease_until=T0 + timedelta(seconds=30))
        assert len(claimed) == 100
        ids, fences = [j.id for j in claimed], [j.fence for j in claimed]
        if store.dialect == "postgres":
            with conn:
                check_postgres(conn, ids, fences)
        else:
            check_sqlite(store_url.removeprefix("sqlite:///"), ids, fences)
    finally:
        await store.close()


def check_postgres(conn: psycopg.Connection[Any], ids: list[int], fences: list[int]) -> None:
    q = queries.load("postgres")
    claim = {"tasks": ["t"], "queues": None, "limit": 100, "worker": "w", "now": T0,
             "lease_until": T0}
    by_id = {"ids": int_array(ids), "fences": int_array(fences), "lease_until": T0,
             "results": None, "at": T0}
    statements: dict[str, dict[str, Any]] = {
        "job_claim": claim, "job_complete_succeeded": by_id, "job_heartbeat": by_id,
        "job_complete": {"ids": ids, "fences": fences, "states": ["retrying"] * len(ids),
                         "results": [None] * len(ids), "errors": ['{"error": "x"}'] * len(ids),
                         "run_ats": [T0] * len(ids), "ats": [T0] * len(ids)},
    }
    for name, params in statements.items():
        [[explained]] = conn.execute(
            "EXPLAIN (FORMAT JSON) " + q[name], params, prepare=False).fetchall()
        plan = list(nodes(explained[0]["Plan"]))
        on_jobs = [n for n in plan if n.get("Relation Name") == "oncely_jobs"
                   and n["Node Type"] != "ModifyTable"]
        assert on_jobs, (name, plan)
        scans = [n["Node Type"] for n in on_jobs if "Index" not in n["Node Type"]]
        assert not scans, f"{name} scans oncely_jobs: {explained}"
        used = {n.get("Index Name") for n in on_jobs}
        assert "oncely_jobs_pkey" in used, f"{name} does not find rows by id: {used}"


def check_sqlite(path: str, ids: list[int], fences: list[int]) -> None:
    q = queries.load("sqlite")
    conn = sqlite3.connect(path)
    try:
        claim = {"tasks": '["t"]', "queues": None, "limit": 100, "worker": "w",
                 "now": T0.isoformat(), "lease_until": T0.isoformat()}
        done = {"done": json.dumps([[i, f, None] for i, f in zip(ids, fences, strict=True)]),
                "at": T0.isoformat()}
        statements = {
            "job_claim_pick": claim, "job_claim": {**claim, "ids": json.dumps(ids)},
            "job_complete_succeeded": done, "job_complete_held": done,
        }
        for name, params in statements.items():
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + q[name], params)]
            on_jobs = [d for d in plan if "oncely_jobs" in d]
            assert on_jobs, (name, plan)
            scans = [d for d in on_jobs if "USING" not in d]
            assert not scans, f"{name} scans oncely_jobs: {plan}"
    finally:
        conn.close()
