"""Shared by every peer script (stdlib only: each runs in its own venv).

A peer script drains N no-op jobs and prints one JSON line: jobs, seconds (the drain),
enqueue_seconds, cpu_client (this process's CPU seconds during the drain) and
cpu_server (CPU seconds of all PostgreSQL processes during the drain, read from /proc:
noisy if anything else uses the server).
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> float:
    """CPU seconds (user + system) used so far by processes named postgres."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        if name == "postgres" or name.startswith("postgres:"):
            fields = text[text.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextmanager
def measured(report: dict[str, Any]) -> Iterator[None]:
    """Time the block: wall seconds, this process's CPU and PostgreSQL's CPU."""
    wall, client, server = time.perf_counter(), self_cpu(), postgres_cpu()
    yield
    report["seconds"] = time.perf_counter() - wall
    report["cpu_client"] = self_cpu() - client
    report["cpu_server"] = postgres_cpu() - server


def emit(report: dict[str, Any]) -> None:
    print(json.dumps(report), flush=True)
