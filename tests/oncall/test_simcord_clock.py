"""The scheduler on simcord's virtual clock, as the bot tests will drive it.

simcord's virtual timers only cover bot-owned work, so a Scheduler started by the test (or by
App.open) keeps real-time timers; with ``clock=env.now`` a test moves time with
``env.advance_time`` and then calls ``run_due()``, and jobs run exactly when virtual time says so.
"""

from __future__ import annotations

from datetime import timedelta

from commands.scheduler import Scheduler

REC = "tests.oncall.jobs:record"


async def test_jobs_follow_simcords_clock(world):
    s = Scheduler(world.app.db, name="simcord-clock", clock=world.env.now)
    await s.start()
    start = world.env.now()
    await s.add_at("a", start + timedelta(minutes=5), REC, n=1)
    await s.add_at("b", start + timedelta(minutes=20), REC, n=2)

    await world.env.advance_time(299)
    await s.run_due()
    assert s.context.get("calls", []) == []
    await world.env.advance_time(2)
    await s.run_due()
    assert [c["n"] for c in s.context["calls"]] == [1]
    await world.env.advance_time(15 * 60)
    await s.run_due()
    assert [c["n"] for c in s.context["calls"]] == [1, 2]
    assert s.context["calls"][1]["clock"] - start >= timedelta(minutes=20)
    await s.shutdown()
