"""One opsbot replica for the failover tests: ``opsbot run``'s own code path (:func:`bot.run.run_bot`:
check-config, the election, the leader's duties, graceful shutdown), its Discord session routed to
the test's simcord through the bridge (``tests/support/simcord_bridge.py``) instead of discord.com.

``python -m tests.ha.member CONFIG BRIDGE_URL``; everything else comes from ``OPSBOT_…`` variables
(identity, database, webhook address) as in a real deployment. The exit code is run_bot's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path


def main() -> None:
    config, bridge = Path(sys.argv[1]), sys.argv[2]
    name = os.environ.get("OPSBOT_HA__IDENTITY", "member")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {name} %(name)s %(levelname)s: %(message)s")
    for noisy in ("discord", "aiohttp.access", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from bot.run import run_bot
    from tests.support.simcord_bridge import attach

    code = asyncio.run(run_bot(config, prepare_bot=lambda bot: attach(bot, bridge, name=name)))
    logging.getLogger(__name__).warning("exit %s", code)
    sys.exit(code)


if __name__ == "__main__":
    main()
