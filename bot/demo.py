"""``opsbot demo``: the embedded world in a Discord-like page in your browser.

The sandbox cluster runs in-process, the real bot runs on simcord's in-memory Discord, and
simcord's preview serves the channel with a working composer on loopback. No token, no cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import UTC, datetime
from typing import Any

from simcord import SetupError

from bot.world import World, open_world

log = logging.getLogger(__name__)

WELCOME = """\
👋 **Welcome to the opsbot demo.** This is a sandbox: an emulated Kubernetes cluster with the
services `chat`, `chat-gui`, `modbot`, `auth`, `strims` in `dev`, `staging` and `prod`.
Try `!help`, `!status`, `!status chat-gui prod`, `!deploy chat-gui staging v1.5.1`,
`!deploy auth staging v1.6.0-broken` (watch it roll back), `!history chat-gui staging`, `!logs auth prod`,
`!testalert chat prod` as oncall (then press Acknowledge or Silence; a sample pages nobody),
`!perms`, `!audit`.
Switch user (admin, mod, oncall, member, guest) with the viewer picker to see permissions at work."""


async def _refresh_on_change(world: World, preview: Any, changed: asyncio.Event) -> None:
    """Background edits (rollouts, alerts) don't come from a page action: republish for them."""
    while True:
        await changed.wait()
        await asyncio.sleep(0.3)  # coalesce bursts of edits
        changed.clear()
        try:
            await preview.refresh()
        except SetupError:  # a page action is running; it publishes by itself
            changed.set()
            await asyncio.sleep(0.5)
        except Exception:
            log.debug("preview refresh failed", exc_info=True)


async def run_demo(port: int | None = None, *, ready: Any = None, **world_args: Any) -> int:
    def show_alerts_here(settings: Any) -> None:
        # The page shows one channel: let alerts land in #ops so a visitor sees them.
        settings.alerts.default_route.channel = "ops"

    async with open_world(wall_clock=True, tweak=show_alerts_here, **world_args) as world:
        ops = world.channels["ops"]
        await world.members["admin"].send(world.channels["ops"], "!status")  # something to look at
        await world.bot.get_channel(ops.id).send(WELCOME)  # type: ignore[union-attr]
        viewers = [world.members[u] for u in ("mod", "admin", "oncall", "member", "guest")]
        preview = world.env.preview(ops, viewers=viewers, layout="channel",
                                    presentation_time=datetime.now(UTC), port=port)
        async with preview:
            changed = asyncio.Event()

            def on_event(event: str, payload: Any) -> None:
                if event.startswith("MESSAGE_"):
                    changed.set()

            world.env.backend.subscribers.append(on_event)
            refresher = asyncio.get_running_loop().create_task(_refresh_on_change(world, preview, changed))
            print(f"opsbot demo is running: open {preview.url}", flush=True)
            print("(you are 'mod' in #ops; Ctrl-C stops the demo)", flush=True)
            if ready is not None:
                ready(preview.url)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(preview.wait_closed())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            refresher.cancel()
            world.env.backend.subscribers.remove(on_event)
            print("opsbot demo stopped", flush=True)
    return 0
