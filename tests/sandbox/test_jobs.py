"""batch/v1 in the sandbox: the seeded db-backup CronJobs, and Jobs run by the job controller to
completion (or to BackoffLimitExceeded for a -broken image), read back with kubectl."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from sandbox.controller import Timing
from sandbox.server import SandboxServer

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer(timing=Timing.fast()) as s:
        yield s


def kubectl(binary: str, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "KUBECONFIG": ""}, check=False)


def job_from(api: client.ApiClient, namespace: str, name: str, image_suffix: str = "") -> dict:
    """What ``kubectl create job NAME --from=cronjob/db-backup`` sends."""
    cronjob = client.BatchV1Api(api).read_namespaced_cron_job("db-backup", namespace)
    spec = api.sanitize_for_serialization(cronjob.spec.job_template.spec)
    spec["template"]["spec"]["containers"][0]["image"] += image_suffix
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "annotations": {"cronjob.kubernetes.io/instantiate": "manual"}},
            "spec": spec}


def test_jobs_from_the_backup_cronjob_complete_or_fail(server: SandboxServer, kubectl_binary: str, tmp_path: Path):
    kc = server.write_kubeconfig(tmp_path / "config")
    api = config.new_client_from_config(str(kc))
    listed = kubectl(kubectl_binary, kc, "get", "cronjobs", "-A", "-o", "name")
    assert listed.stdout.split() == ["cronjob.batch/db-backup"] * 3

    batch = client.BatchV1Api(api)
    batch.create_namespaced_job("prod", job_from(api, "prod", "backup-now"))
    done = kubectl(kubectl_binary, kc, "wait", "--for=condition=complete", "job/backup-now", "-n", "prod",
                   "--timeout=30s")
    assert done.returncode == 0, done.stderr
    job = batch.read_namespaced_job("backup-now", "prod")
    assert (job.status.succeeded, job.status.failed, job.status.active) == (1, 0, 0)
    assert job.status.completion_time >= job.status.start_time
    pods = kubectl(kubectl_binary, kc, "get", "pods", "-n", "prod", "-l", "job-name=backup-now", "--no-headers")
    assert "Completed" in pods.stdout and len(pods.stdout.splitlines()) == 1

    batch.create_namespaced_job("prod", job_from(api, "prod", "backup-bad", "-broken"))
    failed = kubectl(kubectl_binary, kc, "wait", "--for=condition=failed", "job/backup-bad", "-n", "prod",
                     "--timeout=30s")
    assert failed.returncode == 0, failed.stderr
    job = batch.read_namespaced_job("backup-bad", "prod")
    assert job.status.failed == 2  # backoffLimit 1: the first failure is retried once
    (reason,) = {c.reason for c in job.status.conditions if c.type == "Failed"}
    assert reason == "BackoffLimitExceeded"

    # Deleting a Job takes its pods with it, as the garbage collector does.
    batch.delete_namespaced_job("backup-now", "prod")
    left = kubectl(kubectl_binary, kc, "get", "pods", "-n", "prod", "-l", "job-name=backup-now", "-o", "name")
    assert left.stdout.strip() == ""
