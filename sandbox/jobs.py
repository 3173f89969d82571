"""batch/v1 CronJobs and Jobs in the sandbox: the seeded CronJobs and a small Job controller.

Each env's namespace gets a CronJob ``db-backup`` (nightly at 02:00; a backup of the chat
database). Nothing fires CronJobs on their schedule here: they are templates for
``kubectl create job --from=cronjob/db-backup`` and opsbot's ``run-job`` action.

The Job controller (one tick of :meth:`JobController.__call__` per cluster tick) runs what real
Jobs do, in simulated seconds (``Timing.speed``): one pod at a time (``parallelism`` and
``completions`` of 1, the shape a backup job has), named ``<job>-<suffix>``, labelled with the
job's name and uid; the pod is scheduled, starts after ``Timing.pod_start`` and its container
exits 0 after :data:`RUN_SECONDS` (``Succeeded``), or exits 1 when its image tag ends in
``-broken`` (``Failed``). A failed pod is replaced until ``spec.backoffLimit`` failures
(default 6), then the Job fails with ``BackoffLimitExceeded``; a Job that runs longer than
``spec.activeDeadlineSeconds`` fails with ``DeadlineExceeded``. The Job's status keeps
``active``/``succeeded``/``failed``, ``startTime``, ``completionTime`` and the conditions
(``SuccessCriteriaMet`` then ``Complete``; ``FailureTarget`` then ``Failed``) as Kubernetes 1.31+
writes them. The kubelet of :mod:`sandbox.controller` leaves these pods alone: they are created
with a waiting container status, which it takes for someone else's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sandbox.cluster import (
    CRONJOBS,
    EVENTS,
    JOBS,
    PODS,
    ApiError,
    Cluster,
    Obj,
    rfc3339,
)
from sandbox.seed import NODES, event_for, owner_reference

RUN_SECONDS = 3.0  # simulated seconds a job's container runs before it exits
DEFAULT_BACKOFF_LIMIT = 6
JOB_NAME = "batch.kubernetes.io/job-name"
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"

BACKUP_SCHEDULE = "0 2 * * *"
BACKUP_IMAGE = "registry.local/dgg/db-backup:v2.1.0"


def backup_cronjob(namespace: str, created: datetime) -> Obj:
    """The seeded ``db-backup`` CronJob of one env."""
    template = {
        "metadata": {"labels": {"app": "db-backup"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "backup",
                "image": BACKUP_IMAGE,
                "args": ["--database", "chat", "--to", f"s3://dgg-backups/{namespace}/"],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            }],
        },
    }
    return {
        "metadata": {"name": "db-backup", "namespace": namespace, "labels": {"app": "db-backup"},
                     "creationTimestamp": rfc3339(created)},
        "spec": {
            "schedule": BACKUP_SCHEDULE,
            "concurrencyPolicy": "Forbid",
            "suspend": False,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 1,
            "jobTemplate": {"metadata": {"labels": {"app": "db-backup"}},
                            "spec": {"backoffLimit": 1, "activeDeadlineSeconds": 600, "template": template}},
        },
        "status": {},
    }


def seed_cronjobs(cluster: Cluster, namespaces: list[str], created: datetime) -> None:
    for namespace in namespaces:
        cluster.create(CRONJOBS, backup_cronjob(namespace, created))


# --------------------------------------------------------------------------- the controller


@dataclass
class _Run:
    """One job pod on its way: when it starts and when its container exits (and how)."""

    pod: str
    namespace: str
    created: datetime
    starts: datetime
    ends: datetime
    exit_code: int
    node: str
    phase: str = "Pending"


@dataclass
class JobController:
    """Runs Jobs (see the module docstring). ``pod_start`` and ``speed`` come from the
    sandbox's :class:`~sandbox.controller.Timing`."""

    speed: float = 1.0
    pod_start: float = 1.0
    run_seconds: float = RUN_SECONDS
    _runs: dict[str, _Run] = field(default_factory=dict)  # pod uid → its run

    @classmethod
    def from_timing(cls, timing: Any) -> JobController:
        return cls(speed=timing.speed, pod_start=timing.schedule + timing.pod_start)

    def _real(self, seconds: float) -> timedelta:
        return timedelta(seconds=seconds / self.speed)

    def __call__(self, cluster: Cluster, now: datetime) -> None:
        if cluster.kind("batch", "v1", "jobs") is None:
            return
        for job in cluster.list(JOBS)[0]:
            try:
                self._sync(cluster, job, now)
            except ApiError:
                continue  # deleted or changed meanwhile: the next tick sees it anew

    def _pods(self, cluster: Cluster, job: Obj) -> list[Obj]:
        uid = job["metadata"]["uid"]
        pods = cluster.list(PODS, job["metadata"]["namespace"], label_selector=f"{CONTROLLER_UID}={uid}")[0]
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def _sync(self, cluster: Cluster, job: Obj, now: datetime) -> None:
        status = job.get("status") or {}
        if any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in status.get("conditions") or []):
            return
        pods = [self._advance(cluster, p, now) for p in self._pods(cluster, job)]
        succeeded = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded")
        failed = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
        active = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        spec = job.get("spec") or {}
        limit = spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT)
        started = status.get("startTime") or rfc3339(now)
        new: Obj = {"startTime": started, "active": len(active), "succeeded": succeeded, "failed": failed,
                    "ready": 0, "terminating": 0}
        conditions: list[Obj] = []
        deadline = spec.get("activeDeadlineSeconds")
        start_time = datetime.fromisoformat(started)
        if succeeded >= (spec.get("completions") or 1):
            conditions = [_condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods", now),
                          _condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods", now)]
            new["completionTime"] = rfc3339(now)
            self._event(cluster, job, "Completed", "Job completed", now)
        elif failed > limit:
            conditions = [_condition("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit", now),
                          _condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit", now)]
            self._event(cluster, job, "BackoffLimitExceeded", "Job has reached the specified backoff limit", now,
                        type_="Warning")
        elif deadline is not None and now - start_time >= self._real(float(deadline)):
            for pod in active:
                self._delete(cluster, pod)
            new["active"] = 0
            conditions = [_condition("FailureTarget", "DeadlineExceeded", "Job was active longer than specified deadline", now),
                          _condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline", now)]
            self._event(cluster, job, "DeadlineExceeded", "Job was active longer than specified deadline", now,
                        type_="Warning")
        elif not active:
            pod = self._create_pod(cluster, job, now)
            new["active"] = 1
            self._event(cluster, job, "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}", now)
        if conditions:
            new["conditions"] = conditions
            new["active"] = 0
        old = {k: v for k, v in status.items() if k != "uncountedTerminatedPods"}
        if new != old:
            def write(obj: Obj) -> Obj:
                obj["status"] = new
                return obj

            cluster.modify(JOBS, job["metadata"]["namespace"], job["metadata"]["name"], write)

    def _create_pod(self, cluster: Cluster, job: Obj, now: datetime) -> Obj:
        meta = job["metadata"]
        template = (job.get("spec") or {}).get("template") or {}
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels |= {JOB_NAME: meta["name"], "job-name": meta["name"], CONTROLLER_UID: meta["uid"],
                   "controller-uid": meta["uid"]}
        spec = dict(template.get("spec") or {})
        spec.setdefault("serviceAccountName", "default")
        containers = spec.get("containers") or []
        pod = cluster.create(PODS, {
            "metadata": {"generateName": f"{meta['name']}-", "namespace": meta["namespace"], "labels": labels,
                         "ownerReferences": [owner_reference(job)]},
            "spec": spec,
            # A waiting container status: the deployment kubelet leaves the pod to this controller.
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                 "started": False, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}},
                 "lastState": {}} for c in containers]},
        })
        broken = any(str(c.get("image", "")).endswith("-broken") for c in containers)
        starts = now + self._real(self.pod_start)
        name = pod["metadata"]["name"]
        self._runs[pod["metadata"]["uid"]] = _Run(
            name, meta["namespace"], now, starts, starts + self._real(1.0 if broken else self.run_seconds),
            1 if broken else 0, NODES[sum(map(ord, name)) % len(NODES)])
        return pod

    def _advance(self, cluster: Cluster, pod: Obj, now: datetime) -> Obj:
        run = self._runs.get(pod["metadata"]["uid"])
        if run is None:
            return pod
        phase = run.phase
        if phase == "Pending" and now >= run.starts:
            phase = "Running"
        if phase == "Running" and now >= run.ends:
            phase = "Succeeded" if run.exit_code == 0 else "Failed"
        if phase == run.phase:
            return pod
        run.phase = phase
        if phase in ("Succeeded", "Failed"):
            del self._runs[pod["metadata"]["uid"]]

        def write(obj: Obj) -> Obj:
            obj.setdefault("spec", {})["nodeName"] = run.node
            obj["status"] = _pod_status(obj, run)
            return obj

        try:
            return cluster.modify(PODS, run.namespace, run.pod, write)
        except ApiError:
            return pod

    def _delete(self, cluster: Cluster, pod: Obj) -> None:
        self._runs.pop(pod["metadata"]["uid"], None)
        try:
            cluster.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
        except ApiError:
            pass

    @staticmethod
    def _event(cluster: Cluster, job: Obj, reason: str, message: str, at: datetime, type_: str = "Normal") -> None:
        cluster.create(EVENTS, event_for(cluster, job, reason, message, at, type_=type_, component="job-controller"))


def _condition(kind: str, reason: str, message: str, at: datetime) -> Obj:
    return {"type": kind, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": rfc3339(at), "lastTransitionTime": rfc3339(at)}


def _pod_status(pod: Obj, run: _Run) -> Obj:
    containers = (pod.get("spec") or {}).get("containers") or []
    started = rfc3339(run.starts)
    statuses = []
    for c in containers:
        if run.phase == "Running":
            state: Obj = {"running": {"startedAt": started}}
        else:
            state = {"terminated": {"exitCode": run.exit_code, "reason": "Completed" if run.exit_code == 0 else "Error",
                                    "startedAt": started, "finishedAt": rfc3339(run.ends)}}
        statuses.append({"name": c["name"], "image": c.get("image", ""), "imageID": "",
                         "ready": run.phase == "Running", "started": run.phase == "Running", "restartCount": 0,
                         "state": state, "lastState": {}})
    return {"phase": run.phase, "hostIP": "10.0.0.11", "startTime": rfc3339(run.created),
            "qosClass": "Burstable", "containerStatuses": statuses}
