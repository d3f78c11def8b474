"""Event triggers over a real HTTP server: CloudEvents from the official SDK, provider
envelopes delivered many times to several replicas, webhooks, and health for monitors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FakeClock
from httpserver import APPS, ThreadServer
from oncely import Job, Oncely
from oncely.auth import Authenticator, BearerTokenVerifier
from oncely.events import Event

try:  # cloudevents 2.x keeps the 1.x API under cloudevents.v1
    from cloudevents.v1.conversion import to_binary, to_structured
    from cloudevents.v1.http import CloudEvent
except ImportError:  # cloudevents 1.x
    from cloudevents.conversion import to_binary, to_structured  # type: ignore[import-not-found,no-redef,unused-ignore]
    from cloudevents.http import CloudEvent  # type: ignore[import-not-found,no-redef,unused-ignore]

sys.path.insert(0, str(APPS))
from test_replicas import AUTH as REPLICA_AUTH
from test_replicas import ledger, ledger_rows, start  # noqa: F401  (ledger is a fixture)

FIXTURES = Path(__file__).parent / "fixtures" / "events"
TOKEN = "events-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOOK_SECRET = "hook-secret-0123456789abcdef"


class EventApp:
    def __init__(self, store_url: str, **options: Any):
        self.jobs = Oncely(store_url, worker_id="replica-1", **options)
        self.seen: list[Event] = []
        self.payloads: list[Any] = []

        @self.jobs.on_event("google.cloud.storage.object.v1.*")
        async def thumbnail(event: Event, *, job: Job) -> str:
            self.seen.append(event)
            return f"thumbnail of {event.subject}"

        @self.jobs.on_event("com.example.*")
        def example(event: Event) -> None:
            self.seen.append(event)

        @self.jobs.hook("warm-cache", secret=HOOK_SECRET)
        def warm_cache(payload: Any, *, job: Job) -> None:
            self.payloads.append(payload)

        @self.jobs.hook("plain")
        def plain(payload: Any) -> None:
            self.payloads.append(payload)

        @self.jobs.task
        def explode() -> None:
            raise RuntimeError("boom")

        self.asgi = self.jobs.asgi(auth=Authenticator([BearerTokenVerifier([TOKEN])]))


@pytest.fixture
def app(store_url: str) -> Iterator[EventApp]:
    a = EventApp(store_url, environ={})
    yield a
    a.jobs.close()


@pytest.fixture
def client(app: EventApp) -> Iterator[httpx.Client]:
    with ThreadServer(app.asgi) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def cloud_event(i: int) -> CloudEvent:
    return CloudEvent({"type": "com.example.signup", "source": "//example/signups",
                       "id": f"evt-{i}", "subject": f"user/{i}"}, {"user_id": i})


def test_cloudevents_from_the_sdk_run_their_handler_once_in_each_mode(
    app: EventApp, client: httpx.Client
) -> None:
    headers, body = to_binary(cloud_event(1))
    binary = client.post("/jobs/events", headers={**AUTH, **headers}, content=body)
    assert binary.status_code == 201 and binary.json()["processed"]["succeeded"] == 1
    headers, body = to_structured(cloud_event(2))
    assert client.post("/jobs/events", headers={**AUTH, **headers},
                       content=body).status_code == 201
    batch = json.dumps([json.loads(to_structured(cloud_event(i))[1]) for i in (3, 4)])
    batched = client.post("/jobs/events", content=batch, headers={
        **AUTH, "Content-Type": "application/cloudevents-batch+json"})
    assert batched.status_code == 201 and len(batched.json()["jobs"]) == 2
    assert sorted(e.id for e in app.seen) == ["evt-1", "evt-2", "evt-3", "evt-4"]
    assert app.seen[0].data == {"user_id": 1} and app.seen[0].subject == "user/1"
    redelivered = client.post("/jobs/events", headers={**AUTH, **headers}, content=body)
    assert redelivered.status_code == 200 and redelivered.json()["jobs"][0]["created"] is False
    assert redelivered.json()["processed"] is None and len(app.seen) == 4


def test_a_cloud_storage_notification_via_pubsub_push_runs_the_storage_handler(
    app: EventApp, client: httpx.Client
) -> None:
    # The envelope of Google's push documentation, carrying Cloud Storage's notification
    # (attributes from "Pub/Sub notifications for Cloud Storage"); see test_events.py.
    envelope = json.loads((FIXTURES / "pubsub-push.json").read_text())
    obj = json.loads((FIXTURES / "gcs-object.json").read_text())
    envelope["message"]["data"] = base64.b64encode(json.dumps(obj).encode()).decode()
    envelope["message"]["attributes"] = {
        "eventType": "OBJECT_FINALIZE", "bucketId": obj["bucket"], "objectId": obj["name"],
        "payloadFormat": "JSON_API_V1", "notificationConfig": "projects/_/buckets/b/x/1",
        "eventTime": obj["updated"], "objectGeneration": str(obj["generation"])}
    response = client.post("/jobs/events", json=envelope, headers=AUTH)
    assert response.status_code == 201, response.text
    [event] = app.seen
    assert event.type == "google.cloud.storage.object.v1.finalized"
    assert event.subject == f"objects/{obj['name']}" and event.data["bucket"] == obj["bucket"]
    job = client.get(f"/jobs/{response.json()['jobs'][0]['job_id']}", headers=AUTH).json()
    assert job["result"] == f"thumbnail of objects/{obj['name']}"


def test_unmatched_events_are_refused_or_acknowledged_as_configured(
    app: EventApp, client: httpx.Client, store_url: str
) -> None:
    s3 = (FIXTURES / "s3-object-created-put.json").read_bytes()
    refused = client.post("/jobs/events", content=s3, headers={
        **AUTH, "Content-Type": "application/json"})
    assert refused.status_code == 422 and "aws.s3.ObjectCreated:Put" in refused.json()["detail"]
    assert client.get("/jobs", headers=AUTH).json()["jobs"] == []
    acking = EventApp(store_url, environ={"ONCELY_EVENTS_UNMATCHED": "ack"})
    with ThreadServer(acking.asgi) as server:
        ack = httpx.post(f"{server.url}/jobs/events", content=s3, headers={
            **AUTH, "Content-Type": "application/json"})
    acking.jobs.close()
    assert ack.status_code == 200 and ack.json()["unmatched"] == ["aws.s3.ObjectCreated:Put"]


def test_an_sns_subscription_confirmation_is_confirmed_by_visiting_its_url(
    client: httpx.Client,
) -> None:
    """SNS authenticates with Basic auth (the token as password in the endpoint URL). This
    machine cannot reach AWS, so the visit fails, and the answer is a 502 for SNS to retry;
    nothing is enqueued."""
    body = (FIXTURES / "sns-subscription-confirmation.json").read_bytes()
    basic = base64.b64encode(f"sns:{TOKEN}".encode()).decode()
    response = client.post("/jobs/events", content=body, headers={
        "Authorization": f"Basic {basic}", "Content-Type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": "SubscriptionConfirmation"})
    assert response.status_code == 502, response.text
    detail = response.json()["detail"]
    assert "could not confirm the SNS subscription at https://sns." in detail
    assert client.get("/jobs", headers=AUTH).json()["jobs"] == []
    test_event = (FIXTURES / "s3-test-event.json").read_bytes()
    ack = client.post("/jobs/events", content=test_event, headers={
        **AUTH, "Content-Type": "application/json"})
    assert ack.status_code == 200 and ack.json()["control"] == "s3-test-event"


def test_bad_deliveries_get_problem_json(client: httpx.Client) -> None:
    cases = [
        (b"{not json", {"Content-Type": "application/cloudevents+json"}, 400, "JSON"),
        (b'{"message": {"data": "%%%", "messageId": "1"}, "subscription": "s"}',
         {"Content-Type": "application/json"}, 400, "base64"),
        (b'{"specversion": "1.0", "id": "1", "type": "t"}',
         {"Content-Type": "application/cloudevents+json"}, 400, "source"),
        (b"<xml/>", {"Content-Type": "application/xml"}, 415, "accept"),
    ]
    for body, headers, status, word in cases:
        response = client.post("/jobs/events", content=body, headers={**AUTH, **headers})
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert word.lower() in response.json()["detail"].lower()
    assert client.post("/jobs/events", content=b"{}").status_code == 401


def test_webhooks_need_their_signature_or_the_trigger_auth(
    app: EventApp, client: httpx.Client
) -> None:
    body = json.dumps({"release": "v1.2.3"}).encode()
    signature = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": signature, "X-GitHub-Delivery": "d-1",
               "X-GitHub-Event": "deployment", "Content-Type": "application/json"}
    first = client.post("/jobs/hooks/warm-cache", content=body, headers=headers)
    assert first.status_code == 201 and app.payloads == [{"release": "v1.2.3"}]
    again = client.post("/jobs/hooks/warm-cache", content=body, headers=headers)
    assert again.status_code == 200 and len(app.payloads) == 1  # a redelivery runs nothing
    forged = client.post("/jobs/hooks/warm-cache", content=body + b" ", headers=headers)
    assert forged.status_code == 401 and "does not match" in forged.json()["detail"]
    assert client.post("/jobs/hooks/plain", content=body).status_code == 401
    assert client.post("/jobs/hooks/plain", content=b"hello", headers=AUTH).status_code == 201
    assert app.payloads[-1] == "hello"
    assert "warm-cache" in client.post("/jobs/hooks/nope", headers=AUTH).json()["detail"]


def test_health_turns_503_when_lag_grows_a_schedule_misses_or_a_job_dies(store_url: str) -> None:
    from datetime import UTC, datetime

    clock = FakeClock(datetime(2026, 11, 29, 12, 0, 30, tzinfo=UTC))
    a = EventApp(store_url, environ={"ONCELY_HEALTH_MAX_LAG_SECONDS": "60"}, clock=clock,
                 schedule_grace=timedelta(minutes=2))

    @a.jobs.periodic("*/5 * * * *")
    def cleanup() -> None: ...

    with ThreadServer(a.asgi) as server, httpx.Client(base_url=server.url) as c:
        a.jobs.tick()
        a.jobs.process(budget=5)
        assert c.get("/jobs/health").status_code == 200

        # lag: a job due for two minutes that nobody processed
        a.jobs.enqueue("plain", {"event": Event("1", "s", "t").to_dict()})
        clock.advance(120)
        lagging = c.get("/jobs/health")
        assert lagging.status_code == 503 and lagging.json()["queue_lag_seconds"] == 120
        assert "queue lag" in lagging.json()["reasons"][0]
        a.jobs.process(budget=5)
        a.jobs.tick()
        assert c.get("/jobs/health").status_code == 200

        # a missed schedule: no tick for 12:05 (and its grace) -> 503
        clock.advance(5 * 60)  # 12:07:30
        missed = c.get("/jobs/health").json()
        assert missed["missed"] == {"cleanup": ["2026-11-29T12:05:00+00:00"]}
        assert "missed 1 occurrence" in missed["reasons"][0]
        a.jobs.tick()
        a.jobs.process(budget=5)
        assert c.get("/jobs/health").status_code == 200

        # a dead job
        job = a.jobs.enqueue("explode")
        for _ in range(5):
            a.jobs.process(budget=5)
            clock.advance(1)
            clock.now = max(clock.now, a.jobs.get(job.id).run_at)
        assert a.jobs.get(job.id).state.value == "dead"
        a.jobs.tick()
        dead = c.get("/jobs/health")
        assert dead.status_code == 503 and dead.json()["dead_last_hour"] == 1
        assert "died in the last hour" in " ".join(dead.json()["reasons"])
        clock.advance(3601)
        a.jobs.tick()
        assert c.get("/jobs/health").json()["dead_last_hour"] == 0
    a.jobs.close()


# -- many deliveries, many replicas -------------------------------------------------------


def deliveries() -> dict[str, tuple[dict[str, str], bytes]]:
    headers, binary = to_binary(cloud_event(100))
    s_headers, structured = to_structured(cloud_event(101))
    batch = json.dumps([json.loads(to_structured(cloud_event(i))[1]) for i in (102, 103)])
    envelope = json.loads((FIXTURES / "pubsub-push.json").read_text())
    sns = json.loads((FIXTURES / "sns-notification.json").read_text())
    s3 = json.loads((FIXTURES / "s3-object-created-put.json").read_text())
    s3["Records"][0]["s3"]["object"]["sequencer"] = "0055AED6DCD90281E6"  # another PUT
    sns["Message"] = json.dumps(s3)
    return {
        "binary": (dict(headers), binary),
        "structured": (dict(s_headers), structured),
        "batched": ({"Content-Type": "application/cloudevents-batch+json"}, batch.encode()),
        "pubsub": ({"Content-Type": "application/json"}, json.dumps(envelope).encode()),
        "s3": ({"Content-Type": "application/json"},
               (FIXTURES / "s3-object-created-put.json").read_bytes()),
        "sns-s3": ({"Content-Type": "text/plain; charset=UTF-8",
                    "x-amz-sns-message-type": "Notification"}, json.dumps(sns).encode()),
        "hook": ({"X-GitHub-Delivery": "gh-1", "Content-Type": "application/json"}, b"{}"),
    }


def test_each_delivery_format_sent_five_times_to_three_replicas_makes_one_job_each(
    store_url: str, ledger: str, tmp_path: Path  # noqa: F811
) -> None:
    replicas = start(store_url, ledger, 3, tmp_path)
    sent = deliveries()
    try:
        def deliver(item: tuple[int, str]) -> list[dict[str, Any]]:
            i, name = item
            headers, body = sent[name]
            path = "/jobs/hooks/deploy" if name == "hook" else "/jobs/events"
            r = httpx.post(f"{replicas[i % 3].url}{path}", content=body,
                           headers={**REPLICA_AUTH, **headers}, timeout=60)
            assert r.status_code in (200, 201), r.text
            jobs = list(r.json()["jobs"])
            assert r.status_code == (201 if any(j["created"] for j in jobs) else 200)
            return jobs

        work = [(i, name) for name in sent for i in range(5)]
        with ThreadPoolExecutor(len(work)) as pool:
            answers = [job for jobs in pool.map(deliver, work) for job in jobs]
    finally:
        for r in replicas:
            r.stop()
    # Each event was created by exactly one of its five deliveries (the two events of the
    # batch may be created by two different deliveries racing each other).
    created = Counter(a["key"] for a in answers if a["created"])
    assert len(created) == 8 and set(created.values()) == {1}
    assert len({a["job_id"] for a in answers}) == 8
    app = Oncely(store_url, environ={})
    jobs = app.list(limit=100)
    app.close()
    keys = Counter(j.key for j in jobs)
    assert len(jobs) == 8 and set(keys.values()) == {1}  # 7 deliveries, the batch holds two
    ran = Counter(job_id for job_id, _, phase, _ in ledger_rows(ledger)
                  if phase in ("event", "hook"))
    assert sorted(ran) == sorted(j.id for j in jobs) and set(ran.values()) == {1}
