"""SQLite-only behaviour of the store: opening a file another process holds, and upgrading
an existing database (migration 0006 rebuilds the jobs table, since a CHECK cannot be
altered in SQLite, and must keep every row, every index and the id counter)."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from oncely import Oncely, queries


async def noop() -> None:
    pass


def test_opening_waits_while_another_process_holds_the_file_in_rollback_mode(
    tmp_path: Path,
) -> None:
    # Replicas starting together on a new file: one still writes to it in rollback mode
    # when another switches it to WAL, which SQLite refuses at once, busy timeout or not
    # (waiting could deadlock the two).
    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")  # a write lock, rollback journal mode
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # what SQLite does
        sqlite3.connect(path, timeout=5).execute("PRAGMA journal_mode=WAL")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        with Oncely(f"sqlite:///{path}?busy_timeout=5", environ={}) as app:
            known = len(queries.migrations("sqlite"))
            assert app.migrate() == (known, known)
    finally:
        release.join()
        holder.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_the_table_rebuild_keeps_rows_indexes_and_the_id_counter(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(queries.load("sqlite")["schema_create"])
    for migration in queries.migrations("sqlite")[:5]:  # a database from before 0006
        for statement in migration.statements:
            conn.execute(statement)
        conn.execute("INSERT INTO oncely_schema VALUES (?, ?, '2026-01-01')",
                     (migration.version, migration.name))
    now = datetime.now(UTC).isoformat()  # within the key retention window
    insert = ("INSERT INTO oncely_jobs (task, queue, args, key, key_hold, state, run_at, "
              "created_at, max_attempts, finished_at) "
              "VALUES (?, 'default', ?, ?, ?, ?, ?, ?, 3, ?)")
    conn.execute(insert, ("noop", '{"n": 1}', "k1", "k1", "succeeded", now, now, now))
    conn.execute(insert, ("noop", '{"n": 2}', None, None, "pending", now, now, None))
    conn.execute(insert, ("noop", '{"n": 3}', None, None, "pending", now, now, None))
    conn.execute("DELETE FROM oncely_jobs WHERE id = 3")  # the counter stays at 3
    before = conn.execute("SELECT * FROM oncely_jobs ORDER BY id").fetchall()
    conn.close()

    with Oncely(f"sqlite:///{path}", environ={}) as app:
        app.task(noop)
        known = len(queries.migrations("sqlite"))
        assert known >= 6 and app.migrate() == (known, known)
        new = app.enqueue(noop)
        assert new.id == 4  # never 3 again: AUTOINCREMENT's counter survived the rebuild
        again = app.enqueue(noop, key="k1")
        assert again.id == 1  # the key index still holds the succeeded job's key

    conn = sqlite3.connect(path)
    try:
        after = conn.execute("SELECT * FROM oncely_jobs WHERE id < 4 ORDER BY id").fetchall()
        assert after == before
        indexes = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'oncely_jobs' "
            "AND name LIKE 'oncely_%'")}
        assert indexes == {"oncely_jobs_due", "oncely_jobs_leases", "oncely_jobs_key_hold",
                           "oncely_jobs_failed", "oncely_jobs_finished"}
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE oncely_jobs SET state = 'sleeping' WHERE id = 2")
    finally:
        conn.close()
