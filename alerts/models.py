"""Payload and result models of the alerts core.

- Alertmanager's webhook payload, version 4 (what ``POST /alerts/alertmanager`` accepts). Unknown
  fields are tolerated (``notification_reason``, ``routeLabels``, … of later Alertmanagers).
- Alertmanager's API v2 objects opsbot reads (alert groups, alerts, silences).
- The views the bot layer renders or lists: :class:`IncidentView`, :class:`SilenceView`,
  :class:`LiveAlert`. Callers never see ORM rows.

Times are aware UTC datetimes. Go's zero time (``0001-01-01T00:00:00Z``, "not set") and anything
before 1970 or after 9000 become None, so odd input cannot overflow later arithmetic.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WrapValidator, field_validator, model_validator

AlertStatus = Literal["firing", "resolved"]

MAX_KEY = 8192  # groupKey; Alertmanager builds it from the route path and group labels
MAX_NAME = 256  # a label or annotation name, the receiver
MAX_TEXT = 65536  # one label or annotation value, generatorURL, externalURL
MAX_FINGERPRINT = 128
MAX_ALERTS = 1_000  # alerts kept from one delivery; the rest count as truncatedAlerts (what a
# message can show is far less; more would cost the event loop: ~0.25 s to validate 10,000, per delivery)
MAX_TRUNCATED = 2**31 - 1


def truncation_marker(dropped: int) -> str:
    return f"… [truncated by opsbot: {dropped} more characters]"


def clip_text(value: str, limit: int) -> str:
    """``value`` when it fits, else its start with a visible marker, ``limit`` characters in all.

    A well-formed alert is never refused for its size (Alertmanager does not retry a 4xx, so a
    refusal drops the notification for good): what does not fit is cut and says so."""
    if len(value) <= limit:
        return value
    keep = limit - len(truncation_marker(len(value)))
    return value[:keep] + truncation_marker(len(value) - keep)


def clip_key(value: str, limit: int) -> str:
    """Like :func:`clip_text`, for a value that identifies something (a groupKey, a label name, a
    fingerprint): the cut keeps a hash of the whole, so two long values that differ stay different."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    tail = f"…[{len(value)} chars, sha256 {digest}]"
    return value[: limit - len(tail)] + tail


def _clipped(limit: int, *, key: bool = False) -> BeforeValidator:
    def clip(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return clip_key(value, limit) if key else clip_text(value, limit)
        return value

    return BeforeValidator(clip)


def _time(value: Any, handler: Any) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        dt: datetime = handler(value)
    except (OverflowError, OSError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        dt = dt.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
    if not 1970 <= dt.year <= 9000:
        return None
    return dt


def _mapping(value: Any) -> Any:
    return {} if value is None else value


OptTime = Annotated[datetime | None, WrapValidator(_time)]
StrMap = Annotated[
    dict[Annotated[str, _clipped(MAX_NAME, key=True)], Annotated[str, _clipped(MAX_TEXT)]],
    BeforeValidator(_mapping),
]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class WebhookAlert(_Payload):
    status: AlertStatus
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    starts_at: OptTime = Field(None, alias="startsAt")
    ends_at: OptTime = Field(None, alias="endsAt")
    generator_url: Annotated[str, _clipped(MAX_TEXT)] = Field("", alias="generatorURL")
    fingerprint: Annotated[str, _clipped(MAX_FINGERPRINT, key=True)] = ""

    @property
    def key(self) -> str:
        """The fingerprint, or one computed from the labels when an old sender left it out."""
        if self.fingerprint:
            return self.fingerprint
        return label_fingerprint(self.labels)

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")


class WebhookPayload(_Payload):
    version: Literal["4"]
    group_key: Annotated[str, _clipped(MAX_KEY, key=True)] = Field(..., alias="groupKey", min_length=1)
    truncated_alerts: int = Field(0, alias="truncatedAlerts", ge=0)
    status: AlertStatus
    receiver: Annotated[str, _clipped(MAX_NAME, key=True)] = Field(..., min_length=1)
    group_labels: StrMap = Field(default_factory=dict, alias="groupLabels")
    common_labels: StrMap = Field(default_factory=dict, alias="commonLabels")
    common_annotations: StrMap = Field(default_factory=dict, alias="commonAnnotations")
    external_url: Annotated[str, _clipped(MAX_TEXT)] = Field("", alias="externalURL")
    alerts: list[WebhookAlert] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _keep_the_first_alerts(cls, data: Any) -> Any:
        """More than :data:`MAX_ALERTS` alerts: the first are kept, the rest counted as truncated
        (as Alertmanager's own ``max_alerts`` does), never a refusal."""
        if isinstance(data, dict) and isinstance(data.get("alerts"), list) and len(data["alerts"]) > MAX_ALERTS:
            extra = len(data["alerts"]) - MAX_ALERTS
            before = data.get("truncatedAlerts", data.get("truncated_alerts", 0))
            data = {k: v for k, v in data.items() if k != "truncated_alerts"}
            data["alerts"] = data["alerts"][:MAX_ALERTS]
            data["truncatedAlerts"] = before + extra if type(before) is int and before >= 0 else before
        return data

    @field_validator("truncated_alerts")
    @classmethod
    def _fits_a_column(cls, value: int) -> int:
        return min(value, MAX_TRUNCATED)


def label_fingerprint(labels: dict[str, str]) -> str:
    """A stable 16-hex-digit ID of a label set (not Alertmanager's FNV hash, but as stable)."""
    text = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- Alertmanager API v2


class _Api(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ApiMatcher(_Api):
    name: str
    value: str
    is_regex: bool = Field(False, alias="isRegex")
    is_equal: bool = Field(True, alias="isEqual")

    def text(self) -> str:
        from alerts.routing import quote

        op = ("=~" if self.is_equal else "!~") if self.is_regex else ("=" if self.is_equal else "!=")
        return f"{self.name}{op}{quote(self.value)}"


class ApiAlertStatus(_Api):
    state: str = "active"  # unprocessed | active | suppressed
    silenced_by: list[str] = Field(default_factory=list, alias="silencedBy")
    inhibited_by: list[str] = Field(default_factory=list, alias="inhibitedBy")


class ApiAlert(_Api):
    fingerprint: str = ""
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    starts_at: OptTime = Field(None, alias="startsAt")
    ends_at: OptTime = Field(None, alias="endsAt")
    updated_at: OptTime = Field(None, alias="updatedAt")
    generator_url: str = Field("", alias="generatorURL")
    status: ApiAlertStatus = Field(default_factory=ApiAlertStatus)
    receivers: list[dict[str, Any]] = Field(default_factory=list)


class ApiReceiver(_Api):
    name: str = ""


class ApiAlertGroup(_Api):
    labels: StrMap = Field(default_factory=dict)
    receiver: ApiReceiver = Field(default_factory=ApiReceiver)
    alerts: list[ApiAlert] = Field(default_factory=list)


class ApiSilenceStatus(_Api):
    state: str = "active"  # expired | active | pending


class ApiSilence(_Api):
    id: str
    matchers: list[ApiMatcher] = Field(default_factory=list)
    starts_at: OptTime = Field(None, alias="startsAt")
    ends_at: OptTime = Field(None, alias="endsAt")
    updated_at: OptTime = Field(None, alias="updatedAt")
    created_by: str = Field("", alias="createdBy")
    comment: str = ""
    status: ApiSilenceStatus = Field(default_factory=ApiSilenceStatus)


# ---------------------------------------------------------------------- views for the bot


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class SilenceView(_View):
    """A silence as the bot lists it (``!silences``) or reports it after creating one."""

    id: str
    matchers: list[str] = Field(description='matcher text, e.g. alertname="Foo"')
    starts_at: datetime | None
    ends_at: datetime | None
    created_by: str
    comment: str
    state: str = Field(description="active | pending | expired")

    @property
    def matchers_text(self) -> str:
        return ", ".join(self.matchers)

    @classmethod
    def from_api(cls, s: ApiSilence) -> SilenceView:
        return cls(
            id=s.id,
            matchers=[m.text() for m in s.matchers],
            starts_at=s.starts_at,
            ends_at=s.ends_at,
            created_by=s.created_by,
            comment=s.comment,
            state=s.status.state,
        )


class LiveAlert(_View):
    """An alert Alertmanager holds right now (``!alerts``)."""

    fingerprint: str
    alertname: str
    severity: str | None
    service: str | None
    env: str | None
    summary: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime | None
    state: str = Field(description="active | suppressed | unprocessed")
    silenced_by: list[str] = Field(default_factory=list)
    generator_url: str = ""


class AlertView(_View):
    """One alert of an incident."""

    fingerprint: str
    alertname: str
    status: AlertStatus
    severity: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime | None
    ends_at: datetime | None
    generator_url: str


class TimelineEntry(_View):
    at: datetime
    kind: str = Field(description="fired | joined | refired | resolved | acked | unacked | silenced | unsilenced | reconciled | closed | note | resolved_by_hand")
    text: str


class IncidentView(_View):
    """An incident (one alert group) as the bot shows it: ``!incidents``, ``!ack 12``."""

    id: int
    status: AlertStatus
    open: bool
    title: str = Field(description="the alertname (or the group's labels when alerts differ)")
    severity: str | None
    service: str | None
    env: str | None
    receiver: str
    group_labels: dict[str, str]
    common_labels: dict[str, str]
    common_annotations: dict[str, str]
    channel: str = Field(description="the channel of the primary message")
    message_id: str | None
    escalation: str | None
    opened_at: datetime
    resolved_at: datetime | None
    acked_by: str | None
    acked_by_id: int | None
    acked_at: datetime | None
    silence_id: str | None
    silenced_by: str | None
    silenced_until: datetime | None
    firing: int
    resolved: int
    truncated: int = Field(0, description="alerts of the group left out of the latest delivery (truncatedAlerts)")
    alerts: list[AlertView] = Field(default_factory=list)
    timeline: list[TimelineEntry] = Field(default_factory=list)

    @property
    def acked(self) -> bool:
        return self.acked_by is not None

    def silenced(self, now: datetime) -> bool:
        return self.silenced_until is not None and self.silenced_until > now


class IngestResult(_View):
    """What one webhook delivery did."""

    duplicate: bool = Field(description="every alert in it had been seen already")
    incident_id: int | None = None
    created: bool = False
    changed: bool = False
    heartbeat: bool = Field(False, description="it carried the watchdog alert")
