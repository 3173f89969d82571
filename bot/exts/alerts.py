"""Alerts in chat: the Acknowledge/Silence buttons and `!incidents`, `!incidents stats`, `!incident`,
`!ack`, `!unack`, `!note`, `!resolve`, `!alerts`, `!silences`, `!silence`, `!unsilence`, `!testalert`."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import discord
from discord.ext import commands
from pytimeparse import parse as parse_seconds

from alerts.alertmanager import AlertmanagerError
from alerts.render import incident_line
from alerts.stats import Durations, GroupStats, ResponseStats
from bot.checks import member_allows, requires
from bot.render import BLUE, RED, clip, inert
from commands.catalog import UserError
from commands.timeutil import parse_duration, short

log = logging.getLogger(__name__)


def _app(interaction: discord.Interaction) -> Any:
    return interaction.client.app  # type: ignore[attr-defined]


async def _reply(interaction: discord.Interaction, text: str) -> None:
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


class AlertButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                  template=r"opsbot:(?P<action>ack|unack|silence):(?P<id>[0-9]+)(?::(?P<duration>[0-9a-z]+))?"):
    """Acknowledge / Unacknowledge / Silence on an alert message; works across restarts."""

    def __init__(self, action: str, incident_id: int, duration: str | None = None) -> None:
        custom_id = f"opsbot:{action}:{incident_id}" + (f":{duration}" if duration else "")
        super().__init__(discord.ui.Button(label=action, custom_id=custom_id))
        self.action, self.incident_id, self.duration = action, incident_id, duration

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button[Any],
                             match: re.Match[str], /) -> AlertButton:
        return cls(match["action"], int(match["id"]), match["duration"])

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Buttons bypass command checks: the grant is checked here, against the incident's scope."""
        app = _app(interaction)
        grant = "silence" if self.action == "silence" else "ack"
        try:
            incident = await app.alerts.incident(self.incident_id)
        except UserError as e:
            await _reply(interaction, f"⚠️ {e}")
            return False
        if not member_allows(app, interaction.user, grant, incident.env, incident.service):
            await _reply(interaction, f"🚫 that needs the `{grant}` grant. `!perms` shows yours.")
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        app = _app(interaction)
        user = interaction.user
        name = getattr(user, "display_name", str(user))
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            if self.action == "ack":
                incident = await app.alerts.ack(self.incident_id, user.id, name)
                text = f"✅ you acknowledged #{incident.id}; escalation stops."
            elif self.action == "unack":
                incident = await app.alerts.unack(self.incident_id, user.id, name)
                text = f"↩️ #{incident.id} is unacknowledged again."
            else:
                silence = await app.alerts.silence(self.incident_id, self.duration or "1h", name, user.id)
                text = (f"🔕 silenced #{self.incident_id} until <t:{int(silence.ends_at.timestamp())}:t> "
                        f"(silence `{silence.id}`)")
            result, detail = "ok", text
        except (UserError, AlertmanagerError) as e:
            text, result, detail = f"⚠️ {e}", "failed", str(e)
        await app.audit.record(user_id=user.id, user_name=name, action="silence" if self.action == "silence" else "ack",
                               args={"incident": self.incident_id, "op": self.action, "duration": self.duration},
                               result=result, detail=clip(detail, 300),
                               channel=getattr(interaction.channel, "name", None))
        await interaction.followup.send(text, ephemeral=True)


STATS_MIN = timedelta(hours=1)
STATS_MAX = timedelta(days=365)


def _span(d: Durations) -> str:
    if d.mean is None or d.p90 is None:
        return "—"
    return f"{short(d.mean)} / p90 {short(d.p90)}"


def _group_line(g: GroupStats) -> str:
    return (f"**{discord.utils.escape_markdown(g.key)}** {g.count} · ack {_span(g.tta)} · resolve {_span(g.ttr)}"
            + (f" · {g.unacked_open} open unacked" if g.unacked_open else ""))


def stats_embed(stats: ResponseStats, period: str) -> discord.Embed:
    """`!incidents stats`: the totals, then by severity, by service and who acknowledged most."""
    t = stats.total
    e = discord.Embed(title=f"Incident response · last {period}", colour=BLUE)
    if not t.count:
        e.description = f"No incidents opened since <t:{int(stats.since.timestamp())}:f>. 🎉"
        return e
    e.description = (f"**{t.count}** incident{'s' if t.count != 1 else ''} since <t:{int(stats.since.timestamp())}:f> · "
                     f"{t.acked} acknowledged · {t.resolved} resolved · {t.unacked_open} open and unacknowledged\n"
                     f"time to acknowledge: mean {_span(t.tta)}\n"
                     f"time to resolve: mean {_span(t.ttr)}")
    e.add_field(name="By severity", value=clip("\n".join(_group_line(g) for g in stats.by_severity), 1024),
                inline=False)
    services = stats.by_service[:10]
    more = f"\n+{len(stats.by_service) - 10} more" if len(stats.by_service) > 10 else ""
    e.add_field(name="By service", value=clip("\n".join(_group_line(g) for g in services) + more, 1024),
                inline=False)
    ackers = ", ".join(f"{discord.utils.escape_markdown(a.name)} ({a.count})" for a in stats.top_ackers)
    e.add_field(name="Acknowledged most", value=clip(ackers or "nobody acknowledged any", 1024), inline=False)
    e.set_footer(text="times from the first alert firing · samples from !testalert count too")
    return e


DURATION_WORD = re.compile(r"^\d+[smhdw]?(\d+[smhdw])*$")


def split_silence_args(text: str) -> tuple[str, str, str]:
    """`<matchers> <duration> <comment>` → the three parts; the duration is the first bare duration word."""
    words = text.split()
    for i, word in enumerate(words):
        if i > 0 and "=" not in word and "~" not in word and DURATION_WORD.match(word) and parse_seconds(word):
            return " ".join(words[:i]), word, " ".join(words[i + 1:])
    raise UserError('usage: `!silence <matchers> <duration> <comment>`, e.g. '
                    '`!silence alertname=HighLatency service="chat" 2h db upgrade`')


class Alerts(commands.Cog):
    """Incidents from Alertmanager: acknowledge, silence, look."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = bot.app  # type: ignore[attr-defined]

    async def _audit(self, ctx: commands.Context[Any], action: str, args: dict[str, Any], detail: str) -> None:
        await self.app.audit.record(user_id=ctx.author.id, user_name=ctx.author.display_name, action=action,
                                    args=args, result="ok", detail=clip(detail, 300),
                                    channel=getattr(ctx.channel, "name", None))

    @commands.hybrid_group(name="incidents", fallback="list", invoke_without_command=True)
    @requires("alerts", env_arg=None)
    async def incidents(self, ctx: commands.Context[Any], service: str | None = None) -> None:
        """Open incidents: age, severity, who acknowledged. `!incidents stats [7d]` for response stats."""
        found = await self.app.alerts.incidents(open_only=True, service=service)
        now = datetime.now(UTC)
        e = discord.Embed(title="Open incidents" + (f" · {service}" if service else ""), colour=RED if found else BLUE)
        e.description = clip("\n".join(incident_line(i, now) for i in found) or "Nothing is firing. 🎉", 4096)
        e.set_footer(text="!incident <id> for the timeline · !ack <id> to own one")
        await ctx.send(embed=e, allowed_mentions=discord.AllowedMentions.none())

    @incidents.command(name="stats")
    @requires("alerts", env_arg=None, service_arg=None)
    async def incidents_stats(self, ctx: commands.Context[Any], period: str = "7d") -> None:
        """Response stats: count, mean/p90 time to acknowledge and resolve, by severity and service."""
        length = parse_duration(period, minimum=STATS_MIN, maximum=STATS_MAX, what="period")
        stats = await self.app.alerts.stats(length)
        await ctx.send(embed=stats_embed(stats, period), allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="incident")
    @requires("alerts", env_arg=None, service_arg=None)
    async def incident(self, ctx: commands.Context[Any], incident_id: int) -> None:
        """One incident with its alerts and whole timeline."""
        incident = await self.app.alerts.incident(incident_id)
        message = self.app.alerts.render(incident)
        embeds = [discord.Embed.from_dict(x) for x in message.embeds][:9]
        timeline = "\n".join(f"<t:{int(t.at.timestamp())}:T> {t.text}" for t in incident.timeline[-30:])
        embeds.append(discord.Embed(title=f"Timeline of #{incident.id}", description=clip(timeline or "empty", 4096),
                                    colour=BLUE))
        await ctx.send(embeds=embeds, allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="ack")
    @requires("ack", env_arg=None, service_arg=None)
    async def ack(self, ctx: commands.Context[Any], incident_id: int) -> None:
        """Acknowledge an incident: you own it, escalation stops."""
        incident = await self.app.alerts.ack(incident_id, ctx.author.id, ctx.author.display_name)
        await self._audit(ctx, "ack", {"incident": incident_id}, "acknowledged")
        await ctx.send(f"✅ #{incident.id} {clip(incident.title, 100)} acknowledged by {ctx.author.display_name}",
                       allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="unack")
    @requires("ack", env_arg=None, service_arg=None)
    async def unack(self, ctx: commands.Context[Any], incident_id: int) -> None:
        """Give an incident back: escalation starts again."""
        incident = await self.app.alerts.unack(incident_id, ctx.author.id, ctx.author.display_name)
        await self._audit(ctx, "ack", {"incident": incident_id, "op": "unack"}, "unacknowledged")
        await ctx.send(f"↩️ #{incident.id} is unacknowledged", allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="note")
    @requires("ack", env_arg=None, service_arg=None)
    async def note(self, ctx: commands.Context[Any], incident_id: int, *, text: str) -> None:
        """Add a note to an incident's timeline (posted in its thread): !note 12 restarted the pods."""
        incident = await self.app.alerts.note(incident_id, ctx.author.display_name, text)
        await self._audit(ctx, "ack", {"incident": incident_id, "op": "note"}, clip(text, 200))
        await ctx.send(f"📝 noted on #{incident.id} {clip(incident.title, 100)}; `!incident {incident.id}` shows "
                       "the timeline", allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="resolve")
    @requires("ack", env_arg=None, service_arg=None)
    async def resolve(self, ctx: commands.Context[Any], incident_id: int) -> None:
        """Resolve an incident by hand in the bot (escalation stops); Alertmanager is not told."""
        incident, firing = await self.app.alerts.resolve(incident_id, ctx.author.id, ctx.author.display_name)
        await self._audit(ctx, "ack", {"incident": incident_id, "op": "resolve"},
                          f"resolved by hand; {firing} alerts were firing")
        where = " ".join(x for x in (incident.service, incident.env) if x)
        still = (f"{firing} of its alerts were still firing when you closed it. " if firing else "")
        await ctx.send(
            f"✅ #{incident.id} {clip(incident.title, 100)} resolved by hand by {ctx.author.display_name}; escalation "
            f"stops. This closes it in opsbot only: Alertmanager may still be firing. {still}"
            f"`!alerts{' ' + incident.service if incident.service else ''}` shows what fires there; "
            f"if it fires again{' in ' + where if where else ''}, a new incident opens.",
            allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="alerts")
    @requires("alerts", env_arg=None)
    async def alerts(self, ctx: commands.Context[Any], service: str | None = None) -> None:
        """Alerts firing in Alertmanager now."""
        live = await self.app.alerts.live_alerts(service)
        e = discord.Embed(title="Firing in Alertmanager" + (f" · {service}" if service else ""),
                          colour=RED if live else BLUE)
        lines = []
        for a in live[:40]:
            where = inert(" ".join(x for x in (a.service, a.env) if x), 100)
            muted = " 🔕" if a.silenced_by else ""
            lines.append(f"**{inert(a.alertname, 100)}** {inert(a.severity or '', 30)} {where}{muted} — "
                         f"{inert(a.summary, 120)}")
        if len(live) > 40:
            lines.append(f"+{len(live) - 40} more")
        e.description = clip("\n".join(lines) or "Nothing is firing.", 4096)
        await ctx.send(embed=e, allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="silences")
    @requires("alerts", env_arg=None, service_arg=None)
    async def silences(self, ctx: commands.Context[Any]) -> None:
        """Active and pending Alertmanager silences."""
        found = await self.app.alerts.silences()
        e = discord.Embed(title="Silences", colour=BLUE)
        e.description = clip("\n".join(
            f"`{inert(s.id[:8])}` {inert(s.state)} until <t:{int(s.ends_at.timestamp())}:f> by {inert(s.created_by, 60)}: "
            f"{inert(s.matchers_text, 150)} — {inert(s.comment, 120)}" for s in found) or "No silences.", 4096)
        await ctx.send(embed=e, allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="silence")
    @requires("silence", env_arg=None, service_arg=None)
    async def silence(self, ctx: commands.Context[Any], *, args: str) -> None:
        """Silence by matchers: !silence alertname=Foo service="chat" 2h why."""
        matchers, duration, comment = split_silence_args(args)
        s = await self.app.alerts.create_silence(matchers, duration, comment, ctx.author.display_name)
        await self._audit(ctx, "silence", {"matchers": matchers, "duration": duration}, f"silence {s.id}")
        await ctx.send(f"🔕 silence `{s.id}` until <t:{int(s.ends_at.timestamp())}:f>: {clip(s.matchers_text, 300)}",
                       allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="unsilence")
    @requires("silence", env_arg=None, service_arg=None)
    async def unsilence(self, ctx: commands.Context[Any], silence_id: str) -> None:
        """Expire a silence now (its ID or the first 8 characters of it)."""
        if len(silence_id) < 36:
            matches = [s for s in await self.app.alerts.silences() if s.id.startswith(silence_id)]
            if len(matches) != 1:
                raise UserError(f"no single silence starts with `{silence_id}`; `!silences` lists them")
            silence_id = matches[0].id
        await self.app.alerts.expire_silence(silence_id, ctx.author.display_name)
        await self._audit(ctx, "silence", {"op": "expire", "silence": silence_id}, "expired")
        await ctx.send(f"🔔 silence `{silence_id}` expired by {ctx.author.display_name}",
                       allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="testalert")
    @requires("silence")
    async def testalert(self, ctx: commands.Context[Any], service: str = "chat", env: str = "prod",
                        severity: str = "critical") -> None:
        """Fire a sample alert group through the real intake path (to try the pipeline and buttons).

        It posts an incident, so it needs more than the read-only `alerts` grant (`silence`); it
        mentions nobody and pages nobody (no escalation)."""
        service, env = self.app.catalog.service(service), self.app.catalog.env(env)
        incident = await self.app.alerts.sample_alert(service, env, severity=severity)
        await self._audit(ctx, "silence", {"op": "testalert", "service": service, "env": env}, f"incident {incident.id}")
        await ctx.send(f"🧪 sample incident #{incident.id} fired for `{service}` in `{env}`; "
                       f"it appears in #{incident.channel}", allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: commands.Bot) -> None:
    bot.add_dynamic_items(AlertButton)
    await bot.add_cog(Alerts(bot))
