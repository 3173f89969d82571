"""The composition root: builds every client from Settings under ``async with`` and injects them.

Nothing is built at import time. ``App.open(settings)`` yields a ready App; ``create_bot(app)``
makes the discord.py bot that serves it (real gateway in ``opsbot run``, simcord elsewhere).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import discord
from discord.ext import commands

from alerts.escalation import EscalationEngine
from alerts.notify import OutMessage
from alerts.oncall import OnCall
from alerts.service import AlertService
from bot import checks, options
from bot.http import HttpServer
from bot.metrics import Metrics
from bot.notifier import DiscordNotifier, RoleSync
from bot.views import DYNAMIC_ITEMS, PendingStore
from commands.audit import AuditLog
from commands.catalog import Catalog, UserError
from commands.db import Database, utcnow
from commands.deploy import Deployer
from commands.freeze import FreezeService
from commands.handover import Journal
from commands.leader import LeaderElector, default_identity
from commands.locks import LockManager
from commands.maintenance import MaintenanceService
from commands.metrics import MetricsService
from commands.permissions import Policy
from commands.scheduler import Scheduler
from commands.targets.base import Platform
from commands.tasks import Supervisor
from config.settings import OncallConfig, PermissionsConfig, Settings

log = logging.getLogger(__name__)

EXTENSIONS = ("bot.exts.core", "bot.exts.status", "bot.exts.audit", "bot.exts.deploy", "bot.exts.locks",
              "bot.exts.logs", "bot.exts.alerts", "bot.exts.oncall", "bot.exts.maintenance", "bot.exts.metrics")


@dataclass
class App:
    settings: Settings
    db: Database
    audit: AuditLog
    metrics: Metrics
    supervisor: Supervisor
    platforms: dict[str, Platform]
    locks: LockManager
    http: HttpServer | None = None
    prometheus: MetricsService | None = None  # !status numbers, !graph, !query, alert graphs
    policy: Policy = field(init=False)
    catalog: Catalog = field(init=False)
    deployer: Deployer = field(init=False)
    pending: PendingStore = field(default_factory=PendingStore)
    bot: commands.Bot | None = None
    clock: Callable[[], datetime] = utcnow  # on-call and the scheduler (escalation, hand-offs); tests inject one
    is_leader: bool = False  # runs the leader's duties (App.leading)
    draining: bool = False  # shutting down: new commands are refused politely
    lease_lost: bool = False  # another replica may lead: stop at once
    elector: LeaderElector | None = None  # with ha.enabled: the election (who leads, as last seen)
    identity: str = field(default_factory=default_identity)  # this replica (the Lease holder name)
    journal: Journal = field(init=False)  # running deploys, for whoever leads next
    notifier: DiscordNotifier = field(init=False)
    alerts: AlertService = field(init=False)
    scheduler: Scheduler = field(init=False)
    oncall: OnCall = field(init=False)
    escalation: EscalationEngine = field(init=False)
    maintenance: MaintenanceService = field(init=False)
    freezes: FreezeService = field(init=False)

    def __post_init__(self) -> None:
        self.policy = Policy(self.settings.permissions)
        self.catalog = Catalog(self.settings)
        self.deployer = Deployer(self.catalog, self.platforms, self.audit,
                                 poll_interval=self.settings.rollout_poll_seconds)
        self.journal = Journal(self.db)
        self.identity = self.settings.ha.identity or self.identity

    def replace_permissions(self, permissions: PermissionsConfig) -> None:
        """Swap the role policy (the demo world maps role labels onto its own guild's IDs)."""
        self.settings.permissions = permissions
        self.policy = Policy(permissions)

    async def replace_oncall(self, oncall: OncallConfig) -> None:
        """Swap rotations and escalation policies (the demo world maps user names onto its members)."""
        self.settings.oncall = oncall
        self.oncall.configure(oncall)
        self.escalation.config = oncall
        await self.oncall.schedule_handoffs()

    def ready(self) -> tuple[bool, str]:
        """/readyz: may this replica be sent webhooks? A standby may (they go to the shared
        database); a replica shutting down may not."""
        if self.draining:
            return False, "shutting down"
        if self.settings.ha.enabled and not self.is_leader:
            leader = self.elector.leader if self.elector else None
            return True, f"standby; leader: {leader or 'unknown'}"
        if self.bot is None or not self.bot.is_ready():
            return False, "discord session not ready"
        return True, "leader" if self.settings.ha.enabled else "ok"

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, serve_http: bool = True, lead: bool = True,
                   clock: Callable[[], datetime] = utcnow) -> AsyncIterator[App]:
        """Everything built and the webhook served. ``lead``: also start the leader's duties at once
        (one replica); with ``lead=False`` (a replica in an election) enter :meth:`leading` later."""
        async with AsyncExitStack() as stack:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            db = Database(settings.database)
            stack.callback(db.dispose)
            await db.run(db.create_all)

            platforms: dict[str, Platform] = {}
            if any(t.type == "kubernetes" for s in settings.services.values() for t in s.envs.values()):
                from commands.targets.kubernetes import KubernetesPlatform

                k8s = KubernetesPlatform(settings.kubeconfig)
                stack.push_async_callback(k8s.close)
                platforms["kubernetes"] = k8s
            if any(t.type == "docker" for s in settings.services.values() for t in s.envs.values()):
                from commands.redact import Redactor
                from commands.targets.docker import DockerPlatform

                docker_platform = DockerPlatform(settings.docker_host, redactor=Redactor(settings.redact_patterns))
                stack.push_async_callback(docker_platform.close)
                platforms["docker"] = docker_platform

            supervisor = Supervisor()
            await supervisor.start()
            stack.push_async_callback(supervisor.stop)

            prometheus = MetricsService.from_settings(settings) if settings.prometheus_url else None
            if prometheus is not None:
                stack.push_async_callback(prometheus.close)

            app = cls(settings=settings, db=db, audit=AuditLog(db), metrics=Metrics(),
                      supervisor=supervisor, platforms=platforms, locks=LockManager(db), clock=clock,
                      prometheus=prometheus)
            app._build_alerting()  # its tables are on Base.metadata: created above, for a standby too
            if lead:
                await stack.enter_async_context(app.leading())
            if serve_http:
                app.http = HttpServer(settings.webhook_listen, app.metrics, app.ready)
                app.http.add_routes(app.alerts.routes())
                await app.http.start()
                stack.push_async_callback(app.http.stop)
            yield app

    def _build_alerting(self) -> None:
        """Alerts, the scheduler, on-call and escalation: all talk to chat through one notifier."""
        settings, db = self.settings, self.db
        self.notifier = DiscordNotifier(lambda: self.bot)
        graphs = self.prometheus if settings.metrics.alert_graphs else None
        self.alerts = AlertService(settings, db, self.notifier, graphs=graphs,
                                   poll_interval=1.0 if settings.ha.enabled else None)
        self.scheduler = Scheduler.from_settings(db, settings, clock=self.clock, on_problem=self._scheduler_problem)
        self.oncall = OnCall.from_settings(db, settings, scheduler=self.scheduler, notifier=self.notifier,
                                           role_sync=RoleSync(lambda: self.bot), clock=self.clock)
        self.escalation = EscalationEngine(self.scheduler, self.notifier, self.oncall, _IncidentLookup(self.alerts),
                                           db=db, config=settings.oncall, dm=self.notifier)
        self.alerts.outbox.on_message = self._incident_message
        self._make_maintenance()  # before the scheduler starts: jobs due at once need it

    @asynccontextmanager
    async def leading(self) -> AsyncIterator[None]:
        """The leader's duties, for as long as this replica leads: the alert senders, reconciliation
        and watchdog, and the scheduler (escalation, hand-offs, maintenance, freezes). One replica
        runs them, so nothing is sent or run twice. (The Discord session is the caller's: run.py.)"""
        async with AsyncExitStack() as stack:
            await self.alerts.start()
            # The chat operation in flight may finish, unless the lease is lost: then a new leader
            # may be sending already.
            stack.push_async_callback(lambda: self.alerts.stop(grace=0 if self.lease_lost else 5.0))
            await self.scheduler.start()
            stack.push_async_callback(self.scheduler.shutdown)
            await self.escalation.resume()
            await self.oncall.schedule_handoffs()
            await self._open_maintenance()
            self.is_leader = True
            self.metrics.leader.set(1)
            try:
                yield
            finally:
                self.is_leader = False
                self.metrics.leader.set(0)

    def _make_maintenance(self) -> None:
        """Maintenance windows, recurring chores and scheduled freezes on the shared scheduler (their
        clock is the app's); reports go through the alerts outbox, persisted and retried, so one
        written while Discord is not connected yet (just after a restart) is still delivered."""
        self.freezes = FreezeService(self.db, self.settings, self.audit, clock=self.clock, post=self._post,
                                     scheduler=self.scheduler)
        self.maintenance = MaintenanceService(self.db, self.settings, self.scheduler, platforms=self.platforms,
                                              audit=self.audit, post=self._post, silencer=self.alerts,
                                              alerts=self.alerts)

    async def _open_maintenance(self) -> None:
        """After the scheduler started: lost jobs back, recurring chores and freeze announcements."""
        await self.maintenance.resume()
        await self.maintenance.schedule_recurring()
        await self.freezes.schedule_jobs(self.scheduler)

    async def _post(self, channel: str, text: str) -> None:
        await self.db.run(self.alerts.store.add_notice, channel, text)
        self.alerts.outbox.wake([channel])

    async def _incident_message(self, work: Any, message_id: str) -> None:
        """Escalate open, unacknowledged incidents that have a policy; stop on ack or resolve."""
        incident = work.incident
        if not work.primary:
            return
        if incident.open and not incident.acked and incident.escalation:
            await self.escalation.start(incident.id, incident.escalation, work.channel, message_id, title=incident.title)
        elif not incident.open or incident.acked:
            reason = "resolved" if not incident.open else f"acknowledged by {incident.acked_by}"
            await self.escalation.stop(incident.id, reason)

    async def _scheduler_problem(self, problem: Any) -> None:
        text = f"⏰ {problem.describe()}"
        log.warning("scheduler: %s", text)
        try:
            await self.notifier.send(self.settings.channels.ops, OutMessage(content=text))
        except Exception:
            log.warning("could not report a scheduler problem in chat", exc_info=True)


class _IncidentLookup:
    """What escalation asks of the alerts store."""

    def __init__(self, alerts: AlertService) -> None:
        self.alerts = alerts

    async def is_open_unacked(self, incident_id: int) -> bool:
        try:
            incident = await self.alerts.incident(incident_id)
        except UserError:
            return False
        return incident.open and not incident.acked


class OpsBot(commands.Bot):
    def __init__(self, app: App) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        intents.members = True
        super().__init__(
            command_prefix=commands.when_mentioned_or(app.settings.command_prefix),
            intents=intents,
            help_command=None,  # our own !help uses the permission checks (bot.exts.core)
            # Nothing pings unless a send names whom (escalation pages, !oncall hand-offs): text the
            # bot repeats (a freeze reason, an alert label) must not ping on every !status.
            allowed_mentions=discord.AllowedMentions.none(),
            case_insensitive=True,
        )
        self.app = app
        app.bot = self
        checks.install(self)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(*DYNAMIC_ITEMS)  # buttons keep answering across restarts
        for ext in EXTENSIONS:
            await self.load_extension(ext)
        options.install(self)  # every command refuses surplus arguments and unknown `--options`


def create_bot(app: App) -> OpsBot:
    return OpsBot(app)
