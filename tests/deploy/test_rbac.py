"""deploy/kubernetes grants the bot exactly what it uses: the product's Kubernetes adapter and its
Lease client run every operation against the sandbox with the manifests' RBAC enforced for the
``opsbot`` ServiceAccount. No request may be refused, and the (verb, group, resource, namespace)
set the sandbox recorded must equal the set the Roles grant — nothing missing, nothing spare."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import client, config

from commands.leader import LeaseRecord
from commands.logs import LogQuery
from commands.targets.base import Conflict, NotFound, PlatformError
from commands.targets.kubernetes import KubernetesPlatform, PodLogStream
from commands.targets.lease import KubernetesLease
from config.settings import KubernetesTarget
from sandbox.cluster import DEPLOYMENTS
from sandbox.controller import Timing
from sandbox.rbac import Access, Policy
from sandbox.server import SandboxServer
from tests.conftest import require_program

DEPLOY = Path(__file__).parents[2] / "deploy" / "kubernetes"
SA = "system:serviceaccount:opsbot:opsbot"
ENVS = ("dev", "staging", "prod")


@pytest.fixture
def policy() -> Policy:
    return Policy.load(DEPLOY)


@pytest.fixture
def sandbox(policy: Policy) -> Iterator[SandboxServer]:
    with SandboxServer(rbac=policy, timing=Timing.fast()) as server:
        yield server


@pytest.fixture
def sa_kubeconfig(sandbox: SandboxServer, tmp_path: Path) -> Path:
    return sandbox.write_kubeconfig(tmp_path / "opsbot-sa.kubeconfig", user=SA)


@pytest.fixture
async def platform(sa_kubeconfig: Path) -> AsyncIterator[KubernetesPlatform]:
    k8s = KubernetesPlatform(sa_kubeconfig, request_timeout=10)
    yield k8s
    await k8s.close()


def _diff(used: set[Access], granted: set[Access]) -> str:
    def lines(accesses: set[Access]) -> str:
        return "".join(f"\n    {a.verb:<8} {a.resource}{'.' + a.group if a.group else ''} "
                       f"in {a.namespace or '(cluster)'}" for a in sorted(accesses)) or " none"
    return (f"used but not granted:{lines(used - granted)}\n"
            f"granted but never used:{lines(granted - used)}")


async def _rollout(k8s: KubernetesPlatform, env: str, target: KubernetesTarget,
                   generation: int) -> None:
    """progress + wait_for_change until the rollout of ``generation`` completes."""
    for _ in range(200):
        progress = await k8s.progress("chat", env, target, generation)
        if progress.state == "complete":
            return
        assert progress.state != "failed", progress.message
        await k8s.wait_for_change("chat", env, target, 0.5)
    raise AssertionError(f"the rollout in {env} did not complete")


async def _every_operation(k8s: KubernetesPlatform, env: str) -> None:
    target = KubernetesTarget(namespace=env, deployment="chat")
    state = await k8s.get_state("chat", env, target)
    assert state.error is None, state.error
    generation = await k8s.set_image("chat", env, target, "registry.local/dgg/chat:v9.9.9",
                                     "deploy by test")
    await _rollout(k8s, env, target, generation)
    assert (await k8s.get_state("chat", env, target)).version == "v9.9.9"
    history = await k8s.history("chat", env, target)
    assert history[-1].version == "v9.9.9"
    _, generation = await k8s.rollback("chat", env, target, None, "rollback by test")
    await _rollout(k8s, env, target, generation)
    await _rollout(k8s, env, target, await k8s.restart("chat", env, target, "restart by test"))
    previous, generation = await k8s.scale("chat", env, target, 2)
    assert previous >= 1
    await _rollout(k8s, env, target, generation)

    sources = await k8s.log_sources("chat", env, target, LogQuery(tail=3))
    assert sources
    for _, stream in sources:
        assert isinstance(stream, PodLogStream)
        lines = [line async for line in stream]
        assert lines
        await stream.aclose()

    run = await k8s.run_job("chat", env, target, "db-backup", timeout=30, poll_interval=0.2)
    assert run.outcome == "complete", run
    with pytest.raises(NotFound, match="cronjobs there: db-backup"):
        await k8s.run_job("chat", env, target, "no-such-job", timeout=5)


async def _leases(kubeconfig: Path) -> None:
    """What the leader elector does: read (none yet), create, read, renew; a stale renew conflicts."""
    lease = KubernetesLease(kubeconfig, "opsbot", "opsbot")
    try:
        with pytest.raises(NotFound):
            await lease.get()
        now = datetime.now(UTC).replace(microsecond=123456)
        record = LeaseRecord(holder="opsbot-0", lease_duration_seconds=15, acquire_time=now,
                             renew_time=now)
        created = await lease.create(record)
        read = await lease.get()
        assert read.holder == "opsbot-0" and read.resource_version == created.resource_version
        renewed = record.model_copy(update={"renew_time": now + timedelta(seconds=2)})
        await lease.update(renewed, read.resource_version or "")
        with pytest.raises(Conflict):
            await lease.update(renewed, read.resource_version or "")
    finally:
        await lease.close()


async def test_the_bot_needs_exactly_what_deploy_kubernetes_grants(
        sandbox: SandboxServer, policy: Policy, platform: KubernetesPlatform,
        sa_kubeconfig: Path) -> None:
    for env in ENVS:
        await _every_operation(platform, env)
    await _leases(sa_kubeconfig)

    refused = sandbox.requests_seen(SA, allowed=False)
    assert not refused, f"refused: {sorted(refused)}"
    used, granted = sandbox.requests_seen(SA), policy.granted(SA)
    assert used == granted, "\n" + _diff(used, granted)


def test_the_roles_are_the_same_in_every_managed_namespace(policy: Policy) -> None:
    granted = policy.granted(SA)
    per_env = {env: {a._replace(namespace="") for a in granted if a.namespace == env}
               for env in ENVS}
    assert per_env["dev"] and per_env["dev"] == per_env["staging"] == per_env["prod"]
    assert {a.namespace for a in granted} == {*ENVS, "opsbot"}
    assert {(a.verb, a.resource) for a in granted if a.namespace == "opsbot"} == {
        ("get", "leases"), ("create", "leases"), ("update", "leases")}


async def test_what_is_not_granted_is_refused_with_a_clear_message(
        sandbox: SandboxServer, platform: KubernetesPlatform, sa_kubeconfig: Path) -> None:
    # a namespace the config might name but no Role covers
    elsewhere = KubernetesTarget(namespace="default", deployment="chat")
    state = await platform.get_state("chat", "default", elsewhere)
    assert state.error == (
        'not allowed to read deployment default/chat: deployments.apps "chat" is forbidden: User '
        '"system:serviceaccount:opsbot:opsbot" cannot get resource "deployments" in API group '
        '"apps" in the namespace "default"')
    with pytest.raises(PlatformError) as refused:
        await platform.set_image("chat", "default", elsewhere, "x:1", "test")
    assert str(refused.value).startswith("not allowed to read deployment default/chat: ")
    assert "cannot get resource" in str(refused.value)

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(sa_kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api:
        for call in (lambda: client.AppsV1Api(api).delete_namespaced_deployment("chat", "prod"),
                     lambda: client.CoreV1Api(api).read_namespaced_secret("opsbot-secrets", "opsbot"),
                     lambda: client.CoreV1Api(api).list_namespaced_pod("opsbot")):
            with pytest.raises(client.ApiException) as denied:
                call()
            assert denied.value.status == 403
            assert json.loads(denied.value.body or "{}")["reason"] == "Forbidden"
    assert sandbox.requests_seen(SA, allowed=False) == {
        Access("get", "apps", "deployments", "default"),
        Access("delete", "apps", "deployments", "prod"),
        Access("get", "", "secrets", "opsbot"),
        Access("list", "", "pods", "opsbot"),
    }
    assert sandbox.cluster.get(DEPLOYMENTS, "prod", "chat")  # still there


def test_kubectl_as_the_service_account_is_forbidden_to_delete(
        sandbox: SandboxServer, sa_kubeconfig: Path) -> None:
    kubectl = require_program("kubectl")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([kubectl, "--kubeconfig", str(sa_kubeconfig), *args],
                              capture_output=True, text=True, timeout=30, check=False)

    assert run("get", "deploy", "chat", "-n", "prod").returncode == 0
    refused = run("delete", "deploy", "chat", "-n", "prod")
    assert refused.returncode != 0
    assert refused.stderr.strip() == (
        'Error from server (Forbidden): deployments.apps "chat" is forbidden: User '
        '"system:serviceaccount:opsbot:opsbot" cannot delete resource "deployments" in API group '
        '"apps" in the namespace "prod"')
    assert "Forbidden" in run("scale", "deploy", "chat", "-n", "prod", "--replicas=1").stderr
    assert run("get", "deploy", "chat", "-n", "prod").returncode == 0  # not deleted
