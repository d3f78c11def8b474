"""The values that cross the store boundary.

The job state machine, drawn once::

                 claim (lease, fence+1)            handler returned
    pending ───────────────────────────► running ─────────────────► succeeded
       ▲  ▲                               │  │  handler raised, attempts left
       │  │        run_at = now + backoff │  └──────────────────────► retrying ──┐
       │  └───────────────────────────────┼───── lease expired, attempts left ──┤
       │                                  │ attempts exhausted                  │
       │                                  └─────────────────────────► dead      │
       │        claim when run_at <= now                                        │
       └────────────────────────────────────────────────────────────────────────┘
    pending | retrying | running ── cancel ──► cancelled
    dead | cancelled ── retry ──► pending

Every write after a claim is fenced: it applies only while the row is still
``running`` with the ``fence`` the claim returned, so a worker that lost its lease
cannot complete, fail or extend the job.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import ConfigError


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})


def check_aware(value: datetime, name: str) -> datetime:
    """Refuse naive datetimes: oncely never guesses a time zone."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigError(
            f"{name}={value.isoformat()} has no time zone; pass an aware datetime, "
            "e.g. datetime.now(timezone.utc)"
        )
    return value


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job as enqueue builds it: validated, JSON already encoded."""

    task: str
    args_json: str
    queue: str
    priority: int
    run_at: datetime
    max_attempts: int
    key: str | None = None
    scheduled_for: datetime | None = None


@dataclass(slots=True)
class JobRecord:
    """A job row as the store returns it. Treat it as read-only; it is not frozen only
    because one is built per claimed job and a frozen dataclass takes 4x as long to build."""

    id: int
    task: str
    queue: str
    args: dict[str, Any]
    key: str | None
    state: JobState
    priority: int
    run_at: datetime
    created_at: datetime
    attempt: int
    max_attempts: int
    fence: int
    attempted_at: datetime | None
    attempted_by: str | None
    lease_expires_at: datetime | None
    finished_at: datetime | None
    result: Any
    errors: list[dict[str, Any]] = field(default_factory=list)
    scheduled_for: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "args": self.args,
            "key": self.key,
            "state": str(self.state),
            "priority": self.priority,
            "run_at": iso(self.run_at),
            "created_at": iso(self.created_at),
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "attempted_at": iso(self.attempted_at),
            "attempted_by": self.attempted_by,
            "lease_expires_at": iso(self.lease_expires_at),
            "finished_at": iso(self.finished_at),
            "result": self.result,
            "errors": self.errors,
            "scheduled_for": iso(self.scheduled_for),
        }


@dataclass(slots=True)
class Completion:
    """The fenced outcome of one attempt, as the worker hands it to the store (built
    per job, so not frozen, like JobRecord).

    ``state`` is succeeded, retrying or dead. ``error_json`` is one entry for the
    job's error list (None on success); ``run_at`` is the retry time (None unless
    retrying).
    """

    id: int
    fence: int
    state: JobState
    at: datetime
    result_json: str | None = None
    error_json: str | None = None
    run_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TriggerRecord:
    """One trigger identity's run: ``running``, ``done`` (with its summary) or ``failed``."""

    id: str
    route: str
    identity: str
    state: str
    fence: int
    worker: str
    started_at: datetime
    lease_expires_at: datetime
    finished_at: datetime | None
    summary: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "trigger_id": self.id,
            "route": self.route,
            "identity": self.identity,
            "state": self.state,
            "worker": self.worker,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "summary": self.summary,
        }


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A periodic task's progress as the store knows it."""

    task: str
    created_at: datetime
    last_occurrence: datetime | None
    last_tick_at: datetime | None
    paused: bool


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One occurrence of a periodic task: enqueued (with its job), missed or paused."""

    task: str
    scheduled_for: datetime
    outcome: str
    job_id: int | None
    recorded_at: datetime
