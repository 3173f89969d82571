"""The object store without HTTP: selectors, writes, watch fan-out, ticks, and the seed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sandbox import world
from sandbox.cluster import (
    DEPLOYMENTS,
    EVENTS,
    NAMESPACES,
    PODS,
    REPLICASETS,
    ApiError,
    Cluster,
    Obj,
    field_matcher,
    label_matcher,
)
from sandbox.seed import REVISION, TEMPLATE_HASH, seed

LABELS = {"app": "chat", "tier": "web"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=chat", True),
        ("app==chat", True),
        ("app=auth", False),
        ("app!=auth", True),
        ("release!=x", True),
        ("app in (chat, auth)", True),
        ("app in (auth)", False),
        ("app notin (auth,strims)", True),
        ("app notin (chat)", False),
        ("release notin (x)", True),
        ("tier", True),
        ("release", False),
        ("!release", True),
        ("!tier", False),
        ("app=chat,tier in (web,api),!release", True),
        ("app=chat,tier=api", False),
        ("app=", False),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    assert label_matcher(selector)({"metadata": {"labels": LABELS}}) is matches


@pytest.mark.parametrize("selector", ["=chat", "app in chat", "app in (a b)", "a==b==c", "a b"])
def test_bad_label_selectors_are_bad_requests(selector: str) -> None:
    with pytest.raises(ApiError) as err:
        label_matcher(selector)
    assert err.value.code == 400


def test_field_selectors() -> None:
    pod = {"metadata": {"name": "p", "namespace": "prod"}, "status": {"phase": "Running"}}
    assert field_matcher(PODS, "metadata.name=p,status.phase=Running")(pod)
    assert field_matcher(PODS, "metadata.name!=q")(pod)
    assert not field_matcher(PODS, "status.phase!=Running")(pod)
    with pytest.raises(ApiError, match=r"field label not supported: spec\.replicas"):
        field_matcher(DEPLOYMENTS, "spec.replicas=3")


def _cluster() -> Cluster:
    cluster = Cluster(clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    cluster.create(NAMESPACES, {"metadata": {"name": "prod"}})
    return cluster


def _deployment(name: str = "chat", replicas: int = 1) -> Obj:
    return {"metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "template": {}}}


def test_create_fills_metadata_and_bumps_resource_version() -> None:
    cluster = _cluster()
    before = int(cluster.resource_version)
    created = cluster.create(DEPLOYMENTS, _deployment(), "prod")
    meta = created["metadata"]
    assert (created["apiVersion"], created["kind"]) == ("apps/v1", "Deployment")
    assert meta["namespace"] == "prod" and meta["generation"] == 1 and meta["uid"]
    assert meta["creationTimestamp"] == "2026-01-01T00:00:00Z"
    assert int(meta["resourceVersion"]) == before + 1 == int(cluster.resource_version)


def test_write_errors_are_api_statuses() -> None:
    cluster = _cluster()
    cluster.create(DEPLOYMENTS, _deployment(), "prod")
    cases = [
        (lambda: cluster.create(DEPLOYMENTS, _deployment(), "prod"), 409, "AlreadyExists"),
        (lambda: cluster.create(DEPLOYMENTS, _deployment("Bad_Name"), "prod"), 422, "Invalid"),
        (lambda: cluster.create(DEPLOYMENTS, _deployment(), "nope"), 404, "NotFound"),
        (lambda: cluster.get(DEPLOYMENTS, "prod", "nope"), 404, "NotFound"),
        (lambda: cluster.delete(DEPLOYMENTS, "prod", "nope"), 404, "NotFound"),
    ]
    for call, code, reason in cases:
        with pytest.raises(ApiError) as err:
            call()
        status = err.value.status()
        assert (status["code"], status["reason"], status["kind"]) == (code, reason, "Status")


def test_update_checks_resource_version_and_bumps_generation_on_spec_change() -> None:
    cluster = _cluster()
    created = cluster.create(DEPLOYMENTS, _deployment(), "prod")
    created["status"] = {"replicas": 1}
    status_only = cluster.update(DEPLOYMENTS, created)
    assert status_only["metadata"]["generation"] == 1
    status_only["spec"]["replicas"] = 3
    scaled = cluster.update(DEPLOYMENTS, status_only)
    assert scaled["metadata"]["generation"] == 2
    with pytest.raises(ApiError) as err:
        cluster.update(DEPLOYMENTS, created)  # stale resourceVersion
    assert err.value.reason == "Conflict"


def test_generate_name() -> None:
    cluster = _cluster()
    pod = cluster.create(PODS, {"metadata": {"generateName": "chat-abc-"}, "spec": {}}, "prod")
    assert pod["metadata"]["name"].startswith("chat-abc-")
    assert len(pod["metadata"]["name"]) == len("chat-abc-") + 5


def test_watch_replays_then_follows_and_translates_selector_changes() -> None:
    cluster = _cluster()
    chat = cluster.create(DEPLOYMENTS, _deployment(), "prod")
    seen: list[tuple[str, str]] = []
    watch = cluster.watch(DEPLOYMENTS, "prod", lambda t, o: seen.append((t, o["metadata"]["name"])),
                          label_selector="tier=web")
    assert seen == []
    chat["metadata"]["labels"]["tier"] = "web"
    chat = cluster.update(DEPLOYMENTS, chat)  # starts matching: ADDED
    chat["spec"]["replicas"] = 2
    chat = cluster.update(DEPLOYMENTS, chat)  # MODIFIED
    chat["metadata"]["labels"]["tier"] = "api"
    cluster.update(DEPLOYMENTS, chat)  # stops matching: DELETED
    cluster.create(DEPLOYMENTS, _deployment("auth"), "prod")  # never matches
    cluster.unwatch(watch)
    cluster.delete(DEPLOYMENTS, "prod", "chat")
    assert seen == [("ADDED", "chat"), ("MODIFIED", "chat"), ("DELETED", "chat")]


def test_watch_from_a_resource_version_and_initial_state() -> None:
    cluster = _cluster()
    cluster.create(DEPLOYMENTS, _deployment("a"), "prod")
    since = cluster.resource_version
    cluster.create(DEPLOYMENTS, _deployment("b"), "prod")
    cluster.delete(DEPLOYMENTS, "prod", "a")
    resumed: list[tuple[str, str]] = []
    cluster.watch(DEPLOYMENTS, "prod", lambda t, o: resumed.append((t, o["metadata"]["name"])),
                  resource_version=since)
    assert resumed == [("ADDED", "b"), ("DELETED", "a")]
    current: list[tuple[str, str]] = []
    cluster.watch(DEPLOYMENTS, None, lambda t, o: current.append((t, o["metadata"]["name"])))
    assert current == [("ADDED", "b")]


def test_watch_from_an_expired_resource_version(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = _cluster()
    monkeypatch.setattr(cluster, "_history", type(cluster._history)(maxlen=2))
    for name in "abc":
        cluster.create(DEPLOYMENTS, _deployment(name), "prod")
    with pytest.raises(ApiError) as err:
        cluster.watch(DEPLOYMENTS, "prod", lambda t, o: None, resource_version="1")
    assert (err.value.code, err.value.reason) == (410, "Expired")


def test_tick_runs_controllers_with_the_time() -> None:
    cluster = _cluster()
    ticks: list[datetime] = []
    cluster.add_controller(lambda c, now: ticks.append(now))
    cluster.tick()
    cluster.tick(datetime(2030, 1, 1, tzinfo=UTC))
    assert ticks == [datetime(2026, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)]


def test_seed_builds_the_world() -> None:
    cluster = seed(Cluster())
    namespaces = {n["metadata"]["name"] for n in cluster.list(NAMESPACES)[0]}
    assert set(world.ENVS) <= namespaces
    for env, spec in world.ENV_SPECS.items():
        for service in world.SERVICES:
            deployment = cluster.get(DEPLOYMENTS, env, service)
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            assert container["name"] == service
            assert container["image"] == world.image(service, spec.version)
            assert deployment["metadata"]["annotations"][REVISION] == str(len(spec.history))
            assert deployment["status"]["readyReplicas"] == spec.replicas
            replicasets = cluster.list(REPLICASETS, env, f"app={service}")[0]
            by_revision = {int(rs["metadata"]["annotations"][REVISION]): rs for rs in replicasets}
            assert sorted(by_revision) == list(range(1, len(spec.history) + 1))
            newest = by_revision[len(spec.history)]
            assert newest["spec"]["replicas"] == spec.replicas
            assert all(rs["spec"]["replicas"] == 0 for n, rs in by_revision.items()
                       if n < len(spec.history))
            assert newest["metadata"]["ownerReferences"][0]["uid"] == deployment["metadata"]["uid"]
            pods = cluster.list(PODS, env, f"app={service}")[0]
            assert len(pods) == spec.replicas
            template_hash = newest["metadata"]["labels"][TEMPLATE_HASH]
            for pod in pods:
                assert pod["metadata"]["name"].startswith(f"{service}-{template_hash}-")
                assert pod["status"]["phase"] == "Running"
                assert pod["status"]["containerStatuses"][0]["ready"] is True
    assert cluster.list(EVENTS, "prod", field_selector="involvedObject.name=chat")[0]


def test_seed_is_deterministic() -> None:
    names = [sorted(p["metadata"]["name"] for p in seed(Cluster()).list(PODS)[0]) for _ in range(2)]
    assert names[0] == names[1]
