"""The Kubernetes adapter: reads a Deployment, its ReplicaSets, Pods and Events; deploys,
watches rollouts, rolls back and streams logs.

One ``ApiClient`` per kubeconfig context, built lazily (never at import time) and closed by
:meth:`KubernetesPlatform.close`. The official client blocks, so every call runs in a worker
thread with a request timeout. Platform faults (unreachable, 403, 404, timeouts, a broken
kubeconfig) become a :class:`TargetState` with a short ``error`` for users in ``get_state``,
and typed :class:`PlatformError` exceptions (NotFound, Conflict, Unreachable) everywhere else;
never a traceback.

The write side works on the API's own JSON (``_preload_content=False``) rather than the
generated models: a pod template copied back by a rollback keeps every field the server sent,
including fields this client version does not know.

Semantics follow kubectl: ``set image`` (one strategic-merge patch), ``rollout status``
(observedGeneration, ProgressDeadlineExceeded, updated/old/available replicas, plus early
detection of crash-looping or unpullable pods of the new ReplicaSet), ``rollout history``
(ReplicaSets owned by the Deployment, by revision) and ``rollout undo`` (pkg/polymorphichelpers
rollback.go: the RS's template without ``pod-template-hash`` and its annotations, but for a skip
list, written back with a JSON patch).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import json
import math
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import SERVICE_TOKEN_FILENAME

from commands.logs import LogLine, LogQuery, parse_k8s_line
from commands.models import (
    EventSummary,
    PodState,
    RevisionInfo,
    RolloutProgress,
    RolloutState,
    TargetState,
)
from commands.targets.base import (
    Conflict,
    JobRun,
    NotFound,
    PlatformError,
    PruneResult,
    Unreachable,
    Unsupported,
)
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
        # The resourceVersion of each Deployment as ``progress`` (or a watch) last saw it, by
        # (context, namespace, name): where ``wait_for_change`` watches from.
        self._seen: dict[tuple[str | None, str, str], str] = {}

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
        if self.kubeconfig is None and _in_cluster():
            # A pod with a ServiceAccount token and no kubeconfig: the bot deployed by deploy/kubernetes.
            config.load_incluster_config(client_configuration=configuration)
        else:
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

    # ----------------------------------------------------------------- plumbing of the write side

    async def _session(self, target: KubernetesTarget) -> _Session:
        try:
            api = await asyncio.to_thread(self._client, target.context)
        except PLATFORM_FAULTS as err:
            raise PlatformError(describe_fault(err, target, None, self.request_timeout,
                                               self.kubeconfig)) from err
        return _Session(api, target, self.request_timeout)

    # ----------------------------------------------------------------- writes

    async def set_image(self, service: str, env: str, target: KubernetesTarget, image: str,
                        change_cause: str) -> int:
        """``kubectl set image`` plus the change-cause annotation, in one strategic-merge patch.

        The patch carries the resourceVersion that was read, so a Deployment changed meanwhile
        is a 409, not a patch of a template we did not check; one 409 is retried after a fresh
        read. Returns the generation to watch.
        """
        s = await self._session(target)
        what = s.deployment_name

        async def attempt() -> int:
            deployment = await s.read_deployment()
            containers = _containers(deployment["spec"]["template"])
            if target.container_name not in containers:
                raise PlatformError(f"{what} has no container {target.container_name!r} "
                                    f"(containers: {', '.join(containers) or 'none'})")
            if deployment["spec"].get("paused"):
                raise PlatformError(_paused(what, target))
            patch = {
                "metadata": {"resourceVersion": deployment["metadata"]["resourceVersion"],
                             "annotations": {CHANGE_CAUSE: change_cause}},
                "spec": {"template": {"spec": {"containers": [
                    {"name": target.container_name, "image": image}]}}},
            }
            patched = await s.call(what, "patch", s.apps.patch_namespaced_deployment,
                                   target.deployment, target.namespace, patch,
                                   _content_type=STRATEGIC_MERGE)
            return int(patched["metadata"].get("generation") or 0)

        return await _again_on_conflict(attempt)

    async def progress(self, service: str, env: str, target: KubernetesTarget,
                       generation: int) -> RolloutProgress:
        """``kubectl rollout status`` for ``generation``, plus early failure detection.

        Once the controller has seen the spec, pods of the new ReplicaSet (the one whose
        revision is the Deployment's) that crash-loop or cannot pull their image fail the
        rollout at once, long before the progress deadline.
        """
        s = await self._session(target)
        deployment = await s.read_deployment()
        if version := deployment["metadata"].get("resourceVersion"):
            self._seen[_watch_key(target)] = str(version)
        progress = rollout_progress(deployment, generation)
        if not progress.observed or progress.state in ("complete", "paused"):
            return progress
        replicasets, pods = await asyncio.gather(s.replicasets(deployment), s.pods(deployment))
        new = next((rs for rs in replicasets if _rs_revision(rs) == progress.revision), None)
        failures = pod_failures(_pods_of(new, pods), target.container_name) if new else []
        return with_pod_failures(progress, failures)

    async def history(self, service: str, env: str,
                      target: KubernetesTarget) -> list[RevisionInfo]:
        """``kubectl rollout history``: the Deployment's ReplicaSets by revision, oldest first."""
        s = await self._session(target)
        deployment = await s.read_deployment()
        replicasets = await s.replicasets(deployment)
        current = _revision_of(deployment)
        return [revision_info(rs, target.container_name, current) for rs in replicasets]

    async def rollback(self, service: str, env: str, target: KubernetesTarget,
                       revision: int | None, change_cause: str) -> tuple[RevisionInfo, int]:
        """``kubectl rollout undo [--to-revision=N]``, with ``change_cause`` recorded.

        None or 0: the revision before the newest. The chosen ReplicaSet's pod template (less
        its ``pod-template-hash`` label) replaces the Deployment's with a JSON patch, and its
        annotations are copied except kubectl's skip list, whose values the Deployment keeps.
        A template equal to the running one is refused, as kubectl skips it. The patch carries
        the resourceVersion read (one 409 is retried after a fresh read).
        """
        s = await self._session(target)
        what = s.deployment_name

        async def attempt() -> tuple[RevisionInfo, int]:
            deployment = await s.read_deployment()
            replicasets = await s.replicasets(deployment)
            chosen = choose_revision(deployment, replicasets, revision, what, target.container_name)
            info = revision_info(chosen, target.container_name, None)
            if deployment["spec"].get("paused"):
                raise PlatformError(_paused(what, target))
            template = copy.deepcopy(chosen["spec"]["template"])
            (template.get("metadata") or {}).get("labels", {}).pop(TEMPLATE_HASH, None)
            if equal_ignoring_hash(template, deployment["spec"]["template"]):
                raise PlatformError(f"skipped rollback: {what} already runs the template of "
                                    f"revision {info.revision} ({info.version})")
            patch = rollback_patch(deployment, chosen, template, change_cause)
            patched = await s.call(what, "patch", s.apps.patch_namespaced_deployment,
                                   target.deployment, target.namespace, patch,
                                   _content_type=JSON_PATCH)
            return info, int(patched["metadata"].get("generation") or 0)

        return await _again_on_conflict(attempt)

    # ----------------------------------------------------------------- maintenance actions

    async def restart(self, service: str, env: str, target: KubernetesTarget, change_cause: str) -> int:
        """``kubectl rollout restart``: the pod template gets the annotation
        ``kubectl.kubernetes.io/restartedAt`` (now, RFC 3339), so the controller rolls every pod;
        ``change_cause`` is recorded. Returns the generation to watch."""
        s = await self._session(target)
        what = s.deployment_name

        async def attempt() -> int:
            deployment = await s.read_deployment()
            if deployment["spec"].get("paused"):
                raise PlatformError(_paused(what, target))
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            patch = {
                "metadata": {"resourceVersion": deployment["metadata"]["resourceVersion"],
                             "annotations": {CHANGE_CAUSE: change_cause}},
                "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}},
            }
            patched = await s.call(what, "restart", s.apps.patch_namespaced_deployment,
                                   target.deployment, target.namespace, patch,
                                   _content_type=STRATEGIC_MERGE)
            return int(patched["metadata"].get("generation") or 0)

        return await _again_on_conflict(attempt)

    async def scale(self, service: str, env: str, target: KubernetesTarget, replicas: int) -> tuple[int, int]:
        """``kubectl scale --replicas=N``: returns (the previous count, the generation to watch)."""
        if not 0 <= replicas <= 1000:
            raise PlatformError(f"cannot scale to {replicas} replicas (0..1000)")
        s = await self._session(target)
        what = s.deployment_name

        async def attempt() -> tuple[int, int]:
            deployment = await s.read_deployment()
            previous = deployment["spec"].get("replicas")
            previous = 1 if previous is None else int(previous)
            patch = {"metadata": {"resourceVersion": deployment["metadata"]["resourceVersion"]},
                     "spec": {"replicas": replicas}}
            patched = await s.call(what, "scale", s.apps.patch_namespaced_deployment,
                                   target.deployment, target.namespace, patch, _content_type=MERGE_PATCH)
            return previous, int(patched["metadata"].get("generation") or 0)

        return await _again_on_conflict(attempt)

    async def run_job(self, service: str, env: str, target: KubernetesTarget, cronjob: str, *,
                      timeout: float, poll_interval: float = 1.0) -> JobRun:
        """``kubectl create job <cronjob>-opsbot-<suffix> --from=cronjob/<cronjob>`` in the target's
        namespace (labels and annotations of the jobTemplate, ``cronjob.kubernetes.io/instantiate:
        manual``, owned by the CronJob), then watched until its Complete or Failed condition, or
        ``timeout`` seconds."""
        s = await self._session(target)
        ns = target.namespace
        batch = client.BatchV1Api(s.api)
        what = f"cronjob {ns}/{cronjob}"
        try:
            source = await s.call(what, "read", batch.read_namespaced_cron_job, cronjob, ns)
        except NotFound:
            listed = await s.call(f"the cronjobs in {ns}", "list", batch.list_namespaced_cron_job, ns)
            names = sorted(c["metadata"]["name"] for c in listed.get("items") or [])
            raise NotFound(f"no cronjob {cronjob} in namespace {ns}; cronjobs there: "
                           f"{', '.join(names) or 'none'}") from None
        job = job_from_cronjob(source, f"{cronjob[:40]}-opsbot-{_suffix()}")
        created = await s.call(f"a job from {what}", "create", batch.create_namespaced_job, ns, job)
        name = created["metadata"]["name"]
        started = time.monotonic()
        while True:
            try:
                current = await s.call(f"job {ns}/{name}", "read", batch.read_namespaced_job, name, ns)
            except Unreachable:
                current = None  # a blip while watching is not a failed job
            elapsed = time.monotonic() - started
            if current is not None:
                run = job_run(current, cronjob, elapsed)
                if run is not None:
                    return run
            if elapsed >= timeout:
                status = (current or {}).get("status") or {}
                return JobRun(name=name, namespace=ns, cronjob=cronjob, outcome="timeout", seconds=elapsed,
                              succeeded=status.get("succeeded") or 0, failed=status.get("failed") or 0,
                              message=f"not finished after {timeout:g} s; it keeps running in the cluster")
            await asyncio.sleep(poll_interval)

    async def prune_images(self, service: str, env: str, target: KubernetesTarget, *, all_unused: bool = False,
                           older_than_hours: int | None = None) -> PruneResult:
        raise Unsupported("image prune is for Docker hosts; on Kubernetes the kubelet collects unused "
                          "images itself")

    # ----------------------------------------------------------------- logs

    async def log_sources(self, service: str, env: str, target: KubernetesTarget,
                          query: LogQuery) -> list[tuple[str, AsyncIterator[LogLine]]]:
        """One stream per pod of the Deployment (or ``query.pod``), named by the pod.

        Every stream is opened here, so errors come now: an unknown pod or container, or (for
        ``--previous``) no terminated container. A pod that vanished or whose container has no
        log to give (still creating; nothing previous) is left out while others have logs; when
        none has, the API's own message is the error. Lines are read lazily, in a thread.
        """
        s = await self._session(target)
        deployment = await s.read_deployment()
        pods = sorted(await s.pods(deployment), key=lambda p: p["metadata"]["name"])
        names = [p["metadata"]["name"] for p in pods]
        if query.pod is not None:
            pods = [p for p in pods if p["metadata"]["name"] == query.pod]
            if not pods:
                raise PlatformError(f"no pod {query.pod} in {s.deployment_name}; pods: "
                                    f"{', '.join(names) or 'none'}")
        container = query.container or target.container_name
        with_container = [p for p in pods if container in _pod_containers(p)]
        if pods and not with_container:
            pod = pods[0]
            raise PlatformError(f"pod {pod['metadata']['name']} has no container {container!r} "
                                f"(containers: {', '.join(_pod_containers(pod))})")
        options: dict[str, Any] = {"container": container, "timestamps": True}
        if query.since is not None:
            options["since_seconds"] = max(1, math.ceil(query.since.total_seconds()))
        if query.tail is not None:
            options["tail_lines"] = query.tail
        if query.previous:
            options["previous"] = True
        opened = await asyncio.gather(
            *(s.open_log(p["metadata"]["name"], options) for p in with_container),
            return_exceptions=True)
        streams = [o for o in opened if isinstance(o, PodLogStream)]
        errors = [o for o in opened if isinstance(o, BaseException)]
        fatal = [e for e in errors if not isinstance(e, _NoLog)]
        if fatal or (errors and not streams):
            for stream in streams:
                await stream.aclose()
            raise (fatal or errors)[0]
        return [(stream.source, stream) for stream in streams]

    # ----------------------------------------------------------------- watching

    async def wait_for_change(self, service: str, env: str, target: KubernetesTarget,
                              timeout: float) -> None:
        """Return on the first change of the Deployment after the version ``progress`` last read,
        or after ``timeout`` seconds (as ``kubectl rollout status``, a watch, not a poll).

        One watch request (``fieldSelector=metadata.name=…``, ``resourceVersion`` = the version
        last seen, ``timeoutSeconds`` = ⌈timeout⌉) in a worker thread, closed at the first event.
        A change seen moves the remembered version on, so a ``progress`` that fails afterwards
        does not make the next watch replay the same event. Pods that crash-loop do not change the
        Deployment: the caller's next look after ``timeout`` still catches them.

        Never raises for platform faults. 410 Gone (the version is too old): the version is
        forgotten and this returns at once, so the caller reads afresh. Anything else
        (unreachable, refused, a cluster without watch rights): it sleeps out ``timeout``, i.e. the
        caller polls as if there were no watch. With no version read yet it just sleeps.
        """
        started = time.monotonic()
        key = _watch_key(target)
        since = self._seen.get(key)
        if since is None or timeout <= 0:
            await asyncio.sleep(max(0.0, timeout))
            return
        stream = watch.Watch()
        try:
            api = await asyncio.to_thread(self._client, target.context)
            # The thread ends by itself (timeoutSeconds, then the read timeout); this side does
            # not wait for it longer than the timeout asked for.
            seen = await asyncio.wait_for(
                asyncio.to_thread(self._first_change, api, stream, target, since, timeout),
                timeout + 1)
        except client.ApiException as err:
            if err.status == 410:
                if self._seen.get(key) == since:
                    del self._seen[key]
                return
            seen = None
        except (TimeoutError, *PLATFORM_FAULTS, ValueError):
            _abort_watch(stream)
            seen = None
        except asyncio.CancelledError:
            _abort_watch(stream)
            raise
        if seen is not None:
            if self._seen.get(key) == since and seen:
                self._seen[key] = seen
            return
        await asyncio.sleep(max(0.0, timeout - (time.monotonic() - started)))

    def _first_change(self, api: client.ApiClient, stream: watch.Watch, target: KubernetesTarget,
                      since: str, timeout: float) -> str | None:
        """Blocking: the resourceVersion of the first event after ``since`` ("" if it has none),
        or None when the server ended the watch without one."""
        seconds = max(1, math.ceil(timeout))
        events = stream.stream(
            client.AppsV1Api(api).list_namespaced_deployment, target.namespace,
            field_selector=f"metadata.name={target.deployment}", resource_version=since,
            timeout_seconds=seconds,  # (deserialize=False would break its 410 handling)
            _request_timeout=(self.request_timeout, seconds + self.request_timeout))
        with contextlib.closing(events):
            for event in events:
                stream.stop()
                obj = event.get("raw_object") if isinstance(event, dict) else None
                meta = obj.get("metadata") if isinstance(obj, dict) else None
                return str((meta or {}).get("resourceVersion") or "")
        return None


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


# --------------------------------------------------------------------------- the write side

Obj = dict[str, Any]

CHANGE_CAUSE = "kubernetes.io/change-cause"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
INSTANTIATE = "cronjob.kubernetes.io/instantiate"
MERGE_PATCH = "application/merge-patch+json"
TEMPLATE_HASH = "pod-template-hash"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# kubectl's annotationsToSkip (pkg/polymorphichelpers/rollback.go): a rollback keeps the
# Deployment's values of these and copies every other annotation from the ReplicaSet.
ANNOTATIONS_TO_SKIP = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
})

# Waiting reasons of a container that will not get better by waiting for the deadline.
FAILING_REASONS = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull",
                             "InvalidImageName", "CreateContainerConfigError"})
CRASH_RESTARTS = 2  # restarts after a termination that count as crash-looping


def _in_cluster() -> bool:
    """In a pod (the API's address in the environment, a token mounted) with no kubeconfig at all."""
    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    return (bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and Path(SERVICE_TOKEN_FILENAME).exists()
            and not Path(kubeconfig.split(os.pathsep)[0]).exists())


async def _again_on_conflict(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` (read, check, patch with the resourceVersion read), once more on a 409."""
    try:
        return await attempt()
    except Conflict:
        return await attempt()


def _watch_key(target: KubernetesTarget) -> tuple[str | None, str, str]:
    return (target.context, target.namespace, target.deployment)


def _abort_watch(stream: watch.Watch) -> None:
    """Make a watch's thread stop reading now (its socket is shut down under it)."""
    stream.stop()
    response = getattr(stream, "_resp", None)
    if response is not None:
        with contextlib.suppress(Exception):
            response.shutdown()


class _NoLog(PlatformError):
    """This pod has no log to give (gone, still creating, nothing previous)."""


class _Session:
    """One operation's clients and how it names things in messages."""

    def __init__(self, api: client.ApiClient, target: KubernetesTarget, timeout: float):
        self.target = target
        self.timeout = timeout
        self.host = api.configuration.host
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.deployment_name = f"deployment {target.namespace}/{target.deployment}"

    async def call(self, what: str, verb: str, fn: Callable[..., Any], *args: Any,
                   **kwargs: Any) -> Any:
        """``fn`` in a thread; the JSON the API answered, or a typed PlatformError."""
        def run() -> Any:
            response = fn(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
            try:
                return json.loads(response.data)
            finally:
                response.release_conn()

        try:
            return await asyncio.to_thread(run)
        except PLATFORM_FAULTS as err:
            raise platform_error(err, what, verb, self.host, self.timeout) from err
        except ValueError as err:
            raise PlatformError(f"the cluster at {self.host} answered something that is not "
                                f"JSON about {what}") from err

    async def read_deployment(self) -> Obj:
        t = self.target
        deployment: Obj = await self.call(self.deployment_name, "read",
                                          self.apps.read_namespaced_deployment,
                                          t.deployment, t.namespace)
        return deployment

    async def replicasets(self, deployment: Obj) -> list[Obj]:
        """The ReplicaSets the Deployment owns that have a revision, oldest revision first."""
        listed = await self.call(f"the replica sets of {self.deployment_name}", "list",
                                 self.apps.list_namespaced_replica_set, self.target.namespace,
                                 label_selector=json_selector(deployment["spec"]["selector"]))
        uid = deployment["metadata"]["uid"]
        owned = [rs for rs in listed.get("items") or []
                 if any(ref.get("uid") == uid for ref in rs["metadata"].get("ownerReferences") or [])
                 and _rs_revision(rs) is not None]
        return sorted(owned, key=lambda rs: _rs_revision(rs) or 0)

    async def pods(self, deployment: Obj) -> list[Obj]:
        listed = await self.call(f"the pods of {self.deployment_name}", "list",
                                 self.core.list_namespaced_pod, self.target.namespace,
                                 label_selector=json_selector(deployment["spec"]["selector"]))
        return list(listed.get("items") or [])

    async def open_log(self, pod: str, options: dict[str, Any]) -> PodLogStream:
        """Start reading one pod's log: the status line and headers, not the lines yet."""
        ns, what = self.target.namespace, f"pod {self.target.namespace}/{pod}"

        def run() -> Any:
            return self.core.read_namespaced_pod_log(
                pod, ns, _preload_content=False, _request_timeout=(self.timeout, self.timeout),
                **options)

        try:
            response = await asyncio.to_thread(run)
        except client.ApiException as err:
            if err.status == 404:
                raise _NoLog(f"pod {pod} is gone") from err
            if err.status == 400:
                raise _NoLog(f"no logs of {pod}: {_status_message(err)}") from err
            raise platform_error(err, what, "read the logs of", self.host, self.timeout) from err
        except PLATFORM_FAULTS as err:
            raise platform_error(err, what, "read the logs of", self.host, self.timeout) from err

        def fault(err: Exception) -> PlatformError:
            return platform_error(err, what, "read the logs of", self.host, self.timeout)

        return PodLogStream(pod, response, fault)


def platform_error(err: Exception, what: str, verb: str, host: str | None,
                   timeout: float) -> PlatformError:
    """A typed, short, user-facing error for a platform fault about ``what``."""
    if isinstance(err, client.ApiException):
        message = _status_message(err)
        if err.status == 404:
            return NotFound(f"{what} not found")
        if err.status == 409:
            return Conflict(f"{what} was changed by someone else meanwhile; try again")
        if err.status == 401:
            return PlatformError(f"the cluster at {host} did not accept our credentials (401): "
                                 f"{message}")
        if err.status == 403:
            return PlatformError(f"not allowed to {verb} {what}: {message}")
        if err.status in (400, 422):
            return PlatformError(f"the cluster refused to {verb} {what}: {message}")
        if not err.status:  # raised by the client itself, e.g. a TLS failure
            return Unreachable(f"cannot reach the cluster at {host}: "
                               f"{' '.join(str(err.reason).split())}")
        return PlatformError(f"the cluster answered {err.status} {err.reason}: {message}")
    if isinstance(err, urllib3.exceptions.HTTPError):
        return Unreachable(f"cannot reach the cluster at {host}: {_network_problem(err, timeout)}")
    return PlatformError(f"cannot {verb} {what}: {err}")


def _paused(what: str, target: KubernetesTarget) -> str:
    return (f"{what} is paused; resume it first (kubectl rollout resume "
            f"deployment/{target.deployment} -n {target.namespace})")


def json_selector(selector: Obj) -> str:
    """A LabelSelector (as JSON) as a labelSelector query string."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, values = expr["key"], ",".join(expr.get("values") or [])
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": key, "DoesNotExist": f"!{key}"}[expr["operator"]])
    return ",".join(parts)


def _annotation_revision(meta: Obj) -> int | None:
    value = (meta.get("annotations") or {}).get(REVISION)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _revision_of(deployment: Obj) -> int | None:
    return _annotation_revision(deployment["metadata"])


def _rs_revision(rs: Obj) -> int | None:
    return _annotation_revision(rs["metadata"])


def _containers(template: Obj) -> dict[str, str | None]:
    """Container name -> image of a pod template (in order)."""
    spec = template.get("spec") or {}
    return {c["name"]: c.get("image") for c in spec.get("containers") or []}


def _pod_containers(pod: Obj) -> list[str]:
    return list(_containers(pod))


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


# ----------------------------------------------------------------- rollout status


def rollout_progress(deployment: Obj, generation: int) -> RolloutProgress:
    """``kubectl rollout status`` of ``generation`` (or a later one), from the Deployment alone."""
    meta, spec = deployment["metadata"], deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = 1 if spec.get("replicas") is None else int(spec["replicas"])
    updated, total = status.get("updatedReplicas") or 0, status.get("replicas") or 0
    available = status.get("availableReplicas") or 0
    progress = RolloutProgress(desired=desired, updated=updated, available=available,
                               ready=status.get("readyReplicas") or 0, old=max(0, total - updated))
    if (status.get("observedGeneration") or 0) < max(generation, meta.get("generation") or 0):
        return progress.model_copy(update={
            "observed": False,
            "message": "waiting for the deployment controller to see the new spec"})
    progress.revision = _revision_of(deployment)
    if spec.get("paused"):
        progress.state, progress.message = "paused", "the rollout is paused"
        return progress
    conditions = status.get("conditions") or []
    condition = next((c for c in conditions if c.get("type") == "Progressing"), None)
    if condition and condition.get("reason") == "ProgressDeadlineExceeded":
        progress.state, progress.reason = "failed", "ProgressDeadlineExceeded"
        progress.message = condition.get("message") or (
            f'deployment "{meta["name"]}" exceeded its progress deadline')
    elif updated < desired:
        progress.message = f"{updated} of {desired} new replicas updated"
    elif total > updated:
        progress.message = f"{total - updated} old replicas pending termination"
    elif available < updated:
        progress.message = f"{available} of {updated} updated replicas available"
    else:
        progress.state = "complete"
    return progress


def _pods_of(replicaset: Obj | None, pods: list[Obj]) -> list[Obj]:
    """The pods of ``replicaset``, matched by its pod-template-hash label."""
    if replicaset is None:
        return []
    labels = replicaset["metadata"].get("labels") or {}
    template_hash = labels.get(TEMPLATE_HASH) or (
        (replicaset["spec"].get("selector") or {}).get("matchLabels") or {}).get(TEMPLATE_HASH)
    if not template_hash:
        return []
    return [p for p in pods if (p["metadata"].get("labels") or {}).get(TEMPLATE_HASH) == template_hash]


def pod_failures(pods: list[Obj], container: str) -> list[tuple[str, str, str]]:
    """(pod, reason, message) for every pod that is failing for good, by pod name."""
    failures = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        found = pod_failure(pod, container)
        if found:
            failures.append((pod["metadata"]["name"], *found))
    return failures


def pod_failure(pod: Obj, container: str) -> tuple[str, str] | None:
    """(reason, message) when a container of ``pod`` crash-loops or cannot start at all."""
    if pod["metadata"].get("deletionTimestamp"):
        return None
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []),
               *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        restarts = cs.get("restartCount") or 0
        last = (cs.get("lastState") or {}).get("terminated")
        which = "" if cs.get("name") == container else f" {cs.get('name')}"
        if reason == "CrashLoopBackOff" or (restarts >= CRASH_RESTARTS and last):
            return "CrashLoopBackOff", (f"{name}: back-off restarting failed container{which} "
                                        f"({_restarts(restarts, last)})")
        if reason in ("ImagePullBackOff", "ErrImagePull"):
            detail = _first_line(waiting.get("message"))
            return reason, (f"{name}: cannot pull image {cs.get('image')}"
                            + (f" ({detail})" if detail else ""))
        if reason == "InvalidImageName":
            return reason, f"{name}: invalid image name {cs.get('image')}"
        if reason in FAILING_REASONS:
            detail = _first_line(waiting.get("message")) or "invalid container configuration"
            return reason, f"{name}: {detail}"
    return None


def _restarts(restarts: int, last: Obj | None) -> str:
    text = f"{restarts} restart{'' if restarts == 1 else 's'}"
    if last:
        reason, code = last.get("reason"), last.get("exitCode")
        exit_ = ", ".join(x for x in (reason if reason not in (None, "Error") else None,
                                      f"exit code {code}" if code is not None else None) if x)
        if exit_:
            text += f", last: {exit_}"
    return text


def _first_line(text: str | None, limit: int = 200) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def with_pod_failures(progress: RolloutProgress,
                      failures: list[tuple[str, str, str]]) -> RolloutProgress:
    """``progress`` failed early by failing pods (or a deadline failure that names them)."""
    if not failures:
        return progress
    _, reason, message = failures[0]
    if len(failures) > 1:
        message += f" (and {len(failures) - 1} more pod{'s' if len(failures) > 2 else ''})"
    pods = [pod for pod, _, _ in failures]
    if progress.state == "failed":
        return progress.model_copy(update={"failing_pods": pods,
                                           "message": f"{progress.message}; {message}"})
    return progress.model_copy(update={"state": "failed", "reason": reason, "message": message,
                                       "failing_pods": pods})


# ----------------------------------------------------------------- history and rollback


def revision_info(rs: Obj, container: str, current: int | None) -> RevisionInfo:
    meta = rs["metadata"]
    number = _rs_revision(rs) or 0
    image = _containers(rs["spec"]["template"]).get(container)
    return RevisionInfo(
        revision=number, image=image, version=image_version(image),
        change_cause=(meta.get("annotations") or {}).get(CHANGE_CAUSE),
        created_at=_time(meta.get("creationTimestamp")),
        current=current is not None and number == current,
        replicas=(rs.get("status") or {}).get("replicas") or 0,
    )


def choose_revision(deployment: Obj, replicasets: list[Obj], revision: int | None, what: str,
                    container: str) -> Obj:
    """The ReplicaSet ``kubectl rollout undo --to-revision`` picks (None/0: the second newest)."""
    if not revision:
        if len(replicasets) < 2:
            raise NotFound(f"{what} has no earlier revision to roll back to")
        return replicasets[-2]
    chosen = next((rs for rs in replicasets if _rs_revision(rs) == revision), None)
    if chosen is None:
        current = _revision_of(deployment)
        valid = [revision_info(rs, container, current) for rs in replicasets]
        listed = ", ".join(f"{r.revision} ({r.version})" for r in valid if not r.current)
        raise NotFound(f"no revision {revision}; valid: {listed or 'none'}")
    return chosen


def _semantic(value: Any) -> Any:
    """``value`` without nulls and empty maps and lists (apimachinery's semantic equality
    treats unset and empty alike)."""
    if isinstance(value, dict):
        cleaned = {k: _semantic(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_semantic(v) for v in value]
    return value


def equal_ignoring_hash(a: Obj, b: Obj) -> bool:
    """kubectl's equalIgnoreHash: two pod templates alike but for ``pod-template-hash``."""
    def clean(template: Obj) -> Any:
        template = copy.deepcopy(template)
        ((template.get("metadata") or {}).get("labels") or {}).pop(TEMPLATE_HASH, None)
        return _semantic(template)

    return bool(clean(a) == clean(b))


def rollback_patch(deployment: Obj, rs: Obj, template: Obj, change_cause: str) -> list[Obj]:
    """kubectl's rollback JSON patch (template and annotations), with the resourceVersion read
    as a precondition and our change-cause."""
    meta = deployment["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k in ANNOTATIONS_TO_SKIP}
    annotations |= {k: v for k, v in (rs["metadata"].get("annotations") or {}).items()
                    if k not in ANNOTATIONS_TO_SKIP}
    annotations[CHANGE_CAUSE] = change_cause
    return [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace" if "annotations" in meta else "add", "path": "/metadata/annotations",
         "value": annotations},
    ]


# ----------------------------------------------------------------- jobs


def _suffix(length: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated names
    return "".join(secrets.choice(alphabet) for _ in range(length))


def job_from_cronjob(cronjob: Obj, name: str) -> Obj:
    """The Job ``kubectl create job NAME --from=cronjob/…`` makes (pkg/cmd/create/create_job.go)."""
    template = copy.deepcopy((cronjob.get("spec") or {}).get("jobTemplate") or {})
    meta = template.get("metadata") or {}
    annotations = {INSTANTIATE: "manual", **(meta.get("annotations") or {})}
    cmeta = cronjob["metadata"]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name, "labels": meta.get("labels") or {}, "annotations": annotations,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cmeta["name"],
                                 "uid": cmeta["uid"], "controller": True}],
        },
        "spec": template.get("spec") or {},
    }


def job_run(job: Obj, cronjob: str, seconds: float) -> JobRun | None:
    """The end of ``job`` as a JobRun; None while it runs."""
    status = job.get("status") or {}
    done = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    meta = job["metadata"]
    common = dict(name=meta["name"], namespace=meta.get("namespace", ""), cronjob=cronjob, seconds=seconds,
                  succeeded=status.get("succeeded") or 0, failed=status.get("failed") or 0)
    if "Complete" in done:
        return JobRun(outcome="complete", **common)
    if "Failed" in done:
        condition = done["Failed"]
        return JobRun(outcome="failed", reason=condition.get("reason"), message=condition.get("message"), **common)
    return None


# ----------------------------------------------------------------- log streams

_EOF: Any = object()
_CHUNK = 64 * 1024
_BATCH_BYTES = 64 * 1024  # lines are handed to the event loop in batches of about this size
_QUEUE_BATCHES = 4  # batches read ahead of the consumer: memory is bounded by about 4 x 64 KiB
_MAX_LINE = 1024 * 1024  # a longer line is cut here (the collector cuts far shorter anyway)


class PodLogStream:
    """The lines of one pod's log response, as :data:`LogLine`, read by a thread.

    The thread reads the (already opened) response in chunks, splits lines, and hands them over
    in batches through a bounded queue, so a huge log never sits in memory and a slow consumer
    slows the reading. :meth:`aclose` stops the thread and closes the connection.
    """

    def __init__(self, source: str, response: Any,
                 fault: Callable[[Exception], PlatformError]) -> None:
        self.source = source
        self._response = response
        self._fault = fault
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=_QUEUE_BATCHES)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards the connection between the reader and aclose
        self._released = False
        self._thread: threading.Thread | None = None
        self._batch: list[bytes] = []
        self._at = 0
        self._done = False
        self._last: datetime | None = None

    def __aiter__(self) -> PodLogStream:
        return self

    async def __anext__(self) -> LogLine:
        while self._at >= len(self._batch):
            if self._done:
                raise StopAsyncIteration
            if self._thread is None:
                self._start()
            item = await self._queue.get()
            if item is _EOF:
                self._done = True
            elif isinstance(item, Exception):
                self._done = True
                raise self._fault(item)
            else:
                self._batch, self._at = item, 0
        raw = self._batch[self._at]
        self._at += 1
        line = parse_k8s_line(self.source, raw.decode("utf-8", "replace"), self._last)
        self._last = line[0]
        return line

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._read, args=(loop,), daemon=True,
                                        name=f"pod-log-{self.source}")
        self._thread.start()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        """The thread: chunks -> lines -> batches on the queue; then _EOF or the error."""
        response = self._response
        complete = False
        pending = b""
        batch: list[bytes] = []
        try:
            size = 0
            for chunk in response.stream(_CHUNK, decode_content=True):
                if self._stop.is_set():
                    return
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                if len(pending) > _MAX_LINE:
                    lines.append(pending)
                    pending = b""
                batch.extend(lines)
                size += len(chunk)
                if size >= _BATCH_BYTES:
                    if not self._put(loop, batch):
                        return
                    batch, size = [], 0
            if pending:
                batch.append(pending)
            if batch and not self._put(loop, batch):
                return
            complete = True
            self._put(loop, _EOF)
        except Exception as err:  # noqa: BLE001 - the consumer raises it as a PlatformError
            if pending:  # what arrived before the break is still shown, then the error
                batch.append(pending)
            if not self._stop.is_set() and (not batch or self._put(loop, batch)):
                self._put(loop, err)
        finally:
            self._release(reusable=complete)

    def _release(self, *, reusable: bool) -> None:
        """Hand the connection back to the pool: as it is when the body was read to its end,
        else closed (a half-read connection must not serve another request)."""
        with self._lock:
            if self._released:
                return
            self._released = True
            if not reusable:
                self._response.close()
            self._response.release_conn()

    def _put(self, loop: asyncio.AbstractEventLoop, item: Any) -> bool:
        """Queue ``item`` (waiting while the queue is full); False once stopped."""
        try:
            future = asyncio.run_coroutine_threadsafe(self._queue.put(item), loop)
        except RuntimeError:  # the loop is closed
            return False
        while True:
            try:
                future.result(timeout=0.2)
                return True
            except TimeoutError:
                if self._stop.is_set():
                    future.cancel()
                    return False
            except concurrent.futures.CancelledError:
                return False

    async def aclose(self) -> None:
        """Stop reading and release the connection (also when never iterated)."""
        self._done = True
        self._stop.set()
        if self._thread is None:
            self._release(reusable=False)
            return
        with self._lock:
            shutdown = getattr(self._response, "shutdown", None)  # urllib3 >= 2.3
            if not self._released and shutdown is not None:
                with contextlib.suppress(Exception):
                    shutdown()  # unblocks a read waiting for data
        await asyncio.to_thread(self._thread.join, 5)
        self._release(reusable=False)


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
