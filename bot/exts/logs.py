"""`!logs <service> <env> [--since 10m] [--tail N] [--grep REGEX] [--previous] [--pod NAME] [--container NAME]`"""

from __future__ import annotations

import io
import shlex
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import autocomplete
from bot.checks import requires
from bot.options import Option
from bot.options import options as takes_options
from bot.render import code_block
from commands.catalog import UserError
from commands.logs import _OPTIONS as LOG_OPTIONS
from commands.logs import LogCollector, collect, merge, parse_log_args
from commands.redact import Redactor
from commands.targets.base import PlatformError

ATTACHMENT_LIMIT = 8 * 1024 * 1024  # Discord's smallest upload limit


class Logs(commands.Cog):
    """Merged, redacted logs of every pod of a service."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = bot.app  # type: ignore[attr-defined]
        self.redactor = Redactor(self.app.settings.redact_patterns)

    @commands.hybrid_command(name="logs")
    @app_commands.autocomplete(service=autocomplete.services, env=autocomplete.envs)
    @requires("logs")
    @takes_options(*(Option(name, metavar) for name, metavar in LOG_OPTIONS.items()))  # values: parse_log_args
    @app_commands.describe(options="--since 10m --tail N --grep REGEX --previous --pod NAME --container NAME")
    async def logs(self, ctx: commands.Context[Any], service: str, env: str, *, options: str = "") -> None:
        """Logs of all pods merged in time order, secrets redacted; a file when long."""
        try:
            words = shlex.split(options)
        except ValueError as e:
            raise UserError(f"cannot read the options: {e} (quote a regex with spaces: --grep \"a b\")") from e
        query = parse_log_args(words)
        service, env = self.app.catalog.service(service), self.app.catalog.env(env)
        target = self.app.catalog.target(service, env)
        platform = self.app.platforms.get(getattr(target, "type", "kubernetes"))
        if platform is None:
            raise UserError(f"no platform is configured for `{service}` in `{env}`")
        await ctx.defer()
        try:
            sources = await platform.log_sources(service, env, target, query)
        except PlatformError as e:
            raise UserError(str(e)) from e
        collector = LogCollector(self.redactor, grep=query.grep, tail=query.tail, inline_limit=1800,
                                 attachment_limit=ATTACHMENT_LIMIT, since=query.since, sources=len(sources),
                                 source_kind="container" if getattr(platform, "name", "") == "docker" else "pod",
                                 name=f"{service}-{env}-logs")
        try:
            result = await collect(merge([stream for _, stream in sources]), collector)
        except PlatformError as e:
            raise UserError(str(e)) from e
        header = f"📜 `{service}` in `{env}`: {result.summary()}"
        if result.inline is not None:
            await ctx.send(f"{header}\n{code_block(result.inline, 2000 - len(header) - 1)}",
                           allowed_mentions=discord.AllowedMentions.none())
        elif result.attachment is not None:
            name, data = result.attachment
            await ctx.send(header, file=discord.File(io.BytesIO(data), filename=name),
                           allowed_mentions=discord.AllowedMentions.none())
        else:
            await ctx.send(header, allowed_mentions=discord.AllowedMentions.none())




async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Logs(bot))
