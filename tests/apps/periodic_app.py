"""An app with periodic tasks on a clock the tests move (for in-process CLI tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from oncely import Job, Oncely


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


clock = Clock()
jobs = Oncely(clock=clock, environ={}, schedule_grace=timedelta(minutes=2))
ran: list[datetime | None] = []


@jobs.periodic("*/5 * * * *", tz="Europe/Berlin")
def cleanup_expired_sessions(*, job: Job) -> None:
    ran.append(job.scheduled_for)


@jobs.periodic(every="1h", catch_up="skip")
def hourly_report(*, job: Job) -> None:
    ran.append(job.scheduled_for)
