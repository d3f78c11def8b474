"""An app for multi-process tests: every handler run appends a row to a ledger table,
so the tests can count how many times each job ran.

``ONCELY_STORE`` picks the store; ``LEDGER`` is a SQLite path or a PostgreSQL URL
(``...?schema=s``) holding the table ``ledger(job_id, attempt, phase, pid)``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

import psycopg

from oncely import Job, Oncely

jobs = Oncely()
LEDGER = os.environ.get("LEDGER", "")
_local = threading.local()


def ledger_connection(url: str = LEDGER) -> Any:
    if url.startswith("postgresql://"):
        base, _, schema = url.partition("?schema=")
        return psycopg.connect(base, options=f"-c search_path={schema}", autocommit=True)
    conn = sqlite3.connect(url, timeout=60, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def create_ledger(url: str) -> None:
    with ledger_connection(url) as conn:
        conn.execute("CREATE TABLE ledger (job_id bigint, attempt int, phase text, pid int)")
    if not url.startswith("postgresql://"):
        conn.close()


def append(job: Job, phase: str) -> None:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = ledger_connection()
    mark = "%s" if isinstance(conn, psycopg.Connection) else "?"
    conn.execute(
        f"INSERT INTO ledger (job_id, attempt, phase, pid) VALUES ({mark}, {mark}, {mark}, {mark})",
        (job.id, job.attempt, phase, os.getpid()),
    )


@jobs.task
def record(n: int, *, job: Job) -> int:
    append(job, "ran")
    time.sleep(0.0005)
    return n


@jobs.task(max_attempts=3)
def hang_first_attempt(*, job: Job) -> str:
    """The first attempt hangs until its process is killed; the next one finishes."""
    append(job, "started")
    if job.attempt == 1:
        time.sleep(600)
    append(job, "finished")
    return "done"


@jobs.periodic(every="1s", catch_up="all", window="1m")
def pulse(*, job: Job) -> None:
    """A seconds-level periodic task for tick and scheduler tests."""
    append(job, "pulse")


@jobs.on_event("*")
def on_any_event(event: Any, *, job: Job) -> None:
    """Every delivered event, whatever its type."""
    append(job, "event")


@jobs.hook("deploy")
def on_deploy(payload: Any, *, job: Job) -> None:
    append(job, "hook")
