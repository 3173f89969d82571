"""The ``opsbot`` entry point (design §4): run, demo, console, sandbox, check-config."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from config.settings import ConfigFileError

log = logging.getLogger("opsbot")


def _common(p: argparse.ArgumentParser) -> None:
    """Flags every long-running mode accepts; each can also come from OPSBOT_… variables."""
    p.add_argument("--config", type=Path, help="YAML config file (env OPSBOT_CONFIG)")
    p.add_argument("--data-dir", type=Path, help="where the database and state live")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig of the cluster to manage")
    p.add_argument("--docker-host", help="Docker host URL (unix:///… or tcp://…)")
    p.add_argument("--alertmanager-url", help="Alertmanager base URL")
    p.add_argument("--prometheus-url", help="Prometheus base URL")
    p.add_argument("--webhook-listen", metavar="HOST:PORT", help="address of the bot's HTTP server")
    p.add_argument("--webhook-token", nargs="?", action=_RefuseSecret, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")


class _RefuseSecret(argparse.Action):
    """A secret on argv is readable by every user of the machine (ps, /proc/PID/cmdline) and lands
    in shell history: the flag is refused, with where the secret goes instead."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} is not accepted: a secret on the command line is visible to every "
                     "user of this machine; set OPSBOT_WEBHOOK_TOKEN, or OPSBOT_WEBHOOK_TOKEN_FILE=PATH "
                     "to a file that holds it")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data_dir": args.data_dir, "kubeconfig": args.kubeconfig, "docker_host": args.docker_host,
        "alertmanager_url": args.alertmanager_url, "prometheus_url": args.prometheus_url,
        "webhook_listen": args.webhook_listen,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opsbot", description="Discord ChatOps for deploys, alerts and on-call.")
    sub = parser.add_subparsers(dest="mode", required=True, metavar="MODE")

    p = sub.add_parser("run", help="run the bot on real Discord (token from OPSBOT_DISCORD_TOKEN)")
    _common(p)
    p.add_argument("--token-file", type=Path,
                   help="read the Discord token from this file (as OPSBOT_DISCORD_TOKEN_FILE)")
    p.add_argument("--sync-commands", action="store_true",
                   help="sync slash commands to Discord on start (do it after adding commands, not every start)")

    p = sub.add_parser("demo", help="the embedded world in a Discord-like page (no token, no cluster)")
    _common(p)
    p.add_argument("--port", type=int, help="port of the page (default: any free one)")

    p = sub.add_parser("console", help="the embedded world from a terminal: stdin lines are messages")
    _common(p)
    p.add_argument("--as", dest="user", default="mod", help="who you are: admin, mod, oncall, member, guest")
    p.add_argument("--channel", default="ops", help="channel to start in")
    p.add_argument("--json", action="store_true", help="print one JSON object a line per event")

    p = sub.add_parser("sandbox", help="serve only the emulated Kubernetes API and write a kubeconfig")
    p.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--kubeconfig", type=Path, default=Path("sandbox.kubeconfig"),
                   help="where to write the kubeconfig (context sandbox: unrestricted admin; with --rbac also a "
                        "context sa-NAMESPACE-NAME per ServiceAccount)")
    p.add_argument("--rbac", type=Path, action="append", metavar="PATH",
                   help="enforce the RBAC in these manifests (a YAML file or a directory, e.g. deploy/kubernetes; "
                        "repeatable) for their ServiceAccounts' tokens; other requests stay unrestricted")
    p.add_argument("--sa-kubeconfig", type=Path, metavar="PATH",
                   help="with --rbac: also write a kubeconfig holding only ServiceAccount opsbot/opsbot (else the "
                        "first found), as context sandbox, e.g. for `opsbot console --kubeconfig PATH`")

    p = sub.add_parser("check-config", help="validate a config, print the permission matrix")
    p.add_argument("--config", type=Path, help="YAML config file (env OPSBOT_CONFIG)")
    return parser


def _logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        logging.getLogger("discord").setLevel(logging.ERROR if verbose == 0 else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except (ConfigFileError, ValidationError) as e:
        print(f"opsbot: configuration problem: {e}\n(run `opsbot check-config` for every problem at once)",
              file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.mode == "check-config":
        from config.check import main as check_main

        return check_main(args.config or _env_config())
    if args.mode == "sandbox":
        _logging(1)
        from sandbox.server import serve_forever

        serve_forever(args.host, args.port, args.kubeconfig, rbac=args.rbac, sa_kubeconfig=args.sa_kubeconfig)
        return 0
    _logging(args.verbose)
    config = args.config or _env_config()
    if args.mode == "console":
        from bot.console import run_console

        return asyncio.run(run_console(args.user, as_json=args.json, channel=args.channel, config=config,
                                       **_world_overrides(args)))
    if args.mode == "demo":
        from bot.demo import run_demo

        return asyncio.run(run_demo(args.port, config=config, **_world_overrides(args)))
    if args.mode == "run":
        from bot.run import run_bot

        return asyncio.run(run_bot(config, token_file=args.token_file, sync=args.sync_commands,
                                   **_overrides(args)))
    raise AssertionError(args.mode)


def _world_overrides(args: argparse.Namespace) -> dict[str, Any]:
    o = _overrides(args)
    serve_http = o.pop("webhook_listen") is not None
    o = {k: v for k, v in o.items() if v is not None}
    if serve_http:
        o["webhook_listen"] = args.webhook_listen
    return {"serve_http": serve_http, **o}


def _env_config() -> Path | None:
    value = os.environ.get("OPSBOT_CONFIG")
    return Path(value) if value else None


if __name__ == "__main__":
    sys.exit(main())
