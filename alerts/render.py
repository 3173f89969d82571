"""Incidents → :class:`~alerts.notify.OutMessage`, packed within Discord's limits.

One message per incident: a header embed (state, summary, who acked or silenced, since when) and
the alerts as fields, most severe and firing first. Discord's limits are kept here, not left to
the API to refuse: 10 embeds, 6,000 characters over all embeds, 25 fields an embed, title 256,
description 4,096, field name 256 and value 1,024, footer 2,048, content 2,000. When anything is
cut, the last field says "+N more" and the whole group is attached as JSON.

URLs from alerts (``generatorURL``, ``runbook_url``) are checked before they reach an embed or a
link button: http or https, a host, at most 512 characters, no whitespace or control
characters. A bad one is left out rather than letting Discord reject the whole message.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import urlsplit

from alerts.models import AlertView, IncidentView, TimelineEntry
from alerts.notify import Button, OutMessage
from commands.timeutil import short

# Discord's limits.
MAX_EMBEDS = 10
MAX_TOTAL = 6000
MAX_FIELDS = 25
MAX_TITLE = 256
MAX_DESCRIPTION = 4096
MAX_FIELD_NAME = 256
MAX_FIELD_VALUE = 1024
MAX_FOOTER = 2048
MAX_CONTENT = 2000
MAX_URL = 512
MAX_BUTTON_LABEL = 80
MAX_ATTACHMENT = 7 * 1024 * 1024  # below Discord's smallest upload limit (8 MiB); larger is gzipped

GREEN = 0x2ECC71
GREY = 0x95A5A6
SILENCED = 0x7F8C8D
RANK_COLOURS = (0xE74C3C, 0xE67E22, 0xF1C40F, 0x3498DB)  # by rank: most severe first

ALERT_VALUE = 350  # an alert's field value at most: a summary, since when, the source link, labels
ALERT_VALUE_MIN = 110  # …and at least, when many alerts share the 6,000 characters
ALERT_NAME = 150
MORE_RESERVE = 120  # characters kept for the "+N more" field


@dataclass(frozen=True)
class RenderOptions:
    severities: Sequence[str] = ("critical", "error", "warning", "info")
    hidden_labels: Sequence[str] = ()
    service_label: str = "service"
    env_label: str = "env"
    severity_label: str = "severity"
    silence_buttons: Sequence[str] = ("1h", "4h", "24h")
    tz: tzinfo = UTC
    tz_name: str = "UTC"


@dataclass
class _Budget:
    left: int = MAX_TOTAL
    cut: bool = False

    def text(self, value: str, limit: int) -> str:
        """``value`` trimmed to ``limit`` and what is left of the total; notes any cut."""
        room = min(limit, self.left)
        out = clip(value, room)
        if out != value:
            self.cut = True
        self.left -= len(out)
        return out


@dataclass
class _Embed:
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def fields(self) -> list[dict[str, Any]]:
        return self.data.setdefault("fields", [])


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    return text[: limit - 1] + "…"


_BAD_URL = re.compile(r"[\s\x00-\x1f\x7f<>\"\\^`{|}]")


def safe_url(url: str | None) -> str | None:
    """``url`` when Discord will take it as a link, else None."""
    if not url:
        return None
    url = url.strip()
    if not url or len(url) > MAX_URL or _BAD_URL.search(url):
        return None
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a bad port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def _md_url(url: str) -> str:
    return url.replace("(", "%28").replace(")", "%29")


_MD = re.compile(r"([\\*_`~|\[\]])")
_LINE_START = re.compile(r"^([#>-])", re.MULTILINE)


def escape_md(text: str) -> str:
    """Discord markdown and mentions made inert (alert text is not ours)."""
    text = _LINE_START.sub(r"\\\1", _MD.sub(r"\\\1", text))
    return text.replace("@", "@\u200b").replace("<", "<\u200b")


def fmt_time(when: datetime | None, now: datetime, opts: RenderOptions) -> str:
    if when is None:
        return "?"
    local, local_now = when.astimezone(opts.tz), now.astimezone(opts.tz)
    if local.date() == local_now.date():
        return f"{local:%H:%M} {opts.tz_name}"
    return f"{local:%b} {local.day} {local:%H:%M} {opts.tz_name}"


def rank(severity: str | None, opts: RenderOptions) -> int:
    if severity is None:
        return len(opts.severities) + 1
    try:
        return [s.lower() for s in opts.severities].index(severity.lower())
    except ValueError:
        return len(opts.severities)


def colour(incident: IncidentView, now: datetime, opts: RenderOptions) -> int:
    if not incident.open:
        return GREEN
    if incident.silenced(now):
        return SILENCED
    r = rank(incident.severity, opts)
    return RANK_COLOURS[r] if r < len(RANK_COLOURS) and r < len(opts.severities) else GREY


def _where(incident: IncidentView) -> str:
    parts = [p for p in (incident.service, incident.env) if p]
    return f" ({' '.join(parts)})" if parts else ""


def _icon(incident: IncidentView, now: datetime) -> str:
    if not incident.open:
        return "✅"
    if incident.silenced(now):
        return "🔕"
    if incident.acked:
        return "👀"
    return "🔥"


def incident_line(incident: IncidentView, now: datetime, opts: RenderOptions | None = None) -> str:
    """One line for ``!incidents``: id, state, severity, name, where, age, ack and silence."""
    opts = opts or RenderOptions()
    age = short(now - incident.opened_at) if now > incident.opened_at else "0s"
    bits = [f"{_icon(incident, now)} **#{incident.id}** {escape_md(incident.title)}{escape_md(_where(incident))}"]
    bits.append(incident.severity or "no severity")
    if incident.open:
        bits.append(f"{incident.firing} firing for {age}")
    else:
        took = short(incident.resolved_at - incident.opened_at) if incident.resolved_at else "?"
        bits.append(f"resolved after {took}")
    if incident.acked:
        bits.append(f"acked by {escape_md(incident.acked_by or '')}")
    if incident.silenced(now):
        bits.append(f"silenced until {fmt_time(incident.silenced_until, now, opts)}")
    return " · ".join(bits)


def runbook_url(incident: IncidentView) -> str | None:
    url = safe_url(incident.common_annotations.get("runbook_url"))
    if url:
        return url
    for a in incident.alerts:
        url = safe_url(a.annotations.get("runbook_url"))
        if url:
            return url
    return None


def source_url(incident: IncidentView) -> str | None:
    for a in incident.alerts:  # firing first
        url = safe_url(a.generator_url)
        if url:
            return url
    return None


def buttons(incident: IncidentView, now: datetime, opts: RenderOptions) -> list[list[Button]]:
    rows: list[list[Button]] = []
    if incident.open:
        first: list[Button] = []
        if incident.acked:
            first.append(Button("Unacknowledge", custom_id=f"opsbot:unack:{incident.id}", style="secondary"))
        else:
            first.append(Button("Acknowledge", custom_id=f"opsbot:ack:{incident.id}", style="primary"))
        for d in list(opts.silence_buttons)[:4]:
            first.append(Button(f"Silence {d}", custom_id=f"opsbot:silence:{incident.id}:{d}", style="secondary"))
        rows.append(first)
    links: list[Button] = []
    rb = runbook_url(incident)
    if rb:
        links.append(Button("Runbook", url=rb, style="link"))
    src = source_url(incident)
    if src:
        links.append(Button("Source", url=src, style="link"))
    if links:
        rows.append(links)
    return rows


# Labels that tell alerts of one group apart, shown first in an alert's field name.
IDENTIFYING = ("instance", "pod", "container", "node", "job", "namespace", "device", "mountpoint", "path", "endpoint")


def _distinguishing(alert: AlertView, incident: IncidentView, opts: RenderOptions) -> list[tuple[str, str]]:
    hidden = set(opts.hidden_labels) | {"alertname", opts.severity_label}
    common = incident.common_labels
    labels = [(k, v) for k, v in alert.labels.items() if k not in hidden and common.get(k) != v]
    order = {k: i for i, k in enumerate(IDENTIFYING)}
    return sorted(labels, key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def _alert_field(
    alert: AlertView, incident: IncidentView, now: datetime, opts: RenderOptions, value_limit: int = ALERT_VALUE
) -> tuple[str, str, bool]:
    """(name, value, cut) for one alert. The line with the source link is never cut."""
    icon = "🔥" if alert.status == "firing" else "✅"
    distinct = _distinguishing(alert, incident, opts)
    label_text = " ".join(f"{k}={clip(v, 40)}" for k, v in distinct[:3])
    sev = f" [{alert.severity}]" if alert.severity and alert.severity != incident.severity else ""
    raw_name = escape_md(f"{icon} {clip(alert.alertname or '?', 60)}{sev} {label_text}".strip())
    name = clip(raw_name, ALERT_NAME)
    cut = name != raw_name or any(len(v) > 40 for _, v in distinct[:3])
    when = (
        f"since {fmt_time(alert.starts_at, now, opts)}"
        if alert.status == "firing"
        else f"resolved {fmt_time(alert.ends_at, now, opts)}"
    )
    src = safe_url(alert.generator_url)
    fixed = when + (f" · [source]({_md_url(src)})" if src else "")
    room = value_limit - len(fixed)
    lines: list[str] = []
    summary = alert.annotations.get("summary") or alert.annotations.get("description") or ""
    if summary and summary != incident.common_annotations.get("summary"):
        full = escape_md(" ".join(summary.split()))
        text = clip(full, max(room - 1, 1))
        cut |= text != full
        room -= len(text) + 1
        lines.append(text)
    lines.append(fixed)
    if len(distinct) > 3:
        full = escape_md(" ".join(f"{k}={v}" for k, v in distinct[3:]))
        text = clip(full, max(room - 1, 1))
        cut |= text != full
        lines.append(text)
    return name, "\n".join(lines)[:MAX_FIELD_VALUE], cut


def render_incident(
    incident: IncidentView,
    now: datetime,
    opts: RenderOptions | None = None,
    *,
    mention_roles: Sequence[int] = (),
    nonce: str | None = None,
) -> OutMessage:
    opts = opts or RenderOptions()
    budget = _Budget()
    where = _where(incident)
    colour_ = colour(incident, now, opts)
    header = _Embed({"color": colour_})
    header.data["title"] = budget.text(f"{_icon(incident, now)} #{incident.id} {incident.title}{where}", MAX_TITLE)

    lines: list[str] = []
    summary = incident.common_annotations.get("summary")
    description = incident.common_annotations.get("description")
    if summary:
        lines.append(f"**{escape_md(' '.join(summary.split()))}**")
    if description and description != summary:
        lines.append(escape_md(description.strip()))
    if incident.open:
        lines.append(
            f"**Firing** since {fmt_time(incident.opened_at, now, opts)} "
            f"({short(max(now - incident.opened_at, now - now))})"
        )
    else:
        took = short(incident.resolved_at - incident.opened_at) if incident.resolved_at else "?"
        lines.append(
            f"**Resolved** after {took} ({fmt_time(incident.opened_at, now, opts)} – "
            f"{fmt_time(incident.resolved_at, now, opts)})"
        )
    if incident.acked:
        lines.append(
            f"Acknowledged by **{escape_md(incident.acked_by or '')}** at {fmt_time(incident.acked_at, now, opts)}"
        )
    if incident.silenced(now):
        lines.append(
            f"Silenced by **{escape_md(incident.silenced_by or '')}** until {fmt_time(incident.silenced_until, now, opts)}"
        )
    header.data["description"] = budget.text("\n".join(lines), MAX_DESCRIPTION)
    footer = f"opsbot incident #{incident.id} · {incident.receiver}"
    if incident.escalation:
        footer += f" · escalation {incident.escalation}"
    header.data["footer"] = {"text": budget.text(footer, MAX_FOOTER)}
    info = [
        ("Severity", incident.severity or "—"),
        ("Alerts", f"{incident.firing} firing, {incident.resolved} resolved"
                   + (f", {incident.truncated} more not sent (too many in one notification)" if incident.truncated else "")),
    ]
    if incident.service:
        info.append(("Service", incident.service))
    if incident.env:
        info.append(("Env", incident.env))
    for name, value in info:
        header.fields.append(
            {"name": budget.text(name, MAX_FIELD_NAME), "value": budget.text(escape_md(value), 200), "inline": True}
        )

    embeds = [header]
    alerts = incident.alerts
    shown = 0
    # Share what is left fairly: many alerts get shorter fields rather than fewer of them.
    per_alert = (budget.left - MORE_RESERVE) // max(len(alerts), 1) - 60
    value_limit = max(ALERT_VALUE_MIN, min(ALERT_VALUE, per_alert))
    for alert in alerts:
        name, value, cut = _alert_field(alert, incident, now, opts, value_limit)
        need = len(name) + len(value)
        current = embeds[-1]
        if len(current.fields) >= MAX_FIELDS:
            if len(embeds) >= MAX_EMBEDS:
                break
            current = _Embed({"color": colour_})
            embeds.append(current)
        if need > budget.left - MORE_RESERVE:
            break
        budget.text(name, MAX_FIELD_NAME)
        budget.text(value, MAX_FIELD_VALUE)
        budget.cut |= cut
        current.fields.append({"name": name, "value": value, "inline": False})
        shown += 1
    missing = len(alerts) - shown
    files: list[tuple[str, bytes]] = []
    if missing > 0:
        budget.cut = True
        last = embeds[-1]
        if len(last.fields) >= MAX_FIELDS:
            if len(embeds) < MAX_EMBEDS:
                last = _Embed({"color": colour_})
                embeds.append(last)
            else:
                last.fields.pop()
                missing += 1
        last.fields.append(
            {"name": f"+{missing} more", "value": f"every alert is in incident-{incident.id}.json", "inline": False}
        )
    if budget.cut or missing > 0:
        data = group_json(incident)
        if len(data) > MAX_ATTACHMENT:
            files.append((f"incident-{incident.id}.json.gz", gzip.compress(data, mtime=0)))
        else:
            files.append((f"incident-{incident.id}.json", data))

    content = _content(incident, now, mention_roles)
    return OutMessage(
        content=content,
        embeds=[e.data for e in embeds],
        buttons=buttons(incident, now, opts),
        files=files,
        mention_roles=list(mention_roles) if incident.open else [],
        replace_files=True,
        nonce=nonce,
    )


def _content(incident: IncidentView, now: datetime, mention_roles: Sequence[int]) -> str:
    title = escape_md(incident.title) + escape_md(_where(incident))
    if not incident.open:
        took = short(incident.resolved_at - incident.opened_at) if incident.resolved_at else "?"
        return clip(f"✅ #{incident.id} {title} resolved after {took}", MAX_CONTENT)
    pings = " ".join(f"<@&{r}>" for r in mention_roles)
    sev = f"{incident.severity} " if incident.severity else ""
    state = "silenced" if incident.silenced(now) else "acknowledged" if incident.acked else "firing"
    text = f"{_icon(incident, now)} #{incident.id} {title}: {sev}{state}"
    return clip(f"{pings} {text}" if pings else text, MAX_CONTENT)


def group_json(incident: IncidentView) -> bytes:
    """The whole group, for the attachment when the message had to cut something."""

    def iso(d: datetime | None) -> str | None:
        return d.isoformat() if d else None

    data = {
        "incident": incident.id,
        "status": incident.status,
        "receiver": incident.receiver,
        "groupLabels": incident.group_labels,
        "commonLabels": incident.common_labels,
        "commonAnnotations": incident.common_annotations,
        "openedAt": iso(incident.opened_at),
        "resolvedAt": iso(incident.resolved_at),
        "alerts": [
            {
                "fingerprint": a.fingerprint,
                "status": a.status,
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": iso(a.starts_at),
                "endsAt": iso(a.ends_at),
                "generatorURL": a.generator_url,
            }
            for a in incident.alerts
        ],
    }
    return json.dumps(data, indent=2, ensure_ascii=False).encode()


def render_timeline(entries: Sequence[TimelineEntry], now: datetime, opts: RenderOptions | None = None) -> str:
    opts = opts or RenderOptions()
    lines = [f"`{fmt_time(e.at, now, opts)}` {escape_md(e.text)}" for e in entries]
    return clip("\n".join(lines), MAX_CONTENT)


def render_notice(text: str) -> OutMessage:
    return OutMessage(content=clip(text, MAX_CONTENT))


def embed_length(embed: dict[str, Any]) -> int:
    """Characters Discord counts towards the 6,000 limit."""
    n = len(embed.get("title", "")) + len(embed.get("description", ""))
    n += len((embed.get("footer") or {}).get("text", "")) + len((embed.get("author") or {}).get("name", ""))
    for f in embed.get("fields", []):
        n += len(f.get("name", "")) + len(f.get("value", ""))
    return n
