"""``oncely demo``: the story behind oncely, live on this machine.

Replicas of the example app (``examples/welcome_emails``) run as separate processes
behind one port: the kernel spreads connections over processes sharing a port with
SO_REUSEPORT (``--lb reuseport``, the default) or a real nginx does (``--lb nginx``).
oncely's scheduler ticks ``POST /jobs/tick`` at that port, signups stream in, and an
SMTP server in this process records every email the replicas send. The verdict counts
emails from what that SMTP server received, nothing else, and signups from the users
table and the answers the traffic generator got.

``--naive`` first runs the story's original design (a timer in every replica, no
oncely), then oncely's way. ``--chaos`` SIGKILLs a replica every few seconds (one caught
running jobs, when there is one) and restarts it; on PostgreSQL it also terminates the
replicas' database connections.

The promise the verdict checks: every enqueued job completes exactly once, or ends
visibly dead after its retries: never lost, never completed twice, whatever the number
of replicas, however often a trigger is retried or overlaps, whichever process dies
when. A handler is started again only when its process died or its lease expired; it
then gets the same idempotency key, and on PostgreSQL its database writes can commit in
the transaction that completes the job. So a replica killed after sending an email and
before completing its job makes the email go out again with the same Message-ID (a
"re-sent copy": the same email, which receivers drop); a duplicate is a second email
with a different Message-ID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from .app import Oncely, utcnow
from .errors import OncelyError
from .schedule import Schedule
from .scheduler import RetryPolicy, Scheduler, Target

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_MODULE = "examples.welcome_emails.app"
WELCOME_TASK = "send_welcome_email"
HOST = "127.0.0.1"
LEASE_SECONDS = "3"  # short, so a killed replica's jobs come back quickly
DRAIN_SECONDS = 60.0
OK_SENTENCE = "every signup got exactly one email, none lost"
log = logging.getLogger("oncely")


class DemoError(Exception):
    """Something the demo could not set up; one readable line."""


# -- options ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    replicas: int = 3
    lb: str = "reuseport"
    store: str | None = None
    rate: float = 10.0
    duration: float = 30.0
    tick: int = 2
    naive: bool = False
    chaos: bool = False
    json: bool = False
    keep: bool = False
    seed: int | None = None
    smtp_latency: float = 0.2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oncely demo",
        description="Welcome emails from several replicas behind one port: the story, "
        "live. Exits 0 when oncely's run delivered every signup exactly one email.")
    parser.add_argument("--replicas", type=int, default=3, help="processes (default 3)")
    parser.add_argument("--lb", choices=["reuseport", "nginx"], default="reuseport",
                        help="the load balancer: the kernel (SO_REUSEPORT) or nginx")
    parser.add_argument("--store", help="postgresql://... (default: SQLite in a temp dir); "
                        "each run uses a fresh schema of its own and drops it afterwards")
    parser.add_argument("--rate", type=float, default=10.0, help="signups per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of traffic")
    parser.add_argument("--tick", type=int, default=2, help="scheduler interval in seconds")
    parser.add_argument("--naive", action="store_true",
                        help="first run the story's original design: a timer in every replica")
    parser.add_argument("--chaos", action="store_true",
                        help="every 2-4 s SIGKILL a replica (a busy one if any) and restart "
                        "it; on PostgreSQL also terminate the replicas' connections")
    parser.add_argument("--json", action="store_true",
                        help="print each verdict as one JSON line on stdout (the view: stderr)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and schemas")
    parser.add_argument("--seed", type=int, help="seed for the chaos (default: random)")
    parser.add_argument("--smtp-latency", type=float, default=0.2,
                        help="seconds the SMTP server takes to accept a message (default 0.2)")
    return parser


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.rate <= 0 or args.duration <= 0 or args.tick < 1:
        parser.error("--replicas and --tick must be at least 1; --rate and --duration above 0")
    if args.store and not args.store.startswith(("postgresql://", "postgres://")):
        parser.error("--store takes a postgresql:// URL (without it: SQLite in a temp dir)")
    return Options(replicas=args.replicas, lb=args.lb, store=args.store, rate=args.rate,
                   duration=args.duration, tick=args.tick, naive=args.naive, chaos=args.chaos,
                   json=args.json, keep=args.keep, seed=args.seed,
                   smtp_latency=max(0.0, args.smtp_latency))


# -- the SMTP server: the only witness the verdict trusts ----------------------------------


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    message_id: str
    subject: str
    sent_by: str  # X-Sent-By: host:pid of the replica that sent it


class Mailbox:
    """An aiosmtpd handler that records every message as soon as its data is in (as a
    relay queues it), then takes ``latency`` seconds to answer 250: a sender killed
    meanwhile never learns that its email went out."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self._mails: list[Mail] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw if isinstance(raw, bytes) else raw.encode(),
                                           policy=email.policy.default)
        mails = [Mail(str(to).lower(), str(message.get("Message-ID", "")).strip(),
                      str(message.get("Subject", "")), str(message.get("X-Sent-By", "")))
                 for to in envelope.rcpt_tos]
        with self._lock:
            self._mails.extend(mails)
        await asyncio.sleep(self.latency)
        return "250 Message accepted for delivery"

    def mails(self) -> list[Mail]:
        with self._lock:
            return list(self._mails)


@contextlib.contextmanager
def smtp_server(mailbox: Mailbox) -> Any:
    from aiosmtpd.controller import Controller

    controller = Controller(mailbox, hostname=HOST, port=free_port())
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


# -- the verdict -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    mode: str
    signups: int  # users committed in the database, plus any confirmed signup missing there
    confirmed: int  # signups the traffic generator saw answered with 201
    emails: int  # messages the SMTP server received
    distinct_emails: int  # distinct (recipient, Message-ID)
    recipients: int  # distinct recipients
    resent_copies: int  # emails - distinct_emails: the same email delivered again
    duplicates: int  # distinct emails beyond the first one per recipient
    recipients_with_duplicates: int
    lost: int  # signups without any email
    unexpected: int  # distinct emails to addresses nobody signed up with
    dead_jobs: int
    undrained: int  # jobs still pending or running when the wait for the queue ended
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return (not self.interrupted and self.signups > 0 and self.lost == 0
                and self.duplicates == 0 and self.unexpected == 0 and self.dead_jobs == 0
                and self.undrained == 0)

    def sentence(self) -> str:
        if self.ok:
            return OK_SENTENCE
        problems = []
        if self.recipients_with_duplicates:
            problems.append(f"{self.recipients_with_duplicates} signup(s) got more than one "
                            f"email ({self.duplicates} duplicate(s))")
        if self.lost:
            problems.append(f"{self.lost} signup(s) got no email (lost)")
        if self.unexpected:
            problems.append(f"{self.unexpected} email(s) went to addresses nobody signed up with")
        if self.dead_jobs:
            problems.append(f"{self.dead_jobs} job(s) ended dead after their retries")
        if self.undrained:
            problems.append(f"{self.undrained} email(s) still waited to be sent at the end")
        if self.interrupted:
            problems.append("the run was interrupted")
        if not self.signups:
            problems.append("nobody signed up")
        return "; ".join(problems)

    def to_dict(self) -> dict[str, Any]:
        fields = {k: getattr(self, k) for k in self.__slots__}
        return {**fields, "ok": self.ok, "verdict": self.sentence()}


def judge(mode: str, users: Iterable[str], confirmed: Iterable[str], mails: Sequence[Mail], *,
          dead_jobs: int = 0, undrained: int = 0, interrupted: bool = False) -> Verdict:
    """Count from the SMTP server's records: one email per recipient is a distinct
    Message-ID; a copy with a Message-ID already received is the same email again."""
    confirmed = {c.lower() for c in confirmed}
    expected = {u.lower() for u in users} | confirmed
    ids: dict[str, set[str]] = defaultdict(set)
    for n, mail in enumerate(mails):
        ids[mail.to].add(mail.message_id or f"<no Message-ID #{n}>")
    distinct = sum(len(v) for v in ids.values())
    return Verdict(
        mode=mode, signups=len(expected), confirmed=len(confirmed), emails=len(mails),
        distinct_emails=distinct, recipients=len(ids), resent_copies=len(mails) - distinct,
        duplicates=sum(len(v) - 1 for to, v in ids.items() if to in expected),
        recipients_with_duplicates=sum(1 for to, v in ids.items() if to in expected
                                       and len(v) > 1),
        lost=len(expected - ids.keys()),
        unexpected=sum(len(v) for to, v in ids.items() if to not in expected),
        dead_jobs=dead_jobs, undrained=undrained, interrupted=interrupted,
    )


# -- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def reserve_shared_port() -> socket.socket:
    """A bound, never-listening SO_REUSEPORT socket: it keeps the port ours while the
    replicas (which listen on it with SO_REUSEPORT too) come and go; connections only
    ever go to listening sockets."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, 0))
    return sock


class Child:
    """A subprocess in a process group of its own: Ctrl-C in the terminal reaches only
    the demo, which stops its children itself."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log: Path):
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.log = log
        self.proc = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:  # not reaped yet: the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._log.close()

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def replica_main(argv: Sequence[str] | None = None) -> None:
    """One replica: the example app on uvicorn, listening on a socket of its own making
    (SO_REUSEPORT when the replicas share the port). Writes ``--ready`` once serving."""
    import uvicorn

    from . import logs

    parser = argparse.ArgumentParser(prog="oncely-demo-replica")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--reuseport", action="store_true")
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, args.port))
    logs.configure("INFO")
    sys.path.insert(0, str(ROOT))  # examples/ lives beside src/
    config = uvicorn.Config(f"{EXAMPLE_MODULE}:app", log_level="warning", access_log=False,
                            timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    threading.Thread(target=_announce, args=(server, Path(args.ready)), daemon=True).start()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    server.run(sockets=[sock])


def _announce(server: Any, ready: Path) -> None:
    while not server.started:
        time.sleep(0.02)
    ready.write_text(str(os.getpid()))


def _exit_with_parent(parent: int) -> None:
    """If the demo itself dies (even by SIGKILL), its replicas go too."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass(slots=True)
class Slot:
    index: int
    port: int
    child: Child | None = None
    pids: list[int] = field(default_factory=list)


class Replicas:
    """N copies of the example app; a killed one restarts on the same port."""

    def __init__(self, n: int, *, ports: Sequence[int], reuseport: bool, env: dict[str, str],
                 workdir: Path):
        self.slots = [Slot(i + 1, ports[i]) for i in range(n)]
        self.reuseport, self.env, self.workdir = reuseport, env, workdir

    @property
    def pids(self) -> list[int]:
        return [pid for slot in self.slots for pid in slot.pids]

    async def start(self, slot: Slot) -> None:
        ready = self.workdir / f"ready-{slot.index}-{len(slot.pids)}"
        argv = [sys.executable, "-c", "from oncely.demo import replica_main; replica_main()",
                "--port", str(slot.port), "--ready", str(ready)]
        child = Child([*argv, *(["--reuseport"] if self.reuseport else [])], self.env,
                      self.workdir / f"replica-{slot.index}.log")
        slot.child = child
        slot.pids.append(child.pid)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"replica {slot.index} did not start:\n{child.tail()}")
            await asyncio.sleep(0.05)

    async def start_all(self) -> None:
        await asyncio.gather(*(self.start(slot) for slot in self.slots))

    async def kill_and_restart(self, slot: Slot) -> tuple[int, int]:
        assert slot.child is not None
        killed = slot.child.pid
        await asyncio.to_thread(slot.child.kill)
        await asyncio.to_thread(slot.child.stop)  # closes its log file
        await asyncio.sleep(0.5)
        await self.start(slot)
        return killed, slot.pids[-1]

    async def stop_all(self) -> None:
        children = [slot.child for slot in self.slots if slot.child is not None]
        await asyncio.gather(*(asyncio.to_thread(c.stop) for c in children))


def nginx_config(prefix: Path, port: int, upstreams: Sequence[int]) -> str:
    servers = "\n".join(f"        server {HOST}:{p} max_fails=1 fail_timeout=2s;"
                        for p in upstreams)
    temp = " ".join(f"{name}_temp_path {prefix}/{name};"
                    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    {temp}
    upstream replicas {{
{servers}
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


def start_nginx(workdir: Path, port: int, upstreams: Sequence[int]) -> Child:
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)
    if binary is None:
        raise DemoError("--lb nginx needs nginx installed (e.g. apt-get install nginx)")
    prefix = workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    prefix.chmod(0o755)  # nginx's workers may run as another user
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, port, upstreams))
    return Child([binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf),
                  "-g", "daemon off;"], dict(os.environ), prefix / "stdout.log")


# -- the store: URLs, the users table, and what the view shows ----------------------------


def with_params(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | params
    return parts._replace(query=urlencode(query)).geturl()


def connect_users_db(url: str) -> Any:
    if url.startswith("sqlite"):
        import sqlite3

        from .sqlite_store import SQLiteStore

        return sqlite3.connect(SQLiteStore.from_url(url).path, timeout=30)
    import psycopg

    from .postgres_store import PostgresStore

    store = PostgresStore.from_url(url)
    return psycopg.connect(store.conninfo, options=f"-c search_path={store.schema}",
                           autocommit=True)


def read_users(url: str) -> tuple[set[str], int]:
    """(every signed-up email, how many are not welcomed yet)."""
    conn = connect_users_db(url)
    try:
        rows = conn.execute("SELECT email, welcomed FROM users").fetchall()
    finally:
        conn.close()
    return {str(e).lower() for e, _ in rows}, sum(1 for _, w in rows if not w)


def terminate_backends(url: str, application_name: str) -> int:
    """pg_terminate_backend every connection the replicas hold: the pool must recover."""
    import psycopg

    from .postgres_store import PostgresStore

    conninfo = PostgresStore.from_url(url).conninfo
    with psycopg.connect(conninfo, autocommit=True, application_name="oncely-demo-chaos") as c:
        rows = c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = %s AND pid <> pg_backend_pid()",
                         (application_name,)).fetchall()
    return sum(1 for (done,) in rows if done)


def drop_schema(url: str) -> None:
    import psycopg
    from psycopg import sql

    from .postgres_store import PostgresStore

    store = PostgresStore.from_url(url)
    with psycopg.connect(store.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(store.schema or "")))


@contextlib.asynccontextmanager
async def phase_store(opts: Options, mode: str, workdir: Path) -> AsyncIterator[str]:
    """A store of this run's own: a SQLite file in the temp dir, or a fresh PostgreSQL
    schema (dropped afterwards unless --keep)."""
    if opts.store is None:
        yield f"sqlite:///{workdir / mode}.db"
        return
    base = dict(parse_qsl(urlsplit(opts.store).query)).get("schema") or "oncely_demo"
    url = with_params(opts.store, schema=f"{base}_{mode}_{secrets.token_hex(3)}")
    try:
        yield url
    finally:
        if not opts.keep:
            await asyncio.to_thread(drop_schema, url)


@dataclass(slots=True)
class Stats:
    users: int = 0
    unwelcomed: int = 0
    pending: int = 0  # pending or retrying
    running: int = 0
    succeeded: int = 0
    dead: int = 0
    lag: float | None = None  # seconds since the oldest due job was due
    ran_by: Counter[str] = field(default_factory=Counter)  # worker id -> jobs completed


async def read_stats(jobs: Oncely, url: str, naive: bool) -> Stats:
    users, unwelcomed = await asyncio.to_thread(read_users, url)
    stats = Stats(users=len(users), unwelcomed=unwelcomed)
    if naive:
        return stats
    before: int | None = None
    while True:
        page = await jobs.alist(task=WELCOME_TASK, before_id=before, limit=500)
        for job in page:
            state = str(job.state)
            stats.pending += state in ("pending", "retrying")
            stats.running += state == "running"
            stats.dead += state == "dead"
            if state == "succeeded":
                stats.succeeded += 1
                stats.ran_by[job.attempted_by or "?"] += 1
        if len(page) < 500:
            break
        before = page[-1].id
    now = utcnow()
    oldest, _ = await (await jobs.astore()).job_health(now, now - timedelta(hours=1))
    stats.lag = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
    return stats


# -- traffic, chaos, scheduler --------------------------------------------------------


class Traffic:
    """Signs users up at ``rate`` per second; a failed signup is retried (signing up the
    same email again is the same user: the app makes it idempotent)."""

    def __init__(self, client: httpx.AsyncClient, url: str, run_id: str):
        self.client, self.url, self.run_id = client, url, run_id
        self.started = 0
        self.confirmed: set[str] = set()
        self.retries = 0
        self.failed = 0

    async def run(self, rate: float, duration: float, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        begin, pending = loop.time(), set[asyncio.Task[None]]()
        while not stop.is_set() and self.started / rate < duration:
            delay = begin + self.started / rate - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            self.started += 1
            task = asyncio.create_task(self.sign_up(f"user{self.started:05d}-{self.run_id}"
                                                    "@oncely.test", stop))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)

    async def sign_up(self, address: str, stop: asyncio.Event) -> None:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                response = await self.client.post(f"{self.url}/signup", json={"email": address},
                                                  timeout=15)
                if response.status_code == 201:
                    self.confirmed.add(address)
                    return
            if stop.is_set() or asyncio.get_running_loop().time() > deadline:
                self.failed += 1
                return
            self.retries += 1
            await asyncio.sleep(0.2)


async def every(seconds: float, stop: asyncio.Event, action: Callable[[], Awaitable[None]]) -> None:
    while not stop.is_set():
        await action()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


async def run_scheduler(jobs: Oncely, lb_url: str, token: str, tick: int,
                        client: httpx.AsyncClient, stop: asyncio.Event) -> None:
    """oncely's own scheduler, firing POST /jobs/tick at the load balancer."""
    target = Target("oncely-demo-tick", "/jobs/tick?budget=5",
                    Schedule.parse(every=f"{tick}s"))
    policy = RetryPolicy(retry_count=2, min_backoff=0.5, max_backoff=2.0, max_doublings=2,
                         attempt_deadline=30.0)
    scheduler = Scheduler(await jobs.astore(), base_url=lb_url, token=token, targets=[target],
                          policy=policy, clock=utcnow, worker=f"oncely-demo:{os.getpid()}",
                          client=client)
    await scheduler.run(stop)


# -- one run: naive or oncely -----------------------------------------------------------


@dataclass(slots=True)
class Run:
    """Everything the view shows about one run, updated as it goes."""

    mode: str
    opts: Options
    store: str
    started: float = field(default_factory=time.monotonic)
    stage: str = "starting"
    replicas: Replicas | None = None
    traffic: Traffic | None = None
    mailbox: Mailbox = field(default_factory=Mailbox)
    stats: Stats = field(default_factory=Stats)
    events: list[str] = field(default_factory=list)
    kills: int = 0
    pg_terminated: int = 0
    host: str = field(default_factory=socket.gethostname)

    def event(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:5.1f}s  {text}")

    def replica_of(self, worker: str) -> int | None:
        host, _, pid = worker.rpartition(":")
        for slot in self.replicas.slots if self.replicas else []:
            if host == self.host and pid.isdigit() and int(pid) in slot.pids:
                return slot.index
        return None


class Demo:
    """Starts, watches and stops one run; ``run()`` returns its verdict."""

    def __init__(self, opts: Options, mode: str, workdir: Path, interrupted: asyncio.Event,
                 show: Callable[[Run], None]):
        self.opts, self.mode, self.workdir = opts, mode, workdir
        self.interrupted, self.show = interrupted, show
        self.token = secrets.token_urlsafe(24)
        self.rng = random.Random(opts.seed)
        self.app_name = f"oncely-demo-{os.getpid()}-replicas"

    async def run(self) -> tuple[Verdict, Run]:
        async with contextlib.AsyncExitStack() as stack:
            url = await stack.enter_async_context(phase_store(self.opts, self.mode,
                                                              self.workdir))
            run = Run(self.mode, self.opts, url, mailbox=Mailbox(self.opts.smtp_latency))
            try:
                return await self._run(stack, run), run
            finally:
                self.show(run)

    async def _run(self, stack: contextlib.AsyncExitStack, run: Run) -> Verdict:
        jobs = Oncely(with_params(run.store, application_name=f"oncely-demo-{os.getpid()}")
                      if self.opts.store else run.store, environ={})
        stack.push_async_callback(jobs.aclose)
        await jobs.astore()  # create and migrate the store before the replicas start
        smtp_port = stack.enter_context(smtp_server(run.mailbox))
        lb_url = await self._start_replicas(stack, run, smtp_port)
        client = await stack.enter_async_context(httpx.AsyncClient(
            limits=httpx.Limits(max_keepalive_connections=0)))  # a new connection each time
        await wait_healthy(client, lb_url)
        background = Background()
        stack.push_async_callback(background.stop)
        background.start(every(0.25, background.stopping, lambda: self._refresh(run)))
        background.start(every(1.0, background.stopping, lambda: self._poll(jobs, run)))
        if self.mode == "oncely":
            background.start(run_scheduler(jobs, lb_url, self.token, self.opts.tick, client,
                                           background.stopping))
        return await self._traffic_then_judge(jobs, run, client, lb_url, background)

    async def _start_replicas(self, stack: contextlib.AsyncExitStack, run: Run,
                              smtp_port: int) -> str:
        env = self._replica_env(run.store, smtp_port)
        n = self.opts.replicas
        if self.opts.lb == "nginx":
            port, ports = free_port(), [free_port() for _ in range(n)]
            nginx = start_nginx(self.workdir, port, ports)
            stack.callback(nginx.stop)
            run.event(f"nginx (pid {nginx.pid}) on port {port} -> replicas on {ports}")
        else:
            reserved = stack.enter_context(reserve_shared_port())
            port = reserved.getsockname()[1]
            ports = [port] * n
            run.event(f"{n} replicas share port {port} (SO_REUSEPORT)")
        run.replicas = Replicas(n, ports=ports, reuseport=self.opts.lb == "reuseport", env=env,
                                workdir=self.workdir)
        stack.push_async_callback(run.replicas.stop_all)
        await run.replicas.start_all()
        return f"http://{HOST}:{port}"

    def _replica_env(self, url: str, smtp_port: int) -> dict[str, str]:
        store = with_params(url, application_name=self.app_name) if self.opts.store else url
        return {**os.environ, "ONCELY_STORE": store, "ONCELY_TOKENS": self.token,
                "ONCELY_LEASE_SECONDS": LEASE_SECONDS, "SMTP_HOST": HOST,
                "SMTP_PORT": str(smtp_port), "NAIVE_TIMER": "1" if self.mode == "naive" else "0",
                "PYTHONUNBUFFERED": "1"}

    async def _traffic_then_judge(self, jobs: Oncely, run: Run, client: httpx.AsyncClient,
                                  lb_url: str, background: Background) -> Verdict:
        run.traffic = Traffic(client, lb_url, secrets.token_hex(3))
        run.stage = "traffic" + (" + chaos" if self.opts.chaos else "")
        chaos_stop = asyncio.Event()
        chaos = (asyncio.create_task(self._chaos(jobs, run, chaos_stop)) if self.opts.chaos
                 else None)
        try:
            await run.traffic.run(self.opts.rate, self.opts.duration, self.interrupted)
        finally:
            chaos_stop.set()
            if chaos is not None:
                await chaos
        run.stage = "draining the queue"
        await self._drain(jobs, run)
        run.stage = "stopping"
        assert run.replicas is not None
        await run.replicas.stop_all()  # every email any replica sent has arrived now
        await background.stop()  # the scheduler too
        run.stats = await read_stats(jobs, run.store, self.mode == "naive")
        users, _ = await asyncio.to_thread(read_users, run.store)
        run.stage = "done"
        return judge(self.mode, users, run.traffic.confirmed, run.mailbox.mails(),
                     dead_jobs=run.stats.dead, undrained=self._left(run.stats),
                     interrupted=self.interrupted.is_set())

    def _left(self, stats: Stats) -> int:
        """Users not welcomed yet (naive), or jobs pending or running (oncely)."""
        return stats.unwelcomed if self.mode == "naive" else stats.pending + stats.running

    async def _drain(self, jobs: Oncely, run: Run) -> None:
        """Keep ticking until nothing is left to send, for at most DRAIN_SECONDS."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while not self.interrupted.is_set() and time.monotonic() < deadline:
            await self._poll(jobs, run)
            if self._left(run.stats) == 0:
                return
            await asyncio.sleep(0.5)

    async def _chaos(self, jobs: Oncely, run: Run, stop: asyncio.Event) -> None:
        assert run.replicas is not None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.uniform(2.0, 4.0))
            if stop.is_set():
                return
            slot = await self._victim(jobs, run, run.replicas)
            killed, new = await run.replicas.kill_and_restart(slot)
            run.kills += 1
            event = f"SIGKILL replica {slot.index} (pid {killed}), restarted as {new}"
            if self.opts.store:
                n = await asyncio.to_thread(terminate_backends, run.store, self.app_name)
                run.pg_terminated += n
                event += f"; {n} replica pg connection(s) terminated"
            run.event(event)

    async def _victim(self, jobs: Oncely, run: Run, replicas: Replicas) -> Slot:
        """A replica caught running jobs, if one is within a second or two; else any."""
        if self.mode == "oncely":
            for _ in range(20):
                try:
                    running = await jobs.alist(state="running", task=WELCOME_TASK, limit=100)
                except OncelyError:
                    break
                busy = {run.replica_of(j.attempted_by or "") for j in running}
                slots = [s for s in replicas.slots if s.index in busy]
                if slots:
                    return self.rng.choice(slots)
                await asyncio.sleep(0.1)
        return self.rng.choice(replicas.slots)

    async def _poll(self, jobs: Oncely, run: Run) -> None:
        with contextlib.suppress(Exception):  # the view may lag; the verdict re-reads
            run.stats = await read_stats(jobs, run.store, self.mode == "naive")

    async def _refresh(self, run: Run) -> None:
        self.show(run)


class Background:
    """Helper tasks of a run, stopped together."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, coro: Awaitable[None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def stop(self) -> None:
        self.stopping.set()
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            if not task.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), 5)
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("demo task failed: %r", result, exc_info=result,
                          extra={"event": "demo.task_failed"})


async def wait_healthy(client: httpx.AsyncClient, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(f"{url}/readyz", timeout=2)).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise DemoError(f"the load balancer at {url} never answered /readyz")
        await asyncio.sleep(0.1)


# -- the view --------------------------------------------------------------------------


def describe_store(url: str) -> str:
    if url.startswith("sqlite"):
        return "SQLite, " + Path(urlsplit(url).path).name
    parts = urlsplit(url)
    schema = dict(parse_qsl(parts.query)).get("schema")
    return f"PostgreSQL {parts.path.lstrip('/')} on {parts.hostname}, schema {schema}"


def render(run: Run) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    mails = run.mailbox.mails()
    elapsed = time.monotonic() - run.started
    title = (f"oncely demo: {'naive timers, no oncely' if run.mode == 'naive' else 'oncely'}"
             f" - {run.stage} - {elapsed:.0f} s")
    balancer = "nginx" if run.opts.lb == "nginx" else "the kernel (SO_REUSEPORT)"
    setup = (f"{run.opts.replicas} replicas behind {balancer}, {run.opts.rate:g} signups/s "
             f"for {run.opts.duration:g} s\n{describe_store(run.store)}")
    replicas = Table()
    for column in ("replica", "pid now", "restarts", "jobs completed", "emails sent"):
        replicas.add_column(column, justify="left" if column == "replica" else "right")
    sent = Counter(run.replica_of(m.sent_by) for m in mails)
    ran: Counter[int | None] = Counter()
    for worker, n in run.stats.ran_by.items():
        ran[run.replica_of(worker)] += n
    for slot in run.replicas.slots if run.replicas else []:
        replicas.add_row(f"replica {slot.index}", str(slot.pids[-1]) if slot.pids else "-",
                         str(max(0, len(slot.pids) - 1)),
                         "-" if run.mode == "naive" else str(ran[slot.index]),
                         str(sent[slot.index]))
    return Group(Text(title, style="bold"), Text(setup, style="dim"), replicas,
                 _summary(run, mails), Text("\n".join(run.events[-6:]), style="dim"))


def _summary(run: Run, mails: Sequence[Mail]) -> Any:
    from rich.table import Table

    live = judge(run.mode, {m.to for m in mails}, [], mails)
    traffic = run.traffic
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [
        ("signups (answered / committed)",
         f"{len(traffic.confirmed) if traffic else 0} / {run.stats.users}"),
        ("emails received", str(live.emails)),
        ("distinct recipients", str(live.recipients)),
        ("duplicate emails", str(live.duplicates)),
        ("re-sent copies (same Message-ID)", str(live.resent_copies)),
    ]
    if run.mode == "naive":
        rows.append(("users not welcomed yet", str(run.stats.unwelcomed)))
    else:
        lag = "-" if run.stats.lag is None else f"{run.stats.lag:.1f} s"
        rows += [("queue lag (oldest due job)", lag),
                 ("jobs pending / running / dead",
                  f"{run.stats.pending} / {run.stats.running} / {run.stats.dead}")]
    if run.opts.chaos:
        rows.append(("replicas killed (SIGKILL)", str(run.kills)))
        if run.opts.store:
            rows.append(("pg connections terminated", str(run.pg_terminated)))
    for name, value in rows:
        table.add_row(name, value)
    return table


def verdict_text(verdict: Verdict) -> str:
    lines = [
        f"{'naive timers' if verdict.mode == 'naive' else 'oncely'}: "
        f"{'PASS' if verdict.ok else 'FAIL'}: {verdict.sentence()}",
        f"  signups {verdict.signups} (answered {verdict.confirmed}), "
        f"emails received {verdict.emails}, distinct emails {verdict.distinct_emails}, "
        f"distinct recipients {verdict.recipients}",
        f"  duplicates {verdict.duplicates} (to {verdict.recipients_with_duplicates} "
        f"recipient(s)), lost {verdict.lost}, re-sent copies (same Message-ID) "
        f"{verdict.resent_copies}",
    ]
    if verdict.mode == "oncely":
        lines.append(f"  dead jobs {verdict.dead_jobs}, still queued {verdict.undrained}")
    if verdict.resent_copies:
        lines.append(
            "  A re-sent copy is the same email again: a replica died (or lost its lease) "
            "after sending and before its job completed; the job ran again once the lease "
            "expired, with the same idempotency key, so the copy carries the same "
            "Message-ID and is recognisable as that email (mail systems that deduplicate "
            "on Message-ID drop it). It is not a second email.")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------


def _console(opts: Options) -> Any:
    from rich.console import Console

    return Console(stderr=opts.json)


async def _demo(opts: Options, workdir: Path, out: TextIO) -> int:
    from rich.live import Live

    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal() -> None:  # the first Ctrl-C ends the run cleanly; a second one, abruptly
        if interrupted.is_set():
            for sig in signals:
                loop.remove_signal_handler(sig)
        interrupted.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    console = _console(opts)
    verdicts = []
    for mode in (["naive"] if opts.naive else []) + ["oncely"]:
        if interrupted.is_set():
            break
        with Live(console=console, auto_refresh=False, transient=False) as live:
            demo = Demo(opts, mode, workdir, interrupted,
                        lambda run: live.update(render(run), refresh=True))
            verdict, run = await demo.run()
        verdicts.append(verdict)
        console.print()
        console.print(verdict_text(verdict), style="green" if verdict.ok else "red",
                      highlight=False, soft_wrap=True)
        if opts.json:
            print(json.dumps({**verdict.to_dict(), **_facts(opts, run)}), file=out, flush=True)
    if interrupted.is_set():
        return 130
    return 0 if verdicts and verdicts[-1].ok else 1


def _facts(opts: Options, run: Run) -> dict[str, Any]:
    return {"store": "postgres" if opts.store else "sqlite", "lb": opts.lb,
            "replicas": opts.replicas, "chaos": opts.chaos, "rate": opts.rate,
            "duration": opts.duration, "kills": run.kills, "pg_terminated": run.pg_terminated,
            "pids": run.replicas.pids if run.replicas else [],
            "retried_signups": run.traffic.retries if run.traffic else 0,
            "failed_signups": run.traffic.failed if run.traffic else 0}


def _check_example() -> None:
    if not (ROOT / "examples" / "welcome_emails" / "app.py").is_file():
        raise DemoError(f"oncely demo runs the example app in {ROOT / 'examples'}, which is "
                        "not there: run it from a source checkout of oncely")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    workdir = Path(tempfile.mkdtemp(prefix="oncely-demo-"))
    from . import logs

    log_file = open(workdir / "demo.log", "a")  # noqa: SIM115 - closed below
    logs.configure("INFO", stream=log_file)
    ok = False
    try:
        _check_example()
        code = asyncio.run(_demo(opts, workdir, sys.stdout))
        ok = code == 0
        return code
    except (DemoError, OncelyError) as exc:
        print(f"oncely demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C; the children were stopped on the way out
        return 130
    finally:
        logging.getLogger("oncely").handlers.clear()
        log_file.close()
        if opts.keep or not ok:
            print(f"oncely demo: logs and data kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
