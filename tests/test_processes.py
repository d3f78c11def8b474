"""Concurrency claims, proven by running many OS processes at once and counting in a
ledger how many times each job ran. Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from oncely import JobState, Oncely

APPS = Path(__file__).parent / "apps"
sys.path.insert(0, str(APPS))
from ledger_app import create_ledger, ledger_connection  # noqa: E402


@pytest.fixture
def ledger(store_url: str, tmp_path: Path) -> str:
    url = store_url if store_url.startswith("postgresql") else str(tmp_path / "ledger.db")
    create_ledger(url)
    return url


def env_for(store_url: str, ledger: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "ONCELY_STORE": store_url, "LEDGER": ledger,
            "PYTHONPATH": str(APPS), **extra}


def oncely(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "oncely", *args, "--app", "ledger_app:jobs"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def rows(ledger: str) -> list[tuple[Any, ...]]:
    conn = ledger_connection(ledger)
    try:
        return list(conn.execute("SELECT job_id, attempt, phase, pid FROM ledger").fetchall())
    finally:
        conn.close()


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_eight_processes_run_five_thousand_jobs_exactly_once(store_url: str, ledger: str) -> None:
    app = Oncely(store_url, environ={})

    @app.task
    def record(n: int) -> None: ...

    ids = app.enqueue_many(record, [{"n": i} for i in range(5000)])
    app.close()
    env = env_for(store_url, ledger, ONCELY_CONCURRENCY="8", ONCELY_BATCH_SIZE="20")
    procs = [oncely("process", "--budget", "200", env=env) for _ in range(8)]
    summaries = [finish(p) for p in procs]

    ran = Counter(job_id for job_id, *_ in rows(ledger))
    assert sorted(ran) == sorted(ids)  # every job ran ...
    assert set(ran.values()) == {1}  # ... exactly once
    assert sum(s["succeeded"] for s in summaries) == 5000
    assert sum(s["fenced_out"] for s in summaries) == 0
    pids = {pid for *_, pid in rows(ledger)}
    assert len(pids) >= 2, "the work was not shared between processes"
    check = Oncely(store_url, environ={})
    counts = check._portal.run(_counts(check))
    check.close()
    assert counts == {JobState.SUCCEEDED: 5000}


async def _counts(app: Oncely) -> dict[JobState, int]:
    return await (await app.astore()).job_count_by_state()


def test_a_killed_worker_s_job_is_finished_once_by_another_after_its_lease(
    store_url: str, ledger: str
) -> None:
    app = Oncely(store_url, environ={})

    @app.task(max_attempts=3)
    def hang_first_attempt() -> None: ...

    job = app.enqueue(hang_first_attempt)
    env = env_for(store_url, ledger, ONCELY_LEASE_SECONDS="2")
    victim = oncely("process", "--budget", "100", env=env)
    deadline = time.monotonic() + 30
    while not rows(ledger):  # wait for the handler to be mid-way
        assert time.monotonic() < deadline and victim.poll() is None, victim.stderr
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()

    held = app.get(job.id)
    assert held.state is JobState.RUNNING and held.lease_expires_at is not None
    time.sleep(max(0.0, (held.lease_expires_at - datetime.now(UTC)).total_seconds()) + 0.1)
    summary = finish(oncely("process", "--budget", "30", env=env))
    assert (summary["rescued"], summary["succeeded"]) == (1, 1)

    final = app.get(job.id)
    app.close()
    assert final.state is JobState.SUCCEEDED and final.attempt == 2
    [lost] = final.errors
    assert lost["worker"].endswith(f":{victim.pid}") and "LeaseExpired" in lost["error"]
    assert final.attempted_by != lost["worker"]
    phases = Counter((attempt, phase) for _, attempt, phase, _ in rows(ledger))
    assert phases == {(1, "started"): 1, (2, "started"): 1, (2, "finished"): 1}


ENQUEUER = """
import json, random, sys
from ledger_app import jobs
keys = [f"user:{i}" for i in range(200)]
random.shuffle(keys)
print(json.dumps({k: jobs.enqueue("record", n=1, key=k).id for k in keys}))
jobs.close()
"""


def test_keys_hold_under_eight_concurrent_enqueuers(store_url: str, ledger: str) -> None:
    Oncely(store_url, environ={}).migrate()
    env = env_for(store_url, ledger)
    procs = [
        subprocess.Popen([sys.executable, "-c", ENQUEUER], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert all(r == results[0] for r in results)
    app = Oncely(store_url, environ={})
    listed = app.list(limit=1000)
    app.close()
    assert len(listed) == 200 and {j.id for j in listed} == set(results[0].values())
