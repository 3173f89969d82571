"""`!lock`, `!unlock`, `!locks`: hold deploys of an env or a service, with a reason."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import discord
from discord.ext import commands

from bot.checks import Denied, member_allows, requires
from bot.render import BLUE, clip
from commands.catalog import UserError
from commands.timeutil import parse_duration

FOR = re.compile(r"\s+for\s+(?P<duration>\S+(?:\s+(?:h|hours?|m|min|minutes?|d|days?))?)\s*$", re.IGNORECASE)


def parse_lock_args(words: str, services: list[str]) -> tuple[str | None, str, timedelta | None]:
    """`[service] <reason> [for DURATION]` → (service, reason, duration)."""
    text = words.strip()
    duration = None
    m = FOR.search(text)
    if m:
        duration = parse_duration(m["duration"], minimum=timedelta(minutes=1), maximum=timedelta(days=14),
                                  what="lock duration")
        text = text[: m.start()].strip()
    service = None
    first, _, rest = text.partition(" ")
    if first.lower() in services:
        service, text = first.lower(), rest.strip()
    if not text:
        raise UserError("say why: `!lock <env> [service] <reason> [for DURATION]`, "
                        "e.g. `!lock prod chat db migration for 2h`")
    return service, text, duration


class Locks(commands.Cog):
    """Manual deploy locks."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = bot.app  # type: ignore[attr-defined]

    def _check_service_scope(self, ctx: commands.Context[Any], env: str, service: str | None) -> None:
        if service and not member_allows(self.app, ctx.author, "lock", env, service):
            raise Denied("lock", env, service)

    async def _audit(self, ctx: commands.Context[Any], action: str, env: str, service: str | None, detail: str) -> None:
        await self.app.audit.record(user_id=ctx.author.id, user_name=ctx.author.display_name, action="lock",
                                    service=service, env=env, args={"op": action}, result="ok", detail=detail,
                                    channel=getattr(ctx.channel, "name", None))

    @commands.hybrid_command(name="lock")
    @requires("lock", service_arg=None)
    async def lock(self, ctx: commands.Context[Any], env: str, *, reason: str) -> None:
        """Hold deploys and rollbacks of an env (or one service in it): !lock <env> [service] <reason> [for 2h]."""
        env = self.app.catalog.env(env)
        service, why, duration = parse_lock_args(reason, self.app.catalog.services)
        self._check_service_scope(ctx, env, service)
        info = await self.app.locks.lock(env, service, ctx.author.id, ctx.author.display_name, why, duration)
        await self._audit(ctx, "lock", env, service, why)
        until = f" until <t:{int(info.expires_at.timestamp())}:t>" if info.expires_at else " until `!unlock`"
        target = f"`{service}` in `{env}`" if service else f"all of `{env}`"
        await ctx.send(f"🔒 {target} locked by {ctx.author.display_name}{until}: {clip(why, 300)}",
                       allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="unlock")
    @requires("lock", service_arg="service")
    async def unlock(self, ctx: commands.Context[Any], env: str, service: str | None = None) -> None:
        """Lift a manual lock: !unlock <env> [service]."""
        env = self.app.catalog.env(env)
        service = self.app.catalog.service(service) if service else None
        info = await self.app.locks.unlock(env, service, ctx.author.id, ctx.author.display_name)
        await self._audit(ctx, "unlock", env, service, f"lifted {info.holder_name}'s lock: {info.reason}")
        target = f"`{service}` in `{env}`" if service else f"`{env}`"
        await ctx.send(f"🔓 {target} unlocked by {ctx.author.display_name} (was: {clip(info.reason or '', 200)}, "
                       f"by {info.holder_name})", allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="locks")
    @requires("status", service_arg=None)
    async def locks(self, ctx: commands.Context[Any], env: str | None = None) -> None:
        """Locks in force: manual ones and running deploys."""
        env = self.app.catalog.env(env) if env else None
        now = datetime.now(UTC)
        active = await self.app.locks.active(env)
        e = discord.Embed(title="Locks" + (f" · {env}" if env else ""), colour=BLUE)
        e.description = clip("\n".join(("🔒 " if i.kind == "manual" else "🚀 ") + i.describe(now) for i in active)
                             or "Nothing is locked.", 4096)
        await ctx.send(embed=e, allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Locks(bot))
