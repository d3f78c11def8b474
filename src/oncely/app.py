"""``Oncely``: the app object users create, register tasks on, and trigger.

The core is async. The sync methods (``enqueue``, ``process``, ...) run the same
coroutines on a private event loop thread, so they work from scripts, sync web apps
and the CLI alike. The async methods (``aenqueue``, ``aprocess``, ...) run on the
caller's loop; the store keeps one connection pool per event loop.
"""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import os
import random
import re
import socket
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload

from .errors import ConfigError, JobNotFound, UnknownTask
from .model import JobRecord, JobState, NewJob, check_aware
from .periodic import Periodic, TickReport
from .retry import Backoff
from .schedule import Schedule, ScheduleError
from .settings import Settings
from .store import Store, open_store
from .tasks import Task
from .worker import Clock, Runner, Summary

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Portal:
    """An event loop on a daemon thread that runs coroutines for sync callers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="oncely-loop", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self.loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("a sync oncely method was called from a handler; use the a* method")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


class Oncely:
    """Register tasks, enqueue jobs, and process them exactly once.

    ``store`` is a URL (``sqlite:///oncely.db``, ``postgresql://...``); without it,
    ``ONCELY_STORE`` from ``environ`` (default ``os.environ``), else
    ``sqlite:///oncely.db``.
    """

    def __init__(
        self,
        store: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        concurrency: int | None = None,
        lease: timedelta | None = None,
        batch_size: int | None = None,
        key_retention: timedelta | None = None,
        schedule_grace: timedelta | None = None,
        clock: Clock = utcnow,
        worker_id: str | None = None,
    ):
        base = Settings.from_environ(os.environ if environ is None else environ)
        self.settings = replace(
            base,
            store=store or base.store,
            concurrency=concurrency or base.concurrency,
            lease=lease or base.lease,
            batch_size=batch_size or base.batch_size,
            key_retention=key_retention or base.key_retention,
            schedule_grace=schedule_grace or base.schedule_grace,
        )
        if self.settings.concurrency < 1 or self.settings.batch_size < 1:
            raise ConfigError("concurrency and batch_size must be at least 1")
        if self.settings.retention < self.settings.key_retention:
            raise ConfigError(
                f"ONCELY_RETENTION_SECONDS ({self.settings.retention.total_seconds():g}) must be "
                f"at least the key retention ({self.settings.key_retention.total_seconds():g}): "
                "a pruned job can no longer hold its key"
            )
        self.clock = clock
        self._worker_id = worker_id
        self._tasks: dict[str, Task] = {}
        self._periodics: dict[str, Periodic] = {}
        self._event_routes: list[tuple[str, str]] = []
        self._hooks: dict[str, str] = {}
        self._hook_secrets: dict[str, str | None] = {}
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._stores: dict[asyncio.AbstractEventLoop, asyncio.Task[Store]] = {}
        self._portal = _Portal()
        self._executor: ThreadPoolExecutor | None = None

    def _check_fork(self) -> None:
        """A forked child (uvicorn --workers, multiprocessing) starts with fresh state."""
        if os.getpid() != self._pid:
            self._reset()

    @property
    def worker_id(self) -> str:
        return self._worker_id or f"{socket.gethostname()}:{os.getpid()}"

    @property
    def store_url(self) -> str:
        return self.settings.store

    def use_store(self, url: str) -> None:
        """Point this app at another store; only before it is first used."""
        if self._stores:
            raise ConfigError("use_store() must be called before the store is first used")
        open_store(url)  # validates the URL now
        self.settings = replace(self.settings, store=url)

    # -- tasks ------------------------------------------------------------------------

    @overload
    def task(self, fn: F, /) -> F: ...
    @overload
    def task(
        self, *, name: str | None = None, max_attempts: int = 5, backoff: Backoff | None = None,
        queue: str = "default", priority: int = 0,
    ) -> Callable[[F], F]: ...

    def task(  # type: ignore[misc]  # mypy 2.4 misreads keyword-only overloads
        self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
        max_attempts: int = 5, backoff: Backoff | None = None, queue: str = "default",
        priority: int = 0,
    ) -> Any:
        """Register a handler. Use as ``@jobs.task`` or ``@jobs.task(max_attempts=3)``.

        The handler takes its arguments as keywords, plus ``job`` (a ``Job``) and, for
        async handlers on PostgreSQL, ``conn``: a connection whose transaction commits
        together with the job's completion.
        """

        def register(f: F) -> F:
            task = Task.from_function(
                f, name=name, max_attempts=max_attempts, backoff=backoff or Backoff(),
                queue=queue, priority=priority,
            )
            if task.name in self._tasks:
                raise ConfigError(f"a task named {task.name!r} is already registered")
            self._tasks[task.name] = task
            return f

        return register(fn) if fn is not None else register

    def periodic(
        self, cron: str | None = None, /, *, every: str | timedelta | None = None,
        tz: str = "UTC", catch_up: str = "latest", window: str | timedelta | None = None,
        name: str | None = None, max_attempts: int = 5, backoff: Backoff | None = None,
        queue: str = "default", priority: int = 0,
    ) -> Callable[[F], F]:
        """Register a periodic task: ``@jobs.periodic("*/5 * * * *", tz="Europe/Berlin")``
        or ``@jobs.periodic(every="5m")``. Each occurrence becomes one job (its
        ``job.scheduled_for`` is the occurrence) when a tick arrives; ``catch_up`` says what
        a late tick does with occurrences it missed: ``skip``, ``latest`` or ``all`` (within
        ``window``)."""
        try:
            schedule = Schedule.parse(cron, every=every, tz=tz, catch_up=catch_up,
                                      window=window)
        except ScheduleError as exc:
            raise ConfigError(f"@periodic({cron or every!r}): {exc}") from None

        def register(f: F) -> F:
            self.task(name=name, max_attempts=max_attempts, backoff=backoff, queue=queue,
                      priority=priority)(f)
            task = self._tasks[name or f.__name__]
            if set(task.signature.parameters):
                del self._tasks[task.name]
                raise ConfigError(
                    f"periodic task {task.name!r} must take no arguments but job "
                    f"(it has {task.name}{task.signature})"
                )
            self._periodics[task.name] = Periodic(task, schedule)
            return f

        return register

    def on_event(
        self, pattern: str, /, *, name: str | None = None, max_attempts: int = 5,
        backoff: Backoff | None = None, queue: str = "default", priority: int = 0,
    ) -> Callable[[F], F]:
        """Run a handler for events whose CloudEvents type matches ``pattern`` (a glob,
        e.g. ``google.cloud.storage.object.v1.*``) delivered to ``POST /jobs/events``.
        The handler takes ``event`` (an ``oncely.events.Event``: id, source, type, time,
        subject, data) and ``job``. Each event becomes one job, keyed by (source, id), for
        the first handler that matches it, in declaration order."""
        return self._event_handler(("event", pattern), name=name, max_attempts=max_attempts,
                                   backoff=backoff, queue=queue, priority=priority)

    def hook(
        self, hook_name: str, /, *, secret: str | None = None, name: str | None = None,
        max_attempts: int = 5, backoff: Backoff | None = None, queue: str = "default",
        priority: int = 0,
    ) -> Callable[[F], F]:
        """Run a handler for webhooks posted to ``POST /jobs/hooks/{hook_name}``. With
        ``secret``, deliveries must carry GitHub's ``X-Hub-Signature-256`` over the body;
        without, they need the trigger endpoints' authentication. The handler takes
        ``payload`` (the JSON body, or text) and ``job``; a redelivery (same
        ``X-GitHub-Delivery``, ``Idempotency-Key`` or ``X-Request-Id``) runs nothing."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", hook_name):
            raise ConfigError(f"hook name {hook_name!r}: use letters, digits, '.', '_', '-'")
        if hook_name in self._hooks:
            raise ConfigError(f"a hook named {hook_name!r} is already registered")
        if secret is not None and len(secret) < 16:
            raise ConfigError(f"hook {hook_name!r}: the secret must be at least 16 characters")
        self._hook_secrets[hook_name] = secret
        return self._event_handler(("hook", hook_name), name=name, max_attempts=max_attempts,
                                   backoff=backoff, queue=queue, priority=priority)

    def _event_handler(self, route: tuple[str, str], **options: Any) -> Callable[[F], F]:
        from .events import Event

        def register(f: F) -> F:
            kind, match = route
            wants_job = "job" in inspect.signature(f).parameters

            def call(event: dict[str, Any], job: Any) -> Any:
                value = Event.from_dict(event)
                arg = value if kind == "event" else value.data
                return f(arg, job=job) if wants_job else f(arg)

            if inspect.iscoroutinefunction(f):
                async def handler(event: dict[str, Any], *, job: Any) -> Any:
                    return await call(event, job)
            else:
                def handler(event: dict[str, Any], *, job: Any) -> Any:  # type: ignore[misc]
                    return call(event, job)

            handler.__name__ = options.pop("name", None) or f.__name__
            self.task(**options, name=handler.__name__)(handler)
            if kind == "event":
                self._event_routes.append((match, handler.__name__))
            else:
                self._hooks[match] = handler.__name__
            return f

        return register

    def event_task(self, event_type: str) -> str | None:
        """The task that handles events of this type (the first matching pattern)."""
        return next((task for pattern, task in self._event_routes
                     if fnmatch.fnmatchcase(event_type, pattern)), None)

    @property
    def hooks(self) -> Mapping[str, str]:
        return self._hooks

    def hook_secret(self, hook_name: str) -> str | None:
        return self._hook_secrets.get(hook_name)

    @property
    def tasks(self) -> Mapping[str, Task]:
        return self._tasks

    @property
    def periodics(self) -> Mapping[str, Periodic]:
        return self._periodics

    def _task(self, task: str | Callable[..., Any]) -> Task:
        name = task if isinstance(task, str) else getattr(task, "__name__", repr(task))
        found = self._tasks.get(name)
        if found is None or (not isinstance(task, str) and found.fn is not task):
            known = ", ".join(sorted(self._tasks)) or "none registered"
            raise UnknownTask(f"unknown task {name!r}; known tasks: {known}")
        return found

    # -- store ------------------------------------------------------------------------

    async def astore(self) -> Store:
        """The open store for the running event loop (opened and migrated on first use)."""
        self._check_fork()
        loop = asyncio.get_running_loop()
        opening = self._stores.get(loop)
        if opening is None:
            opening = self._stores[loop] = loop.create_task(self._open())
        try:
            return await asyncio.shield(opening)
        except BaseException:
            if opening.done() and self._stores.get(loop) is opening:
                del self._stores[loop]
            raise

    async def _open(self) -> Store:
        store = open_store(self.settings.store)
        if store.dialect != "postgres":
            needing = [t.name for t in self._tasks.values() if t.wants_conn]
            if needing:
                raise ConfigError(
                    f"task(s) {', '.join(needing)} take conn=, which needs the PostgreSQL store "
                    f"(this app uses {store.dialect})"
                )
        await store.open(self.clock())
        return store

    async def aclose(self) -> None:
        """Close the store of the running loop."""
        opening = self._stores.pop(asyncio.get_running_loop(), None)
        if opening is not None and opening.done() and not opening.exception():
            await opening.result().close()

    def close(self) -> None:
        """Close the sync API's store and its loop thread, and the handler threads."""
        self._check_fork()
        if self._stores:
            loop = self._portal.loop()
            if loop in self._stores:
                self._portal.run(self.aclose())
        self._portal.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> Oncely:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def migrate(self) -> tuple[int, int]:
        """Apply pending migrations; returns (schema version, version this code knows)."""
        return self._portal.run(self._amigrate())

    async def _amigrate(self) -> tuple[int, int]:
        return await (await self.astore()).schema_version()

    # -- enqueue ------------------------------------------------------------------------

    def _new_job(
        self, task: str | Callable[..., Any], args: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any], *, key: str | None, run_at: datetime | None,
        delay: timedelta | float | None, priority: int | None, queue: str | None,
    ) -> tuple[NewJob, datetime]:
        spec = self._task(task)
        merged = {**(args or {}), **kwargs}
        now = self.clock()
        if run_at is not None and delay is not None:
            raise ConfigError("pass run_at= or delay=, not both")
        if run_at is not None:
            when = check_aware(run_at, "run_at").astimezone(UTC)
        elif delay is not None:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
            if seconds < 0:
                raise ConfigError(f"delay={delay!r} is negative; use run_at= for a past time")
            when = now + timedelta(seconds=seconds)
        else:
            when = now
        if key is not None and (not isinstance(key, str) or not key or len(key) > 512):
            raise ConfigError(f"key={key!r} must be a non-empty string of at most 512 characters")
        job = NewJob(
            task=spec.name, args_json=spec.encode_args(merged), queue=queue or spec.queue,
            priority=spec.priority if priority is None else priority, run_at=when,
            max_attempts=spec.max_attempts, key=key,
        )
        return job, now

    def enqueue(
        self, task: str | Callable[..., Any], args: Mapping[str, Any] | None = None, /, *,
        key: str | None = None, run_at: datetime | None = None,
        delay: timedelta | float | None = None, priority: int | None = None,
        queue: str | None = None, conn: Any = None, **kwargs: Any,
    ) -> JobRecord:
        """Enqueue a job; with ``key``, return the existing job if one holds the key.

        ``conn``: a sync psycopg connection (PostgreSQL store) or a sqlite3 connection to
        the same database file (SQLite store); the job is written in that connection's
        transaction and commits or rolls back with it.
        """
        return self._enqueue_sync(task, args, kwargs, key=key, run_at=run_at, delay=delay,
                                  priority=priority, queue=queue, conn=conn)[0]

    def _enqueue_sync(
        self, task: str | Callable[..., Any], args: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any], *, conn: Any, **options: Any,
    ) -> tuple[JobRecord, bool]:
        self._check_fork()
        job, now = self._new_job(task, args, kwargs, **options)
        retained_after = now - self.settings.key_retention
        if conn is None:
            return self._portal.run(self._ainsert(job, now))
        self._portal.run(self.astore())  # the schema must exist before the caller's insert
        if isinstance(conn, sqlite3.Connection):
            from . import sqlite_store

            return sqlite_store.insert_on(conn, job, now, retained_after)
        from . import postgres_store

        if not hasattr(conn, "cursor") or asyncio.iscoroutinefunction(conn.cursor):
            raise ConfigError(
                "conn= must be a sync psycopg or sqlite3 connection; "
                "for an async connection use `await jobs.aenqueue(..., conn=conn)`"
            )
        return postgres_store.insert_on(conn, job, now, retained_after)

    async def _ainsert(self, job: NewJob, now: datetime) -> tuple[JobRecord, bool]:
        store = await self.astore()
        return await store.job_insert(job, now, now - self.settings.key_retention)

    async def aenqueue(
        self, task: str | Callable[..., Any], args: Mapping[str, Any] | None = None, /, *,
        key: str | None = None, run_at: datetime | None = None,
        delay: timedelta | float | None = None, priority: int | None = None,
        queue: str | None = None, conn: Any = None, **kwargs: Any,
    ) -> JobRecord:
        """``enqueue`` for async code; ``conn`` may be a psycopg AsyncConnection."""
        return (await self.aenqueue_ex(task, args, key=key, run_at=run_at, delay=delay,
                                       priority=priority, queue=queue, conn=conn, **kwargs))[0]

    async def aenqueue_ex(
        self, task: str | Callable[..., Any], args: Mapping[str, Any] | None = None, /, *,
        key: str | None = None, run_at: datetime | None = None,
        delay: timedelta | float | None = None, priority: int | None = None,
        queue: str | None = None, conn: Any = None, **kwargs: Any,
    ) -> tuple[JobRecord, bool]:
        """Like ``aenqueue``, also saying whether the job was created (False: the key
        was already held and the existing job is returned)."""
        job, now = self._new_job(task, args, kwargs, key=key, run_at=run_at, delay=delay,
                                 priority=priority, queue=queue)
        if conn is None:
            return await self._ainsert(job, now)
        store = await self.astore()
        if store.dialect != "postgres":
            raise ConfigError("aenqueue(conn=...) needs the PostgreSQL store; use enqueue(conn=)")
        from . import postgres_store

        return await postgres_store.ainsert_on(conn, job, now, now - self.settings.key_retention)

    async def aenqueue_many(
        self, task: str | Callable[..., Any], args_list: Sequence[Mapping[str, Any]], *,
        queue: str | None = None, priority: int | None = None,
    ) -> list[int]:
        """Enqueue many keyless jobs of one task in one round trip; returns their ids."""
        built = [self._new_job(task, a, {}, key=None, run_at=None, delay=None,
                               priority=priority, queue=queue)[0] for a in args_list]
        store = await self.astore()
        return await store.job_insert_many(built, self.clock()) if built else []

    def enqueue_many(
        self, task: str | Callable[..., Any], args_list: Sequence[Mapping[str, Any]], *,
        queue: str | None = None, priority: int | None = None,
    ) -> list[int]:
        return self._portal.run(self.aenqueue_many(task, args_list, queue=queue,
                                                   priority=priority))

    # -- process ------------------------------------------------------------------------

    def _handler_threads(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.concurrency, thread_name_prefix="oncely-handler"
            )
        return self._executor

    async def aprocess(
        self,
        *,
        budget: float = 25.0,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        rng: random.Random | None = None,
        trigger_id: str | None = None,
    ) -> Summary:
        """Claim and run due jobs until none are due or ``budget`` seconds have passed
        (then stop claiming and finish what is running). Returns a ``Summary``."""
        if budget <= 0:
            raise ConfigError(f"budget={budget} must be a positive number of seconds")
        self._check_fork()
        store = await self.astore()
        if not self._tasks:
            raise ConfigError("no tasks are registered; decorate handlers with @jobs.task")
        runner = Runner(
            store=store,
            tasks=self._tasks,
            worker=self.worker_id,
            clock=self.clock,
            concurrency=concurrency or self.settings.concurrency,
            lease=self.settings.lease,
            batch_size=self.settings.batch_size,
            queues=queues,
            executor=self._handler_threads(),
            rng=rng,
            context={"trigger_id": trigger_id} if trigger_id else None,
        )
        return await runner.run(budget)

    def process(
        self, *, budget: float = 25.0, queues: Sequence[str] | None = None,
        concurrency: int | None = None,
    ) -> Summary:
        return self._portal.run(self.aprocess(budget=budget, queues=queues,
                                              concurrency=concurrency))

    # -- HTTP ---------------------------------------------------------------------------

    def install(self, app: Any, *, auth: Any = None) -> None:
        """Add oncely's endpoints (``/jobs/...``, ``/healthz``, ``/readyz``) to a Starlette
        or FastAPI app. ``auth``: an ``oncely.auth.Authenticator``; default: from the
        environment (``ONCELY_TOKENS``, ...)."""
        from .endpoints import install

        install(self, app, auth=auth)

    def asgi(self, *, auth: Any = None) -> Any:
        """oncely's endpoints as a Starlette app of their own."""
        from .endpoints import create_app

        return create_app(self, auth=auth)

    # -- schedules ------------------------------------------------------------------------

    async def atick(self) -> TickReport:
        """Enqueue every periodic task's due occurrences, each exactly once."""
        from . import periodic

        store, now = await self.astore(), self.clock()
        report = await periodic.tick(store, self._periodics, now=now,
                                     grace=self.settings.schedule_grace,
                                     retention=self.settings.key_retention)
        report.pruned = await store.prune(now - self.settings.retention)
        return report

    def tick(self) -> TickReport:
        return self._portal.run(self.atick())

    def _periodic(self, task: str) -> Periodic:
        self._task(task)
        found = self._periodics.get(task)
        if found is None:
            raise ConfigError(f"task {task!r} is not periodic; declare it with @jobs.periodic")
        return found

    async def arun_occurrence(self, task: str, at: datetime | None = None) -> TickReport:
        """Record (once) and enqueue the occurrence of ``task`` at ``at``, or the latest
        one due; ``at`` between occurrences means the one before it."""
        from . import periodic

        spec = self._periodic(task)
        now = self.clock()
        when = spec.schedule.latest(check_aware(at, "at") if at is not None else now)
        report = TickReport()
        if when is None:
            return report
        store = await self.astore()
        await store.schedule_register([task], now)
        await store.schedule_touch(task, now)
        paused = any(s.task == task and s.paused for s in await store.schedule_list())
        await periodic.record(store, spec, when, now=now, retention=self.settings.key_retention,
                              report=report, paused=paused)
        if paused:
            report.paused.append(task)
        return report

    async def arun_now(self, task: str) -> JobRecord:
        """Enqueue an extra run of a periodic task now, outside its schedule."""
        from .periodic import occurrence_job

        spec, now = self._periodic(task), self.clock()
        job = replace(occurrence_job(spec, now), key=f"periodic:{task}@manual:{now.isoformat()}")
        return (await self._ainsert(job, now))[0]

    async def aset_paused(self, task: str, paused: bool) -> None:
        self._periodic(task)
        store = await self.astore()
        await store.schedule_register([task], self.clock())
        await store.schedule_set_paused(task, paused)

    async def aschedules(self) -> list[dict[str, Any]]:
        """Per periodic task: schedule, last and next occurrence, and missed occurrences."""
        from . import periodic

        store = await self.astore()
        await store.schedule_register(list(self._periodics), self.clock())
        states = {s.task: s for s in await store.schedule_list()}
        return periodic.status(self._periodics, states, now=self.clock(),
                               grace=self.settings.schedule_grace)

    def schedules(self) -> list[dict[str, Any]]:
        return self._portal.run(self.aschedules())

    # -- inspect and manage -------------------------------------------------------------

    async def aget(self, job_id: int) -> JobRecord:
        job = await (await self.astore()).job_get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return job

    def get(self, job_id: int) -> JobRecord:
        return self._portal.run(self.aget(job_id))

    async def alist(
        self, *, state: JobState | str | None = None, task: str | None = None,
        before_id: int | None = None, limit: int = 50,
    ) -> list[JobRecord]:
        parsed = _state(state) if state is not None else None
        store = await self.astore()
        return await store.job_list(state=parsed, task=task, before_id=before_id, limit=limit)

    def list(
        self, *, state: JobState | str | None = None, task: str | None = None,
        before_id: int | None = None, limit: int = 50,
    ) -> list[JobRecord]:
        return self._portal.run(self.alist(state=state, task=task, before_id=before_id,
                                           limit=limit))

    async def acancel(self, job_id: int) -> JobRecord:
        job = await (await self.astore()).job_cancel(job_id, self.clock())
        return job if job is not None else await self._unchanged(job_id, "cancelled")

    async def aretry(self, job_id: int) -> JobRecord:
        job = await (await self.astore()).job_retry(job_id, self.clock())
        return job if job is not None else await self._unchanged(job_id, "retried")

    async def _unchanged(self, job_id: int, verb: str) -> JobRecord:
        from .errors import OncelyError

        current = await self.aget(job_id)
        raise OncelyError(f"job {job_id} is {current.state} and cannot be {verb}")

    def cancel(self, job_id: int) -> JobRecord:
        return self._portal.run(self.acancel(job_id))

    def retry(self, job_id: int) -> JobRecord:
        return self._portal.run(self.aretry(job_id))


def _state(value: JobState | str) -> JobState:
    try:
        return JobState(value)
    except ValueError:
        raise ConfigError(
            f"state={value!r} is not a job state; use one of "
            + ", ".join(s.value for s in JobState)
        ) from None

