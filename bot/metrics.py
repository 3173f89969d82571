"""Prometheus metrics of one bot, in a registry of its own.

No metric lives in prometheus_client's global registry, so tests and two bots in one process
never collide; :mod:`bot.http` serves :attr:`Metrics.registry` on ``/metrics``.
"""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CommandResult = Literal["ok", "denied", "error", "bad_input"]
COMMAND_RESULTS: frozenset[str] = frozenset(get_args(CommandResult))

# Commands range from a status read (sub-second) to a prod rollout (up to the rollout timeout).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """The bot's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.commands = Counter(
            "opsbot_commands_total",
            "Commands handled, by command and result (ok, denied, error, bad_input).",
            ["command", "result"],
            registry=self.registry,
        )
        self.command_duration = Histogram(
            "opsbot_command_duration_seconds",
            "Time from invocation to reply for commands that ran (result ok or error).",
            ["command"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.commands_denied = Counter(
            "opsbot_commands_denied_total",
            "Commands refused by a permission or channel check.",
            ["command"],
            registry=self.registry,
        )
        self.command_errors = Counter(
            "opsbot_command_errors_total",
            "Commands that failed with an unexpected error.",
            ["command"],
            registry=self.registry,
        )
        self.up = Gauge(
            "opsbot_up",
            "1 while the bot is connected to chat and serving commands, else 0.",
            registry=self.registry,
        )

        self.leader = Gauge(
            "opsbot_leader",
            "1 while this replica leads (holds the Discord session, runs the scheduler and the alert senders).",
            registry=self.registry,
        )

    def observe_command(self, command: str, result: CommandResult, seconds: float) -> None:
        """Count one handled command; its duration counts only if it ran (ok or error)."""
        if result not in COMMAND_RESULTS:
            raise ValueError(f"unknown command result {result!r}; one of {sorted(COMMAND_RESULTS)}")
        self.commands.labels(command=command, result=result).inc()
        if result == "denied":
            self.commands_denied.labels(command=command).inc()
        elif result == "error":
            self.command_errors.labels(command=command).inc()
        if result in ("ok", "error"):
            self.command_duration.labels(command=command).observe(max(seconds, 0.0))

    def set_up(self, up: bool) -> None:
        self.up.set(1 if up else 0)
