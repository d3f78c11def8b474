"""Finds a PostgreSQL server for the tests, or starts a throwaway one. Never skips.

Order: ``ONCELY_TEST_DATABASE_URL``; a server on 127.0.0.1:5432 (user postgres,
trust auth, as on the CI machine); a new cluster made with the installed server
binaries (``initdb`` + ``pg_ctl``) in a temporary directory, on a free port. If none of
these works, ``find_or_start`` raises with everything it tried.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile

import psycopg


def _works(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return found[0] if found else shutil.which(name)


def _start_cluster() -> str:
    initdb, pg_ctl = _server_bin("initdb"), _server_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("no initdb/pg_ctl found (install postgresql)")
    root = tempfile.mkdtemp(prefix="oncely-pg-")
    data = os.path.join(root, "data")
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*prefix, initdb, "-D", data, "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(
        [*prefix, pg_ctl, "-D", data, "-w", "-l", os.path.join(root, "log"), "-o",
         f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=300", "start"],
        check=True, capture_output=True,
    )
    atexit.register(
        lambda: subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"],
                               capture_output=True)
    )
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def find_or_start() -> str:
    """An admin URL (may create databases) for a server the tests can use."""
    tried = []
    env = os.environ.get("ONCELY_TEST_DATABASE_URL")
    if env:
        problem = _works(env)
        if problem is None:
            return env
        raise RuntimeError(f"ONCELY_TEST_DATABASE_URL does not connect: {problem}")
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    problem = _works(local)
    if problem is None:
        return local
    tried.append(f"{local}: {problem}")
    try:
        started = _start_cluster()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        tried.append(f"throwaway cluster: {exc} {detail.decode(errors='replace')[-500:]}")
        raise RuntimeError("no PostgreSQL for the tests; tried:\n  " + "\n  ".join(tried)) from exc
    problem = _works(started)
    if problem is not None:
        raise RuntimeError(f"started a throwaway cluster at {started} but it fails: {problem}")
    return started
