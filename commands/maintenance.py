"""Maintenance windows: planned, persisted, run on time, and honest about what happened.

``!maintenance schedule chat prod "tomorrow 04:00" 30m db upgrade --restart`` stores a row in
``maintenance_windows`` and two jobs on the app's shared :class:`~commands.scheduler.Scheduler`:
``maint:<id>:start`` and ``maint:<id>:end``. Both survive restarts (the scheduler's job store is in
the same database) and both are idempotent: a job first *claims* its step by moving the window's
state in one transaction (``scheduled → starting → active → ending → done``), so a window runs
once however often a job is found, e.g. by a restarted bot. Every other change to a window locks its
row first (``SELECT … FOR UPDATE`` on PostgreSQL), so replicas sharing the database never undo each
other's writes (a cancel racing the start, steps appended at once).

At the start: an Alertmanager silence for the window's services and env (until the end), an
announcement in ``maintenance.announce_channels``, then the actions in order (``restart``: rollout
restart watched to completion; ``scale N``: remembered so the end scales back; ``run-job NAME``: a
Job from a CronJob, watched; ``prune``: Docker images on the targets' hosts). At the end: the
silence is expired, scaled services go back, the end is announced, and a report lists every step
with ✅/❌/⏭️ and says plainly what failed.

Late and missed windows (the bot was down): the jobs are stored with no misfire grace, so they
always run and judge lateness themselves against ``scheduler.misfire_grace_time``:
- the whole window passed: nothing is done and a ``missed`` report says so;
- late beyond the grace but before the end: the silence and the announcement happen (they only
  protect) and say how late; the actions do not run and the report says why;
- within the grace: everything runs, and a late start is mentioned.
A start that a shutdown cut off (state ``starting`` at the next start) is reported as interrupted
and the window is treated as active, so its end still runs.

Recurring chores from ``maintenance.recurring`` (cron jobs ``recurring:<name>``): a window on a
schedule, Docker image prune, run-job (a nightly backup), the TLS certificate check
(:mod:`commands.tlscheck`) and the weekly digest (:mod:`commands.digest`). A run missed beyond the
grace is reported and skipped; runs missed while down coalesce into one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import BigInteger, Integer, String, Text, func, select, update
from sqlalchemy.orm import Mapped, mapped_column

from commands.audit import AuditLog
from commands.catalog import Catalog, UserError
from commands.db import Base, Database, UTCDateTime
from commands.targets.base import (
    MaintenancePlatform,
    Platform,
    PlatformError,
    Unsupported,
)
from commands.timeutil import short
from commands.tlscheck import TlsChecker
from commands.when import both, fmt

if TYPE_CHECKING:
    from commands.scheduler import Scheduler
    from config.settings import Settings

log = logging.getLogger(__name__)

CONTEXT_KEY = "maintenance"
START_JOB = "commands.maintenance:run_start"
END_JOB = "commands.maintenance:run_end"
RECURRING_JOB = "commands.maintenance:run_recurring"
RECURRING_PREFIX = "recurring:"
ALL = "all"
OPEN_STATES = ("scheduled", "starting", "active", "ending")  # counted against maintenance.max_open_windows

State = Literal["scheduled", "starting", "active", "ending", "done", "cancelled", "missed"]
Outcome = Literal["ok", "failed", "skipped"]
Post = Callable[[str, str], Awaitable[None]]  # (channel, text): queued for chat, retried


def job_id(window: int, phase: str) -> str:
    return f"maint:{window}:{phase}"


# ----------------------------------------------------------------------------- storage


class WindowRow(Base):
    __tablename__ = "maintenance_windows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    services: Mapped[str] = mapped_column(Text)  # JSON list of names, or ["all"]
    env: Mapped[str] = mapped_column(String(32))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(String(300))
    actions: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of "restart", "scale 2", …
    created_by: Mapped[str] = mapped_column(String(100))
    created_by_id: Mapped[int | None] = mapped_column(BigInteger)
    channel: Mapped[str | None] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(64), default="command")  # command | recurring:<name>
    state: Mapped[str] = mapped_column(String(16), index=True, default="scheduled")
    silence_id: Mapped[str | None] = mapped_column(String(64))
    steps: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of Step
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Step(BaseModel):
    """One thing done (or not) at a window's start or end."""

    phase: Literal["start", "end", "extend"]
    name: str
    outcome: Outcome
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)  # e.g. {"service": "chat", "previous": 3} of a scale

    def line(self) -> str:
        icon = {"ok": "✅", "failed": "❌", "skipped": "⏭️"}[self.outcome]
        return f"{icon} {self.name}" + (f": {self.detail}" if self.detail else "")


class WindowView(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    services: list[str]
    env: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    actions: list[str]
    created_by: str
    source: str
    state: State
    silence_id: str | None
    steps: list[Step]
    started_at: datetime | None
    ended_at: datetime | None

    @property
    def everything(self) -> bool:
        return self.services == [ALL]

    @property
    def what(self) -> str:
        names = "all services" if self.everything else ", ".join(f"`{s}`" for s in self.services)
        return f"{names} in `{self.env}`"

    @property
    def duration(self) -> timedelta:
        return self.ends_at - self.starts_at

    def covers(self, service: str, env: str) -> bool:
        return env == self.env and (self.everything or service in self.services)

    def title(self) -> str:
        return f"maintenance #{self.id}: {self.what} — {self.reason}"

    @classmethod
    def of(cls, row: WindowRow) -> WindowView:
        return cls(id=row.id, services=json.loads(row.services), env=row.env, starts_at=row.starts_at,
                   ends_at=row.ends_at, reason=row.reason, actions=json.loads(row.actions or "[]"),
                   created_by=row.created_by, source=row.source, state=row.state,  # type: ignore[arg-type]
                   silence_id=row.silence_id, steps=[Step.model_validate(s) for s in json.loads(row.steps or "[]")],
                   started_at=row.started_at, ended_at=row.ended_at)


# ----------------------------------------------------------------------------- actions


def parse_action(text: str) -> str:
    """``restart`` | ``prune`` | ``scale N`` | ``run-job NAME``, normalised; UserError otherwise."""
    words = text.strip().lower().split()
    if words == ["restart"] or words == ["prune"]:
        return words[0]
    if len(words) == 2 and words[0] == "scale":
        if not words[1].isdigit() or int(words[1]) > 1000:
            raise UserError(f"`scale {words[1]}`: give a replica count between 0 and 1000")
        return f"scale {int(words[1])}"
    if len(words) == 2 and words[0] == "run-job":
        import re

        if not re.match(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$", words[1]):
            raise UserError(f"`{words[1]}` is not a CronJob name")
        return f"run-job {words[1]}"
    raise UserError(f"unknown action `{text}`; actions: `--restart`, `--scale N`, `--run-job CRONJOB`, `--prune`")


class Silencer(Protocol):
    """What windows need of the alerts service (:class:`alerts.service.AlertService`)."""

    async def create_silence(self, matchers_text: str, duration: timedelta | str, comment: str,
                             user_name: str, *, whole_env: bool = False) -> Any: ...

    async def expire_silence(self, silence_id: str, user_name: str = "") -> None: ...


# ----------------------------------------------------------------------------- the service


class MaintenanceService:
    """Windows and recurring chores (see the module docstring).

    ``post(channel, text)`` queues a chat message (the alerts outbox: persisted, retried);
    ``silencer`` is the AlertService; ``platforms`` as in the Deployer. The service registers
    itself as ``scheduler.context["maintenance"]``; now is ``scheduler.clock()``.
    """

    def __init__(self, db: Database, settings: Settings, scheduler: Scheduler, *,
                 platforms: Mapping[str, Platform], audit: AuditLog, post: Post,
                 silencer: Silencer | None = None, alerts: Any = None,
                 poll_interval: float | None = None) -> None:
        self.db = db
        self.settings = settings
        self.catalog = Catalog(settings)
        self.scheduler = scheduler
        self.platforms = platforms
        self.audit = audit
        self.post = post
        self.silencer = silencer
        self.alerts = alerts  # the AlertService, for the digest's incidents
        self.poll_interval = poll_interval if poll_interval is not None else settings.rollout_poll_seconds
        self._locks: dict[int, asyncio.Lock] = {}
        self._starting: set[int] = set()  # windows whose start runs in this process now
        scheduler.context[CONTEXT_KEY] = self

    @property
    def config(self) -> Any:
        return self.settings.maintenance

    @property
    def zone(self) -> str:
        return self.settings.timezone

    def now(self) -> datetime:
        return self.scheduler.clock().astimezone(UTC)

    @property
    def grace(self) -> timedelta:
        return timedelta(seconds=self.scheduler.misfire_grace_time or 0)

    def _lock(self, window: int) -> asyncio.Lock:
        return self._locks.setdefault(window, asyncio.Lock())

    # -- reading -------------------------------------------------------------------------

    async def get(self, window: int) -> WindowView:
        def read() -> WindowView:
            with self.db.session() as session:
                row = session.get(WindowRow, window)
                if row is None:
                    raise UserError(f"no maintenance window #{window}; `!maintenance list` shows them")
                return WindowView.of(row)

        return await self.db.run(read)

    async def windows(self, *, states: tuple[str, ...] = ("scheduled", "starting", "active", "ending"),
                      limit: int = 25) -> list[WindowView]:
        def read() -> list[WindowView]:
            with self.db.session() as session:
                rows = session.scalars(select(WindowRow).where(WindowRow.state.in_(states))
                                       .order_by(WindowRow.starts_at, WindowRow.id).limit(limit))
                return [WindowView.of(r) for r in rows]

        return await self.db.run(read)

    async def active(self) -> list[WindowView]:
        """Windows in progress now (``!status`` shows them)."""
        return await self.windows(states=("starting", "active", "ending"))

    # -- scheduling ----------------------------------------------------------------------

    def _services(self, services: list[str]) -> list[str]:
        if not services or any(s.lower() == ALL for s in services):
            return [ALL]
        return list(dict.fromkeys(self.catalog.service(s) for s in services))

    def _pairs(self, view: WindowView) -> list[tuple[str, str]]:
        """(service, env) the window covers that the catalog runs."""
        return [(s, e) for s, e in self.catalog.pairs(None, view.env) if view.covers(s, e)]

    async def schedule(self, services: list[str], env: str, start: datetime, duration: timedelta, reason: str, *,
                       actions: list[str] | None = None, user_id: int | None, user_name: str,
                       channel: str | None = None, source: str = "command") -> WindowView:
        """Store a window and its two jobs. UserError for unknown names, bad actions, a past start
        or a duration out of range."""
        env = self.catalog.env(env)
        names = self._services(services)
        if names != [ALL]:
            for name in names:
                self.catalog.target(name, env)  # raises if it does not run there
        reason = " ".join(reason.split())
        if not reason:
            raise UserError("say why: `!maintenance schedule <service|all> <env> <start> <duration> <reason>`")
        cfg = self.config
        if not cfg.min_duration <= duration <= cfg.max_duration:
            raise UserError(f"a window lasts between {short(cfg.min_duration)} and {short(cfg.max_duration)} "
                            f"(maintenance.min_duration, maintenance.max_duration), not {short(duration)}")
        now = self.now()
        if start < now - timedelta(seconds=1):
            raise UserError(f"{fmt(start)} is in the past; a window must start now or later")
        if start - now > cfg.max_ahead:
            raise UserError(f"a window can start at most {short(cfg.max_ahead)} ahead (maintenance.max_ahead)")
        acts = [parse_action(a) for a in actions or []]
        end = start + duration

        def add() -> WindowView:
            with self.db.session() as session:
                if source == "command":  # chat may not pile windows up; recurring ones come from the config
                    self.db.exclusive(session, f"maintenance-open:{env}")  # count and insert as one, across replicas
                    open_now = session.scalar(select(func.count()).select_from(WindowRow).where(
                        WindowRow.env == env, WindowRow.state.in_(OPEN_STATES)))
                    if (open_now or 0) >= cfg.max_open_windows:
                        raise UserError(
                            f"`{env}` has {open_now} open maintenance windows already (scheduled or running), the most "
                            f"allowed (maintenance.max_open_windows); `!maintenance` lists them, "
                            "`!maintenance cancel <id>` frees one")
                row = WindowRow(services=json.dumps(names), env=env, starts_at=start, ends_at=end, reason=reason[:300],
                                actions=json.dumps(acts), created_by=user_name, created_by_id=user_id, channel=channel,
                                source=source, state="scheduled", steps="[]", created_at=now)
                session.add(row)
                session.flush()
                return WindowView.of(row)

        view = await self.db.run(add)
        await self._add_jobs(view)
        await self.audit.record(user_id=user_id, user_name=user_name, action="maintenance", env=env,
                                service=None if view.everything or len(names) > 1 else names[0], result="ok",
                                args={"op": "schedule", "id": view.id, "services": names, "start": start.isoformat(),
                                      "end": end.isoformat(), "actions": acts},
                                detail=f"#{view.id} {reason}", channel=channel)
        return view

    async def _add_jobs(self, view: WindowView, *, start: bool = True, replace: bool = True) -> None:
        if start:
            await self.scheduler.add_at(job_id(view.id, "start"), view.starts_at, START_JOB, window=view.id,
                                        misfire_grace_time=None, replace_existing=replace)
        await self.scheduler.add_at(job_id(view.id, "end"), view.ends_at, END_JOB, window=view.id,
                                    misfire_grace_time=None, replace_existing=replace)

    async def overlapping(self, view: WindowView) -> list[WindowView]:
        others = await self.windows(states=OPEN_STATES, limit=200)
        return [o for o in others if o.id != view.id and o.env == view.env
                and o.starts_at < view.ends_at and view.starts_at < o.ends_at
                and (o.everything or view.everything or set(o.services) & set(view.services))]

    async def cancel(self, window: int, *, user_id: int | None, user_name: str,
                     channel: str | None = None) -> WindowView:
        """Cancel a window that has not started."""
        async with self._lock(window):
            def claim() -> WindowView:
                with self.db.session() as session:
                    row = session.get(WindowRow, window, with_for_update=True)
                    if row is None:
                        raise UserError(f"no maintenance window #{window}")
                    if row.state != "scheduled":
                        hint = f"; `!maintenance end {window}` ends it now" if row.state == "active" else ""
                        raise UserError(f"maintenance #{window} is {row.state}, not scheduled: it cannot be cancelled{hint}")
                    row.state = "cancelled"
                    return WindowView.of(row)

            view = await self.db.run(claim)
        await self.scheduler.cancel_prefix(f"maint:{window}:")
        await self.audit.record(user_id=user_id, user_name=user_name, action="maintenance", env=view.env, result="ok",
                                args={"op": "cancel", "id": window}, detail=f"#{window} cancelled", channel=channel)
        return view

    async def extend(self, window: int, by: timedelta, *, user_id: int | None, user_name: str,
                     channel: str | None = None) -> WindowView:
        """Move a scheduled or running window's end ``by`` later (the silence follows)."""
        if by <= timedelta(0):
            raise UserError("extend by a positive duration, e.g. `30m`")
        async with self._lock(window):
            view = await self.get(window)
            if view.state not in ("scheduled", "starting", "active"):
                raise UserError(f"maintenance #{window} is {view.state}; only scheduled or running windows can be extended")
            end = view.ends_at + by
            if end - view.starts_at > self.config.max_duration:
                raise UserError(f"maintenance #{window} would last {short(end - view.starts_at)}; a window lasts at most "
                                f"{short(self.config.max_duration)} (maintenance.max_duration)")
            steps: list[Step] = []
            silence_id = view.silence_id
            if view.state != "scheduled" and view.silence_id:
                step, new_id = await self._silence(view, end, replaces=view.silence_id)
                step = step.model_copy(update={"phase": "extend"})
                steps.append(step)
                if new_id:
                    silence_id = new_id

            def save() -> WindowView:
                with self.db.session() as session:
                    row = session.get(WindowRow, window, with_for_update=True)
                    assert row is not None
                    row.ends_at, row.silence_id = end, silence_id
                    row.steps = json.dumps([*json.loads(row.steps or "[]"), *(s.model_dump() for s in steps)])
                    return WindowView.of(row)

            view = await self.db.run(save)
            await self.scheduler.add_at(job_id(window, "end"), end, END_JOB, window=window, misfire_grace_time=None)
        await self.audit.record(user_id=user_id, user_name=user_name, action="maintenance", env=view.env, result="ok",
                                args={"op": "extend", "id": window, "by": int(by.total_seconds()), "end": end.isoformat()},
                                detail=f"#{window} until {fmt(end)}", channel=channel)
        if view.state == "active":
            for ch in self._announce_channels():
                await self._post(ch, f"🛠️ Maintenance of {view.what} is extended until {both(end, self.zone)}: {view.reason}")
        if any(s.outcome == "failed" for s in steps):
            await self._post(self.settings.channels.ops, f"⚠️ maintenance #{window} was extended, but "
                             + "; ".join(s.line() for s in steps if s.outcome == "failed"))
        return view

    async def end_now(self, window: int, *, user_id: int | None, user_name: str,
                      channel: str | None = None) -> WindowView:
        """End a running window now (the end job is cancelled; the end runs here)."""
        view = await self.get(window)
        if view.state == "scheduled":
            raise UserError(f"maintenance #{window} has not started; `!maintenance cancel {window}` cancels it")
        if view.state not in ("starting", "active"):
            raise UserError(f"maintenance #{window} is {view.state} already")
        await self.scheduler.cancel(job_id(window, "end"))
        await self.audit.record(user_id=user_id, user_name=user_name, action="maintenance", env=view.env, result="ok",
                                args={"op": "end", "id": window}, detail=f"#{window} ended early", channel=channel)
        return await self.run_end(window, ended_by=user_name)

    # -- resuming after a restart ----------------------------------------------------------

    async def resume(self) -> int:
        """Right after the scheduler starts: re-add lost jobs of unfinished windows and report
        starts that a shutdown cut off. Returns how many things it fixed."""
        fixed = 0

        async def lost(jid: str) -> bool:
            # A job that started meanwhile has left the store but shows as running (checked after
            # the store was read: the scheduler may pick jobs up while this looks).
            return await self.scheduler.get(jid) is None and jid not in self.scheduler.running_jobs()

        for view in await self.windows(states=("scheduled", "starting", "active", "ending"), limit=500):
            start_id, end_id = job_id(view.id, "start"), job_id(view.id, "end")
            if view.state == "scheduled" and await lost(start_id):
                current = await self.get(view.id)
                if current.state == "scheduled":
                    await self.scheduler.add_at(start_id, view.starts_at, START_JOB, window=view.id,
                                                misfire_grace_time=None)
                    fixed += 1
            if view.state == "starting" and start_id not in self.scheduler.running_jobs() \
                    and view.id not in self._starting:
                await self._interrupted(view)
                fixed += 1
            if await lost(end_id) and (await self.get(view.id)).state not in ("done", "missed", "cancelled"):
                await self.scheduler.add_at(end_id, max(view.ends_at, self.now()), END_JOB, window=view.id,
                                            misfire_grace_time=None)
                fixed += 1
        return fixed

    async def _interrupted(self, view: WindowView) -> None:
        step = Step(phase="start", name="start", outcome="failed",
                    detail="cut off by a shutdown; the steps not listed above did not run")

        def save() -> WindowView:
            with self.db.session() as session:
                row = session.get(WindowRow, view.id, with_for_update=True)
                assert row is not None
                row.state = "active"
                row.started_at = row.started_at or self.now()
                row.steps = json.dumps([*json.loads(row.steps or "[]"), step.model_dump()])
                return WindowView.of(row)

        view = await self.db.run(save)
        await self._post(self.settings.channels.ops, self._report(view, "start", "⚠️ was interrupted while starting"))

    # -- the start -------------------------------------------------------------------------

    async def _claim(self, window: int, frm: tuple[str, ...], to: str) -> WindowView | None:
        def claim() -> WindowView | None:
            with self.db.session() as session:
                done = session.execute(update(WindowRow).where(WindowRow.id == window, WindowRow.state.in_(frm))
                                       .values(state=to))
                if not done.rowcount:  # type: ignore[attr-defined]
                    return None
                row = session.get(WindowRow, window)
                assert row is not None
                return WindowView.of(row)

        return await self.db.run(claim)

    async def _save_step(self, window: int, step: Step, **values: Any) -> None:
        def save() -> None:
            with self.db.session() as session:
                row = session.get(WindowRow, window, with_for_update=True)
                assert row is not None
                row.steps = json.dumps([*json.loads(row.steps or "[]"), step.model_dump()])
                for key, value in values.items():
                    setattr(row, key, value)

        await self.db.run(save)

    async def run_start(self, window: int) -> str:
        """The start job: claim, then silence, announce and act (see the module docstring)."""
        async with self._lock(window):
            self._starting.add(window)
            try:
                return await self._start(window)
            finally:
                self._starting.discard(window)

    async def _start(self, window: int) -> str:
        view = await self._claim(window, ("scheduled",), "starting")
        if view is None:
            return "not scheduled"
        now = self.now()
        late = now - view.starts_at
        if now >= view.ends_at:
            return await self._missed(view, now)
        await self._save_step(window, Step(phase="start", name="started", outcome="ok",
                                           detail=f"{short(late)} late" if late > timedelta(seconds=1) else ""),
                              started_at=now)
        step, silence_id = await self._silence(view, view.ends_at)
        await self._save_step(window, step, silence_id=silence_id)
        for ch in self._announce_channels():
            text = (f"🛠️ Maintenance has begun: {view.what} until {both(view.ends_at, self.zone)}"
                    f" — {view.reason}")
            await self._save_step(window, await self._announce(ch, text, "start"))
        if late > self.grace and view.actions:
            for action in view.actions:
                await self._save_step(window, Step(
                    phase="start", name=action, outcome="skipped",
                    detail=f"the window started {short(late)} late (the bot was not running at "
                           f"{fmt(view.starts_at)}), beyond the {short(self.grace)} grace time"))
        else:
            for action in view.actions:
                for step in await self._act(view, action):
                    await self._save_step(window, step)
        view = await self._claim(window, ("starting",), "active") or await self.get(window)
        header = "has started"
        if late > self.grace:
            header = f"has started {short(late)} late (the bot was not running at {fmt(view.starts_at)})"
        await self._post(self.settings.channels.ops, self._report(view, "start", header))
        await self.audit.record(user_id=None, user_name="opsbot", action="maintenance", env=view.env,
                                result="failed" if _failed(view, "start") else "ok",
                                args={"op": "start", "id": window}, detail=_summary(view, "start"))
        return "started"

    async def _missed(self, view: WindowView, now: datetime) -> str:
        step = Step(phase="start", name="missed", outcome="skipped",
                    detail=f"the bot was not running from before {fmt(view.starts_at)} until after {fmt(view.ends_at)}")
        await self._save_step(view.id, step, state="missed")
        await self.scheduler.cancel(job_id(view.id, "end"))
        text = (f"⏰ Maintenance #{view.id} was **missed**: {view.what} — {view.reason} was due "
                f"{both(view.starts_at, self.zone)} to {fmt(view.ends_at, self.zone)}, but the bot was not running "
                f"then (back {short(now - view.ends_at)} after its end). Nothing of it was done: no silence, no "
                f"announcement" + (f", no {', '.join(view.actions)}" if view.actions else "") + ".")
        await self._post(self.settings.channels.ops, text)
        await self.audit.record(user_id=None, user_name="opsbot", action="maintenance", env=view.env, result="failed",
                                args={"op": "start", "id": view.id}, detail=f"#{view.id} missed")
        return "missed"

    def _announce_channels(self) -> list[str]:
        return list(self.config.announce_channels) or [self.settings.channels.ops]

    async def _announce(self, channel: str, text: str, phase: str) -> Step:
        name = f"announce {'the start' if phase == 'start' else 'the end'} in #{channel}"
        try:
            await self.post(channel, text)
        except Exception as e:  # noqa: BLE001 - said in the report
            return Step(phase=phase, name=name, outcome="failed", detail=str(e))  # type: ignore[arg-type]
        return Step(phase=phase, name=name, outcome="ok")  # type: ignore[arg-type]

    def _matchers(self, view: WindowView) -> str:
        cfg = self.settings.alerts
        env = f'{cfg.env_label}="{view.env}"'
        if view.everything:
            return env
        if len(view.services) == 1:
            return f'{cfg.service_label}="{view.services[0]}" {env}'
        return f'{cfg.service_label}=~"{"|".join(view.services)}" {env}'

    async def _silence(self, view: WindowView, until: datetime, *, replaces: str | None = None
                       ) -> tuple[Step, str | None]:
        matchers = self._matchers(view)
        name = "silence"
        if self.silencer is None:
            return Step(phase="start", name=name, outcome="skipped", detail="no alerts service"), None
        from alerts.alertmanager import AlertmanagerError, AlertmanagerNotConfigured

        remaining = until - self.now()
        try:
            silence = await self.silencer.create_silence(
                matchers, remaining, f"opsbot maintenance #{view.id}: {view.reason}", f"opsbot (maintenance #{view.id})",
                whole_env=view.everything)  # a window over all services silences its env, on purpose
        except AlertmanagerNotConfigured as e:
            return Step(phase="start", name=name, outcome="skipped", detail=f"{e}: alerts were not silenced"), None
        except (AlertmanagerError, UserError) as e:
            return Step(phase="start", name=name, outcome="failed", detail=f"{matchers}: {e}"), None
        if replaces:
            try:
                await self.silencer.expire_silence(replaces, "opsbot")
            except (AlertmanagerError, UserError) as e:
                log.warning("maintenance #%s: could not expire the replaced silence %s: %s", view.id, replaces, e)
        return Step(phase="start", name=name, outcome="ok",
                    detail=f"`{silence.id}` for {matchers} until {fmt(until)}", data={"id": silence.id}), silence.id

    def _target(self, service: str, env: str) -> tuple[MaintenancePlatform, object]:
        target = self.catalog.target(service, env)
        kind = getattr(target, "type", "kubernetes")
        platform = self.platforms.get(kind)
        if platform is None or not isinstance(platform, MaintenancePlatform):
            raise PlatformError(f"no {kind} platform is configured")
        return platform, target

    async def _act(self, view: WindowView, action: str) -> list[Step]:
        """Run one action on every service of the window; one step per service (or host)."""
        verb, _, arg = action.partition(" ")
        pairs = self._pairs(view)
        if verb == "prune":
            return await self._prune(pairs, "start", f"maintenance #{view.id}")
        steps = []
        namespaces: set[tuple[object, ...]] = set()
        for service, env in pairs:
            name = f"{action} {service}"
            try:
                platform, target = self._target(service, env)
                if verb == "run-job":  # once per namespace, whichever services share it
                    where = (getattr(target, "type", ""), getattr(target, "context", None),
                             getattr(target, "namespace", None) or service)
                    if where in namespaces:
                        continue
                    namespaces.add(where)
                if verb == "restart":
                    generation = await platform.restart(service, env, target,
                                                        f"opsbot: maintenance #{view.id} restart ({view.reason})")
                    detail = await self._watch(platform, service, env, target, generation)
                    steps.append(Step(phase="start", name=name, outcome="ok", detail=detail))
                elif verb == "scale":
                    previous, generation = await platform.scale(service, env, target, int(arg))
                    detail = await self._watch(platform, service, env, target, generation)
                    steps.append(Step(phase="start", name=name, outcome="ok", detail=f"from {previous}; {detail}",
                                      data={"service": service, "previous": previous}))
                elif verb == "run-job":
                    steps.append(await self._run_job(platform, service, env, target, arg, "start"))
                else:
                    steps.append(Step(phase="start", name=name, outcome="failed", detail="unknown action"))
            except Unsupported as e:
                steps.append(Step(phase="start", name=name, outcome="skipped", detail=str(e)))
            except (PlatformError, UserError) as e:
                steps.append(Step(phase="start", name=name, outcome="failed", detail=str(e)))
            except Exception as e:
                log.exception("maintenance #%s: %s failed", view.id, name)
                steps.append(Step(phase="start", name=name, outcome="failed", detail=f"{type(e).__name__}: {e}"))
        return steps

    async def _watch(self, platform: Any, service: str, env: str, target: object, generation: int) -> str:
        """Follow a rollout to its end (the env's timeout); raises PlatformError when it fails."""
        timeout = self.settings.env(env).timeout_seconds
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            try:
                progress = await platform.progress(service, env, target, generation)
            except PlatformError as e:
                if loop.time() - started > timeout:
                    raise
                log.warning("watching %s in %s: %s", service, env, e)
                await asyncio.sleep(self.poll_interval)
                continue
            elapsed = loop.time() - started
            if progress.state == "complete":
                return f"{progress.ready}/{progress.desired} ready in {short(timedelta(seconds=elapsed))}"
            if progress.state == "failed":
                raise PlatformError(f"rollout failed: {progress.reason or ''} {progress.message or ''}".strip())
            if elapsed >= timeout:
                raise PlatformError(f"not done after {timeout} s ({progress.message or progress.state})")
            await asyncio.sleep(self.poll_interval)

    async def _run_job(self, platform: Any, service: str, env: str, target: object, cronjob: str, phase: str) -> Step:
        name = f"run-job {cronjob} in {env}"
        run = await platform.run_job(service, env, target, cronjob, timeout=self.config.job_timeout.total_seconds(),
                                     poll_interval=self.poll_interval)
        took = short(timedelta(seconds=run.seconds))
        if run.ok:
            return Step(phase=phase, name=name, outcome="ok", detail=f"job `{run.name}` completed in {took}")  # type: ignore[arg-type]
        if run.outcome == "timeout":
            return Step(phase=phase, name=name, outcome="failed", detail=f"job `{run.name}`: {run.message}")  # type: ignore[arg-type]
        return Step(phase=phase, name=name, outcome="failed",  # type: ignore[arg-type]
                    detail=f"job `{run.name}` failed after {took}: {run.reason or 'failed'}"
                           + (f" ({run.message})" if run.message else "") + f"; {run.failed} pod(s) failed")

    async def _prune(self, pairs: list[tuple[str, str]], phase: str, why: str, *, all_unused: bool = False,
                     older_than_hours: int | None = None) -> list[Step]:
        """Image prune once per Docker host among ``pairs``; Kubernetes targets are skipped (said once)."""
        steps: list[Step] = []
        hosts: dict[str, tuple[str, str, Any, object]] = {}
        skipped = []
        for service, env in pairs:
            try:
                platform, target = self._target(service, env)
            except (PlatformError, UserError) as e:
                steps.append(Step(phase=phase, name=f"prune {service}", outcome="failed", detail=str(e)))  # type: ignore[arg-type]
                continue
            if getattr(target, "type", "kubernetes") != "docker":
                skipped.append(service)
                continue
            host = platform.host(target)  # type: ignore[attr-defined]
            hosts.setdefault(host, (service, env, platform, target))
        for host, (service, env, platform, target) in hosts.items():
            try:
                result = await platform.prune_images(service, env, target, all_unused=all_unused,
                                                     older_than_hours=older_than_hours)
                steps.append(Step(phase=phase, name=f"prune images on {host}", outcome="ok",  # type: ignore[arg-type]
                                  detail=f"{result.images_deleted} removed, {_bytes(result.space_reclaimed)} reclaimed"))
            except PlatformError as e:
                steps.append(Step(phase=phase, name=f"prune images on {host}", outcome="failed", detail=str(e)))  # type: ignore[arg-type]
        if skipped and not hosts:
            steps.append(Step(phase=phase, name="prune", outcome="skipped",  # type: ignore[arg-type]
                              detail="no Docker hosts among these targets (Kubernetes collects images itself)"))
        return steps

    # -- the end ---------------------------------------------------------------------------

    async def run_end(self, window: int, *, ended_by: str | None = None) -> WindowView:
        """The end job (and `!maintenance end`): expire the silence, scale back, announce, report."""
        async with self._lock(window):
            view = await self.get(window)
            if view.state == "scheduled" and self.now() >= view.ends_at:
                # The start never ran (its job was lost): the window was missed.
                claimed = await self._claim(window, ("scheduled",), "starting")
                if claimed is not None:
                    await self._missed(claimed, self.now())
                return await self.get(window)
            claimed = await self._claim(window, ("starting", "active"), "ending")
            if claimed is None:
                return await self.get(window)
            view, now = claimed, self.now()
            if view.silence_id and self.silencer is not None:
                await self._save_step(window, await self._unsilence(view))
            for step in [s for s in view.steps if s.phase == "start" and s.outcome == "ok" and "previous" in s.data]:
                await self._save_step(window, await self._scale_back(view, step))
            for ch in self._announce_channels():
                await self._save_step(window, await self._announce(
                    ch, f"✅ Maintenance is over: {view.what} — {view.reason}", "end"))
            view = await self._claim(window, ("ending",), "done") or await self.get(window)

            def ended() -> WindowView:
                with self.db.session() as session:
                    row = session.get(WindowRow, window, with_for_update=True)
                    assert row is not None
                    row.ended_at = now
                    return WindowView.of(row)

            view = await self.db.run(ended)
        early = f"ended early by {ended_by}" if ended_by else "has ended"
        late = now - view.ends_at
        if ended_by is None and late > self.grace:
            early = f"has ended ({short(late)} late: the bot was not running at {fmt(view.ends_at)})"
        await self._post(self.settings.channels.ops, self._report(view, None, early))
        await self.audit.record(user_id=None, user_name="opsbot", action="maintenance", env=view.env,
                                result="failed" if _failed(view, None) else "ok",
                                args={"op": "end", "id": window}, detail=_summary(view, None))
        return view

    async def _unsilence(self, view: WindowView) -> Step:
        from alerts.alertmanager import AlertmanagerError

        assert self.silencer is not None and view.silence_id
        try:
            await self.silencer.expire_silence(view.silence_id, "opsbot")
        except (AlertmanagerError, UserError) as e:
            return Step(phase="end", name="expire silence", outcome="failed",
                        detail=f"`{view.silence_id}`: {e}; it ends by itself at {fmt(view.ends_at)}")
        return Step(phase="end", name="expire silence", outcome="ok", detail=f"`{view.silence_id}`")

    async def _scale_back(self, view: WindowView, step: Step) -> Step:
        service, previous = step.data["service"], int(step.data["previous"])
        name = f"scale {service} back to {previous}"
        try:
            platform, target = self._target(service, view.env)
            _, generation = await platform.scale(service, view.env, target, previous)
            detail = await self._watch(platform, service, view.env, target, generation)
        except (PlatformError, UserError) as e:
            return Step(phase="end", name=name, outcome="failed", detail=str(e))
        return Step(phase="end", name=name, outcome="ok", detail=detail)

    # -- reports -----------------------------------------------------------------------------

    def _report(self, view: WindowView, phase: str | None, header: str) -> str:
        """The ops channel's message about a start (``phase="start"``) or an end (None: all steps)."""
        steps = [s for s in view.steps if (phase is None or s.phase == phase) and s.name != "started"]
        lines = [f"🛠️ Maintenance #{view.id} {header}: {view.what} — {view.reason}",
                 f"Window: {both(view.starts_at, self.zone)} → {fmt(view.ends_at, self.zone if self.zone != 'UTC' else None)}"]
        lines += [s.line() for s in steps]
        failed = [s for s in steps if s.outcome == "failed"]
        if failed:
            lines.append(f"⚠️ **{len(failed)} of {len(steps)} steps failed**: " + "; ".join(s.name for s in failed))
        elif phase is None:
            lines.append("All steps succeeded." if steps else "Nothing to do.")
        return "\n".join(lines)

    async def _post(self, channel: str, text: str) -> None:
        try:
            await self.post(channel, text[:1990])
        except Exception:
            log.exception("could not queue a maintenance message for %s: %s", channel, text)

    # -- recurring chores --------------------------------------------------------------------

    async def schedule_recurring(self) -> list[str]:
        """Add a cron job per ``maintenance.recurring`` entry (``recurring:<name>``); drop stale ones."""
        wanted = []
        for name, task in self.config.recurring.items():
            jid = f"{RECURRING_PREFIX}{name}"
            wanted.append(jid)
            await self.scheduler.add_cron(jid, task.cron, RECURRING_JOB, timezone=task.timezone or self.zone,
                                          misfire_grace_time=None, name=name)
        for job in await self.scheduler.jobs(RECURRING_PREFIX):
            if job.id not in wanted:
                await self.scheduler.cancel(job.id)
        return wanted

    def _last_fire(self, task: Any, now: datetime) -> datetime | None:
        """The cron time of ``task`` at or before ``now`` (the run being made)."""
        from apscheduler.triggers.cron import CronTrigger

        from commands.when import zone

        trigger = CronTrigger.from_crontab(task.cron, timezone=zone(task.timezone or self.zone))
        last = None
        # Walk back cheaply: step through fires from a start close to now.
        for back in (timedelta(hours=1), timedelta(days=1), timedelta(days=8), timedelta(days=32), timedelta(days=400)):
            fire = trigger.get_next_fire_time(None, now - back)
            while fire is not None and fire <= now:
                last = fire
                fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
            if last is not None:
                return last.astimezone(UTC)
        return None

    async def run_recurring(self, name: str, *, force: bool = False) -> str:
        """The body of ``recurring:<name>``. Beyond the grace time after its cron time it is skipped and
        reported (the bot was down); otherwise it runs and reports."""
        task = self.config.recurring.get(name)
        if task is None:
            log.warning("recurring task %s is no longer configured", name)
            return "unknown"
        now = self.now()
        fire = self._last_fire(task, now) or now
        late = now - fire
        ops = self.settings.channels.ops
        label = f"`{name}` ({task.task})"
        if not force and late > self.grace:
            await self._post(ops, f"⏰ recurring {label} was due {both(fire, self.zone)} but the bot was not running "
                                  f"then; it was skipped (found {short(late)} late, beyond the {short(self.grace)} grace "
                                  "time). It runs again at its next time.")
            return "missed"
        try:
            return await getattr(self, f"_task_{task.task.replace('-', '_')}")(name, task)
        except Exception as e:
            log.exception("recurring task %s failed", name)
            await self._post(ops, f"❌ recurring {label} failed: {type(e).__name__}: {e}")
            raise

    async def _task_window(self, name: str, task: Any) -> str:
        view = await self.schedule(task.services, task.env, self.now(), task.duration, task.reason,
                                   actions=task.actions, user_id=None, user_name="opsbot",
                                   source=f"{RECURRING_PREFIX}{name}")
        await self.scheduler.cancel(job_id(view.id, "start"))
        return await self.run_start(view.id)

    async def _task_prune(self, name: str, task: Any) -> str:
        envs = set(task.envs) or None
        pairs = [(s, e) for s, e in self.catalog.pairs() if envs is None or e in envs]
        hours = int(task.older_than.total_seconds() // 3600) if task.older_than else None
        steps = await self._prune(pairs, "start", name, all_unused=task.all_unused, older_than_hours=hours)
        return await self._chore_report(name, "🧹", "image prune", steps)

    async def _task_run_job(self, name: str, task: Any) -> str:
        service, env = self.catalog.service(task.service), self.catalog.env(task.env)
        try:
            platform, target = self._target(service, env)
            run = await platform.run_job(service, env, target, task.cronjob, timeout=task.timeout.total_seconds(),
                                         poll_interval=self.poll_interval)
            took = short(timedelta(seconds=run.seconds))
            if run.ok:
                step = Step(phase="start", name=f"run-job {task.cronjob} in {env}", outcome="ok",
                            detail=f"job `{run.name}` completed in {took}")
            else:
                step = Step(phase="start", name=f"run-job {task.cronjob} in {env}", outcome="failed",
                            detail=f"job `{run.name}` {'did not finish' if run.outcome == 'timeout' else 'failed'}: "
                                   f"{run.reason or run.message or run.outcome}")
        except (PlatformError, UserError) as e:
            step = Step(phase="start", name=f"run-job {task.cronjob} in {env}", outcome="failed", detail=str(e))
        return await self._chore_report(name, "💾", task.description or "scheduled job", [step])

    async def _task_tls_check(self, name: str, task: Any) -> str:
        checker = TlsChecker(self.db, clock=self.scheduler.clock)
        findings = await checker.check(task.endpoints, task.warn_days)
        text = checker.report(name, findings, self.zone)
        if text:
            await self._post(task.channel or self.settings.channels.ops, text)
            return "warned"
        return "fine"

    async def _task_digest(self, name: str, task: Any) -> str:
        from commands.digest import build_digest

        text = await build_digest(self.audit, self.alerts, self.now(), timedelta(days=task.days), self.zone)
        await self._post(task.channel or self.settings.channels.ops, text)
        return "posted"

    async def _chore_report(self, name: str, icon: str, what: str, steps: list[Step]) -> str:
        failed = [s for s in steps if s.outcome == "failed"]
        head = f"{icon} {what} (`{name}`)" + (" failed" if failed else " done")
        lines = [head, *(s.line() for s in steps)] if steps else [f"{head}: nothing to do"]
        await self._post(self.settings.channels.ops, "\n".join(lines))
        return "failed" if failed else "ok"


def _failed(view: WindowView, phase: str | None) -> bool:
    return any(s.outcome == "failed" for s in view.steps if phase is None or s.phase == phase)


def _summary(view: WindowView, phase: str | None) -> str:
    steps = [s for s in view.steps if (phase is None or s.phase == phase) and s.name != "started"]
    failed = [s.name for s in steps if s.outcome == "failed"]
    return f"#{view.id}: {len(steps)} steps" + (f", failed: {', '.join(failed)}" if failed else ", all ok")


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


# ----------------------------------------------------------------------------- job functions


def _service(scheduler: Scheduler) -> MaintenanceService:
    service = scheduler.context.get(CONTEXT_KEY)
    if not isinstance(service, MaintenanceService):
        raise RuntimeError(f"scheduler {scheduler.name!r} has no maintenance service in its context")  # noqa: TRY004
    return service


async def run_start(scheduler: Scheduler, *, window: int) -> str:
    return await _service(scheduler).run_start(window)


async def run_end(scheduler: Scheduler, *, window: int) -> str:
    return (await _service(scheduler).run_end(window)).state


async def run_recurring(scheduler: Scheduler, *, name: str) -> str:
    return await _service(scheduler).run_recurring(name)
