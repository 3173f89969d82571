"""On-call in chat: `!oncall` (who is on call, who is next and when, overrides in force) and, with the
`oncall` grant, `!oncall override`, `!oncall swap`, `!oncall cancel`.

Seeing who is on call needs only `status`: whoever may look at the services should know whom to
call. Changing the rotation needs `oncall` and is audited (also when it fails).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import discord
from discord.ext import commands

from alerts.oncall import MAX_OVERRIDE, MIN_OVERRIDE, OnCallSlot, Override
from bot.checks import requires
from bot.render import BLUE, clip
from commands.catalog import UserError
from commands.timeutil import parse_duration

T = TypeVar("T")

NO_PINGS = discord.AllowedMentions.none()


def _t(when: datetime, style: str = "R") -> str:
    """A Discord timestamp: every reader sees it in their own zone (R: "in 3 hours")."""
    return f"<t:{int(when.timestamp())}:{style}>"


def _who(user_id: int, name: str = "") -> str:
    return f"<@{user_id}>" + (f" ({discord.utils.escape_markdown(name)})" if name else "")


def _slot_lines(slot: OnCallSlot, now: datetime) -> str:
    lines = [f"**now:** {_who(slot.user_id, slot.user_name)} since {_t(slot.since)}"]
    if slot.override is not None:
        o = slot.override
        lines.append(f"↳ {o.kind} #{o.id} by {discord.utils.escape_markdown(o.created_by_name or '?')}"
                     + (f": {discord.utils.escape_markdown(o.reason)}" if o.reason else ""))
    if slot.next_user_id == slot.user_id:
        lines.append(f"**hand-off:** {_t(slot.until)} ({_t(slot.until, 'f')}), to the same person")
    else:
        lines.append(f"**next:** {_who(slot.next_user_id, slot.next_user_name)} {_t(slot.until)} "
                     f"({_t(slot.until, 'f')})")
    return "\n".join(lines)


def _override_line(o: Override, now: datetime) -> str:
    when = f"**in force** until {_t(o.ends_at)}" if o.active(now) else \
        f"from {_t(o.starts_at, 'f')} until {_t(o.ends_at, 'f')}"
    reason = f": {discord.utils.escape_markdown(o.reason)}" if o.reason else ""
    return (f"#{o.id} `{o.rotation}` {_who(o.user_id, o.user_name)} {when} · {o.kind} by "
            f"{discord.utils.escape_markdown(o.created_by_name or '?')}{reason}")


class OnCallCog(commands.Cog, name="On-call"):
    """Who is on call, and overrides and swaps of the rotation."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = bot.app  # type: ignore[attr-defined]

    async def _audited(self, ctx: commands.Context[Any], args: dict[str, Any],
                       act: Callable[[], Awaitable[T]], detail: Callable[[T], str]) -> T:
        """Run a change of the rotation and write it to the audit log, whatever the outcome."""
        channel = getattr(ctx.channel, "name", None)
        try:
            result = await act()
        except UserError as e:
            await self.app.audit.record(user_id=ctx.author.id, user_name=ctx.author.display_name, action="oncall",
                                        args=args, result="failed", detail=clip(str(e), 300), channel=channel)
            raise
        await self.app.audit.record(user_id=ctx.author.id, user_name=ctx.author.display_name, action="oncall",
                                    args=args, result="ok", detail=clip(detail(result), 300), channel=channel)
        return result

    def _split_rotation(self, text: str) -> tuple[str | None, str]:
        """`[rotation] [reason]`: the first word names a rotation when it is one."""
        first, _, rest = text.strip().partition(" ")
        if first.lower() in self.app.oncall.rotations:
            return first.lower(), rest.strip()
        return None, text.strip()

    @commands.hybrid_group(name="oncall", fallback="show", invoke_without_command=True)
    @requires("status", env_arg=None, service_arg=None)
    async def oncall(self, ctx: commands.Context[Any]) -> None:
        """Who is on call now in each rotation, who is next and when, overrides in force."""
        oncall = self.app.oncall
        slots = await oncall.everyone()
        if not slots:
            raise UserError("no on-call rotations are configured (`oncall.rotations` in the config)")
        now = slots[0].at
        e = discord.Embed(title="On call", colour=BLUE)
        for slot in slots:
            rot = oncall.rotations[slot.rotation]
            name = f"{slot.rotation} · {rot.config.period}, hand-off {rot.config.handoff:%H:%M} {rot.timezone}"
            e.add_field(name=clip(name, 256), value=clip(_slot_lines(slot, now), 1024), inline=False)
        overrides = await oncall.overrides()
        if overrides:
            lines = [_override_line(o, now) for o in overrides[:15]]
            if len(overrides) > 15:
                lines.append(f"+{len(overrides) - 15} more")
            e.add_field(name="Overrides", value=clip("\n".join(lines), 1024), inline=False)
        e.set_footer(text="!oncall override @user 4h [rotation] [reason] · !oncall swap [rotation] · "
                          "!oncall cancel <override>")
        await ctx.send(embed=e, allowed_mentions=NO_PINGS)

    @oncall.command(name="override")
    @requires("oncall", env_arg=None, service_arg=None)
    async def override(self, ctx: commands.Context[Any], member: discord.Member, duration: str, *,
                       reason: str = "") -> None:
        """Put someone on call from now for a while: !oncall override @user 4h [rotation] [reason]."""
        rotation, reason = self._split_rotation(reason)
        length = parse_duration(duration, minimum=MIN_OVERRIDE, maximum=MAX_OVERRIDE, what="override duration")
        before = await self.app.oncall.who(rotation)
        args = {"op": "override", "rotation": rotation or before.rotation, "user": member.id,
                "duration": duration, "reason": reason}
        o = await self._audited(
            ctx, args,
            lambda: self.app.oncall.override(rotation, member.id, member.display_name, length, reason=reason,
                                             by_id=ctx.author.id, by_name=ctx.author.display_name),
            lambda o: f"override #{o.id}: {member.display_name} until {o.ends_at:%Y-%m-%d %H:%M} UTC")
        instead = "" if before.user_id == member.id else f" instead of {_who(before.user_id, before.user_name)}"
        text = (f"🔁 {member.mention} is on call in `{o.rotation}` until {_t(o.ends_at, 'f')} ({_t(o.ends_at)})"
                f"{instead} — override #{o.id} by {ctx.author.display_name}"
                + (f": {clip(reason, 200)}" if reason else ""))
        await ctx.send(text, allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=[member]))

    @oncall.command(name="swap")
    @requires("oncall", env_arg=None, service_arg=None)
    async def swap(self, ctx: commands.Context[Any], rotation: str | None = None, *, reason: str = "") -> None:
        """Trade the current turn with the next person's: !oncall swap [rotation] [reason]."""
        first, second = await self._audited(
            ctx, {"op": "swap", "rotation": rotation, "reason": reason},
            lambda: self.app.oncall.swap(rotation, by_id=ctx.author.id, by_name=ctx.author.display_name,
                                         reason=reason),
            lambda pair: f"overrides #{pair[0].id} and #{pair[1].id}")
        text = (f"🔁 swapped in `{first.rotation}`: {_who(first.user_id, first.user_name)} is on call now until "
                f"{_t(first.ends_at, 'f')}; {_who(second.user_id, second.user_name)} takes "
                f"{_t(second.starts_at, 'f')} – {_t(second.ends_at, 'f')} in exchange "
                f"(overrides #{first.id} and #{second.id}; `!oncall cancel` undoes one)")
        pings = [discord.Object(first.user_id), discord.Object(second.user_id)]
        await ctx.send(text, allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=pings))

    @oncall.command(name="cancel")
    @requires("oncall", env_arg=None, service_arg=None)
    async def cancel(self, ctx: commands.Context[Any], override_id: str) -> None:
        """End an override now (it stays in the history): !oncall cancel <override id>."""
        number = override_id.strip().lstrip("#")
        if not number.isdigit():
            raise UserError(f"`{override_id}` is not an override number; `!oncall` lists them (#3)")
        o = await self._audited(
            ctx, {"op": "cancel", "override": int(number)},
            lambda: self.app.oncall.cancel_override(int(number), by_name=ctx.author.display_name),
            lambda o: f"cancelled override #{o.id} ({o.rotation}, {o.user_name or o.user_id})")
        now = await self.app.oncall.who(o.rotation)
        await ctx.send(f"↩️ override #{o.id} cancelled by {ctx.author.display_name}; "
                       f"{_who(now.user_id, now.user_name)} is on call in `{o.rotation}` now",
                       allowed_mentions=NO_PINGS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(OnCallCog(bot))
