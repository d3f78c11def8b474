"""The storage seam: one small interface, named for domain operations, time passed in.

Both stores (``sqlite_store``, ``postgres_store``) implement ``Store``; one
conformance suite (``tests/test_store.py``) runs against each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

from .errors import ConfigError
from .model import (
    Completion,
    JobRecord,
    JobState,
    NewJob,
    Occurrence,
    ScheduleState,
    TriggerRecord,
)


@dataclass(frozen=True, slots=True)
class Rescued:
    id: int
    state: JobState
    worker: str | None


class Store(Protocol):
    """What the engine needs from a database. Every method is one short transaction."""

    dialect: str

    async def open(self, now: datetime) -> None:
        """Connect and apply pending migrations; refuse a schema newer than this code."""

    async def close(self) -> None: ...

    async def schema_version(self) -> tuple[int, int]:
        """(version in the store, version this code knows)."""

    async def job_insert(
        self, job: NewJob, now: datetime, retained_after: datetime
    ) -> tuple[JobRecord, bool]:
        """Insert a job, or return the job holding its key: (job, created)."""

    async def job_insert_many(self, jobs: Sequence[NewJob], now: datetime) -> list[int]:
        """Insert jobs without keys in one round trip; returns their ids."""

    async def job_claim(
        self,
        *,
        tasks: Sequence[str],
        queues: Sequence[str] | None,
        limit: int,
        worker: str,
        now: datetime,
        lease_until: datetime,
    ) -> list[JobRecord]: ...

    async def job_heartbeat(
        self, leases: Sequence[tuple[int, int]], lease_until: datetime
    ) -> set[int]:
        """Extend leases given as (id, fence); returns the ids still held."""

    async def job_complete(self, completions: Sequence[Completion]) -> set[int]:
        """Apply outcomes, fenced; returns the ids written."""

    async def job_rescue(self, now: datetime, limit: int = 1000) -> list[Rescued]:
        """Release jobs whose lease expired before ``now``."""

    async def job_get(self, job_id: int) -> JobRecord | None: ...

    async def job_list(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[JobRecord]: ...

    async def job_count_due(
        self, *, tasks: Sequence[str], queues: Sequence[str] | None, now: datetime
    ) -> int: ...

    async def job_count_by_state(self) -> dict[JobState, int]: ...

    async def job_cancel(self, job_id: int, now: datetime) -> JobRecord | None: ...

    async def job_retry(self, job_id: int, now: datetime) -> JobRecord | None: ...

    async def trigger_begin(
        self,
        *,
        id: str,
        route: str,
        identity: str,
        worker: str,
        now: datetime,
        lease_until: datetime,
    ) -> TriggerRecord | None:
        """Start (or take over a failed or abandoned) trigger; None if it is done or
        still running elsewhere."""

    async def trigger_finish(
        self, trigger: TriggerRecord, *, state: str, summary_json: str | None, now: datetime
    ) -> bool:
        """Record the end of a trigger run, fenced; False if another run took it over."""

    async def trigger_get(self, trigger_id: str) -> TriggerRecord | None: ...

    async def job_health(self, now: datetime, since: datetime) -> tuple[datetime | None, int]:
        """(run_at of the oldest due job, jobs that died since ``since``)."""

    async def prune(self, before: datetime, limit: int = 1000) -> int:
        """Delete finished jobs, finished triggers and occurrences older than ``before``
        (at most ``limit`` of each); returns how many rows went."""

    async def schedule_register(self, tasks: Sequence[str], now: datetime) -> None:
        """Start tracking periodic tasks (existing ones are kept as they are)."""

    async def schedule_list(self) -> list[ScheduleState]: ...

    async def schedule_touch(self, task: str, now: datetime) -> None:
        """Note that a tick for ``task`` arrived at ``now``."""

    async def schedule_set_paused(self, task: str, paused: bool) -> bool: ...

    async def occurrence_record(
        self, *, task: str, scheduled_for: datetime, outcome: str, job: NewJob | None,
        now: datetime, retained_after: datetime,
    ) -> tuple[bool, int | None]:
        """Record an occurrence once, in one transaction with its job (if any) and the
        schedule's forward-only progress: (recorded now, job id)."""

    async def occurrence_list(self, task: str, limit: int = 20) -> list[Occurrence]: ...


def open_store(url: str) -> Store:
    """A store for ``sqlite:///path.db``, ``sqlite:///:memory:`` or ``postgresql://...``."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from .sqlite_store import SQLiteStore

        return SQLiteStore.from_url(url)
    if scheme in ("postgresql", "postgres"):
        from .postgres_store import PostgresStore

        return PostgresStore.from_url(url)
    raise ConfigError(
        f"store URL {redact(url)!r} has an unsupported scheme {scheme!r}; "
        "use sqlite:///path/to/oncely.db or postgresql://user@host/dbname"
    )


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
