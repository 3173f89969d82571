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
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
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
    def __init__(self, name: str, cfg: Path, bridge: str, database: str, tmp: Path) -> None:
        self.name, self.port = name, free_port()
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


async def test_kill_the_leader_mid_storm_mid_window_mid_deploy(tmp_path: Path, postgres_url: str) -> None:
    sandbox = SandboxServer(timing=Timing(speed=0.2)).start()  # a deploy takes ~25 s: long enough to die in
    kubeconfig = sandbox.write_kubeconfig(tmp_path / "kubeconfig")
    members: list[Member] = []
    try:
        async with open_relay_env() as env, open_bridge(env) as host, aiohttp.ClientSession() as http:
            guild = env.create_guild("dgg ops")
            chans = {name: guild.create_text_channel(name) for name in ("ops", "alerts", "deploys")}
            admin_role = guild.create_role("Admin")
            admin = guild.add_member(env.create_user("admin"), roles=[admin_role])
            cfg = member_config(tmp_path / "opsbot.yaml", kubeconfig, admin_role.id)

            # --- a leads, b stands by -------------------------------------------------------
            a = Member("member-a", cfg, host.url, postgres_url, tmp_path)
            members.append(a)
            await wait_until(lambda: any(s.name == "member-a" for s in host.sessions), timeout=60)
            b = Member("member-b", cfg, host.url, postgres_url, tmp_path)
            members.append(b)

            async def b_standby() -> bool:
                status, text = await readyz(http, b)
                return status == 200 and "standby" in text and "member-a" in text
            await wait_until(b_standby, timeout=60)
            assert lease_holder(kubeconfig) == "member-a"
            assert [s.name for s in host.sessions] == ["member-a"]  # only the leader holds a session

            # --- a window that starts in 8 s and lasts 20 s; a deploy that takes ~25 s ------------
            await admin.send(chans["ops"], "!maintenance schedule chat staging in 8s 20s failover drill")
            await wait_until(lambda: any("#1" in t for t in texts(chans["ops"])), timeout=20)
            await admin.send(chans["ops"], "!deploy chat-gui staging v1.5.1")
            await wait_until(lambda: any("chat-gui → staging" in t for t in texts(chans["ops"])), timeout=20)

            # --- the storm: half before the kill, to both replicas ------------------------------
            order = [a, b]
            await asyncio.gather(*(deliver(http, order[i % 2:] + order[:i % 2], storm_body(i))
                                   for i in range(GROUPS_BEFORE)))
            await wait_until(lambda: any("Maintenance has begun" in t for t in texts(chans["ops"])), timeout=30)
            posted_before_kill = storm_messages(chans["alerts"])
            assert posted_before_kill, "the leader posted nothing before it was killed"

            # --- kill the leader: mid-storm, mid-window, mid-deploy ----------------------------
            a.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            a.proc.wait()
            rest = [deliver(http, [a, b], storm_body(i)) for i in range(GROUPS_BEFORE, GROUPS_BEFORE + GROUPS_AFTER)]
            rest += [deliver(http, [a, b], storm_body(i, "resolved")) for i in range(RESOLVED)]
            takers = await asyncio.gather(*rest)
            assert set(takers) == {"member-b"}

            await wait_until(lambda: any(s.name == "member-b" for s in host.sessions), timeout=30)
            takeover = time.monotonic() - killed_at
            assert takeover <= LEASE["lease_duration_seconds"] + 5, takeover
            assert lease_holder(kubeconfig) == "member-b"

            # --- nothing lost: every group shown, in its latest state; the window ends -----------
            total = GROUPS_BEFORE + GROUPS_AFTER

            def settled() -> bool:
                seen = storm_messages(chans["alerts"])
                resolved = all("resolved" in seen.get(f"Storm{i:02d}", [""])[-1].lower() for i in range(RESOLVED))
                return len(seen) == total and resolved
            await wait_until(settled, timeout=60)
            await wait_until(lambda: any("Maintenance is over" in t for t in texts(chans["ops"])), timeout=60)
            await asyncio.sleep(3)  # anything doubled would show up now

            # --- nothing doubled ------------------------------------------------------------------
            seen = storm_messages(chans["alerts"])
            doubled = {name: len(m) for name, m in seen.items() if len(m) > 1}
            assert not doubled, f"groups posted more than once: {doubled}"
            assert set(seen) == {f"Storm{i:02d}" for i in range(total)}
            ops = Counter(kind for t in texts(chans["ops"]) for kind in
                          ("Maintenance has begun", "Maintenance is over", "#1 has started", "#1 has ended")
                          if kind in t)
            assert ops == {"Maintenance has begun": 1, "Maintenance is over": 1,
                           "#1 has started": 1, "#1 has ended": 1}, ops

            # --- the deploy lock survived the leader ----------------------------------------------
            before = len(chans["ops"].history())
            await admin.send(chans["ops"], "!deploy chat-gui staging v1.5.2")
            await wait_until(lambda: len(chans["ops"].history()) > before + 1, timeout=20)
            reply = embed_text(chans["ops"].history()[-1])
            assert "deploy chat-gui v1.5.1" in reply and ("lock" in reply.lower() or "running" in reply.lower()), reply

            # --- a clean shutdown releases the lease at once --------------------------------------
            b.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(b.proc.wait, 30) == 0, b.log()
            assert not lease_holder(kubeconfig)
            await wait_until(lambda: not host.sessions, timeout=10)
    except BaseException:
        for name, ch in (chans.items() if "chans" in locals() else []):
            print(f"----- #{name} -----")
            for m in ch.history():
                print(f"{m.author}: {embed_text(m)[:300]!r}")
        for m in members:
            print(f"----- {m.name} -----\n{m.log()}")
        raise
    finally:
        for m in members:
            m.stop()
        sandbox.stop()


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
