"""Registered tasks: a handler plus its policy, and the validation of its arguments."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, InvalidArguments
from .retry import Backoff

#: Keyword parameters oncely itself may pass to a handler.
INJECTED = ("job", "conn")


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    fn: Callable[..., Any]
    is_async: bool
    max_attempts: int
    backoff: Backoff
    queue: str
    priority: int
    wants_job: bool
    wants_conn: bool
    signature: inspect.Signature

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], *, name: str | None, max_attempts: int, backoff: Backoff,
        queue: str, priority: int,
    ) -> Task:
        task_name = name or fn.__name__
        if max_attempts < 1:
            raise ConfigError(f"task {task_name!r}: max_attempts={max_attempts} must be >= 1")
        if not -32768 <= priority <= 32767:
            raise ConfigError(f"task {task_name!r}: priority={priority} must fit in -32768..32767")
        signature = inspect.signature(fn)
        params = signature.parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        wants = {n: n in params or accepts_any for n in INJECTED}
        is_async = inspect.iscoroutinefunction(fn)
        if "conn" in params and not is_async:
            raise ConfigError(
                f"task {task_name!r} takes conn= but is not async; handlers whose writes commit "
                "with the job's completion must be `async def` (they get a psycopg AsyncConnection)"
            )
        visible = [p for n, p in params.items() if n not in INJECTED]
        return cls(
            name=task_name, fn=fn, is_async=is_async, max_attempts=max_attempts, backoff=backoff,
            queue=queue, priority=priority, wants_job=wants["job"],
            wants_conn="conn" in params, signature=signature.replace(parameters=visible),
        )

    def encode_args(self, args: Mapping[str, Any]) -> str:
        """Check ``args`` fit the handler and are JSON; return the JSON text."""
        for name in INJECTED:
            if name in args:
                raise InvalidArguments(
                    f"task {self.name!r}: argument {name!r} is reserved; oncely passes it itself"
                )
        try:
            self.signature.bind(**args)
        except TypeError as exc:
            raise InvalidArguments(
                f"task {self.name!r} cannot take these arguments: {exc}; "
                f"its signature is {self.name}{self.signature}"
            ) from None
        for arg_name, value in args.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidArguments(
                    f"task {self.name!r}: argument {arg_name!r} is not JSON "
                    f"({type(value).__name__}: {exc}); pass str, int, float, bool, None, "
                    "list or dict values (e.g. an id instead of an object, isoformat() for times)"
                ) from None
        return json.dumps(dict(args), separators=(",", ":"))
