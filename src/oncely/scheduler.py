"""The built-in scheduler, for places without a managed one (``oncely scheduler``).

It fires oncely's HTTP triggers itself, with Cloud Scheduler's semantics: the same
``X-CloudScheduler-JobName`` and ``X-CloudScheduler-ScheduleTime`` headers (so the
endpoint deduplicates retries the same way), retries on any non-2xx answer or timeout
with min/max backoff, max doublings, a retry count and an attempt deadline.

Several scheduler processes may run for availability. Each occurrence is claimed in the
store before it is fired (a trigger record keyed by job name and scheduled time, with a
lease), so exactly one process fires it; a process that sees it claimed keeps it in
mind and takes it over if the claimer dies (its lease expires). No leader election.
The run history is the claim records themselves (``GET /jobs/triggers/{id}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from .errors import ConfigError, StoreError
from .schedule import Schedule, ScheduleError
from .store import Store
from .triggers import Busy, Identity, Replayed, Started, Triggers

if TYPE_CHECKING:
    import argparse

    from .app import Oncely

log = logging.getLogger("oncely")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Cloud Scheduler's retry configuration, with its defaults."""

    retry_count: int = 3
    min_backoff: float = 5.0
    max_backoff: float = 3600.0
    max_doublings: int = 5
    attempt_deadline: float = 180.0

    def __post_init__(self) -> None:
        if self.retry_count < 0 or self.max_doublings < 0:
            raise ConfigError("retry_count and max_doublings must be 0 or more")
        if not 0 < self.min_backoff <= self.max_backoff or self.attempt_deadline <= 0:
            raise ConfigError("need 0 < min_backoff <= max_backoff and attempt_deadline > 0")

    def delay(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1-based): ``min_backoff`` doubles
        ``max_doublings`` times, then grows linearly by the last doubled step, capped at
        ``max_backoff`` (10 s, 300 s and 3 doublings give 10, 20, 40, 80, 160, 240, 300)."""
        if retry <= self.max_doublings + 1:
            raw = self.min_backoff * 2 ** (retry - 1)
        else:
            raw = self.min_backoff * 2**self.max_doublings * (retry - self.max_doublings)
        return float(min(raw, self.max_backoff))

    def lease(self) -> timedelta:
        """How long a claim may take in the worst case, with a margin."""
        waits = sum(self.delay(r) for r in range(1, self.retry_count + 1))
        attempts = (self.retry_count + 1) * self.attempt_deadline
        return timedelta(seconds=min(waits + attempts + 5, 6 * 3600))


@dataclass(frozen=True, slots=True)
class Target:
    """One scheduler job: fire ``path`` at every occurrence of ``schedule``."""

    name: str
    path: str
    schedule: Schedule


@dataclass(slots=True)
class Firing:
    target: str
    scheduled_for: datetime
    outcome: str  # "ok", "gave-up", "claimed-elsewhere", "done-elsewhere"
    attempts: list[dict[str, Any]] = field(default_factory=list)


def schedule_time(at: datetime) -> str:
    """RFC 3339 in UTC, as Cloud Scheduler sends it."""
    return at.isoformat().replace("+00:00", "Z")


class Scheduler:
    def __init__(
        self, store: Store, *, base_url: str, token: str | None, targets: Sequence[Target],
        policy: RetryPolicy, clock: Callable[[], datetime], worker: str,
        client: httpx.AsyncClient, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        window: timedelta = timedelta(minutes=10),
    ):
        self.triggers = Triggers(store, worker=worker, clock=clock)
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.targets = list(targets)
        self.policy = policy
        self.clock = clock
        self.worker = worker
        self.client = client
        self.sleep = sleep
        self.window = window
        self._scanned: datetime | None = None
        self._pending: set[tuple[int, datetime]] = set()

    def scan(self, now: datetime) -> list[tuple[Target, datetime]]:
        """Occurrences due since the last scan, plus ones claimed elsewhere that are not
        known to be done yet (in case their claimer died)."""
        since = self._scanned if self._scanned is not None else now
        self._scanned = now
        due = {(i, at) for i, t in enumerate(self.targets)
               for at in t.schedule.occurrences(since, now)}
        due |= {(i, at) for i, at in self._pending if now - at <= self.window}
        self._pending.clear()
        return sorted(((self.targets[i], at) for i, at in due), key=lambda p: p[1])

    async def fire(self, target: Target, at: datetime) -> Firing:
        """Claim the occurrence; if it is ours, fire it with retries and record how it went."""
        identity = Identity("scheduler", f"{target.name}@{schedule_time(at)}")
        begun = await self.triggers.begin(f"scheduler:{target.name}", identity,
                                          self.policy.lease())
        if isinstance(begun, Replayed):
            return Firing(target.name, at, "done-elsewhere")
        if isinstance(begun, Busy):
            self._pending.add((self.targets.index(target), at))
            return Firing(target.name, at, "claimed-elsewhere")
        return await self._fire_claimed(begun, target, at)

    async def _fire_claimed(self, begun: Started, target: Target, at: datetime) -> Firing:
        firing = Firing(target.name, at, "gave-up")

        async def work(trigger_id: str) -> dict[str, Any]:
            for attempt in range(self.policy.retry_count + 1):
                if attempt:
                    await self.sleep(self.policy.delay(attempt))
                result = await self._attempt(target, at, attempt + 1)
                firing.attempts.append(result)
                if result["ok"]:
                    firing.outcome = "ok"
                    break
            return {"outcome": firing.outcome, "attempts": firing.attempts,
                    "scheduled_for": at.isoformat(), "fired_by": self.worker}

        await self.triggers.run(begun, work)
        return firing

    async def _attempt(self, target: Target, at: datetime, attempt: int) -> dict[str, Any]:
        headers = {"X-CloudScheduler": "true", "X-CloudScheduler-JobName": target.name,
                   "X-CloudScheduler-ScheduleTime": schedule_time(at),
                   "User-Agent": "oncely-scheduler"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        started = self.clock()
        try:
            response = await self.client.post(f"{self.base_url}{target.path}", headers=headers,
                                              timeout=self.policy.attempt_deadline)
            status, error = response.status_code, None
        except httpx.HTTPError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        ok = status is not None and 200 <= status < 300
        result = {"attempt": attempt, "at": started.isoformat(), "status": status,
                  "error": error, "ok": ok}
        log.log(logging.INFO if ok else logging.WARNING,
                "fired %s for %s: %s", target.name, schedule_time(at), status or error,
                extra={"event": "scheduler.fire", "job_name": target.name,
                       "scheduled_for": schedule_time(at), "attempt": attempt,
                       "status": status, "error": error, "worker": self.worker})
        return result

    def next_wakeup(self, now: datetime) -> float:
        """Seconds until the next occurrence of any target (at most 1 s, so claims held
        elsewhere are looked at again soon)."""
        upcoming = min(t.schedule.next_after(now) for t in self.targets)
        return max(0.0, min(1.0, (upcoming - now).total_seconds()))

    async def run(self, stop: asyncio.Event) -> None:
        """Fire occurrences as they come until ``stop`` is set."""
        running: set[asyncio.Task[Firing]] = set()
        while not stop.is_set():
            for target, at in self.scan(self.clock()):
                task = asyncio.create_task(self._safely(target, at))
                running.add(task)
                task.add_done_callback(running.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.next_wakeup(self.clock()))
        # Stopping: let firings in flight finish and record themselves (a cancelled one
        # would leave its claim to expire), within one attempt deadline.
        if running:
            await asyncio.wait(running, timeout=self.policy.attempt_deadline)
        for task in running:
            task.cancel()

    async def _safely(self, target: Target, at: datetime) -> Firing:
        try:
            return await self.fire(target, at)
        except StoreError as exc:  # the store is down: keep the occurrence for later
            log.warning("scheduler could not claim %s@%s: %s", target.name, at, exc,
                        extra={"event": "scheduler.store_error"})
            self._pending.add((self.targets.index(target), at))
            return Firing(target.name, at, "store-error")


def targets_for(app: Oncely, mode: str, every: str, name: str) -> list[Target]:
    if mode == "heartbeat":
        try:
            schedule = Schedule.parse(every=every)
        except ScheduleError as exc:
            raise ConfigError(f"--every {every!r}: {exc}") from None
        return [Target(f"{name}-tick", "/jobs/tick", schedule)]
    if not app.periodics:
        raise ConfigError("--mode per-task needs periodic tasks; declare them with "
                          "@jobs.periodic, or use --mode heartbeat")
    return [Target(f"{name}-{task}", f"/jobs/run/{task}", p.schedule)
            for task, p in sorted(app.periodics.items())]


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            with open(args.token_file) as f:
                return f.read().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {args.token_file!r}: {exc.strerror}") from None
    return str(args.token or os.environ.get("ONCELY_SCHEDULER_TOKEN") or "") or None


async def run_from_args(app: Oncely, args: argparse.Namespace) -> None:
    policy = RetryPolicy(args.retry_count, args.min_backoff, args.max_backoff,
                         args.max_doublings, args.attempt_deadline)
    targets = targets_for(app, args.mode, args.every, args.name)
    store = await app.astore()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = f"{app.worker_id}:scheduler:{hashlib.sha256(os.urandom(8)).hexdigest()[:6]}"
    async with httpx.AsyncClient() as client:
        scheduler = Scheduler(store, base_url=args.target, token=_token(args), targets=targets,
                              policy=policy, clock=app.clock, worker=worker, client=client)
        log.info("scheduler %s firing %s at %s", worker, [t.name for t in targets],
                 args.target, extra={"event": "scheduler.start", "worker": worker})
        await scheduler.run(stop)
