"""The HTTP face of oncely: trigger and admin endpoints as a Starlette app.

``install(jobs, app)`` adds them to a user's Starlette or FastAPI app;
``create_app(jobs)`` serves them alone (``oncely serve``). The paths are the same
either way, so a scheduler's URL does not depend on how oncely is served:

    POST /jobs/process           run due jobs within a budget (the trigger)
    GET  /jobs/triggers/{id}     how a trigger run went (for Prefer: respond-async)
    POST /jobs                   enqueue          GET /jobs          list (paginated)
    GET  /jobs/{id}              one job          POST /jobs/{id}/retry, /cancel
    GET  /jobs/openapi.json      this API         GET /healthz, /readyz

Every error is RFC 9457 problem+json. Trigger and admin endpoints need
authentication (see ``auth``) unless the app runs in development mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import Authenticator, AuthError, AuthRequest
from .errors import (
    ConfigError,
    InvalidArguments,
    JobNotFound,
    OncelyError,
    StoreError,
    StoreUnavailable,
    UnknownTask,
)
from .events import (
    Control,
    Event,
    EventError,
    parse_delivery,
    parse_hook,
    verify_github_signature,
)
from .model import JobRecord, JobState
from .triggers import Busy, Identity, Replayed, Started, Triggers, identify

if TYPE_CHECKING:
    from .app import Oncely

log = logging.getLogger("oncely")
MAX_BODY = 1024 * 1024
DEFAULT_BUDGET = 25.0
MAX_BUDGET = 900.0
RETRY_AFTER_OUTAGE = 5
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Problem(Exception):
    """An RFC 9457 problem; raised inside handlers, rendered as application/problem+json."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        slug: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.type = f"urn:oncely:problem:{slug}" if slug else "about:blank"
        self.headers = dict(headers or {})
        self.extensions = extensions

    def response(self, instance: str | None = None) -> JSONResponse:
        body = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extensions,
        }
        if instance:
            body["instance"] = instance
        return JSONResponse(
            body, self.status, headers=self.headers, media_type="application/problem+json"
        )


def _from_error(exc: Exception) -> Problem:
    """Map oncely's own errors to problems; anything else is a 500 that leaks nothing."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, AuthError):
        return Problem(
            exc.status,
            "Unauthorized"
            if exc.status == 401
            else ("Forbidden" if exc.status == 403 else "Service Unavailable"),
            exc.detail,
            slug="auth",
            headers=exc.headers,
        )
    if isinstance(exc, EventError):
        return Problem(exc.status, _reason(exc.status), exc.detail, slug="bad-delivery")
    if isinstance(exc, UnknownTask):
        return Problem(422, "Unknown task", str(exc), slug="unknown-task")
    if isinstance(exc, InvalidArguments):
        return Problem(422, "Invalid arguments", str(exc), slug="invalid-arguments")
    if isinstance(exc, ConfigError):
        return Problem(422, "Invalid request", str(exc), slug="invalid-request")
    if isinstance(exc, JobNotFound):
        return Problem(404, "Job not found", str(exc), slug="job-not-found")
    if isinstance(exc, StoreUnavailable | StoreError):
        return Problem(
            503,
            "Store unavailable",
            "the job store cannot be reached right now; nothing was lost, retry later",
            slug="store-unavailable",
            headers={"Retry-After": str(RETRY_AFTER_OUTAGE)},
        )
    if isinstance(exc, OncelyError):
        return Problem(409, "Conflict", str(exc), slug="conflict")
    return Problem(500, "Internal Server Error", "an unexpected error occurred; see the logs")


class Api:
    """The endpoint handlers, bound to one Oncely app and one authenticator."""

    def __init__(self, jobs: Oncely, auth: Authenticator, *, max_body: int = MAX_BODY):
        self.jobs = jobs
        self.auth = auth
        self.max_body = max_body

    # -- plumbing -----------------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise self._too_large()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body:
                raise self._too_large()
        return bytes(body)

    def _too_large(self) -> Problem:
        return Problem(
            413,
            "Content Too Large",
            f"the request body is over {self.max_body} bytes",
            slug="too-large",
        )

    async def _authenticate(self, request: Request, body: bytes) -> None:
        await self.auth.authenticate(
            AuthRequest(
                method=request.method,
                url=str(request.url),
                headers=dict(request.headers),
                body=body,
                now=time.time(),
            )
        )

    async def _triggers(self) -> Triggers:
        return Triggers(await self.jobs.astore(), worker=self.jobs.worker_id, clock=self.jobs.clock)

    def guarded(
        self, handler: Callable[[Request, bytes], Awaitable[Response]], *, public: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """Read the body (bounded), authenticate, run, and turn errors into problems."""

        async def endpoint(request: Request) -> Response:
            try:
                body = await self._body(request)
                if not public:
                    await self._authenticate(request, body)
                return await handler(request, body)
            except Exception as exc:
                problem = _from_error(exc)
                if problem.status >= 500:
                    log.error(
                        "%s %s failed: %s",
                        request.method,
                        request.url.path,
                        exc,
                        exc_info=problem.status == 500,
                        extra={
                            "event": "http.error",
                            "path": request.url.path,
                            "status": problem.status,
                        },
                    )
                return problem.response(request.url.path)

        return endpoint

    # -- triggers -------------------------------------------------------------------

    async def process(self, request: Request, body: bytes) -> Response:
        budget = _budget(request.query_params.get("budget"))
        queues = request.query_params.getlist("queue") or None

        async def work(trigger_id: str) -> dict[str, Any]:
            summary = await self.jobs.aprocess(budget=budget, queues=queues, trigger_id=trigger_id)
            return summary.to_dict()

        return await self.trigger(request, "process", budget, work)

    async def tick(self, request: Request, body: bytes) -> Response:
        """The one heartbeat: enqueue due periodic occurrences once, then process."""
        budget = _budget(request.query_params.get("budget"))

        async def work(trigger_id: str) -> dict[str, Any]:
            ticked = await self.jobs.atick()
            summary = await self.jobs.aprocess(budget=budget, trigger_id=trigger_id)
            return {**ticked.to_dict(), **summary.to_dict()}

        return await self.trigger(request, "tick", budget, work)

    async def run_task(self, request: Request, body: bytes) -> Response:
        """One schedule per task: run the occurrence the scheduler names, once."""
        task = request.path_params["task"]
        if task not in self.jobs.periodics:
            known = ", ".join(sorted(self.jobs.periodics)) or "none"
            raise Problem(404, "Not a periodic task", f"{task!r} is not a periodic task of "
                          f"this app; periodic tasks: {known}", slug="unknown-task")
        at = _at(request.headers.get("x-cloudscheduler-scheduletime")
                 or request.query_params.get("at"))
        budget = _budget(request.query_params.get("budget"))

        async def work(trigger_id: str) -> dict[str, Any]:
            ran = await self.jobs.arun_occurrence(task, at)
            summary = await self.jobs.aprocess(budget=budget, trigger_id=trigger_id)
            return {**ran.to_dict(), **summary.to_dict()}

        return await self.trigger(request, f"run:{task}", budget, work)

    async def trigger(
        self,
        request: Request,
        route: str,
        budget: float,
        work: Callable[[str], Awaitable[dict[str, Any]]],
    ) -> Response:
        """Run ``work`` once per trigger identity (see ``triggers``)."""
        identity = identify(request.headers)
        triggers = await self._triggers()
        lease = timedelta(seconds=budget) + self.jobs.settings.lease
        begun = await triggers.begin(route, identity, lease)
        if isinstance(begun, Replayed):
            summary = dict(begun.record.summary or {})
            return JSONResponse({**summary, "trigger_id": begun.record.id, "replayed": True})
        if isinstance(begun, Busy):
            raise Problem(
                409,
                "Trigger still running",
                f"trigger {begun.record.id} ({identity.source}) is still running on "
                f"{begun.record.worker}; retry after {begun.retry_after} s",
                slug="trigger-running",
                headers={"Retry-After": str(begun.retry_after)},
                trigger_id=begun.record.id,
            )
        if _prefers_async(request):
            return self._accepted(triggers, begun, identity, work)
        summary = await triggers.run(begun, work)
        return JSONResponse({**summary, "trigger_id": begun.record.id, "replayed": False})

    def _accepted(
        self,
        triggers: Triggers,
        begun: Started,
        identity: Identity,
        work: Callable[[str], Awaitable[dict[str, Any]]],
    ) -> Response:
        async def in_background() -> None:
            # a failure is already logged and recorded as failed by Triggers.run
            with contextlib.suppress(Exception):
                await triggers.run(begun, work)

        tid = begun.record.id
        return JSONResponse(
            {
                "trigger_id": tid,
                "status": "running",
                "status_url": f"/jobs/triggers/{tid}",
                "identity": identity.source,
            },
            202,
            headers={"Location": f"/jobs/triggers/{tid}", "Preference-Applied": "respond-async"},
            background=BackgroundTask(in_background),
        )

    async def trigger_status(self, request: Request, body: bytes) -> Response:
        tid = request.path_params["trigger_id"]
        record = await (await self.jobs.astore()).trigger_get(tid)
        if record is None:
            raise Problem(
                404, "Trigger not found", f"no trigger with id {tid!r}", slug="trigger-not-found"
            )
        return JSONResponse(record.to_dict())

    # -- admin ----------------------------------------------------------------------

    async def enqueue(self, request: Request, body: bytes) -> Response:
        data = _json_object(body)
        unknown = set(data) - {"task", "args", "key", "run_at", "delay", "priority", "queue"}
        if unknown:
            raise Problem(
                400,
                "Bad Request",
                f"unknown field(s) {sorted(unknown)}; allowed: "
                "task, args, key, run_at, delay, priority, queue",
                slug="bad-request",
            )
        task = data.get("task")
        if not isinstance(task, str) or not task:
            raise Problem(
                400, "Bad Request", "field 'task' (a task name) is required", slug="bad-request"
            )
        args = data.get("args", {})
        if not isinstance(args, dict):
            raise Problem(
                400,
                "Bad Request",
                "field 'args' must be a JSON object of keyword arguments",
                slug="bad-request",
            )
        job, created = await self.jobs.aenqueue_ex(
            task,
            args,
            key=_typed(data, "key", str),
            run_at=_run_at(data.get("run_at")),
            delay=_typed(data, "delay", int | float),
            priority=_typed(data, "priority", int),
            queue=_typed(data, "queue", str),
        )
        return JSONResponse(
            job.to_dict() | {"created": created},
            201 if created else 200,
            headers={"Location": f"/jobs/{job.id}"},
        )

    async def list_jobs(self, request: Request, body: bytes) -> Response:
        q = request.query_params
        limit = _int_param(q.get("limit"), "limit", 50, 1, 500)
        before = _int_param(q.get("before"), "before", None, 1, 2**62)
        state = q.get("state") or None
        rows = await self.jobs.alist(
            state=state, task=q.get("task") or None, before_id=before, limit=limit
        )
        page: dict[str, Any] = {"jobs": [j.to_dict() for j in rows], "next": None}
        if len(rows) == limit:
            params = {k: v for k, v in q.items() if k != "before"} | {"before": str(rows[-1].id)}
            page["next"] = "/jobs?" + "&".join(f"{k}={v}" for k, v in params.items())
        return JSONResponse(page)

    async def get_job(self, request: Request, body: bytes) -> Response:
        return _job(await self.jobs.aget(request.path_params["job_id"]))

    async def retry_job(self, request: Request, body: bytes) -> Response:
        return _job(await self.jobs.aretry(request.path_params["job_id"]))

    async def cancel_job(self, request: Request, body: bytes) -> Response:
        return _job(await self.jobs.acancel(request.path_params["job_id"]))

    # -- events -----------------------------------------------------------------------

    async def events(self, request: Request, body: bytes) -> Response:
        """CloudEvents (binary, structured, batched), Pub/Sub push, S3 (direct or via SNS):
        each event becomes one job keyed by (source, id); a redelivery runs nothing."""
        parsed = parse_delivery(request.headers, body)
        if isinstance(parsed, Control):
            return await _control(parsed)
        routed = [(event, self.jobs.event_task(event.type)) for event in parsed]
        unmatched = sorted({e.type for e, task in routed if task is None})
        if unmatched and self.jobs.settings.unmatched_events == "reject":
            raise Problem(422, "No handler for event", f"no handler matches event type(s) "
                          f"{', '.join(unmatched)}; declare one with @jobs.on_event(pattern), "
                          "or set ONCELY_EVENTS_UNMATCHED=ack to acknowledge such events",
                          slug="unmatched-event", unmatched=unmatched)
        for event, task in routed:
            if task is None:
                log.warning("event %s (%s) matched no handler; acknowledged", event.key,
                            event.type, extra={"event": "event.unmatched", "key": event.key,
                                               "type": event.type, "source": event.source})
        return await self._enqueue_events(
            request, [(e, t) for e, t in routed if t is not None], unmatched)

    async def hook(self, request: Request, body: bytes) -> Response:
        name = request.path_params["name"]
        task = self.jobs.hooks.get(name)
        if task is None:
            known = ", ".join(sorted(self.jobs.hooks)) or "none"
            raise Problem(404, "Unknown hook", f"no hook named {name!r}; hooks: {known} "
                          "(declare one with @jobs.hook(name))", slug="unknown-hook")
        secret = self.jobs.hook_secret(name)
        if secret is not None:
            verify_github_signature(secret, request.headers, body)
        else:
            await self._authenticate(request, body)
        return await self._enqueue_events(request, [(parse_hook(name, request.headers, body),
                                                     task)], [])

    async def _enqueue_events(
        self, request: Request, routed: list[tuple[Event, str]], unmatched: list[str]
    ) -> Response:
        jobs = []
        for event, task in routed:
            job, created = await self.jobs.aenqueue_ex(task, {"event": event.to_dict()},
                                                       key=event.key)
            jobs.append({"job_id": job.id, "task": task, "key": event.key, "created": created,
                         "state": str(job.state)})
        processed = None
        if any(j["created"] for j in jobs) and request.query_params.get("process") != "false":
            budget = _budget(request.query_params.get("budget"))
            processed = (await self.jobs.aprocess(budget=budget)).to_dict()
        status = 201 if any(j["created"] for j in jobs) else 200
        return JSONResponse({"jobs": jobs, "unmatched": unmatched, "processed": processed},
                            status)

    # -- health for external monitors ---------------------------------------------

    async def health(self, request: Request, body: bytes) -> Response:
        """200 when healthy, 503 with reasons: what an uptime checker should alert on."""
        if not self.jobs.settings.health_public:
            await self._authenticate(request, body)
        settings, now = self.jobs.settings, self.jobs.clock()
        try:
            store = await self.jobs.astore()
            oldest, dead = await store.job_health(now, now - timedelta(hours=1))
            missed = {r["task"]: r["missed"] for r in await self.jobs.aschedules()
                      if r["missed"]}
        except OncelyError as exc:
            return JSONResponse({"status": "unhealthy", "store": "unreachable",
                                 "reasons": [f"the job store is unreachable: {exc}"]}, 503,
                                headers={"Retry-After": str(RETRY_AFTER_OUTAGE)})
        lag = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
        reasons = []
        max_lag = settings.health_max_lag.total_seconds()
        if lag > max_lag:
            reasons.append(f"queue lag is {lag:.0f} s, over {max_lag:.0f} s: is anything "
                           "calling POST /jobs/process?")
        if dead:
            reasons.append(f"{dead} job(s) died in the last hour; see GET /jobs?state=dead")
        for task, occurrences in missed.items():
            reasons.append(f"periodic task {task} missed {len(occurrences)} occurrence(s), the "
                           f"last at {occurrences[-1]}: is the scheduler calling /jobs/tick?")
        return JSONResponse({"status": "unhealthy" if reasons else "healthy",
                             "store": "reachable", "queue_lag_seconds": round(lag, 3),
                             "dead_last_hour": dead, "missed": missed, "reasons": reasons},
                            503 if reasons else 200)

    async def schedules(self, request: Request, body: bytes) -> Response:
        return JSONResponse({"schedules": await self.jobs.aschedules()})

    async def schedule_action(self, request: Request, body: bytes) -> Response:
        task, action = request.path_params["task"], request.path_params["action"]
        if action == "run-now":
            job = await self.jobs.arun_now(task)
            return JSONResponse(job.to_dict(), 201, headers={"Location": f"/jobs/{job.id}"})
        if action not in ("pause", "resume"):
            raise Problem(404, "Not Found", f"unknown schedule action {action!r}; use pause, "
                          "resume or run-now")
        await self.jobs.aset_paused(task, action == "pause")
        [row] = [r for r in await self.jobs.aschedules() if r["task"] == task]
        return JSONResponse(row)

    # -- health -----------------------------------------------------------------------

    async def healthz(self, request: Request, body: bytes) -> Response:
        return JSONResponse({"status": "ok", "replica": self.jobs.worker_id})

    async def readyz(self, request: Request, body: bytes) -> Response:
        try:
            version, known = await (await self.jobs.astore()).schema_version()
        except OncelyError as exc:
            return Problem(
                503,
                "Not ready",
                f"the job store is unreachable: {exc}",
                slug="not-ready",
                headers={"Retry-After": "5"},
            ).response()
        if version != known:
            return Problem(
                503,
                "Not ready",
                f"store schema is at version {version}, this "
                f"replica needs {known}; run `oncely migrate`",
                slug="not-ready",
            ).response()
        missed = {r["task"]: r["missed"] for r in await self.jobs.aschedules() if r["missed"]}
        # Missed occurrences are reported, not made a readiness failure: failing every
        # replica's readiness would take them out of the load balancer and stop the very
        # ticks that would catch up. /jobs/health is the endpoint that alerts on them.
        return JSONResponse(
            {"status": "ready", "replica": self.jobs.worker_id, "schema": version, "missed": missed}
        )

    async def openapi(self, request: Request, body: bytes) -> Response:
        from .openapi import document

        return JSONResponse(document(sorted(self.jobs.tasks)))

    # -- routing ----------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """Full paths, each answering every method itself, so wrong methods and unknown
        paths under /jobs get problem+json even inside a user's app."""
        g = self.guarded
        table: list[tuple[str, dict[str, Handler]]] = [
            ("/jobs/process", {"POST": self.process}),
            ("/jobs/tick", {"POST": self.tick}),
            ("/jobs/run/{task}", {"POST": self.run_task}),
            ("/jobs/schedules", {"GET": self.schedules}),
            ("/jobs/events", {"POST": self.events}),
            ("/jobs/schedules/{task}/{action}", {"POST": self.schedule_action}),
            ("/jobs/triggers/{trigger_id}", {"GET": self.trigger_status}),
            ("/jobs", {"POST": self.enqueue, "GET": self.list_jobs}),
            ("/jobs/{job_id:int}", {"GET": self.get_job}),
            ("/jobs/{job_id:int}/retry", {"POST": self.retry_job}),
            ("/jobs/{job_id:int}/cancel", {"POST": self.cancel_job}),
        ]
        routes: list[BaseRoute] = [
            Route(path, _by_method(path, {m: g(h) for m, h in handlers.items()}),
                  methods=ALL_METHODS)
            for path, handlers in table
        ]
        for path, handler in (("/jobs/hooks/{name}", {"POST": self.hook}),
                              ("/jobs/health", {"GET": self.health})):
            public = {m: g(h, public=True) for m, h in handler.items()}
            routes.append(Route(path, _by_method(path, public), methods=ALL_METHODS))
        docs = _by_method("/jobs/openapi.json", {"GET": g(self.openapi, public=True)})
        routes.append(Route("/jobs/openapi.json", docs, methods=ALL_METHODS))
        routes.append(Route("/jobs/{rest:path}", _not_found, methods=ALL_METHODS))
        return routes

    def health_routes(self) -> list[BaseRoute]:
        return [
            Route(path, _by_method(path, {"GET": self.guarded(h, public=True)}),
                  methods=ALL_METHODS)
            for path, h in (("/healthz", self.healthz), ("/readyz", self.readyz))
        ]


Handler = Callable[[Request, bytes], Awaitable[Response]]


def _by_method(
    path: str, handlers: Mapping[str, Callable[[Request], Awaitable[Response]]]
) -> Callable[[Request], Awaitable[Response]]:
    allowed = ", ".join(sorted(handlers))

    async def endpoint(request: Request) -> Response:
        handler = handlers.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = handlers.get("GET")
        if handler is None:
            return Problem(
                405,
                "Method Not Allowed",
                f"{request.method} is not allowed on {path}; use {allowed}",
                headers={"Allow": allowed},
            ).response(request.url.path)
        return await handler(request)

    return endpoint


async def _not_found(request: Request) -> Response:
    return Problem(
        404, "Not Found", f"no endpoint at {request.url.path}; see /jobs/openapi.json"
    ).response(request.url.path)


async def _http_problem(request: Request, exc: HTTPException) -> Response:
    detail = {
        404: f"no endpoint at {request.url.path}; see /jobs/openapi.json",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    problem = Problem(exc.status_code, _reason(exc.status_code), detail, headers=exc.headers or {})
    return problem.response(request.url.path)


def _reason(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase


def _prefers_async(request: Request) -> bool:
    prefer = request.headers.get("prefer", "")
    return any(p.strip().lower() == "respond-async" for p in prefer.replace(";", ",").split(","))


def _budget(raw: str | None) -> float:
    if raw is None or raw == "":
        return DEFAULT_BUDGET
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_BUDGET:
        raise Problem(
            400,
            "Bad Request",
            f"budget={raw!r} must be a number of seconds in (0, {MAX_BUDGET:g}]",
            slug="bad-request",
        )
    return value


async def _control(control: Control) -> Response:
    """Answer a delivery that is not an event. An SNS subscription is confirmed as SNS
    expects, by visiting its SubscribeURL. The request was authenticated (SNS sends the
    token as the Basic auth password of the endpoint URL) and the URL is checked to be
    https on an SNS host (``events.parse_delivery``); SNS message signatures are not
    verified. If the visit fails the answer is 502, so SNS delivers the confirmation again."""
    confirmed = False
    if control.kind == "sns-subscription-confirmation" and control.subscribe_url:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=10) as client:
                (await client.get(control.subscribe_url)).raise_for_status()
        except httpx.HTTPError as exc:
            raise Problem(502, "Bad Gateway", f"could not confirm the SNS subscription at "
                          f"{control.subscribe_url}: {type(exc).__name__}: {exc}; SNS will "
                          "deliver the confirmation again", slug="sns-confirmation") from None
        confirmed = True
    log.warning("%s: %s", control.kind, control.message,
                extra={"event": f"events.{control.kind}", "confirmed": confirmed,
                       "subscribe_url": control.subscribe_url})
    return JSONResponse({"control": control.kind, "message": control.message,
                         "subscribe_url": control.subscribe_url, "confirmed": confirmed})


def _at(raw: str | None) -> datetime | None:
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise Problem(400, "Bad Request", f"schedule time {raw!r} must be an RFC 3339 time "
                      "with a zone, e.g. 2026-11-29T12:05:00Z", slug="bad-request")
    return value


def _int_param(raw: str | None, name: str, default: int | None, lo: int, hi: int) -> Any:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise Problem(
            400,
            "Bad Request",
            f"{name}={raw!r} must be a whole number in {lo}..{hi}",
            slug="bad-request",
        )
    return int(raw)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(
            400,
            "Malformed JSON",
            f"the request body is not valid JSON: {exc}",
            slug="malformed-json",
        ) from None
    if not isinstance(data, dict):
        raise Problem(
            400,
            "Bad Request",
            "the request body must be a JSON object like "
            '{"task": "send_welcome_email", "args": {"user_id": 42}}',
            slug="bad-request",
        )
    return data


def _typed(data: Mapping[str, Any], name: str, kind: Any) -> Any:
    value = data.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise Problem(
            400,
            "Bad Request",
            f"field {name!r} has the wrong type ({type(value).__name__})",
            slug="bad-request",
        )
    return value


def _run_at(raw: Any) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(str(raw))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise Problem(
            400,
            "Bad Request",
            f"run_at={raw!r} must be an ISO 8601 time with a time zone, e.g. 2026-11-29T12:00:00Z",
            slug="bad-request",
        )
    return value


def _job(job: JobRecord) -> Response:
    return JSONResponse(job.to_dict())


def _auth_for(auth: Authenticator | None) -> Authenticator:
    return auth if auth is not None else Authenticator.from_env(os.environ)


def install(jobs: Oncely, app: Starlette, *, auth: Authenticator | None = None) -> None:
    """Add ``/jobs/...``, ``/healthz`` and ``/readyz`` to a Starlette or FastAPI app.
    The app's own ``/healthz`` and ``/readyz``, if it has them, win."""
    api = Api(jobs, _auth_for(auth))
    app.router.routes[0:0] = api.routes()
    app.router.routes.extend(api.health_routes())


def create_app(jobs: Oncely, *, auth: Authenticator | None = None) -> Starlette:
    """oncely's endpoints as an app of their own (what ``oncely serve`` runs)."""
    api = Api(jobs, _auth_for(auth))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await jobs.astore()  # connect and migrate before taking traffic
        except OncelyError as exc:
            log.error("store not ready at start-up: %s", exc, extra={"event": "serve.store"})
        yield
        await jobs.aclose()

    routes: list[BaseRoute] = [
        *api.routes(),
        *api.health_routes(),
        Route("/openapi.json", api.guarded(api.openapi, public=True), methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            HTTPException: _http_problem,  # type: ignore[dict-item]
        },
    )


__all__ = ["Api", "JobState", "Problem", "create_app", "install"]
