"""opsbot's alert relay side by side with Alertmanager's own ``discord_configs``, against a Discord stub.

    python bench/alerts_relay.py [--trials 40] [--groups 50] [--per-group 20]
                                 [--pace 50/1] [--discord-limit 0/1]

One real Alertmanager (the Debian package) routes every alert group to two receivers: the opsbot
webhook (intake → store → outbox → a Notifier speaking Discord's REST API) and Alertmanager's
native Discord integration. Both end at one local stub of Discord (aiohttp on loopback): the bot
API routes opsbot uses (create, edit, thread) and the webhook route ``discord_configs`` posts to.

1. Latency: ``--trials`` single alerts, one after another. For each, the time from posting it to
   Alertmanager until its message reaches the stub, for both paths (same group_wait); and for
   opsbot also webhook-arrival → message. p50/p99.
2. Storm: ``--groups`` × ``--per-group`` alerts in three waves: half of each group fires, the
   other half joins, then everything resolves. Discord calls against the minimum (one create per
   group plus one edit per group per later wave), messages left per group, and how many alerts a
   reader can find in the channel (opsbot: fields plus the JSON attachment; native: its text).

``--pace N/S`` is opsbot's own pacing per channel (5/5 is what Discord allows a channel; the
default 50/1 keeps the run short). ``--discord-limit N/S`` makes the stub answer 429 like Discord
above N calls per S seconds per channel or webhook (0 = never).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.alertmanager import AlertmanagerClient
from alerts.models import IngestResult, WebhookPayload
from alerts.notify import MessageGone, OutMessage, SendError
from alerts.service import AlertService
from commands.db import Database
from config.settings import load_settings

TOKEN = "bench-token"
CHANNEL = "alerts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ts(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


# ------------------------------------------------------------------------------ Discord stub


@dataclass
class Call:
    at: float
    who: str  # "opsbot" | "native"
    op: str  # create | edit | thread | webhook
    target: str
    text: str
    status: int


@dataclass
class DiscordStub:
    """Discord's REST routes opsbot and Alertmanager use, recorded; optionally rate limited."""

    limit: tuple[int, float] = (0, 1.0)
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> latest state
    _ids: int = 10**17
    _windows: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.calls.clear()
        self.messages.clear()

    def _limited(self, bucket: str) -> float | None:
        n, per = self.limit
        if n <= 0:
            return None
        now = time.monotonic()
        window = self._windows[bucket]
        while window and window[0] <= now - per:
            window.popleft()
        if len(window) >= n:
            return window[0] + per - now
        window.append(now)
        return None

    def _next_id(self) -> str:
        self._ids += 1
        return str(self._ids)

    def _record(self, who: str, op: str, target: str, text: str, status: int) -> None:
        self.calls.append(Call(time.monotonic(), who, op, target, text, status))
        self.arrived.set()

    @staticmethod
    def _too_many(after: float) -> web.Response:
        return web.json_response({"message": "You are being rate limited.", "retry_after": round(after, 3),
                                  "global": False}, status=429, headers={"Retry-After": f"{after:.3f}"})

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], list[bytes]]:
        if request.content_type.startswith("multipart/"):
            payload: dict[str, Any] = {}
            files: list[bytes] = []
            reader = await request.multipart()
            async for part in reader:
                data = await part.read()  # type: ignore[union-attr]
                if part.name == "payload_json":  # type: ignore[union-attr]
                    payload = json.loads(data)
                else:
                    files.append(bytes(data))
            return payload, files
        return await request.json(), []

    async def create(self, request: web.Request) -> web.Response:
        channel = request.match_info["channel"]
        after = self._limited(f"channel:{channel}")
        body, files = await self._body(request)
        text = json.dumps(body, ensure_ascii=False)
        if after is not None:
            self._record("opsbot", "create", channel, text, 429)
            return self._too_many(after)
        mid = self._next_id()
        self.messages[mid] = {"who": "opsbot", "body": body, "files": files}
        self._record("opsbot", "create", channel, text, 200)
        return web.json_response({"id": mid, "channel_id": channel})

    async def edit(self, request: web.Request) -> web.Response:
        channel, mid = request.match_info["channel"], request.match_info["message"]
        after = self._limited(f"channel:{channel}")
        body, files = await self._body(request)
        text = json.dumps(body, ensure_ascii=False)
        if after is not None:
            self._record("opsbot", "edit", channel, text, 429)
            return self._too_many(after)
        if mid not in self.messages:
            self._record("opsbot", "edit", channel, text, 404)
            return web.json_response({"message": "Unknown Message", "code": 10008}, status=404)
        self.messages[mid] = {"who": "opsbot", "body": body, "files": files}
        self._record("opsbot", "edit", channel, text, 200)
        return web.json_response({"id": mid})

    async def thread(self, request: web.Request) -> web.Response:
        channel = request.match_info["channel"]
        after = self._limited(f"channel:{channel}")
        body = await request.json()
        if after is not None:
            self._record("opsbot", "thread", channel, "", 429)
            return self._too_many(after)
        self._record("opsbot", "thread", channel, json.dumps(body), 200)
        return web.json_response({"id": self._next_id()})

    async def webhook(self, request: web.Request) -> web.Response:
        hook = request.match_info["hook"]
        after = self._limited(f"webhook:{hook}")
        body = await request.json()
        text = json.dumps(body, ensure_ascii=False)
        if after is not None:
            self._record("native", "webhook", hook, text, 429)
            return self._too_many(after)
        self.messages[self._next_id()] = {"who": "native", "body": body, "files": []}
        self._record("native", "webhook", hook, text, 204)
        return web.Response(status=204)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([
            web.post("/api/v10/channels/{channel}/messages", self.create),
            web.patch("/api/v10/channels/{channel}/messages/{message}", self.edit),
            web.post("/api/v10/channels/{channel}/messages/{message}/threads", self.thread),
            web.post("/api/v10/channels/{channel}/thread-posts", self.thread),
            web.post("/api/webhooks/{hook}/{token}", self.webhook),
        ])
        return app


class StubNotifier:
    """The Notifier protocol over Discord's bot REST routes (here: the stub), 429 → SendError."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session: aiohttp.ClientSession | None = None
        self.threads: dict[str, str] = {}

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self.session:
            await self.session.close()

    def _payload(self, message: OutMessage) -> Any:
        body = {
            "content": message.content,
            "embeds": message.embeds,
            "components": [
                {"type": 1, "components": [
                    {"type": 2, "label": b.label, "custom_id": b.custom_id, "url": b.url} for b in row]}
                for row in message.buttons
            ],
            "allowed_mentions": {"parse": [], "roles": [str(r) for r in message.mention_roles]},
            "nonce": message.nonce,
            "attachments": [{"id": i, "filename": name} for i, (name, _) in enumerate(message.files)],
        }
        if not message.files:
            return body
        form = aiohttp.FormData()
        form.add_field("payload_json", json.dumps(body), content_type="application/json")
        for i, (name, data) in enumerate(message.files):
            form.add_field(f"files[{i}]", data, filename=name, content_type="application/json")
        return form

    async def _call(self, method: str, path: str, payload: Any) -> dict[str, Any]:
        assert self.session is not None
        kwargs: dict[str, Any] = {"json": payload} if isinstance(payload, dict) else {"data": payload}
        async with self.session.request(method, f"{self.base}{path}", **kwargs) as r:
            if r.status == 429:
                data = await r.json()
                raise SendError("429", retry_after=float(data.get("retry_after", 1)))
            if r.status == 404:
                raise MessageGone()
            if r.status >= 500:
                raise SendError(f"{r.status}")
            if r.status >= 400:
                raise SendError(f"{r.status}: {await r.text()}", retryable=False)
            return await r.json()  # type: ignore[no-any-return]

    async def send(self, channel: str, message: OutMessage) -> str:
        data = await self._call("POST", f"/api/v10/channels/{channel}/messages", self._payload(message))
        return str(data["id"])

    async def edit(self, channel: str, message_id: str, message: OutMessage) -> None:
        await self._call("PATCH", f"/api/v10/channels/{channel}/messages/{message_id}", self._payload(message))

    async def thread_post(self, channel: str, message_id: str, thread_name: str, text: str) -> str:
        thread = self.threads.get(message_id)
        if thread is None:
            data = await self._call("POST", f"/api/v10/channels/{channel}/messages/{message_id}/threads",
                                    {"name": thread_name})
            thread = self.threads[message_id] = str(data["id"])
        await self._call("POST", f"/api/v10/channels/{thread}/thread-posts", {"content": text})
        return thread


# ------------------------------------------------------------------------------ Alertmanager


def am_binary() -> str:
    exe = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")
    if not exe:
        sys.exit("needs Alertmanager: apt-get install prometheus-alertmanager (or scripts/setup --system)")
    return exe


def am_config(webhook_url: str, discord_url: str) -> str:
    return f"""
route:
  receiver: opsbot
  group_by: [alertname]
  group_wait: 100ms
  group_interval: 1s
  repeat_interval: 4h
  routes:
    - receiver: opsbot
      continue: true
    - receiver: discord
receivers:
  - name: opsbot
    webhook_configs:
      - url: {json.dumps(webhook_url)}
        send_resolved: true
        max_alerts: 0
        http_config: {{authorization: {{type: Bearer, credentials: {json.dumps(TOKEN)}}}}}
  - name: discord
    discord_configs:
      - webhook_url: {json.dumps(discord_url)}
        send_resolved: true
"""


async def start_am(workdir: Path, config: str) -> tuple[subprocess.Popen[bytes], str]:
    (workdir / "am.yml").write_text(config)
    port = free_port()
    log = open(workdir / "am.log", "wb")  # noqa: SIM115, ASYNC230
    proc = subprocess.Popen(  # noqa: ASYNC220
        [am_binary(), f"--config.file={workdir / 'am.yml'}", f"--storage.path={workdir / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            if proc.poll() is not None:
                sys.exit("alertmanager exited:\n" + (workdir / "am.log").read_text()[-2000:])
            try:
                async with s.get(f"{url}/-/ready") as r:
                    if r.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    sys.exit("alertmanager did not become ready:\n" + (workdir / "am.log").read_text()[-2000:])


def alert(name: str, *, group: str, instance: str, ends: datetime | None = None, severity: str = "warning") -> dict[str, Any]:
    body: dict[str, Any] = {
        "labels": {"alertname": name, "service": group, "env": "prod", "severity": severity, "instance": instance},
        "annotations": {"summary": f"{name} on {instance}", "description": f"{instance} is slow (p99 2.3s)",
                        "runbook_url": "https://runbooks.example.com/latency"},
        "generatorURL": "http://prometheus.example.com/graph?g0.expr=latency",
        "startsAt": ts(datetime.now(UTC) - timedelta(seconds=5)),
    }
    if ends is not None:
        body["endsAt"] = ts(ends)
    return body


# ------------------------------------------------------------------------------ the run


class TimedService(AlertService):
    """Notes when each webhook arrives, by alertname, for webhook-to-message latency."""

    arrivals: dict[str, float]

    async def ingest(self, payload: WebhookPayload | dict[str, Any]) -> IngestResult:
        if isinstance(payload, WebhookPayload):
            name = payload.common_labels.get("alertname", "")
            self.arrivals.setdefault(name, time.monotonic())
        return await super().ingest(payload)


def visible_native(stub: DiscordStub) -> set[str]:
    found: set[str] = set()
    for m in stub.messages.values():
        if m["who"] == "native":
            found.update(re.findall(r"g\d+-i\d+", json.dumps(m["body"])))
    return found


def visible_opsbot(stub: DiscordStub) -> set[str]:
    found: set[str] = set()
    for m in stub.messages.values():
        if m["who"] != "opsbot":
            continue
        for e in m["body"].get("embeds", []):
            for f in e.get("fields", []):
                found.update(re.findall(r"instance=(g\d+-i\d+)", f["name"]))
        for data in m["files"]:
            found.update(a["labels"]["instance"] for a in json.loads(data)["alerts"])
    return found


async def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def run(args: argparse.Namespace) -> None:
    pace_n, pace_s = (float(x) for x in args.pace.split("/"))
    lim_n, lim_s = (float(x) for x in args.discord_limit.split("/"))
    workdir = Path(tempfile.mkdtemp(prefix="opsbot-bench-"))
    stub = DiscordStub(limit=(int(lim_n), lim_s))
    stub_runner = web.AppRunner(stub.app())
    await stub_runner.setup()
    await web.TCPSite(stub_runner, "127.0.0.1", 0).start()
    stub_url = f"http://127.0.0.1:{stub_runner.addresses[0][1]}"

    settings = load_settings(None, data_dir=workdir, webhook_token=TOKEN, alerts={
        "send_rate_operations": int(pace_n), "send_rate_seconds": pace_s, "watchdog_minutes": 0,
        "retry_initial_seconds": 0.2, "retry_max_seconds": 5,
    })
    db = Database(f"sqlite:///{workdir / 'opsbot.db'}")
    db.create_all()
    notifier = StubNotifier(stub_url)
    await notifier.start()
    service = TimedService(settings, db, notifier)
    service.arrivals = {}
    intake = web.Application()
    intake.add_routes(service.routes())
    intake_runner = web.AppRunner(intake)
    await intake_runner.setup()
    await web.TCPSite(intake_runner, "127.0.0.1", 0).start()
    webhook_url = f"http://127.0.0.1:{intake_runner.addresses[0][1]}/alerts/alertmanager"
    proc, am_url = await start_am(workdir, am_config(webhook_url, f"{stub_url}/api/webhooks/1/bench"))
    settings.alertmanager_url = am_url
    service._alertmanager = AlertmanagerClient(am_url)
    await service.start()
    am = AlertmanagerClient(am_url)
    try:
        version = subprocess.run([am_binary(), "--version"], capture_output=True, text=True, check=False)  # noqa: ASYNC221
        print(f"Alertmanager {version.stdout.split()[2]}"
              f", opsbot pacing {args.pace} per channel, stub limit {args.discord_limit} (0 = none)")
        await latency(args, stub, service, am)
        await asyncio.sleep(2)
        await storm(args, stub, service, am)
    finally:
        await am.close()
        await service.stop()
        if service._alertmanager is not None:
            await service._alertmanager.close()
        await notifier.close()
        await intake_runner.cleanup()
        await stub_runner.cleanup()
        proc.terminate()
        proc.wait(5)
        db.dispose()
        shutil.rmtree(workdir, ignore_errors=True)


async def latency(args: argparse.Namespace, stub: DiscordStub, service: TimedService, am: AlertmanagerClient) -> None:
    ops, native, internal = [], [], []
    missing = 0
    for i in range(args.trials):
        name = f"Lat{i:03d}"
        needle = f'"{name}'
        start = time.monotonic()
        await am.post_alerts([alert(name, group="latency", instance=f"web-{i}")])

        def arrived(who: str, start: float = start, needle: str = needle, name: str = name) -> float | None:
            for c in stub.calls:
                if c.who == who and c.status < 300 and c.at >= start and (needle in c.text or f"{name} " in c.text):
                    return c.at
            return None

        ok = await wait_until(lambda: arrived("opsbot") is not None and arrived("native") is not None, 15)
        if not ok:
            missing += 1
            continue
        t_ops, t_native = arrived("opsbot"), arrived("native")
        assert t_ops is not None and t_native is not None
        ops.append((t_ops - start) * 1000)
        native.append((t_native - start) * 1000)
        internal.append((t_ops - service.arrivals[name]) * 1000)
        await asyncio.sleep(0.05)
    print(f"\nlatency over {len(ops)} alerts ({missing} timed out), alert posted to Alertmanager → message at the stub:")
    print(f"  {'':34} {'p50':>9} {'p99':>9}")
    print(f"  {'opsbot (webhook → outbox → REST)':34} {pct(ops, 50):8.1f}ms {pct(ops, 99):8.1f}ms")
    print(f"  {'Alertmanager discord_configs':34} {pct(native, 50):8.1f}ms {pct(native, 99):8.1f}ms")
    print(f"  {'opsbot webhook arrival → message':34} {pct(internal, 50):8.1f}ms {pct(internal, 99):8.1f}ms")
    if native and ops:
        print(f"  ratio opsbot/native: p50 {pct(ops, 50) / pct(native, 50):.2f}, p99 {pct(ops, 99) / pct(native, 99):.2f}")


async def storm(args: argparse.Namespace, stub: DiscordStub, service: TimedService, am: AlertmanagerClient) -> None:
    groups, per = args.groups, args.per_group
    half = per // 2
    await service.wait_idle(60)
    stub.reset()
    names = [f"Storm{g:02d}" for g in range(groups)]

    def batch(lo: int, hi: int, ends: datetime | None = None) -> list[dict[str, Any]]:
        return [alert(names[g], group=f"svc{g:02d}", instance=f"g{g}-i{i}", ends=ends,
                      severity="critical" if g % 10 == 0 else "warning")
                for g in range(groups) for i in range(lo, hi)]

    def native_done(n: int) -> bool:
        return sum(1 for c in stub.calls if c.who == "native" and c.status < 300) >= n

    async def messages_current(delivered: int) -> None:
        # Wait for opsbot's messages (not its timeline, which batches on purpose) to be current.
        for _ in range(30000):
            if service.intake.counts.get(200, 0) >= delivered and not await service._db.run(
                    service.store.pending_deliveries):
                return
            await asyncio.sleep(0.01)

    started = time.monotonic()
    base = service.intake.counts.get(200, 0)
    await am.post_alerts(batch(0, half))
    await wait_until(lambda: native_done(groups), 60)
    await messages_current(base + groups)
    await asyncio.sleep(1.2)  # past group_interval: the joins go out as updates
    await am.post_alerts(batch(0, per))
    await wait_until(lambda: native_done(2 * groups), 60)
    await messages_current(base + 2 * groups)
    await asyncio.sleep(1.2)
    await am.post_alerts(batch(0, per, ends=datetime.now(UTC)))
    await wait_until(lambda: native_done(3 * groups), 60)
    await messages_current(base + 3 * groups)
    await asyncio.sleep(1.5)  # anything late
    await service.wait_idle(300)
    took = time.monotonic() - started

    calls = Counter((c.who, c.op, c.status) for c in stub.calls)
    ops_msg = sum(n for (who, op, st), n in calls.items() if who == "opsbot" and op in ("create", "edit"))
    ops_thread = sum(n for (who, op, st), n in calls.items() if who == "opsbot" and op == "thread")
    ops_429 = sum(n for (who, op, st), n in calls.items() if who == "opsbot" and st == 429)
    native_calls = sum(n for (who, op, st), n in calls.items() if who == "native")
    native_429 = sum(n for (who, op, st), n in calls.items() if who == "native" and st == 429)
    minimum = groups + 2 * groups  # one create per group + one edit per group per later wave
    ops_messages = sum(1 for m in stub.messages.values() if m["who"] == "opsbot")
    native_messages = sum(1 for m in stub.messages.values() if m["who"] == "native")
    total = groups * per
    print(f"\nstorm: {total} alerts in {groups} groups (half fire, half join, all resolve), {took:.1f}s")
    print(f"  minimum Discord calls: {groups} creates + {2 * groups} edits = {minimum}")
    ops_msg_429 = sum(n for (who, op, st), n in calls.items() if who == "opsbot" and op in ("create", "edit")
                      and st == 429)
    print(f"  {'':30} {'calls':>7} {'x min':>6} {'429s':>5} {'ok':>5} {'messages':>9} {'alerts visible':>15}")
    print(f"  {'opsbot messages (create+edit)':30} {ops_msg:7d} {ops_msg / minimum:6.2f} {ops_msg_429:5d} "
          f"{ops_msg - ops_msg_429:5d} {ops_messages:9d} {len(visible_opsbot(stub)):>10d}/{total}")
    print(f"  {'opsbot thread (timeline)':30} {ops_thread:7d} {'':6} {ops_429 - ops_msg_429:5d}")
    print(f"  {'opsbot all':30} {ops_msg + ops_thread:7d} {(ops_msg + ops_thread) / minimum:6.2f} {ops_429:5d}")
    print(f"  {'Alertmanager discord_configs':30} {native_calls:7d} {native_calls / minimum:6.2f} {native_429:5d} "
          f"{native_calls - native_429:5d} {native_messages:9d} {len(visible_native(stub)):>10d}/{total}")
    print(f"  messages per group: opsbot {ops_messages / groups:.2f}, native {native_messages / groups:.2f}"
          f"; opsbot coalesced {service.outbox.stats['edit']} edits, {service.outbox.stats['failed']} failed sends retried")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--per-group", type=int, default=20)
    parser.add_argument("--pace", default="50/1", help="opsbot's operations per seconds per channel")
    parser.add_argument("--discord-limit", default="0/1", help="the stub's calls per seconds before 429 (0 = none)")
    args = parser.parse_args()
    os.environ.setdefault("GOMAXPROCS", "2")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
