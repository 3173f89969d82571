"""response_stats on a fixed table: window, mean/p90 TTA and TTR, per severity and service, ackers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from alerts.stats import Durations, response_stats


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, minute, tzinfo=UTC) if day else datetime(2024, 4, 30, 23, 59, tzinfo=UTC)


def m(minutes: float) -> timedelta:
    return timedelta(minutes=minutes)


@dataclass
class View:
    """Like the alerts store's IncidentView: `opened_at`, extra fields."""

    id: int
    severity: str | None
    service: str | None
    opened_at: datetime
    acked_at: datetime | None
    acked_by: str | int | None
    resolved_at: datetime | None
    title: str = "x"


def row(id, severity, service, created, ack_after, acked_by, resolve_after):
    return View(id, severity, service, created,
                None if ack_after is None else created + m(ack_after), acked_by,
                None if resolve_after is None else created + m(resolve_after))


ROWS = [
    row(1, "critical", "chat", at(1, 10), 2, "alice", 30),
    row(2, "critical", "chat", at(2, 10), 4, "bob", 60),
    row(3, "critical", "auth", at(3, 10), 10, "alice", None),
    row(4, "warning", "chat", at(3, 12), None, None, 20),
    row(5, "warning", "auth", at(4, 12), 1, "alice", 5),
    row(6, "info", None, at(5, 12), None, None, None),
    row(7, "critical", "chat", at(0, 0), 1, "bob", 2),  # before the window
    row(8, "warning", "chat", at(8, 0), 1, "bob", 2),  # at its end: outside
    row(9, "error", "strims", at(6, 0), -1, 808849716020558253, 3),  # acked "before" it opened: skew, counts 0
]
SINCE, UNTIL = at(1, 0), at(8, 0)


def test_the_fixed_table():
    s = response_stats(ROWS, SINCE, UNTIL)
    t = s.total
    assert (s.count, t.count, t.acked, t.resolved, t.unacked_open) == (7, 7, 5, 5, 1)
    assert t.tta == Durations(count=5, mean=m(3.4), p90=m(10))
    assert t.ttr == Durations(count=5, mean=m(23.6), p90=m(60))

    sev = {g.key: g for g in s.by_severity}
    assert list(sev) == ["critical", "error", "warning", "info"]
    assert (sev["critical"].count, sev["critical"].tta, sev["critical"].ttr) == (
        3, Durations(count=3, mean=m(16 / 3), p90=m(10)), Durations(count=2, mean=m(45), p90=m(60)))
    assert sev["error"].tta == Durations(count=1, mean=m(0), p90=m(0))
    assert (sev["warning"].acked, sev["warning"].ttr) == (1, Durations(count=2, mean=m(12.5), p90=m(20)))
    assert (sev["info"].count, sev["info"].acked, sev["info"].tta, sev["info"].unacked_open) == (
        1, 0, Durations(count=0, mean=None, p90=None), 1)

    assert [(g.key, g.count) for g in s.by_service] == [("chat", 3), ("auth", 2), ("strims", 1), ("unknown", 1)]
    assert [(a.name, a.count) for a in s.top_ackers] == [("alice", 3), ("808849716020558253", 1), ("bob", 1)]


def test_until_cuts_off_later_acknowledgements():
    s = response_stats(ROWS, SINCE, at(3, 10, 5))
    assert (s.count, s.total.acked, s.total.resolved, s.total.unacked_open) == (3, 2, 2, 1)
    assert [(a.name, a.count) for a in s.top_ackers] == [("alice", 1), ("bob", 1)]


def test_rows_as_dicts_and_an_open_end():
    dicts = [{"id": 1, "severity": "critical", "service": "chat", "created_at": at(1, 10),
              "acked_at": at(1, 10, 3), "acked_by": "alice", "resolved_at": None, "extra": "ignored"}]
    s = response_stats(dicts, SINCE)
    assert (s.until, s.total.tta.mean, s.total.ttr.count) == (None, m(3), 0)


@pytest.mark.parametrize(
    ("values", "p90"),
    [([1], 1), ([1, 2], 2), (list(range(1, 11)), 9), (list(range(1, 12)), 10), (list(range(1, 21)), 18)],
)
def test_p90_is_nearest_rank(values, p90):
    assert Durations.of([m(v) for v in reversed(values)]).p90 == m(p90)


def test_empty_window():
    s = response_stats([], SINCE)
    assert (s.count, s.by_severity, s.by_service, s.top_ackers, s.total.tta.mean) == (0, [], [], [], None)


def test_naive_times_are_refused():
    with pytest.raises(ValueError, match="naive"):
        response_stats([], datetime(2024, 5, 1))
