"""Event deliveries parse to Events (or Controls), and bad ones to actionable EventErrors.

CloudEvents are produced with the official ``cloudevents`` SDK; provider deliveries are the
JSON examples from the providers' own documentation, stored under ``fixtures/events``:

- ``s3-object-created-put.json``: Amazon S3 User Guide, "Event message structure"
  (docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html),
  "Example message when an object is created using a PUT request".
- ``s3-test-event.json``: the same page, "Amazon S3 test message".
- ``sns-notification.json``, ``sns-subscription-confirmation.json``,
  ``sns-unsubscribe-confirmation.json``: Amazon SNS Developer Guide, "Amazon SNS message and
  JSON formats" (docs.aws.amazon.com/sns/latest/dg/sns-message-and-json-formats.html), the
  HTTP/HTTPS Notification, Subscription Confirmation and Unsubscribe Confirmation examples.
- ``pubsub-push.json``: Google Cloud Pub/Sub, "Push subscriptions" / receive messages
  (cloud.google.com/pubsub/docs/push), the example body of a push request.
- ``gcs-object.json``: the Cloud Storage object resource that a ``JSON_API_V1``
  notification carries as its payload ("Pub/Sub notifications for Cloud Storage",
  cloud.google.com/storage/docs/pubsub-notifications); this sample is Google's own, from
  googleapis/google-cloudevents,
  ``json/google/events/cloud/storage/v1/StorageObjectData-simple.json``.
  The attributes put beside it (``GCS_ATTRIBUTES``) are the ones that page lists.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from oncely.errors import ConfigError
from oncely.events import (
    MAX_KEY,
    Control,
    Event,
    EventError,
    parse_delivery,
    parse_hook,
    verify_github_signature,
)

try:  # cloudevents 2.x keeps the 1.x API (cloudevents.http) under cloudevents.v1
    from cloudevents.v1.conversion import to_binary, to_structured
    from cloudevents.v1.http import CloudEvent
except ImportError:  # cloudevents 1.x
    from cloudevents.conversion import to_binary, to_structured  # type: ignore[import-not-found,no-redef,unused-ignore]
    from cloudevents.http import CloudEvent  # type: ignore[import-not-found,no-redef,unused-ignore]

FIXTURES = Path(__file__).parent / "fixtures" / "events"
JSON = {"content-type": "application/json"}
SNS_HEADERS = {
    "Content-Type": "text/plain; charset=UTF-8",
    "x-amz-sns-message-type": "Notification",
}


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def body_of(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def events(headers: dict[str, str], body: bytes) -> list[Event]:
    result = parse_delivery(headers, body)
    assert isinstance(result, list), result
    return result


def refused(headers: dict[str, str], body: bytes) -> EventError:
    with pytest.raises(EventError) as caught:
        parse_delivery(headers, body)
    return caught.value


Sdk = Callable[[dict[str, Any], Any, str], tuple[dict[str, str], bytes]]


# The SDK's two HTTP APIs: the 1.x one (cloudevents.http, or cloudevents.v1 in 2.x) and, in
# 2.x, cloudevents.core. Each test that uses the SDK runs with every API that is installed.
def _v1(attributes: dict[str, Any], data: Any, mode: str) -> tuple[dict[str, str], bytes]:
    event = CloudEvent(dict(attributes), data)  # copies: the SDKs fill in the dict they get
    headers, body = (to_binary if mode == "binary" else to_structured)(event)
    return dict(headers), body


def _core(attributes: dict[str, Any], data: Any, mode: str) -> tuple[dict[str, str], bytes]:
    from cloudevents.core.bindings import http
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent as CoreCloudEvent

    attributes = dict(attributes)
    if isinstance(attributes.get("time"), str):  # this API takes a datetime
        attributes["time"] = datetime.fromisoformat(attributes["time"])
    event = CoreCloudEvent(attributes=attributes, data=data)
    message = (http.to_binary if mode == "binary" else http.to_structured)(event, JSONFormat())
    return dict(message.headers), message.body


SDKS = [pytest.param(_v1, id="sdk-http-api")]
try:
    import cloudevents.core.bindings.http  # noqa: F401

    SDKS.append(pytest.param(_core, id="sdk-core-api"))
except ImportError:
    pass

ORDER = {
    "id": "A234-1234-1234",
    "source": "https://example.com/orders",
    "type": "com.example.order.created",
    "subject": "orders/42 café",
    "datacontenttype": "application/json",
    "tenant": "acme",
}


# CloudEvents ------------------------------------------------------------------------------


@pytest.mark.parametrize("sdk", SDKS)
@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_an_sdk_event_parses_to_the_same_attributes_and_data_in_either_mode(
    sdk: Sdk, mode: str
) -> None:
    headers, body = sdk(ORDER, {"order": 42, "items": ["a", "b"]}, mode)
    [event] = events(headers, body)
    assert (event.id, event.source, event.type) == (ORDER["id"], ORDER["source"], ORDER["type"])
    assert event.specversion == "1.0"
    assert event.subject == "orders/42 café"
    assert event.datacontenttype == "application/json"
    assert event.data == {"order": 42, "items": ["a", "b"]}
    assert event.extensions == {"tenant": "acme"}
    assert event.time  # the SDK stamps one
    assert event.key == "event:https://example.com/orders#A234-1234-1234"


@pytest.mark.parametrize("sdk", SDKS)
def test_binary_and_structured_mode_give_the_same_event_and_key(sdk: Sdk) -> None:
    attributes = {**ORDER, "time": "2026-11-29T12:00:00Z"}
    [binary] = events(*sdk(attributes, {"n": 1}, "binary"))
    [structured] = events(*sdk(attributes, {"n": 1}, "structured"))
    assert binary.key == structured.key
    assert (binary.data, binary.subject) == (structured.data, structured.subject)


@pytest.mark.parametrize("sdk", SDKS)
def test_bytes_data_is_base64_text_whether_sent_raw_or_as_data_base64(sdk: Sdk) -> None:
    attributes = {**ORDER, "datacontenttype": "application/octet-stream"}
    [binary] = events(*sdk(attributes, b"\x00\x01\xfe", "binary"))
    [structured] = events(*sdk(attributes, b"\x00\x01\xfe", "structured"))
    assert binary.data == structured.data == base64.b64encode(b"\x00\x01\xfe").decode()


def test_text_data_in_binary_mode_is_the_body_as_text() -> None:
    headers = {"ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-specversion": "1.0",
               "Content-Type": "text/plain; charset=utf-8"}
    [event] = events(headers, "héllo".encode())
    assert event.data == "héllo"
    assert event.datacontenttype == "text/plain; charset=utf-8"


@pytest.mark.parametrize("sdk", SDKS)
def test_a_batch_of_structured_sdk_events_gives_one_event_each_in_order(sdk: Sdk) -> None:
    batch = [
        json.loads(sdk({**ORDER, "id": f"order-{n}"}, {"n": n}, "structured")[1])
        for n in range(3)
    ]
    headers = {"Content-Type": "application/cloudevents-batch+json; charset=UTF-8"}
    parsed = events(headers, body_of(batch))
    assert [e.id for e in parsed] == ["order-0", "order-1", "order-2"]
    assert [e.data for e in parsed] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_an_empty_batch_is_no_events() -> None:
    assert events({"content-type": "application/cloudevents-batch+json"}, b"[]") == []


def test_binary_mode_header_values_are_unquoted_and_percent_decoded() -> None:
    headers = {"CE-ID": "1", "Ce-Source": '"/my \\"quoted\\" source"', "ce-type": "t",
               "ce-specversion": "1.0", "ce-subject": "Euro%20%E2%82%AC%20%F0%9F%98%80"}
    [event] = events(headers, b"")
    assert event.source == '/my "quoted" source'
    assert event.subject == "Euro € 😀"  # the HTTP binding spec's own example
    assert event.data is None


def test_binary_mode_extension_headers_become_extensions() -> None:
    headers = {"ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-specversion": "1.0",
               "ce-traceparent": "00-abc-def-01", "ce-dataschema": "https://example.com/s",
               "x-other": "ignored"}
    [event] = events(headers, b"{}")
    assert event.extensions == {"traceparent": "00-abc-def-01",
                                "dataschema": "https://example.com/s"}


def test_binary_mode_without_the_required_headers_names_each_missing_one() -> None:
    error = refused({"ce-id": "1", "content-type": "application/json"}, b"{}")
    assert error.status == 400
    assert "ce-source, ce-type, ce-specversion" in error.detail


def test_a_structured_event_missing_attributes_names_them_and_its_place_in_the_batch() -> None:
    batch = [{"specversion": "1.0", "id": "1", "source": "/s", "type": "t"},
             {"specversion": "1.0", "id": "2"}]
    error = refused({"content-type": "application/cloudevents-batch+json"}, body_of(batch))
    assert error.status == 400
    assert "event 1 of the batch" in error.detail
    assert "source, type" in error.detail


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_specversion_other_than_1_0_is_refused(mode: str) -> None:
    attributes = {"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}
    if mode == "binary":
        error = refused({f"ce-{k}": v for k, v in attributes.items()}, b"")
    else:
        error = refused({"content-type": "application/cloudevents+json"}, body_of(attributes))
    assert error.status == 400
    assert "specversion '0.3'" in error.detail and "1.0" in error.detail


def test_an_attribute_of_the_wrong_type_is_refused_by_name() -> None:
    event = {"specversion": "1.0", "id": 7, "source": "/s", "type": "t"}
    error = refused({"content-type": "application/cloudevents+json"}, body_of(event))
    assert error.status == 400
    assert "attribute id must be a string" in error.detail


def test_percent_encoding_that_is_not_utf8_is_refused() -> None:
    headers = {"ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-specversion": "1.0",
               "ce-subject": "%C0%A0"}  # the spec's overlong-encoding example
    error = refused(headers, b"")
    assert error.status == 400
    assert "ce-subject" in error.detail and "UTF-8" in error.detail


def test_an_event_with_both_data_and_data_base64_is_refused() -> None:
    event = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
             "data": {}, "data_base64": "AAE="}
    error = refused({"content-type": "application/cloudevents+json"}, body_of(event))
    assert error.status == 400
    assert "data_base64" in error.detail


def test_bad_data_base64_is_a_400_that_says_base64() -> None:
    event = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
             "data_base64": "not base64!"}
    error = refused({"content-type": "application/cloudevents+json"}, body_of(event))
    assert error.status == 400
    assert "data_base64 is not valid base64" in error.detail


@pytest.mark.parametrize("content_type", ["application/cloudevents+avro",
                                          "application/cloudevents-batch+protobuf"])
def test_other_cloudevents_formats_are_unsupported_media_types(content_type: str) -> None:
    error = refused({"content-type": content_type}, b"\x00")
    assert error.status == 415
    assert content_type in error.detail


def test_a_structured_event_posted_as_plain_json_is_still_an_event() -> None:
    event = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": [1]}
    [parsed] = events(JSON, body_of(event))
    assert parsed.data == [1]


# Amazon S3 and SNS ------------------------------------------------------------------------


def test_the_documented_s3_put_notification_becomes_an_event_per_record() -> None:
    doc = fixture("s3-object-created-put.json")
    [event] = events(JSON, body_of(doc))
    assert event.id == "mybucket/HappyFace.jpg@0055AED6DCD90281E5"
    assert event.source == "arn:aws:s3:::mybucket"
    assert event.type == "aws.s3.ObjectCreated:Put"
    assert event.subject == "HappyFace.jpg"
    assert event.time == "1970-01-01T00:00:00.000Z"
    assert event.data == doc["Records"][0]


def test_several_s3_records_give_several_events_with_distinct_keys() -> None:
    doc = fixture("s3-object-created-put.json")
    second = copy.deepcopy(doc["Records"][0])
    second["s3"]["object"].update(key="red+flower.jpg", sequencer="0055AED6DCD90281E6")
    doc["Records"].append(second)
    parsed = events(JSON, body_of(doc))
    assert [e.subject for e in parsed] == ["HappyFace.jpg", "red flower.jpg"]  # URL-decoded
    assert len({e.key for e in parsed}) == 2


def test_an_s3_record_without_a_sequencer_is_identified_by_event_time_and_request() -> None:
    doc = fixture("s3-object-created-put.json")
    record = doc["Records"][0]
    del record["s3"]["object"]["sequencer"]
    record["eventName"] = "ObjectRestore:Completed"
    [event] = events(JSON, body_of(doc))
    assert event.id == ("mybucket/HappyFace.jpg@ObjectRestore:Completed@"
                        "1970-01-01T00:00:00.000Z@C3D13FE58DE4C810")


def test_the_s3_test_event_is_a_control_not_a_job() -> None:
    result = parse_delivery(JSON, body_of(fixture("s3-test-event.json")))
    assert isinstance(result, Control)
    assert result.kind == "s3-test-event"
    assert result.subscribe_url is None
    assert "bucketname" in result.message


def test_a_record_from_another_aws_service_is_refused() -> None:
    doc = fixture("s3-object-created-put.json")
    doc["Records"][0]["eventSource"] = "aws:sqs"
    error = refused(JSON, body_of(doc))
    assert error.status == 422
    assert "Records[0]" in error.detail and "aws:sqs" in error.detail


def test_an_s3_record_without_a_bucket_name_says_which_field_is_missing() -> None:
    doc = fixture("s3-object-created-put.json")
    del doc["Records"][0]["s3"]["bucket"]["name"]
    error = refused(JSON, body_of(doc))
    assert error.status == 400
    assert "Records[0] lacks s3.bucket.name" in error.detail


def test_the_documented_sns_subscription_confirmation_is_a_control_with_its_url() -> None:
    doc = fixture("sns-subscription-confirmation.json")
    headers = {**SNS_HEADERS, "x-amz-sns-message-type": "SubscriptionConfirmation"}
    result = parse_delivery(headers, body_of(doc))
    assert result == Control(kind="sns-subscription-confirmation",
                             subscribe_url=doc["SubscribeURL"], message=doc["Message"])


def test_the_documented_sns_unsubscribe_confirmation_is_a_control_too() -> None:
    doc = fixture("sns-unsubscribe-confirmation.json")
    result = parse_delivery(SNS_HEADERS, body_of(doc))
    assert isinstance(result, Control)
    assert result.kind == "sns-unsubscribe-confirmation"
    assert result.subscribe_url == doc["SubscribeURL"]


@pytest.mark.parametrize("url", ["http://sns.us-west-2.amazonaws.com/?Action=Confirm",
                                 "https://169.254.169.254/latest/meta-data/",
                                 "https://sns.us-west-2.amazonaws.com.evil.example/",
                                 "https://sns.us-west-2.amazonaws.com@evil.example/",
                                 "https://[::1"])
def test_a_subscription_confirmation_whose_url_is_not_sns_is_refused(url: str) -> None:
    doc = fixture("sns-subscription-confirmation.json") | {"SubscribeURL": url}
    error = refused(SNS_HEADERS, body_of(doc))
    assert error.status == 400
    assert "SubscribeURL" in error.detail


def test_an_s3_notification_through_sns_gives_the_same_events_as_a_direct_one() -> None:
    s3 = fixture("s3-object-created-put.json")
    # The documented SNS notification, carrying the documented S3 notification as Message.
    doc = fixture("sns-notification.json") | {"Message": json.dumps(s3)}
    assert events(SNS_HEADERS, body_of(doc)) == events(JSON, body_of(s3))


def test_an_s3_test_event_through_sns_is_a_control() -> None:
    doc = fixture("sns-notification.json") | {"Message": json.dumps(fixture("s3-test-event.json"))}
    result = parse_delivery(SNS_HEADERS, body_of(doc))
    assert isinstance(result, Control) and result.kind == "s3-test-event"


def test_another_sns_notification_is_one_event_of_its_topic() -> None:
    doc = fixture("sns-notification.json")
    [event] = events(SNS_HEADERS, body_of(doc))
    assert event.id == "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324"
    assert event.source == "arn:aws:sns:us-west-2:123456789012:MyTopic"
    assert event.type == "aws.sns.Notification"
    assert (event.subject, event.data) == ("My First Message", "Hello world!")


def test_an_sns_notification_without_a_message_id_is_refused_by_name() -> None:
    doc = fixture("sns-notification.json")
    del doc["MessageId"]
    error = refused(SNS_HEADERS, body_of(doc))
    assert error.status == 400
    assert "lacks MessageId" in error.detail


# Google Pub/Sub and Cloud Storage ---------------------------------------------------------

GCS_ATTRIBUTES = {
    "notificationConfig": "projects/_/buckets/some-bucket/notificationConfigs/1",
    "eventType": "OBJECT_FINALIZE",
    "payloadFormat": "JSON_API_V1",
    "bucketId": "some-bucket",
    "objectId": "folder/Test.cs",
    "objectGeneration": "1587627537231057",
    "eventTime": "2020-04-23T07:38:57.230Z",
}


def gcs_push(event_type: str) -> dict[str, Any]:
    """The documented push body, carrying a Cloud Storage notification as its message."""
    doc: dict[str, Any] = fixture("pubsub-push.json")
    payload = (FIXTURES / "gcs-object.json").read_bytes()
    doc["message"].update(messageId="2070443601311541", message_id="2070443601311541")
    doc["message"].update(attributes=GCS_ATTRIBUTES | {"eventType": event_type},
                          data=base64.b64encode(payload).decode())
    return doc


def test_the_documented_pubsub_push_message_is_a_message_published_event() -> None:
    [event] = events(JSON, body_of(fixture("pubsub-push.json")))
    assert event.id == "2070443601311540"
    assert event.source == "//pubsub.googleapis.com/projects/myproject/subscriptions/mysubscription"
    assert event.type == "google.cloud.pubsub.topic.v1.messagePublished"
    assert event.time == "2021-02-26T19:13:55.749Z"
    assert event.data == "Hello Cloud Pub/Sub! Here is my message!"
    assert event.datacontenttype == "text/plain; charset=utf-8"
    assert event.extensions == {"key": "value"}
    assert event.subject is None


@pytest.mark.parametrize(("event_type", "expected"), [
    ("OBJECT_FINALIZE", "google.cloud.storage.object.v1.finalized"),
    ("OBJECT_DELETE", "google.cloud.storage.object.v1.deleted"),
    ("OBJECT_ARCHIVE", "google.cloud.storage.object.v1.archived"),
    ("OBJECT_METADATA_UPDATE", "google.cloud.storage.object.v1.metadataUpdated"),
])
def test_a_cloud_storage_notification_is_typed_by_its_event_and_carries_the_object(
    event_type: str, expected: str
) -> None:
    [event] = events(JSON, body_of(gcs_push(event_type)))
    assert event.type == expected
    assert event.subject == "objects/folder/Test.cs"
    assert event.data == fixture("gcs-object.json")
    assert event.datacontenttype == "application/json"
    assert event.extensions["bucketId"] == "some-bucket"


def test_pubsub_data_that_is_not_utf8_is_kept_as_base64() -> None:
    doc = fixture("pubsub-push.json")
    doc["message"]["data"] = base64.b64encode(b"\xff\x00").decode()
    [event] = events(JSON, body_of(doc))
    assert event.data == "/wA="
    assert event.datacontenttype == "application/octet-stream"


def test_bad_base64_in_pubsub_data_is_a_400_that_says_so() -> None:
    doc = fixture("pubsub-push.json")
    doc["message"]["data"] = "SGVsbG8@@@"
    error = refused(JSON, body_of(doc))
    assert error.status == 400
    assert "Pub/Sub message.data is not valid base64" in error.detail


def test_a_pubsub_envelope_without_a_message_id_is_refused_by_name() -> None:
    doc = fixture("pubsub-push.json")
    del doc["message"]["messageId"], doc["message"]["message_id"]
    error = refused(JSON, body_of(doc))
    assert error.status == 400
    assert "message.messageId" in error.detail


# Anything else ----------------------------------------------------------------------------


def test_malformed_json_is_a_400_that_says_json() -> None:
    error = refused(JSON, b'{"Records": [')
    assert error.status == 400
    assert "not valid JSON" in error.detail


def test_an_unknown_json_shape_is_422_and_lists_the_accepted_formats() -> None:
    error = refused(JSON, b'{"hello": "world"}')
    assert error.status == 422
    assert "hello" in error.detail and "CloudEvents" in error.detail and "S3" in error.detail


def test_an_unsupported_content_type_is_415_and_lists_the_accepted_formats() -> None:
    error = refused({"content-type": "application/xml"}, b"<event/>")
    assert error.status == 415
    assert "application/xml" in error.detail and "Pub/Sub" in error.detail


def test_an_empty_body_is_a_400() -> None:
    assert refused({}, b"").status == 400


@pytest.mark.parametrize("body", [
    b"[1, 2]", b'"text"', b"NaN", b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000,
    b'{"Records": 5}', b'{"Records": [5]}', b'{"Records": []}',
    b'{"Records": [{"eventSource": "aws:s3", "eventName": "x", "s3": {"object": []}}]}',
    b'{"message": 5, "subscription": "s"}',
    b'{"message": {"messageId": "1"}, "subscription": 5}',
    b'{"message": {"messageId": ["1"]}, "subscription": "s"}',
    b'{"message": {"messageId": "1", "attributes": [1]}, "subscription": "s"}',
    b'{"message": {"messageId": "1", "attributes": {"a": 1}}, "subscription": "s"}',
    b'{"message": {"messageId": "1", "data": 5}, "subscription": "s"}',
    b'{"message": {"messageId": "1", "data": "\\u00e9"}, "subscription": "s"}',
    b'{"Type": "Notification", "TopicArn": 5}',
    b'{"Type": "Whatever", "TopicArn": "t"}',
    b'{"Type": "SubscriptionConfirmation", "TopicArn": "t", "SubscribeURL": 5}',
    b'{"specversion": "1.0"}',
    b'{"specversion": 1.0, "id": "1", "source": "/s", "type": "t"}',
    b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "ext": {"a": 1}}',
    b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data_base64": 1}',
])
def test_malformed_deliveries_raise_event_errors_and_nothing_else(body: bytes) -> None:
    # Each of these once risked a bare KeyError/TypeError/AttributeError/RecursionError.
    error = refused(JSON, body)
    assert error.status in (400, 422)
    assert error.detail and str(error) == error.detail


def test_a_non_object_in_a_batch_is_refused_by_position() -> None:
    error = refused({"content-type": "application/cloudevents-batch+json"}, b'[{"a": 1}, 5]')
    assert error.status == 400 and "event 0 of the batch" in error.detail
    error = refused({"content-type": "application/cloudevents-batch+json"}, b'{"a": 1}')
    assert error.status == 400 and "JSON array" in error.detail


def test_binary_mode_data_declared_json_but_not_json_is_refused() -> None:
    headers = {"ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-specversion": "1.0",
               "content-type": "application/json"}
    error = refused(headers, b"{nope")
    assert error.status == 400 and "binary mode's event data" in error.detail


# Keys -------------------------------------------------------------------------------------

DELIVERIES = [
    (JSON, body_of(fixture("s3-object-created-put.json"))),
    (JSON, body_of(fixture("pubsub-push.json"))),
    (JSON, body_of(gcs_push("OBJECT_FINALIZE"))),
    (SNS_HEADERS, body_of(fixture("sns-notification.json"))),
    ({"ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-specversion": "1.0"}, b"{}"),
]


@pytest.mark.parametrize(("headers", "body"), DELIVERIES)
def test_the_same_delivery_parsed_twice_gives_the_same_keys(
    headers: dict[str, str], body: bytes
) -> None:
    first, again = events(headers, body), events(headers, body)
    assert [e.key for e in first] == [e.key for e in again]
    assert first == again


def test_different_events_get_different_keys() -> None:
    keys = [e.key for headers, body in DELIVERIES for e in events(headers, body)]
    assert len(keys) == len(set(keys)) == len(DELIVERIES)


def test_keys_do_not_collide_when_the_source_or_id_contains_the_separator() -> None:
    a = Event(id="c", source="a#b", type="t")
    b = Event(id="b#c", source="a", type="t")
    assert a.key != b.key


def test_long_keys_are_hashed_to_a_bounded_stable_length() -> None:
    event = Event(id="x" * 1000, source="/s", type="t")
    assert len(event.key) <= MAX_KEY
    assert event.key.startswith("event:sha256:")
    assert event.key == Event(id="x" * 1000, source="/s", type="other").key
    assert event.key != Event(id="x" * 999, source="/s", type="t").key


@pytest.mark.parametrize(("headers", "body"), DELIVERIES)
def test_every_event_turns_into_a_json_serialisable_job_argument(
    headers: dict[str, str], body: bytes
) -> None:
    for event in events(headers, body):
        argument = json.loads(json.dumps(event.to_dict()))
        assert argument["key"] == event.key
        assert argument["data"] == event.data


# Generic webhooks -------------------------------------------------------------------------

# From GitHub's "Validating webhook deliveries" (docs.github.com/en/webhooks/using-webhooks/
# validating-webhook-deliveries), the values it gives to test an implementation with.
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_github_documented_test_signature_verifies() -> None:
    verify_github_signature(GITHUB_SECRET, {"X-Hub-Signature-256": GITHUB_SIGNATURE}, GITHUB_BODY)
    verify_github_signature(GITHUB_SECRET.encode(), {"x-hub-signature-256": GITHUB_SIGNATURE},
                            GITHUB_BODY)


def test_a_signature_over_another_body_or_secret_is_401_and_says_what_to_check() -> None:
    for secret, body in [(GITHUB_SECRET, b"Hello, World?"), ("another secret", GITHUB_BODY)]:
        with pytest.raises(EventError) as caught:
            verify_github_signature(secret, {"X-Hub-Signature-256": GITHUB_SIGNATURE}, body)
        assert caught.value.status == 401
        assert "does not match" in caught.value.detail and "secret" in caught.value.detail


@pytest.mark.parametrize(("headers", "phrase"), [
    ({}, "missing"),
    ({"X-Hub-Signature-256": ""}, "missing"),
    ({"X-Hub-Signature-256": "sha1=757107ea"}, "sha256=<64 hex digits>"),
    ({"X-Hub-Signature-256": "757107ea0eb2509f"}, "sha256=<64 hex digits>"),
    ({"X-Hub-Signature-256": "sha256=zz\u00e9"}, "does not match"),
])
def test_a_missing_or_malformed_signature_is_401(headers: dict[str, str], phrase: str) -> None:
    with pytest.raises(EventError) as caught:
        verify_github_signature(GITHUB_SECRET, headers, GITHUB_BODY)
    assert caught.value.status == 401
    assert phrase in caught.value.detail


def test_an_empty_secret_is_a_configuration_error_not_an_open_door() -> None:
    with pytest.raises(ConfigError):
        verify_github_signature("", {"X-Hub-Signature-256": GITHUB_SIGNATURE}, GITHUB_BODY)


def test_a_github_delivery_is_keyed_by_its_delivery_id_and_typed_by_its_event() -> None:
    body = b'{"ref": "refs/heads/main"}'
    headers = {"X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
               "X-GitHub-Event": "push", "Content-Type": "application/json"}
    event = parse_hook("deploy", headers, body)
    assert event.id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert event.source == "hook:deploy"
    assert event.type == "github.push"
    assert event.data == {"ref": "refs/heads/main"}
    assert event.key == "event:hook:deploy#72d3162e-cc78-11e3-81ab-4c9367dc0958"


def test_github_form_encoded_deliveries_are_decoded_from_their_payload_field() -> None:
    body = b"payload=%7B%22zen%22%3A+%22Keep+it+simple.%22%7D"
    headers = {"X-GitHub-Event": "ping", "Content-Type": "application/x-www-form-urlencoded"}
    assert parse_hook("gh", headers, body).data == {"zen": "Keep it simple."}


def test_a_hook_takes_its_id_from_idempotency_key_then_request_id_then_the_body_hash() -> None:
    body = b"plain text"
    assert parse_hook("h", {"Idempotency-Key": "k1", "X-Request-Id": "r1"}, body).id == "k1"
    assert parse_hook("h", {"X-Request-Id": "r1"}, body).id == "r1"
    event = parse_hook("h", {}, body)
    assert event.id == f"sha256:{hashlib.sha256(body).hexdigest()}"
    assert (event.type, event.data) == ("hook.h", "plain text")
    assert parse_hook("h", {}, body).key == event.key != parse_hook("h", {}, b"other").key


def test_a_hook_declared_json_that_is_not_json_is_refused() -> None:
    with pytest.raises(EventError) as caught:
        parse_hook("h", {"content-type": "application/json"}, b"{oops")
    assert caught.value.status == 400 and "webhook body is not valid JSON" in caught.value.detail


def test_a_signed_hook_round_trips_with_a_signature_made_here() -> None:
    body = b'{"action": "opened"}'
    signature = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": signature, "X-GitHub-Event": "issues",
               "X-GitHub-Delivery": "d-1", "Content-Type": "application/json"}
    verify_github_signature("s3cret", headers, body)
    assert parse_hook("issues", headers, body).data == {"action": "opened"}
