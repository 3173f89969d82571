"""Result models -> embeds and text, within Discord's limits."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any
from datetime import UTC, datetime

import discord

from commands.models import StatusReport, TargetState

# Discord's limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits)
MAX_EMBEDS = 10
MAX_TOTAL = 6000
MAX_TITLE = 256
MAX_DESCRIPTION = 4096
MAX_FIELDS = 25
MAX_FIELD_NAME = 256
MAX_FIELD_VALUE = 1024
MAX_CONTENT = 2000

GREEN = 0x2ECC71
YELLOW = 0xF1C40F
RED = 0xE74C3C
GREY = 0x95A5A6
BLUE = 0x3498DB


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def inert(text: str, limit: int | None = None) -> str:
    """Text that is not ours (alert labels, silence comments) with Discord markdown and mentions
    made inert, clipped to ``limit`` characters first (so the cut never splits an escape)."""
    if limit is not None:
        text = clip(text, limit)
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def embed_size(e: discord.Embed) -> int:
    return len(e)


def fit_embeds(embeds: Sequence[discord.Embed]) -> tuple[list[discord.Embed], int]:
    """Keep as many embeds as fit in one message; return them and how many were left out."""
    out: list[discord.Embed] = []
    total = 0
    for e in embeds:
        size = embed_size(e)
        if len(out) == MAX_EMBEDS or total + size > MAX_TOTAL:
            break
        out.append(e)
        total += size
    return out, len(embeds) - len(out)


def _colour(states: Sequence[TargetState]) -> int:
    levels = {m.level for s in states for m in s.metrics}
    if any(s.error or s.rollout == "failed" for s in states) or "critical" in levels:
        return RED
    if any(s.rollout in ("progressing", "paused", "unknown") or s.ready < s.desired for s in states) \
            or "warn" in levels:
        return YELLOW
    if all(s.rollout == "scaled-down" for s in states):
        return GREY
    return GREEN


_ROLLOUT_ICON = {
    "complete": "✅", "progressing": "🔄", "failed": "❌", "paused": "⏸️",
    "scaled-down": "💤", "unknown": "❔",
}


def _age(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "?"
    secs = int((now - when).total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit}"
    return f"{max(secs, 0)}s"


def summary_line(s: TargetState) -> str:
    if s.error:
        return f"⚠️ {s.error}"
    icon = _ROLLOUT_ICON.get(s.rollout, "❔")
    parts = [f"`{s.version or '?'}`", f"{s.ready}/{s.desired} ready", f"{icon} {s.rollout}"]
    if s.restarts:
        parts.append(f"{s.restarts} restarts")
    if s.locks:
        parts.append("🔒 locked")
    return " · ".join(parts)


_LEVEL_ICON = {"ok": "🟢", "warn": "🟡", "critical": "🔴", "none": "▫️"}


def metrics_block(s: TargetState) -> str:
    """The Metrics field of one target: a line per number, coloured by its thresholds."""
    if s.metrics_error:
        return f"⚠️ {s.metrics_error}"
    lines = []
    for m in s.metrics:
        icon = "⚠️" if m.error else _LEVEL_ICON.get(m.level, "▫️")
        lines.append(f"{icon} **{m.title}** {m.text}" + (f" — {m.error}" if m.error else ""))
    if s.metrics_at is not None:
        lines.append(f"from Prometheus at <t:{int(s.metrics_at.timestamp())}:T>")
    return "\n".join(lines)


def metrics_line(s: TargetState) -> str:
    """The overview's numbers after a service's summary: `` · 12.3 req/s · 🟢 0.2% errors``."""
    parts = []
    for m in s.metrics:
        icon = "" if m.level == "none" else _LEVEL_ICON[m.level] + " "
        parts.append(f"{icon}{m.title} {m.text}")
    return "".join(f" · {p}" for p in parts)


def _detail_embed(s: TargetState, now: datetime) -> discord.Embed:
    e = discord.Embed(title=clip(f"{s.service} · {s.env}", MAX_TITLE), colour=_colour([s]),
                      description=clip(summary_line(s), MAX_DESCRIPTION))
    if not s.error:
        e.add_field(name="Version", value=f"`{s.version or '?'}`", inline=True)
        e.add_field(name="Replicas", value=f"{s.ready}/{s.desired} ready", inline=True)
        e.add_field(name="Rollout", value=clip(
            f"{_ROLLOUT_ICON.get(s.rollout, '')} {s.rollout}"
            + (f" — {s.rollout_message}" if s.rollout_message and (s.rollout != "complete" or s.platform == "docker")
               else ""),
            MAX_FIELD_VALUE), inline=True)
        e.add_field(name="Up to date", value=f"{s.updated} updated · {s.available} available", inline=True)
        e.add_field(name="Restarts", value=str(s.restarts), inline=True)
        if s.revision is not None:
            e.add_field(name="Revision", value=str(s.revision), inline=True)
        if s.pods:
            lines = []
            for p in s.pods[:10]:
                mark = "🟢" if p.ready else ("🔴" if p.reason else "🟡")
                extra = f" {p.reason}" if p.reason else ""
                lines.append(f"{mark} `{p.name}` {p.phase}{extra} ↻{p.restarts}")
            if len(s.pods) > 10:
                lines.append(f"+{len(s.pods) - 10} more")
            e.add_field(name=f"Pods ({len(s.pods)})", value=clip("\n".join(lines), MAX_FIELD_VALUE), inline=False)
        if s.locks:
            e.add_field(name="Locks", value=clip("\n".join(f"🔒 {x}" for x in s.locks), MAX_FIELD_VALUE), inline=False)
        if s.metrics or s.metrics_error:
            e.add_field(name="Metrics", value=clip(metrics_block(s), MAX_FIELD_VALUE), inline=False)
        if s.warnings:
            lines = [f"**{w.reason}** {w.object}: {w.message}" + (f" (×{w.count})" if w.count > 1 else "")
                     + (f" · {_age(w.last_seen, now)} ago" if w.last_seen else "")
                     for w in s.warnings[:5]]
            e.add_field(name="Recent warnings", value=clip("\n".join(lines), MAX_FIELD_VALUE), inline=False)
    e.set_footer(text=clip(s.where, 2048))
    return e


def _env_embed(env: str, states: Sequence[TargetState]) -> discord.Embed:
    e = discord.Embed(title=clip(env, MAX_TITLE), colour=_colour(states))
    for s in states[:MAX_FIELDS]:
        e.add_field(name=clip(s.service, MAX_FIELD_NAME), value=clip(summary_line(s) + metrics_line(s), MAX_FIELD_VALUE),
                    inline=False)
    if len(states) > MAX_FIELDS:
        e.set_footer(text=f"+{len(states) - MAX_FIELDS} more services")
    return e


def status_embeds(report: StatusReport, now: datetime | None = None) -> tuple[list[discord.Embed], int]:
    """One embed per env: detailed when one service was asked for, else a line per service."""
    now = now or datetime.now(UTC)
    if report.requested_service:
        embeds = [_detail_embed(s, now) for s in report.states]
    else:
        by_env: dict[str, list[TargetState]] = defaultdict(list)
        for s in report.states:
            by_env[s.env].append(s)
        embeds = [_env_embed(env, states) for env, states in by_env.items()]
    return fit_embeds(embeds)


def code_block(text: str, limit: int = MAX_CONTENT) -> str:
    body = text.replace("```", "`\u200b``")
    return "```\n" + clip(body, limit - 8) + "\n```"


# ---------------------------------------------------------------------- deploys

def _bar(done: int, total: int, width: int = 12) -> str:
    if total <= 0:
        return "░" * width
    filled = round(width * min(done, total) / total)
    return "█" * filled + "░" * (width - filled)


def _secs(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s} s" if s < 120 else f"{s // 60} m {s % 60:02d} s"


def deploy_title(plan: Any) -> str:
    if plan.kind == "deploy":
        return f"{plan.service} → {plan.env}: {plan.from_version or '?'} → {plan.to_version}"
    return f"{plan.service} in {plan.env}: rollback to revision {plan.revision} ({plan.to_version})"


def progress_embed(plan: Any, actor_name: str, phase: str, p: Any, elapsed: float, first: Any = None) -> discord.Embed:
    """The one message of a rollout, while it moves."""
    doing = "Rolling back" if phase == "rollback" else ("Deploying" if plan.kind == "deploy" else "Rolling back")
    e = discord.Embed(title=clip(deploy_title(plan), MAX_TITLE), colour=YELLOW if phase == "rollout" else RED)
    lines = [f"🔄 **{doing}**… {_secs(elapsed)}"]
    if first is not None:
        lines.insert(0, f"❌ rollout failed: {first}")
    if not p.observed:
        lines.append("waiting for the controller to pick up the change")
    lines += [
        f"`updated  ` {_bar(p.updated, p.desired)} {p.updated}/{p.desired}",
        f"`ready    ` {_bar(p.ready, p.desired)} {p.ready}/{p.desired}",
        f"`available` {_bar(p.available, p.desired)} {p.available}/{p.desired}",
    ]
    if p.old:
        lines.append(f"{p.old} old replica(s) still running")
    if p.message and p.state != "complete":
        lines.append(clip(p.message, 300))
    e.description = "\n".join(lines)
    e.set_footer(text=f"by {actor_name}")
    return e


def result_embed(result: Any, actor_name: str) -> discord.Embed:
    plan = result.plan
    took = _secs(result.seconds)
    verb = "deployed" if plan.kind == "deploy" else "rolled back"
    if result.outcome == "deployed":
        what = (f"✅ {verb} **{plan.service} {plan.to_version}** to **{plan.env}** in {took}" if plan.kind == "deploy"
                else f"✅ rolled back **{plan.service}** in **{plan.env}** to **{plan.to_version}** "
                     f"(revision {plan.revision}) in {took}")
        colour = GREEN
    elif result.outcome == "rolled_back":
        what = (f"❌ rollout of **{plan.service} {plan.to_version}** to **{plan.env}** failed: {result.reason}\n"
                f"↩️ rolled back to **{result.rolled_back_to}** automatically ({took} in all)")
        colour = RED
    elif result.outcome == "rollback_failed":
        what = (f"❌ rollout of **{plan.service} {plan.to_version}** to **{plan.env}** failed: {result.reason}\n"
                f"🔥 the automatic rollback failed too: {result.rollback_error} — look now")
        colour = RED
    else:
        what = f"❌ {plan.describe()} failed after {took}: {result.reason}"
        colour = RED
    e = discord.Embed(title=clip(deploy_title(plan), MAX_TITLE), description=clip(what, MAX_DESCRIPTION), colour=colour)
    p = result.progress
    if p is not None and result.outcome != "deployed":
        e.add_field(name="At failure", value=f"{p.updated} updated · {p.ready} ready · {p.available} available "
                                              f"of {p.desired}", inline=False)
    e.set_footer(text=f"by {actor_name}")
    return e


def handover_embed(plan: Any, actor_name: str) -> discord.Embed:
    """A rollout still running when this replica stopped: the next leader finishes it."""
    embed = discord.Embed(title=f"{plan.service} → {plan.env}: {plan.from_version} → {plan.to_version}",
                          description="⏸️ The bot is restarting while this runs. The rollout goes on in the "
                                      "cluster, and the lock stays; the next replica watches it to the end "
                                      "and reports here.",
                          colour=discord.Colour.light_grey())
    embed.set_footer(text=f"by {actor_name}")
    return embed


def result_line(result: Any, actor_name: str, channel: str | None) -> str:
    """One line for the deploys channel."""
    plan = result.plan
    where = f" (in #{channel})" if channel else ""
    took = _secs(result.seconds)
    if result.outcome == "deployed":
        if plan.kind == "deploy":
            return f"✅ {actor_name} deployed {plan.service} {plan.from_version} → {plan.to_version} to {plan.env} in {took}{where}"
        return f"↩️ {actor_name} rolled {plan.service} in {plan.env} back to {plan.to_version} (revision {plan.revision}) in {took}{where}"
    if result.outcome == "rolled_back":
        return (f"❌ {actor_name}'s deploy of {plan.service} {plan.to_version} to {plan.env} failed ({clip(result.reason or '', 200)}); "
                f"rolled back to {result.rolled_back_to}{where}")
    return f"🔥 {actor_name}: {plan.describe()} failed: {clip(result.reason or '', 200)}{where}"


def history_embed(service: str, env: str, revisions: Sequence[Any], who: dict[int, str], now: datetime) -> discord.Embed:
    e = discord.Embed(title=f"History · {service} · {env}", colour=BLUE)
    lines = []
    for r in reversed(revisions):
        mark = " ← **running**" if r.current else ""
        age = f"{_age(r.created_at, now)} ago" if r.created_at else "?"
        by = f" · by {who[r.revision]}" if r.revision in who else ""
        cause = f"\n  {clip(r.change_cause, 150)}" if r.change_cause else ""
        lines.append(f"`{r.revision:>3}` `{r.version or r.image}` · {age}{by}{mark}{cause}")
    e.description = clip("\n".join(lines) or "no revisions", MAX_DESCRIPTION)
    e.set_footer(text=f"!rollback {service} {env} [revision] goes back (default: the previous one)")
    return e
