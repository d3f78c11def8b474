"""The benchmark harness of issue 7: oncely against its peers, on one machine, in one run.

    .venv/bin/python bench/run.py [--sizes 1000,10000,100000] [--runs 3] [--top-runs 3]
                                  [--scale] [--soak SECONDS] [--admin-url URL]
    make bench-all

Installs the peers (Procrastinate, PgQueuer) from PyPI into their own venvs under
``bench/.peers/`` (git-ignored), runs every workload round by round (each a subprocess
that prints one JSON line, see ``bench/peers/``), and writes ``bench/RESULTS.md``, the
plots ``bench/*.png`` and the raw figures ``bench/results/run.json``. It creates and
drops its own databases (``oncely_bench*``) and touches no other. ``bench/README.md``
says how to read the results.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from process_rate import Server, machine
from psycopg import sql

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
VENVS = BENCH / ".peers"
RESULTS_MD = BENCH / "RESULTS.md"
RAW = BENCH / "results" / "run.json"
MAIN_PY = sys.executable
PINS = {  # each peer's venv: what pip installs there
    "procrastinate": ["procrastinate==3.10.0", "psycopg[binary]==3.3.9"],
    "pgqueuer": ["pgqueuer==1.6.0", "asyncpg==0.32.0"],
}
CAPPED = 10_000  # the slow loops (Procrastinate, one job per round trip) stop at this N
TOKEN = "bench-token-0123456789abcdef"
HTTP_WORKERS = 3
ONCELY = (200, 100)  # oncely's (concurrency, batch_size) in the rate workloads


def peer_python(name: str) -> str:
    """The peer's venv python, created and filled from PyPI on first use."""
    python = VENVS / name / "bin" / "python"
    if not python.exists():
        print(f"installing {name} into {python.parent.parent} ...", flush=True)
        venv.create(VENVS / name, with_pip=True)
    check = subprocess.run([str(python), "-m", "pip", "show", "-q", *(
        p.split("==")[0].split("[")[0] for p in PINS[name])], capture_output=True, check=False)
    if check.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS[name]], check=True)
    return str(python)


def child(python: str, script: str, *args: object, cwd: Path = PEERS) -> dict[str, Any]:
    """Run one peer script; its last stdout line is its JSON report."""
    env = {**os.environ, "PYTHONPATH": str(PEERS)}
    done = subprocess.run([python, str(PEERS / script), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{script} {args} failed:\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


# -- databases -----------------------------------------------------------------------


@dataclass
class Databases:
    server: Server

    def conninfo(self, db: str) -> str:
        return psycopg.conninfo.make_conninfo(self.server.admin, dbname=db)

    def url(self, db: str) -> str:
        info = psycopg.conninfo.conninfo_to_dict(self.conninfo(db))
        return (f"postgresql://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}:"
                f"{info.get('port', 5432)}/{db}")

    def recreate(self, db: str) -> None:
        with psycopg.connect(self.server.admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(db)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))

    def drop(self, db: str) -> None:
        with psycopg.connect(self.server.admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(db)))


def bench_app(url: str) -> Any:
    """An oncely app on ``url`` that knows the benchmark's tasks (see peers/oncely_app.py)."""
    from oncely import Oncely

    async def noop() -> None:
        pass

    jobs = Oncely(url)
    jobs.task(noop)
    return jobs


# -- the HTTP trigger path -----------------------------------------------------------


class HttpServer:
    """``oncely serve --workers 3`` on a free loopback port, bearer-token auth on."""

    def __init__(self, store_url: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "ONCELY_TOKENS": TOKEN, "PYTHONPATH": str(PEERS),
               "ONCELY_CONCURRENCY": str(ONCELY[0]), "ONCELY_BATCH_SIZE": str(ONCELY[1])}
        self.proc = subprocess.Popen(
            [MAIN_PY, "-m", "oncely", "serve", "--app", "oncely_app:jobs", "--store", store_url,
             "--workers", str(HTTP_WORKERS), "--port", str(self.port), "--log-level", "WARNING"],
            cwd=PEERS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("oncely serve did not come up")

    def request(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request(method, path, headers={"Authorization": f"Bearer {TOKEN}",
                                                "Content-Length": "0"})
            response = conn.getresponse()
            body = response.read()
            return response.status, json.loads(body) if body else {}
        finally:
            conn.close()

    def trigger(self) -> dict[str, Any]:
        status, body = self.request("POST", "/jobs/process?budget=60")
        if status != 200:
            raise RuntimeError(f"trigger answered {status}: {body}")
        return body

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True, check=False).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def vacuum_analyze(url: str) -> None:
    """Fresh statistics for oncely's tables at ``url`` (…?schema=s), as every drain gets:
    autovacuum may be off on a benchmark server (it is on this one)."""
    base, _, schema = url.partition("?schema=")
    with psycopg.connect(base, options=f"-c search_path={schema}", autocommit=True) as conn:
        for table in ("oncely_jobs", "oncely_triggers"):
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))


def http_drain(server: HttpServer, url: str, n: int) -> dict[str, Any]:
    """Enqueue n jobs (library), then 3 concurrent triggers repeated until none is due."""
    sys.path.insert(0, str(PEERS))
    from common import measured

    jobs = bench_app(url)
    try:
        started = time.perf_counter()
        jobs.enqueue_many("noop", [{} for _ in range(n)])
        report: dict[str, Any] = {"jobs": n, "enqueue_seconds": time.perf_counter() - started}
    finally:
        jobs.close()
    vacuum_analyze(url)
    done = [0]

    def loop() -> None:
        while True:
            summary = server.trigger()
            done[0] += summary["succeeded"]
            if summary["claimed"] == 0:
                return

    with measured(report), concurrent.futures.ThreadPoolExecutor(HTTP_WORKERS) as pool:
        for f in [pool.submit(loop) for _ in range(HTTP_WORKERS)]:
            f.result()
    if done[0] != n:
        raise RuntimeError(f"HTTP triggers ran {done[0]} of {n} jobs")
    return report


def latencies(server: HttpServer, url: str, samples: int) -> dict[str, list[float]]:
    """ms: an empty trigger (its fixed overhead), GET /healthz (HTTP alone), and
    trigger-to-done for one job enqueued into an idle system, by HTTP and by library."""
    out: dict[str, list[float]] = {"trigger_empty": [], "healthz": [], "http_enqueue_to_done": [],
                                   "lib_enqueue_to_done": [], "http_trigger_to_done": []}

    def ms(call: Callable[[], object]) -> float:
        started = time.perf_counter()
        call()
        return (time.perf_counter() - started) * 1e3

    vacuum_analyze(url)
    jobs = bench_app(url)
    try:
        jobs.process(budget=5)  # open the store, warm up
        for _ in range(20):
            server.trigger()
        for _ in range(samples):
            out["healthz"].append(ms(lambda: server.request("GET", "/healthz")))
            out["trigger_empty"].append(ms(server.trigger))
            started = time.perf_counter()
            jobs.enqueue("noop")
            out["http_trigger_to_done"].append(ms(server.trigger))
            out["http_enqueue_to_done"].append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            jobs.enqueue("noop")
            summary = jobs.process(budget=5)
            out["lib_enqueue_to_done"].append((time.perf_counter() - started) * 1e3)
            assert summary.succeeded == 1, summary
    finally:
        jobs.close()
    return out


# -- workloads -----------------------------------------------------------------------


@dataclass
class Context:
    dbs: Databases
    scratch: Path
    http: HttpServer | None = None
    http_url: str = ""


@dataclass(frozen=True)
class Workload:
    name: str
    store: str
    settings: str
    run: Callable[[Context, int, str], dict[str, Any]]
    max_n: int | None = None


def _oncely_pg(task: str = "noop") -> Callable[[Context, int, str], dict[str, Any]]:
    def run(ctx: Context, n: int, tag: str) -> dict[str, Any]:
        url = f"{ctx.dbs.url('oncely_bench')}?schema={tag}"
        try:
            return child(MAIN_PY, "oncely_peer.py", url, n, *ONCELY, task)
        finally:
            ctx.dbs.server.drop_schema(tag)
    return run


def _oncely_sqlite(task: str = "noop") -> Callable[[Context, int, str], dict[str, Any]]:
    def run(ctx: Context, n: int, tag: str) -> dict[str, Any]:
        path = ctx.scratch / f"{tag}.db"
        try:
            return child(MAIN_PY, "oncely_peer.py", f"sqlite:///{path}", n, *ONCELY, task)
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    return run


def _http(ctx: Context, n: int, tag: str) -> dict[str, Any]:
    assert ctx.http is not None
    return http_drain(ctx.http, ctx.http_url, n)


def _pgqueuer(batch: int) -> Callable[[Context, int, str], dict[str, Any]]:
    def run(ctx: Context, n: int, tag: str) -> dict[str, Any]:
        return child(peer_python("pgqueuer"), "pgqueuer_peer.py",
                     ctx.dbs.url("oncely_bench_pgqueuer"), n, batch)
    return run


def _procrastinate(ctx: Context, n: int, tag: str) -> dict[str, Any]:
    return child(peer_python("procrastinate"), "procrastinate_peer.py",
                 ctx.dbs.conninfo("oncely_bench_procrastinate"), n, 10)


def _plain(batch: int, *mode: str) -> Callable[[Context, int, str], dict[str, Any]]:
    def run(ctx: Context, n: int, tag: str) -> dict[str, Any]:
        return child(MAIN_PY, "plain.py", ctx.dbs.conninfo("oncely_bench_plain"), n, batch,
                     *mode)
    return run


C, B = ONCELY
WORKLOADS = [
    Workload("oncely-pg", "postgres", f"process(), concurrency={C} batch_size={B}", _oncely_pg()),
    Workload("oncely-sqlite", "sqlite", f"process(), concurrency={C} batch_size={B}, "
             "synchronous=full (default)", _oncely_sqlite()),
    Workload("oncely-http-pg", "postgres", f"{HTTP_WORKERS} `oncely serve` processes, "
             f"{HTTP_WORKERS} concurrent POST /jobs/process loops, bearer auth", _http),
    Workload("pgqueuer-b10", "postgres", "PgQueuer 1.6.0, asyncpg, batch_size=10 (default)",
             _pgqueuer(10)),
    Workload("pgqueuer-b100", "postgres", "PgQueuer 1.6.0, asyncpg, batch_size=100",
             _pgqueuer(100)),
    Workload("procrastinate-c10", "postgres", "Procrastinate 3.10.0, psycopg, concurrency=10, "
             "listen_notify=False, wait=False", _procrastinate, CAPPED),
    Workload("plain-b1", "postgres", "SKIP LOCKED loop, 1 job per transaction", _plain(1),
             CAPPED),
    Workload("plain-b100", "postgres", "SKIP LOCKED loop, 100 jobs per transaction",
             _plain(100)),
    Workload("plain-lease-b100", "postgres", "SKIP LOCKED loop, 100 jobs per claim, with "
             "oncely's guarantee: the claim commits a lease and a fence, then a fenced "
             "completion (two writes per job)", _plain(100, "lease")),
    Workload("oncely-pg-sleep10ms", "postgres", f"10 ms asyncio.sleep jobs, c{C}/b{B}",
             _oncely_pg("sleep")),
    Workload("oncely-sqlite-sleep10ms", "sqlite", f"10 ms asyncio.sleep jobs, c{C}/b{B}",
             _oncely_sqlite("sleep")),
]
PEER_DBS = ("oncely_bench_pgqueuer", "oncely_bench_procrastinate", "oncely_bench_plain")


# -- rounds --------------------------------------------------------------------------


@dataclass
class Results:
    rates: dict[int, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)
    scale: dict[str, Any] | None = None
    soak: dict[str, Any] | None = None


def rounds(ctx: Context, sizes: list[int], runs: int, top_runs: int) -> Results:
    results = Results()
    for n in sizes:
        results.rates[n] = {w.name: [] for w in WORKLOADS if w.max_n is None or n <= w.max_n}
        for r in range(top_runs if n > CAPPED else runs):
            for i, w in enumerate(WORKLOADS):
                if w.name not in results.rates[n]:
                    continue
                report = w.run(ctx, n, f"n{n}_r{r}_w{i}")
                results.rates[n][w.name].append(report)
                print(f"  N={n:>6} round {r + 1}  {w.name:<24} "
                      f"{report['jobs'] / report['seconds']:>8.0f} jobs/s", flush=True)
    return results


# -- scale and soak ------------------------------------------------------------------


def scale_run(ctx: Context, finished: int, pending: int) -> dict[str, Any]:
    """process() rate on an empty table vs one holding ``finished`` succeeded jobs."""
    out: dict[str, Any] = {"finished": finished, "pending": pending}
    for label, rows in (("empty", 0), ("full", finished)):
        tag = f"scale_{label}"
        url = f"{ctx.dbs.url('oncely_bench')}?schema={tag}"
        jobs = bench_app(url)
        jobs.process(budget=1)  # creates the schema
        jobs.close()
        with psycopg.connect(ctx.dbs.server.conninfo(tag), autocommit=True) as conn:
            if rows:
                conn.execute(
                    "INSERT INTO oncely_jobs (task, queue, args, state, run_at, created_at, "
                    "max_attempts, attempt, fence, finished_at) SELECT 'noop', 'default', '{}', "
                    "'succeeded', now(), now(), 3, 1, 1, now() FROM generate_series(1, %s)",
                    (rows,))
            conn.execute("VACUUM ANALYZE oncely_jobs")
        try:
            out[label] = child(MAIN_PY, "oncely_peer.py", url, pending, *ONCELY)
        finally:
            ctx.dbs.server.drop_schema(tag)
        print(f"  scale {label}: {out[label]['jobs'] / out[label]['seconds']:.0f} jobs/s",
              flush=True)
    out["ratio"] = ((out["full"]["jobs"] / out["full"]["seconds"])
                    / (out["empty"]["jobs"] / out["empty"]["seconds"]))
    return out


def soak_run(ctx: Context, seconds: float) -> dict[str, Any]:
    """RSS of each server process every 10 s while 1000 jobs are enqueued and
    triggered through, again and again, for ``seconds``."""
    assert ctx.http is not None
    jobs = bench_app(ctx.http_url)
    samples: list[tuple[float, list[int]]] = []
    started = time.monotonic()
    next_sample = started
    done = 0
    try:
        while time.monotonic() - started < seconds:
            jobs.enqueue_many("noop", [{} for _ in range(1000)])
            while ctx.http.trigger()["claimed"]:
                pass
            done += 1000
            if time.monotonic() >= next_sample:
                rss = [_rss_kib(p) for p in ctx.http.worker_pids()]
                samples.append((time.monotonic() - started, rss))
                next_sample += 10
    finally:
        jobs.close()
    return {"seconds": seconds, "jobs": done, "samples": samples}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- report --------------------------------------------------------------------------


def write_report(results: Results, notes: dict[str, Any], args: argparse.Namespace,
                 wall: float) -> None:
    from report import plots, render

    RAW.parent.mkdir(parents=True, exist_ok=True)
    raw = {"machine": notes, "args": vars(args), "wall_seconds": wall,
           "rates": results.rates, "latency": results.latency, "scale": results.scale,
           "soak": results.soak, "workloads": [
               {"name": w.name, "store": w.store, "settings": w.settings, "max_n": w.max_n}
               for w in WORKLOADS]}
    RAW.write_text(json.dumps(raw, indent=1, default=str) + "\n")
    raw = json.loads(RAW.read_text())  # N keys as strings, as --report-only reads them
    plots(raw, BENCH)
    RESULTS_MD.write_text(render(raw))
    print(f"wrote {RESULTS_MD}, {RAW} and the plots in {BENCH}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="N values (jobs per drain)")
    p.add_argument("--runs", type=int, default=3, help=f"rounds for N <= {CAPPED} (default 3)")
    p.add_argument("--top-runs", type=int, default=3, help=f"rounds for N > {CAPPED} (default 3)")
    p.add_argument("--latency-samples", type=int, default=200)
    p.add_argument("--scale", action="store_true",
                   help="also: 1,000,000 finished + 100,000 pending vs an empty table")
    p.add_argument("--soak", type=float, default=0, metavar="SECONDS",
                   help="also: server memory over a run of this many seconds (600 = 10 min)")
    p.add_argument("--report-only", action="store_true",
                   help="re-render RESULTS.md and the plots from bench/results/run.json")
    p.add_argument("--admin-url", default=os.environ.get(
        "ONCELY_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.report_only:
        from report import plots, render

        raw = json.loads(RAW.read_text())
        plots(raw, BENCH)
        RESULTS_MD.write_text(render(raw))
        return
    for name in PINS:
        peer_python(name)
    server = Server(args.admin_url)
    dbs = Databases(server)
    server.recreate_database()
    for db in PEER_DBS:
        dbs.recreate(db)
    started = time.monotonic()
    try:
        notes = machine(server)
        notes["started"] = datetime.now(UTC).isoformat(timespec="seconds")
        notes["load_before"] = os.getloadavg()
        with tempfile.TemporaryDirectory(prefix="oncely-bench-") as scratch:
            ctx = Context(dbs, Path(scratch))
            ctx.http_url = f"{dbs.url('oncely_bench')}?schema=http"
            ctx.http = HttpServer(ctx.http_url)
            try:
                results = rounds(ctx, [int(s) for s in args.sizes.split(",")], args.runs,
                                 args.top_runs)
                print("latency samples ...", flush=True)
                results.latency = latencies(ctx.http, ctx.http_url, args.latency_samples)
                if args.soak:
                    print(f"soak for {args.soak:.0f} s ...", flush=True)
                    results.soak = soak_run(ctx, args.soak)
            finally:
                ctx.http.stop()
            if args.scale:
                print("scale: 1,000,000 finished jobs ...", flush=True)
                results.scale = scale_run(ctx, 1_000_000, 100_000)
        notes["load_after"] = os.getloadavg()
    finally:
        server.drop_database()
        for db in PEER_DBS:
            dbs.drop(db)
    write_report(results, notes, args, time.monotonic() - started)


if __name__ == "__main__":
    main()
