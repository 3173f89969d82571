"""The deployment and ReplicaSet controllers and the kubelet, through the Cluster API with a
fake clock: revisions, rolling-update bounds, crash loops, deadlines, pause, scale."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from sandbox import world
from sandbox.cluster import (
    DEPLOYMENTS,
    EVENTS,
    NAMESPACES,
    PODS,
    REPLICASETS,
    Cluster,
    Obj,
)
from sandbox.controller import (
    SPEED_ENV,
    Controllers,
    Timing,
    fenceposts,
    image_plan,
    install,
    template_key,
)
from sandbox.seed import CHANGE_CAUSE, REVISION, TEMPLATE_HASH, seed

REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
STEP = 0.1


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class World:
    """A seeded cluster with the controllers, ticked by hand on a fake clock."""

    def __init__(self, timing: Timing | None = None, *, seeded: bool = True):
        self.clock = Clock()
        self.cluster = Cluster(clock=self.clock)
        if seeded:
            seed(self.cluster)
        else:
            self.cluster.create(NAMESPACES, {"metadata": {"name": "prod"}})
        self.timing = timing or Timing()
        self.controllers = install(self.cluster, self.timing)
        self.elapsed = 0.0

    def tick(self, seconds: float = STEP) -> None:
        self.clock.now += timedelta(seconds=seconds)
        self.elapsed += seconds
        self.cluster.tick()

    def run_until(self, done: Callable[[], bool], limit: float = 120.0,
                  each: Callable[[], None] | None = None, step: float = STEP) -> float:
        """Tick until ``done()``; the simulated seconds it took (fails after ``limit``)."""
        started = self.elapsed
        while not done():
            assert self.elapsed - started < limit, "timed out"
            self.tick(step)
            if each:
                each()
        return self.elapsed - started

    # ------------------------------------------------------------------ reading

    def deployment(self, name: str = "chat-gui", ns: str = "prod") -> Obj:
        return self.cluster.get(DEPLOYMENTS, ns, name)

    def replicasets(self, name: str = "chat-gui", ns: str = "prod") -> dict[int, Obj]:
        return {int(rs["metadata"]["annotations"][REVISION]): rs
                for rs in self.cluster.list(REPLICASETS, ns, f"app={name}")[0]}

    def pods(self, name: str = "chat-gui", ns: str = "prod") -> list[Obj]:
        return self.cluster.list(PODS, ns, f"app={name}")[0]

    def events(self, reason: str, ns: str = "prod") -> list[Obj]:
        return self.cluster.list(EVENTS, ns, field_selector=f"reason={reason}")[0]

    def condition(self, kind: str, name: str = "chat-gui", ns: str = "prod") -> Obj:
        conditions = (self.deployment(name, ns).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), {})

    def complete(self, name: str = "chat-gui", ns: str = "prod") -> bool:
        return self.condition("Progressing", name, ns).get("reason") == "NewReplicaSetAvailable" \
            and _rolled_out(self.deployment(name, ns))

    def observed(self, name: str = "chat-gui", ns: str = "prod") -> float:
        """Tick until the controller has seen the Deployment's spec."""
        def seen() -> bool:
            d = self.deployment(name, ns)
            return (d.get("status") or {}).get("observedGeneration") == d["metadata"]["generation"]
        return self.run_until(seen)

    # ------------------------------------------------------------------ writing

    def edit(self, change: Callable[[Obj], None], name: str = "chat-gui",
             ns: str = "prod") -> Obj:
        deployment = self.deployment(name, ns)
        change(deployment)
        return self.cluster.update(DEPLOYMENTS, deployment)

    def set_image(self, version: str, cause: str | None = None, name: str = "chat-gui",
                  ns: str = "prod") -> Obj:
        def change(d: Obj) -> None:
            d["spec"]["template"]["spec"]["containers"][0]["image"] = world.image(name, version)
            if cause:
                d["metadata"]["annotations"][CHANGE_CAUSE] = cause
        return self.edit(change, name, ns)

    def undo(self, to_revision: int | None = None, name: str = "chat-gui",
             ns: str = "prod") -> Obj:
        """What ``kubectl rollout undo`` does: the JSON patch of template and annotations."""
        deployment = self.deployment(name, ns)
        by_revision = self.replicasets(name, ns)
        if to_revision is None:
            to_revision = sorted(by_revision)[-2]
        template = copy.deepcopy(by_revision[to_revision]["spec"]["template"])
        del template["metadata"]["labels"][TEMPLATE_HASH]
        template["metadata"]["creationTimestamp"] = None  # as a typed client sends it
        annotations = {k: v for k, v in deployment["metadata"]["annotations"].items()
                       if k.startswith("deployment.kubernetes.io/")}
        annotations |= {k: v for k, v in by_revision[to_revision]["metadata"]["annotations"].items()
                        if not k.startswith("deployment.kubernetes.io/")}

        def change(d: Obj) -> Obj:
            d["spec"]["template"] = template
            d["metadata"]["annotations"] = annotations
            return d

        return self.cluster.modify(DEPLOYMENTS, ns, name, change)


def _rolled_out(deployment: Obj) -> bool:
    status, desired = deployment.get("status") or {}, deployment["spec"]["replicas"]
    return (status.get("observedGeneration") == deployment["metadata"]["generation"]
            and status.get("updatedReplicas", 0) == desired == status.get("replicas", 0)
            == status.get("availableReplicas", 0))


def _image(obj: Obj) -> str:
    spec = obj["spec"]["template"]["spec"] if "template" in obj["spec"] else obj["spec"]
    return spec["containers"][0]["image"]


def _ready(pod: Obj) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod["status"].get("conditions") or [])


def _container(pod: Obj) -> Obj:
    return pod["status"]["containerStatuses"][0]


# --------------------------------------------------------------------------- rollouts


def test_a_new_template_rolls_out_a_new_revision() -> None:
    w = World()
    w.tick()
    before = w.deployment()
    w.set_image("v1.5.1", cause="opsbot: deploy chat-gui v1.5.1 by mod in #ops")
    took = w.run_until(w.complete)
    assert 5 <= took <= 15  # the demo speed: a three-replica rollout takes seconds
    deployment = w.deployment()
    assert deployment["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert deployment["status"]["observedGeneration"] == deployment["metadata"]["generation"]
    assert deployment["metadata"]["annotations"][REVISION] == "4"
    by_revision = w.replicasets()
    assert sorted(by_revision) == [1, 2, 3, 4]
    new = by_revision[4]
    assert new["metadata"]["annotations"][CHANGE_CAUSE] == (
        "opsbot: deploy chat-gui v1.5.1 by mod in #ops")
    assert new["metadata"]["name"] == f"chat-gui-{new['metadata']['labels'][TEMPLATE_HASH]}"
    assert new["metadata"]["ownerReferences"][0]["uid"] == deployment["metadata"]["uid"]
    assert (new["spec"]["replicas"], new["status"]["availableReplicas"]) == (3, 3)
    assert all(rs["spec"]["replicas"] == 0 for n, rs in by_revision.items() if n < 4)
    pods = w.pods()
    assert len(pods) == 3
    assert all(_image(p) == world.image("chat-gui", "v1.5.1") and _ready(p)
               and p["spec"]["nodeName"] and p["status"]["podIP"] for p in pods)
    assert all(p["metadata"]["labels"][TEMPLATE_HASH] == new["metadata"]["labels"][TEMPLATE_HASH]
               for p in pods)
    status = deployment["status"]
    assert (status["replicas"], status["updatedReplicas"], status["readyReplicas"],
            status["availableReplicas"]) == (3, 3, 3, 3)
    assert "unavailableReplicas" not in status
    assert w.condition("Available")["reason"] == "MinimumReplicasAvailable"
    assert w.condition("Progressing")["message"] == (
        f'ReplicaSet "{new["metadata"]["name"]}" has successfully progressed.')
    scaling = [e["message"] for e in w.events("ScalingReplicaSet")
               if new["metadata"]["name"] in e["message"]]
    assert f"Scaled up replica set {new['metadata']['name']} from 0 to 1" in scaling
    for reason in ("SuccessfulCreate", "Scheduled", "Pulling", "Pulled", "Created", "Started"):
        assert w.events(reason), reason
    pulled = w.events("Pulled")[0]
    assert pulled["source"] == {"component": "kubelet", "host": pulled["source"]["host"]}
    assert pulled["involvedObject"]["fieldPath"] == "spec.containers{chat-gui}"


def test_the_spec_is_observed_after_a_moment_then_progress_is_reported() -> None:
    w = World()
    changed = w.set_image("v1.5.1")
    w.tick()
    assert w.deployment()["status"]["observedGeneration"] < changed["metadata"]["generation"]
    seen = ["NewReplicaSetAvailable"]

    def record() -> None:
        if (reason := w.condition("Progressing")["reason"]) != seen[-1]:
            seen.append(reason)
    w.run_until(w.complete, each=record)
    assert seen == ["NewReplicaSetAvailable", "NewReplicaSetCreated", "ReplicaSetUpdated",
                    "NewReplicaSetAvailable"]
    assert w.condition("Progressing")["status"] == "True"


@pytest.mark.parametrize(
    ("replicas", "surge", "unavailable"),
    [(3, "25%", "25%"), (4, 1, 1), (5, "50%", 0), (4, 0, 2), (10, "30%", "20%"), (2, 0, 0),
     (1, 1, 0)],
)
def test_rolling_update_stays_within_surge_and_unavailable(replicas: int, surge: int | str,
                                                           unavailable: int | str) -> None:
    w = World()

    def shape(d: Obj) -> None:
        d["spec"]["replicas"] = replicas
        d["spec"]["strategy"]["rollingUpdate"] = {"maxSurge": surge,
                                                  "maxUnavailable": unavailable}
    w.edit(shape)
    w.run_until(w.complete)
    most_surge, most_unavailable = fenceposts(w.deployment())
    w.set_image("v1.5.1")
    worst = {"pods": 0, "available": replicas}

    def check() -> None:
        pods = w.pods()
        available = sum(1 for p in pods if _ready(p))
        worst["pods"] = max(worst["pods"], len(pods))
        worst["available"] = min(worst["available"], available)
        assert len(pods) <= replicas + most_surge
        assert sum(rs["spec"]["replicas"] for rs in w.replicasets().values()) <= (
            replicas + most_surge)
        assert available >= replicas - most_unavailable

    w.run_until(w.complete, each=check)
    assert all(_image(p).endswith(":v1.5.1") for p in w.pods())
    assert worst["pods"] > replicas or worst["available"] < replicas  # it did roll


def test_undo_reuses_the_old_replicaset_at_the_next_revision() -> None:
    w = World()
    w.set_image("v1.5.1", cause="to v1.5.1")
    w.run_until(w.complete)
    names = {n: rs["metadata"]["name"] for n, rs in w.replicasets().items()}
    w.undo()  # back to revision 3 (v1.4.0)
    w.run_until(w.complete)
    by_revision = w.replicasets()
    assert sorted(by_revision) == [1, 2, 4, 5]  # revision 3 became 5, as in Kubernetes
    assert by_revision[5]["metadata"]["name"] == names[3]
    assert by_revision[5]["metadata"]["annotations"][REVISION_HISTORY] == "3"
    assert _image(by_revision[5]) == world.image("chat-gui", "v1.4.0")
    assert by_revision[5]["metadata"]["annotations"][CHANGE_CAUSE] == (
        "opsbot: deploy chat-gui v1.4.0 by mod in #ops")
    assert w.deployment()["metadata"]["annotations"][REVISION] == "5"
    assert len(w.replicasets()) == 4  # no new ReplicaSet was made
    w.undo(to_revision=1)
    w.run_until(w.complete)
    by_revision = w.replicasets()
    assert sorted(by_revision) == [2, 4, 5, 6]
    assert by_revision[6]["metadata"]["name"] == names[1]
    assert _image(w.deployment()) == world.image("chat-gui", "v1.2.0")
    assert all(_image(p).endswith(":v1.2.0") for p in w.pods())


def test_change_cause_follows_the_deployment_to_the_new_replicaset() -> None:
    w = World()
    w.set_image("v1.5.1")
    w.run_until(w.complete)
    w.edit(lambda d: d["metadata"]["annotations"].update({CHANGE_CAUSE: "annotated later"}))
    w.tick()
    assert w.replicasets()[4]["metadata"]["annotations"][CHANGE_CAUSE] == "annotated later"
    assert w.replicasets()[3]["metadata"]["annotations"][CHANGE_CAUSE] != "annotated later"


def test_revision_history_limit_prunes_the_oldest_replicasets() -> None:
    w = World()
    w.edit(lambda d: d["spec"].update(revisionHistoryLimit=2))
    for version in ("v1.5.0", "v1.5.1", "v1.5.2"):
        w.set_image(version)
        w.run_until(w.complete)
    assert sorted(w.replicasets()) == [4, 5, 6]


# --------------------------------------------------------------------------- failures


def test_a_broken_version_crash_loops_until_the_progress_deadline() -> None:
    w = World()
    w.set_image("v1.5.1-broken")
    took = w.run_until(lambda: w.condition("Progressing")["status"] == "False", step=0.5)
    assert 60 <= took <= 62  # progressDeadlineSeconds of the seed, in simulated time
    progressing = w.condition("Progressing")
    new = w.replicasets()[4]
    assert progressing["reason"] == "ProgressDeadlineExceeded"
    assert progressing["message"] == (
        f'ReplicaSet "{new["metadata"]["name"]}" has timed out progressing.')
    assert w.condition("Available")["status"] == "True"  # the old pods still serve
    broken = [p for p in w.pods() if p["metadata"]["labels"][TEMPLATE_HASH]
              == new["metadata"]["labels"][TEMPLATE_HASH]]
    assert len(broken) == 1  # maxSurge 1, maxUnavailable 0: one new pod at a time
    status = _container(broken[0])
    assert status["restartCount"] >= 3 and status["ready"] is False
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["state"]["waiting"]["message"].startswith("back-off ")
    terminated = status["lastState"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (1, "Error")
    assert broken[0]["status"]["phase"] == "Running"
    backoff = w.events("BackOff")
    assert backoff and backoff[0]["type"] == "Warning" and backoff[0]["count"] >= 2
    assert backoff[0]["message"].startswith("Back-off restarting failed container chat-gui in pod")
    assert sum(1 for p in w.pods() if _ready(p)) == 3
    w.tick(30)
    assert w.condition("Progressing")["reason"] == "ProgressDeadlineExceeded"  # it stays


def test_crash_loop_back_off_doubles() -> None:
    w = World(Timing(crash_after=1.0, backoff=10, backoff_max=40))
    w.set_image("v1.5.1-broken")
    restarts: dict[float, int] = {}

    def record() -> None:
        pod = next((p for p in w.pods() if _image(p).endswith("-broken")), None)
        if pod and pod["status"].get("containerStatuses"):
            count = _container(pod)["restartCount"]
            if count not in restarts.values():
                restarts[round(w.elapsed, 1)] = count

    w.run_until(lambda: 5 in restarts.values(), limit=200, each=record, step=0.25)
    times = sorted(restarts)
    gaps = [round(b - a) for a, b in itertools.pairwise(times[1:])]
    assert gaps == [11, 21, 41, 41]  # back-off (10, 20, 40 capped) plus a second of running


def test_a_missing_image_fails_to_pull() -> None:
    w = World()
    w.set_image("v1.5.1-missing")
    reasons: set[str] = set()

    def record() -> None:
        for pod in w.pods():
            if pod["status"].get("containerStatuses") and _image(pod).endswith("-missing"):
                reasons.add(_container(pod)["state"].get("waiting", {}).get("reason", "?"))
    w.run_until(lambda: w.condition("Progressing")["status"] == "False", each=record, step=0.25)
    assert {"ContainerCreating", "ErrImagePull", "ImagePullBackOff"} <= reasons
    pod = next(p for p in w.pods() if _image(p).endswith("-missing"))
    assert pod["status"]["phase"] == "Pending"
    assert _container(pod)["restartCount"] == 0
    failed = {e["message"] for e in w.events("Failed")}
    assert "Error: ErrImagePull" in failed and "Error: ImagePullBackOff" in failed
    assert any(m.startswith('Failed to pull image "registry.local/dgg/chat-gui:v1.5.1-missing"')
               for m in failed)


def test_rolling_back_a_broken_rollout_recovers() -> None:
    w = World()
    w.set_image("v1.5.1-broken")
    w.run_until(lambda: w.condition("Progressing")["status"] == "False", step=0.5)
    w.undo()
    w.run_until(w.complete)
    assert sorted(w.replicasets()) == [1, 2, 4, 5]
    assert all(_image(p).endswith(":v1.4.0") and _ready(p) for p in w.pods())
    assert w.condition("Progressing")["status"] == "True"


# --------------------------------------------------------------------------- pause, scale, more


def test_a_paused_deployment_waits_for_resume() -> None:
    w = World()
    w.edit(lambda d: d["spec"].update(paused=True))
    changed = w.set_image("v1.5.1")
    w.observed()
    w.tick(5)
    deployment = w.deployment()
    assert deployment["status"]["observedGeneration"] == changed["metadata"]["generation"]
    assert sorted(w.replicasets()) == [1, 2, 3]  # no new ReplicaSet while paused
    progressing = w.condition("Progressing")
    assert (progressing["status"], progressing["reason"]) == ("Unknown", "DeploymentPaused")
    w.edit(lambda d: d["spec"].update(paused=False))
    w.run_until(w.complete)
    assert sorted(w.replicasets()) == [1, 2, 3, 4]
    assert all(_image(p).endswith(":v1.5.1") for p in w.pods())


def test_a_paused_deployment_still_scales() -> None:
    w = World()
    w.edit(lambda d: d["spec"].update(paused=True))
    w.edit(lambda d: d["spec"].update(replicas=5))
    w.run_until(lambda: sum(1 for p in w.pods() if _ready(p)) == 5)
    assert sorted(w.replicasets()) == [1, 2, 3]


def test_scaling_keeps_the_revision() -> None:
    w = World()
    w.edit(lambda d: d["spec"].update(replicas=5))
    w.run_until(lambda: w.deployment()["status"].get("availableReplicas") == 5)
    assert sorted(w.replicasets()) == [1, 2, 3]
    assert w.replicasets()[3]["spec"]["replicas"] == 5
    annotations = w.replicasets()[3]["metadata"]["annotations"]
    assert annotations["deployment.kubernetes.io/desired-replicas"] == "5"
    assert w.deployment()["metadata"]["annotations"][REVISION] == "3"
    w.edit(lambda d: d["spec"].update(replicas=1))
    w.run_until(lambda: len(w.pods()) == 1 and w.complete())
    w.edit(lambda d: d["spec"].update(replicas=0))
    w.run_until(lambda: not w.pods())
    assert w.deployment()["status"].get("replicas", 0) == 0
    assert [e for e in w.events("ScalingReplicaSet") if "from 1 to 0" in e["message"]]


def test_scaling_during_a_rollout_is_proportional() -> None:
    w = World(Timing(pod_ready=30))  # slow enough to scale mid-rollout
    w.set_image("v1.5.1")
    w.run_until(lambda: len(w.replicasets()) == 4 and w.replicasets()[4]["spec"]["replicas"] > 0)
    w.edit(lambda d: d["spec"].update(replicas=8))
    w.observed()
    sizes = {n: rs["spec"]["replicas"] for n, rs in w.replicasets().items()}
    assert sizes[3] > 3 and sizes[4] >= 1
    assert sizes[3] + sizes[4] == 8 + 2  # maxSurge 25% of 8
    w.run_until(w.complete, limit=300, step=0.5)
    assert len(w.pods()) == 8


def test_recreate_stops_the_old_pods_first() -> None:
    w = World()
    w.edit(lambda d: d["spec"].update(strategy={"type": "Recreate"}))
    w.set_image("v1.5.1")

    def check() -> None:
        images = {_image(p) for p in w.pods()}
        assert len(images) <= 1  # never old and new together
    w.run_until(w.complete, each=check)
    assert all(_image(p).endswith(":v1.5.1") for p in w.pods())


def test_a_deployment_created_from_scratch() -> None:
    w = World(seeded=False)
    w.cluster.create(DEPLOYMENTS, {
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}})
    w.run_until(lambda: w.complete("web"))
    assert sorted(w.replicasets("web")) == [1]
    assert w.deployment("web")["metadata"]["annotations"][REVISION] == "1"
    assert w.condition("Progressing", "web")["reason"] == "NewReplicaSetAvailable"
    assert len(w.pods("web")) == 2


def test_pods_removed_behind_a_replicasets_back_are_replaced_after_a_while() -> None:
    w = World()
    for pod in w.pods():
        w.cluster.delete(PODS, "prod", pod["metadata"]["name"])
    w.tick(1)
    assert w.pods() == []  # not at once: a client sees its own delete first
    w.run_until(lambda: sum(1 for p in w.pods() if _ready(p)) == 3, limit=10)
    assert [e for e in w.events("SuccessfulCreate")]


def test_a_settled_status_edited_by_hand_is_left_alone() -> None:
    w = World()
    w.tick()
    deployment = w.deployment()
    deployment["status"]["availableReplicas"] = 1
    w.cluster.update(DEPLOYMENTS, deployment)
    w.tick(5)
    assert w.deployment()["status"]["availableReplicas"] == 1
    assert all(_container(p)["restartCount"] == 0 for p in w.pods())


def test_the_speed_scales_every_duration_and_the_deadline() -> None:
    w = World(Timing.fast(20))
    w.set_image("v1.5.1")
    assert w.run_until(w.complete) < 1
    w.set_image("v1.5.2-broken")
    assert 3 <= w.run_until(lambda: w.condition("Progressing")["status"] == "False") < 3.5


def test_timing_knobs() -> None:
    assert Timing.from_env({}) == Timing()
    assert Timing.from_env({SPEED_ENV: "4"}).real(60) == timedelta(seconds=15)
    with pytest.raises(ValueError, match=SPEED_ENV):
        Timing.from_env({SPEED_ENV: "fast"})
    with pytest.raises(ValueError, match="positive"):
        Timing(speed=0)
    w = World()
    with pytest.raises(RuntimeError):
        install(w.cluster)
    assert isinstance(w.controllers, Controllers)


@pytest.mark.parametrize(
    ("image", "plan"),
    [("registry.local/dgg/chat:v1.5.0", "ok"), ("registry.local/dgg/chat:v1.5.0-broken", "broken"),
     ("registry.local:5000/chat:v2-missing", "missing"), ("chat-broken", "ok"),
     ("chat:v1-broken@sha256:abc", "broken")],
)
def test_image_plan(image: str, plan: str) -> None:
    assert image_plan(image) == plan


def test_template_equality_ignores_the_hash_label_and_nulls() -> None:
    template = {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "a"}]}}
    same = {"metadata": {"labels": {"app": "a", TEMPLATE_HASH: "x"}, "creationTimestamp": None},
            "spec": {"containers": [{"name": "a", "resources": {}}], "securityContext": {}}}
    other = {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "a"}]}}
    assert template_key(template) == template_key(same) != template_key(other)
