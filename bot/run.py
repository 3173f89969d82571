"""``opsbot run``: the bot on real Discord."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bot.app import App, create_bot
from config.check import check

log = logging.getLogger(__name__)


async def run_bot(config: Path | None, *, token_file: Path | None = None, sync: bool = False,
                  **overrides: Any) -> int:
    # Refuse to start on a config that check-config rejects (names that can never be addressed,
    # grants naming unknown envs, …): the same checks, the same report.
    checked = check(config, **overrides)
    if checked.errors or checked.settings is None:
        print(checked.render(), file=sys.stderr)
        return 1
    settings = checked.settings
    if token_file is not None:
        settings.discord_token = SecretStr(token_file.read_text(encoding="utf-8").strip())
    if settings.discord_token is None or not settings.discord_token.get_secret_value():
        log.error("no Discord token: set OPSBOT_DISCORD_TOKEN or pass --token-file")
        print("opsbot: no Discord token (set OPSBOT_DISCORD_TOKEN or pass --token-file)")
        return 2
    async with App.open(settings) as app:
        bot = create_bot(app)

        @bot.event
        async def on_ready() -> None:
            log.warning("connected to Discord as %s", bot.user)
            if sync:
                guild = bot.get_guild(settings.guild_id) if settings.guild_id else None
                if guild is not None:
                    bot.tree.copy_global_to(guild=guild)
                synced = await bot.tree.sync(guild=guild)
                log.warning("synced %d slash commands%s", len(synced), f" to {guild}" if guild else " globally")

        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stopping.set)
        async with bot:
            runner = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
            stopper = asyncio.create_task(stopping.wait())
            done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                runner.result()  # surface login errors
            log.warning("shutting down: finishing background work")
            await app.supervisor.stop(grace=10)
            await bot.close()
            stopper.cancel()
    return 0
