"""The app ``oncely serve`` loads in the HTTP workloads: the two benchmark tasks."""

from __future__ import annotations

import asyncio

from oncely import Oncely

jobs = Oncely()


@jobs.task
async def noop() -> None:
    pass


@jobs.task
async def sleep10() -> None:
    await asyncio.sleep(0.01)
