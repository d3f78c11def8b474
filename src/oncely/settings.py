"""Typed settings, validated once at start-up from an injectable environment."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from .errors import ConfigError

T = TypeVar("T")
DEFAULT_STORE = "sqlite:///oncely.db"


def _read(
    environ: Mapping[str, str], key: str, parse: Callable[[str], T], default: T, what: str
) -> T:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not {what}") from None


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError(raw)
    return value


def _seconds(raw: str) -> timedelta:
    value = float(raw)
    if not value > 0:
        raise ValueError(raw)
    return timedelta(seconds=value)


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _unmatched(raw: str) -> str:
    if raw not in ("reject", "ack"):
        raise ValueError(raw)
    return raw


@dataclass(frozen=True)
class Settings:
    store: str = DEFAULT_STORE
    concurrency: int = 32
    lease: timedelta = timedelta(seconds=30)
    batch_size: int = 100
    key_retention: timedelta = timedelta(days=1)
    schedule_grace: timedelta = timedelta(minutes=2)
    retention: timedelta = timedelta(days=7)
    health_max_lag: timedelta = timedelta(minutes=5)
    health_public: bool = True
    unmatched_events: str = "reject"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            store=environ.get("ONCELY_STORE") or DEFAULT_STORE,
            concurrency=_read(environ, "ONCELY_CONCURRENCY", _positive_int, cls.concurrency,
                              "a whole number >= 1"),
            lease=_read(environ, "ONCELY_LEASE_SECONDS", _seconds, cls.lease,
                        "a number of seconds > 0"),
            batch_size=_read(environ, "ONCELY_BATCH_SIZE", _positive_int, cls.batch_size,
                             "a whole number >= 1"),
            key_retention=_read(environ, "ONCELY_KEY_RETENTION_SECONDS", _seconds,
                                cls.key_retention, "a number of seconds > 0"),
            schedule_grace=_read(environ, "ONCELY_SCHEDULE_GRACE_SECONDS", _seconds,
                                 cls.schedule_grace, "a number of seconds > 0"),
            retention=_read(environ, "ONCELY_RETENTION_SECONDS", _seconds, cls.retention,
                            "a number of seconds > 0"),
            health_max_lag=_read(environ, "ONCELY_HEALTH_MAX_LAG_SECONDS", _seconds,
                                 cls.health_max_lag, "a number of seconds > 0"),
            health_public=_read(environ, "ONCELY_HEALTH_PUBLIC", _flag, cls.health_public,
                                "1/0, true/false, yes/no or on/off"),
            unmatched_events=_read(environ, "ONCELY_EVENTS_UNMATCHED", _unmatched,
                                   cls.unmatched_events, "'reject' or 'ack'"),
        )
