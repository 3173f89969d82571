"""``/metrics`` of the sandbox: plausible per-pod series that follow the emulated cluster.

A real Prometheus scraping ``opsbot sandbox`` (see ``config/examples/prometheus.yml``) gets, for
every pod of every Deployment, the series a service and its cluster would expose, each labelled
``service`` (the pod's ``app`` label), ``env`` and ``namespace`` (the namespace; env = namespace in
the sandbox world) and ``pod``, as a Kubernetes service-discovery relabelling would add them:

- ``http_requests_total{code}`` (counter): the service's traffic split evenly over the pods that
  serve it; more replicas, less each. A ``-broken`` version's pods take their share and answer most
  of it with 5xx (the canary goes bad), so the error ratio rises while the rollout runs and falls
  when it is rolled back.
- ``http_request_duration_seconds`` (histogram): log-normal latencies whose median grows with the
  load on each pod; a broken pod is slow too.
- ``container_cpu_usage_seconds_total`` (counter) and ``container_memory_working_set_bytes``
  (gauge), as the kubelet's cAdvisor names them: a base plus a share per request.
- ``kube_pod_status_ready{condition}`` and ``kube_deployment_spec_replicas`` /
  ``kube_deployment_status_replicas_available``, as kube-state-metrics names them.

Counters are integrated over time, from the pod's creation: each scrape adds ``rate × elapsed``
to what the pod has served so far, so any number of scrapers see one consistent, monotonic
history. A pod that goes away takes its CPU, memory and readiness series with it at once; its
request counters and latency histogram stay, frozen, for :data:`LINGER_SECONDS`, as an ingress
controller's or a mesh's exporter keeps a gone upstream's: so the errors of a broken pod that the
bot rolled back within seconds still show in a rate over the next minute.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from sandbox import world
from sandbox.cluster import DEPLOYMENTS, PODS, Cluster, Obj
from sandbox.controller import image_plan

# Requests per second a whole service gets in each env, before the service's own factor.
ENV_RPS = {"prod": 40.0, "staging": 4.0, "dev": 0.8}
SERVICE_FACTOR = {"chat": 3.0, "chat-gui": 1.5, "auth": 1.0, "strims": 0.6, "modbot": 0.3}
MEDIAN_LATENCY = {"chat": 0.025, "chat-gui": 0.015, "auth": 0.06, "strims": 0.04, "modbot": 0.08}
BASE_MEMORY_MIB = {"chat": 180.0, "chat-gui": 90.0, "auth": 140.0, "strims": 120.0, "modbot": 110.0}
LATENCY_SIGMA = 0.6  # of the log-normal: p95 ≈ 2.7 × median
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Shares of each status code: a healthy pod, and one running a -broken build.
HEALTHY_CODES = {"200": 0.965, "404": 0.03, "500": 0.003, "503": 0.002}
BROKEN_CODES = {"200": 0.25, "500": 0.6, "503": 0.15}
WAVE_SECONDS = 900.0  # traffic swells and ebbs by ±20 % over this period
MIB = 1024 * 1024
LABELS = ("service", "env", "namespace", "pod")
LINGER_SECONDS = 120.0  # a gone pod's request series stay this long (simulated clock)


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from ``parts``."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def traffic(service: str, env: str, at: float) -> float:
    """Requests per second the whole service gets in ``env`` at unix time ``at``."""
    base = ENV_RPS.get(env, 1.0) * SERVICE_FACTOR.get(service, 1.0)
    wave = 1 + 0.2 * math.sin(2 * math.pi * at / WAVE_SECONDS + 6.283 * _unit(service))
    jitter = 0.95 + 0.1 * _unit(service, env, int(at // 10))
    return base * wave * jitter


@dataclass
class _PodRates:
    """What one pod does per second right now."""

    requests: dict[str, float]  # code → requests per second
    median: float  # latency median, seconds
    cpu: float  # cores
    memory: float  # bytes (a gauge, not a rate)


@dataclass
class _PodCounters:
    """What one pod has served since it started (floats; exposed rounded down)."""

    labels: tuple[str, str, str, str]
    container: str
    updated: float
    requests: dict[str, float] = field(default_factory=dict)
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(BUCKETS) + 1))
    latency_sum: float = 0.0
    cpu: float = 0.0
    memory: float = 0.0
    ready: bool = False

    def advance(self, rates: _PodRates, seconds: float) -> None:
        total = 0.0
        for code, rate in rates.requests.items():
            self.requests[code] = self.requests.get(code, 0.0) + rate * seconds
            total += rate * seconds
        mu = math.log(rates.median)
        for i, le in enumerate(BUCKETS):
            self.buckets[i] += total * _normal_cdf((math.log(le) - mu) / LATENCY_SIGMA)
        self.buckets[-1] += total
        self.latency_sum += total * rates.median * math.exp(LATENCY_SIGMA**2 / 2)  # the mean
        self.cpu += rates.cpu * seconds
        self.memory = rates.memory


def _created(pod: Obj, default: float) -> float:
    """The pod's creationTimestamp as unix time."""
    created = pod["metadata"].get("creationTimestamp")
    return datetime.fromisoformat(created).timestamp() if created else default


def _ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _started(pod: Obj) -> bool:
    """The kubelet has started its containers at least once (crash-looping counts)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return any(s.get("containerID") for s in statuses)


def _plan(pod: Obj) -> str:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return image_plan(containers[0].get("image", ""))


def _weight(pod: Obj) -> float:
    """How much of the service's traffic a pod takes: ready pods, and broken ones that run."""
    if pod["metadata"].get("deletionTimestamp"):
        return 0.0
    if _ready(pod):
        return 1.0
    if _plan(pod) == "broken" and _started(pod):
        return 1.0
    return 0.0


class SandboxMetrics:
    """The metrics of one :class:`Cluster`; :meth:`exposition` is what ``/metrics`` serves."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._pods: dict[str, _PodCounters] = {}
        self._gone: dict[str, tuple[_PodCounters, float]] = {}  # uid → (last counters, when it went)
        self._deployments: list[tuple[tuple[str, str, str, str], int, int]] = []
        self._lock = threading.RLock()
        self._since: float | None = None  # the first update: pods older than that count from it
        # Integrate on every tick of the cluster too, not only when scraped: a broken pod that
        # runs for seconds between two scrapes still serves (and fails) its share.
        cluster.add_controller(self._tick)

    @classmethod
    def of(cls, cluster: Cluster) -> SandboxMetrics:
        """The metrics following ``cluster`` (one per cluster, however often it is served)."""
        for controller in cluster.controllers:
            owner = getattr(controller, "__self__", None)
            if isinstance(owner, cls):
                return owner
        return cls(cluster)

    def _counting_since(self, pod: Obj, at: float) -> float:
        """A pod born while we watch counts from its creation (its first seconds between two
        updates count too); one that was there when we started counts from now, as a freshly
        started exporter's counters do (Prometheus takes that as a reset, not a burst)."""
        created = _created(pod, at)
        return min(created, at) if self._since is not None and created >= self._since else at

    def _tick(self, _cluster: Cluster, now: datetime) -> None:
        with self._lock:  # the cluster's lock is held already: always that one first
            self.update(now)

    def exposition(self, now: datetime | None = None) -> bytes:
        """The Prometheus text format (0.0.4) as of ``now`` (default: the cluster's clock)."""
        with self.cluster._lock, self._lock:  # the order ticks take them in
            self.update(now or self.cluster.now())
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Snapshot(self))
            return generate_latest(registry)

    def update(self, now: datetime) -> None:
        """Advance every pod's counters to ``now``; forget pods that are gone."""
        at = now.timestamp()
        if self._since is None:
            self._since = at
        pods = self.cluster.list(PODS)[0]
        by_service: dict[tuple[str, str], list[Obj]] = {}
        for pod in pods:
            service = (pod["metadata"].get("labels") or {}).get("app")
            if service:
                by_service.setdefault((service, pod["metadata"]["namespace"]), []).append(pod)
        seen: set[str] = set()
        for (service, namespace), members in by_service.items():
            weights = [_weight(p) for p in members]
            serving = sum(weights)
            total = traffic(service, namespace, at)
            # What one pod takes on an average day at the env's usual replica count: more pods or
            # less traffic, less load each (and quicker answers).
            usual = world.ENV_SPECS[namespace].replicas if namespace in world.ENV_SPECS else 1
            nominal = ENV_RPS.get(namespace, 1.0) * SERVICE_FACTOR.get(service, 1.0) / usual
            for pod, weight in zip(members, weights, strict=True):
                uid = pod["metadata"]["uid"]
                seen.add(uid)
                counters = self._pods.get(uid)
                if counters is None:
                    containers = (pod.get("spec") or {}).get("containers") or [{}]
                    counters = self._pods[uid] = _PodCounters(
                        (service, namespace, namespace, pod["metadata"]["name"]),
                        containers[0].get("name", service), self._counting_since(pod, at))
                share = total * weight / serving if serving else 0.0
                rates = self._rates(service, pod, share, nominal, at)
                counters.advance(rates, max(at - counters.updated, 0.0))
                counters.updated = at
                counters.ready = _ready(pod)
        for uid in [u for u in self._pods if u not in seen]:
            self._gone[uid] = (self._pods.pop(uid), at)
        for uid in [u for u, (_, gone) in self._gone.items() if at - gone > LINGER_SECONDS]:
            del self._gone[uid]
        self._deployments = [
            ((d["metadata"]["name"], d["metadata"]["namespace"], d["metadata"]["namespace"],
              d["metadata"]["name"]),
             int((d.get("spec") or {}).get("replicas", 1)),
             int((d.get("status") or {}).get("availableReplicas") or 0))
            for d in self.cluster.list(DEPLOYMENTS)[0]
        ]

    @staticmethod
    def _rates(service: str, pod: Obj, share: float, nominal: float, at: float) -> _PodRates:
        broken = _plan(pod) == "broken"
        codes = BROKEN_CODES if broken else HEALTHY_CODES
        load = share / nominal if nominal else 0.0
        median = MEDIAN_LATENCY.get(service, 0.05) * (0.8 + 0.4 * load) * (6.0 if broken else 1.0)
        name = pod["metadata"]["name"]
        age = at - _created(pod, at - 3600.0)
        warm = min(max(age, 0.0) / 60.0, 1.0)  # a new pod grows into its working set over a minute
        sawtooth = ((at + 300 * _unit(name)) % 300) / 300  # garbage collection every five minutes
        memory = (BASE_MEMORY_MIB.get(service, 100.0) * (0.6 + 0.4 * warm) + 0.5 * share
                  + 20 * sawtooth) * MIB
        if not share and not _started(pod):
            memory = 0.0
        cpu = ((0.05 if broken else 0.02) + 0.004 * share) if _started(pod) or share else 0.0
        return _PodRates({code: share * part for code, part in codes.items()}, median, cpu, memory)


class _Snapshot(Collector):
    """The families of one scrape, read from :class:`SandboxMetrics` as last updated."""

    def __init__(self, metrics: SandboxMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        pods = sorted(self.metrics._pods.values(), key=lambda c: c.labels)
        gone = sorted((c for c, _ in self.metrics._gone.values()), key=lambda c: c.labels)
        requests = CounterMetricFamily("http_requests", "HTTP requests served, by status code.",
                                       labels=[*LABELS, "code"])
        latency = HistogramMetricFamily("http_request_duration_seconds",
                                        "Time to answer an HTTP request.", labels=list(LABELS))
        cpu = CounterMetricFamily("container_cpu_usage_seconds", "CPU time used by the container.",
                                  labels=[*LABELS, "container"])
        memory = GaugeMetricFamily("container_memory_working_set_bytes",
                                   "Working set of the container.", labels=[*LABELS, "container"])
        ready = GaugeMetricFamily("kube_pod_status_ready", "Whether the pod is ready to serve.",
                                  labels=[*LABELS, "condition"])
        for c in sorted([*pods, *gone], key=lambda c: c.labels):
            for code in sorted(c.requests):
                requests.add_metric([*c.labels, code], math.floor(c.requests[code]))
            cumulative = [(repr(le), math.floor(n)) for le, n in zip(BUCKETS, c.buckets, strict=False)]
            cumulative.append(("+Inf", math.floor(c.buckets[-1])))
            latency.add_metric(list(c.labels), cumulative, c.latency_sum)
        for c in pods:
            cpu.add_metric([*c.labels, c.container], c.cpu)
            memory.add_metric([*c.labels, c.container], round(c.memory))
            ready.add_metric([*c.labels, "true"], 1.0 if c.ready else 0.0)
            ready.add_metric([*c.labels, "false"], 0.0 if c.ready else 1.0)
        desired = GaugeMetricFamily("kube_deployment_spec_replicas", "Replicas the Deployment asks for.",
                                    labels=[*LABELS[:3], "deployment"])
        available = GaugeMetricFamily("kube_deployment_status_replicas_available",
                                      "Replicas of the Deployment available now.",
                                      labels=[*LABELS[:3], "deployment"])
        for labels, want, have in sorted(self.metrics._deployments):
            desired.add_metric(list(labels), want)
            available.add_metric(list(labels), have)
        yield from (requests, latency, cpu, memory, ready, desired, available)
