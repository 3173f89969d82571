"""The dead man's switch: the always-firing ``Watchdog`` alert must keep arriving.

Alertmanager repeats a firing group every ``repeat_interval``; a Watchdog alert routed to opsbot
therefore arrives regularly while the whole pipeline (Prometheus → Alertmanager → opsbot) works.
If none arrived for ``timeout``, :meth:`Watchdog.check` reports "silent" once; the next arrival
reports "back" once. Time comes from the injected ``clock``, so tests advance it instead of
sleeping; the service calls :meth:`check` on a timer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from commands.timeutil import short

Change = Literal["silent", "back"]


@dataclass
class WatchdogState:
    last_seen: datetime | None
    silent: bool
    since: datetime  # when the watch started (counts as "seen" for the first timeout)


class Watchdog:
    def __init__(self, alertname: str, timeout: timedelta, clock: Callable[[], datetime]) -> None:
        if timeout <= timedelta(0):
            raise ValueError("the watchdog timeout must be positive")
        self.alertname = alertname
        self.timeout = timeout
        self._clock = clock
        self.state = WatchdogState(last_seen=None, silent=False, since=clock())

    def seen(self) -> Change | None:
        """The watchdog alert arrived. Returns "back" when it had been reported silent."""
        self.state.last_seen = self._clock()
        if self.state.silent:
            self.state.silent = False
            return "back"
        return None

    def check(self) -> Change | None:
        """Returns "silent" the first time nothing arrived for longer than the timeout."""
        if self.state.silent:
            return None
        reference = self.state.last_seen or self.state.since
        if self._clock() - reference > self.timeout:
            self.state.silent = True
            return "silent"
        return None

    def message(self, change: Change) -> str:
        now = self._clock()
        if change == "silent":
            if self.state.last_seen is None:
                return (
                    f"⚠️ alert pipeline is silent: no `{self.alertname}` alert since opsbot started "
                    f"{short(now - self.state.since)} ago. Alerts may not be reaching this channel."
                )
            return (
                f"⚠️ alert pipeline is silent: the last `{self.alertname}` alert arrived "
                f"{short(now - self.state.last_seen)} ago. Alerts may not be reaching this channel."
            )
        return f"✅ alert pipeline is back: `{self.alertname}` arrived again."
