"""The engine through its public API, on both stores, with a fake clock."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from conftest import FakeClock
from oncely import (
    Backoff,
    ConfigError,
    InvalidArguments,
    Job,
    JobState,
    Oncely,
    StoreUnavailable,
    UnknownTask,
)


@pytest.fixture
def jobs(store_url: str, clock: FakeClock) -> Iterator[Oncely]:
    app = Oncely(store_url, clock=clock, worker_id="w1", environ={})
    yield app
    app.close()


def test_a_job_runs_once_and_stores_its_result(jobs: Oncely) -> None:
    calls: list[int] = []

    @jobs.task
    async def double(n: int, *, job: Job) -> int:
        calls.append(job.attempt)
        return n * 2

    job = jobs.enqueue("double", n=21)
    summary = jobs.process(budget=5)
    assert (summary.claimed, summary.succeeded, summary.remaining) == (1, 1, 0)
    assert summary.job_ids == [job.id] and calls == [1]
    done = jobs.get(job.id)
    assert done.state is JobState.SUCCEEDED and done.result == 42 and done.attempted_by == "w1"
    assert jobs.process(budget=5).claimed == 0


def test_sync_handlers_run_in_threads_and_async_ones_on_the_loop(jobs: Oncely) -> None:
    seen: dict[str, str] = {}

    @jobs.task
    def blocking(*, job: Job) -> None:
        seen["sync"] = threading.current_thread().name

    @jobs.task
    async def awaiting() -> None:
        seen["async"] = threading.current_thread().name

    jobs.enqueue(blocking)
    jobs.enqueue(awaiting)
    assert jobs.process(budget=5).succeeded == 2
    assert seen["sync"].startswith("oncely-handler") and seen["async"] == "oncely-loop"


def test_concurrency_bounds_how_many_handlers_run_at_once(store_url: str, clock: FakeClock) -> None:
    app = Oncely(store_url, clock=clock, concurrency=3, environ={})
    running, peak = 0, 0

    @app.task
    async def slow() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    app.enqueue_many(slow, [{}] * 12)
    try:
        assert app.process(budget=10).succeeded == 12
    finally:
        app.close()
    assert peak == 3


def test_a_failing_job_retries_with_backoff_then_ends_dead(jobs: Oncely, clock: FakeClock) -> None:
    @jobs.task(max_attempts=3, backoff=Backoff(base=10, factor=2, cap=100, jitter=0))
    def flaky() -> None:
        raise RuntimeError("smtp down")

    job = jobs.enqueue(flaky)
    first = jobs.process(budget=5)
    assert (first.failed, first.dead) == (1, 0)
    retrying = jobs.get(job.id)
    assert retrying.state is JobState.RETRYING
    assert retrying.run_at == clock.now + timedelta(seconds=10)
    assert jobs.process(budget=5).claimed == 0  # not due yet
    clock.advance(10)
    assert jobs.process(budget=5).failed == 1
    assert jobs.get(job.id).run_at == clock.now + timedelta(seconds=20)
    clock.advance(20)
    last = jobs.process(budget=5)
    assert (last.failed, last.dead) == (0, 1)
    dead = jobs.get(job.id)
    assert dead.state is JobState.DEAD and dead.finished_at == clock.now
    assert [e["attempt"] for e in dead.errors] == [1, 2, 3]
    assert all(e["error"] == "RuntimeError: smtp down" and "flaky" in e["traceback"]
               for e in dead.errors)


def test_backoff_grows_exponentially_with_jitter_below_the_cap() -> None:
    backoff = Backoff(base=2, factor=2, cap=60, jitter=0.5)
    rng = random.Random(7)
    for attempt, full in [(1, 2), (2, 4), (3, 8), (6, 60), (20, 60)]:
        delays = [backoff.delay(attempt, rng).total_seconds() for _ in range(200)]
        assert all(full * 0.5 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full * 0.3  # jitter spreads them


def test_enqueue_with_a_key_returns_the_existing_job(jobs: Oncely) -> None:
    @jobs.task
    def welcome(user_id: int) -> None: ...

    first = jobs.enqueue(welcome, user_id=42, key="welcome:42")
    second = jobs.enqueue(welcome, user_id=42, key="welcome:42")
    assert second.id == first.id
    jobs.process(budget=5)
    assert jobs.enqueue(welcome, user_id=42, key="welcome:42").id == first.id
    assert len(jobs.list()) == 1


def test_run_at_and_delay_schedule_a_job_for_later(jobs: Oncely, clock: FakeClock) -> None:
    @jobs.task
    def later() -> None: ...

    jobs.enqueue(later, delay=30)
    jobs.enqueue(later, run_at=clock.now + timedelta(seconds=60))
    assert jobs.process(budget=5).claimed == 0
    clock.advance(30)
    assert jobs.process(budget=5).claimed == 1
    clock.advance(30)
    assert jobs.process(budget=5).claimed == 1


def test_priority_orders_claims(store_url: str, clock: FakeClock) -> None:
    app = Oncely(store_url, clock=clock, concurrency=1, environ={})
    order: list[str] = []

    @app.task
    def note(name: str) -> None:
        order.append(name)

    app.enqueue(note, name="low", priority=10)
    app.enqueue(note, name="high", priority=-10)
    app.enqueue(note, name="normal")
    try:
        app.process(budget=5)
    finally:
        app.close()
    assert order == ["high", "normal", "low"]


def test_a_worker_paused_past_its_lease_is_fenced_out(store_url: str, clock: FakeClock) -> None:
    """Worker A stalls inside its handler; its lease expires; B rescues and finishes the
    job; when A wakes up, its completion is refused and counted as fenced out."""
    release = threading.Event()
    entered = threading.Event()
    runs: list[str] = []
    clock_b = FakeClock(clock.now)

    def build(worker: str, c: FakeClock) -> Oncely:
        app = Oncely(store_url, clock=c, worker_id=worker, environ={},
                     lease=timedelta(seconds=30))

        @app.task
        def charge(*, job: Job) -> str:
            runs.append(worker)
            if worker == "a":
                entered.set()
                release.wait(10)
            return worker

        return app

    a, b = build("a", clock), build("b", clock_b)
    job = a.enqueue("charge")
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(a=a.process(budget=20)))
    thread.start()
    try:
        assert entered.wait(10)
        clock_b.advance(31)  # A's lease has expired as far as B can tell
        summary_b = b.process(budget=5)
        assert (summary_b.rescued, summary_b.succeeded) == (1, 1)
        release.set()
        thread.join(10)
        summary_a = result["a"]
        assert (summary_a.succeeded, summary_a.fenced_out) == (0, 1)
        final = b.get(job.id)
        assert final.state is JobState.SUCCEEDED and final.result == "b"
        assert final.attempt == 2 and [e["worker"] for e in final.errors] == ["a"]
        assert runs == ["a", "b"]
    finally:
        release.set()
        a.close()
        b.close()


def test_a_fenced_out_worker_logs_the_refusal(
    store_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = Oncely(store_url, clock=clock, worker_id="w1", environ={})

    @app.task
    def cancelled_meanwhile(*, job: Job) -> None:
        other = Oncely(store_url, clock=clock, environ={})
        other.cancel(job.id)
        other.close()

    app.enqueue(cancelled_meanwhile)
    with caplog.at_level(logging.WARNING, logger="oncely"):
        summary = app.process(budget=5)
    app.close()
    assert summary.fenced_out == 1 and summary.succeeded == 0
    events = [r for r in caplog.records if getattr(r, "event", None) == "job.fenced_out"]
    assert len(events) == 1 and events[0].outcome == "succeeded"  # type: ignore[attr-defined]


def test_job_heartbeat_extends_the_lease_from_sync_and_async_handlers(
    jobs: Oncely, clock: FakeClock
) -> None:
    renewed: list[Any] = []

    @jobs.task
    def sync_beat(*, job: Job) -> None:
        clock.advance(20)
        renewed.append(job.heartbeat())

    @jobs.task
    async def async_beat(*, job: Job) -> None:
        renewed.append(await job.heartbeat())

    first = jobs.enqueue(sync_beat)
    jobs.enqueue(async_beat)
    assert jobs.process(budget=5).succeeded == 2
    assert renewed == [True, True]
    assert jobs.get(first.id).state is JobState.SUCCEEDED


def test_a_non_json_result_is_stored_as_null_and_the_job_still_succeeds(jobs: Oncely) -> None:
    @jobs.task
    def returns_object() -> object:
        return object()

    job = jobs.enqueue(returns_object)
    assert jobs.process(budget=5).succeeded == 1
    assert jobs.get(job.id).result is None


def test_the_budget_stops_claiming_but_finishes_what_runs(store_url: str, clock: FakeClock) -> None:
    app = Oncely(store_url, clock=clock, concurrency=1, environ={})

    @app.task
    def slow() -> None:
        threading.Event().wait(0.3)

    app.enqueue_many(slow, [{}] * 5)
    try:
        summary = app.process(budget=0.1)
        assert summary.claimed == 1 and summary.succeeded == 1 and summary.remaining == 4
    finally:
        app.close()


# -- bad input: a clear error, nothing half-written ------------------------------------


def test_bad_input_is_refused_with_a_clear_error_and_writes_nothing(jobs: Oncely) -> None:
    @jobs.task
    def welcome(user_id: int, *, job: Job) -> None: ...

    with pytest.raises(UnknownTask, match="unknown task 'welcom'; known tasks: welcome"):
        jobs.enqueue("welcom", user_id=1)
    with pytest.raises(InvalidArguments, match="argument 'user_id' is not JSON.*set"):
        jobs.enqueue(welcome, user_id={1, 2})
    with pytest.raises(InvalidArguments, match="cannot take these arguments.*unexpected"):
        jobs.enqueue(welcome, user_id=1, extra=2)
    with pytest.raises(InvalidArguments, match="missing a required argument: 'user_id'"):
        jobs.enqueue(welcome)
    with pytest.raises(InvalidArguments, match="'job' is reserved"):
        jobs.enqueue(welcome, {"user_id": 1, "job": 2})
    with pytest.raises(ConfigError, match="has no time zone"):
        from datetime import datetime

        jobs.enqueue(welcome, user_id=1, run_at=datetime(2030, 1, 1))
    assert jobs.list() == []


def test_a_bad_store_url_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="unsupported scheme 'mysql'"):
        Oncely("mysql://root:hunter2@db/app", environ={}).migrate()
    with pytest.raises(ConfigError, match="sqlite accepts synchronous and busy_timeout"):
        Oncely("sqlite:///x.db?journal=off", environ={}).migrate()


def test_an_unreachable_database_is_a_clear_error_without_the_password() -> None:
    app = Oncely("postgresql://app:hunter2@127.0.0.1:1/app", environ={})
    with pytest.raises(StoreUnavailable, match="cannot connect to PostgreSQL") as info:
        app.migrate()
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
    app.close()


def test_settings_from_the_environment_name_the_bad_key() -> None:
    with pytest.raises(ConfigError, match="ONCELY_CONCURRENCY='lots' is not a whole number"):
        Oncely(environ={"ONCELY_CONCURRENCY": "lots"})
    app = Oncely(environ={"ONCELY_STORE": "sqlite:///:memory:", "ONCELY_LEASE_SECONDS": "5"})
    assert app.store_url == "sqlite:///:memory:" and app.settings.lease == timedelta(seconds=5)


def test_the_memory_store_works_for_tests(clock: FakeClock) -> None:
    with Oncely("sqlite:///:memory:", clock=clock, environ={}) as app:

        @app.task
        def noop() -> None: ...

        app.enqueue(noop)
        assert app.process(budget=5).succeeded == 1


# -- transactions ------------------------------------------------------------------------


def test_a_rolled_back_transaction_leaves_no_job_on_postgres(pg_url: str, clock: FakeClock) -> None:
    app = Oncely(pg_url, clock=clock, environ={})

    @app.task
    def welcome(user_id: int) -> None: ...

    app.migrate()
    base, schema = pg_url.split("?schema=")
    with psycopg.connect(base, options=f"-c search_path={schema}") as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY)")
        conn.commit()
        with pytest.raises(ZeroDivisionError), conn.transaction():
            conn.execute("INSERT INTO users VALUES (1)")
            app.enqueue(welcome, user_id=1, conn=conn)
            1 / 0  # noqa: B018  the signup fails after the enqueue
        with conn.transaction():
            conn.execute("INSERT INTO users VALUES (2)")
            kept = app.enqueue(welcome, user_id=2, conn=conn, key="welcome:2")
    assert [j.id for j in app.list()] == [kept.id] and app.get(kept.id).args == {"user_id": 2}
    app.close()


def test_a_rolled_back_transaction_leaves_no_job_on_sqlite(tmp_path, clock: FakeClock) -> None:
    path = tmp_path / "app.db"
    app = Oncely(f"sqlite:///{path}", clock=clock, environ={})

    @app.task
    def welcome(user_id: int) -> None: ...

    app.migrate()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO users VALUES (1)")
    app.enqueue(welcome, user_id=1, conn=conn)
    conn.rollback()
    conn.execute("INSERT INTO users VALUES (2)")
    kept = app.enqueue(welcome, user_id=2, conn=conn)
    conn.commit()
    conn.close()
    assert [j.id for j in app.list()] == [kept.id]
    app.close()


def test_handler_writes_commit_with_the_completion_and_vanish_when_fenced_out(
    pg_url: str, clock: FakeClock
) -> None:
    """Exactly-once database effects: the handler's insert and the job's completion
    share one transaction, so a handler whose lease was lost leaves no write behind."""
    app = Oncely(pg_url, clock=clock, worker_id="a", environ={})
    base, schema = pg_url.split("?schema=")

    @app.task
    async def credit(account: int, *, job: Job, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("INSERT INTO credits (account, job_id) VALUES (%s, %s)",
                           (account, job.id))
        if account == 2:  # meanwhile an admin cancels the job: this completion is fenced
            other = Oncely(pg_url, clock=clock, environ={})
            await other.acancel(job.id)
            await other.aclose()

    app.migrate()
    with psycopg.connect(base, options=f"-c search_path={schema}", autocommit=True) as conn:
        conn.execute("CREATE TABLE credits (account int, job_id bigint)")
        kept = app.enqueue(credit, account=1)
        fenced = app.enqueue(credit, account=2)
        summary = app.process(budget=5)
        rows = conn.execute("SELECT account, job_id FROM credits").fetchall()
    app.close()
    assert (summary.succeeded, summary.fenced_out) == (1, 1)
    assert rows == [(1, kept.id)]
    assert fenced.id not in [r[1] for r in rows]


def test_a_handler_taking_conn_needs_postgres(tmp_path, clock: FakeClock) -> None:
    app = Oncely(f"sqlite:///{tmp_path}/x.db", clock=clock, environ={})

    @app.task
    async def credit(*, conn: Any) -> None: ...

    with pytest.raises(ConfigError, match="take conn=, which needs the PostgreSQL store"):
        app.migrate()
    app.close()
    with pytest.raises(ConfigError, match="must be `async def`"):

        @app.task
        def sync_credit(*, conn: Any) -> None: ...


def test_enqueue_on_a_sqlite_connection_holding_its_write_lock_does_not_block(
    tmp_path, clock: FakeClock  # type: ignore[no-untyped-def]
) -> None:
    """The first enqueue(conn=...) of a process opens the store; on a migrated database
    that takes no write lock, so the caller's own open transaction does not block it."""
    path = tmp_path / "app.db"
    with Oncely(f"sqlite:///{path}?busy_timeout=2", environ={}) as first:
        first.migrate()
    app = Oncely(f"sqlite:///{path}?busy_timeout=2", clock=clock, environ={})

    @app.task
    def welcome(user_id: int) -> None: ...

    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO users VALUES (1)")  # the caller now holds the write lock
    job = app.enqueue(welcome, user_id=1, conn=conn)
    conn.commit()
    conn.close()
    assert app.get(job.id).args == {"user_id": 1}
    app.close()
