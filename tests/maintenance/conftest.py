"""Fixtures of the maintenance tests: a fake clock, a database file, a scheduler on it, and
recording stand-ins for chat, Alertmanager silences and a platform."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from commands.audit import AuditLog
from commands.db import Database
from commands.maintenance import MaintenanceService
from commands.models import RolloutProgress
from commands.scheduler import Scheduler
from commands.targets.base import JobRun, PlatformError, PruneResult
from config.settings import KubernetesTarget, ServiceConfig, Settings, load_settings
from tests.support.clock import FakeClock

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@dataclass
class Silence:
    id: str
    matchers: str
    ends_at: datetime
    comment: str
    expired: bool = False


class FakeSilencer:
    """AlertService's create_silence/expire_silence, remembered; ``fail`` makes the next call fail."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.silences: list[Silence] = []
        self.fail: Exception | None = None
        self._ids = itertools.count(1)

    async def create_silence(self, matchers_text: str, duration: timedelta | str, comment: str, user_name: str,
                             *, whole_env: bool = False) -> Any:
        self.whole_env = whole_env
        if self.fail:
            e, self.fail = self.fail, None
            raise e
        assert isinstance(duration, timedelta)
        s = Silence(f"sil-{next(self._ids)}", matchers_text, self.clock() + duration, comment)
        self.silences.append(s)
        return s

    async def expire_silence(self, silence_id: str, user_name: str = "") -> None:
        next(s for s in self.silences if s.id == silence_id).expired = True

    @property
    def active(self) -> list[Silence]:
        return [s for s in self.silences if not s.expired and s.ends_at > self.clock()]


@dataclass
class FakePlatform:
    """A Kubernetes-like platform that records maintenance actions; ``broken`` fails named calls."""

    name: str = "kubernetes"
    calls: list[tuple[str, ...]] = field(default_factory=list)
    replicas: dict[str, int] = field(default_factory=lambda: {"chat": 3, "chat-gui": 3, "auth": 3})
    broken: dict[str, str] = field(default_factory=dict)

    def _maybe_fail(self, what: str) -> None:
        if what in self.broken:
            raise PlatformError(self.broken[what])

    async def restart(self, service: str, env: str, target: object, change_cause: str) -> int:
        self._maybe_fail(f"restart {service}")
        self.calls.append(("restart", service, env))
        return 7

    async def scale(self, service: str, env: str, target: object, replicas: int) -> tuple[int, int]:
        self._maybe_fail(f"scale {service}")
        previous = self.replicas.get(service, 1)
        self.replicas[service] = replicas
        self.calls.append(("scale", service, env, str(replicas)))
        return previous, 8

    async def progress(self, service: str, env: str, target: object, generation: int) -> RolloutProgress:
        n = self.replicas.get(service, 1)
        return RolloutProgress(desired=n, ready=n, updated=n, available=n, state="complete")

    async def run_job(self, service: str, env: str, target: object, cronjob: str, *, timeout: float,
                      poll_interval: float = 1.0) -> JobRun:
        self.calls.append(("run-job", cronjob, env))
        if f"run-job {cronjob}" in self.broken:
            return JobRun(name=f"{cronjob}-opsbot-x", namespace=env, cronjob=cronjob, outcome="failed",
                          reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit",
                          seconds=3, failed=2)
        return JobRun(name=f"{cronjob}-opsbot-x", namespace=env, cronjob=cronjob, outcome="complete", seconds=3,
                      succeeded=1)

    async def prune_images(self, service: str, env: str, target: object, *, all_unused: bool = False,
                           older_than_hours: int | None = None) -> PruneResult:
        self.calls.append(("prune", service, env))
        return PruneResult(host="unix:///fake", images_deleted=2, space_reclaimed=3_000_000)

    def host(self, target: object) -> str:
        return "unix:///fake"


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    services = {s: ServiceConfig(repository=f"registry.local/{s}",
                                 envs={e: KubernetesTarget(namespace=e, deployment=s) for e in ("staging", "prod")})
                for s in ("chat", "chat-gui", "auth")}
    base: dict[str, Any] = {"data_dir": tmp_path, "services": services, "promotion": ["staging", "prod"],
                                "timezone": "Europe/Berlin", "maintenance": {"announce_channels": ["general"]}}
    base.update(overrides)
    return load_settings(None, **base)


@dataclass
class Bot:
    """One "process": a scheduler and a maintenance service on the shared database."""

    scheduler: Scheduler
    service: MaintenanceService
    posts: list[tuple[str, str]]
    problems: list[Any]

    def said(self, channel: str | None = None) -> str:
        return "\n".join(t for c, t in self.posts if channel is None or c == channel)


@dataclass
class World:
    tmp_path: Path
    clock: FakeClock
    db: Database
    silencer: FakeSilencer
    platform: FakePlatform
    settings: Settings
    bots: list[Bot] = field(default_factory=list)

    async def start(self) -> Bot:
        """Start a bot process (its scheduler on the shared database), as after a restart."""
        posts: list[tuple[str, str]] = []
        problems: list[Any] = []
        scheduler = Scheduler.from_settings(self.db, self.settings, name="opsbot", clock=self.clock,
                                            on_problem=problems.append)

        async def post(channel: str, text: str) -> None:
            posts.append((channel, text))

        service = MaintenanceService(self.db, self.settings, scheduler, platforms={"kubernetes": self.platform},
                                     audit=AuditLog(self.db, clock=self.clock), post=post, silencer=self.silencer,
                                     poll_interval=0)
        await scheduler.start()
        await service.resume()
        bot = Bot(scheduler, service, posts, problems)
        self.bots.append(bot)
        return bot

    async def stop(self, bot: Bot) -> None:
        await bot.scheduler.shutdown()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def world(tmp_path: Path, clock: FakeClock, db_url: str) -> AsyncIterator[World]:
    from commands import freeze, maintenance, tlscheck  # noqa: F401 - their tables

    db = Database(db_url)  # SQLite and PostgreSQL (db_url is parametrized)
    db.create_all()
    w = World(tmp_path, clock, db, FakeSilencer(clock), FakePlatform(), settings_for(tmp_path))
    yield w
    for bot in w.bots:
        await bot.scheduler.shutdown()
    db.dispose()
