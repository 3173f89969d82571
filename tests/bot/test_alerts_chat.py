"""Alerts end to end: a real Alertmanager posts to the bot's webhook; the real bot shows it in
simcord's Discord; buttons act on Alertmanager for real."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.world import World, open_world
from tests.alerts.conftest import TOKEN, alertmanager_config, am_alert, free_port, start_alertmanager, stop_alertmanager
from tests.bot.helpers import embed_text, say

pytestmark = pytest.mark.integration


@pytest.fixture
async def alert_world(tmp_path: Path) -> AsyncIterator[tuple[World, object]]:
    port = free_port()
    config = alertmanager_config(f"http://127.0.0.1:{port}/alerts/alertmanager", TOKEN,
                                 group_by=["alertname", "service", "env"])
    am = await start_alertmanager(tmp_path / "am", config, webhook_port=port, token=TOKEN)
    try:
        async with open_world(data_dir=tmp_path / "bot", clock_context=False, serve_http=True,
                              webhook_listen=f"127.0.0.1:{port}", webhook_token=TOKEN,
                              alertmanager_url=am.url) as world:
            yield world, am
    finally:
        stop_alertmanager(am)


async def wait_until(check: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.1)


def alert_messages(world: World) -> list:
    bot_id = world.bot.user.id
    return [m for m in world.channels["alerts"].history() if m.author.id == bot_id]


def plain(message) -> str:
    return embed_text(message).replace("**", "").lower()


def labels(message) -> list[str]:
    return [c.label for row in message.components for c in row.children]


async def test_an_alert_group_lives_in_one_message(alert_world):
    world, am = alert_world
    await am.post_alerts([am_alert("HighErrorRate", instance="chat-1")])
    first = await wait_until(lambda: alert_messages(world), what="the alert message")
    (msg,) = first
    assert "HighErrorRate" in embed_text(msg)
    assert {"Acknowledge", "Silence 1h", "Silence 4h", "Silence 24h", "Runbook"} <= set(labels(msg))

    await am.post_alerts([am_alert("HighErrorRate", instance="chat-1"), am_alert("HighErrorRate", instance="chat-2")])
    await wait_until(lambda: "chat-2" in embed_text(alert_messages(world)[0]), what="the second alert joining")
    assert len(alert_messages(world)) == 1, "a group keeps one message"

    # A member may not acknowledge; on-call may.
    refused = await world.members["member"].click(alert_messages(world)[0], label="Acknowledge")
    assert "needs the `ack` grant" in (refused.response or refused.followups[-1]).content
    await world.members["oncall"].click(alert_messages(world)[0], label="Acknowledge")
    await wait_until(lambda: "acknowledged by oncall" in plain(alert_messages(world)[0]), what="acked")
    assert "Unacknowledge" in labels(alert_messages(world)[0])
    records = await world.app.audit.query(action="ack")
    assert [(r.user_name, r.result) for r in records] == [("oncall", "ok")]

    # Resolved: the same message turns green.
    past = datetime.now(UTC) - timedelta(seconds=1)
    await am.post_alerts([am_alert("HighErrorRate", instance="chat-1", ends=past),
                          am_alert("HighErrorRate", instance="chat-2", ends=past)])
    resolved = await wait_until(lambda: [m for m in alert_messages(world) if "resolved after" in plain(m)],
                                timeout=30, what="resolved")
    assert resolved[0].embeds[0].colour.value == 0x2ECC71
    assert "Acknowledge" not in labels(resolved[0]) and "Unacknowledge" not in labels(resolved[0])
    assert len(alert_messages(world)) == 1


async def test_silence_button_makes_a_real_silence(alert_world):
    world, am = alert_world
    await am.post_alerts([am_alert("HighErrorRate", instance="chat-1")])
    await wait_until(lambda: alert_messages(world), what="the alert message")
    # Silence 1h makes a real silence in Alertmanager.
    await world.members["oncall"].click(alert_messages(world)[0], label="Silence 1h")
    # Checked with amtool, not our own client.
    silences = [s for s in json.loads(am.amtool("silence", "query", "-o", "json")) if s["status"]["state"] == "active"]
    assert len(silences) == 1
    assert silences[0]["createdBy"] == "oncall"
    assert {m["name"]: m["value"] for m in silences[0]["matchers"]}["alertname"] == "HighErrorRate"
    await wait_until(lambda: "silenced by oncall" in plain(alert_messages(world)[0]), what="silenced")




async def test_commands_read_alertmanager_and_incidents(alert_world):
    world, am = alert_world
    await am.post_alerts([am_alert("DiskFull", service="auth", env="staging", severity="warning")])
    await wait_until(lambda: alert_messages(world), what="the alert message")
    live = await say(world, "oncall", "!alerts auth")
    assert "DiskFull" in embed_text(live)
    incidents = await say(world, "oncall", "!incidents")
    assert "DiskFull" in embed_text(incidents)
    reply = await say(world, "oncall", '!silence alertname=DiskFull service="auth" 2h disk swap')
    assert reply.content.startswith("🔕 silence `")
    listed = await say(world, "mod", "!silences")
    assert "disk swap" in embed_text(listed)
    silence_id = reply.content.split("`")[1]
    gone = await say(world, "oncall", f"!unsilence {silence_id[:8]}")
    assert gone.content.startswith(f"🔔 silence `{silence_id}` expired by oncall")


async def test_alert_text_and_silences_are_shown_inert(alert_world):
    """Labels, annotations and silence comments come from anywhere: no markdown, no mentions."""
    world, am = alert_world
    hostile = am_alert("Disk_Full", service="auth", env="staging", severity="warning")
    hostile["annotations"]["summary"] = "**bold** <@&1234> @everyone `code` ||spoiler||"
    await am.post_alerts([hostile])
    await wait_until(lambda: alert_messages(world), what="the alert message")
    (live_embed,) = (await say(world, "oncall", "!alerts auth")).embeds
    text = live_embed.description
    assert "Disk\\_Full" in text and "\\*\\*bold\\*\\*" in text and "\\|\\|spoiler\\|\\|" in text
    assert "@everyone" not in text and "\\`code\\`" in text
    async with am.client() as client:
        from alerts.routing import parse_matchers

        await client.create_silence(parse_matchers('alertname="Disk_Full"'), starts_at=datetime.now(UTC),
                                    ends_at=datetime.now(UTC) + timedelta(hours=1), created_by="**someone**",
                                    comment="ask @everyone in ~~ops~~")
    (listed,) = (await say(world, "mod", "!silences")).embeds
    assert "\\*\\*someone\\*\\*" in listed.description and "\\~\\~ops\\~\\~" in listed.description
    assert "@everyone" not in listed.description and "Disk\\_Full" in listed.description


async def test_alertmanager_down_is_a_message(world):
    reply = await say(world, "oncall", "!alerts")
    assert reply.content.startswith("⚠️ ")
    assert "Traceback" not in reply.content


async def test_sample_alert_for_the_demo(world):
    reply = await say(world, "oncall", "!testalert strims staging warning")
    assert reply.content.startswith("🧪 sample incident #")
    msgs = await wait_until(lambda: alert_messages(world), what="the sample alert")
    assert "strims" in embed_text(msgs[0])
