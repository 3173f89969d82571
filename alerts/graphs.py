"""A graph of an alert's own expression, posted in its incident's thread (no discord import).

When the outbox has posted an incident's primary message for the first time, :class:`AlertGraphs`
reads the PromQL out of each alert's ``generatorURL`` (``…/graph?g0.expr=…``, what Prometheus
sends), asks a :class:`GraphSource` for a chart of it over the last hour (the comparison's
threshold drawn as a line) and posts the PNG in the thread under the message through the
Notifier. It runs beside the senders, never in their way: a slow or absent Prometheus costs the
alert message nothing, and a failure is one line in the thread (or the log), not a retry storm.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Protocol

from alerts.models import IncidentView
from alerts.notify import Notifier, SendError
from commands.catalog import UserError
from commands.metrics import expression_of

log = logging.getLogger(__name__)


class GraphSource(Protocol):
    """Draws PromQL (``commands.metrics.MetricsService`` is one)."""

    async def expression_chart(self, expr: str, *, title: str, span: timedelta = ...) -> Any:
        """A chart with ``png`` and ``filename``, or None when the expression has no data."""
        ...


def expressions(incident: IncidentView, limit: int = 2) -> list[str]:
    """The distinct expressions of an incident's alerts, firing ones first, at most ``limit``."""
    found: list[str] = []
    for alert in sorted(incident.alerts, key=lambda a: a.status != "firing"):
        expr = expression_of(alert.generator_url)
        if expr and expr not in found:
            found.append(expr)
    return found[:limit]


class AlertGraphs:
    def __init__(self, source: GraphSource, notifier: Notifier, *, span: timedelta = timedelta(hours=1),
                 limit: int = 2, attempts: int = 3, retry_seconds: float = 2.0) -> None:
        self.source = source
        self.notifier = notifier
        self.span = span
        self.limit = limit
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self._tasks: set[asyncio.Task[int]] = set()
        self.posted = 0  # graphs posted (tests, stats)

    def message_created(self, incident: IncidentView, channel: str, message_id: str, thread_name: str) -> None:
        """The outbox posted ``incident``'s primary message: graph its expressions in the background."""
        if not expressions(incident, self.limit):
            return
        task = asyncio.get_running_loop().create_task(
            self.post(incident, channel, message_id, thread_name), name=f"alert-graphs:{incident.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def post(self, incident: IncidentView, channel: str, message_id: str, thread_name: str) -> int:
        """Chart each expression and post it in the thread; returns how many graphs were posted."""
        posted = 0
        for expr in expressions(incident, self.limit):
            title = f"#{incident.id} {incident.title}"
            try:
                chart = await self.source.expression_chart(expr, title=title[:80], span=self.span)
            except UserError as err:  # Prometheus down, slow, or the expression refused
                log.warning("incident #%s: no graph of %r: %s", incident.id, expr, err)
                await self._post(channel, message_id, thread_name, f"📈 no graph of `{_clip(expr)}`: {err}", ())
                continue
            except Exception:
                log.exception("incident #%s: drawing the graph of %r failed", incident.id, expr)
                continue
            if chart is None:
                text = f"📈 no graph: Prometheus has no data for `{_clip(expr)}` over the last {_span(self.span)}"
                await self._post(channel, message_id, thread_name, text, ())
                continue
            text = f"📈 `{_clip(expr)}` over the last {_span(self.span)}"
            if await self._post(channel, message_id, thread_name, text, [(chart.filename, chart.png)]):
                posted += 1
        self.posted += posted
        return posted

    async def _post(self, channel: str, message_id: str, thread_name: str, text: str,
                    files: Iterable[tuple[str, bytes]]) -> bool:
        files = list(files)
        for attempt in range(1, self.attempts + 1):
            try:
                await self.notifier.thread_post(channel, message_id, thread_name, text, files=files)
                return True
            except SendError as err:
                if not err.retryable or attempt == self.attempts:
                    log.warning("could not post an alert graph in %s: %s", channel, err)
                    return False
                await asyncio.sleep(err.retry_after if err.retry_after is not None else self.retry_seconds * attempt)
            except Exception:
                log.exception("posting an alert graph in %s failed", channel)
                return False
        return False

    async def wait(self, timeout: float = 30.0) -> None:
        """Until the graphs in flight are posted (tests)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


def _clip(expr: str, limit: int = 300) -> str:
    expr = expr.replace("`", "ˋ")
    return expr if len(expr) <= limit else expr[: limit - 1] + "…"


def _span(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    return "hour" if hours == 1 else f"{hours:g} hours"
