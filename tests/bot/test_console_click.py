"""`/click LABEL MESSAGE_ID` in the console finds the message in any channel or thread the user can
see, not only in the current one; a miss says what to do. In process, on the `world` fixture."""

from __future__ import annotations

import io

import pytest

from bot.console import Console
from bot.world import World
from tests.bot.helpers import say


def console(world: World, user: str, channel: str) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(world, user, channel, out, as_json=True), out


def bot_messages(world: World, channel: str) -> list:
    return [m for m in world.channels[channel].history() if m.author.id == world.bot.user.id]


async def test_click_by_id_finds_a_message_in_another_channel(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    ask = await say(world, "mod", "!deploy chat-gui prod v1.5.0")  # a Confirm button in #ops
    assert "Confirm" in [b.label for row in ask.components for b in row.children]
    c, _ = console(world, "mod", "deploys")  # the user has moved to #deploys
    assert await c.handle(f"/click Confirm {ask.id}")
    assert "failed" not in capsys.readouterr().err
    ask = next(m for m in bot_messages(world, "ops") if m.id == ask.id)
    assert ask.content.startswith("✅ deploy chat-gui v1.5.0 to prod — confirmed by mod"), ask.content
    await world.app.supervisor.join(timeout=90)


async def test_click_by_id_reaches_a_thread(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    ask = await say(world, "mod", "!deploy chat-gui prod v1.5.0")
    thread = await world.bot.get_channel(world.channels["ops"].id).get_partial_message(ask.id).create_thread(name="t")
    sent = await thread.send("in a thread", view=_one_button())
    c, _ = console(world, "mod", "alerts")
    assert await c.handle(f"/click Press {sent.id}")
    err = capsys.readouterr().err
    assert "no message" not in err and "failed" not in err, err


def _one_button():  # type: ignore[no-untyped-def]
    import discord

    view = discord.ui.View(timeout=5)
    view.add_item(discord.ui.Button(label="Press", custom_id="test:press"))
    return view


async def test_a_miss_says_what_to_do(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    ask = await say(world, "mod", "!deploy chat-gui prod v1.5.0")
    c, _ = console(world, "mod", "ops")
    await c.handle("/click Confirm 123456")
    assert ("no message 123456 that mod can see in any channel or thread; check the ID"
            in capsys.readouterr().err)
    await c.handle(f"/click Approve {ask.id}")
    err = capsys.readouterr().err
    assert f"message {ask.id} in #ops has no button 'Approve'; its buttons: 'Confirm', 'Cancel'" in err, err
    await c.handle("/click Confirm abc")
    assert "'abc' is not a message ID" in capsys.readouterr().err
    c2, _ = console(world, "mod", "alerts")
    await c2.handle("/click Confirm")
    assert "give its ID (/click LABEL MESSAGE_ID)" in capsys.readouterr().err
