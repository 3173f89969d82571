"""A post that reached Discord just before the process died is not posted again.

The outbox records a post after Discord accepted it (a notice, an incident message, a timeline post in its thread). A process killed in between (a leader that
died, see tests/ha) leaves the post marked as started but not done; the next sender looks at the
channel (DiscordNotifier.find_recent, the real discord.py history call) before posting again.
Here the dead process is played by hand: its post is made through the notifier, its half-written
record through the store, then the live outbox takes over.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from alerts.notify import OutMessage
from alerts.store import TimelineWork
from bot.world import World
from tests.alerts.conftest import alert, payload
from tests.bot.helpers import embed_text


def bot_messages(world: World, channel: str) -> list[Any]:
    return [m for m in world.channels[channel].history() if m.author.id == world.bot.user.id]


async def a_notice_started_by_a_dead_process(world: World, text: str, *, reached_discord: bool) -> None:
    store = world.app.alerts.store
    if reached_discord:
        await world.app.notifier.send("ops", OutMessage(content=text))

    def half_done() -> None:
        store.add_notice("ops", text)
        [notice_id] = [w.notice_id for w in [store.next_work("ops")[0]]]
        store.notice_started(notice_id)  # then the process died: no notice_done

    await world.app.db.run(half_done)
    world.app.alerts.outbox.wake(["ops"])
    await world.app.alerts.wait_idle(10)


async def test_a_notice_that_reached_discord_is_not_posted_again(world: World) -> None:
    text = "🛠️ Maintenance #7 has started: `chat` in `prod` — crash drill"
    await a_notice_started_by_a_dead_process(world, text, reached_discord=True)
    assert [m.content for m in bot_messages(world, "ops")].count(text) == 1
    assert await world.app.db.run(world.app.alerts.store.pending_count) == 0


async def test_a_notice_that_did_not_reach_discord_is_posted(world: World) -> None:
    text = "🛠️ Maintenance #8 has started: `chat` in `prod` — crash drill"
    await a_notice_started_by_a_dead_process(world, text, reached_discord=False)
    assert [m.content for m in bot_messages(world, "ops")].count(text) == 1


async def _interrupted_create(world: World, *, reached_discord: bool) -> int:
    """An incident whose first message a dead process may have posted; returns the incident ID."""
    alerts = world.app.alerts
    await alerts.outbox.stop()  # the dead process's sender: nothing runs while we set the scene
    await alerts.ingest(payload([alert("CrashDrill", service="chat", env="prod")], group="crash"))
    work, _ = await world.app.db.run(alerts.store.next_work, "alerts")
    if reached_discord:
        await world.app.notifier.send("alerts", alerts._render_message(work))
    await world.app.db.run(alerts.store.create_started, work.delivery_id)
    # A new alert joins meanwhile: the message must end up showing it, whoever posted it.
    await alerts.ingest(payload([alert("CrashDrill", service="chat", env="prod"),
                                 alert("CrashDrill", service="chat", env="prod", instance="b")], group="crash"))
    await alerts.outbox.start()  # the next leader's sender
    await alerts.wait_idle(10)
    await asyncio.sleep(0.1)
    return work.incident.id


async def test_an_incident_message_that_reached_discord_is_adopted_not_doubled(world: World) -> None:
    incident = await _interrupted_create(world, reached_discord=True)
    shown = [m for m in bot_messages(world, "alerts") if f"#{incident} " in m.content and m.embeds]
    assert len(shown) == 1, [m.content for m in shown]
    assert "2 firing" in embed_text(shown[0])  # edited to the latest state
    assert world.app.alerts.outbox.stats["adopted"] == 1


async def test_an_incident_message_that_did_not_reach_discord_is_posted(world: World) -> None:
    incident = await _interrupted_create(world, reached_discord=False)
    shown = [m for m in bot_messages(world, "alerts") if f"#{incident} " in m.content and m.embeds]
    assert len(shown) == 1 and "2 firing" in embed_text(shown[0])
    assert world.app.alerts.outbox.stats["adopted"] == 0


async def _interrupted_timeline_post(world: World, *, reached_discord: bool) -> tuple[list[str], str]:
    """A timeline post under an incident's message that a dead process may have made; returns what
    the thread shows and the post's text."""
    alerts = world.app.alerts
    store = alerts.store
    store.options = dataclasses.replace(store.options, timeline_delay_seconds=3600)  # no timeline yet
    await alerts.ingest(payload([alert("TimelineDrill", service="chat", env="prod")], group="timeline"))
    await alerts.wait_idle(10)  # the incident's message is posted
    await alerts.outbox.stop()  # the dead process's sender: nothing runs while we set the scene
    [incident] = await alerts.incidents()
    await alerts.ack(incident.id, world.members["oncall"].id, "oncall")  # a second entry: a thread opens
    edit, _ = await world.app.db.run(store.next_work, "alerts")  # the dead process edits the message…
    await world.app.notifier.edit("alerts", edit.message_id, alerts._render_message(edit))
    await world.app.db.run(store.message_sent, edit.delivery_id, edit.version, None)
    store.options = dataclasses.replace(store.options, timeline_delay_seconds=0)
    work, _ = await world.app.db.run(store.next_work, "alerts")  # …then posts the timeline
    assert isinstance(work, TimelineWork), work
    text = alerts._render_timeline(work)
    if reached_discord:
        await world.app.notifier.thread_post("alerts", work.message_id, work.thread_name, text)
    await world.app.db.run(store.timeline_started, work.delivery_id, work.entry_ids, text)
    # (and died before timeline_posted)
    await alerts.outbox.start()  # the next leader's sender
    await alerts.wait_idle(10)
    [thread] = world.channels["alerts"].threads
    return [m.content for m in thread.history() if m.author.id == world.bot.user.id], text


async def test_a_timeline_post_that_reached_discord_is_not_posted_again(world: World) -> None:
    posts, text = await _interrupted_timeline_post(world, reached_discord=True)
    assert "acknowledged by oncall" in text
    assert posts == [text], posts
    assert world.app.alerts.outbox.stats["adopted"] == 1


async def test_a_timeline_post_that_did_not_reach_discord_is_posted(world: World) -> None:
    posts, text = await _interrupted_timeline_post(world, reached_discord=False)
    assert posts == [text], posts
    assert world.app.alerts.outbox.stats["adopted"] == 0
