"""Real kubectl against the sandbox's controllers: set image, rollout status/history/undo,
pause/resume, scale and logs — an independent check of the sandbox (and of the bot)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.cluster import DEPLOYMENTS, PODS, REPLICASETS
from sandbox.controller import Timing
from sandbox.server import SandboxServer
from tests.conftest import require_program

pytestmark = pytest.mark.integration

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
IMAGE = "registry.local/dgg/chat-gui:{}"


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    """The seeded world at 20x speed: a rollout takes about a second, a deadline three."""
    with SandboxServer(timing=Timing.fast(20)) as sandbox:
        yield sandbox


@pytest.fixture
def kubectl(server: SandboxServer, tmp_path: Path) -> Kubectl:
    binary = require_program("kubectl")
    config = server.write_kubeconfig(tmp_path / "config")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([binary, "--kubeconfig", str(config), *args], capture_output=True,
                              text=True, timeout=90, env={**os.environ, "KUBECONFIG": ""},
                              check=False)
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc

    return run


def _set_image(kubectl: Kubectl, version: str, service: str = "chat-gui") -> None:
    out = kubectl("set", "image", f"deployment/{service}",
                  f"{service}=registry.local/dgg/{service}:{version}", "-n", "prod").stdout
    assert f"deployment.apps/{service} image updated" in out


def _history(kubectl: Kubectl, service: str = "chat-gui") -> dict[int, str]:
    out = kubectl("rollout", "history", f"deployment/{service}", "-n", "prod").stdout
    rows = [re.match(r"^(\d+)\s+(.*)$", line) for line in out.splitlines()]
    return {int(m.group(1)): m.group(2).strip() for m in rows if m}


def _images(server: SandboxServer, service: str = "chat-gui") -> set[str]:
    return {p["spec"]["containers"][0]["image"]
            for p in server.cluster.list(PODS, "prod", f"app={service}")[0]}


def test_set_image_then_rollout_status(server: SandboxServer, kubectl: Kubectl) -> None:
    _set_image(kubectl, "v1.5.1")
    status = kubectl("rollout", "status", "deployment/chat-gui", "-n", "prod", "--timeout=60s")
    assert 'deployment "chat-gui" successfully rolled out' in status.stdout
    assert "Waiting for deployment" in status.stdout  # it watched the rollout move
    assert _images(server) == {IMAGE.format("v1.5.1")}
    _, *rows = kubectl("get", "rs", "-n", "prod", "-l", "app=chat-gui").stdout.splitlines()
    assert sorted(r.split()[1:4] for r in rows) == [["0", "0", "0"]] * 3 + [["3", "3", "3"]]
    deploy = kubectl("get", "deploy", "chat-gui", "-n", "prod").stdout.splitlines()[1].split()
    assert deploy[1:4] == ["3/3", "3", "3"]


def test_a_broken_version_exceeds_its_progress_deadline(server: SandboxServer,
                                                        kubectl: Kubectl) -> None:
    _set_image(kubectl, "v1.5.1-broken")
    status = kubectl("rollout", "status", "deployment/chat-gui", "-n", "prod", "--timeout=60s",
                     check=False)
    assert status.returncode == 1
    assert 'error: deployment "chat-gui" exceeded its progress deadline' in status.stderr
    pods = kubectl("get", "pods", "-n", "prod", "-l", "app=chat-gui").stdout.splitlines()[1:]
    crashing = [p.split() for p in pods if p.split()[1] == "0/1"]  # between crashes it runs
    assert len(crashing) == 1 and int(crashing[0][3]) >= 2
    assert crashing[0][2] in ("CrashLoopBackOff", "Running", "Error")
    assert sum(1 for p in pods if p.split()[1:3] == ["1/1", "Running"]) == 3  # old pods serve
    previous = kubectl("logs", crashing[0][0], "-n", "prod", "--previous").stdout
    assert previous.startswith("> chat-gui@1.5.1-broken start")
    assert "TypeError: Cannot read properties of undefined (reading 'cdn')" in previous
    events = kubectl("get", "events", "-n", "prod", "--field-selector",
                     f"involvedObject.name={crashing[0][0]}").stdout
    assert re.search(r"Warning\s+BackOff\s+pod/\S+\s+Back-off restarting failed container", events)


def test_history_lists_revisions_with_change_causes(kubectl: Kubectl) -> None:
    assert _history(kubectl) == {1: "opsbot: deploy chat-gui v1.2.0 by admin in #ops",
                                 2: "opsbot: deploy chat-gui v1.3.0 by mod in #ops",
                                 3: "opsbot: deploy chat-gui v1.4.0 by mod in #ops"}
    kubectl("annotate", "deployment/chat-gui", "-n", "prod", "--overwrite",
            "kubernetes.io/change-cause=opsbot: deploy chat-gui v1.5.1 by mod in #ops")
    _set_image(kubectl, "v1.5.1")
    kubectl("rollout", "status", "deployment/chat-gui", "-n", "prod", "--timeout=60s")
    assert _history(kubectl)[4] == "opsbot: deploy chat-gui v1.5.1 by mod in #ops"
    detail = kubectl("rollout", "history", "deployment/chat-gui", "-n", "prod",
                     "--revision=4").stdout
    assert "deployment.apps/chat-gui with revision #4" in detail
    assert f"Image:\t{IMAGE.format('v1.5.1')}" in detail.replace("      ", "\t")


def test_undo_and_undo_to_a_revision(server: SandboxServer, kubectl: Kubectl) -> None:
    _set_image(kubectl, "v1.5.1-broken")
    kubectl("rollout", "status", "deployment/chat-gui", "-n", "prod", "--timeout=60s",
            check=False)
    assert "rolled back" in kubectl("rollout", "undo", "deployment/chat-gui", "-n", "prod").stdout
    kubectl("rollout", "status", "deployment/chat-gui", "-n", "prod", "--timeout=60s")
    assert _images(server) == {IMAGE.format("v1.4.0")}
    history = _history(kubectl)
    assert sorted(history) == [1, 2, 4, 5]  # revision 3 is 5 now, as in Kubernetes
    assert history[5] == "opsbot: deploy chat-gui v1.4.0 by mod in #ops"
    kubectl("rollout", "undo", "deployment/chat-gui", "-n", "prod", "--to-revision=1")
    kubectl("rollout", "status", "deployment/chat-gui", "-n", "prod", "--timeout=60s")
    assert _images(server) == {IMAGE.format("v1.2.0")}
    assert sorted(_history(kubectl)) == [2, 4, 5, 6]
    deployment = server.cluster.get(DEPLOYMENTS, "prod", "chat-gui")
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "6"
    same = kubectl("rollout", "undo", "deployment/chat-gui", "-n", "prod", "--to-revision=6")
    assert "skipped rollback" in same.stdout


def test_pause_and_resume(server: SandboxServer, kubectl: Kubectl) -> None:
    kubectl("rollout", "pause", "deployment/chat-gui", "-n", "prod")
    _set_image(kubectl, "v1.5.1")
    waiting = kubectl("rollout", "status", "deployment/chat-gui", "-n", "prod", "--timeout=2s",
                      check=False)
    assert waiting.returncode == 1
    assert _images(server) == {IMAGE.format("v1.4.0")}
    kubectl("rollout", "resume", "deployment/chat-gui", "-n", "prod")
    kubectl("rollout", "status", "deployment/chat-gui", "-n", "prod", "--timeout=60s")
    assert _images(server) == {IMAGE.format("v1.5.1")}


def test_scale(server: SandboxServer, kubectl: Kubectl) -> None:
    assert "scaled" in kubectl("scale", "deployment/chat-gui", "--replicas=5", "-n", "prod").stdout
    kubectl("rollout", "status", "deployment/chat-gui", "-n", "prod", "--timeout=60s")
    assert len(server.cluster.list(PODS, "prod", "app=chat-gui")[0]) == 5
    assert _history(kubectl).keys() == {1, 2, 3}  # scaling is no new revision
    stale = kubectl("scale", "deployment/chat-gui", "--replicas=2", "--current-replicas=3",
                    "-n", "prod", check=False)
    assert stale.returncode == 1 and "Expected replicas to be 3, was 5" in stale.stderr
    kubectl("scale", "deployment/chat-gui", "--replicas=2", "--current-replicas=5", "-n", "prod")
    kubectl("rollout", "status", "deployment/chat-gui", "-n", "prod", "--timeout=60s")
    scale = json.loads(kubectl("get", "deployment/chat-gui", "-n", "prod", "--subresource=scale",
                               "-o", "json").stdout)
    assert (scale["kind"], scale["spec"]["replicas"], scale["status"]["selector"]) == (
        "Scale", 2, "app=chat-gui")


def test_logs(server: SandboxServer, kubectl: Kubectl) -> None:
    picked = kubectl("logs", "deploy/chat-gui", "-n", "prod")
    assert picked.stdout.startswith("> chat-gui@1.4.0 start\n> node server.js\n")
    assert len(picked.stdout.splitlines()) > 100
    merged = kubectl("logs", "-l", "app=auth", "-n", "prod", "--prefix", "--tail=5").stdout
    lines = merged.splitlines()
    pods = {p["metadata"]["name"] for p in server.cluster.list(PODS, "prod", "app=auth")[0]}
    assert len(lines) == 15
    prefixes = [re.match(r"^\[pod/(\S+)/auth\] ", line) for line in lines]
    assert {m.group(1) for m in prefixes if m} == pods and all(prefixes)
    timed = kubectl("logs", "deploy/auth", "-n", "prod", "--since=5s", "--timestamps").stdout
    assert 2 <= len(timed.splitlines()) <= 8
    assert all(re.match(r"^\d{4}-\d\d-\d\dT[\d:]+\.\d{9}Z ", line) for line in timed.splitlines())
    healthy = min(pods)
    previous = kubectl("logs", healthy, "-n", "prod", "--previous", check=False)
    assert previous.returncode == 1
    assert f'previous terminated container "auth" in pod "{healthy}" not found' in previous.stderr


def test_scale_and_status_subresources_over_the_api(server: SandboxServer, tmp_path: Path) -> None:
    from kubernetes import client, config

    api = config.new_client_from_config(str(server.write_kubeconfig(tmp_path / "api")))
    with api:
        apps = client.AppsV1Api(api)
        scale = apps.read_namespaced_deployment_scale("chat", "prod")
        assert (scale.spec.replicas, scale.status.replicas, scale.status.selector) == (
            3, 3, "app=chat")
        patched = apps.patch_namespaced_deployment_scale("chat", "prod", {"spec": {"replicas": 4}})
        assert patched.spec.replicas == 4
        assert server.cluster.get(DEPLOYMENTS, "prod", "chat")["metadata"]["generation"] == 4
        scale.spec.replicas = 1  # read before the patch: stale
        with pytest.raises(client.ApiException) as stale:
            apps.replace_namespaced_deployment_scale("chat", "prod", scale)
        assert stale.value.status == 409
        with pytest.raises(client.ApiException) as negative:
            apps.patch_namespaced_deployment_scale("chat", "prod", {"spec": {"replicas": -1}})
        assert negative.value.status == 422
        rs = server.cluster.list(REPLICASETS, "prod", "app=chat")[0][0]["metadata"]["name"]
        assert apps.read_namespaced_replica_set_scale(rs, "prod").kind == "Scale"
        status = apps.read_namespaced_deployment_status("chat", "prod")
        assert status.status.observed_generation >= 3
        status_only = apps.patch_namespaced_deployment_status(
            "auth", "prod", {"spec": {"replicas": 9}, "status": {"replicas": 3}})
        assert status_only.spec.replicas == 3  # /status ignores the spec
    with urllib.request.urlopen(f"{server.url}/apis/apps/v1", timeout=5) as response:
        names = {r["name"] for r in json.load(response)["resources"]}
    assert {"deployments/scale", "deployments/status", "replicasets/scale"} <= names
    with urllib.request.urlopen(f"{server.url}/api/v1", timeout=5) as response:
        assert "pods/log" in {r["name"] for r in json.load(response)["resources"]}
