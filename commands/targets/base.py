"""The platform port: what the core asks of a place where services run.

Adapters (kubernetes.py, later docker.py) implement it. The core never imports an SDK.
Every method takes the service and env names (for messages) and the config target model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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


@runtime_checkable
class Platform(Protocol):
    """One kind of target (Kubernetes, Docker)."""

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
