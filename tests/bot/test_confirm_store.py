"""Pending confirmations in the database (bot/views.py, commands/db.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from bot.views import PendingStore, Request
from commands.db import Database, utcnow


def request(now, **kw):  # type: ignore[no-untyped-def]
    fields = dict(key=PendingStore.new_key(), kind="release", action="deploy", service="chat", env="prod",
                  invoker_id=7, invoker_name="mod", summary="deploy chat v2 to prod", payload={"plan": {"x": 1}},
                  channel_id=1, message_id=None, expires_at=now + timedelta(seconds=60), approvals_needed=0)
    return Request(**{**fields, **kw})


async def test_a_press_is_answered_once_even_by_two_replicas(db: Database) -> None:
    """Two replicas (two engines on one database, SQLite and PostgreSQL) take the same press at
    the same moment: exactly one of them gets to start it."""
    now = utcnow()
    r = request(now, message_id=2)
    PendingStore.add(db, r, now)
    replicas = [db, Database(str(db.url.render_as_string(hide_password=False)))]
    try:
        outcomes = await asyncio.gather(*[
            asyncio.to_thread(PendingStore.press, replicas[i % 2], r.key, "confirm", 7, "mod", utcnow())
            for i in range(8)])
    finally:
        replicas[1].dispose()
    assert sorted(o for o, _ in outcomes) == ["complete"] + ["gone"] * 7


def test_approvals_count_ids_and_the_stored_request_round_trips(db: Database) -> None:
    now = utcnow()
    r = request(now, approvals_needed=2)
    PendingStore.add(db, r, now)
    PendingStore.set_message(db, r.key, 99)
    assert PendingStore.press(db, r.key, "approve", 1, "ann", now)[0] == "recorded"
    assert PendingStore.press(db, r.key, "approve", 1, "ann renamed", now)[0] == "already"
    assert PendingStore.press(db, r.key, "confirm", 7, "mod", now)[0] == "recorded"
    outcome, after = PendingStore.press(db, r.key, "approve", 2, "bob", now)
    assert outcome == "complete" and after is not None
    assert [(a.id, a.name) for a in after.approvals] == [(1, "ann"), (2, "bob")]
    assert (after.payload, after.message_id, after.state) == ({"plan": {"x": 1}}, 99, "started")
    assert PendingStore.press(db, r.key, "confirm", 7, "mod", now)[0] == "gone"


def test_an_approval_by_someone_who_lost_the_grant_stops_counting(db: Database) -> None:
    now = utcnow()
    r = request(now, approvals_needed=1)
    PendingStore.add(db, r, now)
    PendingStore.press(db, r.key, "approve", 1, "ann", now)
    outcome, after = PendingStore.press(db, r.key, "confirm", 7, "mod", now, frozenset())
    assert outcome == "recorded" and after is not None and after.approvals == ()


def test_expiry(db: Database) -> None:
    now = utcnow()
    r = request(now)
    PendingStore.add(db, r, now)
    assert PendingStore.expire(db, r.key, now) is None  # not yet
    later = now + timedelta(seconds=61)
    assert PendingStore.press(db, r.key, "confirm", 7, "mod", later)[0] == "expired"
    assert PendingStore.expire(db, r.key, later) is None  # once
    assert PendingStore.open_requests(db) == []
