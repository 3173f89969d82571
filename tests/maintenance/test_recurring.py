"""Recurring chores from config on the shared scheduler: cron jobs per entry, a run-job backup,
image prune, a window on a schedule, a run missed while the bot was down reported and skipped, the
TLS check against a local TLS server with a self-signed certificate made by openssl, and the digest."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from commands.audit import AuditLog
from commands.digest import build_digest
from commands.tlscheck import TlsChecker, validity
from config.settings import TlsEndpoint
from tests.conftest import require_program

from .conftest import T0, World, settings_for

RECURRING = {
    "nightly-backup": {"task": "run-job", "cron": "0 2 * * *", "service": "chat", "env": "prod",
                       "cronjob": "db-backup", "description": "nightly backup"},
    "weekly-prune": {"task": "prune", "cron": "0 3 * * sun"},
    "monday-restart": {"task": "window", "cron": "0 4 * * mon", "services": ["auth"], "env": "staging",
                       "duration": "15m", "reason": "weekly restart", "actions": ["restart"]},
}


async def test_recurring_entries_become_cron_jobs_that_run_and_report(world: World):
    world.settings = settings_for(world.tmp_path, maintenance={"recurring": RECURRING})
    world.clock.now = datetime(2024, 5, 4, 23, 0, tzinfo=UTC)  # Saturday 23:00 UTC = Sunday 01:00 CEST
    bot = await world.start()
    await bot.service.schedule_recurring()
    jobs = {j.id: j.next_run for j in await bot.scheduler.jobs("recurring:")}
    assert jobs == {"recurring:nightly-backup": datetime(2024, 5, 5, 0, 0, tzinfo=UTC),  # 02:00 CEST
                    "recurring:weekly-prune": datetime(2024, 5, 5, 1, 0, tzinfo=UTC),
                    "recurring:monday-restart": datetime(2024, 5, 6, 2, 0, tzinfo=UTC)}

    world.clock.now = datetime(2024, 5, 5, 0, 0, 5, tzinfo=UTC)
    await bot.scheduler.run_due()
    assert world.platform.calls == [("run-job", "db-backup", "prod")]
    assert bot.posts[-1] == ("ops", ("💾 nightly backup (`nightly-backup`) done\n✅ run-job db-backup in prod: job "
                                    "`db-backup-opsbot-x` completed in 3s"))

    world.clock.now = datetime(2024, 5, 5, 1, 0, 5, tzinfo=UTC)
    await bot.scheduler.run_due()
    # Every target here is on Kubernetes: nothing to prune, and it says so.
    assert bot.posts[-1][1] == ("🧹 image prune (`weekly-prune`) done\n⏭️ prune: no Docker hosts among these targets "
                                "(Kubernetes collects images itself)")

    world.clock.now = datetime(2024, 5, 6, 2, 0, 5, tzinfo=UTC)
    await bot.scheduler.run_due()
    assert ("restart", "auth", "staging") in world.platform.calls
    (window,) = await bot.service.active()
    assert window.source == "recurring:monday-restart" and window.reason == "weekly restart"
    world.clock.now += timedelta(minutes=15)
    await bot.scheduler.run_due()
    assert (await bot.service.get(window.id)).state == "done"

    # Dropped from the config: its job goes at the next start.
    world.settings.maintenance.recurring.pop("weekly-prune")
    await bot.service.schedule_recurring()
    assert "recurring:weekly-prune" not in {j.id for j in await bot.scheduler.jobs("recurring:")}


async def test_a_recurring_run_missed_while_down_is_reported_and_skipped(world: World):
    world.settings = settings_for(world.tmp_path, maintenance={"recurring": RECURRING})
    world.clock.now = datetime(2024, 5, 4, 23, 0, tzinfo=UTC)
    first = await world.start()
    await first.service.schedule_recurring()
    await world.stop(first)
    world.clock.now = datetime(2024, 5, 7, 5, 0, tzinfo=UTC)  # down over two backups: they coalesce
    second = await world.start()
    await second.scheduler.run_due()
    assert world.platform.calls == []
    missed = [t for _, t in second.posts if t.startswith("⏰ recurring `nightly-backup`")]
    assert missed == [("⏰ recurring `nightly-backup` (run-job) was due 2024-05-07 00:00 UTC (02:00 CEST, "
                      "Europe/Berlin) but the bot was not running then; it was skipped (found 5h late, beyond the 5m "
                      "grace time). It runs again at its next time.")]
    # The next run happens as usual.
    (job,) = [j for j in await second.scheduler.jobs("recurring:nightly-backup")]
    assert job.next_run == datetime(2024, 5, 8, 0, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- TLS


def make_cert(directory: Path, days: int) -> tuple[Path, Path]:
    openssl = require_program("openssl")
    cert, key = directory / f"cert{days}.pem", directory / f"key{days}.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", str(days), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    cert, key = make_cert(tmp_path, 30)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    yield port, cert
    server.close()
    await server.wait_closed()


async def test_tls_check_warns_once_per_threshold_and_says_expiry(world: World, tls_server):
    port, cert = tls_server
    trusted = TlsEndpoint(host="127.0.0.1", port=port, server_name="localhost", ca_file=cert)
    untrusted = TlsEndpoint(host="127.0.0.1", port=port, server_name="localhost")
    closed = TlsEndpoint(host="127.0.0.1", port=1, timeout_seconds=2)
    now = datetime.now(UTC)
    world.clock.now = now
    checker = TlsChecker(world.db, clock=world.clock)

    findings = await checker.check([trusted], [14, 7, 1])
    assert findings[0].verify_error is None and 29 < findings[0].days_left < 30.1
    assert checker.report("tls", findings) is None  # 30 days left: nothing to say

    world.clock.now = now + timedelta(days=17)  # 13 days left
    text = checker.report("tls", await checker.check([trusted], [14, 7, 1]))
    assert text is not None and f"🟡 `localhost:{port}`: the certificate expires in 12 days" in text
    assert checker.report("tls", await checker.check([trusted], [14, 7, 1])) is None  # said once

    world.clock.now = now + timedelta(days=24)  # 6 days left: the 7-day warning
    text = checker.report("tls", await checker.check([trusted], [14, 7, 1]))
    assert text is not None and "🟠" in text
    world.clock.now = now + timedelta(days=29, hours=12)
    text = checker.report("tls", await checker.check([trusted], [14, 7, 1]))
    assert text is not None and "🔴" in text and "hours" in text
    world.clock.now = now + timedelta(days=31)
    text = checker.report("tls", await checker.check([trusted], [14, 7, 1]))
    assert text is not None and "the certificate **expired** 1d ago" in text
    assert checker.report("tls", await checker.check([trusted], [14, 7, 1])) is not None  # expired: every time

    world.clock.now = now
    text = checker.report("tls", await checker.check([untrusted, closed], [14, 7, 1]))
    assert text is not None
    assert "does not verify: self-signed certificate" in text
    assert "`127.0.0.1:1`: cannot check the certificate:" in text


def test_der_validity_reader_agrees_with_openssl(tmp_path: Path):
    cert, _ = make_cert(tmp_path, 10)
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    not_before, not_after = validity(der)
    out = subprocess.run([require_program("openssl"), "x509", "-in", str(cert), "-noout", "-enddate"],
                         capture_output=True, text=True, check=True).stdout
    expected = datetime.strptime(out.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
    assert not_after == expected and not_after - not_before == timedelta(days=10)


# --------------------------------------------------------------------------- digest


class FakeAlerts:
    def __init__(self, incidents) -> None:
        self._incidents = incidents

    async def incidents(self, open_only: bool = True, **kw):
        return self._incidents


async def test_the_digest_counts_deploys_rollbacks_and_incidents(world: World):
    from types import SimpleNamespace

    audit = AuditLog(world.db, clock=world.clock)
    world.clock.now = T0 - timedelta(days=10)
    await audit.record(user_id=1, user_name="mod", action="deploy", service="chat", env="prod", result="ok",
                       args={"version": "v0.9"})  # too old
    world.clock.now = T0 - timedelta(days=2)
    for version, result in (("v1.1", "ok"), ("v1.2", "rolled_back"), ("v1.3", "ok")):
        await audit.record(user_id=1, user_name="mod", action="deploy", service="chat", env="prod", result=result,
                           args={"version": version})
    await audit.record(user_id=2, user_name="oncall", action="rollback", service="auth", env="prod", result="ok",
                       args={"version": "v1.3.0"})
    await audit.record(user_id=3, user_name="admin", action="deploy:force", service="chat", env="prod", result="ok")
    incident = {"title": "HighErrorRate", "service": "chat", "env": "prod", "open": False}
    incidents = [SimpleNamespace(**incident, severity="critical", opened_at=T0 - timedelta(days=1),
                                 acked_at=T0 - timedelta(days=1) + timedelta(minutes=4)),
                 SimpleNamespace(**{**incident, "open": True}, severity="warning", opened_at=T0 - timedelta(hours=2),
                                 acked_at=None),
                 SimpleNamespace(**incident, severity="critical", opened_at=T0 - timedelta(days=9), acked_at=None)]
    text = await build_digest(audit, FakeAlerts(incidents), T0, timedelta(days=7))
    assert text.splitlines() == [
        "📰 **Digest** of the last 7d: 2024-04-24 12:00 UTC → 2024-05-01 12:00 UTC",
        "🚀 Deploys: 3 (2 ok, 1 rolled back automatically) — chat prod ×3",
        "↩️ Rollbacks: 1 — auth prod to v1.3.0 by oncall",
        "🧊 Forced past a freeze: 1 — chat prod by admin",
        ("🚨 Incidents: 2 opened (1 critical, 1 warning), 1 still open, 1 acknowledged (median time to ack 4m) — "
        "most: HighErrorRate (chat prod) ×2"),
    ]
