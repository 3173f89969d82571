"""Fixtures of the alerts tests: a real Alertmanager, a recording Notifier, a running AlertService.

``alertmanager`` starts the Debian package's binary on loopback with its own configuration, data
directory and free ports (no clustering), routes every alert to the opsbot webhook on
``webhook_port`` with a bearer token, and stops it after the test. The test serves the intake on
that port (``serve_intake``).

``RecordingNotifier`` is our own Notifier protocol implemented in memory: it keeps every message's
latest state and every call, and can fail on purpose (``fail(n, ...)``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from alerts.alertmanager import AlertmanagerClient
from alerts.notify import MessageGone, OutMessage, SendError
from alerts.service import AlertService
from commands.db import Database
from config.settings import Settings
from tests.conftest import require_program

TOKEN = "t0ken-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------ notifier


@dataclass
class Posted:
    channel: str
    id: str
    message: OutMessage
    edits: int = 0
    history: list[OutMessage] = field(default_factory=list)
    thread: list[str] = field(default_factory=list)
    thread_files: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return self.message.embeds

    @property
    def title(self) -> str:
        return str(self.message.embeds[0].get("title", "")) if self.message.embeds else ""

    @property
    def colour(self) -> int | None:
        return self.message.embeds[0].get("color") if self.message.embeds else None

    @property
    def text(self) -> str:
        """Everything a reader sees: content, titles, descriptions, fields, footers."""
        parts = [self.message.content]
        for e in self.message.embeds:
            parts += [e.get("title", ""), e.get("description", ""), (e.get("footer") or {}).get("text", "")]
            for f in e.get("fields", []):
                parts += [f["name"], f["value"]]
        return "\n".join(parts)

    @property
    def custom_ids(self) -> list[str]:
        return [b.custom_id for row in self.message.buttons for b in row if b.custom_id]

    @property
    def links(self) -> dict[str, str]:
        return {b.label: b.url for row in self.message.buttons for b in row if b.url}


class RecordingNotifier:
    """The Notifier protocol in memory. ``fail(n)`` makes the next n calls raise."""

    def __init__(self, delay: float = 0.0) -> None:
        self.messages: dict[str, Posted] = {}
        self.calls: list[tuple[str, str, str]] = []  # (op, channel, message id)
        self.times: list[float] = []  # loop time of each call in ``calls``
        self.notices: list[tuple[str, str]] = []
        self._ids = itertools.count(1000)
        self._failures: list[Exception] = []
        self.delay = delay
        self.changed = asyncio.Event()
        self.gate: asyncio.Event | None = None  # when set: every call waits until it is opened
        self.waiting = 0  # calls held at the gate

    def fail(self, times: int, *, retryable: bool = True, retry_after: float | None = None) -> None:
        self._failures += [SendError("injected failure", retryable=retryable, retry_after=retry_after)] * times

    def fail_with(self, exc: Exception, times: int = 1) -> None:
        self._failures += [exc] * times

    async def _maybe_fail(self) -> None:
        if self.gate is not None and not self.gate.is_set():
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._failures:
            raise self._failures.pop(0)

    async def send(self, channel: str, message: OutMessage) -> str:
        await self._maybe_fail()
        mid = str(next(self._ids))
        if message.embeds:
            self.messages[mid] = Posted(channel, mid, message, history=[message])
        else:
            self.notices.append((channel, message.content))
        self.calls.append(("send", channel, mid))
        self.times.append(asyncio.get_running_loop().time())
        self.changed.set()
        return mid

    async def edit(self, channel: str, message_id: str, message: OutMessage) -> None:
        await self._maybe_fail()
        posted = self.messages.get(message_id)
        if posted is None or posted.channel != channel:
            raise MessageGone()
        posted.message = message
        posted.edits += 1
        posted.history.append(message)
        self.calls.append(("edit", channel, message_id))
        self.times.append(asyncio.get_running_loop().time())
        self.changed.set()

    async def thread_post(self, channel: str, message_id: str, thread_name: str, text: str, *,
                          files: Sequence[tuple[str, bytes]] = ()) -> str:
        await self._maybe_fail()
        posted = self.messages.get(message_id)
        if posted is None:
            raise MessageGone()
        posted.thread.append(text)
        posted.thread_files.extend(files)
        self.calls.append(("thread", channel, message_id))
        self.times.append(asyncio.get_running_loop().time())
        self.changed.set()
        return f"thread-{message_id}"

    # -- reading

    def in_channel(self, channel: str) -> list[Posted]:
        return [p for p in self.messages.values() if p.channel == channel]

    def count(self, op: str) -> int:
        return sum(1 for c in self.calls if c[0] == op)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise TimeoutError("the notifier never saw what the test waited for")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 0.1)
            except TimeoutError:
                pass


# ------------------------------------------------------------------------------ payloads


def ts(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


T0 = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)


def alert(
    name: str = "HighLatency",
    *,
    status: str = "firing",
    fp: str | None = None,
    starts: datetime = T0,
    ends: datetime | None = None,
    severity: str = "critical",
    service: str = "chat",
    env: str = "prod",
    **labels: str,
) -> dict[str, Any]:
    all_labels = {"alertname": name, "severity": severity, "service": service, "env": env, **labels}
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": f"{name} on {labels.get('instance', service)}", "runbook_url": "https://runbooks.example.com/x"},
        "startsAt": ts(starts),
        "endsAt": ts(ends) if ends else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example.com/graph?g0.expr=up",
        "fingerprint": fp or hashlib.sha256(json.dumps(all_labels, sort_keys=True).encode()).hexdigest()[:16],
    }


def payload(alerts: list[dict[str, Any]], *, group: str = "g1", receiver: str = "opsbot", **extra: Any) -> dict[str, Any]:
    firing = any(a["status"] == "firing" for a in alerts)
    common: dict[str, str] = {}
    if alerts:
        common = dict(alerts[0]["labels"])
        for a in alerts[1:]:
            common = {k: v for k, v in common.items() if a["labels"].get(k) == v}
    return {
        "version": "4",
        "groupKey": f'{{}}:{{group="{group}"}}',
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": receiver,
        "groupLabels": {"group": group},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example.com",
        "alerts": alerts,
        **extra,
    }


# ------------------------------------------------------------------------------ settings, service


def make_settings(tmp_path: Path, **alerts: Any) -> Settings:
    defaults: dict[str, Any] = {
        "send_rate_operations": 1000,
        "send_rate_seconds": 1.0,
        "retry_initial_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "watchdog_minutes": 0,
        "timeline_delay_seconds": 0,
    }
    defaults.update(alerts)
    return Settings(
        data_dir=tmp_path,
        webhook_token=TOKEN,
        webhook_listen="127.0.0.1:0",
        alerts=defaults,
    )


# The modules whose tests store incidents run on both backends (``alerts_backend``).
DB_MODULES = {"test_alertmanager", "test_intake", "test_intake_limits", "test_lifecycle", "test_outbox",
              "test_service", "test_watchdog"}


class Backend:
    """Where :func:`make_db` puts a test's database: a SQLite file in the directory, or PostgreSQL.

    One database per directory, so making it twice for one directory reopens the same data (a
    restarted bot), on PostgreSQL as on SQLite.
    """

    def __init__(self, name: str, request: pytest.FixtureRequest | None = None) -> None:
        self.name = name
        self._request = request
        self._urls: dict[Path, str] = {}

    def url(self, directory: Path) -> str:
        if self.name == "sqlite":
            return f"sqlite:///{directory / 'opsbot.db'}"
        if directory not in self._urls:
            assert self._request is not None
            if not self._urls:
                self._urls[directory] = self._request.getfixturevalue("postgres_url")
            else:
                server = self._request.getfixturevalue("postgres_server")
                name = server.create_database()
                self._request.addfinalizer(lambda: server.drop_database(name))
                self._urls[directory] = server.url(name)
        return self._urls[directory]


_backend = Backend("sqlite")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__.rsplit(".", 1)[-1] in DB_MODULES:
        metafunc.parametrize("alerts_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(autouse=True)
def alerts_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The backend of :func:`make_db`: both in :data:`DB_MODULES`, SQLite elsewhere."""
    global _backend
    _backend = Backend(getattr(request, "param", "sqlite"), request)
    try:
        yield _backend
    finally:
        _backend = Backend("sqlite")


def make_db(tmp_path: Path) -> Database:
    db = Database(_backend.url(tmp_path))
    db.create_all()
    return db


@dataclass
class Harness:
    """An AlertService on a real SQLite file with the intake served on loopback."""

    service: AlertService
    notifier: RecordingNotifier
    db: Database
    url: str
    runner: web.AppRunner

    async def post(self, body: Any, *, token: str | None = TOKEN, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs.setdefault("Authorization", f"Bearer {token}")
        data = raw if raw is not None else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
        async with aiohttp.ClientSession() as s, s.post(self.url, data=data, headers=hdrs) as r:
            try:
                answer = await r.json(content_type=None)
            except ValueError:
                answer = {}
            return r.status, answer if isinstance(answer, dict) else {}


async def open_harness(
    tmp_path: Path,
    notifier: RecordingNotifier | None = None,
    *,
    port: int = 0,
    alertmanager_url: str | None = None,
    db: Database | None = None,
    clock: Callable[[], datetime] | None = None,
    **alert_settings: Any,
) -> Harness:
    settings = make_settings(tmp_path, **alert_settings)
    if alertmanager_url:
        settings.alertmanager_url = alertmanager_url
    db = db or make_db(tmp_path)
    notifier = notifier or RecordingNotifier()
    kwargs: dict[str, Any] = {"clock": clock} if clock else {}
    service = AlertService(settings, db, notifier, **kwargs)
    app = web.Application()
    app.add_routes(service.routes())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    real_port = runner.addresses[0][1]
    await service.start()
    return Harness(service, notifier, db, f"http://127.0.0.1:{real_port}/alerts/alertmanager", runner)


async def close_harness(h: Harness, *, dispose: bool = True) -> None:
    await h.service.stop()
    await h.runner.cleanup()
    if dispose:
        h.db.dispose()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = await open_harness(tmp_path)
    yield h
    await close_harness(h)


# ------------------------------------------------------------------------------ Alertmanager


def alertmanager_binary() -> str:
    """Debian installs it as prometheus-alertmanager; upstream tarballs as alertmanager."""
    return shutil.which("alertmanager") or shutil.which("prometheus-alertmanager") or require_program("alertmanager")


def alertmanager_config(webhook_url: str, token: str, *, group_by: list[str], group_wait: str = "200ms",
                        group_interval: str = "500ms", extra_receivers: str = "", extra_routes: str = "") -> str:
    return f"""
global:
  resolve_timeout: 5m
route:
  receiver: opsbot
  group_by: {json.dumps(group_by)}
  group_wait: {group_wait}
  group_interval: {group_interval}
  repeat_interval: 4h
  routes:
{extra_routes or "    []"}
receivers:
  - name: opsbot
    webhook_configs:
      - url: {json.dumps(webhook_url)}
        send_resolved: true
        max_alerts: 0
        http_config:
          authorization:
            type: Bearer
            credentials: {json.dumps(token)}
{extra_receivers}
"""


@dataclass
class AlertmanagerProc:
    url: str
    webhook_port: int
    token: str
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}/alerts/alertmanager"

    def client(self) -> AlertmanagerClient:
        return AlertmanagerClient(self.url, timeout=5)

    async def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        async with self.client() as c:
            await c.post_alerts(alerts)

    def amtool(self, *args: str) -> str:
        exe = shutil.which("amtool") or require_program("amtool")
        proc = subprocess.run([exe, f"--alertmanager.url={self.url}", *args],
                              capture_output=True, text=True, timeout=20, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def log(self) -> str:
        return (self.directory / "alertmanager.log").read_text(errors="replace")[-4000:]


async def start_alertmanager(directory: Path, config: str, *, webhook_port: int, token: str) -> AlertmanagerProc:
    exe = alertmanager_binary()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "alertmanager.yml").write_text(config)
    port = free_port()
    log = open(directory / "alertmanager.log", "wb")  # noqa: SIM115, ASYNC230 - a local file, closed below
    process = subprocess.Popen(  # noqa: ASYNC220 - a long-running server, not awaited
        [
            exe,
            f"--config.file={directory / 'alertmanager.yml'}",
            f"--storage.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=info",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GOMAXPROCS": "2"},
    )
    log.close()
    am = AlertmanagerProc(f"http://127.0.0.1:{port}", webhook_port, token, directory, process)
    deadline = asyncio.get_running_loop().time() + 20
    async with aiohttp.ClientSession() as s:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"alertmanager exited: {am.log()}")
            try:
                async with s.get(f"{am.url}/-/ready") as r:
                    if r.status == 200:
                        return am
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                stop_alertmanager(am)
                raise RuntimeError(f"alertmanager did not become ready: {am.log()}")
            await asyncio.sleep(0.1)


def stop_alertmanager(am: AlertmanagerProc) -> None:
    if am.process.poll() is None:
        am.process.terminate()
        try:
            am.process.wait(5)
        except subprocess.TimeoutExpired:
            am.process.kill()
            am.process.wait(5)


@pytest.fixture
async def alertmanager(tmp_path: Path) -> AsyncIterator[AlertmanagerProc]:
    """A real Alertmanager grouping by alertname/service/env and posting to ``webhook_port``."""
    webhook_port = free_port()
    config = alertmanager_config(
        f"http://127.0.0.1:{webhook_port}/alerts/alertmanager", TOKEN, group_by=["alertname", "service", "env"]
    )
    am = await start_alertmanager(tmp_path / "alertmanager", config, webhook_port=webhook_port, token=TOKEN)
    yield am
    stop_alertmanager(am)


def am_alert(name: str, *, service: str = "chat", env: str = "prod", severity: str = "critical",
             ends: datetime | None = None, **labels: str) -> dict[str, Any]:
    """An alert as Prometheus posts it to Alertmanager (API v2)."""
    body: dict[str, Any] = {
        "labels": {"alertname": name, "service": service, "env": env, "severity": severity, **labels},
        "annotations": {"summary": f"{name} on {labels.get('instance', service)}",
                        "runbook_url": f"https://runbooks.example.com/{name}"},
        "generatorURL": "http://prometheus.example.com/graph?g0.expr=up%3D%3D0",
        "startsAt": ts(datetime.now(UTC) - timedelta(seconds=30)),
    }
    if ends is not None:
        body["endsAt"] = ts(ends)
    return body
