"""Leader election on a real Lease served over HTTP by the sandbox, through the product's adapter.

Timing is shortened (lease 1.5 s) but the rules are client-go's: one leader at a time, a standby
takes over only after the lease duration without renewal, a released lease is taken at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from commands.leader import LeaderElector
from commands.targets.lease import KubernetesLease
from sandbox.server import SandboxServer

LEASE = dict(lease_duration=1.5, renew_deadline=1.0, retry_period=0.2)


@pytest.fixture
def sandbox_kubeconfig(tmp_path: Path) -> Iterator[Path]:
    with SandboxServer() as server:
        yield server.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
async def locks(sandbox_kubeconfig: Path) -> AsyncIterator[list[KubernetesLease]]:
    made = [KubernetesLease(sandbox_kubeconfig, "opsbot", "opsbot-test") for _ in range(3)]
    yield made
    for lock in made:
        await lock.close()


def _holder(kubeconfig: Path) -> str | None:
    api = config.new_client_from_config(str(kubeconfig))
    try:
        return client.CoordinationV1Api(api).read_namespaced_lease("opsbot-test", "opsbot").spec.holder_identity
    finally:
        api.close()


async def test_one_leader_then_takeover_after_the_lease_duration(locks: list[KubernetesLease],
                                                                 sandbox_kubeconfig: Path) -> None:
    a = LeaderElector(locks[0], "a", **LEASE)
    b = LeaderElector(locks[1], "b", **LEASE)
    assert await a.try_acquire_or_renew()
    assert _holder(sandbox_kubeconfig) == "a"
    # b sees a fresh lease held by a: refused, now and on every round while a renews.
    for _ in range(8):
        assert not await b.try_acquire_or_renew()
        assert await a.try_acquire_or_renew()
        await asyncio.sleep(0.2)
    assert b.leader == "a"
    # a dies (stops renewing): b takes over once the lease duration has passed on b's clock.
    started = time.monotonic()
    assert await b.acquire(asyncio.Event())
    waited = time.monotonic() - started
    assert 1.2 <= waited <= 3.0, waited
    lease = await locks[2].get()
    assert lease.holder == "b"
    assert lease.transitions == 1


async def test_simultaneous_candidates_elect_exactly_one(locks: list[KubernetesLease]) -> None:
    electors = [LeaderElector(lock, name, **LEASE) for lock, name in zip(locks, "xyz")]
    results = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
    assert sum(results) == 1, results
    # And on the next rounds too (the others now see a held lease).
    for _ in range(3):
        results = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
        assert sum(results) == 1, results
    winner = [e.identity for e, won in zip(electors, results) if won]
    assert {e.leader for e in electors} == set(winner)


async def test_release_hands_over_at_once(locks: list[KubernetesLease]) -> None:
    a = LeaderElector(locks[0], "a", **{**LEASE, "lease_duration": 30.0, "renew_deadline": 20.0})
    b = LeaderElector(locks[1], "b", **{**LEASE, "lease_duration": 30.0, "renew_deadline": 20.0})
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    assert await a.release()
    started = time.monotonic()
    assert await b.acquire(asyncio.Event())
    assert time.monotonic() - started < 1.0  # not the 30 s lease duration
    assert (await locks[2].get()).holder == "b"


async def test_hold_steps_down_when_another_holder_appears(locks: list[KubernetesLease]) -> None:
    a = LeaderElector(locks[0], "a", **LEASE)
    assert await a.try_acquire_or_renew()
    # Someone overwrites the lease (an operator, or a partition healed the wrong way).
    current = await locks[1].get()
    await locks[1].update(current.model_copy(update={"holder": "intruder", "lease_duration_seconds": 60}),
                          current.resource_version or "")
    started = time.monotonic()
    assert await a.hold(asyncio.Event()) is False
    assert time.monotonic() - started < 2.0


async def test_hold_steps_down_when_the_api_is_gone(tmp_path: Path) -> None:
    server = SandboxServer().start()
    lock = KubernetesLease(server.write_kubeconfig(tmp_path / "k"), "opsbot", "gone", request_timeout=0.5)
    try:
        a = LeaderElector(lock, "a", **LEASE)
        assert await a.try_acquire_or_renew()
        server.stop()
        started = time.monotonic()
        assert await a.hold(asyncio.Event()) is False
        # Stepped down after the renew deadline, before anyone else could take over.
        assert LEASE["renew_deadline"] <= time.monotonic() - started < LEASE["lease_duration"] + 1.0
    finally:
        await lock.close()


async def test_stale_write_conflicts(locks: list[KubernetesLease]) -> None:
    a = LeaderElector(locks[0], "a", **LEASE)
    assert await a.try_acquire_or_renew()
    seen = await locks[1].get()
    assert await a.try_acquire_or_renew()  # a renews: the version moves on
    from commands.targets.base import Conflict

    with pytest.raises(Conflict):
        await locks[1].update(seen.model_copy(update={"holder": "late"}), seen.resource_version or "")


def test_timing_must_make_sense() -> None:
    with pytest.raises(ValueError):
        LeaderElector(object(), "a", lease_duration=5, renew_deadline=5, retry_period=1)  # type: ignore[arg-type]


async def test_whole_second_times_are_accepted(locks: list[KubernetesLease]) -> None:
    """MicroTime needs six fraction digits even when they are all 0 (isoformat would drop them)."""
    from datetime import UTC, datetime

    at = datetime(2026, 11, 30, 5, 0, 0, tzinfo=UTC)
    a = LeaderElector(locks[0], "a", **LEASE, now=lambda: at)
    assert await a.try_acquire_or_renew()
    assert abs((await locks[1].get()).renew_time - at).total_seconds() < 0.001
