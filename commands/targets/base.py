"""The platform port: what the core asks of a place where services run.

Adapters (kubernetes.py, later docker.py) implement it. The core never imports an SDK.
Every method takes the service and env names (for messages) and the config target model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from commands.models import RevisionInfo, RolloutProgress, TargetState

if TYPE_CHECKING:
    from commands.logs import LogLine, LogQuery


class PlatformError(Exception):
    """A platform could not do what was asked. The message is for users."""


class NotFound(PlatformError):
    pass


class Unreachable(PlatformError):
    pass


class Conflict(PlatformError):
    """Someone else changed the object meanwhile (HTTP 409); try again."""


class Unsupported(PlatformError):
    """This kind of target cannot do that (``scale`` on a Docker container, ``prune`` on Kubernetes)."""


@runtime_checkable
class Platform(Protocol):
    """One kind of target (Kubernetes, Docker).

    A platform may also implement :class:`WatchingPlatform` (``wait_for_change``); one that does
    not is polled while a rollout runs.
    """

    name: str

    async def get_state(self, service: str, env: str, target: object) -> TargetState:
        """Read what ``service`` runs in ``env`` at ``target``.

        Never raises for platform faults: returns a TargetState with ``error`` set, so one
        unreachable env doesn't hide the others.
        """
        ...

    async def set_image(self, service: str, env: str, target: object, image: str, change_cause: str) -> int:
        """Start a rollout of ``image``; record ``change_cause``. Returns the generation to watch."""
        ...

    async def progress(self, service: str, env: str, target: object, generation: int) -> RolloutProgress:
        """How the rollout of ``generation`` is going. Detects crash-looping and unpullable pods."""
        ...

    async def history(self, service: str, env: str, target: object) -> list[RevisionInfo]:
        """Revisions, oldest first; the running one has ``current``."""
        ...

    async def rollback(self, service: str, env: str, target: object, revision: int | None,
                       change_cause: str) -> tuple[RevisionInfo, int]:
        """Roll back to ``revision`` (default: the previous one), as ``kubectl rollout undo``.

        Returns the revision rolled back to and the generation to watch. Unknown revision:
        NotFound whose message lists the valid ones.
        """
        ...

    async def log_sources(self, service: str, env: str, target: object,
                          query: LogQuery) -> list[tuple[str, AsyncIterator[LogLine]]]:
        """One time-ordered line stream per pod/container, named by its source."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class WatchingPlatform(Protocol):
    """An optional part of :class:`Platform`: a platform that can tell when a target changes.

    A platform that has ``wait_for_change`` lets a rollout watcher call ``progress`` again as soon
    as the target changed instead of after a fixed poll interval (as ``kubectl rollout status``
    watches rather than polls). Platforms without it are polled: the caller sleeps the interval.
    """

    async def wait_for_change(self, service: str, env: str, target: object, timeout: float) -> None:
        """Return when the target may have changed since the last ``progress`` read of it, or after
        ``timeout`` seconds at the latest.

        "May have": returning early without a change is allowed (the caller just reads again).
        Never raises for platform faults: it waits out ``timeout`` (or a part of it) instead, so
        the caller falls back to polling.
        """
        ...


# ----------------------------------------------------------------------------- maintenance actions


class JobRun(BaseModel):
    """A Job made from a CronJob's template, watched to its end (``run-job``)."""

    name: str
    namespace: str
    cronjob: str
    outcome: Literal["complete", "failed", "timeout"]
    reason: str | None = None  # BackoffLimitExceeded, DeadlineExceeded, …
    message: str | None = None
    seconds: float = 0.0
    succeeded: int = 0
    failed: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == "complete"


class PruneResult(BaseModel):
    """What ``docker image prune`` removed on one host."""

    host: str
    images_deleted: int = 0
    space_reclaimed: int = Field(0, description="bytes")


@runtime_checkable
class MaintenancePlatform(Protocol):
    """The maintenance actions of a platform. A target that cannot do one raises :class:`Unsupported`."""

    async def restart(self, service: str, env: str, target: object, change_cause: str) -> int:
        """``kubectl rollout restart`` (a new pod template annotation) or a container restart.
        Returns the generation to watch with ``progress``."""
        ...

    async def scale(self, service: str, env: str, target: object, replicas: int) -> tuple[int, int]:
        """Set the replica count; returns (the previous count, the generation to watch)."""
        ...

    async def run_job(self, service: str, env: str, target: object, cronjob: str, *,
                      timeout: float, poll_interval: float = 1.0) -> JobRun:
        """Create a Job from ``cronjob``'s jobTemplate (``kubectl create job --from=cronjob/…``) in the
        target's namespace and watch it until it completes, fails or ``timeout`` seconds pass."""
        ...

    async def prune_images(self, service: str, env: str, target: object, *, all_unused: bool = False,
                           older_than_hours: int | None = None) -> PruneResult:
        """``docker image prune`` on the target's host (``-a`` with ``all_unused``)."""
        ...
