"""Incident lifecycle by hand: notes in the timeline, resolving in the bot, response stats."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from commands.catalog import UserError
from tests.alerts.conftest import T0, alert, close_harness, open_harness, payload
from tests.support.clock import FakeClock


async def test_a_note_goes_into_the_timeline_and_the_thread(tmp_path: Path) -> None:
    h = await open_harness(tmp_path)
    try:
        await h.post(payload([alert("DiskFull")]))
        await h.service.wait_idle(10)
        view = await h.service.note(1, "oncall", "  restarted the pods\nwatching  ")
        assert view.id == 1
        await h.service.wait_idle(10)
        [m] = h.notifier.messages.values()
        assert any("note by oncall: restarted the pods\nwatching" in post for post in m.thread)
        timeline = (await h.service.incident(1)).timeline
        assert [(t.kind, t.text) for t in timeline][-1] == ("note", "note by oncall: restarted the pods\nwatching")
        assert m.edits == 0, "a note does not touch the message"
    finally:
        await close_harness(h)


async def test_notes_are_checked(tmp_path: Path) -> None:
    h = await open_harness(tmp_path)
    try:
        await h.post(payload([alert()]))
        with pytest.raises(UserError, match="needs some text"):
            await h.service.note(1, "oncall", "   ")
        with pytest.raises(UserError, match="at most 900"):
            await h.service.note(1, "oncall", "x" * 901)
        with pytest.raises(UserError, match="no incident #7"):
            await h.service.note(7, "oncall", "hello")
        # A closed incident still takes notes (what was found afterwards).
        await h.service.resolve(1, 5, "oncall")
        await h.service.note(1, "oncall", "root cause: a full disk")
        assert (await h.service.incident(1)).timeline[-1].kind == "note"
    finally:
        await close_harness(h)


async def test_resolve_by_hand_closes_it_in_the_bot_only(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    h = await open_harness(tmp_path, clock=clock)
    try:
        await h.post(payload([alert("Down", instance="a"), alert("Down", instance="b")]))
        await h.service.wait_idle(10)
        clock.advance(minutes=12)
        view, firing = await h.service.resolve(1, 42, "oncall")
        assert firing == 2
        assert (view.open, view.status, view.resolved_at, view.firing) == (False, "resolved", clock.now, 0)
        await h.service.wait_idle(10)
        [m] = h.notifier.messages.values()
        assert m.colour == 0x2ECC71 and "resolved after 12m" in m.message.content
        assert "opsbot:ack:1" not in m.custom_ids
        entry = (await h.service.incident(1)).timeline[-1]
        assert entry.kind == "resolved_by_hand"
        assert entry.text == ("resolved by hand in opsbot by oncall after 12m while Alertmanager had 2 alerts "
                              "firing; Alertmanager may still be firing")
        with pytest.raises(UserError, match="resolved already"):
            await h.service.resolve(1, 42, "oncall")
        with pytest.raises(UserError, match="resolved already"):
            await h.service.ack(1, 42, "oncall")

        # Alertmanager repeating the same firing alerts changes nothing (duplicates) ...
        await h.post(payload([alert("Down", instance="a"), alert("Down", instance="b")]))
        assert [i.id for i in await h.service.incidents(open_only=False)] == [1]
        # ... their later resolution keeps it closed ...
        clock.advance(minutes=5)
        gone = clock.now
        await h.post(payload([alert("Down", instance="a", status="resolved", ends=gone),
                              alert("Down", instance="b", status="resolved", ends=gone)]))
        closed = await h.service.incident(1)
        assert (closed.open, closed.status) == (False, "resolved")
        # ... and an alert firing anew in the group opens a new incident.
        await h.post(payload([alert("Down", instance="a", starts=gone + timedelta(minutes=1))]))
        assert [(i.id, i.open) for i in await h.service.incidents(open_only=False)] == [(2, True), (1, False)]
    finally:
        await close_harness(h)


async def test_response_stats_from_the_store(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    h = await open_harness(tmp_path, clock=clock)
    try:
        # Three incidents opened at T0: acked after 2m and 4m, one resolved by hand after 10m.
        await h.post(payload([alert("A", severity="critical", service="chat")], group="a"))
        await h.post(payload([alert("B", severity="critical", service="auth")], group="b"))
        await h.post(payload([alert("C", severity="warning", service="chat")], group="c"))
        clock.advance(minutes=2)
        await h.service.ack(1, 1, "oncall")
        clock.advance(minutes=2)
        await h.service.ack(2, 1, "oncall")
        clock.advance(minutes=6)
        await h.service.resolve(1, 1, "oncall")
        # One older than the period: not counted.
        await h.post(payload([alert("Old", starts=T0 - timedelta(days=9))], group="old"))

        stats = await h.service.stats(timedelta(days=7))
        assert stats.count == 3
        assert (stats.total.acked, stats.total.resolved, stats.total.unacked_open) == (2, 1, 1)
        assert stats.total.tta.mean == timedelta(minutes=3) and stats.total.tta.p90 == timedelta(minutes=4)
        assert stats.total.ttr.mean == timedelta(minutes=10)
        assert [(g.key, g.count) for g in stats.by_severity] == [("critical", 2), ("warning", 1)]
        assert [(g.key, g.count) for g in stats.by_service] == [("chat", 2), ("auth", 1)]
        assert [(a.name, a.count) for a in stats.top_ackers] == [("oncall", 2)]
        assert (await h.service.stats(timedelta(days=30))).count == 4
    finally:
        await close_harness(h)
