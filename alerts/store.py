"""Incidents, their alerts, the timeline, dedup receipts and the outbox, in the database.

Tables (all on :class:`commands.db.Base`):

- ``alert_incidents``: one row per incident = one alert group (receiver + groupKey) from the first
  firing until every alert resolved. At most one *open* incident per group (a partial unique
  index); a group that fires again after it resolved opens a new incident. IDs are short integers
  that never repeat (``!ack 12``). ``version`` goes up on every change people should see.
- ``alert_alerts``: the alerts of an incident by fingerprint, with their latest state.
- ``alert_timeline``: fired, joined, acked by, silenced by, resolved… posted to the message's
  thread in batches (``posted``).
- ``alert_receipts``: the dedup keys (receiver+groupKey, fingerprint, status, startsAt) seen.
- ``alert_deliveries``: the outbox. One row per (incident, channel) holding the message ID and the
  ``sent_version``. The latest desired state is the incident itself, so updates coalesce by
  construction: a delivery is due while ``incident.version > sent_version``, and whatever is sent
  is rendered from the state at that moment.
- ``alert_notices``: one-off posts (the watchdog's "alert pipeline is silent").

Every method here blocks; :class:`alerts.service.AlertService` calls them through
``Database.run``. Writes are serialised, so read-modify-write transactions never interleave: by a
lock in the process, and by the database (:meth:`Database.exclusive`, a PostgreSQL advisory lock)
across the bot replicas that share it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from alerts.models import (
    AlertView,
    ApiAlert,
    IncidentView,
    IngestResult,
    TimelineEntry,
    WebhookAlert,
    WebhookPayload,
)
from alerts.routing import Router
from alerts.stats import IncidentRecord
from commands.catalog import UserError
from commands.db import Base, Database, MutexRow, UTCDateTime, utcnow
from commands.timeutil import short

log = logging.getLogger(__name__)

_CHUNK = 500  # bound parameters per IN (...) query
MAX_NOTE = 900  # a timeline entry holds 1,000 characters; this leaves room for "note by <name>: "


class IncidentRow(Base):
    __tablename__ = "alert_incidents"
    __table_args__ = (
        Index(
            "uq_alert_incidents_open_group",
            "group_hash",
            unique=True,
            sqlite_where=text("is_open"),
            postgresql_where=text("is_open"),
        ),
        Index("ix_alert_incidents_service_env", "service", "env"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_hash: Mapped[str] = mapped_column(String(64), index=True)
    receiver: Mapped[str] = mapped_column(String(256))
    group_key: Mapped[str] = mapped_column(Text)
    group_labels: Mapped[str] = mapped_column(Text, default="{}")
    common_labels: Mapped[str] = mapped_column(Text, default="{}")
    common_annotations: Mapped[str] = mapped_column(Text, default="{}")
    external_url: Mapped[str] = mapped_column(Text, default="")
    is_open: Mapped[bool] = mapped_column(Boolean, index=True)
    status: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(256))
    severity: Mapped[str | None] = mapped_column(String(64))
    severity_rank: Mapped[int] = mapped_column(Integer)
    service: Mapped[str | None] = mapped_column(String(128))
    env: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(100))
    escalation: Mapped[str | None] = mapped_column(String(100))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    acked_by: Mapped[str | None] = mapped_column(String(100))
    acked_by_id: Mapped[int | None] = mapped_column(BigInteger)
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    silence_id: Mapped[str | None] = mapped_column(String(64), index=True)
    silenced_by: Mapped[str | None] = mapped_column(String(100))
    silenced_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    truncated_alerts: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=1)


class AlertRow(Base):
    __tablename__ = "alert_alerts"
    __table_args__ = (UniqueConstraint("incident_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("alert_incidents.id", ondelete="CASCADE"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(128))
    alertname: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str | None] = mapped_column(String(64))
    severity_rank: Mapped[int] = mapped_column(Integer)
    labels: Mapped[str] = mapped_column(Text)
    annotations: Mapped[str] = mapped_column(Text)
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    generator_url: Mapped[str] = mapped_column(Text, default="")
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TimelineRow(Base):
    __tablename__ = "alert_timeline"
    __table_args__ = (Index("ix_alert_timeline_incident_posted", "incident_id", "posted"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("alert_incidents.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    posted: Mapped[bool] = mapped_column(Boolean, default=False)


class ReceiptRow(Base):
    __tablename__ = "alert_receipts"
    __table_args__ = (UniqueConstraint("key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class DeliveryRow(Base):
    __tablename__ = "alert_deliveries"
    __table_args__ = (
        UniqueConstraint("incident_id", "channel"),
        Index("ix_alert_deliveries_channel_pending", "channel", "pending"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("alert_incidents.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(100))
    is_primary: Mapped[bool] = mapped_column(Boolean)
    mention_roles: Mapped[str] = mapped_column(Text, default="[]")
    message_id: Mapped[str | None] = mapped_column(String(64))
    thread_id: Mapped[str | None] = mapped_column(String(64))
    sent_version: Mapped[int] = mapped_column(Integer, default=0)
    # True while the incident's version is ahead of sent_version (kept in step on every write,
    # so a sender finds its work with an index instead of a join over every incident).
    pending: Mapped[bool] = mapped_column(Boolean, default=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")
    create_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gave_up_version: Mapped[int | None] = mapped_column(Integer)


class NoticeRow(Base):
    __tablename__ = "alert_notices"
    __table_args__ = (Index("ix_alert_notices_channel_sent", "channel", "sent"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TimelinePostRow(Base):
    """A timeline post under way: chat may show it although the entries are not marked posted (a
    crash between the post and the record). The next sender looks in the thread for ``text``
    before posting those entries again."""

    __tablename__ = "alert_timeline_posts"

    delivery_id: Mapped[int] = mapped_column(ForeignKey("alert_deliveries.id", ondelete="CASCADE"), primary_key=True)
    entry_ids: Mapped[str] = mapped_column(Text)  # JSON list of alert_timeline IDs
    text: Mapped[str] = mapped_column(Text)  # exactly what was sent
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)


TABLES: list[Table] = [
    IncidentRow.__table__, AlertRow.__table__, TimelineRow.__table__,  # type: ignore[list-item]
    ReceiptRow.__table__, DeliveryRow.__table__, NoticeRow.__table__,  # type: ignore[list-item]
    TimelinePostRow.__table__,  # type: ignore[list-item]
]


# ------------------------------------------------------------------------------ work items


@dataclass(frozen=True)
class MessageWork:
    """Create or edit one incident message in one channel, rendered from ``incident``."""

    delivery_id: int
    channel: str
    incident: IncidentView
    version: int
    message_id: str | None
    mention_roles: tuple[int, ...]
    primary: bool
    attempts: int
    create_in_flight: bool  # a create was started before and never confirmed (a crash?)


@dataclass(frozen=True)
class TimelineWork:
    """Post unposted timeline entries in the thread under the primary message."""

    delivery_id: int
    channel: str
    incident_id: int
    message_id: str
    thread_name: str
    entries: tuple[TimelineEntry, ...]
    entry_ids: tuple[int, ...]
    # A post of these entries was started before and never recorded (a crash?): what it said.
    in_flight_text: str | None = None


@dataclass(frozen=True)
class NoticeWork:
    notice_id: int
    channel: str
    text: str
    attempts: int
    # A try was started and neither succeeded nor failed as far as we know (a crash): chat may
    # show it already, so the sender looks before posting again.
    unknown: bool = False


Work = MessageWork | TimelineWork | NoticeWork


@dataclass(frozen=True)
class ReconcileTarget:
    incident_id: int
    receiver: str
    group_labels: dict[str, str]


@dataclass
class IngestOutcome:
    result: IngestResult
    channels: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class StoreOptions:
    severities: Sequence[str] = ("critical", "error", "warning", "info")
    service_label: str = "service"
    env_label: str = "env"
    severity_label: str = "severity"
    hidden_labels: Sequence[str] = ()
    watchdog_alertname: str = "Watchdog"
    timeline_batch_chars: int = 1900
    timeline_delay_seconds: float = 0.0


def group_hash(receiver: str, group_key: str) -> str:
    return hashlib.sha256(f"{receiver}\x00{group_key}".encode()).hexdigest()


def receipt_key(ghash: str, alert: WebhookAlert) -> str:
    starts = alert.starts_at.isoformat() if alert.starts_at else ""
    return hashlib.sha256(f"{ghash}\x00{alert.key}\x00{alert.status}\x00{starts}".encode()).hexdigest()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _loads(text_: str) -> Any:
    return json.loads(text_) if text_ else {}


class AlertStore:
    """The alerts tables behind one :class:`Database`. ``clock`` gives aware UTC now."""

    def __init__(
        self, db: Database, options: StoreOptions | None = None, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._db = db
        self.options = options or StoreOptions()
        self._clock = clock
        self._write = threading.RLock()
        self._ranks = {s: i for i, s in enumerate(self.options.severities)}

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Session]:
        """A write transaction, serialised with every other writer of the alerts tables.

        The thread lock keeps this process's writers from queueing on the database lock (and
        SQLite's writers from failing to upgrade a stale read); the database lock covers the other
        replicas: on PostgreSQL two of them would otherwise both open an incident for one group or
        lose an update to its version.
        """
        with self._write, self._db.session() as session:
            self._db.exclusive(session, "alerts")
            yield session

    # ------------------------------------------------------------------------ schema

    def create_tables(self) -> None:
        Base.metadata.create_all(self._db.engine, tables=[*TABLES, MutexRow.__table__])  # type: ignore[list-item]

    def rank(self, severity: str | None) -> int:
        if severity is None:
            return len(self._ranks) + 1
        return self._ranks.get(severity.lower(), len(self._ranks))

    # ------------------------------------------------------------------------ intake

    def ingest(self, payload: WebhookPayload, router: Router) -> IngestOutcome:
        """Store one webhook delivery (in one transaction) and say what changed."""
        opts = self.options
        alerts = [a for a in payload.alerts if a.alertname != opts.watchdog_alertname]
        heartbeat = any(
            a.alertname == opts.watchdog_alertname and a.status == "firing" for a in payload.alerts
        )
        if not alerts:
            return IngestOutcome(IngestResult(duplicate=False, heartbeat=heartbeat))
        ghash = group_hash(payload.receiver, payload.group_key)
        # Newest state per fingerprint: a payload never holds one alert twice, but don't trust it.
        by_fp: dict[str, WebhookAlert] = {}
        for a in alerts:
            by_fp[a.key] = a
        with self._writing() as session:
            keys = {fp: receipt_key(ghash, a) for fp, a in by_fp.items()}
            seen = self._existing_receipts(session, list(keys.values()))
            fresh = [a for fp, a in by_fp.items() if keys[fp] not in seen]
            if not fresh:
                return IngestOutcome(IngestResult(duplicate=True, heartbeat=heartbeat))
            now = self._clock()
            for key in {keys[a.key] for a in fresh}:
                session.add(ReceiptRow(key=key, received_at=now))

            incident = session.scalars(
                select(IncidentRow).where(IncidentRow.group_hash == ghash, IncidentRow.is_open.is_(True))
            ).first()
            created = False
            if incident is None and not any(a.status == "firing" for a in fresh):
                incident = self._closed_holding(session, ghash, fresh)
            if incident is None:
                incident = self._create(session, payload, ghash, router, now)
                created = True
            changed = self._apply(session, incident, payload, fresh, now, created=created)
            channels: set[str] = set()
            if changed or created:
                channels = self._bump(session, incident, now)
            session.flush()
            return IngestOutcome(
                IngestResult(
                    duplicate=False,
                    incident_id=incident.id,
                    created=created,
                    changed=changed or created,
                    heartbeat=heartbeat,
                ),
                channels,
            )

    def _existing_receipts(self, session: Session, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i : i + _CHUNK]
            found.update(session.scalars(select(ReceiptRow.key).where(ReceiptRow.key.in_(chunk))))
        return found

    def _closed_holding(self, session: Session, ghash: str, alerts: list[WebhookAlert]) -> IncidentRow | None:
        """The latest closed incident of this group that holds one of these alerts."""
        fps = [a.key for a in alerts][:_CHUNK]
        return session.scalars(
            select(IncidentRow)
            .join(AlertRow, AlertRow.incident_id == IncidentRow.id)
            .where(IncidentRow.group_hash == ghash, AlertRow.fingerprint.in_(fps))
            .order_by(IncidentRow.id.desc())
            .limit(1)
        ).first()

    def _create(
        self, session: Session, payload: WebhookPayload, ghash: str, router: Router, now: datetime
    ) -> IncidentRow:
        labels = dict(payload.common_labels)
        targets = router.route(labels)
        incident = IncidentRow(
            group_hash=ghash,
            receiver=payload.receiver,
            group_key=payload.group_key,
            group_labels=_dumps(payload.group_labels),
            common_labels=_dumps(payload.common_labels),
            common_annotations=_dumps(payload.common_annotations),
            external_url=payload.external_url,
            is_open=True,
            status="firing",
            title=_title(payload),
            severity=None,
            severity_rank=self.rank(None),
            service=self._label(payload, self.options.service_label, 128),
            env=self._label(payload, self.options.env_label, 64),
            channel=targets[0].channel,
            escalation=targets[0].escalation,
            opened_at=now,
            updated_at=now,
            version=0,
        )
        session.add(incident)
        session.flush()
        for i, t in enumerate(targets):
            session.add(
                DeliveryRow(
                    incident_id=incident.id,
                    channel=t.channel,
                    is_primary=i == 0,
                    mention_roles=_dumps(list(t.mention_roles)),
                    sent_version=0,
                    pending=True,
                )
            )
        return incident

    @staticmethod
    def _label(payload: WebhookPayload, name: str, limit: int) -> str | None:
        """A label for a column of ``limit`` characters (PostgreSQL refuses longer ones)."""
        value = payload.common_labels.get(name) or payload.group_labels.get(name)
        return value[:limit] if value else None

    def _apply(
        self,
        session: Session,
        incident: IncidentRow,
        payload: WebhookPayload,
        fresh: list[WebhookAlert],
        now: datetime,
        *,
        created: bool,
    ) -> bool:
        rows = self._alert_rows(session, incident.id, [a.key for a in fresh])
        joined: list[WebhookAlert] = []
        refired: list[WebhookAlert] = []
        resolved: list[WebhookAlert] = []
        changed = False
        for a in fresh:
            row = rows.get(a.key)
            if row is None:
                row = self._new_alert_row(incident, a, now)
                session.add(row)
                rows[a.key] = row
                (joined if a.status == "firing" else resolved).append(a)
                changed = True
                continue
            row.seen_at = now
            if a.status == "firing":
                if row.status == "resolved":
                    if row.starts_at is None or (a.starts_at is not None and a.starts_at > row.starts_at):
                        self._fill(row, a)
                        refired.append(a)
                        changed = True
                    # else: a late copy of a firing that has resolved since; keep it resolved
                else:
                    changed |= self._fill(row, a)
            else:  # resolved
                if row.status == "firing" and (
                    row.starts_at is None or a.starts_at is None or a.starts_at >= row.starts_at
                ):
                    self._fill(row, a)
                    resolved.append(a)
                    changed = True
                elif row.status == "resolved":
                    changed |= self._fill(row, a)
        # The group's common view follows the latest delivery.
        for attr, value in (
            ("common_labels", _dumps(payload.common_labels)),
            ("common_annotations", _dumps(payload.common_annotations)),
            ("truncated_alerts", payload.truncated_alerts),
            ("external_url", payload.external_url),
        ):
            if getattr(incident, attr) != value and (attr != "truncated_alerts" or incident.is_open):
                setattr(incident, attr, value)
                changed = True
        common = payload.common_labels
        if created:
            firing_now = [a for a in joined if a.status == "firing"]
            what = self._describe(firing_now or joined, common)
            self._event(session, incident, now, "fired", f"fired: {what}" if firing_now else f"arrived resolved: {what}")
        elif joined:
            self._event(session, incident, now, "joined", f"joined: {self._describe(joined, common)}")
        if refired:
            self._event(session, incident, now, "refired", f"fired again: {self._describe(refired, common)}")
        if resolved and not created:
            self._event(session, incident, now, "resolved", f"resolved: {self._describe(resolved, common)}")
        if changed:
            session.flush()
            self._settle(session, incident, now)
        return changed

    def _alert_rows(self, session: Session, incident_id: int, fps: list[str]) -> dict[str, AlertRow]:
        out: dict[str, AlertRow] = {}
        for i in range(0, len(fps), _CHUNK):
            chunk = fps[i : i + _CHUNK]
            for row in session.scalars(
                select(AlertRow).where(AlertRow.incident_id == incident_id, AlertRow.fingerprint.in_(chunk))
            ):
                out[row.fingerprint] = row
        return out

    def _new_alert_row(self, incident: IncidentRow, a: WebhookAlert, now: datetime) -> AlertRow:
        row = AlertRow(
            incident_id=incident.id,
            fingerprint=a.key,
            alertname="",
            status=a.status,
            severity=None,
            severity_rank=0,
            labels="{}",
            annotations="{}",
            generator_url="",
            seen_at=now,
        )
        self._fill(row, a)
        return row

    def _fill(self, row: AlertRow, a: WebhookAlert | ApiAlert, status: str | None = None) -> bool:
        """Copy an alert's state into its row; True when something visible changed."""
        severity = a.labels.get(self.options.severity_label)
        values: dict[str, Any] = {
            "alertname": a.labels.get("alertname", "")[:256],
            "status": status or getattr(a, "status", "firing"),
            "severity": severity[:64] if severity else None,
            "severity_rank": self.rank(severity),
            "labels": _dumps(a.labels),
            "annotations": _dumps(a.annotations),
            "starts_at": a.starts_at,
            "ends_at": a.ends_at if (status or getattr(a, "status", "")) == "resolved" else None,
            "generator_url": a.generator_url,
        }
        changed = False
        for k, v in values.items():
            if getattr(row, k) != v:
                setattr(row, k, v)
                changed = True
        return changed

    def _describe(self, alerts: Sequence[WebhookAlert | AlertRow], common: dict[str, str], limit: int = 5) -> str:
        parts = []
        hidden = set(self.options.hidden_labels) | {"alertname"}
        for a in alerts[:limit]:
            labels = a.labels if isinstance(a, (WebhookAlert, ApiAlert)) else _loads(a.labels)
            name = labels.get("alertname", "?")
            extra = " ".join(
                f"{k}={v}" for k, v in sorted(labels.items()) if k not in hidden and common.get(k) != v
            )
            parts.append(f"{name} {extra}".strip()[:200])
        more = f" and {len(alerts) - limit} more" if len(alerts) > limit else ""
        count = f"{len(alerts)} alert{'s' if len(alerts) != 1 else ''}: " if len(alerts) > 1 else ""
        return count + ", ".join(parts) + more

    def _settle(self, session: Session, incident: IncidentRow, now: datetime) -> None:
        """Derive status, severity and title from the incident's alerts; close it when all resolved."""
        rows = session.scalars(select(AlertRow).where(AlertRow.incident_id == incident.id)).all()
        firing = [r for r in rows if r.status == "firing"]
        pool = firing or list(rows)
        if pool:
            top = min(pool, key=lambda r: r.severity_rank)
            incident.severity, incident.severity_rank = top.severity, top.severity_rank
        names = sorted({r.alertname for r in rows if r.alertname})
        if len(names) == 1:
            incident.title = names[0]
        starts = [r.starts_at for r in rows if r.starts_at is not None]
        if starts:
            first = min(starts)
            incident.opened_at = min(incident.opened_at, first)
        if firing:
            if incident.status != "firing":
                incident.status = "firing"
                incident.resolved_at = None
            return
        if incident.status == "firing" or incident.is_open:
            ends = [r.ends_at for r in rows if r.ends_at is not None]
            incident.status = "resolved"
            incident.is_open = False
            incident.resolved_at = max(ends) if ends else now
            if incident.resolved_at < incident.opened_at:
                incident.resolved_at = now
            took = short(incident.resolved_at - incident.opened_at)
            self._event(session, incident, now, "closed", f"all resolved after {took}")

    def _event(self, session: Session, incident: IncidentRow, now: datetime, kind: str, text_: str) -> None:
        session.add(TimelineRow(incident_id=incident.id, at=now, kind=kind, text=text_[:1000], posted=False))

    def _bump(self, session: Session, incident: IncidentRow, now: datetime) -> set[str]:
        """A new version people should see: every delivery of the incident becomes due."""
        incident.version += 1
        incident.updated_at = now
        deliveries = session.scalars(select(DeliveryRow).where(DeliveryRow.incident_id == incident.id)).all()
        for d in deliveries:
            d.pending = True  # a delivery in backoff keeps its next_attempt_at: no hammering
        return {d.channel for d in deliveries}

    # ------------------------------------------------------------------------ actions

    def _get(self, session: Session, incident_id: int) -> IncidentRow:
        row = session.get(IncidentRow, incident_id)
        if row is None:
            raise UserError(f"no incident #{incident_id}")
        return row

    def ack(self, incident_id: int, user_id: int | None, user_name: str) -> tuple[IncidentView, set[str]]:
        with self._writing() as session:
            row = self._get(session, incident_id)
            if not row.is_open:
                raise UserError(f"incident #{incident_id} is resolved already")
            if row.acked_by is not None:
                raise UserError(f"incident #{incident_id} was acknowledged by {row.acked_by} already")
            now = self._clock()
            row.acked_by, row.acked_by_id, row.acked_at = user_name[:100], user_id, now
            self._event(session, row, now, "acked", f"acknowledged by {user_name}")
            channels = self._bump(session, row, now)
            session.flush()
            return self._view(session, row), channels

    def unack(self, incident_id: int, user_id: int | None, user_name: str) -> tuple[IncidentView, set[str]]:
        with self._writing() as session:
            row = self._get(session, incident_id)
            if row.acked_by is None:
                raise UserError(f"incident #{incident_id} is not acknowledged")
            if not row.is_open:
                raise UserError(f"incident #{incident_id} is resolved already")
            now = self._clock()
            was = row.acked_by
            row.acked_by, row.acked_by_id, row.acked_at = None, None, None
            self._event(session, row, now, "unacked", f"unacknowledged by {user_name} (was {was})")
            channels = self._bump(session, row, now)
            session.flush()
            return self._view(session, row), channels

    def note(self, incident_id: int, user_name: str, text_: str) -> tuple[IncidentView, set[str]]:
        """A note from a person in the timeline (posted to the thread like the other entries).

        Notes go on closed incidents too (what was found afterwards). The message itself does not
        change; the returned channels are the primary's, whose sender posts the timeline.
        """
        text_ = text_.strip()
        if not text_:
            raise UserError("a note needs some text, e.g. `!note 12 restarted the chat pods`")
        if len(text_) > MAX_NOTE:
            raise UserError(f"a note can be at most {MAX_NOTE} characters")
        with self._writing() as session:
            row = self._get(session, incident_id)
            self._event(session, row, self._clock(), "note", f"note by {user_name}: {text_}")
            session.flush()
            channels = set(session.scalars(select(DeliveryRow.channel).where(
                DeliveryRow.incident_id == row.id, DeliveryRow.is_primary.is_(True))))
            return self._view(session, row), channels

    def resolve(self, incident_id: int, user_name: str) -> tuple[IncidentView, set[str], int]:
        """Resolve an incident by hand, in the bot only; returns (view, channels, alerts still firing).

        Its firing alerts are marked resolved now, so the incident stays closed when Alertmanager
        later sends their resolution; if Alertmanager still fires them, its repeats are duplicates
        of what was seen, and an alert that fires anew in the group opens a new incident.
        """
        with self._writing() as session:
            row = self._get(session, incident_id)
            if not row.is_open:
                raise UserError(f"incident #{incident_id} is resolved already")
            now = self._clock()
            firing = session.scalars(
                select(AlertRow).where(AlertRow.incident_id == row.id, AlertRow.status == "firing")
            ).all()
            for a in firing:
                a.status, a.ends_at = "resolved", now
            row.is_open, row.status, row.resolved_at = False, "resolved", max(now, row.opened_at)
            took = short(row.resolved_at - row.opened_at)
            still = f" while Alertmanager had {len(firing)} alert{'s' if len(firing) != 1 else ''} firing" if firing else ""
            self._event(session, row, now, "resolved_by_hand",
                        f"resolved by hand in opsbot by {user_name} after {took}{still}; "
                        "Alertmanager may still be firing")
            channels = self._bump(session, row, now)
            session.flush()
            return self._view(session, row), channels, len(firing)

    def silence_target(self, incident_id: int) -> IncidentView:
        with self._db.session() as session:
            row = self._get(session, incident_id)
            if not row.is_open:
                raise UserError(f"incident #{incident_id} is resolved already")
            return self._view(session, row, alerts=False)

    def record_silence(
        self, incident_id: int, silence_id: str, user_name: str, until: datetime
    ) -> tuple[IncidentView, set[str]]:
        with self._writing() as session:
            row = self._get(session, incident_id)
            now = self._clock()
            row.silence_id, row.silenced_by, row.silenced_until = silence_id[:64], user_name[:100], until
            self._event(session, row, now, "silenced", f"silenced by {user_name} until {until:%Y-%m-%d %H:%M} UTC (silence {silence_id})")
            channels = self._bump(session, row, now)
            session.flush()
            return self._view(session, row), channels

    def clear_silence(self, silence_id: str, reason: str) -> set[str]:
        """The silence ended (expired or expired by someone): incidents showing it stop doing so."""
        with self._writing() as session:
            now = self._clock()
            channels: set[str] = set()
            for row in session.scalars(select(IncidentRow).where(IncidentRow.silence_id == silence_id)):
                row.silence_id, row.silenced_by, row.silenced_until = None, None, None
                self._event(session, row, now, "unsilenced", reason)
                channels |= self._bump(session, row, now)
            return channels

    def expired_silences(self) -> list[str]:
        """Silence IDs shown on incidents whose end has passed."""
        now = self._clock()
        with self._db.session() as session:
            return list(
                session.scalars(
                    select(IncidentRow.silence_id)
                    .where(IncidentRow.silence_id.is_not(None), IncidentRow.silenced_until <= now)
                    .distinct()
                )
            )

    # ------------------------------------------------------------------------ reading

    def incident(self, incident_id: int, *, timeline: bool = True) -> IncidentView:
        with self._db.session() as session:
            return self._view(session, self._get(session, incident_id), timeline=timeline)

    def incidents(
        self, *, open_only: bool = True, service: str | None = None, env: str | None = None, limit: int = 50
    ) -> list[IncidentView]:
        stmt = select(IncidentRow)
        if open_only:
            stmt = stmt.where(IncidentRow.is_open.is_(True))
        if service is not None:
            stmt = stmt.where(IncidentRow.service == service)
        if env is not None:
            stmt = stmt.where(IncidentRow.env == env)
        stmt = stmt.order_by(IncidentRow.is_open.desc(), IncidentRow.severity_rank, IncidentRow.id.desc())
        with self._db.session() as session:
            return [self._view(session, r, alerts=False) for r in session.scalars(stmt.limit(limit))]

    def stats_records(self, since: datetime, until: datetime | None = None) -> list[IncidentRecord]:
        """Incidents opened in ``[since, until)`` as :func:`alerts.stats.response_stats` takes them."""
        stmt = select(IncidentRow).where(IncidentRow.opened_at >= since)
        if until is not None:
            stmt = stmt.where(IncidentRow.opened_at < until)
        with self._db.session() as session:
            return [
                IncidentRecord(id=r.id, severity=r.severity, service=r.service, created_at=r.opened_at,
                               acked_at=r.acked_at, acked_by=r.acked_by, resolved_at=r.resolved_at)
                for r in session.scalars(stmt.order_by(IncidentRow.id))
            ]

    def _view(self, session: Session, row: IncidentRow, *, alerts: bool = True, timeline: bool = False) -> IncidentView:
        counts = dict(
            session.execute(
                select(AlertRow.status, func.count()).where(AlertRow.incident_id == row.id).group_by(AlertRow.status)
            ).all()
        )
        alert_views: list[AlertView] = []
        if alerts:
            rows = session.scalars(select(AlertRow).where(AlertRow.incident_id == row.id)).all()
            alert_views = [
                AlertView(
                    fingerprint=a.fingerprint,
                    alertname=a.alertname,
                    status=a.status,  # type: ignore[arg-type]
                    severity=a.severity,
                    labels=_loads(a.labels),
                    annotations=_loads(a.annotations),
                    starts_at=a.starts_at,
                    ends_at=a.ends_at,
                    generator_url=a.generator_url,
                )
                for a in sorted(
                    rows,
                    key=lambda a: (a.status != "firing", a.severity_rank, a.starts_at or row.opened_at, a.fingerprint),
                )
            ]
        entries: list[TimelineEntry] = []
        if timeline:
            entries = [
                TimelineEntry(at=t.at, kind=t.kind, text=t.text)
                for t in session.scalars(
                    select(TimelineRow).where(TimelineRow.incident_id == row.id).order_by(TimelineRow.id)
                )
            ]
        message_id = session.scalars(
            select(DeliveryRow.message_id).where(DeliveryRow.incident_id == row.id, DeliveryRow.is_primary.is_(True))
        ).first()
        return IncidentView(
            id=row.id,
            status=row.status,  # type: ignore[arg-type]
            open=row.is_open,
            title=row.title,
            severity=row.severity,
            service=row.service,
            env=row.env,
            receiver=row.receiver,
            group_labels=_loads(row.group_labels),
            common_labels=_loads(row.common_labels),
            common_annotations=_loads(row.common_annotations),
            channel=row.channel,
            message_id=message_id,
            escalation=row.escalation,
            opened_at=row.opened_at,
            resolved_at=row.resolved_at,
            acked_by=row.acked_by,
            acked_by_id=row.acked_by_id,
            acked_at=row.acked_at,
            silence_id=row.silence_id,
            silenced_by=row.silenced_by,
            silenced_until=row.silenced_until,
            truncated=row.truncated_alerts or 0,
            firing=counts.get("firing", 0),
            resolved=counts.get("resolved", 0),
            alerts=alert_views,
            timeline=entries,
        )

    # ------------------------------------------------------------------------ outbox

    def pending_channels(self) -> set[str]:
        with self._db.session() as session:
            a = set(session.scalars(select(DeliveryRow.channel).where(DeliveryRow.pending.is_(True)).distinct()))
            b = set(session.scalars(select(NoticeRow.channel).where(NoticeRow.sent.is_(False)).distinct()))
            c = set(
                session.scalars(
                    select(DeliveryRow.channel)
                    .join(TimelineRow, TimelineRow.incident_id == DeliveryRow.incident_id)
                    .where(DeliveryRow.is_primary.is_(True), TimelineRow.posted.is_(False))
                    .distinct()
                )
            )
            return a | b | c

    def pending_deliveries(self) -> int:
        """Incident messages not yet up to date in chat (a gauge for metrics and benches)."""
        with self._db.session() as session:
            return int(session.scalar(
                select(func.count()).select_from(DeliveryRow).where(DeliveryRow.pending.is_(True))) or 0)

    def pending_count(self) -> int:
        """Outstanding chat operations of every kind (tests and shutdown wait for 0)."""
        with self._db.session() as session:
            deliveries = session.scalar(select(func.count()).select_from(DeliveryRow).where(DeliveryRow.pending.is_(True)))
            notices = session.scalar(select(func.count()).select_from(NoticeRow).where(NoticeRow.sent.is_(False)))
            timeline = len(self._timeline_candidates(session, None, None, postable_only=True))
            return int(deliveries or 0) + int(notices or 0) + timeline

    def next_work(self, channel: str) -> tuple[Work | None, datetime | None]:
        """The most urgent due operation for ``channel``, or None and when the next one is due.

        Order: notices; then messages, most severe first, new messages before edits, oldest change
        first; then timeline batches (only once the message exists).
        """
        now = self._clock()
        with self._db.session() as session:
            wake: list[datetime] = []
            notice = session.scalars(
                select(NoticeRow)
                .where(NoticeRow.channel == channel, NoticeRow.sent.is_(False))
                .order_by(NoticeRow.id)
            ).all()
            for n in notice:
                if n.next_attempt_at is None or n.next_attempt_at <= now:
                    unknown = n.attempts > 0 and n.next_attempt_at is None
                    return NoticeWork(n.id, channel, n.text, n.attempts, unknown), None
                wake.append(n.next_attempt_at)
            due = or_(DeliveryRow.next_attempt_at.is_(None), DeliveryRow.next_attempt_at <= now)
            pair = session.execute(
                select(DeliveryRow, IncidentRow)
                .join(IncidentRow, IncidentRow.id == DeliveryRow.incident_id)
                .where(DeliveryRow.channel == channel, DeliveryRow.pending.is_(True), due)
                .order_by(
                    IncidentRow.severity_rank,
                    DeliveryRow.message_id.is_not(None),
                    IncidentRow.updated_at,
                    DeliveryRow.id,
                )
                .limit(1)
            ).first()
            if pair is not None:
                d, inc = pair
                return (
                    MessageWork(
                        delivery_id=d.id,
                        channel=channel,
                        incident=self._view(session, inc),
                        version=inc.version,
                        message_id=d.message_id,
                        mention_roles=tuple(_loads(d.mention_roles) or ()),
                        primary=d.is_primary,
                        attempts=d.attempts,
                        create_in_flight=d.create_started_at is not None and d.message_id is None,
                    ),
                    None,
                )
            later = session.scalar(
                select(func.min(DeliveryRow.next_attempt_at)).where(
                    DeliveryRow.channel == channel, DeliveryRow.pending.is_(True)
                )
            )
            if later is not None:
                wake.append(later)
            timeline = self._timeline_candidates(session, channel, now, postable_only=True)
            if timeline:
                d, inc, _ = timeline[0]
                return self._timeline_work(session, d, inc), None
            waiting = self._timeline_candidates(session, channel, None, postable_only=True)
            wake.extend(due for _, _, due in waiting)
            return None, min(wake) if wake else None

    def _timeline_candidates(
        self, session: Session, channel: str | None, now: datetime | None, *, postable_only: bool
    ) -> list[tuple[DeliveryRow, IncidentRow, datetime]]:
        """Primary deliveries with unposted timeline entries, and when their batch is due.

        A thread is opened once something happened after the firing (two entries or more), so
        an incident that just fires costs one message, not three calls. Entries wait
        ``timeline_delay`` after the oldest unposted one, so a burst becomes one post.
        With ``postable_only``, only those whose message exists and is up to date; with ``now``
        as well, only those due by then.
        """
        unposted = (
            select(TimelineRow.incident_id.label("incident_id"), func.min(TimelineRow.at).label("first_at"))
            .where(TimelineRow.posted.is_(False))
            .group_by(TimelineRow.incident_id)
            .subquery()
        )
        totals = (
            select(TimelineRow.incident_id.label("incident_id"), func.count().label("total"))
            .group_by(TimelineRow.incident_id)
            .subquery()
        )
        stmt = (
            select(DeliveryRow, IncidentRow, unposted.c.first_at, totals.c.total)
            .join(IncidentRow, IncidentRow.id == DeliveryRow.incident_id)
            .join(unposted, unposted.c.incident_id == DeliveryRow.incident_id)
            .join(totals, totals.c.incident_id == DeliveryRow.incident_id)
            .where(DeliveryRow.is_primary.is_(True))
            .order_by(IncidentRow.severity_rank, IncidentRow.id)
        )
        if channel is not None:
            stmt = stmt.where(DeliveryRow.channel == channel)
        out = []
        delay = timedelta(seconds=self.options.timeline_delay_seconds)
        for d, inc, first_at, total in session.execute(stmt).all():
            first = _aware(first_at)
            due = first + delay
            if d.next_attempt_at is not None and d.next_attempt_at > due:
                due = d.next_attempt_at
            if postable_only:
                if d.message_id is None or d.pending or (total or 0) < 2:
                    continue
                if now is not None and due > now:
                    continue
            out.append((d, inc, due))
        return out

    def _timeline_work(self, session: Session, d: DeliveryRow, inc: IncidentRow) -> TimelineWork:
        rows = session.scalars(
            select(TimelineRow)
            .where(TimelineRow.incident_id == inc.id, TimelineRow.posted.is_(False))
            .order_by(TimelineRow.id)
        ).all()
        picked: list[TimelineRow] = []
        in_flight = session.get(TimelinePostRow, d.id)
        if in_flight is not None:  # the same batch again, so that the look can recognise it
            ids = set(_loads(in_flight.entry_ids) or ())
            picked = [r for r in rows if r.id in ids]
            if not picked:
                in_flight = None
        size = 0
        for r in rows if not picked else ():
            line = len(r.text) + 12
            if picked and size + line > self.options.timeline_batch_chars:
                break
            picked.append(r)
            size += line
        return TimelineWork(
            delivery_id=d.id,
            channel=d.channel,
            incident_id=inc.id,
            message_id=d.message_id or "",
            thread_name=f"#{inc.id} {inc.title}"[:100],
            entries=tuple(TimelineEntry(at=r.at, kind=r.kind, text=r.text) for r in picked),
            entry_ids=tuple(r.id for r in picked),
            in_flight_text=in_flight.text if in_flight is not None else None,
        )

    def create_started(self, delivery_id: int) -> None:
        """Mark a create as in flight before calling the notifier (seen after a crash)."""
        with self._writing() as session:
            d = session.get(DeliveryRow, delivery_id)
            if d is not None and d.create_started_at is None:
                d.create_started_at = self._clock()

    def message_sent(self, delivery_id: int, version: int, message_id: str | None) -> None:
        """Record a successful create (``message_id``) or edit of ``version``, immediately."""
        with self._writing() as session:
            d = session.get(DeliveryRow, delivery_id)
            if d is None:
                return
            if message_id is not None:
                d.message_id = message_id[:64]
            d.create_started_at = None
            d.sent_version = max(d.sent_version, version)
            d.attempts, d.next_attempt_at, d.last_error = 0, None, ""
            inc = session.get(IncidentRow, d.incident_id)
            d.pending = inc is not None and inc.version > d.sent_version and d.gave_up_version != inc.version

    def message_failed(
        self, delivery_id: int, error: str, delay: float | None, version: int, definite: bool = False
    ) -> int:
        """A failed send or edit: retry after ``delay`` seconds, or give up on ``version`` (None).

        ``definite``: chat said no (a SendError), so a create did not happen; otherwise (any other
        exception) it may have, and the in-flight mark stays for the log after a restart.
        """
        with self._writing() as session:
            d = session.get(DeliveryRow, delivery_id)
            if d is None:
                return 0
            d.attempts += 1
            d.last_error = error[:500]
            if definite:
                d.create_started_at = None
            if delay is None:
                d.gave_up_version = version
                d.sent_version = max(d.sent_version, version)
                d.pending = False
                d.next_attempt_at = None
                d.create_started_at = None
            else:
                d.next_attempt_at = self._clock() + timedelta(seconds=delay)
            return d.attempts

    def message_gone(self, delivery_id: int) -> None:
        """The message was deleted in chat: the next send creates a new one."""
        with self._writing() as session:
            d = session.get(DeliveryRow, delivery_id)
            session.execute(delete(TimelinePostRow).where(TimelinePostRow.delivery_id == delivery_id))
            if d is not None:
                d.message_id, d.thread_id, d.create_started_at = None, None, None
                d.pending = True
                d.next_attempt_at = None

    def timeline_started(self, delivery_id: int, entry_ids: Iterable[int], text_: str) -> None:
        """Mark a timeline post as under way before calling chat (seen after a crash)."""
        with self._writing() as session:
            row = session.get(TimelinePostRow, delivery_id)
            if row is None:
                row = TimelinePostRow(delivery_id=delivery_id)
                session.add(row)
            row.entry_ids, row.text, row.started_at = json.dumps(list(entry_ids)), text_, self._clock()

    def timeline_posted(self, delivery_id: int, entry_ids: Iterable[int], thread_id: str | None) -> None:
        ids = list(entry_ids)
        with self._writing() as session:
            session.execute(delete(TimelinePostRow).where(TimelinePostRow.delivery_id == delivery_id))
            for i in range(0, len(ids), _CHUNK):
                for r in session.scalars(select(TimelineRow).where(TimelineRow.id.in_(ids[i : i + _CHUNK]))):
                    r.posted = True
            d = session.get(DeliveryRow, delivery_id)
            if d is not None:
                if thread_id:
                    d.thread_id = thread_id[:64]
                d.attempts, d.next_attempt_at = 0, None

    def timeline_failed(self, delivery_id: int, delay: float, definite: bool = True) -> None:
        """A timeline post failed: retry after ``delay``. ``definite``: chat said no, so nothing was
        posted; otherwise (a timeout) it may have been, and the next try looks first."""
        with self._writing() as session:
            if definite:
                session.execute(delete(TimelinePostRow).where(TimelinePostRow.delivery_id == delivery_id))
            d = session.get(DeliveryRow, delivery_id)
            if d is not None:
                d.attempts += 1
                d.next_attempt_at = self._clock() + timedelta(seconds=delay)

    def add_notice(self, channel: str, text_: str) -> None:
        with self._writing() as session:
            session.add(NoticeRow(channel=channel, text=text_[:2000], created_at=self._clock(), sent=False))

    def notice_done(self, notice_id: int) -> None:
        with self._writing() as session:
            n = session.get(NoticeRow, notice_id)
            if n is not None:
                n.sent = True

    def notice_started(self, notice_id: int) -> None:
        """A try begins (counted now, before chat is asked; see ``NoticeWork.unknown``)."""
        with self._writing() as session:
            n = session.get(NoticeRow, notice_id)
            if n is not None:
                n.attempts += 1
                n.next_attempt_at = None

    def notice_failed(self, notice_id: int, delay: float | None) -> None:
        """The try that ``notice_started`` counted failed: retry after ``delay``, or give up (None)."""
        with self._writing() as session:
            n = session.get(NoticeRow, notice_id)
            if n is None:
                return
            if delay is None:
                n.sent = True  # given up; logged by the sender
            else:
                n.next_attempt_at = self._clock() + timedelta(seconds=delay)

    # ------------------------------------------------------------------------ reconcile

    def reconcile_targets(self) -> list[ReconcileTarget]:
        with self._db.session() as session:
            return [
                ReconcileTarget(r.id, r.receiver, _loads(r.group_labels))
                for r in session.scalars(select(IncidentRow).where(IncidentRow.is_open.is_(True)))
            ]

    def reconcile(self, incident_id: int, live: list[ApiAlert], fetched_at: datetime) -> set[str]:
        """Bring an open incident in line with the alerts Alertmanager holds for its group.

        Firing alerts Alertmanager no longer has are resolved, unless a webhook touched them after
        ``fetched_at`` (the snapshot is older than that news). Live alerts are refreshed, and live
        ones the incident does not know join it. Returns the channels to wake.
        """
        with self._writing() as session:
            row = session.get(IncidentRow, incident_id)
            if row is None or not row.is_open:
                return set()
            now = self._clock()
            rows = {a.fingerprint: a for a in session.scalars(select(AlertRow).where(AlertRow.incident_id == row.id))}
            live_by_fp = {a.fingerprint: a for a in live if a.fingerprint and not _ended(a, now)}
            changed = False
            gone: list[AlertRow] = []
            for fp, a in rows.items():
                if a.status != "firing":
                    continue
                if fp in live_by_fp:
                    changed |= self._fill(a, live_by_fp[fp], status="firing")
                    a.seen_at = now
                elif a.seen_at <= fetched_at:
                    a.status, a.ends_at = "resolved", now
                    gone.append(a)
                    changed = True
            joined = []
            for fp, la in live_by_fp.items():
                existing = rows.get(fp)
                if existing is None:
                    fresh = AlertRow(
                        incident_id=row.id, fingerprint=fp, alertname="", status="firing", severity=None,
                        severity_rank=0, labels="{}", annotations="{}", generator_url="", seen_at=now,
                    )
                    self._fill(fresh, la, status="firing")
                    session.add(fresh)
                    joined.append(fresh)
                    changed = True
                elif existing.status == "resolved" and la.starts_at and (
                    existing.starts_at is None or la.starts_at > existing.starts_at
                ):
                    self._fill(existing, la, status="firing")
                    existing.seen_at = now
                    joined.append(existing)
                    changed = True
            if not changed:
                return set()
            common = _loads(row.common_labels)
            if gone:
                self._event(session, row, now, "reconciled", f"resolved while opsbot was not listening: {self._describe(gone, common)}")
            if joined:
                self._event(session, row, now, "reconciled", f"firing in Alertmanager: {self._describe(joined, common)}")
            session.flush()
            self._settle(session, row, now)
            return self._bump(session, row, now)

    # ------------------------------------------------------------------------ housekeeping

    def prune_receipts(self, older_than: timedelta) -> int:
        with self._writing() as session:
            cutoff = self._clock() - older_than
            result = session.execute(delete(ReceiptRow).where(ReceiptRow.received_at < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)


def _aware(value: datetime | str) -> datetime:
    """An aggregate's datetime (SQLite hands back naive UTC, or text on some drivers) as aware UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ended(a: ApiAlert, now: datetime) -> bool:
    """Alertmanager keeps a resolved alert until it is garbage collected; it is not live."""
    return a.ends_at is not None and a.ends_at <= now


def _title(payload: WebhookPayload) -> str:
    name = payload.common_labels.get("alertname") or payload.group_labels.get("alertname")
    if name:
        return name[:256]
    names = sorted({a.alertname for a in payload.alerts if a.alertname})
    if names:
        return (", ".join(names))[:256]
    return (", ".join(f"{k}={v}" for k, v in sorted(payload.group_labels.items())) or "alerts")[:256]
