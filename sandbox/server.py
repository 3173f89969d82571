"""The emulated Kubernetes API over real HTTP (aiohttp), for kubectl and the official client.

Plain HTTP on localhost. Every request is classified and recorded (sandbox/rbac.py); with an
RBAC :class:`~sandbox.rbac.Policy`, ServiceAccount tokens are authorized as the RBAC authorizer
does, every other request stays unrestricted. Routing is table-driven: a URL resolves to a
:class:`ApiPath` (group, version, kind, namespace, name, subresource) and the pair
(method, scope) picks the handler. Discovery is generated from the cluster's kinds, both the
aggregated (apidiscovery.k8s.io/v2) and the legacy form. kubectl's server-side printing
(meta.k8s.io/v1 ``Table``) is served from :data:`TABLES`.

The server runs in its own thread with its own event loop (:class:`SandboxServer`), so it
never shares a loop with the bot or a test framework that patches the bot's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import secrets
import signal
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from sandbox import logs
from sandbox.cluster import (
    PODS,
    ApiError,
    Cluster,
    Obj,
    PatchError,
    ResourceKind,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from sandbox.controller import Controllers, Timing, install, running
from sandbox.kubeconfig import CONTEXT, Identity, write_kubeconfig
from sandbox.metrics import SandboxMetrics
from sandbox.rbac import ADMIN, Access, Audit, Policy, classify, forbidden
from sandbox.seed import seed
from sandbox.tls import self_signed

PATCHES: dict[str, Callable[[Obj, Any], Obj]] = {
    "application/json-patch+json": json_patch,
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json": strategic_merge_patch,
}
KUBERNETES_VERSION = ("1", "32")
AGGREGATED_DISCOVERY = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
DEFAULT_WATCH_TIMEOUT = 1800.0
FOLLOW_POLL = 0.25  # seconds between looks at a followed container


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class ApiPath:
    """What an API URL addresses. ``kind`` None means the group-version's discovery document."""

    group: str
    version: str
    kind: ResourceKind | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def scope(self) -> str:
        if self.subresource:
            return "subresource"
        return "object" if self.name else "collection"


def resolve(cluster: Cluster, path: str) -> ApiPath | None:
    """Parse ``/api/v1/…`` and ``/apis/<group>/<version>/…``; None when nothing is served there."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not any(k.group == group and k.version == version for k in cluster.kinds):
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and cluster.kind(group, version, rest[2]):
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return ApiPath(group, version)
    kind = cluster.kind(group, version, rest[0])
    if kind is None or len(rest) > 3 or (kind.namespaced and namespace is None and len(rest) > 1):
        return None
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    return ApiPath(group, version, kind, namespace, name, subresource)


# --------------------------------------------------------------------------- discovery


def _group_versions(cluster: Cluster) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for k in cluster.kinds:
        versions = groups.setdefault(k.group, [])
        if k.version not in versions:
            versions.append(k.version)
    return groups


def _api_resources(kind: ResourceKind) -> list[Obj]:
    """The kind and its subresources (``deployments/scale``), as legacy discovery lists them."""
    resources = [{
        "name": kind.resource, "singularName": kind.singular, "namespaced": kind.namespaced,
        "kind": kind.kind, "verbs": list(kind.verbs), "shortNames": list(kind.short_names),
        "categories": list(kind.categories),
    }]
    for sub in kind.subresources:
        entry: Obj = {"name": f"{kind.resource}/{sub.name}", "singularName": "",
                      "namespaced": kind.namespaced, "kind": sub.kind or kind.kind,
                      "verbs": list(sub.verbs)}
        if sub.group is not None:
            entry |= {"group": sub.group, "version": sub.version}
        resources.append(entry)
    return resources


def resource_list(cluster: Cluster, group: str, version: str) -> Obj:
    """The legacy APIResourceList of one group-version."""
    gv = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
        "resources": [r for k in cluster.kinds if (k.group, k.version) == (group, version)
                      for r in _api_resources(k)],
    }


def _api_group(group: str, versions: list[str]) -> Obj:
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def aggregated_discovery(cluster: Cluster, core: bool) -> Obj:
    """An apidiscovery.k8s.io/v2 APIGroupDiscoveryList for ``/api`` (core) or ``/apis``."""
    items = []
    for group, versions in _group_versions(cluster).items():
        if (group == "") != core:
            continue
        items.append({
            "metadata": {"name": group, "creationTimestamp": None},
            "versions": [{
                "version": version,
                "resources": [_discovered(k) for k in cluster.kinds
                              if (k.group, k.version) == (group, version)],
                "freshness": "Current",
            } for version in versions],
        })
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {}, "items": items}


def _discovered(kind: ResourceKind) -> Obj:
    discovered: Obj = {
        "resource": kind.resource,
        "responseKind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
        "scope": "Namespaced" if kind.namespaced else "Cluster",
        "singularResource": kind.singular,
        "verbs": list(kind.verbs),
        "shortNames": list(kind.short_names),
        "categories": list(kind.categories),
    }
    if kind.subresources:
        discovered["subresources"] = [{
            "subresource": sub.name,
            "responseKind": {"group": kind.group if sub.group is None else sub.group,
                             "version": sub.version or kind.version,
                             "kind": sub.kind or kind.kind},
            "verbs": list(sub.verbs),
        } for sub in kind.subresources]
    return discovered


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    name: str
    type: str = "string"
    priority: int = 0  # >0: only in ``-o wide``
    description: str = ""

    def definition(self) -> Obj:
        fmt = "name" if self.name == "Name" else ""
        return {"name": self.name, "type": self.type, "format": fmt,
                "description": self.description, "priority": self.priority}


Row = Callable[[Obj, datetime], list[Any]]


def human_duration(delta: timedelta) -> str:
    """Kubernetes' ``duration.HumanDuration`` (what AGE columns show)."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years, rest = divmod(days, 365)
    if years < 8 and rest:
        return f"{years}y{rest}d"
    return f"{years}y"


def _since(timestamp: str | None, now: datetime) -> str:
    if not timestamp:
        return "<unknown>"
    return human_duration(now - datetime.fromisoformat(timestamp.replace("Z", "+00:00")))


def _age(obj: Obj, now: datetime) -> str:
    return _since(obj["metadata"].get("creationTimestamp"), now)


def format_selector(selector: Obj | None) -> str:
    """metav1.FormatLabelSelector: ``app=chat,tier in (web)``; ``<none>`` when empty."""
    selector = selector or {}
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, key = expr["operator"], expr["key"]
        values = ",".join(sorted(expr.get("values") or []))
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": key, "DoesNotExist": f"!{key}"}.get(op, key))
    return ",".join(sorted(parts)) or "<none>"


def _containers(obj: Obj) -> list[Obj]:
    return obj["spec"]["template"]["spec"].get("containers") or []


def _workload_wide(obj: Obj) -> list[Any]:
    containers = _containers(obj)
    return [",".join(c["name"] for c in containers), ",".join(c["image"] for c in containers),
            format_selector(obj["spec"].get("selector"))]


def _deployment_row(obj: Obj, now: datetime) -> list[Any]:
    status = obj.get("status") or {}
    desired = obj["spec"].get("replicas", 1)
    return [obj["metadata"]["name"], f"{status.get('readyReplicas', 0)}/{desired}",
            status.get("updatedReplicas", 0), status.get("availableReplicas", 0),
            _age(obj, now), *_workload_wide(obj)]


def _replicaset_row(obj: Obj, now: datetime) -> list[Any]:
    status = obj.get("status") or {}
    return [obj["metadata"]["name"], obj["spec"].get("replicas", 1), status.get("replicas", 0),
            status.get("readyReplicas", 0), _age(obj, now), *_workload_wide(obj)]


def pod_status_reason(pod: Obj) -> str:
    """The STATUS column of ``kubectl get pods`` (a simplified printPod)."""
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for cs in reversed(status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        if (waiting := state.get("waiting")) and waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated := state.get("terminated"):
            reason = terminated.get("reason") or f"ExitCode:{terminated.get('exitCode', 0)}"
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def _restarts(pod: Obj, now: datetime) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    restarts = sum(cs.get("restartCount", 0) for cs in statuses)
    finished = [cs["lastState"]["terminated"].get("finishedAt") for cs in statuses
                if (cs.get("lastState") or {}).get("terminated")]
    last = max((f for f in finished if f), default=None)
    return f"{restarts} ({_since(last, now)} ago)" if restarts and last else str(restarts)


def _pod_row(obj: Obj, now: datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for cs in statuses if cs.get("ready"))
    total = len(spec.get("containers") or [])
    return [obj["metadata"]["name"], f"{ready}/{total}", pod_status_reason(obj),
            _restarts(obj, now), _age(obj, now), status.get("podIP") or "<none>",
            spec.get("nodeName") or "<none>", status.get("nominatedNodeName") or "<none>",
            "<none>"]


def _namespace_row(obj: Obj, now: datetime) -> list[Any]:
    return [obj["metadata"]["name"], (obj.get("status") or {}).get("phase", "Active"),
            _age(obj, now)]


def _event_row(obj: Obj, now: datetime) -> list[Any]:
    involved = obj.get("involvedObject") or {}
    first = obj.get("firstTimestamp") or obj.get("eventTime")
    last = obj.get("lastTimestamp") or first
    target = involved.get("kind", "").lower()
    if involved.get("name"):
        target = f"{target}/{involved['name']}"
    source = obj.get("source") or {}
    source_text = ", ".join(v for v in (source.get("component"), source.get("host")) if v)
    return [_since(last, now), obj.get("type", ""), obj.get("reason", ""), target,
            involved.get("fieldPath", ""), source_text, (obj.get("message") or "").strip(),
            _since(first, now), obj.get("count") or 1, obj["metadata"]["name"]]


def _lease_row(obj: Obj, now: datetime) -> list[Any]:
    return [obj["metadata"]["name"], (obj.get("spec") or {}).get("holderIdentity") or "",
            _age(obj, now)]


_WIDE_WORKLOAD = (Column("Containers", priority=1), Column("Images", priority=1),
                  Column("Selector", priority=1))

TABLES: dict[str, tuple[tuple[Column, ...], Row]] = {
    "apps/v1/deployments": ((Column("Name"), Column("Ready"), Column("Up-to-date", "integer"),
                             Column("Available", "integer"), Column("Age"), *_WIDE_WORKLOAD),
                            _deployment_row),
    "apps/v1/replicasets": ((Column("Name"), Column("Desired", "integer"),
                             Column("Current", "integer"), Column("Ready", "integer"),
                             Column("Age"), *_WIDE_WORKLOAD), _replicaset_row),
    "/v1/pods": ((Column("Name"), Column("Ready"), Column("Status"), Column("Restarts"),
                  Column("Age"), Column("IP", priority=1), Column("Node", priority=1),
                  Column("Nominated Node", priority=1), Column("Readiness Gates", priority=1)),
                 _pod_row),
    "/v1/namespaces": ((Column("Name"), Column("Status"), Column("Age")), _namespace_row),
    "/v1/events": ((Column("Last Seen"), Column("Type"), Column("Reason"), Column("Object"),
                    Column("Subobject", priority=1), Column("Source", priority=1),
                    Column("Message"), Column("First Seen", priority=1),
                    Column("Count", "integer", priority=1), Column("Name", priority=1)),
                   _event_row),
    "coordination.k8s.io/v1/leases": ((Column("Name"), Column("Holder"), Column("Age")),
                                      _lease_row),
}


def _default_table(obj: Obj, now: datetime) -> list[Any]:
    return [obj["metadata"]["name"], _age(obj, now)]


def table(kind: ResourceKind, objects: list[Obj], resource_version: str, now: datetime,
          include_object: str = "Metadata") -> Obj:
    """A meta.k8s.io/v1 Table, what kubectl prints without ``-o``."""
    columns, row = TABLES.get(kind.gvr, ((Column("Name"), Column("Age")), _default_table))
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [c.definition() for c in columns],
        "rows": [{"cells": row(o, now), "object": _row_object(o, include_object)}
                 for o in objects],
    }


def _row_object(obj: Obj, include_object: str) -> Obj | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"]}


# --------------------------------------------------------------------------- handlers


def _wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "as=Table" in accept and "g=meta.k8s.io" in accept


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "t", "yes")


def _error(err: ApiError) -> web.Response:
    return web.json_response(err.status(), status=err.code)


_NO_RESOURCE = ApiError(404, "NotFound", "the server could not find the requested resource")


Handler = Callable[[web.Request, ApiPath], Awaitable[web.StreamResponse]]


class KubernetesApi:
    """The request handlers over one :class:`Cluster`."""

    def __init__(self, cluster: Cluster, host_port: Callable[[], str], *,
                 policy: Policy | None = None, audit: Audit | None = None):
        self.cluster = cluster
        self._host_port = host_port
        self.policy = policy
        self.audit = audit or Audit()
        self.closing = asyncio.Event()
        self.metrics = SandboxMetrics.of(cluster)
        self._handlers: dict[tuple[str, str], Handler] = {
            ("GET", "collection"): self.list_or_watch,
            ("GET", "object"): self.get,
            ("POST", "collection"): self.create,
            ("PUT", "object"): self.replace,
            ("PATCH", "object"): self.patch,
            ("DELETE", "object"): self.delete,
        }
        scale: dict[str, Handler] = {"GET": self.get_scale, "PUT": self.replace_scale,
                                     "PATCH": self.patch_scale}
        status: dict[str, Handler] = {"GET": self.get, "PUT": self.replace_status,
                                      "PATCH": self.patch_status}
        self._subresources: dict[tuple[str, str], dict[str, Handler]] = {
            ("pods", "log"): {"GET": self.pod_log},
            ("pods", "status"): status,
            ("deployments", "scale"): scale,
            ("deployments", "status"): status,
            ("replicasets", "scale"): scale,
            ("replicasets", "status"): status,
            ("jobs", "status"): status,
            ("cronjobs", "status"): status,
        }

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=[self._authorize])
        app.router.add_get("/version", self.version)
        app.router.add_get("/version/", self.version)  # what the python client asks for
        for probe in ("/healthz", "/livez", "/readyz"):
            app.router.add_get(probe, self.healthy)
        app.router.add_get("/metrics", self.serve_metrics)
        app.router.add_get("/api", self.core_versions)
        app.router.add_get("/apis", self.groups)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        self.closing.set()

    @web.middleware
    async def _authorize(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        """Classify and record every request; refuse what the policy does not grant (403)."""
        user = self.policy.authenticate(request.headers.get("Authorization")) if self.policy else None
        attributes = classify(request.method, request.path, request.query_string, user or ADMIN)
        allowed, reason = (True, "")
        if user is not None and self.policy is not None:
            allowed, reason = self.policy.authorize(attributes)
        self.audit.record(attributes, allowed)
        if not allowed:
            return _error(forbidden(attributes, reason))
        return await handler(request)

    # ----------------------------------------------------------------- discovery

    async def version(self, _request: web.Request) -> web.Response:
        major, minor = KUBERNETES_VERSION
        return web.json_response({
            "major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0-sandbox",
            "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.23.0", "compiler": "gc", "platform": "linux/amd64",
        })

    async def healthy(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def serve_metrics(self, _request: web.Request) -> web.Response:
        """Per-pod series of every Deployment, for a real Prometheus (sandbox/metrics.py)."""
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def core_versions(self, request: web.Request) -> web.Response:
        if _wants_aggregated(request):
            return _aggregated(aggregated_discovery(self.cluster, core=True))
        return web.json_response({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": self._host_port()}],
        })

    async def groups(self, request: web.Request) -> web.Response:
        if _wants_aggregated(request):
            return _aggregated(aggregated_discovery(self.cluster, core=False))
        return web.json_response({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_api_group(g, vs) for g, vs in _group_versions(self.cluster).items() if g],
        })

    # ----------------------------------------------------------------- routing

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if len(parts) == 2 and parts[0] == "apis":  # /apis/<group>
            versions = _group_versions(self.cluster).get(parts[1])
            if versions and parts[1] and request.method == "GET":
                return web.json_response({"kind": "APIGroup", "apiVersion": "v1",
                                          **_api_group(parts[1], versions)})
        target = resolve(self.cluster, request.path)
        if target is None:
            return _error(_NO_RESOURCE)
        if target.kind is None:
            if request.method != "GET":
                return _method_not_allowed(request)
            return web.json_response(resource_list(self.cluster, target.group, target.version))
        if target.scope == "subresource":
            assert target.subresource
            served = self._subresources.get((target.kind.resource, target.subresource))
            if served is None:
                return _error(_NO_RESOURCE)
            handler = served.get(request.method)
        else:
            handler = self._handlers.get((request.method, target.scope))
        if handler is None:
            return _method_not_allowed(request)
        try:
            return await handler(request, target)
        except ApiError as err:
            return _error(err)

    # ----------------------------------------------------------------- verbs

    async def get(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        assert target.kind and target.name
        obj = self.cluster.get(target.kind, target.namespace, target.name)
        if _wants_table(request):
            return web.json_response(table(target.kind, [obj], obj["metadata"]["resourceVersion"],
                                           self.cluster.now(), _include(request)))
        return web.json_response(obj)

    async def list_or_watch(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        assert target.kind
        if _truthy(request.query.get("watch")):
            return await self.watch(request, target)
        items, rv = self.cluster.list(target.kind, target.namespace,
                                      request.query.get("labelSelector"),
                                      request.query.get("fieldSelector"))
        if _wants_table(request):
            return web.json_response(table(target.kind, items, rv, self.cluster.now(),
                                           _include(request)))
        return web.json_response({
            "kind": f"{target.kind.kind}List", "apiVersion": target.kind.api_version,
            "metadata": {"resourceVersion": rv}, "items": items,
        })

    async def create(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        assert target.kind
        created = self.cluster.create(target.kind, await _body(request), target.namespace)
        return web.json_response(created, status=201)

    async def replace(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        assert target.kind and target.name
        obj = await _body(request)
        meta = obj.setdefault("metadata", {})
        if meta.get("name", target.name) != target.name:
            raise ApiError.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({target.name})")
        meta["name"] = target.name
        if target.namespace:
            meta["namespace"] = target.namespace
        return web.json_response(self.cluster.update(target.kind, obj))

    async def patch(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        assert target.kind and target.name
        change = await _patcher(request)
        return web.json_response(
            self.cluster.modify(target.kind, target.namespace, target.name, change))

    # ----------------------------------------------------------------- /status

    async def replace_status(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        """PUT …/status: only the status changes (a stale resourceVersion is a Conflict)."""
        assert target.kind and target.name
        body = await _body(request)
        given = (body.get("metadata") or {}).get("resourceVersion")

        def change(obj: Obj) -> Obj:
            if given and given != obj["metadata"]["resourceVersion"]:
                raise ApiError.conflict(target.kind, target.name)  # type: ignore[arg-type]
            obj["status"] = body.get("status") or {}
            return obj

        return web.json_response(
            self.cluster.modify(target.kind, target.namespace, target.name, change))

    async def patch_status(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        """PATCH …/status: the patch applies to the object, but only its status is kept."""
        assert target.kind and target.name
        patch = await _patcher(request)

        def change(obj: Obj) -> Obj:
            obj["status"] = patch(copy.deepcopy(obj)).get("status") or {}
            return obj

        return web.json_response(
            self.cluster.modify(target.kind, target.namespace, target.name, change))

    # ----------------------------------------------------------------- /scale

    async def get_scale(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        assert target.kind and target.name
        return web.json_response(scale_of(self.cluster.get(target.kind, target.namespace,
                                                           target.name)))

    async def replace_scale(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        """PUT …/scale with an autoscaling/v1 Scale (``kubectl scale --current-replicas``)."""
        assert target.kind and target.name
        body = await _body(request)
        given = (body.get("metadata") or {}).get("resourceVersion")

        def change(obj: Obj) -> Obj:
            if given and given != obj["metadata"]["resourceVersion"]:
                raise ApiError.conflict(target.kind, target.name)  # type: ignore[arg-type]
            return _scaled(obj, body, target)

        updated = self.cluster.modify(target.kind, target.namespace, target.name, change)
        return web.json_response(scale_of(updated))

    async def patch_scale(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        """PATCH …/scale (what ``kubectl scale`` sends: a merge patch of spec.replicas)."""
        assert target.kind and target.name
        patch = await _patcher(request)

        def change(obj: Obj) -> Obj:
            return _scaled(obj, patch(scale_of(obj)), target)

        updated = self.cluster.modify(target.kind, target.namespace, target.name, change)
        return web.json_response(scale_of(updated))

    # ----------------------------------------------------------------- pods/log

    async def pod_log(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        """GET …/pods/{name}/log: the kubelet's answer, streamed; ``follow`` until the client
        goes, the container ends or the server stops."""
        assert target.name and target.namespace
        now = self.cluster.now()
        options = logs.LogOptions.from_query(request.query, now)
        pod = self.cluster.get(PODS, target.namespace, target.name)
        run = logs.select_run(pod, options)
        container = logs.container_name(pod, options.container)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        if run is None:
            return response
        budget = options.limit_bytes
        first, position, regular = run.window(now, options)
        try:
            budget = await _send_log(response, run, first, position, regular, options, budget)
            while options.follow and run.finished_ns is None and (budget is None or budget > 0):
                if await self._closing_within(FOLLOW_POLL) or _gone(request):
                    break
                now = self.cluster.now()
                try:
                    current_pod: Obj | None = self.cluster.get(PODS, target.namespace, target.name)
                except ApiError:
                    current_pod = None
                finished = logs.ended(current_pod, run, container, now)
                current = finished or run
                _, end, regular = current.window(now, logs.LogOptions())
                first = min(position, regular)  # lines written past its end: the trace, at least
                budget = await _send_log(response, current, first, end, regular, options, budget)
                position = end
                if finished:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def _closing_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)
        return self.closing.is_set()

    async def delete(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        """DELETE; dependents follow unless propagationPolicy (query or DeleteOptions) is Orphan."""
        assert target.kind and target.name
        options = await _json(request) if request.can_read_body else {}
        policy = request.query.get("propagationPolicy") or (
            options.get("propagationPolicy") if isinstance(options, dict) else None)
        if _truthy(request.query.get("orphanDependents")):
            policy = "Orphan"
        return web.json_response(self.cluster.delete(
            target.kind, target.namespace, target.name, propagation=policy or "Background"))

    # ----------------------------------------------------------------- watch

    async def watch(self, request: web.Request, target: ApiPath) -> web.StreamResponse:
        """Stream JSON lines ``{"type": …, "object": …}`` until timeoutSeconds or shutdown."""
        assert target.kind
        kind = target.kind
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Obj]] = asyncio.Queue()

        def notify(type_: str, obj: Obj) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the server stopped
                loop.call_soon_threadsafe(queue.put_nowait, (type_, obj))

        query = request.query
        as_table, include = _wants_table(request), _include(request)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            watch = self.cluster.watch(
                kind, target.namespace, notify, resource_version=query.get("resourceVersion"),
                label_selector=query.get("labelSelector"),
                field_selector=query.get("fieldSelector"))
        except ApiError as err:
            if err.code != 410:
                raise
            await response.prepare(request)
            await _write_event(response, "ERROR", err.status())
            return response
        await response.prepare(request)
        try:
            if _truthy(query.get("sendInitialEvents")):
                await self._initial_events_end(response, kind)
            timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
            deadline = loop.time() + timeout
            while (remaining := deadline - loop.time()) > 0 and not self.closing.is_set():
                event = await self._next(queue, remaining)
                if event is None:
                    continue
                type_, obj = event
                if as_table:
                    obj = table(kind, [obj], obj["metadata"]["resourceVersion"],
                                self.cluster.now(), include)
                await _write_event(response, type_, obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.cluster.unwatch(watch)
        return response

    async def _initial_events_end(self, response: web.StreamResponse, kind: ResourceKind) -> None:
        """The BOOKMARK that ends the initial events of a streaming list (sendInitialEvents)."""
        await _write_event(response, "BOOKMARK", {
            "apiVersion": kind.api_version, "kind": kind.kind,
            "metadata": {"resourceVersion": self.cluster.resource_version,
                         "annotations": {"k8s.io/initial-events-end": "true"}},
        })

    async def _next(self, queue: asyncio.Queue[tuple[str, Obj]],
                    timeout: float) -> tuple[str, Obj] | None:
        """The next event; None after ``timeout`` or when the server shuts down."""
        getter = asyncio.ensure_future(queue.get())
        closing = asyncio.ensure_future(self.closing.wait())
        done, pending = await asyncio.wait({getter, closing}, timeout=timeout,
                                           return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return getter.result() if getter in done else None


def scale_of(obj: Obj) -> Obj:
    """The autoscaling/v1 Scale of a Deployment or ReplicaSet."""
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    replicas = spec.get("replicas")
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                         "creationTimestamp") if k in meta},
        "spec": {"replicas": 1 if replicas is None else replicas},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                   "selector": format_selector(spec.get("selector")).replace("<none>", "")},
    }


def _scaled(obj: Obj, scale: Obj, target: ApiPath) -> Obj:
    assert target.kind and target.name
    replicas = (scale.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise ApiError(422, "Invalid", f'Scale.autoscaling "{target.name}" is invalid: '
                                       f"spec.replicas: Invalid value: {json.dumps(replicas)}: "
                                       "must be greater than or equal to 0",
                       {"name": target.name, "group": "autoscaling", "kind": "Scale",
                        "causes": [{"reason": "FieldValueInvalid", "field": "spec.replicas",
                                    "message": "Invalid value: must be greater than or equal "
                                               "to 0"}]})
    obj.setdefault("spec", {})["replicas"] = replicas
    return obj


async def _patcher(request: web.Request) -> Callable[[Obj], Obj]:
    """The request's patch (JSON, merge or strategic merge, by Content-Type) as a function."""
    apply = PATCHES.get(request.content_type)
    if apply is None:
        raise ApiError(415, "UnsupportedMediaType",
                       f"the body of the request was in an unknown format - accepted media "
                       f"types include: {', '.join(PATCHES)}")
    patch = await _json(request)

    def change(obj: Obj) -> Obj:
        try:
            patched = apply(obj, patch)
            if not isinstance(patched, dict):
                raise PatchError("the patched document is not an object")
            return patched
        except PatchError as err:
            raise ApiError(422, "Invalid", f"the server rejected our request due to an error "
                                           f"in our request: {err}") from None

    return change


async def _send_log(response: web.StreamResponse, run: logs.Run, first: int, end: int,
                    regular: int, options: logs.LogOptions, budget: int | None) -> int | None:
    """Write entries ``first``..``end``; returns what is left of a limitBytes budget."""
    for chunk in logs.render(run, first, end, regular, timestamps=options.timestamps,
                             limit_bytes=budget):
        await response.write(chunk)
        if budget is not None:
            budget -= len(chunk)
    return budget


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _wants_aggregated(request: web.Request) -> bool:
    return "as=APIGroupDiscoveryList" in request.headers.get("Accept", "")


def _aggregated(body: Obj) -> web.Response:
    return web.Response(body=json.dumps(body).encode(),
                        headers={"Content-Type": AGGREGATED_DISCOVERY})


def _include(request: web.Request) -> str:
    return request.query.get("includeObject", "Metadata")


def _method_not_allowed(request: web.Request) -> web.Response:
    return _error(ApiError(405, "MethodNotAllowed",
                           f"the server does not allow this method on the requested resource "
                           f"({request.method} {request.path})"))


async def _json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"null")
    except ValueError as err:
        raise ApiError.bad_request(f"the request body is not valid JSON: {err}") from None


async def _body(request: web.Request) -> Obj:
    if request.content_type not in ("application/json", "application/octet-stream"):
        raise ApiError(415, "UnsupportedMediaType",
                       f"the body of the request was in an unknown format - accepted media types "
                       f"include: application/json (not {request.content_type})")
    body = await _json(request)
    if not isinstance(body, dict):
        raise ApiError.bad_request("the request body must be a JSON object")
    return body


async def _write_event(response: web.StreamResponse, type_: str, obj: Obj) -> None:
    await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")


# --------------------------------------------------------------------------- the server


class SandboxServer:
    """The emulated API on its own thread and event loop.

    >>> with SandboxServer() as server:          # seeded from sandbox/world.py
    ...     server.write_kubeconfig(path)         # kubectl --kubeconfig path get deploy -n prod
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, cluster: Cluster | None = None,
                 *, tick_interval: float | None = 0.25, timing: Timing | None = None,
                 rbac: Policy | None = None, tls: bool | None = None):
        """Without ``cluster``: the seeded world with the controllers at ``timing`` (default:
        the speed ``OPSBOT_SANDBOX_SPEED`` says). A ``cluster`` given is served as it is, with
        the controllers only when ``timing`` is given too. ``rbac``: ServiceAccount tokens are
        authorized by it (see :meth:`write_kubeconfig`); everything else stays unrestricted.
        ``tls`` (default: when ``rbac`` is given): HTTPS with a self-signed certificate, as
        kubectl sends tokens only over TLS (sandbox/tls.py)."""
        self.rbac = rbac
        self.certificate = self_signed(host) if (rbac is not None if tls is None else tls) else None
        # Over HTTPS kubectl asks for a password when the user has no credentials: the admin gets
        # a token too, one the policy does not know (so it stays unrestricted).
        self.admin_token = secrets.token_urlsafe(24) if self.certificate else None
        self.audit = Audit()
        self.host = host
        self.port = port
        self.cluster = cluster if cluster is not None else seed(Cluster())
        self.controllers: Controllers | None = running(self.cluster)
        if self.controllers is None and (cluster is None or timing is not None):
            self.controllers = install(self.cluster, timing or Timing.from_env())
        self.tick_interval = tick_interval
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.certificate else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> SandboxServer:
        """Start serving; returns once the port listens (raises if it cannot)."""
        if self._thread is not None:
            raise RuntimeError("the sandbox server is already running")
        self._ready.clear()
        self._failure = None
        self._thread = threading.Thread(target=self._run, name="sandbox-kube-api", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self._thread.join()
            self._thread = None
            raise self._failure
        return self

    def stop(self) -> None:
        """Stop serving (ends open watches) and wait for the thread to finish."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = None

    def write_kubeconfig(self, path: Path | str, *, user: str | None = None) -> Path:
        """A kubeconfig with the context ``sandbox``. Without ``user``: the unrestricted admin,
        plus a context per ServiceAccount of the RBAC policy (:func:`sa_context`). With ``user``
        (``system:serviceaccount:NS:NAME``): only that identity, still as context ``sandbox``, so
        a config written for the sandbox runs as the ServiceAccount unchanged."""
        if user is not None:
            if self.rbac is None:
                raise ValueError("the sandbox has no RBAC policy: every identity is the admin")
            namespace = user.split(":")[2] if user.startswith("system:serviceaccount:") else "default"
            return write_kubeconfig(path, self.url, token=self.rbac.token_for(user),
                                    namespace=namespace, ca=self._ca())
        others = [Identity(sa_context(who), token, who.split(":")[2])
                  for token, who in (self.rbac.tokens.items() if self.rbac else ())
                  if who.startswith("system:serviceaccount:")]
        return write_kubeconfig(path, self.url, token=self.admin_token, others=others,
                                ca=self._ca())

    def _ca(self) -> bytes | None:
        return self.certificate.cert_pem if self.certificate else None

    def requests_seen(self, user: str | None = None, *, allowed: bool | None = None) -> set[Access]:
        """The distinct (verb, group, resource[/subresource], namespace) served, by ``user``
        (None: anyone; the admin is ``kubernetes-admin``); ``allowed`` filters on RBAC's answer."""
        return self.audit.seen(user, allowed=allowed)

    def reset_requests(self) -> None:
        """Forget what :meth:`requests_seen` reports (e.g. after a test's setup)."""
        self.audit.reset()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ----------------------------------------------------------------- the thread

    def _run(self) -> None:
        # A plain selector loop made here, whatever event loop policy the process uses.
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            try:
                runner.run(self._serve())
            except BaseException as err:  # reported to start() when it happens during startup
                self._failure = err
            finally:
                self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        api = KubernetesApi(self.cluster, lambda: f"{self.host}:{self.port}", policy=self.rbac,
                            audit=self.audit)
        runner = web.AppRunner(api.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True,
                               ssl_context=self.certificate.context if self.certificate else None)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            ticker = asyncio.create_task(self._tick()) if self.tick_interval else None
            await self._stop.wait()
            if ticker:
                ticker.cancel()
        finally:
            api.closing.set()
            await runner.cleanup()

    async def _tick(self) -> None:
        assert self.tick_interval
        while True:
            await asyncio.sleep(self.tick_interval)
            self.cluster.tick()


def sa_context(user: str) -> str:
    """The kubeconfig context of a ServiceAccount: ``sa-NAMESPACE-NAME``."""
    _, _, namespace, name = user.split(":", 3)
    return f"sa-{namespace}-{name}"


def serve_forever(host: str, port: int, kubeconfig: Path | None, *,
                  rbac: list[Path] | None = None, sa_kubeconfig: Path | None = None) -> None:
    """Run the sandbox API until SIGINT/SIGTERM (the ``opsbot sandbox`` command).

    Writes a kubeconfig to ``kubeconfig`` (kept afterwards) or to a temporary file (removed).
    With ``rbac`` manifests, their ServiceAccounts get tokens that the RBAC in them restricts: a
    context ``sa-NS-NAME`` each in ``kubeconfig``, and ``sa_kubeconfig`` for opsbot/opsbot (else
    the first) alone, as context ``sandbox``, so configs written for the sandbox run with its
    rights.
    """
    policy = Policy.load(*rbac) if rbac else None
    accounts = sorted(set(policy.tokens.values())) if policy else []
    if sa_kubeconfig and not accounts:
        raise SystemExit("opsbot sandbox: --sa-kubeconfig needs --rbac manifests with a ServiceAccount")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    with tempfile.TemporaryDirectory(prefix="opsbot-sandbox-") as tmp:
        path = kubeconfig or Path(tmp) / "kubeconfig"
        try:
            with SandboxServer(host, port, rbac=policy) as server:
                server.write_kubeconfig(path)
                print(f"sandbox Kubernetes API at {server.url}", flush=True)
                print(f"kubeconfig: {path}  (kubectl --kubeconfig {path} get deploy -A)", flush=True)
                for user in accounts:
                    print(f"  context {sa_context(user)}: {user}, restricted by RBAC "
                          f"(kubectl --kubeconfig {path} --context {sa_context(user)} …)", flush=True)
                if sa_kubeconfig:
                    first = next((u for u in accounts if u.endswith(":opsbot:opsbot")), accounts[0])
                    server.write_kubeconfig(sa_kubeconfig, user=first)
                    print(f"kubeconfig of {first} alone: {sa_kubeconfig} (context {CONTEXT})",
                          flush=True)
                while not stop.wait(0.5):
                    pass
                print("sandbox stopped", flush=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
