"""The watchdog on an injected clock: silent after N minutes without the Watchdog alert, back once it arrives."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web

from alerts.alertmanager import AlertmanagerClient
from alerts.watchdog import Watchdog
from tests.alerts.conftest import T0, alert, close_harness, open_harness, payload
from tests.support.clock import FakeClock


def test_watchdog_states() -> None:
    clock = FakeClock(T0)
    w = Watchdog("Watchdog", timedelta(minutes=10), clock)
    assert w.check() is None
    clock.advance(minutes=9)
    assert w.check() is None
    clock.advance(minutes=2)
    assert w.check() == "silent"
    assert "since opsbot started 11m ago" in w.message("silent")
    assert w.check() is None  # said once
    assert w.seen() == "back"
    assert w.seen() is None
    clock.advance(minutes=10)
    assert w.check() is None
    clock.advance(seconds=61)
    assert w.check() == "silent"
    assert "the last `Watchdog` alert arrived 11m ago" in w.message("silent")
    with pytest.raises(ValueError):
        Watchdog("W", timedelta(0), clock)


async def test_the_service_posts_silent_and_back_to_ops(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    h = await open_harness(tmp_path, clock=clock, watchdog_minutes=5)
    try:
        dog = [alert("Watchdog", severity="none", service="", env="")]
        assert (await h.post(payload(dog, group="wd")))[0] == 200
        assert await h.service.incidents(open_only=False) == []  # a heartbeat, not an incident
        clock.advance(minutes=4)
        assert await h.service.check_watchdog() is None
        clock.advance(minutes=2)
        assert await h.service.check_watchdog() == "silent"
        assert await h.service.check_watchdog() is None
        await h.service.wait_idle(10)
        assert [c for c, _ in h.notifier.notices] == ["ops"]
        assert "alert pipeline is silent" in h.notifier.notices[0][1]
        # Alertmanager repeats the Watchdog group: same startsAt, so a dedup hit, still a heartbeat.
        assert (await h.post(payload(dog, group="wd")))[0] == 200
        await h.service.wait_idle(10)
        assert "alert pipeline is back" in h.notifier.notices[1][1]
        assert len(h.notifier.notices) == 2 and h.notifier.messages == {}
        # A Watchdog alert in a group with real alerts: the others still make an incident.
        await h.post(payload([*dog, alert("Real")], group="mixed"))
        [inc] = await h.service.incidents()
        assert inc.title == "Real" and inc.firing == 1
    finally:
        await close_harness(h)


async def test_watchdog_off(tmp_path: Path) -> None:
    h = await open_harness(tmp_path, watchdog_minutes=0)
    try:
        assert h.service.watchdog is None and await h.service.check_watchdog() is None
    finally:
        await close_harness(h)


async def test_silences_that_ended_stop_showing(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    h = await open_harness(tmp_path, clock=clock)
    try:
        await h.post(payload([alert()]))
        await h.db.run(h.service.store.record_silence, 1, "abc", "oncall", T0 + timedelta(hours=1))
        assert (await h.service.incident(1)).silenced_by == "oncall"
        await h.service.housekeeping()
        assert (await h.service.incident(1)).silenced_by == "oncall"
        clock.advance(hours=1, seconds=1)
        await h.service.housekeeping()
        incident = await h.service.incident(1)
        assert incident.silence_id is None and incident.timeline[-1].text == "the silence ended"
    finally:
        await close_harness(h)


async def test_credentials_in_the_alertmanager_url_become_basic_auth() -> None:
    seen: list[str | None] = []

    async def status(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({})

    app = web.Application()
    app.add_routes([web.get("/am/api/v2/status", status)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        async with AlertmanagerClient(f"http://me:p%40ss@127.0.0.1:{port}/am/") as client:
            assert client.base_url == f"http://127.0.0.1:{port}/am"
            await client.status()
        assert seen == ["Basic bWU6cEBzcw=="]  # me:p@ss
    finally:
        await runner.cleanup()


async def test_a_heartbeat_taken_by_a_standby_counts_at_the_leader(tmp_path: Path) -> None:
    """Alertmanager posts to any replica: the leader's watchdog reads arrivals from the database."""
    from alerts.watchdog import record_heartbeat

    clock = FakeClock(T0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    leader = await open_harness(tmp_path / "a", clock=clock, watchdog_minutes=5)
    # One from a previous run, long before this watch began: it must not count ("silent" at once).
    record_heartbeat(leader.db, "Watchdog", T0 - timedelta(hours=3))
    standby = await open_harness(tmp_path / "b", clock=clock, watchdog_minutes=5, db=leader.db)
    await standby.service.stop()  # a standby: its intake only
    try:
        dog = [alert("Watchdog", severity="none", service="", env="")]
        clock.advance(minutes=1)
        assert await leader.service.check_watchdog() is None
        clock.advance(minutes=3)
        assert (await standby.post(payload(dog, group="wd")))[0] == 200
        clock.advance(minutes=4)  # 8 minutes since the start, 4 since the heartbeat at the standby
        assert await leader.service.check_watchdog() is None
        clock.advance(minutes=2)
        assert await leader.service.check_watchdog() == "silent"
        assert (await standby.post(payload(dog, group="wd")))[0] == 200
        assert await leader.service.check_watchdog() is None  # "back" is said by the leader's check
        await leader.service.wait_idle(10)
        said = [text for _, text in leader.notifier.notices]
        assert len(said) == 2 and "is silent" in said[0] and "is back" in said[1], said
        assert standby.notifier.notices == []
    finally:
        await close_harness(standby, dispose=False)
        await close_harness(leader)
