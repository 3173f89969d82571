"""Fixtures for the sandbox tests: a seeded API server, a kubeconfig, clients and kubectl."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.server import SandboxServer

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def kubectl_binary() -> str:
    """The kubectl binary; skips locally when it is missing, but fails in CI (env CI set)."""
    path = shutil.which("kubectl")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("kubectl is not installed, and CI is set: the kubectl tests must run in CI")
    pytest.skip("kubectl is not installed (set CI=1 to make this a failure)")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """A seeded server shared by a module's read-only tests."""
    with SandboxServer() as server:
        yield server


@pytest.fixture
def fresh_sandbox() -> Iterator[SandboxServer]:
    """A seeded server of its own, for tests that change the cluster."""
    with SandboxServer() as server:
        yield server


@pytest.fixture(scope="module")
def kubeconfig(sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sandbox.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")


@pytest.fixture
def kubectl(kubectl_binary: str, kubeconfig: Path) -> Kubectl:
    """Run ``kubectl --kubeconfig <sandbox> ARGS…``; returns the completed process."""

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([kubectl_binary, "--kubeconfig", str(kubeconfig), *args],
                              capture_output=True, text=True, timeout=30,
                              env={**os.environ, "KUBECONFIG": ""})
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    return run
