"""Small helpers for chat-layer tests."""

from __future__ import annotations

from typing import Any

import discord


async def say(world: Any, user: str, text: str, channel: str = "ops") -> discord.Message:
    """Send ``text`` as ``user`` and return the bot's newest message in the channel."""
    ch = world.channels[channel]
    before = ch.last_message.id if ch.last_message else 0
    await world.members[user].send(ch, text)
    bot_id = world.bot.user.id
    replies = [m for m in ch.history() if m.id > before and m.author.id == bot_id]
    assert replies, f"the bot did not answer {text!r} from {user}"
    return replies[-1]


def embed_text(message: discord.Message) -> str:
    parts = [message.content or ""]
    for e in message.embeds:
        parts += [e.title or "", e.description or ""]
        parts += [f"{f.name}: {f.value}" for f in e.fields]
        parts.append(e.footer.text or "")
    return "\n".join(parts)
