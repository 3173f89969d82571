"""On-call through simcord: `!oncall`, overrides and swaps, the pages an unacknowledged incident
produces, `!note`, `!resolve`, `!incidents stats`, and the on-call role without Manage Roles.

The world runs the sandbox's demo rotations (primary: oncall then admin, daily; secondary: admin
then mod, weekly; hand-offs at 09:00 UTC) and the demo escalation policy on the default route
(after 1 min the primary, after 3 min the secondary). The app's clock is a fake one the tests
move; ``app.scheduler.run_due()`` then runs the escalation steps that are due, without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import discord
import pytest

from bot.world import World, open_world
from tests.bot.helpers import embed_text, say
from tests.support.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    # Today at noon UTC: the demo rotations hand off at 09:00, and a two-hour override started
    # between 07:00 and 09:00 would span a hand-off, which these tests don't mean to test.
    return FakeClock(datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0))


@pytest.fixture
async def world(tmp_path: Path, clock: FakeClock) -> AsyncIterator[World]:
    def quick_timeline(settings) -> None:
        settings.alerts.timeline_delay_seconds = 0  # thread posts at once (the alerts' clock is real)

    async with open_world(data_dir=tmp_path, clock_context=False, clock=clock, tweak=quick_timeline) as w:
        yield w


async def eventually(check: Callable[[], Awaitable[object]], what: str, timeout: float = 20.0) -> object:
    """Wait for work the bot does outside a command (the alert outbox) to show."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def denial(world: World, user: str, grant: str) -> str:
    return (f"🚫 {world.members[user].mention}, you may not do that — it needs the `{grant}` grant. "
            "`!perms` shows yours.")


def mention(world: World, user: str) -> str:
    return world.members[user].mention


def bot_messages(world: World, channel: str) -> list[discord.Message]:
    return [m for m in world.channels[channel].history() if m.author.id == world.bot.user.id]


def pinged(world: World, message: discord.Message) -> tuple[list[int], list[int]]:
    """Whom a message really notified (user IDs, role IDs): mentions allowed by allowed_mentions."""
    stored = world.env.backend.get_message(message.channel.id, message.id)
    return list(stored.ping_user_ids), list(stored.ping_role_ids)


def pages(world: World) -> list[discord.Message]:
    return [m for m in bot_messages(world, "alerts") if m.content.startswith("🚨")]


def next_handoff(now: datetime) -> datetime:
    today = datetime.combine(now.date(), time(9, 0), tzinfo=UTC)
    return today if now < today else today + timedelta(days=1)


def ts(when: datetime, style: str = "R") -> str:
    return f"<t:{int(when.timestamp())}:{style}>"


async def fire(world: World, severity: str = "critical", service: str = "chat", env: str = "prod"):
    """A sample incident through the real intake; returns it once its message is up and escalating."""
    incident = await world.app.alerts.sample_alert(service, env, severity=severity, pages=True)

    async def escalating():
        return await world.app.escalation.state(incident.id)

    await eventually(escalating, f"the escalation of #{incident.id}")
    return incident


# ----------------------------------------------------------------------------- !oncall


async def test_oncall_shows_who_is_on_call_who_is_next_and_when(world, clock):
    reply = await say(world, "member", "!oncall")  # `status` is enough to see it
    (embed,) = reply.embeds
    fields = {f.name.split(" · ")[0]: f.value for f in embed.fields}
    handoff = next_handoff(clock.now)
    assert fields["primary"].splitlines()[0].startswith(f"**now:** {mention(world, 'oncall')} (oncall) since ")
    assert fields["primary"].splitlines()[1] == (
        f"**next:** {mention(world, 'admin')} (admin) {ts(handoff)} ({ts(handoff, 'f')})")
    assert f"**now:** {mention(world, 'admin')} (admin)" in fields["secondary"]
    assert f"**next:** {mention(world, 'mod')} (mod)" in fields["secondary"]
    assert "Overrides" not in fields
    assert pinged(world, reply) == ([], []), "showing who is on call pings nobody"

    slash = await world.members["mod"].slash(world.channels["ops"], "oncall show")
    assert f"**now:** {mention(world, 'oncall')} (oncall)" in embed_text(slash.response.message)

    refused = await say(world, "guest", "!oncall")
    assert refused.content == denial(world, "guest", "status")


async def test_override_puts_someone_on_call_and_is_audited(world, clock):
    refused = await say(world, "member", f"!oncall override {mention(world, 'member')} 2h")
    assert refused.content == denial(world, "member", "oncall")
    refused = await say(world, "mod", "!oncall swap")
    assert refused.content == denial(world, "mod", "oncall")

    reply = await say(world, "oncall", f"!oncall override {mention(world, 'admin')} 2h dentist at noon")
    until = clock.now + timedelta(hours=2)
    assert reply.content == (f"🔁 {mention(world, 'admin')} is on call in `primary` until {ts(until, 'f')} "
                             f"({ts(until)}) instead of {mention(world, 'oncall')} (oncall) — override #1 by "
                             "oncall: dentist at noon")
    assert pinged(world, reply) == ([world.members["admin"].id], []), "only the person put on call is pinged"

    shown = await say(world, "member", "!oncall")
    fields = {f.name.split(" · ")[0]: f.value for f in shown.embeds[0].fields}
    assert fields["primary"].startswith(f"**now:** {mention(world, 'admin')} (admin) since ")
    assert "↳ override #1 by oncall: dentist at noon" in fields["primary"]
    assert f"**next:** {mention(world, 'oncall')} (oncall) {ts(until)}" in fields["primary"]
    assert fields["Overrides"] == (f"#1 `primary` {mention(world, 'admin')} (admin) **in force** until {ts(until)} "
                                   "· override by oncall: dentist at noon")

    # A rotation named first in the reason; a typo in it is only a reason; bad durations are refused.
    second = await say(world, "admin", f"!oncall override {mention(world, 'mod')} 30m secondary cover")
    assert "is on call in `secondary` until" in second.content and second.content.endswith("by admin: cover")
    bad = await say(world, "oncall", f"!oncall override {mention(world, 'mod')} soon")
    assert bad.content.startswith("⚠️ `soon` is not a override duration")
    too_long = await say(world, "oncall", f"!oncall override {mention(world, 'mod')} 40d")
    assert too_long.content == "⚠️ a override duration can be at most 30d"

    cancelled = await say(world, "oncall", "!oncall cancel #1")
    assert cancelled.content == (f"↩️ override #1 cancelled by oncall; {mention(world, 'oncall')} (oncall) is on call "
                                 "in `primary` now")
    again = await say(world, "oncall", "!oncall cancel 1")
    assert again.content == "⚠️ no override #1 that has not ended"

    records = await world.app.audit.query(action="oncall")
    assert [(r.user_name, r.result, r.args.get("op")) for r in reversed(records)] == [
        ("member", "denied", None), ("mod", "denied", None),
        ("oncall", "ok", "override"), ("admin", "ok", "override"),
        ("oncall", "ok", "cancel"), ("oncall", "failed", "cancel"),
    ]
    assert records[-3].args == {"op": "override", "rotation": "primary", "user": world.members["admin"].id,
                                "duration": "2h", "reason": "dentist at noon"}


async def test_swap_trades_the_current_turn_with_the_next(world, clock):
    reply = await say(world, "oncall", "!oncall swap")
    handoff = next_handoff(clock.now)
    assert reply.content.startswith(
        f"🔁 swapped in `primary`: {mention(world, 'admin')} (admin) is on call now until {ts(handoff, 'f')}; "
        f"{mention(world, 'oncall')} (oncall) takes {ts(handoff, 'f')} – {ts(handoff + timedelta(days=1), 'f')}")
    assert sorted(pinged(world, reply)[0]) == sorted([world.members["admin"].id, world.members["oncall"].id])
    slot = await world.app.oncall.who("primary")
    assert slot.user_id == world.members["admin"].id and slot.via_override
    unknown = await say(world, "oncall", "!oncall swap secondry")
    assert unknown.content == "⚠️ no rotation `secondry` — did you mean `secondary`?"


# ----------------------------------------------------------------------------- escalation


async def test_an_unacknowledged_critical_incident_pages_the_people_on_call(world, clock):
    incident = await fire(world)
    state = await world.app.escalation.state(incident.id)
    assert state.policy == "demo" and [t.due_at - state.started_at for t in state.ticks] == [
        timedelta(minutes=1), timedelta(minutes=3)]

    clock.advance(seconds=59)
    await world.app.scheduler.run_due()
    assert pages(world) == [], "nobody is paged before the step is due"

    clock.advance(seconds=1)
    assert await world.app.scheduler.run_due() == 1
    (page,) = pages(world)
    assert page.content.startswith(f"🚨 {mention(world, 'oncall')} — incident #{incident.id} is unacknowledged "
                                   "after 1m: HighErrorRate (step 1/2)")
    assert pinged(world, page) == ([world.members["oncall"].id], []), "the page really pings"

    clock.advance(minutes=2)
    assert await world.app.scheduler.run_due() == 1
    assert [p.content.split(" — ")[0] for p in pages(world)] == [f"🚨 {mention(world, 'oncall')}",
                                                                 f"🚨 {mention(world, 'admin')}"]
    thread = world.channels["alerts"].threads[0]

    async def noted():
        return [m for m in thread.history() if "escalation step 2/2: notified" in m.content]

    await eventually(noted, "the escalation in the incident's thread")


async def test_acknowledging_stops_further_pages(world, clock):
    incident = await fire(world)
    clock.advance(minutes=1, seconds=1)
    await world.app.scheduler.run_due()
    assert len(pages(world)) == 1

    ack = await say(world, "oncall", f"!ack {incident.id}")
    assert ack.content.startswith(f"✅ #{incident.id} HighErrorRate acknowledged by oncall")

    async def stopped():
        state = await world.app.escalation.state(incident.id)
        return state is not None and not state.active and state.stop_reason

    assert await eventually(stopped, "escalation to stop") == "acknowledged by oncall"
    clock.advance(minutes=10)
    await world.app.scheduler.run_due()
    assert len(pages(world)) == 1, "no page after the acknowledgement"


async def test_an_override_is_who_gets_paged(world, clock):
    await say(world, "oncall", f"!oncall override {mention(world, 'admin')} 1h oncall is on a train")
    incident = await fire(world)
    clock.advance(minutes=1)
    await world.app.scheduler.run_due()
    (page,) = pages(world)
    assert page.content.startswith(f"🚨 {mention(world, 'admin')} — incident #{incident.id}")


# ----------------------------------------------------------------------------- !note, !resolve


async def test_note_goes_into_the_timeline_and_the_thread(world, clock):
    incident = await fire(world)
    refused = await say(world, "mod", f"!note {incident.id} I think it is the database")
    assert refused.content == denial(world, "mod", "ack")
    reply = await say(world, "oncall", f"!note {incident.id} restarted the chat pods, watching")
    assert reply.content == f"📝 noted on #{incident.id} HighErrorRate; `!incident {incident.id}` shows the timeline"

    async def in_thread():
        threads = world.channels["alerts"].threads
        return threads and [m for m in threads[0].history() if "note by oncall: restarted the chat pods, watching"
                            in m.content]

    await eventually(in_thread, "the note in the incident's thread")
    shown = await say(world, "member", f"!incident {incident.id}")
    assert denial(world, "member", "alerts") == shown.content
    shown = await say(world, "mod", f"!incident {incident.id}")
    assert "note by oncall: restarted the chat pods, watching" in embed_text(shown)
    empty = await say(world, "oncall", f"!note {incident.id}")
    assert empty.content.startswith("⚠️ missing `text`")


async def test_resolve_by_hand_closes_it_in_the_bot_and_says_alertmanager_may_still_fire(world, clock):
    incident = await fire(world)
    refused = await say(world, "member", f"!resolve {incident.id}")
    assert refused.content == denial(world, "member", "ack")

    reply = await say(world, "oncall", f"!resolve {incident.id}")
    assert reply.content.startswith(f"✅ #{incident.id} HighErrorRate resolved by hand by oncall; escalation stops. "
                                    "This closes it in opsbot only: Alertmanager may still be firing. 2 of its "
                                    "alerts were still firing when you closed it.")

    message_id = int((await world.app.alerts.incident(incident.id)).message_id)

    async def green():
        (msg,) = [m for m in bot_messages(world, "alerts") if m.id == message_id]
        return msg.content.startswith(f"✅ #{incident.id}") and msg

    msg = await eventually(green, "the message to turn resolved")
    assert msg.embeds[0].colour.value == 0x2ECC71
    assert not [c for row in msg.components for c in row.children if c.label == "Acknowledge"]

    async def stopped():
        state = await world.app.escalation.state(incident.id)
        return not state.active and state.stop_reason

    assert await eventually(stopped, "escalation to stop") == "resolved"
    clock.advance(minutes=5)
    await world.app.scheduler.run_due()
    assert pages(world) == []

    shown = await say(world, "oncall", f"!incident {incident.id}")
    assert "resolved by hand in opsbot by oncall after" in embed_text(shown)
    again = await say(world, "oncall", f"!resolve {incident.id}")
    assert again.content == f"⚠️ incident #{incident.id} is resolved already"
    assert [(r.user_name, r.args.get("op")) for r in await world.app.audit.query(action="ack")] == [
        ("oncall", "resolve"), ("member", None)]


# ----------------------------------------------------------------------------- !incidents stats


async def test_incidents_stats(world, clock):
    first = await fire(world, "critical", "chat", "prod")
    await fire(world, "warning", "auth", "staging")
    await say(world, "oncall", f"!ack {first.id}")
    await say(world, "admin", f"!resolve {first.id}")

    reply = await say(world, "mod", "!incidents stats")
    text = embed_text(reply)
    assert reply.embeds[0].title == "Incident response · last 7d"
    assert "**2** incidents since" in text and "1 acknowledged · 1 resolved · 1 open and unacknowledged" in text
    assert "time to acknowledge: mean " in text and "time to resolve: mean " in text
    fields = {f.name: f.value for f in reply.embeds[0].fields}
    assert [line.split(" ")[0] for line in fields["By severity"].splitlines()] == ["**critical**", "**warning**"]
    by_service = dict(line.split(" ", 1) for line in fields["By service"].splitlines())
    assert by_service["**auth**"] == "1 · ack — · resolve — · 1 open unacked"
    assert by_service["**chat**"].startswith("1 · ack 0s / p90 0s · resolve ")
    assert fields["Acknowledged most"] == "oncall (1)"

    month = await say(world, "mod", "!incidents stats 30d")
    assert month.embeds[0].title == "Incident response · last 30d"
    bad = await say(world, "mod", "!incidents stats soon")
    assert bad.content.startswith("⚠️ `soon` is not a period")
    # `!incidents [service]` still lists open incidents.
    listed = await say(world, "mod", "!incidents auth")
    assert "#2" in embed_text(listed) and "#1" not in embed_text(listed)
    slash = await world.members["mod"].slash(world.channels["ops"], "incidents stats", period="7d")
    assert slash.response.message.embeds[0].title == "Incident response · last 7d"
    refused = await say(world, "member", "!incidents stats")
    assert refused.content == denial(world, "member", "alerts")


# ----------------------------------------------------------------------------- the on-call role


async def test_the_oncall_role_follows_and_a_missing_manage_roles_is_reported(world, clock):
    guild = world.bot.get_guild(world.guild.id)
    role = world.guild.create_role("On call now")
    config = world.app.settings.oncall.model_copy(deep=True)
    config.rotations["primary"].role_id = role.id
    await world.app.replace_oncall(config)

    def holders() -> set[int]:
        return {m.id for m in guild.get_role(role.id).members}

    assert holders() == {world.members["oncall"].id}

    # Take Manage Roles away from the bot's own role.
    me = guild.me.top_role
    perms = discord.Permissions(me.permissions.value)
    perms.manage_roles = False
    world.env.backend.edit_role(guild.id, me.id, {"permissions": perms.value})

    reply = await say(world, "oncall", f"!oncall override {mention(world, 'admin')} 1h")
    assert reply.content.startswith(f"🔁 {mention(world, 'admin')} is on call in `primary`"), "no crash"
    reports = [m for m in bot_messages(world, "ops") if m.content.startswith("⚠️ On-call `primary`")]
    assert len(reports) == 1
    assert reports[0].content.startswith(f"⚠️ On-call `primary`: I may not give <@&{role.id}> to "
                                         f"{mention(world, 'admin')} (")
    assert reports[0].content.endswith("Give me Manage Roles and put my role above that one.")
    assert pinged(world, reports[0]) == ([], []), "a report pings nobody"
    assert holders() == {world.members["oncall"].id}, "the role stays where it was"
