"""Deploy locks: one deploy or rollback at a time per (service, env), and manual locks.

Two kinds of lock share the ``locks`` table:

- an **operation** lock is held while a deploy or rollback runs on one (service, env). It carries a
  safety TTL (the env's rollout timeout plus a margin) so a crashed bot never blocks a target for
  ever. Use it as ``async with locks.operation(...)``: it is released on exit, also on an exception
  or cancellation.
- a **manual** lock is set by ``!lock``: on a whole env (``service=None``) or on one service there,
  with a reason and an optional duration. An env lock blocks operations on every service in that env;
  a service lock blocks only that service. The holder is blocked too: a lock means "nobody deploys
  here", including the person who set it, who can ``!unlock`` first. One rule, no surprises, and no
  "I forgot I was holding it" deploys during a freeze someone else is relying on.

The database is the source of truth, so several bot replicas on one database never double a lock.
Each lock row has a ``scope`` (``operation/prod/chat-gui``, ``manual/prod/*``) under a unique
constraint: acquiring is an INSERT, and losing the race is an ``IntegrityError``. Expired rows are
deleted in the same transaction, before the insert, so an expired lock never blocks and two
acquirers of an expired scope still race on the constraint. Ids never repeat (SQLite
``AUTOINCREMENT``, PostgreSQL sequences), so releasing a stale id never frees somebody else's lock.

Callers get :class:`LockInfo` pydantic models, never ORM objects. Expiry is judged by the injected
``clock``, not the database's: replicas must keep their clocks in sync (NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from commands.catalog import UserError
from commands.db import Base, Database, UTCDateTime, utcnow
from commands.timeutil import short

log = logging.getLogger(__name__)

LockKind = Literal["operation", "manual"]

MAX_REASON = 300
# Losing the insert race and then finding no row means the winner already released it; try again.
_ACQUIRE_ATTEMPTS = 5


class LockRow(Base):
    """One lock (the ORM model; see :class:`LockInfo` for the public one)."""

    __tablename__ = "locks"
    __table_args__ = (
        UniqueConstraint("scope"),
        Index("ix_locks_env_service", "env", "service"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(16))
    env: Mapped[str] = mapped_column(String(32))
    service: Mapped[str | None] = mapped_column(String(64))
    holder_id: Mapped[int | None] = mapped_column(BigInteger)
    holder_name: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


def _scope(kind: LockKind, env: str, service: str | None) -> str:
    return f"{kind}/{env}/{service or '*'}"


def _check_names(env: str, service: str | None) -> None:
    """Names come resolved from the catalog; anything else here is a programming error."""
    for what, name, size in (("env", env, 32), ("service", service, 64)):
        if name is None:
            continue
        if not name or "/" in name or "*" in name or len(name) > size:
            raise ValueError(f"bad {what} name {name!r}")


def _at(when: datetime, now: datetime) -> str:
    """'14:02 UTC' today, 'May 2 14:02 UTC' on another day."""
    if when.date() == now.date():
        return f"{when:%H:%M} UTC"
    return f"{when:%b} {when.day} {when:%H:%M} UTC"


class LockInfo(BaseModel):
    """A lock as callers see it."""

    model_config = ConfigDict(frozen=True)

    id: int
    kind: LockKind
    env: str
    service: str | None = Field(description="None: the whole env (manual locks only)")
    holder_id: int | None = Field(description="Discord user ID; None for the bot's own locks")
    holder_name: str
    reason: str = Field(
        description="manual: why it is locked; operation: what runs, e.g. 'deploy chat-gui v1.5.1'"
    )
    acquired_at: datetime
    expires_at: datetime | None = Field(description="None: until unlocked")

    @classmethod
    def from_row(cls, row: LockRow) -> LockInfo:
        return cls(
            id=row.id,
            kind=row.kind,  # type: ignore[arg-type]  # validated by pydantic
            env=row.env,
            service=row.service,
            holder_id=row.holder_id,
            holder_name=row.holder_name,
            reason=row.reason,
            acquired_at=row.acquired_at,
            expires_at=row.expires_at,
        )

    @property
    def operation(self) -> str | None:
        """What runs under an operation lock; None for a manual lock."""
        return self.reason if self.kind == "operation" else None

    @property
    def target(self) -> str:
        """'`chat-gui` in `prod`', or '`prod`' for a lock on the whole env."""
        return f"`{self.service}` in `{self.env}`" if self.service else f"`{self.env}`"

    def covers(self, service: str, env: str) -> bool:
        """Whether this lock stops an operation on ``service`` in ``env``."""
        return self.env == env and self.service in (None, service)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def describe(self, now: datetime) -> str:
        """For users: "`chat-gui` in `prod` is locked by mod since 14:02 UTC (3m ago): deploy …".

        Manual locks with a duration add "(until 15:00 UTC)"; an operation's TTL is a safety net,
        not a promise, so it is not shown.
        """
        age = now - self.acquired_at
        since = "just now" if age < timedelta(seconds=1) else f"{short(age)} ago"
        text = (
            f"{self.target} is locked by {self.holder_name} "
            f"since {_at(self.acquired_at, now)} ({since}): {self.reason}"
        )
        if self.kind == "manual" and self.expires_at is not None:
            text += f" (until {_at(self.expires_at, now)})"
        return text


class Locked(UserError):
    """Refused because a lock is in the way; ``blocker`` is that lock."""

    def __init__(self, blocker: LockInfo, *, now: datetime) -> None:
        super().__init__(blocker.describe(now))
        self.blocker = blocker


class OperationLock:
    """A held operation lock. :meth:`release` is idempotent; prefer ``LockManager.operation``."""

    def __init__(self, manager: LockManager, info: LockInfo) -> None:
        self._manager = manager
        self.info = info
        self.released = False

    @property
    def id(self) -> int:
        return self.info.id

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self._manager.release(self.id)

    async def renew(self, ttl: timedelta) -> bool:
        """Push the expiry to now + ``ttl`` for a long operation; False if the lock was lost."""
        if self.released:
            return False
        info = await self._manager.renew(self.id, ttl)
        if info is None:
            return False
        self.info = info
        return True

    def __repr__(self) -> str:
        where = f"{self.info.service}@{self.info.env}"
        return f"OperationLock(id={self.id}, {where}, released={self.released})"


class LockManager:
    """Acquires, releases and lists locks through a :class:`Database`.

    ``clock`` returns the current aware UTC time; tests and simulated worlds pass their own.
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock
        self._cleanup: set[asyncio.Task[object]] = set()

    # -- operation locks ---------------------------------------------------------------------

    async def acquire_operation(
        self,
        service: str,
        env: str,
        holder_id: int | None,
        holder_name: str,
        operation: str,
        ttl: timedelta,
    ) -> OperationLock:
        """Take the operation lock on (service, env) or raise :class:`Locked` naming the blocker.

        Blockers: an unexpired operation lock on the same target, a manual lock on the env or on
        the service there (whoever holds it).
        """
        _check_names(env, service)
        if ttl <= timedelta(0):
            raise ValueError(f"ttl must be positive, not {ttl}")
        # The worker thread commits even if this task is cancelled while waiting for it; a lock
        # nobody will ever release must not be left behind for the whole TTL.
        args = (service, env, holder_id, holder_name, operation, ttl)
        future = asyncio.ensure_future(self._db.run(self._acquire_operation, *args))
        try:
            info = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._release_orphan)
            raise
        return OperationLock(self, info)

    @contextlib.asynccontextmanager
    async def operation(
        self,
        service: str,
        env: str,
        holder_id: int | None,
        holder_name: str,
        operation: str,
        ttl: timedelta,
    ) -> AsyncIterator[OperationLock]:
        """``async with locks.operation(...) as lock:`` — held inside, released on any exit.

        A failed release is logged, never raised: it must not hide the body's outcome, and the
        TTL frees the target anyway.
        """
        held = await self.acquire_operation(service, env, holder_id, holder_name, operation, ttl)
        try:
            yield held
        finally:
            try:
                # Shielded: a second cancellation while releasing must not skip the release.
                await asyncio.shield(held.release())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "could not release lock %s; it expires at %s", held.id, held.info.expires_at
                )

    def _release_orphan(self, future: asyncio.Future[LockInfo]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        task: asyncio.Task[object] = asyncio.ensure_future(self.release(future.result().id))
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)

    def _acquire_operation(
        self,
        service: str,
        env: str,
        holder_id: int | None,
        holder_name: str,
        operation: str,
        ttl: timedelta,
    ) -> LockInfo:
        for _ in range(_ACQUIRE_ATTEMPTS):
            now = self._clock()
            row = LockRow(
                scope=_scope("operation", env, service),
                kind="operation",
                env=env,
                service=service,
                holder_id=holder_id,
                holder_name=holder_name[:100],
                reason=operation,
                acquired_at=now,
                expires_at=now + ttl,
            )
            try:
                with self._db.session() as session:
                    # A write first: on SQLite it takes the write lock before anything is read.
                    self._purge(session, now)
                    manual = session.scalars(
                        select(LockRow)
                        .where(
                            LockRow.kind == "manual",
                            LockRow.env == env,
                            or_(LockRow.service.is_(None), LockRow.service == service),
                            self._unexpired(now),
                        )
                        .order_by(LockRow.service.is_not(None), LockRow.id)
                        .limit(1)
                    ).first()
                    if manual is not None:
                        raise Locked(LockInfo.from_row(manual), now=now)
                    session.add(row)
                    session.flush()
                    return LockInfo.from_row(row)
            except IntegrityError:
                holder = self._find(_scope("operation", env, service), now)
                if holder is not None:
                    raise Locked(holder, now=now) from None
        raise UserError(f"`{service}` in `{env}` is busy; try again in a moment")

    async def release(self, lock_id: int) -> bool:
        """Delete lock ``lock_id`` (any kind); False if it was already gone."""
        return await self._db.run(self._release, lock_id)

    def _release(self, lock_id: int) -> bool:
        with self._db.session() as session:
            return session.execute(delete(LockRow).where(LockRow.id == lock_id)).rowcount > 0

    async def renew(self, lock_id: int, ttl: timedelta) -> LockInfo | None:
        """Set an unexpired lock's expiry to now + ``ttl``; None if it is gone or expired."""
        if ttl <= timedelta(0):
            raise ValueError(f"ttl must be positive, not {ttl}")
        return await self._db.run(self._renew, lock_id, ttl)

    def _renew(self, lock_id: int, ttl: timedelta) -> LockInfo | None:
        now = self._clock()
        with self._db.session() as session:
            changed = session.execute(
                update(LockRow)
                .where(LockRow.id == lock_id, self._unexpired(now))
                .values(expires_at=now + ttl)
            ).rowcount
            if not changed:
                return None
            row = session.get(LockRow, lock_id, populate_existing=True)
            return LockInfo.from_row(row) if row is not None else None

    # -- manual locks ------------------------------------------------------------------------

    async def lock(
        self,
        env: str,
        service: str | None,
        holder_id: int | None,
        holder_name: str,
        reason: str,
        duration: timedelta | None = None,
    ) -> LockInfo:
        """Lock a whole env (``service=None``) or one service there, until unlocked or ``duration``.

        A second manual lock on the same scope raises :class:`Locked` naming the first. An env lock
        and service locks in that env may coexist; a running operation does not prevent a lock
        (it blocks the next one).
        """
        _check_names(env, service)
        reason = " ".join(reason.split())
        if not reason:
            raise UserError("a lock needs a reason, e.g. `db upgrade`")
        if len(reason) > MAX_REASON:
            raise UserError(f"a lock reason can be at most {MAX_REASON} characters")
        if duration is not None and duration <= timedelta(0):
            raise UserError("a lock duration must be positive")
        return await self._db.run(self._lock, env, service, holder_id, holder_name, reason, duration)

    def _lock(
        self,
        env: str,
        service: str | None,
        holder_id: int | None,
        holder_name: str,
        reason: str,
        duration: timedelta | None,
    ) -> LockInfo:
        scope = _scope("manual", env, service)
        for _ in range(_ACQUIRE_ATTEMPTS):
            now = self._clock()
            row = LockRow(
                scope=scope,
                kind="manual",
                env=env,
                service=service,
                holder_id=holder_id,
                holder_name=holder_name[:100],
                reason=reason,
                acquired_at=now,
                expires_at=None if duration is None else now + duration,
            )
            try:
                with self._db.session() as session:
                    self._purge(session, now)
                    session.add(row)
                    session.flush()
                    return LockInfo.from_row(row)
            except IntegrityError:
                existing = self._find(scope, now)
                if existing is not None:
                    raise Locked(existing, now=now) from None
        raise UserError("locks are changing right now; try again in a moment")

    async def unlock(
        self, env: str, service: str | None, by_id: int | None, by_name: str
    ) -> LockInfo:
        """Remove the manual lock on exactly this scope (anyone may; permissions are the caller's).

        Returns the removed lock. Raises :class:`UserError` if there is none, saying what is locked
        nearby instead. Operation locks are not unlocked by hand: they end with their operation.
        """
        _check_names(env, service)
        removed, nearby = await self._db.run(self._unlock, env, service)
        if removed is not None:
            log.info("lock %s on %s removed by %s (%s)", removed.id, removed.target, by_name, by_id)
            return removed
        raise UserError(_nothing_to_unlock(env, service, nearby, self._clock()))

    def _unlock(self, env: str, service: str | None) -> tuple[LockInfo | None, list[LockInfo]]:
        now = self._clock()
        with self._db.session() as session:
            self._purge(session, now)
            row = session.scalars(
                select(LockRow).where(LockRow.scope == _scope("manual", env, service))
            ).first()
            if row is not None:
                info = LockInfo.from_row(row)
                session.delete(row)
                return info, []
            nearby = session.scalars(
                select(LockRow).where(LockRow.env == env).order_by(LockRow.service, LockRow.id)
            ).all()
            return None, [LockInfo.from_row(r) for r in nearby]

    # -- reading -----------------------------------------------------------------------------

    async def active(self, env: str | None = None, service: str | None = None) -> list[LockInfo]:
        """Unexpired locks covering the scope, for ``!status`` and for a check before confirming.

        ``env`` alone: every lock in it. ``service`` (with or without ``env``): locks that would
        stop an operation on it, that is env locks plus its own. Ordered by env, env locks first,
        then service, then age.
        """
        return await self._db.run(self._active, env, service)

    def _active(self, env: str | None, service: str | None) -> list[LockInfo]:
        now = self._clock()
        conditions: list[ColumnElement[bool]] = [self._unexpired(now)]
        if env is not None:
            conditions.append(LockRow.env == env)
        if service is not None:
            conditions.append(or_(LockRow.service.is_(None), LockRow.service == service))
        stmt = (
            select(LockRow)
            .where(*conditions)
            .order_by(
                LockRow.env,
                LockRow.service.is_not(None),
                LockRow.service,
                LockRow.acquired_at,
                LockRow.id,
            )
        )
        with self._db.session() as session:
            return [LockInfo.from_row(r) for r in session.scalars(stmt)]

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _unexpired(now: datetime) -> ColumnElement[bool]:
        return or_(LockRow.expires_at.is_(None), LockRow.expires_at > now)

    @staticmethod
    def _purge(session: Session, now: datetime) -> None:
        session.execute(
            delete(LockRow).where(and_(LockRow.expires_at.is_not(None), LockRow.expires_at <= now))
        )

    def _find(self, scope: str, now: datetime) -> LockInfo | None:
        with self._db.session() as session:
            row = session.scalars(
                select(LockRow).where(LockRow.scope == scope, self._unexpired(now))
            ).first()
            return LockInfo.from_row(row) if row is not None else None


def _nothing_to_unlock(env: str, service: str | None, nearby: list[LockInfo], now: datetime) -> str:
    manual = [lock for lock in nearby if lock.kind == "manual"]
    if service is None:
        if not manual:
            return f"nothing is locked in `{env}`"
        names = ", ".join(f"`{lock.service}`" for lock in manual)
        return f"`{env}` as a whole is not locked; locked there: {names}"
    env_lock = next((lock for lock in manual if lock.service is None), None)
    if env_lock is not None:
        return f"`{service}` in `{env}` has no lock of its own; {env_lock.describe(now)}"
    running = next((lk for lk in nearby if lk.kind == "operation" and lk.service == service), None)
    if running is not None:
        return (
            f"`{service}` in `{env}` has no manual lock; {running.describe(now)} "
            "(that lock ends with the operation)"
        )
    return f"`{service}` in `{env}` is not locked"
