"""The sandbox's controllers: a deployment controller, a ReplicaSet controller and a kubelet.

:func:`install` registers one :class:`Controllers` with :meth:`Cluster.add_controller`; every
:meth:`Cluster.tick` (the server ticks four times a second) then moves the world to ``now``:

1. the *kubelet* advances the pods it runs (Pending → ContainerCreating → Running → Ready; an
   image tag ending in ``-broken`` crash-loops, one ending in ``-missing`` never pulls);
2. the *ReplicaSet controller* creates and deletes pods to match ``spec.replicas`` and keeps
   the ReplicaSet's status;
3. the *deployment controller* follows kube-controller-manager's algorithm (pkg/controller/
   deployment): one ReplicaSet per pod template, revisions (a reused ReplicaSet takes the next
   revision, as ``rollout undo`` relies on), rolling updates within maxSurge/maxUnavailable,
   Recreate, proportional scaling, pause, revisionHistoryLimit, and the Available and
   Progressing conditions with ``progressDeadlineSeconds``.

Time: every duration in :class:`Timing` (and a Deployment's progressDeadlineSeconds) is in
simulated seconds; ``Timing.speed`` simulated seconds pass per second of the cluster's clock.

Controllers react to their own writes at once, to a new Deployment spec after
``Timing.observe`` and to pods deleted behind a ReplicaSet's back after ``Timing.replace``: a
client reading right after its own write sees the write, not yet the reaction (as
``kubectl rollout status`` shows "Waiting for deployment spec update to be observed").
Objects they consider settled are not rewritten, so a test may set a status by hand and read
it back.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox.cluster import (
    DEPLOYMENTS,
    EVENTS,
    PODS,
    REPLICASETS,
    ApiError,
    Cluster,
    Obj,
    rfc3339,
)
from sandbox.seed import (
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    NODES,
    REVISION,
    TEMPLATE_HASH,
    event_for,
    owner_reference,
    pod_template_hash,
)

SPEED_ENV = "OPSBOT_SANDBOX_SPEED"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
# Annotations the deployment controller never copies from a Deployment to its ReplicaSets.
_NOT_COPIED = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration", REVISION, REVISION_HISTORY,
    DESIRED_REPLICAS, MAX_REPLICAS, "deprecated.deployment.rollback.to",
})
_MAX_REVISION_HISTORY_CHARS = 2000
DEFAULT_PROGRESS_DEADLINE = 600  # what the API server defaults progressDeadlineSeconds to
DEFAULT_HISTORY_LIMIT = 10


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """How long things take, in simulated seconds.

    ``speed`` simulated seconds pass per real second: the default makes a three-replica rollout
    take about eight seconds; ``Timing.fast()`` is for tests. ``OPSBOT_SANDBOX_SPEED`` sets the
    speed of a :class:`~sandbox.server.SandboxServer` that builds its own world.
    """

    speed: float = 1.0
    observe: float = 0.5  # before the deployment controller acts on a new spec
    replace: float = 2.0  # before a ReplicaSet replaces pods removed behind its back
    schedule: float = 0.2  # created → bound to a node (ContainerCreating)
    pod_start: float = 1.0  # ContainerCreating → Running (pull, create, start)
    pod_ready: float = 1.0  # Running → Ready (the readiness probe passes)
    crash_after: float = 1.5  # a -broken container runs this long, then exits 1
    backoff: float = 10.0  # the first CrashLoopBackOff / ImagePullBackOff, doubling …
    backoff_max: float = 300.0  # … up to this
    pull_error: float = 1.0  # ErrImagePull shows this long before ImagePullBackOff

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"the sandbox speed must be positive, not {self.speed}")

    def real(self, seconds: float) -> timedelta:
        """``seconds`` of simulated time on the cluster's clock."""
        return timedelta(seconds=seconds / self.speed)

    @classmethod
    def fast(cls, speed: float = 20.0) -> Timing:
        """Everything ``speed`` times quicker (a 60 s progress deadline passes in 3 s)."""
        return cls(speed=speed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Timing:
        """The default timing at the speed ``OPSBOT_SANDBOX_SPEED`` gives (1 when unset)."""
        raw = (os.environ if environ is None else environ).get(SPEED_ENV, "").strip()
        if not raw:
            return cls()
        try:
            return cls(speed=float(raw))
        except ValueError:
            raise ValueError(f"{SPEED_ENV} must be a positive number, not {raw!r}") from None


def install(cluster: Cluster, timing: Timing | None = None) -> Controllers:
    """Run the controllers on ``cluster``'s ticks; what exists now counts as already settled."""
    if running(cluster) is not None:
        raise RuntimeError("the sandbox controllers already run on this cluster")
    from sandbox.jobs import JobController

    controllers = Controllers(timing or Timing())
    controllers.adopt_state(cluster)
    cluster.add_controller(controllers)
    cluster.add_controller(JobController.from_timing(controllers.timing))
    return controllers


def running(cluster: Cluster) -> Controllers | None:
    """The :class:`Controllers` installed on ``cluster``, if any."""
    return next((c for c in cluster.controllers if isinstance(c, Controllers)), None)


# --------------------------------------------------------------------------- object helpers


def _spec_replicas(obj: Obj) -> int:
    replicas = (obj.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)


def _status_int(obj: Obj, key: str) -> int:
    return int((obj.get("status") or {}).get(key) or 0)


def _annotations(obj: Obj) -> dict[str, str]:
    return obj["metadata"].get("annotations") or {}


def _revision(obj: Obj) -> int:
    try:
        return int(_annotations(obj).get(REVISION, "0"))
    except ValueError:
        return 0


def _controller_uid(obj: Obj) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _ready_since(pod: Obj) -> datetime | None:
    """When the pod became Ready; None when it is not."""
    condition = _condition(pod.get("status") or {}, "Ready")
    if not condition or condition.get("status") != "True":
        return None
    return _parse_time(condition.get("lastTransitionTime")) or datetime.min.replace(tzinfo=UTC)


def _active(pod: Obj) -> bool:
    return (not pod["metadata"].get("deletionTimestamp")
            and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))


def _created(obj: Obj) -> tuple[str, str]:
    return obj["metadata"].get("creationTimestamp") or "", obj["metadata"]["name"]


def selector_matches(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels and matchExpressions); an empty one matches nothing."""
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            ok = labels.get(key) in values
        elif op == "NotIn":
            ok = labels.get(key) not in values
        else:
            ok = (key in labels) == (op == "Exists") and op in ("Exists", "DoesNotExist")
        if not ok:
            return False
    return True


def _canonical(value: Any) -> Any:
    """``value`` without nulls and empty maps/lists: how a round trip through a typed client
    (``kubectl rollout undo`` sends ``creationTimestamp: null``) leaves a template equal."""
    if isinstance(value, dict):
        items = ((k, _canonical(v)) for k, v in value.items() if v is not None)
        return {k: v for k, v in items if not (isinstance(v, dict | list) and not v)}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def template_key(template: Obj | None) -> str:
    """What makes two pod templates equal, ignoring the pod-template-hash label."""
    template = copy.deepcopy(template or {})
    labels = (template.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(TEMPLATE_HASH, None)
    return json.dumps(_canonical(template), sort_keys=True)


def resolve_int_or_percent(value: int | str | None, total: int, *, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent."""
    if value is None:
        value = "25%"
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text.endswith("%"):
        return int(text)
    scaled = total * int(text[:-1])
    return -(-scaled // 100) if round_up else scaled // 100


def _is_rolling(deployment: Obj) -> bool:
    strategy = deployment["spec"].get("strategy") or {}
    return strategy.get("type", "RollingUpdate") == "RollingUpdate"


def fenceposts(deployment: Obj) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) resolved against spec.replicas; never both zero."""
    if not _is_rolling(deployment):
        return 0, 0
    rolling = deployment["spec"].get("strategy", {}).get("rollingUpdate") or {}
    desired = _spec_replicas(deployment)
    surge = resolve_int_or_percent(rolling.get("maxSurge"), desired, round_up=True)
    unavailable = resolve_int_or_percent(rolling.get("maxUnavailable"), desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_unavailable(deployment: Obj) -> int:
    desired = _spec_replicas(deployment)
    if not _is_rolling(deployment) or desired == 0:
        return 0
    return min(fenceposts(deployment)[1], desired)


def _progress_deadline(deployment: Obj) -> int | None:
    seconds = deployment["spec"].get("progressDeadlineSeconds", DEFAULT_PROGRESS_DEADLINE)
    return None if seconds is None or seconds >= 2**31 - 1 else int(seconds)


def image_plan(image: str) -> str:
    """``broken`` for a tag ending in -broken, ``missing`` for -missing, else ``ok``."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    tag = name.partition(":")[2]
    if tag.endswith("-broken"):
        return "broken"
    if tag.endswith("-missing"):
        return "missing"
    return "ok"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- conditions


def _condition(status: Obj, kind: str) -> Obj | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _set_condition(status: Obj, kind: str, value: str, reason: str, message: str,
                   at: str) -> None:
    """deploymentutil.SetDeploymentCondition: same status and reason → unchanged; same status →
    the transition time is kept; the condition moves to the end of the list."""
    current = _condition(status, kind)
    if current and current.get("status") == value and current.get("reason") == reason:
        return
    condition = {"type": kind, "status": value, "lastUpdateTime": at,
                 "lastTransitionTime": at, "reason": reason, "message": message}
    if current and current.get("status") == value:
        condition["lastTransitionTime"] = current.get("lastTransitionTime", at)
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != kind]
    status["conditions"].append(condition)


# --------------------------------------------------------------------------- the kubelet's view


@dataclass
class _Container:
    """One container of a pod the kubelet runs, stepped through its lifecycle."""

    name: str
    image: str
    plan: str
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    restarts: int = 0
    crashes: int = 0
    pull_failures: int = 0
    pulled: bool = False
    container_id: str = ""
    ran_at: datetime | None = None
    next: tuple[datetime, str] | None = None

    def status(self) -> Obj:
        image_id = ""
        if self.pulled:
            image_id = f"{self.image.split('@')[0].rpartition(':')[0] or self.image}" \
                       f"@sha256:{_digest(self.image)}"
        status: Obj = {"name": self.name, "image": self.image, "imageID": image_id}
        if self.container_id:
            status["containerID"] = self.container_id
        status |= {"ready": self.ready, "started": self.started, "restartCount": self.restarts,
                   "state": copy.deepcopy(self.state), "lastState": copy.deepcopy(self.last_state)}
        return status


@dataclass
class _Pod:
    uid: str
    namespace: str
    name: str
    created: datetime
    containers: list[_Container]
    qos: str
    schedule_at: datetime | None = None
    node: str | None = None
    scheduled: datetime | None = None
    ip: str | None = None
    conditions: dict[str, tuple[str, datetime]] = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        return self.scheduled is not None and all(c.next is None for c in self.containers)

    def refresh_conditions(self, at: datetime) -> None:
        ready = all(c.ready for c in self.containers)
        wanted = {"PodReadyToStartContainers": self.ip is not None, "Initialized": True,
                  "Ready": ready, "ContainersReady": ready, "PodScheduled": True}
        for kind, value in wanted.items():
            text = "True" if value else "False"
            if self.conditions.get(kind, ("", at))[0] != text:
                self.conditions[kind] = (text, at)

    def status(self) -> Obj:
        if self.scheduled is None:
            return {"phase": "Pending", "qosClass": self.qos}
        unready = [c.name for c in self.containers if not c.ready]
        conditions = []
        for kind, (value, at) in self.conditions.items():
            condition: Obj = {"type": kind, "status": value, "lastProbeTime": None,
                              "lastTransitionTime": rfc3339(at)}
            if kind in ("Ready", "ContainersReady") and value == "False":
                condition |= {"reason": "ContainersNotReady",
                              "message": f"containers with unready status: [{' '.join(unready)}]"}
            conditions.append(condition)
        host_ip = f"10.0.0.{NODES.index(self.node) + 11 if self.node in NODES else 10}"
        status: Obj = {
            "phase": "Running" if any(c.ran_at for c in self.containers) else "Pending",
            "conditions": conditions,
            "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        }
        if self.ip:
            status |= {"podIP": self.ip, "podIPs": [{"ip": self.ip}]}
        status |= {"startTime": rfc3339(self.scheduled), "qosClass": self.qos,
                   "containerStatuses": [c.status() for c in self.containers]}
        return status


def _qos(pod: Obj) -> str:
    containers = (pod.get("spec") or {}).get("containers") or []
    if any((c.get("resources") or {}).get("requests") or (c.get("resources") or {}).get("limits")
           for c in containers):
        return "Burstable"
    return "BestEffort"


# --------------------------------------------------------------------------- the controllers


@dataclass
class _Snapshot:
    """One tick's view of the workloads: ReplicaSets and pods by their controller's uid."""

    deployments: list[Obj]
    replicasets: dict[str, list[Obj]]  # deployment uid → its ReplicaSets
    pods: dict[str, list[Obj]]  # ReplicaSet uid → its pods


class Controllers:
    """The deployment and ReplicaSet controllers and the kubelet, as one cluster controller."""

    def __init__(self, timing: Timing | None = None):
        self.timing = timing or Timing()
        self._pods: dict[str, _Pod] = {}  # pods the kubelet is still moving along
        self._rs_replicas: dict[str, int] = {}  # spec.replicas each ReplicaSet was synced at
        self._rs_mismatch: dict[str, datetime] = {}  # when an outside change was first seen
        self._spec_seen: dict[str, tuple[int, datetime]] = {}  # deployment → (generation, when)
        self._settled: dict[str, str] = {}  # deployment → fingerprint when nothing was left to do
        self._progress: dict[str, datetime] = {}  # deployment → precise last progress
        self._events: dict[tuple[str, ...], str] = {}  # aggregation key → Event name

    # ----------------------------------------------------------------- entry points

    def adopt_state(self, cluster: Cluster) -> None:
        """Take the cluster as it is as observed: complete rollouts are left alone."""
        snapshot = self._snapshot(cluster)
        for rs in cluster.list(REPLICASETS)[0]:
            self._rs_replicas[rs["metadata"]["uid"]] = _spec_replicas(rs)
        for deployment in snapshot.deployments:
            if self._complete(deployment, deployment.get("status") or {}):
                uid = deployment["metadata"]["uid"]
                self._settled[uid] = self._fingerprint(deployment, snapshot)

    def __call__(self, cluster: Cluster, now: datetime) -> None:
        self.tick(cluster, now)

    def tick(self, cluster: Cluster, now: datetime) -> None:
        pods = self._run_kubelet(cluster, now)
        by_owner: dict[str, list[Obj]] = {}
        for pod in pods:
            if owner := _controller_uid(pod):
                by_owner.setdefault(owner, []).append(pod)
        replicasets = cluster.list(REPLICASETS)[0]
        for rs in replicasets:
            self._sync_replicaset(cluster, rs, now, pods=by_owner.get(rs["metadata"]["uid"], []))
        snapshot = self._snapshot(cluster)
        for deployment in snapshot.deployments:
            self._consider(cluster, deployment, snapshot, now)
        self._forget({o["metadata"]["uid"] for o in [*replicasets, *snapshot.deployments]},
                     {p["metadata"]["uid"] for p in pods})

    def _forget(self, workloads: set[str], pods: set[str]) -> None:
        """Drop what is remembered about objects that are gone."""
        for memory in (self._rs_replicas, self._rs_mismatch, self._spec_seen, self._settled,
                       self._progress):
            for uid in [u for u in memory if u not in workloads]:
                del memory[uid]
        if len(self._events) > 4 * (len(workloads) + len(pods)) + 100:  # now and then
            self._events = {k: v for k, v in self._events.items()
                            if k[0] in workloads or k[0] in pods}

    # ----------------------------------------------------------------- events

    def _event(self, cluster: Cluster, involved: Obj, reason: str, message: str, at: datetime,
               *, type_: str = "Normal", component: str, host: str | None = None,
               field_path: str | None = None) -> None:
        """Record an Event; a repeat of the same one counts up, as the event recorder does."""
        key = (involved["metadata"]["uid"], reason, message, type_, component)
        if name := self._events.get(key):
            def bump(event: Obj) -> Obj:
                event["count"] = int(event.get("count") or 1) + 1
                event["lastTimestamp"] = rfc3339(at)
                return event
            try:
                cluster.modify(EVENTS, involved["metadata"]["namespace"], name, bump)
                return
            except ApiError:
                pass  # deleted meanwhile: record it anew
        event = event_for(cluster, involved, reason, message, at, type_=type_,
                          component=component, host=host, field_path=field_path)
        self._events[key] = cluster.create(EVENTS, event)["metadata"]["name"]

    # ----------------------------------------------------------------- kubelet

    def _run_kubelet(self, cluster: Cluster, now: datetime) -> list[Obj]:
        """Move the pods along; every pod as it is afterwards."""
        pods = {p["metadata"]["uid"]: p for p in cluster.list(PODS)[0]}
        for uid in [u for u in self._pods if u not in pods]:
            del self._pods[uid]
        for uid, pod in pods.items():
            if uid not in self._pods and self._unstarted(pod):
                self._pods[uid] = self._new_life(pod, now)
        for uid, life in list(self._pods.items()):
            pods[uid] = self._advance(cluster, life, pods[uid], now) or pods[uid]
            if life.settled:
                del self._pods[uid]  # nothing more will happen to it
        return list(pods.values())

    @staticmethod
    def _unstarted(pod: Obj) -> bool:
        status = pod.get("status") or {}
        return (not pod["metadata"].get("deletionTimestamp")
                and status.get("phase") in (None, "", "Pending")
                and not status.get("containerStatuses"))

    def _new_life(self, pod: Obj, created: datetime) -> _Pod:
        containers = [_Container(c["name"], c.get("image", ""), image_plan(c.get("image", "")))
                      for c in (pod.get("spec") or {}).get("containers") or []]
        return _Pod(pod["metadata"]["uid"], pod["metadata"]["namespace"],
                    pod["metadata"]["name"], created, containers, _qos(pod),
                    schedule_at=created + self.timing.real(self.timing.schedule))

    def _advance(self, cluster: Cluster, life: _Pod, pod: Obj, now: datetime) -> Obj | None:
        """Apply every transition due by ``now``, in order, at its own time; then write.

        The pod as written; None when nothing happened (or it is gone)."""
        changed = False
        while True:
            due: list[tuple[datetime, str, _Container | None]] = []
            if life.schedule_at is not None:
                due.append((life.schedule_at, "schedule", None))
            due += [(c.next[0], c.next[1], c) for c in life.containers if c.next]
            due = [d for d in due if d[0] <= now]
            if not due:
                break
            at, step, container = min(due, key=lambda d: d[0])
            if container is None:
                self._schedule(cluster, life, pod, at)
            else:
                container.next = None
                getattr(self, f"_container_{step}")(cluster, life, pod, container, at)
            life.refresh_conditions(at)
            changed = True
        if not changed:
            return None

        def write(obj: Obj) -> Obj:
            if life.node:
                obj.setdefault("spec", {})["nodeName"] = life.node
            obj["status"] = life.status()
            return obj

        try:
            return cluster.modify(PODS, life.namespace, life.name, write)
        except ApiError:
            self._pods.pop(life.uid, None)
            return None

    def _kubelet_event(self, cluster: Cluster, life: _Pod, pod: Obj, container: _Container,
                       reason: str, message: str, at: datetime, type_: str = "Normal") -> None:
        self._event(cluster, pod, reason, message, at, type_=type_, component="kubelet",
                    host=life.node, field_path=f"spec.containers{{{container.name}}}")

    def _schedule(self, cluster: Cluster, life: _Pod, pod: Obj, at: datetime) -> None:
        life.schedule_at = None
        life.node = NODES[int(_digest(life.name)[:8], 16) % len(NODES)]
        life.scheduled = at
        self._event(cluster, pod, "Scheduled",
                    f"Successfully assigned {life.namespace}/{life.name} to {life.node}", at,
                    component="default-scheduler")
        for container in life.containers:
            self._pull(cluster, life, pod, container, at)

    def _pull(self, cluster: Cluster, life: _Pod, pod: Obj, container: _Container,
              at: datetime) -> None:
        self._kubelet_event(cluster, life, pod, container, "Pulling",
                            f'Pulling image "{container.image}"', at)
        step = "pull_failed" if container.plan == "missing" else "start"
        container.next = (at + self.timing.real(self.timing.pod_start), step)

    def _sandbox(self, life: _Pod) -> None:
        if life.ip is None:
            node = NODES.index(life.node) if life.node in NODES else len(NODES)
            life.ip = f"10.244.{node}.{int(_digest(life.name)[:4], 16) % 250 + 2}"

    def _container_start(self, cluster: Cluster, life: _Pod, pod: Obj, container: _Container,
                         at: datetime) -> None:
        self._sandbox(life)
        if container.pulled:
            self._kubelet_event(cluster, life, pod, container, "Pulled",
                                f'Container image "{container.image}" already present on machine',
                                at)
        else:
            took = self.timing.pod_start * 0.8
            self._kubelet_event(
                cluster, life, pod, container, "Pulled",
                f'Successfully pulled image "{container.image}" in {took:.3f}s '
                f"({took:.3f}s including waiting). Image size: "
                f"{int(_digest(container.image)[:6], 16) % 40_000_000 + 9_000_000} bytes.", at)
            container.pulled = True
        self._kubelet_event(cluster, life, pod, container, "Created",
                            f"Created container: {container.name}", at)
        self._kubelet_event(cluster, life, pod, container, "Started",
                            f"Started container {container.name}", at)
        container.container_id = "containerd://" + _digest(
            f"{life.uid}/{container.name}/{container.restarts}")
        container.state = {"running": {"startedAt": rfc3339(at)}}
        container.started, container.ran_at = True, at
        if container.plan == "broken":
            container.next = (at + self.timing.real(self.timing.crash_after), "crash")
        else:
            container.next = (at + self.timing.real(self.timing.pod_ready), "ready")

    def _container_ready(self, cluster: Cluster, life: _Pod, pod: Obj, container: _Container,
                         at: datetime) -> None:
        container.ready = True

    def _backoff(self, failures: int) -> float:
        """Simulated seconds before retry number ``failures`` (10 s, 20 s, 40 s … 5 min)."""
        return min(self.timing.backoff * 2 ** max(failures - 1, 0), self.timing.backoff_max)

    def _container_crash(self, cluster: Cluster, life: _Pod, pod: Obj, container: _Container,
                         at: datetime) -> None:
        started = container.state.get("running", {}).get("startedAt")
        container.last_state = {"terminated": {
            "exitCode": 1, "reason": "Error", "startedAt": started, "finishedAt": rfc3339(at),
            "containerID": container.container_id}}
        container.ready = container.started = False
        container.crashes += 1
        if container.crashes == 1:  # the kubelet restarts a first failure at once
            self._container_restart(cluster, life, pod, container, at)
            return
        delay = self._backoff(container.crashes - 1)
        who = f"{life.name}_{life.namespace}({life.uid})"
        container.state = {"waiting": {
            "reason": "CrashLoopBackOff",
            "message": f"back-off {delay:g}s restarting failed container={container.name} "
                       f"pod={who}"}}
        self._kubelet_event(cluster, life, pod, container, "BackOff",
                            f"Back-off restarting failed container {container.name} in pod {who}",
                            at, "Warning")
        container.next = (at + self.timing.real(delay), "restart")

    def _container_restart(self, cluster: Cluster, life: _Pod, pod: Obj, container: _Container,
                           at: datetime) -> None:
        container.restarts += 1
        self._container_start(cluster, life, pod, container, at)

    def _container_pull_failed(self, cluster: Cluster, life: _Pod, pod: Obj,
                               container: _Container, at: datetime) -> None:
        self._sandbox(life)
        image = container.image
        reason = (f'failed to pull and unpack image "{image}": failed to resolve reference '
                  f'"{image}": {image}: not found')
        container.state = {"waiting": {"reason": "ErrImagePull",
                                       "message": f"rpc error: code = NotFound desc = {reason}"}}
        container.pull_failures += 1
        self._kubelet_event(cluster, life, pod, container, "Failed",
                            f'Failed to pull image "{image}": rpc error: code = NotFound desc = '
                            f"{reason}", at, "Warning")
        self._kubelet_event(cluster, life, pod, container, "Failed", "Error: ErrImagePull", at,
                            "Warning")
        container.next = (at + self.timing.real(self.timing.pull_error), "pull_backoff")

    def _container_pull_backoff(self, cluster: Cluster, life: _Pod, pod: Obj,
                                container: _Container, at: datetime) -> None:
        message = f'Back-off pulling image "{container.image}"'
        container.state = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
        self._kubelet_event(cluster, life, pod, container, "BackOff", message, at)
        self._kubelet_event(cluster, life, pod, container, "Failed", "Error: ImagePullBackOff",
                            at, "Warning")
        delay = self._backoff(container.pull_failures)
        container.next = (at + self.timing.real(delay), "pull")

    def _container_pull(self, cluster: Cluster, life: _Pod, pod: Obj, container: _Container,
                        at: datetime) -> None:
        self._pull(cluster, life, pod, container, at)

    # ----------------------------------------------------------------- ReplicaSets

    def _sync_replicaset(self, cluster: Cluster, rs: Obj, now: datetime, *,
                         ours: bool = False, pods: list[Obj] | None = None) -> Obj:
        """Create or delete pods to match spec.replicas, then write the status.

        A changed spec.replicas (or ``ours``: the deployment controller just scaled it) is acted
        on at once; pods that vanished or appeared behind the ReplicaSet's back after
        ``Timing.replace``.
        """
        uid, ns, name = rs["metadata"]["uid"], rs["metadata"]["namespace"], rs["metadata"]["name"]
        want = _spec_replicas(rs)
        pods = self._pods_of(cluster, rs) if pods is None else [p for p in pods if _active(p)]
        if len(pods) != want:
            if ours or self._rs_replicas.get(uid) != want:
                act = True
            else:
                seen = self._rs_mismatch.setdefault(uid, now)
                act = now - seen >= self.timing.real(self.timing.replace)
            if act:
                self._rs_mismatch.pop(uid, None)
                if len(pods) < want:
                    for _ in range(want - len(pods)):
                        self._create_pod(cluster, rs, now)
                else:
                    for pod in sorted(pods, key=self._deletion_rank)[:len(pods) - want]:
                        self._delete_pod(cluster, rs, pod, now)
                pods = self._pods_of(cluster, rs)
        else:
            self._rs_mismatch.pop(uid, None)
        if len(pods) == want:
            self._rs_replicas[uid] = want
        status = self._replicaset_status(rs, pods, now)
        if status == rs.get("status"):
            return rs

        def write(obj: Obj) -> Obj:
            obj["status"] = status
            return obj

        return cluster.modify(REPLICASETS, ns, name, write)

    @staticmethod
    def _pods_of(cluster: Cluster, rs: Obj) -> list[Obj]:
        uid = rs["metadata"]["uid"]
        selector = ",".join(f"{k}={v}" for k, v in
                            ((rs["spec"].get("selector") or {}).get("matchLabels") or {}).items())
        return [p for p in cluster.list(PODS, rs["metadata"]["namespace"], selector)[0]
                if _controller_uid(p) == uid and _active(p)]

    def _replicaset_status(self, rs: Obj, pods: list[Obj], now: datetime) -> Obj:
        min_ready = self.timing.real(int(rs["spec"].get("minReadySeconds") or 0))
        ready_since = [since for p in pods if (since := _ready_since(p)) is not None]
        available = [since for since in ready_since if since + min_ready <= now]
        status: Obj = {"replicas": len(pods)}
        selector = rs["spec"].get("selector")
        labelled = sum(1 for p in pods
                       if selector_matches(selector, p["metadata"].get("labels") or {}))
        for key, value in (("fullyLabeledReplicas", labelled), ("readyReplicas", len(ready_since)),
                           ("availableReplicas", len(available)),
                           ("observedGeneration", rs["metadata"].get("generation", 1))):
            if value:
                status[key] = value
        if conditions := (rs.get("status") or {}).get("conditions"):
            status["conditions"] = conditions
        return status

    @staticmethod
    def _deletion_rank(pod: Obj) -> tuple[Any, ...]:
        """controller.ActivePods ordering: the pods least worth keeping first."""
        status = pod.get("status") or {}
        phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(status.get("phase", ""), 0)
        ready_since = _ready_since(pod)
        restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
        created = _parse_time(pod["metadata"].get("creationTimestamp"))
        return (
            bool((pod.get("spec") or {}).get("nodeName")),  # unscheduled first
            phase_rank,  # then Pending, Unknown, Running
            ready_since is not None,  # then not Ready
            -(ready_since.timestamp() if ready_since else 0),  # then Ready for less time
            -restarts,  # then more restarts
            -(created.timestamp() if created else 0),  # then newer
            pod["metadata"]["name"],
        )

    def _create_pod(self, cluster: Cluster, rs: Obj, now: datetime) -> None:
        template = copy.deepcopy(rs["spec"].get("template") or {})
        meta = template.get("metadata") or {}
        rs_name = rs["metadata"]["name"]
        pod: Obj = {
            "metadata": {
                "generateName": f"{rs_name}-",
                "namespace": rs["metadata"]["namespace"],
                "labels": meta.get("labels") or {},
                "ownerReferences": [owner_reference(rs)],
            },
            "spec": template.get("spec") or {},
            "status": {"phase": "Pending"},
        }
        if meta.get("annotations"):
            pod["metadata"]["annotations"] = meta["annotations"]
        pod["spec"].setdefault("serviceAccountName", "default")
        pod["status"]["qosClass"] = _qos(pod)
        created = cluster.create(PODS, pod)
        self._pods[created["metadata"]["uid"]] = self._new_life(created, now)
        self._event(cluster, rs, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}",
                    now, component="replicaset-controller")

    def _delete_pod(self, cluster: Cluster, rs: Obj, pod: Obj, now: datetime) -> None:
        try:
            cluster.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
        except ApiError:
            return
        self._pods.pop(pod["metadata"]["uid"], None)
        self._event(cluster, rs, "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}",
                    now, component="replicaset-controller")
        node = (pod.get("spec") or {}).get("nodeName")
        for container in (pod.get("spec") or {}).get("containers") or []:
            self._event(cluster, pod, "Killing", f"Stopping container {container['name']}", now,
                        component="kubelet", host=node,
                        field_path=f"spec.containers{{{container['name']}}}")

    # ----------------------------------------------------------------- Deployments

    def _snapshot(self, cluster: Cluster) -> _Snapshot:
        deployments = cluster.list(DEPLOYMENTS)[0]
        replicasets: dict[str, list[Obj]] = {}
        for rs in cluster.list(REPLICASETS)[0]:
            if owner := _controller_uid(rs):
                replicasets.setdefault(owner, []).append(rs)
        pods: dict[str, list[Obj]] = {}
        for pod in cluster.list(PODS)[0]:
            if owner := _controller_uid(pod):
                pods.setdefault(owner, []).append(pod)
        return _Snapshot(deployments, replicasets, pods)

    def _fingerprint(self, deployment: Obj, snapshot: _Snapshot) -> str:
        """Everything a sync depends on, except the Deployment's own status."""
        meta = deployment["metadata"]
        rses = sorted(snapshot.replicasets.get(meta["uid"], []), key=_created)
        return _digest(json.dumps([
            meta.get("generation"), meta.get("annotations"), deployment.get("spec"),
            [(rs["metadata"]["name"], rs["metadata"].get("annotations"), rs.get("spec"),
              rs.get("status"),
              sorted((p["metadata"]["name"], json.dumps(p.get("status"), sort_keys=True))
                     for p in snapshot.pods.get(rs["metadata"]["uid"], [])))
             for rs in rses],
        ], sort_keys=True, default=str))

    def _consider(self, cluster: Cluster, deployment: Obj, snapshot: _Snapshot,
                  now: datetime) -> None:
        meta = deployment["metadata"]
        uid, generation = meta["uid"], meta.get("generation", 1)
        if meta.get("deletionTimestamp"):
            return
        if generation > (deployment.get("status") or {}).get("observedGeneration", 0):
            seen = self._spec_seen.get(uid)
            if seen is None or seen[0] != generation:
                self._spec_seen[uid] = seen = (generation, now)
            if now - seen[1] < self.timing.real(self.timing.observe):
                return
        elif self._settled.get(uid) == self._fingerprint(deployment, snapshot):
            return
        self._settled.pop(uid, None)
        idle = False
        for _ in range(20):  # the real controller resyncs on its own writes; so do we, at once
            acted, idle = self._sync_deployment(cluster, uid, now)
            if not acted:
                break
        if idle:
            self._settled[uid] = self._fingerprint(
                cluster.get(DEPLOYMENTS, meta["namespace"], meta["name"]), self._snapshot(cluster))

    def _replicasets(self, cluster: Cluster, deployment: Obj) -> list[Obj]:
        """The Deployment's ReplicaSets, adopting orphans its selector matches."""
        uid, ns = deployment["metadata"]["uid"], deployment["metadata"]["namespace"]
        owned = []
        for rs in cluster.list(REPLICASETS, ns)[0]:
            refs = rs["metadata"].get("ownerReferences") or []
            if _controller_uid(rs) == uid:
                owned.append(rs)
            elif not any(r.get("controller") for r in refs) and selector_matches(
                    deployment["spec"].get("selector"), rs["metadata"].get("labels") or {}):
                def adopt(obj: Obj, refs: list[Obj] = refs) -> Obj:
                    obj["metadata"]["ownerReferences"] = [*refs, owner_reference(deployment)]
                    return obj
                owned.append(cluster.modify(REPLICASETS, ns, rs["metadata"]["name"], adopt))
        return sorted(owned, key=_created)

    def _sync_deployment(self, cluster: Cluster, uid: str, now: datetime) -> tuple[bool, bool]:
        """One syncDeployment: (whether it scaled something, whether nothing is left to do)."""
        deployment = next((d for d in cluster.list(DEPLOYMENTS)[0]
                           if d["metadata"]["uid"] == uid), None)
        if deployment is None:
            return False, True
        rses = self._replicasets(cluster, deployment)
        status = copy.deepcopy(deployment.get("status") or {})
        self._paused_conditions(deployment, status, now)
        spec = deployment["spec"]
        if spec.get("paused") or self._scaling_event(deployment, rses):
            new_rs, olds = self._new_and_old(cluster, deployment, rses, status, now, create=False)
            acted = self._scale(cluster, deployment, new_rs, olds, now)
            if spec.get("paused"):
                self._cleanup(cluster, deployment, olds)
            new_rs, olds = self._fresh(cluster, new_rs, olds)
            self._write(cluster, deployment,
                        self._plain_status(deployment, status, new_rs, olds, now), new_rs)
            return acted, bool(spec.get("paused")) and not acted
        if not _is_rolling(deployment) and (spec.get("strategy") or {}).get("type") == "Recreate":
            return self._recreate(cluster, deployment, rses, status, now)
        new_rs, olds = self._new_and_old(cluster, deployment, rses, status, now, create=True)
        assert new_rs is not None
        acted = self._reconcile_new(cluster, deployment, new_rs, olds, now)
        if not acted:
            acted = self._reconcile_old(cluster, deployment, new_rs, olds, now)
        new_rs, olds = self._fresh(cluster, new_rs, olds)
        if not acted and self._complete(deployment, deployment.get("status") or {}):
            olds = self._cleanup(cluster, deployment, olds)
        status = self._rollout_status(deployment, status, new_rs, olds, now)
        self._write(cluster, deployment, status, new_rs)
        progressing = _condition(status, "Progressing") or {}
        idle = not acted and (self._complete(deployment, status)
                              or progressing.get("reason") == "ProgressDeadlineExceeded")
        return acted, idle

    def _recreate(self, cluster: Cluster, deployment: Obj, rses: list[Obj], status: Obj,
                  now: datetime) -> tuple[bool, bool]:
        new_rs, olds = self._new_and_old(cluster, deployment, rses, status, now, create=False)
        acted = False
        for old in olds:
            if _spec_replicas(old):
                self._scale_replicaset(cluster, deployment, old, 0, now)
                acted = True
        new_rs, olds = self._fresh(cluster, new_rs, olds)
        if not acted and not any(_status_int(old, "replicas") for old in olds):
            if new_rs is None:
                new_rs, olds = self._new_and_old(cluster, deployment, rses, status, now,
                                                 create=True)
            assert new_rs is not None
            if _spec_replicas(new_rs) != _spec_replicas(deployment):
                self._scale_replicaset(cluster, deployment, new_rs, _spec_replicas(deployment),
                                       now)
                acted = True
            new_rs, olds = self._fresh(cluster, new_rs, olds)
        status = self._rollout_status(deployment, status, new_rs, olds, now)
        self._write(cluster, deployment, status, new_rs)
        return acted, not acted and self._complete(deployment, status)

    @staticmethod
    def _fresh(cluster: Cluster, new_rs: Obj | None,
               olds: list[Obj]) -> tuple[Obj | None, list[Obj]]:
        def get(rs: Obj) -> Obj | None:
            try:
                return cluster.get(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])
            except ApiError:
                return None
        fresh_olds = [o for o in (get(rs) for rs in olds) if o is not None]
        return (get(new_rs) if new_rs else None), fresh_olds

    # ----------------------------------------------------------------- new ReplicaSet, revisions

    def _new_and_old(self, cluster: Cluster, deployment: Obj, rses: list[Obj], status: Obj,
                     now: datetime, *, create: bool) -> tuple[Obj | None, list[Obj]]:
        """getAllReplicaSetsAndSyncRevision: the ReplicaSet of the current template (found or
        made), at the next revision when it is not the newest already; and the others."""
        key = template_key(deployment["spec"].get("template"))
        new_rs = next((rs for rs in rses if template_key(rs["spec"].get("template")) == key), None)
        olds = [rs for rs in rses if rs is not new_rs]
        revision = str(max((_revision(rs) for rs in olds), default=0) + 1)
        ns = deployment["metadata"]["namespace"]
        if new_rs is not None:
            def annotate(rs: Obj) -> Obj:
                self._annotate_new(deployment, rs, revision, exists=True)
                return rs
            if annotate(copy.deepcopy(new_rs))["metadata"] != new_rs["metadata"]:
                new_rs = cluster.modify(REPLICASETS, ns, new_rs["metadata"]["name"], annotate)
            if _condition(status, "Progressing") is None and _progress_deadline(deployment):
                _set_condition(status, "Progressing", "True", "FoundNewReplicaSet",
                               f'Found new replica set "{new_rs["metadata"]["name"]}"',
                               self._progressed(deployment, now))
            return new_rs, olds
        if not create:
            return None, olds
        new_rs = self._create_replicaset(cluster, deployment, olds, status, revision, now)
        if _progress_deadline(deployment):
            _set_condition(status, "Progressing", "True", "NewReplicaSetCreated",
                           f'Created new replica set "{new_rs["metadata"]["name"]}"',
                           self._progressed(deployment, now))
        return new_rs, olds

    def _annotate_new(self, deployment: Obj, rs: Obj, revision: str, *, exists: bool) -> None:
        """deploymentutil.SetNewReplicaSetAnnotations."""
        annotations = rs["metadata"].setdefault("annotations", {})
        for key, value in _annotations(deployment).items():
            if key not in _NOT_COPIED:
                annotations[key] = value
        old = annotations.get(REVISION)
        old_number = int(old) if old and old.isdigit() else 0
        if old_number < int(revision):
            annotations[REVISION] = revision
            if old:
                history = [r for r in annotations.get(REVISION_HISTORY, "").split(",") if r]
                history.append(old)
                while len(",".join(history)) > _MAX_REVISION_HISTORY_CHARS:
                    history.pop(0)
                annotations[REVISION_HISTORY] = ",".join(history)
        if not exists:
            self._replica_annotations(deployment, rs)

    @staticmethod
    def _replica_annotations(deployment: Obj, rs: Obj) -> None:
        desired = _spec_replicas(deployment)
        rs["metadata"].setdefault("annotations", {}).update({
            DESIRED_REPLICAS: str(desired), MAX_REPLICAS: str(desired + fenceposts(deployment)[0])})

    def _create_replicaset(self, cluster: Cluster, deployment: Obj, olds: list[Obj],
                           status: Obj, revision: str, now: datetime) -> Obj:
        dmeta = deployment["metadata"]
        template = copy.deepcopy(deployment["spec"].get("template") or {})
        while True:
            collisions = int(status.get("collisionCount") or 0)
            hashed = _canonical(template) if not collisions else {
                "template": _canonical(template), "collisionCount": collisions}
            template_hash = pod_template_hash(hashed)
            name = f"{dmeta['name']}-{template_hash}"
            try:
                cluster.get(REPLICASETS, dmeta["namespace"], name)
            except ApiError:
                break
            status["collisionCount"] = collisions + 1  # a name taken by another template
        labels = {**((template.get("metadata") or {}).get("labels") or {}),
                  TEMPLATE_HASH: template_hash}
        template.setdefault("metadata", {})["labels"] = labels
        selector = copy.deepcopy(deployment["spec"].get("selector") or {})
        selector.setdefault("matchLabels", {})[TEMPLATE_HASH] = template_hash
        rs: Obj = {
            "metadata": {"name": name, "namespace": dmeta["namespace"], "labels": dict(labels),
                         "ownerReferences": [owner_reference(deployment)]},
            "spec": {"replicas": 0, "minReadySeconds": deployment["spec"].get("minReadySeconds", 0),
                     "selector": selector, "template": template},
            "status": {"replicas": 0},
        }
        if not deployment["spec"].get("minReadySeconds"):
            del rs["spec"]["minReadySeconds"]
        all_rses = [*olds, rs]
        replicas = self._new_replicas(deployment, all_rses, rs)
        rs["spec"]["replicas"] = replicas
        self._annotate_new(deployment, rs, revision, exists=False)
        created = cluster.create(REPLICASETS, rs)
        if replicas:
            self._event(cluster, deployment, "ScalingReplicaSet",
                        f"Scaled up replica set {name} from 0 to {replicas}", now,
                        component="deployment-controller")
        return self._sync_replicaset(cluster, created, now, ours=True)

    # ----------------------------------------------------------------- scaling

    def _scaling_event(self, deployment: Obj, rses: list[Obj]) -> bool:
        """isScalingEvent: an active ReplicaSet was sized for another spec.replicas."""
        desired = str(_spec_replicas(deployment))
        return any(_annotations(rs).get(DESIRED_REPLICAS, desired) != desired
                   for rs in rses if _spec_replicas(rs) > 0)

    def _scale_replicaset(self, cluster: Cluster, deployment: Obj, rs: Obj, replicas: int,
                          now: datetime) -> Obj:
        """scaleReplicaSetAndRecordEvent, then the ReplicaSet controller's reaction at once."""
        old = _spec_replicas(rs)
        probe = copy.deepcopy(rs)
        self._replica_annotations(deployment, probe)
        if old == replicas and probe["metadata"] == rs["metadata"]:
            return rs

        def scale(obj: Obj) -> Obj:
            obj["spec"]["replicas"] = replicas
            self._replica_annotations(deployment, obj)
            return obj

        rs = cluster.modify(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"], scale)
        if old != replicas:
            self._event(cluster, deployment, "ScalingReplicaSet",
                        f"Scaled {'up' if replicas > old else 'down'} replica set "
                        f"{rs['metadata']['name']} from {old} to {replicas}", now,
                        component="deployment-controller")
        return self._sync_replicaset(cluster, rs, now, ours=True)

    def _scale(self, cluster: Cluster, deployment: Obj, new_rs: Obj | None, olds: list[Obj],
               now: datetime) -> bool:
        """DeploymentController.scale: a replicas change without a new revision."""
        desired = _spec_replicas(deployment)
        everyone = ([new_rs] if new_rs else []) + olds
        active = [rs for rs in everyone if _spec_replicas(rs) > 0]
        target: Obj | None = None
        if len(active) == 1:
            target = active[0]
        elif not active:
            target = new_rs or max(olds, key=_revision, default=None)
        if target is not None:
            if _spec_replicas(target) == desired and not self._scaling_event(deployment, [target]):
                return False
            self._scale_replicaset(cluster, deployment, target, desired, now)
            return _spec_replicas(target) != desired
        if new_rs is not None and self._saturated(deployment, new_rs):
            for old in active:
                if old is not new_rs:
                    self._scale_replicaset(cluster, deployment, old, 0, now)
            return True
        if not _is_rolling(deployment):
            return False
        allowed = desired + fenceposts(deployment)[0] if desired > 0 else 0
        to_add = allowed - sum(_spec_replicas(rs) for rs in active)
        return self._proportionally(cluster, deployment, active, new_rs, to_add, now)

    def _proportionally(self, cluster: Cluster, deployment: Obj, active: list[Obj],
                        new_rs: Obj | None, to_add: int, now: datetime) -> bool:
        """Spread ``to_add`` replicas over the active ReplicaSets by size (larger first; newer
        first when scaling up, older first when scaling down); the rounding rest to the first."""
        if to_add == 0:
            return False
        order = sorted(active, key=lambda rs: (_spec_replicas(rs), _revision(rs) * (
            1 if to_add > 0 else -1)), reverse=True)
        total = sum(_spec_replicas(rs) for rs in order) or 1
        sizes, added = {}, 0
        for rs in order:
            share = _spec_replicas(rs) * to_add // total if to_add > 0 else -(
                _spec_replicas(rs) * -to_add // total)
            share = max(share, -_spec_replicas(rs))
            sizes[rs["metadata"]["name"]] = _spec_replicas(rs) + share
            added += share
        first = order[0]["metadata"]["name"]
        sizes[first] = max(0, sizes[first] + to_add - added)
        for rs in order:
            self._scale_replicaset(cluster, deployment, rs, sizes[rs["metadata"]["name"]], now)
        return True

    @staticmethod
    def _saturated(deployment: Obj, rs: Obj) -> bool:
        desired = _spec_replicas(deployment)
        return (_spec_replicas(rs) == desired
                and _annotations(rs).get(DESIRED_REPLICAS) == str(desired)
                and _status_int(rs, "availableReplicas") == desired)

    def _new_replicas(self, deployment: Obj, all_rses: list[Obj], new_rs: Obj) -> int:
        """deploymentutil.NewRSNewReplicas."""
        desired = _spec_replicas(deployment)
        if not _is_rolling(deployment):
            return desired
        current = sum(_spec_replicas(rs) for rs in all_rses)
        most = desired + fenceposts(deployment)[0]
        if current >= most:
            return _spec_replicas(new_rs)
        return _spec_replicas(new_rs) + min(most - current, desired - _spec_replicas(new_rs))

    def _reconcile_new(self, cluster: Cluster, deployment: Obj, new_rs: Obj, olds: list[Obj],
                       now: datetime) -> bool:
        desired, have = _spec_replicas(deployment), _spec_replicas(new_rs)
        if have == desired:
            return False
        want = desired if have > desired else self._new_replicas(deployment, [*olds, new_rs],
                                                                  new_rs)
        if want == have:
            return False
        self._scale_replicaset(cluster, deployment, new_rs, want, now)
        return True

    def _reconcile_old(self, cluster: Cluster, deployment: Obj, new_rs: Obj, olds: list[Obj],
                       now: datetime) -> bool:
        """reconcileOldReplicaSets: first old pods that are not available, then available
        ones down to spec.replicas - maxUnavailable available pods."""
        active = sorted((rs for rs in olds if _spec_replicas(rs) > 0), key=_created)
        if not active:
            return False
        everyone = [new_rs, *olds]
        min_available = _spec_replicas(deployment) - max_unavailable(deployment)
        new_unavailable = _spec_replicas(new_rs) - _status_int(new_rs, "availableReplicas")
        budget = sum(_spec_replicas(rs) for rs in everyone) - min_available - new_unavailable
        if budget <= 0:
            return False
        scaled = 0
        for i, rs in enumerate(active):  # cleanupUnhealthyReplicas
            if scaled >= budget:
                break
            unhealthy = _spec_replicas(rs) - _status_int(rs, "availableReplicas")
            if unhealthy <= 0:
                continue
            down = min(budget - scaled, unhealthy)
            active[i] = self._scale_replicaset(cluster, deployment, rs,
                                               _spec_replicas(rs) - down, now)
            scaled += down
        fresh_new, _ = self._fresh(cluster, new_rs, [])
        available = sum(_status_int(rs, "availableReplicas") for rs in [fresh_new, *active] if rs)
        room = available - min_available
        done = 0
        for rs in active:  # scaleDownOldReplicaSetsForRollingUpdate
            if done >= room:
                break
            if not _spec_replicas(rs):
                continue
            down = min(_spec_replicas(rs), room - done)
            self._scale_replicaset(cluster, deployment, rs, _spec_replicas(rs) - down, now)
            done += down
        return scaled + done > 0

    def _cleanup(self, cluster: Cluster, deployment: Obj, olds: list[Obj]) -> list[Obj]:
        """Delete the oldest scaled-down ReplicaSets beyond revisionHistoryLimit."""
        limit = deployment["spec"].get("revisionHistoryLimit", DEFAULT_HISTORY_LIMIT)
        if limit is None:
            return olds
        extra = len(olds) - int(limit)
        kept = list(olds)
        for rs in sorted(olds, key=_revision)[:max(extra, 0)]:
            if (_spec_replicas(rs) or _status_int(rs, "replicas")
                    or rs["metadata"].get("generation", 1) > _status_int(rs, "observedGeneration")):
                continue
            cluster.delete(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])
            kept.remove(rs)
        return kept

    # ----------------------------------------------------------------- status

    def _progressed(self, deployment: Obj, now: datetime) -> str:
        """Remember precisely when the rollout last progressed; the condition's time string."""
        self._progress[deployment["metadata"]["uid"]] = now
        return rfc3339(now)

    def _paused_conditions(self, deployment: Obj, status: Obj, now: datetime) -> None:
        """checkPausedConditions: Progressing Unknown while paused (unless it timed out)."""
        if not _progress_deadline(deployment):
            return
        current = _condition(status, "Progressing") or {}
        if current.get("reason") == "ProgressDeadlineExceeded":
            return
        paused = bool(deployment["spec"].get("paused"))
        if paused and current.get("reason") != "DeploymentPaused":
            _set_condition(status, "Progressing", "Unknown", "DeploymentPaused",
                           "Deployment is paused", self._progressed(deployment, now))
        elif not paused and current.get("reason") == "DeploymentPaused":
            _set_condition(status, "Progressing", "Unknown", "DeploymentResumed",
                           "Deployment is resumed", self._progressed(deployment, now))

    def _plain_status(self, deployment: Obj, status: Obj, new_rs: Obj | None,
                      olds: list[Obj], now: datetime) -> Obj:
        """calculateStatus: counts from the ReplicaSets, and the Available condition."""
        everyone = ([new_rs] if new_rs else []) + olds
        desired = _spec_replicas(deployment)
        available = sum(_status_int(rs, "availableReplicas") for rs in everyone)
        result: Obj = {"observedGeneration": deployment["metadata"].get("generation", 1)}
        for key, value in (
                ("replicas", sum(_status_int(rs, "replicas") for rs in everyone)),
                ("updatedReplicas", _status_int(new_rs, "replicas") if new_rs else 0),
                ("readyReplicas", sum(_status_int(rs, "readyReplicas") for rs in everyone)),
                ("availableReplicas", available),
                ("unavailableReplicas",
                 max(0, sum(_spec_replicas(rs) for rs in everyone) - available))):
            if value:
                result[key] = value
        if conditions := status.get("conditions"):
            result["conditions"] = copy.deepcopy(conditions)
        if status.get("collisionCount"):
            result["collisionCount"] = status["collisionCount"]
        at = rfc3339(now)
        if available >= desired - max_unavailable(deployment):
            _set_condition(result, "Available", "True", "MinimumReplicasAvailable",
                           "Deployment has minimum availability.", at)
        else:
            _set_condition(result, "Available", "False", "MinimumReplicasUnavailable",
                           "Deployment does not have minimum availability.", at)
        return result

    @staticmethod
    def _complete(deployment: Obj, status: Obj) -> bool:
        """deploymentutil.DeploymentComplete."""
        desired = _spec_replicas(deployment)
        return (int(status.get("updatedReplicas") or 0) == desired
                and int(status.get("replicas") or 0) == desired
                and int(status.get("availableReplicas") or 0) == desired
                and int(status.get("observedGeneration") or 0)
                >= deployment["metadata"].get("generation", 1))

    def _rollout_status(self, deployment: Obj, status: Obj, new_rs: Obj | None,
                        olds: list[Obj], now: datetime) -> Obj:
        """syncRolloutStatus: the Progressing condition, with progressDeadlineSeconds."""
        result = self._plain_status(deployment, status, new_rs, olds, now)
        deadline = _progress_deadline(deployment)
        if not deadline:
            result["conditions"] = [c for c in result.get("conditions", [])
                                    if c.get("type") != "Progressing"]
            return result
        current = _condition(status, "Progressing")
        if (int(result.get("replicas") or 0) == int(result.get("updatedReplicas") or 0)
                and current and current.get("reason") == "NewReplicaSetAvailable"):
            return result
        name = f'ReplicaSet "{new_rs["metadata"]["name"]}"' if new_rs else \
            f'Deployment "{deployment["metadata"]["name"]}"'
        if self._complete(deployment, result):
            _set_condition(result, "Progressing", "True", "NewReplicaSetAvailable",
                           f"{name} has successfully progressed.",
                           self._progressed(deployment, now))
        elif self._made_progress(deployment.get("status") or {}, result):
            at = self._progressed(deployment, now)
            condition = {"type": "Progressing", "status": "True", "lastUpdateTime": at,
                         "lastTransitionTime": at, "reason": "ReplicaSetUpdated",
                         "message": f"{name} is progressing."}
            if current and current.get("status") == "True":
                condition["lastTransitionTime"] = current.get("lastTransitionTime", at)
            result["conditions"] = [c for c in result.get("conditions", [])
                                    if c.get("type") != "Progressing"] + [condition]
        elif self._timed_out(deployment, result, deadline, now):
            _set_condition(result, "Progressing", "False", "ProgressDeadlineExceeded",
                           f"{name} has timed out progressing.", rfc3339(now))
        return result

    @staticmethod
    def _made_progress(old: Obj, new: Obj) -> bool:
        """deploymentutil.DeploymentProgressing."""
        def get(status: Obj, key: str) -> int:
            return int(status.get(key) or 0)
        old_olds = get(old, "replicas") - get(old, "updatedReplicas")
        new_olds = get(new, "replicas") - get(new, "updatedReplicas")
        return (get(new, "updatedReplicas") > get(old, "updatedReplicas") or new_olds < old_olds
                or get(new, "readyReplicas") > get(old, "readyReplicas")
                or get(new, "availableReplicas") > get(old, "availableReplicas"))

    def _timed_out(self, deployment: Obj, status: Obj, deadline: int, now: datetime) -> bool:
        condition = _condition(status, "Progressing")
        if condition is None or condition.get("reason") == "NewReplicaSetAvailable":
            return False
        if condition.get("reason") == "ProgressDeadlineExceeded":
            return True
        since = self._progress.get(deployment["metadata"]["uid"])
        if since is None or rfc3339(since) != condition.get("lastUpdateTime"):
            since = _parse_time(condition.get("lastUpdateTime"))
        return since is not None and since + self.timing.real(deadline) < now

    def _write(self, cluster: Cluster, deployment: Obj, status: Obj, new_rs: Obj | None) -> None:
        """Write the status and the revision annotation (SetDeploymentRevision) when changed."""
        revision = _annotations(new_rs).get(REVISION) if new_rs else None
        current = cluster.get(DEPLOYMENTS, deployment["metadata"]["namespace"],
                              deployment["metadata"]["name"])
        if current.get("status") == status and (
                revision is None or _annotations(current).get(REVISION) == revision):
            return

        def write(obj: Obj) -> Obj:
            obj["status"] = status
            if revision is not None:
                obj["metadata"].setdefault("annotations", {})[REVISION] = revision
            return obj

        cluster.modify(DEPLOYMENTS, deployment["metadata"]["namespace"],
                       deployment["metadata"]["name"], write)

