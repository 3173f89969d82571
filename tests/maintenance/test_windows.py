"""Maintenance windows on a fake clock with the real Scheduler and database: the start silences,
announces and acts; the end expires, scales back and reports; restarts run a window once; a window
missed while the bot was down is reported; late starts say so; failures are said plainly."""

from __future__ import annotations

from datetime import timedelta

import pytest

from alerts.alertmanager import AlertmanagerNotConfigured
from commands.catalog import UserError
from commands.maintenance import WindowRow

from .conftest import T0, World


async def schedule(bot, *, services=("chat",), env="prod", at=T0 + timedelta(hours=1), minutes=30,
                   reason="db upgrade", actions=()):
    return await bot.service.schedule(list(services), env, at, timedelta(minutes=minutes), reason,
                                      actions=list(actions), user_id=1, user_name="admin", channel="ops")


async def test_a_window_silences_announces_acts_and_reports(world: World):
    bot = await world.start()
    view = await schedule(bot, services=["chat", "chat-gui"], actions=["restart", "scale 1", "run-job db-backup"])
    assert [j.id for j in await bot.scheduler.jobs("maint:")] == [f"maint:{view.id}:start", f"maint:{view.id}:end"]

    world.clock.advance(minutes=59)
    await bot.scheduler.run_due()
    assert world.silencer.silences == [] and bot.posts == []

    world.clock.advance(minutes=1)
    await bot.scheduler.run_due()
    (silence,) = world.silencer.active
    assert silence.matchers == 'service=~"chat|chat-gui" env="prod"'
    assert silence.ends_at == T0 + timedelta(hours=1, minutes=30)
    assert "maintenance #1: db upgrade" in silence.comment
    assert world.platform.calls == [("restart", "chat", "prod"), ("restart", "chat-gui", "prod"),
                                    ("scale", "chat", "prod", "1"), ("scale", "chat-gui", "prod", "1"),
                                    ("run-job", "db-backup", "prod")]  # once: both run in namespace prod
    announcement = bot.said("general")
    assert announcement.startswith("🛠️ Maintenance has begun: `chat`, `chat-gui` in `prod` until 2024-05-01 13:30 UTC "
                                   "(15:30 CEST, Europe/Berlin) — db upgrade")
    report = bot.said("ops")
    assert report.startswith("🛠️ Maintenance #1 has started: `chat`, `chat-gui` in `prod` — db upgrade")
    assert '✅ silence: `sil-1` for service=~"chat|chat-gui" env="prod" until 2024-05-01 13:30 UTC' in report and "✅ restart chat: 3/3 ready" in report
    assert "✅ scale 1 chat: from 3; 1/1 ready" in report
    assert "failed" not in report
    assert (await bot.service.get(view.id)).state == "active"
    assert [w.id for w in await bot.service.active()] == [view.id]

    bot.posts.clear()
    world.clock.advance(minutes=30)
    await bot.scheduler.run_due()
    assert world.silencer.active == [] and world.silencer.silences[0].expired
    assert world.platform.replicas == {"chat": 3, "chat-gui": 3, "auth": 3}  # scaled back
    assert bot.said("general") == "✅ Maintenance is over: `chat`, `chat-gui` in `prod` — db upgrade"
    report = bot.said("ops")
    assert report.startswith("🛠️ Maintenance #1 has ended")
    assert "✅ expire silence: `sil-1`" in report and "✅ scale chat back to 3" in report
    assert report.endswith("All steps succeeded.")
    assert (await bot.service.get(view.id)).state == "done"
    assert await bot.scheduler.jobs("maint:") == []
    records = await bot.service.audit.query(action="maintenance")
    assert [r.args["op"] for r in records] == ["end", "start", "schedule"]


async def test_restart_between_scheduling_and_start_runs_the_window_once(world: World):
    first = await world.start()
    view = await schedule(first, actions=["restart"])
    await world.stop(first)

    world.clock.advance(minutes=30)  # down for a while, back before the start
    second = await world.start()
    world.clock.advance(minutes=30)
    await second.scheduler.run_due()
    assert world.platform.calls == [("restart", "chat", "prod")]
    assert len(world.silencer.silences) == 1
    await world.stop(second)

    third = await world.start()  # another restart during the window: nothing runs again
    await third.scheduler.run_due()
    assert world.platform.calls == [("restart", "chat", "prod")] and len(world.silencer.silences) == 1
    world.clock.advance(minutes=31)
    await third.scheduler.run_due()
    assert (await third.service.get(view.id)).state == "done"
    assert world.silencer.active == []
    starts = [t for c, t in first.posts + second.posts + third.posts if "has started" in t]
    assert len(starts) == 1


async def test_a_window_missed_while_the_bot_was_down_is_reported_not_run(world: World):
    first = await world.start()
    view = await schedule(first, actions=["restart"])
    await world.stop(first)

    world.clock.advance(hours=3)  # down over the whole window
    second = await world.start()
    await second.scheduler.run_due()
    assert world.platform.calls == [] and world.silencer.silences == []
    said = second.said("ops")
    assert said.startswith("⏰ Maintenance #1 was **missed**: `chat` in `prod` — db upgrade was due "
                           "2024-05-01 13:00 UTC (15:00 CEST, Europe/Berlin) to 2024-05-01 15:30 CEST")
    assert "Nothing of it was done: no silence, no announcement, no restart." in said
    assert second.said("general") == ""
    assert (await second.service.get(view.id)).state == "missed"
    assert await second.scheduler.jobs("maint:") == []
    assert second.problems == []  # said by the window itself, not as a generic scheduler problem


async def test_a_late_start_silences_and_announces_but_skips_actions(world: World):
    first = await world.start()
    await schedule(first, actions=["restart"], minutes=60)
    await world.stop(first)

    world.clock.advance(hours=1, minutes=20)  # 20 minutes into the window; the grace is 5 minutes
    second = await world.start()
    await second.scheduler.run_due()
    assert world.platform.calls == []
    (silence,) = world.silencer.active
    assert silence.ends_at == T0 + timedelta(hours=2)
    said = second.said("ops")
    assert "has started 20m late (the bot was not running at 2024-05-01 13:00 UTC)" in said
    assert "⏭️ restart: the window started 20m late" in said and "beyond the 5m grace time" in said
    assert "Maintenance has begun" in second.said("general")


async def test_a_start_within_the_grace_runs_everything(world: World):
    first = await world.start()
    await schedule(first, actions=["restart"])
    await world.stop(first)
    world.clock.advance(hours=1, minutes=3)
    second = await world.start()
    await second.scheduler.run_due()
    assert world.platform.calls == [("restart", "chat", "prod")]
    assert "has started:" in second.said("ops")


async def test_failures_are_said_plainly(world: World):
    bot = await world.start()
    world.platform.broken = {"restart chat": "deployment prod/chat is paused; resume it first",
                             "run-job db-backup": "x"}
    world.silencer.fail = AlertmanagerNotConfigured()
    await schedule(bot, actions=["restart", "run-job db-backup"])
    world.clock.advance(hours=1)
    await bot.scheduler.run_due()
    report = bot.said("ops")
    assert "⏭️ silence: no Alertmanager is configured" in report
    assert "❌ restart chat: deployment prod/chat is paused; resume it first" in report
    assert ("❌ run-job db-backup in prod: job `db-backup-opsbot-x` failed after 3s: BackoffLimitExceeded "
            "(Job has reached the specified backoff limit); 2 pod(s) failed") in report
    assert report.endswith("⚠️ **2 of 4 steps failed**: restart chat; run-job db-backup in prod")
    world.clock.advance(minutes=30)
    await bot.scheduler.run_due()
    end = bot.posts[-1][1]
    assert "⚠️ **2 of 5 steps failed**" in end
    (record,) = [r for r in await bot.service.audit.query(action="maintenance") if r.args.get("op") == "start"]
    assert record.result == "failed" and "restart chat" in record.detail


async def test_cancel_extend_and_end(world: World):
    bot = await world.start()
    a = await schedule(bot)
    b = await schedule(bot, services=["all"], at=T0 + timedelta(hours=2))
    assert [o.id for o in await bot.service.overlapping(a)] == []

    await bot.service.cancel(a.id, user_id=1, user_name="admin")
    assert await bot.scheduler.jobs(f"maint:{a.id}:") == []
    with pytest.raises(UserError, match="is cancelled, not scheduled"):
        await bot.service.cancel(a.id, user_id=1, user_name="admin")
    with pytest.raises(UserError, match="has not started; `!maintenance cancel 2` cancels it"):
        await bot.service.end_now(b.id, user_id=1, user_name="admin")

    world.clock.advance(hours=2)
    await bot.scheduler.run_due()
    (silence,) = world.silencer.active
    assert silence.matchers == 'env="prod"'
    with pytest.raises(UserError, match="cannot be cancelled; `!maintenance end 2` ends it now"):
        await bot.service.cancel(b.id, user_id=1, user_name="admin")

    extended = await bot.service.extend(b.id, timedelta(minutes=45), user_id=1, user_name="admin")
    assert extended.ends_at == T0 + timedelta(hours=3, minutes=15)
    (job,) = await bot.scheduler.jobs(f"maint:{b.id}:end")
    assert job.next_run == extended.ends_at
    (silence,) = world.silencer.active  # the new silence replaced the old one
    assert silence.id == "sil-2" and silence.ends_at == extended.ends_at
    assert "extended until 2024-05-01 15:15 UTC" in bot.said("general")
    with pytest.raises(UserError, match="at most 1d"):
        await bot.service.extend(b.id, timedelta(hours=23), user_id=1, user_name="admin")

    world.clock.advance(minutes=10)
    ended = await bot.service.end_now(b.id, user_id=1, user_name="admin")
    assert ended.state == "done" and world.silencer.active == []
    assert "ended early by admin" in bot.posts[-1][1]
    assert await bot.scheduler.jobs("maint:") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"minutes": 2}, "a window lasts between 5m and 1d"),
        ({"minutes": 25 * 60}, "a window lasts between 5m and 1d"),
        ({"at": T0 - timedelta(minutes=5)}, "is in the past"),
        ({"at": T0 + timedelta(days=91)}, "at most 90d ahead"),
        ({"services": ["chatt"]}, "did you mean `chat`"),
        ({"env": "dev"}, "no env `dev`"),
        ({"actions": ["reboot"]}, "unknown action `reboot`"),
        ({"reason": "  "}, "say why"),
    ],
)
async def test_bad_windows_are_refused(world: World, kwargs, message):
    bot = await world.start()
    with pytest.raises(UserError, match=message):
        await schedule(bot, **kwargs)


async def test_a_start_cut_off_by_a_shutdown_is_reported_and_the_end_still_runs(world: World):
    from commands.maintenance import job_id

    first = await world.start()
    view = await schedule(first)
    # What a crash in the middle of the start leaves: the window claimed, its start job gone.
    await first.scheduler.cancel(job_id(view.id, "start"))
    with world.db.session() as session:
        session.get(WindowRow, view.id).state = "starting"
    await world.stop(first)

    world.clock.advance(hours=1, minutes=10)
    second = await world.start()  # resume() finds it half started
    said = second.said("ops")
    assert "🛠️ Maintenance #1 ⚠️ was interrupted while starting" in said
    assert "❌ start: cut off by a shutdown; the steps not listed above did not run" in said
    assert (await second.service.get(view.id)).state == "active"
    world.clock.advance(minutes=30)
    await second.scheduler.run_due()
    assert (await second.service.get(view.id)).state == "done"
