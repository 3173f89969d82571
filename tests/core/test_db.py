"""Database: SQLite setup, transactions (SQLite and PostgreSQL), UTC datetimes, worker-thread runs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from commands.audit import AuditEntry
from commands.db import Database, UTCDateTime


def _entry(**kw: object) -> AuditEntry:
    fields: dict[str, object] = dict(
        at=datetime(2024, 5, 1, 12, tzinfo=UTC), user_id=1, user_name="mod", action="deploy", result="ok"
    )
    fields.update(kw)
    return AuditEntry(**fields)


def test_sqlite_file_gets_parent_dir_wal_and_busy_timeout(tmp_path):
    path = tmp_path / "nested" / "dir" / "opsbot.db"
    db = Database(f"sqlite:///{path}", busy_timeout_ms=1234)
    try:
        with db.session() as s:
            assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert s.execute(text("PRAGMA busy_timeout")).scalar() == 1234
            assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert path.parent.is_dir()
    finally:
        db.dispose()


def test_session_commits_or_rolls_back(db_url):
    db = Database(db_url)
    db.create_all()
    try:
        with db.session() as s:
            s.add(_entry())
        with pytest.raises(RuntimeError):
            with db.session() as s:
                s.add(_entry())
                s.flush()
                raise RuntimeError("boom")
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(AuditEntry)) == 1
    finally:
        db.dispose()


async def test_in_memory_database_is_shared_by_worker_threads():
    db = Database("sqlite://")
    await db.run(db.create_all)

    def add_and_count(name: str) -> tuple[int, int]:
        with db.session() as s:
            s.add(_entry(user_name=name))
        with db.session() as s:
            return threading.get_ident(), s.scalar(select(func.count()).select_from(AuditEntry)) or 0

    try:
        thread, count = await db.run(add_and_count, "a")
        assert thread != threading.get_ident()
        assert count == 1
        _, count = await db.run(add_and_count, "b")
        assert count == 2
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (datetime(2024, 5, 1, 12, tzinfo=UTC), datetime(2024, 5, 1, 12)),
        (datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2))), datetime(2024, 5, 1, 12)),
        (None, None),
    ],
)
def test_utc_datetime_stores_naive_utc(given, stored):
    assert UTCDateTime().process_bind_param(given, None) == stored  # type: ignore[arg-type]


def test_utc_datetime_rejects_naive_and_returns_aware():
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2024, 5, 1), None)  # type: ignore[arg-type]
    back = UTCDateTime().process_result_value(datetime(2024, 5, 1, 12), None)  # type: ignore[arg-type]
    assert back == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert back is not None and back.tzinfo is UTC



def test_utc_datetimes_round_trip_on_every_backend(db_url):
    """Aware in, aware UTC out, whatever the session's time zone (PostgreSQL's may not be UTC)."""
    db = Database(db_url)
    db.create_all()
    try:
        at = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
        with db.session() as s:
            s.add(_entry(at=at))
        with db.session() as s:
            back = s.scalars(select(AuditEntry.at)).one()
            later = s.scalar(select(func.count()).select_from(AuditEntry).where(
                AuditEntry.at > datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)))
        assert back == at and back.tzinfo is UTC
        assert later == 1
    finally:
        db.dispose()


def test_nul_characters_do_not_fail_a_write(db_url):
    """PostgreSQL text cannot hold NUL (alert labels and chat input may carry one): U+FFFD there."""
    db = Database(db_url)
    db.create_all()
    try:
        with db.session() as s:
            s.add(_entry(user_name="a\x00b", args='{"k": "v\\u0000"}'))
        with db.session() as s:
            name, args = s.execute(select(AuditEntry.user_name, AuditEntry.args)).one()
        assert name == ("a\x00b" if db.url.get_backend_name() == "sqlite" else "a\ufffdb")
        assert args == '{"k": "v\\u0000"}'  # JSON escapes are text, kept as they are
    finally:
        db.dispose()


def test_a_postgres_server_outside_fixtures(tmp_path):
    """start_postgres: what tests running bot processes against one PostgreSQL use."""
    from tests.conftest_postgres import start_postgres

    server = start_postgres(tmp_path / "pg")
    try:
        db = Database(server.url(server.create_database("outside")))
        db.create_all()
        with db.session() as s:
            s.add(_entry())
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(AuditEntry)) == 1
            assert s.execute(text("SHOW fsync")).scalar() == "off"
        db.dispose()
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert not (server.directory / "data").exists()
