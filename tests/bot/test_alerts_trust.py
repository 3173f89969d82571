"""Issue 13, finding 8 (the alerts and mentions parts), through the real bot on simcord.

- Nothing pings unless a send names whom: a role mention in a freeze reason does not ping on
  every `!status` that repeats it; the escalation page still pings the person on call.
- Alert text is attacker-controlled (labels come from anywhere): the escalation page's title is
  shown with markdown and mentions made inert.
- `!testalert` needs more than the read-only `alerts` grant, and pages or pings nobody.
- `!silence` refuses matchers that would mute everything, or every alert of an env.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import discord
import pytest

from bot.world import World, open_world
from tests.bot.helpers import embed_text, say
from tests.support.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0))


@pytest.fixture
async def world(tmp_path: Path, clock: FakeClock) -> AsyncIterator[World]:
    def tweak(settings) -> None:  # type: ignore[no-untyped-def]
        settings.alerts.timeline_delay_seconds = 0

    async with open_world(data_dir=tmp_path, clock_context=False, clock=clock, tweak=tweak) as w:
        # Every alert group in #alerts also pings the On-call role (the role's ID exists only now):
        # a sample must still ping nobody.
        router = w.app.alerts.router
        router.default = replace(router.default, mention_roles=(w.roles["On-call"].id,))
        yield w


def pinged(world: World, message: discord.Message) -> tuple[list[int], list[int]]:
    """Whom a message really notified: the mentions its allowed_mentions let through."""
    stored = world.env.backend.get_message(message.channel.id, message.id)
    return list(stored.ping_user_ids), list(stored.ping_role_ids)


def bot_messages(world: World, channel: str) -> list[discord.Message]:
    return [m for m in world.channels[channel].history() if m.author.id == world.bot.user.id]


async def settled(world: World) -> None:
    await world.app.alerts.wait_idle(20)
    await world.env.settle()


# ----------------------------------------------------------------------------- mentions


async def test_a_role_in_a_freeze_reason_pings_nobody_on_status(world: World) -> None:
    role = world.roles["Mod"]
    user = world.members["oncall"]
    frozen = await say(world, "admin", f"!freeze prod 2d release week, ask {role.mention} or {user.mention}")
    assert "frozen" in frozen.content.lower() and pinged(world, frozen) == ([], [])
    for _ in range(2):
        status = await say(world, "mod", "!status")
        assert role.mention in embed_text(status), "the freeze reason is shown as written"
        assert pinged(world, status) == ([], []), "showing the freeze pings nobody"


async def test_the_escalation_page_pings_on_call_and_its_title_is_inert(world: World, clock: FakeClock) -> None:
    hostile = "Disk_Full **now** <@&1234> @everyone `x`"
    incident = await world.app.alerts.sample_alert("chat", "prod", alertname=hostile, pages=True)
    await settled(world)
    assert (await world.app.escalation.state(incident.id)) is not None
    clock.advance(minutes=1)
    assert await world.app.scheduler.run_due() == 1
    await settled(world)
    [page] = [m for m in bot_messages(world, "alerts") if m.content.startswith("🚨")]
    assert pinged(world, page) == ([world.members["oncall"].id], []), "the page really pings, only on-call"
    assert "Disk\\_Full \\*\\*now\\*\\*" in page.content and "@\u200beveryone" in page.content
    assert "<@&1234>" not in page.content and "`x`" not in page.content


# ----------------------------------------------------------------------------- !testalert


async def test_testalert_needs_more_than_reading_alerts(world: World) -> None:
    denied = await say(world, "mod", "!testalert chat dev")  # Mod has `alerts`, not `silence`
    assert "needs the `silence` grant" in denied.content
    assert await world.app.alerts.incidents(open_only=False) == []
    ok = await say(world, "oncall", "!testalert chat dev")
    assert ok.content.startswith("🧪 sample incident #")


async def test_testalert_pages_and_pings_nobody(world: World, clock: FakeClock) -> None:
    reply = await say(world, "oncall", "!testalert chat prod critical")
    assert reply.content.startswith("🧪 sample incident #1")
    await settled(world)
    [message] = bot_messages(world, "alerts")
    assert pinged(world, message) == ([], []), "a sample pings nobody, though its route mentions On-call"
    assert await world.app.escalation.state(1) is None, "a sample starts no escalation"
    clock.advance(minutes=10)
    await world.app.scheduler.run_due()
    await settled(world)
    assert not [m for m in bot_messages(world, "alerts") if m.content.startswith("🚨")], "nobody is paged"
    # A real alert group on the same route does ping the role: the route's mention is real.
    real = await world.app.alerts.ingest({
        "version": "4", "groupKey": "{}:{alertname=\"Real\"}", "status": "firing", "receiver": "opsbot",
        "alerts": [{"status": "firing", "labels": {"alertname": "Real", "service": "chat", "env": "prod",
                                                     "severity": "critical"}, "fingerprint": "r1"}]})
    await settled(world)
    [real_message] = [m for m in bot_messages(world, "alerts") if m.id != message.id and m.embeds]
    assert real.incident_id == 2 and pinged(world, real_message) == ([], [world.roles["On-call"].id])


# ----------------------------------------------------------------------------- !silence scope


@pytest.mark.parametrize("matchers", [
    'alertname=~".+"', 'alertname!=""', 'alertname=~".*"', 'env=prod', 'env="prod" alertname!~"Foo"',
    '{env="prod", severity=~".*"}', 'service=~"(?s).+"', 'alertname=~"Foo|"', 'instance!~"x"',
])
async def test_silence_refuses_matchers_that_mute_everything_or_an_env(world: World, matchers: str) -> None:
    reply = await say(world, "oncall", f"!silence {matchers} 2h why not")
    assert reply.content.startswith("⚠️ those matchers match every alert"), reply.content


async def test_silencing_an_incident_that_shares_only_its_env_is_refused(world: World) -> None:
    result = await world.app.alerts.ingest({
        "version": "4", "groupKey": "{}:{env=\"prod\"}", "status": "firing", "receiver": "opsbot",
        "groupLabels": {"env": "prod"}, "commonLabels": {"env": "prod"},
        "alerts": [{"status": "firing", "labels": {"alertname": n, "env": "prod"}, "fingerprint": n}
                   for n in ("A", "B")]})
    with pytest.raises(Exception, match="silence the whole env"):
        await world.app.alerts.silence(result.incident_id, "1h", "oncall")


@pytest.mark.parametrize("matchers", [
    "alertname=Foo", 'env=prod alertname=~"Disk.*"', 'service=~"chat|auth"', 'instance=~".+:9100"',
    'severity="critical"',
])
async def test_silence_lets_narrow_matchers_through(world: World, matchers: str) -> None:
    # No Alertmanager in this world: passing the guard means reaching the (missing) Alertmanager.
    reply = await say(world, "oncall", f"!silence {matchers} 2h why")
    assert reply.content.startswith("⚠️ no Alertmanager is configured"), reply.content
