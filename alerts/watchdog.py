"""The dead man's switch: the always-firing ``Watchdog`` alert must keep arriving.

Alertmanager repeats a firing group every ``repeat_interval``; a Watchdog alert routed to opsbot
therefore arrives regularly while the whole pipeline (Prometheus → Alertmanager → opsbot) works.
If none arrived for ``timeout``, :meth:`Watchdog.check` reports "silent" once; the next arrival
reports "back" once. Time comes from the injected ``clock``, so tests advance it instead of
sleeping; the service calls :meth:`check` on a timer.

With several replicas the watchdog alert reaches whichever one Alertmanager posts to, so arrivals
are written to the shared database (:func:`record_heartbeat`) and the leader's timer reads the
newest one (:func:`last_heartbeat`) before it checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from commands.db import Base, Database, UTCDateTime
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

    def seen(self, at: datetime | None = None) -> Change | None:
        """The watchdog alert arrived (now, or ``at``). Returns "back" when it had been reported silent."""
        at = at or self._clock()
        if self.state.last_seen is not None and at <= self.state.last_seen:
            return None
        self.state.last_seen = at
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


class HeartbeatRow(Base):
    """When the watchdog alert last arrived, at any replica."""

    __tablename__ = "alert_heartbeats"

    alertname: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)


def record_heartbeat(db: Database, alertname: str, at: datetime) -> None:
    """Blocking: remember an arrival (never moves the time backwards)."""
    for _ in range(3):
        with db.session() as session:
            done = session.execute(update(HeartbeatRow).where(
                HeartbeatRow.alertname == alertname, HeartbeatRow.last_seen < at).values(last_seen=at)).rowcount
            if done or session.get(HeartbeatRow, alertname) is not None:
                return
        try:
            with db.session() as session:
                session.add(HeartbeatRow(alertname=alertname, last_seen=at))
            return
        except IntegrityError:
            continue  # another replica inserted it meanwhile: update it


def last_heartbeat(db: Database, alertname: str) -> datetime | None:
    """Blocking: the newest arrival any replica recorded."""
    with db.session() as session:
        return session.scalar(select(HeartbeatRow.last_seen).where(HeartbeatRow.alertname == alertname))
