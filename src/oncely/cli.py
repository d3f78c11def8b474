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
    common.add_argument("--log-level", default="WARNING", help="default WARNING")

    parser = argparse.ArgumentParser(
        prog="oncely", description="Run background jobs exactly once, driven by triggers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", parents=[common], help="create or upgrade the store's schema")

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

    serve = sub.add_parser("serve", parents=[common], help="serve the HTTP endpoints")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="processes (default 1)")

    jobs = sub.add_parser("jobs", parents=[common], help="list jobs, newest first")
    jobs.add_argument("--state")
    jobs.add_argument("--task")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def _table(rows: list[JobRecord]) -> str:
    header = ("ID", "TASK", "STATE", "ATTEMPT", "RUN AT", "WORKER", "KEY")
    lines = [header] + [
        (str(j.id), j.task, str(j.state), f"{j.attempt}/{j.max_attempts}",
         j.run_at.strftime("%Y-%m-%d %H:%M:%S"), j.attempted_by or "-", j.key or "-")
        for j in rows
    ]
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in lines)


async def _run(args: argparse.Namespace) -> int:
    app = load_app(args.app, args.store)
    try:
        if args.command == "migrate":
            await app.astore()
            version, known = await (await app.astore()).schema_version()
            print(f"schema at version {version} (this oncely knows {known})")
        elif args.command == "enqueue":
            job_args = dict(parse_arg(a) for a in args.arg)
            job, created = await app.aenqueue_ex(
                args.task, job_args, key=args.key, delay=args.delay, priority=args.priority,
                queue=args.queue,
            )
            print(json.dumps({"created": created, **job.to_dict()}))
        elif args.command == "process":
            summary = await app.aprocess(budget=args.budget, queues=args.queues,
                                         concurrency=args.concurrency)
            print(json.dumps(summary.to_dict() | {"job_ids": len(summary.job_ids)}))
        elif args.command == "jobs":
            rows = await app.alist(state=args.state, task=args.task, limit=args.limit)
            if args.json:
                for job in rows:
                    print(json.dumps(job.to_dict()))
            else:
                print(_table(rows))
        return 0
    finally:
        await app.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level)
    if args.command == "serve":
        from .serve import serve

        try:
            load_app(args.app, args.store)  # fail here, with one line, not in each worker
        except OncelyError as exc:
            print(f"oncely: error: {exc}", file=sys.stderr)
            return 1
        log_level = "INFO" if args.log_level == "WARNING" else args.log_level
        serve(args.app, args.store, host=args.host, port=args.port, workers=args.workers,
              log_level=log_level)
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
