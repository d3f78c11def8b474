"""Structured logs: one JSON object per line, with a stable ``event`` name.

oncely only logs to the ``oncely`` logger; it configures nothing at import. The CLI
and ``oncely serve`` call ``configure()``; an app that embeds oncely keeps its own
logging set-up and can use ``JsonFormatter`` on its handlers.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, **static: Any):
        super().__init__()
        self.static = static

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.name),
            "msg": record.getMessage(),
            **self.static,
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO", *, stream: Any = None, **static: Any) -> None:
    """Send ``oncely`` logs as JSON lines to ``stream`` (default stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(**static))
    logger = logging.getLogger("oncely")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
