"""A Kubernetes ``Lease`` (coordination.k8s.io/v1) as the lock of leader election.

Three calls, all in the bot's own namespace: read, create, and replace (a PUT carrying the
resourceVersion we read, so two candidates that read the same version cannot both win: the
second gets 409 Conflict). These are the only Lease verbs the Role in deploy/kubernetes grants.

The election logic itself is in :mod:`commands.leader`; this module only speaks to the API.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from commands.leader import LeaseRecord
from commands.targets.base import Conflict, NotFound
from commands.targets.kubernetes import KubernetesPlatform, platform_error


class KubernetesLease:
    """The Lease ``namespace/name`` read and written with the bot's kubeconfig (or in-cluster)."""

    def __init__(self, kubeconfig: Path | None, namespace: str, name: str, *, context: str | None = None,
                 request_timeout: float = 5.0) -> None:
        self.namespace, self.name, self.context = namespace, name, context
        self.request_timeout = request_timeout
        # The same client construction as the Kubernetes targets (kubeconfig, in-cluster, retries).
        self._platform = KubernetesPlatform(kubeconfig, request_timeout=request_timeout)

    @property
    def what(self) -> str:
        return f"lease {self.namespace}/{self.name}"

    def _api(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self._platform._client(self.context))

    async def _call(self, verb: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            return fn(self._api())(*args, _request_timeout=self.request_timeout, **kwargs)

        try:
            return await asyncio.to_thread(run)
        except Exception as e:  # ApiException, urllib3 errors, a bad kubeconfig
            raise platform_error(e, self.what, verb, None, self.request_timeout) from e

    async def get(self) -> LeaseRecord:
        """The record as the API holds it; :class:`NotFound` when there is no Lease yet."""
        lease = await self._call("read", lambda api: api.read_namespaced_lease, self.name, self.namespace)
        return _record(lease)

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        """Create the Lease; :class:`Conflict` when another candidate created it first."""
        body = client.V1Lease(metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                              spec=_spec(record))
        lease = await self._call("create", lambda api: api.create_namespaced_lease, self.namespace, body)
        return _record(lease)

    async def update(self, record: LeaseRecord, resource_version: str) -> LeaseRecord:
        """Replace the spec if nobody wrote since ``resource_version``; else :class:`Conflict`."""
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace, resource_version=resource_version),
            spec=_spec(record))
        lease = await self._call("update", lambda api: api.replace_namespaced_lease, self.name, self.namespace, body)
        return _record(lease)

    async def close(self) -> None:
        await self._platform.close()


def _spec(record: LeaseRecord) -> client.V1LeaseSpec:
    return client.V1LeaseSpec(
        holder_identity=record.holder or None,
        lease_duration_seconds=max(1, round(record.lease_duration_seconds)),
        acquire_time=record.acquire_time, renew_time=record.renew_time,
        lease_transitions=record.transitions)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec or client.V1LeaseSpec()
    return LeaseRecord(
        holder=spec.holder_identity or "",
        lease_duration_seconds=float(spec.lease_duration_seconds or 0),
        acquire_time=_aware(spec.acquire_time), renew_time=_aware(spec.renew_time),
        transitions=int(spec.lease_transitions or 0),
        resource_version=lease.metadata.resource_version if lease.metadata else None)
