"""Job functions the scheduler tests name textually ("tests.oncall.jobs:record")."""

from __future__ import annotations

import asyncio
from typing import Any

from commands.scheduler import Scheduler


async def record(scheduler: Scheduler, **kwargs: Any) -> None:
    scheduler.context.setdefault("calls", []).append({"clock": scheduler.clock(), **kwargs})


def record_sync(scheduler: Scheduler, **kwargs: Any) -> str:
    scheduler.context.setdefault("calls", []).append(kwargs)
    return "ok"


async def fail(scheduler: Scheduler, **kwargs: Any) -> None:
    raise RuntimeError(f"boom {kwargs.get('n')}")


async def slow(scheduler: Scheduler, *, seconds: float) -> None:
    scheduler.context.setdefault("started", []).append(seconds)
    await asyncio.sleep(seconds)
    scheduler.context.setdefault("calls", []).append({"slow": seconds})


NOT_CALLABLE = 42
