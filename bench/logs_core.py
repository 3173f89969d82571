"""Throughput of the !logs core: redaction alone, and parse + merge + redact + collect together.

    python bench/logs_core.py [--lines 50000] [--pods 3]

Prints lines/s per stage for 3 pods × 50,000 plausible kubectl ``--timestamps`` lines (about one
in twenty carries a secret), and the size of the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from commands.logs import LogCollector, LogLine, collect, merge, parse_k8s_stream
from commands.redact import Redactor

MESSAGES = [
    'level=info msg="request served" method=GET path=/api/v1/users/{n} status=200 latency_ms={ms}',
    'level=info msg="request served" method=POST path=/api/v1/messages status=201 latency_ms={ms}',
    "level=debug msg=\"cache hit\" key=user:{n} ttl=300s",
    "level=warn msg=\"slow query\" table=messages duration_ms={ms} rows={n}",
    '{{"ts":"2026-11-30T02:38:53Z","level":"info","msg":"connected","peer":"10.0.{n}.7:8080"}}',
    "GET /healthz 200 0.{ms}ms kube-probe/1.31",
    "level=error msg=\"upstream timeout\" upstream=chat-gui.prod.svc.cluster.local:8080 retry={n}",
    "level=info msg=\"token refreshed\" token_count={n} expires_in=3600",
]
SECRETS = [
    "level=debug msg=\"login\" user=bob password=hunter{n}",
    "outgoing request Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ7bn0ifQ.sig{n}abcdef",
    "dsn=postgres://chat:s3cr3t{n}@db.internal:5432/chat",
]


def raw_lines(pod: int, n: int) -> list[str]:
    rnd = random.Random(pod)
    t = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    out = []
    for _ in range(n):
        t += timedelta(microseconds=rnd.randrange(1, 20_000))
        pool = SECRETS if rnd.random() < 0.05 else MESSAGES
        msg = rnd.choice(pool).format(n=rnd.randrange(10_000), ms=rnd.randrange(1000))
        out.append(f"{t.strftime('%Y-%m-%dT%H:%M:%S.%f')}{rnd.randrange(1000):03d}Z {msg}\n")
    return out


async def stream(lines: list[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=50_000, help="lines per pod")
    parser.add_argument("--pods", type=int, default=3)
    args = parser.parse_args()
    pods = [raw_lines(p, args.lines) for p in range(args.pods)]
    total = args.lines * args.pods
    size = sum(len(line) for lines in pods for line in lines)
    print(f"input: {args.pods} pods × {args.lines:,} lines = {total:,} lines, {size / 1e6:.1f} MB")

    redactor = Redactor()
    texts = [line.split(" ", 1)[1] for lines in pods for line in lines]
    t = time.perf_counter()
    redacted = sum(1 for text in texts if "[REDACTED]" in redactor.redact(text))
    dt = time.perf_counter() - t
    print(f"redact only:            {total / dt:>10,.0f} lines/s  ({dt * 1e6 / total:.2f} µs/line, "
          f"{redacted:,} lines redacted)")

    def sources() -> list[AsyncIterator[LogLine]]:
        return [parse_k8s_stream(f"auth-5d9c7b6f4-{p:05d}", stream(lines)) for p, lines in enumerate(pods)]

    t = time.perf_counter()
    count = 0
    async for _ in merge(sources()):
        count += 1
    dt = time.perf_counter() - t
    print(f"parse + merge:          {count / dt:>10,.0f} lines/s")

    for label, tail in (("all lines", None), ("--tail 200", 200)):
        t = time.perf_counter()
        collector = LogCollector(redactor, tail=tail, sources=args.pods)
        result = await collect(merge(sources()), collector)
        dt = time.perf_counter() - t
        kind = result.attachment[0] if result.attachment else "inline"
        size_out = len(result.attachment[1]) if result.attachment else len(result.inline or "")
        print(f"parse+merge+redact+collect ({label}): {total / dt:>10,.0f} lines/s  → {kind}, "
              f"{size_out / 1e6:.2f} MB; {result.summary()}")


if __name__ == "__main__":
    asyncio.run(main())
