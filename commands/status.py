"""`!status`: read the state of services across envs, concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from commands.catalog import Catalog, UserError
from commands.models import MetricReading, StatusReport, TargetState
from commands.targets.base import Platform

if TYPE_CHECKING:
    from commands.metrics import MetricsService


async def get_status(
    catalog: Catalog,
    platforms: Mapping[str, Platform],
    service: str | None = None,
    env: str | None = None,
    metrics: MetricsService | None = None,
) -> StatusReport:
    """State of one or all services in one or all envs. Unknown names raise UserError.

    With ``metrics`` (Prometheus configured), each state also carries its key numbers, read at
    the same time as the platforms; when Prometheus is down or slow the states come anyway, each
    with ``metrics_error`` saying why there are no numbers.
    """
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

    async def numbers() -> tuple[datetime | None, dict[tuple[str, str], list[MetricReading]], str | None]:
        from commands.metrics import PrometheusError

        assert metrics is not None
        names = metrics.config.status if service else metrics.config.overview
        try:
            at, found = await metrics.readings([(s, e, catalog.target(s, e)) for s, e in pairs], names)
        except PrometheusError as err:
            return None, {}, f"metrics unavailable: {err}"
        except Exception as err:  # never lose the cluster part to a metrics bug
            return None, {}, f"metrics unavailable: {type(err).__name__}: {err}"
        return datetime.fromtimestamp(at, UTC), found, None

    if metrics is None:
        states = await asyncio.gather(*(one(s, e) for s, e in pairs))
    else:
        states, (at, found, problem) = await asyncio.gather(asyncio.gather(*(one(s, e) for s, e in pairs)),
                                                            numbers())
        for state in states:
            state.metrics = found.get((state.service, state.env), [])
            state.metrics_at, state.metrics_error = at, problem
    return StatusReport(states=list(states), requested_service=service, requested_env=env)
