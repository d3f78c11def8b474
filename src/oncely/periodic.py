"""Periodic tasks: turning ticks into exactly one job per occurrence.

A tick (``POST /jobs/tick``, ``oncely tick``) asks, for every periodic task, which
occurrences are due since the last one recorded (``Schedule.due``, by the task's
``catch_up`` policy), records each occurrence once and enqueues its job in the same
transaction. The primary key on (task, scheduled time) decides: twenty replicas
receiving the same tick, or the tick retried, record each occurrence once. No leader.

``report`` notices when the timer stops: an occurrence is missed when its grace period
passed and no tick recorded it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .model import NewJob, ScheduleState
from .schedule import Schedule
from .store import Store
from .tasks import Task


@dataclass(frozen=True, slots=True)
class Periodic:
    task: Task
    schedule: Schedule


@dataclass(slots=True)
class TickReport:
    enqueued: list[dict[str, Any]] = field(default_factory=list)
    missed: list[dict[str, Any]] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)
    pruned: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"enqueued": self.enqueued, "missed": self.missed, "paused": self.paused,
                "pruned": self.pruned}


def occurrence_key(task: str, at: datetime) -> str:
    return f"periodic:{task}@{at.isoformat()}"


def occurrence_job(periodic: Periodic, at: datetime) -> NewJob:
    task = periodic.task
    return NewJob(task=task.name, args_json="{}", queue=task.queue, priority=task.priority,
                  run_at=at, max_attempts=task.max_attempts, key=occurrence_key(task.name, at),
                  scheduled_for=at)


async def record(
    store: Store, periodic: Periodic, at: datetime, *, now: datetime, retention: timedelta,
    report: TickReport, paused: bool = False,
) -> None:
    """Record one due occurrence: enqueue its job (or note it paused), once."""
    name = periodic.task.name
    job = None if paused else occurrence_job(periodic, at)
    recorded, job_id = await store.occurrence_record(
        task=name, scheduled_for=at, outcome="paused" if paused else "enqueued", job=job,
        now=now, retained_after=now - retention,
    )
    if recorded and job_id is not None:
        report.enqueued.append({"task": name, "scheduled_for": at.isoformat(), "job_id": job_id})


async def tick(
    store: Store, periodics: Mapping[str, Periodic], *, now: datetime, grace: timedelta,
    retention: timedelta,
) -> TickReport:
    """Enqueue every periodic task's due occurrences exactly once; record missed ones."""
    report = TickReport()
    if not periodics:
        return report
    await store.schedule_register(list(periodics), now)
    states = {s.task: s for s in await store.schedule_list()}
    for name, periodic in periodics.items():
        state = states[name]
        await store.schedule_touch(name, now)
        due = periodic.schedule.due(state.last_occurrence, now, grace=grace)
        for at in due.missed:
            recorded, _ = await store.occurrence_record(
                task=name, scheduled_for=at, outcome="missed", job=None, now=now,
                retained_after=now - retention,
            )
            if recorded:
                report.missed.append({"task": name, "scheduled_for": at.isoformat()})
        if state.paused:
            report.paused.append(name)
        for at in due.fire:
            await record(store, periodic, at, now=now, retention=retention, report=report,
                         paused=state.paused)
    return report


def status(
    periodics: Mapping[str, Periodic], states: Mapping[str, ScheduleState], *, now: datetime,
    grace: timedelta,
) -> list[dict[str, Any]]:
    """Per task: schedule, paused, last and next occurrence, and missed occurrences (due
    longer than ``grace`` ago and never recorded: the external timer did not call)."""
    rows = []
    for name, periodic in sorted(periodics.items()):
        state = states.get(name)
        last = state.last_occurrence if state else None
        baseline = max(filter(None, [last, state.created_at if state else None]), default=None)
        paused = bool(state and state.paused)
        missed = [] if paused or baseline is None else periodic.schedule.missed_since(
            baseline, now, grace)
        rows.append({
            "task": name, "schedule": str(periodic.schedule), "tz": periodic.schedule.tz,
            "catch_up": periodic.schedule.catch_up, "paused": paused,
            "last_occurrence": last.isoformat() if last else None,
            "last_tick_at": state.last_tick_at.isoformat() if state and state.last_tick_at
            else None,
            "next_occurrence": periodic.schedule.next_after(now).isoformat(),
            "missed": [m.isoformat() for m in missed],
        })
    return rows
