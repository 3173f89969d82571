"""The PromQL templates opsbot ships (defaults and the example config) are queries a real Prometheus
accepts, and against the sandbox's /metrics each gives one number per service and env."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from commands.metrics import MetricsService, PrometheusClient, render_template
from config.settings import Settings, load_settings
from sandbox import world
from tests.conftest_prometheus import ScrapedSandbox

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "opsbot.example.yaml"


@pytest.mark.parametrize("source", ["defaults", "example"])
async def test_templates_are_valid_promql_with_one_number_each(scraped_sandbox: ScrapedSandbox, source):
    config = (Settings() if source == "defaults" else load_settings(EXAMPLE)).metrics
    metrics = MetricsService(PrometheusClient(scraped_sandbox.prometheus.url, timeout=5), config)
    try:
        for service in world.SERVICES:
            names = config.names(service)
            _, found = await metrics.readings([(service, env, None) for env in world.ENVS], names)
            for env in world.ENVS:
                readings = {r.name: r for r in found[(service, env)]}
                assert list(readings) == names
                for name, reading in readings.items():
                    assert reading.error is None, (source, service, env, name, reading.error)
                    own = name in config.services.get(service, {})
                    if not own:  # a service's own template may ask for series the sandbox lacks
                        assert reading.value is not None, (source, service, env, name, reading.promql)
                # Every chart template runs too (a line per series).
                for name in names:
                    template = config.query(service, name)
                    promql = render_template(template.graph or template.query, service=service, env=env,
                                             namespace=env, deployment=service, window="30s")
                    now = time.time()
                    await metrics.client.range(promql, now - 300, now, 15)
    finally:
        await metrics.close()


def test_the_example_prometheus_config_and_rules_are_valid():
    """What README §8 runs: promtool (shipped with the prometheus package) checks both files."""
    import subprocess

    from tests.conftest import require_program

    promtool = require_program("promtool")
    examples = EXAMPLE.parent
    for what, name in (("config", "prometheus.yml"), ("rules", "prometheus-rules.yml")):
        proc = subprocess.run([promtool, "check", what, name], cwd=examples, capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
