"""Deploy freezes: manual ones, scheduled ones worked out from their crontab (so a restart cannot
lose one), unfreeze, and the gate the deploy path asks: refused with the reason, forced with the
grant (audited), refused without it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from commands.audit import AuditLog
from commands.catalog import UserError
from commands.freeze import FreezeNeedsGrant, FreezeService, Frozen, occurrence
from commands.scheduler import Scheduler

from .conftest import FakeClock, World, settings_for

# Friday 2024-05-03 12:00 UTC (14:00 in Berlin).
FRI = datetime(2024, 5, 3, 12, 0, tzinfo=UTC)
WEEKEND = {"weekend": {"cron": "0 18 * * fri", "duration": "62h", "envs": ["prod"], "reason": "weekend freeze"}}


def service(world: World, **settings) -> tuple[FreezeService, list[tuple[str, str]]]:
    posts: list[tuple[str, str]] = []

    async def post(channel: str, text: str) -> None:
        posts.append((channel, text))

    s = settings_for(world.tmp_path, **settings)
    return FreezeService(world.db, s, AuditLog(world.db, clock=world.clock), clock=world.clock, post=post), posts


async def test_manual_freeze_gate_and_unfreeze(world: World):
    world.clock.now = FRI
    freezes, _ = service(world)
    info = await freezes.freeze("prod", FRI + timedelta(days=2), "release week", user_id=1, user_name="admin")
    assert info.describe("Europe/Berlin") == ("deploys to `prod` are frozen until 2024-05-05 12:00 UTC (14:00 CEST, "
                                              "Europe/Berlin) (by admin): release week")
    other_env = await freezes.gate("staging", "chat", "deploy chat v2 to staging", force=False, may_force=False,
                                   user_id=2, user_name="mod")
    assert other_env.freeze is None and other_env.note is None

    with pytest.raises(Frozen) as refused:
        await freezes.gate("prod", "chat", "deploy chat v2 to prod", force=False, may_force=True, user_id=2,
                           user_name="mod")
    assert "release week" in str(refused.value) and "`--force`" in str(refused.value)
    with pytest.raises(FreezeNeedsGrant):
        await freezes.gate("prod", "chat", "deploy chat v2 to prod", force=True, may_force=False, user_id=2,
                           user_name="mod")
    gate = await freezes.gate("prod", "chat", "deploy chat v2 to prod", force=True, may_force=True, user_id=1,
                              user_name="admin")
    assert gate.forced and "forced past the freeze of `prod` (release week)" in (gate.note or "")
    (forced,) = await freezes.audit.query(action="deploy:force")
    assert (forced.user_name, forced.result, forced.service, forced.env) == ("admin", "ok", "chat", "prod")
    (denied,) = await freezes.audit.query(action="deploy")
    assert (denied.user_name, denied.result) == ("mod", "denied")

    (ended,) = await freezes.unfreeze("prod", user_id=1, user_name="admin")
    assert ended.ended_by == "admin" and await freezes.active("prod") == []
    with pytest.raises(UserError, match="`prod` is not frozen"):
        await freezes.unfreeze("prod", user_id=1, user_name="admin")


@pytest.mark.parametrize(
    ("until", "message"),
    [(FRI - timedelta(minutes=1), "must end in the future"), (FRI + timedelta(days=15), "at most 14d")],
)
async def test_freezes_out_of_range_are_refused(world: World, until, message):
    world.clock.now = FRI
    freezes, _ = service(world)
    with pytest.raises(UserError, match=message):
        await freezes.freeze("prod", until, "x", user_id=1, user_name="admin")


@pytest.mark.parametrize(
    ("now", "in_force"),
    [
        (FRI, None),  # Friday 14:00 in Berlin: not yet
        (datetime(2024, 5, 3, 16, 0, tzinfo=UTC), (datetime(2024, 5, 3, 16, 0, tzinfo=UTC),
                                                    datetime(2024, 5, 6, 6, 0, tzinfo=UTC))),  # 18:00 CEST
        (datetime(2024, 5, 5, 9, 0, tzinfo=UTC), (datetime(2024, 5, 3, 16, 0, tzinfo=UTC),
                                                   datetime(2024, 5, 6, 6, 0, tzinfo=UTC))),
        (datetime(2024, 5, 6, 6, 0, tzinfo=UTC), None),  # Monday 08:00 CEST: over
    ],
)
def test_a_scheduled_freeze_is_in_force_from_its_cron_time_for_its_duration(now, in_force):
    from config.settings import ScheduledFreeze

    cfg = ScheduledFreeze.model_validate(WEEKEND["weekend"])
    assert occurrence(cfg, "Europe/Berlin", now) == in_force


async def test_a_scheduled_freeze_holds_even_if_its_job_never_ran(world: World):
    world.clock.now = datetime(2024, 5, 4, 10, 0, tzinfo=UTC)  # Saturday; the bot just started
    freezes, _ = service(world, freezes={"scheduled": WEEKEND})
    with pytest.raises(Frozen, match="scheduled freeze `weekend`"):
        await freezes.gate("prod", "chat", "rollback chat in prod", force=False, may_force=False, user_id=2,
                           user_name="mod")
    (active,) = await freezes.active()
    assert active.scheduled == "weekend" and active.ends_at == datetime(2024, 5, 6, 6, 0, tzinfo=UTC)
    await freezes.unfreeze("prod", user_id=1, user_name="admin")  # lifted for this weekend only
    assert await freezes.active("prod") == []
    world.clock.now += timedelta(days=7)
    assert [f.scheduled for f in await freezes.active("prod")] == ["weekend"]


async def test_the_announcement_job_says_when_it_is_late(world: World, clock: FakeClock):
    clock.now = datetime(2024, 5, 3, 15, 0, tzinfo=UTC)
    freezes, posts = service(world, freezes={"scheduled": WEEKEND})
    scheduler = Scheduler(world.db, name="freeze-test", clock=clock, misfire_grace_time=300)
    await scheduler.start()
    try:
        await freezes.schedule_jobs(scheduler)
        (job,) = await scheduler.jobs("freeze:")
        assert job.next_run == datetime(2024, 5, 3, 16, 0, tzinfo=UTC)
        clock.now = datetime(2024, 5, 3, 16, 0, 1, tzinfo=UTC)
        await scheduler.run_due()
        assert posts[-1][1].startswith("🧊 scheduled freeze `weekend`: deploys to `prod` are frozen until "
                                       "2024-05-06 06:00 UTC (08:00 CEST, Europe/Berlin): weekend freeze.")
        assert "late" not in posts[-1][1]
        clock.now = datetime(2024, 5, 10, 19, 30, tzinfo=UTC)  # down over next Friday's time
        await scheduler.run_due()
        assert "(announced 3h 30m late: the bot was not running at 2024-05-10 16:00 UTC" in posts[-1][1]
    finally:
        await scheduler.shutdown()
