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
    async with open_world(data_dir=tmp_path) as w:
        yield w
