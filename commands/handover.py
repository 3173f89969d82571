"""Running deploys and rollbacks, written down so that another replica can finish them.

A rollout goes on in the cluster whatever happens to the bot. If the leader dies (or is stopped
while a rollout runs longer than its shutdown grace), its operation lock stays held, so nobody
deploys over a rollout nobody watches; and this journal says what was running, where its
progress message is, and which generation to watch. The next leader takes every entry over
(:meth:`Journal.take_over`), watches the rollout to its end (rolling back a failure, as the
first leader would have), edits the same progress message and releases the lock.

One row per operation lock (``lock_id``), written when the progress message is posted, updated
when the change is applied (the generation to watch), deleted when the operation ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, Text, delete, select, update
from sqlalchemy.orm import Mapped, mapped_column

from commands.db import Base, Database, UTCDateTime, utcnow
from commands.deploy import Actor, Phase, Plan


class InflightRow(Base):
    __tablename__ = "operations_inflight"

    lock_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    plan: Mapped[str] = mapped_column(Text)  # Plan as JSON
    actor_id: Mapped[int] = mapped_column(BigInteger)
    actor_name: Mapped[str] = mapped_column(String(100))
    actor_channel: Mapped[str | None] = mapped_column(String(100))
    channel_id: Mapped[str] = mapped_column(String(32))  # where the progress message is
    message_id: Mapped[str] = mapped_column(String(32))
    phase: Mapped[str] = mapped_column(String(16), default="rollout")
    generation: Mapped[int | None] = mapped_column(Integer)  # None: not applied yet
    owner: Mapped[str] = mapped_column(String(200))  # the replica watching it
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class Inflight:
    lock_id: int
    plan: Plan
    actor: Actor
    channel_id: int
    message_id: int
    phase: Phase
    generation: int | None
    previous_owner: str
    started_at: datetime


class Journal:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def begin(self, lock_id: int, plan: Plan, actor: Actor, channel_id: int, message_id: int,
                    owner: str) -> None:
        def run() -> None:
            with self.db.session() as session:
                session.add(InflightRow(lock_id=lock_id, plan=plan.model_dump_json(), actor_id=actor.id,
                                        actor_name=actor.name[:100], actor_channel=actor.channel,
                                        channel_id=str(channel_id), message_id=str(message_id), phase="rollout",
                                        generation=None, owner=owner[:200], started_at=utcnow()))
        await self.db.run(run)

    async def applied(self, lock_id: int, phase: Phase, generation: int) -> None:
        """The change is in the cluster: watch ``generation`` (of the rollout, or of the rollback)."""
        def run() -> None:
            with self.db.session() as session:
                session.execute(update(InflightRow).where(InflightRow.lock_id == lock_id)
                                .values(phase=phase, generation=generation))
        await self.db.run(run)

    async def end(self, lock_id: int) -> None:
        def run() -> None:
            with self.db.session() as session:
                session.execute(delete(InflightRow).where(InflightRow.lock_id == lock_id))
        await self.db.run(run)

    async def take_over(self, owner: str) -> list[Inflight]:
        """Every operation another replica left running, now ``owner``'s."""
        def run() -> list[Inflight]:
            with self.db.session() as session:
                rows = session.scalars(select(InflightRow).where(InflightRow.owner != owner)
                                       .order_by(InflightRow.lock_id).with_for_update()).all()
                taken = [Inflight(lock_id=r.lock_id, plan=Plan.model_validate_json(r.plan),
                                  actor=Actor(id=r.actor_id, name=r.actor_name, channel=r.actor_channel),
                                  channel_id=int(r.channel_id), message_id=int(r.message_id),
                                  phase="rollback" if r.phase == "rollback" else "rollout",
                                  generation=r.generation, previous_owner=r.owner, started_at=r.started_at)
                         for r in rows]
                for r in rows:
                    r.owner = owner[:200]
                return taken
        return await self.db.run(run)
