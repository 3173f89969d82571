"""Realistic Kubernetes objects, and the seed that fills a :class:`Cluster` from ``world.py``.

The builders (:func:`replicaset_for`, :func:`pod_for`, :func:`event_for`, …) make objects the
way the real controllers do — names, labels, owner references, annotations — so the seed and
the simulated controllers produce the same shapes.
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import datetime, timedelta

from sandbox import world
from sandbox.cluster import (
    DEPLOYMENTS,
    EVENTS,
    NAMESPACES,
    PODS,
    REPLICASETS,
    Cluster,
    Obj,
    rfc3339,
)

REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
TEMPLATE_HASH = "pod-template-hash"
NODES = ("sandbox-node-1", "sandbox-node-2", "sandbox-node-3")
PORT = 8080
PROGRESS_DEADLINE = 60
# The bot's own namespace (deploy/kubernetes): where its leader-election Lease lives.
BOT_NAMESPACE = "opsbot"

_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


# --------------------------------------------------------------------------- names and hashes


def pod_template_hash(template: Obj) -> str:
    """A stable hash of a pod template, encoded like the deployment controller's (``5d9c7b6f4``)."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    h = 0x811C9DC5  # 32-bit FNV-1a, as Kubernetes uses
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_HASH_ALPHABET[ord(c) % len(_HASH_ALPHABET)] for c in str(h))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def owner_reference(owner: Obj) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


# --------------------------------------------------------------------------- builders


def pod_template(service: str, version: str) -> Obj:
    return {
        "metadata": {"labels": {"app": service}},
        "spec": {
            "containers": [{
                "name": service,
                "image": world.image(service, version),
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": PORT, "scheme": "HTTP"},
                    "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1,
                    "failureThreshold": 3,
                },
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "securityContext": {},
        },
    }


def deployment_object(service: str, namespace: str, replicas: int, revision: world.Revision,
                      created: datetime) -> Obj:
    """A Deployment at its first revision (the shape ``kubectl create deployment`` gives)."""
    return {
        "metadata": {
            "name": service,
            "namespace": namespace,
            "labels": {"app": service},
            "annotations": {REVISION: "1",
                            CHANGE_CAUSE: revision.change_cause.format(service=service)},
            "creationTimestamp": rfc3339(created),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": service}},
            "template": pod_template(service, revision.version),
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "revisionHistoryLimit": 10,
            # modest, so a broken rollout fails within a minute of simulated time
            "progressDeadlineSeconds": PROGRESS_DEADLINE,
        },
        "status": {},
    }


def replicaset_for(deployment: Obj, revision: int, replicas: int, created: datetime) -> Obj:
    """The ReplicaSet the deployment controller makes for the deployment's current template."""
    template = copy.deepcopy(deployment["spec"]["template"])
    template_hash = pod_template_hash(template)
    template["metadata"].setdefault("labels", {})[TEMPLATE_HASH] = template_hash
    dmeta = deployment["metadata"]
    desired = deployment["spec"]["replicas"]
    annotations = {
        REVISION: str(revision),
        DESIRED_REPLICAS: str(desired),
        MAX_REPLICAS: str(desired + max_surge(deployment)),
    }
    if cause := (dmeta.get("annotations") or {}).get(CHANGE_CAUSE):
        annotations[CHANGE_CAUSE] = cause
    selector = copy.deepcopy(deployment["spec"]["selector"])
    selector.setdefault("matchLabels", {})[TEMPLATE_HASH] = template_hash
    return {
        "metadata": {
            "name": f"{dmeta['name']}-{template_hash}",
            "namespace": dmeta["namespace"],
            "labels": template["metadata"]["labels"],
            "annotations": annotations,
            "ownerReferences": [owner_reference(deployment)],
            "creationTimestamp": rfc3339(created),
        },
        "spec": {"replicas": replicas, "selector": selector, "template": template},
        "status": {"replicas": 0, "observedGeneration": 1},
    }


def max_surge(deployment: Obj) -> int:
    """maxSurge resolved against spec.replicas (percentages round up, as Kubernetes does)."""
    rolling = deployment["spec"].get("strategy", {}).get("rollingUpdate") or {}
    return _resolve(rolling.get("maxSurge", "25%"), deployment["spec"]["replicas"], round_up=True)


def _resolve(value: int | str, total: int, *, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    percent = int(value.rstrip("%"))
    scaled = total * percent
    return -(-scaled // 100) if round_up else scaled // 100


def pod_for(cluster: Cluster, replicaset: Obj, started: datetime, node: str) -> Obj:
    """A Running, Ready pod of ``replicaset`` (what the scheduler and kubelet would report)."""
    rmeta = replicaset["metadata"]
    spec = copy.deepcopy(replicaset["spec"]["template"]["spec"])
    spec |= {"nodeName": node, "serviceAccountName": "default"}
    name = f"{rmeta['name']}-{cluster.random_suffix()}"
    node_index = NODES.index(node) if node in NODES else len(NODES)
    ip = f"10.244.{node_index}.{int(_digest(name)[:4], 16) % 250 + 2}"
    return {
        "metadata": {
            "name": name,
            "generateName": f"{rmeta['name']}-",
            "namespace": rmeta["namespace"],
            "labels": copy.deepcopy(replicaset["spec"]["template"]["metadata"]["labels"]),
            "ownerReferences": [owner_reference(replicaset)],
            "creationTimestamp": rfc3339(started),
        },
        "spec": spec,
        "status": {
            "phase": "Running",
            "conditions": [
                _condition(kind, started + timedelta(seconds=delay))
                for kind, delay in (("PodReadyToStartContainers", 2), ("Initialized", 1),
                                    ("Ready", 8), ("ContainersReady", 8), ("PodScheduled", 0))
            ],
            "hostIP": f"10.0.0.{node_index + 11}",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": rfc3339(started + timedelta(seconds=1)),
            "qosClass": "Burstable",
            "containerStatuses": [
                running_container_status(c, started + timedelta(seconds=3), f"{name}/{c['name']}")
                for c in spec["containers"]
            ],
        },
    }


def running_container_status(container: Obj, started: datetime, seed: str) -> Obj:
    image = container["image"]
    return {
        "name": container["name"],
        "image": image,
        "imageID": f"{image.rpartition(':')[0]}@sha256:{_digest(image)}",
        "containerID": f"containerd://{_digest(seed)}",
        "ready": True,
        "started": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": rfc3339(started)}},
        "lastState": {},
    }


def _condition(kind: str, at: datetime) -> Obj:
    return {"type": kind, "status": "True", "lastProbeTime": None,
            "lastTransitionTime": rfc3339(at)}


def event_for(cluster: Cluster, involved: Obj, reason: str, message: str, at: datetime,
              *, type_: str = "Normal", component: str = "deployment-controller",
              host: str | None = None, field_path: str | None = None) -> Obj:
    """A core/v1 Event about ``involved``, as a controller or the kubelet records it.

    The kubelet names its node (``host``) and the container (``field_path``
    ``spec.containers{name}``).
    """
    meta = involved["metadata"]
    event: Obj = {
        "metadata": {
            "name": f"{meta['name']}.{cluster.new_uid().replace('-', '')[:16]}",
            "namespace": meta["namespace"],
            "creationTimestamp": rfc3339(at),
        },
        "involvedObject": {
            "apiVersion": involved["apiVersion"],
            "kind": involved["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": component},
        "firstTimestamp": rfc3339(at),
        "lastTimestamp": rfc3339(at),
        "count": 1,
        "eventTime": None,
        "reportingComponent": component,
        "reportingInstance": host or "",
    }
    if host:
        event["source"]["host"] = host
    if field_path:
        event["involvedObject"]["fieldPath"] = field_path
    return event


def deployment_status(deployment: Obj, replicaset: Obj, ready_since: datetime) -> Obj:
    """The status of a deployment whose rollout to ``replicaset`` completed."""
    replicas = deployment["spec"]["replicas"]
    at = rfc3339(ready_since)
    return {
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability.",
             "lastUpdateTime": at, "lastTransitionTime": at},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": f'ReplicaSet "{replicaset["metadata"]["name"]}" has successfully progressed.',
             "lastUpdateTime": at, "lastTransitionTime": at},
        ],
    }


# --------------------------------------------------------------------------- the world


ROLLED_OUT_AGO = {"prod": timedelta(minutes=47), "staging": timedelta(minutes=31),
                  "dev": timedelta(minutes=12)}


def seed(cluster: Cluster) -> Cluster:
    """Fill ``cluster`` with the sandbox world: namespaces, deployments with history, pods."""
    now = cluster.now()
    created = now - timedelta(days=30)
    for ns in ("default", "kube-system", BOT_NAMESPACE, *world.ENVS):
        cluster.create(NAMESPACES, {
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns},
                         "creationTimestamp": rfc3339(created)},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        })
    for env in world.ENVS:
        for i, service in enumerate(world.SERVICES):
            rolled_out = now - ROLLED_OUT_AGO.get(env, timedelta(hours=1)) - timedelta(minutes=2 * i)
            seed_deployment(cluster, service, env, world.ENV_SPECS[env], rolled_out)
    from sandbox.jobs import seed_cronjobs

    seed_cronjobs(cluster, list(world.ENVS), created)
    return cluster


def seed_deployment(cluster: Cluster, service: str, namespace: str, spec: world.EnvSpec,
                    rolled_out: datetime) -> None:
    """Replay ``spec.history`` (one revision a day, the last at ``rolled_out``) into the cluster."""
    history = spec.history
    times = [rolled_out - timedelta(days=len(history) - 1 - n) for n in range(len(history))]
    deployment = cluster.create(
        DEPLOYMENTS, deployment_object(service, namespace, spec.replicas, history[0], times[0]))
    replicasets: list[Obj] = []
    for number, (revision, at) in enumerate(zip(history, times, strict=True), start=1):
        if number > 1:
            deployment = cluster.update(DEPLOYMENTS, _at_revision(deployment, number, revision))
        current = number == len(history)
        replicasets.append(cluster.create(REPLICASETS, replicaset_for(
            deployment, number, spec.replicas if current else 0, at)))
    newest = replicasets[-1]
    pods = [
        cluster.create(PODS, pod_for(cluster, newest, rolled_out + timedelta(seconds=2),
                                     NODES[n % len(NODES)]))
        for n in range(spec.replicas)
    ]
    ready_since = rolled_out + timedelta(seconds=12)
    newest["status"] = {"replicas": len(pods), "fullyLabeledReplicas": len(pods),
                        "readyReplicas": len(pods), "availableReplicas": len(pods),
                        "observedGeneration": 1}
    newest = cluster.update(REPLICASETS, newest)
    deployment["status"] = deployment_status(deployment, newest, ready_since)
    deployment = cluster.update(DEPLOYMENTS, deployment)
    _record_rollout(cluster, deployment, replicasets, rolled_out, spec.replicas)


def _at_revision(deployment: Obj, number: int, revision: world.Revision) -> Obj:
    service = deployment["metadata"]["name"]
    deployment = copy.deepcopy(deployment)
    deployment["metadata"]["annotations"] |= {
        REVISION: str(number), CHANGE_CAUSE: revision.change_cause.format(service=service)}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["image"] = world.image(service, revision.version)
    return deployment


def _record_rollout(cluster: Cluster, deployment: Obj, replicasets: list[Obj],
                    at: datetime, replicas: int) -> None:
    newest = replicasets[-1]["metadata"]["name"]
    cluster.create(EVENTS, event_for(
        cluster, deployment, "ScalingReplicaSet",
        f"Scaled up replica set {newest} from 0 to {replicas}", at))
    if len(replicasets) > 1:
        previous = replicasets[-2]["metadata"]["name"]
        cluster.create(EVENTS, event_for(
            cluster, deployment, "ScalingReplicaSet",
            f"Scaled down replica set {previous} from {replicas} to 0",
            at + timedelta(seconds=15)))
