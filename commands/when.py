"""Start times as people type them: ``2024-05-02T04:00``, ``in 2h``, ``tomorrow 04:00``,
``mon 04:00``, ``04:00``, ``now``, each optionally followed by a zone name
(``tomorrow 04:00 Europe/Berlin``); without one, the team's zone (``settings.timezone``).

Why not dateparser: it guesses (any of 200 languages, "04:00" may mean today in the past), moves
a time that a daylight saving change skips without a word, and takes ages to import. The grammar
here is small and says exactly what it did. python-dateutil does the parts it is good at: ISO
8601 in all its forms (``isoparse``), weekday arithmetic (``relativedelta``) and telling whether a
wall time exists or exists twice on a DST day (``datetime_exists``, ``datetime_ambiguous``,
``resolve_imaginary``); pytimeparse (as for every duration in opsbot) reads ``2h``.

DST, said in :attr:`When.note`:
- a wall time that does not exist (02:30 on a spring-forward night in Berlin) moves forward by
  the gap (03:30), as the zone's clocks do;
- a wall time that exists twice (02:30 on a fall-back night) is the first of the two (summer
  time); an ISO time with an offset (``…T02:30+01:00``) picks the second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from dateutil import tz as dtz
from dateutil.parser import isoparse
from dateutil.relativedelta import FR, MO, SA, SU, TH, TU, WE, relativedelta, weekday
from pytimeparse import parse as parse_seconds

from commands.catalog import UserError
from commands.timeutil import short

DEFAULT_MAX_AHEAD = timedelta(days=90)

WEEKDAYS: dict[str, weekday] = {}
for _names, _day in ((("mon", "monday"), MO), (("tue", "tues", "tuesday"), TU), (("wed", "wednesday"), WE),
                     (("thu", "thur", "thurs", "thursday"), TH), (("fri", "friday"), FR),
                     (("sat", "saturday"), SA), (("sun", "sunday"), SU)):
    for _n in _names:
        WEEKDAYS[_n] = _day

_CLOCK_24 = re.compile(r"^(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)$")
_CLOCK_12 = re.compile(r"^(?P<h>1[0-2]|0?[1-9])(?::(?P<m>[0-5]\d))?\s*(?P<ampm>am|pm)$")
_IN = re.compile(r"^in\s+(?P<d>.+)$")
HELP = ("write a start as `now`, `in 2h`, `04:00`, `tomorrow 04:00`, `mon 04:00` or "
        "`2024-05-02T04:00`, optionally followed by a zone like `Europe/Berlin`")


@dataclass(frozen=True)
class When:
    """A parsed time: ``at`` in UTC, the zone it was read in, and what was done about DST."""

    at: datetime
    zone: str
    note: str | None = None

    @property
    def local(self) -> datetime:
        return self.at.astimezone(zone(self.zone))


@lru_cache(maxsize=1)
def _zones_folded() -> dict[str, str]:
    return {name.lower(): name for name in available_timezones()}


def zone(name: str) -> tzinfo:
    """The zone called ``name`` (an IANA name, any case); UserError if there is none."""
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    found = _zones_folded().get(name.lower())
    if found:
        return ZoneInfo(found)
    raise UserError(f"no time zone `{name}`; use an IANA name like `Europe/Berlin` or `UTC`")


def zone_name(name: str) -> str:
    """The canonical spelling of a zone name (``europe/berlin`` → ``Europe/Berlin``)."""
    if name.upper() in ("UTC", "Z"):
        return "UTC"
    zone(name)
    return name if name in available_timezones() else _zones_folded()[name.lower()]


def _looks_like_zone(word: str) -> bool:
    return "/" in word or word.upper() in ("UTC", "Z", "GMT") or word.lower() in _zones_folded()


def split_zone(text: str) -> tuple[str, str | None]:
    """``"tomorrow 04:00 Europe/Berlin"`` → (``"tomorrow 04:00"``, ``"Europe/Berlin"``)."""
    words = text.split()
    if len(words) >= 2 and _looks_like_zone(words[-1]):
        return " ".join(words[:-1]), words[-1]
    return text, None


def fmt(moment: datetime, zone_: str | None = None) -> str:
    """``2024-05-02 04:00 UTC``, or in a zone: ``2024-05-02 06:00 CEST``."""
    if zone_ is None or zone_ == "UTC":
        return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    local = moment.astimezone(zone(zone_))
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def both(moment: datetime, team_zone: str) -> str:
    """UTC and, when the team is elsewhere, its zone: ``2024-05-02 04:00 UTC (06:00 CEST, Europe/Berlin)``."""
    utc = fmt(moment)
    if team_zone == "UTC":
        return utc
    local = moment.astimezone(zone(team_zone))
    same_day = local.date() == moment.astimezone(UTC).date()
    shown = f"{local:%H:%M}" if same_day else f"{local:%Y-%m-%d %H:%M}"
    return f"{utc} ({shown} {local.tzname()}, {team_zone})"


def _wall(day: date, at: time, tz_: tzinfo, zone_label: str) -> tuple[datetime, str | None]:
    """``day`` at wall time ``at`` in ``tz_``, DST gaps and folds resolved and said."""
    moment = datetime.combine(day, at, tzinfo=tz_)
    if not dtz.datetime_exists(moment):
        moved = dtz.resolve_imaginary(moment)
        gap = moved.replace(tzinfo=None) - moment.replace(tzinfo=None)
        return moved, (f"{at:%H:%M} does not exist in {zone_label} on {day:%Y-%m-%d} (the clocks skip "
                       f"{short(gap)} for daylight saving time): using {moved:%H:%M} {moved.tzname()}")
    if dtz.datetime_ambiguous(moment):
        first, second = moment.replace(fold=0), moment.replace(fold=1)
        return first, (f"{at:%H:%M} happens twice in {zone_label} on {day:%Y-%m-%d} (daylight saving time "
                       f"ends): using the first, {first.tzname()} = {first.astimezone(UTC):%H:%M} UTC; for the "
                       f"second ({second.tzname()}) give `{day:%Y-%m-%d}T{at:%H:%M}{_offset(second)}`")
    return moment, None


def _offset(moment: datetime) -> str:
    off = moment.utcoffset() or timedelta(0)
    sign = "-" if off < timedelta(0) else "+"
    minutes = abs(int(off.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _clock(text: str) -> time | None:
    """``04:00``, ``4:00``, ``4am``, ``4:30pm``; a bare ``4`` is not a time."""
    text = text.strip()
    if m := _CLOCK_24.match(text):
        return time(int(m["h"]), int(m["m"]))
    if m := _CLOCK_12.match(text):
        return time(int(m["h"]) % 12 + (12 if m["ampm"] == "pm" else 0), int(m["m"] or 0))
    return None


def parse_when(text: str, *, now: datetime, team_zone: str = "UTC", max_ahead: timedelta = DEFAULT_MAX_AHEAD,
               what: str = "start") -> When:
    """Parse a start time (see the module docstring). Past times and times more than
    ``max_ahead`` away are refused with a UserError that says why."""
    raw = " ".join((text or "").split())
    if not raw:
        raise UserError(f"missing {what} time; {HELP}")
    body, named = split_zone(raw)
    label = zone_name(named) if named else team_zone
    tz_ = zone(label)
    local_now = now.astimezone(tz_)
    lower = body.lower()
    note: str | None = None

    if lower == "now":
        at = now
    elif m := _IN.match(lower):
        seconds = parse_seconds(m["d"])
        if seconds is None:
            raise UserError(f"`{m['d']}` is not a duration; try `in 30m`, `in 2h` or `in 1d`")
        if named:
            note = f"`in …` counts from now; the zone {label} changes nothing"
        at = now + timedelta(seconds=seconds)
    elif re.match(r"^\d{4}-?\d{2}-?\d{2}", lower):
        at, note = _iso(body, tz_, label, named is not None)
    else:
        words = lower.split()
        day_word = words[0] if len(words) == 2 else None
        clock = _clock(words[-1]) if words else None
        if clock is None or len(words) > 2:
            raise UserError(f"cannot read `{raw}` as a time; {HELP}")
        today = local_now.date()
        if day_word is None:
            at, note = _wall(today, clock, tz_, label)
            if at <= now:
                at, note = _wall(today + timedelta(days=1), clock, tz_, label)
                note = f"{clock:%H:%M} has passed today: that is tomorrow" + (f"; {note}" if note else "")
        elif day_word == "today":
            at, note = _wall(today, clock, tz_, label)
        elif day_word == "tomorrow":
            at, note = _wall(today + timedelta(days=1), clock, tz_, label)
        elif day_word in WEEKDAYS:
            day = today + relativedelta(weekday=WEEKDAYS[day_word](+1))
            at, note = _wall(day, clock, tz_, label)
            if at <= now:  # today is that weekday and the time has passed: next week
                at, note = _wall(day + timedelta(days=7), clock, tz_, label)
        else:
            raise UserError(f"cannot read `{day_word}` as a day: use `today`, `tomorrow` or a weekday "
                            f"(`mon` … `sun`); {HELP}")
    at = at.astimezone(UTC)
    if at < now - timedelta(seconds=1):
        raise UserError(f"{fmt(at, label)} is in the past ({short(now - at)} ago); a {what} must be ahead")
    if at - now > max_ahead:
        raise UserError(f"{fmt(at, label)} is {short(at - now)} ahead; a {what} can be at most {short(max_ahead)} ahead")
    return When(at=at, zone=label, note=note)


def _iso(text: str, tz_: tzinfo, label: str, zone_named: bool) -> tuple[datetime, str | None]:
    try:
        parsed = isoparse(text.replace(" ", "T", 1) if re.match(r"^\d{4}-\d{2}-\d{2} \d", text) else text)
    except (ValueError, OverflowError):
        raise UserError(f"`{text}` is not an ISO 8601 time like `2024-05-02T04:00` or `2024-05-02T04:00+02:00`") from None
    if len(text) <= 10 and parsed.time() == time(0):  # a bare date
        raise UserError(f"`{text}` has no time of day; write e.g. `{text}T04:00`")
    if parsed.tzinfo is not None:
        note = None
        if zone_named:
            note = f"the offset in `{text}` wins over the zone {label}"
        return parsed, note
    return _wall(parsed.date(), parsed.time(), tz_, label)


def parse_until(text: str, *, now: datetime, team_zone: str, max_ahead: timedelta) -> When:
    """The ``until T`` of ``!freeze prod until fri 18:00``: like a start, and it must be ahead."""
    return parse_when(text, now=now, team_zone=team_zone, max_ahead=max_ahead, what="end")
