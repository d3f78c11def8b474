"""The trigger and admin endpoints over a real HTTP server, on both stores."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from httpserver import ThreadServer
from oncely import Job, JobState, Oncely
from oncely.auth import (
    Authenticator,
    BearerTokenVerifier,
    HmacVerifier,
    OidcVerifier,
    QStashVerifier,
)
from test_auth import KEY_A, SA, Jwks, jwks  # noqa: F401  (jwks is a fixture)

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class App:
    """An Oncely app with a few tasks, served over HTTP, plus a log of what ran."""

    def __init__(self, store_url: str, auth: Authenticator | None = None, **options: Any):
        self.jobs = Oncely(store_url, environ={}, worker_id="replica-1", **options)
        self.ran: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

        @self.jobs.task
        async def welcome(user_id: int, *, job: Job) -> str:
            self.ran.append(job.id)
            return f"sent {user_id}"

        @self.jobs.task
        def gated(*, job: Job) -> None:
            self.gate.wait(20)
            self.ran.append(job.id)

        @self.jobs.periodic(every="1h")
        def hourly(*, job: Job) -> None:
            self.ran.append(job.id)

        @self.jobs.periodic(every="1s")
        def pulse(*, job: Job) -> None:
            self.ran.append(job.id)

        self.asgi = self.jobs.asgi(auth=auth or Authenticator([BearerTokenVerifier([TOKEN])]))


@pytest.fixture
def app(store_url: str) -> Iterator[App]:
    a = App(store_url)
    yield a
    a.jobs.close()


@pytest.fixture
def client(app: App) -> Iterator[httpx.Client]:
    with ThreadServer(app.asgi) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def enqueue(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/jobs", json=body, headers=AUTH)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = dict(response.json())
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# -- the trigger ------------------------------------------------------------------------


def test_process_runs_due_jobs_and_answers_a_summary(app: App, client: httpx.Client) -> None:
    ids = [enqueue(client, task="welcome", args={"user_id": i})["id"] for i in range(3)]
    response = client.post("/jobs/process", headers=AUTH)
    assert response.status_code == 200
    summary = response.json()
    assert (summary["claimed"], summary["succeeded"], summary["remaining"]) == (3, 3, 0)
    assert sorted(summary["job_ids"]) == sorted(ids) and summary["replayed"] is False
    assert len(summary["trigger_id"]) == 32
    assert sorted(app.ran) == sorted(ids)
    assert client.get(f"/jobs/{ids[0]}", headers=AUTH).json()["result"] == "sent 0"


def test_a_retried_cloud_scheduler_trigger_replays_and_runs_nothing(
    app: App, client: httpx.Client
) -> None:
    enqueue(client, task="welcome", args={"user_id": 1})
    tick = {**AUTH, "X-CloudScheduler-JobName": "projects/p/locations/l/jobs/process",
            "X-CloudScheduler-ScheduleTime": "2026-11-29T12:05:00Z"}
    first = client.post("/jobs/process", headers=tick).json()
    enqueue(client, task="welcome", args={"user_id": 2})  # due, but the retry must not run it
    retry = client.post("/jobs/process", headers={k.lower(): v for k, v in tick.items()})
    assert retry.status_code == 200
    replay = retry.json()
    assert replay["replayed"] is True and replay["trigger_id"] == first["trigger_id"]
    assert {k: v for k, v in replay.items() if k != "replayed"} == {
        k: v for k, v in first.items() if k != "replayed"}
    assert len(app.ran) == 1
    next_tick = {**tick, "X-CloudScheduler-ScheduleTime": "2026-11-29T12:10:00Z"}
    assert client.post("/jobs/process", headers=next_tick).json()["succeeded"] == 1


@pytest.mark.parametrize("headers", [
    {"Idempotency-Key": "abc"},
    {"X-CloudTasks-TaskName": "projects/p/locations/l/queues/q/tasks/1"},
    {"Upstash-Message-Id": "msg_123"},
    {"ce-source": "//storage.googleapis.com/b", "ce-id": "42"},
])
def test_each_trigger_identity_header_is_replayed(
    client: httpx.Client, headers: dict[str, str]
) -> None:
    first = client.post("/jobs/process", headers={**AUTH, **headers}).json()
    again = client.post("/jobs/process", headers={**AUTH, **headers}).json()
    assert first["replayed"] is False and again["replayed"] is True
    assert again["trigger_id"] == first["trigger_id"]
    fresh = client.post("/jobs/process", headers=AUTH).json()
    assert fresh["trigger_id"] != first["trigger_id"]


def test_a_retry_while_the_trigger_still_runs_is_told_to_come_back(
    app: App, client: httpx.Client
) -> None:
    app.gate.clear()
    enqueue(client, task="gated")
    key = {**AUTH, "Idempotency-Key": f"slow-{uuid.uuid4()}"}
    result: dict[str, httpx.Response] = {}
    first = threading.Thread(target=lambda: result.update(r=client.post("/jobs/process",
                                                                        headers=key)))
    first.start()
    deadline = time.monotonic() + 10
    while not client.get("/jobs?state=running", headers=AUTH).json()["jobs"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    busy = client.post("/jobs/process", headers=key)
    body = problem(busy, 409)
    assert int(busy.headers["Retry-After"]) >= 1 and body["trigger_id"]
    app.gate.set()
    first.join(20)
    assert result["r"].json()["succeeded"] == 1
    assert client.post("/jobs/process", headers=key).json()["replayed"] is True


def test_prefer_respond_async_answers_202_and_reports_later(
    app: App, client: httpx.Client
) -> None:
    job = enqueue(client, task="welcome", args={"user_id": 7})
    response = client.post("/jobs/process", headers={**AUTH, "Prefer": "respond-async"})
    assert response.status_code == 202
    status_url = response.headers["Location"]
    assert status_url == response.json()["status_url"]
    deadline = time.monotonic() + 10
    while (report := client.get(status_url, headers=AUTH).json())["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert report["state"] == "done" and report["summary"]["job_ids"] == [job["id"]]
    problem(client.get("/jobs/triggers/nope", headers=AUTH), 404)


def test_the_budget_is_validated(client: httpx.Client) -> None:
    for bad in ("0", "-1", "abc", "901"):
        assert "budget" in problem(client.post(f"/jobs/process?budget={bad}", headers=AUTH),
                                   400)["detail"]
    assert client.post("/jobs/process?budget=0.5", headers=AUTH).status_code == 200


def test_one_log_line_per_trigger_and_per_job_names_replica_trigger_and_jobs(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    job = enqueue(client, task="welcome", args={"user_id": 1})
    with caplog.at_level(logging.INFO, logger="oncely"):
        summary = client.post("/jobs/process", headers=AUTH).json()
    [trigger] = [r for r in caplog.records if getattr(r, "event", "") == "trigger.done"]
    [ran] = [r for r in caplog.records if getattr(r, "event", "") == "job.succeeded"]
    assert trigger.trigger_id == summary["trigger_id"] and trigger.replica == "replica-1"  # type: ignore[attr-defined]
    assert trigger.job_ids == [job["id"]]  # type: ignore[attr-defined]
    assert ran.job_id == job["id"] and ran.worker == "replica-1"  # type: ignore[attr-defined]
    assert ran.trigger_id == summary["trigger_id"]  # type: ignore[attr-defined]


# -- schedules ------------------------------------------------------------------------------


def test_tick_enqueues_the_due_occurrence_once_and_a_retried_tick_replays(
    app: App, client: httpx.Client
) -> None:
    tick = {**AUTH, "X-CloudScheduler-JobName": "oncely-tick",
            "X-CloudScheduler-ScheduleTime": "2026-11-29T12:00:00Z"}
    first = client.post("/jobs/tick", headers=tick).json()
    assert [e["task"] for e in first["enqueued"]] == ["pulse"]
    assert first["succeeded"] == 1 and first["replayed"] is False
    again = client.post("/jobs/tick", headers=tick).json()
    assert again["replayed"] is True and again["enqueued"] == first["enqueued"]
    assert len(app.ran) == 1


def test_run_task_runs_the_occurrence_the_scheduler_names_once(
    app: App, client: httpx.Client
) -> None:
    headers = {**AUTH, "X-CloudScheduler-JobName": "hourly",
               "X-CloudScheduler-ScheduleTime": "2026-11-29T11:00:00Z"}
    first = client.post("/jobs/run/hourly", headers=headers).json()
    assert first["enqueued"] == [{"task": "hourly", "scheduled_for": "2026-11-29T11:00:00+00:00",
                                  "job_id": first["job_ids"][0]}]
    assert client.post("/jobs/run/hourly", headers=headers).json()["replayed"] is True
    # the same occurrence named by another identity is still recorded only once
    via_query = client.post("/jobs/run/hourly?at=2026-11-29T11:30:00Z", headers=AUTH).json()
    assert via_query["enqueued"] == [] and via_query["claimed"] == 0
    assert "periodic tasks: hourly, pulse" in problem(
        client.post("/jobs/run/welcome", headers=AUTH), 404)["detail"]
    assert "RFC 3339" in problem(client.post("/jobs/run/hourly?at=yesterday", headers=AUTH),
                                 400)["detail"]
    schedules = {s["task"]: s for s in client.get("/jobs/schedules", headers=AUTH).json()[
        "schedules"]}
    assert schedules["hourly"]["last_occurrence"] == "2026-11-29T11:00:00+00:00"
    assert schedules["hourly"]["schedule"] == "every 1h"


def test_schedules_can_be_paused_resumed_and_run_now_over_http(client: httpx.Client) -> None:
    paused = client.post("/jobs/schedules/hourly/pause", headers=AUTH).json()
    assert paused["task"] == "hourly" and paused["paused"] is True
    assert client.post("/jobs/schedules/hourly/resume", headers=AUTH).json()["paused"] is False
    extra = client.post("/jobs/schedules/hourly/run-now", headers=AUTH)
    assert extra.status_code == 201 and extra.json()["task"] == "hourly"
    problem(client.post("/jobs/schedules/hourly/explode", headers=AUTH), 404)
    problem(client.post("/jobs/schedules/welcome/pause", headers=AUTH), 422)


def test_readyz_reports_missed_occurrences_without_failing(store_url: str) -> None:
    from conftest import FakeClock

    clock = FakeClock(datetime(2026, 11, 29, 12, 0, 30, tzinfo=UTC))
    a = App(store_url, clock=clock)
    with ThreadServer(a.asgi) as server, httpx.Client(base_url=server.url) as c:
        assert c.get("/readyz").json()["missed"] == {}  # first sight of the schedules
        clock.advance(3 * 3600)
        ready = c.get("/readyz")
        assert ready.status_code == 200
        # 15:00 is due but still within its 2-minute grace at 15:00:30
        assert ready.json()["missed"]["hourly"] == ["2026-11-29T13:00:00+00:00",
                                                    "2026-11-29T14:00:00+00:00"]
    a.jobs.close()


# -- admin endpoints ------------------------------------------------------------------------


def test_enqueue_is_idempotent_on_key_and_jobs_can_be_listed_retried_cancelled(
    client: httpx.Client,
) -> None:
    created = client.post("/jobs", headers=AUTH, json={
        "task": "welcome", "args": {"user_id": 1}, "key": "welcome:1", "priority": 3})
    assert created.status_code == 201
    assert created.headers["Location"] == f"/jobs/{created.json()['id']}"
    again = client.post("/jobs", headers=AUTH, json={
        "task": "welcome", "args": {"user_id": 1}, "key": "welcome:1"})
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    later = enqueue(client, task="welcome", args={"user_id": 2}, delay=3600)
    assert later["state"] == "pending" and later["run_at"] > created.json()["run_at"]
    for i in range(3):
        enqueue(client, task="welcome", args={"user_id": 10 + i})
    seen, url, pages = [], "/jobs?task=welcome&limit=2", 0
    while url:
        page = client.get(url, headers=AUTH).json()
        seen += [j["id"] for j in page["jobs"]]
        url, pages = page["next"], pages + 1
    assert pages == 3 and len(seen) == 5 == len(set(seen)) and seen == sorted(seen, reverse=True)
    cancelled = client.post(f"/jobs/{later['id']}/cancel", headers=AUTH).json()
    assert cancelled["state"] == "cancelled"
    problem(client.post(f"/jobs/{later['id']}/cancel", headers=AUTH), 409)
    assert client.post(f"/jobs/{later['id']}/retry", headers=AUTH).json()["state"] == "pending"
    assert [j["state"] for j in client.get("/jobs?state=cancelled", headers=AUTH).json()[
        "jobs"]] == []


# -- who may call -----------------------------------------------------------------------------


def test_without_credentials_everything_but_health_is_401(client: httpx.Client) -> None:
    for method, path in [("POST", "/jobs/process"), ("POST", "/jobs"), ("GET", "/jobs"),
                         ("GET", "/jobs/1"), ("POST", "/jobs/1/retry")]:
        body = problem(client.request(method, path, headers={"Idempotency-Key": "x"}), 401)
        assert "credentials" in body["detail"] or "Authorization" in body["detail"]
    refused = client.post("/jobs/process", headers={"Authorization": "Bearer wrong-token-xyz"})
    assert problem(refused, 401) and refused.headers["WWW-Authenticate"]
    assert TOKEN not in refused.text
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"
    # the Idempotency-Key of the refused calls was never recorded
    assert client.post("/jobs/process", headers={**AUTH, "Idempotency-Key": "x"}).json()[
        "replayed"] is False


def serve(store_url: str, auth: Authenticator) -> tuple[App, ThreadServer]:
    a = App(store_url, auth=auth)
    return a, ThreadServer(a.asgi)


def test_hmac_signatures_are_accepted_once_within_the_window(store_url: str) -> None:
    secret = "hmac-secret-0123456789abcdef"
    app, server = serve(store_url, Authenticator([HmacVerifier([secret])]))
    with server, httpx.Client(base_url=server.url) as c:
        body = b'{"task": "welcome", "args": {"user_id": 1}}'
        ts = str(int(time.time()))
        sig = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        headers = {"X-Oncely-Timestamp": ts, "X-Oncely-Signature": f"sha256={sig}",
                   "Content-Type": "application/json"}
        assert c.post("/jobs", content=body, headers=headers).status_code == 201
        problem(c.post("/jobs", content=body, headers=headers), 401)  # replayed
        stale = str(int(time.time()) - 3600)
        sig = hmac.new(secret.encode(), f"{stale}.".encode() + body, hashlib.sha256).hexdigest()
        problem(c.post("/jobs", content=body, headers={**headers, "X-Oncely-Timestamp": stale,
                                                        "X-Oncely-Signature": f"sha256={sig}"}),
                401)
        problem(c.post("/jobs", content=body + b" ", headers={
            **headers, "X-Oncely-Timestamp": str(int(time.time()))}), 401)  # bad signature
    app.jobs.close()


def test_cloud_scheduler_oidc_tokens_are_verified_against_the_jwks(
    store_url: str, jwks: Jwks  # noqa: F811
) -> None:
    audience = "https://myapp.example/jobs/process"
    verifier = OidcVerifier(audience, [SA], jwks_url=jwks.url)
    app, server = serve(store_url, Authenticator([verifier]))

    def token(**claims: Any) -> dict[str, str]:
        now = int(time.time())
        body = {"iss": "https://accounts.google.com", "aud": audience, "email": SA,
                "email_verified": True, "iat": now, "exp": now + 3600, "sub": "1"} | claims
        signed = jwt.encode(body, KEY_A, algorithm="RS256", headers={"kid": "kid-a"})
        return {"Authorization": f"Bearer {signed}"}

    with server, httpx.Client(base_url=server.url) as c:
        assert c.post("/jobs/process", headers=token()).status_code == 200
        assert "audience" in problem(c.post("/jobs/process", headers=token(aud="https://x")),
                                     401)["detail"]
        now = int(time.time())
        problem(c.post("/jobs/process", headers=token(iat=now - 7200, exp=now - 3600)), 401)
        problem(c.post("/jobs/process", headers=token(email="intruder@evil.example")), 403)
    app.jobs.close()


def test_qstash_signatures_are_verified(store_url: str) -> None:
    import base64

    current, nxt = "sig_current_0123456789abcdef0123456789", "sig_next_0123456789abcdef0123456789"
    app, server = serve(store_url, Authenticator([QStashVerifier(current, nxt)]))
    with server, httpx.Client(base_url=server.url) as c:
        url = f"{server.url}/jobs/process"

        def signed(key: str, body: bytes = b"") -> dict[str, str]:
            now = int(time.time())
            digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode()
            claims = {"iss": "Upstash", "sub": url, "exp": now + 300, "nbf": now, "iat": now,
                      "jti": uuid.uuid4().hex, "body": digest}
            return {"Upstash-Signature": jwt.encode(claims, key, algorithm="HS256")}

        assert c.post("/jobs/process", headers=signed(current)).status_code == 200
        assert c.post("/jobs/process", headers=signed(nxt)).status_code == 200
        stranger = signed("sig_someone_else_0123456789abcdef012345")
        problem(c.post("/jobs/process", headers=stranger), 401)
    app.jobs.close()


# -- bad input ------------------------------------------------------------------------------


def test_bad_input_gets_problem_json_and_stores_nothing(client: httpx.Client) -> None:
    post = lambda body, **kw: client.post("/jobs", content=body, headers={  # noqa: E731
        **AUTH, "Content-Type": "application/json"}, **kw)
    assert "not valid JSON" in problem(post(b"{nope"), 400)["detail"]
    assert "JSON object" in problem(post(b"[1, 2]"), 400)["detail"]
    assert "'task'" in problem(post(b'{"args": {}}'), 400)["detail"]
    assert "unknown field" in problem(post(b'{"task": "welcome", "when": 1}'), 400)["detail"]
    body = problem(post(b'{"task": "welcom", "args": {"user_id": 1}}'), 422)
    assert body["type"] == "urn:oncely:problem:unknown-task" and "welcome" in body["detail"]
    assert "user_id" in problem(post(b'{"task": "welcome", "args": {"user": 1}}'), 422)[
        "detail"]
    assert "time zone" in problem(post(b'{"task": "welcome", "args": {"user_id": 1}, '
                                       b'"run_at": "2030-01-01T00:00:00"}'), 400)["detail"]
    assert "wrong type" in problem(post(b'{"task": "welcome", "args": {"user_id": 1}, '
                                        b'"priority": "high"}'), 400)["detail"]
    too_big = b'{"task": "welcome", "args": {"user_id": 1, "pad": "' + b"x" * 1_100_000 + b'"}}'
    problem(post(too_big), 413)
    assert client.get("/jobs", headers=AUTH).json()["jobs"] == []  # nothing stored
    problem(client.get("/jobs/999999", headers=AUTH), 404)
    wrong = client.get("/jobs/process", headers=AUTH)
    assert problem(wrong, 405)["detail"].startswith("GET is not allowed")
    assert wrong.headers["Allow"] == "POST"
    problem(client.get("/jobs/nothing/here", headers=AUTH), 404)
    problem(client.get("/jobs?limit=0", headers=AUTH), 400)
    problem(client.get("/jobs?state=bogus", headers=AUTH), 422)


def test_a_database_outage_answers_503_with_retry_after() -> None:
    app = App("postgresql://oncely@127.0.0.1:1/none")
    with ThreadServer(app.asgi) as server, httpx.Client(base_url=server.url) as c:
        for response in (c.post("/jobs/process", headers=AUTH),
                         c.post("/jobs", headers=AUTH, json={"task": "welcome",
                                                             "args": {"user_id": 1}})):
            assert problem(response, 503)["type"] == "urn:oncely:problem:store-unavailable"
            assert response.headers["Retry-After"] == "5"
        assert c.get("/healthz").status_code == 200
        problem(c.get("/readyz"), 503)
    app.jobs.close()


# -- mounting ------------------------------------------------------------------------------


def test_install_adds_the_same_paths_to_a_fastapi_app(store_url: str) -> None:
    api = FastAPI()

    @api.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    a = App(store_url)
    a.jobs.install(api, auth=Authenticator([BearerTokenVerifier([TOKEN])]))
    with ThreadServer(api) as server, httpx.Client(base_url=server.url) as c:
        assert c.get("/hello").json() == {"hello": "world"}
        job = c.post("/jobs", headers=AUTH, json={"task": "welcome", "args": {"user_id": 5}})
        assert job.status_code == 201
        assert c.post("/jobs/process", headers=AUTH).json()["job_ids"] == [job.json()["id"]]
        assert c.get("/readyz").status_code == 200
        assert c.get("/openapi.json").json()["info"]["title"] == "FastAPI"  # the app's own
        assert "/jobs/process" in c.get("/jobs/openapi.json").json()["paths"]
    a.jobs.close()


def test_install_works_on_a_plain_starlette_app_and_keeps_its_own_health(store_url: str) -> None:
    own = Starlette(routes=[Route("/healthz", lambda r: PlainTextResponse("mine"))])
    a = App(store_url)
    a.jobs.install(own, auth=Authenticator([BearerTokenVerifier([TOKEN])]))
    with ThreadServer(own) as server, httpx.Client(base_url=server.url) as c:
        assert c.get("/healthz").text == "mine"
        assert c.post("/jobs/process", headers=AUTH).status_code == 200
    a.jobs.close()


def test_the_openapi_document_lists_every_endpoint(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {"/jobs/process", "/jobs/tick", "/jobs/run/{task}",
                                 "/jobs/schedules", "/jobs/schedules/{task}/{action}",
                                 "/jobs/events", "/jobs/hooks/{name}", "/jobs/health",
                                 "/jobs/triggers/{trigger_id}", "/jobs",
                                 "/jobs/{job_id}", "/jobs/{job_id}/retry",
                                 "/jobs/{job_id}/cancel", "/healthz", "/readyz"}
    assert doc["components"]["schemas"]["NewJob"]["properties"]["task"]["enum"] == [
        "gated", "hourly", "pulse", "welcome"]
    assert json.dumps(doc)  # serialisable


def test_jobs_reach_the_store_the_admin_api_reports(app: App, client: httpx.Client) -> None:
    job = enqueue(client, task="welcome", args={"user_id": 3})
    client.post("/jobs/process", headers=AUTH)
    check = Oncely(app.jobs.store_url, environ={})
    assert check.get(job["id"]).state is JobState.SUCCEEDED
    check.close()
