"""KubernetesPlatform.wait_for_change: a watch on the Deployment from the version ``progress`` read,
against the sandbox API with its controllers (and a stopped one)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from commands.targets.base import WatchingPlatform
from commands.targets.kubernetes import KubernetesPlatform
from config.settings import KubernetesTarget
from sandbox.cluster import DEPLOYMENTS, Cluster, Obj
from sandbox.controller import Timing, install
from sandbox.seed import seed
from sandbox.server import SandboxServer

SPEED = 20.0


def target(deployment: str = "chat-gui", namespace: str = "prod") -> KubernetesTarget:
    return KubernetesTarget(namespace=namespace, deployment=deployment)


@pytest.fixture
def live() -> Iterator[SandboxServer]:
    cluster = seed(Cluster())
    install(cluster, Timing.fast(SPEED))
    with SandboxServer(cluster=cluster, tick_interval=0.05) as server:
        yield server


@pytest.fixture
async def k8s(live: SandboxServer, tmp_path: Path) -> AsyncIterator[KubernetesPlatform]:
    platform = KubernetesPlatform(live.write_kubeconfig(tmp_path / "kubeconfig"), request_timeout=3)
    yield platform
    await platform.close()


async def _timed(k8s: KubernetesPlatform, timeout: float, t: KubernetesTarget | None = None) -> float:
    started = time.monotonic()
    await k8s.wait_for_change("chat-gui", "prod", t or target(), timeout)
    return time.monotonic() - started


def _spy(k8s: KubernetesPlatform) -> threading.Event:
    """Set when the watch's blocking part (in its worker thread) has returned or raised."""
    ended = threading.Event()
    first_change = k8s._first_change

    def spied(*args: Any) -> Any:
        ended.clear()
        try:
            return first_change(*args)
        finally:
            ended.set()

    k8s._first_change = spied  # type: ignore[method-assign]
    return ended


def _annotate(cluster: Cluster, value: str) -> None:
    def change(obj: Obj) -> Obj:
        obj["metadata"].setdefault("annotations", {})["test/poke"] = value
        return obj
    cluster.modify(DEPLOYMENTS, "prod", "chat-gui", change)


async def test_is_a_watching_platform(k8s: KubernetesPlatform) -> None:
    assert isinstance(k8s, WatchingPlatform)


async def test_returns_at_once_when_the_deployment_changes(live: SandboxServer,
                                                            k8s: KubernetesPlatform) -> None:
    await k8s.progress("chat-gui", "prod", target(), 1)  # the version to watch from
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, _annotate, live.cluster, "a")
    assert 0.25 < await _timed(k8s, 5) < 1.0
    # The change seen is remembered: the same event is not replayed without a new progress read.
    assert await _timed(k8s, 1) > 0.9


async def test_a_change_before_the_wait_is_not_missed(live: SandboxServer,
                                                      k8s: KubernetesPlatform) -> None:
    await k8s.progress("chat-gui", "prod", target(), 1)
    _annotate(live.cluster, "between the read and the watch")
    assert await _timed(k8s, 5) < 0.5


async def test_a_rollout_wakes_it_up_to_completion(live: SandboxServer, k8s: KubernetesPlatform) -> None:
    generation = await k8s.set_image("chat-gui", "prod", target(),
                                     "registry.local/dgg/chat-gui:v1.5.0", "opsbot: deploy v1.5.0")
    started, wakes = time.monotonic(), 0
    while not (progress := await k8s.progress("chat-gui", "prod", target(), generation)).done:
        assert time.monotonic() - started < 15
        waited = await _timed(k8s, 5)
        wakes += waited < 4
    assert progress.state == "complete"
    assert wakes >= 3  # woken by the controller's changes, never waiting out the 5 s


async def test_returns_at_the_timeout_when_nothing_changes(k8s: KubernetesPlatform) -> None:
    steady = target("auth")
    await k8s.progress("auth", "prod", steady, 1)
    ended = _spy(k8s)
    assert 0.95 < await _timed(k8s, 1.0, steady) < 1.6
    assert ended.is_set()  # the server ended the watch at timeoutSeconds


async def test_without_a_progress_read_it_just_sleeps(k8s: KubernetesPlatform) -> None:
    assert 0.45 < await _timed(k8s, 0.5) < 0.8


async def test_a_stopped_server_means_polling(live: SandboxServer, k8s: KubernetesPlatform) -> None:
    await k8s.progress("chat-gui", "prod", target(), 1)
    live.stop()
    assert 0.45 < await _timed(k8s, 0.5) < 1.0  # no error, no hang: the poll interval


async def test_a_server_stopping_mid_watch_ends_it(live: SandboxServer, k8s: KubernetesPlatform) -> None:
    await k8s.progress("chat-gui", "prod", target(), 1)
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(_timed(k8s, 2))
    await asyncio.sleep(0.3)
    await loop.run_in_executor(None, live.stop)
    assert await asyncio.wait_for(waiting, 4) < 2.6


async def test_too_old_a_version_is_forgotten(live: SandboxServer, k8s: KubernetesPlatform) -> None:
    cluster = live.cluster
    with cluster._lock:  # keep a short history, so an old version is 410 Gone
        cluster._history = deque(cluster._history, maxlen=3)
    for i in range(4):
        _annotate(cluster, str(i))
    k8s._seen[(None, "prod", "chat-gui")] = "1"
    assert await _timed(k8s, 3) < 0.5  # back at once, to read afresh
    assert (None, "prod", "chat-gui") not in k8s._seen
    await k8s.progress("chat-gui", "prod", target(), 1)
    asyncio.get_running_loop().call_later(0.3, _annotate, cluster, "later")
    assert 0.25 < await _timed(k8s, 5) < 1.0  # and watches again from the fresh version


async def test_cancelled_wait_ends_its_thread(live: SandboxServer, k8s: KubernetesPlatform) -> None:
    steady = target("auth")
    await k8s.progress("auth", "prod", steady, 1)
    ended = _spy(k8s)
    waiting = asyncio.ensure_future(k8s.wait_for_change("auth", "prod", steady, 10))
    await asyncio.sleep(0.3)
    assert not ended.is_set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    started = time.monotonic()
    assert await asyncio.to_thread(ended.wait, 3)
    assert time.monotonic() - started < 1  # its socket was shut down under it, not left for 10 s
