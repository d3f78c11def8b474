"""Outcomes of an attempt, decided in one pure function.

``decide`` maps (job, what the handler did, policy, now) to the ``Completion`` the
store applies. It reads no clock and no randomness of its own: both are passed in,
so tests pin them.
"""

from __future__ import annotations

import json
import random
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import ConfigError
from .model import Completion, JobRecord, JobState


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: ``base * factor**(attempt-1)``, capped, then
    scaled by a random factor in ``[1 - jitter, 1]`` so retries of many jobs spread out."""

    base: float = 2.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base <= 0 or self.factor < 1 or self.cap < self.base:
            raise ConfigError(
                f"Backoff(base={self.base}, factor={self.factor}, cap={self.cap}) is invalid; "
                "use base > 0, factor >= 1 and cap >= base"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"Backoff(jitter={self.jitter}) must be between 0 and 1")

    def delay(self, attempt: int, rng: random.Random) -> timedelta:
        raw = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        return timedelta(seconds=raw * (1 - self.jitter * rng.random()))


def encode_result(value: Any) -> str | None:
    """JSON for a handler's return value; None when it has none or it is not JSON.

    A non-JSON result must not fail the job (that would run its side effects again),
    so the caller logs it and stores null.
    """
    if value is None:
        return None
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


def succeeded(job: JobRecord, result_json: str | None, now: datetime) -> Completion:
    return Completion(
        id=job.id, fence=job.fence, state=JobState.SUCCEEDED, at=now,
        result_json=result_json,
    )


def failed(
    job: JobRecord,
    exc: BaseException,
    backoff: Backoff,
    now: datetime,
    worker: str,
    rng: random.Random,
) -> Completion:
    """A raised handler: retry later while attempts remain, otherwise dead."""
    error = {
        "attempt": job.attempt,
        "at": now.isoformat(),
        "started_at": job.attempted_at.isoformat() if job.attempted_at else None,
        "worker": worker,
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
    }
    error_json = json.dumps(error, default=str)
    if job.attempt >= job.max_attempts:
        return Completion(
            id=job.id, fence=job.fence, state=JobState.DEAD, at=now,
            error_json=error_json,
        )
    return Completion(
        id=job.id, fence=job.fence, state=JobState.RETRYING, at=now,
        error_json=error_json, run_at=now + backoff.delay(job.attempt, rng),
    )
