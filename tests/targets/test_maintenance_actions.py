"""The platforms' maintenance actions against real servers: rollout restart, scale and run-job on
the sandbox with its controllers (checked through the API and kubectl), restart and image prune on a
real dockerd, and what each kind of target refuses."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from commands.targets.base import NotFound, Unsupported
from commands.targets.docker import DockerPlatform
from commands.targets.kubernetes import RESTARTED_AT, KubernetesPlatform
from config.settings import DockerTarget, KubernetesTarget
from sandbox.controller import Timing
from sandbox.server import SandboxServer
from tests.conftest import require_program
from tests.conftest_docker import DockerHost

pytestmark = pytest.mark.integration


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(timing=Timing.fast()) as server:
        yield server


@pytest.fixture
async def k8s(sandbox: SandboxServer, tmp_path: Path) -> AsyncIterator[KubernetesPlatform]:
    platform = KubernetesPlatform(sandbox.write_kubeconfig(tmp_path / "kubeconfig"))
    yield platform
    await platform.close()


def api(sandbox: SandboxServer, tmp_path: Path) -> client.ApiClient:
    return config.new_client_from_config(str(sandbox.write_kubeconfig(tmp_path / "reader")))


async def watch(platform, t, generation: int, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        p = await platform.progress("svc", "env", t, generation)
        if p.done:
            return p
        assert time.monotonic() < deadline, p
        await asyncio.sleep(0.1)


async def test_restart_rolls_every_pod_like_kubectl_rollout_restart(sandbox, k8s, tmp_path):
    t = KubernetesTarget(namespace="prod", deployment="chat")
    core = client.CoreV1Api(api(sandbox, tmp_path))
    before = {p.metadata.name for p in core.list_namespaced_pod("prod", label_selector="app=chat").items}
    generation = await k8s.restart("chat", "prod", t, "opsbot: maintenance #1 restart by admin")
    progress = await watch(k8s, t, generation)
    assert progress.state == "complete" and progress.ready == 3
    deployment = client.AppsV1Api(api(sandbox, tmp_path)).read_namespaced_deployment("chat", "prod")
    assert RESTARTED_AT in deployment.spec.template.metadata.annotations
    assert deployment.metadata.annotations["kubernetes.io/change-cause"] == "opsbot: maintenance #1 restart by admin"
    after = {p.metadata.name for p in core.list_namespaced_pod("prod", label_selector="app=chat").items}
    assert len(after) == 3 and not before & after
    history = await asyncio.to_thread(
        subprocess.run, [require_program("kubectl"), "--kubeconfig", str(tmp_path / "reader"), "rollout", "history",
                         "deployment/chat", "-n", "prod"], capture_output=True, text=True, timeout=60, check=True)
    assert "opsbot: maintenance #1 restart by admin" in history.stdout


async def test_scale_returns_the_previous_count(sandbox, k8s, tmp_path):
    t = KubernetesTarget(namespace="staging", deployment="auth")
    previous, generation = await k8s.scale("auth", "staging", t, 4)
    assert previous == 2
    progress = await watch(k8s, t, generation)
    assert (progress.state, progress.ready) == ("complete", 4)
    back, generation = await k8s.scale("auth", "staging", t, previous)
    assert back == 4
    assert (await watch(k8s, t, generation)).desired == 2


async def test_run_job_from_a_cronjob_to_completion_and_to_failure(sandbox, k8s, tmp_path):
    t = KubernetesTarget(namespace="prod", deployment="chat")
    run = await k8s.run_job("chat", "prod", t, "db-backup", timeout=30, poll_interval=0.1)
    assert run.ok and run.succeeded == 1 and run.name.startswith("db-backup-opsbot-")
    batch = client.BatchV1Api(api(sandbox, tmp_path))
    job = batch.read_namespaced_job(run.name, "prod")
    assert job.metadata.annotations["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job.metadata.owner_references[0].kind == "CronJob"

    broken = batch.read_namespaced_cron_job("db-backup", "prod")
    broken.metadata = client.V1ObjectMeta(name="db-restore-test")
    broken.spec.job_template.spec.template.spec.containers[0].image += "-broken"
    batch.create_namespaced_cron_job("prod", broken)
    run = await k8s.run_job("chat", "prod", t, "db-restore-test", timeout=30, poll_interval=0.1)
    assert (run.outcome, run.reason, run.failed) == ("failed", "BackoffLimitExceeded", 2)

    with pytest.raises(NotFound, match="no cronjob nightly in namespace prod; cronjobs there: db-backup, db-restore-test"):
        await k8s.run_job("chat", "prod", t, "nightly", timeout=5)


async def test_run_job_that_outlasts_the_timeout(sandbox, k8s):
    run = await k8s.run_job("chat", "dev", KubernetesTarget(namespace="dev", deployment="chat"), "db-backup",
                            timeout=0.01, poll_interval=0.05)
    assert run.outcome == "timeout" and "keeps running" in (run.message or "")


async def test_prune_is_for_docker(k8s):
    with pytest.raises(Unsupported, match="image prune is for Docker hosts"):
        await k8s.prune_images("chat", "prod", KubernetesTarget(namespace="prod", deployment="chat"))


# --------------------------------------------------------------------------- Docker


@pytest.fixture
async def docker_platform(dockerd: DockerHost) -> AsyncIterator[DockerPlatform]:
    p = DockerPlatform(dockerd.url)
    yield p
    await p.close()


async def test_docker_restart_and_refusals(dockerd: DockerHost, docker_platform: DockerPlatform, container_name: str):
    dockerd.run(container_name, dockerd.image("svc", "v1"))
    t = DockerTarget(type="docker", container=container_name, health_wait_seconds=0.5)
    started = dockerd.api.inspect_container(container_name)["State"]["StartedAt"]
    generation = await docker_platform.restart("svc", "dev", t, "maintenance")
    assert (await watch(docker_platform, t, generation)).state == "complete"
    assert dockerd.api.inspect_container(container_name)["State"]["StartedAt"] != started
    with pytest.raises(Unsupported, match="one Docker container; scaling is for Kubernetes"):
        await docker_platform.scale("svc", "dev", t, 3)
    with pytest.raises(Unsupported, match="has no CronJobs"):
        await docker_platform.run_job("svc", "dev", t, "db-backup", timeout=5)


async def test_docker_image_prune_removes_dangling_images(dockerd: DockerHost, docker_platform: DockerPlatform,
                                                        container_name: str):
    # Importing a tag twice leaves the first image dangling (untagged, used by nothing).
    dockerd.api.import_image_from_data(dockerd.rootfs, repository="demo/prune-me", tag="v1", changes=["ENV A=1"])
    dockerd.api.import_image_from_data(dockerd.rootfs, repository="demo/prune-me", tag="v1", changes=["ENV A=2"])
    dangling = dockerd.api.images(filters={"dangling": True}, quiet=True)
    assert dangling
    t = DockerTarget(type="docker", container=container_name)
    result = await docker_platform.prune_images("svc", "dev", t)
    assert result.images_deleted >= 1 and result.host == dockerd.url
    assert dockerd.api.images(filters={"dangling": True}, quiet=True) == []
    assert dockerd.api.images(name="demo/prune-me")  # the tagged one stays
    dockerd.api.remove_image("demo/prune-me:v1")
