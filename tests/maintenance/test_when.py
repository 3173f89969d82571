"""Start times as people type them: a table of inputs, zones, DST days, and refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from commands.catalog import UserError
from commands.timeutil import parse_duration
from commands.when import both, parse_when

# Saturday 2024-03-30 12:00 UTC (13:00 in Berlin); Berlin springs forward the next night at 02:00.
SAT = datetime(2024, 3, 30, 12, 0, tzinfo=UTC)
# Saturday 2024-10-26 12:00 UTC; Berlin falls back the next night (03:00 CEST → 02:00 CET).
AUTUMN = datetime(2024, 10, 26, 12, 0, tzinfo=UTC)


def u(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "team", "now", "expected", "note"),
    [
        ("now", "UTC", SAT, SAT, None),
        ("in 2h", "UTC", SAT, SAT + timedelta(hours=2), None),
        ("in 1h30m", "Europe/Berlin", SAT, SAT + timedelta(minutes=90), None),
        ("in 90 minutes", "UTC", SAT, SAT + timedelta(minutes=90), None),
        ("2024-04-02T04:00", "UTC", SAT, u(2024, 4, 2, 4, 0), None),
        ("2024-04-02 04:00", "UTC", SAT, u(2024, 4, 2, 4, 0), None),
        ("2024-04-02T04:00Z", "Europe/Berlin", SAT, u(2024, 4, 2, 4, 0), None),
        ("2024-04-02T04:00+02:00", "UTC", SAT, u(2024, 4, 2, 2, 0), None),
        ("20240402T0400", "UTC", SAT, u(2024, 4, 2, 4, 0), None),
        # Local wall times in the team's zone (Berlin: UTC+1 until the 31st, +2 after).
        ("2024-04-02T04:00", "Europe/Berlin", SAT, u(2024, 4, 2, 2, 0), None),
        ("tomorrow 04:00", "UTC", SAT, u(2024, 3, 31, 4, 0), None),
        ("tomorrow 04:00", "Europe/Berlin", SAT, u(2024, 3, 31, 2, 0), None),
        ("tomorrow 04:00 UTC", "Europe/Berlin", SAT, u(2024, 3, 31, 4, 0), None),
        ("tomorrow 04:00 America/New_York", "UTC", SAT, u(2024, 3, 31, 8, 0), None),
        ("tomorrow 04:00 europe/berlin", "UTC", SAT, u(2024, 3, 31, 2, 0), None),
        ("today 18:00", "UTC", SAT, u(2024, 3, 30, 18, 0), None),
        ("18:00", "UTC", SAT, u(2024, 3, 30, 18, 0), None),
        ("6pm", "UTC", SAT, u(2024, 3, 30, 18, 0), None),
        ("04:00", "UTC", SAT, u(2024, 3, 31, 4, 0), "04:00 has passed today: that is tomorrow"),
        ("mon 04:00", "UTC", SAT, u(2024, 4, 1, 4, 0), None),
        ("monday 04:00", "Europe/Berlin", SAT, u(2024, 4, 1, 2, 0), None),
        ("sat 18:00", "UTC", SAT, u(2024, 3, 30, 18, 0), None),  # today is Saturday, still ahead
        ("sat 04:00", "UTC", SAT, u(2024, 4, 6, 4, 0), None),  # passed today: next Saturday
        # DST gap: 02:30 does not exist in Berlin on 2024-03-31: 03:30 CEST (01:30 UTC), said.
        ("tomorrow 02:30", "Europe/Berlin", SAT, u(2024, 3, 31, 1, 30), "02:30 does not exist in Europe/Berlin"),
        ("2024-03-31T02:30", "Europe/Berlin", SAT, u(2024, 3, 31, 1, 30), "using 03:30 CEST"),
        # DST fold: 02:30 happens twice in Berlin on 2024-10-27: the first (CEST, 00:30 UTC), said.
        ("tomorrow 02:30", "Europe/Berlin", AUTUMN, u(2024, 10, 27, 0, 30), "happens twice"),
        ("2024-10-27T02:30+01:00", "Europe/Berlin", AUTUMN, u(2024, 10, 27, 1, 30), None),
        # A duration across the change is a duration: 3 hours are 3 hours.
        ("in 3h", "Europe/Berlin", datetime(2024, 3, 31, 0, 30, tzinfo=UTC), u(2024, 3, 31, 3, 30), None),
    ],
)
def test_start_times(text, team, now, expected, note):
    when = parse_when(text, now=now, team_zone=team)
    assert when.at == expected
    assert when.at.tzinfo is UTC
    if note is None:
        assert when.note is None
    else:
        assert note in (when.note or "")


def test_the_fold_note_says_how_to_get_the_second():
    when = parse_when("tomorrow 02:30", now=AUTUMN, team_zone="Europe/Berlin")
    assert when.note == ("02:30 happens twice in Europe/Berlin on 2024-10-27 (daylight saving time ends): using "
                         "the first, CEST = 00:30 UTC; for the second (CET) give `2024-10-27T02:30+01:00`")


def test_the_gap_note_says_what_happened():
    when = parse_when("tomorrow 02:30", now=SAT, team_zone="Europe/Berlin")
    assert when.note == ("02:30 does not exist in Europe/Berlin on 2024-03-31 (the clocks skip 1h for daylight "
                         "saving time): using 03:30 CEST")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("today 04:00", "is in the past (8h ago)"),
        ("2024-03-29T12:00", "is in the past (1d ago)"),
        ("2024-03-30T13:00+02:00", "is in the past (1h ago)"),
        ("in 200d", "is 200d ahead; a start can be at most 90d ahead"),
        ("2025-01-01T00:00", "can be at most 90d ahead"),
        ("in soon", "`soon` is not a duration"),
        ("2024-04-02", "has no time of day"),
        ("2024-13-02T04:00", "is not an ISO 8601 time"),
        ("tomorrow 25:00", "cannot read"),
        ("someday 04:00", "cannot read `someday` as a day"),
        ("tomorrow 04:00 Mars/Olympus", "no time zone `Mars/Olympus`"),
        ("tomorrow 04:00 Europe/Atlantis", "no time zone `Europe/Atlantis`"),
        ("", "missing start time"),
    ],
)
def test_refusals_say_why(text, message):
    with pytest.raises(UserError) as e:
        parse_when(text, now=SAT, team_zone="UTC")
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("0s", "at least 5m"), ("2m", "at least 5m"), ("25h", "at most 1d"), ("soon", "is not a window duration"),
     ("-5m", "at least 5m")],
)
def test_window_durations_out_of_range_are_refused(text, message):
    with pytest.raises(UserError, match=message):
        parse_duration(text, minimum=timedelta(minutes=5), maximum=timedelta(hours=24), what="window duration")


def test_times_are_shown_in_utc_and_the_team_zone():
    at = u(2024, 5, 2, 4, 0)
    assert both(at, "UTC") == "2024-05-02 04:00 UTC"
    assert both(at, "Europe/Berlin") == "2024-05-02 04:00 UTC (06:00 CEST, Europe/Berlin)"
    assert both(u(2024, 5, 2, 23, 0), "Europe/Berlin") == "2024-05-02 23:00 UTC (2024-05-03 01:00 CEST, Europe/Berlin)"
