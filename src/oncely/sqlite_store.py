"""The embedded store: SQLite, for one machine.

Limits, stated plainly: SQLite has one writer at a time, so claims are serialised by
``BEGIN IMMEDIATE`` transactions (short ones: a claim is one SELECT and one UPDATE by id).
Several processes may share one database file on one machine (WAL mode); do not put
the file on a network file system. Durability follows ``synchronous`` (default FULL:
a committed job survives a power loss; ``?synchronous=normal`` trades that for speed
and still survives any process crash). Handler connections that commit with the job's
completion are a PostgreSQL feature.

All database calls run on one thread owned by the store, so a busy database never
blocks the event loop.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from . import queries
from .errors import ConfigError, SchemaTooNew, StoreError, StoreUnavailable
from .model import (
    Completion,
    JobRecord,
    JobState,
    NewJob,
    Occurrence,
    ScheduleState,
    TriggerRecord,
)
from .store import Rescued

T = TypeVar("T")
Q = queries.load("sqlite")
_SYNCHRONOUS = ("off", "normal", "full", "extra")


def ts(value: datetime) -> str:
    """The one storage format for times: fixed-width UTC ISO 8601."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def to_record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        task=row["task"],
        queue=row["queue"],
        args=json.loads(row["args"]),
        key=row["key"],
        state=JobState(row["state"]),
        priority=row["priority"],
        run_at=datetime.fromisoformat(row["run_at"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        fence=row["fence"],
        attempted_at=_dt(row["attempted_at"]),
        attempted_by=row["attempted_by"],
        lease_expires_at=_dt(row["lease_expires_at"]),
        finished_at=_dt(row["finished_at"]),
        result=json.loads(row["result"]) if row["result"] is not None else None,
        errors=json.loads(row["errors"]),
        scheduled_for=_dt(row["scheduled_for"]),
    )


def to_trigger(row: sqlite3.Row) -> TriggerRecord:
    return TriggerRecord(
        id=row["id"],
        route=row["route"],
        identity=row["identity"],
        state=row["state"],
        fence=row["fence"],
        worker=row["worker"],
        started_at=datetime.fromisoformat(row["started_at"]),
        lease_expires_at=datetime.fromisoformat(row["lease_expires_at"]),
        finished_at=_dt(row["finished_at"]),
        summary=json.loads(row["summary"]) if row["summary"] is not None else None,
    )


def insert_on(
    conn: sqlite3.Connection, job: NewJob, now: datetime, retained_after: datetime
) -> tuple[JobRecord, bool]:
    """Insert a job on a connection whose transaction the caller owns.

    Used by the store inside its own transaction, and by ``Oncely.enqueue(conn=...)``
    so a job commits or rolls back with the caller's other writes.
    """
    previous = conn.row_factory
    conn.row_factory = sqlite3.Row
    try:
        if job.key is not None:
            release = {"key": job.key, "retained_after": ts(retained_after)}
            conn.execute(Q["job_release_key"], release)
        params = {
            "task": job.task, "queue": job.queue, "args": job.args_json, "key": job.key,
            "priority": job.priority, "run_at": ts(job.run_at), "now": ts(now),
            "max_attempts": job.max_attempts,
            "scheduled_for": ts(job.scheduled_for) if job.scheduled_for else None,
        }
        row = conn.execute(Q["job_insert"], params).fetchone()
        if row is not None:
            return to_record(row), True
        existing = conn.execute(Q["job_get_by_key"], {"key": job.key}).fetchone()
        if existing is None:  # pragma: no cover - the holder vanished inside our transaction
            raise StoreError(f"job key {job.key!r} conflicted but no job holds it; retry")
        return to_record(existing), False
    finally:
        conn.row_factory = previous


class _Recount(Exception):
    """A batch completion wrote fewer jobs than it held: roll back and count them."""


class SQLiteStore:
    dialect = "sqlite"

    def __init__(self, path: str, *, synchronous: str = "full", busy_timeout: float = 30.0):
        if synchronous not in _SYNCHRONOUS:
            raise ConfigError(
                f"sqlite synchronous={synchronous!r} is not one of {', '.join(_SYNCHRONOUS)}"
            )
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        parts = urlsplit(url)
        path = parts.netloc + parts.path
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ConfigError(
                f"store URL {url!r} names no file; use sqlite:///oncely.db (relative), "
                "sqlite:////abs/path.db or sqlite:///:memory:"
            )
        options = dict(parse_qsl(parts.query))
        unknown = set(options) - {"synchronous", "busy_timeout"}
        if unknown:
            raise ConfigError(
                f"store URL {url!r} has unknown option(s) {sorted(unknown)}; "
                "sqlite accepts synchronous and busy_timeout"
            )
        try:
            timeout = float(options.get("busy_timeout", 30))
        except ValueError:
            raise ConfigError(
                f"busy_timeout={options['busy_timeout']!r} in {url!r} is not a number of seconds"
            ) from None
        synchronous = options.get("synchronous", "full").lower()
        return cls(path, synchronous=synchronous, busy_timeout=timeout)

    # -- plumbing ---------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            raise StoreError("the SQLite store is not open; call open() first")
        conn = self._conn

        def run() -> T:
            try:
                return fn(conn)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise StoreUnavailable(
                        f"SQLite database {self.path!r} stayed locked for "
                        f"{self.busy_timeout:g} s; another process holds a long write"
                    ) from exc
                raise StoreError(f"SQLite error on {self.path!r}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite error on {self.path!r}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def in_transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._call(in_transaction)

    # -- lifecycle ----------------------------------------------------------------

    async def open(self, now: datetime) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oncely-sqlite")

        def connect() -> sqlite3.Connection:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=self.busy_timeout, isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
            conn.row_factory = sqlite3.Row
            if self.path != ":memory:":
                self._wal(conn)
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            return conn

        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(self._executor, connect)
            if await self._call(self._needs_migration):
                await self._write(lambda conn: self._migrate(conn, now))
        except BaseException:
            await self.close()
            raise

    def _wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL. The switch needs an exclusive lock and SQLite answers "locked"
        at once, without its busy handler, while another process holds the file open in
        rollback mode (replicas starting together on a new file): retry within the busy
        timeout."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    conn.close()
                    raise StoreUnavailable(
                        f"cannot switch SQLite database {self.path!r} to WAL mode: {exc}"
                    ) from exc
                time.sleep(0.01)

    def _needs_migration(self, conn: sqlite3.Connection) -> bool:
        """Read-only, so opening a migrated database takes no write lock (a caller that
        holds one in its own transaction, for ``enqueue(conn=...)``, is not blocked)."""
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'oncely_schema'"
        ).fetchone()
        if exists is None:
            return True
        current = conn.execute(Q["schema_version"]).fetchone()["version"]
        return bool(current != len(queries.migrations(self.dialect)))

    def _migrate(self, conn: sqlite3.Connection, now: datetime) -> None:
        conn.execute(Q["schema_create"])
        current = conn.execute(Q["schema_version"]).fetchone()["version"]
        known = queries.migrations(self.dialect)
        if current > len(known):
            raise SchemaTooNew(
                f"SQLite database {self.path!r} has oncely schema version {current}, "
                f"newer than this oncely knows ({len(known)}); upgrade oncely"
            )
        for migration in known[current:]:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                Q["schema_record"],
                {"version": migration.version, "name": migration.name, "now": ts(now)},
            )

    async def close(self) -> None:
        conn, executor = self._conn, self._executor
        self._conn, self._executor = None, None
        if executor is not None:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            executor.shutdown(wait=True)

    async def schema_version(self) -> tuple[int, int]:
        row = await self._call(lambda conn: conn.execute(Q["schema_version"]).fetchone())
        return int(row["version"]), len(queries.migrations(self.dialect))

    # -- jobs -------------------------------------------------------------------------

    async def job_insert(
        self, job: NewJob, now: datetime, retained_after: datetime
    ) -> tuple[JobRecord, bool]:
        return await self._write(lambda conn: insert_on(conn, job, now, retained_after))

    async def job_insert_many(self, jobs: Sequence[NewJob], now: datetime) -> list[int]:
        rows = [
            {"task": j.task, "queue": j.queue, "args": j.args_json, "priority": j.priority,
             "run_at": ts(j.run_at), "now": ts(now), "max_attempts": j.max_attempts}
            for j in jobs
        ]

        def insert(conn: sqlite3.Connection) -> list[int]:
            return [conn.execute(Q["job_insert_many"], row).fetchone()[0] for row in rows]

        return await self._write(insert)

    async def job_claim(
        self, *, tasks: Sequence[str], queues: Sequence[str] | None, limit: int, worker: str,
        now: datetime, lease_until: datetime,
    ) -> list[JobRecord]:
        params = {
            "tasks": json.dumps(list(tasks)),
            "queues": json.dumps(list(queues)) if queues is not None else None,
            "limit": limit, "worker": worker, "now": ts(now), "lease_until": ts(lease_until),
        }

        def claim(conn: sqlite3.Connection) -> str:
            cur = conn.cursor()
            cur.row_factory = None
            ids, picked = cur.execute(Q["job_claim_pick"], params).fetchone()
            if ids != "[]":
                cur.execute(Q["job_claim"], {**params, "ids": ids})
            return str(picked)

        rows = json.loads(await self._write(claim))
        # the columns job_claim_pick returns, in order; the rest are what the claim set
        running, parse = JobState.RUNNING, datetime.fromisoformat
        jobs = [
            JobRecord(id=i, task=t, queue=q, args=a, key=k, state=running, priority=p,
                      run_at=parse(r), created_at=parse(c), attempt=n, max_attempts=m, fence=f,
                      attempted_at=now, attempted_by=worker, lease_expires_at=lease_until,
                      finished_at=None, result=None, errors=e if e is not None else [],
                      scheduled_for=_dt(s))
            for i, t, q, a, k, p, r, c, n, m, f, e, s in rows
        ]

        jobs.sort(key=lambda j: (j.priority, j.run_at, j.id))
        return jobs

    async def job_heartbeat(
        self, leases: Sequence[tuple[int, int]], lease_until: datetime
    ) -> set[int]:
        until = ts(lease_until)

        def beat(conn: sqlite3.Connection) -> set[int]:
            held = set()
            for job_id, fence in leases:
                cur = conn.execute(
                    Q["job_heartbeat"], {"id": job_id, "fence": fence, "lease_until": until}
                )
                if cur.rowcount == 1:
                    held.add(job_id)
            return held

        return await self._write(beat)

    async def job_complete(self, completions: Sequence[Completion]) -> set[int]:
        ok = [c for c in completions if c.state is JobState.SUCCEEDED]
        rest = [c for c in completions if c.state is not JobState.SUCCEEDED]
        done = json.dumps([[c.id, c.fence, c.result_json] for c in ok])
        at = ts(max(c.at for c in ok)) if ok else None

        def complete(conn: sqlite3.Connection, exact: bool) -> set[int]:
            written: set[int] = set()
            if ok:
                params = {"done": done, "at": at}
                if exact:
                    held = conn.execute(Q["job_complete_held"], params).fetchone()[0]
                    written.update(json.loads(held))
                    conn.execute(Q["job_complete_succeeded"], params)
                elif conn.execute(Q["job_complete_succeeded"], params).rowcount == len(ok):
                    written.update(c.id for c in ok)
                else:  # some job lost its lease: undo, and ask which are held first
                    raise _Recount
            for c in rest:
                cur = conn.execute(Q["job_complete"], {
                    "id": c.id, "fence": c.fence, "state": str(c.state), "result": c.result_json,
                    "error": c.error_json, "run_at": ts(c.run_at) if c.run_at else None,
                    "at": ts(c.at),
                })
                if cur.rowcount == 1:
                    written.add(c.id)
            return written

        try:
            return await self._write(lambda conn: complete(conn, exact=False))
        except _Recount:
            return await self._write(lambda conn: complete(conn, exact=True))

    async def job_rescue(self, now: datetime, limit: int = 1000) -> list[Rescued]:
        def rescue(conn: sqlite3.Connection) -> list[Rescued]:
            rows = conn.execute(Q["job_rescue"], {"now": ts(now), "limit": limit}).fetchall()
            return [Rescued(r["id"], JobState(r["state"]), r["attempted_by"]) for r in rows]

        return await self._write(rescue)

    async def _one(self, name: str, params: dict[str, Any], write: bool) -> JobRecord | None:
        def one(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(Q[name], params).fetchone()
            return to_record(row) if row is not None else None

        return await (self._write(one) if write else self._call(one))

    async def job_get(self, job_id: int) -> JobRecord | None:
        return await self._one("job_get", {"id": job_id}, write=False)

    async def job_list(
        self, *, state: JobState | None = None, task: str | None = None,
        before_id: int | None = None, limit: int = 50,
    ) -> list[JobRecord]:
        params = {"state": str(state) if state else None, "task": task,
                  "before_id": before_id, "limit": limit}
        return await self._call(
            lambda conn: [to_record(r) for r in conn.execute(Q["job_list"], params).fetchall()]
        )

    async def job_count_due(
        self, *, tasks: Sequence[str], queues: Sequence[str] | None, now: datetime
    ) -> int:
        params = {"tasks": json.dumps(list(tasks)),
                  "queues": json.dumps(list(queues)) if queues is not None else None,
                  "now": ts(now)}
        row = await self._call(lambda conn: conn.execute(Q["job_count_due"], params).fetchone())
        return int(row["n"])

    async def job_count_by_state(self) -> dict[JobState, int]:
        rows = await self._call(lambda conn: conn.execute(Q["job_count_by_state"]).fetchall())
        return {JobState(r["state"]): int(r["n"]) for r in rows}

    async def job_cancel(self, job_id: int, now: datetime) -> JobRecord | None:
        return await self._one("job_cancel", {"id": job_id, "now": ts(now)}, write=True)

    async def job_retry(self, job_id: int, now: datetime) -> JobRecord | None:
        return await self._one("job_retry", {"id": job_id, "now": ts(now)}, write=True)

    # -- triggers -------------------------------------------------------------------

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
        params = {
            "id": id,
            "route": route,
            "identity": identity,
            "worker": worker,
            "now": ts(now),
            "lease_until": ts(lease_until),
        }

        def begin(conn: sqlite3.Connection) -> TriggerRecord | None:
            row = conn.execute(Q["trigger_begin"], params).fetchone()
            return to_trigger(row) if row is not None else None

        return await self._write(begin)

    async def trigger_finish(
        self, trigger: TriggerRecord, *, state: str, summary_json: str | None, now: datetime
    ) -> bool:
        params = {
            "id": trigger.id,
            "fence": trigger.fence,
            "state": state,
            "summary": summary_json,
            "now": ts(now),
        }
        return await self._write(
            lambda conn: conn.execute(Q["trigger_finish"], params).fetchone() is not None
        )

    async def trigger_get(self, trigger_id: str) -> TriggerRecord | None:
        def get(conn: sqlite3.Connection) -> TriggerRecord | None:
            row = conn.execute(Q["trigger_get"], {"id": trigger_id}).fetchone()
            return to_trigger(row) if row is not None else None

        return await self._call(get)

    async def job_health(self, now: datetime, since: datetime) -> tuple[datetime | None, int]:
        params = {"now": ts(now), "since": ts(since)}
        row = await self._call(lambda conn: conn.execute(Q["job_health"], params).fetchone())
        return _dt(row["oldest_due"]), int(row["dead_since"])

    async def prune(self, before: datetime, limit: int = 1000) -> int:
        params = {"before": ts(before), "limit": limit}

        def prune(conn: sqlite3.Connection) -> int:
            names = ("job_prune", "trigger_prune", "occurrence_prune")
            return sum(conn.execute(Q[name], params).rowcount for name in names)

        return await self._write(prune)

    # -- schedules -------------------------------------------------------------------

    async def schedule_register(self, tasks: Sequence[str], now: datetime) -> None:
        def register(conn: sqlite3.Connection) -> None:
            for task in tasks:
                conn.execute(Q["schedule_register"], {"task": task, "now": ts(now)})

        await self._write(register)

    async def schedule_list(self) -> list[ScheduleState]:
        rows = await self._call(lambda conn: conn.execute(Q["schedule_list"]).fetchall())
        return [
            ScheduleState(
                task=r["task"], created_at=datetime.fromisoformat(r["created_at"]),
                last_occurrence=_dt(r["last_occurrence"]), last_tick_at=_dt(r["last_tick_at"]),
                paused=bool(r["paused"]),
            )
            for r in rows
        ]

    async def schedule_touch(self, task: str, now: datetime) -> None:
        await self._write(
            lambda conn: conn.execute(Q["schedule_touch"], {"task": task, "now": ts(now)})
        )

    async def schedule_set_paused(self, task: str, paused: bool) -> bool:
        params = {"task": task, "paused": int(paused)}
        return await self._write(
            lambda conn: conn.execute(Q["schedule_set_paused"], params).fetchone() is not None
        )

    async def occurrence_record(
        self, *, task: str, scheduled_for: datetime, outcome: str, job: NewJob | None,
        now: datetime, retained_after: datetime,
    ) -> tuple[bool, int | None]:
        at = {"task": task, "scheduled_for": ts(scheduled_for)}

        def record(conn: sqlite3.Connection) -> tuple[bool, int | None]:
            inserted = conn.execute(
                Q["occurrence_insert"], {**at, "outcome": outcome, "now": ts(now)}
            ).fetchone()
            conn.execute(Q["schedule_advance"], at)
            if inserted is None or job is None:
                return inserted is not None, None
            record, _ = insert_on(conn, job, now, retained_after)
            conn.execute(Q["occurrence_set_job"], {**at, "job_id": record.id})
            return True, record.id

        return await self._write(record)

    async def occurrence_list(self, task: str, limit: int = 20) -> list[Occurrence]:
        params = {"task": task, "limit": limit}
        rows = await self._call(lambda conn: conn.execute(Q["occurrence_list"], params).fetchall())
        return [
            Occurrence(task=r["task"], scheduled_for=datetime.fromisoformat(r["scheduled_for"]),
                       outcome=r["outcome"], job_id=r["job_id"],
                       recorded_at=datetime.fromisoformat(r["recorded_at"]))
            for r in rows
        ]
