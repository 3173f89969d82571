"""Unknown options and surplus arguments are refused before anything runs; `--dry-run` shows a plan.

Finding 13 of issue 13: `!deploy chat-gui staging v1.5.1 --dry-run` deployed for real, and so did
`--canary`; `!status chat-gui prod --bogus extra words` ignored the rest. Every command, prefix and
slash, now refuses them with its usage and a suggestion (bot/options.py). What reached the cluster is
read from the sandbox's own record of the requests it served, never from the bot.
"""

from __future__ import annotations

import pytest

from bot.options import Option, OptionError, OptionSpec
from tests.bot.helpers import embed_text, say

READS = {"get", "list", "watch"}


def writes(world) -> set:
    """Requests the sandbox served that change something (anything but get, list, watch)."""
    return {a for a in world.sandbox.requests_seen() if a.verb not in READS}


def bot_messages(world, channel: str = "ops"):
    bot_id = world.bot.user.id
    return [m for m in world.channels[channel].history() if m.author.id == bot_id]


def image_of(world, service: str, env: str) -> str:
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    api = k8s.AppsV1Api(k8s_config.new_client_from_config(str(world.app.settings.kubeconfig)))
    return api.read_namespaced_deployment(service, env).spec.template.spec.containers[0].image


# ----------------------------------------------------------------------------- the parser


SPEC = OptionSpec((Option("--dry-run"), Option("--force"), Option("--scale", "N", "2")))


@pytest.mark.parametrize(("words", "values", "rest"), [
    ([], {}, []),
    (["v1", "--dry-run"], {"--dry-run": True}, ["v1"]),
    (["--FORCE", "v1"], {"--force": True}, ["v1"]),
    (["\u2014dry-run"], {"--dry-run": True}, []),  # what a phone makes of `--dry-run`
    (["--scale", "0", "x"], {"--scale": "0"}, ["x"]),
    (["--scale=3"], {"--scale": "3"}, []),
    (["--", "`--force`", '"--force"', "-x"], {}, ["--", "`--force`", '"--force"', "-x"]),  # text, not options
])
def test_parse_splits_options_from_words(words, values, rest):
    parsed = SPEC.parse(words, "!x")
    assert (parsed.values, parsed.words) == (values, rest)


@pytest.mark.parametrize(("words", "message"), [
    (["--dryrun"], "unknown option `--dryrun` for `!x` — did you mean `--dry-run`? (it knows `--dry-run`, "
                   "`--force`, `--scale N`)"),
    (["--canary"], "unknown option `--canary` for `!x` (it knows `--dry-run`, `--force`, `--scale N`)"),
    (["--force", "--force"], "`--force` is given twice"),
    (["--scale"], "`--scale` needs a value, e.g. `--scale 2`"),
    (["--scale", "--force"], "`--scale` needs a value, e.g. `--scale 2`"),
    (["--force=yes"], "`--force` takes no value"),
])
def test_parse_refuses_with_a_reason(words, message):
    with pytest.raises(OptionError) as e:
        SPEC.parse(words, "!x")
    assert str(e.value) == message


def test_a_command_without_options_says_so():
    with pytest.raises(OptionError, match=r"^unknown option `--bogus` for `!status`: it takes no options$"):
        OptionSpec().parse(["chat", "--bogus"], "!status")


# ----------------------------------------------------------------------------- in chat


async def test_deploy_with_an_unknown_option_changes_nothing(world):
    world.sandbox.reset_requests()
    reply = await say(world, "mod", "!deploy chat-gui staging v1.5.1 --canary")
    assert reply.content.startswith("⚠️ unknown option `--canary` for `!deploy` (it knows `--dry-run`, `--force`)")
    assert "usage: `!deploy <service> <env> [version] [--dry-run] [--force]`" in reply.content
    reply = await say(world, "mod", "!deploy chat-gui staging v1.5.1 --dryrun")
    assert "did you mean `--dry-run`?" in reply.content
    # prod asks for a Confirm press first: the refusal comes before any question.
    reply = await say(world, "mod", "!deploy chat-gui prod v1.5.1 --canary")
    assert reply.content.startswith("⚠️ unknown option `--canary`") and not reply.components
    await world.app.supervisor.join(timeout=30)
    assert image_of(world, "chat-gui", "staging").endswith(":v1.5.0")
    assert image_of(world, "chat-gui", "prod").endswith(":v1.4.0")
    assert writes(world) == set()
    assert await world.app.audit.query() == []
    assert await world.app.locks.active() == []


async def test_surplus_words_and_options_are_refused_with_the_usage(world):
    reply = await say(world, "member", "!status chat-gui prod --bogus extra words")
    assert reply.content == ("⚠️ unknown option `--bogus` for `!status`: it takes no options — usage: "
                             "`!status [service] [env]`")
    reply = await say(world, "member", "!status chat-gui prod extra words")
    assert reply.content == ("⚠️ `!status` takes nothing after that: `extra words` is too many — usage: "
                             "`!status [service] [env]`")
    reply = await say(world, "mod", "!history chat prod 3")
    assert reply.content.startswith("⚠️ `!history` takes nothing after that: `3` is too many")
    reply = await say(world, "mod", "!rollback chat prod 1 2")
    assert reply.content.startswith("⚠️ `2` is not a revision number — usage: `!rollback <service> <env> "
                                    "[revision] [--dry-run] [--force]`")
    reply = await say(world, "mod", "!deploy chat dev v2 v3")
    assert reply.content.startswith("⚠️ `v3` is too many after the version")
    assert writes(world) == set() and await world.app.audit.query() == []


async def test_a_misspelt_subcommand_is_named(world):
    reply = await say(world, "admin", "!maintenance scheduel chat prod tomorrow 04:00 30m db upgrade")
    assert reply.content.startswith("⚠️ `!maintenance` has no subcommand `scheduel` — did you mean "
                                    "`!maintenance schedule`? (it has `cancel`, `end`, `extend`, `schedule`)")
    reply = await say(world, "admin", "!maintenance cancle")
    assert reply.content.startswith("⚠️ `!maintenance cancle`: no such list or subcommand — did you mean "
                                    "`!maintenance cancel`?")
    reply = await say(world, "mod", "!oncall overide @admin 4h")
    assert reply.content.startswith("⚠️ `!oncall` has no subcommand `overide` — did you mean `!oncall override`?")
    assert await world.app.maintenance.windows(limit=5) == [] and await world.app.audit.query() == []


async def test_a_reason_with_an_unknown_option_does_not_lock_or_freeze(world):
    reply = await say(world, "admin", "!lock prod chat db migration --dry-run")
    assert reply.content.startswith("⚠️ unknown option `--dry-run` for `!lock`: it takes no options")
    reply = await say(world, "admin", "!freeze prod 2d release week --dry-run")
    assert reply.content.startswith("⚠️ unknown option `--dry-run` for `!freeze`")
    reply = await say(world, "admin", "!maintenance schedule chat prod tomorrow 04:00 30m db --scael 0")
    assert reply.content.startswith("⚠️ unknown option `--scael` for `!maintenance schedule` — did you mean "
                                    "`--scale`?")
    assert await world.app.locks.active() == [] and await world.app.freezes.active() == []
    assert await world.app.maintenance.windows(limit=5) == []
    assert await world.app.audit.query() == []
    # In backticks or quotes, such a word is text.
    reply = await say(world, "admin", "!lock prod chat `--force` is banned today")
    assert reply.content.startswith("🔒 `chat` in `prod` locked by admin") and "`--force` is banned" in reply.content


# Every command with an option-like word where it takes a value or nothing more: refused, with its
# usage, before anything runs. Free-text arguments (PromQL) are the only place `--words` are text.
EVERY_COMMAND = {
    "help": "!help --bogusx", "perms": "!perms --bogusx", "status": "!status --bogusx",
    "audit": "!audit --bogusx", "deploy": "!deploy chat dev v2 --bogusx", "rollback": "!rollback chat dev --bogusx",
    "history": "!history chat dev --bogusx", "lock": "!lock prod --bogusx", "unlock": "!unlock prod --bogusx",
    "locks": "!locks --bogusx", "logs": "!logs auth prod --bogusx", "incidents": "!incidents --bogusx",
    "incidents stats": "!incidents stats --bogusx", "incident": "!incident --bogusx", "ack": "!ack --bogusx",
    "unack": "!unack --bogusx", "note": "!note 1 restarted --bogusx", "resolve": "!resolve --bogusx",
    "alerts": "!alerts --bogusx", "silences": "!silences --bogusx", "silence": "!silence alertname=X 1h --bogusx",
    "unsilence": "!unsilence --bogusx", "testalert": "!testalert chat dev --bogusx", "oncall": "!oncall --bogusx",
    "oncall override": "!oncall override --bogusx 4h", "oncall swap": "!oncall swap --bogusx",
    "oncall cancel": "!oncall cancel --bogusx", "maintenance": "!maintenance --bogusx",
    "maintenance schedule": "!maintenance schedule chat prod now 1h x --bogusx",
    "maintenance cancel": "!maintenance cancel --bogusx", "maintenance extend": "!maintenance extend 1 --bogusx",
    "maintenance end": "!maintenance end --bogusx", "freeze": "!freeze prod 1h x --bogusx",
    "unfreeze": "!unfreeze prod --bogusx",
}
FREE_TEXT = {"graph", "query"}  # PromQL: its `--words` are its own


async def test_every_command_refuses_an_unknown_option_before_it_runs(world):
    names = {c.qualified_name for c in world.bot.walk_commands()}
    assert names == set(EVERY_COMMAND) | FREE_TEXT, "a new command needs a line here"
    world.sandbox.reset_requests()
    for name, line in EVERY_COMMAND.items():
        reply = await say(world, "admin", line)
        assert reply.content.startswith(f"⚠️ unknown option `--bogusx` for `!{name}`"), (line, reply.content)
        assert "— usage: `!" + name in reply.content, (line, reply.content)
    assert writes(world) == set()
    assert await world.app.audit.query() == []
    assert await world.app.alerts.incidents(open_only=False) == []


async def test_slash_deploy_refuses_an_unknown_option(world):
    ops = world.channels["ops"]
    result = await world.members["mod"].slash(ops, "deploy", service="chat-gui", env="staging", version="v1.5.1",
                                              options="--canary")
    message = (result.followups[-1] if result.followups else result.response).message
    assert message.content.startswith("⚠️ unknown option `--canary` for `/deploy`")
    await world.app.supervisor.join(timeout=30)
    assert image_of(world, "chat-gui", "staging").endswith(":v1.5.0")
    assert await world.app.audit.query() == []


# ----------------------------------------------------------------------------- --dry-run


async def test_deploy_dry_run_shows_the_plan_and_changes_nothing(world):
    world.sandbox.reset_requests()
    reply = await say(world, "mod", "!deploy chat-gui staging v1.5.1 --dry-run")
    text = embed_text(reply)
    assert "🧪 dry run: deploy chat-gui v1.5.1 to staging" in text
    assert "**Change** `v1.5.0` → `v1.5.1` (image `registry.local/dgg/chat-gui:v1.5.1`) on kubernetes" in text
    timeout = world.app.settings.env("staging").timeout_seconds
    assert "**Strategy** the Deployment's own rolling update" in text and f"for at most {timeout} s" in text
    assert "on failure: an automatic rollback to what runs now" in text
    assert "Who must confirm: nobody: it starts at once" in text
    assert "Locks in force: none" in text and "Freezes in force: none" in text
    assert "Nothing was changed" in text and "!deploy chat-gui staging v1.5.1 does it" in text
    await world.app.supervisor.join(timeout=30)
    assert {a.verb for a in world.sandbox.requests_seen()} <= READS and world.sandbox.requests_seen()
    assert writes(world) == set()
    assert image_of(world, "chat-gui", "staging").endswith(":v1.5.0")
    assert await world.app.audit.query() == [] and await world.app.locks.active() == []
    assert len(bot_messages(world, "deploys")) == 0


async def test_dry_run_names_confirmation_locks_and_freezes(world):
    await say(world, "admin", "!lock prod chat-gui db upgrade for 1h")
    await say(world, "admin", "!freeze prod 2h release week")
    world.sandbox.reset_requests()
    before = await world.app.audit.query()
    reply = await say(world, "mod", "!deploy chat-gui prod --dry-run")  # promote what staging runs
    text = embed_text(reply)
    assert "🧪 dry run: deploy chat-gui v1.5.0 to prod (promoted from staging)" in text
    assert "`v1.4.0` → `v1.5.0`" in text
    assert "Who must confirm: a Confirm press by mod" in text
    assert "🔒" in text and "db upgrade" in text
    assert "🧊 deploys to `prod` are frozen until" in text and "release week" in text
    assert "refused now; `--force` passes it for holders of `deploy:force`" in text
    assert "it would be refused (locked and frozen)" in text
    assert not reply.components  # no Confirm button: nothing to confirm
    reply = await say(world, "mod", "!deploy chat-gui prod --dry-run --force")
    assert "`--force` needs the `deploy:force` grant, which you do not hold" in embed_text(reply)
    reply = await say(world, "admin", "!deploy chat-gui prod --force --dry-run")
    assert "`--force` passes it (you hold `deploy:force`" in embed_text(reply)
    assert writes(world) == set()
    assert await world.app.audit.query() == before  # a dry run is not audited, forced or not


async def test_rollback_dry_run(world):
    world.sandbox.reset_requests()
    reply = await say(world, "oncall", "!rollback strims prod --dry-run")
    text = embed_text(reply)
    assert "🧪 dry run: roll back strims in prod to revision 2 (v1.3.0)" in text
    assert "`v1.4.0` → `v1.3.0` (revision 2)" in text and "kubectl rollout undo" in text
    assert "Who must confirm: a Confirm press by oncall" in text and not reply.components
    reply = await say(world, "oncall", "!rollback strims prod 1 --dry-run")
    assert "to revision 1 (v1.2.0)" in embed_text(reply)
    assert writes(world) == set() and await world.app.audit.query() == []
    assert image_of(world, "strims", "prod").endswith(":v1.4.0")


async def test_slash_dry_run(world):
    world.sandbox.reset_requests()
    result = await world.members["mod"].slash(world.channels["ops"], "deploy", service="chat-gui", env="staging",
                                              version="v1.5.1", options="--dry-run")
    messages = [result.response.message, *(f.message for f in result.followups)]
    assert any("🧪 dry run: deploy chat-gui v1.5.1 to staging" in embed_text(m) for m in messages if m)
    await world.app.supervisor.join(timeout=30)
    assert writes(world) == set() and image_of(world, "chat-gui", "staging").endswith(":v1.5.0")


async def test_force_still_works_and_is_parsed_anywhere(world):
    await say(world, "admin", "!freeze staging 1h release week")
    refused = await say(world, "mod", "!deploy chat staging v1.5.1")
    assert "frozen" in refused.content
    await say(world, "admin", "!deploy chat staging --force v1.5.1")
    await world.app.supervisor.join(timeout=60)
    assert image_of(world, "chat", "staging").endswith(":v1.5.1")
