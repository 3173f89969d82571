"""Metrics from Prometheus: numbers for ``!status``, charts for ``!graph``, ``!query``, alert graphs.

No discord import. The Prometheus client is ``prometheus-api-client`` (blocking ``requests``
calls), so every call runs on a small thread pool of its own with the request timeout of
``metrics.timeout_seconds`` and an asyncio bound on top: a slow or dead Prometheus costs a
command at most that long, and never blocks the event loop.

Per-service PromQL templates come from ``metrics`` in the settings (``config/settings.py``):
``{service}``, ``{env}``, ``{namespace}``, ``{deployment}`` and ``{window}`` are replaced
literally (PromQL's own braces need no escaping).

    service = MetricsService.from_settings(settings)
    await service.readings([("chat", "prod", target)], ["request_rate", "error_ratio"])
    await service.graph("chat", "prod", target, parse_graph_args("error_ratio 6h", ...))
    await service.query('sum by (code) (rate(http_requests_total[5m]))')
    await service.close()
"""

from __future__ import annotations

import ast
import base64
import heapq
import asyncio
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlparse

from commands.catalog import UserError, suggest
from commands.models import MetricReading
from config.settings import MetricQuery, MetricsConfig, Settings

MIN_RANGE = timedelta(minutes=5)
MAX_RANGE = timedelta(days=14)
POINTS = 240  # a chart's resolution: about one point per 4 pixels
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_TABLE_ROWS = 20  # !query: series shown
MAX_TABLE_CHARS = 1600  # !query: characters of the table (a chat message holds 2,000)
MAX_LABEL_CHARS = 90  # !query: one series' label set


# ------------------------------------------------------------------------------------ errors


class PrometheusError(UserError):
    """A Prometheus problem said plainly (shown in chat as is)."""


class PrometheusUnavailable(PrometheusError):
    """Prometheus is not configured, down, or too slow."""


class BadQuery(PrometheusError):
    """Prometheus refused the query (a PromQL syntax or type error)."""

    def __init__(self, reason: str, promql: str) -> None:
        self.reason, self.promql = reason, promql
        shown = promql if len(promql) <= 300 else promql[:299] + "…"
        super().__init__(f"Prometheus rejected the query: {reason}\n`{shown.replace('`', 'ˋ')}`")


class NoData(PrometheusError):
    """The query is fine but matches no series."""


# ------------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class Series:
    """One time series: its labels and (unix time, value) points in time order."""

    labels: Mapping[str, str]
    points: Sequence[tuple[float, float]] = field(default_factory=tuple)


@dataclass(frozen=True)
class Threshold:
    """A horizontal line on a chart."""

    value: float
    label: str
    kind: str = "threshold"  # warn | critical | threshold (an alert's comparison)


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class InstantResult:
    """An instant query's answer: a vector (``samples``), a scalar or string, or a range vector."""

    kind: Literal["vector", "scalar", "string", "matrix"]
    at: float
    samples: list[Sample] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)  # a matrix (``foo[5m]``)
    scalar: float | None = None
    text: str | None = None


def sig(value: float, digits: int = 3) -> str:
    """Three significant digits, without an exponent for everyday magnitudes: 0.123, 12.3, 1234."""
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(digits - 1 - magnitude, 0)
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_value(value: float | None, unit: str) -> str:
    """A number as a person reads it: ``12.3 req/s``, ``1.25%``, ``43 ms``, ``187 MiB``."""
    if value is None or math.isnan(value):
        return "no data"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if unit == "rps":
        return f"{sig(value)} req/s"
    if unit == "ratio":
        return f"{sig(value * 100)}%"
    if unit == "seconds":
        return f"{sig(value * 1000)} ms" if abs(value) < 1 else f"{sig(value)} s"
    if unit == "cores":
        return f"{round(value * 1000):g}m cores" if abs(value) < 1 else f"{sig(value)} cores"
    if unit == "bytes":
        for name, scale in (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
            if abs(value) >= scale:
                return f"{sig(value / scale)} {name}"
        return f"{value:.0f} B"
    for suffix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{sig(value / size)}{suffix}"
    return sig(value)


def _float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


# ------------------------------------------------------------------------------------ client


def public_url(url: str) -> str:
    """``url`` without what may be a secret: the userinfo (``user:pass@``, cut at the last ``@``),
    the query (``?token=…``) and the fragment. What chat, logs and links may show of prometheus_url."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = rest.split("#", 1)[0].split("?", 1)[0]
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    return f"{scheme}{sep}{host}{slash}{path}".rstrip("/")


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that may be secrets (userinfo and its pieces, query values), longest first."""
    rest = url.partition("://")[2] or url
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    userinfo = authority.rpartition("@")[0]
    found = [userinfo, *userinfo.split(":", 1)] if userinfo else []
    query = url.split("#", 1)[0].partition("?")[2]
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        found += [value, unquote(value)]
    if userinfo:  # as it travels in an Authorization header, should anything echo that
        found.append(base64.b64encode(unquote(userinfo).encode()).decode())
    secrets = {f for f in found if len(f) >= 3}
    return sorted(secrets | {quote(f, safe="") for f in secrets}, key=len, reverse=True)


class PrometheusClient:
    """``prometheus-api-client`` off the event loop: its own threads, a timeout on every call.

    ``url`` may carry credentials (``https://user:pass@prometheus``, ``?token=``): they are used to
    connect, never shown. Messages name :attr:`shown_url`, and every error text is scrubbed of them."""

    def __init__(self, url: str, *, timeout: float = 3.0, workers: int = 4) -> None:
        self.url = url.rstrip("/")
        self.shown_url = public_url(self.url)
        self._secrets = [self.url, *url_secrets(self.url)]
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prometheus")
        self._connection: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        with self._lock:
            if self._connection is None:
                from prometheus_api_client import PrometheusConnect
                from urllib3.util.retry import Retry

                # No retries: a dead Prometheus should cost one timeout, not three with backoff.
                self._connection = PrometheusConnect(
                    url=self.url, timeout=self.timeout,  # type: ignore[arg-type]
                    retry=Retry(total=0, connect=0, read=0, status=0, raise_on_status=False))
            return self._connection

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._connection is not None:
            self._connection.close()

    async def _call(self, promql: str, fn: Callable[[Any], Any]) -> Any:
        loop = asyncio.get_running_loop()

        def run() -> Any:
            return fn(self._connect())

        future = loop.run_in_executor(self._executor, run)
        try:
            return await asyncio.wait_for(future, self.timeout + 1.0)
        except TimeoutError:
            raise self._slow() from None
        except Exception as err:
            error = self._fault(err, promql)
            error.args = tuple(self.scrub(a) if isinstance(a, str) else a for a in error.args)
            if isinstance(error, BadQuery):
                error.reason = self.scrub(error.reason)
            # Not chained: the original exception's text (and a traceback in a log) holds the URL.
            raise error from None

    def scrub(self, text: str) -> str:
        """``text`` with the configured URL and its secrets (userinfo, query values) replaced."""
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, self.shown_url if secret == self.url else "***")
        return text

    def _slow(self) -> PrometheusUnavailable:
        return PrometheusUnavailable(f"Prometheus at {self.shown_url} did not answer within {self.timeout:g} s")

    def _fault(self, err: Exception, promql: str) -> PrometheusError:
        import requests
        from prometheus_api_client import PrometheusApiClientException

        if isinstance(err, requests.Timeout) or (isinstance(err, requests.ConnectionError)
                                                  and "timed out" in str(err).lower()):
            return self._slow()  # without retries, urllib3 reports a read timeout as a connection error
        if isinstance(err, requests.ConnectionError):
            return PrometheusUnavailable(f"cannot reach Prometheus at {self.shown_url}: {_connection_problem(err)}")
        if isinstance(err, PrometheusApiClientException):
            status, kind, reason = _api_error(str(err))
            if status in (400, 422) or kind in ("bad_data", "execution"):
                return BadQuery(reason, promql)
            if status == 503 or kind in ("timeout", "canceled"):
                return PrometheusUnavailable(f"Prometheus at {self.shown_url} could not answer: {reason}")
            return PrometheusError(f"Prometheus at {self.shown_url} answered HTTP {status}: {reason}")
        if isinstance(err, ValueError | KeyError):  # not Prometheus' JSON (a proxy's page?)
            return PrometheusError(f"{self.shown_url} did not answer like Prometheus ({type(err).__name__})")
        return PrometheusError(f"asking Prometheus at {self.shown_url} failed: {type(err).__name__}: {err}")

    async def instant(self, promql: str, at: float | None = None) -> InstantResult:
        """``/api/v1/query`` at unix time ``at`` (default: now)."""
        when = time.time() if at is None else at
        params = {"time": f"{when:.3f}", "timeout": f"{self.timeout:g}s"}
        data = await self._call(promql, lambda c: c.custom_query(promql, params=params))
        return _instant(data, when)

    async def range(self, promql: str, start: float, end: float, step: float) -> list[Series]:
        """``/api/v1/query_range``: one :class:`Series` per result, points in time order."""
        params = {"timeout": f"{self.timeout:g}s"}
        data = await self._call(promql, lambda c: c.custom_query_range(
            promql, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), f"{step:g}s",
            params=params))
        return [Series(dict(r.get("metric") or {}), [(float(t), _float(v)) for t, v in r.get("values") or []])
                for r in data or []]


def _instant(data: Any, at: float) -> InstantResult:
    """The ``result`` of an instant query, whatever its type (the client drops ``resultType``)."""
    if isinstance(data, list) and len(data) == 2 and not isinstance(data[0], dict):
        value = data[1]
        number = _float(value)
        if math.isnan(number) and str(value).lower() != "nan":
            return InstantResult("string", at, text=str(value))
        return InstantResult("scalar", at, scalar=number)
    data = data or []
    if any("values" in r for r in data):
        return InstantResult("matrix", at, series=[
            Series(dict(r.get("metric") or {}), [(float(t), _float(v)) for t, v in r.get("values") or []])
            for r in data])
    return InstantResult("vector", at, samples=[
        Sample(dict(r.get("metric") or {}), _float((r.get("value") or [0, "NaN"])[1])) for r in data])


def _api_error(message: str) -> tuple[int, str, str]:
    """(HTTP status, errorType, error) from prometheus-api-client's exception text."""
    m = re.match(r"HTTP Status Code (\d+) \((.*)\)$", message, re.DOTALL)
    if not m:
        return 0, "", message
    status, body = int(m[1]), m[2]
    try:
        raw = ast.literal_eval(body)
        doc = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        kind, reason = str(doc.get("errorType", "")), str(doc.get("error", "")).strip()
    except (ValueError, SyntaxError, AttributeError, TypeError):
        return status, "", body[:300]
    reason = re.sub(r'^invalid parameter "query":\s*', "", reason)
    return status, kind, reason or f"HTTP {status}"


def _connection_problem(err: Exception) -> str:
    text = str(err)
    for marker, said in (("Connection refused", "connection refused"), ("Name or service not known", "unknown host"),
                         ("No route to host", "no route to host"), ("timed out", "timed out")):
        if marker in text:
            return said
    return type(err).__name__


# ------------------------------------------------------------------------------------ templates


def render_template(template: str, *, service: str = "", env: str = "", namespace: str = "",
                    deployment: str = "", window: str = "1m") -> str:
    """Replace the placeholders literally (``str.format`` would trip over PromQL's braces)."""
    for key, value in (("{service}", service), ("{env}", env), ("{namespace}", namespace),
                       ("{deployment}", deployment), ("{window}", window)):
        template = template.replace(key, value)
    return template


def target_names(service: str, env: str, target: object | None) -> dict[str, str]:
    """What a template's placeholders mean for one target: a Deployment's namespace, or the env."""
    namespace = getattr(target, "namespace", None) or env
    deployment = getattr(target, "deployment", None) or getattr(target, "container", None) or service
    return {"service": service, "env": env, "namespace": namespace, "deployment": deployment}


_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_range(text: str) -> timedelta | None:
    """``90m``, ``6h``, ``1d12h``, ``2w``; None when ``text`` is not such a duration."""
    m = _DURATION.match(text.strip().lower())
    if not m or not any(m.groups()):
        return None
    w, d, h, mins, s = (int(g or 0) for g in m.groups())
    return timedelta(weeks=w, days=d, hours=h, minutes=mins, seconds=s)


def short_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def prom_duration(seconds: float) -> str:
    return f"{max(math.ceil(seconds), 1)}s"


def step_for(span: timedelta, points: int = POINTS) -> int:
    """A round step giving about ``points`` points over ``span``."""
    raw = span.total_seconds() / points
    return next((s for s in NICE_STEPS if s >= raw), NICE_STEPS[-1])


@dataclass(frozen=True)
class GraphRequest:
    """What ``!graph <service> <env> [metric|promql] [range]`` asks for."""

    metric: str | None  # a configured metric, or None for ``promql``
    promql: str | None  # raw PromQL (needs the ``query`` grant)
    span: timedelta

    @property
    def raw(self) -> bool:
        return self.promql is not None


def parse_graph_args(text: str, metrics: Sequence[str], *, default_metric: str, default_range: str) -> GraphRequest:
    """``""`` → the default metric over the default range; ``error_ratio 6h``; ``6h``;
    ``sum(rate(x[5m])) 2h`` (PromQL). A word that is almost a metric name is a typo, not PromQL."""
    words = text.strip().split()
    span = None
    if words and (span := parse_range(words[-1])) is not None:
        words = words[:-1]
    rest = " ".join(words)
    span = span or parse_range(default_range) or timedelta(hours=1)
    if not MIN_RANGE <= span <= MAX_RANGE:
        raise UserError(f"a graph covers between {short_duration(MIN_RANGE)} and {short_duration(MAX_RANGE)}, "
                        f"not {short_duration(span)}")
    if not rest:
        return GraphRequest(default_metric, None, span)
    if rest in metrics:
        return GraphRequest(rest, None, span)
    looks_like_a_name = re.fullmatch(r"[a-z][a-z0-9_]*", rest) and rest != "up" and not rest.endswith(
        ("_total", "_bytes", "_seconds", "_count", "_sum", "_bucket"))  # those are Prometheus metric names
    if looks_like_a_name and (hint := suggest(rest, list(metrics))) and hint != rest:
        raise UserError(f"no metric `{rest}` — did you mean `{hint}`? (known: "
                        + ", ".join(f"`{m}`" for m in metrics) + "; or give PromQL)")
    return GraphRequest(None, rest, span)


# ------------------------------------------------------------------------------------ alerts


def expression_of(generator_url: str) -> str | None:
    """The PromQL of an alert from its ``generatorURL`` (``…/graph?g0.expr=…``)."""
    if not generator_url:
        return None
    try:
        query = parse_qs(urlparse(generator_url).query)
    except ValueError:
        return None
    values = query.get("g0.expr") or query.get("expr")
    expr = values[0].strip() if values else ""
    return expr or None


_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)\s*(bool\s+)?([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def split_threshold(expr: str) -> tuple[str, Threshold | None]:
    """``rate(x[5m]) > 0.05`` → (``rate(x[5m])``, a 0.05 line): what the alert compares, charted
    whole, with its threshold drawn; an expression without a top-level comparison is kept."""
    m = _COMPARISON.search(expr)
    if not m or m.group(2):
        return expr, None
    left = expr[: m.start()].rstrip()
    top = _top_level(left)
    # The comparison must be the last operation: at the top level, with no other comparison or
    # set operator (``a > 1 and b > 2``) before it.
    if top is None or not left or re.search(r"\b(and|or|unless)\b|==|!=|>=|<=|[<>]", top):
        return expr, None
    return left, Threshold(float(m.group(3)), f"{m.group(1)} {m.group(3)}")


def _top_level(text: str) -> str | None:
    """``text`` without what is inside brackets or quotes; None when the brackets do not balance."""
    out, depth, quote = [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
            continue
        if ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0:
            out.append(ch)
    return "".join(out) if depth == 0 and not quote else None


# ------------------------------------------------------------------------------------ the service


@dataclass(frozen=True)
class Chart:
    """A drawn chart and what it shows."""

    png: bytes
    filename: str
    title: str
    promql: str
    series: int
    span: timedelta


class MetricsService:
    """Prometheus as the commands and the alerts see it: readings, charts, instant queries."""

    def __init__(self, client: PrometheusClient, config: MetricsConfig, *, tz: tzinfo = UTC,
                 tz_name: str = "UTC") -> None:
        self.client = client
        self.config = config
        self.tz = tz
        self.tz_name = tz_name

    @classmethod
    def from_settings(cls, settings: Settings) -> MetricsService:
        if not settings.prometheus_url:
            raise PrometheusUnavailable("no Prometheus is configured (prometheus_url)")
        from zoneinfo import ZoneInfo

        tz = UTC if settings.timezone == "UTC" else ZoneInfo(settings.timezone)
        client = PrometheusClient(settings.prometheus_url, timeout=settings.metrics.timeout_seconds)
        return cls(client, settings.metrics, tz=tz, tz_name=settings.timezone)

    @property
    def url(self) -> str:
        """The Prometheus URL as it may be shown: without credentials."""
        return self.client.shown_url

    async def close(self) -> None:
        await self.client.close()

    def metric_names(self, service: str | None = None) -> list[str]:
        return self.config.names(service)

    # -------------------------------------------------------------------- !status numbers

    async def readings(self, targets: Iterable[tuple[str, str, object | None]], names: Sequence[str],
                       *, at: float | None = None) -> tuple[float, dict[tuple[str, str], list[MetricReading]]]:
        """The metrics ``names`` of each (service, env, target), all evaluated at one instant.

        Returns (the instant, readings by (service, env)). Raises :class:`PrometheusUnavailable`
        when Prometheus cannot answer at all (or not within the timeout); a single bad template
        only marks its own reading.
        """
        when = float(math.floor(time.time()) - 1) if at is None else at  # a settled scrape
        jobs: list[tuple[tuple[str, str], str, MetricQuery, str]] = []
        for service, env, target in targets:
            names_here = target_names(service, env, target)
            for name in names:
                template = self.config.query(service, name)
                if template is None:
                    continue
                promql = render_template(template.query, window=self.config.rate_window, **names_here)
                jobs.append(((service, env), name, template, promql))
        if not jobs:
            return when, {}

        async def one(job: tuple[tuple[str, str], str, MetricQuery, str]) -> MetricReading:
            _, name, template, promql = job
            try:
                result = await self.client.instant(promql, when)
            except BadQuery as err:
                return MetricReading(name=name, title=template.title, promql=promql,
                                     error=f"bad query: {err.reason}", text="bad query")
            return _reading(name, template, promql, result)

        try:
            results = await asyncio.wait_for(asyncio.gather(*(one(j) for j in jobs)),
                                             self.client.timeout + 1.5)
        except TimeoutError:
            raise self.client._slow() from None
        out: dict[tuple[str, str], list[MetricReading]] = {}
        for job, reading in zip(jobs, results, strict=True):
            out.setdefault(job[0], []).append(reading)
        return when, out

    # -------------------------------------------------------------------- !graph

    async def graph(self, service: str, env: str, target: object | None, request: GraphRequest,
                    *, now: float | None = None) -> Chart:
        """Chart a configured metric (its ``graph`` template) or raw PromQL for one target."""
        step = step_for(request.span)
        window = max(_seconds(self.config.rate_window), 2 * step)
        names = target_names(service, env, target)
        thresholds: list[Threshold] = []
        if request.metric is not None:
            template = self.config.query(service, request.metric)
            if template is None:
                raise UserError(f"no metric `{request.metric}` for `{service}`")
            promql = render_template(template.graph or template.query, window=prom_duration(window), **names)
            unit, what = template.unit, template.title
            for kind in ("warn", "critical"):
                value = getattr(template, kind)
                if value is not None:
                    thresholds.append(Threshold(value, f"{kind} {format_value(value, unit)}", kind))
        else:
            assert request.promql is not None
            promql = render_template(request.promql, window=prom_duration(window), **names)
            unit, what = "count", "PromQL"
        title = f"{service} · {env} — {what}"
        return await self.chart(promql, title=title, unit=unit, span=request.span, step=step, now=now,
                                thresholds=thresholds, filename=f"{service}-{env}-{request.metric or 'query'}.png")

    async def chart(self, promql: str, *, title: str, span: timedelta, unit: str = "count", step: int | None = None,
                    now: float | None = None, thresholds: Sequence[Threshold] = (), filename: str = "graph.png",
                    subtitle: str | None = None) -> Chart:
        """Draw ``promql`` over the last ``span``; :class:`NoData` when it matches nothing."""
        step = step or step_for(span)
        end = float(math.floor(time.time() if now is None else now))  # the newest point is now
        start = end - span.total_seconds()
        series = await self.client.range(promql, start, end, step)
        if not any(s.points for s in series):
            raise NoData(f"no data for `{_clip(promql, 300)}` over the last {short_duration(span)}")
        from commands.charts import line_chart

        sub = subtitle if subtitle is not None else (
            f"last {short_duration(span)} · step {short_duration(timedelta(seconds=step))} · "
            f"{len(series)} series")
        png = await asyncio.to_thread(
            line_chart, series, title=title, unit=unit, start=start, end=end, step=step, tz=self.tz,
            tz_name=self.tz_name, subtitle=sub, footer=promql, thresholds=thresholds)
        return Chart(png, _filename(filename), title, promql, len(series), span)

    async def expression_chart(self, expr: str, *, title: str, span: timedelta = timedelta(hours=1),
                               now: float | None = None) -> Chart | None:
        """An alert's own expression over the last hour (the threshold as a line); None: no data."""
        shown, threshold = split_threshold(expr)
        try:
            return await self.chart(shown, title=title, span=span, now=now, thresholds=[threshold] if threshold else [],
                                    filename="alert-graph.png")
        except NoData:
            return None
        except BadQuery:
            if shown == expr:
                raise
            return await self.chart(expr, title=title, span=span, now=now, filename="alert-graph.png")

    # -------------------------------------------------------------------- !query

    async def query(self, promql: str) -> InstantResult:
        promql = promql.strip().strip("`").strip()
        if not promql:
            raise UserError("give a PromQL expression, e.g. `!query sum by (service) (rate(http_requests_total[5m]))`")
        return await self.client.instant(promql)


def _reading(name: str, template: MetricQuery, promql: str, result: InstantResult) -> MetricReading:
    if result.kind == "scalar":
        values = [result.scalar]
    elif result.kind == "vector":
        values = [s.value for s in result.samples]
    else:
        return MetricReading(name=name, title=template.title, promql=promql, text="bad query",
                             error=f"the template gives a {result.kind}, not a number")
    if len(values) > 1:
        return MetricReading(name=name, title=template.title, promql=promql, text=f"{len(values)} series",
                             error=f"the template gives {len(values)} series; aggregate it (sum, max, …)")
    value = values[0] if values else None
    if value is not None and math.isnan(value):
        value = None
    return MetricReading(name=name, title=template.title, value=value, promql=promql,
                         text=format_value(value, template.unit), level=template.level(value))


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|[smhdwy])", text))


def _filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:80] or "graph.png"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------------ !query table


def result_table(result: InstantResult, limit: int = MAX_TABLE_ROWS,
                 max_chars: int = MAX_TABLE_CHARS) -> tuple[str, int]:
    """An instant result as aligned text lines (largest values first); returns (text, rows not shown).

    Bounded whatever Prometheus answers: at most ``limit`` rows and ``max_chars`` characters, a
    label set cut at :data:`MAX_LABEL_CHARS`, a range vector as its last value and sample count
    (not its points). Only the rows shown are formatted, and picking them is O(n log limit)."""
    if result.kind == "scalar":
        return f"scalar  {_number(result.scalar)}", 0
    if result.kind == "string":
        return f"string  {_clip(repr(result.text), MAX_LABEL_CHARS * 2)}", 0
    if result.kind == "matrix":
        total = len(result.series)
        rows = [(_clip(_labels(s.labels), MAX_LABEL_CHARS),
                 f"{_number(s.points[-1][1]) if s.points else '—'}  ({len(s.points)} samples)")
                for s in result.series[:limit]]
    else:
        total = len(result.samples)
        chosen = heapq.nsmallest(limit, result.samples,
                                 key=lambda s: (math.isnan(s.value), -s.value if not math.isnan(s.value) else 0))
        rows = [(_clip(_labels(s.labels), MAX_LABEL_CHARS), _number(s.value)) for s in chosen]
    if not rows:
        return "", 0
    width = max(len(r[0]) for r in rows)
    lines: list[str] = []
    used = 0
    for label, value in rows:
        line = f"{label:<{width}}  {value}"
        if lines and used + len(line) + 1 > max_chars:
            break
        lines.append(line[:max_chars])
        used += len(line) + 1
    return "\n".join(lines), total - len(lines)


def _labels(labels: Mapping[str, str]) -> str:
    name = labels.get("__name__", "")
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{inner}}}" if inner or not name else name


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.6g}"
