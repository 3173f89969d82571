"""LockManager: atomic operation locks (tasks, two Database instances, processes), manual locks,
expiry by an injected clock, release on every exit, exact messages."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from commands.catalog import UserError
from commands.db import Database
from commands.locks import Locked, LockInfo, LockManager, OperationLock
from tests.support.clock import FakeClock

T0 = datetime(2024, 5, 1, 14, 2, tzinfo=UTC)
TTL = timedelta(minutes=15)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def locks(db: Database, clock: FakeClock) -> LockManager:
    return LockManager(db, clock=clock)


async def _deploy(
    locks: LockManager, service: str = "chat-gui", env: str = "prod", who: str = "mod", ttl: timedelta = TTL
) -> OperationLock:
    return await locks.acquire_operation(service, env, 42, who, f"deploy {service} v1.5.1", ttl)


async def _race(managers: list[LockManager], n: int) -> tuple[list[OperationLock], list[Locked]]:
    results = await asyncio.gather(
        *(_deploy(managers[i % len(managers)], who=f"u{i}") for i in range(n)), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, OperationLock)]
    lost = [r for r in results if isinstance(r, Locked)]
    assert len(won) + len(lost) == n, [r for r in results if not isinstance(r, OperationLock | Locked)]
    return won, lost


# -- operation locks -------------------------------------------------------------------------


async def test_acquire_release_and_release_again(locks: LockManager):
    held = await _deploy(locks)
    info = held.info
    assert (info.kind, info.service, info.env, info.holder_id, info.holder_name) == (
        "operation", "chat-gui", "prod", 42, "mod",
    )
    assert info.operation == info.reason == "deploy chat-gui v1.5.1"
    assert (info.acquired_at, info.expires_at) == (T0, T0 + TTL)
    assert await locks.active() == [info]

    await held.release()
    assert held.released
    assert await locks.active() == []
    await held.release()  # idempotent
    assert await locks.release(info.id) is False


async def test_second_acquire_is_refused_naming_holder_and_since(locks: LockManager, clock: FakeClock):
    first = await _deploy(locks, who="mod")
    clock.advance(minutes=3)
    with pytest.raises(Locked) as caught:
        await locks.acquire_operation("chat-gui", "prod", 7, "oncall", "rollback chat-gui", TTL)
    assert isinstance(caught.value, UserError)
    assert str(caught.value) == (
        "`chat-gui` in `prod` is locked by mod since 14:02 UTC (3m ago): deploy chat-gui v1.5.1"
    )
    assert caught.value.blocker == first.info


async def test_many_tasks_one_target_exactly_one_wins(locks: LockManager):
    won, lost = await _race([locks], 30)
    assert len(won) == 1 and len(lost) == 29
    assert {e.blocker.id for e in lost} == {won[0].id}
    assert await locks.active() == [won[0].info]


async def test_two_database_instances_on_one_file_never_double_a_lock(db_url: str, clock: FakeClock):
    """Two Database instances are two connection pools on one file: what two replicas would be."""
    first, second = Database(db_url), Database(db_url)
    first.create_all()
    try:
        managers = [LockManager(first, clock=clock), LockManager(second, clock=clock)]
        for _ in range(5):
            won, lost = await _race(managers, 20)
            assert len(won) == 1 and len(lost) == 19
            assert {e.blocker.id for e in lost} == {won[0].id}
            assert [lk.id for lk in await managers[1].active()] == [won[0].id]
            await won[0].release()
            assert await managers[0].active() == []
    finally:
        first.dispose()
        second.dispose()


def _acquire_in_process(url: str, barrier: multiprocessing.synchronize.Barrier, name: str) -> str:
    async def main() -> str:
        db = Database(url)
        try:
            await LockManager(db).acquire_operation("chat-gui", "prod", None, name, "deploy", TTL)
            return "won"
        except Locked as exc:
            return f"lost to {exc.blocker.holder_name}"
        finally:
            db.dispose()

    barrier.wait(timeout=30)
    return asyncio.run(main())


def test_separate_processes_exactly_one_wins(db: Database, db_url: str):
    n = 4
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(n, mp_context=ctx) as pool:
        barrier = manager.Barrier(n)
        futures = [pool.submit(_acquire_in_process, db_url, barrier, f"p{i}") for i in range(n)]
        results = [f.result(timeout=60) for f in futures]
    winners = [f"p{i}" for i, r in enumerate(results) if r == "won"]
    assert len(winners) == 1, results
    assert sorted(results) == [f"lost to {winners[0]}"] * (n - 1) + ["won"]


async def test_in_memory_database_works_too(clock: FakeClock):
    db = Database("sqlite://")
    await db.run(db.create_all)
    try:
        won, lost = await _race([LockManager(db, clock=clock)], 10)
        assert len(won) == 1 and len(lost) == 9
    finally:
        db.dispose()


async def test_different_targets_do_not_block_each_other(locks: LockManager):
    held = await asyncio.gather(
        _deploy(locks, "chat-gui", "prod"),
        _deploy(locks, "chat-gui", "staging"),
        _deploy(locks, "auth", "prod"),
        _deploy(locks, "chat", "dev"),
    )
    assert len({h.id for h in held}) == 4
    assert len(await locks.active()) == 4


async def test_context_manager_holds_inside_and_releases_on_exit(locks: LockManager):
    async with locks.operation("chat-gui", "prod", 42, "mod", "deploy chat-gui v1.5.1", TTL) as held:
        assert [lk.id for lk in await locks.active()] == [held.id]
        with pytest.raises(Locked):
            await _deploy(locks)
    assert held.released
    assert await locks.active() == []


async def test_context_manager_releases_on_exception(locks: LockManager):
    with pytest.raises(RuntimeError, match="rollout exploded"):
        async with locks.operation("chat-gui", "prod", 42, "mod", "deploy", TTL):
            raise RuntimeError("rollout exploded")
    assert await locks.active() == []
    await (await _deploy(locks)).release()  # free again


async def test_context_manager_releases_on_cancellation(locks: LockManager):
    inside = asyncio.Event()

    async def deploy() -> None:
        async with locks.operation("chat-gui", "prod", 42, "mod", "deploy", TTL):
            inside.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(deploy())
    await asyncio.wait_for(inside.wait(), 5)
    assert len(await locks.active()) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await locks.active() == []


async def test_a_failed_release_does_not_hide_the_outcome(locks: LockManager, monkeypatch, caplog):
    async def broken(lock_id: int) -> bool:
        raise OSError("database gone")

    async with locks.operation("chat-gui", "prod", 42, "mod", "deploy", TTL) as held:
        monkeypatch.setattr(locks, "release", broken)
    assert f"could not release lock {held.id}" in caplog.text


async def test_cancelled_while_acquiring_leaves_no_lock_behind(locks: LockManager):
    """The worker thread commits even though its caller was cancelled; that lock is released."""
    real = locks._acquire_operation
    loop = asyncio.get_running_loop()
    started, finished = asyncio.Event(), threading.Event()
    taken: list[LockInfo] = []

    def slow(*args: object) -> LockInfo:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.2)
        try:
            taken.append(real(*args))  # type: ignore[arg-type]
            return taken[-1]
        finally:
            finished.set()

    locks._acquire_operation = slow  # type: ignore[method-assign]
    task = asyncio.create_task(_deploy(locks))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(finished.wait, 5)
    assert len(taken) == 1  # the lock was really taken, by nobody who will release it
    for _ in range(100):
        if not await locks.active():
            break
        await asyncio.sleep(0.02)
    assert await locks.active() == []
    locks._acquire_operation = real  # type: ignore[method-assign]
    await (await _deploy(locks)).release()


async def test_ttl_expiry_frees_the_target(locks: LockManager, clock: FakeClock):
    stale = await _deploy(locks, who="crashed", ttl=timedelta(minutes=10))
    clock.advance(minutes=9, seconds=59)
    with pytest.raises(Locked, match="locked by crashed"):
        await _deploy(locks)
    clock.advance(seconds=1)
    assert await locks.active() == []  # expired locks are ignored ...
    fresh = await _deploy(locks, who="mod")  # ... and purged when a new one is taken
    assert fresh.id > stale.id
    # The stale holder waking up must not free the new holder's lock.
    await stale.release()
    assert [lk.id for lk in await locks.active()] == [fresh.id]


async def test_ids_are_never_reused(locks: LockManager):
    first = await _deploy(locks)
    await first.release()
    second = await _deploy(locks)
    assert second.id > first.id


async def test_renew_extends_an_operation_lock(locks: LockManager, clock: FakeClock):
    held = await _deploy(locks, ttl=timedelta(minutes=10))
    clock.advance(minutes=8)
    assert await held.renew(timedelta(minutes=10))
    assert held.info.expires_at == T0 + timedelta(minutes=18)
    clock.advance(minutes=9)
    with pytest.raises(Locked):
        await _deploy(locks)
    clock.advance(minutes=1)
    assert not await held.renew(timedelta(minutes=10))  # expired: lost, maybe taken by another
    await held.release()
    assert not await held.renew(timedelta(minutes=10))


async def test_locks_survive_a_restart(db_url: str, clock: FakeClock):
    first = Database(db_url)
    first.create_all()
    await _deploy(LockManager(first, clock=clock), who="crashed")
    first.dispose()  # the bot dies without releasing

    second = Database(db_url)
    try:
        second.create_all()
        locks = LockManager(second, clock=clock)
        with pytest.raises(Locked, match="crashed"):
            await _deploy(locks)
        clock.advance(minutes=15)
        await _deploy(locks)
    finally:
        second.dispose()


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1)])
async def test_ttl_must_be_positive(locks: LockManager, ttl: timedelta):
    with pytest.raises(ValueError, match="ttl"):
        await _deploy(locks, ttl=ttl)


@pytest.mark.parametrize(("service", "env"), [("", "prod"), ("chat", ""), ("a/b", "prod"), ("*", "prod"),
                                              ("chat", "x" * 33)])
async def test_bad_names_are_programming_errors(locks: LockManager, service: str, env: str):
    with pytest.raises(ValueError, match="name"):
        await _deploy(locks, service, env)


# -- manual locks ----------------------------------------------------------------------------


async def test_env_lock_blocks_every_service_there_and_nothing_elsewhere(locks: LockManager, clock: FakeClock):
    env_lock = await locks.lock("prod", None, 1, "admin", "db upgrade", timedelta(minutes=58))
    assert (env_lock.kind, env_lock.service, env_lock.expires_at) == ("manual", None, T0 + timedelta(minutes=58))
    assert env_lock.operation is None
    clock.advance(minutes=3)
    for service in ("chat-gui", "auth", "strims"):
        with pytest.raises(Locked) as caught:
            await _deploy(locks, service, "prod")
        assert str(caught.value) == (
            "`prod` is locked by admin since 14:02 UTC (3m ago): db upgrade (until 15:00 UTC)"
        )
        assert caught.value.blocker == env_lock
    await _deploy(locks, "chat-gui", "staging")


async def test_service_lock_blocks_only_that_service(locks: LockManager, clock: FakeClock):
    await locks.lock("prod", "chat-gui", 1, "admin", "waiting on a CDN fix")
    clock.advance(hours=2, minutes=5)
    with pytest.raises(Locked) as caught:
        await _deploy(locks, "chat-gui", "prod")
    assert str(caught.value) == (
        "`chat-gui` in `prod` is locked by admin since 14:02 UTC (2h 5m ago): waiting on a CDN fix"
    )
    await _deploy(locks, "auth", "prod")
    await _deploy(locks, "chat-gui", "staging")


async def test_the_holder_of_a_manual_lock_is_blocked_too(locks: LockManager):
    await locks.lock("prod", None, 42, "mod", "freeze")
    with pytest.raises(Locked, match="locked by mod"):
        await locks.acquire_operation("chat", "prod", 42, "mod", "deploy chat v2", TTL)
    await locks.unlock("prod", None, 42, "mod")
    await locks.acquire_operation("chat", "prod", 42, "mod", "deploy chat v2", TTL)


async def test_env_lock_is_reported_before_a_service_lock(locks: LockManager):
    await locks.lock("prod", "chat", 1, "a", "service reason")
    await locks.lock("prod", None, 2, "b", "env reason")
    with pytest.raises(Locked, match="env reason"):
        await _deploy(locks, "chat", "prod")


async def test_manual_lock_with_a_duration_expires(locks: LockManager, clock: FakeClock):
    await locks.lock("prod", None, 1, "admin", "db upgrade", timedelta(minutes=30))
    clock.advance(minutes=30)
    assert await locks.active("prod") == []
    await _deploy(locks)
    with pytest.raises(UserError, match="nothing is locked in `prod`"):
        await locks.unlock("prod", None, 1, "admin")
    await locks.lock("prod", None, 1, "admin", "again")  # the scope is free again


async def test_manual_lock_without_duration_lasts(locks: LockManager, clock: FakeClock):
    info = await locks.lock("prod", None, 1, "admin", "freeze")
    assert info.expires_at is None
    clock.advance(days=40)
    assert await locks.active() == [info]


async def test_a_second_manual_lock_on_one_scope_is_refused(locks: LockManager, clock: FakeClock):
    await locks.lock("prod", None, 1, "admin", "db upgrade", timedelta(hours=1))
    clock.advance(minutes=1)
    with pytest.raises(Locked) as caught:
        await locks.lock("prod", None, 2, "mod", "me too")
    assert str(caught.value) == (
        "`prod` is locked by admin since 14:02 UTC (1m ago): db upgrade (until 15:02 UTC)"
    )
    await locks.lock("prod", "chat", 2, "mod", "service lock under an env lock is fine")
    with pytest.raises(Locked, match="^`chat` in `prod` is locked by mod"):
        await locks.lock("prod", "chat", 1, "admin", "again")


async def test_env_lock_while_service_locks_and_operations_exist(locks: LockManager):
    await locks.lock("prod", "chat", 1, "a", "x")
    running = await _deploy(locks, "auth", "prod")
    env_lock = await locks.lock("prod", None, 1, "a", "freeze")
    assert {lk.id for lk in await locks.active("prod")} >= {running.id, env_lock.id}
    await running.release()  # the running deploy finishes; the next one is blocked
    with pytest.raises(Locked, match="freeze"):
        await _deploy(locks, "auth", "prod")


async def test_concurrent_manual_locks_on_one_scope(db_url: str, clock: FakeClock):
    first, second = Database(db_url), Database(db_url)
    first.create_all()
    try:
        managers = [LockManager(first, clock=clock), LockManager(second, clock=clock)]
        results = await asyncio.gather(
            *(managers[i % 2].lock("prod", None, i, f"u{i}", "freeze") for i in range(12)),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, LockInfo)]
        assert len(won) == 1
        assert all(isinstance(r, Locked) and r.blocker == won[0] for r in results if r is not won[0])
    finally:
        first.dispose()
        second.dispose()


@pytest.mark.parametrize(
    ("reason", "duration", "message"),
    [
        ("", None, "a lock needs a reason"),
        ("   \n ", None, "a lock needs a reason"),
        ("x" * 301, None, "at most 300 characters"),
        ("ok", timedelta(0), "must be positive"),
        ("ok", timedelta(seconds=-5), "must be positive"),
    ],
)
async def test_lock_refuses_bad_input(locks: LockManager, reason, duration, message):
    with pytest.raises(UserError, match=message):
        await locks.lock("prod", None, 1, "a", reason, duration)
    assert await locks.active() == []


async def test_lock_reason_whitespace_is_collapsed(locks: LockManager):
    info = await locks.lock("prod", None, 1, "a", "  db\n upgrade  ")
    assert info.reason == "db upgrade"


# -- unlock ----------------------------------------------------------------------------------


async def test_unlock_returns_the_removed_lock(locks: LockManager):
    env_lock = await locks.lock("prod", None, 1, "admin", "freeze")
    svc_lock = await locks.lock("prod", "chat", 1, "admin", "cdn")
    assert await locks.unlock("prod", "chat", 2, "mod") == svc_lock
    assert await locks.active() == [env_lock]
    assert await locks.unlock("prod", None, 2, "mod") == env_lock
    assert await locks.active() == []


async def test_unlock_does_not_touch_operation_locks(locks: LockManager, clock: FakeClock):
    running = await _deploy(locks, "chat-gui", "prod")
    clock.advance(minutes=1)
    with pytest.raises(UserError) as caught:
        await locks.unlock("prod", "chat-gui", 1, "admin")
    assert str(caught.value) == (
        "`chat-gui` in `prod` has no manual lock; `chat-gui` in `prod` is locked by mod since "
        "14:02 UTC (1m ago): deploy chat-gui v1.5.1 (that lock ends with the operation)"
    )
    assert await locks.active() == [running.info]
    with pytest.raises(UserError) as caught:
        await locks.unlock("prod", None, 1, "admin")
    assert str(caught.value) == "nothing is locked in `prod`"


@pytest.mark.parametrize(
    ("existing", "env", "service", "message"),
    [
        ([], "prod", None, "nothing is locked in `prod`"),
        ([], "prod", "chat", "`chat` in `prod` is not locked"),
        ([("staging", None)], "prod", None, "nothing is locked in `prod`"),
        ([("prod", "chat"), ("prod", "auth")], "prod", None,
         "`prod` as a whole is not locked; locked there: `auth`, `chat`"),
        ([("prod", "chat")], "prod", "auth", "`auth` in `prod` is not locked"),
        ([("prod", None)], "prod", "chat",
         "`chat` in `prod` has no lock of its own; `prod` is locked by admin since 14:02 UTC (just now): r"),
    ],
)
async def test_unlock_with_nothing_to_unlock_says_what_is_locked(
    locks: LockManager, existing, env, service, message
):
    for lock_env, lock_service in existing:
        await locks.lock(lock_env, lock_service, 1, "admin", "r")
    with pytest.raises(UserError) as caught:
        await locks.unlock(env, service, 2, "mod")
    assert str(caught.value) == message


# -- active ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "service", "expected"),
    [
        (None, None, ["dev:chat", "prod:*", "prod:auth", "prod:chat", "prod:chat-gui op", "staging:chat op"]),
        ("prod", None, ["prod:*", "prod:auth", "prod:chat", "prod:chat-gui op"]),
        ("prod", "chat", ["prod:*", "prod:chat"]),
        ("prod", "chat-gui", ["prod:*", "prod:chat-gui op"]),
        (None, "chat", ["dev:chat", "prod:*", "prod:chat", "staging:chat op"]),
        ("staging", None, ["staging:chat op"]),
        ("staging", "auth", []),
        ("nowhere", None, []),
    ],
)
async def test_active_lists_covering_locks(locks: LockManager, clock: FakeClock, env, service, expected):
    await locks.lock("prod", "chat", 1, "a", "r")
    await locks.lock("dev", "chat", 1, "a", "r")
    await _deploy(locks, "chat-gui", "prod")
    await locks.lock("prod", None, 1, "a", "r")
    await _deploy(locks, "chat", "staging")
    await locks.lock("prod", "auth", 1, "a", "r")
    await locks.lock("staging", None, 1, "a", "expiring", timedelta(minutes=1))
    await locks.lock("dev", "auth", 1, "a", "expiring", timedelta(minutes=1))
    clock.advance(minutes=1)

    def label(lock: LockInfo) -> str:
        return f"{lock.env}:{lock.service or '*'}" + (" op" if lock.kind == "operation" else "")

    assert [label(lk) for lk in await locks.active(env, service)] == expected


# -- LockInfo.describe -----------------------------------------------------------------------


def _info(**kw: object) -> LockInfo:
    fields: dict[str, object] = dict(
        id=1, kind="manual", env="prod", service=None, holder_id=1, holder_name="admin",
        reason="db upgrade", acquired_at=T0, expires_at=None,
    )
    fields.update(kw)
    return LockInfo(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "now", "text"),
    [
        ({}, T0, "`prod` is locked by admin since 14:02 UTC (just now): db upgrade"),
        ({}, T0 + timedelta(seconds=45), "`prod` is locked by admin since 14:02 UTC (45s ago): db upgrade"),
        ({"expires_at": T0 + timedelta(days=1)}, T0 + timedelta(hours=1),
         "`prod` is locked by admin since 14:02 UTC (1h ago): db upgrade (until May 2 14:02 UTC)"),
        ({}, T0 + timedelta(days=1, hours=2),
         "`prod` is locked by admin since May 1 14:02 UTC (1d 2h ago): db upgrade"),
        ({"kind": "operation", "service": "auth", "reason": "rollback auth", "expires_at": T0 + TTL},
         T0 + timedelta(minutes=1), "`auth` in `prod` is locked by admin since 14:02 UTC (1m ago): rollback auth"),
        ({}, T0 - timedelta(seconds=5), "`prod` is locked by admin since 14:02 UTC (just now): db upgrade"),
    ],
)
def test_describe(kw, now, text):
    assert _info(**kw).describe(now) == text


def test_covers_and_expired():
    env_lock = _info()
    svc_lock = _info(service="chat", expires_at=T0 + TTL)
    assert env_lock.covers("chat", "prod") and env_lock.covers("auth", "prod")
    assert not env_lock.covers("chat", "staging")
    assert svc_lock.covers("chat", "prod") and not svc_lock.covers("auth", "prod")
    assert not env_lock.expired(T0 + timedelta(days=999))
    assert not svc_lock.expired(T0 + TTL - timedelta(seconds=1)) and svc_lock.expired(T0 + TTL)
