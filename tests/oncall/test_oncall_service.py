"""OnCall service: overrides and swaps stored in oncall_overrides, cancel, errors users see, and the
on-call role moved at each hand-off by a persisted job, with failures reported in the ops channel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from alerts.oncall import OnCall
from commands.catalog import UserError
from commands.db import Database
from commands.scheduler import Scheduler
from config.settings import OncallConfig

from .conftest import FakeClock, FakeNotifier

A, B, C = 100000000000000001, 100000000000000002, 100000000000000003
ROLE = 1063245997672747855
NOW = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)  # Berlin 16:00; A's day (hand-offs 09:00 CEST = 07:00 UTC)


def config(role_id: int | None = None) -> OncallConfig:
    return OncallConfig(rotations={
        "primary": {"members": [{"id": A, "name": "alice"}, {"id": B, "name": "bob"}, {"id": C, "name": "carol"}],
                    "period": "daily", "handoff": "09:00", "timezone": "Europe/Berlin", "start": "2024-05-01",
                    "role_id": role_id},
        "solo": {"members": [A], "period": "weekly"},
    })


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class FakeRoleSync:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.fail: Exception | None = None

    async def set_oncall_role(self, rotation: str, role_id: int, user_id: int) -> None:
        if self.fail is not None:
            raise self.fail
        self.calls.append((rotation, role_id, user_id))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def oncall(db: Database, clock: FakeClock) -> OnCall:
    return OnCall(db, config(), clock=clock)


async def test_everyone_now(oncall: OnCall):
    primary, solo = await oncall.everyone()
    assert (primary.rotation, primary.user_id, primary.until, primary.next_user_id) == ("primary", A, utc(2024, 5, 2, 7), B)
    assert (solo.rotation, solo.user_id, solo.timezone) == ("solo", A, "UTC")


async def test_override_takes_precedence_until_it_ends(oncall: OnCall, clock: FakeClock):
    o = await oncall.override("primary", C, "carol", timedelta(hours=2), reason="  covering   lunch ", by_id=A, by_name="alice")
    assert (o.starts_at, o.ends_at, o.reason, o.kind, o.created_by_name) == (NOW, NOW + timedelta(hours=2), "covering lunch", "override", "alice")
    slot = await oncall.who("primary")
    assert (slot.user_id, slot.user_name, slot.via_override, slot.until, slot.next_user_id) == (C, "carol", True, NOW + timedelta(hours=2), A)
    assert [x.id for x in await oncall.overrides()] == [o.id]
    clock.advance(hours=2)
    assert (await oncall.who("primary")).user_id == A
    assert await oncall.overrides() == []


async def test_a_later_override_can_be_planned(oncall: OnCall):
    o = await oncall.override(None, B, "bob", timedelta(hours=1), start=NOW + timedelta(hours=3))  # None: the first rotation
    assert o.rotation == "primary"
    slot = await oncall.who("primary")
    assert (slot.user_id, slot.until, slot.next_user_id) == (A, NOW + timedelta(hours=3), B)


async def test_swap_trades_the_current_turn_with_the_next(oncall: OnCall, clock: FakeClock):
    now_part, later_part = await oncall.swap("primary", by_id=A, by_name="alice", reason="dentist")
    assert (now_part.user_id, now_part.starts_at, now_part.ends_at, now_part.kind) == (B, NOW, utc(2024, 5, 2, 7), "swap")
    assert (later_part.user_id, later_part.starts_at, later_part.ends_at) == (A, utc(2024, 5, 2, 7), utc(2024, 5, 3, 7))
    slot = await oncall.who("primary")
    assert (slot.user_id, slot.until, slot.next_user_id, slot.override.reason) == (B, utc(2024, 5, 2, 7), A, "dentist")
    tomorrow = await oncall.who("primary", utc(2024, 5, 2, 12))
    assert (tomorrow.user_id, tomorrow.until, tomorrow.next_user_id) == (A, utc(2024, 5, 3, 7), C)


async def test_cancel_an_override(oncall: OnCall):
    o = await oncall.override("primary", C, "carol", timedelta(hours=2))
    cancelled = await oncall.cancel_override(o.id, by_name="mod")
    assert cancelled.id == o.id
    assert (await oncall.who("primary")).user_id == A
    with pytest.raises(UserError, match=f"no override #{o.id}"):
        await oncall.cancel_override(o.id)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda oc: oc.override("primary", B, "bob", timedelta(seconds=30)), "between 1m and 30d"),
        (lambda oc: oc.override("primary", B, "bob", timedelta(days=31)), "between 1m and 30d"),
        (lambda oc: oc.override("primary", B, "bob", timedelta(hours=1), reason="x" * 301), "at most 300"),
        (lambda oc: oc.override("primray", B, "bob", timedelta(hours=1)), "no rotation `primray` — did you mean `primary`"),
        (lambda oc: oc.who("zzz"), "no rotation `zzz`; known: `primary`, `solo`"),
        (lambda oc: oc.swap("solo"), "nobody to swap with in `solo`"),
    ],
)
async def test_what_users_are_told(oncall: OnCall, call, message):
    with pytest.raises(UserError, match=message):
        await call(oncall)


async def test_no_rotations_configured(db: Database):
    with pytest.raises(UserError, match="no on-call rotations"):
        await OnCall(db, OncallConfig()).who()


# --- the on-call role -----------------------------------------------------------------------------


@pytest.fixture
async def sched(db: Database, clock: FakeClock) -> AsyncIterator[Scheduler]:
    s = Scheduler(db, name="oncall-tests", clock=clock)
    await s.start()
    yield s
    await s.shutdown()


async def test_the_role_follows_each_hand_off(db: Database, clock: FakeClock, sched: Scheduler, notifier: FakeNotifier):
    roles = FakeRoleSync()
    oncall = OnCall(db, config(ROLE), scheduler=sched, notifier=notifier, role_sync=roles, clock=clock)
    await oncall.schedule_handoffs()
    assert roles.calls == [("primary", ROLE, A)]  # "solo" has no role
    assert [(j.id, j.next_run) for j in await sched.jobs()] == [("oncall:handoff:primary", utc(2024, 5, 2, 7))]

    clock.now = utc(2024, 5, 2, 7)
    await sched.run_due()
    assert roles.calls[-1] == ("primary", ROLE, B)
    assert [(j.id, j.next_run) for j in await sched.jobs()] == [("oncall:handoff:primary", utc(2024, 5, 3, 7))]

    # An override moves the role at once and brings the next hand-off forward to its end.
    await oncall.override("primary", C, "carol", timedelta(hours=1))
    assert roles.calls[-1] == ("primary", ROLE, C)
    assert [j.next_run for j in await sched.jobs()] == [utc(2024, 5, 2, 8)]
    clock.now = utc(2024, 5, 2, 8)
    await sched.run_due()
    assert roles.calls[-1] == ("primary", ROLE, B)
    assert notifier.sent == []


async def test_a_hand_off_missed_while_down_still_moves_the_role(db: Database, clock: FakeClock, notifier: FakeNotifier):
    roles = FakeRoleSync()
    first = Scheduler(db, name="oncall-restart", clock=clock)
    await first.start()
    await OnCall(db, config(ROLE), scheduler=first, role_sync=roles, clock=clock).schedule_handoffs()
    await first.shutdown()

    clock.now = utc(2024, 5, 2, 12)  # down over the 07:00 hand-off, far past any grace time
    second = Scheduler(db, name="oncall-restart", clock=clock, misfire_grace_time=60)
    problems = []
    second.on_problem(problems.append)
    OnCall(db, config(ROLE), scheduler=second, role_sync=roles, clock=clock)
    await second.start()
    await second.run_due()
    assert roles.calls[-1] == ("primary", ROLE, B) and problems == []
    await second.shutdown()


async def test_missing_permission_is_reported_never_raised(db: Database, clock: FakeClock, sched: Scheduler,
                                                            notifier: FakeNotifier):
    roles = FakeRoleSync()
    roles.fail = PermissionError("Missing Permissions")
    oncall = OnCall(db, config(ROLE), scheduler=sched, notifier=notifier, role_sync=roles, clock=clock,
                    ops_channel="ops")
    await oncall.schedule_handoffs()
    ((channel, message),) = notifier.sent
    assert channel == "ops"
    assert message.content == (f"⚠️ On-call `primary`: I may not give <@&{ROLE}> to <@{A}> (Missing Permissions). "
                               "Give me Manage Roles and put my role above that one.")
    assert message.mention_users == [] and message.mention_roles == []  # a report, not a ping
    assert len(await sched.jobs("oncall:")) == 1  # the next hand-off tries again

    roles.fail = RuntimeError("gateway hiccup")
    notifier.fail = [OSError("chat is down too")]  # reporting fails as well: logged, still no raise
    clock.now = utc(2024, 5, 2, 7)
    problems = []
    sched.on_problem(problems.append)
    await sched.run_due()
    assert problems == [] and len(notifier.sent) == 1
