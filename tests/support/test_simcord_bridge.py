"""The simcord bridge: real bot processes on one in-memory Discord (tests/support/simcord_bridge.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import discord
import pytest

from tests.support.bridge_member import MemberProcess
from tests.support.simcord_bridge import (
    BridgeHost,
    open_bridge,
    open_relay_env,
    wait_until,
)


@dataclass
class BridgeWorld:
    env: Any
    host: BridgeHost
    guild: Any
    ops: Any
    alerts: Any
    alice: Any


@asynccontextmanager
async def bridge_world() -> AsyncIterator[BridgeWorld]:
    """simcord with guild 'bridge' (#ops, #alerts, user alice) served by a BridgeHost."""
    async with open_relay_env() as env:
        guild = env.create_guild("bridge")
        ops = guild.create_text_channel("ops")
        alerts = guild.create_text_channel("alerts")
        alice = guild.add_member(env.create_user("alice"))
        await env.settle()
        async with open_bridge(env) as host:
            yield BridgeWorld(env, host, guild, ops, alerts, alice)
            assert host.errors == []


@asynccontextmanager
async def member(world: BridgeWorld, name: str) -> AsyncIterator[MemberProcess]:
    """A bot process attached to the bridge, READY; stopped (killed if need be) on exit."""
    proc = await MemberProcess.spawn(world.host.url, name)
    try:
        await proc.wait_event("ready")
        yield proc
    finally:
        await proc.stop()


def bot_messages(channel: Any) -> list[discord.Message]:
    return [m for m in channel.history() if m.author.bot]


async def test_member_is_ready_and_posts_an_embed_with_a_button() -> None:
    async with bridge_world() as w, member(w, "m1") as m1:
        session = await w.host.wait_for_session(name="m1")
        assert session.pid == m1.pid
        assert session.events[:2] == ["READY", "GUILD_CREATE"]
        status = await m1.call("wait_ready")
        assert status["ready"] is True
        assert status["user_id"] == w.env.backend.bot_user.id
        [guild] = status["guilds"]
        assert guild["id"] == w.guild.id
        assert {"ops", "alerts"} <= set(guild["text_channels"])
        assert "alice" in guild["members"]

        reply = await m1.call("post", channel_id=w.alerts.id, content="CPU high", title="HighCPU firing",
                              button=True, files={"top.txt": "load average: 31.7"})
        assert "error" not in reply, reply
        [msg] = bot_messages(w.alerts)
        assert msg.id == reply["message_id"]
        assert msg.content == "CPU high"
        assert [e.title for e in msg.embeds] == ["HighCPU firing"]
        [row] = msg.components
        assert isinstance(row, discord.ActionRow)
        assert [(c.label, c.custom_id) for c in row.children if isinstance(c, discord.Button)] == [("Ack", "bridge:ack")]
        assert len(row.children) == 1
        [attachment] = msg.attachments
        assert attachment.filename == "top.txt"
        assert await attachment.read() == b"load average: 31.7"
        assert bot_messages(w.ops) == []
        assert any(c.member == "m1" and c.method == "POST" and c.status == 200 for c in w.host.rest_log)


async def test_a_fresh_process_edits_the_message_of_a_killed_one() -> None:
    async with bridge_world() as w:
        async with member(w, "leader") as first:
            posted = await first.call("post", channel_id=w.alerts.id, content="disk 91%", title="DiskFull firing",
                                      button=True)
            assert "error" not in posted, posted
            leader = await w.host.wait_for_session(name="leader")
            first.kill()
            await leader.wait_closed(timeout=10)
        assert w.host.sessions == []

        async with member(w, "standby") as second:
            assert [s.name for s in w.host.sessions] == ["standby"]
            edited = await second.call("edit", channel_id=w.alerts.id, message_id=posted["message_id"],
                                       content="disk 91% (resolved)", title="DiskFull resolved")
            assert "error" not in edited, edited
            [msg] = bot_messages(w.alerts)  # one message, edited in place; not a second post
            assert msg.id == posted["message_id"]
            assert msg.content == "disk 91% (resolved)"
            assert [e.title for e in msg.embeds] == ["DiskFull resolved"]
            assert msg.edited_at is not None

            # Errors come back as the genuine discord.py exceptions.
            missing = await second.call("fetch", channel_id=w.alerts.id, message_id=posted["message_id"] + 12345)
            assert (missing["error"], missing["status"], missing["code"]) == ("NotFound", 404, 10008)


async def test_a_user_command_reaches_the_member_and_its_reply_lands_in_simcord() -> None:
    async with bridge_world() as w, member(w, "m1") as m1:
        await w.alice.send(w.ops, "!ping")
        await m1.wait_event("command", name="ping", author_id=w.alice.id)
        replies = await wait_until(lambda: bot_messages(w.ops), what="the bot's reply in #ops")
        assert [m.content for m in replies] == ["pong from m1"]


async def test_a_member_opens_a_thread_on_a_message_and_posts_in_it() -> None:
    async with bridge_world() as w, member(w, "m1") as m1:
        posted = await m1.call("post", channel_id=w.alerts.id, content="latency p99 2s", title="SlowAPI firing")
        made = await m1.call("thread", channel_id=w.alerts.id, message_id=posted["message_id"],
                             name="SlowAPI incident", content="looking into it")
        assert "error" not in made, made
        [thread] = w.alerts.threads
        assert thread.id == made["thread_id"] == posted["message_id"]  # a message's thread takes its ID
        assert thread.name == "SlowAPI incident"
        assert [m.content for m in thread.history() if m.author.bot] == ["looking into it"]
        assert "THREAD_CREATE" in w.host.sessions[0].events


async def test_the_host_notices_a_member_dying_and_one_closing() -> None:
    async with bridge_world() as w, member(w, "doomed") as doomed, member(w, "polite") as polite:
        s_doomed = await w.host.wait_for_session(pid=doomed.pid)
        s_polite = await w.host.wait_for_session(pid=polite.pid)
        assert {s.name for s in w.host.sessions} == {"doomed", "polite"}

        doomed.kill()
        await s_doomed.wait_closed(timeout=10)
        assert w.host.sessions == [s_polite]

        # Events stop going to the dead one and keep going to the living one.
        await w.alice.send(w.ops, "hello")
        await wait_until(lambda: s_polite.events[-1:] == ["MESSAGE_CREATE"], what="MESSAGE_CREATE to polite")
        assert "MESSAGE_CREATE" not in s_doomed.events

        assert (await polite.call("close")).get("closed") is True
        await s_polite.wait_closed(timeout=10)
        assert w.host.sessions == []
        assert await polite.stop() == 0


async def test_member_chunks_members_sends_dms_and_edits_roles() -> None:
    async with bridge_world() as w, member(w, "m1") as m1:
        oncall = w.guild.create_role("oncall")
        await wait_until(lambda: "GUILD_ROLE_CREATE" in w.host.sessions[0].events, what="GUILD_ROLE_CREATE")

        chunked = await m1.call("chunk", guild_id=w.guild.id, query="ali")
        assert "error" not in chunked, chunked
        assert "alice" in chunked["members"] and chunked["query"] == ["alice"]

        dm = await m1.call("dm", user_id=w.alice.id, content="you are on call")
        assert "error" not in dm, dm
        assert [m.content for m in w.alice.user.dm_channel.history()] == ["you are on call"]

        granted = await m1.call("role", guild_id=w.guild.id, user_id=w.alice.id, role_id=oncall.id,
                                reason="rotation hand-off")
        assert "error" not in granted, granted
        assert "oncall" in granted["roles"]
        assert oncall.id in [r.id for r in w.alice.member.roles]  # the relay saw GUILD_MEMBER_UPDATE
        assert any(r.path.endswith(f"/roles/{oncall.id}") and r.reason == "rotation hand-off"
                   for r in w.env.http_requests)


async def test_a_button_click_in_simcord_is_answered_by_the_member() -> None:
    async with bridge_world() as w, member(w, "m1") as m1:
        posted = await m1.call("post", channel_id=w.alerts.id, content="Watchdog", title="Watchdog", button=True)
        [msg] = bot_messages(w.alerts)
        result = await w.alice.click(msg, label="Ack")
        await m1.wait_event("click", custom_id="bridge:ack", user_id=w.alice.id)
        await wait_until(lambda: result.acknowledged, what="the member's interaction response")
        [msg] = bot_messages(w.alerts)
        assert msg.id == posted["message_id"]
        assert msg.content == "acked by m1"


async def test_rest_errors_and_parity_gaps_reach_the_member_as_such() -> None:
    """In-process member side: unknown routes raise BridgeRouteNotImplemented, not HTTPException."""
    from tests.support.simcord_bridge import BridgeLink, BridgeRouteNotImplemented

    async with bridge_world() as w:
        link = BridgeLink(w.host.url, "inproc")
        try:
            gateway = await link.rest("GET", "/gateway/bot")
            assert gateway["url"] == w.host.gateway_url
            with pytest.raises(BridgeRouteNotImplemented):
                await link.rest("GET", "/no/such/route")
            with pytest.raises(discord.NotFound) as err:
                await link.rest("GET", f"/channels/{w.ops.id}/messages/1")
            assert err.value.code == 10008
        finally:
            await link.close()


async def test_the_launcher_runs_an_unmodified_bot_on_the_bridge() -> None:
    """``python -m tests.support.simcord_bridge --url U -m module``: the module's bot.run() goes through it."""
    import asyncio
    import sys

    from tests.support.bridge_member import REPO_ROOT

    async with bridge_world() as w:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.simcord_bridge", "--url", w.host.url, "--name", "plain",
            "-m", "tests.support.plain_bot", cwd=str(REPO_ROOT),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            session = await w.host.wait_for_session(name="plain")
            assert session.pid == proc.pid
            await wait_until(lambda: "GUILD_CREATE" in session.events, what="GUILD_CREATE")
            await w.alice.send(w.ops, "!ping")
            replies = await wait_until(lambda: bot_messages(w.ops), what="plain_bot's reply")
            assert [m.content for m in replies] == ["pong from plain_bot"]
        finally:
            if proc.returncode is None:
                proc.kill()
            _, stderr = await proc.communicate()
        await session.wait_closed(timeout=10)
        assert w.host.sessions == [], stderr.decode()
