"""The platform port: what the core asks of a place where services run.

Adapters (kubernetes.py, later docker.py) implement it. The core never imports an SDK.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from commands.models import TargetState


class PlatformError(Exception):
    """A platform could not answer (unreachable, forbidden, not found). The message is for users."""


class NotFound(PlatformError):
    pass


class Unreachable(PlatformError):
    pass


@runtime_checkable
class Platform(Protocol):
    """One kind of target (Kubernetes, Docker)."""

    name: str

    async def get_state(self, service: str, env: str, target: object) -> TargetState:
        """Read what ``service`` runs in ``env`` at ``target`` (a config target model).

        Never raises for platform faults: returns a TargetState with ``error`` set, so one
        unreachable env doesn't hide the others.
        """
        ...

    async def close(self) -> None: ...
