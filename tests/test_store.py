"""The store conformance suite: every test runs on SQLite and on PostgreSQL, with time
pinned by passing ``now`` explicitly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import oncely
from oncely.errors import SchemaTooNew
from oncely.model import FINAL_STATES, Completion, JobState, NewJob
from oncely.store import Store, open_store

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.open(T0)
    yield s
    await s.close()


def new(task: str = "t", *, key: str | None = None, run_at: datetime = T0, priority: int = 0,
        queue: str = "default", max_attempts: int = 3, **args: object) -> NewJob:
    return NewJob(task=task, args_json=json.dumps(args), queue=queue, priority=priority,
                  run_at=run_at, max_attempts=max_attempts, key=key)


async def claim(store: Store, worker: str = "w1", *, now: datetime = T0, limit: int = 10,
                tasks: tuple[str, ...] = ("t",), queues: list[str] | None = None):
    return await store.job_claim(tasks=tasks, queues=queues, limit=limit, worker=worker,
                                 now=now, lease_until=now + LEASE)


def done(job, *, at: datetime = T0, state: JobState = JobState.SUCCEEDED, result: str | None = None,
         fence: int | None = None) -> Completion:
    return Completion(id=job.id, fence=job.fence if fence is None else fence, state=state, at=at,
                      result_json=result)


async def test_an_inserted_job_is_pending_and_round_trips_its_fields(store: Store) -> None:
    job, created = await store.job_insert(new(user_id=42, name="Ada"), T0, T0)
    assert created
    assert job.state is JobState.PENDING
    assert job.args == {"user_id": 42, "name": "Ada"}
    assert job.run_at == T0 and job.created_at == T0
    assert job.attempt == 0 and job.max_attempts == 3 and job.errors == []
    assert await store.job_get(job.id) == job


async def test_a_held_key_returns_the_existing_job_instead_of_inserting(store: Store) -> None:
    first, created = await store.job_insert(new(key="welcome:42", n=1), T0, T0)
    again, created_again = await store.job_insert(new(key="welcome:42", n=2), T0, T0)
    assert created and not created_again
    assert again.id == first.id and again.args == {"n": 1}
    assert len(await store.job_list()) == 1


async def test_a_succeeded_job_holds_its_key_until_the_retention_window_passes(
    store: Store,
) -> None:
    job, _ = await store.job_insert(new(key="k"), T0, T0)
    [claimed] = await claim(store)
    assert await store.job_complete([done(claimed)]) == {job.id}
    later = T0 + timedelta(hours=1)
    held, created = await store.job_insert(new(key="k"), later, retained_after=T0)
    assert not created and held.id == job.id
    released, created = await store.job_insert(new(key="k"), later, retained_after=later)
    assert created and released.id != job.id


async def test_dead_and_cancelled_jobs_release_their_key(store: Store) -> None:
    job, _ = await store.job_insert(new(key="k", max_attempts=1), T0, T0)
    [claimed] = await claim(store)
    await store.job_complete([done(claimed, state=JobState.DEAD)])
    second, created = await store.job_insert(new(key="k"), T0, T0)
    assert created and second.id != job.id
    await store.job_cancel(second.id, T0)
    third, created = await store.job_insert(new(key="k"), T0, T0)
    assert created and third.id not in (job.id, second.id)


async def test_claims_take_due_jobs_in_priority_then_time_order(store: Store) -> None:
    late, _ = await store.job_insert(new(run_at=T0 + timedelta(seconds=5)), T0, T0)
    low, _ = await store.job_insert(new(priority=5), T0, T0)
    first, _ = await store.job_insert(new(run_at=T0 - timedelta(seconds=1)), T0, T0)
    second, _ = await store.job_insert(new(), T0, T0)
    claimed = await claim(store)
    assert [j.id for j in claimed] == [first.id, second.id, low.id]
    assert all(j.state is JobState.RUNNING and j.attempt == 1 and j.fence == 1 for j in claimed)
    assert all(j.attempted_by == "w1" and j.lease_expires_at == T0 + LEASE for j in claimed)
    [due_later] = await claim(store, now=T0 + timedelta(seconds=5))
    assert due_later.id == late.id


async def test_a_claim_takes_at_most_the_limit_and_never_the_same_job_twice(store: Store) -> None:
    ids = await store.job_insert_many([new(n=i) for i in range(25)], T0)
    assert len(ids) == 25
    batches = [await claim(store, f"w{i}", limit=10) for i in range(4)]
    assert [len(b) for b in batches] == [10, 10, 5, 0]
    claimed_ids = [j.id for b in batches for j in b]
    assert sorted(claimed_ids) == sorted(ids)


async def test_claims_only_take_the_tasks_and_queues_asked_for(store: Store) -> None:
    await store.job_insert(new("other"), T0, T0)
    mail, _ = await store.job_insert(new(queue="mail"), T0, T0)
    plain, _ = await store.job_insert(new(), T0, T0)
    assert [j.id for j in await claim(store, queues=["mail"])] == [mail.id]
    assert [j.id for j in await claim(store)] == [plain.id]
    assert await claim(store) == []


async def test_a_fenced_completion_applies_only_with_the_current_fence(store: Store) -> None:
    job, _ = await store.job_insert(new(), T0, T0)
    [claimed] = await claim(store)
    assert await store.job_complete([done(claimed, fence=claimed.fence + 1)]) == set()
    assert (await store.job_get(job.id)).state is JobState.RUNNING
    assert await store.job_complete([done(claimed, result='{"ok":true}')]) == {job.id}
    finished = await store.job_get(job.id)
    assert finished.state is JobState.SUCCEEDED and finished.result == {"ok": True}
    assert finished.finished_at == T0 and finished.lease_expires_at is None
    assert await store.job_complete([done(claimed)]) == set()  # completing twice is refused


async def test_a_worker_paused_past_its_lease_cannot_complete_after_another_took_over(
    store: Store,
) -> None:
    job, _ = await store.job_insert(new(), T0, T0)
    [by_a] = await claim(store, "a")
    after_lease = T0 + LEASE + timedelta(seconds=1)
    rescued = await store.job_rescue(after_lease)
    assert [(r.id, r.state, r.worker) for r in rescued] == [(job.id, JobState.RETRYING, "a")]
    [by_b] = await claim(store, "b", now=after_lease)
    assert by_b.fence == by_a.fence + 1 and by_b.attempt == 2
    assert await store.job_heartbeat([(job.id, by_a.fence)], after_lease + LEASE) == set()
    assert await store.job_complete([done(by_a, at=after_lease)]) == set()
    assert await store.job_complete([done(by_b, at=after_lease)]) == {job.id}
    final = await store.job_get(job.id)
    assert final.state is JobState.SUCCEEDED and final.attempted_by == "b"
    [lost] = final.errors
    assert lost["worker"] == "a" and lost["attempt"] == 1 and "LeaseExpired" in lost["error"]


async def test_a_batch_completion_writes_only_the_jobs_still_held(store: Store) -> None:
    ids = await store.job_insert_many([new(n=i) for i in range(4)], T0)
    claimed = await claim(store)
    stale = claimed[1]
    after_lease = T0 + LEASE
    await store.job_rescue(after_lease, limit=10)  # every lease ran out ...
    retaken = await claim(store, "b", now=after_lease, limit=10)  # ... and b took them all
    assert sorted(j.id for j in retaken) == sorted(ids)
    held = [j for j in retaken if j.id != stale.id]
    batch = [done(j, at=after_lease) for j in held] + [done(stale, at=after_lease)]
    assert await store.job_complete(batch) == {j.id for j in held}
    assert (await store.job_get(stale.id)).state is JobState.RUNNING  # b still holds it


async def test_finished_at_is_set_exactly_while_a_job_is_finished(store: Store) -> None:
    seen: set[JobState] = set()

    async def check() -> None:
        for j in await store.job_list(limit=100):
            seen.add(j.state)
            assert (j.finished_at is not None) == (j.state in FINAL_STATES), j

    ok, retrying, lost, cancelled = await store.job_insert_many(
        [new(n=1), new(n=2), new(n=3, max_attempts=1), new(n=4)], T0)
    await check()
    by_id = {j.id: j for j in await claim(store)}
    await check()
    error = json.dumps({"attempt": 1, "error": "ValueError: boom"})
    await store.job_complete([
        done(by_id[ok]),
        Completion(id=retrying, fence=by_id[retrying].fence, state=JobState.RETRYING, at=T0,
                   error_json=error, run_at=T0 + timedelta(days=1)),
    ])
    await store.job_cancel(cancelled, T0)
    await store.job_rescue(T0 + LEASE)  # lost was on its last attempt: dead
    await check()
    assert (await store.job_get(lost)).state is JobState.DEAD
    await store.job_retry(lost, T0 + LEASE)
    await check()
    assert seen == set(JobState)


async def test_a_heartbeat_extends_the_lease_so_the_rescuer_leaves_the_job_alone(
    store: Store,
) -> None:
    job, _ = await store.job_insert(new(), T0, T0)
    [claimed] = await claim(store)
    later = T0 + LEASE - timedelta(seconds=1)
    assert await store.job_heartbeat([(job.id, claimed.fence)], later + LEASE) == {job.id}
    assert await store.job_rescue(T0 + LEASE + timedelta(seconds=1)) == []
    assert [r.id for r in await store.job_rescue(later + LEASE)] == [job.id]


async def test_an_expired_lease_on_the_last_attempt_ends_the_job_dead(store: Store) -> None:
    job, _ = await store.job_insert(new(key="k", max_attempts=1), T0, T0)
    await claim(store)
    [rescued] = await store.job_rescue(T0 + LEASE)
    assert rescued.state is JobState.DEAD
    final = await store.job_get(job.id)
    assert final.state is JobState.DEAD and final.finished_at == T0 + LEASE
    assert (await store.job_insert(new(key="k"), T0, T0))[1]  # the key was released


async def test_a_retrying_outcome_records_the_error_and_waits_for_its_run_at(store: Store) -> None:
    job, _ = await store.job_insert(new(), T0, T0)
    [claimed] = await claim(store)
    retry_at = T0 + timedelta(seconds=8)
    error = json.dumps({"attempt": 1, "error": "ValueError: boom"})
    completion = Completion(id=job.id, fence=claimed.fence, state=JobState.RETRYING, at=T0,
                            error_json=error, run_at=retry_at)
    assert await store.job_complete([completion]) == {job.id}
    stored = await store.job_get(job.id)
    assert stored.state is JobState.RETRYING and stored.run_at == retry_at
    assert stored.finished_at is None and stored.errors == [json.loads(error)]
    assert await claim(store, now=retry_at - timedelta(microseconds=1)) == []
    [again] = await claim(store, now=retry_at)
    assert again.attempt == 2


async def test_cancel_fences_out_a_running_worker_and_retry_brings_a_job_back(
    store: Store,
) -> None:
    job, _ = await store.job_insert(new(max_attempts=1), T0, T0)
    [claimed] = await claim(store)
    cancelled = await store.job_cancel(job.id, T0)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert await store.job_complete([done(claimed)]) == set()
    assert await store.job_cancel(job.id, T0) is None  # already final
    retried = await store.job_retry(job.id, T0)
    assert retried is not None and retried.state is JobState.PENDING
    assert retried.max_attempts == 2  # one more attempt than it used
    assert [j.id for j in await claim(store)] == [job.id]


async def test_listing_filters_by_state_and_task_and_pages_by_id(store: Store) -> None:
    ids = await store.job_insert_many([new(n=i) for i in range(5)], T0)
    await store.job_insert(new("other"), T0, T0)
    page1 = await store.job_list(task="t", limit=3)
    page2 = await store.job_list(task="t", limit=3, before_id=page1[-1].id)
    assert [j.id for j in page1 + page2] == sorted(ids, reverse=True)
    await claim(store, limit=2)
    assert len(await store.job_list(state=JobState.RUNNING)) == 2
    counts = await store.job_count_by_state()
    assert counts == {JobState.RUNNING: 2, JobState.PENDING: 4}
    assert await store.job_count_due(tasks=["t"], queues=None, now=T0) == 3


def shipped_migrations(dialect: str) -> int:
    return len(list((Path(oncely.__file__).parent / "migrations" / dialect).glob("*.sql")))


def test_both_dialects_ship_the_same_migrations() -> None:
    folder = Path(oncely.__file__).parent / "migrations"
    names = {d: sorted(p.name for p in (folder / d).glob("*.sql")) for d in ("postgres", "sqlite")}
    assert names["postgres"] == names["sqlite"] and len(names["sqlite"]) >= 5


async def test_opening_again_applies_no_migration_twice(store_url: str) -> None:
    for _ in range(2):
        s = open_store(store_url)
        await s.open(T0)
        n = shipped_migrations(s.dialect)
        assert await s.schema_version() == (n, n)
        await s.close()


async def test_a_schema_newer_than_the_code_refuses_to_start(store: Store, store_url: str) -> None:
    other = open_store(store_url)
    await other.open(T0)
    if other.dialect == "sqlite":
        await other._write(lambda c: c.execute(  # type: ignore[attr-defined]
            "INSERT INTO oncely_schema VALUES (99, 'future', '2030-01-01')"))
    else:
        async with other.connection() as conn:  # type: ignore[attr-defined]
            await conn.execute("INSERT INTO oncely_schema VALUES (99, 'future', now())")
    await other.close()
    fresh = open_store(store_url)
    with pytest.raises(SchemaTooNew, match="version 99, newer than this oncely knows"):
        await fresh.open(T0)


async def test_a_trigger_identity_runs_once_and_is_taken_over_only_when_abandoned(
    store: Store,
) -> None:
    args = {"id": "t1", "route": "process", "identity": "idempotency-key:x"}
    first = await store.trigger_begin(**args, worker="a", now=T0, lease_until=T0 + LEASE)
    assert first is not None and first.state == "running" and first.fence == 1
    assert await store.trigger_begin(**args, worker="b", now=T0, lease_until=T0 + LEASE) is None
    late = T0 + LEASE
    taken = await store.trigger_begin(**args, worker="b", now=late, lease_until=late + LEASE)
    assert taken is not None and taken.worker == "b" and taken.fence == 2
    assert not await store.trigger_finish(first, state="done", summary_json="{}", now=late)
    assert await store.trigger_finish(taken, state="done", summary_json='{"claimed": 3}',
                                      now=late)
    done = await store.trigger_get("t1")
    assert done is not None and done.state == "done" and done.summary == {"claimed": 3}
    much_later = late + LEASE * 10
    assert await store.trigger_begin(**args, worker="c", now=much_later,
                                     lease_until=much_later + LEASE) is None


async def test_a_failed_trigger_may_run_again(store: Store) -> None:
    args = {"id": "t2", "route": "process", "identity": "fresh:1"}
    first = await store.trigger_begin(**args, worker="a", now=T0, lease_until=T0 + LEASE)
    assert first is not None
    assert await store.trigger_finish(first, state="failed", summary_json=None, now=T0)
    again = await store.trigger_begin(**args, worker="b", now=T0, lease_until=T0 + LEASE)
    assert again is not None and again.fence == 2 and again.summary is None
    assert await store.trigger_get("missing") is None


async def test_pruning_deletes_only_what_finished_before_the_cutoff(store: Store) -> None:
    await store.job_insert(new(), T0, T0)
    running, _ = await store.job_insert(new(), T0, T0)
    [claimed_old, claimed_running] = await claim(store)
    await store.job_complete([done(claimed_old)])
    fresh, _ = await store.job_insert(new(), T0, T0)
    [claimed_fresh] = await claim(store)
    later = T0 + timedelta(days=8)
    await store.job_complete([done(claimed_fresh, at=later)])
    trigger = await store.trigger_begin(id="t", route="r", identity="i", worker="w", now=T0,
                                        lease_until=T0 + LEASE)
    assert trigger is not None
    await store.trigger_finish(trigger, state="done", summary_json="{}", now=T0)
    await store.occurrence_record(task="t", scheduled_for=T0, outcome="missed", job=None,
                                  now=T0, retained_after=T0)
    assert await store.prune(T0 + timedelta(days=7)) == 3
    left = {j.id for j in await store.job_list()}
    assert left == {running.id, fresh.id} and claimed_running.state is JobState.RUNNING
    assert await store.trigger_get("t") is None and await store.occurrence_list("t") == []
    assert await store.prune(T0 + timedelta(days=7)) == 0
