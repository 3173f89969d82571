"""Two bot replicas on one database: every claim and check-then-write is atomic in the database.

Each "replica" is its own :class:`Database` (its own engine and connection pool, as a second
process would have), and the racers are threads started together behind a barrier. Every test runs
on SQLite and on PostgreSQL (``db_url``, tests/conftest_postgres.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select

from alerts.models import WebhookPayload
from alerts.routing import Router
from alerts.store import AlertStore, IncidentRow
from commands.audit import AuditEntry, AuditLog
from commands.db import Database
from commands.freeze import FreezeRow, FreezeService
from commands.locks import Locked, LockManager
from tests.alerts.conftest import alert, payload
from tests.maintenance.conftest import settings_for

T = TypeVar("T")
T0 = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)
RACERS = 8


@pytest.fixture
def replicas(db_url: str) -> Iterator[tuple[Database, Database]]:
    """Two Database objects on one database: two replicas' connection pools."""
    from commands import freeze  # noqa: F401 - its table

    first, second = Database(db_url), Database(db_url)
    first.create_all()
    for db in (first, second):  # connected before the race, so the racers start together
        with contextlib.ExitStack() as stack:
            for _ in range(RACERS // 2):
                stack.enter_context(db.engine.connect())
    yield first, second
    first.dispose()
    second.dispose()


def race(fns: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run every fn in its own thread, all released at once; their results or exceptions."""
    barrier = threading.Barrier(len(fns))

    def go(fn: Callable[[], T]) -> T | BaseException:
        barrier.wait(timeout=30)
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            return exc

    with ThreadPoolExecutor(len(fns)) as pool:
        return list(pool.map(go, fns))


def _count(db: Database, *where: Any, table: Any = AuditEntry) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(table).where(*where)) or 0


def test_exclusive_serialises_check_then_insert_across_databases(replicas):
    """The pattern Database.exclusive is for: without it, PostgreSQL lets every racer insert."""

    def claim(db: Database) -> bool:
        with db.session() as s:
            db.exclusive(s, "claim:deploy-42")
            if s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "claim")):
                return False
            time.sleep(0.02)  # widen the window between the check and the write
            s.add(AuditEntry(at=T0, user_id=1, user_name="bot", action="claim", result="ok"))
            return True

    results = race([lambda db=replicas[i % 2]: claim(db) for i in range(RACERS)])
    assert sorted(results, key=str) == [False] * (RACERS - 1) + [True]
    assert _count(replicas[0], AuditEntry.action == "claim") == 1


def test_exclusive_names_are_independent_on_postgres(postgres_url):
    """Two names never wait for each other (SQLite has one writer: names do not matter there)."""
    first, second = Database(postgres_url), Database(postgres_url)
    first.create_all()
    with first.session() as a:
        first.exclusive(a, "one")
        with second.session() as b:
            second.exclusive(b, "two")  # would block forever if the names collided
    first.dispose()
    second.dispose()


def test_operation_lock_from_threads_on_two_databases_exactly_one_wins(replicas):
    managers = [LockManager(db, clock=lambda: T0) for db in replicas]

    def acquire(i: int) -> str:
        info = managers[i % 2]._acquire_operation("chat", "prod", i, f"u{i}", "deploy", timedelta(minutes=5))
        return f"won {info.holder_name}"

    results = race([lambda i=i: acquire(i) for i in range(RACERS)])
    won = [r for r in results if isinstance(r, str)]
    assert len(won) == 1, results
    assert all(isinstance(r, Locked) and f"won {r.blocker.holder_name}" == won[0] for r in results if r not in won)


def test_manual_lock_from_threads_on_two_databases_exactly_one_wins(replicas):
    managers = [LockManager(db, clock=lambda: T0) for db in replicas]
    results = race([lambda i=i: managers[i % 2]._lock("prod", None, i, f"u{i}", "freeze", None)
                    for i in range(RACERS)])
    assert sum(not isinstance(r, BaseException) for r in results) == 1, results
    assert all(isinstance(r, Locked) for r in results if isinstance(r, BaseException))


def _stores(replicas: tuple[Database, Database]) -> list[AlertStore]:
    stores = [AlertStore(db, clock=lambda: T0) for db in replicas]
    stores[0].create_tables()
    return stores


def _version(db: Database) -> int:
    with db.session() as s:
        return s.scalars(select(IncidentRow.version)).one()


ROUTER = Router.build([], default_channel="alerts")


def test_one_webhook_delivered_to_both_replicas_is_stored_once(replicas):
    """Alertmanager in HA posts one group to every replica: one incident, the rest duplicates."""
    stores = _stores(replicas)
    body = WebhookPayload.model_validate(payload([alert("HighLatency", fp="a1")]))
    results = race([lambda s=stores[i % 2]: s.ingest(body, ROUTER) for i in range(RACERS)])
    assert not [r for r in results if isinstance(r, BaseException)], results
    fresh = [r for r in results if not r.result.duplicate]  # type: ignore[union-attr]
    assert len(fresh) == 1 and fresh[0].result.created  # type: ignore[union-attr]
    assert _count(replicas[1], table=IncidentRow) == 1


def test_alerts_of_one_group_on_both_replicas_open_one_incident(replicas):
    """Different alerts of one group at once: one open incident holding all of them."""
    stores = _stores(replicas)
    bodies = [WebhookPayload.model_validate(payload([alert("HighLatency", fp=f"a{i}", instance=f"pod-{i}")]))
              for i in range(RACERS)]
    results = race([lambda i=i: stores[i % 2].ingest(bodies[i], ROUTER) for i in range(RACERS)])
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sum(r.result.created for r in results) == 1  # type: ignore[union-attr]
    assert {r.result.incident_id for r in results} == {1}  # type: ignore[union-attr]
    assert len(stores[0].incident(1).alerts) == RACERS


def test_ack_on_both_replicas_at_once_exactly_one_wins(replicas):
    """Two people ack on two replicas at once: one ack, one version, the others told who won."""
    stores = _stores(replicas)
    stores[0].ingest(WebhookPayload.model_validate(payload([alert("HighLatency", fp="a1")])), ROUTER)
    before = _version(replicas[0])
    results = race([lambda i=i: stores[i % 2].ack(1, i, f"u{i}") for i in range(RACERS)])
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1, results
    winner = won[0][0].acked_by  # type: ignore[index]
    assert all(f"acknowledged by {winner} already" in str(r) for r in results if isinstance(r, BaseException))
    after = stores[1].incident(1)
    assert _version(replicas[1]) == before + 1 and after.acked_by == winner
    assert sum(e.text.startswith("acknowledged by") for e in after.timeline) == 1


async def test_scheduled_freeze_is_materialised_once_by_racing_replicas(replicas, tmp_path):
    weekend = {"weekend": {"cron": "0 18 * * fri", "duration": "62h", "envs": ["prod"], "reason": "weekend"}}
    saturday = datetime(2024, 5, 4, 12, 0, tzinfo=UTC)
    settings = settings_for(tmp_path, freezes={"scheduled": weekend})
    services = [FreezeService(db, settings, AuditLog(db), clock=lambda: saturday, post=_nowhere) for db in replicas]
    scheduled = [("weekend", "prod", "weekend", datetime(2024, 5, 3, 16, tzinfo=UTC),
                  datetime(2024, 5, 6, 6, tzinfo=UTC))]
    results = race([lambda i=i: services[i % 2]._active("prod", saturday, scheduled) for i in range(RACERS)])
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert _count(replicas[0], table=FreezeRow) == 1
    assert len({r[0].id for r in results}) == 1  # type: ignore[index]


async def _nowhere(channel: str, text: str) -> None:
    pass
