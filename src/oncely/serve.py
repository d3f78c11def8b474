"""``oncely serve``: the endpoints on uvicorn, one process or several (``--workers``)."""

from __future__ import annotations

import os

from starlette.applications import Starlette

from . import logs


def app_from_env() -> Starlette:
    """The ASGI app factory uvicorn imports in each worker process; reads ONCELY_APP
    (module:attr, optional) and ONCELY_STORE."""
    from .cli import load_app

    jobs = load_app(os.environ.get("ONCELY_APP") or None, None)
    logs.configure(os.environ.get("ONCELY_LOG_LEVEL", "INFO"), replica=jobs.worker_id)
    app: Starlette = jobs.asgi()
    return app


def serve(app_spec: str | None, store: str | None, *, host: str, port: int, workers: int,
          log_level: str) -> None:
    import uvicorn

    if app_spec:
        os.environ["ONCELY_APP"] = app_spec
    if store:
        os.environ["ONCELY_STORE"] = store
    os.environ["ONCELY_LOG_LEVEL"] = log_level
    uvicorn.run("oncely.serve:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level=log_level.lower(), access_log=False,
                timeout_graceful_shutdown=30)
