"""The permission matrix through simcord: every command x every sandbox user.

The expectations are written out by hand from design §5 (not derived from the policy code), so a
wrong grant, a broken check or a missing ``requires`` fails here.
"""

from __future__ import annotations

import pytest
from discord.ext import commands

from bot.checks import requirement_of, requires
from tests.bot.helpers import embed_text, say

USERS = ["admin", "mod", "oncall", "member", "guest"]

STAFF = {"admin", "mod", "oncall", "member"}
# command line -> (action named in a denial, users allowed). Mutating lines are chosen so an
# allowed run stops at a confirmation or changes nothing the next user depends on.
MATRIX: dict[str, tuple[str, set[str]]] = {
    "!help": ("help", set(USERS)),
    "!perms": ("perms", set(USERS)),
    "!status chat-gui prod": ("status", STAFF),
    "!status": ("status", STAFF),
    "!locks": ("status", STAFF),
    "!audit": ("audit", {"admin", "mod"}),
    "!audit chat staging": ("audit", {"admin", "mod"}),
    "!history strims prod": ("history", {"admin", "mod", "oncall"}),
    "!deploy chat-gui prod v1.5.1": ("deploy", {"admin", "mod"}),  # prod asks for confirmation
    "!rollback auth prod": ("rollback", {"admin", "mod", "oncall"}),  # likewise
    "!lock staging matrix test for 10m": ("lock", {"admin", "mod"}),
    "!unlock staging": ("lock", {"admin", "mod"}),
    "!logs chat prod --tail 5": ("logs", {"admin", "mod", "oncall"}),
    "!incidents": ("alerts", {"admin", "mod", "oncall"}),
    "!incident 999": ("alerts", {"admin", "mod", "oncall"}),
    "!testalert chat dev warning": ("silence", {"admin", "oncall"}),  # it posts; read-only `alerts` is not enough
    "!ack 999": ("ack", {"admin", "oncall"}),
    "!unack 999": ("ack", {"admin", "oncall"}),
    "!alerts": ("alerts", {"admin", "mod", "oncall"}),
    "!silences": ("alerts", {"admin", "mod", "oncall"}),
    "!silence alertname=Foo 1h matrix test": ("silence", {"admin", "oncall"}),
    "!unsilence 0123abcd": ("silence", {"admin", "oncall"}),
    "!graph chat prod": ("status", STAFF),
    "!graph chat prod error_ratio 6h": ("status", STAFF),
    "!query up": ("query", {"admin", "mod", "oncall"}),
    "!incidents stats": ("alerts", {"admin", "mod", "oncall"}),
    "!note 999 matrix test": ("ack", {"admin", "oncall"}),
    "!resolve 999": ("ack", {"admin", "oncall"}),
    "!oncall": ("status", STAFF),  # whoever sees the services may see whom to call
    "!oncall override mod 1h matrix test": ("oncall", {"admin", "oncall"}),
    "!oncall swap": ("oncall", {"admin", "oncall"}),
    "!oncall cancel 999": ("oncall", {"admin", "oncall"}),
    "!maintenance": ("status", STAFF),  # windows and freezes: whoever sees the services
    "!maintenance schedule chat staging tomorrow 04:00 30m matrix test": ("maintenance", {"admin"}),
    "!maintenance cancel 999": ("maintenance", {"admin"}),
    "!maintenance extend 999 30m": ("maintenance", {"admin"}),
    "!maintenance end 999": ("maintenance", {"admin"}),
    "!freeze dev 10m matrix test": ("freeze", {"admin"}),
    "!unfreeze dev": ("freeze", {"admin"}),
}
# Lines whose allowed answer may be a warning (the previous user's lock, nothing to unlock).
MAY_WARN = {"!lock staging matrix test for 10m", "!unlock staging", "!incident 999", "!ack 999", "!unack 999",
            "!alerts", "!silences", "!silence alertname=Foo 1h matrix test", "!unsilence 0123abcd",
            # no Prometheus in this world: "no Prometheus is configured"
            "!graph chat prod", "!graph chat prod error_ratio 6h", "!query up",
            "!note 999 matrix test", "!resolve 999", "!oncall cancel 999", "!maintenance cancel 999",
            "!maintenance extend 999 30m", "!maintenance end 999", "!unfreeze dev"}


def denial(world, user: str, grant: str) -> str:
    mention = world.members[user].mention
    return f"🚫 {mention}, you may not do that — it needs the `{grant}` grant. `!perms` shows yours."


def command_of(bot, line: str) -> str:
    """The qualified name of the (sub)command a line runs: `!oncall swap x` -> `oncall swap`."""
    words = line.lstrip("!").split()
    command = bot.get_command(words[0])
    for word in words[1:]:
        sub = getattr(command, "all_commands", {}).get(word)
        if sub is None:
            break
        command = sub
    return command.qualified_name


async def test_every_command_has_a_row_in_the_matrix(world):
    covered = {command_of(world.bot, line) for line in MATRIX}
    assert covered == {c.qualified_name for c in world.bot.walk_commands()}


@pytest.mark.parametrize("line", list(MATRIX))
async def test_matrix(world, line):
    action, allowed = MATRIX[line]
    for user in USERS:
        reply = await say(world, user, line)
        text = embed_text(reply)
        if user in allowed:
            assert "🚫" not in text, f"{user} was refused {line!r}: {text}"
            assert "💥" not in text, f"{user} got an error for {line!r}: {text}"
            if line not in MAY_WARN:
                assert not text.startswith("⚠️ ") or text.startswith("⚠️ **"), f"{user}: {line!r}: {text}"
        else:
            assert reply.content == denial(world, user, action), f"{user} ran {line!r}"


async def test_denials_are_audited(world):
    await say(world, "guest", "!status chat-gui prod")
    records = await world.app.audit.query(action="status")
    assert [(r.user_name, r.result, r.service, r.env) for r in records] == [("guest", "denied", None, None)]


async def test_scoped_grant_is_checked_against_arguments(world):
    """A grant for one env does not reach another: `status:staging` can't read prod."""
    from config.settings import PermissionsConfig, RoleGrants

    member_role = world.roles["Member"]
    world.app.replace_permissions(PermissionsConfig(roles=[RoleGrants(id=member_role.id, name="Member",
                                                                      grants=["status:staging"])]))
    ok = await say(world, "member", "!status chat-gui staging")
    assert "v1.5.0" in embed_text(ok)
    refused = await say(world, "member", "!status chat-gui prod")
    assert refused.content == denial(world, "member", "status:prod:chat-gui")
    # With no env named, only what the grant covers is shown.
    partial = await say(world, "member", "!status chat-gui")
    assert [e.title for e in partial.embeds] == ["chat-gui · staging"]
    assert "2 hidden by your grants" in partial.content


async def test_every_command_declares_requires_and_names_are_unique(world):
    names: list[str] = []
    for cmd in world.bot.walk_commands():
        assert requirement_of(cmd) is not None, f"!{cmd.qualified_name} has no @requires"
        names.append(cmd.qualified_name)
        names.extend(cmd.aliases)
    assert len(names) == len(set(names))
    slash = [c.qualified_name for c in world.bot.tree.walk_commands()]
    assert len(slash) == len(set(slash))
    # A group that runs by itself (`!oncall`) is a fallback subcommand as a slash command (`/oncall show`).
    fallbacks = {f"{c.qualified_name} {c.fallback}" for c in world.bot.walk_commands() if getattr(c, "fallback", None)}
    assert set(slash) == {c.qualified_name for c in world.bot.walk_commands()} | fallbacks


async def test_a_command_without_requires_is_refused_for_everyone(world):
    @commands.command(name="naked")
    async def naked(ctx):
        await ctx.send("ran")

    world.bot.add_command(naked)
    reply = await say(world, "admin", "!naked")
    assert reply.content.startswith("🚫 `naked` declares no permission and is disabled")


async def test_requires_rejects_unknown_actions():
    with pytest.raises(ValueError, match="unknown action"):
        requires("deploi")
