"""The test set-up itself: on a machine without a running PostgreSQL, the suite starts a
throwaway cluster from the installed server binaries (it never skips)."""

from __future__ import annotations

import psycopg

import pg


def test_a_throwaway_cluster_starts_from_the_installed_server_binaries() -> None:
    url = pg._start_cluster()
    assert ":5432/" not in url  # its own port, not the machine's server
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SHOW max_connections").fetchone() == ("300",)
        conn.execute("CREATE DATABASE scratch")
