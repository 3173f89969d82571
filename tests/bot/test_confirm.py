"""Confirm / Approve / Cancel through the real bot (simcord + the sandbox cluster).

- Approvals count user IDs: an approver who renames themselves still counts once.
- The press that completes a request re-checks the invoker's grant, locks and freezes then: a
  freeze declared during the minute wins.
- Pending requests live in the database: a press after a restart (a new App and bot on the same
  world and database, as after a crash or a failover) is honoured within the expiry; an expired
  one is answered plainly and its buttons are disabled; a request starts at most once, even when
  two replicas press at the same moment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from bot.app import App, create_bot
from bot.world import World
from config.settings import EnvConfig
from tests.bot.helpers import say


def image_of(world: World, service: str, env: str) -> str:
    api = k8s.AppsV1Api(k8s_config.new_client_from_config(str(world.app.settings.kubeconfig)))
    return api.read_namespaced_deployment(service, env).spec.template.spec.containers[0].image


def message(world: World, message_id: int, channel: str = "ops"):  # type: ignore[no-untyped-def]
    return next(m for m in world.channels[channel].history() if m.id == message_id)


def labels(msg) -> list[tuple[str, bool]]:  # type: ignore[no-untyped-def]
    return [(b.label, b.disabled) for row in msg.components for b in row.children]


async def settle(world: World) -> None:
    await world.env.settle()


@pytest.fixture(autouse=True)
def no_errors_in_the_bot(request: pytest.FixtureRequest) -> Iterator[None]:
    """Any exception inside the bot (a listener, a button) fails the test."""
    yield
    world = request.node.funcargs.get("world")
    if world is not None:
        assert not world.env.errors, world.env.errors


# ----------------------------------------------------------------------------- identity


async def test_an_approver_who_renames_still_counts_once(world: World) -> None:
    world.app.settings.environments["staging"] = EnvConfig(approvals=2, timeout_seconds=120)
    ask = await say(world, "mod", "!deploy chat staging v1.5.1")
    await world.members["mod"].click(ask, label="Confirm")
    await world.members["admin"].click(ask, label="Approve")
    world.env.backend.edit_member(world.guild.id, world.members["admin"].id, {"nick": "definitely-someone-else"})
    await settle(world)
    assert world.members["admin"].member.display_name == "definitely-someone-else"
    again = await world.members["admin"].click(message(world, ask.id), label="Approve")
    assert again.response.content == "You approved this already."
    shown = message(world, ask.id).content
    assert "— admin." in shown and "definitely-someone-else" not in shown, shown
    assert image_of(world, "chat", "staging").endswith(":v1.5.0")  # one approval of two: nothing ran

    second = world.guild.add_member(world.env.create_user("admin2"), roles=[world.roles["Admin"]])
    await settle(world)
    await second.click(message(world, ask.id), label="Approve")
    await world.app.supervisor.join(timeout=90)
    assert image_of(world, "chat", "staging").endswith(":v1.5.1")
    assert "approved by admin, admin2" in message(world, ask.id).content


# ----------------------------------------------------------------------------- re-checks at the press


async def test_a_freeze_declared_during_the_minute_wins(world: World) -> None:
    ask = await say(world, "mod", "!deploy chat-gui prod v1.5.0")
    await say(world, "admin", "!freeze prod 1h incident review")
    pressed = await world.members["mod"].click(ask, label="Confirm")
    answer = pressed.response.content
    assert "frozen" in answer and "incident review" in answer and "Nothing was started." in answer, answer
    await world.app.supervisor.join(timeout=30)
    assert image_of(world, "chat-gui", "prod").endswith(":v1.4.0")
    assert ("Confirm", False) in labels(message(world, ask.id))  # nothing recorded: still pending
    denied = [r for r in await world.app.audit.query(action="deploy") if r.result == "denied"]
    assert denied and "incident review" in denied[-1].detail


async def test_a_lock_taken_during_the_minute_wins(world: World) -> None:
    ask = await say(world, "mod", "!deploy chat prod v1.5.0")
    await say(world, "admin", "!lock prod chat db upgrade for 1h")
    pressed = await world.members["mod"].click(ask, label="Confirm")
    assert "locked by admin" in pressed.response.content and "db upgrade" in pressed.response.content
    await world.app.supervisor.join(timeout=30)
    assert image_of(world, "chat", "prod").endswith(":v1.4.0")


async def test_an_invoker_who_lost_the_grant_cannot_confirm(world: World) -> None:
    ask = await say(world, "mod", "!deploy auth prod v1.5.0")
    world.env.backend.remove_member_role(world.guild.id, world.members["mod"].id, world.roles["Mod"].id)
    await settle(world)
    pressed = await world.members["mod"].click(ask, label="Confirm")
    assert pressed.response.content.startswith("🚫 mod no longer holds the `deploy:prod` grant for `auth`")
    await world.app.supervisor.join(timeout=30)
    assert image_of(world, "auth", "prod").endswith(":v1.4.0")
    (record,) = await world.app.audit.query(action="deploy")
    assert (record.result, record.user_name, record.env) == ("denied", "mod", "prod")


async def test_an_approver_who_lost_the_role_no_longer_counts(world: World) -> None:
    world.app.settings.environments["staging"] = EnvConfig(approvals=1, timeout_seconds=120)
    ask = await say(world, "mod", "!deploy chat staging v1.5.1")
    await world.members["admin"].click(ask, label="Approve")
    world.env.backend.remove_member_role(world.guild.id, world.members["admin"].id, world.roles["Admin"].id)
    await settle(world)
    await world.members["mod"].click(message(world, ask.id), label="Confirm")
    shown = message(world, ask.id).content
    assert "waiting for approval" in shown and "nobody yet" in shown, shown
    await world.app.supervisor.join(timeout=30)
    assert image_of(world, "chat", "staging").endswith(":v1.5.0")


# ----------------------------------------------------------------------------- restarts


@asynccontextmanager
async def restarted(world: World) -> AsyncIterator[App]:
    """The bot process dies and a new one starts on the same world and database: nothing held in
    memory survives (simcord cancels the old bot's tasks, the expiry timers among them)."""
    async with App.open(world.app.settings, serve_http=False, lead=False, clock=world.app.clock) as app:
        old_app, old_bot = world.app, world.bot
        bot = create_bot(app)
        await world.env.restart_bot(bot)
        world.app, world.bot = app, bot
        try:
            yield app
            await app.supervisor.join(timeout=90)
        finally:
            world.app, world.bot = old_app, old_bot


async def test_a_confirmation_asked_before_a_restart_is_honoured_after_it(world: World) -> None:
    ask = await say(world, "mod", "!deploy chat-gui prod v1.5.0")
    async with restarted(world) as app:
        pressed = await world.members["mod"].click(message(world, ask.id), label="Confirm")
        assert pressed.response is None or not pressed.response.ephemeral, pressed.response
        shown = message(world, ask.id)
        assert shown.content.startswith("✅ deploy chat-gui v1.5.0 to prod — confirmed by mod"), shown.content
        await app.supervisor.join(timeout=90)
        assert image_of(world, "chat-gui", "prod").endswith(":v1.5.0")
        again = await world.members["mod"].click(shown, label="Confirm") if shown.components else None
        assert again is None  # the buttons are gone once it started


async def test_a_confirmation_that_expires_while_the_bot_is_down_is_marked_expired(world: World) -> None:
    ask = await say(world, "mod", "!deploy auth prod v1.5.0")
    async with restarted(world):
        await world.env.advance_time(61)  # the new bot timed it from the database
        shown = message(world, ask.id)
        assert shown.content.startswith("⌛ deploy auth v1.5.0 to prod — expired"), shown.content
        assert labels(shown) == [("Confirm", True), ("Cancel", True)]
    assert image_of(world, "auth", "prod").endswith(":v1.4.0")
    (record,) = await world.app.audit.query(action="deploy")
    assert record.result == "cancelled" and "expired" in record.detail


async def test_a_press_after_the_expiry_is_answered_and_disables_the_buttons(world: World) -> None:
    ask = await say(world, "mod", "!deploy auth prod v1.5.0")
    for key in list(world.app.pending._timers):  # no timer (a bot that died before it fired)
        world.app.pending.disarm(key)
    await world.env.advance_time(61)
    assert labels(message(world, ask.id)) == [("Confirm", False), ("Cancel", False)]
    pressed = await world.members["mod"].click(message(world, ask.id), label="Confirm")
    followups = [f.content for f in pressed.followups]
    assert any("expired" in f and "nothing was done" in f for f in followups), followups
    shown = message(world, ask.id)
    assert shown.content.startswith("⌛ deploy auth v1.5.0 to prod — expired")
    assert labels(shown) == [("Confirm", True), ("Cancel", True)]
    await world.app.supervisor.join(timeout=30)
    assert image_of(world, "auth", "prod").endswith(":v1.4.0")
