"""KubernetesPlatform's write side (set_image, progress, history, rollback, log_sources) over real
HTTP: the sandbox API, a recording/fault-injecting proxy in front of it, and kubectl as the
reference for ``rollout undo``."""

from __future__ import annotations

import asyncio
import functools
import http.client
import http.server
import json
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from commands.logs import LogQuery, merge
from commands.models import RolloutProgress
from commands.targets.base import Conflict, NotFound, PlatformError, Unreachable
from commands.targets.kubernetes import (
    CHANGE_CAUSE,
    REVISION,
    KubernetesPlatform,
    pod_failure,
    rollout_progress,
)
from config.settings import KubernetesTarget
from sandbox.cluster import DEPLOYMENTS, PODS, REPLICASETS, Cluster, Obj
from sandbox.controller import Timing, install
from sandbox.seed import NODES, PROGRESS_DEADLINE, pod_for, replicaset_for, seed
from sandbox.server import SandboxServer
from tests.conftest import require_program


def target(deployment: str = "chat-gui", namespace: str = "prod",
           container: str | None = None) -> KubernetesTarget:
    return KubernetesTarget(namespace=namespace, deployment=deployment, container=container)


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """The seeded world without controllers: what a test writes stays as written, so tests can
    play the deployment controller by hand (see the end of the file for the real ones)."""
    with SandboxServer(cluster=seed(Cluster())) as server:
        yield server


@pytest.fixture
async def k8s(sandbox: SandboxServer, tmp_path: Path) -> AsyncIterator[KubernetesPlatform]:
    platform = KubernetesPlatform(sandbox.write_kubeconfig(tmp_path / "kubeconfig"))
    yield platform
    await platform.close()


def _deployment(cluster: Cluster, name: str = "chat-gui", ns: str = "prod") -> Obj:
    return cluster.get(DEPLOYMENTS, ns, name)


def _image(obj: Obj, container: str | None = None) -> str:
    containers = obj["spec"]["template"]["spec"]["containers"]
    return next(c["image"] for c in containers if container in (None, c["name"]))


def _edit(cluster: Cluster, kind: Any, ns: str, name: str, edit: Callable[[Obj], None]) -> Obj:
    def change(obj: Obj) -> Obj:
        edit(obj)
        return obj
    return cluster.modify(kind, ns, name, change)


# --------------------------------------------------------------------------- a proxy


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str

    def body(self) -> bytes:
        return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "code": self.status, "message": self.message}).encode()


@dataclass
class Proxy:
    """A real HTTP server in front of the sandbox: records every request, answers the first
    requests of a method from ``faults`` (status, Status body) and serves ``logs`` for pods."""

    upstream: str
    seen: list[Seen] = field(default_factory=list)
    faults: dict[str, list[tuple[int, Obj]]] = field(default_factory=dict)
    logs: dict[str, Callable[[dict[str, list[str]]], Iterable[bytes] | Refusal]] = field(
        default_factory=dict)
    before: dict[str, list[Callable[[], None]]] = field(default_factory=dict)
    url: str = ""

    def fail(self, method: str, status: int, reason: str, message: str, times: int = 1) -> None:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                "code": status, "message": message}
        self.faults.setdefault(method, []).extend([(status, body)] * times)

    def requests(self, method: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method]


@pytest.fixture
def proxy(sandbox: SandboxServer) -> Iterator[Proxy]:
    state = Proxy(sandbox.url)
    upstream = urlsplit(sandbox.url)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            state.seen.append(Seen(self.command, url.path, query, self.headers.get("Content-Type"),
                                   json.loads(raw) if raw else None))
            if state.faults.get(self.command):
                status, body = state.faults[self.command].pop(0)
                return self._answer(status, json.dumps(body).encode())
            if state.before.get(self.command):
                state.before[self.command].pop(0)()
            parts = url.path.split("/")
            if url.path.endswith("/log") and parts[-2] in state.logs:
                answer = state.logs[parts[-2]](query)
                if isinstance(answer, Refusal):
                    return self._answer(answer.status, answer.body())
                return self._stream(answer)
            conn = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=10)
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
            conn.request(self.command, self.path, body=raw or None, headers=headers)
            reply = conn.getresponse()
            self._answer(reply.status, reply.read(), reply.getheader("Content-Type"))
            conn.close()

        do_GET = do_PATCH = do_PUT = do_POST = do_DELETE = handle_any

        def _answer(self, status: int, body: bytes, content_type: str | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type or "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _stream(self, chunks: Iterable[bytes]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for chunk in chunks:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def proxied(proxy: Proxy, tmp_path: Path) -> AsyncIterator[KubernetesPlatform]:
    from sandbox.kubeconfig import write_kubeconfig

    platform = KubernetesPlatform(write_kubeconfig(tmp_path / "proxied", proxy.url))
    yield platform
    await platform.close()


# --------------------------------------------------------------------------- set_image


async def test_set_image_changes_image_and_change_cause_and_bumps_generation(
        sandbox: SandboxServer, k8s: KubernetesPlatform) -> None:
    before = _deployment(sandbox.cluster)
    generation = await k8s.set_image("chat-gui", "prod", target(),
                                     "registry.local/dgg/chat-gui:v1.5.0", "opsbot: deploy by mod")
    after = _deployment(sandbox.cluster)
    assert generation == after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert _image(after) == "registry.local/dgg/chat-gui:v1.5.0"
    assert after["metadata"]["annotations"] == {REVISION: "3", CHANGE_CAUSE: "opsbot: deploy by mod"}
    # a merge, not a replacement: the rest of the container and template is untouched
    before["spec"]["template"]["spec"]["containers"][0]["image"] = _image(after)
    assert after["spec"] == before["spec"]


async def test_set_image_sends_one_strategic_merge_patch(proxy: Proxy,
                                                         proxied: KubernetesPlatform) -> None:
    await proxied.set_image("chat-gui", "prod", target(), "r/chat-gui:v2", "why")
    [patch] = proxy.requests("PATCH")
    assert patch.path == "/apis/apps/v1/namespaces/prod/deployments/chat-gui"
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.body == {
        "metadata": {"resourceVersion": patch.body["metadata"]["resourceVersion"],
                     "annotations": {CHANGE_CAUSE: "why"}},
        "spec": {"template": {"spec": {"containers": [{"name": "chat-gui", "image": "r/chat-gui:v2"}]}}},
    }


async def test_set_image_of_a_named_container(sandbox: SandboxServer,
                                              k8s: KubernetesPlatform) -> None:
    def add_sidecar(d: Obj) -> None:
        d["spec"]["template"]["spec"]["containers"].append({"name": "proxy", "image": "envoy:1.30"})
    _edit(sandbox.cluster, DEPLOYMENTS, "prod", "auth", add_sidecar)
    await k8s.set_image("auth", "prod", target("auth", container="proxy"), "envoy:1.31", "bump")
    after = _deployment(sandbox.cluster, "auth")
    assert (_image(after, "auth"), _image(after, "proxy")) == (
        "registry.local/dgg/auth:v1.4.0", "envoy:1.31")


async def test_set_image_errors(sandbox: SandboxServer, k8s: KubernetesPlatform) -> None:
    with pytest.raises(NotFound, match=r"^deployment prod/nope not found$"):
        await k8s.set_image("nope", "prod", target("nope"), "x:1", "c")
    with pytest.raises(NotFound, match=r"^deployment qa/chat-gui not found$"):
        await k8s.set_image("chat-gui", "qa", target(namespace="qa"), "x:1", "c")
    with pytest.raises(PlatformError) as err:
        await k8s.set_image("chat-gui", "prod", target(container="web"), "x:1", "c")
    assert str(err.value) == "deployment prod/chat-gui has no container 'web' (containers: chat-gui)"
    assert type(err.value) is PlatformError
    _edit(sandbox.cluster, DEPLOYMENTS, "prod", "chat-gui", lambda d: d["spec"].update(paused=True))
    with pytest.raises(PlatformError, match=r"is paused; resume it first \(kubectl rollout resume "
                                            r"deployment/chat-gui -n prod\)"):
        await k8s.set_image("chat-gui", "prod", target(), "x:1", "c")
    assert _image(_deployment(sandbox.cluster)) == "registry.local/dgg/chat-gui:v1.4.0"


async def test_a_conflict_is_retried_once(sandbox: SandboxServer, proxy: Proxy,
                                          proxied: KubernetesPlatform) -> None:
    proxy.fail("PATCH", 409, "Conflict", 'Operation cannot be fulfilled on deployments.apps "chat-gui"')
    generation = await proxied.set_image("chat-gui", "prod", target(), "r/chat-gui:v2", "c")
    assert generation == _deployment(sandbox.cluster)["metadata"]["generation"]
    assert [s.method for s in proxy.seen] == ["GET", "PATCH", "GET", "PATCH"]

    proxy.fail("PATCH", 409, "Conflict", "modified", times=2)
    with pytest.raises(Conflict) as err:
        await proxied.set_image("chat-gui", "prod", target(), "r/chat-gui:v3", "c")
    assert str(err.value) == "deployment prod/chat-gui was changed by someone else meanwhile; try again"
    assert _image(_deployment(sandbox.cluster)) == "r/chat-gui:v2"


async def test_a_real_conflict_from_a_write_in_between(sandbox: SandboxServer, proxy: Proxy,
                                                       proxied: KubernetesPlatform) -> None:
    """The patch carries the resourceVersion it read: a write between our read and our patch
    is a 409 from the API itself; the retry reads again and succeeds."""
    cluster = sandbox.cluster

    def meddle() -> None:
        _edit(cluster, DEPLOYMENTS, "prod", "chat-gui",
              lambda d: d["metadata"]["annotations"].update({"example.com/meddled": "yes"}))
    proxy.before["PATCH"] = [meddle]
    await proxied.set_image("chat-gui", "prod", target(), "r/chat-gui:v2", "c")
    assert [s.method for s in proxy.seen] == ["GET", "PATCH", "GET", "PATCH"]
    after = _deployment(cluster)
    assert _image(after) == "r/chat-gui:v2"
    assert after["metadata"]["annotations"]["example.com/meddled"] == "yes"

    proxy.before["PATCH"] = [meddle]
    proxy.seen.clear()
    info, _ = await proxied.rollback("chat-gui", "prod", target(), 1, "c")
    assert info.version == "v1.2.0" and _image(_deployment(cluster)) == "registry.local/dgg/chat-gui:v1.2.0"
    assert [s.method for s in proxy.requests("PATCH")] == ["PATCH", "PATCH"]


async def test_api_refusals_are_short_messages(proxy: Proxy, proxied: KubernetesPlatform) -> None:
    proxy.fail("PATCH", 403, "Forbidden", 'deployments.apps "chat-gui" is forbidden: User "bot" '
                                          'cannot patch resource "deployments"')
    with pytest.raises(PlatformError) as err:
        await proxied.set_image("chat-gui", "prod", target(), "x:1", "c")
    assert str(err.value) == ('not allowed to patch deployment prod/chat-gui: deployments.apps '
                              '"chat-gui" is forbidden: User "bot" cannot patch resource "deployments"')
    proxy.fail("PATCH", 422, "Invalid", 'Deployment.apps "chat-gui" is invalid: spec.template.spec.'
                                        'containers[0].image: Required value')
    with pytest.raises(PlatformError, match=r"^the cluster refused to patch deployment prod/"
                                            r"chat-gui: Deployment.apps .* Required value$"):
        await proxied.set_image("chat-gui", "prod", target(), "x:1", "c")
    proxy.fail("GET", 500, "InternalError", "etcdserver: request timed out")
    with pytest.raises(PlatformError) as err:
        await proxied.history("chat-gui", "prod", target())
    assert str(err.value) == ("the cluster answered 500 Internal Server Error: "
                              "etcdserver: request timed out")


# --------------------------------------------------------------------------- history


async def test_history_shows_the_seeded_revisions(sandbox: SandboxServer,
                                                  k8s: KubernetesPlatform) -> None:
    prod = await k8s.history("chat-gui", "prod", target())
    assert [(r.revision, r.version, r.current, r.replicas) for r in prod] == [
        (1, "v1.2.0", False, 0), (2, "v1.3.0", False, 0), (3, "v1.4.0", True, 3)]
    assert [r.change_cause for r in prod] == [
        "opsbot: deploy chat-gui v1.2.0 by admin in #ops",
        "opsbot: deploy chat-gui v1.3.0 by mod in #ops",
        "opsbot: deploy chat-gui v1.4.0 by mod in #ops"]
    assert prod[2].image == "registry.local/dgg/chat-gui:v1.4.0"
    created = [r.created_at for r in prod if r.created_at and r.created_at.tzinfo]
    assert len(created) == 3 and created[1] - created[0] == created[2] - created[1] == timedelta(days=1)
    dev = await k8s.history("auth", "dev", target("auth", "dev"))
    assert [(r.revision, r.version, r.current) for r in dev] == [
        (1, "v1.5.0", False), (2, "v1.6.0-rc.1", True)]
    assert dev[1].change_cause == ("kubectl set image deployment/auth "
                                   "auth=registry.local/dgg/auth:v1.6.0-rc.1")


async def test_history_counts_only_replicasets_the_deployment_owns(
        sandbox: SandboxServer, k8s: KubernetesPlatform) -> None:
    cluster = sandbox.cluster
    deployment = _deployment(cluster)
    stray = replicaset_for(deployment, 7, 0, cluster.now())
    stray["metadata"]["name"] = "chat-gui-stray"
    del stray["metadata"]["ownerReferences"]
    cluster.create(REPLICASETS, stray)
    assert [r.revision for r in await k8s.history("chat-gui", "prod", target())] == [1, 2, 3]
    with pytest.raises(NotFound, match="^deployment prod/gone not found$"):
        await k8s.history("gone", "prod", target("gone"))


# --------------------------------------------------------------------------- rollback


def _decorate(cluster: Cluster) -> None:
    """Make a rollback's annotation rules visible: a ReplicaSet annotation that must be copied,
    Deployment annotations that kubectl keeps (skip list) or drops (the rest)."""
    rs2 = next(rs for rs in cluster.list(REPLICASETS, "prod", "app=chat-gui")[0]
               if rs["metadata"]["annotations"][REVISION] == "2")
    _edit(cluster, REPLICASETS, "prod", rs2["metadata"]["name"],
          lambda rs: rs["metadata"]["annotations"].update({"example.com/team": "chat"}))
    _edit(cluster, DEPLOYMENTS, "prod", "chat-gui", lambda d: d["metadata"]["annotations"].update({
        "kubectl.kubernetes.io/last-applied-configuration": '{"kind":"Deployment"}',
        "example.com/owner": "dropped by a rollback"}))


async def _run(*args: str) -> str:
    proc = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


@pytest.mark.integration
@pytest.mark.parametrize("revision", [None, 1])
async def test_rollback_writes_what_kubectl_rollout_undo_writes(
        sandbox: SandboxServer, k8s: KubernetesPlatform, tmp_path: Path,
        revision: int | None) -> None:
    kubectl = require_program("kubectl")
    with SandboxServer(cluster=seed(Cluster())) as twin:  # the same world, undone by kubectl
        for cluster in (sandbox.cluster, twin.cluster):
            _decorate(cluster)
        args = ["rollout", "undo", "deploy/chat-gui", "-n", "prod"]
        if revision:
            args.append(f"--to-revision={revision}")
        out = await _run(kubectl, "--kubeconfig", str(twin.write_kubeconfig(tmp_path / "twin")), *args)
        assert "rolled back" in out
        theirs = _deployment(twin.cluster)
    back_to, generation = await k8s.rollback("chat-gui", "prod", target(), revision, "opsbot: undo")
    ours = _deployment(sandbox.cluster)
    expected = {None: (2, "v1.3.0"), 1: (1, "v1.2.0")}[revision]
    assert (back_to.revision, back_to.version, back_to.current) == (*expected, False)
    assert generation == ours["metadata"]["generation"] == theirs["metadata"]["generation"]
    # kubectl sends the Go struct (template metadata with creationTimestamp: null), which the
    # API server would normalize away; the sandbox stores it verbatim
    assert _without_nulls(ours["spec"]) == _without_nulls(theirs["spec"])
    assert "pod-template-hash" not in ours["spec"]["template"]["metadata"]["labels"]
    assert ours["metadata"]["annotations"].pop(CHANGE_CAUSE) == "opsbot: undo"
    assert theirs["metadata"]["annotations"].pop(CHANGE_CAUSE) == back_to.change_cause
    assert ours["metadata"]["annotations"] == theirs["metadata"]["annotations"]
    kept = ours["metadata"]["annotations"]
    assert "example.com/owner" not in kept
    assert kept[REVISION] == "3" and "last-applied-configuration" in str(kept)
    assert (kept.get("example.com/team") == "chat") == (revision is None)


@pytest.mark.integration
async def test_rollback_to_the_running_template_is_skipped_like_kubectl(
        sandbox: SandboxServer, k8s: KubernetesPlatform, tmp_path: Path) -> None:
    kubectl = require_program("kubectl")
    out = await _run(kubectl, "--kubeconfig", str(sandbox.write_kubeconfig(tmp_path / "k")),
                     "rollout", "undo", "deploy/chat-gui", "-n", "prod", "--to-revision=3")
    assert "skipped rollback" in out
    before = _deployment(sandbox.cluster)
    with pytest.raises(PlatformError) as err:
        await k8s.rollback("chat-gui", "prod", target(), 3, "c")
    assert str(err.value) == ("skipped rollback: deployment prod/chat-gui already runs the "
                              "template of revision 3 (v1.4.0)")
    assert _deployment(sandbox.cluster) == before


async def test_rollback_sends_kubectls_json_patch(proxy: Proxy, proxied: KubernetesPlatform) -> None:
    await proxied.rollback("chat-gui", "prod", target(), None, "why")
    [patch] = proxy.requests("PATCH")
    assert patch.content_type == "application/json-patch+json"
    assert [(op["op"], op["path"]) for op in patch.body] == [
        ("replace", "/metadata/resourceVersion"), ("replace", "/spec/template"),
        ("replace", "/metadata/annotations")]
    template = patch.body[1]["value"]
    assert template["metadata"]["labels"] == {"app": "chat-gui"}
    assert _image({"spec": {"template": template}}) == "registry.local/dgg/chat-gui:v1.3.0"
    assert patch.body[2]["value"] == {REVISION: "3", CHANGE_CAUSE: "why"}


async def test_rollback_unknown_revision_lists_the_valid_ones(sandbox: SandboxServer,
                                                               k8s: KubernetesPlatform) -> None:
    before = _deployment(sandbox.cluster)
    with pytest.raises(NotFound) as err:
        await k8s.rollback("chat-gui", "prod", target(), 9, "c")
    assert str(err.value) == "no revision 9; valid: 1 (v1.2.0), 2 (v1.3.0)"
    with pytest.raises(NotFound, match=r"^no revision 9; valid: 1 \(v1.5.0\)$"):
        await k8s.rollback("auth", "dev", target("auth", "dev"), 9, "c")
    assert _deployment(sandbox.cluster) == before


async def test_rollback_without_history(sandbox: SandboxServer, k8s: KubernetesPlatform) -> None:
    cluster = sandbox.cluster
    first = next(rs for rs in cluster.list(REPLICASETS, "dev", "app=auth")[0]
                 if rs["metadata"]["annotations"][REVISION] == "1")
    cluster.delete(REPLICASETS, "dev", first["metadata"]["name"])
    with pytest.raises(NotFound, match="^deployment dev/auth has no earlier revision to roll back to$"):
        await k8s.rollback("auth", "dev", target("auth", "dev"), None, "c")
    with pytest.raises(NotFound, match=r"^no revision 1; valid: none$"):
        await k8s.rollback("auth", "dev", target("auth", "dev"), 1, "c")
    _edit(cluster, DEPLOYMENTS, "prod", "chat-gui", lambda d: d["spec"].update(paused=True))
    with pytest.raises(PlatformError, match="is paused; resume it first"):
        await k8s.rollback("chat-gui", "prod", target(), None, "c")


# --------------------------------------------------------------------------- progress


def _act_as_controller(cluster: Cluster, *, updated: int, pods: list[Callable[[Obj], None]],
                       name: str = "chat-gui") -> Obj:
    """What the deployment controller does on seeing a new template: revision 4 on a new
    ReplicaSet with pods (edited by ``pods``), the status observed. Returns the new RS."""
    deployment = _deployment(cluster, name)
    generation = deployment["metadata"]["generation"]
    deployment["metadata"]["annotations"][REVISION] = "4"
    now = cluster.now()
    rs = cluster.create(REPLICASETS, replicaset_for(deployment, 4, len(pods), now))
    for n, edit in enumerate(pods):
        pod = cluster.create(PODS, pod_for(cluster, rs, now, NODES[n % len(NODES)]))
        edit(pod)
        cluster.update(PODS, pod)

    def observed(d: Obj) -> None:
        d["metadata"]["annotations"][REVISION] = "4"
        d["status"] |= {"observedGeneration": generation, "updatedReplicas": updated,
                        "replicas": 3 + updated, "availableReplicas": 3}
    _edit(cluster, DEPLOYMENTS, "prod", name, observed)
    return rs


def _crash_looping(restarts: int = 3) -> Callable[[Obj], None]:
    def edit(pod: Obj) -> None:
        cs = pod["status"]["containerStatuses"][0]
        cs |= {"ready": False, "restartCount": restarts,
               "state": {"waiting": {"reason": "CrashLoopBackOff",
                                     "message": "back-off 40s restarting failed container=chat-gui"}},
               "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}
    return edit


def _waiting(reason: str, message: str = "") -> Callable[[Obj], None]:
    def edit(pod: Obj) -> None:
        cs = pod["status"]["containerStatuses"][0]
        cs |= {"ready": False, "state": {"waiting": {"reason": reason, "message": message}}}
    return edit


def _healthy(pod: Obj) -> None:
    pass


async def test_progress_until_the_controller_sees_the_spec(sandbox: SandboxServer,
                                                           k8s: KubernetesPlatform) -> None:
    generation = await k8s.set_image("chat-gui", "prod", target(), "r/chat-gui:v1.5.0", "c")
    progress = await k8s.progress("chat-gui", "prod", target(), generation)
    assert (progress.observed, progress.state, progress.revision) == (False, "progressing", None)
    assert progress.message == "waiting for the deployment controller to see the new spec"
    _act_as_controller(sandbox.cluster, updated=1, pods=[_healthy])
    progress = await k8s.progress("chat-gui", "prod", target(), generation)
    assert (progress.observed, progress.state, progress.revision) == (True, "progressing", 4)
    assert (progress.desired, progress.updated, progress.old) == (3, 1, 3)
    assert progress.message == "1 of 3 new replicas updated"
    assert progress.failing_pods == []


async def test_a_crash_looping_new_pod_fails_the_rollout_at_once(sandbox: SandboxServer,
                                                                  k8s: KubernetesPlatform) -> None:
    generation = await k8s.set_image("chat-gui", "prod", target(), "r/chat-gui:v1.5.0-broken", "c")
    rs = _act_as_controller(sandbox.cluster, updated=2, pods=[_crash_looping(3), _healthy])
    progress = await k8s.progress("chat-gui", "prod", target(), generation)
    [pod] = [p["metadata"]["name"] for p in sandbox.cluster.list(PODS, "prod", "app=chat-gui")[0]
             if p["metadata"]["name"].startswith(rs["metadata"]["name"])
             and p["status"]["containerStatuses"][0]["restartCount"]]
    assert (progress.state, progress.reason, progress.failing_pods) == (
        "failed", "CrashLoopBackOff", [pod])
    assert progress.message == f"{pod}: back-off restarting failed container (3 restarts, last: exit code 1)"
    assert progress.done


async def test_only_pods_of_the_new_replicaset_count(sandbox: SandboxServer,
                                                     k8s: KubernetesPlatform) -> None:
    cluster = sandbox.cluster
    generation = await k8s.set_image("chat-gui", "prod", target(), "r/chat-gui:v1.5.0", "c")
    old_pod = cluster.list(PODS, "prod", "app=chat-gui")[0][0]
    _crash_looping()(old_pod)
    cluster.update(PODS, old_pod)
    _act_as_controller(cluster, updated=1, pods=[_healthy])
    progress = await k8s.progress("chat-gui", "prod", target(), generation)
    assert (progress.state, progress.failing_pods) == ("progressing", [])


async def test_image_pull_failures_and_the_deadline(sandbox: SandboxServer,
                                                    k8s: KubernetesPlatform) -> None:
    cluster = sandbox.cluster
    generation = await k8s.set_image("chat-gui", "prod", target(), "r/chat-gui:v9", "c")
    _act_as_controller(cluster, updated=2, pods=[
        _waiting("ImagePullBackOff", 'Back-off pulling image "r/chat-gui:v9"'),
        _waiting("ErrImagePull", "rpc error: code = NotFound\nmore")])
    progress = await k8s.progress("chat-gui", "prod", target(), generation)
    assert (progress.state, progress.reason, len(progress.failing_pods)) == (
        "failed", "ImagePullBackOff", 2)
    assert progress.message == (
        f"{progress.failing_pods[0]}: cannot pull image r/chat-gui:v9 "
        '(Back-off pulling image "r/chat-gui:v9") (and 1 more pod)')

    def deadline(d: Obj) -> None:
        d["status"]["conditions"][1] |= {"status": "False", "reason": "ProgressDeadlineExceeded",
                                         "message": 'ReplicaSet "x" has timed out progressing.'}
    _edit(cluster, DEPLOYMENTS, "prod", "chat-gui", deadline)
    progress = await k8s.progress("chat-gui", "prod", target(), generation)
    assert (progress.state, progress.reason, len(progress.failing_pods)) == (
        "failed", "ProgressDeadlineExceeded", 2)
    assert progress.message.startswith('ReplicaSet "x" has timed out progressing.; ')  # type: ignore[union-attr]


def _deployment_json(generation: int = 2, observed: int = 2, desired: int = 3, paused: bool = False,
                     **status: Any) -> Obj:
    return {"metadata": {"name": "web", "generation": generation,
                         "annotations": {REVISION: "5"}},
            "spec": {"replicas": desired, "paused": paused},
            "status": {"observedGeneration": observed, "replicas": 3, "updatedReplicas": 3,
                       "readyReplicas": 3, "availableReplicas": 3, **status}}


@pytest.mark.parametrize(("deployment", "generation", "expected"), [
    (_deployment_json(), 2, {"state": "complete", "revision": 5, "message": None}),
    (_deployment_json(observed=1), 2, {"observed": False, "state": "progressing", "revision": None}),
    (_deployment_json(generation=3), 2, {"observed": False}),  # changed again since ours
    (_deployment_json(observed=3, generation=3), 2, {"state": "complete"}),
    (_deployment_json(updatedReplicas=1, replicas=4), 2,
     {"message": "1 of 3 new replicas updated", "old": 3}),
    (_deployment_json(replicas=4), 2, {"message": "1 old replicas pending termination", "old": 1}),
    (_deployment_json(availableReplicas=2), 2, {"message": "2 of 3 updated replicas available"}),
    (_deployment_json(paused=True), 2, {"state": "paused", "message": "the rollout is paused"}),
    (_deployment_json(desired=0, updatedReplicas=0), 0,
     {"state": "progressing", "message": "3 old replicas pending termination"}),
    (_deployment_json(conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]), 2,
     {"state": "failed", "reason": "ProgressDeadlineExceeded",
      "message": 'deployment "web" exceeded its progress deadline'}),
])
def test_rollout_status_semantics(deployment: Obj, generation: int, expected: dict[str, Any]) -> None:
    progress = rollout_progress(deployment, generation)
    assert {k: getattr(progress, k) for k in expected} == expected


def _pod(*statuses: Obj, init: tuple[Obj, ...] = (), deleting: bool = False) -> Obj:
    meta: Obj = {"name": "web-5d9c-x2k9p"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"containerStatuses": list(statuses),
                                         "initContainerStatuses": list(init)}}


def _cs(name: str = "web", restarts: int = 0, waiting: Obj | None = None,
        terminated: Obj | None = None, image: str = "r/web:v2") -> Obj:
    return {"name": name, "image": image, "restartCount": restarts,
            "state": {"waiting": waiting} if waiting else {"running": {}},
            "lastState": {"terminated": terminated} if terminated else {}}


@pytest.mark.parametrize(("pod", "expected"), [
    (_pod(_cs()), None),
    (_pod(_cs(restarts=1, terminated={"exitCode": 1})), None),
    (_pod(_cs(restarts=2, terminated={"exitCode": 137, "reason": "OOMKilled"})),
     ("CrashLoopBackOff", ("web-5d9c-x2k9p: back-off restarting failed container "
                           "(2 restarts, last: OOMKilled, exit code 137)"))),
    (_pod(_cs(restarts=1, waiting={"reason": "CrashLoopBackOff"})),
     ("CrashLoopBackOff", "web-5d9c-x2k9p: back-off restarting failed container (1 restart)")),
    (_pod(_cs(), _cs("sidecar", restarts=5, waiting={"reason": "CrashLoopBackOff"},
                     terminated={"exitCode": 2, "reason": "Error"})),
     ("CrashLoopBackOff", ("web-5d9c-x2k9p: back-off restarting failed container sidecar "
                           "(5 restarts, last: exit code 2)"))),
    (_pod(_cs(waiting={"reason": "ContainerCreating"})), None),
    (_pod(_cs(waiting={"reason": "ImagePullBackOff"})),
     ("ImagePullBackOff", "web-5d9c-x2k9p: cannot pull image r/web:v2")),
    (_pod(_cs(waiting={"reason": "InvalidImageName", "message": "bad"}, image="r/web:Bad Tag")),
     ("InvalidImageName", "web-5d9c-x2k9p: invalid image name r/web:Bad Tag")),
    (_pod(_cs(waiting={"reason": "CreateContainerConfigError",
                       "message": 'secret "db" not found'})),
     ("CreateContainerConfigError", 'web-5d9c-x2k9p: secret "db" not found')),
    (_pod(_cs(waiting={"reason": "PodInitializing"}),
          init=(_cs("migrate", waiting={"reason": "CrashLoopBackOff"}, restarts=4),)),
     ("CrashLoopBackOff", ("web-5d9c-x2k9p: back-off restarting failed container migrate "
                           "(4 restarts)"))),
    (_pod(_cs(waiting={"reason": "CrashLoopBackOff"}), deleting=True), None),
])
def test_pod_failures(pod: Obj, expected: tuple[str, str] | None) -> None:
    assert pod_failure(pod, "web") == expected


# --------------------------------------------------------------------------- logs


def _log_lines(pod: str, n: int, *, width: int = 60) -> Iterator[bytes]:
    """n lines, one a millisecond (plus i % 1000 ns), in chunks that split lines anywhere."""
    start = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)

    def stamp(i: int) -> str:
        return f"{start + timedelta(seconds=i // 1000):%Y-%m-%dT%H:%M:%S}.{i % 1000:03d}000{i % 1000:03d}Z"
    data = b"".join(f"{stamp(i)} {pod} line {i} ".encode() + b"x" * width + b"\n" for i in range(n))
    for at in range(0, len(data), 7919):
        yield data[at:at + 7919]


def _logs_of(pod: str, n: int, query: Any) -> Iterator[bytes]:
    return _log_lines(pod, n)


def _hello(pod: str, query: Any) -> list[bytes]:
    return [f"2026-11-30T02:00:00Z hello from {pod}\n".encode()]


async def test_logs_stream_every_pod_in_bounded_batches(sandbox: SandboxServer, proxy: Proxy,
                                                        proxied: KubernetesPlatform) -> None:
    pods = [p["metadata"]["name"] for p in sandbox.cluster.list(PODS, "prod", "app=chat-gui")[0]]
    for name in pods:
        proxy.logs[name] = functools.partial(_logs_of, name, 20_000)
    query = LogQuery(since=timedelta(minutes=10, milliseconds=1), tail=500, previous=True)
    sources = await proxied.log_sources("chat-gui", "prod", target(), query)
    assert [name for name, _ in sources] == sorted(pods)
    asked = proxy.requests("GET")[-3:]
    assert {s.path.rsplit("/", 2)[-2] for s in asked} == set(pods)
    assert all(s.query == {"container": ["chat-gui"], "previous": ["true"], "sinceSeconds": ["601"],
                           "tailLines": ["500"], "timestamps": ["true"]} for s in asked)
    lines = [line async for line in merge([stream for _, stream in sources])]
    assert len(lines) == 60_000
    assert [ts for ts, _, _ in lines] == sorted(ts for ts, _, _ in lines)
    first = [line for line in lines if line[1] == pods[0]]
    assert first[0][2].startswith(f"{pods[0]} line 0 ") and first[-1][2].startswith(f"{pods[0]} line 19999 ")
    assert first[1234][0].nanosecond == 234  # type: ignore[attr-defined]  # 000001234 ns


async def test_closing_a_log_stream_early_stops_its_reader(sandbox: SandboxServer, proxy: Proxy,
                                                           proxied: KubernetesPlatform) -> None:
    pod = sandbox.cluster.list(PODS, "prod", "app=chat-gui")[0][0]["metadata"]["name"]
    produced = 0

    def endless(query: Any) -> Iterator[bytes]:
        nonlocal produced
        while True:
            produced += 1
            yield b"2026-11-30T02:00:00Z spam\n" * 1000
    proxy.logs[pod] = endless
    [(_, stream)] = await proxied.log_sources("chat-gui", "prod", target(), LogQuery(pod=pod))
    n = 0
    async for _line in stream:
        n += 1
        if n == 10:
            break
    await asyncio.sleep(0.5)
    read_ahead = produced
    await asyncio.sleep(0.5)
    # the reader waits on the full queue (4 x 64 KiB) while socket buffers fill: no more is read
    assert produced == read_ahead
    started = time.monotonic()
    await stream.aclose()  # type: ignore[attr-defined]
    assert time.monotonic() - started < 2
    assert not [t for t in threading.enumerate() if t.name == f"pod-log-{pod}"]
    assert len(await proxied.history("chat-gui", "prod", target())) == 3  # the pool is fine


async def test_a_log_stream_that_breaks_off_is_an_error(sandbox: SandboxServer, proxy: Proxy,
                                                        proxied: KubernetesPlatform) -> None:
    pod = sandbox.cluster.list(PODS, "prod", "app=chat-gui")[0][0]["metadata"]["name"]

    def broken(query: Any) -> Iterator[bytes]:
        yield b"2026-11-30T02:00:00Z first\n2026-11-30T02:00:01Z sec"
        raise ConnectionResetError("the kubelet went away")
    proxy.logs[pod] = broken
    [(_, stream)] = await proxied.log_sources("chat-gui", "prod", target(), LogQuery(pod=pod))
    seen = []
    with pytest.raises(Unreachable) as err:
        async for line in stream:
            seen.append(line[2])
    assert str(err.value) == f"cannot reach the cluster at {proxy.url}: the connection broke"
    assert seen == ["first", "sec"]


async def test_log_sources_choose_pods_and_containers(sandbox: SandboxServer, proxy: Proxy,
                                                      proxied: KubernetesPlatform) -> None:
    pods = sorted(p["metadata"]["name"] for p in sandbox.cluster.list(PODS, "prod", "app=chat-gui")[0])
    for name in pods:
        proxy.logs[name] = functools.partial(_hello, name)
    sources = await proxied.log_sources("chat-gui", "prod", target(), LogQuery(pod=pods[1]))
    assert [name for name, _ in sources] == [pods[1]]
    assert [line[2] async for line in sources[0][1]] == [f"hello from {pods[1]}"]
    with pytest.raises(PlatformError) as err:
        await proxied.log_sources("chat-gui", "prod", target(), LogQuery(pod="chat-gui-nope"))
    assert str(err.value) == f"no pod chat-gui-nope in deployment prod/chat-gui; pods: {', '.join(pods)}"
    with pytest.raises(PlatformError) as err:
        await proxied.log_sources("chat-gui", "prod", target(), LogQuery(container="envoy"))
    assert str(err.value) == f"pod {pods[0]} has no container 'envoy' (containers: chat-gui)"
    with pytest.raises(NotFound, match="^deployment prod/gone not found$"):
        await proxied.log_sources("gone", "prod", target("gone"), LogQuery())


async def test_pods_without_logs_are_left_out_while_others_have_some(
        sandbox: SandboxServer, proxy: Proxy, proxied: KubernetesPlatform) -> None:
    pods = sorted(p["metadata"]["name"] for p in sandbox.cluster.list(PODS, "prod", "app=chat-gui")[0])

    def no_previous(name: str) -> Callable[[Any], Refusal]:
        return lambda query: Refusal(
            400, f'previous terminated container "chat-gui" in pod "{name}" not found')
    proxy.logs[pods[0]] = lambda query: [b"2026-11-30T02:00:00Z before the crash\n"]
    for name in pods[1:]:
        proxy.logs[name] = no_previous(name)
    sources = await proxied.log_sources("chat-gui", "prod", target(), LogQuery(previous=True))
    assert [name for name, _ in sources] == [pods[0]]
    assert [line[2] async for line in sources[0][1]] == ["before the crash"]

    proxy.logs[pods[0]] = no_previous(pods[0])
    with pytest.raises(PlatformError) as err:
        await proxied.log_sources("chat-gui", "prod", target(), LogQuery(previous=True))
    assert str(err.value) == (f'no logs of {pods[0]}: previous terminated container "chat-gui" '
                              f'in pod "{pods[0]}" not found')

    proxy.logs[pods[0]] = lambda query: [b"2026-11-30T02:00:00Z fine\n"]
    proxy.logs[pods[2]] = lambda query: Refusal(403, "pods/log is forbidden")
    with pytest.raises(PlatformError) as err:
        await proxied.log_sources("chat-gui", "prod", target(), LogQuery())
    assert str(err.value) == f"not allowed to read the logs of pod prod/{pods[2]}: pods/log is forbidden"


# --------------------------------------------------------------------------- faults


async def test_a_stopped_server_is_unreachable_quickly(tmp_path: Path) -> None:
    server = SandboxServer(cluster=Cluster()).start()
    platform = KubernetesPlatform(server.write_kubeconfig(tmp_path / "kubeconfig"))
    server.stop()
    calls = {
        "set_image": platform.set_image("chat-gui", "prod", target(), "x:1", "c"),
        "progress": platform.progress("chat-gui", "prod", target(), 2),
        "history": platform.history("chat-gui", "prod", target()),
        "rollback": platform.rollback("chat-gui", "prod", target(), None, "c"),
        "log_sources": platform.log_sources("chat-gui", "prod", target(), LogQuery()),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(Unreachable) as err:
            await call
        assert time.monotonic() - started < 3, name
        assert str(err.value) == f"cannot reach the cluster at {server.url}: connection refused"
    await platform.close()


async def test_a_broken_kubeconfig_is_a_platform_error(tmp_path: Path) -> None:
    platform = KubernetesPlatform(tmp_path / "absent")
    with pytest.raises(PlatformError) as err:
        await platform.history("chat-gui", "prod", target())
    assert str(err.value).startswith(f"kubeconfig {tmp_path / 'absent'}")


# --------------------------------------------------------------------------- with the controllers


@pytest.fixture
def live() -> Iterator[SandboxServer]:
    """The seeded world with the sandbox's controllers at 20x speed (the seeded 60 s progress
    deadline passes in 3 s), ticking every 50 ms."""
    cluster = seed(Cluster())
    install(cluster, Timing.fast(SPEED))
    with SandboxServer(cluster=cluster, tick_interval=0.05) as server:
        yield server


@pytest.fixture
async def live_k8s(live: SandboxServer, tmp_path: Path) -> AsyncIterator[KubernetesPlatform]:
    platform = KubernetesPlatform(live.write_kubeconfig(tmp_path / "kubeconfig"))
    yield platform
    await platform.close()


SPEED = 20.0
DEADLINE_REAL = PROGRESS_DEADLINE / SPEED  # the seeded progressDeadlineSeconds, in real seconds


async def _watch(platform: KubernetesPlatform, generation: int, *, timeout: float = 20,
                 t: KubernetesTarget | None = None) -> tuple[list[RolloutProgress], float]:
    """Poll progress every 0.1 s until done; every look, and the seconds it took."""
    started = time.monotonic()
    seen: list[RolloutProgress] = []
    while time.monotonic() - started < timeout:
        seen.append(await platform.progress("chat-gui", "prod", t or target(), generation))
        if seen[-1].done:
            return seen, time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"not done after {timeout} s: {seen[-1]}")


async def test_a_good_version_rolls_out_to_complete(live: SandboxServer,
                                                    live_k8s: KubernetesPlatform) -> None:
    generation = await live_k8s.set_image("chat-gui", "prod", target(),
                                          "registry.local/dgg/chat-gui:v1.5.0", "opsbot: deploy v1.5.0")
    seen, seconds = await _watch(live_k8s, generation)
    last = seen[-1]
    assert (last.state, last.revision, last.desired, last.updated, last.available, last.old) == (
        "complete", 4, 3, 3, 3, 0)
    assert not seen[0].observed and all(p.state == "progressing" for p in seen[:-1])
    updated = [p.updated for p in seen if p.observed]
    assert updated == sorted(updated) and updated[0] < 3  # rolled, not swapped at once
    assert seconds < 10, seconds
    history = await live_k8s.history("chat-gui", "prod", target())
    assert [(r.revision, r.version, r.current) for r in history][-2:] == [
        (3, "v1.4.0", False), (4, "v1.5.0", True)]
    assert history[-1].change_cause == "opsbot: deploy v1.5.0" and history[-1].replicas == 3
    state = await live_k8s.get_state("chat-gui", "prod", target())
    assert state.healthy and state.version == "v1.5.0" and state.revision == 4


async def test_a_broken_version_fails_early_and_rolls_back(live: SandboxServer,
                                                           live_k8s: KubernetesPlatform) -> None:
    generation = await live_k8s.set_image("chat-gui", "prod", target(),
                                          "registry.local/dgg/chat-gui:v1.5.0-broken", "broken")
    seen, seconds = await _watch(live_k8s, generation)
    failed = seen[-1]
    assert (failed.state, failed.reason, failed.revision) == ("failed", "CrashLoopBackOff", 4)
    assert seconds < DEADLINE_REAL, seconds  # before the deadline, by the pods
    new_rs = next(rs["metadata"]["name"] for rs in live.cluster.list(REPLICASETS, "prod", "app=chat-gui")[0]
                  if rs["metadata"]["annotations"][REVISION] == "4")
    assert failed.failing_pods and all(p.startswith(f"{new_rs}-") for p in failed.failing_pods)
    assert failed.message and failed.message.startswith(
        f"{failed.failing_pods[0]}: back-off restarting failed container (")
    assert failed.available == 3  # the old pods still serve

    back_to, generation = await live_k8s.rollback("chat-gui", "prod", target(), None, "undo broken")
    assert (back_to.revision, back_to.version) == (3, "v1.4.0")
    seen, _ = await _watch(live_k8s, generation)
    assert (seen[-1].state, seen[-1].revision) == ("complete", 5)  # revision 3 comes back as 5
    history = await live_k8s.history("chat-gui", "prod", target())
    assert [(r.revision, r.version, r.current, r.change_cause) for r in history] == [
        (1, "v1.2.0", False, "opsbot: deploy chat-gui v1.2.0 by admin in #ops"),
        (2, "v1.3.0", False, "opsbot: deploy chat-gui v1.3.0 by mod in #ops"),
        (4, "v1.5.0-broken", False, "broken"),
        (5, "v1.4.0", True, "undo broken")]
    assert all(p.version == "v1.4.0" and p.ready for p in
               (await live_k8s.get_state("chat-gui", "prod", target())).pods)


async def test_an_unpullable_image_fails_early(live: SandboxServer,
                                               live_k8s: KubernetesPlatform) -> None:
    generation = await live_k8s.set_image("chat-gui", "prod", target(),
                                          "registry.local/dgg/chat-gui:v9-missing", "typo")
    seen, seconds = await _watch(live_k8s, generation)
    assert seen[-1].state == "failed" and seen[-1].reason in ("ErrImagePull", "ImagePullBackOff")
    assert "cannot pull image registry.local/dgg/chat-gui:v9-missing" in (seen[-1].message or "")
    assert seconds < DEADLINE_REAL, seconds


async def _read_all(sources: list[tuple[str, Any]]) -> list[Any]:
    return [line async for line in merge([stream for _, stream in sources])]


async def test_logs_of_three_pods_with_tail_since_and_previous(live: SandboxServer,
                                                              live_k8s: KubernetesPlatform) -> None:
    pods = sorted(p["metadata"]["name"] for p in live.cluster.list(PODS, "prod", "app=chat-gui")[0])
    tail = await live_k8s.log_sources("chat-gui", "prod", target(), LogQuery(tail=5))
    assert [name for name, _ in tail] == pods
    lines = await _read_all(tail)
    assert sorted(source for _, source, _ in lines) == sorted(pods * 5)
    assert [ts for ts, _, _ in lines] == sorted(ts for ts, _, _ in lines)
    assert all(ts.tzinfo is not None and text and not text[:4].isdigit() for ts, _, text in lines)

    since = timedelta(minutes=10)
    window = await _read_all(await live_k8s.log_sources(
        "chat-gui", "prod", target(), LogQuery(since=since, tail=None)))
    now = live.cluster.now()
    assert all(now - since - timedelta(seconds=2) <= ts <= now + timedelta(seconds=2)
               for ts, _, _ in window)
    assert 3 * 500 < len(window) < 3 * 700  # about a line a second from each pod

    with pytest.raises(PlatformError) as err:  # healthy pods have no previous container
        await live_k8s.log_sources("chat-gui", "prod", target(), LogQuery(previous=True))
    assert str(err.value) == (f'no logs of {pods[0]}: previous terminated container "chat-gui" '
                              f'in pod "{pods[0]}" not found')


async def test_previous_logs_of_a_crash_looping_pod(live: SandboxServer,
                                                    live_k8s: KubernetesPlatform) -> None:
    generation = await live_k8s.set_image("chat-gui", "prod", target(),
                                          "registry.local/dgg/chat-gui:v1.5.0-broken", "broken")
    seen, _ = await _watch(live_k8s, generation)
    crashed = seen[-1].failing_pods
    sources = await live_k8s.log_sources("chat-gui", "prod", target(),
                                         LogQuery(previous=True, tail=None))
    assert [name for name, _ in sources] == sorted(crashed)  # the others have no previous run
    lines = await _read_all(sources)
    assert lines and lines[-1][2]  # the run's last words: its crash trace
    assert any("crash" in text.lower() or "error" in text.lower() for _, _, text in lines[-12:])
