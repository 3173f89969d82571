"""Maintenance windows and freezes through simcord, with the sandbox cluster over HTTP and (for
silences) a real Alertmanager checked with amtool.

The app's clock is a fake one anchored at the real time (Alertmanager judges silences by its own
clock): the tests move it and call ``app.scheduler.run_due()``, so a 30-minute window takes no
time. Restarts are new worlds (a new App, Scheduler and bot) on the same data directory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import discord
import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from bot.world import World, open_world
from sandbox.controller import Timing
from tests.alerts.conftest import (
    TOKEN,
    alertmanager_config,
    am_alert,
    free_port,
    start_alertmanager,
    stop_alertmanager,
)
from tests.bot.helpers import embed_text, say
from tests.support.clock import FakeClock

pytestmark = pytest.mark.integration


def team_settings(settings: Any) -> None:
    settings.timezone = "Europe/Berlin"
    settings.maintenance.announce_channels = ["deploys"]
    settings.alerts.timeline_delay_seconds = 0


def messages(world: World, channel: str) -> list[discord.Message]:
    return [m for m in world.channels[channel].history() if m.author.id == world.bot.user.id]


def texts(world: World, channel: str) -> list[str]:
    return [embed_text(m) for m in messages(world, channel)]


async def eventually(check: Callable[[], object], what: str, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def tick(world: World) -> None:
    """Run the jobs that are due by the fake clock and deliver what they queued for chat."""
    await world.app.scheduler.run_due()
    await world.app.alerts.wait_idle()


def apps(world: World) -> k8s.AppsV1Api:
    return k8s.AppsV1Api(k8s_config.new_client_from_config(str(world.app.settings.kubeconfig)))


def world_args(tmp_path: Path, clock: FakeClock) -> dict[str, Any]:
    return {"data_dir": tmp_path / "bot", "clock_context": False, "clock": clock, "tweak": team_settings,
                "sandbox_timing": Timing.fast(), "rollout_poll_seconds": 0.2}


# ----------------------------------------------------------------------------- a real Alertmanager


@pytest.fixture
async def am_world(tmp_path: Path) -> AsyncIterator[tuple[World, Any, FakeClock]]:
    port = free_port()
    config = alertmanager_config(f"http://127.0.0.1:{port}/alerts/alertmanager", TOKEN,
                                 group_by=["alertname", "service", "env"])
    am = await start_alertmanager(tmp_path / "am", config, webhook_port=port, token=TOKEN)
    clock = FakeClock()
    try:
        async with open_world(serve_http=True, webhook_listen=f"127.0.0.1:{port}", webhook_token=TOKEN,
                              alertmanager_url=am.url, **world_args(tmp_path, clock)) as world:
            yield world, am, clock
    finally:
        stop_alertmanager(am)


def maintenance_silences(am: Any) -> list[dict[str, Any]]:
    found = json.loads(am.amtool("silence", "query", "--expired", "-o", "json"))
    found += json.loads(am.amtool("silence", "query", "-o", "json"))
    unique = {s["id"]: s for s in found if s["comment"].startswith("opsbot maintenance #")}
    return list(unique.values())


async def test_the_silence_appears_at_the_start_and_expires_at_the_end(am_world):
    world, am, clock = am_world
    await am.post_alerts([am_alert("DatabaseDown", service="chat", env="prod")])
    reply = await say(world, "admin", "!maintenance schedule chat prod in 10m 30m db upgrade")
    text = embed_text(reply)
    assert "🛠️ Maintenance #1 scheduled" in text
    start = clock.now + timedelta(minutes=10)
    local = start.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert f"**Start** {start:%Y-%m-%d %H:%M} UTC ({local:%H:%M} {local.tzname()}, Europe/Berlin)" in text \
        or f"**Start** {start:%Y-%m-%d %H:%M} UTC ({local:%Y-%m-%d %H:%M} {local.tzname()}, Europe/Berlin)" in text
    assert 'a silence for service="chat" env="prod", an announcement in #deploys' in text
    await tick(world)
    assert maintenance_silences(am) == []

    clock.advance(minutes=10)
    await tick(world)
    (silence,) = maintenance_silences(am)  # read with amtool, not the bot's own client
    assert silence["status"]["state"] == "active"
    assert {m["name"]: m["value"] for m in silence["matchers"]} == {"service": "chat", "env": "prod"}
    assert silence["comment"] == "opsbot maintenance #1: db upgrade"
    ends = datetime.fromisoformat(silence["endsAt"])
    assert abs(ends - (datetime.now(UTC) + timedelta(minutes=30))) < timedelta(minutes=1)
    alerts = await eventually(lambda: [a for a in json.loads(am.amtool("alert", "query", "--silenced", "-o", "json"))
                                       if a["labels"]["alertname"] == "DatabaseDown"], "the alert silenced")
    assert alerts[0]["status"]["silencedBy"] == [silence["id"]]
    assert texts(world, "deploys")[-1].startswith("🛠️ Maintenance has begun: `chat` in `prod` until")
    assert "🛠️ Maintenance #1 has started" in texts(world, "ops")[-1]
    status = await say(world, "member", "!status chat prod")
    assert "🛠️ `chat` in `prod`: in maintenance until" in status.content and "(#1: db upgrade)" in status.content

    clock.advance(minutes=30)
    await tick(world)
    (silence,) = maintenance_silences(am)
    assert silence["status"]["state"] == "expired"
    report = texts(world, "ops")[-1]
    assert report.startswith("🛠️ Maintenance #1 has ended") and "✅ expire silence" in report
    assert texts(world, "deploys")[-1] == "✅ Maintenance is over: `chat` in `prod` — db upgrade"
    status = await say(world, "member", "!status chat prod")
    assert "maintenance" not in (status.content or "")


# ----------------------------------------------------------------------------- restarts


async def test_a_restart_between_scheduling_and_start_runs_the_window_once(tmp_path: Path):
    clock = FakeClock()
    async with open_world(**world_args(tmp_path, clock)) as world:
        await say(world, "admin", "!maintenance schedule chat staging in 15m 20m kernel update --restart")
    clock.advance(minutes=5)  # down for 5 minutes, back 10 minutes before the start

    async with open_world(**world_args(tmp_path, clock)) as world:
        clock.advance(minutes=10)
        await tick(world)
        report = await eventually(lambda: [t for t in texts(world, "ops") if "has started" in t], "the start report")
        assert "✅ restart chat:" in report[0] and "2/2 ready" in report[0]
        deployment = apps(world).read_namespaced_deployment("chat", "staging")
        assert "kubectl.kubernetes.io/restartedAt" in (deployment.spec.template.metadata.annotations or {})
        await world.app.supervisor.join(timeout=30)

    async with open_world(**world_args(tmp_path, clock)) as world:  # once more, during the window
        await tick(world)
        assert not [t for t in texts(world, "ops") if "has started" in t]
        clock.advance(minutes=20)
        await tick(world)
        assert [t for t in texts(world, "ops") if "has ended" in t]
        starts = [r for r in await world.app.audit.query(action="maintenance") if r.args.get("op") == "start"]
        assert len(starts) == 1


async def test_a_window_missed_while_the_bot_was_down_is_reported(tmp_path: Path):
    clock = FakeClock()
    async with open_world(**world_args(tmp_path, clock)) as world:
        await say(world, "admin", "!maintenance schedule all prod in 1h 30m network maintenance --restart")
    clock.advance(minutes=30)
    async with open_world(**world_args(tmp_path, clock)) as world:
        # The clock jumps once the demo guild exists (simcord makes it after the bot starts; a notice
        # for a channel not there yet would be dropped): the window's whole hour passes unrun.
        clock.advance(hours=3)
        await tick(world)
        (missed,) = await eventually(lambda: [t for t in texts(world, "ops") if "was **missed**" in t], "missed")
        assert missed.startswith("⏰ Maintenance #1 was **missed**: all services in `prod` — network maintenance")
        assert "Nothing of it was done: no silence, no announcement, no restart." in missed
        assert texts(world, "deploys") == []
        listed = await say(world, "admin", "!maintenance all")
        assert "⏰ **#1**" in embed_text(listed) and "(missed)" in embed_text(listed)


# ----------------------------------------------------------------------------- commands


@pytest.fixture
async def mworld(tmp_path: Path) -> AsyncIterator[tuple[World, FakeClock]]:
    clock = FakeClock()
    async with open_world(**world_args(tmp_path, clock)) as world:
        yield world, clock


async def test_scheduling_refusals_are_clear(mworld):
    world, _ = mworld
    reply = await say(world, "admin", "!maintenance schedule chat prod yesterday 04:00 30m x")
    assert reply.content.startswith("⚠️ cannot read `yesterday` as a day")
    reply = await say(world, "admin", "!maintenance schedule chat prod 2020-01-01T04:00 30m x")
    assert reply.content.startswith("⚠️ 2020-01-01 04:00 CET is in the past")  # read in the team's zone
    reply = await say(world, "admin", "!maintenance schedule chat prod tomorrow 04:00 2m x")
    assert reply.content == "⚠️ a window duration must be at least 5m"
    reply = await say(world, "admin", "!maintenance schedule chat prod tomorrow 04:00 3d x")
    assert reply.content == "⚠️ a window duration can be at most 1d"
    reply = await say(world, "admin", "!maintenance schedule chat prod tomorrow 04:00 30m x --reboot")
    assert reply.content.startswith("⚠️ unknown option `--reboot`")


async def test_list_extend_cancel_and_end(mworld):
    world, clock = mworld
    await say(world, "admin", '!maintenance schedule all staging "tomorrow 04:00 UTC" 1h upgrade --scale 1')
    reply = await say(world, "admin", "!maintenance schedule chat-gui dev in 5m 15m cdn swap")
    assert "#2" in embed_text(reply)
    listed = embed_text(await say(world, "member", "!maintenance"))
    assert "🕒 **#1** all services in `staging` — upgrade [scale 1]" in listed
    assert "🕒 **#2** `chat-gui` in `dev` — cdn swap" in listed
    assert (await say(world, "admin", "!maintenance cancel 1")).content.startswith("✖️ maintenance #1")

    clock.advance(minutes=5)
    await tick(world)
    reply = await say(world, "admin", "!maintenance extend 2 30m")
    assert reply.content.startswith("⏩ maintenance #2 extended by 30m: now until")
    reply = await say(world, "admin", "!maintenance cancel 2")
    assert "`!maintenance end 2` ends it now" in reply.content
    await say(world, "admin", "!maintenance end 2")
    await world.app.alerts.wait_idle()
    assert any(t.startswith("✅ maintenance #2 ended by admin") for t in texts(world, "ops"))
    (report,) = [t for t in texts(world, "ops") if "ended early by admin" in t]
    assert "✅ announce the end in #deploys" in report and report.endswith("All steps succeeded.")
    # A member sees the list but may not change it.
    reply = await say(world, "member", "!maintenance end 2")
    assert "needs the `maintenance` grant" in reply.content


# ----------------------------------------------------------------------------- freezes


async def test_a_freeze_blocks_deploys_force_with_the_grant_passes_and_is_audited(mworld):
    world, _ = mworld
    reply = await say(world, "admin", "!freeze staging 2h release week")
    assert reply.content.startswith("🧊 deploys and rollbacks to `staging` are frozen until")

    refused = await say(world, "mod", "!deploy chat staging v1.5.1")
    assert refused.content.startswith("⚠️ deploys to `staging` are frozen until")
    assert "(by admin): release week. `!deploy` is refused" in refused.content
    refused = await say(world, "mod", "!rollback chat staging")
    assert "`!rollback` is refused" in refused.content
    refused = await say(world, "mod", "!deploy chat staging v1.5.1 --force")
    assert refused.content.startswith(f"🚫 {world.members['mod'].mention}, deploys to `staging` are frozen "
                                      "(release week); `--force` needs the `deploy:force` grant, which you do not hold")
    denied = await world.app.audit.query(action="deploy:force")
    assert [(r.user_name, r.result) for r in denied] == [("mod", "denied")]

    await say(world, "admin", "!deploy chat staging v1.5.1 --force")
    await world.app.supervisor.join(timeout=60)
    assert apps(world).read_namespaced_deployment("chat", "staging").spec.template.spec.containers[0].image \
        .endswith(":v1.5.1")
    assert any("forced past the freeze of `staging` (release week)" in t for t in texts(world, "ops"))
    forced = [r for r in await world.app.audit.query(action="deploy:force") if r.result == "ok"]
    assert [(r.user_name, r.service, r.env) for r in forced] == [("admin", "chat", "staging")]
    assert "release week" in forced[0].detail

    status = await say(world, "member", "!status staging")
    assert "🧊 deploys to `staging` are frozen until" in status.content
    reply = await say(world, "admin", "!unfreeze staging")
    assert reply.content.startswith("🔥 `staging` unfrozen by admin (was: release week)")
    await say(world, "mod", "!deploy auth staging v1.5.1")
    await world.app.supervisor.join(timeout=60)
    assert apps(world).read_namespaced_deployment("auth", "staging").spec.template.spec.containers[0].image \
        .endswith(":v1.5.1")


async def test_freeze_until_a_time_in_the_teams_zone(mworld):
    world, clock = mworld
    reply = await say(world, "admin", "!freeze prod until tomorrow 18:00 launch day")
    tomorrow = (clock.now.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin")) + timedelta(days=1)).date()
    assert f"until {tomorrow:%Y-%m-%d}" in reply.content and "launch day" in reply.content
    reply = await say(world, "admin", "!freeze prod until yesterday 18:00 x")
    assert reply.content.startswith("⚠️ cannot read the time after `until`")
    reply = await say(world, "admin", "!freeze prod 30d forever")
    assert reply.content == "⚠️ a freeze duration can be at most 14d"


async def test_open_windows_per_env_are_capped(mworld):
    """Issue 13, finding 7: chat cannot pile up windows (each holds jobs, a silence, announcements)."""
    world, _ = mworld
    world.app.settings.maintenance.max_open_windows = 3
    for i in range(3):
        reply = await say(world, "admin", f"!maintenance schedule chat dev in {i + 1}h 15m chore {i}")
        assert f"#{i + 1}" in embed_text(reply)
    refused = await say(world, "admin", "!maintenance schedule auth dev in 5h 15m one too many")
    assert refused.content == (
        "⚠️ `dev` has 3 open maintenance windows already (scheduled or running), the most allowed "
        "(maintenance.max_open_windows); `!maintenance` lists them, `!maintenance cancel <id>` frees one")
    assert len(await world.app.maintenance.windows()) == 3
    jobs = [j.id for j in await world.app.scheduler.jobs("maint:")]
    assert len(jobs) == 6, jobs  # start and end of the three: none for the refused one
    # Per env: staging is not affected; a cancelled window frees its place.
    assert "#4" in embed_text(await say(world, "admin", "!maintenance schedule chat staging in 1h 15m other env"))
    assert (await say(world, "admin", "!maintenance cancel 1")).content.startswith("✖️ maintenance #1")
    assert "#5" in embed_text(await say(world, "admin", "!maintenance schedule auth dev in 5h 15m now it fits"))
