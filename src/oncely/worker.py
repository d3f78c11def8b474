"""One ``process()`` call: claim due jobs in batches, run them, complete them, fenced.

``Runner.run`` is the whole loop; ``Oncely.process`` and the HTTP trigger both call it.
Handlers run concurrently up to ``concurrency``: async ones on the event loop, sync
ones in a thread pool. While they run, a heartbeat renews their leases; a job whose
lease was lost (the row was rescued or cancelled meanwhile) cannot be completed by
this worker, and that refusal is logged as ``job.fenced_out``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import retry
from .errors import StoreError
from .model import Completion, JobRecord, JobState
from .store import Store
from .tasks import Task

if TYPE_CHECKING:
    from .postgres_store import PostgresStore

log = logging.getLogger("oncely")
Clock = Callable[[], datetime]
#: what one attempt ended with: (completion, value, written); see Runner._outcome
Outcome = tuple[Completion | None, Any, bool | None]


@dataclass(slots=True)
class Summary:
    """What one ``process()`` call did; the JSON answer of ``POST /jobs/process``."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    fenced_out: int = 0
    rescued: int = 0
    remaining: int = 0
    job_ids: list[int] = field(default_factory=list)
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed, "succeeded": self.succeeded, "failed": self.failed,
            "dead": self.dead, "fenced_out": self.fenced_out, "rescued": self.rescued,
            "remaining": self.remaining, "job_ids": self.job_ids,
            "elapsed": round(self.elapsed, 3),
        }


class Job:
    """What a handler sees as ``job``: identity, attempt, and a way to renew its lease."""

    __slots__ = (
        "_runner",
        "args",
        "attempt",
        "id",
        "key",
        "lease_lost",
        "max_attempts",
        "queue",
        "record",
        "run_at",
        "scheduled_for",
        "task",
    )

    def __init__(self, record: JobRecord, runner: Runner):
        self.record = record
        self.id = record.id
        self.task = record.task
        self.queue = record.queue
        self.args = record.args
        self.key = record.key
        self.attempt = record.attempt
        self.max_attempts = record.max_attempts
        self.run_at = record.run_at
        #: for periodic tasks, the occurrence this job runs for (None otherwise)
        self.scheduled_for = record.scheduled_for
        self.lease_lost = False
        self._runner = runner

    @property
    def idempotency_key(self) -> str:
        """Stable across every attempt of this job: use it for side effects outside the
        database (an email's Message-ID, a payment provider's idempotency key)."""
        return self.key if self.key is not None else f"oncely-job-{self.id}"

    def heartbeat(self) -> Any:
        """Renew this job's lease now. From a sync handler it blocks and returns whether
        the lease is still held; from an async handler it returns an awaitable of that."""
        coro = self._runner.renew([self])
        loop = self._runner.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return asyncio.ensure_future(coro)
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.task} attempt {self.attempt}/{self.max_attempts}>"


class Runner:
    def __init__(
        self,
        *,
        store: Store,
        tasks: Mapping[str, Task],
        worker: str,
        clock: Clock,
        concurrency: int,
        lease: timedelta,
        batch_size: int,
        queues: Sequence[str] | None,
        executor: Executor,
        rng: random.Random | None = None,
        context: Mapping[str, Any] | None = None,
    ):
        self.store = store
        self.tasks = tasks
        self.worker = worker
        self.clock = clock
        self.concurrency = concurrency
        self.lease = lease
        self.batch_size = batch_size
        self.queues = list(queues) if queues is not None else None
        self.executor = executor
        self.rng = rng or random.Random()
        self.context = dict(context or {})
        self.loop = asyncio.get_running_loop()
        self.summary = Summary()
        self._running: dict[Job, asyncio.Task[None]] = {}
        self._finished: list[tuple[Job, Outcome]] = []
        self._wake = asyncio.Event()
        self._crashed: asyncio.Task[Any] | None = None

    async def run(self, budget: float) -> Summary:
        """Claim, run and complete until no job is due or the budget is spent. Claiming
        the next batch and writing the outcomes of the last one run in the background,
        overlapping with the handlers and with each other."""
        started = time.monotonic()
        deadline = started + budget
        names = list(self.tasks)
        error: StoreError | None = None
        writing: asyncio.Task[None] | None = None
        claim: asyncio.Task[list[JobRecord]] | None = None  # one at a time
        heartbeat = asyncio.create_task(self._heartbeat_forever())
        try:
            try:
                await self._rescue()
            except StoreError as exc:
                error = exc
            last_claim_empty = False
            drained = False  # a claim made while nothing else was in flight found nothing
            claimed_idle = False
            while True:
                idle = not self._running and not self._finished and writing is None
                if idle and claim is None and (
                    drained or error is not None or time.monotonic() >= deadline
                ):
                    break
                free = self.concurrency - len(self._running)
                claiming = claim is None and error is None and free > 0 and (
                    idle or (not last_claim_empty and free * 2 >= self.concurrency)
                ) and time.monotonic() < deadline
                if claiming:
                    claimed_idle = idle
                    claim = asyncio.create_task(self._claim(names, min(free, self.batch_size)))
                    claim.add_done_callback(self._wake_up)
                if writing is None and self._finished:
                    writing = asyncio.create_task(self._finish(self._finished))
                    writing.add_done_callback(self._wake_up)
                    self._finished = []
                await self._wake.wait()
                self._wake.clear()
                if self._crashed is not None:
                    self._crashed.result()
                if claim is not None and claim.done():
                    try:
                        claimed = claim.result()
                    except StoreError as exc:
                        error, claimed = exc, []
                    claim = None
                    last_claim_empty = not claimed
                    drained = not claimed and claimed_idle
                    for record in claimed:
                        self._start(Job(record, self))
                if writing is not None and writing.done():
                    try:
                        writing.result()
                    except StoreError as exc:
                        error = exc
                    writing = None
        finally:
            heartbeat.cancel()
            for task in [*self._running.values(), *[t for t in (writing, claim) if t]]:
                task.cancel()
        if error is not None:
            raise error
        self.summary.remaining = await self.store.job_count_due(
            tasks=names, queues=self.queues, now=self.clock()
        )
        self.summary.elapsed = time.monotonic() - started
        return self.summary

    def _wake_up(self, _: object) -> None:
        self._wake.set()

    def _start(self, job: Job) -> None:
        self._running[job] = self.loop.create_task(self._attempt(job))

    async def _attempt(self, job: Job) -> None:
        """One job's task: run it, then hand its outcome to the loop in ``run`` (done
        here rather than in a done callback, which would cost a loop turn per job)."""
        try:
            outcome = await self._outcome(job)
        except asyncio.CancelledError:
            raise
        except BaseException:  # not an Exception (those are outcomes): run() re-raises it
            self._crashed = asyncio.current_task()
            raise
        else:
            self._finished.append((job, outcome))
        finally:
            del self._running[job]
            self._wake.set()

    async def _rescue(self) -> None:
        for rescued in await self.store.job_rescue(self.clock()):
            self.summary.rescued += 1
            log.warning(
                "job %s rescued: lease of worker %s expired, now %s",
                rescued.id, rescued.worker, rescued.state,
                extra={"event": "job.rescued", "job_id": rescued.id,
                       "lost_worker": rescued.worker, "state": str(rescued.state)},
            )

    async def _claim(self, names: list[str], limit: int) -> list[JobRecord]:
        now = self.clock()
        claimed = await self.store.job_claim(
            tasks=names, queues=self.queues, limit=limit, worker=self.worker, now=now,
            lease_until=now + self.lease,
        )
        self.summary.claimed += len(claimed)
        return claimed

    async def _outcome(self, job: Job) -> Outcome:
        """Run one handler. Returns (completion, value, written): a success still to be
        written is (None, its return value, None), its Completion built with the others
        of its batch in ``_finish``; a failure is (its Completion, None, None); a handler
        whose own transaction wrote its outcome gives (Completion, None, True or False)."""
        task = self.tasks[job.task]
        kwargs: dict[str, Any] = dict(job.args)
        if task.wants_job:
            kwargs["job"] = job
        try:
            if task.wants_conn:
                return await self._attempt_in_transaction(task, job, kwargs)
            if task.is_async:
                value = await task.fn(**kwargs)
            else:
                value = await self.loop.run_in_executor(
                    self.executor, functools.partial(task.fn, **kwargs)
                )
        except Exception as exc:
            return self._failed(task, job, exc), None, None
        return None, value, None

    async def _attempt_in_transaction(
        self, task: Task, job: Job, kwargs: dict[str, Any]
    ) -> Outcome:
        """The handler's writes and the job's completion commit in one transaction; if
        the fence refuses the completion, the handler's writes roll back with it."""
        import psycopg

        store: PostgresStore = self.store  # type: ignore[assignment]
        async with store.connection() as conn:
            try:
                async with conn.transaction():
                    value = await task.fn(**kwargs, conn=conn)
                    completion = self._succeeded(job, value, self.clock())
                    if not await store.job_complete_on(conn, completion):
                        raise psycopg.Rollback()
                    return completion, None, True
            except Exception as exc:
                return self._failed(task, job, exc), None, None
        return completion, None, False

    def _succeeded(self, job: Job, value: Any, at: datetime) -> Completion:
        result_json = retry.encode_result(value)
        if value is not None and result_json is None:
            log.warning(
                "job %s returned a %s, which is not JSON; stored null",
                job.id, type(value).__name__,
                extra={"event": "job.result_not_json", "job_id": job.id, "task": job.task},
            )
        return retry.succeeded(job.record, result_json, at)

    def _failed(self, task: Task, job: Job, exc: Exception) -> Completion:
        return retry.failed(job.record, exc, task.backoff, self.clock(), self.worker, self.rng)

    async def _finish(self, outcomes: list[tuple[Job, Outcome]]) -> None:
        at = self.clock()  # when the successes of this batch are recorded as finished
        ended = [(job, c if c is not None else self._succeeded(job, value, at), written)
                 for job, (c, value, written) in outcomes]
        pending = [c for _, c, written in ended if written is None]
        written_ids = await self._complete(pending) if pending else set()
        for job, completion, written in ended:
            ok = written if written is not None else completion.id in written_ids
            self._account(job, completion, ok)

    async def _complete(self, completions: list[Completion]) -> set[int]:
        """Write outcomes; on a store error retry for up to half a lease, then give up
        (the leases expire and the jobs run again: never lost, never completed twice)."""
        delay, give_up = 0.1, time.monotonic() + self.lease.total_seconds() / 2
        while True:
            try:
                return await self.store.job_complete(completions)
            except StoreError:
                if time.monotonic() + delay > give_up:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _account(self, job: Job, completion: Completion, written: bool) -> None:
        s = self.summary
        if written and completion.state is JobState.SUCCEEDED:  # the hot path: keep it lean
            s.job_ids.append(job.id)
            s.succeeded += 1
            if log.isEnabledFor(logging.INFO):
                log.info("job %s succeeded", job.id,
                         extra={"event": "job.succeeded", **self._fields(job)})
            return
        fields = self._fields(job)
        if not written:
            s.fenced_out += 1
            log.warning(
                "job %s: outcome %s refused, this worker no longer holds its lease",
                job.id, completion.state,
                extra={"event": "job.fenced_out", **fields, "outcome": str(completion.state)},
            )
            return
        s.job_ids.append(job.id)
        if completion.state is JobState.RETRYING:
            s.failed += 1
            log.warning(
                "job %s failed, retrying at %s", job.id, completion.run_at,
                extra={"event": "job.retrying", **fields,
                       "retry_at": completion.run_at.isoformat() if completion.run_at else None},
            )
        else:
            s.dead += 1
            log.error(
                "job %s is dead after %s attempts", job.id, job.attempt,
                extra={"event": "job.dead", **fields},
            )

    def _fields(self, job: Job) -> dict[str, Any]:
        return {"job_id": job.id, "task": job.task, "attempt": job.attempt,
                "worker": self.worker, "key": job.key, **self.context}

    async def renew(self, jobs: Sequence[Job]) -> bool:
        """Extend the leases of ``jobs``; marks and logs the ones this worker lost."""
        live = [j for j in jobs if not j.lease_lost]
        if not live:
            return False
        held = await self.store.job_heartbeat(
            [(j.id, j.record.fence) for j in live], self.clock() + self.lease
        )
        for job in live:
            if job.id not in held:
                job.lease_lost = True
                log.warning(
                    "job %s: lease lost, its outcome will be refused", job.id,
                    extra={"event": "job.lease_lost", "job_id": job.id, "task": job.task,
                           "worker": self.worker},
                )
        return all(j.id in held for j in live)

    async def _heartbeat_forever(self) -> None:
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            jobs = list(self._running)
            if not jobs:
                continue
            try:
                await self.renew(jobs)
            except StoreError as exc:
                log.warning("heartbeat failed: %s", exc, extra={"event": "heartbeat.failed"})
