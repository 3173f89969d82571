"""Shared fixtures. Each test that needs a server starts it and stops it."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.world import World, open_world


def require_program(name: str) -> str:
    """Path of an external program; a skip locally, a failure in CI (CI=true)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """The whole embedded world: sandbox cluster over HTTP, the real bot on simcord, the demo guild."""
    from sandbox.controller import Timing

    # Rollouts 20x faster than the demo's; the bot checks progress often enough to keep up.
    async with open_world(data_dir=tmp_path, clock_context=False, sandbox_timing=Timing.fast(),
                          rollout_poll_seconds=0.2) as w:
        yield w


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item):
    """Enter simcord's clock in the test's own context (never an async fixture's)."""
    worlds = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, World)]
    if len(worlds) == 1:
        with worlds[0].env.time_context():
            return (yield)
    return (yield)


# The session's private dockerd (tests/conftest_docker.py), shared by tests/targets and tests/bot.
from tests.conftest_docker import DockerHost, container_name, dockerd  # noqa: E402,F401
# A real Prometheus scraping the sandbox (tests/conftest_prometheus.py), for the metrics tests.
from tests.conftest_prometheus import metrics_world, scraped_sandbox  # noqa: E402,F401
# A throwaway PostgreSQL (tests/conftest_postgres.py): db_url runs the storage tests on both backends.
from tests.conftest_postgres import db, db_url, postgres_server, postgres_url  # noqa: E402,F401
