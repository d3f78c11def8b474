"""Replicas: several `oncely serve` processes over one store, triggered concurrently,
one of them killed mid-trigger. Counted in a ledger; each test runs on both stores."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from httpserver import APPS, ServeProcess, env_with
from oncely import JobState, Oncely

sys.path.insert(0, str(APPS))
from ledger_app import create_ledger, ledger_connection

TOKEN = "replica-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def ledger(store_url: str, tmp_path: Path) -> str:
    url = store_url if store_url.startswith("postgresql") else str(tmp_path / "ledger.db")
    create_ledger(url)
    return url


def ledger_rows(ledger: str) -> list[tuple[Any, ...]]:
    conn = ledger_connection(ledger)
    try:
        return list(conn.execute("SELECT job_id, attempt, phase, pid FROM ledger").fetchall())
    finally:
        conn.close()


def start(store_url: str, ledger: str, n: int, tmp_path: Path, **env: str) -> list[ServeProcess]:
    environ = env_with(ONCELY_STORE=store_url, LEDGER=ledger, ONCELY_TOKENS=TOKEN,
                       TMPDIR=str(tmp_path), **env)
    replicas = [ServeProcess(environ) for _ in range(n)]
    try:
        for r in replicas:
            r.wait_ready()
    except BaseException:
        for r in replicas:  # none left running when one did not come up
            r.stop()
        raise
    return replicas


def test_fifty_concurrent_triggers_over_three_replicas_run_each_job_once(
    store_url: str, ledger: str, tmp_path: Path
) -> None:
    app = Oncely(store_url, environ={})

    @app.task
    def record(n: int) -> None: ...

    ids = app.enqueue_many(record, [{"n": i} for i in range(3000)])
    replicas = start(store_url, ledger, 3, tmp_path, ONCELY_CONCURRENCY="8",
                     ONCELY_BATCH_SIZE="10")
    try:
        def trigger(i: int) -> dict[str, Any]:
            url = replicas[i % 3].url
            response = httpx.post(f"{url}/jobs/process?budget=60", headers=AUTH, timeout=120)
            assert response.status_code == 200, response.text
            return dict(response.json())

        with ThreadPoolExecutor(50) as pool:
            summaries = list(pool.map(trigger, range(50)))
    finally:
        for r in replicas:
            r.stop()
    ran = Counter(job_id for job_id, *_ in ledger_rows(ledger))
    assert sorted(ran) == sorted(ids) and set(ran.values()) == {1}
    assert sum(s["succeeded"] for s in summaries) == 3000
    assert len({s["trigger_id"] for s in summaries}) == 50
    assert len({pid for *_, pid in ledger_rows(ledger)}) == 3  # every replica took part
    assert app.list(state=JobState.PENDING) == [] and app.list(state=JobState.RUNNING) == []
    app.close()


def test_a_replica_killed_mid_trigger_loses_nothing_and_completes_nothing_twice(
    store_url: str, ledger: str, tmp_path: Path
) -> None:
    app = Oncely(store_url, environ={})

    @app.task(max_attempts=3)
    def hang_first_attempt() -> None: ...

    @app.task
    def record(n: int) -> None: ...

    hung = app.enqueue(hang_first_attempt)
    others = app.enqueue_many(record, [{"n": i} for i in range(20)])
    a, b = start(store_url, ledger, 2, tmp_path, ONCELY_LEASE_SECONDS="2")
    key = {**AUTH, "Idempotency-Key": "tick-1"}
    try:
        threading.Thread(target=lambda: _quietly(lambda: httpx.post(
            f"{a.url}/jobs/process?budget=2", headers=key, timeout=30)), daemon=True).start()
        deadline = time.monotonic() + 30
        while not any(phase == "started" for _, _, phase, _ in ledger_rows(ledger)):
            assert time.monotonic() < deadline, a.logs()
            time.sleep(0.05)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()

        # The scheduler retries the same trigger on the other replica: it is still
        # leased by the dead one, so it is told to come back later ...
        busy = httpx.post(f"{b.url}/jobs/process?budget=2", headers=key, timeout=30)
        assert busy.status_code == 409 and int(busy.headers["Retry-After"]) >= 1
        # ... and once the lease expired, the retry runs: the killed attempt is rescued.
        lease = app.get(hung.id).lease_expires_at
        assert lease is not None
        time.sleep(max(0.0, (lease - datetime.now(UTC)).total_seconds()) + 0.1)
        deadline = time.monotonic() + 30
        while (r := httpx.post(f"{b.url}/jobs/process?budget=5", headers=key,
                               timeout=30)).status_code == 409:
            assert time.monotonic() < deadline
            time.sleep(float(r.headers["Retry-After"]) / 4)
        assert r.status_code == 200 and r.json()["replayed"] is False
    finally:
        a.stop()
        b.stop()
    final = app.get(hung.id)
    assert final.state is JobState.SUCCEEDED and final.attempt == 2
    assert [e["worker"].endswith(f":{a.proc.pid}") for e in final.errors] == [True]
    ran = Counter((job_id, phase) for job_id, _, phase, _ in ledger_rows(ledger))
    assert ran[(hung.id, "finished")] == 1 and ran[(hung.id, "started")] == 2
    for job in map(app.get, others):
        # A handler runs again only when its process died: every extra run is one
        # recorded lost lease of the killed replica (which may have died before it ran).
        assert job.state is JobState.SUCCEEDED
        assert 1 <= ran[(job.id, "ran")] <= 1 + len(job.errors)
        assert all(e["worker"].endswith(f":{a.proc.pid}") for e in job.errors)
    app.close()


def _quietly(call: Any) -> None:
    with contextlib.suppress(httpx.TransportError):  # the replica is killed mid-request
        call()


def test_twenty_concurrent_ticks_across_three_replicas_make_one_job_per_occurrence(
    store_url: str, ledger: str, tmp_path: Path
) -> None:
    replicas = start(store_url, ledger, 3, tmp_path)
    try:
        def tick(i: int) -> dict[str, Any]:
            response = httpx.post(f"{replicas[i % 3].url}/jobs/tick?budget=10", headers=AUTH,
                                  timeout=60)
            assert response.status_code == 200, response.text
            return dict(response.json())

        reports = []
        with ThreadPoolExecutor(20) as pool:
            for _ in range(4):  # four rounds of 20 simultaneous ticks, a second or more apart
                reports += list(pool.map(tick, range(20)))
                time.sleep(1.1)
    finally:
        for r in replicas:
            r.stop()
    enqueued = [e["scheduled_for"] for r in reports for e in r["enqueued"]]
    assert len(enqueued) == len(set(enqueued)) >= 4  # each occurrence enqueued by one tick
    app = Oncely(store_url, environ={})
    pulses = [j for j in app.list(task="pulse", limit=1000)]
    app.close()
    assert sorted(j.scheduled_for.isoformat() for j in pulses if j.scheduled_for) == sorted(
        enqueued)
    assert all(j.state is JobState.SUCCEEDED for j in pulses)
    ran = Counter(job_id for job_id, _, phase, _ in ledger_rows(ledger) if phase == "pulse")
    assert sorted(ran) == sorted(j.id for j in pulses) and set(ran.values()) == {1}


def test_serve_with_several_workers_answers_and_processes(
    store_url: str, ledger: str, tmp_path: Path
) -> None:
    environ = env_with(ONCELY_STORE=store_url, LEDGER=ledger, ONCELY_TOKENS=TOKEN,
                       TMPDIR=str(tmp_path))
    server = ServeProcess(environ, "--workers", "2")
    try:
        server.wait_ready()
        job = httpx.post(f"{server.url}/jobs", headers=AUTH, json={
            "task": "record", "args": {"n": 1}}).json()
        done = httpx.post(f"{server.url}/jobs/process", headers=AUTH, timeout=30).json()
        assert done["job_ids"] == [job["id"]]
        replicas = {httpx.get(f"{server.url}/healthz").json()["replica"] for _ in range(20)}
        assert all(r.rsplit(":", 1)[-1].isdigit() for r in replicas)
    finally:
        server.stop()
