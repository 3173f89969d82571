"""Deploy freezes: `!freeze prod 2d release week`, `!unfreeze prod`, and scheduled ones from config.

A freeze refuses `!deploy` and `!rollback` in its env, with its reason, unless the user holds
``deploy:force`` and adds ``--force`` (then the deploy goes ahead and the audit log says so).

Freezes are rows of ``deploy_freezes``. A scheduled freeze (``freezes.scheduled.<name>``: cron +
duration) is not a job that has to run for the freeze to hold: whether one is in force is worked
out from its crontab whenever a deploy asks (the latest cron time at or before now, plus the
duration), so a bot that was down over Friday 18:00 still refuses deploys on Saturday. The
occurrence in force is written as a row the first time it is seen (``source`` =
``schedule:<name>``), so `!unfreeze` can lift it like any other and `!freeze list` shows it. A cron
job per scheduled freeze only announces it in the ops channel; if that job runs late (the bot was
down at the time) it says so, and if the freeze is over by then it says it passed unannounced.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict
from sqlalchemy import BigInteger, Index, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column

from commands.audit import AuditLog
from commands.catalog import Catalog, UserError
from commands.db import Base, Database, UTCDateTime, utcnow
from commands.timeutil import short
from commands.when import both

if TYPE_CHECKING:
    from commands.scheduler import Scheduler
    from config.settings import ScheduledFreeze, Settings

log = logging.getLogger(__name__)

CONTEXT_KEY = "freezes"
ANNOUNCE_JOB = "commands.freeze:announce_scheduled"
JOB_PREFIX = "freeze:"
Post = Callable[[str, str], Awaitable[None]]  # (channel, text)


class FreezeRow(Base):
    __tablename__ = "deploy_freezes"
    __table_args__ = (UniqueConstraint("source", "env", "starts_at"), Index("ix_deploy_freezes_env_ends", "env", "ends_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    env: Mapped[str] = mapped_column(String(32))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(String(300))
    created_by: Mapped[str] = mapped_column(String(100))
    created_by_id: Mapped[int | None] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(64), default="manual")  # manual | schedule:<name>
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_by: Mapped[str | None] = mapped_column(String(100), nullable=True)


class FreezeInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    env: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str
    source: str
    ended_at: datetime | None = None
    ended_by: str | None = None

    @property
    def scheduled(self) -> str | None:
        return self.source.split(":", 1)[1] if self.source.startswith("schedule:") else None

    def describe(self, team_zone: str = "UTC") -> str:
        who = f"scheduled freeze `{self.scheduled}`" if self.scheduled else f"by {self.created_by}"
        return f"deploys to `{self.env}` are frozen until {both(self.ends_at, team_zone)} ({who}): {self.reason}"

    @classmethod
    def of(cls, row: FreezeRow) -> FreezeInfo:
        return cls(id=row.id, env=row.env, starts_at=row.starts_at, ends_at=row.ends_at, reason=row.reason,
                   created_by=row.created_by, source=row.source, ended_at=row.ended_at, ended_by=row.ended_by)


class Frozen(UserError):
    """A deploy or rollback refused by a freeze; the message says why and how to force it."""

    def __init__(self, freeze: FreezeInfo, what: str, team_zone: str) -> None:
        self.freeze = freeze
        super().__init__(f"{freeze.describe(team_zone)}. `!{what}` is refused; someone holding `deploy:force` "
                         f"can add `--force`.")


@dataclass(frozen=True)
class Gate:
    """What a freeze says about one deploy or rollback."""

    freeze: FreezeInfo | None
    forced: bool = False  # frozen, forced with --force by someone allowed to

    @property
    def note(self) -> str | None:
        if self.freeze is None or not self.forced:
            return None
        return f"🧊 forced past the freeze of `{self.freeze.env}` ({self.freeze.reason}); recorded in the audit log"


class FreezeNeedsGrant(Exception):
    """``--force`` by someone without ``deploy:force``: the bot layer turns it into a denial."""

    def __init__(self, freeze: FreezeInfo) -> None:
        self.freeze = freeze
        super().__init__(f"deploys to `{freeze.env}` are frozen ({freeze.reason}); `--force` needs the "
                         f"`deploy:force` grant")


def occurrence(cfg: ScheduledFreeze, team_zone: str, now: datetime) -> tuple[datetime, datetime] | None:
    """The occurrence of a scheduled freeze in force at ``now``: (start, end), or None."""
    from apscheduler.triggers.cron import CronTrigger

    tz = UTC if (cfg.timezone or team_zone) == "UTC" else ZoneInfo(cfg.timezone or team_zone)
    trigger = CronTrigger.from_crontab(cfg.cron, timezone=tz)
    fire = trigger.get_next_fire_time(None, now - cfg.duration)
    latest = None
    for _ in range(100_000):  # a freeze of 30 days on a minutely cron is 43,200 fires
        if fire is None or fire > now:
            break
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    if latest is None:
        return None
    start = latest.astimezone(UTC)
    end = start + cfg.duration
    return (start, end) if start <= now < end else None


class FreezeService:
    """Freezes over the database; ``clock`` gives now (tests and simulated worlds pass their own)."""

    def __init__(self, db: Database, settings: Settings, audit: AuditLog, *, clock: Callable[[], datetime] = utcnow,
                 post: Post | None = None, scheduler: Scheduler | None = None) -> None:
        if scheduler is not None:  # before it starts, so an announcement due at once finds us
            scheduler.context[CONTEXT_KEY] = self
        self.db = db
        self.settings = settings
        self.catalog = Catalog(settings)
        self.audit = audit
        self.clock = clock
        self.post = post

    @property
    def config(self) -> Any:
        return self.settings.freezes

    # -- reading ---------------------------------------------------------------------------

    async def active(self, env: str | None = None) -> list[FreezeInfo]:
        """Freezes in force now (in ``env``), soonest end first; scheduled ones included."""
        now = self.clock()
        wanted = []
        for name, cfg in self.config.scheduled.items():
            found = occurrence(cfg, self.settings.timezone, now)
            if found:
                wanted += [(name, e, cfg.reason, *found) for e in cfg.envs if env in (None, e)]
        return await self.db.run(self._active, env, now, wanted)

    def _active(self, env: str | None, now: datetime, scheduled: list[tuple[str, str, str, datetime, datetime]]
                ) -> list[FreezeInfo]:
        with self.db.session() as session:
            if scheduled:  # check-then-insert: replicas sharing the database must not both insert
                self.db.exclusive(session, "freezes")
            for name, e, reason, start, end in scheduled:
                source = f"schedule:{name}"
                exists = session.scalar(select(FreezeRow.id).where(
                    FreezeRow.source == source, FreezeRow.env == e, FreezeRow.starts_at == start))
                if exists is None:
                    session.add(FreezeRow(env=e, starts_at=start, ends_at=end, reason=reason, created_by="opsbot",
                                          created_by_id=None, source=source))
                    session.flush()
            query = select(FreezeRow).where(FreezeRow.starts_at <= now, FreezeRow.ends_at > now,
                                            FreezeRow.ended_at.is_(None))
            if env is not None:
                query = query.where(FreezeRow.env == env)
            return [FreezeInfo.of(r) for r in session.scalars(query.order_by(FreezeRow.ends_at, FreezeRow.id))]

    # -- freezing --------------------------------------------------------------------------

    async def freeze(self, env: str, until: datetime, reason: str, *, user_id: int | None, user_name: str,
                     channel: str | None = None) -> FreezeInfo:
        env = self.catalog.env(env)
        reason = " ".join(reason.split())
        if not reason:
            raise UserError("say why: `!freeze <env> <duration|until T> <reason>`, e.g. `!freeze prod 2d release week`")
        now = self.clock()
        if until <= now:
            raise UserError("a freeze must end in the future")
        if until - now > self.config.max_duration:
            raise UserError(f"a freeze can last at most {short(self.config.max_duration)} "
                            f"(freezes.max_duration); this one would last {short(until - now)}")

        def add() -> FreezeInfo:
            with self.db.session() as session:
                row = FreezeRow(env=env, starts_at=now, ends_at=until, reason=reason[:300], created_by=user_name,
                                created_by_id=user_id, source="manual")
                session.add(row)
                session.flush()
                return FreezeInfo.of(row)

        info = await self.db.run(add)
        await self.audit.record(user_id=user_id, user_name=user_name, action="freeze", env=env, result="ok",
                                args={"op": "freeze", "until": until.isoformat(), "id": info.id},
                                detail=f"until {until:%Y-%m-%d %H:%M} UTC: {reason}", channel=channel)
        return info

    async def unfreeze(self, env: str, *, user_id: int | None, user_name: str,
                       channel: str | None = None) -> list[FreezeInfo]:
        """End every freeze in force in ``env`` now (scheduled occurrences too); UserError if none."""
        env = self.catalog.env(env)
        active = await self.active(env)
        if not active:
            raise UserError(f"`{env}` is not frozen")
        now = self.clock()

        def end() -> list[FreezeInfo]:
            with self.db.session() as session:
                out = []
                for info in active:
                    row = session.get(FreezeRow, info.id, with_for_update=True)
                    if row is not None and row.ended_at is None:
                        row.ended_at, row.ended_by = now, user_name
                        out.append(FreezeInfo.of(row))
                return out

        ended = await self.db.run(end)
        await self.audit.record(user_id=user_id, user_name=user_name, action="freeze", env=env, result="ok",
                                args={"op": "unfreeze", "ids": [f.id for f in ended]},
                                detail="lifted: " + "; ".join(f.reason for f in ended), channel=channel)
        return ended

    # -- the deploy path -------------------------------------------------------------------

    async def gate(self, env: str, service: str, what: str, *, force: bool, may_force: bool,
                   user_id: int | None, user_name: str, channel: str | None = None, kind: str = "deploy") -> Gate:
        """Check a deploy or rollback (``what``, e.g. "deploy chat v1.5.0 to prod") against freezes.

        ``kind`` is the command (deploy, rollback). Not frozen: Gate(None). Frozen without ``force``: raises :class:`Frozen` (audited as
        denied). ``force`` without ``may_force``: raises :class:`FreezeNeedsGrant`. Forced by
        someone who may: audited as ``deploy:force`` and Gate(freeze, forced=True).
        """
        frozen = await self.active(env)
        if not frozen:
            return Gate(None)
        freeze = frozen[-1]  # the one that lasts longest
        if not force:
            await self.audit.record(user_id=user_id, user_name=user_name, action=kind, service=service, env=env,
                                    result="denied", args={"freeze": freeze.id},
                                    detail=f"frozen: {freeze.reason}", channel=channel)
            raise Frozen(freeze, kind, self.settings.timezone)
        if not may_force:
            raise FreezeNeedsGrant(freeze)
        await self.audit.record(user_id=user_id, user_name=user_name, action="deploy:force", service=service, env=env,
                                result="ok", args={"freeze": freeze.id, "what": what},
                                detail=f"{what} forced past the freeze ({freeze.reason})", channel=channel)
        return Gate(freeze, forced=True)

    # -- scheduled freezes -----------------------------------------------------------------

    async def schedule_jobs(self, scheduler: Scheduler) -> None:
        """One announcing cron job per scheduled freeze (``freeze:<name>``); stale ones go."""
        scheduler.context[CONTEXT_KEY] = self
        wanted = set()
        for name, cfg in self.config.scheduled.items():
            job_id = f"{JOB_PREFIX}{name}"
            wanted.add(job_id)
            await scheduler.add_cron(job_id, cfg.cron, ANNOUNCE_JOB, timezone=cfg.timezone or self.settings.timezone,
                                     misfire_grace_time=None, name=name)
        for job in await scheduler.jobs(JOB_PREFIX):
            if job.id not in wanted:
                await scheduler.cancel(job.id)

    async def announce(self, name: str, grace: timedelta) -> str:
        """The body of a scheduled freeze's cron job: announce the occurrence in force."""
        cfg = self.config.scheduled.get(name)
        channel = self.settings.channels.ops
        if cfg is None:
            return "unknown"
        now = self.clock()
        zone = self.settings.timezone
        found = occurrence(cfg, zone, now)
        if found is None:
            text = (f"🧊 the scheduled freeze `{name}` ({', '.join(cfg.envs)}: {cfg.reason}) began and ended while "
                    "the bot was not running; it was not announced")
            await self._post(channel, text)
            return "passed"
        start, end = found
        active = await self.active()
        if not any(f.source == f"schedule:{name}" and f.starts_at == start for f in active):
            return "lifted"  # someone ran !unfreeze already
        late = now - start
        text = (f"🧊 scheduled freeze `{name}`: deploys to {', '.join(f'`{e}`' for e in cfg.envs)} are frozen until "
                f"{both(end, zone)}: {cfg.reason}. `!unfreeze <env>` lifts it; `--force` needs `deploy:force`.")
        if late > grace:
            text += f" (announced {short(late)} late: the bot was not running at {both(start, zone)})"
        await self._post(channel, text)
        return "announced"

    async def _post(self, channel: str, text: str) -> None:
        if self.post is None:
            log.info("%s", text)
            return
        await self.post(channel, text)


async def announce_scheduled(scheduler: Scheduler, *, name: str) -> str:
    """Cron job of a scheduled freeze (``freeze:<name>``)."""
    service = scheduler.context.get(CONTEXT_KEY)
    if not isinstance(service, FreezeService):
        raise RuntimeError(f"scheduler {scheduler.name!r} has no freeze service in its context")  # noqa: TRY004
    grace = timedelta(seconds=scheduler.misfire_grace_time or 0)
    return await service.announce(name, grace)
