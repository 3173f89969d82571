"""Writes: the three patch types (pure), then PATCH/POST/PUT/DELETE over HTTP and with kubectl."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from sandbox.cluster import (
    DEPLOYMENTS,
    NAMESPACES,
    PODS,
    REPLICASETS,
    Obj,
    PatchError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from sandbox.server import SandboxServer

DOC: Obj = {
    "metadata": {"name": "chat", "labels": {"app": "chat"}, "finalizers": ["a"]},
    "spec": {
        "replicas": 3,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
        "template": {"spec": {"containers": [
            {"name": "chat", "image": "chat:v1", "env": [{"name": "A", "value": "1"}]},
            {"name": "proxy", "image": "envoy:1", "args": ["-a", "-b"]},
        ]}},
    },
}


def _containers(doc: Obj) -> list[Obj]:
    return doc["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize(
    ("ops", "check"),
    [
        ([{"op": "replace", "path": "/spec/replicas", "value": 5}],
         lambda d: d["spec"]["replicas"] == 5),
        ([{"op": "add", "path": "/metadata/labels/tier", "value": "web"}],
         lambda d: d["metadata"]["labels"] == {"app": "chat", "tier": "web"}),
        ([{"op": "add", "path": "/metadata/finalizers/-", "value": "b"}],
         lambda d: d["metadata"]["finalizers"] == ["a", "b"]),
        ([{"op": "add", "path": "/metadata/finalizers/0", "value": "z"}],
         lambda d: d["metadata"]["finalizers"] == ["z", "a"]),
        ([{"op": "remove", "path": "/spec/template/spec/containers/1"}],
         lambda d: [c["name"] for c in _containers(d)] == ["chat"]),
        ([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "chat:v2"}],
         lambda d: _containers(d)[0]["image"] == "chat:v2"),
        ([{"op": "test", "path": "/spec/replicas", "value": 3},
          {"op": "copy", "from": "/metadata/labels", "path": "/spec/selector"}],
         lambda d: d["spec"]["selector"] == {"app": "chat"}),
        ([{"op": "move", "from": "/metadata/labels/app", "path": "/metadata/labels/name"}],
         lambda d: d["metadata"]["labels"] == {"name": "chat"}),
        ([{"op": "add", "path": "/metadata/annotations", "value": {"a~/b": "1"}},
          {"op": "replace", "path": "/metadata/annotations/a~0~1b", "value": "2"}],
         lambda d: d["metadata"]["annotations"] == {"a~/b": "2"}),
    ],
)
def test_json_patch(ops: list[Obj], check: Any) -> None:
    before = json.dumps(DOC)
    assert check(json_patch(DOC, ops))
    assert json.dumps(DOC) == before  # the input is never changed


@pytest.mark.parametrize(
    "ops",
    [
        {"op": "add"},
        [{"op": "test", "path": "/spec/replicas", "value": 4}],
        [{"op": "replace", "path": "/spec/nope", "value": 1}],
        [{"op": "remove", "path": "/metadata/finalizers/3"}],
        [{"op": "add", "path": "/nope/deeper", "value": 1}],
        [{"op": "add", "path": "spec", "value": 1}],
        [{"op": "frobnicate", "path": "/spec"}],
        [{"op": "remove", "path": ""}],
    ],
)
def test_bad_json_patches(ops: Any) -> None:
    with pytest.raises(PatchError):
        json_patch(DOC, ops)


def test_merge_patch_replaces_lists_and_deletes_on_null() -> None:
    patched = merge_patch(DOC, {"metadata": {"labels": {"app": None, "tier": "web"}},
                                "spec": {"template": {"spec": {"containers": [{"name": "x"}]}}}})
    assert patched["metadata"]["labels"] == {"tier": "web"}
    assert _containers(patched) == [{"name": "x"}]
    assert patched["spec"]["replicas"] == 3


@pytest.mark.parametrize(
    ("patch", "check"),
    [
        # kubectl set image: containers merge by name, order directives are accepted
        ({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "chat"}, {"name": "proxy"}],
            "containers": [{"name": "chat", "image": "chat:v2"}]}}}},
         lambda d: [(c["name"], c["image"]) for c in _containers(d)]
         == [("chat", "chat:v2"), ("proxy", "envoy:1")] and _containers(d)[0]["env"]),
        # nested merge by key, and a new element is appended
        ({"spec": {"template": {"spec": {"containers": [
            {"name": "chat", "env": [{"name": "B", "value": "2"}]},
            {"name": "sidecar", "image": "s:1"}]}}}},
         lambda d: _containers(d)[0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
         and [c["name"] for c in _containers(d)] == ["chat", "proxy", "sidecar"]),
        # $patch: delete removes an element by key
        ({"spec": {"template": {"spec": {"containers": [{"name": "proxy", "$patch": "delete"}]}}}},
         lambda d: [c["name"] for c in _containers(d)] == ["chat"]),
        # $patch: replace on a list and on a map
        ({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "only"}]}}}},
         lambda d: _containers(d) == [{"name": "only"}]),
        ({"metadata": {"labels": {"$patch": "replace", "x": "y"}}},
         lambda d: d["metadata"]["labels"] == {"x": "y"}),
        # lists without a merge key are replaced; null deletes
        ({"spec": {"template": {"spec": {"containers": [{"name": "proxy", "args": ["-c"]}]}}},
          "metadata": {"labels": {"app": None}}},
         lambda d: _containers(d)[1]["args"] == ["-c"] and d["metadata"]["labels"] == {}),
        # $retainKeys (kubectl apply switching the strategy type)
        ({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None}}},
         lambda d: d["spec"]["strategy"] == {"type": "Recreate"}),
        # finalizers are a merged set; $deleteFromPrimitiveList removes
        ({"metadata": {"finalizers": ["b", "a"]}},
         lambda d: d["metadata"]["finalizers"] == ["a", "b"]),
        ({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}},
         lambda d: d["metadata"]["finalizers"] == []),
    ],
)
def test_strategic_merge_patch(patch: Obj, check: Any) -> None:
    before = json.dumps(DOC)
    assert check(strategic_merge_patch(DOC, patch))
    assert json.dumps(DOC) == before


def test_strategic_merge_patch_needs_the_merge_key() -> None:
    with pytest.raises(PatchError, match="lacks it"):
        strategic_merge_patch(DOC, {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}})


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
def apps(fresh_sandbox: SandboxServer, tmp_path: Path) -> Iterator[client.AppsV1Api]:
    path = fresh_sandbox.write_kubeconfig(tmp_path / "config")
    with config.new_client_from_config(str(path)) as api:
        yield client.AppsV1Api(api)


def test_patch_types_over_http(fresh_sandbox: SandboxServer, apps: client.AppsV1Api) -> None:
    before = apps.read_namespaced_deployment("chat", "prod")
    smp = {"spec": {"template": {"spec": {"containers": [
        {"name": "chat", "image": "registry.local/dgg/chat:v1.5.0"}]}}}}
    patched = apps.patch_namespaced_deployment("chat", "prod", smp)  # strategic merge
    container = patched.spec.template.spec.containers[0]
    assert container.image == "registry.local/dgg/chat:v1.5.0"
    assert container.readiness_probe is not None  # merged, not replaced
    assert patched.metadata.generation == before.metadata.generation + 1
    assert int(patched.metadata.resource_version) > int(before.metadata.resource_version)
    jp = [{"op": "replace", "path": "/spec/replicas", "value": 4}]
    assert apps.patch_namespaced_deployment("chat", "prod", jp).spec.replicas == 4
    stored = fresh_sandbox.cluster.get(DEPLOYMENTS, "prod", "chat")
    assert stored["spec"]["replicas"] == 4


def test_patch_errors_over_http(apps: client.AppsV1Api) -> None:
    failing_test = [{"op": "test", "path": "/spec/replicas", "value": 99}]
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 2}}
    for body, status, reason in [(failing_test, 422, "Invalid"), (stale, 409, "Conflict")]:
        with pytest.raises(client.ApiException) as err:
            apps.patch_namespaced_deployment("chat", "prod", body)
        assert err.value.status == status
        assert json.loads(err.value.body)["reason"] == reason
    with pytest.raises(client.ApiException) as missing:
        apps.patch_namespaced_deployment("nope", "prod", {"spec": {}})
    assert missing.value.status == 404


def test_create_replace_delete_over_http(fresh_sandbox: SandboxServer,
                                         apps: client.AppsV1Api) -> None:
    body = {"metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}}
    created = apps.create_namespaced_deployment("dev", body)
    assert (created.metadata.namespace, created.metadata.generation) == ("dev", 1)
    created.spec.replicas = 2
    replaced = apps.replace_namespaced_deployment("web", "dev", created)
    assert (replaced.spec.replicas, replaced.metadata.generation) == (2, 2)
    with pytest.raises(client.ApiException) as conflict:
        apps.replace_namespaced_deployment("web", "dev", created)  # stale resourceVersion
    assert conflict.value.status == 409
    apps.delete_namespaced_deployment("web", "dev")
    assert not fresh_sandbox.cluster.list(DEPLOYMENTS, "dev", "app=web")[0]


def test_delete_cascades_unless_orphaned(fresh_sandbox: SandboxServer,
                                         apps: client.AppsV1Api) -> None:
    cluster = fresh_sandbox.cluster
    apps.delete_namespaced_deployment("chat", "prod")
    assert cluster.list(REPLICASETS, "prod", "app=chat")[0] == []
    assert cluster.list(PODS, "prod", "app=chat")[0] == []
    apps.delete_namespaced_deployment("auth", "prod", propagation_policy="Orphan")
    orphans = cluster.list(REPLICASETS, "prod", "app=auth")[0]
    assert len(orphans) == 3 and all("ownerReferences" not in rs["metadata"] for rs in orphans)
    assert len(cluster.list(PODS, "prod", "app=auth")[0]) == 3  # still owned by their RS
    client.CoreV1Api(apps.api_client).delete_namespace("staging")
    assert cluster.list(DEPLOYMENTS, "staging")[0] == []
    assert "staging" not in {n["metadata"]["name"] for n in cluster.list(NAMESPACES)[0]}


# --------------------------------------------------------------------------- kubectl


@pytest.fixture
def kubectl_fresh(kubectl_binary: str, fresh_sandbox: SandboxServer, tmp_path: Path) -> Any:
    path = fresh_sandbox.write_kubeconfig(tmp_path / "config")

    def run(*args: str) -> str:
        proc = subprocess.run([kubectl_binary, "--kubeconfig", str(path), *args],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    return run


@pytest.mark.integration
def test_kubectl_set_image_annotate_and_rollout_undo(fresh_sandbox: SandboxServer,
                                                    kubectl_fresh: Any) -> None:
    cluster = fresh_sandbox.cluster
    kubectl_fresh("set", "image", "deploy/chat", "chat=registry.local/dgg/chat:v1.5.0", "-n", "prod")
    deployment = cluster.get(DEPLOYMENTS, "prod", "chat")
    assert _containers(deployment)[0]["image"] == "registry.local/dgg/chat:v1.5.0"
    kubectl_fresh("annotate", "deploy/chat", "-n", "prod", "--overwrite",
                  "kubernetes.io/change-cause=by test")
    kubectl_fresh("label", "deploy/chat", "-n", "prod", "team=ops")
    deployment = cluster.get(DEPLOYMENTS, "prod", "chat")
    assert deployment["metadata"]["annotations"]["kubernetes.io/change-cause"] == "by test"
    assert deployment["metadata"]["labels"]["team"] == "ops"
    out = kubectl_fresh("rollout", "undo", "deploy/chat", "-n", "prod", "--to-revision=1")
    assert "rolled back" in out
    deployment = cluster.get(DEPLOYMENTS, "prod", "chat")
    assert _containers(deployment)[0]["image"] == "registry.local/dgg/chat:v1.2.0"


@pytest.mark.integration
def test_kubectl_create_and_delete(fresh_sandbox: SandboxServer, kubectl_fresh: Any,
                                   tmp_path: Path) -> None:
    manifest = tmp_path / "web.json"
    manifest.write_text(json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "dev", "creationTimestamp": None},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}}))
    # kubectl validates client-side with the OpenAPI document, which the sandbox does not serve
    assert "created" in kubectl_fresh("create", "-f", str(manifest), "--validate=false")
    assert kubectl_fresh("get", "deploy", "web", "-n", "dev").splitlines()[1].split()[-1] != "<unknown>"
    assert "deleted" in kubectl_fresh("delete", "pods", "-n", "prod", "-l", "app=chat")
    assert fresh_sandbox.cluster.list(PODS, "prod", "app=chat")[0] == []
    assert "deleted" in kubectl_fresh("delete", "-f", str(manifest))
