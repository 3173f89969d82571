"""The bot's HTTP server over real HTTP: probes, metrics, routes, start/stop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bot.http import HttpServer, parse_listen
from bot.metrics import Metrics


class Readiness:
    def __init__(self) -> None:
        self.state: tuple[bool, str] = (False, "discord session not ready")

    def __call__(self) -> tuple[bool, str]:
        return self.state


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
async def server(metrics: Metrics, readiness: Readiness) -> AsyncIterator[HttpServer]:
    srv = HttpServer("127.0.0.1:0", metrics, readiness)
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def test_port_zero_binds_a_real_port(server: HttpServer):
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


async def test_healthz(server: HttpServer, client: aiohttp.ClientSession):
    async with client.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200
        assert await resp.text() == "ok"


async def test_readyz_follows_the_ready_check(
    server: HttpServer, client: aiohttp.ClientSession, readiness: Readiness
):
    async with client.get(f"{server.url}/readyz") as resp:
        assert resp.status == 503
        assert await resp.json() == {"ready": False, "reason": "discord session not ready"}
    readiness.state = (True, "ok")
    async with client.get(f"{server.url}/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"ready": True, "reason": "ok"}


async def test_readyz_fails_closed_when_the_check_raises(metrics: Metrics, client: aiohttp.ClientSession):
    def broken() -> tuple[bool, str]:
        raise KeyError("bot")

    srv = HttpServer("127.0.0.1:0", metrics, broken)
    await srv.start()
    try:
        async with client.get(f"{srv.url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["reason"] == "readiness check failed: KeyError"
    finally:
        await srv.stop()


async def test_metrics_in_prometheus_text_format(
    server: HttpServer, client: aiohttp.ClientSession, metrics: Metrics
):
    metrics.observe_command("deploy", "ok", 1.5)
    metrics.observe_command("deploy", "denied", 0.0)
    metrics.set_up(True)
    async with client.get(f"{server.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = await resp.text()
    assert 'opsbot_commands_total{command="deploy",result="ok"} 1.0' in body
    assert 'opsbot_commands_total{command="deploy",result="denied"} 1.0' in body
    assert 'opsbot_commands_denied_total{command="deploy"} 1.0' in body
    assert 'opsbot_command_duration_seconds_count{command="deploy"} 1.0' in body
    assert "opsbot_up 1.0" in body


async def test_metrics_negotiates_openmetrics(server: HttpServer, client: aiohttp.ClientSession, metrics: Metrics):
    metrics.observe_command("status", "ok", 0.2)
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with client.get(f"{server.url}/metrics", headers=headers) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        body = await resp.text()
    assert 'opsbot_commands_total{command="status",result="ok"} 1.0' in body
    assert body.endswith("# EOF\n")


async def test_stop_releases_the_port(metrics: Metrics, readiness: Readiness, client: aiohttp.ClientSession):
    first = HttpServer("127.0.0.1:0", metrics, readiness)
    await first.start()
    port = first.port
    async with client.get(f"{first.url}/healthz") as resp:
        assert resp.status == 200
    await first.stop()
    await first.stop()  # idempotent

    with pytest.raises(RuntimeError, match="not running"):
        first.port
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.get(f"http://127.0.0.1:{port}/healthz"):
            pass

    second = HttpServer(f"127.0.0.1:{port}", metrics, readiness)
    await second.start()
    try:
        assert second.port == port
    finally:
        await second.stop()


async def test_start_twice_is_an_error(server: HttpServer):
    with pytest.raises(RuntimeError, match="already running"):
        await server.start()


async def test_routes_added_before_start_are_served(metrics: Metrics, readiness: Readiness, client: aiohttp.ClientSession):
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    srv = HttpServer("127.0.0.1:0", metrics, readiness)
    srv.add_routes([web.get("/hello", hello)])
    await srv.start()
    try:
        async with client.get(f"{srv.url}/hello") as resp:
            assert await resp.text() == "hi"
        with pytest.raises(RuntimeError):
            srv.add_routes([web.get("/late", hello)])
    finally:
        await srv.stop()


async def test_a_busy_port_fails_start(server: HttpServer, metrics: Metrics, readiness: Readiness):
    other = HttpServer(f"127.0.0.1:{server.port}", metrics, readiness)
    with pytest.raises(OSError):
        await other.start()
    with pytest.raises(RuntimeError, match="not running"):
        other.port


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:9", ("localhost", 9)),
        ("[::1]:8080", ("::1", 8080)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8080", ":8080", "host:", "host:http", "host:70000", "host:-1"])
def test_parse_listen_rejects(listen: str):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(listen)


# ---------------------------------------------------------------- Metrics without HTTP


def _sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_two_metrics_instances_do_not_share_state():
    a, b = Metrics(), Metrics()
    a.observe_command("deploy", "ok", 1.0)
    assert _sample(a, "opsbot_commands_total", command="deploy", result="ok") == 1.0
    assert _sample(b, "opsbot_commands_total", command="deploy", result="ok") is None


@pytest.mark.parametrize(
    ("result", "denied", "errors", "timed"),
    [
        ("ok", None, None, 1.0),
        ("error", None, 1.0, 1.0),
        ("denied", 1.0, None, None),
        ("bad_input", None, None, None),
    ],
)
def test_observe_command_by_result(result, denied, errors, timed):
    m = Metrics()
    m.observe_command("logs", result, 0.3)
    assert _sample(m, "opsbot_commands_total", command="logs", result=result) == 1.0
    assert _sample(m, "opsbot_commands_denied_total", command="logs") == denied
    assert _sample(m, "opsbot_command_errors_total", command="logs") == errors
    assert _sample(m, "opsbot_command_duration_seconds_count", command="logs") == timed


def test_observe_command_rejects_unknown_results():
    with pytest.raises(ValueError, match="unknown command result"):
        Metrics().observe_command("deploy", "weird", 1.0)  # type: ignore[arg-type]
