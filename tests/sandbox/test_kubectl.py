"""Real kubectl against the sandbox (skipped without kubectl unless CI is set)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sandbox.cluster import DEPLOYMENTS
from sandbox.server import SandboxServer

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.integration

SERVICES = ["auth", "chat", "chat-gui", "modbot", "strims"]


def _rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


def test_get_deployments(kubectl: Kubectl) -> None:
    header, *rows = _rows(kubectl("get", "deploy", "-n", "prod").stdout)
    assert header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert [r[0] for r in rows] == SERVICES
    assert all(r[1:4] == ["3/3", "3", "3"] for r in rows)


def test_get_deployments_replicasets_and_pods(kubectl: Kubectl) -> None:
    out = kubectl("get", "deploy,rs,pods", "-n", "prod").stdout
    sections = [_rows(block) for block in out.strip().split("\n\n")]
    assert [s[0] for s in sections] == [
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        ["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
    ]
    deployments, replicasets, pods = (s[1:] for s in sections)
    assert deployments[0][0] == "deployment.apps/auth"
    assert len(replicasets) == 15  # three revisions per service
    assert sum(1 for r in replicasets if r[1:4] == ["3", "3", "3"]) == 5
    assert len(pods) == 15
    assert all(p[0].startswith("pod/") and p[1:4] == ["1/1", "Running", "0"] for p in pods)


def test_get_pods_by_label_as_json(kubectl: Kubectl) -> None:
    listed = json.loads(kubectl("get", "pods", "-l", "app=chat", "-n", "prod", "-o", "json").stdout)
    assert listed["kind"] == "List"
    assert len(listed["items"]) == 3
    for pod in listed["items"]:
        assert pod["metadata"]["labels"]["app"] == "chat"
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert pod["spec"]["containers"][0]["image"] == "registry.local/dgg/chat:v1.4.0"


def test_get_deployment_as_yaml(kubectl: Kubectl) -> None:
    deployment = yaml.safe_load(kubectl("get", "deploy", "chat", "-n", "prod", "-o", "yaml").stdout)
    assert (deployment["apiVersion"], deployment["kind"]) == ("apps/v1", "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert deployment["status"]["availableReplicas"] == 3


def test_get_events(kubectl: Kubectl) -> None:
    header, *rows = _rows(kubectl("get", "events", "-n", "prod").stdout)
    assert header == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert rows and all(r[1:3] == ["Normal", "ScalingReplicaSet"] for r in rows)
    assert {r[3] for r in rows} == {f"deployment/{s}" for s in SERVICES}


def test_not_found(kubectl: Kubectl) -> None:
    proc = kubectl("get", "deploy", "nope", "-n", "prod", check=False)
    assert proc.returncode == 1
    assert 'Error from server (NotFound): deployments.apps "nope" not found' in proc.stderr


def test_rollout_history_and_status(kubectl: Kubectl) -> None:
    history = kubectl("rollout", "history", "deploy/chat", "-n", "staging").stdout
    assert "1         opsbot: deploy chat v1.4.0 by mod in #ops" in history
    assert "2         opsbot: deploy chat v1.5.0 by mod in #ops" in history
    status = kubectl("rollout", "status", "deploy/chat", "-n", "staging", "--timeout=10s").stdout
    assert 'deployment "chat" successfully rolled out' in status


def test_wide_output_and_all_namespaces(kubectl: Kubectl) -> None:
    header, *rows = _rows(kubectl("get", "deploy", "-A", "-o", "wide").stdout)
    assert header[:2] == ["NAMESPACE", "NAME"] and header[-3:] == ["CONTAINERS", "IMAGES", "SELECTOR"]
    assert rows[1][:5] == ["dev", "chat", "1/1", "1", "1"]
    assert rows[1][-2:] == ["registry.local/dgg/chat:v1.6.0-rc.1", "app=chat"]


def test_get_watch_prints_changes(kubectl_binary: str, fresh_sandbox: SandboxServer,
                                  tmp_path: Path) -> None:
    config = fresh_sandbox.write_kubeconfig(tmp_path / "config")
    with subprocess.Popen([kubectl_binary, "--kubeconfig", str(config), "get", "deploy", "chat",
                           "-n", "prod", "-w"], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout
        guard = threading.Timer(20, proc.kill)  # a missed line must not hang the suite
        guard.start()
        assert proc.stdout.readline().split()[0] == "NAME"
        assert proc.stdout.readline().split()[:2] == ["chat", "3/3"]
        _wait_for(lambda: fresh_sandbox.cluster.watchers == 1)
        chat = fresh_sandbox.cluster.get(DEPLOYMENTS, "prod", "chat")
        chat["spec"]["replicas"] = 4
        fresh_sandbox.cluster.update(DEPLOYMENTS, chat)
        assert proc.stdout.readline().split()[:2] == ["chat", "3/4"]
        guard.cancel()
        proc.terminate()


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_serve_forever_until_sigterm(kubectl_binary: str, tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    code = ("from pathlib import Path; from sandbox.server import serve_forever; "
            f"serve_forever('127.0.0.1', 0, Path({str(config)!r}))")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                          cwd=Path(__file__).parents[2], env={**os.environ}) as proc:
        assert proc.stdout
        assert proc.stdout.readline().startswith("sandbox Kubernetes API at http://127.0.0.1:")
        assert str(config) in proc.stdout.readline()
        out = subprocess.run([kubectl_binary, "--kubeconfig", str(config), "get", "ns"],
                             capture_output=True, text=True, timeout=30).stdout
        assert "prod" in out
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert "sandbox stopped" in proc.stdout.read()
    assert config.exists()  # a kubeconfig path the user gave is kept
