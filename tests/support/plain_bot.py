"""A bot that knows nothing about the bridge, for the launcher test.

``python -m tests.support.plain_bot [token]``: ``!ping`` answers ``pong from plain_bot``.
Run on a bridge with ``python -m tests.support.simcord_bridge --url URL -m tests.support.plain_bot``.
"""

from __future__ import annotations

import sys

import discord
from discord.ext import commands


def main() -> None:
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.all())

    @bot.command()
    async def ping(ctx: commands.Context) -> None:
        await ctx.send("pong from plain_bot")

    bot.run(sys.argv[1] if len(sys.argv) > 1 else "a-token", log_handler=None)


if __name__ == "__main__":
    main()
