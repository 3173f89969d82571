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
        body = _body(self.namespace, self.name, record, None)
        lease = await self._call("create", lambda api: api.create_namespaced_lease, self.namespace, body)
        return _record(lease)

    async def update(self, record: LeaseRecord, resource_version: str) -> LeaseRecord:
        """Replace the spec if nobody wrote since ``resource_version``; else :class:`Conflict`."""
        body = _body(self.namespace, self.name, record, resource_version)
        lease = await self._call("update", lambda api: api.replace_namespaced_lease, self.name, self.namespace, body)
        return _record(lease)

    async def close(self) -> None:
        await self._platform.close()


def _micro_time(value: datetime | None) -> datetime | None:
    """A MicroTime the API server accepts. The client validates the body into its models (pydantic)
    and writes times with ``isoformat``, which drops the fraction when the microseconds are 0; the
    server then refuses the Lease (400, "cannot parse … as RFC3339Micro"). A time on the whole
    second is therefore sent 1 µs later: harmless for a lease."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value.replace(microsecond=1) if value.microsecond == 0 else value


def _body(namespace: str, name: str, record: LeaseRecord, resource_version: str | None) -> dict[str, Any]:
    """The Lease as the API's JSON (the client validates it into a ``V1Lease``)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    spec = {"holderIdentity": record.holder or None,
            "leaseDurationSeconds": max(1, round(record.lease_duration_seconds)),
            "acquireTime": _micro_time(record.acquire_time), "renewTime": _micro_time(record.renew_time),
            "leaseTransitions": record.transitions}
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {k: v for k, v in spec.items() if v is not None}}


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
