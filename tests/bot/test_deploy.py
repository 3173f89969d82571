"""Deploy, rollback, history, locks and logs end to end: simcord + the sandbox over HTTP.

Every check of the cluster's state goes through the Kubernetes API (the official client or
kubectl), never through the sandbox's internals, so the tests see what a real cluster would show.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.bot.helpers import embed_text, say
from tests.conftest import require_program

pytestmark = pytest.mark.integration


def apps(world) -> k8s.AppsV1Api:
    return k8s.AppsV1Api(k8s_config.new_client_from_config(str(world.app.settings.kubeconfig)))


def image_of(world, service: str, env: str) -> str:
    dep = apps(world).read_namespaced_deployment(service, env)
    return dep.spec.template.spec.containers[0].image


def change_cause(world, service: str, env: str) -> str:
    dep = apps(world).read_namespaced_deployment(service, env)
    return dep.metadata.annotations.get("kubernetes.io/change-cause", "")


def bot_messages(world, channel: str = "ops"):
    bot_id = world.bot.user.id
    return [m for m in world.channels[channel].history() if m.author.id == bot_id]


async def finish(world, timeout: float = 90) -> None:
    await world.app.supervisor.join(timeout=timeout)


async def test_deploy_to_staging_runs_and_reports(world):
    await say(world, "mod", "!deploy chat-gui staging v1.5.1")
    await finish(world)
    final = bot_messages(world)[-1]
    text = embed_text(final)
    assert "✅ deployed **chat-gui v1.5.1** to **staging** in" in text
    assert image_of(world, "chat-gui", "staging") == "registry.local/dgg/chat-gui:v1.5.1"
    assert change_cause(world, "chat-gui", "staging") == "opsbot: deploy chat-gui v1.5.1 by mod in #ops"
    summary = bot_messages(world, "deploys")[-1].content
    assert summary.startswith("✅ mod deployed chat-gui v1.5.0 → v1.5.1 to staging in")
    (record,) = await world.app.audit.query(action="deploy")
    assert (record.user_name, record.result, record.service, record.env) == ("mod", "ok", "chat-gui", "staging")
    reply = await say(world, "member", "!status chat-gui staging")
    assert "`v1.5.1`" in embed_text(reply)


async def test_progress_is_one_message_edited_in_place(world):
    before = len(bot_messages(world))
    await say(world, "mod", "!deploy modbot dev v1.7.0")
    await finish(world)
    new = bot_messages(world)[before:]
    assert len(new) == 1, [m.content for m in new]
    assert "✅ deployed **modbot v1.7.0** to **dev**" in embed_text(new[0])


async def test_prod_asks_for_confirmation_from_the_invoker_only(world):
    await say(world, "mod", "!deploy chat-gui prod")  # no version: promote what staging runs
    ask = bot_messages(world)[-1]
    assert "deploy chat-gui v1.5.0 to prod (promoted from staging)" in ask.content
    result = await world.members["admin"].click(ask, label="Confirm")
    assert result.response.content == "Only mod, who asked, can confirm this."
    assert image_of(world, "chat-gui", "prod").endswith(":v1.4.0")
    await world.members["mod"].click(ask, label="Confirm")
    await finish(world)
    assert image_of(world, "chat-gui", "prod").endswith(":v1.5.0")
    assert "✅ deployed **chat-gui v1.5.0** to **prod**" in embed_text(bot_messages(world)[-1])


async def test_confirmation_expires(world):
    await say(world, "mod", "!deploy auth prod v1.5.0")
    ask = bot_messages(world)[-1]
    await world.env.advance_time(61)
    ask = next(m for m in bot_messages(world) if m.id == ask.id)
    assert ask.content.startswith("⌛ deploy auth v1.5.0 to prod — expired")
    assert all(b.disabled for row in ask.components for b in row.children)
    assert image_of(world, "auth", "prod").endswith(":v1.4.0")
    (record,) = await world.app.audit.query(action="deploy")
    assert record.result == "cancelled" and "expired" in record.detail


async def test_cancel(world):
    await say(world, "mod", "!rollback strims prod")
    ask = bot_messages(world)[-1]
    await world.members["mod"].click(ask, label="Cancel")
    ask = next(m for m in bot_messages(world) if m.id == ask.id)
    assert "cancelled by mod" in ask.content and not ask.components


async def test_broken_version_is_rolled_back_automatically(world):
    await say(world, "mod", "!deploy auth staging v1.6.0-broken")
    await finish(world)
    text = embed_text(bot_messages(world)[-1])
    assert "❌ rollout of **auth v1.6.0-broken** to **staging** failed: CrashLoopBackOff" in text
    assert "↩️ rolled back to **v1.5.0** automatically" in text
    assert image_of(world, "auth", "staging").endswith(":v1.5.0")
    assert "failed" in bot_messages(world, "deploys")[-1].content
    (record,) = await world.app.audit.query(action="deploy")
    assert record.result == "rolled_back"


async def test_two_deploys_of_one_target_exactly_one_runs(world):
    await say(world, "mod", "!deploy chat dev v2.0.0")
    refused = await say(world, "admin", "!deploy chat dev v2.0.1")
    assert refused.content.startswith("⚠️ `chat` in `dev` is locked by mod since")
    assert "deploy chat v2.0.0 to dev" in refused.content
    await finish(world)
    assert image_of(world, "chat", "dev").endswith(":v2.0.0")
    assert [r.args["version"] for r in await world.app.audit.query(action="deploy")] == ["v2.0.0"]


async def test_manual_lock_blocks_and_shows_in_status(world):
    await say(world, "admin", "!lock prod chat db upgrade for 1h")
    refused = await say(world, "mod", "!deploy chat prod v1.5.0")
    assert refused.content.startswith("⚠️ `chat` in `prod` is locked by admin since")
    assert "db upgrade" in refused.content
    status = await say(world, "member", "!status chat prod")
    assert "🔒" in embed_text(status) and "db upgrade" in embed_text(status)
    await say(world, "admin", "!unlock prod chat")
    ask = await say(world, "mod", "!deploy chat prod v1.5.0")
    assert "Confirm" in [b.label for row in ask.components for b in row.children]


async def test_rollback_matches_kubectl_rollout_undo(world):
    kubectl = require_program("kubectl")
    kc = str(world.app.settings.kubeconfig)
    # Twins: strims and modbot in prod share the seeded history (v1.2.0, v1.3.0, v1.4.0).
    await say(world, "admin", "!rollback strims prod")
    await world.members["admin"].click(bot_messages(world)[-1], label="Confirm")
    await finish(world)
    assert "✅ rolled back **strims** in **prod** to **v1.3.0**" in embed_text(bot_messages(world)[-1])
    out = subprocess.run([kubectl, "--kubeconfig", kc, "rollout", "undo", "deployment/modbot", "-n", "prod"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr

    def template(name: str) -> dict:
        raw = subprocess.run([kubectl, "--kubeconfig", kc, "get", "deploy", name, "-n", "prod", "-o", "json"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        t = json.loads(raw)["spec"]["template"]
        # kubectl copies the ReplicaSet's template with its `creationTimestamp: null`; the bot's
        # client drops nulls. Both mean the same to the API server.
        if t["metadata"].get("creationTimestamp", "") is None:
            del t["metadata"]["creationTimestamp"]
        t["metadata"]["labels"].pop("app")
        c = t["spec"]["containers"][0]
        c["image"] = c["image"].replace("/modbot:", "/strims:")
        c["name"] = "x"
        return t

    assert template("strims") == template("modbot")


async def test_history_shows_changes_made_outside_the_bot(world):
    kubectl = require_program("kubectl")
    kc = str(world.app.settings.kubeconfig)
    out = subprocess.run([kubectl, "--kubeconfig", kc, "set", "image", "deployment/auth", "auth=registry.local/dgg/auth:v1.4.1",
                          "-n", "prod"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([kubectl, "--kubeconfig", kc, "rollout", "status", "deployment/auth", "-n", "prod",
                          "--timeout=60s"], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    reply = await say(world, "oncall", "!history auth prod")
    text = embed_text(reply)
    assert "`v1.4.1` · " in text and "← **running**" in text.split("`v1.4.1`")[1].split("\n")[0]
    assert "`v1.4.0`" in text


async def test_unknown_revision_lists_the_valid_ones(world):
    reply = await say(world, "oncall", "!rollback chat prod 42")
    assert reply.content == "⚠️ `chat` in `prod` has no revision 42; valid: `1` (v1.2.0), `2` (v1.3.0)"


async def test_first_env_needs_a_version(world):
    reply = await say(world, "mod", "!deploy chat dev")
    assert "`dev` is first in the promotion order: give a version" in reply.content
    reply = await say(world, "mod", "!deploy chat dev ..bad")
    assert "is not a valid image tag" in reply.content


async def test_logs_are_merged_prefixed_and_redacted(world):
    # --tail N: N lines read per pod (as kubectl), the newest N of the merged stream shown.
    reply = await say(world, "oncall", "!logs auth prod --tail 4")
    body = reply.content
    assert body.startswith("📜 `auth` in `prod`: 12 lines from 3 pods; showing the last 4")
    lines = body.split("```")[1].strip().splitlines()
    assert len(lines) == 4 and all(x.startswith("auth-") and " | " in x for x in lines)


async def test_long_logs_come_as_a_redacted_attachment(world):
    reply = await say(world, "oncall", "!logs auth prod --tail 400")
    assert reply.content.startswith("📜 `auth` in `prod`: 1,200 lines from 3 pods; showing the last 400")
    (attachment,) = reply.attachments
    assert attachment.filename.endswith((".txt", ".txt.gz"))
    data = await attachment.read()
    if attachment.filename.endswith(".gz"):
        import gzip

        data = gzip.decompress(data)
    text = data.decode()
    assert len(text.splitlines()) == 400
    pods = [line.split(" | ", 1)[0] for line in text.splitlines()]
    assert all(p.startswith("auth-") for p in pods) and len(set(pods)) == 3
    assert "Bearer [REDACTED]" in text and "eyJ" not in text
    assert "password=[REDACTED]" in text


async def test_bad_log_options_get_clear_messages(world):
    reply = await say(world, "oncall", "!logs auth prod --grep (")
    assert reply.content.startswith("⚠️ ") and "not a valid regular expression" in reply.content
    reply = await say(world, "oncall", "!logs auth prod --tail 9999999")
    assert reply.content.startswith("⚠️ ")
    reply = await say(world, "oncall", "!logs auth prod --frobnicate")
    assert reply.content.startswith("⚠️ ") and "--since" in reply.content


async def test_approval_by_a_second_person(world):
    from config.settings import EnvConfig

    world.app.settings.environments["staging"] = EnvConfig(approvals=1, timeout_seconds=120)
    await say(world, "mod", "!deploy chat staging v1.5.1")
    ask = bot_messages(world)[-1]
    assert [b.label for row in ask.components for b in row.children] == ["Confirm", "Approve", "Cancel"]
    own = await world.members["mod"].click(ask, label="Approve")
    assert own.response.content == "You can't approve your own request; a second person must."
    await world.members["mod"].click(ask, label="Confirm")
    ask = next(m for m in bot_messages(world) if m.id == ask.id)
    assert "waiting for approval" in ask.content
    refused = await world.members["oncall"].click(ask, label="Approve")
    assert refused.response.content == "Approving needs the `deploy:staging` grant."
    assert image_of(world, "chat", "staging").endswith(":v1.5.0")
    await world.members["admin"].click(ask, label="Approve")
    await finish(world)
    assert image_of(world, "chat", "staging").endswith(":v1.5.1")
    ask = next(m for m in bot_messages(world) if m.id == ask.id)
    assert "approved by admin" in ask.content
