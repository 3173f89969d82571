"""deploy/kubernetes grants the bot exactly what it uses: the product's Kubernetes adapter and its
Lease client run every operation against the sandbox with the manifests' RBAC enforced for the
``opsbot`` ServiceAccount. No request may be refused, and the (verb, group, resource, namespace)
set the sandbox recorded must equal the set the Roles grant — nothing missing, nothing spare.
Where a grant can name its objects (get, patch, watch of Deployments and CronJobs), it names
exactly the ones config/opsbot.yaml manages, and every other one is refused."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import client, config

from commands.leader import LeaseRecord
from commands.logs import LogQuery
from commands.targets.base import Conflict, NotFound, PlatformError
from commands.targets.kubernetes import KubernetesPlatform, PodLogStream
from commands.targets.lease import KubernetesLease
from config.settings import KubernetesTarget, RunJobTask, Settings, load_settings
from sandbox.cluster import CRONJOBS, DEPLOYMENTS
from sandbox.controller import Timing
from sandbox.rbac import Access, Policy
from sandbox.server import SandboxServer
from tests.conftest import require_program

DEPLOY = Path(__file__).parents[2] / "deploy" / "kubernetes"
SA = "system:serviceaccount:opsbot:opsbot"
ENVS = ("dev", "staging", "prod")
UNMANAGED = "modbot"  # a Deployment the sandbox has in every env and the config does not name


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(DEPLOY / "config" / "opsbot.yaml")


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


async def _every_operation(k8s: KubernetesPlatform, env: str, sandbox: SandboxServer) -> None:
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
    # A CronJob the Role names but that is gone: the error lists the ones there.
    sandbox.cluster.delete(CRONJOBS, env, "db-backup")
    with pytest.raises(NotFound, match=f"^no cronjob db-backup in namespace {env}; cronjobs there: "):
        await k8s.run_job("chat", env, target, "db-backup", timeout=5)


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
        await _every_operation(platform, env, sandbox)
    await _leases(sa_kubeconfig)

    refused = sandbox.requests_seen(SA, allowed=False)
    assert not refused, f"refused: {sorted(refused)}"
    used, granted = sandbox.requests_seen(SA), policy.granted(SA)
    assert used == granted, "\n" + _diff(used, granted)


def _names(policy: Policy, namespace: str, group: str, resource: str) -> dict[str, frozenset[str]]:
    """verb -> the resourceNames the bot's Role in ``namespace`` grants it on (empty: every one)."""
    out: dict[str, frozenset[str]] = {}
    for rule in policy.roles[(namespace, "opsbot-deployer")]:
        if group in rule.api_groups and resource in rule.resources:
            for verb in rule.verbs:
                assert verb not in out, f"{verb} {resource} in {namespace} granted twice"
                out[verb] = rule.resource_names
    return out


def test_the_roles_name_exactly_the_objects_the_config_manages(policy: Policy, settings: Settings) -> None:
    deployments: dict[str, set[str]] = {}
    for svc in settings.services.values():
        for target in svc.envs.values():
            assert isinstance(target, KubernetesTarget)
            deployments.setdefault(target.namespace, set()).add(target.deployment)
    cronjobs: dict[str, set[str]] = {}
    for task in settings.maintenance.recurring.values():
        if isinstance(task, RunJobTask):
            target = settings.services[task.service].envs[task.env]
            assert isinstance(target, KubernetesTarget)
            cronjobs.setdefault(target.namespace, set()).add(task.cronjob)
    assert deployments and cronjobs  # the example has both, so this test compares something
    for namespace, names in deployments.items():
        by_verb = _names(policy, namespace, "apps", "deployments")
        assert by_verb == dict.fromkeys(["get", "patch", "watch"], frozenset(names)), namespace
        cron = _names(policy, namespace, "batch", "cronjobs")
        assert cron["list"] == frozenset()  # a collection: no names possible (nothing it lists is changed)
        assert cron["get"] and cronjobs.get(namespace, set()) <= cron["get"], namespace
    # No verb that could name its object is left for every object.
    for (namespace, role), rules in policy.roles.items():
        for rule in rules:
            if rule.resources & {"deployments", "cronjobs"} and rule.verbs & {"get", "patch", "update", "watch", "delete"}:
                assert rule.resource_names, f"{role} in {namespace}: {sorted(rule.verbs)} on every object"


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

    # In a managed namespace, a Deployment and a CronJob the config does not name.
    unmanaged = KubernetesTarget(namespace="prod", deployment=UNMANAGED)
    state = await platform.get_state(UNMANAGED, "prod", unmanaged)
    assert state.error == (
        f'not allowed to read deployment prod/{UNMANAGED}: deployments.apps "{UNMANAGED}" is forbidden: User '
        '"system:serviceaccount:opsbot:opsbot" cannot get resource "deployments" in API group "apps" in the '
        'namespace "prod"')
    with pytest.raises(PlatformError, match=f"^not allowed to read deployment prod/{UNMANAGED}: "):
        await platform.set_image(UNMANAGED, "prod", unmanaged, "x:1", "test")
    with pytest.raises(PlatformError, match="^not allowed to read cronjob prod/no-such-job: .* cannot get "):
        await platform.run_job("chat", "prod", KubernetesTarget(namespace="prod", deployment="chat"),
                               "no-such-job", timeout=5)

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(sa_kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api:
        apps = client.AppsV1Api(api)

        def watch(name: str) -> Any:
            return apps.list_namespaced_deployment("prod", field_selector=f"metadata.name={name}", watch=True,
                                                   timeout_seconds=1, _preload_content=False)

        for call in (lambda: apps.delete_namespaced_deployment("chat", "prod"),
                     lambda: client.CoreV1Api(api).read_namespaced_secret("opsbot-secrets", "opsbot"),
                     lambda: client.CoreV1Api(api).list_namespaced_pod("opsbot"),
                     lambda: apps.patch_namespaced_deployment(UNMANAGED, "prod", {"spec": {"replicas": 0}}),
                     lambda: watch(UNMANAGED)):
            with pytest.raises(client.ApiException) as denied:
                call()
            assert denied.value.status == 403
            assert json.loads(denied.value.body or "{}")["reason"] == "Forbidden"
        # The same watch of a managed Deployment is allowed: the field selector names it.
        watch("chat").release_conn()
    assert sandbox.requests_seen(SA, allowed=False) == {
        Access("get", "apps", "deployments", "default"),
        Access("get", "apps", "deployments", "prod"),
        Access("get", "batch", "cronjobs", "prod"),
        Access("delete", "apps", "deployments", "prod"),
        Access("get", "", "secrets", "opsbot"),
        Access("list", "", "pods", "opsbot"),
        Access("patch", "apps", "deployments", "prod"),
        Access("watch", "apps", "deployments", "prod"),
    }
    assert sandbox.requests_seen(SA, allowed=True) == {Access("watch", "apps", "deployments", "prod")}
    assert sandbox.cluster.get(DEPLOYMENTS, "prod", "chat")  # still there
    assert sandbox.cluster.get(DEPLOYMENTS, "prod", UNMANAGED)["spec"]["replicas"] > 0


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

    # A Deployment the config does not manage: neither read nor changed.
    replicas = sandbox.cluster.get(DEPLOYMENTS, "prod", UNMANAGED)["spec"]["replicas"]
    patch = '{"spec":{"replicas":0}}'
    refused = run("patch", "deploy", UNMANAGED, "-n", "prod", "-p", patch)
    assert refused.returncode != 0
    assert refused.stderr.strip() == (  # kubectl patch reads the object first
        f'Error from server (Forbidden): deployments.apps "{UNMANAGED}" is forbidden: User '
        '"system:serviceaccount:opsbot:opsbot" cannot get resource "deployments" in API group '
        '"apps" in the namespace "prod"')
    assert "Forbidden" in run("get", "deploy", UNMANAGED, "-n", "prod").stderr
    assert sandbox.cluster.get(DEPLOYMENTS, "prod", UNMANAGED)["spec"]["replicas"] == replicas
    # The same patch of a managed one goes through.
    assert run("patch", "deploy", "chat", "-n", "prod", "-p", '{"spec":{"replicas":2}}').returncode == 0
    assert sandbox.cluster.get(DEPLOYMENTS, "prod", "chat")["spec"]["replicas"] == 2
