"""Durations and ages as people type and read them ("10m", "1h30m", "2 hours")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import humanize
from pytimeparse import parse as _parse

from commands.catalog import UserError


def parse_duration(text: str, *, minimum: timedelta = timedelta(seconds=1),
                   maximum: timedelta = timedelta(days=30), what: str = "duration") -> timedelta:
    """Parse "10m", "1h30m", "2 hours", "90s"; refuse nonsense and values out of range."""
    seconds = _parse(text.strip()) if text and text.strip() else None
    if seconds is None:
        raise UserError(f"`{text}` is not a {what}; try `30s`, `10m`, `1h30m` or `2d`")
    value = timedelta(seconds=seconds)
    if value < minimum:
        raise UserError(f"a {what} must be at least {short(minimum)}")
    if value > maximum:
        raise UserError(f"a {what} can be at most {short(maximum)}")
    return value


def short(delta: timedelta) -> str:
    """Compact form: 45s, 12m, 3h 5m, 2d 4h."""
    secs = int(delta.total_seconds())
    if secs < 60:
        return f"{secs}s"
    mins, secs = divmod(secs, 60)
    if mins < 60:
        return f"{mins}m" + (f" {secs}s" if secs and mins < 10 else "")
    hours, mins = divmod(mins, 60)
    if hours < 24:
        return f"{hours}h" + (f" {mins}m" if mins else "")
    days, hours = divmod(hours, 24)
    return f"{days}d" + (f" {hours}h" if hours else "")


def ago(when: datetime, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return humanize.naturaltime(now - when)


def utcnow() -> datetime:
    return datetime.now(UTC)
