"""The built-in scheduler: Cloud Scheduler's retry semantics, claims so that several
scheduler processes fire each occurrence once, and a soak with one of them killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FakeClock
from httpserver import APPS, ServeProcess, env_with
from oncely import ConfigError, Oncely
from oncely.schedule import Schedule
from oncely.scheduler import RetryPolicy, Scheduler, Target
from oncely.triggers import Identity, trigger_id

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def test_retry_delays_follow_cloud_schedulers_documented_example() -> None:
    # cloud.google.com/scheduler/docs/reference/rest/v1/projects.locations.jobs#RetryConfig:
    # min 10s, max 300s, 3 doublings -> 10s, 20s, 40s, 80s, 160s, 240s, 300s, 300s
    policy = RetryPolicy(retry_count=8, min_backoff=10, max_backoff=300, max_doublings=3)
    assert [policy.delay(r) for r in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]
    with pytest.raises(ConfigError):
        RetryPolicy(min_backoff=10, max_backoff=5)


class Target5xx:
    """A real HTTP server answering 503 ``failures`` times, then 200; it records requests."""

    def __init__(self, failures: int):
        self.failures = failures
        self.requests: list[dict[str, str]] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                state.requests.append({k.lower(): v for k, v in self.headers.items()})
                status = 503 if len(state.requests) <= state.failures else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def store_app(store_url: str) -> Iterator[Oncely]:
    app = Oncely(store_url, environ={})
    yield app
    app.close()


async def scheduler_for(app: Oncely, url: str, clock: FakeClock, slept: list[float],
                        worker: str, client: httpx.AsyncClient, policy: RetryPolicy) -> Scheduler:
    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    store = await app.astore()
    return Scheduler(store, base_url=url, token="tok-0123456789abcdef",
                     targets=[Target("oncely-tick", "/jobs/tick", Schedule.parse(every="1m"))],
                     policy=policy, clock=clock, worker=worker, client=client, sleep=sleep)


def run(app: Oncely, coro: Any) -> Any:
    return app._portal.run(coro)


def test_a_target_failing_twice_then_succeeding_is_retried_with_the_backoff(
    store_app: Oncely,
) -> None:
    target = Target5xx(failures=2)
    policy = RetryPolicy(retry_count=3, min_backoff=5, max_backoff=60, max_doublings=2)
    slept: list[float] = []

    async def scenario() -> Any:
        async with httpx.AsyncClient() as client:
            s = await scheduler_for(store_app, target.url, FakeClock(T0), slept, "s1", client,
                                    policy)
            return await s.fire(s.targets[0], T0)

    firing = run(store_app, scenario())
    target.close()
    assert firing.outcome == "ok" and [a["status"] for a in firing.attempts] == [503, 503, 200]
    assert slept == [5, 10]
    assert {r["x-cloudscheduler-scheduletime"] for r in target.requests} == {"2026-11-29T12:00:00Z"}
    assert {r["x-cloudscheduler-jobname"] for r in target.requests} == {"oncely-tick"}
    assert {r["authorization"] for r in target.requests} == {"Bearer tok-0123456789abcdef"}


def test_a_second_scheduler_never_fires_an_occurrence_the_first_claimed(
    store_app: Oncely,
) -> None:
    target = Target5xx(failures=100)
    policy = RetryPolicy(retry_count=2, min_backoff=1, max_backoff=10, attempt_deadline=5)
    clock = FakeClock(T0)

    async def scenario() -> tuple[Any, Any, Any]:
        async with httpx.AsyncClient() as client:
            a = await scheduler_for(store_app, target.url, clock, [], "a", client, policy)
            b = await scheduler_for(store_app, target.url, clock, [], "b", client, policy)
            gave_up = await a.fire(a.targets[0], T0)
            again = await b.fire(b.targets[0], T0)
            # an occurrence claimed by a scheduler that then died: b waits for its lease
            store = await store_app.astore()
            await store.trigger_begin(
                id=trigger_id("scheduler:oncely-tick",
                              Identity("scheduler", "oncely-tick@2026-11-29T12:01:00Z")),
                route="scheduler:oncely-tick", identity="x", worker="dead", now=T0,
                lease_until=T0 + timedelta(seconds=30))
            held = await b.fire(b.targets[0], T0 + timedelta(minutes=1))
            clock.advance(31)
            pending = b.scan(clock.now)
            taken = [await b.fire(t, at) for t, at in pending]
            return gave_up, again, (held, pending, taken)

    gave_up, again, (held, pending, taken) = run(store_app, scenario())
    target.close()
    assert gave_up.outcome == "gave-up" and len(gave_up.attempts) == 3
    assert again.outcome == "done-elsewhere" and again.attempts == []
    assert held.outcome == "claimed-elsewhere"
    assert [at for _, at in pending] == [T0 + timedelta(minutes=1)]
    assert [f.outcome for f in taken] == ["gave-up"]
    assert len(target.requests) == 3 + 3  # a's three attempts, then b's three; never more


# -- the soak: two scheduler processes, one killed, against a real server -------------------


SOAK_SECONDS = float(os.environ.get("ONCELY_SOAK_SECONDS", "180"))  # the issue asks 3 min


def scheduler_process(env: dict[str, str], url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
            return subprocess.Popen(
            [sys.executable, "-m", "oncely", "scheduler", "--app", "ledger_app:jobs",
             "--target", url, "--every", "1s", "--retry-count", "2", "--min-backoff", "0.2",
             "--max-backoff", "1", "--attempt-deadline", "3"],
            env={**env, "PYTHONPATH": str(APPS)}, stdout=out, stderr=subprocess.STDOUT,
        )


def test_two_scheduler_processes_fire_every_occurrence_once_even_when_one_is_killed(
    store_url: str, tmp_path: Path
) -> None:
    token = "soak-token-0123456789abcdef"
    ledger = str(tmp_path / "ledger.db")
    sys.path.insert(0, str(APPS))
    from ledger_app import create_ledger

    create_ledger(ledger)
    env = env_with(ONCELY_STORE=store_url, LEDGER=ledger, ONCELY_TOKENS=token,
                   ONCELY_SCHEDULER_TOKEN=token, TMPDIR=str(tmp_path))
    server = ServeProcess(env)
    server.wait_ready()
    a = scheduler_process(env, server.url, tmp_path / "a.log")
    b = scheduler_process(env, server.url, tmp_path / "b.log")
    started = datetime.now(UTC)
    try:
        time.sleep(SOAK_SECONDS / 2)
        a.send_signal(signal.SIGKILL)
        killed = datetime.now(UTC)
        time.sleep(SOAK_SECONDS / 2)
        b.send_signal(signal.SIGTERM)
        b.wait(30)
        stopped = datetime.now(UTC)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
        server.stop()

    claims = scheduler_claims(store_url)
    fired = sorted(claims)
    # every occurrence from the first one fired until B stopped was fired, none twice
    first, last = fired[0], fired[-1]
    assert first - started < timedelta(seconds=5) and stopped - last < timedelta(seconds=5)
    seconds = int((last - first).total_seconds())
    expected = [first + timedelta(seconds=i) for i in range(seconds + 1)]
    assert fired == expected, set(expected) - set(fired)
    assert all(c["outcome"] == "ok" and len(c["attempts"]) == 1 for c in claims.values())
    workers = {c["fired_by"].rsplit(":", 1)[-1] for c in claims.values()}
    assert len(workers) == 2  # both fired some
    after_kill = [c for at, c in claims.items() if at > killed + timedelta(seconds=5)]
    assert after_kill and len({c["fired_by"] for c in after_kill}) == 1
    # and the app turned each tick into exactly one pulse job per occurrence
    app = Oncely(store_url, environ={})
    pulses = [j.scheduled_for for j in app.list(task="pulse", limit=100000)]
    app.close()
    assert len(pulses) == len(set(pulses))


def scheduler_claims(store_url: str) -> dict[datetime, dict[str, Any]]:
    app = Oncely(store_url, environ={})

    async def rows() -> list[Any]:
        store = await app.astore()
        if store.dialect == "sqlite":
            return await store._call(lambda c: c.execute(  # type: ignore[attr-defined]
                "SELECT state, summary FROM oncely_triggers WHERE route LIKE 'scheduler:%'"
            ).fetchall())
        async with store.connection() as conn:  # type: ignore[attr-defined]
            cur = await conn.execute("SELECT state, summary::text AS summary FROM "
                                     "oncely_triggers WHERE route LIKE 'scheduler:%%'")
            return list(await cur.fetchall())

    found = app._portal.run(rows())
    app.close()
    claims = {}
    for row in found:
        assert row["state"] == "done"
        summary = json.loads(row["summary"])
        claims[datetime.fromisoformat(summary["scheduled_for"])] = summary
    return claims


def test_scheduler_rejects_bad_options_in_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "oncely", "scheduler", "--app", "ledger_app:jobs", "--target",
         "http://127.0.0.1:1", "--every", "soon", "--store", f"sqlite:///{tmp_path}/x.db"],
        env={**os.environ, "PYTHONPATH": str(APPS)}, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1 and out.stderr.startswith("oncely: error: --every 'soon'")
    assert len(out.stderr.strip().splitlines()) == 1
