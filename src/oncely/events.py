"""Event deliveries -> ``Event`` values: parsing and verification only, no I/O.

``parse_delivery(headers, body)`` turns one HTTP request into a list of events (each becomes
one job, deduplicated on ``Event.key``, i.e. on (source, id)) or a ``Control``: a delivery
that must be answered but runs nothing. It tells deliveries apart in this order:

1. ``Content-Type: application/cloudevents-batch+json``: CloudEvents batched mode, a JSON
   array of structured events (it may be empty);
2. ``Content-Type: application/cloudevents+json``: CloudEvents structured mode (another
   ``application/cloudevents*`` format, e.g. ``+avro``, is answered 415);
3. any ``ce-id``, ``ce-source``, ``ce-type`` or ``ce-specversion`` header: CloudEvents binary
   mode. Header values are unquoted and percent-decoded as the HTTP protocol binding says,
   ``Content-Type`` is ``datacontenttype``, and other ``ce-*`` headers are extensions;
4. otherwise a JSON body (``Content-Type`` JSON, ``text/plain`` as SNS sends it, or none;
   other types get 415), told by its shape: (a) an SNS message (``Type``, ``TopicArn``): a
   Notification's ``Message`` is parsed as an S3 notification or S3 test event, else gives
   one ``aws.sns.Notification`` event; a Subscription/UnsubscribeConfirmation is a Control;
   (b) a Pub/Sub push envelope (``message``, ``subscription``), Cloud Storage's included;
   (c) an S3 notification (``Records``), one event per record (SNS raw delivery too); (d) the
   S3 test event, a Control; (e) a structured CloudEvent posted as plain JSON. Else 422.

Refusals are ``EventError``: 400 when a delivery cannot be read or lacks a required field,
401 for a bad webhook signature, 415 for a content type not accepted, 422 for readable JSON
that is no accepted delivery; ``detail`` names the field at fault.

S3 records carry no event id. ``x-amz-request-id`` names an API request, and one request can
notify several records (a multi-object delete); the ``sequencer`` is unique per event: S3
gives each PUT and DELETE of a key its own, and a redelivered notification carries the same.
So an S3 event's id is ``{bucket}/{key}@{sequencer}`` (the key URL-decoded, as in
``subject``); records without a sequencer (restore, replication, lifecycle, tagging, ACL) use
``{bucket}/{key}@{eventName}@{eventTime}@{x-amz-request-id}``, also the same on redelivery.

Verified here: shapes and required fields, base64, JSON, percent-encoded UTF-8, CloudEvents
``specversion`` 1.0; GitHub's ``X-Hub-Signature-256`` (``verify_github_signature``, when the
caller calls it); that an SNS ``SubscribeURL`` is https on an SNS host, so it cannot point at
an internal address. NOT verified: SNS signatures (``Signature``/``SigningCertURL`` need
AWS's certificate fetched, a separate concern: until then anyone can post SNS-shaped JSON,
and ``SubscribeURL`` must not be fetched on its word alone); Pub/Sub push authenticity (the
OIDC token in ``Authorization`` is the endpoint's auth); CloudEvents senders (no signature).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

from .errors import ConfigError, OncelyError

MAX_KEY = 400
CE_REQUIRED = ("id", "source", "type", "specversion")
CE_FIELDS = frozenset({*CE_REQUIRED, "time", "subject", "datacontenttype"})
GCS_TYPES = {
    "OBJECT_FINALIZE": "google.cloud.storage.object.v1.finalized",
    "OBJECT_DELETE": "google.cloud.storage.object.v1.deleted",
    "OBJECT_ARCHIVE": "google.cloud.storage.object.v1.archived",
    "OBJECT_METADATA_UPDATE": "google.cloud.storage.object.v1.metadataUpdated",
}
PUBSUB_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
SNS_CONTROLS = {
    "SubscriptionConfirmation": "sns-subscription-confirmation",
    "UnsubscribeConfirmation": "sns-unsubscribe-confirmation",
}
SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
ACCEPTED = (
    "accepted are CloudEvents 1.0 over HTTP (binary mode, or structured/batched JSON), "
    "Google Pub/Sub push envelopes (Cloud Storage notifications included), and Amazon S3 "
    "event notifications, sent directly or through SNS"
)


class EventError(OncelyError, ValueError):
    """A delivery that cannot become events; answer it with ``status`` and ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Event:
    """One event, its CloudEvents 1.0 attributes normalised across providers.

    ``data`` is the decoded JSON value when the data is JSON, else text, else (bytes that are
    not UTF-8, or a non-text media type) a base64 string. ``extensions`` holds the other
    CloudEvents attributes, or a Pub/Sub message's attributes, under their own names.
    """

    id: str
    source: str
    type: str
    specversion: str = "1.0"
    time: str | None = None
    subject: str | None = None
    datacontenttype: str | None = None
    data: Any = None
    extensions: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``event:{source}#{id}``: stable, and one key per (source, id).

        ``%`` and ``#`` in the source are percent-encoded so that the first ``#`` always
        ends it; a key over ``MAX_KEY`` characters becomes ``event:sha256:{digest}``.
        """
        src = self.source.replace("%", "%25").replace("#", "%23")
        key = f"event:{src}#{self.id}"
        if len(key) <= MAX_KEY:
            return key
        raw = f"{len(self.source)}:{self.source}{self.id}".encode("utf-8", "surrogatepass")
        return f"event:sha256:{hashlib.sha256(raw).hexdigest()}"

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Event:
        """The inverse of ``to_dict`` (``key`` is derived, so it is ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the job's argument): the fields, plus ``key``."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**fields, "extensions": dict(self.extensions), "key": self.key}


@dataclass(frozen=True)
class Control:
    """A delivery that is not an event but must be answered (e.g. confirm an SNS topic)."""

    kind: str
    subscribe_url: str | None
    message: str


def parse_delivery(headers: Mapping[str, str], body: bytes) -> list[Event] | Control:
    """Turn one delivery (request headers and raw body) into events or a Control."""
    h = _lower(headers)
    media = _media_type(h.get("content-type"))
    if media.startswith("application/cloudevents-batch"):
        if media != "application/cloudevents-batch+json":
            raise EventError(415, f"batch format {media} is not supported; send "
                             "application/cloudevents-batch+json (a JSON array of events).")
        items = _load_json(body, "the batch body")
        if not isinstance(items, list):
            raise EventError(400, "an application/cloudevents-batch+json body must be a JSON "
                             f"array of structured events, not {_kind(items)}.")
        return [_structured(item, f"event {i} of the batch") for i, item in enumerate(items)]
    if media.startswith("application/cloudevents"):
        if media != "application/cloudevents+json":
            raise EventError(415, f"event format {media} is not supported; send "
                             "application/cloudevents+json or use binary mode.")
        return [_structured(_load_json(body, "the structured-mode body"), "the event")]
    if any(f"ce-{name}" in h for name in CE_REQUIRED):
        return [_binary(h, body)]
    if media and not (_is_json(media) or media == "text/plain"):
        raise EventError(415, f"Content-Type {media} is not accepted; {ACCEPTED}.")
    if not body.strip():
        raise EventError(400, f"the request body is empty; {ACCEPTED}.")
    doc = _load_json(body, "the request body")
    if not isinstance(doc, dict):
        raise EventError(422, f"the body is {_kind(doc)}, not a JSON object; {ACCEPTED}.")
    if isinstance(doc.get("Type"), str) and "TopicArn" in doc:
        return _sns(doc)
    if "message" in doc and "subscription" in doc:
        return [_pubsub(doc)]
    if "Records" in doc:
        return _s3(doc)
    if doc.get("Event") == "s3:TestEvent":
        return _s3_test(doc)
    if "specversion" in doc:
        return [_structured(doc, "the event")]
    keys = ", ".join(sorted(map(str, doc))[:8]) or "none"
    raise EventError(422, f"the JSON body (top-level keys: {keys}) is no known delivery; "
                     f"{ACCEPTED}.")


def parse_hook(name: str, headers: Mapping[str, str], body: bytes) -> Event:
    """A generic webhook as an event of source ``hook:{name}``.

    Its id is the first of ``X-GitHub-Delivery``, ``Idempotency-Key``, ``X-Request-Id``, else
    ``sha256:{hex}`` of the body (so identical bodies without an id are one event). Its type
    is ``github.{X-GitHub-Event}``, else ``hook.{name}``. Verify signatures before this.
    """
    if not name.strip():
        raise EventError(400, "the hook name is empty; post to /jobs/hooks/<name>.")
    h = _lower(headers)
    ids = (h.get(n, "").strip() for n in ("x-github-delivery", "idempotency-key", "x-request-id"))
    event_id = next((i for i in ids if i), None) or f"sha256:{hashlib.sha256(body).hexdigest()}"
    github = h.get("x-github-event", "").strip()
    content_type = h.get("content-type")
    form: dict[str, list[str]] = {}
    if _media_type(content_type) == "application/x-www-form-urlencoded":
        form = parse_qs(body.decode("utf-8", "replace"))  # GitHub's form mode: payload=<json>
    media: str | None = "application/json"
    if "payload" in form:
        data = _load_json(form["payload"][0], "the form field payload")
    else:
        data, media = _decode_data(body, content_type, "the webhook body")
    return Event(id=event_id, source=f"hook:{name}",
                 type=f"github.{github}" if github else f"hook.{name}",
                 datacontenttype=media, data=data)


def verify_github_signature(secret: str | bytes, headers: Mapping[str, str], body: bytes) -> None:
    """Check ``X-Hub-Signature-256: sha256=<hex>``, GitHub's HMAC-SHA256 of the raw body."""
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ConfigError("the GitHub webhook secret is empty; set the secret configured on "
                          "the webhook, since an empty key would accept anyone's signature.")
    sent = _lower(headers).get("x-hub-signature-256", "").strip()
    if not sent:
        raise EventError(401, "the X-Hub-Signature-256 header is missing: give the GitHub "
                         "webhook a secret (Settings > Webhooks > Secret) so it signs deliveries.")
    scheme, _, digest = sent.partition("=")
    if scheme != "sha256" or not digest:
        raise EventError(401, f"X-Hub-Signature-256 is {sent[:80]!r}; it must be "
                         "sha256=<64 hex digits>, as GitHub sends it.")
    want = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(want, digest.strip().lower().encode("utf-8", "replace")):
        raise EventError(401, "X-Hub-Signature-256 does not match the body: check that the "
                         "secret here equals the webhook's secret, and that the signature is "
                         "checked over the raw request body, before any JSON parsing.")


# CloudEvents ------------------------------------------------------------------------------


def _binary(h: dict[str, str], body: bytes) -> Event:
    attrs: dict[str, Any] = {
        name[3:]: _header_value(name, value)
        for name, value in h.items()
        if name.startswith("ce-") and len(name) > 3
    }
    content_type = h.get("content-type") or attrs.get("datacontenttype")
    attrs["datacontenttype"] = content_type
    data, _ = _decode_data(body, content_type, "the request body (binary mode's event data)")
    return _cloudevent(attrs, data, "the binary-mode request", prefix="ce-")


def _header_value(name: str, value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':  # a quoted-string (RFC 7230 3.2.6)
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise EventError(400, f"header {name} is not valid percent-encoded UTF-8; encode "
                         "attribute values as the CloudEvents HTTP binding says.") from None


def _structured(obj: Any, where: str) -> Event:
    if not isinstance(obj, dict):
        raise EventError(400, f"{where} must be a JSON object, not {_kind(obj)}.")
    attrs = dict(obj)
    data = attrs.pop("data", None)
    encoded = attrs.pop("data_base64", None)
    if encoded is not None:
        if data is not None:
            raise EventError(400, f"{where} has both data and data_base64; send only one.")
        content_type = attrs.get("datacontenttype")
        declared = content_type if isinstance(content_type, str) else None
        raw = _b64(encoded, f"{where}: data_base64")
        data, _ = _decode_data(raw, declared or "application/octet-stream", f"{where}: data_base64")
    return _cloudevent(attrs, data, where)


def _cloudevent(attrs: dict[str, Any], data: Any, where: str, prefix: str = "") -> Event:
    missing = [f"{prefix}{n}" for n in CE_REQUIRED if attrs.get(n) in (None, "")]
    if missing:
        raise EventError(400, f"{where} lacks the required CloudEvents attribute(s) "
                         f"{', '.join(missing)}; every event needs id, source, type and "
                         "specversion.")
    values: dict[str, str] = {}
    for name, value in attrs.items():
        if value is None:
            continue  # the JSON format spells an absent attribute as null
        if isinstance(value, int) and name not in CE_FIELDS:  # canonical forms; bool is int
            value = str(value).lower()
        if not isinstance(value, str):
            allowed = "a string" if name in CE_FIELDS else "a string, integer or boolean"
            raise EventError(400, f"{where}: attribute {prefix}{name} must be {allowed}, "
                             f"not {_kind(value)}.")
        values[name] = value
    if values["specversion"] != "1.0":
        raise EventError(400, f"{where} has specversion {values['specversion']!r}; only "
                         "CloudEvents 1.0 is accepted, so send specversion 1.0.")
    return Event(
        id=values["id"], source=values["source"], type=values["type"],
        time=values.get("time"), subject=values.get("subject"),
        datacontenttype=values.get("datacontenttype"), data=data,
        extensions={k: v for k, v in values.items() if k not in CE_FIELDS},
    )


# Providers --------------------------------------------------------------------------------


def _pubsub(envelope: dict[str, Any]) -> Event:
    message, subscription = envelope["message"], envelope["subscription"]
    if not isinstance(message, dict) or not isinstance(subscription, str) or not subscription:
        raise EventError(400, "a Pub/Sub push envelope's message must be an object and its "
                         "subscription a name, projects/<project>/subscriptions/<name>.")
    message_id = message.get("messageId") or message.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise EventError(400, "the Pub/Sub push envelope lacks message.messageId; send the "
                         "envelope as Pub/Sub pushes it.")
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict) or any(not isinstance(v, str) for v in attributes.values()):
        raise EventError(400, "the Pub/Sub message.attributes must map names to strings.")
    raw = b"" if message.get("data") is None else _b64(message["data"], "Pub/Sub message.data")
    data, media = _decode_data(raw, None, "Pub/Sub message.data")
    gcs_type = GCS_TYPES.get(attributes.get("eventType", ""))
    object_id = attributes.get("objectId")
    published = message.get("publishTime") or message.get("publish_time")
    return Event(
        id=message_id, source=f"//pubsub.googleapis.com/{subscription}",
        type=gcs_type or PUBSUB_TYPE, time=published if isinstance(published, str) else None,
        subject=f"objects/{object_id}" if gcs_type and object_id else None,
        datacontenttype=media, data=data, extensions=dict(attributes),
    )


def _s3(doc: dict[str, Any]) -> list[Event]:
    records = doc["Records"]
    if not isinstance(records, list) or not records:
        raise EventError(400, "an S3 event notification's Records must be a non-empty array.")
    return [_s3_record(record, f"Records[{i}]") for i, record in enumerate(records)]


def _s3_record(record: Any, where: str) -> Event:
    if not isinstance(record, dict):
        raise EventError(400, f"{where} is {_kind(record)}; S3 records are objects.")
    if record.get("eventSource") != "aws:s3":
        raise EventError(422, f"{where} has eventSource {record.get('eventSource')!r}; only "
                         "Amazon S3 records (aws:s3) are accepted.")
    name = _at(record, where, "eventName")
    bucket = _at(record, where, "s3", "bucket", "name")
    key = unquote_plus(_at(record, where, "s3", "object", "key"))
    time = record.get("eventTime") if isinstance(record.get("eventTime"), str) else None
    sequencer = record["s3"]["object"].get("sequencer")
    if isinstance(sequencer, str) and sequencer:
        event_id = f"{bucket}/{key}@{sequencer}"
    else:
        response = record.get("responseElements")
        request = response.get("x-amz-request-id", "") if isinstance(response, dict) else ""
        event_id = f"{bucket}/{key}@{name}@{time or ''}@{request}"
    return Event(id=event_id, source=f"arn:aws:s3:::{bucket}", type=f"aws.s3.{name}",
                 time=time, subject=key, datacontenttype="application/json", data=record)


def _s3_test(doc: dict[str, Any]) -> Control:
    return Control(kind="s3-test-event", subscribe_url=None,
                   message=f"Amazon S3 test event for bucket {doc.get('Bucket')!s}: the "
                   "notification configuration works; there is nothing to run.")


def _sns(doc: dict[str, Any]) -> list[Event] | Control:
    kind = doc["Type"]
    if kind in SNS_CONTROLS:
        url = doc.get("SubscribeURL")
        if not isinstance(url, str) or not _is_sns_url(url):
            raise EventError(400, f"the SNS {kind}'s SubscribeURL must be an https URL on "
                             f"sns.<region>.amazonaws.com, not {str(url)[:120]!r}.")
        message = doc.get("Message")
        return Control(kind=SNS_CONTROLS[kind], subscribe_url=url,
                       message=message if isinstance(message, str) else "")
    if kind != "Notification":
        raise EventError(422, f"SNS message Type {kind!r} is not handled; {ACCEPTED}.")
    where = "the SNS notification"
    message_id, topic, text = (_at(doc, where, f) for f in ("MessageId", "TopicArn", "Message"))
    found, inner = _try_json(text)
    if isinstance(inner, dict) and "Records" in inner:
        return _s3(inner)
    if isinstance(inner, dict) and inner.get("Event") == "s3:TestEvent":
        return _s3_test(inner)
    subject, stamp = doc.get("Subject"), doc.get("Timestamp")
    return [Event(id=message_id, source=topic, type="aws.sns.Notification",
                  time=stamp if isinstance(stamp, str) else None,
                  subject=subject if isinstance(subject, str) else None,
                  datacontenttype="application/json" if found else "text/plain; charset=utf-8",
                  data=inner if found else text)]


# Helpers ----------------------------------------------------------------------------------


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_json(raw: bytes | str, what: str) -> Any:
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise EventError(400, f"{what} is not valid JSON ({exc}); send UTF-8 JSON.") from None


def _try_json(raw: bytes | str) -> tuple[bool, Any]:
    try:
        return True, json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return False, None


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise EventError(400, f"{what} must be a base64 string, not {_kind(value)}.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EventError(400, f"{what} is not valid base64 ({exc}); send standard base64 "
                         "(RFC 4648, with padding), as the provider sends it.") from None


def _decode_data(raw: bytes, content_type: str | None, what: str) -> tuple[Any, str | None]:
    """(data, media type): JSON for a JSON type, text for text, else base64; sniffed if untyped."""
    media = _media_type(content_type)
    if not raw:
        return None, content_type
    if _is_json(media):
        return _load_json(raw, what), content_type
    found, value = _try_json(raw) if not media else (False, None)
    if found:
        return value, "application/json"
    if not media or media.startswith("text/") or media.endswith(("/xml", "+xml", "-urlencoded")):
        try:
            return raw.decode("utf-8"), content_type or "text/plain; charset=utf-8"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(raw).decode("ascii"), content_type or "application/octet-stream"


def _is_sns_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return False
    return parts.scheme == "https" and SNS_HOST.fullmatch(host) is not None


def _at(doc: dict[str, Any], where: str, *path: str) -> str:
    value: Any = doc
    for step in path:
        value = value.get(step) if isinstance(value, dict) else None
    if not isinstance(value, str) or not value:
        raise EventError(400, f"{where} lacks {'.'.join(path)} (a non-empty string); send "
                         "the message as the provider sends it.")
    return value
