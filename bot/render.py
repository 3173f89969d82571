"""Result models -> embeds and text, within Discord's limits."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
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
    if any(s.error or s.rollout == "failed" for s in states):
        return RED
    if any(s.rollout in ("progressing", "paused", "unknown") or s.ready < s.desired for s in states):
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
    return " · ".join(parts)


def _detail_embed(s: TargetState, now: datetime) -> discord.Embed:
    e = discord.Embed(title=clip(f"{s.service} · {s.env}", MAX_TITLE), colour=_colour([s]),
                      description=clip(summary_line(s), MAX_DESCRIPTION))
    if not s.error:
        e.add_field(name="Version", value=f"`{s.version or '?'}`", inline=True)
        e.add_field(name="Replicas", value=f"{s.ready}/{s.desired} ready", inline=True)
        e.add_field(name="Rollout", value=clip(
            f"{_ROLLOUT_ICON.get(s.rollout, '')} {s.rollout}"
            + (f" — {s.rollout_message}" if s.rollout_message and s.rollout != "complete" else ""),
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
        e.add_field(name=clip(s.service, MAX_FIELD_NAME), value=clip(summary_line(s), MAX_FIELD_VALUE), inline=False)
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
