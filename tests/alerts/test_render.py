"""Rendering within Discord's limits, most severe first, "+N more" with a JSON attachment, safe URLs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.models import AlertView, IncidentView
from alerts.render import (
    GREEN,
    MAX_CONTENT,
    MAX_DESCRIPTION,
    MAX_EMBEDS,
    MAX_FIELD_NAME,
    MAX_FIELD_VALUE,
    MAX_FIELDS,
    MAX_TITLE,
    MAX_TOTAL,
    RANK_COLOURS,
    SILENCED,
    RenderOptions,
    embed_length,
    incident_line,
    render_incident,
    safe_url,
)

NOW = datetime(2024, 5, 1, 14, 12, tzinfo=UTC)
OPENED = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)


def _alert(i: int, *, severity: str = "warning", status: str = "firing", summary: str | None = None,
           url: str = "http://prometheus.example.com/graph?g0.expr=up", **labels: str) -> AlertView:
    return AlertView(
        fingerprint=f"{i:016x}",
        alertname="HighLatency",
        status=status,  # type: ignore[arg-type]
        severity=severity,
        labels={"alertname": "HighLatency", "severity": severity, "service": "chat", "env": "prod",
                "instance": f"web-{i}", **labels},
        annotations={"summary": summary if summary is not None else f"p99 latency 2.{i}s on web-{i}"},
        starts_at=OPENED,
        ends_at=NOW if status == "resolved" else None,
        generator_url=url,
    )


def _incident(alerts: list[AlertView], **kw: object) -> IncidentView:
    firing = sum(a.status == "firing" for a in alerts)
    base: dict[str, object] = {
        "id": 12, "status": "firing" if firing else "resolved", "open": bool(firing), "title": "HighLatency",
        "severity": "critical", "service": "chat", "env": "prod", "receiver": "opsbot",
        "group_labels": {"alertname": "HighLatency"},
        "common_labels": {"alertname": "HighLatency", "service": "chat", "env": "prod"},
        "common_annotations": {"runbook_url": "https://runbooks.example.com/latency"},
        "channel": "alerts", "message_id": None, "escalation": "primary", "opened_at": OPENED,
        "resolved_at": None if firing else NOW, "acked_by": None, "acked_by_id": None, "acked_at": None,
        "silence_id": None, "silenced_by": None, "silenced_until": None, "firing": firing,
        "resolved": len(alerts) - firing, "alerts": alerts,
    }
    base.update(kw)
    return IncidentView(**base)  # type: ignore[arg-type]


def _check_limits(msg) -> None:  # type: ignore[no-untyped-def]
    assert len(msg.embeds) <= MAX_EMBEDS
    assert sum(embed_length(e) for e in msg.embeds) <= MAX_TOTAL
    assert len(msg.content) <= MAX_CONTENT
    for e in msg.embeds:
        assert len(e.get("title", "")) <= MAX_TITLE
        assert len(e.get("description", "")) <= MAX_DESCRIPTION
        assert len(e.get("fields", [])) <= MAX_FIELDS
        for f in e.get("fields", []):
            assert 0 < len(f["name"]) <= MAX_FIELD_NAME and 0 < len(f["value"]) <= MAX_FIELD_VALUE
    assert len(msg.buttons) <= 5 and all(len(row) <= 5 for row in msg.buttons)
    for row in msg.buttons:
        for b in row:
            assert len(b.label) <= 80
            assert (b.url is None) != (b.custom_id is None)
            assert b.custom_id is None or len(b.custom_id) <= 100
            assert b.url is None or safe_url(b.url) == b.url


def test_a_small_group_shows_every_alert_with_buttons() -> None:
    inc = _incident([_alert(1), _alert(2, severity="critical")])
    msg = render_incident(inc, NOW, mention_roles=[555])
    _check_limits(msg)
    assert msg.embeds[0]["title"] == "🔥 #12 HighLatency (chat prod)"
    assert msg.embeds[0]["color"] == RANK_COLOURS[0]
    names = [f["name"] for f in msg.embeds[0]["fields"]]
    assert names[:4] == ["Severity", "Alerts", "Service", "Env"]
    assert names[4].startswith("🔥 HighLatency [warning] instance=web-1") or "web-1" in names[4]
    assert "<@&555>" in msg.content and msg.mention_roles == [555]
    assert [b.custom_id for b in msg.buttons[0]] == [
        "opsbot:ack:12", "opsbot:silence:12:1h", "opsbot:silence:12:4h", "opsbot:silence:12:24h"]
    assert [(b.label, b.url) for b in msg.buttons[1]] == [
        ("Runbook", "https://runbooks.example.com/latency"),
        ("Source", "http://prometheus.example.com/graph?g0.expr=up"),
    ]
    assert "**Firing** since 14:00 UTC (12m)" in msg.embeds[0]["description"]
    assert msg.files == [] and msg.replace_files


def test_most_severe_first_comes_from_the_view_order() -> None:
    # The store hands alerts firing first, most severe first; the renderer keeps that order.
    inc = _incident([_alert(2, severity="critical"), _alert(1, severity="warning"), _alert(3, status="resolved")])
    fields = render_incident(inc, NOW).embeds[0]["fields"][4:]
    assert [f["name"][:1] for f in fields] == ["🔥", "🔥", "✅"]
    assert "web-2" in fields[0]["name"]


def test_acked_and_silenced_are_shown_and_unack_offered() -> None:
    inc = _incident([_alert(1)], acked_by="oncall", acked_by_id=1, acked_at=OPENED + timedelta(minutes=3),
                    silence_id="abc", silenced_by="oncall", silenced_until=NOW + timedelta(hours=1))
    msg = render_incident(inc, NOW)
    d = msg.embeds[0]["description"]
    assert "Acknowledged by **oncall** at 14:03 UTC" in d
    assert "Silenced by **oncall** until 15:12 UTC" in d
    assert msg.embeds[0]["color"] == SILENCED
    assert msg.buttons[0][0].custom_id == "opsbot:unack:12" and msg.buttons[0][0].label == "Unacknowledge"


def test_resolved_is_green_without_ack_or_silence_buttons() -> None:
    inc = _incident([_alert(1, status="resolved")], acked_by="oncall", acked_at=OPENED)
    msg = render_incident(inc, NOW, mention_roles=[555])
    assert msg.embeds[0]["color"] == GREEN
    assert "resolved after 12m" in msg.content and "<@&555>" not in msg.content and msg.mention_roles == []
    assert all(b.custom_id is None for row in msg.buttons for b in row)
    assert [b.label for row in msg.buttons for b in row] == ["Runbook", "Source"]


def test_a_storm_group_is_packed_with_more_and_json() -> None:
    alerts = [_alert(i, severity="critical" if i < 5 else "warning", summary="x" * 900, extra="y" * 300)
              for i in range(300)]
    inc = _incident(alerts)
    msg = render_incident(inc, NOW)
    _check_limits(msg)
    last = msg.embeds[-1]["fields"][-1]
    shown = sum(1 for e in msg.embeds for f in e.get("fields", []) if f["name"].startswith("🔥"))
    assert last["name"] == f"+{300 - shown} more"
    [(name, data)] = msg.files
    assert name == "incident-12.json"
    full = json.loads(data)
    assert len(full["alerts"]) == 300 and {a["fingerprint"] for a in full["alerts"]} == {a.fingerprint for a in alerts}
    # The first five (critical) are among those shown.
    text = "\n".join(f["name"] for e in msg.embeds for f in e.get("fields", []))
    assert all(f"web-{i}" in text for i in range(5))


def test_many_small_alerts_spill_into_more_embeds() -> None:
    alerts = [_alert(i, summary="") for i in range(60)]
    msg = render_incident(_incident(alerts), NOW)
    _check_limits(msg)
    assert len(msg.embeds) >= 2
    fields = [f for e in msg.embeds for f in e.get("fields", [])]
    assert sum(f["name"].startswith("🔥") for f in fields) + int(fields[-1]["name"].removeprefix("+").split()[0]) == 60


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://prometheus:9090/graph?g0.expr=up", True),
        ("https://example.com/a(b)", True),
        ("javascript:alert(1)", False),
        ("ftp://example.com/x", False),
        ("/graph?g0.expr=up", False),  # relative: Prometheus without --web.external-url
        ("http://", False),
        ("http://exa mple.com", False),
        ("http://example.com/\nx", False),
        ("http://example.com:99999/", False),
        ("http://example.com/" + "a" * 600, False),
        ("", False),
        (None, False),
    ],
)
def test_safe_url(url: str | None, ok: bool) -> None:
    assert (safe_url(url) == url.strip()) if ok else safe_url(url) is None  # type: ignore[union-attr]


def test_a_bad_generator_url_is_left_out_not_sent() -> None:
    inc = _incident([_alert(1, url="javascript:alert(1)"), _alert(2, url="http://x y")],
                    common_annotations={"runbook_url": "not a url"})
    msg = render_incident(inc, NOW)
    assert len(msg.buttons) == 1  # no link row at all
    assert "javascript" not in json.dumps(msg.embeds)
    assert "[source]" not in json.dumps(msg.embeds)


def test_alert_text_cannot_ping_or_break_markdown() -> None:
    inc = _incident([_alert(1, summary="@everyone <@&1> **bold** [x](http://evil)")], title="<@&99> @here")
    msg = render_incident(inc, NOW)
    assert "@everyone" not in json.dumps(msg.embeds, ensure_ascii=False)
    assert "<@&99>" not in msg.content and "@here" not in msg.content


def test_incident_line_for_the_incidents_command() -> None:
    line = incident_line(_incident([_alert(1)], acked_by="oncall"), NOW)
    assert line == "👀 **#12** HighLatency (chat prod) · critical · 1 firing for 12m · acked by oncall"


def test_a_time_zone_is_used_for_times() -> None:
    from zoneinfo import ZoneInfo

    opts = RenderOptions(tz=ZoneInfo("Europe/Berlin"), tz_name="Europe/Berlin")
    msg = render_incident(_incident([_alert(1)]), NOW, opts)
    assert "since 16:00 Europe/Berlin" in msg.embeds[0]["description"]


_text = st.text(st.characters(codec="utf-8"), max_size=3000)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 120),
    summary=_text,
    title=st.text(max_size=400),
    label=st.text(max_size=2000),
    url=st.text(max_size=700),
    status=st.sampled_from(["firing", "resolved"]),
)
def test_any_group_fits_discord(n: int, summary: str, title: str, label: str, url: str, status: str) -> None:
    alerts = [_alert(i, summary=summary, status=status, url=url, note=label) for i in range(n)]
    inc = _incident(alerts, title=title or "x", common_annotations={"summary": summary, "description": summary * 2,
                                                                      "runbook_url": url})
    msg = render_incident(inc, NOW)
    _check_limits(msg)
    shown = sum(1 for e in msg.embeds for f in e.get("fields", []) if f["name"][:1] in ("🔥", "✅"))
    if shown < n:
        assert msg.files and len(json.loads(msg.files[0][1])["alerts"]) == n


def test_a_huge_group_is_attached_gzipped() -> None:
    import gzip

    alerts = [_alert(i, summary="s" * 4000) for i in range(2000)]
    msg = render_incident(_incident(alerts), NOW)
    [(name, data)] = msg.files
    assert name == "incident-12.json.gz" and len(data) < 7 * 1024 * 1024
    assert len(json.loads(gzip.decompress(data))["alerts"]) == 2000
