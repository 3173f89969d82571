"""Pod logs: deterministic plausible lines per service, the kubelet's choices and errors, the
query options, large logs streamed, and ``follow`` — as functions and over HTTP."""

from __future__ import annotations

import http.client
import json
import re
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from sandbox.cluster import DEPLOYMENTS, PODS, ApiError, Cluster, Obj
from sandbox.controller import Timing
from sandbox.logs import (
    LOG_RATE_ANNOTATION,
    LogOptions,
    Run,
    log_lines,
    render,
    select_run,
)
from sandbox.seed import seed
from sandbox.server import SandboxServer

NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return seed(Cluster(clock=lambda: NOW))


def _pod(cluster: Cluster, app: str, ns: str = "prod") -> Obj:
    return cluster.list(PODS, ns, f"app={app}")[0][0]


def _log(pod: Obj, now: datetime = NOW, **options: Any) -> list[str]:
    return b"".join(log_lines(pod, LogOptions(**options), now)).decode().splitlines()


def _started(pod: Obj) -> datetime:
    started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    return datetime.fromisoformat(started)


# --------------------------------------------------------------------------- content


def test_about_a_line_a_second_deterministic_and_growing(cluster: Cluster) -> None:
    pod = _pod(cluster, "chat")
    lines = _log(pod)
    age = (NOW - _started(pod)).total_seconds()
    assert age * 0.9 <= len(lines) <= age * 1.1 + 3
    assert _log(pod) == lines  # the same every time
    later = _log(pod, NOW + timedelta(seconds=30))
    assert later[:len(lines)] == lines and 25 <= len(later) - len(lines) <= 35
    assert lines[0].startswith('level=info msg="starting chat" version=v1.4.0')
    other = _log(cluster.list(PODS, "prod", "app=chat")[0][1])
    assert other[3:10] != lines[3:10]  # each pod has its own


@pytest.mark.parametrize(
    ("app", "pattern"),
    [
        ("chat", r'msg="websocket join" user=\S+ conn=[0-9a-f]{8}'),
        ("chat", r'msg="message" user=\S+ room=destinygg'),
        ("chat-gui", (r'^::ffff:[\d.]+ - - \[\d\d/\w{3}/\d{4}:[\d:]+ \+0000\] "GET /\S* '
                      r'HTTP/1.1" \d{3}')),
        ("auth", r'header="Authorization: Bearer eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+"'),
        ("auth", r"password=\S+"),
        ("modbot", r'msg="timeout issued" target=\S+'),
        ("strims", r'msg="stream online" channel=\S+ viewers=\d+'),
        ("chat", r"^level=error "),
    ],
)
def test_each_service_says_its_own_things(cluster: Cluster, app: str, pattern: str) -> None:
    assert any(re.search(pattern, line) for line in _log(_pod(cluster, app))), pattern


def test_timestamps_are_the_kubelets_rfc3339_nano(cluster: Cluster) -> None:
    lines = _log(_pod(cluster, "auth"), timestamps=True)
    assert all(STAMP.match(line) for line in lines)
    stamps = [line.split(" ", 1)[0] for line in lines]
    assert stamps == sorted(stamps)
    assert stamps[-1] <= "2026-11-30T03:00:00.000000000Z"
    assert [line.split(" ", 1)[1] for line in lines] == _log(_pod(cluster, "auth"))


def test_tail_since_and_limit_bytes(cluster: Cluster) -> None:
    pod = _pod(cluster, "strims")
    everything = _log(pod, timestamps=True)
    assert _log(pod, timestamps=True, tail_lines=5) == everything[-5:]
    assert _log(pod, tail_lines=0) == []
    since = NOW - timedelta(seconds=20)
    recent = _log(pod, timestamps=True, since=since)
    assert 15 <= len(recent) <= 25
    assert all(line[:30] >= "2026-11-30T02:59:40.000000000Z" for line in recent)
    assert recent == [line for line in everything if line[:30] >= "2026-11-30T02:59:40"]
    assert _log(pod, timestamps=True, since=since, tail_lines=3) == everything[-3:]
    limited = b"".join(log_lines(pod, LogOptions(limit_bytes=100), NOW))
    assert len(limited) == 100 and b"\n".join(b"".join(log_lines(
        pod, LogOptions(), NOW)).split(b"\n")).startswith(limited)


def test_options_from_a_query() -> None:
    options = LogOptions.from_query({"container": "auth", "follow": "true", "previous": "1",
                                     "timestamps": "true", "tailLines": "10",
                                     "sinceSeconds": "60", "limitBytes": "500"}, NOW)
    assert options == LogOptions("auth", True, True, True, 10, NOW - timedelta(seconds=60), 500)
    since = LogOptions.from_query({"sinceTime": "2026-11-30T02:00:00Z"}, NOW).since
    assert since == datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    for bad, code in [({"tailLines": "x"}, 400), ({"tailLines": "-1"}, 422),
                      ({"sinceSeconds": "0"}, 422), ({"sinceTime": "yesterday"}, 400),
                      ({"sinceSeconds": "5", "sinceTime": "2026-11-30T02:00:00Z"}, 422)]:
        with pytest.raises(ApiError) as err:
            LogOptions.from_query(bad, NOW)
        assert err.value.code == code, bad


# --------------------------------------------------------------------------- which run


def _with_status(pod: Obj, **container: Any) -> Obj:
    pod = json.loads(json.dumps(pod))
    pod["status"]["containerStatuses"][0] |= container
    return pod


def _error(pod: Obj, **options: Any) -> str:
    with pytest.raises(ApiError) as err:
        _log(pod, **options)
    assert err.value.code == 400 and err.value.reason == "BadRequest"
    return err.value.message


def test_the_kubelets_errors(cluster: Cluster) -> None:
    pod = _pod(cluster, "auth")
    name = pod["metadata"]["name"]
    assert _error(pod, previous=True) == (
        f'previous terminated container "auth" in pod "{name}" not found')
    assert _error(pod, container="sidecar") == (
        f"container sidecar is not valid for pod {name}, choose one of: [auth]")
    creating = _with_status(pod, state={"waiting": {"reason": "ContainerCreating"}})
    assert _error(creating) == f'container "auth" in pod "{name}" is waiting to start: ' \
                               "ContainerCreating"
    pulling = _with_status(pod, state={"waiting": {"reason": "ImagePullBackOff"}})
    assert _error(pulling).endswith("is waiting to start: trying and failing to pull image")
    unscheduled = json.loads(json.dumps(pod))
    del unscheduled["spec"]["nodeName"]
    assert _log(unscheduled) == []  # no node, no log: an empty answer


def test_two_containers_need_a_name(cluster: Cluster) -> None:
    pod = json.loads(json.dumps(_pod(cluster, "auth")))
    pod["spec"]["containers"].append({"name": "proxy", "image": "envoy:1"})
    assert _error(pod).endswith("a container name must be specified for pod "
                                f"{pod['metadata']['name']}, choose one of: [auth proxy]")
    assert _log(pod, container="auth", tail_lines=1)


def test_a_crash_looping_container(cluster: Cluster) -> None:
    pod = _pod(cluster, "chat")
    cid = pod["status"]["containerStatuses"][0]["containerID"]
    crashed = {"exitCode": 1, "reason": "Error", "startedAt": "2026-11-30T02:59:00Z",
               "finishedAt": "2026-11-30T02:59:02Z", "containerID": cid + "-2"}
    looping = _with_status(pod, restartCount=2, ready=False, lastState={"terminated": crashed},
                           state={"waiting": {"reason": "CrashLoopBackOff"}})
    previous = _log(looping, previous=True)
    assert previous[0].startswith('level=info msg="starting chat"')
    assert "goroutine 1 [running]:" in previous
    assert previous[-1] == 'level=fatal msg="chat crashed during startup, exiting" exit_code=1'
    assert _log(looping) == previous  # waiting to restart: the last run's log, as the kubelet
    assert _log(looping, tail_lines=1) == previous[-1:]
    running_again = _with_status(pod, restartCount=3, lastState={"terminated": crashed},
                                 state={"running": {"startedAt": "2026-11-30T02:59:30Z"}},
                                 containerID=cid + "-3")
    assert _log(running_again, previous=True) == previous
    assert "goroutine 1 [running]:" not in _log(running_again)


# --------------------------------------------------------------------------- large logs


def test_fifty_thousand_lines_stream_in_chunks_without_piling_up(cluster: Cluster) -> None:
    pod = json.loads(json.dumps(_pod(cluster, "auth")))
    age = (NOW - _started(pod)).total_seconds()
    pod["metadata"]["annotations"] = {LOG_RATE_ANNOTATION: str(50_000 / age)}
    run = select_run(pod, LogOptions())
    assert run is not None
    first, end, regular = run.window(NOW, LogOptions())
    assert 49_990 <= end - first <= 50_010
    tracemalloc.start()
    lines = chunks = 0
    for chunk in render(run, first, end, regular, timestamps=True):
        chunks += 1
        lines += chunk.count(b"\n")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert lines == end - first and chunks > 50
    assert peak < 2_000_000  # chunks of 64 KiB, never the whole ~7 MB
    assert _log(pod, tail_lines=3) == [run.entry(i, regular)[1] for i in range(end - 3, end)]


def test_a_run_is_random_access() -> None:
    run = Run("containerd://abc", "chat", "v1", "prod", 0, None, None, 3.0)
    times = [run.time_ns(i) for i in range(5000)]
    assert times == sorted(times) and len(set(times)) == len(times)
    for i in (0, 2, 3, 100, 4999):
        assert run.count(times[i]) == i + 1 and run.count(times[i] - 1) == i
        assert run.first_at_or_after(times[i]) == i
        assert run.entry(i, 5000) == Run("containerd://abc", "chat", "v1", "prod", 0, None,
                                         None, 3.0).entry(i, 5000)


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(timing=Timing.fast()) as sandbox:
        yield sandbox


def _get(server: SandboxServer, path: str) -> bytes:
    with urllib.request.urlopen(server.url + path, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read()


def _status(server: SandboxServer, path: str) -> tuple[int, Obj]:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + path, timeout=10)
    return err.value.code, json.loads(err.value.read())


def _pod_path(server: SandboxServer, app: str, ns: str = "prod") -> str:
    pod = server.cluster.list(PODS, ns, f"app={app}")[0][0]
    return f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}/log"


def test_log_over_http(server: SandboxServer) -> None:
    path = _pod_path(server, "auth")
    lines = _get(server, path + "?timestamps=true&tailLines=5").decode().splitlines()
    assert len(lines) == 5 and all(STAMP.match(line) for line in lines)
    assert len(_get(server, path + "?sinceSeconds=10").splitlines()) in range(7, 14)
    assert len(_get(server, path + "?limitBytes=10")) == 10
    name = path.split("/")[-2]
    code, body = _status(server, path + "?previous=true")
    assert (code, body["kind"], body["reason"]) == (400, "Status", "BadRequest")
    assert body["message"] == f'previous terminated container "auth" in pod "{name}" not found'
    code, body = _status(server, path + "?container=nope")
    assert (code, body["message"]) == (
        400, f"container nope is not valid for pod {name}, choose one of: [auth]")
    code, body = _status(server, "/api/v1/namespaces/prod/pods/nope/log")
    assert (code, body["reason"]) == (404, "NotFound")
    code, body = _status(server, path + "?tailLines=-3")
    assert (code, body["reason"]) == (422, "Invalid")


def test_follow_streams_new_lines_until_the_client_goes(server: SandboxServer) -> None:
    path = _pod_path(server, "chat")
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    connection.request("GET", path + "?follow=true&tailLines=1&timestamps=true")
    response = connection.getresponse()
    assert response.status == 200
    stamps = [response.readline().split(b" ")[0] for _ in range(3)]  # the tail, then new ones
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    connection.close()
    started = time.monotonic()
    while time.monotonic() - started < 5:  # the server stays well
        if _get(server, path + "?tailLines=1"):
            break
    assert _get(server, path + "?tailLines=1")


def test_follow_ends_when_the_container_crashes() -> None:
    with SandboxServer(timing=Timing(speed=20, crash_after=40)) as server:  # runs for 2 s
        _follow_a_crash(server)


def _follow_a_crash(server: SandboxServer) -> None:
    cluster = server.cluster
    deployment = cluster.get(DEPLOYMENTS, "dev", "modbot")
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] += "-broken"
    cluster.update(DEPLOYMENTS, deployment)

    def running_broken() -> Obj | None:
        for pod in cluster.list(PODS, "dev", "app=modbot")[0]:
            statuses = pod["status"].get("containerStatuses") or []
            if pod["spec"]["containers"][0]["image"].endswith("-broken") and statuses \
                    and "running" in statuses[0]["state"]:
                return pod
        return None

    deadline = time.monotonic() + 10
    while (pod := running_broken()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    path = f"/api/v1/namespaces/dev/pods/{pod['metadata']['name']}/log?follow=true"
    started = time.monotonic()
    text = _get(server, path).decode()  # returns: the run ended
    assert time.monotonic() - started < 5
    assert text.startswith('level=info msg="starting modbot"')
    assert text.rstrip().endswith('level=fatal msg="modbot crashed during startup, exiting" '
                                  "exit_code=1")


def test_following_a_finished_run_just_returns_it(server: SandboxServer) -> None:
    cluster = server.cluster
    pod = cluster.list(PODS, "staging", "app=chat")[0][0]
    status = pod["status"]["containerStatuses"][0]
    status |= {"restartCount": 1, "lastState": {"terminated": {
        "exitCode": 1, "reason": "Error", "startedAt": "2026-11-30T02:59:00Z",
        "finishedAt": "2026-11-30T02:59:05Z", "containerID": "containerd://gone"}}}
    cluster.update(PODS, pod)
    path = f"/api/v1/namespaces/staging/pods/{pod['metadata']['name']}/log"
    started = time.monotonic()
    followed = _get(server, path + "?previous=true&follow=true")
    assert time.monotonic() - started < 2
    assert followed == _get(server, path + "?previous=true")
    assert followed.count(b"goroutine 1 [running]:") == 1


def test_the_official_client_reads_logs(server: SandboxServer, tmp_path: Path) -> None:
    api = config.new_client_from_config(str(server.write_kubeconfig(tmp_path / "config")))
    with api:
        pod = server.cluster.list(PODS, "staging", "app=auth")[0][0]
        text = client.CoreV1Api(api).read_namespaced_pod_log(
            pod["metadata"]["name"], "staging", tail_lines=4, timestamps=True)
    lines = text.splitlines()
    assert len(lines) == 4 and all(STAMP.match(line) for line in lines)
