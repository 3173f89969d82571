"""The metrics core without a Prometheus: values, templates, arguments, alert expressions, charts.

(Against a real Prometheus: tests/bot/test_metrics.py and tests/alerts/test_graphs.py.)
"""

from __future__ import annotations

import io
import math
from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import pytest
from PIL import Image
from pydantic import ValidationError

from commands.catalog import UserError
from commands.charts import CHART_SIZE, legend_labels, line_chart
from commands.metrics import (
    InstantResult,
    Sample,
    Series,
    Threshold,
    _api_error,
    _instant,
    expression_of,
    format_value,
    parse_graph_args,
    parse_range,
    render_template,
    result_table,
    split_threshold,
    step_for,
    target_names,
)
from config.settings import KubernetesTarget, MetricQuery, MetricsConfig, Settings


@pytest.mark.parametrize(("value", "unit", "text"), [
    (12.345, "rps", "12.3 req/s"),
    (0.0, "rps", "0 req/s"),
    (0.004987, "ratio", "0.499%"),
    (1.0, "ratio", "100%"),
    (2 / 3, "ratio", "66.7%"),
    (0.0432, "seconds", "43.2 ms"),
    (1.5, "seconds", "1.5 s"),
    (0.123, "cores", "123m cores"),
    (2.5, "cores", "2.5 cores"),
    (187 * 2**20, "bytes", "187 MiB"),
    (3.2 * 2**30, "bytes", "3.2 GiB"),
    (512, "bytes", "512 B"),
    (1234.0, "count", "1.23k"),
    (7.0, "count", "7"),
    (None, "rps", "no data"),
    (math.nan, "ratio", "no data"),
    (math.inf, "seconds", "∞"),
])
def test_values_read_as_people_read_them(value, unit, text):
    assert format_value(value, unit) == text


@pytest.mark.parametrize(("value", "level"), [(0.001, "ok"), (0.01, "warn"), (0.049, "warn"), (0.05, "critical"),
                                              (None, "none")])
def test_levels_above(value, level):
    assert MetricQuery(title="errors", query="x", unit="ratio", warn=0.01, critical=0.05).level(value) == level


@pytest.mark.parametrize(("value", "level"), [(1.0, "ok"), (0.75, "warn"), (0.5, "critical"), (0.0, "critical")])
def test_levels_below(value, level):
    assert MetricQuery(title="up", query="x", unit="ratio", warn=0.99, critical=0.5, bad_when="below").level(value) == level


def test_no_thresholds_no_colour():
    assert MetricQuery(title="cpu", query="x").level(3.0) == "none"


def test_templates_replace_placeholders_literally():
    target = KubernetesTarget(namespace="production", deployment="chat-web")
    names = target_names("chat", "prod", target)
    assert names == {"service": "chat", "env": "prod", "namespace": "production", "deployment": "chat-web"}
    text = render_template('sum(rate(x{namespace="{namespace}", app="{deployment}", env="{env}"}[{window}]))',
                           window="2m", **names)
    assert text == 'sum(rate(x{namespace="production", app="chat-web", env="prod"}[2m]))'
    assert target_names("chat", "dev", None)["namespace"] == "dev"


def test_config_keeps_the_defaults_it_does_not_replace():
    config = MetricsConfig(queries={"request_rate": {"title": "rps", "query": "sum(rate(reqs[{window}]))", "unit": "rps"}},
                           services={"auth": {"latency_p95": {"title": "p95", "query": "auth_p95", "unit": "seconds"}}})
    assert list(config.queries) == ["up", "request_rate", "error_ratio", "latency_p95", "cpu", "memory"]
    assert config.queries["request_rate"].title == "rps"
    assert config.query("auth", "latency_p95").query == "auth_p95"
    assert config.query("chat", "latency_p95").title == "p95 latency"
    assert Settings().metrics.query("chat", "up").bad_when == "below"


@pytest.mark.parametrize(("given", "problem"), [
    ({"queries": {"x": {"title": "x", "query": "up{servcie}"}}}, "unknown placeholder {servcie}"),
    ({"queries": {"x": {"title": "x", "query": "sum(rate(x[5m])"}}}, "unbalanced brackets"),
    ({"status": ["up", "latency"]}, "no metric 'latency'"),
    ({"graph_default": "rps"}, "no metric 'rps'"),
    ({"rate_window": "1 minute"}, "a PromQL duration"),
    ({"queries": {"Bad-Name": {"title": "x", "query": "up"}}}, "metric name 'Bad-Name'"),
])
def test_config_problems_are_named(given, problem):
    with pytest.raises(ValidationError, match=problem):
        MetricsConfig(**given)


METRICS = ["up", "request_rate", "error_ratio", "latency_p95", "cpu", "memory"]


@pytest.mark.parametrize(("text", "metric", "promql", "span"), [
    ("", "request_rate", None, timedelta(hours=1)),
    ("6h", "request_rate", None, timedelta(hours=6)),
    ("error_ratio", "error_ratio", None, timedelta(hours=1)),
    ("latency_p95 30m", "latency_p95", None, timedelta(minutes=30)),
    ("1d12h", "request_rate", None, timedelta(days=1, hours=12)),
    ("sum(rate(http_requests_total[5m]))", None, "sum(rate(http_requests_total[5m]))", timedelta(hours=1)),
    ("sum by (code) (rate(x[1m])) 2h", None, "sum by (code) (rate(x[1m]))", timedelta(hours=2)),
    ("http_requests_total", None, "http_requests_total", timedelta(hours=1)),
    ("up", "up", None, timedelta(hours=1)),
])
def test_graph_arguments(text, metric, promql, span):
    request = parse_graph_args(text, METRICS, default_metric="request_rate", default_range="1h")
    assert (request.metric, request.promql, request.span) == (metric, promql, span)
    assert request.raw == (promql is not None)


@pytest.mark.parametrize(("text", "problem"), [
    ("eror_ratio", "did you mean `error_ratio`"),
    ("latency 1m", "between 5m and 14d"),
    ("30d", "between 5m and 14d"),
])
def test_graph_argument_problems(text, problem):
    with pytest.raises(UserError, match=problem):
        parse_graph_args(text, METRICS, default_metric="request_rate", default_range="1h")


def test_ranges_and_steps():
    assert parse_range("90m") == timedelta(minutes=90)
    assert parse_range("2w") == timedelta(weeks=2)
    assert parse_range("rate") is None and parse_range("") is None
    assert step_for(timedelta(hours=1)) == 15
    assert step_for(timedelta(minutes=5)) == 2
    assert step_for(timedelta(days=7)) == 3600


@pytest.mark.parametrize(("url", "expr"), [
    ("http://prometheus:9090/graph?g0.expr=up+%3D%3D+0&g0.tab=1", "up == 0"),
    ("http://p/graph?g0.expr=rate%28x%5B5m%5D%29+%3E+0.05", "rate(x[5m]) > 0.05"),
    ("http://prometheus.example.com/graph?g0.expr=up", "up"),
    ("http://p/alerts", None),
    ("", None),
])
def test_the_expression_comes_from_the_generator_url(url, expr):
    assert expression_of(url) == expr


@pytest.mark.parametrize(("expr", "shown", "threshold"), [
    ("up == 0", "up", 0.0),
    ('sum(rate(x{code=~"5.."}[5m])) / sum(rate(x[5m])) > 0.05', 'sum(rate(x{code=~"5.."}[5m])) / sum(rate(x[5m]))', 0.05),
    ("histogram_quantile(0.9, sum by (le) (rate(b[5m]))) >= 1.5e-1", "histogram_quantile(0.9, sum by (le) (rate(b[5m])))", 0.15),
    ("a > 1 and b > 2", "a > 1 and b > 2", None),
    ("(a > 1)", "(a > 1)", None),
    ("rate(x[5m]) > bool 1", "rate(x[5m]) > bool 1", None),
    ('x{a="b>c"}', 'x{a="b>c"}', None),
    ("absent(up)", "absent(up)", None),
])
def test_an_alerts_threshold_is_split_off(expr, shown, threshold):
    got, line = split_threshold(expr)
    assert got == shown
    assert (line.value if line else None) == threshold


def test_prometheus_errors_are_read_from_the_client_exception():
    message = ("HTTP Status Code 400 (b'{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"invalid parameter "
               "\\\\\"query\\\\\": 1:10: parse error: unclosed left parenthesis\"}')")
    assert _api_error(message) == (400, "bad_data", "1:10: parse error: unclosed left parenthesis")
    assert _api_error("HTTP Status Code 502 (b'<html>bad gateway</html>')")[0] == 502


def test_instant_results_of_every_type():
    assert _instant([1700000000.0, "42"], 0).scalar == 42.0
    assert _instant([1700000000.0, "hello"], 0).text == "hello"
    vector = _instant([{"metric": {"code": "200"}, "value": [1, "3.5"]}], 0)
    assert vector.kind == "vector" and vector.samples == [Sample({"code": "200"}, 3.5)]
    matrix = _instant([{"metric": {}, "values": [[1, "1"], [2, "2"]]}], 0)
    assert matrix.kind == "matrix" and matrix.series[0].points == [(1.0, 1.0), (2.0, 2.0)]
    assert _instant([], 0).kind == "vector"


def test_query_tables_put_the_largest_first():
    result = InstantResult("vector", 0, samples=[Sample({"service": "a"}, 1.0), Sample({"service": "b"}, 30.5),
                                                  Sample({"service": "c"}, math.nan)])
    text, more = result_table(result)
    assert text.splitlines() == ['{service="b"}  30.5', '{service="a"}  1', '{service="c"}  NaN']
    assert more == 0
    many = InstantResult("vector", 0, samples=[Sample({"__name__": "up", "i": str(i)}, i) for i in range(30)])
    text, more = result_table(many, limit=20)
    assert len(text.splitlines()) == 20 and more == 10 and text.startswith('up{i="29"}')
    assert result_table(InstantResult("scalar", 0, scalar=2.0)) == ("scalar  2", 0)


# ---------------------------------------------------------------------------------------- charts


def series(n: int, *, start: float = 1_700_000_000, points: int = 240, step: float = 15) -> list[Series]:
    return [Series({"service": "chat", "pod": f"chat-{i}"},
                   [(start + k * step, 10 + i + math.sin(k / 10)) for k in range(points)]) for i in range(n)]


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_a_chart_is_a_png_of_the_chart_size():
    png = line_chart(series(3), title="chat · prod — CPU", unit="cores", start=1_700_000_000,
                     end=1_700_000_000 + 3600, step=15, tz=UTC, tz_name="UTC", subtitle="last 1h",
                     footer="sum by (pod) (rate(x[1m]))", thresholds=[Threshold(12, "warn", "warn")])
    image = decode(png)
    assert image.format == "PNG" and image.size == CHART_SIZE
    assert image.getpixel((2, 2))[:3] == (0x31, 0x33, 0x38)


def test_a_chart_in_another_zone_and_a_week_long(tmp_path):
    png = line_chart(series(1, points=168, step=3600), title="t", unit="bytes", start=1_700_000_000,
                     end=1_700_000_000 + 7 * 86400, step=3600, tz=ZoneInfo("Europe/Berlin"),
                     tz_name="Europe/Berlin")
    assert decode(png).size == CHART_SIZE


def test_a_chart_without_data_and_with_gaps_still_draws():
    assert decode(line_chart([], title="t", start=0, end=3600, step=15, tz=UTC, tz_name="UTC")).size == CHART_SIZE
    gappy = [Series({"pod": "a"}, [(t, 1.0) for t in range(0, 600, 15)] + [(t, 2.0) for t in range(1800, 3600, 15)])]
    assert decode(line_chart(gappy, title="t", start=0, end=3600, step=15, tz=UTC, tz_name="UTC")).size == CHART_SIZE


def test_many_series_are_cut_to_the_highest():
    png = line_chart(series(25), title="t", start=1_700_000_000, end=1_700_003_600, step=15, tz=UTC,
                     tz_name="UTC", max_series=10)
    assert decode(png).size == CHART_SIZE


def test_legends_name_what_differs():
    two = [Series({"service": "chat", "code": "200"}), Series({"service": "chat", "code": "500"})]
    assert legend_labels(two) == ["200", "500"]
    mixed = [Series({"code": "200", "pod": "a"}), Series({"code": "500", "pod": "b"})]
    assert legend_labels(mixed) == ["code=200 pod=a", "code=500 pod=b"]
    one = [Series({"__name__": "up", "job": "x"})]
    assert legend_labels(one) == ['up{job="x"}']
    assert legend_labels([Series({})]) == ["value"]
