"""The sandbox over HTTP, through the official ``kubernetes`` client."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config, watch
from kubernetes.dynamic import DynamicClient

from sandbox.cluster import DEPLOYMENTS, PODS, Cluster
from sandbox.server import SandboxServer


def _api_client(server: SandboxServer, tmp_path: Path) -> client.ApiClient:
    return config.new_client_from_config(str(server.write_kubeconfig(tmp_path / "config")))


@pytest.fixture
def api(sandbox: SandboxServer, tmp_path: Path) -> Iterator[client.ApiClient]:
    with _api_client(sandbox, tmp_path) as api_client:
        yield api_client


def test_list_deployments_per_namespace_and_everywhere(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    prod = apps.list_namespaced_deployment("prod")
    assert sorted(d.metadata.name for d in prod.items) == [
        "auth", "chat", "chat-gui", "modbot", "strims"]
    assert all(d.status.ready_replicas == 3 for d in prod.items)
    assert int(prod.metadata.resource_version) > 0
    everywhere = apps.list_deployment_for_all_namespaces()
    assert len(everywhere.items) == 15


def test_get_deployment_reads_like_a_real_one(api: client.ApiClient) -> None:
    deployment = client.AppsV1Api(api).read_namespaced_deployment("chat-gui", "prod")
    assert deployment.spec.template.spec.containers[0].image == "registry.local/dgg/chat-gui:v1.4.0"
    assert deployment.spec.strategy.rolling_update.max_surge == "25%"
    assert deployment.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    assert deployment.status.observed_generation == deployment.metadata.generation
    conditions = {c.type: c.reason for c in deployment.status.conditions}
    assert conditions == {"Available": "MinimumReplicasAvailable",
                          "Progressing": "NewReplicaSetAvailable"}


def test_replicasets_and_pods_belong_to_the_deployment(api: client.ApiClient) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    replicasets = apps.list_namespaced_replica_set("prod", label_selector="app=chat")
    current = next(rs for rs in replicasets.items if rs.spec.replicas)
    assert current.metadata.owner_references[0].kind == "Deployment"
    template_hash = current.metadata.labels["pod-template-hash"]
    pods = core.list_namespaced_pod("prod", label_selector=f"app=chat,pod-template-hash={template_hash}")
    assert len(pods.items) == 3
    for pod in pods.items:
        assert pod.metadata.owner_references[0].name == current.metadata.name
        assert pod.status.phase == "Running"
        assert pod.status.container_statuses[0].ready
        assert pod.status.container_statuses[0].restart_count == 0


def test_selectors_over_http(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    pods = core.list_pod_for_all_namespaces(label_selector="app in (chat,auth),tier notin (db)")
    assert {p.metadata.labels["app"] for p in pods.items} == {"chat", "auth"}
    assert len(pods.items) == 2 * (3 + 2 + 1)
    one = pods.items[0].metadata.name
    by_name = core.list_namespaced_pod(pods.items[0].metadata.namespace,
                                       field_selector=f"metadata.name={one}")
    assert [p.metadata.name for p in by_name.items] == [one]
    namespaces = core.list_namespace(label_selector="kubernetes.io/metadata.name")
    assert {"dev", "staging", "prod"} <= {n.metadata.name for n in namespaces.items}


_SPEC = {"selector": {"matchLabels": {"app": "x"}},
         "template": {"metadata": {"labels": {"app": "x"}},
                      "spec": {"containers": [{"name": "x", "image": "x:1"}]}}}


@pytest.mark.parametrize(
    ("call", "status", "reason", "message"),
    [
        (lambda api: client.AppsV1Api(api).read_namespaced_deployment("nope", "prod"),
         404, "NotFound", 'deployments.apps "nope" not found'),
        (lambda api: client.CoreV1Api(api).read_namespace("nope"),
         404, "NotFound", 'namespaces "nope" not found'),
        (lambda api: client.CoreV1Api(api).list_namespaced_pod("prod", label_selector="a in b"),
         400, "BadRequest", "unable to parse requirement"),
        (lambda api: client.AppsV1Api(api).create_namespaced_deployment(
            "prod", {"metadata": {"name": "chat"}, "spec": _SPEC}),
         409, "AlreadyExists", 'deployments.apps "chat" already exists'),
        (lambda api: client.AppsV1Api(api).create_namespaced_deployment(
            "prod", {"metadata": {"name": "Not_Valid"}, "spec": _SPEC}),
         422, "Invalid", 'Deployment.apps "Not_Valid" is invalid: metadata.name'),
    ],
)
def test_errors_are_status_bodies(api: client.ApiClient, call, status: int, reason: str,
                                  message: str) -> None:
    with pytest.raises(client.ApiException) as err:
        call(api)
    assert err.value.status == status
    body = json.loads(err.value.body)
    assert (body["kind"], body["apiVersion"], body["status"]) == ("Status", "v1", "Failure")
    assert (body["reason"], body["code"]) == (reason, status)
    assert message in body["message"]


def test_watch_streams_changes_with_resource_versions(fresh_sandbox: SandboxServer,
                                                      tmp_path: Path) -> None:
    cluster = fresh_sandbox.cluster
    with _api_client(fresh_sandbox, tmp_path) as api_client:
        apps = client.AppsV1Api(api_client)
        listed = apps.list_namespaced_deployment("prod")

        def scale() -> None:
            time.sleep(0.2)
            chat = cluster.get(DEPLOYMENTS, "prod", "chat")
            chat["spec"]["replicas"] = 5
            cluster.update(DEPLOYMENTS, chat)
            cluster.delete(DEPLOYMENTS, "prod", "modbot")

        threading.Thread(target=scale).start()
        events = []
        stream = watch.Watch().stream(apps.list_namespaced_deployment, "prod",
                                      resource_version=listed.metadata.resource_version,
                                      timeout_seconds=2)
        for event in stream:
            events.append((event["type"], event["object"].metadata.name,
                           int(event["object"].metadata.resource_version)))
            if len(events) == 2:
                break
        assert [e[:2] for e in events] == [("MODIFIED", "chat"), ("DELETED", "modbot")]
        assert int(listed.metadata.resource_version) < events[0][2] < events[1][2]


def test_watch_without_resource_version_starts_with_the_current_state(api: client.ApiClient) -> None:
    started = time.monotonic()
    events = list(watch.Watch().stream(client.CoreV1Api(api).list_namespace, timeout_seconds=1))
    assert time.monotonic() - started < 5  # timeoutSeconds ends the stream
    assert {"dev", "staging", "prod"} <= {e["object"].metadata.name for e in events
                                          if e["type"] == "ADDED"}


def test_watch_with_a_label_selector(fresh_sandbox: SandboxServer, tmp_path: Path) -> None:
    cluster = fresh_sandbox.cluster
    with _api_client(fresh_sandbox, tmp_path) as api_client:
        core = client.CoreV1Api(api_client)
        rv = core.list_namespaced_pod("prod").metadata.resource_version
        for pod in cluster.list(PODS, "prod")[0]:
            cluster.delete(PODS, "prod", pod["metadata"]["name"])
        events = list(watch.Watch().stream(core.list_namespaced_pod, "prod", label_selector="app=auth",
                                           resource_version=rv, timeout_seconds=1))
        assert [e["type"] for e in events] == ["DELETED"] * 3
        assert {e["object"].metadata.labels["app"] for e in events} == {"auth"}


def test_server_on_a_given_cluster_and_port_and_restart(tmp_path: Path) -> None:
    cluster = Cluster()
    server = SandboxServer(cluster=cluster).start()
    port = server.port
    server.stop()
    with SandboxServer(port=port, cluster=cluster) as again:
        assert again.url == f"http://127.0.0.1:{port}"
        with _api_client(again, tmp_path) as api_client:
            assert client.CoreV1Api(api_client).list_namespace().items == []
            assert client.VersionApi(api_client).get_code().git_version.startswith("v1.")


def test_start_fails_loudly_when_the_port_is_taken(sandbox: SandboxServer) -> None:
    with pytest.raises(OSError):
        SandboxServer(port=sandbox.port, cluster=Cluster()).start()


def test_legacy_discovery_serves_the_dynamic_client(api: client.ApiClient) -> None:
    dynamic = DynamicClient(api)
    deployments = dynamic.resources.get(api_version="apps/v1", kind="Deployment")
    assert deployments.namespaced and "deploy" in deployments.short_names
    names = sorted(d.metadata.name for d in deployments.get(namespace="prod").items)
    assert names == ["auth", "chat", "chat-gui", "modbot", "strims"]
    pods = dynamic.resources.get(api_version="v1", kind="Pod")
    assert len(pods.get(namespace="dev").items) == 5


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/apis/networking.k8s.io/v1/ingresses", 404),
        ("GET", "/api/v1/namespaces/prod/pods/x/log", 404),
        ("GET", "/openapi/v2", 404),
        ("GET", "/api/v1/pods/x", 404),
        ("POST", "/apis/apps/v1/namespaces/prod/deployments/chat", 405),
        ("PATCH", "/apis/apps/v1/namespaces/prod/deployments/chat", 415),
    ],
)
def test_raw_requests(sandbox: SandboxServer, method: str, path: str, status: int) -> None:
    request = urllib.request.Request(sandbox.url + path, method=method, data=b"{}" if
                                     method != "GET" else None)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == status
    body = json.loads(err.value.read())
    assert (body["kind"], body["code"]) == ("Status", status)


def test_kind_mismatch(api: client.ApiClient) -> None:
    with pytest.raises(client.ApiException) as mismatch:
        client.CoreV1Api(api).create_namespaced_pod(
            "prod", {"apiVersion": "apps/v1", "kind": "Pod", "metadata": {"name": "x"},
                     "spec": {"containers": [{"name": "x", "image": "x"}]}})
    assert mismatch.value.status == 400
