"""`!rollback` without a revision never goes back to a release that failed under the bot.

Finding 10 of issue 13: after `!deploy … v3-broken` failed and was rolled back automatically, the
next `!rollback` picked the broken revision (the newest earlier one) and failed again, on Docker and on
Kubernetes alike. The default target is now the newest earlier revision whose version did not fail its
last rollout under the bot (the audit log says which did); the answer names what it skipped; an
explicit revision keeps `kubectl rollout undo --to-revision` semantics, with a warning when it is
known bad. What runs is read from the cluster and from the Docker API, never from the bot.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.bot.helpers import embed_text, say
from tests.bot.test_docker_chat import docker_world  # noqa: F401 - the Docker-only world fixture

pytestmark = pytest.mark.integration


def image_of(world, service: str, env: str) -> str:
    api = k8s.AppsV1Api(k8s_config.new_client_from_config(str(world.app.settings.kubeconfig)))
    return api.read_namespaced_deployment(service, env).spec.template.spec.containers[0].image


def bot_messages(world, channel: str = "ops"):
    bot_id = world.bot.user.id
    return [m for m in world.channels[channel].history() if m.author.id == bot_id]


async def finish(world, timeout: float = 120) -> None:
    await world.app.supervisor.join(timeout=timeout)


async def test_kubernetes_rollback_skips_the_release_that_failed(world):
    # staging history: 1 v1.4.0, 2 v1.5.0 (running). The broken deploy becomes 3, and the automatic
    # rollback makes v1.5.0 revision 4 (kubectl's arithmetic): 1 v1.4.0, 3 v1.6.0-broken, 4 v1.5.0.
    await say(world, "mod", "!deploy auth staging v1.6.0-broken")
    await finish(world)
    assert "↩️ rolled back to **v1.5.0** automatically" in embed_text(bot_messages(world)[-1])
    assert image_of(world, "auth", "staging").endswith(":v1.5.0")

    await say(world, "mod", "!rollback auth staging")
    await finish(world)
    notes = [m.content for m in bot_messages(world) if m.content.startswith("↷ ")]
    assert len(notes) == 1 and notes[0].startswith("↷ skipped revision 3 (v1.6.0-broken): its deploy by mod "
                                                   "failed ("), notes
    assert "✅ rolled back **auth** in **staging** to **v1.4.0**" in embed_text(bot_messages(world)[-1])
    assert image_of(world, "auth", "staging").endswith(":v1.4.0")
    (record,) = await world.app.audit.query(action="rollback")
    assert (record.result, record.args["version"]) == ("ok", "v1.4.0")


async def test_an_explicit_known_bad_revision_is_kept_with_a_warning(world):
    await say(world, "mod", "!deploy auth staging v1.6.0-broken")
    await finish(world)
    history = embed_text(await say(world, "mod", "!history auth staging"))
    assert "`  3` `v1.6.0-broken`" in history
    reply = await say(world, "mod", "!rollback auth staging 3 --dry-run")
    text = embed_text(reply)
    assert "🧪 dry run: roll back auth in staging to revision 3 (v1.6.0-broken)" in text
    assert "revision 3 (v1.6.0-broken) is known bad: its deploy by mod failed" in text
    # A default dry run says what it would skip.
    text = embed_text(await say(world, "mod", "!rollback auth staging --dry-run"))
    assert "to revision 1 (v1.4.0)" in text and "skipped revision 3 (v1.6.0-broken)" in text

    await say(world, "mod", "!rollback auth staging 3")  # kubectl rollout undo --to-revision=3: as asked
    warning = next(m.content for m in bot_messages(world) if m.content.startswith("⚠️ revision 3"))
    assert warning.startswith("⚠️ revision 3 (v1.6.0-broken) is known bad: its deploy by mod failed")
    await finish(world)
    text = embed_text(bot_messages(world)[-1])
    assert "❌" in text and "v1.6.0-broken" in text and "rolled back to **v1.5.0** automatically" in text
    assert image_of(world, "auth", "staging").endswith(":v1.5.0")


async def test_docker_rollback_skips_the_release_that_failed(dockerd, container_name, docker_world):  # noqa: F811
    world = docker_world
    dockerd.run(container_name, dockerd.image("chat", "v1"))
    dockerd.image("chat", "v2")
    dockerd.image("chat", "v3-broken")
    await say(world, "mod", "!deploy chat dev v2")
    await finish(world)
    v2 = dockerd.api.inspect_container(container_name)["Id"]
    await say(world, "mod", "!deploy chat dev v3-broken")
    await finish(world)
    assert "↩️ rolled back to **v2** automatically" in embed_text(bot_messages(world)[-1])
    assert dockerd.api.inspect_container(container_name)["Id"] == v2

    text = embed_text(await say(world, "mod", "!rollback chat dev --dry-run"))
    assert "🧪 dry run: roll back chat in dev to revision 1 (v1)" in text
    assert f"on docker, container `{container_name}`" in text and "↷ skipped revision 3 (v3-broken)" in text
    assert dockerd.api.inspect_container(container_name)["Id"] == v2

    await say(world, "mod", "!rollback chat dev")
    await finish(world)
    notes = [m.content for m in bot_messages(world) if m.content.startswith("↷ ")]
    assert len(notes) == 1 and notes[0].startswith("↷ skipped revision 3 (v3-broken): its deploy by mod failed"), notes
    assert "✅ rolled back **chat** in **dev** to **v1**" in embed_text(bot_messages(world)[-1])
    running = dockerd.api.inspect_container(container_name)
    assert running["Config"]["Image"] == "demo/chat:v1" and running["State"]["Running"]


async def test_no_default_target_when_every_earlier_release_failed(world):
    # dev runs chat v1.6.0-rc.1 (revision 2); its only earlier revision, v1.5.0, failed under the bot
    # (written to the audit log as the bot writes it after a failed rollout).
    await world.app.audit.record(user_id=1, user_name="mod", action="deploy", result="rolled_back", service="chat",
                                 env="dev", args={"version": "v1.5.0"}, detail="v1.5.0 failed (CrashLoopBackOff)")
    world.sandbox.reset_requests()
    reply = await say(world, "mod", "!rollback chat dev")
    assert reply.content.startswith("⚠️ every earlier revision of `chat` in `dev` failed its rollout under the bot "
                                    "(1 (v1.5.0: its deploy by mod failed (")
    assert reply.content.endswith("name one to go back to it anyway: `!rollback chat dev 1`")
    assert {a.verb for a in world.sandbox.requests_seen()} <= {"get", "list", "watch"}
    assert image_of(world, "chat", "dev").endswith(":v1.6.0-rc.1")
