"""A real Prometheus (the Debian package's binary) scraping a sandbox, for the metrics tests.

``start_prometheus`` runs it on loopback with its own configuration, TSDB directory and free
port, scraping the given targets every second; ``stop_prometheus`` ends it. The fixtures:

- ``scraped_sandbox``: a sandbox cluster over HTTP (rollouts 20x faster) and a Prometheus
  scraping its ``/metrics``, started once rates can be computed (a few scrapes in);
- ``metrics_world``: the whole embedded world (the bot on simcord) on that sandbox, with
  ``prometheus_url`` pointing at that Prometheus.

Imported by tests/conftest.py, as the dockerd fixture is.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SCRAPE_INTERVAL = "1s"
RATE_WINDOW = "5s"  # {window} in the tests' templates: a few scrapes, so rates settle in seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_config(targets: list[str], *, interval: str = SCRAPE_INTERVAL) -> str:
    return f"""
global:
  scrape_interval: {interval}
  scrape_timeout: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: sandbox
    static_configs:
      - targets: {json.dumps(targets)}
"""


@dataclass
class PrometheusProc:
    url: str
    directory: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")[-4000:]

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of the answer."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result (a vector), at unix time ``at``."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]  # type: ignore[no-any-return]

    def value(self, promql: str, at: float | None = None) -> float | None:
        result = self.query(promql, at)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, timeout: float = 30.0, *, ago: float = 0.0) -> None:
        """Until ``promql`` has a non-empty answer ``ago`` seconds back (the scrapes it needs happened)."""
        deadline = time.monotonic() + timeout
        while not self.query(promql, time.time() - ago):
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus has no answer to {promql!r} after {timeout}s: {self.log()}")
            time.sleep(0.2)


def start_prometheus(directory: Path, targets: list[str], *, interval: str = SCRAPE_INTERVAL) -> PrometheusProc:
    from tests.conftest import require_program

    exe = require_program("prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prometheus.yml").write_text(prometheus_config(targets, interval=interval))
    port = free_port()
    log = open(directory / "prometheus.log", "wb")  # noqa: SIM115 - closed below, the child keeps it
    process = subprocess.Popen(
        [
            exe,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GOMAXPROCS": "2"},
    )
    log.close()
    prom = PrometheusProc(f"http://127.0.0.1:{port}", directory, process)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {prom.log()}")
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return prom
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            stop_prometheus(prom)
            raise RuntimeError(f"prometheus did not become ready: {prom.log()}")
        time.sleep(0.1)


def stop_prometheus(prom: PrometheusProc) -> None:
    if prom.process.poll() is None:
        prom.process.terminate()
        try:
            prom.process.wait(10)
        except subprocess.TimeoutExpired:
            prom.process.kill()
            prom.process.wait(5)


@dataclass
class ScrapedSandbox:
    sandbox: Any  # sandbox.server.SandboxServer
    prometheus: PrometheusProc
    kubeconfig: Path


@pytest.fixture(scope="module")
def scraped_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScrapedSandbox]:
    """The sandbox over HTTP and a real Prometheus scraping its /metrics every second, shared by a
    module's tests (ten seconds of scrapes are worth keeping): tests that break Prometheus start
    their own with ``start_prometheus``."""
    from sandbox.controller import Timing
    from sandbox.server import SandboxServer

    tmp_path = tmp_path_factory.mktemp("scraped")
    with SandboxServer(timing=Timing.fast()) as sandbox:
        prom = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{sandbox.port}"])
        try:
            # rate() underestimates a series younger than its window, and !status looks a second or
            # two back: wait until ten seconds of scrapes cover the tests' 5 s window (RATE_WINDOW).
            prom.wait_for('count_over_time(kube_deployment_spec_replicas{service="chat", env="prod"}[10s]) >= 9')
            yield ScrapedSandbox(sandbox, prom, sandbox.write_kubeconfig(tmp_path / "sandbox.kubeconfig"))
        finally:
            stop_prometheus(prom)


@pytest.fixture
async def metrics_world(scraped_sandbox: ScrapedSandbox, tmp_path: Path) -> AsyncIterator[Any]:
    """The embedded world on the scraped sandbox, its bot asking that Prometheus."""
    from bot.world import open_world

    def quick(settings: Any) -> None:
        settings.metrics.timeout_seconds = 2.0
        settings.metrics.rate_window = RATE_WINDOW

    async with open_world(data_dir=tmp_path / "bot", kubeconfig=scraped_sandbox.kubeconfig,
                          prometheus_url=scraped_sandbox.prometheus.url, clock_context=False,
                          rollout_poll_seconds=0.2, tweak=quick) as world:
        world.sandbox = scraped_sandbox.sandbox
        yield world
