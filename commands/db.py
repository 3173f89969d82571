"""The database: one SQLAlchemy engine, one declarative ``Base`` for every table.

Tables (audit, incidents, locks, outbox, scheduler jobs, pending confirmations) subclass :class:`Base`; import their
modules before :meth:`Database.create_all` so they are registered on ``Base.metadata``.

All work here is blocking. Async code calls it through :meth:`Database.run`, which runs it in a
worker thread, so the event loop never waits on disk or network I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Text,
    create_engine,
    delete,
    event,
    false,
    make_url,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Stable constraint names, so later migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The declarative base every opsbot table derives from."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite drops ``tzinfo``; this stores naive UTC and hands back aware UTC values.
    Naive input is rejected rather than guessed at.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware (UTC) datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class MutexRow(Base):
    """Never holds a row: on SQLite, :meth:`Database.exclusive` writes "nothing" here to take the
    database's write lock (PostgreSQL uses advisory locks and never touches it)."""

    __tablename__ = "db_mutexes"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)


class PendingConfirmationRow(Base):
    """A command waiting for its invoker's Confirm (and maybe approvals by others): bot/views.py.

    In the database, not in memory, so that a press after a restart or on the next leader is
    honoured within its expiry, and at most once (a press changes a row under
    :meth:`Database.exclusive`). ``payload`` holds everything needed to run the command then (the
    full plan, as JSON); ``approvals`` the approvers as ``[[user_id, name], …]`` (IDs count, names
    are for display). ``state``: pending, started, cancelled, expired."""

    __tablename__ = "pending_confirmations"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # which handler runs it, e.g. "release"
    action: Mapped[str] = mapped_column(String(32))  # the grant it needs, e.g. "deploy"
    service: Mapped[str] = mapped_column(String(100))
    env: Mapped[str] = mapped_column(String(100))
    invoker_id: Mapped[int] = mapped_column(BigInteger)
    invoker_name: Mapped[str] = mapped_column(String(100))
    summary: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    channel_id: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    approvals_needed: Mapped[int] = mapped_column(Integer, default=0)
    approvals: Mapped[str] = mapped_column(Text, default="[]")
    confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)


def mutex_key(name: str) -> int:
    """The 64-bit PostgreSQL advisory lock key of a mutex name (stable across processes)."""
    return int.from_bytes(hashlib.sha256(f"opsbot:{name}".encode()).digest()[:8], "big", signed=True)


def _no_nul(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {k: _no_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_no_nul(v) for v in value)
    return value


def _no_nul_bytes(
    _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _executemany: bool
) -> tuple[str, Any]:
    """PostgreSQL text cannot hold NUL; SQLite's can. Outside text (alert labels, Discord input)
    may carry one, so on PostgreSQL it is stored as U+FFFD instead of failing the whole write."""
    return statement, _no_nul(parameters)


class Database:
    """An engine plus a session factory for one database URL.

    SQLite files get their parent directory created, WAL journaling and a busy timeout, so
    concurrent writers from worker threads wait for each other instead of failing.
    An in-memory SQLite database is a single shared connection, serialised by a lock.
    Any other URL (``postgresql+psycopg://…``) is passed to SQLAlchemy unchanged; on PostgreSQL a
    NUL character in a string parameter is stored as U+FFFD (its text type cannot hold NUL).
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000) -> None:
        self.url = make_url(url)
        self._lock: threading.RLock | None = None
        if self.url.get_backend_name() == "sqlite":
            self.engine = self._sqlite_engine(busy_timeout_ms)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
            if self.url.get_backend_name() == "postgresql":
                event.listen(self.engine, "before_cursor_execute", _no_nul_bytes, retval=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _sqlite_engine(self, busy_timeout_ms: int) -> Engine:
        database = self.url.database or ":memory:"
        memory = database == ":memory:"
        if memory:
            # One connection for every thread; otherwise each thread would see its own empty DB.
            self._lock = threading.RLock()
            engine = create_engine(
                self.url, connect_args={"check_same_thread": False}, poolclass=StaticPool
            )
        else:
            if not self.url.query.get("uri"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(self.url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                if not memory:
                    cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
                cursor.execute("PRAGMA foreign_keys=ON")
            finally:
                cursor.close()

        return engine

    def create_all(self) -> None:
        """Create every table registered on :data:`Base.metadata` that does not exist yet."""
        Base.metadata.create_all(self.engine)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on an exception."""
        with self._lock or contextlib.nullcontext(), self._sessions.begin() as session:
            yield session

    def exclusive(self, session: Session, name: str) -> None:
        """Serialise the rest of ``session``'s transaction with every other one that takes ``name``.

        In any process sharing the database, until commit or rollback: the tool for a
        read-check-write that two bot replicas must not interleave. Call it first in the
        transaction. PostgreSQL: ``pg_advisory_xact_lock``. SQLite has one writer at a time, so
        this takes the write lock (a no-op write, before anything is read, so the transaction never
        needs to upgrade a stale read snapshot); the name does not matter there.
        """
        backend = self.engine.dialect.name
        if backend == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": mutex_key(name)})
        elif backend == "sqlite":
            session.execute(delete(MutexRow).where(false()))

    async def run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run blocking ``fn(*args)`` in a worker thread and return its result."""
        return await asyncio.to_thread(fn, *args)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"
