"""The story's app, done oncely's way: a signup and its welcome email commit together, and
the email is sent exactly once by whichever replica a trigger reaches.

    ONCELY_STORE   sqlite:///app.db (default) or postgresql://...?schema=s; the users
                   table lives in the same database, so a signup and its job share a
                   transaction
    ONCELY_TOKENS  bearer token(s) the scheduler calls POST /jobs/tick with
    SMTP_HOST, SMTP_PORT   where emails go (default 127.0.0.1:1025)
    NAIVE_TIMER=1  the story's original design instead: every replica runs its own timer
                   that mails whoever is not welcomed yet, and /signup enqueues nothing

Run it with ``uvicorn examples.welcome_emails.app:app``; ``oncely demo`` runs three of
them behind one port and counts the emails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiosmtplib
from fastapi import FastAPI
from pydantic import BaseModel

from oncely import Job, Oncely

jobs = Oncely()  # the store comes from ONCELY_STORE
log = logging.getLogger("welcome_emails")
NAIVE = os.environ.get("NAIVE_TIMER") == "1"
NAIVE_EVERY = 2.0  # seconds; the story's setInterval(checkPendingJobs, ...)
SENDER = f"{socket.gethostname()}:{os.getpid()}"  # like oncely's worker id: pod and process


# -- the users table, in the store's own database ----------------------------------------


def connect() -> Any:
    """A new connection to the store's database (sqlite3 or psycopg, autocommit)."""
    url = urlsplit(jobs.store_url)
    if url.scheme == "sqlite":
        path = (url.netloc + url.path).removeprefix("/")
        return sqlite3.connect(path, timeout=30, isolation_level=None)
    import psycopg

    params = [(k, v) for k, v in parse_qsl(url.query) if k not in ("schema", "pool_size")]
    schema = dict(parse_qsl(url.query)).get("schema")
    options = f"-c search_path={schema}" if schema else ""
    conninfo = url._replace(query=urlencode(params)).geturl()
    return psycopg.connect(conninfo, options=options, autocommit=True)


@contextlib.contextmanager
def database() -> Iterator[tuple[Any, str]]:
    """A connection and its parameter mark ('?' for SQLite, '%s' for PostgreSQL)."""
    conn = connect()
    try:
        yield conn, "?" if isinstance(conn, sqlite3.Connection) else "%s"
    finally:
        conn.close()


def create_users() -> None:
    with database() as (conn, mark):
        if mark == "?":
            conn.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, "
                         "email TEXT NOT NULL UNIQUE, welcomed BOOLEAN NOT NULL DEFAULT FALSE)")
            return
        with conn.transaction():  # replicas start together: one creates the table
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('welcome_emails.users'))")
            conn.execute("CREATE TABLE IF NOT EXISTS users (id bigserial PRIMARY KEY, "
                         "email text NOT NULL UNIQUE, welcomed boolean NOT NULL DEFAULT false)")


INSERT_USER = ("INSERT INTO users (email) VALUES ({m}) "
               "ON CONFLICT (email) DO UPDATE SET email = excluded.email RETURNING id")


def sign_up(email: str) -> int:
    """Insert the user (again: a retried signup is the same user) and, in the same
    transaction, enqueue the welcome email: both commit, or neither does."""
    with database() as (conn, mark):
        if isinstance(conn, sqlite3.Connection):
            conn.execute("BEGIN IMMEDIATE")
            try:
                (user_id,) = conn.execute(INSERT_USER.format(m=mark), (email,)).fetchone()
                if not NAIVE:
                    jobs.enqueue("send_welcome_email", user_id=user_id, key=f"welcome:{user_id}",
                                 conn=conn)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return int(user_id)
        with conn.transaction():
            (user_id,) = conn.execute(INSERT_USER.format(m=mark), (email,)).fetchone()
            if not NAIVE:
                jobs.enqueue("send_welcome_email", user_id=user_id, key=f"welcome:{user_id}",
                             conn=conn)
        return int(user_id)


def email_of(user_id: int) -> str:
    with database() as (conn, mark):
        row = conn.execute(f"SELECT email FROM users WHERE id = {mark}", (user_id,)).fetchone()
    if row is None:
        raise LookupError(f"no user #{user_id}")
    return str(row[0])


# -- email ---------------------------------------------------------------------------------


async def send_email(to: str, message_id: str) -> None:
    message = EmailMessage()
    message["From"] = "welcome@oncely.example"
    message["To"] = to
    message["Subject"] = "Welcome!"
    message["Message-ID"] = message_id
    message["X-Sent-By"] = SENDER
    message.set_content("Thanks for signing up.\n")
    await aiosmtplib.send(message, hostname=os.environ.get("SMTP_HOST", "127.0.0.1"),
                          port=int(os.environ.get("SMTP_PORT", "1025")), timeout=10)


# -- oncely's way --------------------------------------------------------------------------


@jobs.task(max_attempts=5)
async def send_welcome_email(user_id: int, *, job: Job) -> str:
    """Runs once per signup. If this process dies after sending but before the job
    completes, the job runs again after its lease expires: the Message-ID comes from the
    job's key, so the copy is recognisably the same email (receivers deduplicate on it)."""
    to = await asyncio.to_thread(email_of, user_id)
    local_part = job.idempotency_key.replace(":", ".")  # welcome:42: ':' is not allowed there
    await send_email(to, f"<{local_part}@oncely.example>")
    return to


@jobs.periodic(every="1m")
def count_users(*, job: Job) -> int:
    """Housekeeping once a minute, exactly once across replicas: it only counts."""
    with database() as (conn, _):
        (count,) = conn.execute("SELECT count(*) FROM users").fetchone()
    log.info("%d users", count)
    return int(count)


# -- the story's original design: a timer in every replica --------------------------------


def unwelcomed() -> list[tuple[int, str]]:
    with database() as (conn, _):
        return [(int(i), str(e)) for i, e in
                conn.execute("SELECT id, email FROM users WHERE welcomed = false").fetchall()]


def mark_welcomed(user_id: int) -> None:
    with database() as (conn, mark):
        conn.execute(f"UPDATE users SET welcomed = true WHERE id = {mark}", (user_id,))


async def welcome(user_id: int, email: str) -> None:
    await send_email(email, make_msgid(domain="oncely.example"))
    await asyncio.to_thread(mark_welcomed, user_id)


async def check_pending_users() -> None:
    pending = await asyncio.to_thread(unwelcomed)
    await asyncio.gather(*(welcome(user_id, email) for user_id, email in pending))


async def naive_timer() -> None:
    """setInterval(checkPendingJobs, 2 s): the pods were deployed together, so their
    timers fire together, and each finds the same users."""
    while True:
        await asyncio.sleep(NAIVE_EVERY - time.time() % NAIVE_EVERY)
        try:
            await check_pending_users()
        except Exception:
            log.exception("checkPendingJobs failed")


# -- the app ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await jobs.astore()  # connect and migrate before taking traffic
    # enqueue(conn=) runs on a private loop with a store of its own: open that one now
    # too, as on SQLite opening it inside a signup's write transaction would wait for it
    await asyncio.to_thread(jobs.migrate)
    await asyncio.to_thread(create_users)
    timer = asyncio.create_task(naive_timer()) if NAIVE else None
    yield
    if timer is not None:
        timer.cancel()
    await jobs.aclose()
    await asyncio.to_thread(jobs.close)


app = FastAPI(title="welcome emails", lifespan=lifespan)
jobs.install(app)  # POST /jobs/tick, /jobs/process, ...; auth from ONCELY_TOKENS


class Signup(BaseModel):
    email: str


@app.post("/signup", status_code=201)
def signup(body: Signup) -> dict[str, Any]:
    return {"user_id": sign_up(body.email), "email": body.email}
