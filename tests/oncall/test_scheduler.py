"""Scheduler: textual jobs with plain JSON arguments in the app's database, deterministic ids,
restart safety, missed/failed/interrupted jobs reported, fake clock (run_due) and real time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect as sa_inspect

from commands.db import Database
from commands.scheduler import (
    JobExists,
    JobProblem,
    Scheduler,
    SchedulerGone,
    dispatch,
    live,
)

from .conftest import T0, FakeClock

REC = "tests.oncall.jobs:record"


def _scheduler(db: Database, clock: FakeClock | None = None, **kw) -> Scheduler:
    if clock is not None:
        kw["clock"] = clock
    return Scheduler(db, **kw)


@pytest.fixture
async def sched(db: Database, clock: FakeClock) -> AsyncIterator[Scheduler]:
    s = _scheduler(db, clock, name="t", misfire_grace_time=3600)
    await s.start()
    yield s
    await s.shutdown()


def calls(s: Scheduler) -> list[dict]:
    return s.context.get("calls", [])


async def test_jobs_run_in_time_order_when_the_clock_reaches_them(sched: Scheduler, clock: FakeClock):
    await sched.add_at("b", T0 + timedelta(minutes=10), REC, n=2)
    await sched.add_at("a", T0 + timedelta(minutes=5), REC, n=1)
    await sched.add_at("c", T0 + timedelta(minutes=15), REC, n=3)
    assert [j.id for j in await sched.jobs()] == ["a", "b", "c"]

    assert await sched.run_due() == 0
    clock.advance(minutes=5)
    assert await sched.run_due() == 1
    assert [c["n"] for c in calls(sched)] == [1]
    clock.advance(minutes=20)
    assert await sched.run_due() == 2
    assert [c["n"] for c in calls(sched)] == [1, 2, 3]
    assert await sched.jobs() == []


async def test_a_job_gets_its_scheduler_and_plain_arguments(sched: Scheduler, clock: FakeClock):
    info = await sched.add_at("x", T0, REC, text="hi", nested={"a": [1, 2.5, None, True]}, tup=(1, 2))
    # Stored as JSON would give them back: a tuple becomes a list before and after a restart alike.
    assert info.kwargs == {"text": "hi", "nested": {"a": [1, 2.5, None, True]}, "tup": [1, 2]}
    assert info.ref == REC and info.next_run == T0
    await sched.run_due()
    assert calls(sched) == [{"clock": T0, "text": "hi", "nested": {"a": [1, 2.5, None, True]}, "tup": [1, 2]}]


async def test_sync_job_functions_work_too(sched: Scheduler):
    await sched.add_at("s", T0, "tests.oncall.jobs:record_sync", n=1)
    await sched.run_due()
    assert calls(sched) == [{"n": 1}]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("j", T0, REC), {"at": datetime.now(UTC)}, "plain JSON"),
        (("j", T0, REC), {"bad": object()}, "plain JSON"),
        (("j", T0, REC), {"nan": float("nan")}, "plain JSON"),
        (("j", T0, "tests.oncall.jobs.record"), {}, "package.module:function"),
        (("j", T0, "tests.oncall.jobs:nothing_here"), {}, "no job function"),
        (("j", T0, "tests.oncall.jobs:NOT_CALLABLE"), {}, "not callable"),
        (("j", T0, "no_such_module_x:f"), {}, "no job function"),
        (("j", datetime(2024, 5, 1, 14, 0), REC), {}, "naive datetime"),
        (("", T0, REC), {}, "bad job id"),
        (("x" * 192, T0, REC), {}, "bad job id"),
    ],
)
async def test_bad_jobs_are_refused_when_added(sched: Scheduler, args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        await sched.add_at(*args, **kwargs)
    assert await sched.jobs() == []


async def test_ids_are_deterministic_adding_again_replaces_or_refuses(sched: Scheduler, clock: FakeClock):
    await sched.add_at("esc:1:0", T0 + timedelta(minutes=5), REC, n=1)
    await sched.add_at("esc:1:0", T0 + timedelta(minutes=7), REC, n=2)
    (job,) = await sched.jobs()
    assert job.next_run == T0 + timedelta(minutes=7) and job.kwargs == {"n": 2}
    with pytest.raises(JobExists):
        await sched.add_at("esc:1:0", T0 + timedelta(minutes=9), REC, replace_existing=False, n=3)
    clock.advance(minutes=30)
    await sched.run_due()
    assert [c["n"] for c in calls(sched)] == [2]


async def test_cancel_and_prefixes(sched: Scheduler, clock: FakeClock):
    for job_id in ["esc:1:0", "esc:1:1", "esc:12:0", "oncall:handoff:primary"]:
        await sched.add_at(job_id, T0 + timedelta(minutes=5), REC, id=job_id)
    assert [j.id for j in await sched.jobs("esc:1:")] == ["esc:1:0", "esc:1:1"]
    assert await sched.cancel_prefix("esc:1:") == 2
    assert await sched.cancel_prefix("esc:1:") == 0
    assert await sched.cancel("oncall:handoff:primary") is True
    assert await sched.cancel("oncall:handoff:primary") is False
    assert (await sched.get("esc:12:0")).kwargs == {"id": "esc:12:0"}
    assert await sched.get("esc:1:0") is None
    with pytest.raises(ValueError):
        await sched.cancel_prefix("")
    clock.advance(minutes=10)
    await sched.run_due()
    assert [c["id"] for c in calls(sched)] == ["esc:12:0"]


async def test_jobs_are_rows_in_the_apps_database(sched: Scheduler, db: Database):
    await sched.add_at("j", T0 + timedelta(minutes=5), REC)
    assert "scheduler_jobs" in sa_inspect(db.engine).get_table_names()


async def test_a_restart_keeps_jobs_and_runs_each_once(db: Database, clock: FakeClock):
    first = _scheduler(db, clock, name="opsbot")
    await first.start()
    await first.add_at("w:1:start", T0 + timedelta(minutes=5), REC, n=1)
    await first.add_at("w:1:end", T0 + timedelta(minutes=35), REC, n=2)
    await first.shutdown()
    assert live("opsbot") is None

    clock.advance(minutes=6)  # down over the first job, within its grace time
    second = _scheduler(db, clock, name="opsbot")
    await second.start()
    assert await second.run_due() == 1
    assert [c["n"] for c in calls(second)] == [1]
    await second.shutdown()

    third = _scheduler(db, clock, name="opsbot")  # a second restart runs nothing again
    await third.start()
    assert await third.run_due() == 0
    clock.advance(minutes=30)
    assert await third.run_due() == 1
    assert [c["n"] for c in calls(third)] == [2]
    assert calls(first) == []
    await third.shutdown()


async def test_a_job_missed_while_down_is_reported_not_run(db: Database, clock: FakeClock):
    first = _scheduler(db, clock, name="opsbot", misfire_grace_time=300)
    await first.start()
    await first.add_at("maint:7:start", T0 + timedelta(minutes=5), REC, window=7)
    await first.add_at("later", T0 + timedelta(hours=5), REC, n=1)
    await first.shutdown()

    clock.advance(hours=2)  # the bot was down over the window and beyond the grace time
    problems: list[JobProblem] = []
    second = _scheduler(db, clock, name="opsbot", misfire_grace_time=300, on_problem=problems.append)
    await second.start()
    await second.run_due()
    assert calls(second) == []
    (p,) = problems
    assert (p.kind, p.job_id, p.ref, p.kwargs) == ("missed", "maint:7:start", REC, {"window": 7})
    assert p.scheduled_at == T0 + timedelta(minutes=5) and p.late_by == timedelta(hours=1, minutes=55)
    assert p.describe() == ("scheduled job `maint:7:start` (tests.oncall.jobs:record) due 2024-05-01 14:05 UTC "
                            "was missed by 1h 55m (the bot was not running or was busy) and was not run")
    assert [j.id for j in await second.jobs()] == ["later"]
    await second.shutdown()


async def test_no_grace_runs_however_late(db: Database, clock: FakeClock):
    s = _scheduler(db, clock, name="g", misfire_grace_time=60)
    await s.start()
    await s.add_at("late", T0 + timedelta(minutes=1), REC, misfire_grace_time=None)
    await s.add_at("strict", T0 + timedelta(minutes=1), REC, misfire_grace_time=1)
    clock.advance(days=2)
    problems = []
    s.on_problem(problems.append)
    await s.run_due()
    assert len(calls(s)) == 1
    assert [(p.kind, p.job_id) for p in problems] == [("missed", "strict")]
    await s.shutdown()


async def test_failures_are_reported_to_async_handlers_too(sched: Scheduler):
    seen: list[JobProblem] = []

    async def handler(problem: JobProblem) -> None:
        await asyncio.sleep(0)
        seen.append(problem)

    def broken_handler(problem: JobProblem) -> None:
        raise RuntimeError("handlers failing must not stop the others")

    sched.on_problem(broken_handler)
    sched.on_problem(handler)
    await sched.add_at("f", T0, "tests.oncall.jobs:fail", n=3)
    await sched.run_due()  # waits for the handlers as well
    (p,) = seen
    assert (p.kind, p.job_id, p.kwargs, p.error) == ("error", "f", {"n": 3}, "RuntimeError: boom 3")
    assert p.describe().endswith("failed: RuntimeError: boom 3")


async def test_unhandled_problems_are_logged(sched: Scheduler, caplog: pytest.LogCaptureFixture):
    await sched.add_at("f", T0, "tests.oncall.jobs:fail", n=1)
    await sched.run_due()
    assert any("failed: RuntimeError: boom 1" in r.getMessage() for r in caplog.records)


async def test_a_job_cut_off_by_shutdown_is_reported(db: Database):
    problems: list[JobProblem] = []
    s = Scheduler(db, name="cut", on_problem=problems.append)
    await s.start()
    await s.add_at("slow", datetime.now(UTC), "tests.oncall.jobs:slow", seconds=30)
    for _ in range(100):
        if s.context.get("started"):
            break
        await asyncio.sleep(0.01)
    await s.shutdown(wait=True, grace=0.1)
    assert [(p.kind, p.job_id) for p in problems] == [("interrupted", "slow")]


async def test_real_time_short_delays(db: Database):
    """With the wall clock the scheduler wakes up by itself; no run_due."""
    s = Scheduler(db, name="real")
    await s.start()
    now = datetime.now(UTC)
    await s.add_at("two", now + timedelta(seconds=0.4), REC, n=2)
    await s.add_at("one", now + timedelta(seconds=0.2), REC, n=1)
    for _ in range(200):
        if len(calls(s)) == 2:
            break
        await asyncio.sleep(0.01)
    assert [c["n"] for c in calls(s)] == [1, 2]
    await s.shutdown()


async def test_two_schedulers_in_one_process_keep_to_their_own(tmp_path, clock: FakeClock):
    a_db, b_db = Database(f"sqlite:///{tmp_path / 'a.db'}"), Database(f"sqlite:///{tmp_path / 'b.db'}")
    a, b = Scheduler(a_db, name="a", clock=clock), Scheduler(b_db, name="b", clock=clock)
    await a.start()
    await b.start()
    with pytest.raises(RuntimeError, match="running already"):
        await Scheduler(a_db, name="a", clock=clock).start()
    await a.add_at("j", T0, REC, who="a")
    await b.add_at("j", T0, REC, who="b")
    await a.run_due()
    await b.run_due()
    assert [c["who"] for c in calls(a)] == ["a"] and [c["who"] for c in calls(b)] == ["b"]
    await a.shutdown()
    await b.shutdown()
    a_db.dispose()
    b_db.dispose()


async def test_a_job_without_its_live_scheduler_fails_loudly():
    with pytest.raises(SchedulerGone):
        await dispatch(scheduler="nobody", ref=REC, kwargs={})


async def test_cron_jobs_coalesce_after_downtime(sched: Scheduler, clock: FakeClock):
    clock.advance(seconds=1)  # a crontab matching "now" would fire at once
    await sched.add_cron("digest", "*/10 * * * *", REC, timezone="Europe/Berlin", n=1)
    (job,) = await sched.jobs()
    assert job.next_run == T0 + timedelta(minutes=10)
    clock.advance(minutes=42)  # 4 runs were due; within the grace time, coalesced into one
    assert await sched.run_due() == 1
    assert len(calls(sched)) == 1
    (job,) = await sched.jobs()
    assert job.next_run == T0 + timedelta(minutes=50)


async def test_in_memory_database_gets_a_memory_store(clock: FakeClock):
    s = Scheduler(Database("sqlite:///:memory:"), name="mem", clock=clock)
    assert s.persistent is False
    await s.start()
    await s.add_at("j", T0, REC)
    await s.run_due()
    assert len(calls(s)) == 1
    await s.shutdown()


async def test_using_it_before_start_is_an_error(db: Database):
    s = Scheduler(db, name="early")
    with pytest.raises(RuntimeError, match="start"):
        await s.add_at("j", T0, REC)
