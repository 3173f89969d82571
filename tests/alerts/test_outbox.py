"""The outbox under faults: failing chat, restarts mid-storm, coalescing, priorities, pacing."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from alerts.notify import MessageGone, SendError
from alerts.outbox import RateLimiter
from tests.alerts.conftest import (
    T0,
    RecordingNotifier,
    alert,
    close_harness,
    make_db,
    open_harness,
    payload,
)


def storm(groups: int = 50, per_group: int = 20, *, status: str = "firing") -> list[dict[str, Any]]:
    """Webhook payloads: ``groups`` groups, each growing in 4 deliveries to ``per_group`` alerts."""
    bodies = []
    step = max(per_group // 4, 1)
    for upto in range(step, per_group + 1, step):
        for g in range(groups):
            severity = "critical" if g % 10 == 0 else "warning"
            alerts = [alert("Storm", instance=f"g{g}-i{i}", severity=severity, service=f"svc{g}", status=status,
                            ends=T0.replace(minute=30) if status == "resolved" else None)
                      for i in range(upto)]
            bodies.append(payload(alerts, group=f"g{g}"))
    return bodies


def accounted(notifier: RecordingNotifier) -> set[str]:
    """Every alert instance the latest messages show, in fields or in the attached JSON."""
    seen: set[str] = set()
    for m in notifier.messages.values():
        for e in m.embeds:
            for f in e.get("fields", []):
                for word in f["name"].split():
                    if word.startswith("instance="):
                        seen.add(word.removeprefix("instance="))
        for _, data in m.message.files:
            seen.update(a["labels"]["instance"] for a in json.loads(data)["alerts"])
    return seen


async def test_notifier_failing_for_a_while_then_everything_arrives_once(tmp_path: Path) -> None:
    notifier = RecordingNotifier()
    notifier.fail(25)
    h = await open_harness(tmp_path, notifier)
    try:
        for body in storm(groups=10, per_group=8):
            assert (await h.post(body))[0] == 200
        await h.service.wait_idle(30)
        assert len(notifier.messages) == 10  # one message per group, no duplicates
        assert notifier.count("send") == 10
        assert h.service.outbox.stats["failed"] == 25
        assert len(accounted(notifier)) == 80
        assert all("8 firing" in m.text for m in notifier.messages.values())
    finally:
        await close_harness(h)


async def test_retry_after_is_honoured_and_pauses_the_channel(tmp_path: Path) -> None:
    notifier = RecordingNotifier()
    notifier.fail(1, retry_after=0.4)
    h = await open_harness(tmp_path, notifier)
    try:
        started = time.monotonic()
        await h.post(payload([alert()], group="a"))
        await h.post(payload([alert()], group="b"))
        await h.service.wait_idle(10)
        assert time.monotonic() - started >= 0.4
        assert len(notifier.messages) == 2
    finally:
        await close_harness(h)


async def test_a_non_retryable_error_gives_up_on_that_version_only(tmp_path: Path) -> None:
    notifier = RecordingNotifier()
    notifier.fail(1, retryable=False)
    h = await open_harness(tmp_path, notifier)
    try:
        await h.post(payload([alert(instance="a")]))
        await h.service.wait_idle(10)
        assert notifier.messages == {}
        # The next change is tried again.
        await h.post(payload([alert(instance="a"), alert(instance="b")]))
        await h.service.wait_idle(10)
        [m] = notifier.messages.values()
        assert "2 firing" in m.text
    finally:
        await close_harness(h)


async def test_a_deleted_message_is_posted_again(tmp_path: Path) -> None:
    h = await open_harness(tmp_path)
    try:
        await h.post(payload([alert(instance="a")]))
        await h.service.wait_idle(10)
        h.notifier.messages.clear()  # someone deleted it
        await h.post(payload([alert(instance="a"), alert(instance="b")]))
        await h.service.wait_idle(10)
        [m] = h.notifier.messages.values()
        assert "2 firing" in m.text
        assert (await h.service.incident(1)).message_id == m.id
    finally:
        await close_harness(h)


async def test_other_exceptions_are_retried(tmp_path: Path) -> None:
    notifier = RecordingNotifier()
    notifier.fail_with(RuntimeError("boom"), 3)
    h = await open_harness(tmp_path, notifier)
    try:
        await h.post(payload([alert()]))
        await h.service.wait_idle(10)
        assert len(notifier.messages) == 1
    finally:
        await close_harness(h)


async def test_updates_coalesce_while_the_channel_is_busy(tmp_path: Path) -> None:
    notifier = RecordingNotifier()
    notifier.gate = asyncio.Event()
    h = await open_harness(tmp_path, notifier)
    try:
        await h.post(payload([alert(instance="0")]))
        await notifier.wait_for(lambda: notifier.waiting == 1)  # the create is in flight, held
        await asyncio.gather(*(h.post(payload([alert(instance=str(j)) for j in range(i + 1)])) for i in range(1, 30)))
        notifier.gate.set()
        await h.service.wait_idle(20)
        [m] = notifier.messages.values()
        assert "30 firing" in m.text
        assert m.edits == 1  # 29 changes became one edit
    finally:
        await close_harness(h)


async def test_critical_first(tmp_path: Path) -> None:
    notifier = RecordingNotifier(delay=0.05)
    h = await open_harness(tmp_path, notifier)
    await h.service.outbox.stop()  # queue everything first
    try:
        await h.post(payload([alert("Info", severity="info")], group="i"))
        await h.post(payload([alert("Warn", severity="warning")], group="w"))
        await h.post(payload([alert("Crit", severity="critical")], group="c"))
        await h.post(payload([alert("Odd", severity="whatever")], group="o"))
        await h.service.outbox.start()
        await h.service.wait_idle(10)
        order = [notifier.messages[c[2]].title.split()[2] for c in notifier.calls if c[0] == "send"]
        assert order == ["Crit", "Warn", "Info", "Odd"]
    finally:
        await close_harness(h)


async def test_storm_one_message_per_group_every_alert_accounted_for(tmp_path: Path) -> None:
    h = await open_harness(tmp_path)
    try:
        bodies = storm(groups=50, per_group=20)
        results = await asyncio.gather(*(h.post(b) for b in bodies))
        assert all(code == 200 for code, _ in results)
        await h.service.wait_idle(60)
        assert len(h.notifier.messages) == 50
        assert Counter(m.channel for m in h.notifier.messages.values()) == {"alerts": 50}
        assert accounted(h.notifier) == {f"g{g}-i{i}" for g in range(50) for i in range(20)}
        incidents = await h.service.incidents(limit=100)
        assert len(incidents) == 50 and all(i.firing == 20 for i in incidents)
        # Resolve everything: every message turns green, still one per group.
        for b in storm(groups=50, per_group=20, status="resolved")[-50:]:
            assert (await h.post(b))[0] == 200
        await h.service.wait_idle(60)
        assert len(h.notifier.messages) == 50
        assert all(m.colour == 0x2ECC71 for m in h.notifier.messages.values())
    finally:
        await close_harness(h)


async def test_stopped_mid_storm_and_restarted_loses_nothing_doubles_nothing(tmp_path: Path) -> None:
    notifier = RecordingNotifier(delay=0.01)
    db = make_db(tmp_path)
    h = await open_harness(tmp_path, notifier, db=db, send_rate_operations=1, send_rate_seconds=1)
    bodies = storm(groups=30, per_group=12)
    half = len(bodies) // 2
    for b in bodies[:half]:
        assert (await h.post(b))[0] == 200
    sent_before = notifier.count("send")
    assert 0 < sent_before < 30  # mid-storm: some groups have a message, some don't
    await close_harness(h, dispose=False)

    h2 = await open_harness(tmp_path, notifier, db=db, send_rate_operations=1000, send_rate_seconds=1)
    try:
        for b in bodies[half:]:
            assert (await h2.post(b))[0] == 200
        for b in bodies:  # Alertmanager retries what it never heard back about: duplicates
            assert (await h2.post(b))[1]["duplicate"] is True
        await h2.service.wait_idle(60)
        assert notifier.count("send") == 30 and len(notifier.messages) == 30
        assert len(accounted(notifier)) == 30 * 12
    finally:
        await close_harness(h2)


async def test_a_create_cut_off_by_a_crash_is_retried_with_the_same_nonce(tmp_path: Path) -> None:
    class Crashing(RecordingNotifier):
        def __init__(self) -> None:
            super().__init__()
            self.nonces: list[str | None] = []
            self.crash = True

        async def send(self, channel, message):  # type: ignore[no-untyped-def]
            self.nonces.append(message.nonce)
            if self.crash:
                self.crash = False
                raise asyncio.CancelledError  # the process dies while Discord holds the request
            return await super().send(channel, message)

    notifier = Crashing()
    db = make_db(tmp_path)
    h = await open_harness(tmp_path, notifier, db=db)
    await h.post(payload([alert()]))
    for _ in range(50):
        if notifier.nonces:
            break
        await asyncio.sleep(0.02)
    await close_harness(h, dispose=False)
    h2 = await open_harness(tmp_path, notifier, db=db)
    try:
        await h2.service.wait_idle(10)
        assert len(notifier.messages) == 1
        assert notifier.nonces[0] == notifier.nonces[1] and notifier.nonces[0]
    finally:
        await close_harness(h2)


async def test_pacing_per_channel(tmp_path: Path) -> None:
    notifier = RecordingNotifier()
    h = await open_harness(tmp_path, notifier, send_rate_operations=5, send_rate_seconds=1.0)
    try:
        started = time.monotonic()
        for g in range(12):
            await h.post(payload([alert(instance=str(g))], group=f"g{g}"))
        await h.service.wait_idle(20)
        took = time.monotonic() - started
        # 5 in any second: 12 sends need at least 2 s.
        assert took >= 1.9
        assert len(notifier.messages) == 12
        t = notifier.times
        assert all(sum(1 for x in t if s <= x < s + 0.95) <= 5 for s in t)  # completion jitter
    finally:
        await close_harness(h)


def test_rate_limiter_allows_n_in_any_window() -> None:
    now = [0.0]
    r = RateLimiter(5, 5.0, clock=lambda: now[0])
    starts = []
    for _ in range(12):
        now[0] += r.delay()
        r.take()
        starts.append(now[0])
    window = 5.0 * 1.02 + 0.05  # with the slack for requests arriving late
    assert starts[:5] == [0.0] * 5
    assert starts[5:10] == [pytest.approx(window)] * 5 and starts[10:] == [pytest.approx(2 * window)] * 2
    # Never more than 5 in any 5-second window (what Discord counts).
    assert all(sum(1 for t in starts if s <= t < s + 5.0) <= 5 for s in starts)


async def test_timeline_goes_to_the_thread_in_batches(tmp_path: Path) -> None:
    h = await open_harness(tmp_path)
    try:
        await h.post(payload([alert(instance="a")]))
        await h.service.wait_idle(10)
        [m] = h.notifier.messages.values()
        assert m.thread == []  # only "fired": no thread yet
        await h.service.ack(1, 7, "oncall")
        await h.service.unack(1, 7, "oncall")
        await h.post(payload([alert(instance="a"), alert(instance="b")]))
        await h.post(payload([alert(instance="a", status="resolved", ends=T0.replace(minute=12)),
                              alert(instance="b", status="resolved", ends=T0.replace(minute=12))]))
        await h.service.wait_idle(10)
        text = "\n".join(m.thread)
        for needle in ("fired: HighLatency", "acknowledged by oncall", "unacknowledged by oncall (was oncall)",
                       "joined: HighLatency instance=b", "resolved: 2 alerts", "all resolved after 12m"):
            assert needle in text
        assert h.notifier.count("thread") <= 3
    finally:
        await close_harness(h)


async def test_sends_to_a_missing_thread_message_recreate(tmp_path: Path) -> None:
    notifier = RecordingNotifier()
    h = await open_harness(tmp_path, notifier)
    try:
        await h.post(payload([alert(instance="a")]))
        await h.service.wait_idle(10)
        notifier.fail_with(MessageGone(), 1)
        await h.service.ack(1, 7, "oncall")
        await h.service.wait_idle(10)
        assert len(notifier.messages) == 2  # the edit found no message: a new one
        assert (await h.service.incident(1)).acked_by == "oncall"
    finally:
        await close_harness(h)


async def test_notices_are_retried(tmp_path: Path) -> None:
    notifier = RecordingNotifier()
    notifier.fail(2)
    h = await open_harness(tmp_path, notifier)
    try:
        await h.service._notice("hello ops")
        await h.service.wait_idle(10)
        assert notifier.notices == [("ops", "hello ops")]
    finally:
        await close_harness(h)


class LookingNotifier(RecordingNotifier):
    """Can look at a channel's recent posts (FindsRecent); ``blind`` lookups fail first, as when
    a new leader's Discord session is not ready yet."""

    def __init__(self) -> None:
        super().__init__()
        self.blind = 0
        self.lookups = 0

    async def find_recent(self, channel: str, *, content: str | None = None, contains: str | None = None,
                          with_embeds: bool = False, limit: int = 50, thread_of: str | None = None) -> str | None:
        self.lookups += 1
        if self.blind:
            self.blind -= 1
            raise SendError("the Discord session is not ready yet", retry_after=0.05)
        if thread_of is not None:
            parent = self.messages.get(thread_of)
            return "2" if parent is not None and content in parent.thread[-limit:] else None
        return "1" if (channel, content) in self.notices[-limit:] else None


async def _notice_interrupted_by_a_crash(h: Any, text: str) -> None:
    """The notice's try was counted, then the process died (no outcome recorded)."""
    def half_done() -> None:
        h.service.store.add_notice("ops", text)
        [work] = [h.service.store.next_work("ops")[0]]
        h.service.store.notice_started(work.notice_id)
    await h.db.run(half_done)
    h.service.outbox.wake(["ops"])
    await h.service.wait_idle(10)


async def test_an_interrupted_notice_waits_until_chat_can_be_looked_at(tmp_path: Path) -> None:
    notifier = LookingNotifier()
    notifier.notices.append(("ops", "the window has begun"))  # the dead process's post reached chat
    notifier.blind = 3  # a new leader, its session not ready yet
    h = await open_harness(tmp_path, notifier)
    try:
        await _notice_interrupted_by_a_crash(h, "the window has begun")
        assert notifier.notices == [("ops", "the window has begun")], "posted twice"
        assert notifier.lookups == 4 and h.service.outbox.stats["adopted"] == 1
    finally:
        await close_harness(h)


async def test_a_notice_whose_outcome_is_unknown_is_looked_for_before_the_retry(tmp_path: Path) -> None:
    notifier = LookingNotifier()
    # Not chat's answer (say a timeout after the post went through): the next try must look.
    notifier.fail_with(TimeoutError("timed out"), 1)
    h = await open_harness(tmp_path, notifier)
    try:
        await h.service._notice("hello ops")
        await notifier.wait_for(lambda: notifier.lookups >= 1, timeout=10)
        await h.service.wait_idle(10)
        assert notifier.notices == [("ops", "hello ops")]
    finally:
        await close_harness(h)


class ThreadPostsTimingOut(LookingNotifier):
    """A thread post goes through, then the answer times out (``timeouts`` times)."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts = 1

    async def thread_post(self, channel: str, message_id: str, thread_name: str, text: str, *,
                          files: Any = ()) -> str:
        thread_id = await super().thread_post(channel, message_id, thread_name, text, files=files)
        if self.timeouts:
            self.timeouts -= 1
            raise TimeoutError("timed out waiting for chat's answer")
        return thread_id


async def test_a_timeline_post_whose_outcome_is_unknown_is_looked_for_before_the_retry(tmp_path: Path) -> None:
    notifier = ThreadPostsTimingOut()
    h = await open_harness(tmp_path, notifier)
    try:
        await h.post(payload([alert(instance="a")]))
        await h.service.wait_idle(10)
        await h.service.ack(1, 7, "oncall")  # a second timeline entry: the thread opens
        await notifier.wait_for(lambda: notifier.lookups >= 1, timeout=10)
        await h.service.wait_idle(10)
        [m] = notifier.messages.values()
        assert len(m.thread) == 1 and "acknowledged by oncall" in m.thread[0], m.thread
        assert h.service.outbox.stats["adopted"] == 1
    finally:
        await close_harness(h)


async def test_the_database_failing_under_a_sender_does_not_kill_it(tmp_path: Path) -> None:
    h = await open_harness(tmp_path)
    try:
        real = h.service.store.next_work
        calls = {"n": 0}

        def flaky(channel: str):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] <= 2:
                raise SendError("db down")  # any exception
            return real(channel)

        h.service.store.next_work = flaky  # type: ignore[method-assign]
        await h.post(payload([alert()]))
        await h.service.wait_idle(15)
        assert len(h.notifier.messages) == 1
    finally:
        await close_harness(h)


async def test_a_burst_of_timeline_entries_becomes_one_post(tmp_path: Path) -> None:
    h = await open_harness(tmp_path, timeline_delay_seconds=2)
    try:
        started = time.monotonic()
        await h.post(payload([alert(instance="a")]))
        await h.post(payload([alert(instance="a"), alert(instance="b")]))
        await h.service.ack(1, 7, "oncall")
        await h.post(payload([alert(instance="a"), alert(instance="b"), alert(instance="c")]))
        assert time.monotonic() - started < 1.5, "too slow for this test's timing"
        await h.service.wait_idle(10)
        assert time.monotonic() - started >= 1.9
        [m] = h.notifier.messages.values()
        assert len(m.thread) == 1 and m.thread[0].count("\n") == 3  # fired, joined, acked, joined
    finally:
        await close_harness(h)
