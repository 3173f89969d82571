"""The audit log: who did what, to which service and env, with which result, and how long it took.

Every mutating command and every denial is recorded here; ``!audit`` reads it back.
Callers get :class:`AuditRecord` pydantic models, never ORM objects.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import BigInteger, ColumnElement, Index, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from commands.db import Base, Database, UTCDateTime, utcnow

AuditResult = Literal["ok", "denied", "failed", "cancelled", "rolled_back", "timed_out"]

MAX_QUERY_LIMIT = 500


class AuditEntry(Base):
    """One row of the audit log (the ORM model; see :class:`AuditRecord` for the public one)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_service_env_at", "service", "env", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    user_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    user_name: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64), index=True)
    service: Mapped[str | None] = mapped_column(String(64))
    env: Mapped[str | None] = mapped_column(String(32))
    args: Mapped[str] = mapped_column(Text, default="{}")
    result: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    channel: Mapped[str | None] = mapped_column(String(100))


class AuditRecord(BaseModel):
    """An audit log entry as callers see it."""

    model_config = ConfigDict(frozen=True)

    id: int
    at: datetime
    user_id: int | None = Field(description="Discord user ID; None for the bot's own actions")
    user_name: str
    action: str
    service: str | None
    env: str | None
    args: dict[str, Any]
    result: AuditResult
    detail: str
    duration_ms: int | None
    channel: str | None

    @classmethod
    def from_entry(cls, entry: AuditEntry) -> AuditRecord:
        return cls(
            id=entry.id,
            at=entry.at,
            user_id=entry.user_id,
            user_name=entry.user_name,
            action=entry.action,
            service=entry.service,
            env=entry.env,
            args=json.loads(entry.args),
            result=entry.result,  # type: ignore[arg-type]  # validated by pydantic
            detail=entry.detail,
            duration_ms=entry.duration_ms,
            channel=entry.channel,
        )


class AuditLog:
    """Writes and reads audit entries through a :class:`Database`.

    ``clock`` returns the current aware UTC time; tests and simulated worlds pass their own.
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    async def record(
        self,
        *,
        user_id: int | None,
        user_name: str,
        action: str,
        result: AuditResult,
        service: str | None = None,
        env: str | None = None,
        args: Mapping[str, Any] | None = None,
        detail: str = "",
        duration_ms: int | None = None,
        channel: str | None = None,
    ) -> AuditRecord:
        """Append one entry and return it as stored.

        ``args`` are stored as JSON; values JSON cannot hold (datetimes, paths) are stored as
        their ``str()`` so an odd argument never loses the audit entry.
        """
        entry = AuditEntry(
            at=self._clock(),
            user_id=user_id,
            user_name=user_name,
            action=action,
            service=service,
            env=env,
            args=json.dumps(dict(args or {}), default=str),
            result=result,
            detail=detail,
            duration_ms=duration_ms,
            channel=channel,
        )
        return await self._db.run(self._insert, entry)

    def _insert(self, entry: AuditEntry) -> AuditRecord:
        with self._db.session() as session:
            session.add(entry)
            session.flush()
            return AuditRecord.from_entry(entry)

    async def query(
        self,
        *,
        service: str | None = None,
        env: str | None = None,
        user_id: int | None = None,
        action: str | None = None,
        limit: int = 20,
    ) -> list[AuditRecord]:
        """Entries matching every given filter, newest first, at most ``limit`` of them."""
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_QUERY_LIMIT}, not {limit}")
        pairs = (
            (AuditEntry.service, service),
            (AuditEntry.env, env),
            (AuditEntry.user_id, user_id),
            (AuditEntry.action, action),
        )
        conditions = [column == value for column, value in pairs if value is not None]
        return await self._db.run(self._select, conditions, limit)

    def _select(self, conditions: list[ColumnElement[bool]], limit: int) -> list[AuditRecord]:
        stmt = (
            select(AuditEntry)
            .where(*conditions)
            .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
            .limit(limit)
        )
        with self._db.session() as session:
            return [AuditRecord.from_entry(e) for e in session.scalars(stmt)]
