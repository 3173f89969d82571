"""`!status [service] [env]`: what runs where, read live from each platform."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import autocomplete
from bot.checks import member_allows, requires
from bot.exts.maintenance import status_notes
from bot.render import status_embeds
from commands.catalog import UserError
from commands.models import StatusReport
from commands.status import get_status


class Status(commands.Cog):
    """Service status across environments."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = bot.app  # type: ignore[attr-defined]

    @commands.hybrid_command(name="status")
    @app_commands.autocomplete(service=autocomplete.services, env=autocomplete.envs)
    @requires("status")
    @app_commands.describe(service="a service (default: all)", env="an environment (default: all)")
    async def status(self, ctx: commands.Context[Any], service: str | None = None, env: str | None = None) -> None:
        """Version, replicas, rollout state, restarts and warnings of services per env."""
        service, env = self.app.catalog.lone_env(service, env)
        await ctx.defer()
        report = await get_status(self.app.catalog, self.app.platforms, service, env,
                                  metrics=self.app.prometheus)
        # A grant may be scoped (status:staging): show only what the caller may see.
        visible = [s for s in report.states if member_allows(self.app, ctx.author, "status", s.env, s.service)]
        if not visible:
            raise UserError("you may not see the status of any of those")
        hidden = len(report.states) - len(visible)
        now = datetime.now(UTC)
        locks = await self.app.locks.active(report.requested_env)
        for state in visible:
            state.locks = [lock.describe(now) for lock in locks if lock.covers(state.service, state.env)]
        report = StatusReport(states=visible, requested_service=report.requested_service,
                              requested_env=report.requested_env)
        embeds, cut = status_embeds(report)
        notes = await status_notes(self.app, visible)  # 🛠️ in maintenance until T, 🧊 frozen
        if cut:
            notes.append(f"+{cut} more not shown: name a service or env")
        if hidden:
            notes.append(f"{hidden} hidden by your grants")
        if not report.requested_service and (problem := next((s.metrics_error for s in visible if s.metrics_error), None)):
            notes.append(f"⚠️ {problem}")  # one note for the overview; a service's embed says it itself
        await ctx.send(" · ".join(notes) or None, embeds=embeds)




async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Status(bot))
