"""Leases (coordination.k8s.io/v1) in the sandbox: what a leader elector needs, as the apiserver
answers it — read/create/replace with optimistic concurrency, MicroTime in and out, kubectl."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from sandbox.server import SandboxServer
from tests.sandbox.conftest import Kubectl

NS = "opsbot"


@pytest.fixture
def coordination(fresh_sandbox: SandboxServer, tmp_path: Path) -> client.CoordinationV1Api:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(fresh_sandbox.write_kubeconfig(tmp_path / "kc")),
                            client_configuration=configuration)
    return client.CoordinationV1Api(client.ApiClient(configuration))


def _lease(name: str, holder: str, renew: datetime, rv: str | None = None) -> client.V1Lease:
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=name, namespace=NS, resource_version=rv),
        spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=15,
                                acquire_time=renew, renew_time=renew, lease_transitions=0))


def test_read_create_replace_and_a_stale_replace_conflicts(
        coordination: client.CoordinationV1Api) -> None:
    with pytest.raises(client.ApiException) as missing:
        coordination.read_namespaced_lease("opsbot", NS)
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["message"] == \
        'leases.coordination.k8s.io "opsbot" not found'

    at = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    created = coordination.create_namespaced_lease(NS, _lease("opsbot", "pod-a", at))
    assert created.spec.holder_identity == "pod-a"
    assert created.spec.renew_time == at
    with pytest.raises(client.ApiException) as exists:
        coordination.create_namespaced_lease(NS, _lease("opsbot", "pod-b", at))
    assert exists.value.status == 409 and json.loads(exists.value.body)["reason"] == "AlreadyExists"

    read = coordination.read_namespaced_lease("opsbot", NS)
    renewed = _lease("opsbot", "pod-a", at + timedelta(seconds=2), read.metadata.resource_version)
    replaced = coordination.replace_namespaced_lease("opsbot", NS, renewed)
    assert replaced.metadata.resource_version != read.metadata.resource_version
    assert replaced.spec.renew_time == at + timedelta(seconds=2)

    # pod-b read the same version as pod-a: its takeover loses
    stale = _lease("opsbot", "pod-b", at + timedelta(seconds=3), read.metadata.resource_version)
    with pytest.raises(client.ApiException) as conflict:
        coordination.replace_namespaced_lease("opsbot", NS, stale)
    body = json.loads(conflict.value.body)
    assert conflict.value.status == 409 and body["reason"] == "Conflict"
    assert body["message"].startswith(
        'Operation cannot be fulfilled on leases.coordination.k8s.io "opsbot": '
        "the object has been modified")
    assert coordination.read_namespaced_lease("opsbot", NS).spec.holder_identity == "pod-a"


def test_a_replace_without_resource_version_is_invalid(coordination: client.CoordinationV1Api) -> None:
    at = datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC)
    coordination.create_namespaced_lease(NS, _lease("l", "a", at))
    with pytest.raises(client.ApiException) as invalid:
        coordination.replace_namespaced_lease("l", NS, _lease("l", "b", at))
    assert invalid.value.status == 422
    assert "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update" in \
        json.loads(invalid.value.body)["message"]


def test_micro_time_is_normalized_to_utc_and_strictly_parsed(
        coordination: client.CoordinationV1Api) -> None:
    body = {"metadata": {"name": "t"}, "spec": {"holderIdentity": "x", "leaseDurationSeconds": 10,
                                                "renewTime": "2026-03-01T13:00:00.500000+01:00"}}
    raw = coordination.create_namespaced_lease(NS, body, _preload_content=False)
    assert json.loads(raw.data)["spec"]["renewTime"] == "2026-03-01T12:00:00.500000Z"
    # datetime.isoformat() drops a zero fraction; Go's RFC3339Micro layout needs six digits
    whole = _lease("u", "x", datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC))
    with pytest.raises(client.ApiException) as bad:
        coordination.create_namespaced_lease(NS, whole)
    assert bad.value.status == 400
    assert "2006-01-02T15:04:05.000000Z07:00" in json.loads(bad.value.body)["message"]
    zero = client.V1Lease(metadata=client.V1ObjectMeta(name="z"),
                          spec=client.V1LeaseSpec(lease_duration_seconds=0))
    with pytest.raises(client.ApiException) as invalid:
        coordination.create_namespaced_lease(NS, zero)
    assert invalid.value.status == 422
    assert "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0" in \
        json.loads(invalid.value.body)["message"]


def test_patch_list_and_delete(coordination: client.CoordinationV1Api) -> None:
    at = datetime(2026, 3, 1, 12, 0, 0, 42, tzinfo=UTC)
    coordination.create_namespaced_lease(NS, _lease("p", "a", at))
    patched = coordination.patch_namespaced_lease("p", NS, {"spec": {"holderIdentity": "b"}})
    assert patched.spec.holder_identity == "b" and patched.spec.lease_duration_seconds == 15
    assert [item.metadata.name for item in coordination.list_namespaced_lease(NS).items] == ["p"]
    coordination.delete_namespaced_lease("p", NS)
    assert coordination.list_namespaced_lease(NS).items == []


def test_a_lease_in_a_namespace_created_later(fresh_sandbox: SandboxServer,
                                              coordination: client.CoordinationV1Api) -> None:
    core = client.CoreV1Api(coordination.api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="elsewhere")))
    lease = client.V1Lease(metadata=client.V1ObjectMeta(name="x"),
                           spec=client.V1LeaseSpec(holder_identity="h"))
    assert coordination.create_namespaced_lease("elsewhere", lease).metadata.namespace == "elsewhere"


def test_kubectl_gets_leases(fresh_sandbox: SandboxServer, tmp_path: Path,
                             kubectl_binary: str) -> None:
    import subprocess

    kubeconfig = fresh_sandbox.write_kubeconfig(tmp_path / "kc")

    def kubectl(*args: str) -> str:
        proc = subprocess.run([kubectl_binary, "--kubeconfig", str(kubeconfig), *args],
                              capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "No resources found" in subprocess.run(
        [kubectl_binary, "--kubeconfig", str(kubeconfig), "get", "leases", "-n", NS],
        capture_output=True, text=True, timeout=30).stderr
    manifest = tmp_path / "lease.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "opsbot", "namespace": NS},
        "spec": {"holderIdentity": "opsbot-7d9-abcde", "leaseDurationSeconds": 15,
                 "renewTime": "2026-03-01T12:00:00.000000Z", "leaseTransitions": 2}}))
    kubectl("create", "--validate=false", "-f", str(manifest))  # no openapi served
    table = kubectl("get", "leases", "-n", NS).splitlines()
    assert table[0].split() == ["NAME", "HOLDER", "AGE"]
    assert table[1].split()[:2] == ["opsbot", "opsbot-7d9-abcde"]
    shown = yaml.safe_load(kubectl("get", "lease", "opsbot", "-n", NS, "-o", "yaml"))
    assert shown["apiVersion"] == "coordination.k8s.io/v1" and shown["kind"] == "Lease"
    assert shown["spec"]["renewTime"] == "2026-03-01T12:00:00.000000Z"
    assert shown["spec"]["leaseTransitions"] == 2
    kubectl("delete", "lease", "opsbot", "-n", NS)


def test_discovery_lists_leases(sandbox: SandboxServer, kubectl: Kubectl) -> None:
    resources = kubectl("api-resources", "--api-group=coordination.k8s.io").stdout
    assert "leases" in resources and "coordination.k8s.io/v1" in resources and "Lease" in resources
