"""Against a real Alertmanager: it posts to the intake (on bot.http.HttpServer), opsbot silences in it.

firing → one message; more alerts in the group → the same message edited; Acknowledge → shown
and recorded; Silence → a real silence (API v2 and amtool); resolved → edited green; a storm of
1,000 alerts in 50 groups → 50 messages; reconciling after downtime; typed errors.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from alerts.alertmanager import (
    AlertmanagerClient,
    AlertmanagerNotConfigured,
    AlertmanagerRejected,
    AlertmanagerUnavailable,
    SilenceNotFound,
)
from alerts.routing import parse_matchers
from alerts.service import AlertService, parse_custom_id
from bot.http import HttpServer
from bot.metrics import Metrics
from commands.catalog import UserError
from tests.alerts.conftest import (
    AlertmanagerProc,
    RecordingNotifier,
    am_alert,
    free_port,
    make_db,
    make_settings,
)
from tests.alerts.test_outbox import accounted

pytestmark = pytest.mark.integration


@asynccontextmanager
async def relay(
    tmp_path: Path, am: AlertmanagerProc, notifier: RecordingNotifier | None = None, *, serve: bool = True, **cfg: object
) -> AsyncIterator[AlertService]:
    """An AlertService on its database, with the intake on the bot's HTTP server at the webhook port."""
    settings = make_settings(tmp_path, **cfg)
    settings.alertmanager_url = am.url
    db = make_db(tmp_path)
    service = AlertService(settings, db, notifier or RecordingNotifier())
    http = HttpServer(f"127.0.0.1:{am.webhook_port}", Metrics(), lambda: (True, "ok"))
    http.add_routes(service.routes())
    if serve:
        await http.start()
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await http.stop()
        db.dispose()


def _now() -> datetime:
    return datetime.now(UTC)


async def test_fire_join_ack_silence_resolve(tmp_path: Path, alertmanager: AlertmanagerProc) -> None:
    notifier = RecordingNotifier()
    async with relay(tmp_path, alertmanager, notifier) as alerts:
        await alerts.reconciled.wait()
        # firing → one message
        await alertmanager.post_alerts([am_alert("HighLatency", instance="web-1")])
        await notifier.wait_for(lambda: len(notifier.messages) == 1)
        [msg] = notifier.messages.values()
        assert msg.channel == "alerts" and msg.title == "🔥 #1 HighLatency (chat prod)"
        assert "1 firing" in msg.text and "HighLatency on web-1" in msg.text
        assert msg.links["Runbook"] == "https://runbooks.example.com/HighLatency"
        assert msg.links["Source"].startswith("http://prometheus.example.com/graph")
        assert "opsbot:ack:1" in msg.custom_ids

        # more alerts in the group → the same message, edited
        await alertmanager.post_alerts([am_alert("HighLatency", instance="web-1"), am_alert("HighLatency", instance="web-2")])
        await notifier.wait_for(lambda: "2 firing" in msg.text)
        assert len(notifier.messages) == 1 and msg.edits >= 1

        # Acknowledge → shown and recorded
        action = parse_custom_id(msg.custom_ids[0])
        assert action is not None and action.action == "ack"
        await alerts.ack(action.incident_id, 4242, "oncall")
        await notifier.wait_for(lambda: "Acknowledged by **oncall**" in msg.text)
        assert "opsbot:unack:1" in msg.custom_ids
        incident = await alerts.incident(1)
        assert incident.acked_by == "oncall" and incident.acked_by_id == 4242
        assert any(e.kind == "acked" and "oncall" in e.text for e in incident.timeline)
        with pytest.raises(UserError, match="acknowledged by oncall already"):
            await alerts.ack(1, 1, "someone")

        # Silence 1h → a real silence in Alertmanager
        action = parse_custom_id("opsbot:silence:1:1h")
        assert action is not None and action.duration == "1h"
        silence = await alerts.silence(action.incident_id, action.duration, "oncall")
        async with alertmanager.client() as client:
            stored = await client.silence(silence.id)
        assert stored.status.state == "active" and stored.created_by == "oncall"
        assert stored.comment.startswith("opsbot incident #1: HighLatency (chat prod)")
        assert {m.text() for m in stored.matchers} == {
            'alertname="HighLatency"', 'env="prod"', 'service="chat"', 'severity="critical"'}
        assert timedelta(minutes=59) < stored.ends_at - stored.starts_at <= timedelta(hours=1, seconds=5)  # type: ignore[operator]
        queried = json.loads(alertmanager.amtool("silence", "query", "-o", "json"))
        assert [s["id"] for s in queried] == [silence.id]
        await notifier.wait_for(lambda: "Silenced by **oncall** until" in msg.text)
        assert any(e.kind == "silenced" for e in (await alerts.incident(1)).timeline)
        # The alerts are silenced in Alertmanager now.
        live = await alerts.live_alerts("chat")
        assert {a.state for a in live} == {"suppressed"} and all(silence.id in a.silenced_by for a in live)
        assert [s.id for s in await alerts.silences()] == [silence.id]

        # !unsilence: expired in Alertmanager, no longer shown
        await alerts.expire_silence(silence.id, "oncall")
        await notifier.wait_for(lambda: "Silenced by" not in msg.text)
        assert await alerts.silences() == []
        async with alertmanager.client() as client:
            assert (await client.silence(silence.id)).status.state == "expired"

        # resolved → the same message, edited green
        ended = _now()
        await alertmanager.post_alerts(
            [am_alert("HighLatency", instance=i, ends=ended) for i in ("web-1", "web-2")])
        await notifier.wait_for(lambda: msg.colour == 0x2ECC71, timeout=30)
        assert len(notifier.messages) == 1
        assert "resolved after" in msg.message.content
        assert msg.custom_ids == []  # no Ack or Silence on a resolved incident
        incident = await alerts.incident(1)
        assert not incident.open and incident.resolved == 2
        await alerts.wait_idle(20)
        thread = "\n".join(msg.thread)
        for needle in ("fired: HighLatency", "joined: HighLatency instance=web-2", "acknowledged by oncall",
                       "silenced by oncall", "expired by oncall", "all resolved after"):
            assert needle in thread


async def test_storm_1000_alerts_in_50_groups(tmp_path: Path, alertmanager: AlertmanagerProc) -> None:
    notifier = RecordingNotifier()
    async with relay(tmp_path, alertmanager, notifier, send_rate_operations=50, send_rate_seconds=1) as alerts:
        batch = [am_alert("Storm", service=f"svc{g:02d}", instance=f"g{g}-i{i}", severity="critical" if g < 5 else "warning")
                 for g in range(50) for i in range(20)]
        await alertmanager.post_alerts(batch)

        def done() -> bool:
            return len(notifier.messages) == 50 and all("20 firing" in m.text for m in notifier.messages.values())

        await notifier.wait_for(done, timeout=60)
        await alerts.wait_idle(30)
        assert notifier.count("send") == 50 and len(notifier.messages) == 50
        assert accounted(notifier) == {f"g{g}-i{i}" for g in range(50) for i in range(20)}
        incidents = await alerts.incidents(limit=100)
        assert len(incidents) == 50 and sum(i.firing for i in incidents) == 1000
        # critical groups were posted first
        first = [notifier.messages[c[2]] for c in notifier.calls if c[0] == "send"][:5]
        assert all("critical" in m.message.content for m in first)


async def test_reconcile_after_downtime(tmp_path: Path, alertmanager: AlertmanagerProc) -> None:
    notifier = RecordingNotifier()
    async with relay(tmp_path, alertmanager, notifier) as alerts:
        await alertmanager.post_alerts([am_alert("DiskFull", instance="db-1"), am_alert("DiskFull", instance="db-2")])
        await notifier.wait_for(lambda: any("2 firing" in m.text for m in notifier.messages.values()))
        await alerts.wait_idle(10)
    # opsbot is down: db-1 resolves, db-3 starts. Alertmanager cannot deliver either.
    await alertmanager.post_alerts([am_alert("DiskFull", instance="db-1", ends=_now()),
                                    am_alert("DiskFull", instance="db-2"), am_alert("DiskFull", instance="db-3")])
    async with relay(tmp_path, alertmanager, notifier, serve=False) as alerts:  # no webhook: only reconcile
        await alerts.reconciled.wait()
        await alerts.wait_idle(10)
        incident = await alerts.incident(1)
        assert {a.labels["instance"]: a.status for a in incident.alerts} == {
            "db-1": "resolved", "db-2": "firing", "db-3": "firing"}
        assert any("resolved while opsbot was not listening" in e.text for e in incident.timeline)
        assert len(notifier.messages) == 1  # the same message, edited
    # Everything resolves while opsbot is down: the incident closes on the next start.
    await alertmanager.post_alerts([am_alert("DiskFull", instance=i, ends=_now()) for i in ("db-2", "db-3")])
    async with relay(tmp_path, alertmanager, notifier, serve=False) as alerts:
        await alerts.reconciled.wait()
        await alerts.wait_idle(10)
        incident = await alerts.incident(1)
        assert not incident.open and incident.status == "resolved"
        [msg] = notifier.messages.values()
        assert msg.colour == 0x2ECC71


async def test_silence_commands(tmp_path: Path, alertmanager: AlertmanagerProc) -> None:
    async with relay(tmp_path, alertmanager) as alerts:
        s = await alerts.create_silence('alertname=Foo service=~"chat.*"', "2h", " db   upgrade ", "mod")
        assert s.matchers == ['alertname="Foo"', 'service=~"chat.*"'] and s.comment == "db upgrade"
        [listed] = await alerts.silences()
        assert listed.id == s.id and listed.created_by == "mod" and listed.state == "active"
        assert set(listed.matchers) == set(s.matchers)
        for bad, message in [("", "needs matchers"), ('service=~".*"', "match every alert"), ("a=", "match every alert"),
                             ("=x", "bad matchers")]:
            with pytest.raises(UserError, match=message):
                await alerts.create_silence(bad, "1h", "x", "mod")
        with pytest.raises(UserError, match="comment"):
            await alerts.create_silence("a=b", "1h", "  ", "mod")
        with pytest.raises(UserError, match="duration"):
            await alerts.create_silence("a=b", "forever", "x", "mod")
        with pytest.raises(UserError, match="at most"):
            await alerts.create_silence("a=b", "90d", "x", "mod")
        with pytest.raises(UserError, match="no incident #99"):
            await alerts.silence(99, "1h", "mod")
        await alerts.expire_silence(s.id, "mod")
        assert await alerts.silences() == []
        assert [x.state for x in await alerts.silences(include_expired=True)] == ["expired"]
        with pytest.raises(SilenceNotFound):
            await alerts.expire_silence("00000000-0000-0000-0000-000000000000")
        with pytest.raises(SilenceNotFound):
            await alerts.expire_silence("../../status")


async def test_live_alerts_by_service(tmp_path: Path, alertmanager: AlertmanagerProc) -> None:
    async with relay(tmp_path, alertmanager) as alerts:
        await alertmanager.post_alerts([
            am_alert("A", service="chat", severity="warning"), am_alert("B", service="chat"),
            am_alert("C", service="auth"), am_alert("Watchdog", service="", severity="none"),
        ])
        live = await alerts.live_alerts()
        assert [a.alertname for a in live] == ["B", "C", "A"]  # most severe first, no Watchdog
        chat = await alerts.live_alerts("chat")
        assert {a.alertname for a in chat} == {"A", "B"}
        assert chat[0].summary == "B on chat" and chat[0].state in ("active", "unprocessed")


async def test_typed_errors(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    async with AlertmanagerClient(f"http://user:secret@127.0.0.1:{port}", timeout=2, retry_delay=0.01) as client:
        with pytest.raises(AlertmanagerUnavailable, match="unreachable") as info:
            await client.silences()
        assert "secret" not in str(info.value)

    settings = make_settings(tmp_path)
    db = make_db(tmp_path)
    service = AlertService(settings, db, RecordingNotifier())
    await service.start()
    try:
        with pytest.raises(AlertmanagerNotConfigured, match="alertmanager_url"):
            await service.silences()
        with pytest.raises(AlertmanagerNotConfigured):
            await service.live_alerts()
    finally:
        await service.stop()
        db.dispose()


async def test_rejections_and_5xx_are_typed(tmp_path: Path) -> None:
    from aiohttp import web

    calls = {"n": 0}

    async def flaky(request: web.Request) -> web.Response:
        calls["n"] += 1
        return web.Response(status=503, text="overloaded")

    async def reject(request: web.Request) -> web.Response:
        return web.json_response("silence invalid: start time must be before end time", status=400)

    async def timeout(request: web.Request) -> web.Response:
        import asyncio

        await asyncio.sleep(1.5)
        return web.json_response([])

    app = web.Application()
    app.add_routes([web.get("/api/v2/silences", flaky), web.post("/api/v2/silences", reject),
                    web.get("/api/v2/alerts", timeout)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with AlertmanagerClient(url, timeout=0.3, retries=2, retry_delay=0.01) as client:
            with pytest.raises(AlertmanagerUnavailable, match="503: overloaded"):
                await client.silences()
            assert calls["n"] == 3  # retried
            with pytest.raises(AlertmanagerRejected, match="start time must be before end time") as info:
                await client.create_silence(parse_matchers("a=b"), starts_at=_now(), ends_at=_now(),
                                            created_by="x", comment="y")
            assert info.value.status == 400
            with pytest.raises(AlertmanagerUnavailable, match="did not answer in time"):
                await client.alerts()
    finally:
        await runner.cleanup()


async def test_basic_auth_from_alertmanager(tmp_path: Path) -> None:
    """Alertmanager's basic_auth http_config works against the intake too."""
    from tests.alerts.conftest import (
        TOKEN,
        alertmanager_config,
        start_alertmanager,
        stop_alertmanager,
    )

    webhook_port = free_port()
    config = alertmanager_config(f"http://127.0.0.1:{webhook_port}/alerts/alertmanager", TOKEN, group_by=["alertname"])
    config = config.replace(
        f"authorization:\n            type: Bearer\n            credentials: {json.dumps(TOKEN)}",
        f"basic_auth:\n            username: alertmanager\n            password: {json.dumps(TOKEN)}",
    )
    assert "basic_auth" in config
    am = await start_alertmanager(tmp_path / "am", config, webhook_port=webhook_port, token=TOKEN)
    notifier = RecordingNotifier()
    try:
        async with relay(tmp_path, am, notifier) as alerts:
            await am.post_alerts([am_alert("BasicAuth")])
            await notifier.wait_for(lambda: len(notifier.messages) == 1)
            assert alerts.intake.counts.get(401, 0) == 0
    finally:
        stop_alertmanager(am)


async def test_wrong_token_from_alertmanager_is_401_and_retried(tmp_path: Path) -> None:
    from tests.alerts.conftest import (
        alertmanager_config,
        start_alertmanager,
        stop_alertmanager,
    )

    webhook_port = free_port()
    config = alertmanager_config(f"http://127.0.0.1:{webhook_port}/alerts/alertmanager", "wrong-token",
                                 group_by=["alertname"])
    am = await start_alertmanager(tmp_path / "am", config, webhook_port=webhook_port, token="wrong-token")
    notifier = RecordingNotifier()
    try:
        async with relay(tmp_path, am, notifier) as alerts:
            await am.post_alerts([am_alert("Nope")])
            for _ in range(100):
                if alerts.intake.counts.get(401):
                    break
                import asyncio

                await asyncio.sleep(0.1)
            assert alerts.intake.counts.get(401, 0) >= 1 and notifier.messages == {}
            async with aiohttp.ClientSession() as s, s.get(f"{am.url}/metrics") as r:
                assert 'integration="webhook"' in await r.text()
    finally:
        stop_alertmanager(am)


async def test_a_100_kib_annotation_from_alertmanager_shows_in_chat(tmp_path: Path, alertmanager: AlertmanagerProc) -> None:
    """Issue 13, finding 14: Alertmanager never resends a 4xx, so a long templated description (a
    table, a log excerpt) must be stored cut, not refused; `!alerts` reads it from the API too."""
    notifier = RecordingNotifier()
    async with relay(tmp_path, alertmanager, notifier) as alerts:
        await alerts.reconciled.wait()
        big = am_alert("HugeDescription", instance="web-1")
        big["annotations"]["description"] = "first line of a long table\n" + "| web-1 | 7.3% |\n" * 6400
        assert len(big["annotations"]["description"]) > 100 * 1024
        await alertmanager.post_alerts([big])
        await notifier.wait_for(lambda: len(notifier.messages) == 1)
        [msg] = notifier.messages.values()
        assert "HugeDescription" in msg.title and "first line of a long table" in msg.text
        [stored] = (await alerts.incident(1)).alerts
        assert "truncated by opsbot" in stored.annotations["description"]
        assert alerts.intake.counts == {200: alerts.intake.counts[200]}  # nothing refused
        [live] = await alerts.live_alerts("chat")
        assert live.alertname == "HugeDescription" and "truncated by opsbot" in live.annotations["description"]


async def test_silences_that_mute_everything_or_an_env_are_refused(tmp_path: Path, alertmanager: AlertmanagerProc) -> None:
    """Issue 13, finding 8: the "match everything" guard also knows regexes and negative matchers."""
    async with relay(tmp_path, alertmanager) as alerts:
        for broad in ('alertname=~".+"', 'alertname!=""', 'alertname=~".*"', 'env="prod"', 'env=prod alertname!~"X"',
                      'service=~"(a|.)+"', 'alertname=~"Foo|"'):
            with pytest.raises(UserError, match="match every alert"):
                await alerts.create_silence(broad, "1h", "x", "mod")
        assert await alerts.silences() == []
        # A maintenance window over every service of an env silences that env on purpose; never all envs.
        s = await alerts.create_silence('env="prod"', "1h", "maintenance", "opsbot", whole_env=True)
        assert s.matchers == ['env="prod"']
        with pytest.raises(UserError, match="match every alert"):
            await alerts.create_silence('alertname=~".+"', "1h", "maintenance", "opsbot", whole_env=True)
        assert [x.id for x in await alerts.silences()] == [s.id]
