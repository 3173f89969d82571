"""Result models that core functions return and the Discord layer renders.

Plain pydantic models: no discord import, easy to assert on in tests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

RolloutState = Literal["complete", "progressing", "failed", "paused", "scaled-down", "unknown"]


class PodState(BaseModel):
    name: str
    phase: str  # Pending / Running / Succeeded / Failed / Unknown
    ready: bool
    restarts: int = 0
    reason: str | None = None  # e.g. CrashLoopBackOff, ImagePullBackOff
    version: str | None = None
    started_at: datetime | None = None


class EventSummary(BaseModel):
    type: str  # Warning / Normal
    reason: str
    message: str
    object: str  # e.g. "pod/chat-gui-5d9c-abcde"
    count: int = 1
    last_seen: datetime | None = None


MetricLevel = Literal["ok", "warn", "critical", "none"]


class MetricReading(BaseModel):
    """One number from Prometheus for ``!status`` (commands/metrics.py reads it)."""

    name: str  # the metric's name in the config (request_rate)
    title: str  # what to call it (requests)
    value: float | None = None  # None: Prometheus had no data
    text: str = "no data"  # the value with its unit, e.g. "12.3 req/s"
    level: MetricLevel = "none"  # colour by the configured thresholds
    promql: str = ""  # the query as sent
    error: str | None = None  # this query failed (a bad template), the others may not have


class TargetState(BaseModel):
    """What one service runs in one env, as read from its platform."""

    service: str
    env: str
    platform: str  # "kubernetes", "docker"
    where: str  # human description of the target
    image: str | None = None
    version: str | None = None
    desired: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0
    rollout: RolloutState = "unknown"
    rollout_message: str | None = None
    revision: int | None = None
    pods: list[PodState] = Field(default_factory=list)
    warnings: list[EventSummary] = Field(default_factory=list)
    error: str | None = None  # set when the platform could not be read
    locks: list[str] = Field(default_factory=list)  # locks in force on this target, described
    metrics: list[MetricReading] = Field(default_factory=list)  # numbers from Prometheus
    metrics_at: datetime | None = None  # when they were evaluated
    metrics_error: str | None = None  # why there are none (Prometheus down or slow)

    @property
    def restarts(self) -> int:
        return sum(p.restarts for p in self.pods)

    @property
    def healthy(self) -> bool:
        return self.error is None and self.rollout == "complete" and self.ready >= self.desired


class StatusReport(BaseModel):
    """The answer to ``!status [service] [env]``."""

    states: list[TargetState]
    requested_service: str | None = None
    requested_env: str | None = None


class RolloutProgress(BaseModel):
    """One look at a rollout in flight (kubectl rollout status semantics)."""

    desired: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0
    old: int = 0  # replicas of older revisions still running
    observed: bool = True  # the controller has seen the latest spec
    state: RolloutState = "progressing"
    reason: str | None = None  # ProgressDeadlineExceeded, CrashLoopBackOff, ImagePullBackOff, …
    message: str | None = None
    revision: int | None = None
    failing_pods: list[str] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state in ("complete", "failed")


class RevisionInfo(BaseModel):
    """One entry of a target's revision history."""

    revision: int
    image: str | None = None
    version: str | None = None
    change_cause: str | None = None
    created_at: datetime | None = None
    current: bool = False
    replicas: int = 0
