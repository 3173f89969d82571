"""Guarded background work with orderly shutdown (kopf's idea).

Long work (rollout watching, alert sending, schedulers) must not live inside a command handler:
the handler answers, then hands the rest to the supervisor. The supervisor's tasks are created by
its own worker task, so they belong to the application, not to whichever handler asked.
Failures are logged with the job's name and never crash the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

JobFactory = Callable[[], Awaitable[object]]


@dataclass
class _Job:
    name: str
    factory: JobFactory
    done: asyncio.Future[object] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Supervisor:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._tasks: dict[asyncio.Task[object], str] = {}
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending = 0

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="supervisor")

    def submit(self, name: str, factory: JobFactory) -> asyncio.Future[object]:
        """Run ``factory()`` in the background. Returns a future with its result (or exception)."""
        job = _Job(name, factory)
        self._pending += 1
        self._idle.clear()
        self._queue.put_nowait(job)
        return job.done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if job is None:
                return
            task = loop.create_task(self._guard(job), name=f"job:{job.name}")
            self._tasks[task] = job.name

    async def _guard(self, job: _Job) -> None:
        try:
            result = await job.factory()
        except asyncio.CancelledError:
            if not job.done.done():
                job.done.cancel()
            raise
        except Exception as exc:
            log.exception("background job %s failed", job.name)
            if not job.done.done():
                job.done.set_exception(exc)
                job.done.exception()  # mark retrieved: the log line is the report
        else:
            if not job.done.done():
                job.done.set_result(result)
        finally:
            self._tasks.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    @property
    def running(self) -> list[str]:
        return sorted(self._tasks.values())

    async def join(self, timeout: float | None = None) -> None:
        """Wait until no job is queued or running (tests, graceful shutdown)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self, grace: float = 5.0) -> None:
        """Let running jobs finish for ``grace`` seconds, then cancel the rest."""
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("cancelling unfinished jobs: %s", ", ".join(self.running))
        self._queue.put_nowait(None)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(self._worker, return_exceptions=True)
        self._worker = None
