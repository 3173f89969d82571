"""The sandbox's ``/metrics``: plausible per-pod series that move with deploys and scaling.

Read through Prometheus' own text parser, on a fake clock (the cluster ticked by hand), except
for the first test, which reads ``/metrics`` over HTTP as Prometheus would.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from sandbox.cluster import DEPLOYMENTS, PODS, Cluster, Obj
from sandbox.controller import Timing, install
from sandbox.metrics import BUCKETS, LINGER_SECONDS, SandboxMetrics, traffic
from sandbox.seed import seed
from sandbox.server import SandboxServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: bytes | str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text.decode() if isinstance(text, bytes) else text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items()
               if n == name and all((k, val) in labels for k, val in match.items()))


def by(samples: Samples, name: str, key: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (n, labels), v in samples.items():
        d = dict(labels)
        if n == name and all(d.get(k) == val for k, val in match.items()):
            out[d[key]] += v
    return dict(out)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Sim:
    """A seeded cluster with its controllers and metrics, on a clock ticked by hand."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.cluster = seed(Cluster(clock=self.clock))
        install(self.cluster, Timing())
        self.metrics = SandboxMetrics(self.cluster)
        self.scrape()

    def scrape(self) -> Samples:
        return parse(self.metrics.exposition())

    def run(self, seconds: float, step: float = 0.5, scrape_every: float | None = 5.0) -> Samples:
        """Move the world on, scraping every 5 s as Prometheus would; the last scrape."""
        elapsed = since_scrape = 0.0
        while elapsed < seconds:
            self.clock.now += timedelta(seconds=step)
            self.cluster.tick()
            elapsed += step
            since_scrape += step
            if scrape_every is not None and since_scrape >= scrape_every:
                self.scrape()
                since_scrape = 0.0
        return self.scrape()

    def set_image(self, service: str, env: str, version: str) -> None:
        def change(d: Obj) -> Obj:
            d["spec"]["template"]["spec"]["containers"][0]["image"] = f"registry.local/dgg/{service}:{version}"
            return d

        self.cluster.modify(DEPLOYMENTS, env, service, change)

    def scale(self, service: str, env: str, replicas: int) -> None:
        def change(d: Obj) -> Obj:
            d["spec"]["replicas"] = replicas
            return d

        self.cluster.modify(DEPLOYMENTS, env, service, change)


def rate(before: Samples, after: Samples, seconds: float, name: str, key: str, **match: str) -> dict[str, float]:
    b, a = by(before, name, key, **match), by(after, name, key, **match)
    return {k: (a[k] - b.get(k, 0.0)) / seconds for k in a}


def test_metrics_over_http_have_every_family_with_service_env_and_pod_labels():
    with SandboxServer() as server:
        with urllib.request.urlopen(f"{server.url}/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            samples = parse(r.read())
        pods = server.cluster.list(PODS, "prod", label_selector="app=chat")[0]
    names = {n for n, _ in samples}
    assert {"http_requests_total", "http_request_duration_seconds_bucket", "http_request_duration_seconds_sum",
            "http_request_duration_seconds_count", "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes", "kube_pod_status_ready", "kube_deployment_spec_replicas",
            "kube_deployment_status_replicas_available"} <= names
    chat = by(samples, "container_memory_working_set_bytes", "pod", service="chat", env="prod", namespace="prod")
    assert sorted(chat) == sorted(p["metadata"]["name"] for p in pods)
    assert all(100 * 2**20 < v < 300 * 2**20 for v in chat.values())  # MiB of a plausible service
    codes = by(samples, "http_requests_total", "code", service="chat", env="prod")
    assert set(codes) == {"200", "404", "500", "503"}
    assert total(samples, "kube_deployment_spec_replicas", service="chat", env="prod") == 3
    assert total(samples, "kube_pod_status_ready", service="chat", env="prod", condition="true") == 3


def test_counters_count_from_the_pods_creation():
    sim = Sim()
    sim.scale("chat", "prod", 4)
    samples = sim.run(30, scrape_every=None)  # first scraped half a minute after it started
    pods = sim.cluster.list(PODS, "prod", label_selector="app=chat")[0]
    newest = max(pods, key=lambda p: p["metadata"]["creationTimestamp"])["metadata"]["name"]
    served = total(samples, "http_requests_total", pod=newest)
    assert served > 0.5 * traffic("chat", "prod", sim.clock.now.timestamp()) / 4 * 20


def test_counters_grow_at_the_service_rate_and_the_histogram_is_consistent():
    sim = Sim()
    before = sim.scrape()
    after = sim.run(60)
    per_pod = rate(before, after, 60, "http_requests_total", "pod", service="chat", env="prod")
    assert len(per_pod) == 3
    expected = traffic("chat", "prod", sim.clock.now.timestamp())
    assert abs(sum(per_pod.values()) - expected) / expected < 0.15
    assert max(per_pod.values()) - min(per_pod.values()) < 0.05 * expected  # evenly spread
    assert all(after[k] >= before.get(k, 0) for k in after if k[0].endswith(("_total", "_bucket", "_count")))
    pod = next(iter(per_pod))
    buckets = [after[("http_request_duration_seconds_bucket",
                      frozenset({"service": "chat", "env": "prod", "namespace": "prod", "pod": pod,
                                 "le": le}.items()))] for le in [*map(repr, BUCKETS), "+Inf"]]
    assert buckets == sorted(buckets)  # cumulative
    count = total(after, "http_request_duration_seconds_count", pod=pod)
    assert buckets[-1] == count
    mean = total(after, "http_request_duration_seconds_sum", pod=pod) / count
    assert 0.01 < mean < 0.1  # chat answers in tens of milliseconds
    cpu = rate(before, after, 60, "container_cpu_usage_seconds_total", "pod", service="chat", env="prod")
    assert all(0.05 < v < 0.5 for v in cpu.values())


def test_a_broken_version_raises_errors_until_it_is_rolled_back():
    sim = Sim()
    healthy = sim.scrape()
    quiet = sim.run(30)
    errors = rate(healthy, quiet, 30, "http_requests_total", "code", service="auth", env="prod")
    ratio = (errors.get("500", 0) + errors.get("503", 0)) / sum(errors.values())
    assert ratio < 0.01

    sim.set_image("auth", "prod", "v1.5.0-broken")
    before = sim.run(10)  # the surge pod starts, crashes, starts again
    during = sim.run(30)
    by_pod = defaultdict(float)
    for (name, labels), value in during.items():
        d = dict(labels)
        if name == "http_requests_total" and d["service"] == "auth" and d["env"] == "prod" and d["code"].startswith("5"):
            by_pod[d["pod"]] += value - before.get((name, labels), 0.0)
    broken = [p["metadata"]["name"] for p in sim.cluster.list(PODS, "prod", label_selector="app=auth")[0]
              if p["spec"]["containers"][0]["image"].endswith("-broken")]
    assert broken and max(by_pod, key=by_pod.get) in broken  # the errors come from the new pod
    codes = rate(before, during, 30, "http_requests_total", "code", service="auth", env="prod")
    assert (codes["500"] + codes["503"]) / sum(codes.values()) > 0.05
    assert total(during, "kube_pod_status_ready", service="auth", env="prod", condition="false") >= 1
    # The broken pods are slow as well as wrong.
    p95_pod = {d["pod"]: v for (n, labels), v in during.items()
               if n == "http_request_duration_seconds_sum" and (d := dict(labels))["service"] == "auth"}
    counts = {d["pod"]: v for (n, labels), v in during.items()
              if n == "http_request_duration_seconds_count" and (d := dict(labels))["service"] == "auth"}
    assert p95_pod[broken[0]] / counts[broken[0]] > 3 * max(p95_pod[p] / counts[p] for p in counts if p not in broken)

    sim.set_image("auth", "prod", "v1.4.0")  # what a rollback does
    sim.run(20)
    settled = sim.scrape()
    later = sim.run(30)
    codes = rate(settled, later, 30, "http_requests_total", "code", service="auth", env="prod")
    assert (codes.get("500", 0) + codes.get("503", 0)) / sum(codes.values()) < 0.01
    # The broken pods' request series stay a while, frozen (as an ingress' exporter keeps them),
    # so a rate over the next minute still sees their errors; their CPU and readiness went at once.
    frozen = {p: v for p, v in by(later, "http_requests_total", "pod", service="auth", env="prod").items()
              if p in broken}
    assert frozen and frozen == {p: v for p, v in by(settled, "http_requests_total", "pod").items() if p in broken}
    assert not set(by(later, "container_cpu_usage_seconds_total", "pod", service="auth")) & set(broken)
    assert not set(by(later, "kube_pod_status_ready", "pod", service="auth")) & set(broken)
    gone = sim.run(LINGER_SECONDS)
    assert not set(by(gone, "http_requests_total", "pod", service="auth", env="prod")) & set(broken)


def test_more_replicas_spread_the_same_traffic_thinner():
    sim = Sim()
    before = sim.scrape()
    three = sim.run(30)
    per_pod_3 = rate(before, three, 30, "http_requests_total", "pod", service="chat-gui", env="prod")
    sim.scale("chat-gui", "prod", 6)
    sim.run(20)
    start = sim.scrape()
    six = sim.run(30)
    per_pod_6 = rate(start, six, 30, "http_requests_total", "pod", service="chat-gui", env="prod")
    assert len(per_pod_3) == 3 and len(per_pod_6) == 6
    assert abs(sum(per_pod_6.values()) - sum(per_pod_3.values())) / sum(per_pod_3.values()) < 0.2
    assert max(per_pod_6.values()) < 0.7 * min(per_pod_3.values())
    lat3 = total(three, "http_request_duration_seconds_sum", service="chat-gui", env="prod") \
        - total(before, "http_request_duration_seconds_sum", service="chat-gui", env="prod")
    n3 = total(three, "http_request_duration_seconds_count", service="chat-gui", env="prod") \
        - total(before, "http_request_duration_seconds_count", service="chat-gui", env="prod")
    lat6 = total(six, "http_request_duration_seconds_sum", service="chat-gui", env="prod") \
        - total(start, "http_request_duration_seconds_sum", service="chat-gui", env="prod")
    n6 = total(six, "http_request_duration_seconds_count", service="chat-gui", env="prod") \
        - total(start, "http_request_duration_seconds_count", service="chat-gui", env="prod")
    assert lat6 / n6 < lat3 / n3  # less load per pod, faster answers
