"""The OpenAPI document for oncely's endpoints (served at /jobs/openapi.json)."""

from __future__ import annotations

from typing import Any

_PROBLEM = {
    "description": "RFC 9457 problem",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}, {"hmac": []}]


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    errors: tuple[int, ...] = (401, 403, 503),
    secured: bool = True,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {**ok, **{str(code): _PROBLEM for code in errors}},
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if secured:
        op["security"] = _SECURED
    return op


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_BUDGET = _q("budget", {"type": "number", "exclusiveMinimum": 0, "maximum": 900},
             "seconds, default 25")
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}
_JOB = {"$ref": "#/components/schemas/Job"}


def document(tasks: list[str]) -> dict[str, Any]:
    summary = {"$ref": "#/components/schemas/Summary"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "oncely",
            "version": "1",
            "description": "Trigger endpoints that run background jobs exactly once.",
        },
        "paths": {
            "/jobs/process": {
                "post": _op(
                    "Run due jobs within a time budget; a retried trigger replays its summary",
                    {
                        "200": _json("what this trigger did (or replayed)", summary),
                        "202": _json("accepted (Prefer: respond-async)", {"type": "object"}),
                    },
                    params=[
                        _q(
                            "budget",
                            {"type": "number", "exclusiveMinimum": 0, "maximum": 900},
                            "seconds, default 25",
                        ),
                        _q("queue", {"type": "string"}, "only this queue (repeatable)"),
                    ],
                    errors=(400, 401, 403, 409, 503),
                )
            },
            "/jobs/tick": {
                "post": _op(
                    "The heartbeat: enqueue every periodic task's due occurrences once, then "
                    "run due jobs",
                    {"200": _json("what this tick did (or replayed)", summary),
                     "202": _json("accepted (Prefer: respond-async)", {"type": "object"})},
                    params=[_BUDGET],
                    errors=(400, 401, 403, 409, 503),
                )
            },
            "/jobs/run/{task}": {
                "post": _op(
                    "Run the occurrence of one periodic task named by "
                    "X-CloudScheduler-ScheduleTime (or ?at=, or the latest due), once",
                    {"200": _json("what this run did (or replayed)", summary)},
                    params=[_path("task"), _BUDGET,
                            _q("at", {"type": "string", "format": "date-time"},
                               "the occurrence (RFC 3339)")],
                    errors=(400, 401, 403, 404, 409, 503),
                )
            },
            "/jobs/schedules": {
                "get": _op(
                    "Periodic tasks: last and next occurrence, missed occurrences",
                    {"200": _json("the schedules", {"type": "object"})},
                    errors=(401, 403, 503),
                )
            },
            "/jobs/schedules/{task}/{action}": {
                "post": _op(
                    "pause, resume or run-now a periodic task",
                    {"200": _json("the schedule", {"type": "object"}),
                     "201": _json("the extra job (run-now)", _JOB)},
                    params=[_path("task"), {**_path("action"), "schema": {
                        "type": "string", "enum": ["pause", "resume", "run-now"]}}],
                    errors=(401, 403, 404, 422, 503),
                )
            },
            "/jobs/events": {
                "post": _op(
                    "Deliver events: CloudEvents (binary, structured, batched), Pub/Sub "
                    "push, S3 notifications (direct or via SNS); one job per (source, id)",
                    {"201": _json("jobs created (and processed)", {"type": "object"}),
                     "200": _json("a redelivery: the existing jobs, nothing run",
                                  {"type": "object"})},
                    params=[_BUDGET, _q("process", {"type": "boolean"},
                                        "run due jobs after enqueueing (default true)")],
                    errors=(400, 401, 403, 413, 415, 422, 503),
                )
            },
            "/jobs/hooks/{name}": {
                "post": _op(
                    "A webhook: GitHub-style X-Hub-Signature-256 when the hook has a secret, "
                    "the trigger authentication otherwise",
                    {"201": _json("job created (and processed)", {"type": "object"}),
                     "200": _json("a redelivery", {"type": "object"})},
                    params=[_path("name"), _BUDGET], errors=(400, 401, 404, 413, 503),
                )
            },
            "/jobs/health": {
                "get": _op(
                    "For external monitors: 200 when healthy, 503 with reasons (queue lag, "
                    "jobs dead in the last hour, missed schedules, store unreachable)",
                    {"200": _json("healthy", {"type": "object"}),
                     "503": _json("unhealthy, with reasons", {"type": "object"})},
                    errors=(), secured=False,
                )
            },
            "/jobs/triggers/{trigger_id}": {
                "get": _op(
                    "How a trigger run went",
                    {"200": _json("the trigger", {"type": "object"})},
                    params=[
                        {
                            "name": "trigger_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    errors=(401, 403, 404, 503),
                )
            },
            "/jobs": {
                "post": _op(
                    "Enqueue a job (idempotent on key)",
                    {"201": _json("created", _JOB), "200": _json("the job holding the key", _JOB)},
                    body={"$ref": "#/components/schemas/NewJob"},
                    errors=(400, 401, 403, 413, 422, 503),
                ),
                "get": _op(
                    "List jobs, newest first",
                    {
                        "200": _json(
                            "a page of jobs",
                            {
                                "type": "object",
                                "properties": {
                                    "jobs": {"type": "array", "items": _JOB},
                                    "next": {"type": ["string", "null"]},
                                },
                            },
                        )
                    },
                    params=[
                        _q("state", {"type": "string"}, "filter by state"),
                        _q("task", {"type": "string"}, "filter by task"),
                        _q(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": 500},
                            "page size, default 50",
                        ),
                        _q("before", {"type": "integer"}, "ids below this (next page)"),
                    ],
                    errors=(400, 401, 403, 503),
                ),
            },
            "/jobs/{job_id}": {
                "get": _op(
                    "One job",
                    {"200": _json("the job", _JOB)},
                    params=[_JOB_ID],
                    errors=(401, 403, 404, 503),
                )
            },
            "/jobs/{job_id}/retry": {
                "post": _op(
                    "Run a dead or cancelled job again",
                    {"200": _json("the job", _JOB)},
                    params=[_JOB_ID],
                    errors=(401, 403, 404, 409, 503),
                )
            },
            "/jobs/{job_id}/cancel": {
                "post": _op(
                    "Cancel a job that has not finished",
                    {"200": _json("the job", _JOB)},
                    params=[_JOB_ID],
                    errors=(401, 403, 404, 409, 503),
                )
            },
            "/healthz": {
                "get": _op(
                    "The process is alive",
                    {"200": _json("ok", {"type": "object"})},
                    errors=(),
                    secured=False,
                )
            },
            "/readyz": {
                "get": _op(
                    "The store is reachable and its schema current",
                    {"200": _json("ready", {"type": "object"})},
                    errors=(503,),
                    secured=False,
                )
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a static token or a Google OIDC ID token",
                },
                "hmac": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Oncely-Signature",
                    "description": "sha256=HMAC(secret, timestamp + '.' + body), with "
                    "X-Oncely-Timestamp",
                },
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "instance": {"type": "string"},
                    },
                },
                "NewJob": {
                    "type": "object",
                    "required": ["task"],
                    "properties": {
                        "task": {"type": "string", "enum": tasks} if tasks else {"type": "string"},
                        "args": {"type": "object"},
                        "key": {"type": "string"},
                        "run_at": {"type": "string", "format": "date-time"},
                        "delay": {"type": "number", "minimum": 0},
                        "priority": {"type": "integer"},
                        "queue": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
                "Job": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "task": {"type": "string"},
                        "state": {
                            "type": "string",
                            "enum": [
                                "pending",
                                "running",
                                "retrying",
                                "succeeded",
                                "dead",
                                "cancelled",
                            ],
                        },
                        "args": {"type": "object"},
                        "attempt": {"type": "integer"},
                    },
                },
                "Summary": {
                    "type": "object",
                    "properties": {
                        k: {"type": "integer"}
                        for k in (
                            "claimed",
                            "succeeded",
                            "failed",
                            "dead",
                            "fenced_out",
                            "rescued",
                            "remaining",
                        )
                    }
                    | {
                        "job_ids": {"type": "array", "items": {"type": "integer"}},
                        "trigger_id": {"type": "string"},
                        "replayed": {"type": "boolean"},
                    },
                },
            },
        },
    }
