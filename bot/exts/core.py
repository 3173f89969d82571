"""Help, permissions and the one error handler for prefix and slash commands."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import discord
from discord.ext import commands

from bot.checks import MUTATING, Denied, Draining, NotConfigured, check_invoke, parsed_args, requirement_of, requires, role_ids
from bot.options import OptionError, bad_argument_message, spec_of, surplus_message
from bot.render import BLUE, RED, clip
from alerts.alertmanager import AlertmanagerError
from commands.catalog import UserError, suggest
from commands.targets.base import PlatformError
from commands.permissions import ACTIONS, Grant

log = logging.getLogger(__name__)


def usage(ctx: commands.Context[Any], command: commands.Command[Any, ..., Any] | None = None) -> str:
    command = command or ctx.command
    if command is None:
        return ""
    prefix = ctx.bot.app.settings.command_prefix
    return f"`{prefix}{command.qualified_name} {signature(command)}`".replace(" `", "`")


def signature(command: commands.Command[Any, ..., Any]) -> str:
    """The command's arguments, with the options it knows in place of `[options]`: `[--dry-run] [--force]`."""
    known = spec_of(command).usage()
    return command.signature.replace("[options]", known) if known else command.signature


class Core(commands.Cog):
    """Help, permissions and error handling."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = bot.app  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ timing + metrics

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        self.app.metrics.set_up(True)

    @commands.Cog.listener()
    async def on_disconnect(self) -> None:
        self.app.metrics.set_up(False)

    @commands.Cog.listener()
    async def on_command(self, ctx: commands.Context[Any]) -> None:
        ctx._opsbot_started = time.perf_counter()  # type: ignore[attr-defined]

    def _elapsed(self, ctx: commands.Context[Any]) -> float:
        started = getattr(ctx, "_opsbot_started", None)
        return time.perf_counter() - started if started else 0.0

    @commands.Cog.listener()
    async def on_command_completion(self, ctx: commands.Context[Any]) -> None:
        self.app.metrics.observe_command(ctx.command.qualified_name, "ok", self._elapsed(ctx))

    # ------------------------------------------------------------------ errors

    @commands.Cog.listener()
    async def on_command_error(self, ctx: commands.Context[Any], error: commands.CommandError) -> None:
        """Every failure becomes a short message; details go to the log, never to chat."""
        name = ctx.command.qualified_name if ctx.command else "?"
        if isinstance(error, commands.HybridCommandError):
            error = error.original  # type: ignore[assignment]
        if isinstance(error, commands.CommandInvokeError | discord.app_commands.CommandInvokeError):
            error = error.original  # type: ignore[assignment]

        result = "bad_input"
        if isinstance(error, commands.CommandNotFound):
            await self._unknown_command(ctx)
            return
        if isinstance(error, Denied):
            result = "denied"
            text = f"🚫 {ctx.author.mention}, {error}. `{self.app.settings.command_prefix}perms` shows yours."
            await self._audit_denied(ctx, error)
        elif isinstance(error, Draining):
            result = "denied"
            text = f"🔁 {error}."
        elif isinstance(error, NotConfigured):
            result = "denied"
            text = f"🚫 {error} (fail closed)."
        elif isinstance(error, UserError | PlatformError | AlertmanagerError):
            text = f"⚠️ {error}"  # bad input, or a known outside fault said plainly
        elif isinstance(error, commands.MissingRequiredArgument):
            text = f"⚠️ missing `{error.param.name}` — usage: {usage(ctx)}"
        elif isinstance(error, commands.TooManyArguments):
            text = f"⚠️ {surplus_message(ctx)} — usage: {usage(ctx)}"
        elif isinstance(error, commands.UserInputError):
            said = None if isinstance(error, OptionError) else bad_argument_message(ctx)
            text = f"⚠️ {clip(said or str(error), 300)} — usage: {usage(ctx)}"
        elif isinstance(error, commands.CommandOnCooldown):
            text = f"⏳ slow down: try again in {error.retry_after:.0f}s"
        elif isinstance(error, commands.MaxConcurrencyReached):
            text = "⏳ that command is already running; wait for it to finish"
        elif isinstance(error, commands.CheckFailure):
            result = "denied"
            text = f"🚫 {error}"
        else:
            result = "error"
            ref = uuid.uuid4().hex[:8]
            log.error("command %s failed (ref %s)", name, ref, exc_info=error)
            text = f"💥 `{name}` failed unexpectedly (ref `{ref}`); the details are in the bot's log."
        self.app.metrics.observe_command(name, result, self._elapsed(ctx))
        try:
            await ctx.send(text, ephemeral=result in ("denied", "bad_input"),
                           allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException:
            log.warning("could not report an error for %s in chat", name, exc_info=True)

    async def _unknown_command(self, ctx: commands.Context[Any]) -> None:
        word = ctx.invoked_with or ""
        if not word or not word.replace("-", "").isalpha():
            return  # "!!!" or "!1" is not an attempt at a command
        names = [c.name for c in self.bot.commands]
        hint = suggest(word, names)
        prefix = self.app.settings.command_prefix
        text = f"❔ no command `{prefix}{word}`" + (f" — did you mean `{prefix}{hint}`?" if hint else f"; try `{prefix}help`")
        await ctx.send(text, allowed_mentions=discord.AllowedMentions.none())

    async def _audit_denied(self, ctx: commands.Context[Any], error: Denied) -> None:
        await self.app.audit.record(
            user_id=ctx.author.id, user_name=str(ctx.author), action=error.action,
            service=error.service, env=error.env, args=_args(ctx), result="denied",
            detail=str(error), duration_ms=0, channel=getattr(ctx.channel, "name", None),
        )

    # ------------------------------------------------------------------ help

    @commands.hybrid_command(name="help")
    @requires("help", env_arg=None, service_arg=None)
    async def help_(self, ctx: commands.Context[Any], command: str | None = None) -> None:
        """Show the commands you may run, or how to use one."""
        prefix = self.app.settings.command_prefix
        if command:
            cmd = self.bot.get_command(command.lstrip(prefix))
            if cmd is None or not await _may_run(ctx, cmd):
                names = [c.name for c in await self._runnable(ctx)]
                hint = suggest(command, names)
                raise UserError(f"no command `{command}` you may run" + (f" — did you mean `{hint}`?" if hint else ""))
            e = discord.Embed(title=f"{prefix}{cmd.qualified_name} {signature(cmd)}".strip(), colour=BLUE,
                              description=cmd.help or cmd.short_doc or "")
            req = requirement_of(cmd)
            if req:
                e.set_footer(text=f"needs the `{req.action}` grant" + (" · audited" if req.action in MUTATING else ""))
            await ctx.send(embed=e, ephemeral=True)
            return
        runnable = await self._runnable(ctx)
        e = discord.Embed(title="What you can do here", colour=BLUE)
        lines = [f"`{prefix}{c.name}{(' ' + signature(c)) if c.signature else ''}` — {c.short_doc}" for c in runnable]
        e.description = clip("\n".join(lines) or "Nothing: you hold no grants. Ask an admin.", 4096)
        e.set_footer(text=f"{prefix}help <command> for details · every command also works as /slash")
        await ctx.send(embed=e, ephemeral=True)

    async def _runnable(self, ctx: commands.Context[Any]) -> list[commands.Command[Any, ..., Any]]:
        out = []
        for cmd in sorted(self.bot.commands, key=lambda c: c.name):
            if not cmd.hidden and await _may_run(ctx, cmd):
                out.append(cmd)
        return out

    # ------------------------------------------------------------------ perms

    @commands.hybrid_command(name="perms")
    @requires("perms", env_arg=None, service_arg=None)
    async def perms(self, ctx: commands.Context[Any], member: discord.Member | None = None) -> None:
        """Explain what you (or someone) may do, and why."""
        who = member or ctx.author
        grants = self.app.policy.grants(who.id, role_ids(who))
        e = discord.Embed(title=f"Permissions of {who.display_name}", colour=BLUE)
        by_source: dict[str, list[str]] = {}
        for source, g in grants:
            by_source.setdefault(source, []).append(f"`{g}`")
        e.description = "\n".join(f"**{src}**: {', '.join(gs)}" for src, gs in by_source.items())
        envs = self.app.catalog.envs
        lines = []
        for action in ACTIONS:
            if action in ("help", "perms"):
                continue
            if any(g.matches(action, None, None) and g.env == "*" and g.service == "*" for _, g in grants):
                lines.append(f"✅ `{action}` everywhere")
                continue
            scoped = sorted({str(Grant(g.action if g.action != "*" else action, g.env, g.service))
                             for _, g in grants if g.matches(action, None, None)})
            if scoped:
                lines.append(f"☑️ `{action}` only " + ", ".join(f"`{s}`" for s in scoped))
        e.add_field(name="May", value=clip("\n".join(lines) or "nothing beyond help", 1024), inline=False)
        if envs:
            needs = [f"`{env}`" for env in envs if self.app.settings.env(env).confirm]
            if needs:
                e.add_field(name="Confirmation", value="deploys to " + ", ".join(needs) + " ask for a Confirm press",
                            inline=False)
        e.set_footer(text="Grants come from Discord roles in the bot's config; deny by default.")
        await ctx.send(embed=e, ephemeral=True)


async def _may_run(ctx: commands.Context[Any], cmd: commands.Command[Any, ..., Any]) -> bool:
    """The same check a real invocation runs (``check_invoke``), as a dry run."""
    try:
        check_invoke(ctx.bot.app, ctx.author, cmd)
    except commands.CheckFailure:
        return False
    return cmd.enabled


def _args(ctx: commands.Context[Any]) -> dict[str, Any]:
    args = parsed_args(ctx)
    if args:
        return {k: v if isinstance(v, str | int | float | bool | None) else str(v) for k, v in args.items()}
    return {"message": clip(ctx.message.content, 200)} if ctx.message else {}


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Core(bot))


__all__ = ["Core", "usage", "RED"]
