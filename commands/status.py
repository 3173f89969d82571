"""`!status`: read the state of services across envs, concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from commands.catalog import Catalog, UserError
from commands.models import StatusReport, TargetState
from commands.targets.base import Platform


async def get_status(
    catalog: Catalog,
    platforms: Mapping[str, Platform],
    service: str | None = None,
    env: str | None = None,
) -> StatusReport:
    """State of one or all services in one or all envs. Unknown names raise UserError."""
    if service is not None:
        service = catalog.service(service)
    if env is not None:
        env = catalog.env(env)
    pairs = catalog.pairs(service, env)
    if not pairs:
        if service and env:
            catalog.target(service, env)  # raises a helpful UserError
        raise UserError("nothing matches that in the catalog")

    async def one(svc: str, e: str) -> TargetState:
        target = catalog.target(svc, e)
        kind = getattr(target, "type", "kubernetes")
        platform = platforms.get(kind)
        if platform is None:
            return TargetState(service=svc, env=e, platform=kind, where=kind,
                               error=f"no {kind} platform is configured")
        try:
            return await platform.get_state(svc, e, target)
        except Exception as exc:  # the port promises not to raise; never lose the other envs
            return TargetState(service=svc, env=e, platform=kind, where=kind,
                               error=f"could not read state: {exc}")

    states = await asyncio.gather(*(one(s, e) for s, e in pairs))
    return StatusReport(states=list(states), requested_service=service, requested_env=env)
