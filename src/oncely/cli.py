"""The ``oncely`` command. Errors are one readable line on stderr and exit code 1
(2 for usage errors)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import logs
from .app import Oncely
from .errors import OncelyError
from .export import PLATFORMS, ExportError, ExportOptions, export
from .model import JobRecord


def load_app(spec: str | None, store: str | None) -> Oncely:
    """``module:attr`` -> the app object; with no spec, a bare app on ``store``."""
    if spec is None:
        return Oncely(store)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise OncelyError(f"--app {spec!r} must look like module:attribute, e.g. myapp.jobs:jobs")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OncelyError(f"--app {spec!r}: cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, Oncely):
        raise OncelyError(
            f"--app {spec!r}: {module_name}.{attr} is {type(app).__name__}, not an Oncely app"
        )
    if store:
        app.use_store(store)
    return app


def parse_arg(text: str) -> tuple[str, Any]:
    """``k=v``: v is read as JSON when it parses (42, true, "x", [1]), else as a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise OncelyError(f"--arg {text!r} must look like name=value")
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--app", help="your Oncely app as module:attribute")
    common.add_argument("--store", help="store URL (default: the app's, or ONCELY_STORE)")
    common.add_argument("--log-level", help="default WARNING (INFO for serve and scheduler)")

    parser = argparse.ArgumentParser(
        prog="oncely", description="Run background jobs exactly once, driven by triggers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", parents=[common], help="create or upgrade the store's schema")
    sub.add_parser("demo", add_help=False,
                   help="the story end to end: replicas, SMTP, scheduler, chaos (see --help)")

    enqueue = sub.add_parser("enqueue", parents=[common], help="enqueue one job")
    enqueue.add_argument("task")
    enqueue.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE")
    enqueue.add_argument("--key", help="idempotency key: enqueue once while it is held")
    enqueue.add_argument("--delay", type=float, help="seconds from now")
    enqueue.add_argument("--priority", type=int)
    enqueue.add_argument("--queue")

    process = sub.add_parser("process", parents=[common], help="run due jobs, then exit")
    process.add_argument("--budget", type=float, default=25.0, help="seconds (default 25)")
    process.add_argument("--queue", action="append", dest="queues", help="only these queues")
    process.add_argument("--concurrency", type=int)

    sub.add_parser("tick", parents=[common],
                   help="enqueue due periodic occurrences once, then process (like /jobs/tick)")

    schedules = sub.add_parser("schedules", parents=[common],
                               help="periodic tasks: last run, next run, misses")
    schedules.add_argument("action", nargs="?", default="list",
                           choices=["list", "pause", "resume", "run-now"])
    schedules.add_argument("task", nargs="?")
    schedules.add_argument("--json", action="store_true")

    export = sub.add_parser("export", parents=[common],
                            help="print the schedules for a managed scheduler")
    export.add_argument("platform", choices=list(PLATFORMS))
    export.add_argument("--target", required=True, help="the app's base URL")
    export.add_argument("--mode", choices=["heartbeat", "per-task"], default="heartbeat")
    export.add_argument("--name", default="oncely", help="prefix for the scheduler jobs")

    serve = sub.add_parser("serve", parents=[common], help="serve the HTTP endpoints")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="processes (default 1)")

    scheduler = sub.add_parser("scheduler", parents=[common],
                               help="fire the HTTP triggers yourself (no managed scheduler)")
    scheduler.add_argument("--target", required=True, help="the app's base URL")
    scheduler.add_argument("--token", help="bearer token (or ONCELY_SCHEDULER_TOKEN)")
    scheduler.add_argument("--token-file", help="file holding the bearer token")
    scheduler.add_argument("--mode", choices=["heartbeat", "per-task"], default="heartbeat")
    scheduler.add_argument("--every", default="1m",
                           help="heartbeat interval, e.g. 1m or 5s (default 1m)")
    scheduler.add_argument("--name", default="oncely", help="scheduler job name prefix")
    scheduler.add_argument("--retry-count", type=int, default=3)
    scheduler.add_argument("--min-backoff", type=float, default=5.0, help="seconds")
    scheduler.add_argument("--max-backoff", type=float, default=3600.0, help="seconds")
    scheduler.add_argument("--max-doublings", type=int, default=5)
    scheduler.add_argument("--attempt-deadline", type=float, default=180.0, help="seconds")

    jobs = sub.add_parser("jobs", parents=[common], help="list jobs, newest first")
    jobs.add_argument("--state")
    jobs.add_argument("--task")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in lines)


def _job_rows(rows: list[JobRecord]) -> str:
    return table(("ID", "TASK", "STATE", "ATTEMPT", "RUN AT", "WORKER", "KEY"), [
        (str(j.id), j.task, str(j.state), f"{j.attempt}/{j.max_attempts}",
         j.run_at.strftime("%Y-%m-%d %H:%M:%S"), j.attempted_by or "-", j.key or "-")
        for j in rows])


def _when(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


async def cmd_migrate(app: Oncely, args: argparse.Namespace) -> None:
    version, known = await (await app.astore()).schema_version()
    print(f"schema at version {version} (this oncely knows {known})")


async def cmd_enqueue(app: Oncely, args: argparse.Namespace) -> None:
    job_args = dict(parse_arg(a) for a in args.arg)
    job, created = await app.aenqueue_ex(
        args.task, job_args, key=args.key, delay=args.delay, priority=args.priority,
        queue=args.queue,
    )
    print(json.dumps({"created": created, **job.to_dict()}))


async def cmd_process(app: Oncely, args: argparse.Namespace) -> None:
    summary = await app.aprocess(budget=args.budget, queues=args.queues,
                                 concurrency=args.concurrency)
    print(json.dumps(summary.to_dict() | {"job_ids": len(summary.job_ids)}))


async def cmd_tick(app: Oncely, args: argparse.Namespace) -> None:
    ticked = await app.atick()
    summary = await app.aprocess(budget=25.0) if app.tasks else None
    print(json.dumps(ticked.to_dict() | {"processed": summary.to_dict() if summary else None}))


async def cmd_schedules(app: Oncely, args: argparse.Namespace) -> None:
    if args.action != "list":
        if not args.task:
            raise OncelyError(f"oncely schedules {args.action} needs a TASK")
        if args.action == "run-now":
            job = await app.arun_now(args.task)
            print(f"enqueued job {job.id} for {args.task}")
            return
        await app.aset_paused(args.task, args.action == "pause")
    rows = await app.aschedules()
    if args.json:
        print(json.dumps(rows))
        return
    if not rows:
        print("no periodic tasks (declare them with @jobs.periodic)")
        return
    print(table(("TASK", "SCHEDULE", "CATCH-UP", "STATE", "LAST RUN", "NEXT RUN", "MISSED"), [
        (r["task"], r["schedule"], r["catch_up"], "paused" if r["paused"] else "active",
         _when(r["last_occurrence"]), _when(r["next_occurrence"]),
         f"{len(r['missed'])} (last {_when(r['missed'][-1])})" if r["missed"] else "0")
        for r in rows]))


async def cmd_export(app: Oncely, args: argparse.Namespace) -> None:
    pairs = [(name, p.schedule) for name, p in sorted(app.periodics.items())]
    if args.mode == "per-task" and not pairs:
        raise OncelyError("no periodic tasks to export; declare them with @jobs.periodic")
    try:
        print(export(args.platform, pairs, ExportOptions(target=args.target, mode=args.mode,
                                                         app=args.name)), end="")
    except ExportError as exc:
        raise OncelyError(str(exc)) from None


async def cmd_jobs(app: Oncely, args: argparse.Namespace) -> None:
    rows = await app.alist(state=args.state, task=args.task, limit=args.limit)
    if args.json:
        for job in rows:
            print(json.dumps(job.to_dict()))
    else:
        print(_job_rows(rows))


async def cmd_scheduler(app: Oncely, args: argparse.Namespace) -> None:
    from .scheduler import run_from_args

    await run_from_args(app, args)


COMMANDS = {
    "migrate": cmd_migrate, "enqueue": cmd_enqueue, "process": cmd_process, "tick": cmd_tick,
    "schedules": cmd_schedules, "export": cmd_export, "jobs": cmd_jobs,
    "scheduler": cmd_scheduler,
}


async def _run(args: argparse.Namespace) -> int:
    app = load_app(args.app, args.store)
    try:
        await COMMANDS[args.command](app, args)
        return 0
    finally:
        await app.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["demo"]:  # the demo has its own options (oncely demo --help)
        from .demo import main as demo_main

        return demo_main(raw[1:])
    args = _parser().parse_args(raw)
    long_running = args.command in ("serve", "scheduler")
    args.log_level = (args.log_level or ("INFO" if long_running else "WARNING")).upper()
    logs.configure(args.log_level)
    if args.command == "serve":
        from .serve import serve

        try:
            load_app(args.app, args.store)  # fail here, with one line, not in each worker
        except OncelyError as exc:
            print(f"oncely: error: {exc}", file=sys.stderr)
            return 1
        serve(args.app, args.store, host=args.host, port=args.port, workers=args.workers,
              log_level=args.log_level)
        return 0
    try:
        return asyncio.run(_run(args))
    except OncelyError as exc:
        print(f"oncely: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
