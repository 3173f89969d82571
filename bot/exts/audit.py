"""`!audit [service] [env]`: who did what, when, with what result."""

from __future__ import annotations

from typing import Any

import discord
from discord.ext import commands

from bot.checks import requires
from bot.render import BLUE, clip


class Audit(commands.Cog):
    """The audit log of mutating commands and denied attempts."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = bot.app  # type: ignore[attr-defined]

    @commands.hybrid_command(name="audit")
    @requires("audit")
    async def audit(self, ctx: commands.Context[Any], service: str | None = None, env: str | None = None) -> None:
        """The latest audited actions, optionally for one service and env."""
        catalog = self.app.catalog
        service, env = catalog.lone_env(service, env)
        service = catalog.service(service) if service else None
        env = catalog.env(env) if env else None
        records = await self.app.audit.query(service=service, env=env, limit=20)
        scope = " ".join(x for x in (service, env) if x) or "everything"
        e = discord.Embed(title=f"Audit log · {scope}", colour=BLUE)
        if not records:
            e.description = "Nothing recorded yet."
        else:
            icons = {"ok": "✅", "denied": "🚫", "failed": "❌", "cancelled": "✖️"}
            lines = []
            for r in records:
                target = " ".join(x for x in (r.service, r.env) if x)
                took = f" · {r.duration_ms / 1000:.1f}s" if r.duration_ms else ""
                lines.append(f"{icons.get(r.result, '•')} <t:{int(r.at.timestamp())}:R> **{r.user_name}** "
                             f"`{r.action}` {target} — {r.result}{took}"
                             + (f"\n  {clip(r.detail, 120)}" if r.detail and r.result != "ok" else ""))
            e.description = clip("\n".join(lines), 4096)
        await ctx.send(embed=e)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Audit(bot))
