"""Response stats for ``!incidents stats [7d]``: a pure function over incident rows.

The incidents counted are those *opened* in ``[since, until)``. Time to acknowledge (TTA) is
``acked_at - created_at`` and time to resolve (TTR) ``resolved_at - created_at``, over the incidents
that were acknowledged / resolved (before ``until``, when given); negative spans (clock skew between
replicas) count as zero. The p90 is the nearest-rank percentile: the smallest value that at least
90 % of the values do not exceed (for 1..10 values, the largest but the top 10 %).

Rows may be anything with the fields below as attributes or keys: ORM rows, the alerts store's
``IncidentView`` (whose ``opened_at`` is accepted for ``created_at``) or dicts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

UNKNOWN = "unknown"
SEVERITY_ORDER = ("critical", "error", "warning", "info")


class IncidentRecord(BaseModel):
    """The fields of an incident the stats need."""

    model_config = ConfigDict(from_attributes=True, extra="ignore", frozen=True)

    id: int
    severity: str | None = None
    service: str | None = None
    created_at: datetime = Field(validation_alias=AliasChoices("created_at", "opened_at"))
    acked_at: datetime | None = None
    acked_by: str | None = Field(None, description="who acknowledged: a name or a user ID")
    resolved_at: datetime | None = None

    @field_validator("acked_by", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("created_at", "acked_at", "resolved_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and (v.tzinfo is None or v.utcoffset() is None):
            raise ValueError("naive datetime: pass aware (UTC) datetimes")
        return v.astimezone(UTC) if v is not None else None


class Durations(BaseModel):
    """Mean and p90 of a set of durations; None when there are none."""

    model_config = ConfigDict(frozen=True)

    count: int
    mean: timedelta | None
    p90: timedelta | None

    @classmethod
    def of(cls, values: Sequence[timedelta]) -> Durations:
        if not values:
            return cls(count=0, mean=None, p90=None)
        ordered = sorted(values)
        mean = sum(ordered, timedelta(0)) / len(ordered)
        return cls(count=len(ordered), mean=mean, p90=ordered[math.ceil(0.9 * len(ordered)) - 1])


class GroupStats(BaseModel):
    """Stats of one group of incidents: all of them, one severity or one service."""

    model_config = ConfigDict(frozen=True)

    key: str = Field(description="'all', the severity or the service ('unknown' when missing)")
    count: int
    acked: int
    resolved: int
    unacked_open: int = Field(description="still open and nobody acknowledged them")
    tta: Durations = Field(description="time to acknowledge")
    ttr: Durations = Field(description="time to resolve")


class Acker(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    count: int


class ResponseStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    since: datetime
    until: datetime | None
    total: GroupStats
    by_severity: list[GroupStats] = Field(description="most severe first")
    by_service: list[GroupStats] = Field(description="most incidents first")
    top_ackers: list[Acker] = Field(description="who acknowledged most, most first")

    @property
    def count(self) -> int:
        return self.total.count


def _record(row: Any) -> IncidentRecord:
    if isinstance(row, IncidentRecord):
        return row
    if isinstance(row, Mapping):
        return IncidentRecord.model_validate(dict(row))
    return IncidentRecord.model_validate(row, from_attributes=True)


def _group(key: str, records: Sequence[IncidentRecord], until: datetime | None) -> GroupStats:
    def before(t: datetime | None) -> bool:
        return t is not None and (until is None or t < until)

    tta = [max(r.acked_at - r.created_at, timedelta(0)) for r in records if before(r.acked_at)]  # type: ignore[operator]
    ttr = [max(r.resolved_at - r.created_at, timedelta(0)) for r in records if before(r.resolved_at)]  # type: ignore[operator]
    unacked_open = sum(1 for r in records if not before(r.acked_at) and not before(r.resolved_at))
    return GroupStats(key=key, count=len(records), acked=len(tta), resolved=len(ttr), unacked_open=unacked_open,
                      tta=Durations.of(tta), ttr=Durations.of(ttr))


def response_stats(
    rows: Iterable[Any],
    since: datetime,
    until: datetime | None = None,
    *,
    severity_order: Sequence[str] = SEVERITY_ORDER,
    top: int = 5,
) -> ResponseStats:
    """Count, mean/p90 time to acknowledge and to resolve, per severity and per service, and who
    acknowledged most, for incidents opened in ``[since, until)`` (``until`` None: no end)."""
    if since.tzinfo is None or (until is not None and until.tzinfo is None):
        raise ValueError("naive datetime: pass aware (UTC) datetimes")
    records = [r for r in map(_record, rows) if r.created_at >= since and (until is None or r.created_at < until)]
    records.sort(key=lambda r: (r.created_at, r.id))

    severities: dict[str, list[IncidentRecord]] = {}
    services: dict[str, list[IncidentRecord]] = {}
    for r in records:
        severities.setdefault(r.severity or UNKNOWN, []).append(r)
        services.setdefault(r.service or UNKNOWN, []).append(r)

    rank = {s: i for i, s in enumerate(severity_order)}

    def severity_key(name: str) -> tuple[int, int, str]:
        return (name == UNKNOWN, rank.get(name, len(rank)), name)

    by_severity = [_group(k, severities[k], until) for k in sorted(severities, key=severity_key)]
    by_service = sorted((_group(k, v, until) for k, v in services.items()),
                        key=lambda g: (g.key == UNKNOWN, -g.count, g.key))
    ackers = Counter(r.acked_by for r in records
                     if r.acked_by and r.acked_at is not None and (until is None or r.acked_at < until))
    top_ackers = [Acker(name=n, count=c) for n, c in sorted(ackers.items(), key=lambda x: (-x[1], x[0]))[:top]]
    return ResponseStats(since=since.astimezone(UTC), until=until.astimezone(UTC) if until else None,
                         total=_group("all", records, until), by_severity=by_severity, by_service=by_service,
                         top_ackers=top_ackers)
