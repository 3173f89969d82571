"""Permissions at the command: ``@requires("deploy")`` is the ONE permission decorator.

- ``requires(action)`` marks the command; the global check (``global_check``) fails closed for
  any command without a mark, and refuses members holding no grant for the action at all.
- Once arguments are parsed, ``scoped_check`` (a bot-wide before-invoke hook) checks the grant
  against the env and service named in the arguments, and the env's channel allowlist.
- Buttons bypass command checks, so views call ``member_allows`` themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord.ext import commands

from commands.permissions import ACTIONS

if TYPE_CHECKING:
    from bot.app import App

REQUIRES_ATTR = "__opsbot_requires__"
F = TypeVar("F", bound=Callable[..., Any])

# Actions that change something: audited, and subject to an env's channel allowlist.
MUTATING = {"deploy", "rollback", "lock", "ack", "silence", "oncall", "maintenance", "freeze"}


@dataclass(frozen=True, slots=True)
class Requirement:
    action: str
    env_arg: str | None = "env"
    service_arg: str | None = "service"


class NotConfigured(commands.CheckFailure):
    """A command without ``requires``: refused for everyone (fail closed)."""


class Draining(commands.CheckFailure):
    """The bot is shutting down (a new version rolling out): nothing new starts."""

    def __init__(self) -> None:
        super().__init__("the bot is restarting and takes no new commands; try again in a few seconds")


class Denied(commands.CheckFailure):
    def __init__(self, action: str, env: str | None = None, service: str | None = None,
                 reason: str | None = None) -> None:
        self.action, self.env, self.service = action, env, service
        scope = ":".join(p for p in (action, env, service) if p)
        self.grant = scope
        super().__init__(reason or f"you may not do that — it needs the `{scope}` grant")


def requires(action: str, *, env_arg: str | None = "env", service_arg: str | None = "service") -> Callable[[F], F]:
    """Declare what a command needs. Put it directly above the function, under the command decorator."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; add it to commands.permissions.ACTIONS")

    def decorator(func: F) -> F:
        target = func.callback if isinstance(func, commands.Command) else func
        setattr(target, REQUIRES_ATTR, Requirement(action, env_arg, service_arg))
        return func

    return decorator


def requirement_of(command: commands.Command[Any, ..., Any] | None) -> Requirement | None:
    if command is None:
        return None
    return getattr(command.callback, REQUIRES_ATTR, None)


def role_ids(member: discord.abc.User) -> list[int]:
    return [r.id for r in getattr(member, "roles", [])]


def member_allows(app: App, member: discord.abc.User, action: str,
                  env: str | None = None, service: str | None = None) -> bool:
    return app.policy.allows(member.id, role_ids(member), action, env, service)


def _app(ctx: commands.Context[Any]) -> App:
    return ctx.bot.app  # type: ignore[attr-defined,no-any-return]


def check_invoke(app: App, member: discord.abc.User, command: commands.Command[Any, ..., Any] | None) -> None:
    """Raise unless ``member`` may invoke ``command`` in some scope. Also used by !help (dry run)."""
    req = requirement_of(command)
    if req is None:
        raise NotConfigured(f"`{command}` declares no permission and is disabled")
    if not member_allows(app, member, req.action):
        raise Denied(req.action)


async def global_check(ctx: commands.Context[Any]) -> bool:
    """Runs before argument parsing for every command, prefix or slash."""
    app = _app(ctx)
    if app.draining:
        raise Draining()
    check_invoke(app, ctx.author, ctx.command)
    return True


def parsed_args(ctx: commands.Context[Any]) -> dict[str, Any]:
    """The command's parsed arguments by name (positional ones live in ctx.args)."""
    if ctx.command is None:
        return dict(ctx.kwargs)
    offset = 2 if ctx.command.cog is not None else 1  # (cog,) ctx, then the parameters
    bound = dict(zip(ctx.command.clean_params, ctx.args[offset:], strict=False))
    bound.update(ctx.kwargs)
    return bound


def _arg(ctx: commands.Context[Any], name: str | None) -> str | None:
    if name is None:
        return None
    value = parsed_args(ctx).get(name)
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


async def scoped_check(ctx: commands.Context[Any]) -> None:
    """Runs after argument parsing: the grant must cover the env and service asked for."""
    req = requirement_of(ctx.command)
    if req is None:  # global_check already refused; keep failing closed
        raise NotConfigured(f"`{ctx.command}` declares no permission and is disabled")
    app = _app(ctx)
    env, service = _arg(ctx, req.env_arg), _arg(ctx, req.service_arg)
    # Only scope by names the catalog knows; unknown names get a friendly error from the command.
    env = env if env in app.catalog.envs else None
    service = service if service in app.catalog.services else None
    if not member_allows(app, ctx.author, req.action, env, service):
        raise Denied(req.action, env, service)
    if env and req.action in MUTATING:
        allowed = app.settings.env(env).channels
        channel = ctx.channel
        if allowed and not {getattr(channel, "name", None), str(channel.id)} & set(allowed):
            raise Denied(req.action, env, service,
                         reason=f"`{req.action}` in `{env}` is only allowed in "
                                + ", ".join(f"#{c}" for c in allowed))


def install(bot: commands.Bot) -> None:
    bot.add_check(global_check)
    bot.before_invoke(scoped_check)
