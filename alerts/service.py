"""AlertService: the one object the bot layer uses for alerts.

It owns the intake (``routes()`` to mount on the HTTP server), the store, the outbox senders,
reconciliation with Alertmanager, the watchdog and housekeeping. ``start()`` starts the background
loops, ``stop()`` ends them in order (the chat operation in flight finishes first).

Actions for buttons and commands::

    await alerts.ack(12, user_id, "oncall")              # Acknowledge button, !ack 12
    await alerts.unack(12, user_id, "oncall")
    await alerts.note(12, "oncall", "restarted the pods")  # !note 12 …
    await alerts.resolve(12, user_id, "oncall")          # !resolve 12 (the bot only)
    await alerts.stats(timedelta(days=7))                 # !incidents stats 7d
    await alerts.silence(12, "1h", "oncall")             # Silence 1h button → a real silence
    await alerts.incidents()                              # !incidents
    await alerts.silences(); await alerts.expire_silence(id, "oncall")   # !silences, !unsilence
    await alerts.create_silence('alertname=Foo service=~"chat.*"', "2h", "db upgrade", "oncall")
    await alerts.live_alerts("chat")                      # !alerts chat
    await alerts.sample_alert()                           # the demo's "fire a sample alert"

Bad input raises :class:`commands.catalog.UserError`; Alertmanager trouble raises an
:class:`alerts.alertmanager.AlertmanagerError` subclass. Both messages are fit for chat.
Button custom IDs are parsed by :func:`parse_custom_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import yaml
from aiohttp import web

from alerts.alertmanager import (
    AlertmanagerClient,
    AlertmanagerError,
    AlertmanagerNotConfigured,
)
from alerts.graphs import AlertGraphs, GraphSource
from alerts.intake import WebhookIntake, webhook_routes
from alerts.models import (
    IncidentView,
    IngestResult,
    LiveAlert,
    SilenceView,
    WebhookPayload,
)
from alerts.notify import Notifier, OutMessage
from alerts.outbox import Outbox
from alerts.render import RenderOptions, render_incident, render_notice, render_timeline
from alerts.routing import Matcher, MatcherError, Router, parse_matchers, too_broad
from alerts.stats import ResponseStats, response_stats
from alerts.store import AlertStore, MessageWork, StoreOptions, TimelineWork
from alerts.watchdog import Watchdog, last_heartbeat, record_heartbeat
from commands.catalog import UserError
from commands.db import Database, utcnow
from commands.metrics import public_url
from commands.timeutil import parse_duration, short
from config.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_RECEIVER = "opsbot-sample"  # never reconciled: Alertmanager does not know these groups
MIN_SILENCE = timedelta(minutes=1)
MAX_SILENCE = timedelta(days=30)


@dataclass(frozen=True)
class ButtonAction:
    """A parsed ``opsbot:<action>:<id>[:<duration>]`` custom ID of an alert message button."""

    action: Literal["ack", "unack", "silence"]
    incident_id: int
    duration: str | None = None


def parse_custom_id(custom_id: str) -> ButtonAction | None:
    """``opsbot:ack:12`` → ButtonAction("ack", 12); None for IDs that are not alert buttons."""
    parts = custom_id.split(":")
    if len(parts) < 3 or parts[0] != "opsbot" or not parts[2].isdigit():
        return None
    action, incident = parts[1], int(parts[2])
    if action in ("ack", "unack") and len(parts) == 3:
        return ButtonAction(action, incident)  # type: ignore[arg-type]
    if action == "silence" and len(parts) == 4 and parts[3]:
        return ButtonAction("silence", incident, parts[3])
    return None


class AlertService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        notifier: Notifier,
        *,
        alertmanager: AlertmanagerClient | None = None,
        graphs: GraphSource | None = None,
        clock: Callable[[], datetime] = utcnow,
        watchdog_interval: float = 15.0,
        housekeeping_interval: float = 60.0,
        poll_interval: float | None = None,
    ) -> None:
        cfg = settings.alerts
        self.settings = settings
        self.config = cfg
        self._db = db
        self._clock = clock
        self.notifier = notifier
        self.ops_channel = settings.channels.ops
        self.router = Router.build(
            cfg.routes,
            default_channel=cfg.default_route.channel or settings.channels.alerts,
            default_mentions=cfg.default_route.mention_roles,
            default_escalation=cfg.default_route.escalation,
        )
        self.store = AlertStore(
            db,
            StoreOptions(
                severities=tuple(s.lower() for s in cfg.severities),
                service_label=cfg.service_label,
                env_label=cfg.env_label,
                severity_label=cfg.severity_label,
                hidden_labels=tuple(cfg.hidden_labels),
                watchdog_alertname=cfg.watchdog_alertname,
                timeline_delay_seconds=cfg.timeline_delay_seconds,
            ),
            clock=clock,
        )
        self.render_options = RenderOptions(
            severities=tuple(cfg.severities),
            hidden_labels=tuple(cfg.hidden_labels),
            service_label=cfg.service_label,
            env_label=cfg.env_label,
            severity_label=cfg.severity_label,
            silence_buttons=tuple(cfg.silence_buttons),
            tz=UTC if settings.timezone == "UTC" else ZoneInfo(settings.timezone),
            tz_name=settings.timezone,
        )
        self.outbox = Outbox(
            self.store,
            notifier,
            render_message=self._render_message,
            render_timeline=self._render_timeline,
            render_notice=render_notice,
            db_run=db.run,
            rate_operations=cfg.send_rate_operations,
            rate_seconds=cfg.send_rate_seconds,
            retry_initial=cfg.retry_initial_seconds,
            retry_max=cfg.retry_max_seconds,
            clock=clock,
        )
        # A graph of the alert's own expression in the incident's thread (when Prometheus is set).
        self.graphs = AlertGraphs(graphs, notifier) if graphs is not None else None
        if self.graphs is not None:
            self.outbox.on_created = self._message_created
        token = settings.webhook_token.get_secret_value() if settings.webhook_token else None
        self.intake = WebhookIntake(
            self.ingest,
            token=token,
            user=cfg.webhook_user,
            allow_unauthenticated=cfg.allow_unauthenticated,
            max_body_bytes=cfg.max_body_bytes,
            on_too_large=self._notice,
        )
        self.watchdog = (
            Watchdog(cfg.watchdog_alertname, timedelta(minutes=cfg.watchdog_minutes), clock)
            if cfg.watchdog_minutes > 0
            else None
        )
        self._alertmanager = alertmanager
        self._own_alertmanager = alertmanager is None and bool(settings.alertmanager_url)
        self._watchdog_interval = watchdog_interval
        self._housekeeping_interval = housekeeping_interval
        # With replicas, webhooks reach any of them: the leader's senders look for work others stored.
        self._poll_interval = poll_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._started = False
        self.reconciled = asyncio.Event()

    # ------------------------------------------------------------------------ lifecycle

    def routes(self) -> list[web.RouteDef]:
        """The webhook route for :meth:`bot.http.HttpServer.add_routes` (before it starts)."""
        return webhook_routes(self.intake, self.config.webhook_path)

    async def start(self) -> None:
        """Create the tables, start the senders, reconcile with Alertmanager, start the loops."""
        if self._started:
            return
        self._stopping.clear()
        await self._db.run(self.store.create_tables)
        if self._own_alertmanager and self._alertmanager is None:
            assert self.settings.alertmanager_url
            self._alertmanager = AlertmanagerClient(
                self.settings.alertmanager_url, timeout=self.config.alertmanager_timeout_seconds
            )
        await self.outbox.start()
        self._started = True
        if self._alertmanager is not None and self.settings.alerts.reconcile_minutes >= 0:
            self._spawn("alerts-reconcile", self._reconcile_loop)
        else:
            self.reconciled.set()
        if self.watchdog is not None:
            self._spawn("alerts-watchdog", self._watchdog_loop)
        self._spawn("alerts-housekeeping", self._housekeeping_loop)
        if self._poll_interval:
            self._spawn("alerts-poll", self._poll_loop)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the loops, let the chat operation in flight finish, close the Alertmanager client."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        await self.outbox.stop(grace)
        if self.graphs is not None:
            await self.graphs.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._own_alertmanager and self._alertmanager is not None:
            await self._alertmanager.close()
            self._alertmanager = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._guard(name, fn), name=name))

    async def _guard(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run a loop; if it fails, log it and start it again after a pause (until stopped)."""
        while not self._stopping.is_set():
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; restarting it in 5 s", name)
                await self._sleep(5.0)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until the outbox has nothing left to send (tests, graceful shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            pending = await self._db.run(self.store.pending_count)
            if pending == 0 and not self.outbox.busy:
                return
            if loop.time() > deadline:
                raise TimeoutError(f"{pending} alert chat operations still pending after {timeout}s")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------------ intake

    async def ingest(self, payload: WebhookPayload | dict[str, Any], *, router: Router | None = None) -> IngestResult:
        """Store one webhook payload (persisted when this returns) and wake the senders."""
        if not isinstance(payload, WebhookPayload):
            payload = WebhookPayload.model_validate(payload)
        outcome = await self._db.run(self.store.ingest, payload, router or self.router)
        if outcome.result.heartbeat and self.watchdog is not None:
            now = self._clock()
            await self._db.run(record_heartbeat, self._db, self.watchdog.alertname, now)
            if self._started:  # the leader says "back" at once; a standby leaves it to the leader
                change = self.watchdog.seen(now)
                if change is not None:
                    await self._notice(self.watchdog.message(change))
        self.outbox.wake(outcome.channels)
        return outcome.result

    async def _notice(self, text: str) -> None:
        await self._db.run(self.store.add_notice, self.ops_channel, text)
        self.outbox.wake([self.ops_channel])

    # ------------------------------------------------------------------------ rendering

    def _render_message(self, work: MessageWork) -> OutMessage:
        return render_incident(
            work.incident,
            self._clock(),
            self.render_options,
            mention_roles=work.mention_roles,
            nonce=f"opsbot-a{work.delivery_id}"[:25],
        )

    def _message_created(self, work: MessageWork, message_id: str) -> None:
        assert self.graphs is not None
        incident = work.incident
        self.graphs.message_created(incident, work.channel, message_id, f"#{incident.id} {incident.title}"[:100])

    def _render_timeline(self, work: TimelineWork) -> str:
        return render_timeline(work.entries, self._clock(), self.render_options)

    def render(self, incident: IncidentView, mention_roles: Iterable[int] = ()) -> OutMessage:
        """The message for an incident as the outbox would send it (the bot may show it too)."""
        return render_incident(incident, self._clock(), self.render_options, mention_roles=tuple(mention_roles))

    # ------------------------------------------------------------------------ reading

    async def incidents(
        self, open_only: bool = True, *, service: str | None = None, env: str | None = None, limit: int = 50
    ) -> list[IncidentView]:
        """Incidents, open ones first, most severe first (``!incidents``; ``!status`` by service/env)."""
        if not 1 <= limit <= 500:
            raise ValueError("limit must be between 1 and 500")
        return await self._db.run(lambda: self.store.incidents(open_only=open_only, service=service, env=env, limit=limit))

    async def incident(self, incident_id: int) -> IncidentView:
        """One incident with its alerts and timeline; UserError if there is none."""
        return await self._db.run(self.store.incident, incident_id)

    # ------------------------------------------------------------------------ acknowledge

    async def ack(self, incident_id: int, user_id: int | None, user_name: str) -> IncidentView:
        """Acknowledge: the message shows who and when; the timeline records it."""
        view, channels = await self._db.run(self.store.ack, incident_id, user_id, user_name)
        self.outbox.wake(channels)
        return view

    async def unack(self, incident_id: int, user_id: int | None, user_name: str) -> IncidentView:
        view, channels = await self._db.run(self.store.unack, incident_id, user_id, user_name)
        self.outbox.wake(channels)
        return view

    async def note(self, incident_id: int, user_name: str, text: str) -> IncidentView:
        """``!note 12 text``: a timeline entry, posted to the incident's thread by the outbox."""
        view, channels = await self._db.run(self.store.note, incident_id, user_name, text)
        self.outbox.wake(channels)
        return view

    async def resolve(self, incident_id: int, user_id: int | None, user_name: str) -> tuple[IncidentView, int]:
        """``!resolve 12``: close the incident in the bot (the message turns resolved, escalation
        stops, the timeline says who). Alertmanager is not told and may still be firing: returns
        the incident and how many of its alerts were firing when it was closed."""
        view, channels, firing = await self._db.run(self.store.resolve, incident_id, user_name)
        self.outbox.wake(channels)
        log.info("incident #%s resolved by hand by %s (%s); %s alerts were firing", incident_id, user_name,
                 user_id, firing)
        return view, firing

    async def stats(self, period: timedelta, *, until: datetime | None = None) -> ResponseStats:
        """``!incidents stats 7d``: response stats of the incidents opened in the last ``period``
        (before ``until``, default now). Sample incidents (``!testalert``) count too."""
        end = until or self._clock()
        since = end - period
        rows = await self._db.run(self.store.stats_records, since, end)
        return response_stats(rows, since, until)

    # ------------------------------------------------------------------------ silences

    def _client(self) -> AlertmanagerClient:
        if self._alertmanager is None:
            raise AlertmanagerNotConfigured()
        return self._alertmanager

    @staticmethod
    def _duration(duration: timedelta | str) -> timedelta:
        if isinstance(duration, timedelta):
            if not MIN_SILENCE <= duration <= MAX_SILENCE:
                raise UserError(f"a silence lasts between {short(MIN_SILENCE)} and {short(MAX_SILENCE)}")
            return duration
        return parse_duration(duration, minimum=MIN_SILENCE, maximum=MAX_SILENCE, what="silence duration")

    async def silence(
        self, incident_id: int, duration: timedelta | str, user_name: str, user_id: int | None = None
    ) -> SilenceView:
        """A real Alertmanager silence on the group's common labels, by ``user_name``.

        The message then shows "silenced by X until T" and the timeline records it.
        """
        length = self._duration(duration)
        incident = await self._db.run(self.store.silence_target, incident_id)
        labels = {k: v for k, v in incident.common_labels.items() if v} or {
            k: v for k, v in incident.group_labels.items() if v
        }
        if not labels:
            raise UserError(
                f"incident #{incident_id} has no labels common to its alerts; use `!silence` with matchers"
            )
        matchers = [Matcher(k, "=", v) for k, v in sorted(labels.items())]
        if too_broad(matchers, self.config.env_label):  # no regexes here: quick
            raise UserError(
                f"the alerts of incident #{incident_id} share no label but the env, so silencing it would "
                "silence the whole env; use `!silence` with matchers that name what to silence"
            )
        client = self._client()
        where = " ".join(p for p in (incident.service, incident.env) if p)
        comment = f"opsbot incident #{incident_id}: {incident.title}" + (f" ({where})" if where else "")
        comment += f", silenced from Discord by {user_name}"
        now = self._clock()
        until = now + length
        silence_id = await client.create_silence(
            matchers, starts_at=now, ends_at=until, created_by=user_name, comment=comment
        )
        _, channels = await self._db.run(self.store.record_silence, incident_id, silence_id, user_name, until)
        self.outbox.wake(channels)
        log.info("incident #%s silenced by %s (%s) until %s: %s", incident_id, user_name, user_id, until, silence_id)
        return SilenceView(
            id=silence_id,
            matchers=[str(m) for m in matchers],
            starts_at=now,
            ends_at=until,
            created_by=user_name,
            comment=comment,
            state="active",
        )

    async def silences(self, include_expired: bool = False) -> list[SilenceView]:
        """Silences in Alertmanager, active and pending first, soonest end first (``!silences``)."""
        found = [SilenceView.from_api(s) for s in await self._client().silences()]
        if not include_expired:
            found = [s for s in found if s.state != "expired"]
        order = {"active": 0, "pending": 1, "expired": 2}
        far = datetime.max.replace(tzinfo=self._clock().tzinfo)
        return sorted(found, key=lambda s: (order.get(s.state, 3), s.ends_at or far, s.id))

    async def expire_silence(self, silence_id: str, user_name: str = "") -> None:
        """End a silence now (``!unsilence``); incidents showing it are updated."""
        await self._client().expire_silence(silence_id)
        reason = f"silence {silence_id} expired" + (f" by {user_name}" if user_name else "")
        self.outbox.wake(await self._db.run(self.store.clear_silence, silence_id, reason))

    async def create_silence(
        self, matchers_text: str, duration: timedelta | str, comment: str, user_name: str, *, whole_env: bool = False
    ) -> SilenceView:
        """``!silence alertname=Foo service=~"chat.*" 2h db upgrade``.

        Matchers that would mute every alert are refused; so are those that mute every alert of an
        env, unless ``whole_env`` (a maintenance window over all of an env's services)."""
        try:
            matchers = parse_matchers(matchers_text)
        except MatcherError as e:
            raise UserError(f"bad matchers: {e}") from None
        if not matchers:
            raise UserError('a silence needs matchers, e.g. `alertname=HighLatency service="chat"`')
        broad = await asyncio.to_thread(too_broad, matchers, self.config.env_label, whole_env=whole_env)
        if broad:
            raise UserError(broad)
        comment = " ".join(comment.split())
        if not comment:
            raise UserError("a silence needs a comment: why is it silenced?")
        length = self._duration(duration)
        now = self._clock()
        silence_id = await self._client().create_silence(
            matchers, starts_at=now, ends_at=now + length, created_by=user_name, comment=comment[:1000]
        )
        return SilenceView(
            id=silence_id,
            matchers=[str(m) for m in matchers],
            starts_at=now,
            ends_at=now + length,
            created_by=user_name,
            comment=comment[:1000],
            state="active",
        )

    # ------------------------------------------------------------------------ live alerts

    async def live_alerts(self, service: str | None = None) -> list[LiveAlert]:
        """Alerts Alertmanager holds now (``!alerts [service]``), most severe first."""
        cfg = self.config
        matchers = [Matcher(cfg.service_label, "=", service)] if service else []
        alerts = await self._client().alerts(matchers)
        out = []
        for a in alerts:
            name = a.labels.get("alertname", "")
            if name == cfg.watchdog_alertname:
                continue
            out.append(
                LiveAlert(
                    fingerprint=a.fingerprint,
                    alertname=name,
                    severity=a.labels.get(cfg.severity_label),
                    service=a.labels.get(cfg.service_label),
                    env=a.labels.get(cfg.env_label),
                    summary=a.annotations.get("summary") or a.annotations.get("description") or "",
                    labels=dict(a.labels),
                    annotations=dict(a.annotations),
                    starts_at=a.starts_at,
                    state=a.status.state,
                    silenced_by=list(a.status.silenced_by),
                    generator_url=a.generator_url,
                )
            )
        out.sort(key=lambda a: (self.store.rank(a.severity), a.starts_at or self._clock(), a.alertname))
        return out

    # ------------------------------------------------------------------------ demo

    async def sample_alert(
        self,
        service: str = "chat",
        env: str = "prod",
        *,
        severity: str = "critical",
        alertname: str = "HighErrorRate",
        alerts: int = 2,
        pages: bool = False,
    ) -> IncidentView:
        """Fire a realistic alert group through the intake path (the demo, without Alertmanager).

        Calling it again for the same service/env/alertname adds alerts to the open incident. It
        goes to the channel its route names but, unless ``pages``, mentions nobody and starts no
        escalation: ``!testalert`` never pages or pings anyone (tests of escalation pass ``pages``).
        """
        now = self._clock()
        labels = {"alertname": alertname, "severity": severity}
        labels[self.config.service_label] = service
        labels[self.config.env_label] = env
        group = {"alertname": alertname, self.config.env_label: env, self.config.service_label: service}
        key = "{}:{" + ", ".join(f'{k}="{v}"' for k, v in sorted(group.items())) + "}"
        items = []
        for _ in range(max(1, min(alerts, 50))):
            pod = f"{service}-{secrets.token_hex(3)}-{secrets.token_hex(2)}"
            items.append(
                {
                    "status": "firing",
                    "labels": {**labels, "pod": pod, "namespace": env},
                    "annotations": {
                        "summary": f"{service} in {env}: 5xx above 5% for 5 minutes",
                        "description": f"{pod} answers 7.3% of requests with 5xx (threshold 5%).",
                        "runbook_url": f"https://runbooks.example.com/{service}/{alertname.lower()}",
                    },
                    "startsAt": now.isoformat(),
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": sample_generator_url(self.settings.prometheus_url, service, env),
                    "fingerprint": secrets.token_hex(8),
                }
            )
        payload = WebhookPayload.model_validate(
            {
                "version": "4",
                "groupKey": key,
                "truncatedAlerts": 0,
                "status": "firing",
                "receiver": SAMPLE_RECEIVER,
                "groupLabels": group,
                "commonLabels": labels,
                "commonAnnotations": {"summary": f"{service} in {env}: 5xx above 5% for 5 minutes"},
                "externalURL": "http://alertmanager.example.com",
                "alerts": items,
            }
        )
        result = await self.ingest(payload, router=self.router if pages else self.router.quiet())
        assert result.incident_id is not None
        return await self.incident(result.incident_id)

    async def resolve_sample(self, incident_id: int) -> IncidentView:
        """Resolve a sample incident's alerts through the intake path (the demo's counterpart)."""
        incident = await self.incident(incident_id)
        if incident.receiver != SAMPLE_RECEIVER:
            raise UserError(f"incident #{incident_id} is a real one; resolve it in Alertmanager")
        now = self._clock()
        items = [
            {
                "status": "resolved",
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": a.starts_at.isoformat() if a.starts_at else None,
                "endsAt": now.isoformat(),
                "generatorURL": a.generator_url,
                "fingerprint": a.fingerprint,
            }
            for a in incident.alerts
            if a.status == "firing"
        ]
        group_key = await self._db.run(self._group_key, incident_id)
        await self.ingest(
            {
                "version": "4", "groupKey": group_key, "status": "resolved", "receiver": SAMPLE_RECEIVER,
                "groupLabels": incident.group_labels, "commonLabels": incident.common_labels,
                "commonAnnotations": incident.common_annotations, "alerts": items,
            }
        )
        return await self.incident(incident_id)

    def _group_key(self, incident_id: int) -> str:
        from alerts.store import IncidentRow

        with self._db.session() as session:
            row = session.get(IncidentRow, incident_id)
            if row is None:
                raise UserError(f"no incident #{incident_id}")
            return row.group_key

    # ------------------------------------------------------------------------ reconcile

    async def reconcile(self) -> int:
        """Close what resolved or vanished in Alertmanager, refresh what is live. Returns incidents changed.

        Incidents whose receiver Alertmanager does not have in its configuration are left alone:
        they were sent by another Alertmanager (or are samples), and this one cannot judge them.
        """
        client = self._client()
        fetched_at = self._clock()
        status = await client.status()
        groups = await client.alert_groups()
        known = _receivers(status) | {g.receiver.name for g in groups}
        targets = await self._db.run(self.store.reconcile_targets)
        changed = 0
        for t in targets:
            if t.receiver == SAMPLE_RECEIVER or t.receiver not in known:
                continue
            live = [
                a for g in groups if g.receiver.name == t.receiver and dict(g.labels) == t.group_labels for a in g.alerts
            ]
            channels = await self._db.run(self.store.reconcile, t.incident_id, live, fetched_at)
            if channels:
                changed += 1
                self.outbox.wake(channels)
        if changed:
            log.info("alerts: reconciled %d incidents with Alertmanager", changed)
        return changed

    async def _reconcile_loop(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self.reconcile()
                self.reconciled.set()
                delay = 1.0
                interval = self.config.reconcile_minutes * 60
                if interval <= 0:
                    return
            except AlertmanagerError as e:
                log.warning("alerts: could not reconcile with Alertmanager: %s (retry in %.0fs)", e, delay)
                interval, delay = delay, min(delay * 2, 300.0)
            if await self._sleep(interval):
                return

    # ------------------------------------------------------------------------ watchdog, housekeeping

    async def check_watchdog(self) -> str | None:
        """Check the watchdog once (the loop calls it; tests call it with their own clock)."""
        if self.watchdog is None:
            return None
        # Arrivals at other replicas count too; those from before this watch began (a previous run)
        # don't, as before: after a restart the timeout counts from the start.
        seen = await self._db.run(last_heartbeat, self._db, self.watchdog.alertname)
        if seen is not None and seen >= self.watchdog.state.since:
            back = self.watchdog.seen(seen)
            if back is not None:
                await self._notice(self.watchdog.message(back))
        change = self.watchdog.check()
        if change is not None:
            log.warning("alerts: %s", self.watchdog.message(change))
            await self._notice(self.watchdog.message(change))
        return change

    async def _watchdog_loop(self) -> None:
        assert self.watchdog is not None
        interval = min(self._watchdog_interval, self.watchdog.timeout.total_seconds() / 4)
        while not await self._sleep(interval):
            await self.check_watchdog()

    async def _poll_loop(self) -> None:
        assert self._poll_interval
        while not await self._sleep(self._poll_interval):
            try:
                self.outbox.wake(await self._db.run(self.store.pending_channels))
            except Exception:
                log.exception("alerts: looking for work stored by other replicas failed")

    async def housekeeping(self) -> None:
        """Silences that ended stop showing; old dedup receipts go."""
        for silence_id in await self._db.run(self.store.expired_silences):
            self.outbox.wake(await self._db.run(self.store.clear_silence, silence_id, "the silence ended"))
        await self._db.run(self.store.prune_receipts, timedelta(hours=self.config.dedup_retention_hours))

    async def _housekeeping_loop(self) -> None:
        while not await self._sleep(self._housekeeping_interval):
            try:
                await self.housekeeping()
            except Exception:
                log.exception("alerts: housekeeping failed")


def sample_generator_url(prometheus_url: str | None, service: str, env: str) -> str:
    """A sample alert's ``generatorURL``: the 5xx ratio over the sandbox's series (``sandbox/metrics.py``),
    so its graph is real when Prometheus scrapes the sandbox."""
    where = f'service="{service}", env="{env}"'
    expr = (f'sum(rate(http_requests_total{{{where}, code=~"5.."}}[5m])) '
            f"/ sum(rate(http_requests_total{{{where}}}[5m])) > 0.05")
    base = public_url(prometheus_url or "http://prometheus.example.com")  # a link in chat: no credentials
    return f"{base}/graph?{urlencode({'g0.expr': expr, 'g0.tab': '0'})}"


def _receivers(status: dict[str, Any]) -> set[str]:
    """Receiver names from Alertmanager's own configuration (``/api/v2/status``)."""
    original = (status.get("config") or {}).get("original") if isinstance(status, dict) else None
    if not isinstance(original, str):
        return set()
    try:
        data = yaml.safe_load(original)
    except yaml.YAMLError:
        return set()
    receivers = data.get("receivers") if isinstance(data, dict) else None
    if not isinstance(receivers, list):
        return set()
    return {r["name"] for r in receivers if isinstance(r, dict) and isinstance(r.get("name"), str)}
