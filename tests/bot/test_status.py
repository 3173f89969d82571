"""`!status` through simcord against the sandbox served over HTTP (no patched clients)."""

from __future__ import annotations

from tests.bot.helpers import embed_text, say


async def test_status_of_one_service_in_one_env(world):
    reply = await say(world, "member", "!status chat-gui prod")
    assert [e.title for e in reply.embeds] == ["chat-gui · prod"]
    fields = {f.name: f.value for f in reply.embeds[0].fields}
    assert fields["Version"] == "`v1.4.0`"
    assert fields["Replicas"] == "3/3 ready"
    assert "complete" in fields["Rollout"]
    assert fields["Pods (3)"].count("🟢") == 3


async def test_status_of_one_service_has_an_embed_per_env(world):
    reply = await say(world, "member", "!status chat-gui")
    assert [e.title for e in reply.embeds] == ["chat-gui · dev", "chat-gui · staging", "chat-gui · prod"]
    versions = [{f.name: f.value for f in e.fields}["Version"] for e in reply.embeds]
    assert versions == ["`v1.6.0-rc.1`", "`v1.5.0`", "`v1.4.0`"]


async def test_status_of_everything_is_one_embed_per_env_with_a_line_per_service(world):
    reply = await say(world, "member", "!status")
    assert [e.title for e in reply.embeds] == ["dev", "staging", "prod"]
    prod = reply.embeds[2]
    assert [f.name for f in prod.fields] == ["chat", "chat-gui", "modbot", "auth", "strims"]
    assert all(f.value.startswith("`v1.4.0` · 3/3 ready") for f in prod.fields)


async def test_status_of_an_env_alone(world):
    reply = await say(world, "member", "!status staging")
    assert [e.title for e in reply.embeds] == ["staging"]
    assert all("2/2 ready" in f.value for f in reply.embeds[0].fields)


async def test_unknown_names_get_a_suggestion(world):
    reply = await say(world, "member", "!status chatgui prod")
    assert reply.content == "⚠️ no service `chatgui` — did you mean `chat-gui`?"
    reply = await say(world, "member", "!status chat-gui prd")
    assert reply.content == "⚠️ no env `prd` — did you mean `prod`?"


async def test_slash_status(world):
    result = await world.members["member"].slash(world.channels["ops"], "status", service="auth", env="staging")
    message = result.followups[-1] if result.followups else result.response
    assert "v1.5.0" in embed_text(message.message)


async def test_unreachable_cluster_is_a_message_not_a_traceback(world):
    world.sandbox.stop()
    reply = await say(world, "member", "!status auth prod")
    text = embed_text(reply)
    assert "cannot reach the cluster" in text
    assert "Traceback" not in text


async def test_slash_options_autocomplete_from_the_catalog(world):
    member = world.members["member"]
    choices = await member.autocomplete(world.channels["ops"], "status", "service", "chat")
    assert [c["value"] for c in choices] == ["chat", "chat-gui"]
    choices = await world.members["mod"].autocomplete(world.channels["ops"], "deploy", "env", "st")
    assert [c["value"] for c in choices] == ["staging"]
