"""The chat layer on a Docker-only catalog: simcord + a real dockerd (tests/conftest_docker.py).

The same commands, permissions and messages as on Kubernetes (tests/bot/test_deploy.py); what
runs is checked through the Docker API, never through the adapter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.world import World, open_world
from config.settings import load_settings
from tests.bot.helpers import embed_text, say
from tests.conftest_docker import DockerHost

pytestmark = pytest.mark.integration


@pytest.fixture
async def docker_world(dockerd: DockerHost, container_name: str, tmp_path: Path) -> AsyncIterator[World]:
    """A world whose only service, chat, runs in dev as a container on the test dockerd."""
    settings = load_settings(
        None, data_dir=tmp_path, docker_host=dockerd.url, promotion=["dev"], rollout_poll_seconds=0.2,
        environments={"dev": {"timeout_seconds": 60}},
        services={"chat": {"repository": "demo/chat", "description": "chat backend",
                           "envs": {"dev": {"type": "docker", "container": container_name,
                                            "health_wait_seconds": 1}}}},
    )
    async with open_world(settings=settings, data_dir=tmp_path, clock_context=False) as w:
        yield w


def bot_messages(world: World, channel: str = "ops"):
    bot_id = world.bot.user.id
    return [m for m in world.channels[channel].history() if m.author.id == bot_id]


async def finish(world: World, timeout: float = 90) -> None:
    await world.app.supervisor.join(timeout=timeout)


async def test_deploy_and_status_work_as_on_kubernetes(dockerd, container_name, docker_world):
    world = docker_world
    assert world.sandbox is None and set(world.app.platforms) == {"docker"}  # no cluster was started
    first = dockerd.run(container_name, dockerd.image("chat", "v1"), restart="unless-stopped")
    dockerd.image("chat", "v2")

    status = embed_text(await say(world, "member", "!status chat dev"))
    assert "`v1`" in status and "1/1 ready" in status and f"container {container_name}" in status

    before = len(bot_messages(world))
    await say(world, "mod", "!deploy chat dev v2")
    await finish(world)
    new = bot_messages(world)[before:]
    assert len(new) == 1, [m.content for m in new]  # one message, edited in place
    assert "✅ deployed **chat v2** to **dev** in" in embed_text(new[0])
    assert bot_messages(world, "deploys")[-1].content.startswith("✅ mod deployed chat v1 → v2 to dev in")
    running = dockerd.api.inspect_container(container_name)
    assert running["Config"]["Image"] == "demo/chat:v2" and running["Id"] != first
    assert running["Config"]["Labels"]["opsbot.change-cause"] == "opsbot: deploy chat v2 by mod in #ops"
    (record,) = await world.app.audit.query(action="deploy")
    assert (record.user_name, record.result, record.env) == ("mod", "ok", "dev")

    status = embed_text(await say(world, "member", "!status chat dev"))
    assert "`v2`" in status and "Revision: 2" in status
    history = embed_text(await say(world, "mod", "!history chat dev"))
    assert "`  2` `v2`" in history and "← **running**" in history and "`  1` `v1`" in history

    refused = await say(world, "member", "!deploy chat dev v1")
    assert "you may not do that — it needs the `deploy` grant" in refused.content, refused.content
    assert dockerd.api.inspect_container(container_name)["Id"] == running["Id"]


async def test_failed_deploy_is_rolled_back_and_says_why(dockerd, container_name, docker_world):
    world = docker_world
    first = dockerd.run(container_name, dockerd.image("chat", "v1"))
    dockerd.image("chat", "v3-broken")
    await say(world, "mod", "!deploy chat dev v3-broken")
    await finish(world)
    text = embed_text(bot_messages(world)[-1])
    assert "❌ rollout of **chat v3-broken** to **dev** failed: Exited: exited with code 3" in text
    assert "fatal: cannot read /etc/app.conf" in text
    assert "↩️ rolled back to **v1** automatically" in text
    assert dockerd.api.inspect_container(container_name)["Id"] == first
    (record,) = await world.app.audit.query(action="deploy")
    assert record.result == "rolled_back"


async def test_rollback_to_a_revision_and_logs(dockerd, container_name, docker_world):
    world = docker_world
    first = dockerd.run(container_name, dockerd.image("chat", "v1"))
    dockerd.image("chat", "v2")
    await say(world, "mod", "!deploy chat dev v2")
    await finish(world)
    await say(world, "mod", "!rollback chat dev 1")
    await finish(world)
    assert "✅ rolled back **chat** in **dev** to **v1** (revision 1)" in embed_text(bot_messages(world)[-1])
    assert dockerd.api.inspect_container(container_name)["Id"] == first
    history = embed_text(await say(world, "mod", "!history chat dev"))
    assert "`  3` `v1`" in history and "`  2` `v2`" in history and "`  1`" not in history

    reply = await say(world, "mod", "!logs chat dev --tail 3 --grep request")
    assert reply.content.startswith("📜 `chat` in `dev`: ")
    assert f"{container_name} | chat v1 handled request" in reply.content
    assert "token=[REDACTED]" in reply.content and "s3cr3t" not in reply.content
