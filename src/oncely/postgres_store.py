"""The PostgreSQL store: psycopg 3 with an async connection pool.

Claims use ``FOR UPDATE SKIP LOCKED`` so any number of workers claim disjoint batches
in one round trip each. Completions and heartbeats are batched with ``unnest`` and
fenced on (id, fence, state = 'running').
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

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
from .store import Rescued, redact

Q = queries.load("postgres")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def to_record(row: DictRow) -> JobRecord:
    return JobRecord(
        id=row["id"], task=row["task"], queue=row["queue"], args=row["args"], key=row["key"],
        state=JobState(row["state"]), priority=row["priority"], run_at=row["run_at"],
        created_at=row["created_at"], attempt=row["attempt"], max_attempts=row["max_attempts"],
        fence=row["fence"], attempted_at=row["attempted_at"], attempted_by=row["attempted_by"],
        lease_expires_at=row["lease_expires_at"], finished_at=row["finished_at"],
        result=row["result"], errors=row["errors"], scheduled_for=row["scheduled_for"],
    )


def to_trigger(row: DictRow) -> TriggerRecord:
    return TriggerRecord(
        id=row["id"],
        route=row["route"],
        identity=row["identity"],
        state=row["state"],
        fence=row["fence"],
        worker=row["worker"],
        started_at=row["started_at"],
        lease_expires_at=row["lease_expires_at"],
        finished_at=row["finished_at"],
        summary=row["summary"],
    )


def _insert_params(job: NewJob, now: datetime) -> dict[str, Any]:
    return {
        "task": job.task, "queue": job.queue, "args": job.args_json, "key": job.key,
        "priority": job.priority, "run_at": job.run_at, "now": now,
        "max_attempts": job.max_attempts, "scheduled_for": job.scheduled_for,
    }


def insert_on(
    conn: psycopg.Connection[Any], job: NewJob, now: datetime, retained_after: datetime
) -> tuple[JobRecord, bool]:
    """Insert a job in the caller's transaction (a sync psycopg connection)."""
    with conn.cursor(row_factory=dict_row) as cur:
        if job.key is not None:
            cur.execute(Q["job_release_key"], {"key": job.key, "retained_after": retained_after})
        row = cur.execute(Q["job_insert"], _insert_params(job, now)).fetchone()
        if row is not None:
            return to_record(row), True
        existing = cur.execute(Q["job_get_by_key"], {"key": job.key}).fetchone()
    return _existing(job, existing)


async def ainsert_on(
    conn: psycopg.AsyncConnection[Any], job: NewJob, now: datetime, retained_after: datetime
) -> tuple[JobRecord, bool]:
    """Insert a job in the caller's transaction (an async psycopg connection)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        if job.key is not None:
            await cur.execute(
                Q["job_release_key"], {"key": job.key, "retained_after": retained_after}
            )
        await cur.execute(Q["job_insert"], _insert_params(job, now))
        row = await cur.fetchone()
        if row is not None:
            return to_record(row), True
        await cur.execute(Q["job_get_by_key"], {"key": job.key})
        existing = await cur.fetchone()
    return _existing(job, existing)


def _existing(job: NewJob, row: DictRow | None) -> tuple[JobRecord, bool]:
    if row is None:
        raise StoreError(
            f"job key {job.key!r} conflicted but no job holds it any more; enqueue again"
        )
    return to_record(row), False


def int_array(values: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers, for a parameter cast with ``::bigint[]``.
    psycopg dumps a list element by element in Python (~1.5 us each); the hot statements
    send their id and fence arrays this way instead."""
    return "{" + ",".join(map(str, values)) + "}"


def _loads(data: str | bytes) -> Any:
    """json.loads for psycopg's json/jsonb loaders (they pass bytes): decoded first,
    which spares json.loads detecting the encoding of every value."""
    return json.loads(data.decode() if isinstance(data, bytes) else data)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    set_json_loads(_loads, conn)


def _completion_params(completions: Sequence[Completion]) -> dict[str, Any]:
    return {
        "ids": [c.id for c in completions],
        "fences": [c.fence for c in completions],
        "states": [str(c.state) for c in completions],
        "results": [c.result_json for c in completions],
        "errors": [c.error_json for c in completions],
        "run_ats": [c.run_at for c in completions],
        "ats": [c.at for c in completions],
    }


class PostgresStore:
    dialect = "postgres"

    def __init__(
        self, conninfo: str, *, schema: str | None = None, pool_size: int = 10,
        connect_timeout: float = 10.0,
    ):
        if schema is not None and not _IDENT.fullmatch(schema):
            raise ConfigError(
                f"schema={schema!r} is not a plain SQL identifier (letters, digits, _)"
            )
        self.conninfo = conninfo
        self.schema = schema
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """``postgresql://user@host/db?schema=s&pool_size=10`` plus any libpq parameter."""
        parts = urlsplit(url)
        options = parse_qsl(parts.query)
        ours = {k: v for k, v in options if k in ("schema", "pool_size")}
        libpq = [(k, v) for k, v in options if k not in ours]
        try:
            pool_size = int(ours.get("pool_size", 10))
        except ValueError:
            raise ConfigError(
                f"pool_size={ours['pool_size']!r} in {redact(url)!r} is not a whole number"
            ) from None
        if pool_size < 1:
            raise ConfigError(f"pool_size={pool_size} in {redact(url)!r} must be at least 1")
        conninfo = parts._replace(query=urlencode(libpq)).geturl()
        return cls(conninfo, schema=ours.get("schema"), pool_size=pool_size)

    def _describe(self) -> str:
        return redact(self.conninfo)

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
        if self.schema:
            kwargs["options"] = f"-c search_path={self.schema}"
        return kwargs

    # -- lifecycle ----------------------------------------------------------------

    async def open(self, now: datetime) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo, connect_timeout=max(1, int(self.connect_timeout)),
                **self._connect_kwargs(),
            )
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self._describe()}: {reason}; "
                "check that the server runs and the store URL (--store / ONCELY_STORE)"
            ) from exc
        async with conn:
            try:
                if self.schema:
                    create = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}")
                    await conn.execute(create.format(sql.Identifier(self.schema)))
                await self._migrate(conn, now)
            except psycopg.Error as exc:
                raise StoreError(f"migrating {self._describe()} failed: {exc}") from exc
        self._pool = AsyncConnectionPool(
            self.conninfo, min_size=1, max_size=self.pool_size, open=False,
            kwargs=self._connect_kwargs(), timeout=self.connect_timeout,
            name="oncely", configure=_configure,
        )
        await self._pool.open(wait=True, timeout=self.connect_timeout)

    async def _migrate(self, conn: psycopg.AsyncConnection[DictRow], now: datetime) -> None:
        async with conn.transaction():
            await conn.execute(Q["schema_lock"])
            await conn.execute(Q["schema_create"])
            row = await (await conn.execute(Q["schema_version"])).fetchone()
            current = int(row["version"]) if row else 0
            known = queries.migrations(self.dialect)
            if current > len(known):
                raise SchemaTooNew(
                    f"PostgreSQL store {self._describe()} has oncely schema version {current}, "
                    f"newer than this oncely knows ({len(known)}); upgrade oncely"
                )
            for migration in known[current:]:
                for statement in migration.statements:
                    await conn.execute(statement.encode())
                await conn.execute(
                    Q["schema_record"],
                    {"version": migration.version, "name": migration.name, "now": now},
                )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[DictRow]]:
        """A pooled connection, with driver errors wrapped at the boundary."""
        if self._pool is None:
            raise StoreError("the PostgreSQL store is not open; call open() first")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL at {self._describe()} failed: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error: {exc}") from exc

    async def _rows(
        self, name: str, params: dict[str, Any] | None = None, *, prepare: bool | None = None
    ) -> list[DictRow]:
        async with self.connection() as conn:
            cur = await conn.execute(Q[name], params, prepare=prepare)
            return await cur.fetchall() if cur.description else []

    async def _job(self, name: str, params: dict[str, Any]) -> JobRecord | None:
        rows = await self._rows(name, params)
        return to_record(rows[0]) if rows else None

    async def schema_version(self) -> tuple[int, int]:
        rows = await self._rows("schema_version")
        return int(rows[0]["version"]), len(queries.migrations(self.dialect))

    # -- jobs ---------------------------------------------------------------------

    async def job_insert(
        self, job: NewJob, now: datetime, retained_after: datetime
    ) -> tuple[JobRecord, bool]:
        async with self.connection() as conn, conn.transaction():
            return await ainsert_on(conn, job, now, retained_after)

    async def job_insert_many(self, jobs: Sequence[NewJob], now: datetime) -> list[int]:
        rows = await self._rows("job_insert_many", {
            "tasks": [j.task for j in jobs], "queues": [j.queue for j in jobs],
            "args": [j.args_json for j in jobs], "priorities": [j.priority for j in jobs],
            "run_ats": [j.run_at for j in jobs], "max_attempts": [j.max_attempts for j in jobs],
            "now": now,
        })
        return [r["id"] for r in rows]

    async def job_claim(
        self, *, tasks: Sequence[str], queues: Sequence[str] | None, limit: int, worker: str,
        now: datetime, lease_until: datetime,
    ) -> list[JobRecord]:
        params = {
            "tasks": list(tasks), "queues": list(queues) if queues is not None else None,
            "limit": limit, "worker": worker, "now": now, "lease_until": lease_until,
        }
        async with self.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(Q["job_claim"], params)
            rows = await cur.fetchall()
        # the columns job_claim returns, in order; the rest are what the claim set
        running = JobState.RUNNING
        jobs = [
            JobRecord(id=i, task=t, queue=q, args=a, key=k, state=running, priority=p, run_at=r,
                      created_at=c, attempt=n, max_attempts=m, fence=f, attempted_at=now,
                      attempted_by=worker, lease_expires_at=lease_until, finished_at=None,
                      result=None, errors=e if e is not None else [], scheduled_for=s)
            for i, t, q, a, k, p, r, c, n, m, f, e, s in rows
        ]
        jobs.sort(key=lambda j: (j.priority, j.run_at, j.id))
        return jobs

    async def job_heartbeat(
        self, leases: Sequence[tuple[int, int]], lease_until: datetime
    ) -> set[int]:
        rows = await self._rows("job_heartbeat", {
            "ids": int_array(i for i, _ in leases), "fences": int_array(f for _, f in leases),
            "lease_until": lease_until,
        })
        return {r["id"] for r in rows}

    async def job_complete(self, completions: Sequence[Completion]) -> set[int]:
        # job_complete joins unnest() arrays and is never prepared: a cached generic plan
        # assumes a handful of array rows and turns into a nested loop that rescans the
        # array per row (80-100 ms for a batch of 500, see bench/README.md). The common
        # statement, job_complete_succeeded, has no join and is prepared.
        succeeded = JobState.SUCCEEDED
        ok = [c for c in completions if c.state is succeeded]
        rest = [c for c in completions if c.state is not succeeded] if len(ok) < len(
            completions) else []
        written: set[int] = set()
        async with self.connection() as conn:
            if ok:
                results = [c.result_json for c in ok]
                cur = await conn.execute(Q["job_complete_succeeded"], {
                    "ids": int_array(c.id for c in ok), "fences": int_array(c.fence for c in ok),
                    "results": results if any(r is not None for r in results) else None,
                    "at": max(c.at for c in ok),
                })
                written.update(r["id"] for r in await cur.fetchall())
            if rest:
                cur = await conn.execute(Q["job_complete"], _completion_params(rest),
                                         prepare=False)
                written.update(r["id"] for r in await cur.fetchall())
        return written

    async def job_complete_on(
        self, conn: psycopg.AsyncConnection[Any], completion: Completion
    ) -> bool:
        """Apply one outcome on the caller's connection, inside its transaction."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(Q["job_complete"], _completion_params([completion]))
            return await cur.fetchone() is not None

    async def job_rescue(self, now: datetime, limit: int = 1000) -> list[Rescued]:
        rows = await self._rows("job_rescue", {"now": now, "limit": limit})
        return [Rescued(r["id"], JobState(r["state"]), r["attempted_by"]) for r in rows]

    async def job_get(self, job_id: int) -> JobRecord | None:
        return await self._job("job_get", {"id": job_id})

    async def job_list(
        self, *, state: JobState | None = None, task: str | None = None,
        before_id: int | None = None, limit: int = 50,
    ) -> list[JobRecord]:
        rows = await self._rows("job_list", {
            "state": str(state) if state else None, "task": task, "before_id": before_id,
            "limit": limit,
        })
        return [to_record(r) for r in rows]

    async def job_count_due(
        self, *, tasks: Sequence[str], queues: Sequence[str] | None, now: datetime
    ) -> int:
        rows = await self._rows("job_count_due", {
            "tasks": list(tasks), "queues": list(queues) if queues is not None else None,
            "now": now,
        })
        return int(rows[0]["n"])

    async def job_count_by_state(self) -> dict[JobState, int]:
        return {JobState(r["state"]): int(r["n"]) for r in await self._rows("job_count_by_state")}

    async def job_cancel(self, job_id: int, now: datetime) -> JobRecord | None:
        return await self._job("job_cancel", {"id": job_id, "now": now})

    async def job_retry(self, job_id: int, now: datetime) -> JobRecord | None:
        return await self._job("job_retry", {"id": job_id, "now": now})

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
        rows = await self._rows(
            "trigger_begin",
            {
                "id": id,
                "route": route,
                "identity": identity,
                "worker": worker,
                "now": now,
                "lease_until": lease_until,
            },
        )
        return to_trigger(rows[0]) if rows else None

    async def trigger_finish(
        self, trigger: TriggerRecord, *, state: str, summary_json: str | None, now: datetime
    ) -> bool:
        rows = await self._rows(
            "trigger_finish",
            {
                "id": trigger.id,
                "fence": trigger.fence,
                "state": state,
                "summary": summary_json,
                "now": now,
            },
        )
        return bool(rows)

    async def trigger_get(self, trigger_id: str) -> TriggerRecord | None:
        rows = await self._rows("trigger_get", {"id": trigger_id})
        return to_trigger(rows[0]) if rows else None

    async def job_health(self, now: datetime, since: datetime) -> tuple[datetime | None, int]:
        [row] = await self._rows("job_health", {"now": now, "since": since})
        return row["oldest_due"], int(row["dead_since"])

    async def prune(self, before: datetime, limit: int = 1000) -> int:
        params = {"before": before, "limit": limit}
        deleted = 0
        async with self.connection() as conn:
            for name in ("job_prune", "trigger_prune", "occurrence_prune"):
                deleted += (await conn.execute(Q[name], params)).rowcount
        return deleted

    # -- schedules -------------------------------------------------------------------

    async def schedule_register(self, tasks: Sequence[str], now: datetime) -> None:
        async with self.connection() as conn, conn.transaction():
            for task in tasks:
                await conn.execute(Q["schedule_register"], {"task": task, "now": now})

    async def schedule_list(self) -> list[ScheduleState]:
        return [
            ScheduleState(task=r["task"], created_at=r["created_at"],
                          last_occurrence=r["last_occurrence"], last_tick_at=r["last_tick_at"],
                          paused=r["paused"])
            for r in await self._rows("schedule_list")
        ]

    async def schedule_touch(self, task: str, now: datetime) -> None:
        await self._rows("schedule_touch", {"task": task, "now": now})

    async def schedule_set_paused(self, task: str, paused: bool) -> bool:
        return bool(await self._rows("schedule_set_paused", {"task": task, "paused": paused}))

    async def occurrence_record(
        self, *, task: str, scheduled_for: datetime, outcome: str, job: NewJob | None,
        now: datetime, retained_after: datetime,
    ) -> tuple[bool, int | None]:
        at = {"task": task, "scheduled_for": scheduled_for}
        async with self.connection() as conn, conn.transaction():
            cur = await conn.execute(Q["occurrence_insert"], {**at, "outcome": outcome, "now": now})
            inserted = await cur.fetchone() is not None
            await conn.execute(Q["schedule_advance"], at)
            if not inserted or job is None:
                return inserted, None
            record, _ = await ainsert_on(conn, job, now, retained_after)
            await conn.execute(Q["occurrence_set_job"], {**at, "job_id": record.id})
            return True, record.id

    async def occurrence_list(self, task: str, limit: int = 20) -> list[Occurrence]:
        return [
            Occurrence(task=r["task"], scheduled_for=r["scheduled_for"], outcome=r["outcome"],
                       job_id=r["job_id"], recorded_at=r["recorded_at"])
            for r in await self._rows("occurrence_list", {"task": task, "limit": limit})
        ]
