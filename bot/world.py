"""The embedded world: the sandbox cluster + the bot on an in-memory Discord (simcord).

Used by ``opsbot console``, ``opsbot demo`` and the tests, so all three see the same world:
guild ``dgg ops`` with channels ops/alerts/deploys and users admin/mod/oncall/member/guest
(design §5). The bot code is the real, unmodified bot of ``opsbot run``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import simcord

from alerts.oncall import Rotation
from bot.app import App, OpsBot, create_bot
from commands.db import utcnow
from config.settings import (
    EnvConfig,
    KubernetesTarget,
    OncallConfig,
    PermissionsConfig,
    RoleGrants,
    RotationConfig,
    RotationMember,
    ServiceConfig,
    Settings,
    load_settings,
)
from sandbox import world


def sandbox_settings(**overrides: Any) -> Settings:
    """Settings for the sandbox world: the five services in dev/staging/prod on Kubernetes."""
    services = {
        svc: ServiceConfig(
            repository=world.REPOSITORY.format(service=svc),
            description=world.SERVICE_DESCRIPTIONS[svc],
            envs={env: KubernetesTarget(namespace=env, deployment=svc) for env in world.ENVS},
        )
        for svc in world.SERVICES
    }
    environments = {
        "dev": EnvConfig(timeout_seconds=120),
        "staging": EnvConfig(timeout_seconds=300),
        "prod": EnvConfig(confirm=True, timeout_seconds=600),
    }
    settings = load_settings(None, services=services, environments=environments, promotion=list(world.ENVS),
                             **overrides)
    if not settings.alertmanager_url:
        settings.alerts.watchdog_minutes = 0  # no Alertmanager, no Watchdog alert to wait for
    if settings.alerts.default_route.escalation is None:
        # The demo policy: populate() adds it once the demo rotations have the guild's user IDs.
        settings.alerts.default_route.escalation = world.DEMO_ESCALATION_POLICY
    return settings


@dataclass
class World:
    env: simcord.Env
    app: App
    bot: OpsBot
    guild: Any
    channels: dict[str, Any] = field(default_factory=dict)
    roles: dict[str, Any] = field(default_factory=dict)
    members: dict[str, Any] = field(default_factory=dict)
    sandbox: Any = None  # the in-process SandboxServer, when one runs

    def channel_by_id(self, channel_id: int) -> Any:
        for ch in self.channels.values():
            if ch.id == channel_id:
                return ch
        return None


def _policy_for(settings: Settings, roles: dict[str, Any]) -> PermissionsConfig:
    """Map the config's role grants onto this guild's role IDs by their name labels.

    A config without roles gets the sandbox world's policy.
    """
    wanted = {r.name: r.grants for r in settings.permissions.roles if r.name} or world.ROLE_GRANTS
    return PermissionsConfig(
        roles=[RoleGrants(id=roles[name].id, name=name, grants=grants)
               for name, grants in wanted.items() if name in roles],
        everyone=settings.permissions.everyone,
    )


def _oncall_for(settings: Settings, members: dict[str, Any], now: datetime) -> OncallConfig:
    """Map on-call rotations onto this guild's members by their name labels, as roles are.

    A config without rotations gets the sandbox world's demo rotations, each anchored on its
    latest hand-off so that its first member is on call now, and the demo escalation policy.
    Members of configured rotations whose label is a demo user's name get that user's ID.
    """
    current = settings.oncall
    if current.rotations:
        rotations = {
            name: rc.model_copy(update={"members": [
                RotationMember(id=members[m.name].id, name=m.name) if m.name in members else m for m in rc.members]})
            for name, rc in current.rotations.items()
        }
        return OncallConfig(rotations=rotations, escalation_policies=current.escalation_policies)
    rotations = {}
    for name, spec in world.DEMO_ROTATIONS.items():
        users = [str(u) for u in spec["members"]]  # type: ignore[attr-defined]
        rc = RotationConfig.model_validate({**spec, "members": [{"id": members[u].id, "name": u} for u in users]})
        today = now.astimezone(Rotation(name, rc, settings.timezone).tz).date()
        rc = rc.model_copy(update={"start": today})
        if Rotation(name, rc, settings.timezone).shift_start(0) > now:
            rc = rc.model_copy(update={"start": today - timedelta(days=1)})
        rotations[name] = rc
    policies = {world.DEMO_ESCALATION_POLICY: world.DEMO_ESCALATION, **current.escalation_policies}
    return OncallConfig.model_validate({"rotations": rotations, "escalation_policies": policies})


async def populate(env: simcord.Env, app: App) -> dict[str, Any]:
    """Create the demo guild and map the permission policy and the on-call rotations onto it."""
    await app.bot.user.edit(username="opsbot")  # type: ignore[union-attr]
    guild = env.create_guild(world.GUILD_NAME)
    channels = {name: guild.create_text_channel(name) for name in world.CHANNELS}
    role_names = list(dict.fromkeys([*world.ROLE_GRANTS, *(r.name for r in app.settings.permissions.roles if r.name)]))
    roles = {name: guild.create_role(name) for name in role_names}
    members = {
        user: guild.add_member(env.create_user(user), roles=[roles[r] for r in role_list])
        for user, role_list in world.USERS.items()
    }
    app.replace_permissions(_policy_for(app.settings, roles))
    await app.replace_oncall(_oncall_for(app.settings, members, app.clock()))
    # Slash commands are synced deliberately, as on real Discord.
    await app.bot.tree.sync()  # type: ignore[union-attr]
    return {"guild": guild, "channels": channels, "roles": roles, "members": members}


class WallClock:
    """simcord's clock, following the wall clock: for people (demo, console), not for tests.

    simcord keeps a virtual clock so tests can jump through time; a person watching a rollout
    wants real seconds and real timestamps. Jumps (``advance``) still work on top.
    """

    # simcord replaces time.monotonic while a bot runs; take the real one from before that.
    _monotonic = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self._start = self._monotonic()
        self._offset = 0.0
        self._epoch = datetime.now(UTC)

    @property
    def elapsed(self) -> float:
        return self._monotonic() - self._start + self._offset

    def now(self) -> datetime:
        return self._epoch + timedelta(seconds=self.elapsed)

    def advance(self, seconds: float) -> None:
        self._offset += seconds


async def _shutdown(env: simcord.Env) -> None:
    await env.shutdown()
    if env.check_errors:
        env._raise_errors_since(env._errors_acknowledged)


@asynccontextmanager
async def open_world(
    settings: Settings | None = None,
    *,
    config: Path | None = None,
    kubeconfig: Path | None = None,
    data_dir: Path | None = None,
    serve_http: bool = False,
    settle_timeout: float = 30.0,
    check_errors: bool = False,
    clock_context: bool = True,
    wall_clock: bool = False,
    sandbox_timing: Any = None,
    tweak: Callable[[Settings], None] | None = None,
    clock: Callable[[], datetime] | None = None,
    **overrides: Any,
) -> AsyncIterator[World]:
    """Start the whole embedded world; stop it all on exit.

    Without ``kubeconfig`` (and without one in the settings) an in-process sandbox cluster is
    started and used, when any target is on Kubernetes (a Docker-only config needs none).
    ``settings`` wins over ``config``; both default to the sandbox world. ``clock`` is the app's
    (on-call, escalation and the scheduler: tests move it and call ``app.scheduler.run_due()``).
    """
    async with AsyncExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="opsbot-")))
        if settings is None:
            base = dict(data_dir=data_dir, kubeconfig=kubeconfig, **overrides)
            settings = load_settings(config, **base) if config else sandbox_settings(**base)
        if tweak is not None:
            tweak(settings)
        sandbox = None
        on_kubernetes = any(t.type == "kubernetes" for s in settings.services.values() for t in s.envs.values())
        if settings.kubeconfig is None and on_kubernetes:
            from sandbox.server import SandboxServer

            sandbox = stack.enter_context(SandboxServer(timing=sandbox_timing))
            settings.kubeconfig = sandbox.write_kubeconfig(Path(data_dir) / "sandbox.kubeconfig")
        app = await stack.enter_async_context(App.open(settings, serve_http=serve_http, clock=clock or utcnow))
        bot = create_bot(app)
        env = simcord.Env(bot, settle_timeout=settle_timeout, check_errors=check_errors)
        if wall_clock:
            env.backend.clock = WallClock()  # type: ignore[assignment]
        await env.start()
        stack.push_async_callback(_shutdown, env)
        if clock_context:
            # Driver code's UTC helpers follow simcord's clock. Entered and left in this task; pytest
            # fixtures run setup and teardown in different contexts, so they pass False and the
            # conftest enters it around each test instead (as simcord's own plugin does).
            stack.enter_context(env.time_context())
        parts = await populate(env, app)
        yield World(env=env, app=app, bot=bot, sandbox=sandbox, **parts)
