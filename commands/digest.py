"""The weekly digest: deploys, rollbacks, forced deploys and maintenance from the audit log, and
incidents from the alerts store, over the last ``period``."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from statistics import median
from typing import Any

from commands.audit import MAX_QUERY_LIMIT, AuditLog
from commands.timeutil import short
from commands.when import fmt


def _top(counter: Counter[str], n: int = 4) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in counter.most_common(n))


async def build_digest(audit: AuditLog, alerts: Any, now: datetime, period: timedelta, zone: str = "UTC") -> str:
    since = now - period
    records = [r for r in await audit.query(limit=MAX_QUERY_LIMIT) if r.at >= since]
    capped = len(records) == MAX_QUERY_LIMIT
    deploys = [r for r in records if r.action == "deploy" and r.result != "denied" and r.result != "cancelled"]
    rollbacks = [r for r in records if r.action == "rollback" and r.result not in ("denied", "cancelled")]
    forced = [r for r in records if r.action == "deploy:force"]
    maint = [r for r in records if r.action == "maintenance" and r.args.get("op") in ("start", "end")
             and r.user_name == "opsbot"]

    lines = [f"📰 **Digest** of the last {short(period)}: {fmt(since)} → {fmt(now)}"]
    by_result = Counter(r.result for r in deploys)
    if deploys:
        parts = [f"{by_result.get('ok', 0)} ok"]
        if by_result.get("rolled_back"):
            parts.append(f"{by_result['rolled_back']} rolled back automatically")
        if by_result.get("failed"):
            parts.append(f"{by_result['failed']} failed")
        lines.append(f"🚀 Deploys: {len(deploys)} ({', '.join(parts)}) — "
                     + _top(Counter(f"{r.service} {r.env}" for r in deploys)))
    else:
        lines.append("🚀 Deploys: none")
    if rollbacks:
        lines.append(f"↩️ Rollbacks: {len(rollbacks)} — " + "; ".join(
            f"{r.service} {r.env} to {r.args.get('version') or '?'} by {r.user_name}" for r in rollbacks[:5]))
    else:
        lines.append("↩️ Rollbacks: none")
    if forced:
        lines.append(f"🧊 Forced past a freeze: {len(forced)} — " + "; ".join(
            f"{r.service} {r.env} by {r.user_name}" for r in forced[:5]))
    if maint:
        starts = [r for r in maint if r.args.get("op") == "start"]
        failed = [r for r in maint if r.result == "failed"]
        lines.append(f"🛠️ Maintenance: {len(starts)} windows started" + (f", {len(failed)} with failures or missed"
                                                                       if failed else ""))
    if alerts is not None:
        incidents = [i for i in await alerts.incidents(open_only=False, limit=500) if i.opened_at >= since]
        if incidents:
            severities = Counter(i.severity or "none" for i in incidents)
            still_open = sum(1 for i in incidents if i.open)
            acks = [(i.acked_at - i.opened_at) for i in incidents if i.acked_at]
            line = (f"🚨 Incidents: {len(incidents)} opened ({', '.join(f'{v} {k}' for k, v in severities.most_common())})"
                    f", {still_open} still open, {len(acks)} acknowledged")
            if acks:
                line += f" (median time to ack {short(median(acks))})"
            lines.append(line + " — most: " + _top(Counter(f"{i.title} ({i.service or '?'} {i.env or ''})".strip()
                                                              for i in incidents), 3))
        else:
            lines.append("🚨 Incidents: none")
    if capped:
        lines.append(f"(only the newest {MAX_QUERY_LIMIT} audit entries were read)")
    return "\n".join(lines)
