"""Trigger identity: a retried trigger never runs twice.

Every call to a trigger endpoint gets an identity, taken from the first of these the
caller sent (header names are matched case-insensitively, and only after the caller
was authenticated, since anyone can send headers):

1. ``Idempotency-Key``;
2. Cloud Scheduler's ``X-CloudScheduler-JobName`` + ``X-CloudScheduler-ScheduleTime``
   (the same on every retry of one scheduled run);
3. Cloud Tasks' ``X-CloudTasks-TaskName``;
4. QStash's ``Upstash-Message-Id``;
5. CloudEvents' ``ce-source`` + ``ce-id``;
6. otherwise a fresh identity (the trigger is recorded but cannot be replayed).

``Triggers`` records each identity's run in the store: the first caller runs it, a
retry of a finished run gets the recorded summary back, and a retry while it still
runs is told to come back later.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .model import TriggerRecord
from .store import Store

log = logging.getLogger("oncely")
MAX_IDENTITY = 512


@dataclass(frozen=True, slots=True)
class Identity:
    source: str
    value: str

    @property
    def replayable(self) -> bool:
        return self.source != "fresh"


def identify(headers: Mapping[str, str]) -> Identity:
    """The identity of a trigger request; ``headers`` must be case-insensitive or
    lower-cased (Starlette's are)."""

    def get(name: str) -> str | None:
        value = headers.get(name)
        return value.strip()[:MAX_IDENTITY] if value and value.strip() else None

    if key := get("idempotency-key"):
        return Identity("idempotency-key", key)
    job, at = get("x-cloudscheduler-jobname"), get("x-cloudscheduler-scheduletime")
    if job and at:
        return Identity("cloud-scheduler", f"{job}@{at}")
    if task := get("x-cloudtasks-taskname"):
        return Identity("cloud-tasks", task)
    if message := get("upstash-message-id"):
        return Identity("qstash", message)
    source, event = get("ce-source"), get("ce-id")
    if source and event:
        return Identity("cloudevents", f"{source}#{event}")
    return Identity("fresh", uuid.uuid4().hex)


def trigger_id(route: str, identity: Identity) -> str:
    """A short stable id for (route, identity): the same retry maps to the same id."""
    raw = f"{route}\n{identity.source}\n{identity.value}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Started:
    record: TriggerRecord


@dataclass(frozen=True, slots=True)
class Replayed:
    record: TriggerRecord


@dataclass(frozen=True, slots=True)
class Busy:
    record: TriggerRecord
    retry_after: int


class Triggers:
    """Begins and finishes trigger runs in the store, for one replica."""

    def __init__(self, store: Store, *, worker: str, clock: Callable[[], datetime]):
        self.store = store
        self.worker = worker
        self.clock = clock

    async def begin(
        self, route: str, identity: Identity, lease: timedelta
    ) -> Started | Replayed | Busy:
        now = self.clock()
        tid = trigger_id(route, identity)
        record = await self.store.trigger_begin(
            id=tid,
            route=route,
            identity=f"{identity.source}:{identity.value}",
            worker=self.worker,
            now=now,
            lease_until=now + lease,
        )
        if record is not None:
            return Started(record)
        existing = await self.store.trigger_get(tid)
        if existing is None:  # it vanished between the two statements: run it
            return await self.begin(route, identity, lease)
        if existing.state == "done":
            return Replayed(existing)
        wait = (existing.lease_expires_at - now).total_seconds()
        return Busy(existing, retry_after=max(1, min(60, int(wait) + 1)))

    async def run(
        self, started: Started, work: Callable[[str], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Run ``work(trigger_id)``, record its summary, log one line, return the summary.
        If ``work`` raises, the trigger is marked failed so a retry can run it again."""
        record = started.record
        try:
            summary = await work(record.id)
        except BaseException as exc:
            # if the store is down, the trigger's lease expiry frees the identity instead
            with contextlib.suppress(Exception):
                await self.store.trigger_finish(
                    record, state="failed", summary_json=None, now=self.clock()
                )
            log.error(
                "trigger %s failed: %s",
                record.id,
                exc,
                extra={
                    "event": "trigger.failed",
                    "trigger_id": record.id,
                    "route": record.route,
                    "replica": self.worker,
                    "error": str(exc),
                },
            )
            raise
        kept = await self.store.trigger_finish(
            record, state="done", summary_json=json.dumps(summary), now=self.clock()
        )
        log.info(
            "trigger %s done: %s",
            record.id,
            {k: v for k, v in summary.items() if k != "job_ids"},
            extra={
                "event": "trigger.done",
                "trigger_id": record.id,
                "route": record.route,
                "identity": record.identity,
                "replica": self.worker,
                "recorded": kept,
                **{k: v for k, v in summary.items() if isinstance(v, int | float)},
                "job_ids": summary.get("job_ids", []),
            },
        )
        return summary
