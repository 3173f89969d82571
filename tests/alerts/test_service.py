"""AlertService as the bot layer uses it: routing to channels, mentions, escalation, acks, the demo sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerts.alertmanager import AlertmanagerUnavailable
from alerts.service import SAMPLE_RECEIVER, ButtonAction, parse_custom_id
from commands.catalog import UserError
from tests.alerts.conftest import (
    T0,
    alert,
    close_harness,
    free_port,
    open_harness,
    payload,
)

ROUTES = [
    {"matchers": ['severity="critical"', 'env="prod"'], "channel": "pager", "mention_roles": [111],
     "escalation": "critical", "continue": True},
    {"matchers": ['service=~"chat.*"'], "channel": "chat-alerts", "mention_roles": [222]},
    {"matchers": ['service="auth"'], "channel": "auth-alerts"},
]


async def test_routes_channels_mentions_and_escalation(tmp_path: Path) -> None:
    h = await open_harness(tmp_path, routes=ROUTES, default_route={"channel": "catchall", "escalation": "low"})
    try:
        await h.post(payload([alert("Down", severity="critical", service="chat-gui")], group="a"))
        await h.post(payload([alert("Slow", severity="warning", service="auth")], group="b"))
        await h.post(payload([alert("Odd", severity="info", service="strims")], group="c"))
        await h.service.wait_idle(10)
        by_channel = {m.channel: m for m in h.notifier.messages.values()}
        assert set(by_channel) == {"pager", "chat-alerts", "auth-alerts", "catchall"}
        assert by_channel["pager"].message.mention_roles == [111] and "<@&111>" in by_channel["pager"].message.content
        assert by_channel["chat-alerts"].message.mention_roles == [222]
        assert by_channel["pager"].title == by_channel["chat-alerts"].title  # one incident, two channels
        down, slow, odd = [await h.service.incident(i) for i in (1, 2, 3)]
        assert (down.channel, down.escalation) == ("pager", "critical")
        assert (slow.channel, slow.escalation) == ("auth-alerts", None)
        assert (odd.channel, odd.escalation) == ("catchall", "low")
        assert (down.service, down.env, down.severity) == ("chat-gui", "prod", "critical")
        # Both messages follow the incident; the timeline goes to the primary's thread only.
        await h.service.ack(1, 5, "oncall")
        await h.service.wait_idle(10)
        assert all("Acknowledged by **oncall**" in by_channel[c].text for c in ("pager", "chat-alerts"))
        assert by_channel["pager"].thread and not by_channel["chat-alerts"].thread
    finally:
        await close_harness(h)


async def test_incidents_listing_and_filters(tmp_path: Path) -> None:
    h = await open_harness(tmp_path)
    try:
        await h.post(payload([alert("W", severity="warning", service="chat")], group="w"))
        await h.post(payload([alert("C", severity="critical", service="auth")], group="c"))
        await h.post(payload([alert("R", service="chat", status="resolved", ends=T0.replace(minute=1))], group="r"))
        assert [i.title for i in await h.service.incidents()] == ["C", "W"]  # open, most severe first
        assert [i.title for i in await h.service.incidents(open_only=False)] == ["C", "W", "R"]
        assert [i.title for i in await h.service.incidents(service="chat")] == ["W"]
        assert await h.service.incidents(env="dev") == []
        with pytest.raises(UserError, match="no incident #42"):
            await h.service.incident(42)
        with pytest.raises(UserError, match="resolved already"):
            await h.service.ack(3, 1, "x")
        with pytest.raises(UserError, match="not acknowledged"):
            await h.service.unack(1, 1, "x")
        with pytest.raises(ValueError):
            await h.service.incidents(limit=0)
    finally:
        await close_harness(h)


async def test_sample_alert_and_its_resolution(tmp_path: Path) -> None:
    h = await open_harness(tmp_path)
    try:
        incident = await h.service.sample_alert("chat-gui", "prod")
        assert incident.receiver == SAMPLE_RECEIVER and incident.firing == 2 and incident.service == "chat-gui"
        again = await h.service.sample_alert("chat-gui", "prod")
        assert again.id == incident.id and again.firing == 4  # joins the open incident
        await h.service.wait_idle(10)
        [m] = h.notifier.messages.values()
        assert "4 firing" in m.text and m.links["Runbook"].startswith("https://runbooks.example.com/chat-gui/")
        done = await h.service.resolve_sample(incident.id)
        assert not done.open
        await h.service.wait_idle(10)
        assert m.colour == 0x2ECC71
        await h.post(payload([alert()]))
        with pytest.raises(UserError, match="real one"):
            await h.service.resolve_sample(2)
    finally:
        await close_harness(h)


async def test_silence_with_alertmanager_down_is_a_typed_error_and_changes_nothing(tmp_path: Path) -> None:
    h = await open_harness(tmp_path, alertmanager_url=f"http://127.0.0.1:{free_port()}",
                           alertmanager_timeout_seconds=1)
    try:
        await h.post(payload([alert()]))
        with pytest.raises(AlertmanagerUnavailable, match="unreachable"):
            await h.service.silence(1, "1h", "oncall")
        assert (await h.service.incident(1)).silenced_by is None
        with pytest.raises(AlertmanagerUnavailable):
            await h.service.live_alerts()
        with pytest.raises(UserError, match="duration"):
            await h.service.silence(1, "soon", "oncall")
        with pytest.raises(UserError, match="at least 1m"):
            await h.service.silence(1, "10s", "oncall")
    finally:
        await close_harness(h)


@pytest.mark.parametrize(
    ("custom_id", "action"),
    [
        ("opsbot:ack:12", ButtonAction("ack", 12)),
        ("opsbot:unack:12", ButtonAction("unack", 12)),
        ("opsbot:silence:12:4h", ButtonAction("silence", 12, "4h")),
        ("opsbot:silence:12", None),
        ("opsbot:ack:x", None),
        ("opsbot:ack:12:1h", None),
        ("opsbot:deploy:12", None),
        ("other:ack:12", None),
        ("", None),
    ],
)
def test_parse_custom_id(custom_id: str, action: ButtonAction | None) -> None:
    assert parse_custom_id(custom_id) == action


async def test_render_for_the_bot_layer(tmp_path: Path) -> None:
    h = await open_harness(tmp_path)
    try:
        await h.post(payload([alert()]))
        msg = h.service.render(await h.service.incident(1), mention_roles=[9])
        assert msg.embeds and "<@&9>" in msg.content and msg.buttons[0][0].custom_id == "opsbot:ack:1"
    finally:
        await close_harness(h)
