"""The Kubernetes adapter: reads a Deployment, its ReplicaSets, Pods and Events.

One ``ApiClient`` per kubeconfig context, built lazily (never at import time) and closed by
:meth:`KubernetesPlatform.close`. The official client blocks, so every call runs in a worker
thread with a request timeout. Platform faults (unreachable, 403, 404, timeouts, a broken
kubeconfig) become a :class:`TargetState` with a short ``error`` for users, never an exception.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from commands.models import EventSummary, PodState, RolloutState, TargetState
from config.settings import KubernetesTarget

T = TypeVar("T")

REVISION = "deployment.kubernetes.io/revision"
MAX_WARNINGS = 5
_LONG_AGO = datetime.min.replace(tzinfo=UTC)

# Faults of the platform (as opposed to bugs here): reported in TargetState.error.
PLATFORM_FAULTS = (client.ApiException, urllib3.exceptions.HTTPError, ConfigException, OSError)


class KubernetesPlatform:
    """The ``Platform`` for services that run as Kubernetes Deployments."""

    name = "kubernetes"

    def __init__(self, kubeconfig: Path | None, *, request_timeout: float = 10):
        self.kubeconfig = kubeconfig
        self.request_timeout = request_timeout
        self._clients: dict[str | None, client.ApiClient] = {}
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- clients

    def _client(self, context: str | None) -> client.ApiClient:
        """The client for ``context`` (None: the kubeconfig's current one); blocking."""
        with self._lock:
            api = self._clients.get(context)
            if api is None:
                api = self._clients[context] = client.ApiClient(self._configuration(context))
            return api

    def _configuration(self, context: str | None) -> client.Configuration:
        if self.kubeconfig and not self.kubeconfig.exists():
            raise ConfigException("the file does not exist")
        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(self.kubeconfig) if self.kubeconfig else None,
            context=context, client_configuration=configuration, persist_config=False)
        # One retry for a dropped pooled connection; a slow cluster is not asked twice.
        configuration.retries = urllib3.Retry(total=1, read=0, redirect=0, status=0)
        return configuration

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, _request_timeout=self.request_timeout, **kwargs)

    async def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for api in clients:
            await asyncio.to_thread(api.close)

    # ----------------------------------------------------------------- reads

    async def get_state(self, service: str, env: str, target: KubernetesTarget) -> TargetState:
        """What ``service`` runs in ``env``: image, replica counts, rollout, pods, warnings."""
        state = TargetState(service=service, env=env, platform=self.name, where=target.describe())
        host = None
        try:
            api = await asyncio.to_thread(self._client, target.context)
            host = api.configuration.host
            apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
            deployment = await self._call(apps.read_namespaced_deployment,
                                          target.deployment, target.namespace)
            selector = label_selector(deployment.spec.selector)
            replicasets, pods, events = await asyncio.gather(
                self._call(apps.list_namespaced_replica_set, target.namespace,
                           label_selector=selector),
                self._call(core.list_namespaced_pod, target.namespace, label_selector=selector),
                self._call(core.list_namespaced_event, target.namespace,
                           field_selector="type=Warning"),
            )
        except PLATFORM_FAULTS as err:
            state.error = describe_fault(err, target, host, self.request_timeout, self.kubeconfig)
            return state
        return fill_state(state, target, deployment, replicasets.items, pods.items, events.items)


# --------------------------------------------------------------------------- pure mapping


def fill_state(state: TargetState, target: KubernetesTarget, deployment: Any,
               replicasets: list[Any], pods: list[Any], events: list[Any]) -> TargetState:
    """Map the read objects onto ``state`` (no I/O)."""
    spec, status = deployment.spec, deployment.status
    state.image = container_image(spec.template.spec, target.container_name)
    if state.image is None:
        state.error = (f"deployment {target.namespace}/{target.deployment} has no container "
                       f"{target.container_name!r}")
    state.version = image_version(state.image)
    state.desired = _replicas(spec)
    state.updated = (status and status.updated_replicas) or 0
    state.ready = (status and status.ready_replicas) or 0
    state.available = (status and status.available_replicas) or 0
    state.rollout, state.rollout_message = rollout_state(deployment)
    state.revision = revision(deployment.metadata)
    state.pods = sorted((pod_state(p, target.container_name) for p in pods), key=lambda p: p.name)
    owned = [rs.metadata.name for rs in replicasets if _owned_by(rs, deployment)]
    state.warnings = warnings_about(deployment.metadata.name, owned,
                                    [p.metadata.name for p in pods], events)
    return state


def label_selector(selector: Any) -> str:
    """A V1LabelSelector as a labelSelector query string."""
    parts = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for expr in selector.match_expressions or []:
        values = ",".join(expr.values or [])
        parts.append({"In": f"{expr.key} in ({values})", "NotIn": f"{expr.key} notin ({values})",
                      "Exists": expr.key, "DoesNotExist": f"!{expr.key}"}[expr.operator])
    return ",".join(parts)


def container_image(pod_spec: Any, container: str) -> str | None:
    for c in pod_spec.containers or []:
        if c.name == container:
            return c.image
    return None


def image_version(image: str | None) -> str | None:
    """The tag of ``repo/name:tag`` (not a registry port); ``latest`` when untagged."""
    if not image:
        return None
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return last.rsplit(":", 1)[1]
    return digest[:19] if digest else "latest"


def revision(metadata: Any) -> int | None:
    value = (metadata.annotations or {}).get(REVISION)
    return int(value) if value and value.isdigit() else None


def _replicas(spec: Any) -> int:
    return 1 if spec.replicas is None else spec.replicas


def rollout_state(deployment: Any) -> tuple[RolloutState, str | None]:
    """``kubectl rollout status`` semantics, plus paused and scaled-down."""
    spec, status, meta = deployment.spec, deployment.status, deployment.metadata
    desired = _replicas(spec)
    if spec.paused:
        return "paused", "the rollout is paused"
    if desired == 0:
        return "scaled-down", "scaled down to 0 replicas"
    if status is None or (status.observed_generation or 0) < (meta.generation or 0):
        return "progressing", "waiting for the deployment controller to see the new spec"
    progressing = next((c for c in status.conditions or [] if c.type == "Progressing"), None)
    if progressing and progressing.reason == "ProgressDeadlineExceeded":
        return "failed", progressing.message or "the rollout exceeded its progress deadline"
    updated, total = status.updated_replicas or 0, status.replicas or 0
    available = status.available_replicas or 0
    if updated < desired:
        return "progressing", f"{updated} of {desired} new replicas updated"
    if total > updated:
        return "progressing", f"{total - updated} old replicas pending termination"
    if available < updated:
        return "progressing", f"{available} of {updated} updated replicas available"
    return "complete", None


def pod_state(pod: Any, container: str) -> PodState:
    status = pod.status
    statuses = (status and status.container_statuses) or []
    ready = any(c.type == "Ready" and c.status == "True" for c in (status and status.conditions) or [])
    return PodState(
        name=pod.metadata.name,
        phase=(status and status.phase) or "Unknown",
        ready=ready,
        restarts=sum(cs.restart_count or 0 for cs in statuses),
        reason=pod_reason(pod),
        version=image_version(container_image(pod.spec, container)),
        started_at=status and status.start_time,
    )


def pod_reason(pod: Any) -> str | None:
    """Why a pod is not simply running: Terminating, CrashLoopBackOff, ImagePullBackOff, …"""
    if pod.metadata.deletion_timestamp:
        return "Terminating"
    status = pod.status
    for cs in (status and status.container_statuses) or []:
        state = cs.state
        if state and state.waiting and state.waiting.reason:
            return state.waiting.reason
        if state and state.terminated:
            return state.terminated.reason or f"exit code {state.terminated.exit_code}"
    return status and status.reason


def _owned_by(obj: Any, owner: Any) -> bool:
    return any(ref.uid == owner.metadata.uid for ref in obj.metadata.owner_references or [])


def warnings_about(deployment: str, replicasets: list[str], pods: list[str],
                   events: list[Any]) -> list[EventSummary]:
    """Warning events about the deployment, its ReplicaSets and their pods; newest first.

    Pods are matched by name and by ReplicaSet prefix, so events of pods already replaced
    (a crash loop's earlier pods) still count.
    """
    wanted = {("Deployment", deployment)} | {("ReplicaSet", rs) for rs in replicasets}
    pod_names, prefixes = set(pods), tuple(f"{rs}-" for rs in replicasets)

    def about(event: Any) -> bool:
        obj = event.involved_object
        if obj.kind == "Pod":
            return obj.name in pod_names or bool(prefixes and obj.name.startswith(prefixes))
        return (obj.kind, obj.name) in wanted

    summaries = [_summary(e) for e in events if e.type == "Warning" and about(e)]
    summaries.sort(key=lambda s: s.last_seen or _LONG_AGO, reverse=True)
    return summaries[:MAX_WARNINGS]


def _summary(event: Any) -> EventSummary:
    series = event.series
    last_seen = ((series and series.last_observed_time) or event.last_timestamp
                 or event.event_time or event.first_timestamp or event.metadata.creation_timestamp)
    obj = event.involved_object
    return EventSummary(
        type=event.type, reason=event.reason or "", message=(event.message or "").strip(),
        object=f"{obj.kind.lower()}/{obj.name}",
        count=(series and series.count) or event.count or 1, last_seen=last_seen,
    )


# --------------------------------------------------------------------------- faults


def describe_fault(err: Exception, target: KubernetesTarget, host: str | None, timeout: float,
                   kubeconfig: Path | None) -> str:
    """A short message for users about a platform fault."""
    where = f"{target.namespace}/{target.deployment}"
    if isinstance(err, client.ApiException):
        return _api_fault(err, where, host)
    if isinstance(err, urllib3.exceptions.HTTPError):
        return f"cannot reach the cluster at {host}: {_network_problem(err, timeout)}"
    source = f"kubeconfig {kubeconfig}" if kubeconfig else "the default kubeconfig"
    context = f" (context {target.context})" if target.context else ""
    return f"{source}{context}: {err}"


def _api_fault(err: client.ApiException, where: str, host: str | None) -> str:
    message = _status_message(err)
    if err.status == 404:
        return f"deployment {where} not found"
    if err.status == 401:
        return f"the cluster at {host} did not accept our credentials (401): {message}"
    if err.status == 403:
        return f"not allowed to read deployment {where}: {message}"
    if not err.status:  # raised by the client itself, e.g. a TLS failure
        return f"cannot reach the cluster at {host}: {' '.join(str(err.reason).split())}"
    return f"the cluster answered {err.status} {err.reason}: {message}"


def _status_message(err: client.ApiException) -> str:
    """The ``message`` of a Status body, else the HTTP reason."""
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(err.reason or "no details")


def _network_problem(err: urllib3.exceptions.HTTPError, timeout: float) -> str:
    reason = err.reason if isinstance(err, urllib3.exceptions.MaxRetryError) else err
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "unknown host"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        text = str(reason).lower()
        return "connection refused" if "refused" in text else "cannot connect"
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, urllib3.exceptions.ProtocolError):
        return "the connection broke"
    return str(reason)
