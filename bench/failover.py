"""What a dead bot costs: two replicas with a Lease (ha.enabled) side by side with one replica that
its supervisor restarts at once (Docker's ``restart: always``, a Deployment of one).

    python bench/failover.py [--rounds 3] [--lease 15]

Both use the failover tests' world (``tests/ha/test_failover.py``): real ``opsbot run`` processes,
the sandbox serving the Lease, one PostgreSQL, one simcord Discord over the bridge. Each round
SIGKILLs the serving process, then posts one alert as Alertmanager would (to any replica; retried
until one takes it) and measures, from the kill:

- ``webhook``: until a replica accepted the alert (Alertmanager would otherwise keep retrying);
- ``session``: until a process holds the Discord session again;
- ``message``: until the alert's message is in the channel.

With a lease, the standby accepts webhooks at once but may only lead once the lease has expired
(``--lease`` seconds, client-go's default of 15 s unless told). The restarted single replica needs
a Python start, a database connection and a Discord login. Prints the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest_postgres import start_postgres
from tests.ha.test_failover import Drill, Member, deliver, storm_body, storm_messages
from tests.support.simcord_bridge import wait_until


async def post(http: aiohttp.ClientSession, members: list[Member], body: dict) -> None:
    """Until a replica takes it (Alertmanager retries with backoff; this is kinder to the restart)."""
    while True:
        try:
            await deliver(http, members, body)
            return
        except AssertionError:
            await asyncio.sleep(0.1)


async def one_round(mode: str, lease: float, round_no: int) -> dict[str, float]:
    pg = start_postgres()
    tmp = Path(tempfile.mkdtemp(prefix="opsbot-failover-"))
    try:
        drill = Drill(tmp, pg.url(pg.create_database()))
        async with drill.run() as d:
            cfg = yaml.safe_load(d.cfg.read_text())
            cfg["ha"].update(enabled=mode == "lease", lease_duration_seconds=lease,
                             renew_deadline_seconds=lease * 2 / 3, retry_period_seconds=min(2.0, lease / 6))
            d.cfg.write_text(yaml.safe_dump(cfg))
            a = d.start("member-a")
            await wait_until(lambda: d.session_of("member-a"), timeout=60)
            members = [a]
            if mode == "lease":
                b = d.start("member-b")
                members.append(b)
                await wait_until(lambda: b.proc.poll() is None and _listening(b), timeout=60)
                await asyncio.sleep(1)
            a.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            a.proc.wait()
            if mode == "restart":  # the supervisor starts it again at once, on the same port
                (tmp / "again").mkdir()
                again = Member("member-a", d.cfg, d.host.url, d.database, tmp / "again", port=a.port)
                d.members.append(again)
                members = [again]
            figures: dict[str, float] = {}
            await post(d.http, members, storm_body(90 + round_no))
            figures["webhook"] = time.monotonic() - killed
            await wait_until(lambda: d.host.sessions, timeout=120)
            figures["session"] = time.monotonic() - killed
            await wait_until(lambda: storm_messages(d.chans["alerts"]), timeout=120)
            figures["message"] = time.monotonic() - killed
            return figures
    finally:
        pg.stop()


def _listening(member: Member) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", member.port)) == 0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lease", type=float, default=15.0, help="ha.lease_duration_seconds")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.python_version()}, {_cpus()} CPUs; "
          f"lease {args.lease:g} s, {args.rounds} rounds")
    results: dict[str, list[dict[str, float]]] = {"lease": [], "restart": []}
    for r in range(args.rounds):
        for mode in ("lease", "restart"):
            figures = await one_round(mode, args.lease, r)
            results[mode].append(figures)
            print(f"  round {r + 1} {mode:7}: " + ", ".join(f"{k} {v:5.1f} s" for k, v in figures.items()),
                  flush=True)
    print(f"{'median from SIGKILL':24} {'webhook taken':>14} {'session back':>13} {'alert shown':>12}")
    for mode, label in (("lease", "2 replicas + Lease"), ("restart", "1 replica, restarted")):
        med = {k: statistics.median(f[k] for f in results[mode]) for k in ("webhook", "session", "message")}
        print(f"{label:24} {med['webhook']:13.1f}s {med['session']:12.1f}s {med['message']:11.1f}s")


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    asyncio.run(main())
