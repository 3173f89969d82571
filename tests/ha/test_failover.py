"""Two real bot processes, one sandbox cluster, one PostgreSQL, one Discord: kill the leader.

Each replica is ``opsbot run``'s code (``tests/ha/member.py``) with ``ha.enabled``: they elect a
leader on a Lease the sandbox serves over HTTP, share a PostgreSQL database (the Debian server,
started by a fixture), and take Alertmanager webhooks on their own ports. Discord is one simcord
in this process, reached over the bridge (``tests/support/simcord_bridge.py``), so the messages
the first leader posted are the ones the second one must edit.

The drill: a maintenance window is scheduled and starts; a deploy runs; an alert storm arrives at
both replicas; the leader is SIGKILLed in the middle of all three. The standby must take over
within the lease duration and then: every alert group has exactly one message, in its latest
state; the window ends exactly once; the deploy's lock is still held (no second deploy slips in).
Finally SIGTERM on the new leader: it exits cleanly and releases the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes import client, config

from sandbox.controller import Timing
from sandbox.server import SandboxServer
from tests.alerts.conftest import TOKEN, alert, free_port, payload
from tests.bot.helpers import embed_text
from tests.support.simcord_bridge import open_bridge, open_relay_env, wait_until

REPO = Path(__file__).resolve().parents[2]
LEASE = {"lease_duration_seconds": 3.0, "renew_deadline_seconds": 2.0, "retry_period_seconds": 0.5}
GROUPS_BEFORE, GROUPS_AFTER, RESOLVED = 30, 20, 10


def member_config(path: Path, kubeconfig: Path, admin_role: int) -> Path:
    services = {
        svc: {"repository": f"registry.example.com/{svc}",
              "envs": {"staging": {"type": "kubernetes", "namespace": "staging", "deployment": svc}}}
        for svc in ("chat", "chat-gui")
    }
    cfg = {
        "kubeconfig": str(kubeconfig),
        "services": services,
        "environments": {"staging": {"timeout_seconds": 120}},
        "promotion": ["staging"],
        "permissions": {"roles": [{"id": admin_role, "name": "Admin", "grants": ["*"]}]},
        "maintenance": {"min_duration": "10s"},
        "alerts": {"watchdog_minutes": 0, "send_rate_operations": 50, "send_rate_seconds": 1.0,
                   "timeline_delay_seconds": 0.5},
        "ha": {"enabled": True, "lease_namespace": "opsbot", "lease_name": "opsbot",
               "shutdown_grace_seconds": 5, **LEASE},
    }
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


class Member:
    def __init__(self, name: str, cfg: Path, bridge: str, database: str, tmp: Path, port: int | None = None) -> None:
        self.name, self.port = name, port or free_port()
        self.log_path = tmp / f"{name}.log"
        env = {**os.environ, "OPSBOT_HA__IDENTITY": name, "OPSBOT_DATABASE_URL": database,
               "OPSBOT_WEBHOOK_LISTEN": f"127.0.0.1:{self.port}", "OPSBOT_WEBHOOK_TOKEN": TOKEN,
               "OPSBOT_DISCORD_TOKEN": "bridged", "OPSBOT_DATA_DIR": str(tmp / name)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.ha.member", str(cfg), bridge], cwd=REPO, env=env,
                                     stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def readyz(session: aiohttp.ClientSession, member: Member) -> tuple[int, str]:
    try:
        async with session.get(f"{member.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status, await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0, ""


async def deliver(session: aiohttp.ClientSession, members: list[Member], body: dict[str, Any]) -> str:
    """As Alertmanager does: post to a replica; on a refused connection or 5xx, to the next one."""
    for member in members:
        try:
            async with session.post(f"{member.url}/alerts/alertmanager", json=body,
                                    headers={"Authorization": f"Bearer {TOKEN}"},
                                    timeout=aiohttp.ClientTimeout(total=10)) as r:
                if r.status == 200:
                    return member.name
        except (aiohttp.ClientError, TimeoutError):
            continue
    raise AssertionError("no replica took the webhook")


def storm_body(i: int, status: str = "firing") -> dict[str, Any]:
    return payload([alert(f"Storm{i:02d}", status=status, service="chat", env="staging")], group=f"storm-{i}")


def lease_holder(kubeconfig: Path) -> str | None:
    api = config.new_client_from_config(str(kubeconfig))
    try:
        return client.CoordinationV1Api(api).read_namespaced_lease("opsbot", "opsbot").spec.holder_identity
    except client.ApiException:
        return None
    finally:
        api.close()


class Drill:
    """The shared world of the failover tests: the sandbox, one Discord over the bridge, replicas."""

    def __init__(self, tmp: Path, database: str) -> None:
        self.tmp, self.database = tmp, database
        self.members: list[Member] = []

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[Drill]:
        self.sandbox = SandboxServer(timing=Timing(speed=0.2)).start()  # a deploy takes ~25 s: time to die in
        self.kubeconfig = self.sandbox.write_kubeconfig(self.tmp / "kubeconfig")
        try:
            async with open_relay_env() as env, open_bridge(env) as host, aiohttp.ClientSession() as http:
                self.env, self.host, self.http = env, host, http
                guild = env.create_guild("dgg ops")
                self.chans = {name: guild.create_text_channel(name) for name in ("ops", "alerts", "deploys")}
                admin_role = guild.create_role("Admin")
                self.admin = guild.add_member(env.create_user("admin"), roles=[admin_role])
                self.cfg = member_config(self.tmp / "opsbot.yaml", self.kubeconfig, admin_role.id)
                try:
                    yield self
                except BaseException:
                    self.dump()
                    raise
        finally:
            for m in self.members:
                m.stop()
            self.sandbox.stop()

    def dump(self) -> None:
        for name, ch in self.chans.items():
            print(f"----- #{name} -----")
            for m in ch.history():
                print(f"{m.author}: {embed_text(m)[:300]!r}")
        for m in self.members:
            print(f"----- {m.name} -----\n{m.log()}")

    def start(self, name: str) -> Member:
        member = Member(name, self.cfg, self.host.url, self.database, self.tmp)
        self.members.append(member)
        return member

    async def leader_and_standby(self) -> tuple[Member, Member]:
        a = self.start("member-a")
        await wait_until(lambda: self.session_of("member-a"), timeout=60, what="member-a leading")
        b = self.start("member-b")

        async def b_standby() -> bool:
            status, text = await readyz(self.http, b)
            return status == 200 and "standby" in text and "member-a" in text
        await wait_until(b_standby, timeout=60, what="member-b standing by")
        assert lease_holder(self.kubeconfig) == "member-a"
        assert [s.name for s in self.host.sessions] == ["member-a"]  # only the leader holds a session
        for member, value in ((a, "1.0"), (b, "0.0")):
            async with self.http.get(f"{member.url}/metrics") as r:
                assert f"opsbot_leader {value}" in await r.text(), member.name
        return a, b

    def session_of(self, name: str) -> bool:
        return any(s.name == name for s in self.host.sessions)

    async def say(self, text: str) -> None:
        await self.admin.send(self.chans["ops"], text)

    def ops(self) -> list[str]:
        return texts(self.chans["ops"])

    async def start_deploy(self, version: str) -> Any:
        await self.say(f"!deploy chat-gui staging {version}")
        return await wait_until(lambda: progress_message(self.chans["ops"], version), timeout=20,
                                what="the deploy's progress message")

    async def lock_survived(self, running: str) -> None:
        """A second deploy is refused: the first one's lock outlived the replica that took it."""
        before = len(self.chans["ops"].history())
        await self.say("!deploy chat-gui staging v1.5.2")

        def answer() -> str | None:
            later = [embed_text(m) for m in self.chans["ops"].history()[before + 1:] if m.author.bot]
            return next((t for t in later if "locked" in t or "→ v1.5.2" in t), None)
        reply = await wait_until(answer, timeout=20, what="the answer to a second deploy")
        assert f"deploy chat-gui {running}" in reply and "is locked by" in reply, reply

    async def deploy_finished_once(self, progress: Any, version: str) -> None:
        """The taken-over deploy ends in its own progress message, and is announced once."""
        def done() -> bool:
            return "deployed" in embed_text(message_by_id(self.chans["ops"], progress.id))
        await wait_until(done, timeout=60, what="the progress message to say deployed")
        assert any("was running when the bot restarted" in t for t in self.ops()), self.ops()
        lines = [t for t in texts(self.chans["deploys"]) if f"deployed chat-gui v1.5.0 → {version}" in t]
        assert len(lines) == 1, texts(self.chans["deploys"])


def message_by_id(channel: Any, message_id: int) -> Any:
    return next(m for m in channel.history() if m.id == message_id)


def progress_message(channel: Any, version: str) -> Any:
    for m in channel.history():
        if m.author.bot and f"→ {version}" in embed_text(m):
            return m
    return None


async def test_kill_the_leader_mid_storm_mid_window_mid_deploy(tmp_path: Path, postgres_url: str) -> None:
    async with Drill(tmp_path, postgres_url).run() as d:
        a, b = await d.leader_and_standby()
        chans = d.chans

        # --- a window that starts in 8 s and lasts 20 s; a deploy that takes ~25 s ----------------
        await d.say("!maintenance schedule chat staging in 8s 20s failover drill")
        await wait_until(lambda: any("#1" in t for t in d.ops()), timeout=20, what="the window scheduled")
        progress = await d.start_deploy("v1.5.1")

        # --- the storm: part before the kill, to both replicas ------------------------------------
        order = [a, b]
        await asyncio.gather(*(deliver(d.http, order[i % 2:] + order[:i % 2], storm_body(i))
                               for i in range(GROUPS_BEFORE)))
        await wait_until(lambda: any("Maintenance has begun" in t for t in d.ops()), timeout=30, what="the window")
        assert storm_messages(chans["alerts"]), "the leader posted nothing before it was killed"
        assert "deployed" not in embed_text(message_by_id(chans["ops"], progress.id))

        # --- kill the leader: mid-storm, mid-window, mid-deploy ----------------------------------
        a.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        a.proc.wait()
        rest = [deliver(d.http, [a, b], storm_body(i)) for i in range(GROUPS_BEFORE, GROUPS_BEFORE + GROUPS_AFTER)]
        rest += [deliver(d.http, [a, b], storm_body(i, "resolved")) for i in range(RESOLVED)]
        takers = await asyncio.gather(*rest)
        assert set(takers) == {"member-b"}

        await wait_until(lambda: d.session_of("member-b"), timeout=30, what="member-b leading")
        takeover = time.monotonic() - killed_at
        assert takeover <= LEASE["lease_duration_seconds"] + 5, takeover
        assert lease_holder(d.kubeconfig) == "member-b"
        await d.lock_survived("v1.5.1")

        # --- nothing lost: every group shown, in its latest state; the window ends; the deploy ends
        total = GROUPS_BEFORE + GROUPS_AFTER

        def settled() -> bool:
            seen = storm_messages(chans["alerts"])
            resolved = all("resolved" in seen.get(f"Storm{i:02d}", [""])[-1].lower() for i in range(RESOLVED))
            return len(seen) == total and resolved
        await wait_until(settled, timeout=60, what="every alert group shown in its latest state")
        await wait_until(lambda: any("Maintenance is over" in t for t in d.ops()), timeout=60, what="the window's end")
        await d.deploy_finished_once(progress, "v1.5.1")
        await asyncio.sleep(3)  # anything doubled would show up now

        # --- nothing doubled ---------------------------------------------------------------------
        seen = storm_messages(chans["alerts"])
        doubled = {name: len(m) for name, m in seen.items() if len(m) > 1}
        assert not doubled, f"groups posted more than once: {doubled}"
        assert set(seen) == {f"Storm{i:02d}" for i in range(total)}
        ops = Counter(kind for t in d.ops() for kind in
                      ("Maintenance has begun", "Maintenance is over", "#1 has started", "#1 has ended")
                      if kind in t)
        assert ops == {"Maintenance has begun": 1, "Maintenance is over": 1,
                       "#1 has started": 1, "#1 has ended": 1}, ops

        # --- a clean shutdown releases the lease at once -----------------------------------------
        b.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(b.proc.wait, 30) == 0, b.log()
        assert not lease_holder(d.kubeconfig)
        await wait_until(lambda: not d.host.sessions, timeout=10, what="the session closed")


async def test_sigterm_hands_a_running_deploy_over(tmp_path: Path, postgres_url: str) -> None:
    """A rolling update of the bot itself: the leader drains, the standby takes over at once."""
    async with Drill(tmp_path, postgres_url).run() as d:
        a, _b = await d.leader_and_standby()
        progress = await d.start_deploy("v1.5.1")
        await asyncio.sleep(2)

        a.proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        # Draining: new commands are refused politely while the running deploy has its grace.
        await d.say("!status chat-gui staging")
        await wait_until(lambda: any("restarting" in t for t in d.ops()), timeout=10, what="the refusal")
        # Never two leaders: b may not lead (nor take the deploy over) before a stopped acting and
        # released the lease; a's process may still be closing its connections after that.
        deadline = time.monotonic() + 30
        while a.proc.poll() is None:
            if d.session_of("member-b") or lease_holder(d.kubeconfig) == "member-b":
                assert "released lease" in a.log(), "member-b leads while member-a still acts"
            assert time.monotonic() < deadline, "member-a did not stop"
            await asyncio.sleep(0.05)
        assert a.proc.returncode == 0, a.log()
        # The rollout outlived the 5 s grace: its message says so, and the lock was kept.
        assert "restarting" in embed_text(message_by_id(d.chans["ops"], progress.id))
        # The lease was released: b leads at once, not after the lease duration.
        await wait_until(lambda: d.session_of("member-b"), timeout=15, what="member-b leading")
        assert time.monotonic() - stopped_at < 5 + LEASE["lease_duration_seconds"], "no faster than a crash"
        await d.lock_survived("v1.5.1")
        await d.deploy_finished_once(progress, "v1.5.1")


def texts(channel: Any) -> list[str]:
    return [embed_text(m) for m in channel.history() if m.author.bot]


def storm_messages(channel: Any) -> dict[str, list[str]]:
    """Alert group name → the texts of the messages that show it (one each, if nothing doubled)."""
    found: dict[str, list[str]] = {}
    for m in channel.history():
        if not m.author.bot or not m.embeds:  # not the "thread created" system lines
            continue
        text = embed_text(m)
        for word in text.replace("`", " ").replace("*", " ").split():
            if word.startswith("Storm") and word[5:7].isdigit():
                found.setdefault(word[:7], []).append(text)
                break
    return found


async def test_a_leader_that_loses_its_lease_stops_at_once(tmp_path: Path, postgres_url: str) -> None:
    """Someone else holds the Lease (a partition healed the wrong way, an operator): the old leader
    must stop acting before the other can, and exit so that its orchestrator restarts it."""
    async with Drill(tmp_path, postgres_url).run() as d:
        a = d.start("member-a")
        await wait_until(lambda: d.session_of("member-a"), timeout=60, what="member-a leading")
        api = config.new_client_from_config(str(d.kubeconfig))
        try:
            coordination = client.CoordinationV1Api(api)
            lease = coordination.read_namespaced_lease("opsbot", "opsbot")
            lease.spec.holder_identity = "intruder"
            lease.spec.lease_duration_seconds = 60
            coordination.replace_namespaced_lease("opsbot", "opsbot", lease)
        finally:
            api.close()
        code = await asyncio.to_thread(a.proc.wait, 20)
        assert code == 3, a.log()  # bot.run.EXIT_LOST_LEASE
        assert "lost the lease" in a.log()
        await wait_until(lambda: not d.host.sessions, timeout=10, what="the Discord session closed")
