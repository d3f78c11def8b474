"""Jobs/s of ``Oncely.process()`` with a no-op handler, on each store, against plain
``FOR UPDATE SKIP LOCKED`` loops written here and run on the same PostgreSQL database.

    .venv/bin/python bench/process_rate.py [--jobs N] [--runs R] [--no-profile]

Every workload runs R times, interleaved round by round, each time on fresh jobs in a
fresh schema (PostgreSQL) or file (SQLite). A ratio is taken within a round, then the
median over rounds. Enqueueing is timed apart and never counted in a processing rate.
Results go to ``bench/results/process_rate.json``; ``bench/README.md`` says how to read
them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing
import os
import platform
import pstats
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql

from oncely import Oncely, queries

DATABASE = "oncely_bench"
RESULTS = Path(__file__).resolve().parent / "results" / "process_rate.json"
PROFILE_DUMP = RESULTS.with_suffix(".prof")
SETTINGS = ((100, 100), (500, 500))  # oncely (concurrency, batch_size) pairs to try
WHAT_IF = (500, 500)  # the setting also measured with plan_cache_mode=force_custom_plan
DRAINS = 3  # oncely-pg drains one table this often: the first is "fresh", the last "steady"
ONCELY_SQL = queries.load("postgres")
BARE = f"oncely-sql bare b{SETTINGS[0][1]}"  # oncely's SQL without oncely, see loop_oncely_sql
BUDGET = 3600.0  # process() returns when no job is due; the budget never ends a run

# The peer loops read the partial index oncely's claim reads.
DUE = "state IN ('pending', 'retrying') AND run_at <= now() ORDER BY priority, run_at, id"
PICK_ONE = f"SELECT id FROM oncely_jobs WHERE {DUE} LIMIT 1 FOR UPDATE SKIP LOCKED"
PICK_MANY = f"SELECT id FROM oncely_jobs WHERE {DUE} LIMIT 100 FOR UPDATE SKIP LOCKED"
DONE_ONE = "UPDATE oncely_jobs SET state = 'succeeded', finished_at = now() WHERE id = %s"
DONE_MANY = "UPDATE oncely_jobs SET state = 'succeeded', finished_at = now() WHERE id = ANY(%s)"
PICK_AND_DONE_ONE = (
    "UPDATE oncely_jobs SET state = 'succeeded', finished_at = now() "
    f"WHERE id = ({PICK_ONE}) RETURNING id"
)


async def noop() -> None:
    """The handler every oncely workload runs."""


def label(setting: tuple[int, int]) -> str:
    return f"c{setting[0]}/b{setting[1]}"


# -- the database ------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """The PostgreSQL server, reached through ``admin`` (a database we never write to)."""

    admin: str

    def conninfo(self, schema: str | None = None) -> str:
        info = psycopg.conninfo.make_conninfo(self.admin, dbname=DATABASE)
        if schema is None:
            return info
        return psycopg.conninfo.make_conninfo(info, options=f"-c search_path={schema}")

    def store_url(self, schema: str) -> str:
        """An oncely store URL for ``schema`` in the bench database, same login as admin."""
        params = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(self.admin).items()}
        params.pop("dbname", None)
        login = quote(params.pop("user", "postgres"), safe="")
        if "password" in params:
            login += ":" + quote(params.pop("password"), safe="")
        where = f"{params.pop('host', '127.0.0.1')}:{params.pop('port', '5432')}"
        query = urlencode({"schema": schema, **params})
        return f"postgresql://{login}@{where}/{DATABASE}?{query}"

    def _admin(self, statement: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(sql.SQL(statement).format(sql.Identifier(DATABASE)))

    def recreate_database(self) -> None:
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        self._admin("CREATE DATABASE {}")

    def drop_database(self) -> None:
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)")

    def execute(self, statement: sql.SQL | sql.Composed, schema: str | None = None) -> None:
        with psycopg.connect(self.conninfo(schema), autocommit=True) as conn:
            conn.execute(statement)

    def analyze(self, schema: str) -> None:
        """The same start for every timed PostgreSQL drain: fresh statistics, no dead rows."""
        self.execute(sql.SQL("VACUUM ANALYZE oncely_jobs"), schema)

    def drop_schema(self, schema: str) -> None:
        self.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

    @contextmanager
    def database_setting(self, name: str, value: str) -> Iterator[None]:
        """``name = value`` for connections opened inside the block."""
        db, key = sql.Identifier(DATABASE), sql.Identifier(name)
        self.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(db, key, sql.Literal(value)))
        try:
            yield
        finally:
            self.execute(sql.SQL("ALTER DATABASE {} RESET {}").format(db, key))


# -- oncely ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    jobs: int
    seconds: float
    enqueue_seconds: float

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def enqueue_rate(self) -> float:
        return self.jobs / self.enqueue_seconds


def new_app(url: str, setting: tuple[int, int]) -> Oncely:
    jobs = Oncely(url, concurrency=setting[0], batch_size=setting[1])
    jobs.task(noop)
    return jobs


def timed_enqueue(jobs: Oncely, n: int) -> float:
    args: list[dict[str, Any]] = [{} for _ in range(n)]
    started = time.perf_counter()
    jobs.enqueue_many(noop, args)
    return time.perf_counter() - started


def drain(jobs: Oncely, n: int, before: Callable[[], None] = lambda: None) -> Measurement:
    """Enqueue ``n`` jobs, run ``before``, then time one ``process()`` call."""
    enqueue_seconds = timed_enqueue(jobs, n)
    before()
    started = time.perf_counter()
    summary = jobs.process(budget=BUDGET)
    seconds = time.perf_counter() - started
    if summary.succeeded != n or summary.remaining != 0:
        raise RuntimeError(f"oncely processed {summary.succeeded} of {n} jobs")
    return Measurement(n, seconds, enqueue_seconds)


def oncely_pg(server: Server, schema: str, n: int, setting: tuple[int, int]
              ) -> tuple[Measurement, Measurement]:
    """(fresh, steady): the first and the last of DRAINS drains by one long-lived app."""
    jobs = new_app(server.store_url(schema), setting)
    try:
        drains = [drain(jobs, n, lambda: server.analyze(schema)) for _ in range(DRAINS)]
    finally:
        jobs.close()
    return drains[0], drains[-1]


def oncely_sqlite(path: Path, synchronous: str, n: int) -> Measurement:
    url = f"sqlite:///{path}" + ("" if synchronous == "full" else f"?synchronous={synchronous}")
    jobs = new_app(url, SETTINGS[0])
    try:
        return drain(jobs, n)
    finally:
        jobs.close()


# -- the peer loops ----------------------------------------------------------------------

Loop = Callable[[psycopg.Connection[Any]], int]


def loop_one_per_transaction(conn: psycopg.Connection[Any]) -> int:
    """BEGIN; SELECT one id ... FOR UPDATE SKIP LOCKED; UPDATE it; COMMIT; until none."""
    done = 0
    while True:
        with conn.transaction():
            row = conn.execute(PICK_ONE).fetchone()
            if row is None:
                return done
            conn.execute(DONE_ONE, row)
        done += 1


def loop_one_statement(conn: psycopg.Connection[Any]) -> int:
    """One autocommit UPDATE ... WHERE id = (SELECT ... SKIP LOCKED) per job."""
    conn.autocommit = True
    done = 0
    while conn.execute(PICK_AND_DONE_ONE).fetchone() is not None:
        done += 1
    return done


def loop_batch_100(conn: psycopg.Connection[Any]) -> int:
    """The per-transaction loop taking 100 jobs at a time: a SQL-only ceiling."""
    done = 0
    while True:
        with conn.transaction():
            ids = [r[0] for r in conn.execute(PICK_MANY).fetchall()]
            if not ids:
                return done
            conn.execute(DONE_MANY, (ids,))
        done += len(ids)


def loop_oncely_sql(conn: psycopg.Connection[Any]) -> int:
    """oncely's own job_claim and job_complete statements, batch as in SETTINGS[0], in a
    bare autocommit loop (tuple rows, no runner): the part of ``process()`` that is SQL."""
    conn.autocommit = True
    done = 0
    while True:
        now = datetime.now(UTC)
        cur = conn.execute(ONCELY_SQL["job_claim"], {
            "tasks": [noop.__name__], "queues": None, "limit": SETTINGS[0][1], "worker": "bare",
            "now": now, "lease_until": now + timedelta(seconds=30)})
        rows = cur.fetchall()
        if not rows:
            return done
        fence = [c.name for c in cur.description or ()].index("fence")
        k = len(rows)
        written = conn.execute(ONCELY_SQL["job_complete"], {
            "ids": [r[0] for r in rows], "fences": [r[fence] for r in rows],
            "states": ["succeeded"] * k, "results": [None] * k, "errors": [None] * k,
            "run_ats": [None] * k, "ats": [now] * k}).fetchall()
        done += len(written)


LOOPS: dict[str, Loop] = {
    "one_per_transaction": loop_one_per_transaction,
    "one_statement": loop_one_statement,
    "batch_100": loop_batch_100,
    "oncely_sql": loop_oncely_sql,
}


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo)
    conn.execute("SELECT 1")
    conn.rollback()
    return conn


def _loop_process(conninfo: str, loop: str, barrier: Barrier, results: Any) -> None:
    with _connect(conninfo) as conn:
        barrier.wait()
        started = time.monotonic()
        done = LOOPS[loop](conn)
        results.put((done, started, time.monotonic()))


def run_loop(conninfo: str, loop: str, processes: int) -> tuple[int, float]:
    """Drain the table with ``processes`` copies of a loop: (jobs done, seconds). The clock
    starts once all are connected; CLOCK_MONOTONIC is system-wide, so starts compare."""
    if processes == 1:
        with _connect(conninfo) as conn:
            started = time.perf_counter()
            done = LOOPS[loop](conn)
            return done, time.perf_counter() - started
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_loop_process, args=(conninfo, loop, barrier, results))
               for _ in range(processes)]
    for w in workers:
        w.start()
    reports = [results.get(timeout=BUDGET) for _ in workers]
    for w in workers:
        w.join()
    return sum(r[0] for r in reports), max(r[2] for r in reports) - min(r[1] for r in reports)


def plain(server: Server, schema: str, n: int, loop: str, processes: int) -> Measurement:
    """Oncely's own table, filled by oncely's enqueue_many, drained by a peer loop."""
    jobs = new_app(server.store_url(schema), SETTINGS[0])
    try:
        enqueue_seconds = timed_enqueue(jobs, n)
    finally:
        jobs.close()
    server.analyze(schema)
    done, seconds = run_loop(server.conninfo(schema), loop, processes)
    if done != n:
        raise RuntimeError(f"loop {loop} x{processes} processed {done} of {n} jobs")
    return Measurement(n, seconds, enqueue_seconds)


# -- workloads and rounds ----------------------------------------------------------------

Measure = Callable[[str, int], tuple[Measurement, ...]]  # (tag, jobs) -> one per row


@dataclass(frozen=True)
class Row:
    name: str
    store: str
    settings: str


@dataclass(frozen=True)
class Workload:
    rows: tuple[Row, ...]
    measure: Measure


def in_schema(server: Server, measure: Measure) -> Measure:
    """Run ``measure`` in schema ``tag``, dropped afterwards."""
    def run(tag: str, n: int) -> tuple[Measurement, ...]:
        try:
            return measure(tag, n)
        finally:
            server.drop_schema(tag)
    return run


def oncely_pg_workload(server: Server, setting: tuple[int, int]) -> Workload:
    what = f"concurrency={setting[0]} batch_size={setting[1]}"
    return Workload(
        (Row(f"oncely-pg {label(setting)} fresh", "postgres",
             f"{what}; 1st drain of a new table"),
         Row(f"oncely-pg {label(setting)} steady", "postgres",
             f"{what}; drain {DRAINS} of that table, same app")),
        in_schema(server, lambda s, n: oncely_pg(server, s, n, setting)),
    )


def custom_plans_workload(server: Server, setting: tuple[int, int]) -> Workload:
    def measure(schema: str, n: int) -> tuple[Measurement, ...]:
        with server.database_setting("plan_cache_mode", "force_custom_plan"):
            return oncely_pg(server, schema, n, setting)[1:]

    return Workload((Row(f"oncely-pg {label(setting)} steady+cp", "postgres",
                         "what-if: steady with plan_cache_mode=force_custom_plan"),),
                    in_schema(server, measure))


def sqlite_workload(scratch: Path, sync: str) -> Workload:
    c, b = SETTINGS[0]
    return Workload(
        (Row(f"oncely-sqlite-{sync}", "sqlite",
             f"synchronous={sync} concurrency={c} batch_size={b}; new file"),),
        lambda tag, n: (oncely_sqlite(scratch / f"{tag}.db", sync, n),),
    )


def peer_workload(server: Server, name: str, loop: str, processes: int, what: str) -> Workload:
    return Workload((Row(name, "postgres", what),),
                    in_schema(server, lambda s, n: (plain(server, s, n, loop, processes),)))


def workloads(server: Server, scratch: Path) -> list[Workload]:
    return [
        *(oncely_pg_workload(server, setting) for setting in SETTINGS),
        custom_plans_workload(server, WHAT_IF),
        sqlite_workload(scratch, "full"),
        sqlite_workload(scratch, "normal"),
        peer_workload(server, "plain-1job-tx x1", "one_per_transaction", 1,
                      "BEGIN; SELECT..LIMIT 1 FOR UPDATE SKIP LOCKED; UPDATE; COMMIT"),
        peer_workload(server, "plain-1job-tx x2", "one_per_transaction", 2,
                      "the same loop in 2 processes"),
        peer_workload(server, "plain-1job-stmt x1", "one_statement", 1,
                      "autocommit UPDATE..WHERE id = (SELECT..LIMIT 1 FOR UPDATE SKIP LOCKED)"),
        peer_workload(server, "plain-batch100 x1", "batch_100", 1,
                      "the 1job-tx loop with LIMIT 100 and = ANY: SQL-only ceiling"),
        peer_workload(server, BARE, "oncely_sql", 1, f"oncely's job_claim + job_complete SQL, "
                      f"limit {SETTINGS[0][1]}, bare loop, new table"),
    ]


Results = dict[str, list[Measurement]]  # row name -> one measurement per round


def run_rounds(loads: list[Workload], n: int, runs: int) -> Results:
    results: Results = {row.name: [] for w in loads for row in w.rows}
    for r in range(runs):
        for i, w in enumerate(loads):
            for row, m in zip(w.rows, w.measure(f"r{r}_w{i}", n), strict=True):
                results[row.name].append(m)
                print(f"  round {r + 1}/{runs}  {row.name:<28} {m.rate:>8.0f} jobs/s "
                      f"({m.seconds:.2f} s)", flush=True)
    return results


# -- summary -----------------------------------------------------------------------------


def paired_ratio(a: list[Measurement], b: list[Measurement]) -> float:
    """Median over rounds of a's rate / b's rate measured in the same round."""
    return statistics.median(x.rate / y.rate for x, y in zip(a, b, strict=True))


def median_rate(ms: list[Measurement]) -> float:
    return statistics.median(m.rate for m in ms)


def best_setting(results: Results) -> tuple[int, int]:
    """The oncely-pg setting with the best steady median."""
    return max(SETTINGS, key=lambda s: median_rate(results[f"oncely-pg {label(s)} steady"]))


def ratios(results: Results, best: tuple[int, int]) -> dict[str, float]:
    fresh = results[f"oncely-pg {label(best)} fresh"]
    steady = results[f"oncely-pg {label(best)} steady"]
    what_if = f"oncely-pg {label(WHAT_IF)} steady"
    one_job = results["plain-1job-tx x1"]
    return {
        "oncely-pg steady / plain-1job-tx x1  (requirement >= 5)": paired_ratio(steady, one_job),
        "oncely-pg fresh / plain-1job-tx x1": paired_ratio(fresh, one_job),
        "oncely-pg steady / plain-1job-tx x2": paired_ratio(steady, results["plain-1job-tx x2"]),
        "oncely-pg steady / plain-1job-stmt x1": paired_ratio(
            steady, results["plain-1job-stmt x1"]),
        "oncely-pg steady / plain-batch100 x1 (ceiling)": paired_ratio(
            steady, results["plain-batch100 x1"]),
        f"oncely-pg {label(SETTINGS[0])} fresh / {BARE}": paired_ratio(
            results[f"oncely-pg {label(SETTINGS[0])} fresh"], results[BARE]),
        f"{what_if}+cp / {what_if}": paired_ratio(results[f"{what_if}+cp"], results[what_if]),
        "oncely-sqlite-full / oncely-pg fresh": paired_ratio(results["oncely-sqlite-full"], fresh),
        "oncely-sqlite-normal / oncely-pg fresh": paired_ratio(
            results["oncely-sqlite-normal"], fresh),
        "oncely-sqlite-normal / oncely-pg steady": paired_ratio(
            results["oncely-sqlite-normal"], steady),
    }


def print_table(loads: list[Workload], results: Results) -> None:
    print(f"\n{'workload':<28} {'jobs/s med':>10} {'min':>7} {'max':>7} {'enq/s med':>9}  "
          "settings")
    for row in (row for w in loads for row in w.rows):
        ms = results[row.name]
        rates = [m.rate for m in ms]
        enqueue = statistics.median(m.enqueue_rate for m in ms)
        print(f"{row.name:<28} {median_rate(ms):>10.0f} {min(rates):>7.0f} {max(rates):>7.0f} "
              f"{enqueue:>9.0f}  {row.settings}")


def machine(server: Server) -> dict[str, Any]:
    with psycopg.connect(server.conninfo()) as conn:
        row = conn.execute("SELECT version(), current_setting('synchronous_commit'), "
                           "current_setting('fsync'), current_setting('shared_buffers')"
                           ).fetchone()
    assert row is not None
    return {
        "nproc": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
        "postgres": row[0], "synchronous_commit": row[1], "fsync": row[2],
        "shared_buffers": row[3], "psycopg": psycopg.__version__,
        "platform": platform.platform(), "oncely_code": _code_version(), **latencies(server),
    }


def latencies(server: Server, samples: int = 300) -> dict[str, float]:
    """Median ms of a read round trip and of a one-row autocommit write (its WAL flush
    included): what a one-job-per-transaction loop pays per job."""
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE latency_probe (x int)")
        try:
            read = _median_ms(lambda: conn.execute("SELECT 1"), samples)
            write = _median_ms(lambda: conn.execute("INSERT INTO latency_probe VALUES (1)"),
                               samples)
        finally:
            conn.execute("DROP TABLE latency_probe")
    return {"round_trip_ms": read, "write_commit_ms": write}


def _median_ms(call: Callable[[], object], samples: int) -> float:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def _code_version() -> str:
    """The commit measured, and whether src/ differed from it (read-only git calls)."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), *args],
                              capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return f"{commit} + uncommitted changes in src/" if dirty else commit


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")


# -- profile -----------------------------------------------------------------------------

# Where cProfile's own time (tottime) lands; the first match wins.
CATEGORIES = (
    ("idle: waiting on PostgreSQL", ("select.epoll",)),
    ("oncely worker.py", ("oncely/worker.py",)),
    ("oncely postgres_store.py", ("oncely/postgres_store.py",)),
    ("oncely, other modules", ("oncely/",)),
    ("psycopg, psycopg_pool", ("psycopg",)),
    ("asyncio", ("asyncio/",)),
    ("json", ("json/", "_json")),
    ("logging", ("logging/",)),
)


def _category(filename: str, function: str) -> str:
    where = f"{filename}:{function}"
    return next((name for name, marks in CATEGORIES if any(m in where for m in marks)),
                "other (builtins, C, stdlib)")


@dataclass
class StoreCalls:
    """Seconds spent awaiting, and calls of, each wrapped store method."""

    seconds: dict[str, float]
    calls: dict[str, int]

    def clear(self) -> None:
        self.seconds.clear()
        self.calls.clear()


async def _time_store_calls(jobs: Oncely) -> StoreCalls:
    """Wrap the store's claim, complete and bookkeeping calls on this instance."""
    store = await jobs.astore()
    spent = StoreCalls({}, {})

    def wrap(name: str) -> None:
        inner: Callable[..., Awaitable[Any]] = getattr(store, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                spent.seconds[name] = spent.seconds.get(name, 0.0) + time.perf_counter() - started
                spent.calls[name] = spent.calls.get(name, 0) + 1

        setattr(store, name, timed)

    for name in ("job_rescue", "job_claim", "job_complete", "job_count_due"):
        wrap(name)
    return spent


async def _adrain(jobs: Oncely, server: Server, schema: str, n: int,
                  profiler: cProfile.Profile | None = None) -> float:
    """``drain`` on the running loop; ``profiler`` sees only the ``aprocess()`` call."""
    await jobs.aenqueue_many(noop, [{} for _ in range(n)])
    server.analyze(schema)
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        await jobs.aprocess(budget=BUDGET)
    finally:
        if profiler is not None:
            profiler.disable()
    return time.perf_counter() - started


async def _profile(server: Server, schema: str, n: int, setting: tuple[int, int]
                   ) -> dict[str, Any]:
    """Steady state, as measured above: DRAINS - 1 warm-up drains, then one drain timed
    per store call, then one under cProfile. Runs on this thread's loop so that cProfile
    sees the runner (``process()`` would run it on oncely's loop thread)."""
    jobs = new_app(server.store_url(schema), setting)
    try:
        spent = await _time_store_calls(jobs)
        for _ in range(DRAINS - 1):
            await _adrain(jobs, server, schema, n)
        spent.clear()
        wall = await _adrain(jobs, server, schema, n)
        split = _split(wall, spent, n)
        profiler = cProfile.Profile()
        await _adrain(jobs, server, schema, n, profiler)
    finally:
        await jobs.aclose()
        jobs.close()
    return {"setting": label(setting), "jobs": n, **split,
            **_digest(profiler, n)}


def _split(wall: float, spent: StoreCalls, n: int) -> dict[str, Any]:
    """µs per job inside the awaited store calls, and in the runner outside them."""
    per_job = {f"{k} (awaited)": v / n * 1e6 for k, v in spent.seconds.items()}
    per_job["runner, outside store calls"] = (wall - sum(spent.seconds.values())) / n * 1e6
    return {"jobs_per_s_no_profiler": n / wall, "us_per_job_no_profiler": per_job,
            "store_calls": dict(spent.calls)}


def _digest(profiler: cProfile.Profile, n: int) -> dict[str, Any]:
    PROFILE_DUMP.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(PROFILE_DUMP)
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    by_category: dict[str, float] = {}
    for (filename, _, function), (_, _, tt, _, _) in stats.items():
        key = _category(filename, function)
        by_category[key] = by_category.get(key, 0.0) + tt
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:25]
    oncely = sorted(((k, v) for k, v in stats.items() if "oncely/" in k[0]),
                    key=lambda kv: kv[1][3], reverse=True)[:15]
    return {
        "us_per_job_by_category_profiled": {
            k: v / n * 1e6 for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "top_own_time_profiled": [
            {"function": _function_name(k), "calls": v[1], "us_per_job": v[2] / n * 1e6}
            for k, v in top],
        "oncely_cumulative_profiled": [
            {"function": _function_name(k), "calls": v[1], "us_per_job": v[3] / n * 1e6}
            for k, v in oncely],
        "dump": str(PROFILE_DUMP),
    }


def _function_name(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    return f"{'/'.join(Path(filename).parts[-2:])}:{line}({function})"


def print_profile(profile: dict[str, Any]) -> None:
    print(f"\nprofile: oncely-pg {profile['setting']} steady, {profile['jobs']} jobs, "
          f"{profile['jobs_per_s_no_profiler']:.0f} jobs/s without the profiler")
    print("  µs per job without the profiler, by what the runner awaited:")
    for k, v in profile["us_per_job_no_profiler"].items():
        print(f"    {v:7.1f}  {k}")
    print(f"  store calls: {profile['store_calls']}")
    print("  µs per job under cProfile (Python parts inflated), own time by category:")
    for k, v in profile["us_per_job_by_category_profiled"].items():
        print(f"    {v:7.1f}  {k}")
    print("  top own time under cProfile (µs per job, calls):")
    for f in profile["top_own_time_profiled"][:12]:
        print(f"    {f['us_per_job']:7.1f}  {f['calls']:>7}  {f['function']}")
    print("  oncely functions, cumulative under cProfile (µs per job, calls):")
    for f in profile["oncely_cumulative_profiled"][:10]:
        print(f"    {f['us_per_job']:7.1f}  {f['calls']:>7}  {f['function']}")


# -- main --------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=10000, help="jobs per drain (default 10000)")
    p.add_argument("--runs", type=int, default=3, help="rounds of every workload (default 3)")
    p.add_argument("--admin-url", default=os.environ.get(
        "ONCELY_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help=f"a login that may create and drop the database {DATABASE!r} "
             "(env ONCELY_BENCH_ADMIN_URL)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile pass")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    server = Server(args.admin_url)
    server.recreate_database()
    try:
        notes = machine(server)
        print(f"{notes['nproc']} cores ({notes['cpu']}), Python {notes['python']}, "
              f"{notes['postgres'].split(' on ')[0]}, fsync={notes['fsync']}, "
              f"synchronous_commit={notes['synchronous_commit']}, oncely {notes['oncely_code']}\n"
              f"round trip {notes['round_trip_ms']:.3f} ms, one-row write commit "
              f"{notes['write_commit_ms']:.3f} ms (medians)\n"
              f"{args.jobs} jobs per drain, {args.runs} rounds")
        with tempfile.TemporaryDirectory(prefix="oncely-bench-") as scratch:
            loads = workloads(server, Path(scratch))
            results = run_rounds(loads, args.jobs, args.runs)
        best = best_setting(results)
        print_table(loads, results)
        found = ratios(results, best)
        print(f"\nratios, median of per-round ratios (oncely-pg = {label(best)}, "
              "the best steady setting):")
        for k, v in found.items():
            print(f"  {v:6.2f}  {k}")
        profile = None
        if not args.no_profile:
            profile = asyncio.run(_profile(server, "profile", args.jobs, best))
            print_profile(profile)
    finally:
        server.drop_database()
    write_json(args, notes, loads, results, best, found, profile)


def write_json(args: argparse.Namespace, notes: dict[str, Any], loads: list[Workload],
               results: Results, best: tuple[int, int], found: dict[str, float],
               profile: dict[str, Any] | None) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": notes, "jobs_per_drain": args.jobs, "rounds": args.runs,
        "best_oncely_pg_setting": label(best), "ratios": found, "profile": profile,
        "workloads": [{
            "name": row.name, "store": row.store, "settings": row.settings,
            "median_jobs_per_s": median_rate(results[row.name]),
            "jobs_per_s": [m.rate for m in results[row.name]],
            "median_enqueue_jobs_per_s": statistics.median(
                m.enqueue_rate for m in results[row.name]),
        } for w in loads for row in w.rows],
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
