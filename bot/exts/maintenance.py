"""Maintenance windows and deploy freezes in chat.

`!maintenance schedule <service|all> <env> <start> <duration> <reason> [--restart] [--scale N]
[--run-job CRONJOB] [--prune]` (grant `maintenance`) answers with the window in UTC and in the
team's zone; `!maintenance` / `!maintenance list` (grant `status`) shows windows and freezes;
`!maintenance cancel|extend|end <id>` (grant `maintenance` for the window's env).
`!freeze <env> <duration|until T> <reason>` and `!unfreeze <env>` (grant `freeze`). All audited.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import autocomplete
from bot.checks import Denied, member_allows, requires
from bot.options import Option, OptionError, OptionSpec, clean
from bot.options import options as takes_options
from bot.render import BLUE, clip
from commands.catalog import UserError, suggest
from commands.maintenance import ALL, WindowView, parse_action
from commands.models import TargetState
from commands.timeutil import parse_duration, short
from commands.when import When, both, fmt, parse_until, parse_when

NO_PINGS = discord.AllowedMentions.none()
STATE_ICONS = {"scheduled": "🕒", "starting": "🛠️", "active": "🛠️", "ending": "🛠️", "done": "✅",
               "cancelled": "✖️", "missed": "⏰"}
USAGE = ("`!maintenance schedule <service|all> <env> <start> <duration> <reason> [--restart] [--scale N] "
         "[--run-job CRONJOB] [--prune]`, e.g. `!maintenance schedule chat prod tomorrow 04:00 30m db upgrade`")


# ----------------------------------------------------------------------------- parsing


SCHEDULE_OPTIONS = OptionSpec((Option("--restart"), Option("--scale", "N", "2"), Option("--run-job", "CRONJOB", "db-backup"),
                               Option("--prune")))


def split_options(words: list[str]) -> tuple[list[str], list[str]]:
    """Pull ``--restart``, ``--scale N``, ``--run-job NAME``, ``--prune`` out of ``words``."""
    try:
        given = SCHEDULE_OPTIONS.parse(words, "!maintenance schedule")
    except OptionError as e:
        raise UserError(str(e)) from None
    actions = [parse_action(name[2:] if value is True else f"{name[2:]} {value}") for name, value in given.values.items()]
    return given.words, actions


def _looks_like_duration(word: str) -> bool:
    return ":" not in word and bool(re.fullmatch(r"[0-9][0-9a-z.]*", word.lower()))


def parse_schedule(text: str, *, now: datetime, team_zone: str, min_duration: timedelta, max_duration: timedelta,
                   max_ahead: timedelta) -> tuple[When, timedelta, str, list[str]]:
    """``<start> <duration> <reason> [options]`` → (start, duration, reason, actions).

    The start may be several words (``tomorrow 04:00 Europe/Berlin``) or quoted; the longest
    reading that is followed by a duration wins."""
    words, actions = split_options(text.split())
    if words and words[0][:1] in "\"'":
        quote = words[0][0]
        joined = " ".join(words)
        end = joined.find(quote, 1)
        if end < 0:
            raise UserError(f"unclosed quote in `{clip(text, 100)}`")
        start_text, rest = joined[1:end], joined[end + 1:].split()
        if not rest:
            raise UserError(f"missing the duration after the start; usage: {USAGE}")
        when = parse_when(start_text, now=now, team_zone=team_zone, max_ahead=max_ahead)
        duration = parse_duration(rest[0], minimum=min_duration, maximum=max_duration, what="window duration")
        return when, duration, " ".join(rest[1:]), actions
    for n in range(min(5, len(words) - 1), 0, -1):
        if not _looks_like_duration(words[n]):
            continue
        try:
            when = parse_when(" ".join(words[:n]), now=now, team_zone=team_zone, max_ahead=max_ahead)
        except UserError:
            continue
        duration = parse_duration(words[n], minimum=min_duration, maximum=max_duration, what="window duration")
        return when, duration, " ".join(words[n + 1:]), actions
    # Nothing fitted: say what is wrong with the most likely reading.
    first = next((i for i in range(1, len(words)) if _looks_like_duration(words[i])), None)
    if first is None:
        raise UserError(f"give a start and a duration; usage: {USAGE}")
    parse_when(" ".join(words[:first]), now=now, team_zone=team_zone, max_ahead=max_ahead)  # raises why
    raise UserError(f"cannot read a start and a duration in `{clip(text, 100)}`; usage: {USAGE}")


def parse_freeze(text: str, *, now: datetime, team_zone: str, max_duration: timedelta) -> tuple[datetime, str, str | None]:
    """``<duration|until T> <reason>`` → (until, reason, note)."""
    words = text.split()
    if not words:
        raise UserError("usage: `!freeze <env> <duration|until T> <reason>`, e.g. `!freeze prod 2d release week`")
    if words[0].lower() == "until":
        rest = words[1:]
        joined = " ".join(rest)
        if joined[:1] in "\"'":
            end = joined.find(joined[0], 1)
            if end < 0:
                raise UserError("unclosed quote after `until`")
            when = parse_until(joined[1:end], now=now, team_zone=team_zone, max_ahead=max_duration)
            return when.at, joined[end + 1:].strip(), when.note
        error: UserError | None = None
        for n in range(min(4, len(rest)), 0, -1):
            try:
                when = parse_until(" ".join(rest[:n]), now=now, team_zone=team_zone, max_ahead=max_duration)
            except UserError as e:
                error = error or (e if "past" in str(e) or "ahead" in str(e) else None)
                continue
            return when.at, " ".join(rest[n:]), when.note
        raise error or UserError("cannot read the time after `until`; try `until fri 18:00` or `until 2024-05-03T18:00`")
    duration = parse_duration(words[0], minimum=timedelta(minutes=1), maximum=max_duration, what="freeze duration")
    return now + duration, " ".join(words[1:]), None


# ----------------------------------------------------------------------------- rendering


def window_line(w: WindowView, zone: str, now: datetime) -> str:
    icon = STATE_ICONS.get(w.state, "•")
    acts = f" [{', '.join(w.actions)}]" if w.actions else ""
    if w.state in ("starting", "active", "ending"):
        when = f"in maintenance until {both(w.ends_at, zone)}"
    elif w.state == "scheduled":
        when = f"{both(w.starts_at, zone)} for {short(w.duration)} (in {short(max(w.starts_at - now, timedelta(0)))})"
    else:
        when = f"{fmt(w.starts_at)} → {fmt(w.ends_at)} ({w.state})"
    return f"{icon} **#{w.id}** {w.what} — {clip(w.reason, 120)}{acts}\n  {when}"


async def status_notes(app: Any, states: list[TargetState]) -> list[str]:
    """`!status` lines: "🛠️ `chat` in `prod`: in maintenance until T" and freezes in force."""
    notes = []
    pairs = {(s.service, s.env) for s in states}
    envs = {s.env for s in states}
    zone = app.settings.timezone
    for w in await app.maintenance.active():
        covered = sorted(svc for svc, env in pairs if w.covers(svc, env))
        if covered:
            who = "all services" if w.everything else ", ".join(f"`{s}`" for s in covered)
            notes.append(f"🛠️ {who} in `{w.env}`: in maintenance until {both(w.ends_at, zone)} "
                         f"(#{w.id}: {clip(w.reason, 80)})")
    for f in await app.freezes.active():
        if f.env in envs:
            notes.append(f"🧊 {f.describe(zone)}")
    return notes


def _actor(ctx: commands.Context[Any]) -> dict[str, Any]:
    return {"user_id": ctx.author.id, "user_name": ctx.author.display_name,
            "channel": getattr(ctx.channel, "name", None)}


# ----------------------------------------------------------------------------- the cog


class Maintenance(commands.Cog):
    """Maintenance windows and deploy freezes."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = bot.app  # type: ignore[attr-defined]

    def _check_window_scope(self, ctx: commands.Context[Any], window: WindowView) -> None:
        if not member_allows(self.app, ctx.author, "maintenance", window.env):
            raise Denied("maintenance", window.env)

    @commands.hybrid_group(name="maintenance", fallback="list", invoke_without_command=True)
    @requires("status", env_arg=None, service_arg=None)
    async def maintenance(self, ctx: commands.Context[Any], which: str | None = None) -> None:
        """Maintenance windows (scheduled and running) and deploy freezes in force; `all` adds finished ones."""
        app = self.app
        if which and which.lower() not in ("all", "past", "list"):
            names = sorted(c.name for c in ctx.command.commands) if isinstance(ctx.command, commands.Group) else []
            hint = suggest(which.lower(), names + ["all", "past"])
            raise UserError(f"`!maintenance {clean(which)}`: no such list or subcommand"
                            + (f" — did you mean `!maintenance {hint}`?" if hint else "")
                            + "; `!maintenance [all]`, or " + ", ".join(f"`{n}`" for n in names))
        now = app.maintenance.now()
        states: tuple[str, ...] = ("scheduled", "starting", "active", "ending")
        if which and which.lower() in ("all", "past"):
            states += ("done", "cancelled", "missed")
        windows = await app.maintenance.windows(states=states, limit=25)
        zone = app.settings.timezone
        e = discord.Embed(title="Maintenance windows", colour=BLUE)
        e.description = clip("\n".join(window_line(w, zone, now) for w in windows) or "No windows scheduled.", 4000)
        freezes = await app.freezes.active()
        if freezes:
            e.add_field(name="Deploy freezes in force", value=clip("\n".join(f"🧊 {f.describe(zone)}" for f in freezes),
                                                                    1024), inline=False)
        e.set_footer(text="!maintenance schedule … · cancel <id> · extend <id> <duration> · end <id>")
        await ctx.send(embed=e, allowed_mentions=NO_PINGS)

    @maintenance.command(name="schedule")
    @app_commands.autocomplete(service=autocomplete.services, env=autocomplete.envs)
    @app_commands.describe(service="a service, or all", env="the env",
                           details='<start> <duration> <reason> [--restart] [--scale N] [--run-job CRONJOB] [--prune]')
    @requires("maintenance")
    @takes_options(*SCHEDULE_OPTIONS.options)
    async def schedule(self, ctx: commands.Context[Any], service: str, env: str, *, details: str) -> None:
        """Plan a window: at its start a silence, an announcement and the actions; at its end a report."""
        app = self.app
        cfg = app.settings.maintenance
        zone = app.settings.timezone
        now = app.maintenance.now()
        env = app.catalog.env(env)
        if service.lower() != ALL:
            service = app.catalog.service(service)
        when, duration, reason, actions = parse_schedule(details, now=now, team_zone=zone,
                                                         min_duration=cfg.min_duration,
                                                         max_duration=cfg.max_duration, max_ahead=cfg.max_ahead)
        view = await app.maintenance.schedule([service], env, when.at, duration, reason, actions=actions,
                                              **_actor(ctx))
        e = discord.Embed(title=f"🛠️ Maintenance #{view.id} scheduled", colour=BLUE)
        lines = [f"{view.what} — {clip(view.reason, 300)}",
                 f"**Start** {both(view.starts_at, zone)} · in {short(max(view.starts_at - now, timedelta(0)))}",
                 f"**End** {both(view.ends_at, zone)} · {short(duration)}"]
        if when.zone not in ("UTC", zone):
            lines.append(f"(as you wrote it: {fmt(view.starts_at, when.zone)} → {fmt(view.ends_at, when.zone)}, "
                         f"{when.zone})")
        channels = ", ".join(f"#{c}" for c in (cfg.announce_channels or [app.settings.channels.ops]))
        lines.append(f"At the start: a silence for {app.maintenance._matchers(view)}, an announcement in {channels}"
                     + (f", then {', '.join(view.actions)}" if view.actions else ""))
        lines.append("At the end: the silence is expired" + (", scaled services scaled back" if any(
            a.startswith("scale") for a in view.actions) else "") + ", and a report here.")
        if when.note:
            lines.append(f"🕰️ {when.note}")
        overlaps = await app.maintenance.overlapping(view)
        if overlaps:
            lines.append("⚠️ overlaps " + ", ".join(f"#{o.id} ({o.reason})" for o in overlaps))
        e.description = clip("\n".join(lines), 4000)
        e.set_footer(text=f"!maintenance cancel {view.id} · extend {view.id} <duration> · end {view.id}")
        await ctx.send(embed=e, allowed_mentions=NO_PINGS)

    @maintenance.command(name="cancel")
    @requires("maintenance", env_arg=None, service_arg=None)
    async def cancel(self, ctx: commands.Context[Any], window: int) -> None:
        """Cancel a window that has not started."""
        self._check_window_scope(ctx, await self.app.maintenance.get(window))
        view = await self.app.maintenance.cancel(window, **_actor(ctx))
        await ctx.send(f"✖️ maintenance #{view.id} ({view.what} — {clip(view.reason, 200)}) cancelled by "
                       f"{ctx.author.display_name}", allowed_mentions=NO_PINGS)

    @maintenance.command(name="extend")
    @requires("maintenance", env_arg=None, service_arg=None)
    async def extend(self, ctx: commands.Context[Any], window: int, duration: str) -> None:
        """Move a window's end later (its silence follows)."""
        self._check_window_scope(ctx, await self.app.maintenance.get(window))
        cfg = self.app.settings.maintenance
        by = parse_duration(duration, minimum=timedelta(minutes=1), maximum=cfg.max_duration, what="extension")
        view = await self.app.maintenance.extend(window, by, **_actor(ctx))
        await ctx.send(f"⏩ maintenance #{view.id} extended by {short(by)}: now until "
                       f"{both(view.ends_at, self.app.settings.timezone)}", allowed_mentions=NO_PINGS)

    @maintenance.command(name="end")
    @requires("maintenance", env_arg=None, service_arg=None)
    async def end(self, ctx: commands.Context[Any], window: int) -> None:
        """End a running window now: expire its silence, scale back, report."""
        self._check_window_scope(ctx, await self.app.maintenance.get(window))
        await ctx.defer()
        view = await self.app.maintenance.end_now(window, **_actor(ctx))
        failed = [s for s in view.steps if s.outcome == "failed"]
        await ctx.send(f"✅ maintenance #{view.id} ended by {ctx.author.display_name}"
                       + (f"; ⚠️ {len(failed)} step(s) failed, see the report" if failed else "; the report follows"),
                       allowed_mentions=NO_PINGS)

    # -- freezes ---------------------------------------------------------------------------

    @commands.hybrid_command(name="freeze")
    @app_commands.autocomplete(env=autocomplete.envs)
    @app_commands.describe(env="the env to freeze", details="<duration|until T> <reason>")
    @requires("freeze", service_arg=None)
    async def freeze(self, ctx: commands.Context[Any], env: str, *, details: str) -> None:
        """Refuse deploys and rollbacks to an env: !freeze <env> <duration|until T> <reason>."""
        app = self.app
        env = app.catalog.env(env)
        zone = app.settings.timezone
        until, reason, note = parse_freeze(details, now=app.freezes.clock(), team_zone=zone,
                                           max_duration=app.settings.freezes.max_duration)
        info = await app.freezes.freeze(env, until, reason, **_actor(ctx))
        text = (f"🧊 deploys and rollbacks to `{env}` are frozen until {both(info.ends_at, zone)} by "
                f"{ctx.author.display_name}: {clip(info.reason, 300)}. `!unfreeze {env}` lifts it; holders of "
                "`deploy:force` can add `--force`.")
        if note:
            text += f"\n🕰️ {note}"
        await ctx.send(text, allowed_mentions=NO_PINGS)

    @commands.hybrid_command(name="unfreeze")
    @app_commands.autocomplete(env=autocomplete.envs)
    @requires("freeze", service_arg=None)
    async def unfreeze(self, ctx: commands.Context[Any], env: str) -> None:
        """Lift the freezes of an env (a scheduled one for this time only)."""
        ended = await self.app.freezes.unfreeze(env, **_actor(ctx))
        env = ended[0].env
        await ctx.send(f"🔥 `{env}` unfrozen by {ctx.author.display_name} (was: "
                       + "; ".join(clip(f.reason, 100) for f in ended) + ")", allowed_mentions=NO_PINGS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Maintenance(bot))


__all__ = ["UTC", "Maintenance", "parse_freeze", "parse_schedule", "status_notes"]
