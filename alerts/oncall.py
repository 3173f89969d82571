"""On-call rotations: who is on call, overrides and swaps, and the on-call role at hand-offs.

**Rotation arithmetic.** Rotations come from ``settings.oncall.rotations``. Shift ``k`` starts on
the local day ``start + k * period`` (period 1 or 7 days) at ``handoff`` in the rotation's time
zone and belongs to ``members[k % len(members)]``; ``k`` may be negative, so the order also holds
before ``start``. Shift boundaries are computed as *local* wall times and only then converted to
UTC, so a 09:00 hand-off stays at 09:00 local across daylight saving changes (a shift that spans
a change is an hour shorter or longer). Local times that do not exist or exist twice are resolved
the way PEP 495 ``fold=0`` does, deterministically:

- a hand-off in the spring-forward gap (02:30 in Europe/Berlin on the last Sunday of March)
  happens as if the clock had not changed yet, i.e. as many minutes after the gap starts
  (at 03:30 local, 01:30 UTC);
- a hand-off in the repeated fall-back hour (02:30 on the last Sunday of October) happens at the
  first of the two (02:30 CEST, 00:30 UTC).

**Overrides.** ``!oncall override @user 4h [reason]`` stores a row in ``oncall_overrides``: from
its start (inclusive) to its end (exclusive) the user is on call in that rotation instead of the
scheduled person. Overlapping overrides: the one created last wins. ``!oncall swap`` trades the
current shift with the next person's: the next person is on call from now to the end of the
current turn, and the current person takes the next turn in exchange (two overrides of kind
``swap``). Cancelled overrides stay in the table (``cancelled_at``) as history.

:func:`who` is a pure function of (rotation, instant, overrides); :class:`OnCall` is the service
around it with the database, the scheduler and the optional :class:`RoleSync`.

**Role sync.** With ``role_id`` set on a rotation and a :class:`RoleSync` given (the bot layer
implements it), the service keeps that role on whoever is on call: now, at start
(:meth:`OnCall.schedule_handoffs`), after each override or swap, and at each hand-off through a
persisted scheduler job ``oncall:handoff:<rotation>``. A failure (``PermissionError`` when the bot
may not manage roles, or anything else) is posted to the ops channel through the Notifier and
never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import BigInteger, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column

from alerts.notify import Notifier, OutMessage
from commands.catalog import UserError, suggest
from commands.db import Base, Database, UTCDateTime, utcnow
from commands.scheduler import Scheduler
from commands.timeutil import short
from config.settings import OncallConfig, RotationConfig, RotationMember, Settings

log = logging.getLogger(__name__)

CONTEXT_KEY = "oncall"
HANDOFF_JOB = "alerts.oncall:run_handoff"
MAX_OVERRIDE = timedelta(days=30)
MIN_OVERRIDE = timedelta(minutes=1)
MAX_REASON = 300
_EPSILON = timedelta(microseconds=1)

OverrideKind = Literal["override", "swap"]


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime {when!r}: pass an aware datetime")
    return when.astimezone(UTC)


# ----------------------------------------------------------------------------- rotations


class Rotation:
    """One configured rotation with its shift arithmetic (all results in UTC)."""

    def __init__(self, name: str, config: RotationConfig, default_timezone: str = "UTC") -> None:
        self.name = name
        self.config = config
        self.timezone = config.timezone or default_timezone
        self.tz = UTC if self.timezone == "UTC" else ZoneInfo(self.timezone)
        self.period = timedelta(days=1 if config.period == "daily" else 7)
        self.members: list[RotationMember] = list(config.members)

    def __repr__(self) -> str:
        return f"Rotation({self.name!r}, {self.config.period}, {self.config.handoff:%H:%M} {self.timezone})"

    def shift_start(self, k: int) -> datetime:
        """When shift ``k`` starts: ``start + k * period`` at ``handoff`` local (fold=0), in UTC."""
        day: date = self.config.start + k * self.period
        return datetime.combine(day, self.config.handoff, tzinfo=self.tz).astimezone(UTC)

    def shift_index(self, at: datetime) -> int:
        """The shift ``at`` falls in: ``shift_start(k) <= at < shift_start(k + 1)``."""
        at = _aware(at)
        days = (at.astimezone(self.tz).date() - self.config.start).days
        k = days // self.period.days
        while self.shift_start(k) > at:
            k -= 1
        while self.shift_start(k + 1) <= at:
            k += 1
        return k

    def member(self, k: int) -> RotationMember:
        return self.members[k % len(self.members)]

    def scheduled(self, at: datetime) -> RotationMember:
        """Who the rotation itself (no overrides) puts on call at ``at``."""
        return self.member(self.shift_index(at))

    def label(self, user_id: int) -> str:
        """The member's configured name, or ''."""
        return next((m.name for m in self.members if m.id == user_id), "")

    def local(self, when: datetime) -> datetime:
        return when.astimezone(self.tz)


# ----------------------------------------------------------------------------- models


class Override(BaseModel):
    """Someone on call in a rotation for [starts_at, ends_at) instead of the scheduled person."""

    model_config = ConfigDict(frozen=True)

    id: int
    rotation: str
    user_id: int
    user_name: str = ""
    starts_at: datetime
    ends_at: datetime
    reason: str = ""
    kind: OverrideKind = "override"
    created_by_id: int | None = None
    created_by_name: str = ""
    created_at: datetime

    def active(self, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at

    @classmethod
    def from_row(cls, row: OverrideRow) -> Override:
        return cls(id=row.id, rotation=row.rotation, user_id=row.user_id, user_name=row.user_name,
                   starts_at=row.starts_at, ends_at=row.ends_at, reason=row.reason,
                   kind=row.kind,  # type: ignore[arg-type]  # validated by pydantic
                   created_by_id=row.created_by_id, created_by_name=row.created_by_name,
                   created_at=row.created_at)


class OnCallSlot(BaseModel):
    """Who is on call in a rotation at an instant, since when, until when, and who is next."""

    model_config = ConfigDict(frozen=True)

    rotation: str
    at: datetime
    user_id: int
    user_name: str = Field("", description="the configured or override label; '' if none")
    since: datetime = Field(description="when this person's current stint began (UTC)")
    until: datetime = Field(description="when someone else takes over (UTC)")
    next_user_id: int = Field(description="who takes over at `until`; the same person in a one-member rotation")
    next_user_name: str = ""
    next_handoff: datetime = Field(description="the same instant as `until`")
    via_override: bool
    override: Override | None = Field(None, description="the override that puts this person on call")
    timezone: str = Field(description="the rotation's zone, for showing times")


# ----------------------------------------------------------------------------- the arithmetic


def _effective(rotation: Rotation, at: datetime, overrides: Sequence[Override]) -> tuple[int, str, Override | None]:
    active = [o for o in overrides if o.active(at)]
    if active:
        o = max(active, key=lambda o: (o.created_at, o.id))
        return o.user_id, o.user_name or rotation.label(o.user_id), o
    m = rotation.scheduled(at)
    return m.id, m.name, None


def who(rotation: Rotation, at: datetime, overrides: Iterable[Override] = ()) -> OnCallSlot:
    """Who is on call in ``rotation`` at ``at`` (aware), with ``overrides`` (any rotation's; the
    others are ignored) taking precedence while they last.

    ``since``/``until`` are the instants where the person on call changes, overrides included; in
    a rotation where one person is always on call, they are the current shift's bounds.
    """
    at = _aware(at)
    ovs = [o for o in overrides if o.rotation == rotation.name]
    user, name, via = _effective(rotation, at, ovs)
    k = rotation.shift_index(at)
    cycle = len(rotation.members) + 1

    # Forward: every boundary after `at` up to the last override boundary, then a full cycle.
    bounds = {b for o in ovs for b in (o.starts_at, o.ends_at) if b > at}
    horizon = max(bounds, default=at)
    j, extra = k + 1, 0
    while extra <= cycle:
        start = rotation.shift_start(j)
        bounds.add(start)
        if start > horizon:
            extra += 1
        j += 1
    until, next_user, next_name = None, user, name
    for b in sorted(bounds):
        u, n, _ = _effective(rotation, b, ovs)
        if u != user:
            until, next_user, next_name = b, u, n
            break
    if until is None:
        until = rotation.shift_start(k + 1)

    # Backward: the latest boundary at or before `at` where someone else was on call just before.
    bounds = {b for o in ovs for b in (o.starts_at, o.ends_at) if b <= at}
    horizon = min(bounds, default=at)
    j, extra = k, 0
    while extra <= cycle:
        start = rotation.shift_start(j)
        bounds.add(start)
        if start < horizon:
            extra += 1
        j -= 1
    since = None
    for b in sorted(bounds, reverse=True):
        if _effective(rotation, b - _EPSILON, ovs)[0] != user:
            since = b
            break
    if since is None:
        since = rotation.shift_start(k)

    return OnCallSlot(rotation=rotation.name, at=at, user_id=user, user_name=name, since=since,
                      until=until, next_user_id=next_user, next_user_name=next_name,
                      next_handoff=until, via_override=via is not None, override=via,
                      timezone=rotation.timezone)


# ----------------------------------------------------------------------------- storage


class OverrideRow(Base):
    """One override (the ORM model; see :class:`Override` for the public one)."""

    __tablename__ = "oncall_overrides"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rotation: Mapped[str] = mapped_column(String(32), index=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    user_name: Mapped[str] = mapped_column(String(100), default="")
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(16), default="override")
    created_by_id: Mapped[int | None] = mapped_column(BigInteger)
    created_by_name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_by: Mapped[str] = mapped_column(String(100), default="")


# ----------------------------------------------------------------------------- the service


class RoleSync(Protocol):
    """Keeps a Discord role on the person on call; implemented by the bot layer."""

    async def set_oncall_role(self, rotation: str, role_id: int, user_id: int) -> None:
        """Give ``role_id`` to ``user_id`` and take it from everyone else who has it.

        Raise ``PermissionError`` when the bot may not (no Manage Roles, role above the bot's).
        """
        ...


def _reason(text: str) -> str:
    text = " ".join((text or "").split())
    if len(text) > MAX_REASON:
        raise UserError(f"a reason can be at most {MAX_REASON} characters")
    return text


class OnCall:
    """Rotations, overrides and role sync.

    ``scheduler`` (optional): the service registers itself as ``scheduler.context["oncall"]`` and
    keeps one hand-off job per rotation with a role. ``notifier`` + ``ops_channel``: where role
    sync failures are reported. ``clock``: the current aware time.
    """

    def __init__(
        self,
        db: Database,
        config: OncallConfig,
        *,
        timezone: str = "UTC",
        scheduler: Scheduler | None = None,
        notifier: Notifier | None = None,
        ops_channel: str = "ops",
        role_sync: RoleSync | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._timezone = timezone
        self.config = config
        self.rotations = {name: Rotation(name, rc, timezone) for name, rc in config.rotations.items()}
        self._scheduler = scheduler
        self._notifier = notifier
        self._ops_channel = ops_channel
        self.role_sync = role_sync
        self._clock = clock
        if scheduler is not None:
            scheduler.context[CONTEXT_KEY] = self

    @classmethod
    def from_settings(cls, db: Database, settings: Settings, **kwargs: Any) -> OnCall:
        kwargs.setdefault("ops_channel", settings.channels.ops)
        return cls(db, settings.oncall, timezone=settings.timezone, **kwargs)

    def configure(self, config: OncallConfig) -> None:
        """Replace the rotations (the demo world maps its user names onto its guild's IDs).
        Overrides are kept; call :meth:`schedule_handoffs` afterwards to move roles."""
        self.config = config
        self.rotations = {name: Rotation(name, rc, self._timezone) for name, rc in config.rotations.items()}

    # -- reading ----------------------------------------------------------------------------

    def rotation(self, name: str | None = None) -> Rotation:
        """The named rotation, or the first configured one for None."""
        if not self.rotations:
            raise UserError("no on-call rotations are configured (`oncall.rotations`)")
        if name is None:
            return next(iter(self.rotations.values()))
        found = self.rotations.get(name.lower())
        if found is None:
            hint = suggest(name, list(self.rotations))
            known = ", ".join(f"`{r}`" for r in self.rotations)
            raise UserError(f"no rotation `{name}`" + (f" — did you mean `{hint}`?" if hint else f"; known: {known}"))
        return found

    async def who(self, rotation: str | None = None, at: datetime | None = None) -> OnCallSlot:
        rot = self.rotation(rotation)
        at = _aware(at) if at is not None else self._clock()
        overrides = await self._db.run(self._load, rot.name)
        return who(rot, at, overrides)

    async def everyone(self, at: datetime | None = None) -> list[OnCallSlot]:
        """One slot per rotation, in configured order (``!oncall``)."""
        at = _aware(at) if at is not None else self._clock()
        overrides = await self._db.run(self._load, None)
        return [who(rot, at, overrides) for rot in self.rotations.values()]

    async def current_user(self, rotation: str, at: datetime | None = None) -> int:
        """The user ID on call (for escalation)."""
        return (await self.who(rotation, at)).user_id

    async def overrides(self, rotation: str | None = None) -> list[Override]:
        """Overrides that have not ended, soonest first."""
        name = self.rotation(rotation).name if rotation else None
        now = self._clock()
        return [o for o in await self._db.run(self._load, name) if o.ends_at > now]

    def _load(self, rotation: str | None) -> list[Override]:
        # Enough history for `since` (back a full cycle of weekly shifts beyond the longest override).
        now = self._clock()
        horizon = now - MAX_OVERRIDE - timedelta(days=7) * (max((len(r.members) for r in self.rotations.values()), default=1) + 1)
        stmt = select(OverrideRow).where(OverrideRow.cancelled_at.is_(None), OverrideRow.ends_at > horizon)
        if rotation is not None:
            stmt = stmt.where(OverrideRow.rotation == rotation)
        with self._db.session() as session:
            rows = session.scalars(stmt.order_by(OverrideRow.starts_at, OverrideRow.id)).all()
            return [Override.from_row(r) for r in rows]

    # -- changing ---------------------------------------------------------------------------

    async def override(
        self,
        rotation: str | None,
        user_id: int,
        user_name: str,
        duration: timedelta,
        *,
        reason: str = "",
        by_id: int | None = None,
        by_name: str = "",
        start: datetime | None = None,
    ) -> Override:
        """Put ``user_id`` on call in ``rotation`` from ``start`` (default now) for ``duration``."""
        rot = self.rotation(rotation)
        if not MIN_OVERRIDE <= duration <= MAX_OVERRIDE:
            raise UserError(f"an override lasts between {short(MIN_OVERRIDE)} and {short(MAX_OVERRIDE)}")
        if user_id <= 0:
            raise UserError("an override needs a user")
        now = self._clock()
        begin = _aware(start) if start is not None else now
        row = OverrideRow(rotation=rot.name, user_id=user_id, user_name=user_name[:100], starts_at=begin,
                          ends_at=begin + duration, reason=_reason(reason), kind="override",
                          created_by_id=by_id, created_by_name=by_name[:100], created_at=now)
        (saved,) = await self._db.run(self._insert, [row])
        log.info("on-call %s: override %s for %s by %s", rot.name, saved.id, user_id, by_name)
        await self._changed(rot.name)
        return saved

    async def swap(self, rotation: str | None, *, by_id: int | None = None, by_name: str = "",
                   reason: str = "") -> tuple[Override, Override]:
        """Trade the current turn with the next person's (see the module docstring).

        Returns (the next person's override for the rest of the current turn, the current
        person's override for the next turn).
        """
        rot = self.rotation(rotation)
        now = self._clock()
        overrides = await self._db.run(self._load, rot.name)
        current = who(rot, now, overrides)
        if current.next_user_id == current.user_id:
            raise UserError(f"nobody to swap with in `{rot.name}`: it has one person on call")
        following = who(rot, current.until, overrides)
        text = _reason(reason) or "swap"
        rows = [
            OverrideRow(rotation=rot.name, user_id=current.next_user_id, user_name=current.next_user_name[:100],
                        starts_at=now, ends_at=current.until, reason=text, kind="swap",
                        created_by_id=by_id, created_by_name=by_name[:100], created_at=now),
            OverrideRow(rotation=rot.name, user_id=current.user_id, user_name=current.user_name[:100],
                        starts_at=current.until, ends_at=following.until, reason=text, kind="swap",
                        created_by_id=by_id, created_by_name=by_name[:100], created_at=now),
        ]
        first, second = await self._db.run(self._insert, rows)
        log.info("on-call %s: %s swapped %s and %s", rot.name, by_name, current.user_id, current.next_user_id)
        await self._changed(rot.name)
        return first, second

    async def cancel_override(self, override_id: int, *, by_name: str = "") -> Override:
        """End an override now (it stays in the history); UserError if there is no such active one."""
        now = self._clock()
        found = await self._db.run(self._cancel, override_id, by_name, now)
        if found is None:
            raise UserError(f"no override #{override_id} that has not ended")
        await self._changed(found.rotation)
        return found

    def _insert(self, rows: list[OverrideRow]) -> list[Override]:
        with self._db.session() as session:
            session.add_all(rows)
            session.flush()
            return [Override.from_row(r) for r in rows]

    def _cancel(self, override_id: int, by_name: str, now: datetime) -> Override | None:
        with self._db.session() as session:
            changed = session.execute(
                update(OverrideRow)
                .where(OverrideRow.id == override_id, OverrideRow.cancelled_at.is_(None), OverrideRow.ends_at > now)
                .values(cancelled_at=now, cancelled_by=by_name[:100])
            ).rowcount
            if not changed:
                return None
            row = session.get(OverrideRow, override_id, populate_existing=True)
            return Override.from_row(row) if row is not None else None

    # -- hand-offs and the role -------------------------------------------------------------

    def _syncs_role(self, rot: Rotation) -> bool:
        return rot.config.role_id is not None and self.role_sync is not None

    async def schedule_handoffs(self, *, sync_now: bool = True) -> None:
        """At start: move each rotation's role to whoever is on call and schedule the next hand-off."""
        for name in self.rotations:
            await self._changed(name, sync=sync_now)

    async def _changed(self, rotation: str, *, sync: bool = True) -> None:
        rot = self.rotation(rotation)
        if not self._syncs_role(rot):
            return
        await self.handoff(rot.name, sync=sync)

    async def handoff(self, rotation: str, *, sync: bool = True) -> OnCallSlot:
        """Move the role to whoever is on call now and schedule the next hand-off. Never raises
        for a role or scheduling failure: those are reported in the ops channel."""
        rot = self.rotation(rotation)
        slot = await self.who(rot.name)
        if sync and self._syncs_role(rot):
            assert self.role_sync is not None and rot.config.role_id is not None
            try:
                await self.role_sync.set_oncall_role(rot.name, rot.config.role_id, slot.user_id)
            except PermissionError as e:
                await self._report(f"⚠️ On-call `{rot.name}`: I may not give <@&{rot.config.role_id}> to "
                                   f"<@{slot.user_id}> ({e or 'missing permission'}). Give me Manage Roles "
                                   f"and put my role above that one.")
            except Exception as e:
                log.exception("on-call %s: role sync failed", rot.name)
                await self._report(f"⚠️ On-call `{rot.name}`: moving <@&{rot.config.role_id}> to "
                                   f"<@{slot.user_id}> failed: {type(e).__name__}: {e}")
        if self._scheduler is not None and self._syncs_role(rot):
            try:
                # misfire_grace_time=None: a late hand-off still moves the role to whoever is on call.
                await self._scheduler.add_at(f"oncall:handoff:{rot.name}", slot.until, HANDOFF_JOB,
                                             misfire_grace_time=None, rotation=rot.name)
            except Exception as e:
                log.exception("on-call %s: scheduling the next hand-off failed", rot.name)
                await self._report(f"⚠️ On-call `{rot.name}`: could not schedule the next hand-off "
                                   f"({type(e).__name__}: {e}); the role will not move by itself.")
        return slot

    async def _report(self, text: str) -> None:
        log.warning("%s", text)
        if self._notifier is None:
            return
        try:
            await self._notifier.send(self._ops_channel, OutMessage(content=text))  # no pings
        except Exception:
            log.exception("on-call: reporting to #%s failed", self._ops_channel)


async def run_handoff(scheduler: Scheduler, *, rotation: str) -> None:
    """The hand-off job (``oncall:handoff:<rotation>``)."""
    service = scheduler.context.get(CONTEXT_KEY)
    if not isinstance(service, OnCall):
        # A wiring mistake, not a bad argument.
        raise RuntimeError(f"scheduler {scheduler.name!r} has no on-call service in its context")  # noqa: TRY004
    if rotation not in service.rotations:
        log.warning("on-call: hand-off job for rotation %s, which is no longer configured", rotation)
        return
    await service.handoff(rotation)
