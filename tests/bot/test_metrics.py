"""Metrics in chat against a real Prometheus scraping the sandbox (tests/conftest_prometheus.py):
`!status` numbers, `!graph` PNGs, `!query` tables, Prometheus down or slow, bad PromQL."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import struct
import threading
import time

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from PIL import Image

from commands.charts import CHART_SIZE
from commands.metrics import MetricsService, PrometheusClient, format_value, render_template
from tests.bot.helpers import embed_text, say

pytestmark = pytest.mark.integration


def fields(message) -> dict[str, str]:
    return {f.name: f.value for e in message.embeds for f in e.fields}


def shown_metrics(value: str) -> tuple[dict[str, str], float]:
    """The Metrics field: title → shown text, and the instant the numbers are from."""
    numbers = dict(re.findall(r"^\S+ \*\*(.+?)\*\* (.+)$", value, re.MULTILINE))
    (at,) = re.findall(r"<t:(\d+):T>", value)
    return numbers, float(at)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


async def test_status_numbers_match_what_prometheus_answers(metrics_world, scraped_sandbox):
    reply = await say(metrics_world, "member", "!status chat prod")
    got = fields(reply)
    assert got["Version"] == "`v1.4.0`" and got["Replicas"] == "3/3 ready"  # the cluster part is there
    numbers, at = shown_metrics(got["Metrics"])
    config = metrics_world.app.settings.metrics
    assert list(numbers) == [config.queries[name].title for name in config.status]
    levels = {}
    for name in config.status:
        template = config.queries[name]
        promql = render_template(template.query, service="chat", env="prod", namespace="prod", deployment="chat",
                                 window=config.rate_window)
        value = scraped_sandbox.prometheus.value(promql, at)
        assert value is not None, f"Prometheus has no {name}"
        assert numbers[template.title] == format_value(value, template.unit), name
        levels[name] = template.level(value)
    # Coloured by the thresholds, whatever the sample: the healthy 0.5 % of 5xx is half the 1 %
    # amber line, and rate() over a few irregular scrapes of a busy machine can double it.
    icons = {"ok": "🟢", "warn": "🟡", "critical": "🔴"}
    for name in ("error_ratio", "latency_p95"):
        assert f"{icons[levels[name]]} **{config.queries[name].title}**" in got["Metrics"], (name, levels)
    # Plausible, and healthy: the seeded world runs no broken version.
    assert numbers["up"] == "100%"
    assert numbers["requests"].endswith(" req/s") and 50 < float(numbers["requests"].split()[0]) < 250
    assert levels["error_ratio"] != "critical" and levels["latency_p95"] == "ok", levels
    green, yellow = 0x2ECC71, 0xF1C40F
    assert reply.embeds[0].colour.value == (yellow if "warn" in levels.values() else green)


async def test_status_overview_has_rate_and_errors_per_service(metrics_world):
    reply = await say(metrics_world, "member", "!status prod")
    (prod,) = reply.embeds
    for f in prod.fields:
        assert f.value.startswith("`v1.4.0` · 3/3 ready"), f.value
        assert re.search(r" · requests [0-9.]+ req/s · 🟢 errors [0-9.]+%$", f.value), f.value


async def test_a_broken_version_shows_in_up_and_the_error_ratio(metrics_world):
    # As `kubectl set image` would: no bot rollback, so the broken surge pod keeps crash-looping.
    apps = k8s.AppsV1Api(k8s_config.new_client_from_config(str(metrics_world.app.settings.kubeconfig)))
    apps.patch_namespaced_deployment("auth", "staging", {"spec": {"template": {"spec": {"containers": [
        {"name": "auth", "image": "registry.local/dgg/auth:v1.6.0-broken"}]}}}})
    deadline = time.monotonic() + 30
    while True:
        reply = await say(metrics_world, "mod", "!status auth staging")
        numbers, _ = shown_metrics(fields(reply)["Metrics"])
        if numbers["errors"] != "no data" and float(numbers["errors"].rstrip("%")) > 5:
            break
        assert time.monotonic() < deadline, fields(reply)["Metrics"]
        await asyncio.sleep(1)
    metrics = fields(reply)["Metrics"]
    # The broken pod takes a third of the traffic and fails most of it, and it is never ready.
    assert "🔴 **errors**" in metrics
    assert "🟡 **up** 66.7%" in metrics
    assert reply.embeds[0].colour.value == 0xE74C3C
    apps.patch_namespaced_deployment("auth", "staging", {"spec": {"template": {"spec": {"containers": [
        {"name": "auth", "image": "registry.local/dgg/auth:v1.5.0"}]}}}})  # the module's sandbox is shared


async def test_graph_is_a_png_of_the_chart_size(metrics_world):
    reply = await say(metrics_world, "member", "!graph chat prod")
    assert reply.content.startswith("📈 `chat` in `prod`: request_rate over the last 1h")
    (attachment,) = reply.attachments
    assert attachment.filename == "chat-prod-request_rate.png"
    data = await attachment.read()
    assert png_size(data) == CHART_SIZE
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == CHART_SIZE
        assert image.getpixel((5, 5))[:3] == (0x31, 0x33, 0x38)  # Discord's dark background


async def test_graph_of_a_metric_over_a_range(metrics_world):
    reply = await say(metrics_world, "member", "!graph auth staging latency_p95 30m")
    assert reply.content.startswith("📈 `auth` in `staging`: latency_p95 over the last 30m")
    assert png_size(await reply.attachments[0].read()) == CHART_SIZE


async def test_graph_of_promql_needs_the_query_grant(metrics_world):
    refused = await say(metrics_world, "member", '!graph chat prod sum by (code) (rate(http_requests_total[1m]))')
    assert refused.content == (f"🚫 {metrics_world.members['member'].mention}, you may not do that — it needs the "
                               "`query` grant. `!perms` shows yours.")
    reply = await say(metrics_world, "oncall", '!graph chat prod sum by (code) (rate(http_requests_total{service="{service}"}[{window}])) 15m')
    assert reply.content.startswith("📈 `chat` in `prod`: PromQL over the last 15m (4 series)")
    assert png_size(await reply.attachments[0].read()) == CHART_SIZE


async def test_graph_of_a_misspelt_metric_suggests_the_name(metrics_world):
    reply = await say(metrics_world, "member", "!graph chat prod eror_ratio")
    assert reply.content.startswith("⚠️ no metric `eror_ratio` — did you mean `error_ratio`?")


@pytest.mark.parametrize("line", ["!query sum(rate(http_requests_total[1m]", "!graph chat prod sum(rate(x[1m]) 1h"])
async def test_bad_promql_is_a_clear_message(metrics_world, line):
    reply = await say(metrics_world, "admin", line)
    assert reply.content.startswith("⚠️ Prometheus rejected the query: "), reply.content
    assert "parse error" in reply.content
    assert "Traceback" not in reply.content and "💥" not in reply.content


async def test_query_answers_with_a_table(metrics_world):
    reply = await say(metrics_world, "oncall", '!query sum by (service) (rate(http_requests_total{env="prod"}[1m]))')
    assert reply.content.startswith("🔎 `sum by (service) (rate(http_requests_total{env=\"prod\"}[1m]))` — vector, 5 series")
    rows = reply.content.split("```")[1].strip().splitlines()
    assert [r.split('"')[1] for r in rows] == ["chat", "chat-gui", "auth", "strims", "modbot"]  # busiest first
    empty = await say(metrics_world, "oncall", '!query up{job="nothing-like-this"}')
    assert empty.content.startswith("∅ nothing matches")


async def test_prometheus_down_status_still_answers(metrics_world, scraped_sandbox, tmp_path):
    from tests.conftest_prometheus import start_prometheus, stop_prometheus

    # A Prometheus of this test's own, scraping the same sandbox, that then goes down.
    prom = start_prometheus(tmp_path / "doomed", [f"127.0.0.1:{scraped_sandbox.sandbox.port}"])
    app = metrics_world.app
    shared = app.prometheus
    app.prometheus = MetricsService(PrometheusClient(prom.url, timeout=2.0), app.settings.metrics)
    try:
        prom.wait_for('kube_pod_status_ready{service="chat"}', ago=3)  # !status looks a moment back
        before = await say(metrics_world, "member", "!status chat prod")
        assert "🟢 **up** 100%" in fields(before)["Metrics"]
        stop_prometheus(prom)

        started = time.monotonic()
        reply = await say(metrics_world, "member", "!status chat prod")
        assert time.monotonic() - started < 5
        got = fields(reply)
        assert got["Version"] == "`v1.4.0`" and got["Replicas"] == "3/3 ready"
        assert got["Metrics"] == f"⚠️ metrics unavailable: cannot reach Prometheus at {prom.url}: connection refused"
        overview = await say(metrics_world, "member", "!status prod")
        assert [e.title for e in overview.embeds] == ["prod"]
        assert all(f.value.startswith("`v1.4.0` · 3/3 ready") for f in overview.embeds[0].fields)
        assert overview.content == f"⚠️ metrics unavailable: cannot reach Prometheus at {prom.url}: connection refused"
        graph = await say(metrics_world, "member", "!graph chat prod")
        assert graph.content.startswith("⚠️ cannot reach Prometheus at") and not graph.attachments
    finally:
        stop_prometheus(prom)
        await app.prometheus.close()
        app.prometheus = shared


class SilentServer:
    """Accepts connections and never answers: a Prometheus that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


async def test_prometheus_slow_status_still_answers(metrics_world):
    silent = SilentServer()
    app = metrics_world.app
    real = app.prometheus
    app.prometheus = MetricsService(PrometheusClient(silent.url, timeout=1.0), app.settings.metrics)
    try:
        started = time.monotonic()
        reply = await say(metrics_world, "member", "!status chat prod")
        took = time.monotonic() - started
        got = fields(reply)
        assert got["Version"] == "`v1.4.0`"
        assert got["Metrics"] == f"⚠️ metrics unavailable: Prometheus at {silent.url} did not answer within 1 s"
        assert took < 5, took
    finally:
        await app.prometheus.close()
        app.prometheus = real
        silent.close()
    await asyncio.sleep(0)


async def test_an_alert_gets_a_graph_of_its_expression_in_its_thread(metrics_world):
    metrics_world.app.settings.alerts.timeline_delay_seconds = 0
    await say(metrics_world, "oncall", "!testalert chat prod")
    graphs = metrics_world.app.alerts.graphs
    assert graphs is not None

    deadline = time.monotonic() + 30
    while not (threads := metrics_world.channels["alerts"].threads) or not [
            m for m in threads[0].history() if m.attachments]:
        assert time.monotonic() < deadline, "no graph in the incident's thread"
        await asyncio.sleep(0.1)
    (post,) = [m for m in threads[0].history() if m.attachments]
    assert post.content.startswith("📈 `sum(rate(http_requests_total{service=\"chat\", env=\"prod\", code=~\"5..\"}[5m]))")
    assert post.content.endswith("over the last hour")
    assert png_size(await post.attachments[0].read()) == CHART_SIZE
    assert "Traceback" not in embed_text(post)


async def test_slash_graph_and_query(metrics_world):
    ops = metrics_world.channels["ops"]
    result = await metrics_world.members["member"].slash(ops, "graph", service="chat", env="prod", what="cpu 15m")
    message = (result.followups[-1] if result.followups else result.response).message
    assert message.content.startswith("📈 `chat` in `prod`: cpu over the last 15m")
    assert png_size(await message.attachments[0].read()) == CHART_SIZE
    result = await metrics_world.members["oncall"].slash(ops, "query", promql='count(kube_pod_status_ready{condition="true"})')
    message = (result.followups[-1] if result.followups else result.response).message
    assert message.content.startswith("🔎 `count(kube_pod_status_ready{condition=\"true\"})` — vector, 1 series")
