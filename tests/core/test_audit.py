"""AuditLog: record, query filters and order, JSON args, persistence, concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from commands.audit import AuditLog, AuditRecord
from commands.db import Database

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class StepClock:
    """Returns T0, T0+1s, T0+2s, … so order by time is deterministic."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return T0 + timedelta(seconds=self.calls - 1)


@pytest.fixture
def audit(db: Database) -> AuditLog:
    return AuditLog(db, clock=StepClock())


async def test_record_returns_the_stored_entry(audit: AuditLog):
    rec = await audit.record(
        user_id=42,
        user_name="mod",
        action="deploy",
        result="ok",
        service="chat-gui",
        env="prod",
        args={"version": "v1.5.0"},
        detail="deployed v1.5.0 in 23 s",
        duration_ms=23_000,
        channel="ops",
    )
    assert isinstance(rec, AuditRecord)
    assert rec.id >= 1
    assert rec.at == T0 and rec.at.tzinfo is not None
    assert (rec.user_id, rec.user_name, rec.action, rec.result) == (42, "mod", "deploy", "ok")
    assert (rec.service, rec.env, rec.channel) == ("chat-gui", "prod", "ops")
    assert rec.duration_ms == 23_000
    assert await audit.query() == [rec]


async def test_args_round_trip_as_json(audit: AuditLog):
    args = {"version": "v1.5.0", "flags": ["--force"], "n": 3, "nested": {"ok": True, "x": None}, "é": "ü"}
    await audit.record(user_id=1, user_name="a", action="deploy", result="ok", args=args)
    [rec] = await audit.query()
    assert rec.args == args


async def test_args_that_json_cannot_hold_are_stored_as_text(audit: AuditLog):
    await audit.record(user_id=1, user_name="a", action="maintenance", result="ok", args={"start": T0})
    [rec] = await audit.query()
    assert rec.args == {"start": str(T0)}


async def test_no_args_is_an_empty_dict(audit: AuditLog):
    rec = await audit.record(user_id=None, user_name="opsbot", action="silence", result="ok")
    assert rec.args == {} and rec.user_id is None


async def test_unknown_result_is_rejected_and_not_stored(audit: AuditLog):
    with pytest.raises(ValidationError):
        await audit.record(user_id=1, user_name="a", action="deploy", result="maybe")  # type: ignore[arg-type]
    assert await audit.query() == []


ROWS = [
    # user_id, action, service, env, result
    (1, "deploy", "chat", "prod", "ok"),
    (2, "deploy", "chat", "staging", "ok"),
    (1, "rollback", "chat", "prod", "failed"),
    (3, "deploy", "auth", "prod", "denied"),
    (2, "logs", "auth", "dev", "ok"),
    (1, "deploy", "chat", "prod", "cancelled"),
]


@pytest.mark.parametrize(
    ("filters", "expected_rows"),
    [
        ({}, [5, 4, 3, 2, 1, 0]),
        ({"service": "chat"}, [5, 2, 1, 0]),
        ({"env": "prod"}, [5, 3, 2, 0]),
        ({"service": "chat", "env": "prod"}, [5, 2, 0]),
        ({"user_id": 2}, [4, 1]),
        ({"action": "deploy"}, [5, 3, 1, 0]),
        ({"action": "deploy", "env": "prod", "user_id": 1}, [5, 0]),
        ({"service": "strims"}, []),
        ({"limit": 2}, [5, 4]),
        ({"service": "chat", "limit": 3}, [5, 2, 1]),
    ],
)
async def test_query_filters_newest_first(audit: AuditLog, filters, expected_rows):
    ids = []
    for user_id, action, service, env, result in ROWS:
        rec = await audit.record(
            user_id=user_id, user_name=f"u{user_id}", action=action, service=service, env=env, result=result
        )
        ids.append(rec.id)
    got = await audit.query(**filters)
    assert [r.id for r in got] == [ids[i] for i in expected_rows]
    assert [r.at for r in got] == sorted((r.at for r in got), reverse=True)


async def test_same_timestamp_orders_by_insertion(db: Database):
    audit = AuditLog(db, clock=lambda: T0)
    first = await audit.record(user_id=1, user_name="a", action="deploy", result="ok")
    second = await audit.record(user_id=1, user_name="a", action="deploy", result="ok")
    assert [r.id for r in await audit.query()] == [second.id, first.id]


@pytest.mark.parametrize("limit", [0, -1, 501])
async def test_query_rejects_bad_limits(audit: AuditLog, limit: int):
    with pytest.raises(ValueError, match="limit"):
        await audit.query(limit=limit)


async def test_entries_survive_a_new_database_instance(db_url: str):
    first = Database(db_url)
    await first.run(first.create_all)
    rec = await AuditLog(first).record(
        user_id=7, user_name="ops", action="deploy", result="ok", service="chat", env="prod", args={"v": "1"}
    )
    first.dispose()

    second = Database(db_url)
    try:
        await second.run(second.create_all)  # idempotent on an existing database
        assert await AuditLog(second).query() == [rec]
    finally:
        second.dispose()


async def test_concurrent_records_from_many_tasks(db: Database):
    audit = AuditLog(db)
    n = 60
    records = await asyncio.gather(
        *(
            audit.record(user_id=i, user_name=f"u{i}", action="deploy", result="ok", args={"i": i})
            for i in range(n)
        )
    )
    assert len({r.id for r in records}) == n
    stored = await audit.query(limit=100)
    assert sorted(r.args["i"] for r in stored) == list(range(n))


async def test_concurrent_records_on_in_memory_database():
    db = Database("sqlite://")
    await db.run(db.create_all)
    try:
        audit = AuditLog(db)
        await asyncio.gather(*(audit.record(user_id=i, user_name="u", action="a", result="ok") for i in range(30)))
        assert len(await audit.query(limit=100)) == 30
    finally:
        db.dispose()
