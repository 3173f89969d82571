"""Request attributes, the audit and RBAC enforcement in the sandbox (sandbox/rbac.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from sandbox.rbac import Access, Policy, RequestAttributes, classify, forbidden
from sandbox.server import SandboxServer

SA = "system:serviceaccount:bots:robot"

RBAC = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot, namespace: bots}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: deployer, namespace: staging}
rules:
  - apiGroups: [apps]
    resources: [deployments]
    verbs: [get, patch]
  - apiGroups: [apps]
    resources: [deployments/scale]
    verbs: [update]
  - apiGroups: [""]
    resources: [pods/log]
    verbs: [get]
  - apiGroups: [""]
    resources: [pods]
    verbs: [list]
    resourceNames: [only-this]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: deployer, namespace: staging}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: deployer}
subjects:
  - {kind: ServiceAccount, name: robot, namespace: bots}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dangling, namespace: prod}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: missing}
subjects:
  - {kind: ServiceAccount, name: robot, namespace: bots}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: read-namespaces}
rules:
  - {apiGroups: [""], resources: [namespaces], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: read-namespaces}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: read-namespaces}
subjects:
  - {kind: Group, name: "system:serviceaccounts:bots", apiGroup: rbac.authorization.k8s.io}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
data: {a: b}
"""


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("GET", "/apis/apps/v1/namespaces/prod/deployments/chat", "",
     ("get", "apps", "deployments", "", "prod", "chat")),
    ("GET", "/apis/apps/v1/namespaces/prod/deployments", "labelSelector=app%3Dchat",
     ("list", "apps", "deployments", "", "prod", "")),
    ("GET", "/apis/apps/v1/namespaces/prod/deployments",
     "watch=true&fieldSelector=metadata.name%3Dchat&resourceVersion=5",
     ("watch", "apps", "deployments", "", "prod", "chat")),
    ("GET", "/apis/apps/v1/deployments", "watch=1", ("watch", "apps", "deployments", "", "", "")),
    ("PATCH", "/apis/apps/v1/namespaces/prod/deployments/chat/scale", "",
     ("patch", "apps", "deployments", "scale", "prod", "chat")),
    ("PUT", "/apis/apps/v1/namespaces/prod/deployments/chat/status", "",
     ("update", "apps", "deployments", "status", "prod", "chat")),
    ("GET", "/api/v1/namespaces/prod/pods/chat-x/log", "follow=true",
     ("get", "", "pods", "log", "prod", "chat-x")),
    ("POST", "/apis/batch/v1/namespaces/prod/jobs", "", ("create", "batch", "jobs", "", "prod", "")),
    ("DELETE", "/api/v1/namespaces/prod/pods", "", ("deletecollection", "", "pods", "", "prod", "")),
    # kube-apiserver names only a list or watch by its field selector, and only a valid name
    ("DELETE", "/api/v1/namespaces/prod/pods", "fieldSelector=metadata.name%3Dp",
     ("deletecollection", "", "pods", "", "prod", "")),
    ("GET", "/api/v1/namespaces/prod/pods", "fieldSelector=metadata.name%3D..",
     ("list", "", "pods", "", "prod", "")),
    ("GET", "/api/v1/namespaces/prod/pods", "fieldSelector=status.phase%3DRunning,metadata.name%3Dp",
     ("list", "", "pods", "", "prod", "p")),
    ("GET", "/api/v1/namespaces/prod/pods", "fieldSelector=metadata.name%21%3Dp",
     ("list", "", "pods", "", "prod", "")),
    ("DELETE", "/api/v1/namespaces/prod/pods/p", "", ("delete", "", "pods", "", "prod", "p")),
    ("GET", "/api/v1/namespaces/prod", "", ("get", "", "namespaces", "", "prod", "prod")),
    ("PUT", "/api/v1/namespaces/prod/finalize", "",
     ("update", "", "namespaces", "finalize", "prod", "prod")),
    ("GET", "/api/v1/namespaces", "", ("list", "", "namespaces", "", "", "")),
    ("PUT", "/apis/coordination.k8s.io/v1/namespaces/opsbot/leases/opsbot", "",
     ("update", "coordination.k8s.io", "leases", "", "opsbot", "opsbot")),
])
def test_requests_are_classified_like_the_apiserver(method: str, path: str, query: str,
                                                    expected: tuple[str, ...]) -> None:
    a = classify(method, path, query)
    assert a.resource_request
    assert (a.verb, a.api_group, a.resource, a.subresource, a.namespace, a.name) == expected


@pytest.mark.parametrize("path", ["/api", "/apis", "/api/v1", "/apis/apps", "/apis/apps/v1",
                                  "/version", "/openapi/v3", "/healthz"])
def test_discovery_is_not_a_resource_request(path: str) -> None:
    assert not classify("GET", path, "").resource_request


# --------------------------------------------------------------------------- the policy


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    (tmp_path / "rbac.yaml").write_text(RBAC)
    (tmp_path / "kustomization.yaml").write_text("resources: [rbac.yaml]\n")
    return Policy.load(tmp_path, tokens={"robot-token": SA})


def _attrs(verb: str, group: str, resource: str, namespace: str, name: str = "",
           subresource: str = "") -> RequestAttributes:
    return RequestAttributes(user=SA, verb=verb, path="/", resource_request=True, api_group=group,
                             resource=resource, subresource=subresource, namespace=namespace,
                             name=name)


def test_rules_match_verbs_groups_subresources_and_names(policy: Policy) -> None:
    assert policy.service_accounts == [("bots", "robot")]
    allowed = [
        _attrs("get", "apps", "deployments", "staging", "chat"),
        _attrs("patch", "apps", "deployments", "staging", "chat"),
        _attrs("update", "apps", "deployments", "staging", "chat", "scale"),
        _attrs("get", "", "pods", "staging", "p", "log"),
        _attrs("list", "", "pods", "staging", "only-this"),
        _attrs("list", "", "namespaces", ""),  # by the ClusterRoleBinding to the SA's group
    ]
    denied = [
        _attrs("delete", "apps", "deployments", "staging", "chat"),
        _attrs("get", "apps", "deployments", "prod", "chat"),  # another namespace
        _attrs("get", "", "deployments", "staging", "chat"),  # another group
        _attrs("patch", "apps", "deployments", "staging", "chat", "scale"),  # subresource verb
        _attrs("get", "apps", "deployments", "staging", "chat", "status"),  # not the parent's
        _attrs("get", "", "pods", "staging", "p"),  # pods/log is not pods
        _attrs("list", "", "pods", "staging"),  # resourceNames needs the name
        _attrs("get", "", "secrets", "staging", "s"),
    ]
    assert [a for a in allowed if not policy.authorize(a)[0]] == []
    assert [a for a in denied if policy.authorize(a)[0]] == []


def test_wildcards() -> None:
    policy = Policy(tokens={"t": SA})
    policy.add(yaml.safe_load("""
        apiVersion: rbac.authorization.k8s.io/v1
        kind: Role
        metadata: {name: r, namespace: n}
        rules:
          - {apiGroups: ["*"], resources: ["*/scale"], verbs: [get]}
          - {apiGroups: [batch], resources: ["*"], verbs: ["*"]}
    """))
    policy.add(yaml.safe_load("""
        apiVersion: rbac.authorization.k8s.io/v1
        kind: RoleBinding
        metadata: {name: r, namespace: n}
        roleRef: {kind: Role, name: r}
        subjects: [{kind: User, name: "system:serviceaccount:bots:robot"}]
    """))
    assert policy.authorize(_attrs("get", "apps", "replicasets", "n", "x", "scale"))[0]
    assert not policy.authorize(_attrs("get", "apps", "replicasets", "n", "x"))[0]
    assert policy.authorize(_attrs("deletecollection", "batch", "jobs", "n"))[0]
    assert policy.authorize(_attrs("create", "batch", "cronjobs", "n", "", "status"))[0]


def test_the_forbidden_status_reads_like_the_apiservers(policy: Policy) -> None:
    a = _attrs("patch", "apps", "deployments", "prod", "x")
    allowed, reason = policy.authorize(a)
    assert not allowed
    assert reason == 'RBAC: role.rbac.authorization.k8s.io "missing" not found'
    status = forbidden(_attrs("patch", "apps", "deployments", "prod", "x")).status()
    assert status["message"] == (
        'deployments.apps "x" is forbidden: User "system:serviceaccount:bots:robot" cannot patch '
        'resource "deployments" in API group "apps" in the namespace "prod"')
    assert status["reason"] == "Forbidden" and status["code"] == 403
    assert status["details"] == {"name": "x", "group": "apps", "kind": "deployments"}
    assert forbidden(_attrs("list", "", "nodes", "")).message == (
        'nodes is forbidden: User "system:serviceaccount:bots:robot" cannot list resource "nodes" '
        'in API group "" at the cluster scope')
    assert forbidden(_attrs("get", "", "pods", "n", "p", "log")).message.startswith(
        'pods "p" is forbidden: User "system:serviceaccount:bots:robot" cannot get resource '
        '"pods/log" in API group ""')


def test_granted_lists_every_access_by_name(policy: Policy) -> None:
    granted = policy.granted(SA)
    assert Access("update", "apps", "deployments/scale", "staging") in granted
    assert Access("list", "", "namespaces", "") in granted
    assert not any(a.namespace == "prod" for a in granted)  # the dangling binding grants nothing


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
def enforcing(policy: Policy) -> Iterator[SandboxServer]:
    with SandboxServer(rbac=policy) as server:
        yield server


def _api(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def test_a_service_account_is_held_to_its_roles_and_the_admin_is_not(
        enforcing: SandboxServer, tmp_path: Path) -> None:
    robot = client.AppsV1Api(_api(enforcing.write_kubeconfig(tmp_path / "sa", user=SA)))
    admin = client.AppsV1Api(_api(enforcing.write_kubeconfig(tmp_path / "admin")))
    assert robot.read_namespaced_deployment("chat", "staging").metadata.name == "chat"
    with pytest.raises(client.ApiException) as denied:
        robot.delete_namespaced_deployment("chat", "staging")
    body = json.loads(denied.value.body)
    assert denied.value.status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == (
        'deployments.apps "chat" is forbidden: User "system:serviceaccount:bots:robot" cannot '
        'delete resource "deployments" in API group "apps" in the namespace "staging"')
    admin.delete_namespaced_deployment("chat", "prod")
    # authorization comes before routing: a kind the sandbox does not serve is still a 403
    with pytest.raises(client.ApiException) as secret:
        client.CoreV1Api(robot.api_client).read_namespaced_secret("s", "staging")
    assert secret.value.status == 403

    assert enforcing.requests_seen(SA) == {Access("get", "apps", "deployments", "staging"),
                                           Access("delete", "apps", "deployments", "staging"),
                                           Access("get", "", "secrets", "staging")}
    assert enforcing.requests_seen(SA, allowed=False) == {
        Access("delete", "apps", "deployments", "staging"), Access("get", "", "secrets", "staging")}
    assert Access("delete", "apps", "deployments", "prod") in \
        enforcing.requests_seen("kubernetes-admin")
    enforcing.reset_requests()
    assert enforcing.requests_seen() == set()


def test_kubectl_as_the_service_account(enforcing: SandboxServer, tmp_path: Path,
                                        kubectl_binary: str) -> None:
    kubeconfig = enforcing.write_kubeconfig(tmp_path / "kc")
    contexts = {c["name"] for c in yaml.safe_load(kubeconfig.read_text())["contexts"]}
    assert contexts == {"sandbox", "sa-bots-robot"}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([kubectl_binary, "--kubeconfig", str(kubeconfig), *args],
                              capture_output=True, text=True, timeout=30, check=False)

    shown = kubectl("--context", "sa-bots-robot", "get", "deploy", "chat", "-n", "staging")
    assert shown.returncode == 0, shown.stderr  # discovery is open to everyone
    refused = kubectl("--context", "sa-bots-robot", "delete", "deploy", "chat", "-n", "staging")
    assert refused.returncode != 0
    assert 'Error from server (Forbidden): deployments.apps "chat" is forbidden: User ' \
           '"system:serviceaccount:bots:robot" cannot delete resource "deployments"' in refused.stderr
    assert kubectl("delete", "deploy", "chat", "-n", "staging").returncode == 0  # the admin may


def test_cli_writes_the_service_account_contexts(tmp_path: Path) -> None:
    import os
    import signal
    import sys
    import time

    (tmp_path / "rbac.yaml").write_text(RBAC)
    kubeconfig, sa_only = tmp_path / "kc", tmp_path / "sa-kc"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "sandbox", "--kubeconfig", str(kubeconfig),
         "--rbac", str(tmp_path / "rbac.yaml"), "--sa-kubeconfig", str(sa_only)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 30
        while not sa_only.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert sa_only.exists(), proc.stderr.read() if proc.poll() is not None else "timeout"
        full = yaml.safe_load(kubeconfig.read_text())
        assert full["current-context"] == "sandbox"
        assert {c["name"] for c in full["contexts"]} == {"sandbox", "sa-bots-robot"}
        alone = yaml.safe_load(sa_only.read_text())
        assert [c["name"] for c in alone["contexts"]] == ["sandbox"]
        assert alone["contexts"][0]["context"]["namespace"] == "bots"
        robot = client.CoreV1Api(_api(sa_only))
        with pytest.raises(client.ApiException) as denied:
            robot.list_namespaced_pod("prod")
        assert denied.value.status == 403
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert "context sa-bots-robot: system:serviceaccount:bots:robot" in out
