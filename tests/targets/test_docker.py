"""DockerPlatform against a real dockerd (tests/conftest_docker.py) with images made by docker import.

Every check of what runs goes through the Docker API (the SDK's low-level client), never through
the adapter, so the tests see what ``docker ps``/``docker inspect`` would show.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from commands.audit import AuditLog
from commands.catalog import Catalog
from commands.db import Database
from commands.deploy import Actor, Deployer
from commands.logs import LogCollector, LogQuery, collect, merge, parse_log_args
from commands.models import RolloutProgress
from commands.redact import Redactor
from commands.targets.base import NotFound, PlatformError, Unreachable
from commands.targets.docker import DockerPlatform, image_version, parse_time
from config.settings import DockerTarget, load_settings
from tests.conftest_docker import DockerHost

pytestmark = pytest.mark.integration

HEALTH_WAIT = 1.0
TRAP = 'trap "exit 0" TERM;'  # PID 1 ignores SIGTERM without a handler: stops would take 10 s
CUSTOM = f'{TRAP} echo "custom $VERSION"; while true; do sleep 1; done'


def target(name: str, **kw: object) -> DockerTarget:
    kw.setdefault("health_wait_seconds", HEALTH_WAIT)
    return DockerTarget(type="docker", container=name, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def platform(dockerd: DockerHost) -> AsyncIterator[DockerPlatform]:
    p = DockerPlatform(dockerd.url)
    yield p
    await p.close()


async def watch(platform: DockerPlatform, t: DockerTarget, generation: int,
                timeout: float = 60) -> list[RolloutProgress]:
    """Poll progress until done, as the core does; every look, in order."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        p = await platform.progress("svc", "dev", t, generation)
        seen.append(p)
        if p.done:
            return seen
        assert time.monotonic() < deadline, f"not done after {timeout} s: {p}"
        await asyncio.sleep(0.2)


def running(dockerd: DockerHost, name: str) -> dict:
    c = dockerd.api.inspect_container(name)
    assert c["State"]["Running"], c["State"]
    return c


def env_of(container: dict) -> dict[str, str]:
    return dict(e.split("=", 1) for e in container["Config"]["Env"])


# --------------------------------------------------------------------------- status


async def test_status_of_a_container_started_by_hand(dockerd, platform, container_name):
    dockerd.run(container_name, dockerd.image("chat", "v1"), restart="unless-stopped")
    state = await platform.get_state("chat", "dev", target(container_name))
    assert state.error is None
    assert (state.platform, state.image, state.version, state.revision) == ("docker", "demo/chat:v1", "v1", 1)
    assert (state.desired, state.updated, state.ready, state.available) == (1, 1, 1, 1)
    assert state.rollout == "complete" and state.healthy
    assert state.rollout_message.startswith("up ")
    (pod,) = state.pods
    assert (pod.name, pod.phase, pod.ready, pod.restarts, pod.reason, pod.version) == (
        container_name, "Running", True, 0, None, "v1")
    assert pod.started_at is not None
    assert dockerd.url in state.where and container_name in state.where


async def test_status_of_a_crashed_and_of_a_missing_container(dockerd, platform, container_name):
    dockerd.run(container_name, dockerd.image("chat", "v0-broken"))
    await asyncio.sleep(0.5)
    state = await platform.get_state("chat", "dev", target(container_name))
    assert state.error is None and state.rollout == "failed" and not state.healthy
    assert state.rollout_message.startswith("exited with code 3")
    assert state.pods[0].phase == "Failed" and state.pods[0].reason == "Exited"
    missing = await platform.get_state("chat", "dev", target("nosuchcontainer"))
    assert missing.error == "no container nosuchcontainer"


async def test_status_shows_health_from_the_image_healthcheck(dockerd, platform, container_name):
    image = dockerd.image("auth", "v1-hc", healthcheck=["/bin/busybox", "test", "-f", "/tmp/ready"],
                         script=f"{TRAP} sleep 1; touch /tmp/ready; while true; do sleep 1; done")
    dockerd.run(container_name, image)
    state = await platform.get_state("auth", "dev", target(container_name))
    assert state.rollout == "progressing" and state.ready == 0
    assert state.pods[0].reason == "HealthStarting"
    for _ in range(50):
        await asyncio.sleep(0.2)
        state = await platform.get_state("auth", "dev", target(container_name))
        if state.ready:
            break
    assert state.rollout == "complete" and state.rollout_message.endswith(", healthy")


# --------------------------------------------------------------------------- deploy


async def test_deploy_keeps_what_the_container_set_and_takes_the_rest_from_the_new_image(
        dockerd, platform, container_name, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    first = dockerd.run(container_name, dockerd.image("chat", "v1"), env={"EXTRA": "yes"},
                        labels={"team": "chat"}, restart="unless-stopped", binds=[f"{data}:/data"])
    dockerd.image("chat", "v2")
    t = target(container_name)
    started = time.monotonic()
    generation = await platform.set_image("chat", "dev", t, "demo/chat:v2", "opsbot: deploy chat v2 by mod")
    looks = await watch(platform, t, generation)
    took = time.monotonic() - started
    assert generation == 2
    assert [p.state for p in looks][-1] == "complete", looks[-1]
    assert looks[0].state == "progressing"
    # No registry here: the message says the host's own copy was used, and why.
    assert "demo/chat:v2 is the host's own copy (not pulled: " in looks[0].message
    assert took < HEALTH_WAIT + 10

    new = running(dockerd, container_name)
    assert new["Id"] != first and new["Config"]["Image"] == "demo/chat:v2"
    env = env_of(new)
    assert env["VERSION"] == "v2" and env["EXTRA"] == "yes"  # the image's ENV, the container's own
    labels = new["Config"]["Labels"]
    assert labels["team"] == "chat" and labels["org.opencontainers.image.version"] == "v2"
    assert labels["opsbot.revision"] == "2" and labels["opsbot.image"] == "demo/chat:v2"
    assert labels["opsbot.change-cause"] == "opsbot: deploy chat v2 by mod"
    assert new["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert new["HostConfig"]["Binds"] == [f"{data}:/data"]
    assert new["HostConfig"]["NetworkMode"] == "none"
    assert new["Config"]["Cmd"] == dockerd.api.inspect_image("demo/chat:v2")["Config"]["Cmd"]

    old = dockerd.api.inspect_container(f"{container_name}--rev1")
    assert old["Id"] == first and not old["State"]["Running"]
    assert old["HostConfig"]["RestartPolicy"]["Name"] == "no"  # a daemon restart cannot revive it

    history = await platform.history("chat", "dev", t)
    assert [(r.revision, r.version, r.current, r.replicas) for r in history] == [
        (1, "v1", False, 0), (2, "v2", True, 1)]
    assert history[1].change_cause == "opsbot: deploy chat v2 by mod"
    state = await platform.get_state("chat", "dev", t)
    assert (state.version, state.revision, state.rollout) == ("v2", 2, "complete")


async def test_a_command_given_at_run_time_is_kept(dockerd, platform, container_name):
    dockerd.run(container_name, dockerd.image("modbot", "v1"),
                command=["/bin/busybox", "sh", "-c", CUSTOM])
    dockerd.image("modbot", "v2")
    t = target(container_name)
    generation = await platform.set_image("modbot", "dev", t, "demo/modbot:v2", "deploy")
    assert (await watch(platform, t, generation))[-1].state == "complete"
    new = running(dockerd, container_name)
    assert new["Config"]["Cmd"][-1] == CUSTOM
    assert b"custom v2" in dockerd.api.logs(container_name)


async def test_host_network_port_passes_from_the_old_container_to_the_new(dockerd, platform, container_name):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = ["/bin/busybox", "sh", "-c",
             (f'{TRAP} mkdir -p /tmp/w && echo "$VERSION" > /tmp/w/index.html && '
              f'httpd -f -p 127.0.0.1:{port} -h /tmp/w & wait')]
    dockerd.run(container_name, dockerd.image("chat-gui", "v1"), command=serve, network="host")
    dockerd.image("chat-gui", "v2")

    def get() -> str:
        for _ in range(50):
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode().strip()
            except OSError:
                time.sleep(0.1)
        raise AssertionError("nothing answers on the port")

    assert await asyncio.to_thread(get) == "v1"
    t = target(container_name)
    generation = await platform.set_image("chat-gui", "dev", t, "demo/chat-gui:v2", "deploy")
    assert (await watch(platform, t, generation))[-1].state == "complete"
    assert await asyncio.to_thread(get) == "v2"
    assert dockerd.api.inspect_container(container_name)["HostConfig"]["NetworkMode"] == "host"


async def test_an_image_that_is_nowhere_fails_before_anything_changes(dockerd, platform, container_name):
    first = dockerd.run(container_name, dockerd.image("chat", "v1"))
    t = target(container_name)
    with pytest.raises(PlatformError, match=r"image demo/chat:v404 could not be pulled \(.+\) and is not on Docker"):
        await platform.set_image("chat", "dev", t, "demo/chat:v404", "deploy")
    assert running(dockerd, container_name)["Id"] == first
    assert list(dockerd.containers(container_name)) == [container_name]


async def test_deploy_to_a_missing_container_says_so(dockerd, platform):
    with pytest.raises(NotFound, match="no container ghost-dev on Docker at unix://"):
        await platform.set_image("chat", "dev", target("ghost-dev"), "demo/chat:v1", "deploy")


# --------------------------------------------------------------------------- failures and restore


def deployer(tmp_path: Path, name: str, platform: DockerPlatform, **env: object) -> tuple[Deployer, AuditLog]:
    settings = load_settings(
        None, data_dir=tmp_path,
        services={"chat": {"repository": "demo/chat",
                           "envs": {"dev": {"type": "docker", "container": name,
                                            "health_wait_seconds": HEALTH_WAIT}}}},
        environments={"dev": {"timeout_seconds": 60, **env}})
    db = Database(f"sqlite:///{tmp_path / 'opsbot.db'}")
    db.create_all()
    audit = AuditLog(db)
    return Deployer(Catalog(settings), {"docker": platform}, audit, poll_interval=0.2), audit


async def test_failed_deploy_is_restored_by_the_deployer(dockerd, platform, container_name, tmp_path):
    first = dockerd.run(container_name, dockerd.image("chat", "v1"), restart="always")
    dockerd.image("chat", "v3-broken")
    d, audit = deployer(tmp_path, container_name, platform)
    plan = await d.plan_deploy("chat", "dev", "v3-broken")
    assert (plan.from_version, plan.image) == ("v1", "demo/chat:v3-broken")
    phases: list[tuple[str, str]] = []

    async def on_progress(phase, p, elapsed):
        phases.append((phase, p.state))

    result = await d.execute(plan, Actor(1, "mod", "ops"), on_progress)
    assert result.outcome == "rolled_back", result
    assert result.rolled_back_to == "v1"
    assert result.reason.startswith(("Restarting: ", "Exited: ")), result.reason
    # Caught exited or restarting: the exit code; caught running again between two crashes (a
    # loaded machine): Docker has reset the code to 0 and the restart count says it.
    assert "exited with code 3" in result.reason or (
        "restarted " in result.reason and "exit code 0" not in result.reason), result.reason
    assert "fatal: cannot read /etc/app.conf" in result.reason  # the last log lines say why
    assert ("rollout", "failed") in phases and phases[-1] == ("rollback", "complete")

    # The very container that ran before runs again, under the service's name, as it was.
    back = running(dockerd, container_name)
    assert back["Id"] == first and back["Config"]["Image"] == "demo/chat:v1"
    assert back["HostConfig"]["RestartPolicy"]["Name"] == "always"
    failed = dockerd.api.inspect_container(f"{container_name}--rev2")
    assert failed["Config"]["Image"] == "demo/chat:v3-broken" and not failed["State"]["Running"]
    # As `kubectl rollout undo`: revision 1 came back as revision 3.
    history = await d.history("chat", "dev")
    assert [(r.revision, r.version, r.current) for r in history] == [(2, "v3-broken", False), (3, "v1", True)]
    (record,) = await audit.query(action="deploy")
    assert record.result == "rolled_back"


async def test_a_container_that_cannot_start_is_a_failed_revision_too(dockerd, platform, container_name):
    first = dockerd.run(container_name, dockerd.image("auth", "v1"))
    # An image whose command does not exist: the daemon refuses to start it.
    image = dockerd.image("auth", "v2-missing", cmd=["/bin/nope"])
    t = target(container_name)
    generation = await platform.set_image("auth", "dev", t, image, "deploy")
    last = (await watch(platform, t, generation))[-1]
    assert (last.state, last.reason) == ("failed", "StartError"), last
    assert "could not start" in last.message and "/bin/nope" in last.message
    assert last.failing_pods == [container_name]
    info, generation = await platform.rollback("auth", "dev", t, None, "undo")
    assert (info.revision, info.version) == (1, "v1")
    assert (await watch(platform, t, generation))[-1].state == "complete"
    assert running(dockerd, container_name)["Id"] == first


async def test_unhealthy_is_a_failure(dockerd, platform, container_name):
    dockerd.run(container_name, dockerd.image("strims", "v1"))
    image = dockerd.image("strims", "v2-sick", healthcheck=["/bin/busybox", "false"],
                          script=f'{TRAP} echo "strims v2 up"; while true; do sleep 1; done')
    t = target(container_name)
    generation = await platform.set_image("strims", "dev", t, image, "deploy")
    looks = await watch(platform, t, generation)
    assert "waiting for the image's health check (starting)" in looks[0].message
    assert (looks[-1].state, looks[-1].reason) == ("failed", "Unhealthy"), looks[-1]
    assert "health check failed 2 time(s)" in looks[-1].message
    assert "strims v2 up" in looks[-1].message


async def test_healthy_by_the_image_healthcheck(dockerd, platform, container_name):
    dockerd.run(container_name, dockerd.image("strims", "v1"))
    image = dockerd.image("strims", "v2-hc", healthcheck=["/bin/busybox", "test", "-f", "/tmp/ready"],
                          script=f"{TRAP} sleep 1; touch /tmp/ready; while true; do sleep 1; done")
    t = target(container_name, health_wait_seconds=600)  # the healthcheck decides, not the wait
    generation = await platform.set_image("strims", "dev", t, image, "deploy")
    looks = await watch(platform, t, generation, timeout=30)
    assert looks[-1].state == "complete" and looks[-1].ready == 1
    assert any("health check (starting)" in (p.message or "") for p in looks[:-1])


# --------------------------------------------------------------------------- rollback


async def test_rollback_to_a_chosen_revision(dockerd, platform, container_name):
    first = dockerd.run(container_name, dockerd.image("chat", "v1"))
    t = target(container_name)
    for version in ("v2", "v3"):
        dockerd.image("chat", version)
        generation = await platform.set_image("chat", "dev", t, f"demo/chat:{version}", f"deploy {version}")
        assert (await watch(platform, t, generation))[-1].state == "complete"
    history = await platform.history("chat", "dev", t)
    assert [(r.revision, r.version, r.current) for r in history] == [
        (1, "v1", False), (2, "v2", False), (3, "v3", True)]

    with pytest.raises(NotFound, match=r"has no revision 7; valid: 1 \(v1\), 2 \(v2\)"):
        await platform.rollback("chat", "dev", t, 7, "undo")
    with pytest.raises(PlatformError, match=r"revision 3 \(v3\) is what .* runs now"):
        await platform.rollback("chat", "dev", t, 3, "undo")

    info, generation = await platform.rollback("chat", "dev", t, 1, "opsbot: rollback chat to revision 1")
    assert (info.revision, info.version, generation) == (1, "v1", 4)
    assert (await watch(platform, t, generation))[-1].state == "complete"
    assert running(dockerd, container_name)["Id"] == first  # the kept container, started again
    history = await platform.history("chat", "dev", t)
    assert [(r.revision, r.version, r.current) for r in history] == [
        (2, "v2", False), (3, "v3", False), (4, "v1", True)]

    # The default goes back to the revision before the running one, as kubectl does.
    info, generation = await platform.rollback("chat", "dev", t, None, "undo")
    assert (info.revision, info.version, generation) == (3, "v3", 5)
    assert (await watch(platform, t, generation))[-1].state == "complete"
    assert running(dockerd, container_name)["Config"]["Image"] == "demo/chat:v3"
    assert [(r.revision, r.version, r.current) for r in await platform.history("chat", "dev", t)] == [
        (2, "v2", False), (4, "v1", False), (5, "v3", True)]
    # A deploy after rollbacks goes on numbering from the top.
    generation = await platform.set_image("chat", "dev", t, "demo/chat:v2", "deploy v2 again")
    assert generation == 6


async def test_a_pruned_revision_is_recreated_from_its_record(dockerd, platform, container_name):
    first = dockerd.run(container_name, dockerd.image("auth", "v1"), env={"EXTRA": "kept"})
    dockerd.image("auth", "v2")
    t = target(container_name, keep_previous=False)
    generation = await platform.set_image("auth", "dev", t, "demo/auth:v2", "deploy v2")
    assert (await watch(platform, t, generation))[-1].state == "complete"
    assert list(dockerd.containers(container_name)) == [container_name]  # the old one was removed
    history = await platform.history("auth", "dev", t)
    assert [(r.revision, r.version, r.current) for r in history] == [(1, "v1", False), (2, "v2", True)]

    info, generation = await platform.rollback("auth", "dev", t, None, "undo")
    assert (info.revision, info.version, generation) == (1, "v1", 3)
    assert (await watch(platform, t, generation))[-1].state == "complete"
    back = running(dockerd, container_name)
    assert back["Id"] != first and back["Config"]["Image"] == "demo/auth:v1"
    assert env_of(back)["EXTRA"] == "kept" and env_of(back)["VERSION"] == "v1"


# --------------------------------------------------------------------------- logs


async def read_logs(platform: DockerPlatform, t: DockerTarget, options: list[str]):
    query = parse_log_args(options)
    sources = await platform.log_sources("chat", "dev", t, query)
    collector = LogCollector(Redactor(), grep=query.grep, tail=query.tail, since=query.since,
                             sources=len(sources), inline_limit=100_000)
    return sources, await collect(merge([s for _, s in sources]), collector)


async def test_logs_tail_grep_since_and_previous(dockerd, platform, container_name):
    dockerd.run(container_name, dockerd.image("chat", "v1"))
    t = target(container_name)
    await asyncio.sleep(3)  # about 6 lines

    sources, result = await read_logs(platform, t, ["--tail", "3"])
    assert [name for name, _ in sources] == [container_name]
    lines = result.inline.splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{container_name} | ") for line in lines)
    assert all("chat v1 handled request" in line for line in lines)
    assert all("token=[REDACTED]" in line and "s3cr3t" not in line for line in lines)

    # Timestamps come from Docker and are in order.
    query_sources = await platform.log_sources("chat", "dev", t, LogQuery(tail=5))
    stamped = [line async for line in query_sources[0][1]]
    assert len(stamped) == 5 and [x[0] for x in stamped] == sorted(x[0] for x in stamped)
    assert stamped[0][0].year >= 2024

    _, result = await read_logs(platform, t, ["--grep", "starting", "--tail", "1000"])
    assert result.matched == 1 and "chat v1 starting" in result.inline

    _, recent = await read_logs(platform, t, ["--since", "1s"])
    _, everything = await read_logs(platform, t, ["--since", "1h"])
    assert 0 < recent.total_seen < everything.total_seen

    dockerd.image("chat", "v2")
    generation = await platform.set_image("chat", "dev", t, "demo/chat:v2", "deploy")
    await watch(platform, t, generation)
    _, previous = await read_logs(platform, t, ["--previous", "--tail", "1000"])
    assert "chat v1 starting" in previous.inline and "v2" not in previous.inline
    _, by_name = await read_logs(platform, t, ["--pod", f"{container_name}--rev1", "--tail", "1"])
    assert "chat v1 handled" in by_name.inline
    with pytest.raises(NotFound, match=f"containers: {container_name}, {container_name}--rev1"):
        await platform.log_sources("chat", "dev", t, parse_log_args(["--pod", "other"]))


async def test_logs_of_a_container_that_exited_at_once(dockerd, platform, container_name):
    dockerd.run(container_name, dockerd.image("chat", "v3-broken"))
    await asyncio.sleep(0.5)
    _, result = await read_logs(platform, target(container_name), [])
    assert "fatal: cannot read /etc/app.conf" in result.inline


# --------------------------------------------------------------------------- the host is down


@pytest.mark.parametrize("host, problem", [
    ("unix:///tmp/opsbot-no-such-dir/docker.sock", "no such socket (is dockerd running?)"),
    ("tcp://127.0.0.1:{port}", "connection refused (is dockerd running?)"),
])
async def test_a_docker_host_that_is_down_gives_a_clear_message_quickly(host, problem):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    host = host.format(port=port)
    platform = DockerPlatform(host)
    t = target("chat-dev")
    message = f"cannot reach Docker at {host}: {problem}"
    started = time.monotonic()
    state = await platform.get_state("chat", "dev", t)
    assert state.error == message
    calls = [
        platform.set_image("chat", "dev", t, "demo/chat:v2", "deploy"),
        platform.progress("chat", "dev", t, 2),
        platform.history("chat", "dev", t),
        platform.rollback("chat", "dev", t, None, "undo"),
        platform.log_sources("chat", "dev", t, parse_log_args([])),
    ]
    for call in calls:
        with pytest.raises(Unreachable) as err:
            await call
        assert str(err.value) == message
    assert time.monotonic() - started < 5
    await platform.close()


async def test_the_default_host_comes_from_the_settings_then_the_environment(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.9:2375")
    assert DockerPlatform("unix:///a.sock").host(target("chat-dev")) == "unix:///a.sock"
    assert DockerPlatform(None).host(target("chat-dev")) == "tcp://10.0.0.9:2375"
    assert DockerPlatform("unix:///a.sock").host(target("chat-dev", host="tcp://h:1")) == "tcp://h:1"
    monkeypatch.delenv("DOCKER_HOST")
    assert DockerPlatform(None).host(target("chat-dev")) == "unix:///var/run/docker.sock"


def test_small_helpers():
    assert image_version("demo/chat:v1.2") == "v1.2"
    assert image_version("registry.local:5000/demo/chat") == "latest"
    assert image_version("sha256:0123456789abcdef0123") == "0123456789ab"
    assert parse_time("0001-01-01T00:00:00Z") is None
    t = parse_time("2026-11-30T03:06:05.708863339Z")
    assert t is not None and (t.microsecond, t.utcoffset()) == (708863, timedelta(0))


# --------------------------------------------------------------------------- configuration

EXAMPLE = Path(__file__).parents[2] / "config" / "examples" / "docker-dev.yaml"


def test_the_docker_example_config_checks_out(monkeypatch):
    from config.check import check

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    result = check(EXAMPLE)
    assert result.ok and result.settings is not None
    assert [str(p) for p in result.problems] == [
        ("warning: services.chat.envs.dev (line 71): no Docker host is given for this target (and 4 more "
        "docker targets): it uses unix:///var/run/docker.sock; set docker_host (--docker-host, "
        "OPSBOT_DOCKER_HOST) or the target's host to be sure"),
        ("warning: guild_id: not set: the bot is bound to no guild, so slash commands sync globally and the "
         "`everyone` grants reach any server it is added to; set guild_id to your server's ID (and turn off "
         "Public Bot in the Developer Portal)")]
    targets = {svc: s.envs["dev"] for svc, s in result.settings.services.items()}
    assert {svc: t.container for svc, t in targets.items()} == {
        s: f"{s}-dev" for s in ("chat", "chat-gui", "modbot", "auth", "strims")}
    assert all(isinstance(t, DockerTarget) for t in targets.values())
    assert {s.repository for s in result.settings.services.values()} == {
        f"demo/{s}" for s in ("chat", "chat-gui", "modbot", "auth", "strims")}
    assert {r.name for r in result.settings.permissions.roles} == {"Admin", "Mod", "On-call", "Member"}
    flagged = check(EXAMPLE, docker_host="unix:///run/docker.sock")
    assert [p.path for p in flagged.problems] == ["guild_id"]  # an example of the sandbox's guild: none set
    assert "docker container chat-dev on unix:///run/docker.sock" in flagged.render()


def test_check_config_on_docker_targets(tmp_path: Path, monkeypatch):
    from config.check import check

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    path = tmp_path / "opsbot.yaml"
    path.write_text("""\
docker_host: /var/run/docker.sock
services:
  chat:
    repository: demo/chat
    envs:
      dev: {type: docker, container: chat-dev, health_wait: 5}
      staging: {type: docker, container: x, host: "foo"}
      prod: {type: docker, container: chat-dev}
  auth:
    repository: demo/auth
    envs:
      dev: {type: docker, container: auth-dev--rev2}
      prod: {namespace: prod, deploymnt: auth}
""")
    problems = [str(p) for p in check(path).problems if p.path.split(".")[0] not in ("permissions", "guild_id")]
    assert problems == [
        ("error: docker_host (line 1): expected a Docker host URL such as unix:///var/run/docker.sock or "
        "tcp://10.0.0.5:2376 (schemes: unix, tcp, http, https, ssh, npipe)"),
        ("error: services.chat.envs.dev.health_wait (line 6): unknown key 'health_wait' "
        "(did you mean 'health_wait_seconds'?)"),
        ("error: services.chat.envs.staging.host (line 7): expected a Docker host URL such as "
        "unix:///var/run/docker.sock or tcp://10.0.0.5:2376 (schemes: unix, tcp, http, https, ssh, npipe)"),
        ("error: services.chat.envs.staging.container (line 7): a container name has at least 2 characters: "
        "letters, digits, '_', '.' and '-', starting with a letter or digit"),
        ("error: services.auth.envs.dev.container (line 12): names ending in --rev<N> are the ones opsbot "
        "gives replaced containers"),
        "error: services.auth.envs.prod.deployment (line 13): field required",
        "error: services.auth.envs.prod.deploymnt (line 13): unknown key 'deploymnt' (did you mean 'deployment'?)",
        ("warning: services.chat.envs.prod (line 8): same target as services.chat.envs.dev: two names for one "
        "container"),
    ]
