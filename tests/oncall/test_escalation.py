"""Escalation: steps fire in order and ping through message content; acknowledging stops them; the
step re-checks the incident; a restart between steps neither loses nor repeats one; overdue steps
fold into one late page; failed sends retry; DMs; unacknowledge starts over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from alerts.escalation import EscalationEngine, expand, job_id, run_tick
from alerts.notify import SendError
from alerts.oncall import OnCall
from commands.db import Database
from commands.scheduler import JobProblem, Scheduler
from config.settings import OncallConfig

from .conftest import T0, FakeClock, FakeNotifier

A, B, C = 100000000000000001, 100000000000000002, 100000000000000003
OPS = 1063245997672747855
INCIDENT = 12

CONFIG = OncallConfig(
    rotations={
        "primary": {"members": [A, B], "period": "daily", "handoff": "09:00", "start": "2024-05-01"},
        "secondary": {"members": [C]},
    },
    escalation_policies={
        "critical": {"steps": [
            {"after": "5m", "notify": ["primary"], "dm": True},
            {"after": "15m", "notify": ["secondary", f"role:{OPS}"], "repeat": {"every": "15m", "times": 2}},
        ]},
        "warning": {"steps": [{"after": "30m", "notify": ["primary"]}]},
        "quick": {"steps": [{"after": "0s", "notify": ["user:100000000000000002"]},
                            {"after": "1s", "notify": ["primary"]}]},
    },
)


class Incidents:
    """IncidentLookup as the alerts store offers it: a blocking method."""

    def __init__(self) -> None:
        self.closed: set[int] = set()
        self.asked = 0

    def is_open_unacked(self, incident_id: int) -> bool:
        self.asked += 1
        return incident_id not in self.closed


class AsyncIncidents(Incidents):
    async def is_open_unacked(self, incident_id: int) -> bool:  # type: ignore[override]
        return super().is_open_unacked(incident_id)


class World:
    """A scheduler, on-call service and engine on one database; `restart` rebuilds them all."""

    def __init__(self, db_url: str, clock: FakeClock | None, notifier: FakeNotifier, incidents: Incidents) -> None:
        self.db_url, self.clock, self.notifier, self.incidents = db_url, clock, notifier, incidents
        self.problems: list[JobProblem] = []

    async def open(self) -> World:
        self.db = Database(self.db_url)
        self.db.create_all()
        kw = {"clock": self.clock} if self.clock is not None else {}
        self.scheduler = Scheduler(self.db, name="esc-tests", on_problem=self.problems.append, **kw)
        self.oncall = OnCall(self.db, CONFIG, scheduler=self.scheduler, **kw)
        self.engine = EscalationEngine(self.scheduler, self.notifier, self.oncall, self.incidents,
                                       db=self.db, config=CONFIG, dm=self.notifier)
        await self.scheduler.start()
        return self

    async def close(self) -> None:
        await self.scheduler.shutdown()
        self.db.dispose()

    async def restart(self) -> int:
        await self.close()
        await self.open()
        return await self.engine.resume()

    async def at(self, minutes: float) -> int:
        assert self.clock is not None
        self.clock.now = T0 + timedelta(minutes=minutes)
        return await self.scheduler.run_due()

    @property
    def afters(self) -> list[str]:
        """'5m', '15m', … of each page ("unacknowledged after 5m")."""
        return [p[1].split("after ")[1].split()[0].rstrip(":") for p in self.pages]

    @property
    def pages(self) -> list[tuple[str, str, list[int], list[int]]]:
        return [(ch, m.content, m.mention_users, m.mention_roles) for ch, m in self.notifier.sent]


@pytest.fixture
def incidents() -> Incidents:
    return Incidents()


@pytest.fixture
async def w(db_url: str, clock: FakeClock, notifier: FakeNotifier, incidents: Incidents) -> AsyncIterator[World]:
    world = await World(db_url, clock, notifier, incidents).open()
    yield world
    await world.close()


def test_a_policy_expands_into_ticks_in_time_order():
    ticks = expand(CONFIG.escalation_policies["critical"])
    assert [(t.index, t.step, t.repeat, t.offset, t.notify, t.dm) for t in ticks] == [
        (0, 1, 0, timedelta(minutes=5), ["primary"], True),
        (1, 2, 0, timedelta(minutes=15), ["secondary", f"role:{OPS}"], False),
        (2, 2, 1, timedelta(minutes=30), ["secondary", f"role:{OPS}"], False),
        (3, 2, 2, timedelta(minutes=45), ["secondary", f"role:{OPS}"], False),
    ]


async def test_steps_fire_in_order_with_pings_in_the_content(w: World):
    state = await w.engine.start(INCIDENT, "critical", "alerts", "555", title="ChatDown")
    assert [t.due_at for t in state.ticks] == [T0 + timedelta(minutes=m) for m in (5, 15, 30, 45)]
    assert [j.id for j in await w.scheduler.jobs("esc:")] == [job_id(INCIDENT, 1, i) for i in range(4)]

    assert await w.at(4.99) == 0 and w.pages == []
    assert await w.at(5) == 1
    assert w.pages == [("alerts", f"🚨 <@{A}> — incident #12 is unacknowledged after 5m: ChatDown (step 1/2)", [A], [])]
    assert [(u, m.content) for u, m in w.notifier.dms] == [
        (A, f"🚨 <@{A}> — incident #12 is unacknowledged after 5m: ChatDown (step 1/2)\nAcknowledge it in #alerts.")]
    assert w.notifier.threads == [("alerts", "555", "Incident #12", f"escalation step 1/2: notified <@{A}> (primary)")]
    assert w.notifier.sent[0][1].nonce == "esc12.1.0"

    await w.at(15)
    await w.at(30)
    await w.at(45)
    assert [p[1:] for p in w.pages[1:]] == [
        (f"🚨 <@{C}> <@&{OPS}> — incident #12 is unacknowledged after 15m: ChatDown (step 2/2, then 2 repeats)", [C], [OPS]),
        (f"🚨 <@{C}> <@&{OPS}> — incident #12 is unacknowledged after 30m: ChatDown (step 2/2, repeat 1/2)", [C], [OPS]),
        (f"🚨 <@{C}> <@&{OPS}> — incident #12 is unacknowledged after 45m: ChatDown (step 2/2, repeat 2/2)", [C], [OPS]),
    ]
    assert len(w.notifier.dms) == 1
    state = await w.engine.state(INCIDENT)
    assert [t.outcome for t in state.ticks] == ["paged"] * 4 and state.active and state.next_due is None
    assert await w.scheduler.jobs("esc:") == []


async def test_the_person_paged_is_whoever_is_on_call_then(w: World):
    await w.engine.start(INCIDENT, "critical", "alerts", None, started_at=datetime(2024, 5, 2, 8, 57, tzinfo=UTC))
    w.clock.now = datetime(2024, 5, 2, 9, 2, tzinfo=UTC)  # B took over at 09:00
    await w.scheduler.run_due()
    assert w.pages[0][2] == [B]


async def test_acknowledging_stops_the_rest(w: World, incidents: Incidents):
    await w.engine.start(INCIDENT, "critical", "alerts", "555")
    await w.engine.start(13, "critical", "alerts", "556")
    await w.at(5)
    assert len(w.pages) == 2
    incidents.closed.add(INCIDENT)
    assert await w.engine.stop(INCIDENT, "acknowledged by alice") is True
    assert await w.engine.stop(INCIDENT, "again") is False
    assert {j.id.split(":")[1] for j in await w.scheduler.jobs("esc:")} == {"13"}  # esc:1: is not esc:13:
    for minutes in (15, 30, 45, 60):
        await w.at(minutes)
    assert sorted(p[1].split("incident ")[1][:3] for p in w.pages) == ["#12", "#13", "#13", "#13", "#13"]
    state = await w.engine.state(INCIDENT)
    assert (state.active, state.stop_reason, [t.outcome for t in state.ticks]) == (
        False, "acknowledged by alice", ["paged", None, None, None])


async def test_a_step_rechecks_the_incident_itself(w: World, incidents: Incidents):
    await w.engine.start(INCIDENT, "critical", "alerts", "555")
    await w.at(5)
    incidents.closed.add(INCIDENT)  # acknowledged, but nobody told the engine
    await w.at(15)
    assert len(w.pages) == 1
    assert await w.scheduler.jobs("esc:") == []
    assert (await w.engine.state(INCIDENT)).stop_reason == "acknowledged or closed"


async def test_a_restart_between_steps_neither_loses_nor_repeats_one(w: World):
    await w.engine.start(INCIDENT, "critical", "alerts", "555")
    await w.at(5)
    assert len(w.pages) == 1

    assert await w.restart() == 0  # every pending step still had its job
    assert await w.at(5.5) == 0
    await w.at(15)
    assert await w.restart() == 0
    await w.at(15.1)
    await w.at(30)
    assert w.afters == ["5m", "15m", "30m"]


async def test_a_step_whose_job_was_lost_is_re_added_on_resume(w: World):
    await w.engine.start(INCIDENT, "critical", "alerts", "555")
    await w.scheduler.cancel(job_id(INCIDENT, 1, 1))  # as if the process died while running it
    assert await w.restart() == 1
    await w.at(5)
    await w.at(15)
    assert w.afters == ["5m", "15m"]  # once each
    assert await w.restart() == 0


async def test_a_step_never_pages_twice(w: World):
    await w.engine.start(INCIDENT, "critical", "alerts", "555")
    w.clock.now = T0 + timedelta(minutes=5)
    results = await asyncio.gather(*(run_tick(w.scheduler, incident_id=INCIDENT, generation=1, tick=0) for _ in range(3)))
    assert sorted(results) == ["already", "already", "paged"]
    assert await w.scheduler.run_due() == 1  # the scheduled job itself
    assert len(w.pages) == 1


async def test_steps_overdue_after_downtime_fold_into_one_late_page(w: World):
    await w.engine.start(INCIDENT, "critical", "alerts", "555")
    await w.close()
    w.clock.now = T0 + timedelta(minutes=40)  # down over the 5m, 15m and 30m steps
    await w.open()
    await w.engine.resume()
    await w.scheduler.run_due()
    assert w.pages == [("alerts", (f"🚨 <@{A}> <@{C}> <@&{OPS}> — incident #12 is unacknowledged after 40m "
                                   "(step 2/2, repeat 1/2) — sent 10m late: the bot was not running"), [A, C], [OPS])]
    assert [u for u, _ in w.notifier.dms] == [A, C]  # step 1 asked for DMs
    assert w.notifier.threads[-1][3] == (f"escalation step 2/2, repeat 1/2: notified <@{A}> (primary), <@{C}> (secondary), "
                                         f"<@&{OPS}> (with 2 overdue notifications folded in)")
    state = await w.engine.state(INCIDENT)
    assert [t.outcome for t in state.ticks] == ["superseded", "superseded", "paged", None]
    await w.at(45)
    assert len(w.pages) == 2 and w.pages[1][2:] == ([C], [OPS])
    assert w.problems == []


async def test_a_failed_send_is_retried_then_reported(w: World, notifier: FakeNotifier):
    await w.engine.start(INCIDENT, "critical", "alerts", "555")
    notifier.fail = [SendError("HTTP 503", retryable=True, retry_after=10)]
    await w.at(5)
    assert w.pages == [] and (await w.scheduler.get(job_id(INCIDENT, 1, 0))).next_run == T0 + timedelta(minutes=5, seconds=10)
    await w.at(5 + 10 / 60)
    assert len(w.pages) == 1 and w.problems == []

    notifier.fail = [SendError("HTTP 403 Missing Access", retryable=False)]
    await w.at(15)
    (problem,) = w.problems
    assert (problem.kind, problem.job_id, problem.error) == ("error", job_id(INCIDENT, 1, 1), "SendError: HTTP 403 Missing Access")
    state = await w.engine.state(INCIDENT)
    assert [t.outcome for t in state.ticks[:2]] == ["paged", "failed"]


async def test_failed_dms_are_noted_in_the_thread(w: World, notifier: FakeNotifier):
    notifier.fail_dm[A] = PermissionError("Cannot send messages to this user")
    await w.engine.start(INCIDENT, "critical", "alerts", "555")
    await w.at(5)
    assert w.notifier.threads[-1][3] == (f"escalation step 1/2: notified <@{A}> (primary); DM to <@{A}> failed "
                                         "(PermissionError: Cannot send messages to this user)")


async def test_policy_choice(w: World):
    assert (await w.engine.start(1, "warning", "alerts", "1")).policy == "warning"
    assert await w.engine.start(2, "nonesuch", "alerts", "2") is None
    assert w.notifier.threads == [("alerts", "2", "Incident #2",
                                   "⚠️ no escalation policy `nonesuch` is configured: nobody will be paged")]
    assert await w.engine.start(3, None, "alerts", "3") is None  # the route names no policy
    assert await w.scheduler.jobs("esc:3:") == []


async def test_start_is_idempotent_and_unacknowledging_starts_over(w: World, incidents: Incidents):
    await w.engine.start(INCIDENT, "critical", "alerts", "555")
    await w.at(5)
    again = await w.engine.start(INCIDENT, "critical", "alerts", "555")  # a repeated webhook
    assert again.generation == 1 and len(await w.scheduler.jobs("esc:")) == 3
    await w.engine.stop(INCIDENT, "acknowledged by alice")
    w.clock.now = T0 + timedelta(minutes=20)
    restarted = await w.engine.start(INCIDENT, "critical", "alerts", "555")  # unacknowledged
    assert restarted.generation == 2 and restarted.started_at == w.clock.now
    await w.at(25)
    assert w.afters == ["5m", "5m"]


async def test_an_async_incident_lookup_works_too(db_url: str, clock: FakeClock, notifier: FakeNotifier):
    incidents = AsyncIncidents()
    world = await World(db_url, clock, notifier, incidents).open()
    await world.engine.start(INCIDENT, "critical", "alerts", "555")
    incidents.closed.add(INCIDENT)
    await world.at(5)
    assert world.pages == [] and incidents.asked == 1
    await world.close()


async def test_real_time_short_delays(db_url: str, notifier: FakeNotifier, incidents: Incidents):
    """The wall clock and APScheduler's own timer, no run_due: steps at 0s and 1s."""
    world = await World(db_url, None, notifier, incidents).open()
    await world.engine.start(INCIDENT, "quick", "alerts", "555")
    for _ in range(300):
        if len(world.pages) == 2:
            break
        await asyncio.sleep(0.01)
    assert [p[2] for p in world.pages] == [[B], [world.pages[1][2][0]]]
    assert world.pages[1][2][0] in (A, B)
    await world.close()
