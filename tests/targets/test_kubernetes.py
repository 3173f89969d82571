"""KubernetesPlatform against a real HTTP API: the sandbox (and tiny misbehaving servers)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from commands.targets.kubernetes import KubernetesPlatform, image_version
from config.settings import KubernetesTarget
from sandbox.cluster import DEPLOYMENTS, EVENTS, PODS, REPLICASETS, Cluster, Obj
from sandbox.kubeconfig import kubeconfig as kubeconfig_dict
from sandbox.seed import event_for, seed
from sandbox.server import SandboxServer


def target(deployment: str = "chat-gui", namespace: str = "prod", **kw: str) -> KubernetesTarget:
    return KubernetesTarget(namespace=namespace, deployment=deployment, **kw)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server


@pytest.fixture
def fresh_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server


def _platform_for(server: SandboxServer, tmp_path: Path, **kw: float) -> KubernetesPlatform:
    return KubernetesPlatform(server.write_kubeconfig(tmp_path / "kubeconfig"), **kw)


@pytest.fixture
async def k8s(sandbox: SandboxServer, tmp_path: Path) -> AsyncIterator[KubernetesPlatform]:
    platform = _platform_for(sandbox, tmp_path)
    yield platform
    await platform.close()


@pytest.fixture
async def fresh_k8s(fresh_sandbox: SandboxServer,
                    tmp_path: Path) -> AsyncIterator[KubernetesPlatform]:
    platform = _platform_for(fresh_sandbox, tmp_path)
    yield platform
    await platform.close()


# --------------------------------------------------------------------------- reading state


async def test_state_of_a_healthy_deployment(k8s: KubernetesPlatform) -> None:
    state = await k8s.get_state("chat-gui", "prod", target())
    assert state.error is None
    assert (state.service, state.env, state.platform) == ("chat-gui", "prod", "kubernetes")
    assert state.where == "k8s prod/deploy/chat-gui"
    assert state.image == "registry.local/dgg/chat-gui:v1.4.0"
    assert state.version == "v1.4.0"
    assert (state.desired, state.updated, state.ready, state.available) == (3, 3, 3, 3)
    assert (state.rollout, state.rollout_message) == ("complete", None)
    assert state.revision == 3
    assert len(state.pods) == 3
    assert all(p.phase == "Running" and p.ready and p.restarts == 0 and p.reason is None
               and p.version == "v1.4.0" and p.started_at for p in state.pods)
    assert all(p.name.startswith("chat-gui-") for p in state.pods)
    assert state.warnings == []
    assert state.healthy


async def test_other_envs_and_a_named_container(k8s: KubernetesPlatform) -> None:
    dev = await k8s.get_state("auth", "dev", target("auth", "dev", container="auth"))
    assert (dev.version, dev.desired, dev.revision) == ("v1.6.0-rc.1", 1, 2)
    wrong = await k8s.get_state("auth", "dev", target("auth", "dev", container="sidecar"))
    assert wrong.error == "deployment dev/auth has no container 'sidecar'"


async def test_missing_deployment(k8s: KubernetesPlatform) -> None:
    state = await k8s.get_state("chat-gui", "prod", target("nope"))
    assert state.error == "deployment prod/nope not found"
    missing_namespace = await k8s.get_state("chat-gui", "qa", target(namespace="qa"))
    assert missing_namespace.error == "deployment qa/chat-gui not found"


async def test_stopped_server_gives_an_error_state_quickly(tmp_path: Path) -> None:
    server = SandboxServer(cluster=Cluster()).start()
    platform = _platform_for(server, tmp_path)
    server.stop()
    started = time.monotonic()
    state = await platform.get_state("chat-gui", "prod", target())
    assert time.monotonic() - started < 3
    assert state.error == f"cannot reach the cluster at {server.url}: connection refused"
    assert not state.healthy
    await platform.close()


async def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        platform = KubernetesPlatform(_write_kubeconfig(tmp_path, url), request_timeout=0.5)
        started = time.monotonic()
        state = await platform.get_state("chat-gui", "prod", target())
        assert time.monotonic() - started < 3
        await platform.close()
    assert state.error == f"cannot reach the cluster at {url}: no answer within 0.5 s"


async def test_forbidden(tmp_path: Path) -> None:
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
              "code": 403, "message": 'deployments.apps "chat-gui" is forbidden: User "bot" '
                                      'cannot get resource "deployments"'}
    with _answering(403, status) as url:
        platform = KubernetesPlatform(_write_kubeconfig(tmp_path, url))
        state = await platform.get_state("chat-gui", "prod", target())
        await platform.close()
    assert state.error == f"not allowed to read deployment prod/chat-gui: {status['message']}"


async def test_server_error_without_a_status_body(tmp_path: Path) -> None:
    with _answering(502, None) as url:
        platform = KubernetesPlatform(_write_kubeconfig(tmp_path, url))
        state = await platform.get_state("chat-gui", "prod", target())
        await platform.close()
    assert state.error == "the cluster answered 502 Bad Gateway: Bad Gateway"


async def test_kubeconfig_problems_are_error_states(tmp_path: Path) -> None:
    missing = KubernetesPlatform(tmp_path / "absent")
    state = await missing.get_state("chat-gui", "prod", target())
    assert state.error and state.error.startswith(f"kubeconfig {tmp_path / 'absent'}")
    config = _write_kubeconfig(tmp_path, "http://127.0.0.1:1")
    unknown = KubernetesPlatform(config)
    state = await unknown.get_state("chat-gui", "prod", target(context="staging-cluster"))
    assert state.error and state.error.startswith(f"kubeconfig {config} (context staging-cluster)")
    assert "staging-cluster" in state.error


async def test_one_client_per_context(fresh_sandbox: SandboxServer, tmp_path: Path) -> None:
    other_cluster = Cluster()
    seed(other_cluster)
    with SandboxServer(cluster=other_cluster) as other:
        chat_gui = other_cluster.get(DEPLOYMENTS, "prod", "chat-gui")
        chat_gui["spec"]["template"]["spec"]["containers"][0]["image"] = "r/chat-gui:v9"
        other_cluster.update(DEPLOYMENTS, chat_gui)
        both = kubeconfig_dict(fresh_sandbox.url)
        second = kubeconfig_dict(other.url, context="other")
        for key in ("clusters", "users", "contexts"):
            both[key] += second[key]
        path = tmp_path / "both"
        path.write_text(yaml.safe_dump(both))
        platform = KubernetesPlatform(path)
        current = await platform.get_state("chat-gui", "prod", target())
        named = await platform.get_state("chat-gui", "prod", target(context="other"))
        again = await platform.get_state("chat-gui", "prod", target(context="other"))
        await platform.close()
        after_close = await platform.get_state("chat-gui", "prod", target(context="other"))
        await platform.close()
    assert (current.version, named.version, again.version, after_close.version) == (
        "v1.4.0", "v9", "v9", "v9")


# --------------------------------------------------------------------------- rollouts and pods


def _edit_deployment(cluster: Cluster, edit: Callable[[Obj], None]) -> None:
    deployment = cluster.get(DEPLOYMENTS, "prod", "chat-gui")
    edit(deployment)
    cluster.update(DEPLOYMENTS, deployment)


def _deadline_exceeded(d: Obj) -> None:
    d["status"]["conditions"][1] |= {"status": "False", "reason": "ProgressDeadlineExceeded",
                                     "message": 'ReplicaSet "chat-gui-x" has timed out progressing.'}


@pytest.mark.parametrize(
    ("edit", "rollout", "message"),
    [
        (_deadline_exceeded, "failed", 'ReplicaSet "chat-gui-x" has timed out progressing.'),
        (lambda d: d["spec"].update(paused=True), "paused", "the rollout is paused"),
        (lambda d: d["spec"].update(replicas=0), "scaled-down", "scaled down to 0 replicas"),
        (lambda d: d["spec"]["template"]["metadata"]["labels"].update(x="y"), "progressing",
         "waiting for the deployment controller to see the new spec"),
        (lambda d: d["status"].update(updatedReplicas=1), "progressing",
         "1 of 3 new replicas updated"),
        (lambda d: d["status"].update(replicas=4), "progressing",
         "1 old replicas pending termination"),
        (lambda d: d["status"].update(availableReplicas=2), "progressing",
         "2 of 3 updated replicas available"),
    ],
)
async def test_rollout_states(fresh_sandbox: SandboxServer, fresh_k8s: KubernetesPlatform,
                              edit: Callable[[Obj], None], rollout: str, message: str) -> None:
    _edit_deployment(fresh_sandbox.cluster, edit)
    state = await fresh_k8s.get_state("chat-gui", "prod", target())
    assert (state.rollout, state.rollout_message) == (rollout, message)
    assert not state.healthy


async def test_crash_looping_pod_and_warnings(fresh_sandbox: SandboxServer,
                                             fresh_k8s: KubernetesPlatform) -> None:
    cluster = fresh_sandbox.cluster
    pods = cluster.list(PODS, "prod", "app=chat-gui")[0]
    crashing = pods[0]
    status = crashing["status"]["containerStatuses"][0]
    status |= {"ready": False, "restartCount": 4,
               "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}}
    crashing["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    cluster.update(PODS, crashing)
    replicaset = next(rs for rs in cluster.list(REPLICASETS, "prod", "app=chat-gui")[0]
                      if rs["spec"]["replicas"])
    deployment = cluster.get(DEPLOYMENTS, "prod", "chat-gui")
    now = cluster.now()
    gone_pod = {**crashing, "metadata": {**crashing["metadata"],
                                         "name": f"{replicaset['metadata']['name']}-gone1"}}
    other = cluster.get(DEPLOYMENTS, "prod", "chat")
    for involved, reason, minutes_ago in [
        (crashing, "BackOff", 1), (crashing, "Unhealthy", 2), (replicaset, "FailedCreate", 3),
        (deployment, "ProgressDeadlineExceeded", 4), (gone_pod, "BackOff", 5),
        (crashing, "Failed", 6), (other, "Unrelated", 0),
    ]:
        cluster.create(EVENTS, event_for(cluster, involved, reason, f"{reason} happened",
                                         now - timedelta(minutes=minutes_ago), type_="Warning"))
    cluster.create(EVENTS, event_for(cluster, crashing, "Pulled", "pulled", now))  # Normal
    state = await fresh_k8s.get_state("chat-gui", "prod", target())
    pod = next(p for p in state.pods if p.name == crashing["metadata"]["name"])
    assert (pod.ready, pod.restarts, pod.reason) == (False, 4, "CrashLoopBackOff")
    assert state.restarts == 4
    assert [w.reason for w in state.warnings] == [
        "BackOff", "Unhealthy", "FailedCreate", "ProgressDeadlineExceeded", "BackOff"]
    first = state.warnings[0]
    assert (first.type, first.object, first.message, first.count) == (
        "Warning", f"pod/{crashing['metadata']['name']}", "BackOff happened", 1)
    assert state.warnings[2].object == f"replicaset/{replicaset['metadata']['name']}"


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("registry.local/dgg/chat:v1.4.0", "v1.4.0"),
        ("registry.local:5000/dgg/chat:v2", "v2"),
        ("registry.local:5000/dgg/chat", "latest"),
        ("chat", "latest"),
        ("chat:1.0@sha256:abcdef", "1.0"),
        ("chat@sha256:0123456789abcdef0123", "sha256:0123456789ab"),
        (None, None),
    ],
)
def test_image_version(image: str | None, version: str | None) -> None:
    assert image_version(image) == version


# --------------------------------------------------------------------------- helpers


def _write_kubeconfig(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig_dict(url)))
    return path


class _Answering(http.server.BaseHTTPRequestHandler):
    code = 500
    body: bytes = b""

    def do_GET(self) -> None:
        self.send_response(self.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _answering(code: int, body: Obj | None) -> Iterator[str]:
    """A local HTTP server answering every GET with ``code`` and ``body`` (JSON); yields its URL."""
    handler = type("Handler", (_Answering,), {
        "code": code, "body": json.dumps(body).encode() if body else b""})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
