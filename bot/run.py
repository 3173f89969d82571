"""``opsbot run``: the bot on real Discord, alone or as one replica of several.

Alone (``ha.enabled: false``) it leads from the start. With ``ha.enabled`` every replica serves the
alert webhook into the shared database and campaigns for the Lease; the one that wins starts the
leader's duties (:meth:`App.leading`) and the Discord session. A leader that cannot renew steps
down by exiting (code 3), so its orchestrator restarts it as a standby: simpler and safer than
winding every duty back inside a process that may be partitioned.

On SIGTERM/SIGINT (a rolling update, ``docker stop``): /readyz turns 503 and commands and buttons
are refused with "restarting"; running deploys get ``ha.shutdown_grace_seconds`` to finish, and
what still runs then is handed over (its lock kept, the next leader takes it up); then the
Discord session closes, the senders and the scheduler stop, and the Lease is released so a standby
takes over at once instead of after the lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bot.app import App, OpsBot, create_bot
from commands.leader import LeaderElector
from config.check import check
from config.settings import SecretFileError, Settings, read_secret_file

log = logging.getLogger(__name__)

EXIT_LOST_LEASE = 3


async def run_bot(config: Path | None, *, token_file: Path | None = None, sync: bool = False,
                  prepare_bot: Callable[[OpsBot], None] | None = None, **overrides: Any) -> int:
    """``prepare_bot`` lets a test harness route the unmodified bot to a simulated Discord."""
    # Refuse to start on a config that check-config rejects (names that can never be addressed,
    # grants naming unknown envs, …): the same checks, the same report.
    checked = check(config, **overrides)
    if checked.errors or checked.settings is None:
        print(checked.render(), file=sys.stderr)
        return 1
    settings = checked.settings
    if token_file is not None:
        try:
            settings.discord_token = SecretStr(read_secret_file(token_file, "--token-file"))
        except SecretFileError as e:
            print(f"opsbot: {e}", file=sys.stderr)
            return 2
    if settings.discord_token is None or not settings.discord_token.get_secret_value():
        log.error("no Discord token: set OPSBOT_DISCORD_TOKEN or OPSBOT_DISCORD_TOKEN_FILE, or pass --token-file")
        print("opsbot: no Discord token (set OPSBOT_DISCORD_TOKEN or OPSBOT_DISCORD_TOKEN_FILE, "
              "or pass --token-file)")
        return 2

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)

    ha = settings.ha
    async with App.open(settings, lead=not ha.enabled) as app:
        bot = create_bot(app)
        if prepare_bot is not None:
            prepare_bot(bot)

        @bot.event
        async def on_ready() -> None:
            log.warning("connected to Discord as %s", bot.user)
            if sync:
                guild = bot.get_guild(settings.guild_id) if settings.guild_id else None
                if guild is not None:
                    bot.tree.copy_global_to(guild=guild)
                synced = await bot.tree.sync(guild=guild)
                log.warning("synced %d slash commands%s", len(synced), f" to {guild}" if guild else " globally")

        if not ha.enabled:
            return await _lead(app, bot, settings, stopping, None)
        elector = app.elector = _elector(settings, app.identity)
        log.warning("%s: standby; serving webhooks and campaigning for lease %s/%s", elector.identity,
                    ha.lease_namespace, ha.lease_name)
        try:
            if not await elector.acquire(stopping):
                log.warning("%s: stopped while standby", elector.identity)
                return 0
            # Renewed until the duties have stopped, drain included: a standby may take over only
            # once this replica has stopped acting; then the lease is released at once.
            keep_lease = asyncio.Event()
            holder = asyncio.create_task(elector.hold(keep_lease), name="lease-renewal")
            try:
                async with app.leading():
                    code = await _lead(app, bot, settings, stopping, holder)
            finally:
                keep_lease.set()
                lost = not await holder
            if lost:
                code = EXIT_LOST_LEASE
            if code != EXIT_LOST_LEASE:
                await elector.release()  # after the duties stopped: the next leader never overlaps
            return code
        finally:
            await elector.lock.close()  # type: ignore[attr-defined]


def _elector(settings: Settings, identity: str) -> LeaderElector:
    from commands.targets.lease import KubernetesLease

    ha = settings.ha
    lock = KubernetesLease(settings.kubeconfig, ha.lease_namespace, ha.lease_name, context=ha.context,
                           request_timeout=max(1.0, min(5.0, ha.renew_deadline_seconds / 2)))
    return LeaderElector(lock, identity, lease_duration=ha.lease_duration_seconds,
                         renew_deadline=ha.renew_deadline_seconds, retry_period=ha.retry_period_seconds)


async def _lead(app: App, bot: OpsBot, settings: Settings, stopping: asyncio.Event,
                holder: asyncio.Task[bool] | None) -> int:
    """Hold the Discord session (and the lease) until told to stop, or until either is lost."""
    assert settings.discord_token is not None
    async with bot:
        runner = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()), name="discord")
        stopper = asyncio.create_task(stopping.wait(), name="stop-signal")
        try:
            done, _ = await asyncio.wait({t for t in (runner, stopper, holder) if t is not None},
                                         return_when=asyncio.FIRST_COMPLETED)
            if holder is not None and holder in done:
                return await _lost_lease(app)
            if runner in done:
                runner.result()  # surface login errors
                log.error("the Discord session ended")
                return 1
            drain = asyncio.create_task(_drain(app, settings))
            done, _ = await asyncio.wait({t for t in (drain, holder) if t is not None},
                                         return_when=asyncio.FIRST_COMPLETED)
            if drain not in done:  # lost the lease while draining: stop at once
                drain.cancel()
                return await _lost_lease(app)
            return drain.result()
        finally:
            for task in (runner, stopper):
                if not task.done():
                    task.cancel()
            await bot.close()


async def _lost_lease(app: App) -> int:
    # Someone else may lead already: stop at once, leave running work to them.
    log.error("lost the lease: stopping at once (exit %d) so that only the new leader acts", EXIT_LOST_LEASE)
    app.draining = app.lease_lost = True
    await app.supervisor.stop(grace=0)
    return EXIT_LOST_LEASE


async def _drain(app: App, settings: Settings) -> int:
    grace = settings.ha.shutdown_grace_seconds
    log.warning("shutting down: no new commands; running work gets %.0f s to finish", grace)
    app.draining = True
    await app.supervisor.stop(grace=grace)
    return 0
