"""Escalation: page people, step by step, until somebody acknowledges or resolves the incident.

A policy (``settings.oncall.escalation_policies``) is a list of steps, each "``after`` this long,
``notify`` these (rotation names, ``role:<id>``, ``user:<id>``), maybe ``repeat`` every … up to
``times`` more, maybe ``dm``". :meth:`EscalationEngine.start` expands the policy into *ticks* (one
per notification, ordered by time), stores that plan in ``escalations`` and schedules one persisted
job per tick with a deterministic id, ``esc:<incident>:<generation>:<tick>``.
:meth:`EscalationEngine.stop` (on acknowledge and on resolve) marks the escalation stopped and
cancels its jobs.

A tick job, when it runs:

1. does nothing if the escalation was stopped or restarted since (a job cancelled a moment too
   late, or left over after a restart);
2. asks :class:`IncidentLookup` whether the incident is still open and unacknowledged, and stops
   the escalation if not;
3. claims the tick by inserting ``escalation_ticks(incident, generation, tick)``, in the same
   transaction as it re-checks that the escalation is still running. The primary key makes a
   second claim fail, so a tick never pages twice, whether a restart re-added its job or two
   jobs raced. Claim first, post second: if the bot dies between the two, that page is lost
   rather than repeated (at most once). A send that fails with a retryable error releases the
   claim and tries again later (``MAX_ATTEMPTS``);
4. posts the mentions in the incident's channel through :meth:`Notifier.send` with
   ``mention_users``/``mention_roles``, so they ping (``thread_post`` posts with pings suppressed),
   DMs the people when the step says ``dm``, and notes what it did in the incident's thread.

Jobs run however late (``misfire_grace_time=None``): a step due while the bot was down runs when
it is back and says how late it is. When several ticks are overdue at once, each but the last is
marked ``superseded`` and the last one pages everybody they would have, once.

After a restart, :meth:`EscalationEngine.resume` re-adds a job for every tick of a running
escalation that has neither run nor a job (e.g. cut off by a crash); jobs that survived are kept.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Integer, String, Text, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from alerts.notify import Notifier, OutMessage, SendError
from alerts.render import escape_md
from commands.db import Base, Database, UTCDateTime
from commands.scheduler import JobExists, Scheduler
from commands.timeutil import short
from config.settings import EscalationPolicy, OncallConfig

log = logging.getLogger(__name__)

CONTEXT_KEY = "escalation"
TICK_JOB = "alerts.escalation:run_tick"
MAX_ATTEMPTS = 3
RETRY_AFTER = timedelta(seconds=30)
LATE = timedelta(minutes=1)  # later than this, a page says how late it is


# ----------------------------------------------------------------------------- protocols


class IncidentLookup(Protocol):
    """Implemented by the alerts service/store. May be sync (run in a worker thread) or async."""

    def is_open_unacked(self, incident_id: int) -> bool | Awaitable[bool]:
        """True while the incident is open and nobody has acknowledged it."""
        ...


class OnCallLookup(Protocol):
    """Implemented by :class:`alerts.oncall.OnCall`."""

    async def current_user(self, rotation: str, at: datetime | None = None) -> int: ...


class DirectMessenger(Protocol):
    """Direct messages to a user; implemented by the bot layer. Raise when a DM cannot be sent
    (``PermissionError`` for closed DMs)."""

    async def send_dm(self, user_id: int, message: OutMessage) -> None: ...


# ----------------------------------------------------------------------------- the plan


class Tick(BaseModel):
    """One notification of an expanded policy."""

    model_config = ConfigDict(frozen=True)

    index: int
    step: int = Field(description="1-based step number in the policy")
    repeat: int = Field(description="0 for the step's first notification, then 1, 2, …")
    repeats: int = Field(description="how many repeats the step has")
    offset: timedelta = Field(description="after the escalation's start")
    notify: list[str]
    dm: bool = False


def expand(policy: EscalationPolicy) -> list[Tick]:
    """The policy's notifications in time order (ties: step order, then repeat order)."""
    raw = []
    for s, step in enumerate(policy.steps, 1):
        repeats = step.repeat.times if step.repeat else 0
        for r in range(repeats + 1):
            offset = step.after + (step.repeat.every * r if step.repeat else timedelta(0))
            raw.append((offset, s, r, repeats, step))
    raw.sort(key=lambda x: (x[0], x[1], x[2]))
    return [Tick(index=i, step=s, repeat=r, repeats=n, offset=off, notify=list(st.notify), dm=st.dm)
            for i, (off, s, r, n, st) in enumerate(raw)]


def job_id(incident_id: int, generation: int, tick: int) -> str:
    return f"esc:{incident_id}:{generation}:{tick}"


def job_prefix(incident_id: int) -> str:
    return f"esc:{incident_id}:"


# ----------------------------------------------------------------------------- storage


class EscalationRow(Base):
    """The running (or last) escalation of an incident, with its plan."""

    __tablename__ = "escalations"

    incident_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(Integer)
    policy: Mapped[str] = mapped_column(String(100))
    channel: Mapped[str] = mapped_column(String(100))
    message_id: Mapped[str | None] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(256), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    plan: Mapped[str] = mapped_column(Text)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stop_reason: Mapped[str] = mapped_column(String(200), default="")


class EscalationTickRow(Base):
    """A tick that ran: its claim (the "done" marker) and outcome."""

    __tablename__ = "escalation_ticks"

    incident_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tick: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    outcome: Mapped[str] = mapped_column(String(16))  # claimed | paged | superseded | failed
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[str] = mapped_column(Text, default="")


class TickState(BaseModel):
    model_config = ConfigDict(frozen=True)

    tick: Tick
    due_at: datetime
    outcome: str | None = Field(None, description="None: pending; claimed | paged | superseded | failed")
    at: datetime | None = None
    detail: str = ""


class EscalationState(BaseModel):
    """An incident's escalation, for ``!incident <id>``."""

    model_config = ConfigDict(frozen=True)

    incident_id: int
    generation: int
    policy: str
    channel: str
    message_id: str | None
    title: str
    started_at: datetime
    stopped_at: datetime | None
    stop_reason: str
    ticks: list[TickState]

    @property
    def active(self) -> bool:
        return self.stopped_at is None

    @property
    def next_due(self) -> datetime | None:
        if not self.active:
            return None
        return min((t.due_at for t in self.ticks if t.outcome is None), default=None)


class _Stopped(Exception):
    pass


def _plan(row: EscalationRow) -> list[Tick]:
    return [Tick.model_validate(t) for t in json.loads(row.plan)]


# ----------------------------------------------------------------------------- the engine


class EscalationEngine:
    """Schedules, runs and stops escalations (see the module docstring).

    ``oncall`` resolves rotation names to the user on call; ``store`` answers whether an incident
    is still open and unacknowledged; ``dm`` sends direct messages (None: steps with ``dm`` say
    in the thread that DMs are not available). The engine registers itself as
    ``scheduler.context["escalation"]``.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        notifier: Notifier,
        oncall: OnCallLookup,
        store: IncidentLookup,
        *,
        db: Database,
        config: OncallConfig,
        dm: DirectMessenger | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._notifier = notifier
        self._oncall = oncall
        self._store = store
        self._db = db
        self.config = config
        self._dm = dm
        self._clock = clock or scheduler.clock
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}
        scheduler.context[CONTEXT_KEY] = self

    # -- starting and stopping --------------------------------------------------------------

    async def start(
        self,
        incident_id: int,
        policy_name: str | None,
        channel: str,
        message_id: str | None,
        *,
        title: str = "",
        started_at: datetime | None = None,
    ) -> EscalationState | None:
        """Escalate ``incident_id`` by ``policy_name`` (the incident's route's; None: no escalation).

        Idempotent while the escalation runs (a second call returns it unchanged). After a stop
        (acknowledged, then unacknowledged) it starts over: a new generation whose steps count
        from ``started_at`` (default now).
        """
        name = policy_name
        if not name:
            return None
        policy = self.config.escalation_policies.get(name)
        if policy is None:
            log.error("incident %s: no escalation policy %r", incident_id, name)
            await self._thread(channel, message_id, incident_id,
                               f"⚠️ no escalation policy `{name}` is configured: nobody will be paged")
            return None
        started = started_at or self._clock()
        plan = expand(policy)
        row, created = await self._db.run(self._begin, incident_id, name, channel, message_id, title, started, plan)
        if created:
            for tick in plan:
                await self._schedule(incident_id, row.generation, tick, started + tick.offset, replace=True)
            log.info("incident %s: escalation %s started (generation %s, %s notifications)",
                     incident_id, name, row.generation, len(plan))
        return await self.state(incident_id)

    def _begin(self, incident_id: int, policy: str, channel: str, message_id: str | None, title: str,
               started: datetime, plan: list[Tick]) -> tuple[EscalationRow, bool]:
        with self._db.session() as session:
            row = session.get(EscalationRow, incident_id)
            if row is not None and row.stopped_at is None:
                return row, False
            generation = 1 if row is None else row.generation + 1
            if row is None:
                row = EscalationRow(incident_id=incident_id)
                session.add(row)
            row.generation, row.policy, row.channel, row.message_id = generation, policy, channel, message_id
            row.title, row.started_at, row.stopped_at, row.stop_reason = title[:256], started, None, ""
            row.plan = json.dumps([t.model_dump(mode="json") for t in plan])
            session.flush()
            return row, True

    async def _schedule(self, incident_id: int, generation: int, tick: Tick, when: datetime, *,
                        replace: bool, attempt: int = 1) -> bool:
        try:
            await self._scheduler.add_at(job_id(incident_id, generation, tick.index), when, TICK_JOB,
                                         replace_existing=replace, misfire_grace_time=None,
                                         incident_id=incident_id, generation=generation, tick=tick.index,
                                         attempt=attempt)
        except JobExists:
            return False
        return True

    async def stop(self, incident_id: int, reason: str) -> bool:
        """Stop the incident's escalation and cancel its pending steps (on acknowledge and on
        resolve). False if none was running."""
        stopped = await self._db.run(self._stop, incident_id, reason, self._clock())
        cancelled = await self._scheduler.cancel_prefix(job_prefix(incident_id))
        if stopped:
            log.info("incident %s: escalation stopped (%s); %s steps cancelled", incident_id, reason, cancelled)
        return stopped

    def _stop(self, incident_id: int, reason: str, now: datetime) -> bool:
        with self._db.session() as session:
            row = session.get(EscalationRow, incident_id)
            if row is None or row.stopped_at is not None:
                return False
            row.stopped_at, row.stop_reason = now, reason[:200]
            return True

    async def resume(self) -> int:
        """Call right after the scheduler starts: re-add the job of every pending tick that has
        none (lost in a crash). A tick whose re-added job turns out to have run meanwhile finds
        its claim taken and does nothing. Returns how many jobs were added."""
        added = 0
        for row, done in await self._db.run(self._running):
            running = self._scheduler.running_jobs()  # their jobs left the store when they started
            for tick in _plan(row):
                if tick.index in done or job_id(row.incident_id, row.generation, tick.index) in running:
                    continue
                if await self._schedule(row.incident_id, row.generation, tick, row.started_at + tick.offset,
                                        replace=False):
                    added += 1
        if added:
            log.warning("escalation: re-added %s step jobs that were lost", added)
        return added

    def _running(self) -> list[tuple[EscalationRow, set[int]]]:
        with self._db.session() as session:
            rows = session.scalars(select(EscalationRow).where(EscalationRow.stopped_at.is_(None))).all()
            out = []
            for row in rows:
                done = set(session.scalars(select(EscalationTickRow.tick).where(
                    EscalationTickRow.incident_id == row.incident_id,
                    EscalationTickRow.generation == row.generation)))
                out.append((row, done))
            return out

    async def state(self, incident_id: int) -> EscalationState | None:
        return await self._db.run(self._state, incident_id)

    def _state(self, incident_id: int) -> EscalationState | None:
        with self._db.session() as session:
            row = session.get(EscalationRow, incident_id)
            if row is None:
                return None
            marks = {m.tick: m for m in session.scalars(select(EscalationTickRow).where(
                EscalationTickRow.incident_id == incident_id, EscalationTickRow.generation == row.generation))}
            ticks = [TickState(tick=t, due_at=row.started_at + t.offset,
                               outcome=marks[t.index].outcome if t.index in marks else None,
                               at=marks[t.index].at if t.index in marks else None,
                               detail=marks[t.index].detail if t.index in marks else "")
                     for t in _plan(row)]
            return EscalationState(incident_id=row.incident_id, generation=row.generation, policy=row.policy,
                                   channel=row.channel, message_id=row.message_id, title=row.title,
                                   started_at=row.started_at, stopped_at=row.stopped_at,
                                   stop_reason=row.stop_reason, ticks=ticks)

    # -- running a tick ---------------------------------------------------------------------

    async def run_tick(self, incident_id: int, generation: int, tick: int, attempt: int = 1) -> str:
        """The body of a tick job; returns what happened (stale, closed, already, superseded,
        paged, retry). Raises only when a page could not be sent at all (reported by the scheduler)."""
        # One tick of an incident at a time (overdue ticks fold into the last one in order).
        lock, users = self._locks.get(incident_id, (asyncio.Lock(), 0))
        self._locks[incident_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._run_tick(incident_id, generation, tick, attempt)
        finally:
            lock, users = self._locks[incident_id]
            if users == 1:
                del self._locks[incident_id]
            else:
                self._locks[incident_id] = (lock, users - 1)

    async def _run_tick(self, incident_id: int, generation: int, index: int, attempt: int) -> str:
        now = self._clock()
        row = await self._db.run(self._current, incident_id, generation)
        if row is None:
            return "stale"
        plan = _plan(row)
        if not 0 <= index < len(plan):
            log.error("incident %s: escalation tick %s is not in its plan", incident_id, index)
            return "stale"
        tick = plan[index]
        if not await self._open_unacked(incident_id):
            await self.stop(incident_id, "acknowledged or closed")
            return "closed"
        superseded = any(row.started_at + t.offset <= now for t in plan[index + 1:])
        claim = await self._db.run(self._claim, incident_id, generation, index, now,
                                   "superseded" if superseded else "claimed")
        if claim is None:
            return "already"
        if superseded:
            return "superseded"
        folded = [plan[i] for i in claim]
        try:
            detail = await self._page(row, tick, folded, now)
        except SendError as e:
            if e.retryable and attempt < MAX_ATTEMPTS:
                delay = timedelta(seconds=e.retry_after) if e.retry_after else RETRY_AFTER
                await self._db.run(self._release, incident_id, generation, index)
                await self._schedule(incident_id, generation, tick, now + delay, replace=True, attempt=attempt + 1)
                log.warning("incident %s: escalation page failed (%s); retrying in %s", incident_id, e, short(delay))
                return "retry"
            await self._db.run(self._mark, incident_id, generation, index, "failed", str(e))
            raise
        await self._db.run(self._mark, incident_id, generation, index, "paged", json.dumps(detail))
        return "paged"

    async def _open_unacked(self, incident_id: int) -> bool:
        check = self._store.is_open_unacked
        if inspect.iscoroutinefunction(check):
            return bool(await check(incident_id))
        result = await asyncio.to_thread(check, incident_id)  # the alerts store is blocking
        if inspect.isawaitable(result):
            result = await result
        return bool(result)

    def _current(self, incident_id: int, generation: int) -> EscalationRow | None:
        with self._db.session() as session:
            row = session.get(EscalationRow, incident_id)
            if row is None or row.generation != generation or row.stopped_at is not None:
                return None
            return row

    def _claim(self, incident_id: int, generation: int, index: int, now: datetime, outcome: str) -> list[int] | None:
        """Mark the tick taken, if the escalation still runs and nobody took it. Returns the
        superseded ticks folded into this one (since the last tick that paged)."""
        try:
            with self._db.session() as session:
                session.add(EscalationTickRow(incident_id=incident_id, generation=generation, tick=index,
                                              outcome=outcome, at=now))
                session.flush()  # the write first: the primary key decides who claims
                row = session.get(EscalationRow, incident_id, populate_existing=True)
                if row is None or row.generation != generation or row.stopped_at is not None:
                    raise _Stopped  # rolls the claim back
                marks = session.execute(select(EscalationTickRow.tick, EscalationTickRow.outcome).where(
                    EscalationTickRow.incident_id == incident_id, EscalationTickRow.generation == generation,
                    EscalationTickRow.tick < index)).all()
        except (IntegrityError, _Stopped):
            return None
        last_real = max((t for t, o in marks if o != "superseded"), default=-1)
        return sorted(t for t, o in marks if o == "superseded" and t > last_real)

    def _release(self, incident_id: int, generation: int, index: int) -> None:
        with self._db.session() as session:
            session.execute(delete(EscalationTickRow).where(
                EscalationTickRow.incident_id == incident_id, EscalationTickRow.generation == generation,
                EscalationTickRow.tick == index))

    def _mark(self, incident_id: int, generation: int, index: int, outcome: str, detail: str) -> None:
        with self._db.session() as session:
            mark = session.get(EscalationTickRow, (incident_id, generation, index))
            if mark is not None:
                mark.outcome, mark.detail = outcome, detail

    async def _page(self, row: EscalationRow, tick: Tick, folded: list[Tick], now: datetime) -> dict[str, Any]:
        targets = list(dict.fromkeys(t for source in [*folded, tick] for t in source.notify))
        users: list[int] = []
        roles: list[int] = []
        notes: list[str] = []
        who: list[str] = []
        for target in targets:
            kind, _, value = target.partition(":")
            if kind == "role" and value.isdigit():
                roles.append(int(value))
                who.append(f"<@&{value}>")
            elif kind == "user" and value.isdigit():
                users.append(int(value))
                who.append(f"<@{value}>")
            else:
                try:
                    user = await self._oncall.current_user(target, now)
                except Exception as e:  # noqa: BLE001 - noted in the thread; the page still goes out
                    notes.append(f"rotation `{target}`: {e}")
                    continue
                users.append(user)
                who.append(f"<@{user}> ({target})")
        users = list(dict.fromkeys(users))
        roles = list(dict.fromkeys(roles))
        mentions = " ".join([*(f"<@{u}>" for u in users), *(f"<@&{r}>" for r in roles)])
        due = row.started_at + tick.offset
        elapsed = now - row.started_at
        step = self._step_text(row, tick)
        title = f": {escape_md(row.title)}" if row.title else ""  # alert text is not ours
        content = f"🚨 {mentions} — incident #{row.incident_id} is unacknowledged after {short(elapsed)}{title} ({step})"
        if now - due > LATE:
            content += f" — sent {short(now - due)} late: the bot was not running"
        if not users and not roles:
            content = f"🚨 incident #{row.incident_id}{title}: escalation {step} has nobody to notify"
        # The nonce makes Discord drop a duplicate of this page if a send that timed out is retried.
        nonce = f"esc{row.incident_id}.{row.generation}.{tick.index}"[:25]
        message_id = await self._notifier.send(row.channel, OutMessage(content=content[:2000], mention_users=users,
                                                                       mention_roles=roles, nonce=nonce))
        if any(t.dm for t in [*folded, tick]) and users:
            notes.extend(await self._dms(row, users, content))
        line = f"escalation {step}: notified " + (", ".join(who) or "nobody")
        if folded:
            line += f" (with {len(folded)} overdue notification{'s' if len(folded) > 1 else ''} folded in)"
        if notes:
            line += "; " + "; ".join(notes)
        await self._thread(row.channel, row.message_id, row.incident_id, line)
        return {"users": users, "roles": roles, "message_id": message_id, "notes": notes,
                "folded": [t.index for t in folded]}

    @staticmethod
    def _step_text(row: EscalationRow, tick: Tick) -> str:
        steps = max(t.step for t in _plan(row))
        text = f"step {tick.step}/{steps}"
        if tick.repeats:
            text += f", repeat {tick.repeat}/{tick.repeats}" if tick.repeat else f", then {tick.repeats} repeats"
        return text

    async def _dms(self, row: EscalationRow, users: list[int], content: str) -> list[str]:
        if self._dm is None:
            return ["DMs are not available"]
        notes = []
        text = f"{content}\nAcknowledge it in #{row.channel}."
        for user in users:
            try:
                await self._dm.send_dm(user, OutMessage(content=text[:2000]))
            except Exception as e:  # noqa: BLE001 - noted in the thread
                notes.append(f"DM to <@{user}> failed ({type(e).__name__}: {e})")
        return notes

    async def _thread(self, channel: str, message_id: str | None, incident_id: int, text: str) -> None:
        if message_id is None:
            return
        try:
            await self._notifier.thread_post(channel, message_id, f"Incident #{incident_id}", text)
        except Exception:
            log.exception("incident %s: timeline post failed", incident_id)


async def run_tick(scheduler: Scheduler, *, incident_id: int, generation: int, tick: int, attempt: int = 1) -> str:
    """The tick job (``esc:<incident>:<generation>:<tick>``)."""
    engine = scheduler.context.get(CONTEXT_KEY)
    if not isinstance(engine, EscalationEngine):
        # A wiring mistake, not a bad argument.
        raise RuntimeError(f"scheduler {scheduler.name!r} has no escalation engine in its context")  # noqa: TRY004
    return await engine.run_tick(incident_id, generation, tick, attempt)
