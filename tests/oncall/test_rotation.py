"""Rotation arithmetic (pure): hand-offs, time zones, DST changes, nonexistent and ambiguous local
hand-off times, before the anchor, overrides. Table-driven, plus invariants on random input."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.oncall import Override, Rotation, who
from config.settings import RotationConfig

A, B, C = 100000000000000001, 100000000000000002, 100000000000000003
NAMES = {A: "A", B: "B", C: "C"}


def rot(zone: str, period: str, handoff: str, start: date, members=(A, B, C)) -> Rotation:
    cfg = RotationConfig(members=[{"id": m, "name": NAMES[m]} for m in members], period=period,
                         handoff=handoff, timezone=zone, start=start)
    return Rotation("primary", cfg)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


BERLIN_DAILY = rot("Europe/Berlin", "daily", "09:00", date(2024, 3, 29))
BERLIN_FALL = rot("Europe/Berlin", "daily", "09:00", date(2024, 10, 25))
NY_WEEKLY = rot("America/New_York", "weekly", "09:00", date(2024, 1, 1))
BERLIN_GAP = rot("Europe/Berlin", "daily", "02:30", date(2024, 3, 30))
NY_GAP = rot("America/New_York", "daily", "02:30", date(2024, 3, 9))
BERLIN_TWICE = rot("Europe/Berlin", "daily", "02:30", date(2024, 10, 26))
NY_TWICE = rot("America/New_York", "daily", "01:30", date(2024, 11, 2))
UTC_ALONE = rot("UTC", "weekly", "09:00", date(2024, 1, 1), members=(A,))

# (case, rotation, at, on call, since, until, next)
BASE = [
    ("Berlin: last minute of a 23h shift (spring forward)", BERLIN_DAILY, utc(2024, 3, 31, 6, 59),
     B, utc(2024, 3, 30, 8), utc(2024, 3, 31, 7), C),
    ("Berlin: 09:00 CEST is the hand-off after the change", BERLIN_DAILY, utc(2024, 3, 31, 7),
     C, utc(2024, 3, 31, 7), utc(2024, 4, 1, 7), A),
    ("before the anchor the order runs backwards", BERLIN_DAILY, utc(2024, 3, 29, 7, 59),
     C, utc(2024, 3, 28, 8), utc(2024, 3, 29, 8), A),
    ("Berlin: a 25h shift (fall back)", BERLIN_FALL, utc(2024, 10, 27, 7, 30),
     B, utc(2024, 10, 26, 7), utc(2024, 10, 27, 8), C),
    ("New York weekly across spring forward: 09:00 EST -> 09:00 EDT", NY_WEEKLY, utc(2024, 3, 11, 12, 59),
     A, utc(2024, 3, 4, 14), utc(2024, 3, 11, 13), B),
    ("New York weekly across fall back: 09:00 EDT -> 09:00 EST", NY_WEEKLY, utc(2024, 11, 4, 13, 30),
     B, utc(2024, 10, 28, 13), utc(2024, 11, 4, 14), C),
    ("Berlin: 02:30 does not exist on Mar 31; the hand-off is at 03:30 CEST", BERLIN_GAP,
     utc(2024, 3, 31, 1, 29), A, utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1, 30), B),
    ("Berlin: the shift after the gap is 23h", BERLIN_GAP, utc(2024, 3, 31, 1, 30),
     B, utc(2024, 3, 31, 1, 30), utc(2024, 4, 1, 0, 30), C),
    ("New York: 02:30 does not exist on Mar 10; the hand-off is at 03:30 EDT", NY_GAP, utc(2024, 3, 10, 7, 30),
     B, utc(2024, 3, 10, 7, 30), utc(2024, 3, 11, 6, 30), C),
    ("Berlin: 02:30 happens twice on Oct 27; the first one counts", BERLIN_TWICE, utc(2024, 10, 27, 0, 29),
     A, utc(2024, 10, 26, 0, 30), utc(2024, 10, 27, 0, 30), B),
    ("Berlin: the second 02:30 is no hand-off", BERLIN_TWICE, utc(2024, 10, 27, 1, 30),
     B, utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30), C),
    ("New York: 01:30 happens twice on Nov 3; the first one (EDT) counts", NY_TWICE, utc(2024, 11, 3, 5, 30),
     B, utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30), C),
    ("a one-person rotation: the shift's bounds, and the same person next", UTC_ALONE, utc(2024, 1, 3, 12),
     A, utc(2024, 1, 1, 9), utc(2024, 1, 8, 9), A),
]


@pytest.mark.parametrize(("case", "rotation", "at", "user", "since", "until", "nxt"), BASE, ids=[c[0] for c in BASE])
def test_who_is_on_call(case, rotation, at, user, since, until, nxt):
    slot = who(rotation, at)
    assert (slot.user_id, slot.since, slot.until, slot.next_user_id) == (user, since, until, nxt)
    assert slot.next_handoff == slot.until and not slot.via_override and slot.override is None
    assert slot.user_name == NAMES[user] and slot.next_user_name == NAMES[nxt]
    assert slot.timezone == rotation.timezone


@pytest.mark.parametrize("rotation", [BERLIN_DAILY, NY_WEEKLY, BERLIN_GAP, NY_TWICE], ids=repr)
def test_hand_offs_keep_their_local_time_all_year(rotation):
    expected = rotation.config.handoff
    previous = None
    for k in range(-10, 400):
        start = rotation.shift_start(k)
        local = rotation.local(start).time()
        # Only a hand-off inside a DST gap moves (by the gap); every other one keeps its wall time.
        assert local == expected or local == (datetime.combine(date(2000, 1, 1), expected) + timedelta(hours=1)).time()
        if previous is not None:
            assert timedelta(hours=22) < start - previous
        assert rotation.shift_index(start) == k and rotation.shift_index(start - timedelta(microseconds=1)) == k - 1
        previous = start


_ids = count(1)


def ov(user: int, start: datetime, end: datetime, order: int = 0) -> Override:
    return Override(id=next(_ids), rotation="primary", user_id=user, user_name=NAMES[user], starts_at=start,
                    ends_at=end, created_at=utc(2024, 4, 1) + timedelta(minutes=order))


# Europe/Berlin daily at 09:00 CEST (07:00 UTC) from May 1: A on May 1, B on May 2, C on May 3.
MAY = rot("Europe/Berlin", "daily", "09:00", date(2024, 5, 1))
O1 = ov(B, utc(2024, 5, 1, 8), utc(2024, 5, 1, 12))
O2 = ov(C, utc(2024, 5, 1, 10), utc(2024, 5, 1, 11), order=1)  # created after O1: wins where they overlap
O3 = ov(A, utc(2024, 5, 2, 6), utc(2024, 5, 2, 8))  # A stays an hour past the hand-off
O4 = ov(A, utc(2024, 5, 1, 13), utc(2024, 5, 1, 14))  # A while A is scheduled anyway
OTHER = Override(id=999, rotation="secondary", user_id=C, starts_at=utc(2024, 5, 1), ends_at=utc(2024, 5, 9),
                 created_at=utc(2024, 4, 1))

# (case, overrides, at, on call, via override, since, until, next)
OVERRIDES = [
    ("before an override: it ends A's stint early", [O1], utc(2024, 5, 1, 7, 30),
     A, None, utc(2024, 5, 1, 7), utc(2024, 5, 1, 8), B),
    ("during an override", [O1], utc(2024, 5, 1, 9), B, O1, utc(2024, 5, 1, 8), utc(2024, 5, 1, 12), A),
    ("after it, back to the schedule", [O1], utc(2024, 5, 1, 12), A, None, utc(2024, 5, 1, 12), utc(2024, 5, 2, 7), B),
    ("the newer of two overlapping overrides wins", [O1, O2], utc(2024, 5, 1, 10, 30),
     C, O2, utc(2024, 5, 1, 10), utc(2024, 5, 1, 11), B),
    ("the older one shows again where the newer ends", [O2, O1], utc(2024, 5, 1, 11),
     B, O1, utc(2024, 5, 1, 11), utc(2024, 5, 1, 12), A),
    ("an override across the hand-off extends the stint", [O1, O3], utc(2024, 5, 2, 7, 30),
     A, O3, utc(2024, 5, 1, 12), utc(2024, 5, 2, 8), B),
    ("an override for the scheduled person changes nothing but the flag", [O4], utc(2024, 5, 1, 13, 30),
     A, O4, utc(2024, 5, 1, 7), utc(2024, 5, 2, 7), B),
    ("another rotation's overrides are ignored", [OTHER], utc(2024, 5, 2, 12), B, None,
     utc(2024, 5, 2, 7), utc(2024, 5, 3, 7), C),
    ("an override that ended is history", [O1], utc(2024, 5, 2, 12), B, None, utc(2024, 5, 2, 7), utc(2024, 5, 3, 7), C),
]


@pytest.mark.parametrize(("case", "overrides", "at", "user", "via", "since", "until", "nxt"), OVERRIDES,
                         ids=[c[0] for c in OVERRIDES])
def test_who_with_overrides(case, overrides, at, user, via, since, until, nxt):
    slot = who(MAY, at, overrides)
    assert (slot.user_id, slot.override, slot.since, slot.until, slot.next_user_id) == (user, via, since, until, nxt)
    assert slot.via_override is (via is not None)


def test_naive_times_are_refused():
    with pytest.raises(ValueError, match="naive"):
        who(MAY, datetime(2024, 5, 1, 12))


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
MEMBERS = [A, B, C]
T_MIN, T_MAX = utc(2023, 1, 1), utc(2026, 1, 1)


@st.composite
def scenarios(draw):
    members = draw(st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=4))
    cfg = RotationConfig(members=members, period=draw(st.sampled_from(["daily", "weekly"])),
                         handoff=f"{draw(st.integers(0, 23)):02d}:{draw(st.sampled_from([0, 15, 30, 45])):02d}",
                         timezone=draw(st.sampled_from(ZONES)), start=draw(st.dates(date(2023, 6, 1), date(2025, 6, 1))))
    at = draw(st.datetimes(T_MIN.replace(tzinfo=None), T_MAX.replace(tzinfo=None))).replace(tzinfo=UTC)
    overrides = []
    for i in range(draw(st.integers(0, 4))):
        start = at + timedelta(minutes=draw(st.integers(-3 * 24 * 60, 3 * 24 * 60)))
        length = timedelta(minutes=draw(st.integers(1, 3 * 24 * 60)))
        overrides.append(Override(id=i + 1, rotation="r", user_id=draw(st.sampled_from(MEMBERS)), starts_at=start,
                                  ends_at=start + length, created_at=T_MIN + timedelta(minutes=draw(st.integers(0, 9)))))
    return Rotation("r", cfg), at, overrides


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_slot_invariants(scenario):
    rotation, at, overrides = scenario
    slot = who(rotation, at, overrides)
    assert slot.since <= at < slot.until
    assert who(rotation, slot.since, overrides).user_id == slot.user_id
    assert who(rotation, slot.until - timedelta(microseconds=1), overrides).user_id == slot.user_id
    assert who(rotation, slot.until, overrides).user_id == slot.next_user_id
    if slot.next_user_id != slot.user_id:
        # `until` is the first change after `at`; `since` the last one before it (unless it never changed).
        before = who(rotation, slot.since - timedelta(microseconds=1), overrides).user_id
        assert before != slot.user_id or slot.since == rotation.shift_start(rotation.shift_index(at))
