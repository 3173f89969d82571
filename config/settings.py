"""Typed settings: a YAML file, then ``OPSBOT_…`` environment variables on top.

Nothing here is built at import time; call :func:`load_settings`.
Secrets are :class:`SecretStr` and never printed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import typing
from datetime import date, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

SERVICE_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


def _host_port(v: str) -> str:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6); port 0 means "any free port"."""
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080 or [::]:8080")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError("write an IPv6 host in brackets: [::1]:8080")
    return v


def _timezone(v: str) -> str:
    if v == "UTC":  # valid even where no tz database is installed
        return v
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {v!r}; use an IANA name like Europe/Berlin") from None
    return v


def _regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as e:
        raise ValueError(f"invalid regular expression: {e}") from None
    return v


HostPort = Annotated[str, AfterValidator(_host_port)]
TimeZoneName = Annotated[str, AfterValidator(_timezone)]
Regex = Annotated[str, AfterValidator(_regex)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KubernetesTarget(_Model):
    """A service in one env that runs as a Kubernetes Deployment."""

    type: Literal["kubernetes"] = "kubernetes"
    context: str | None = Field(None, description="kubeconfig context; default: the current one")
    namespace: str
    deployment: str
    container: str | None = Field(None, description="container to deploy; default: the deployment name")

    @property
    def container_name(self) -> str:
        return self.container or self.deployment

    def describe(self) -> str:
        ctx = f"{self.context}/" if self.context else ""
        return f"k8s {ctx}{self.namespace}/deploy/{self.deployment}"


DOCKER_HOST_SCHEMES = ("unix", "tcp", "http", "https", "ssh", "npipe")
CONTAINER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$"  # Docker's own rule for container names


def docker_host_problem(url: str) -> str | None:
    """Why ``url`` is not a Docker host URL the SDK can use, or None."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in DOCKER_HOST_SCHEMES or not rest.strip("/"):
        return ("expected a Docker host URL such as unix:///var/run/docker.sock or tcp://10.0.0.5:2376 "
                f"(schemes: {', '.join(DOCKER_HOST_SCHEMES)})")
    return None


def _docker_host(v: str | None) -> str | None:
    if v is not None and (problem := docker_host_problem(v)):
        raise ValueError(problem)
    return v


class DockerTarget(_Model):
    """A service in one env that runs as one container on a Docker host.

    A deploy replaces the container with one made from its configuration and the new image; the
    one it replaces is kept stopped as ``<container>--rev<N>`` so a rollback can start it again.
    """

    type: Literal["docker"]
    host: Annotated[str | None, AfterValidator(_docker_host)] = Field(
        None, description="Docker host URL (unix:///… or tcp://…); default: docker_host (--docker-host), "
                          "then $DOCKER_HOST, then the local socket")
    container: str = Field(..., max_length=200, description="name of the container that runs the service")
    health_wait_seconds: float = Field(
        10, ge=0, le=600,
        description="without a HEALTHCHECK in the image, a new container counts as healthy once it has "
                    "been running this long")
    keep_previous: bool = Field(
        True, description="keep replaced containers (stopped) so a rollback can start them again; "
                          "false: remove them once the new one is healthy (a rollback then recreates them)")

    @field_validator("container")
    @classmethod
    def _container_name(cls, v: str) -> str:
        if not re.fullmatch(CONTAINER_NAME, v):
            raise ValueError("a container name has at least 2 characters: letters, digits, '_', '.' and '-', "
                             "starting with a letter or digit")
        if re.search(r"--rev\d+$", v):
            raise ValueError("names ending in --rev<N> are the ones opsbot gives replaced containers")
        return v

    def describe(self) -> str:
        on = f" on {self.host}" if self.host else ""
        return f"docker container {self.container}{on}"


def _default_target_type(v: Any) -> Any:
    # `type` may be left out and means kubernetes; the discriminator needs it in the input.
    if isinstance(v, dict) and "type" not in v:
        return {**v, "type": "kubernetes"}
    return v


# Each platform joins this union with its own `type` literal.
Target = Annotated[KubernetesTarget | DockerTarget, Field(discriminator="type"),
                   BeforeValidator(_default_target_type)]


class ServiceConfig(_Model):
    repository: str = Field(..., description="image repository; the image is <repository>:<version>")
    description: str = ""
    envs: dict[str, Target] = Field(default_factory=dict, description="env name -> where it runs")


class EnvConfig(_Model):
    confirm: bool = Field(False, description="deploys and rollbacks need a Confirm button press")
    approvals: int = Field(0, ge=0, le=3, description="second persons who must press Approve")
    timeout_seconds: int = Field(600, ge=10, le=7200, description="rollout timeout")
    auto_rollback: bool = True
    channels: list[str] = Field(
        default_factory=list,
        description="channel allowlist (names or IDs) for mutating commands in this env; empty = any",
    )


class ChannelsConfig(_Model):
    """Channel names or IDs (as strings)."""

    ops: str = "ops"
    alerts: str = "alerts"
    deploys: str = "deploys"


class RoleGrants(_Model):
    id: int = Field(..., description="Discord role ID (a snowflake)")
    name: str = Field("", description="a label for humans; never used for matching")
    grants: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _snowflake(cls, v: int) -> int:
        if v <= 0 or v >= 2**64:
            raise ValueError("a Discord role ID is a positive 64-bit snowflake")
        return v


class PermissionsConfig(_Model):
    roles: list[RoleGrants] = Field(default_factory=list)
    users: dict[int, list[str]] = Field(
        default_factory=dict, description="user ID -> extra grants (break-glass; prefer roles)"
    )
    everyone: list[str] = Field(
        default_factory=lambda: ["help", "perms"], description="grants every member has"
    )


# --- on-call rotations and escalation policies (alerts/oncall.py, alerts/escalation.py) ------------

ROTATION_NAME = r"^[a-z0-9]([a-z0-9_-]{0,30}[a-z0-9])?$"
_TARGET = re.compile(r"^(role|user):([0-9]+)$")


def _parse_duration(v: Any) -> Any:
    """"5m", "1h30m", "2 days" (as ``!`` commands take them) or a number of seconds."""
    if isinstance(v, str) and not v.strip().lstrip("-").replace(".", "", 1).isdigit():
        from pytimeparse import parse

        seconds = parse(v.strip())
        if seconds is None:
            raise ValueError(f"not a duration: {v!r}; write e.g. 30s, 5m, 1h30m or 2d")
        return timedelta(seconds=seconds)
    return v


def _hhmm(v: Any) -> Any:
    """``"09:00"``. YAML 1.1 reads an unquoted ``9:30`` or ``10:30`` as a base-60 number of minutes."""
    if isinstance(v, int) and not isinstance(v, bool):
        if not 0 <= v < 24 * 60:
            raise ValueError("write a hand-off time as \"HH:MM\" (quoted), e.g. \"09:00\"")
        return time(*divmod(v, 60))
    if isinstance(v, str):
        m = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])", v.strip())
        if not m:
            raise ValueError("write a hand-off time as \"HH:MM\" (24-hour), e.g. \"09:00\"")
        return time(int(m[1]), int(m[2]))
    return v


def _snowflake(v: int, what: str) -> int:
    if v <= 0 or v >= 2**64:
        raise ValueError(f"a Discord {what} ID is a positive 64-bit snowflake")
    return v


def _member(v: Any) -> Any:
    # A member is a bare user ID or {id, name}.
    if (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v.isdigit()):
        return {"id": int(v)}
    return v


def _rotation_name(v: str) -> str:
    if not re.match(ROTATION_NAME, v):
        raise ValueError(f"rotation name {v!r}: lowercase letters, digits, '-' and '_' (at most 32)")
    return v


Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]
RotationName = Annotated[str, AfterValidator(_rotation_name)]
HandoffTime = Annotated[time, BeforeValidator(_hhmm)]


class RotationMember(_Model):
    id: int = Field(..., description="Discord user ID (a snowflake)")
    name: str = Field("", description="a label for humans; never used for matching")

    @field_validator("id")
    @classmethod
    def _user_id(cls, v: int) -> int:
        return _snowflake(v, "user")


class RotationConfig(_Model):
    """One on-call rotation: members take turns, one shift each, in list order.

    Shift ``k`` starts on ``start + k * period`` at ``handoff`` local time in ``timezone`` and
    belongs to ``members[k % len(members)]``; the order extends backwards before ``start`` too.
    """

    members: list[Annotated[RotationMember, BeforeValidator(_member)]] = Field(
        ..., min_length=1, description="user IDs (or {id, name}) in rotation order"
    )
    period: Literal["daily", "weekly"] = Field("weekly", description="length of one shift")
    handoff: HandoffTime = Field(time(9, 0), description="local time of the hand-off, \"HH:MM\"")
    timezone: TimeZoneName | None = Field(None, description="IANA zone of the hand-off; default: timezone")
    start: date = Field(
        date(2024, 1, 1),
        description="the day the first member's shift starts; for weekly, also the hand-off weekday",
    )
    role_id: int | None = Field(None, description="Discord role the bot keeps on the person on call")
    description: str = ""

    @field_validator("role_id")
    @classmethod
    def _role_id(cls, v: int | None) -> int | None:
        return None if v is None else _snowflake(v, "role")

    @field_validator("handoff")
    @classmethod
    def _whole_minute(cls, v: time) -> time:
        if v.second or v.microsecond or v.tzinfo is not None:
            raise ValueError("a hand-off time is \"HH:MM\" without seconds or zone (see timezone)")
        return v


class EscalationRepeat(_Model):
    every: Duration = Field(..., description="time between repeats, e.g. 15m")
    times: int = Field(..., ge=1, le=20, description="repeats after the first notification")

    @field_validator("every")
    @classmethod
    def _every(cls, v: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= v <= timedelta(days=1):
            raise ValueError("repeat.every must be between 1m and 1d")
        return v


class EscalationStep(_Model):
    """Notify ``notify`` when the incident is still open and unacknowledged ``after`` its start."""

    after: Duration = Field(..., description="since the incident opened, e.g. 5m")
    notify: list[str] = Field(
        ..., min_length=1, description="rotation names (who is on call then), role:<id>, user:<id>"
    )
    repeat: EscalationRepeat | None = Field(None, description="notify again every … up to times more")
    dm: bool = Field(False, description="also send the people (not roles) a direct message")

    @field_validator("after")
    @classmethod
    def _after(cls, v: timedelta) -> timedelta:
        if not timedelta(0) <= v <= timedelta(days=7):
            raise ValueError("after must be between 0s and 7d")
        return v

    @field_validator("notify")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        out = []
        for target in v:
            target = str(target).strip()
            m = _TARGET.match(target)
            if m:
                _snowflake(int(m[2]), m[1])
            elif not re.match(ROTATION_NAME, target):
                raise ValueError(f"{target!r} is neither a rotation name nor role:<id> or user:<id>")
            out.append(target)
        return out


class EscalationPolicy(_Model):
    steps: list[EscalationStep] = Field(..., min_length=1, description="in order of `after`")
    description: str = ""

    @field_validator("steps")
    @classmethod
    def _in_order(cls, v: list[EscalationStep]) -> list[EscalationStep]:
        if any(b.after < a.after for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("list the steps in order of `after`")
        return v


class OncallConfig(_Model):
    """Rotations (who is on call) and escalation policies (who is paged while nobody acknowledges)."""

    rotations: dict[RotationName, RotationConfig] = Field(
        default_factory=dict, description="rotation name (e.g. primary, secondary) -> rotation"
    )
    escalation_policies: dict[str, EscalationPolicy] = Field(
        default_factory=dict,
        description="policy name -> steps; an alert route names one with `escalation` (none: no escalation)",
    )

    @field_validator("escalation_policies")
    @classmethod
    def _known_rotations(cls, v: dict[str, EscalationPolicy], info: Any) -> dict[str, EscalationPolicy]:
        rotations = info.data.get("rotations")
        if rotations is None:  # the rotations themselves are invalid; that error is reported
            return v
        for name, policy in v.items():
            for i, step in enumerate(policy.steps):
                for target in step.notify:
                    if not _TARGET.match(target) and target not in rotations:
                        known = ", ".join(rotations) or "none configured"
                        raise ValueError(f"{name}.steps.{i}.notify: no rotation {target!r} (rotations: {known})")
        return v


class SchedulerConfig(_Model):
    """Persisted jobs (commands/scheduler.py): escalation steps, hand-offs, maintenance windows."""

    misfire_grace_seconds: int = Field(
        300, ge=1, le=7 * 86400,
        description="a job that could not run within this long of its time (the bot was down) is "
                    "reported as missed instead of run late",
    )
    coalesce: bool = Field(True, description="a recurring job that missed several runs runs once")


# --- maintenance windows, recurring chores, deploy freezes (commands/maintenance.py, commands/freeze.py) ---

TASK_NAME = r"^[a-z0-9]([a-z0-9_-]{0,46}[a-z0-9])?$"
ACTION = r"^(restart|prune|scale [0-9]{1,4}|run-job [a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?)$"


def _crontab(v: str) -> str:
    """A 5-field crontab (minute hour day month weekday), as APScheduler reads it."""
    from apscheduler.triggers.cron import CronTrigger

    v = " ".join(v.split())
    if len(v.split()) != 5:
        raise ValueError("a cron expression has 5 fields: minute hour day-of-month month day-of-week, "
                         'e.g. "0 4 * * sun"')
    try:
        CronTrigger.from_crontab(v)
    except ValueError as e:
        raise ValueError(f"not a valid cron expression: {e}") from None
    return v


def _task_name(v: str) -> str:
    if not re.match(TASK_NAME, v):
        raise ValueError(f"name {v!r}: lowercase letters, digits, '-' and '_' (at most 48)")
    return v


Crontab = Annotated[str, AfterValidator(_crontab)]
TaskName = Annotated[str, AfterValidator(_task_name)]
Action = Annotated[str, Field(pattern=ACTION)]


class _Recurring(_Model):
    cron: Crontab = Field(..., description='when, as a 5-field crontab: "0 3 * * sun" is Sundays at 03:00')
    timezone: TimeZoneName | None = Field(None, description="zone of the cron times; default: timezone")
    description: str = ""


class WindowTask(_Recurring):
    """A maintenance window that opens on a schedule, as `!maintenance schedule` would."""

    task: Literal["window"]
    services: list[str] = Field(default_factory=lambda: ["all"], min_length=1,
                                description="service names, or [all]")
    env: str
    duration: Duration
    reason: str = Field(..., min_length=1, max_length=300)
    actions: list[Action] = Field(default_factory=list, description="restart, scale N, run-job CRONJOB, prune")


class PruneTask(_Recurring):
    """``docker image prune`` on every Docker host of the catalog's targets (in ``envs``)."""

    task: Literal["prune"]
    envs: list[str] = Field(default_factory=list, description="only hosts of targets in these envs; [] = all")
    all_unused: bool = Field(False, description="every image no container uses, not only dangling ones")
    older_than: Duration | None = Field(None, description="only images created longer ago than this, e.g. 168h")


class RunJobTask(_Recurring):
    """A Job from a CronJob's template in a service's namespace, watched to completion (a backup)."""

    task: Literal["run-job"]
    service: str
    env: str
    cronjob: str = Field(..., pattern=r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")
    timeout: Duration = Field(timedelta(minutes=30), description="report it as unfinished after this")


class TlsEndpoint(_Model):
    host: str = Field(..., min_length=1)
    port: int = Field(443, ge=1, le=65535)
    server_name: str | None = Field(None, description="SNI and the name checked; default: host")
    ca_file: Path | None = Field(None, description="PEM file of the CA to trust (an internal CA); default: the system's")
    timeout_seconds: float = Field(10.0, gt=0, le=120)

    @property
    def label(self) -> str:
        return f"{self.server_name or self.host}:{self.port}"


def _endpoint(v: Any) -> Any:
    # "host" or "host:port" as a shorthand for {host, port}.
    if isinstance(v, str):
        host, sep, port = v.rpartition(":")
        if sep and port.isdigit() and "]" not in port:
            return {"host": host.strip("[]"), "port": int(port)}
        return {"host": v}
    return v


class TlsCheckTask(_Recurring):
    """Connect to each endpoint, verify its certificate and warn as its expiry nears."""

    task: Literal["tls-check"]
    endpoints: list[Annotated[TlsEndpoint, BeforeValidator(_endpoint)]] = Field(..., min_length=1)
    warn_days: list[int] = Field(default_factory=lambda: [14, 7, 1], min_length=1,
                                 description="warn once as the days left reach each of these")
    channel: str | None = Field(None, description="default: channels.ops")

    @field_validator("warn_days")
    @classmethod
    def _days(cls, v: list[int]) -> list[int]:
        if any(d < 0 or d > 365 for d in v):
            raise ValueError("warn_days are between 0 and 365")
        return sorted(set(v), reverse=True)


class DigestTask(_Recurring):
    """A summary of the last ``days``: deploys, rollbacks (audit log) and incidents (alerts store)."""

    task: Literal["digest"]
    days: int = Field(7, ge=1, le=90)
    channel: str | None = Field(None, description="default: channels.ops")


RecurringTask = Annotated[WindowTask | PruneTask | RunJobTask | TlsCheckTask | DigestTask, Field(discriminator="task")]


class MaintenanceConfig(_Model):
    """`!maintenance` windows and the recurring chores."""

    announce_channels: list[str] = Field(
        default_factory=list,
        description="channels told when a window starts and ends (the community's); [] = channels.ops")
    min_duration: Duration = Field(timedelta(minutes=5), description="shortest window")
    max_duration: Duration = Field(timedelta(hours=24), description="longest window (and extension)")
    max_ahead: Duration = Field(timedelta(days=90), description="how far ahead a window may start")
    job_timeout: Duration = Field(timedelta(minutes=30), description="how long a window's run-job is watched")
    max_open_windows: int = Field(
        20, ge=1, le=1000,
        description="open (scheduled, starting, running) windows per env; `!maintenance schedule` beyond it is refused")
    recurring: dict[TaskName, RecurringTask] = Field(
        default_factory=dict,
        description="name -> a scheduled chore: window, prune, run-job, tls-check or digest")

    @field_validator("min_duration", "max_duration", "max_ahead", "job_timeout")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= v <= timedelta(days=366):
            raise ValueError("must be between 1s and 366d")
        return v


class ScheduledFreeze(_Model):
    """Deploys to ``envs`` are refused from each cron time for ``duration`` (a weekend freeze)."""

    cron: Crontab
    duration: Duration
    envs: list[str] = Field(..., min_length=1)
    reason: str = Field(..., min_length=1, max_length=300)
    timezone: TimeZoneName | None = Field(None, description="zone of the cron times; default: timezone")

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= v <= timedelta(days=30):
            raise ValueError("a scheduled freeze lasts between 1m and 30d")
        return v


class FreezesConfig(_Model):
    """Deploy freezes: `!freeze` and scheduled ones."""

    max_duration: Duration = Field(timedelta(days=14), description="longest `!freeze`")
    scheduled: dict[TaskName, ScheduledFreeze] = Field(default_factory=dict, description="name -> scheduled freeze")


def _matchers(v: list[str]) -> list[str]:
    # The matcher grammar lives with the router; imported here, when validating, to keep one parser.
    from alerts.routing import MatcherError, parse_matchers

    for text in v:
        try:
            if not parse_matchers(text):
                raise MatcherError("an empty matcher")
        except MatcherError as e:
            raise ValueError(f"matcher {text!r}: {e}") from None
    return v


def _snowflakes(v: list[int]) -> list[int]:
    if any(i <= 0 or i >= 2**64 for i in v):
        raise ValueError("a Discord role ID is a positive 64-bit snowflake")
    return v


Matchers = Annotated[list[str], AfterValidator(_matchers)]
RoleIds = Annotated[list[int], AfterValidator(_snowflakes)]
SHORT_DURATION = r"^([0-9]+[smhdw])+$"


class AlertRouteConfig(_Model):
    """One alert route: the groups whose common labels match go to ``channel``."""

    matchers: Matchers = Field(
        ..., min_length=1,
        description='Alertmanager-style matchers, all must match: severity="critical", service=~"chat.*"',
    )
    channel: str = Field(..., min_length=1, description="channel name or ID (quoted)")
    mention_roles: RoleIds = Field(default_factory=list, description="role IDs pinged when a group fires")
    escalation: str | None = Field(None, description="escalation policy name, stored on the incident")
    continue_: bool = Field(False, alias="continue", description="keep matching the routes after this one")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AlertDefaultRoute(_Model):
    """Where groups that match no route go."""

    channel: str | None = Field(None, description="default: channels.alerts")
    mention_roles: RoleIds = Field(default_factory=list)
    escalation: str | None = None


class AlertsConfig(_Model):
    """The Alertmanager relay: intake, routing, rendering, sending, watchdog."""

    routes: list[AlertRouteConfig] = Field(default_factory=list, description="first match wins unless continue")
    default_route: AlertDefaultRoute = Field(default_factory=AlertDefaultRoute)
    service_label: str = Field("service", min_length=1, description="label naming the catalog service")
    env_label: str = Field("env", min_length=1, description="label naming the env")
    severity_label: str = Field("severity", min_length=1)
    severities: list[str] = Field(
        default_factory=lambda: ["critical", "error", "warning", "info"], min_length=1,
        description="severity values, most severe first; others rank after them",
    )
    hidden_labels: list[str] = Field(
        default_factory=lambda: ["prometheus", "prometheus_replica", "monitor", "receive", "tenant_id"],
        description="labels never shown in messages",
    )
    webhook_path: str = Field("/alerts/alertmanager", pattern=r"^/[A-Za-z0-9/_.-]*$")
    webhook_user: str = Field("alertmanager", min_length=1, description="basic-auth user; the password is webhook_token")
    allow_unauthenticated: bool = Field(False, description="accept webhooks without webhook_token (loopback demos only)")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    send_rate_operations: int = Field(5, ge=1, le=1000, description="chat operations per channel per send_rate_seconds")
    send_rate_seconds: float = Field(5.0, gt=0, le=3600)
    retry_initial_seconds: float = Field(1.0, gt=0, le=600)
    retry_max_seconds: float = Field(300.0, gt=0, le=86400)
    timeline_delay_seconds: float = Field(
        5.0, ge=0, le=600, description="timeline entries wait this long so a burst becomes one thread post"
    )
    silence_buttons: list[Annotated[str, Field(pattern=SHORT_DURATION)]] = Field(
        default_factory=lambda: ["1h", "4h", "24h"], max_length=4, description="durations of the Silence buttons"
    )
    watchdog_alertname: str = Field("Watchdog", min_length=1)
    watchdog_minutes: float = Field(10.0, ge=0, le=10080, description="post 'pipeline silent' after this; 0 = off")
    alertmanager_timeout_seconds: float = Field(10.0, gt=0, le=300)
    reconcile_minutes: float = Field(5.0, ge=0, le=1440, description="re-check open incidents against Alertmanager; 0 = only at start")
    dedup_retention_hours: float = Field(168.0, gt=0, le=24 * 365)

    @field_validator("retry_max_seconds")
    @classmethod
    def _max_not_below_initial(cls, v: float, info: Any) -> float:
        initial = info.data.get("retry_initial_seconds")
        if initial is not None and v < initial:
            raise ValueError("retry_max_seconds must be at least retry_initial_seconds")
        return v


# --- metrics from Prometheus (commands/metrics.py): !status numbers, !graph, !query, alert graphs ---

METRIC_NAME = r"^[a-z][a-z0-9_]{0,31}$"
# Placeholders a PromQL template may use (replaced literally, so PromQL's own braces need no escaping).
PLACEHOLDERS = ("{service}", "{env}", "{namespace}", "{deployment}", "{window}")
MetricUnit = Literal["count", "rps", "ratio", "seconds", "cores", "bytes"]


def _template(v: str) -> str:
    for word in re.findall(r"\{[a-z_]+\}", v):
        if word not in PLACEHOLDERS and not re.search(r"\{\s*" + word[1:-1] + r"\s*(=|!=|=~|!~)", v):
            raise ValueError(f"unknown placeholder {word}; known: {', '.join(PLACEHOLDERS)}")
    if v.count("(") != v.count(")") or v.count("{") != v.count("}") or v.count("[") != v.count("]"):
        raise ValueError("unbalanced brackets in the PromQL template")
    return v


PromqlTemplate = Annotated[str, Field(min_length=1, max_length=4000), AfterValidator(_template)]


class MetricQuery(_Model):
    """One metric of a service: a PromQL template and how to show it.

    Templates are PromQL with ``{service}``, ``{env}``, ``{namespace}`` (the target's, or the env),
    ``{deployment}`` (the Deployment or container) and ``{window}`` (the rate window) replaced.
    """

    title: str = Field(..., min_length=1, max_length=40, description="name shown in !status and on charts")
    query: PromqlTemplate = Field(..., description="instant query for !status: one number")
    graph: PromqlTemplate | None = Field(
        None, description="query charted by !graph (one line per series); default: query")
    unit: MetricUnit = Field("count", description="how values are shown")
    warn: float | None = Field(None, description="yellow from this value on (see bad_when)")
    critical: float | None = Field(None, description="red from this value on (see bad_when)")
    bad_when: Literal["above", "below"] = Field("above", description="whether high or low values are bad")

    def level(self, value: float | None) -> Literal["ok", "warn", "critical", "none"]:
        """The colour of ``value``: none without thresholds or value."""
        if value is None or (self.warn is None and self.critical is None):
            return "none"

        def beyond(limit: float | None) -> bool:
            if limit is None:
                return False
            return value >= limit if self.bad_when == "above" else value <= limit

        if beyond(self.critical):
            return "critical"
        return "warn" if beyond(self.warn) else "ok"


_SEL = 'namespace="{namespace}", service="{service}"'
DEFAULT_METRICS: dict[str, dict[str, Any]] = {
    "up": dict(
        title="up", unit="ratio", warn=0.99, critical=0.5, bad_when="below",
        query=f'avg(kube_pod_status_ready{{{_SEL}, condition="true"}})',
        graph=f'sum by (pod) (kube_pod_status_ready{{{_SEL}, condition="true"}})'),
    "request_rate": dict(
        title="requests", unit="rps",
        query=f"sum(rate(http_requests_total{{{_SEL}}}[{{window}}]))",
        graph=f"sum by (code) (rate(http_requests_total{{{_SEL}}}[{{window}}]))"),
    "error_ratio": dict(
        title="errors", unit="ratio", warn=0.01, critical=0.05,
        query=f'(sum(rate(http_requests_total{{{_SEL}, code=~"5.."}}[{{window}}])) or vector(0))'
              f" / sum(rate(http_requests_total{{{_SEL}}}[{{window}}]))",
        graph=f'(sum by (pod) (rate(http_requests_total{{{_SEL}, code=~"5.."}}[{{window}}]))'
              f" or 0 * sum by (pod) (rate(http_requests_total{{{_SEL}}}[{{window}}])))"
              f" / sum by (pod) (rate(http_requests_total{{{_SEL}}}[{{window}}]))"),
    "latency_p95": dict(
        title="p95 latency", unit="seconds", warn=0.3, critical=1.0,
        query=f"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{{_SEL}}}[{{window}}])))",
        graph=f"histogram_quantile(0.95, sum by (le, pod) (rate(http_request_duration_seconds_bucket{{{_SEL}}}[{{window}}])))"),
    "cpu": dict(
        title="CPU", unit="cores",
        query=f"sum(rate(container_cpu_usage_seconds_total{{{_SEL}}}[{{window}}]))",
        graph=f"sum by (pod) (rate(container_cpu_usage_seconds_total{{{_SEL}}}[{{window}}]))"),
    "memory": dict(
        title="memory", unit="bytes",
        query=f"sum(container_memory_working_set_bytes{{{_SEL}}})",
        graph=f"sum by (pod) (container_memory_working_set_bytes{{{_SEL}}})"),
}


def _metric_name(v: str) -> str:
    if not re.match(METRIC_NAME, v):
        raise ValueError(f"metric name {v!r}: lowercase letters, digits and '_', starting with a letter")
    return v


MetricName = Annotated[str, AfterValidator(_metric_name)]


def _window(v: str) -> str:
    if not re.fullmatch(r"([0-9]+(ms|[smhdwy]))+", v):
        raise ValueError("a PromQL duration such as 30s, 1m or 5m")
    return v


class MetricsConfig(_Model):
    """What !status, !graph, !query and alert graphs ask Prometheus (``prometheus_url``)."""

    queries: dict[MetricName, MetricQuery] = Field(
        default_factory=lambda: {k: MetricQuery(**v) for k, v in DEFAULT_METRICS.items()},
        description="metric name -> template; entries given replace the default of that name, the "
                    "other defaults stay")
    services: dict[str, dict[MetricName, MetricQuery]] = Field(
        default_factory=dict, description="service -> metric name -> template, for that service only")
    status: list[MetricName] = Field(
        default_factory=lambda: ["up", "request_rate", "error_ratio", "latency_p95", "cpu", "memory"],
        description="metrics !status shows for one service")
    overview: list[MetricName] = Field(
        default_factory=lambda: ["request_rate", "error_ratio"],
        description="metrics !status shows on each line of an overview (many services)")
    graph_default: MetricName = Field("request_rate", description="what !graph charts when no metric is named")
    graph_range: Annotated[str, AfterValidator(_window)] = Field("1h", description="!graph's default range")
    rate_window: Annotated[str, AfterValidator(_window)] = Field(
        "1m", description="{window} in templates (charts use at least their step); 4x the scrape interval is safe")
    timeout_seconds: float = Field(
        3.0, gt=0, le=60, description="each Prometheus call; !status shows the cluster without metrics after this")
    alert_graphs: bool = Field(True, description="attach a graph of an alert's expression in its incident's thread")

    @field_validator("queries", mode="before")
    @classmethod
    def _over_defaults(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {**{k: dict(d) for k, d in DEFAULT_METRICS.items()}, **v}
        return v

    @field_validator("status", "overview", "graph_default")
    @classmethod
    def _known(cls, v: Any, info: Any) -> Any:
        queries = info.data.get("queries")
        if queries is None:
            return v
        for name in [v] if isinstance(v, str) else v:
            if name not in queries:
                raise ValueError(f"no metric {name!r} in metrics.queries (known: {', '.join(queries)})")
        return v

    def query(self, service: str, name: str) -> MetricQuery | None:
        """The template of metric ``name`` for ``service`` (its own, else the common one)."""
        return (self.services.get(service) or {}).get(name) or self.queries.get(name)

    def names(self, service: str | None = None) -> list[str]:
        """Metric names known for ``service`` (or for any), common ones first."""
        names = list(self.queries)
        for svc, own in self.services.items():
            if service is None or svc == service:
                names += [n for n in own if n not in names]
        return names


class HAConfig(_Model):
    """High availability: replicas elect a leader on a Kubernetes Lease (coordination.k8s.io/v1).

    Only the leader holds the Discord session and runs the scheduler, the alert senders and the
    watchdog; every replica serves the alert webhook into the shared database. Off by default: a
    single replica leads from the start. Needs ``database_url`` to be a shared server (PostgreSQL).
    """

    enabled: bool = Field(False, description="elect a leader; without it this replica always leads")
    lease_name: str = Field("opsbot", pattern=r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$",
                            description="name of the Lease object")
    lease_namespace: str = Field("opsbot", description="namespace of the Lease (the bot's own)")
    context: str | None = Field(None, description="kubeconfig context for the Lease; default: the current one")
    identity: str | None = Field(None, description="this replica's name in the Lease; default: $POD_NAME, "
                                                   "else host name and process ID")
    lease_duration_seconds: float = Field(15.0, ge=1, le=300,
                                          description="a standby takes over this long after the last renewal")
    renew_deadline_seconds: float = Field(10.0, ge=0.5, le=300,
                                          description="the leader steps down if it could not renew for this long")
    retry_period_seconds: float = Field(2.0, ge=0.1, le=60, description="time between renewals and attempts")
    shutdown_grace_seconds: float = Field(
        20.0, ge=0, le=600, description="on SIGTERM, how long running deploys may take to finish before "
                                        "they are handed over to the next leader")

    @field_validator("renew_deadline_seconds")
    @classmethod
    def _deadline(cls, v: float, info: Any) -> float:
        duration = info.data.get("lease_duration_seconds")
        if duration is not None and v >= duration:
            raise ValueError("renew_deadline_seconds must be shorter than lease_duration_seconds "
                             "(else two replicas could lead at once)")
        return v

    @field_validator("retry_period_seconds")
    @classmethod
    def _retry(cls, v: float, info: Any) -> float:
        deadline = info.data.get("renew_deadline_seconds")
        if deadline is not None and v >= deadline:
            raise ValueError("retry_period_seconds must be shorter than renew_deadline_seconds")
        return v


class Settings(BaseSettings):
    """Everything opsbot reads. YAML file < environment variables < CLI flags."""

    model_config = SettingsConfigDict(
        env_prefix="OPSBOT_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        # Errors must not echo values: a mistyped key may hold a token.
        hide_input_in_errors=True,
    )

    discord_token: SecretStr | None = None
    command_prefix: str = "!"
    guild_id: int | None = Field(None, description="guild to sync slash commands to (faster than global)")
    data_dir: Path = Path("data")
    database_url: SecretStr | None = Field(
        None, description="SQLAlchemy URL; default sqlite in data_dir (a secret: it may hold a password)")
    kubeconfig: Path | None = None
    docker_host: str | None = None
    alertmanager_url: str | None = None
    prometheus_url: str | None = None
    webhook_listen: HostPort = Field(
        "127.0.0.1:8080",
        description="HOST:PORT of the bot's HTTP server: /healthz, /readyz, /metrics and the alert webhook",
    )
    webhook_token: SecretStr | None = None
    timezone: TimeZoneName = "UTC"
    rollout_poll_seconds: float = Field(1.0, gt=0, le=30, description="how often a running rollout is checked")

    promotion: list[str] = Field(
        default_factory=lambda: ["dev", "staging", "prod"], description="env promotion order"
    )
    environments: dict[str, EnvConfig] = Field(default_factory=dict)
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    maintenance: MaintenanceConfig = Field(default_factory=MaintenanceConfig)
    freezes: FreezesConfig = Field(default_factory=FreezesConfig)
    channels: ChannelsConfig = Field(default_factory=ChannelsConfig)
    permissions: PermissionsConfig = Field(default_factory=PermissionsConfig)
    redact_patterns: list[Regex] = Field(default_factory=list)
    oncall: OncallConfig = Field(default_factory=OncallConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    ha: HAConfig = Field(default_factory=HAConfig)

    # Set by load_settings so errors can name the file; not a user setting.
    source_file: Path | None = Field(None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # CLI flags arrive as init kwargs and win; then env vars and OPSBOT_<SECRET>_FILE files
        # (never both for one setting); then the YAML file (also passed through init, see
        # load_settings, but below env vars). pydantic-settings' secrets_dir is not used: it
        # ignores a missing file silently and does not reach nested models.
        return (init_settings, env_settings, SecretFilesSource(settings_cls), _YamlSource(settings_cls))

    @field_validator("alerts")
    @classmethod
    def _no_open_webhook_off_loopback(cls, v: AlertsConfig, info: Any) -> AlertsConfig:
        listen = info.data.get("webhook_listen")
        if v.allow_unauthenticated and isinstance(listen, str) and not is_loopback_listen(listen):
            raise ValueError(
                f"allow_unauthenticated is refused with webhook_listen {listen}, which is not a loopback "
                "address: anyone who reaches the port could post alerts; set webhook_token "
                "(OPSBOT_WEBHOOK_TOKEN or OPSBOT_WEBHOOK_TOKEN_FILE) or listen on 127.0.0.1")
        return v

    @property
    def database(self) -> str:
        """The SQLAlchemy URL, password included: hand it to the engine only, never print it."""
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'opsbot.db').resolve()}"

    def env_order(self) -> list[str]:
        """Envs in promotion order, then any others."""
        names = [e for e in self.promotion if e in self.environments or self._env_used(e)]
        for e in self.environments:
            if e not in names:
                names.append(e)
        for svc in self.services.values():
            for e in svc.envs:
                if e not in names:
                    names.append(e)
        return names

    def _env_used(self, env: str) -> bool:
        return any(env in s.envs for s in self.services.values())

    def env(self, name: str) -> EnvConfig:
        return self.environments.get(name) or EnvConfig()

    def previous_env(self, env: str) -> str | None:
        if env in self.promotion:
            i = self.promotion.index(env)
            return self.promotion[i - 1] if i > 0 else None
        return None


def is_loopback_listen(listen: str) -> bool:
    """Whether ``HOST:PORT`` listens on loopback only (127.0.0.0/8, ::1, localhost); a host name
    other than localhost, 0.0.0.0 or :: is not."""
    host = listen.rpartition(":")[0].removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- secrets from files: OPSBOT_<NAME>_FILE (Docker and Kubernetes secrets mount files) ----------

SECRET_FILE_SUFFIX = "_FILE"


def secret_settings(model: type[BaseModel] | None = None, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The path of every :class:`SecretStr` setting, nested models included: ``("webhook_token",)``."""
    model = model or Settings
    out: list[tuple[str, ...]] = []
    for name, f in model.model_fields.items():
        args = typing.get_args(f.annotation) or (f.annotation,)
        if SecretStr in args:
            out.append((*prefix, name))
            continue
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out += secret_settings(arg, (*prefix, name))
    return out


def secret_env_name(path: tuple[str, ...]) -> str:
    """``("github", "webhook_secret")`` -> ``OPSBOT_GITHUB__WEBHOOK_SECRET``."""
    config = Settings.model_config
    return str(config.get("env_prefix") or "") + str(config.get("env_nested_delimiter") or "__").join(
        p.upper() for p in path)


def read_secret_file(path: Path | str, what: str = "") -> str:
    """The text of a secret file without its trailing newline(s); a clear error (``what: …``) when
    it is missing, unreadable, not UTF-8 or empty."""
    where = f"{what}: " if what else ""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretFileError(f"{where}{path} does not exist") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{where}{path} is not UTF-8 text") from None
    except OSError as e:
        raise SecretFileError(f"{where}cannot read {path}: {e.strerror or e}") from None
    value = text.rstrip("\r\n")
    if not value:
        raise SecretFileError(f"{where}{path} is empty")
    return value


class SecretFilesSource(PydanticBaseSettingsSource):
    """Every secret setting from the file named by ``OPSBOT_<NAME>_FILE`` (case-insensitive, as the
    other variables): ``OPSBOT_DISCORD_TOKEN_FILE=/run/secrets/discord_token``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def read(self) -> tuple[dict[str, Any], list[tuple[tuple[str, ...], str, str]]]:
        """(the values found, nested; the problems as (setting path, variable, message))."""
        environ = {k.upper(): v for k, v in os.environ.items()}
        data: dict[str, Any] = {}
        problems: list[tuple[tuple[str, ...], str, str]] = []
        for path in secret_settings(self.settings_cls):
            var = secret_env_name(path)
            file = environ.get(var + SECRET_FILE_SUFFIX)
            if file is None:
                continue
            try:
                if var in environ:
                    raise SecretFileError(f"set, and so is {var}: keep one of them")
                if not file.strip():
                    raise SecretFileError("set but empty: name the file that holds the secret")
                value = read_secret_file(file)
            except SecretFileError as e:
                problems.append((path, var + SECRET_FILE_SUFFIX, str(e)))
                continue
            at = data
            for key in path[:-1]:
                at = at.setdefault(key, {})
            at[path[-1]] = value
        return data, problems

    def __call__(self) -> dict[str, Any]:
        data, problems = self.read()
        if problems:
            raise SecretFileError("; ".join(f"{var}: {message}" for _, var, message in problems))
        return data


_YAML_PATH: list[Path | None] = [None]


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``load_settings`` (or ``OPSBOT_CONFIG``)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _YAML_PATH[0]
        if path is None:
            env = os.environ.get("OPSBOT_CONFIG")
            path = Path(env) if env else None
        if path is None:
            return {}
        return read_yaml(path)


class ConfigFileError(Exception):
    """The config file could not be read or is not a mapping."""


class SecretFileError(ConfigFileError):
    """A secret's file (``OPSBOT_<NAME>_FILE``) is missing, unreadable or empty, or both the
    variable and its file are set. The message names the variable and the path, never the content."""


def yaml_error_text(e: yaml.YAMLError) -> str:
    """The problem and its line, without the source snippet PyYAML adds (it may hold a secret)."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return f"{where}{e.problem or e.context or 'syntax error'}"
    return type(e).__name__


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigFileError(f"{path}: not valid YAML: {yaml_error_text(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping")
    return data


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Build settings from a YAML file (optional), OPSBOT_ env vars, then explicit overrides.

    ``overrides`` with value None are ignored so CLI flags that were not given don't mask
    the file or the environment.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    _YAML_PATH[0] = Path(path) if path else None
    try:
        settings = Settings(**given)
    finally:
        _YAML_PATH[0] = None
    if path:
        settings.source_file = Path(path)
    return settings
