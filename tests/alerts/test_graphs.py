"""Alert messages gain a graph of their own expression (generatorURL's g0.expr) in their thread.

A real Prometheus scrapes the sandbox (tests/conftest_prometheus.py); the Notifier is the
in-memory RecordingNotifier, so this is the alerts core alone, without discord.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from alerts.service import AlertService
from commands.charts import CHART_SIZE
from commands.metrics import MetricsService, PrometheusClient
from tests.alerts.conftest import RecordingNotifier, alert, make_db, make_settings, payload
from tests.conftest_prometheus import ScrapedSandbox, free_port

pytestmark = pytest.mark.integration

BUSY = 'sum by (pod) (rate(http_requests_total{service="chat", env="prod", code="200"}[1m])) > 1'
SLOW = 'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{service="auth"}[1m]))) > 0.01'


def generator(expr: str) -> str:
    return f"http://prometheus.example.com/graph?{urlencode({'g0.expr': expr, 'g0.tab': '1'})}"


def with_expr(expr: str, **kw: Any) -> dict[str, Any]:
    a = alert(**kw)
    a["generatorURL"] = generator(expr)
    return a


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


async def open_service(tmp_path: Path, url: str) -> tuple[AlertService, RecordingNotifier]:
    settings = make_settings(tmp_path)
    settings.prometheus_url = url
    notifier = RecordingNotifier()
    metrics = MetricsService(PrometheusClient(url, timeout=2.0), settings.metrics)
    service = AlertService(settings, make_db(tmp_path), notifier, graphs=metrics)
    await service.start()
    return service, notifier


@pytest.fixture
async def graphed(tmp_path: Path, scraped_sandbox: ScrapedSandbox) -> AsyncIterator[tuple[AlertService, RecordingNotifier]]:
    service, notifier = await open_service(tmp_path, scraped_sandbox.prometheus.url)
    yield service, notifier
    await service.stop()


async def settle(service: AlertService) -> None:
    await service.wait_idle()
    assert service.graphs is not None
    await service.graphs.wait()


def graph_posts(posted) -> list[str]:
    return [t for t in posted.thread if t.startswith("📈")]


async def test_the_alerts_expression_is_graphed_in_its_thread(graphed):
    service, notifier = graphed
    await service.ingest(payload([with_expr(BUSY, fp="a1")]))
    await settle(service)
    (message,) = notifier.in_channel("alerts")
    assert graph_posts(message) == [f"📈 `{BUSY}` over the last hour"]
    ((name, png),) = message.thread_files
    assert name == "alert-graph.png" and png_size(png) == CHART_SIZE
    # Joining alerts edit the message; the graph is not posted again.
    await service.ingest(payload([with_expr(BUSY, fp="a1"), with_expr(BUSY, fp="a2", instance="b")]))
    await settle(service)
    assert message.edits >= 1 and len(message.thread_files) == 1


async def test_each_distinct_expression_gets_a_graph(graphed):
    service, notifier = graphed
    await service.ingest(payload([with_expr(BUSY, fp="a1"), with_expr(SLOW, fp="a2", instance="x"),
                                  with_expr(BUSY, fp="a3", instance="y")]))
    await settle(service)
    (message,) = notifier.in_channel("alerts")
    assert sorted(graph_posts(message)) == sorted([f"📈 `{BUSY}` over the last hour", f"📈 `{SLOW}` over the last hour"])
    assert len(message.thread_files) == 2


async def test_an_expression_without_data_says_so(graphed):
    service, notifier = graphed
    await service.ingest(payload([with_expr('rate(nothing_like_this_total[5m]) > 0', fp="n1")]))
    await settle(service)
    (message,) = notifier.in_channel("alerts")
    assert graph_posts(message) == ["📈 no graph: Prometheus has no data for `rate(nothing_like_this_total[5m]) > 0` "
                                    "over the last hour"]
    assert message.thread_files == []


async def test_prometheus_down_costs_the_alert_nothing(tmp_path):
    service, notifier = await open_service(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        await service.ingest(payload([with_expr(BUSY, fp="d1")]))
        await settle(service)
        (message,) = notifier.in_channel("alerts")
        assert "HighLatency" in message.title  # the alert message went out as ever
        (post,) = graph_posts(message)
        assert post.startswith(f"📈 no graph of `{BUSY}`: cannot reach Prometheus at http://127.0.0.1:")
    finally:
        await service.stop()


async def test_an_alert_without_an_expression_gets_no_graph(graphed):
    service, notifier = graphed
    bare = alert(fp="x1")
    bare["generatorURL"] = ""
    await service.ingest(payload([bare]))
    await settle(service)
    (message,) = notifier.in_channel("alerts")
    assert graph_posts(message) == [] and message.thread_files == []
