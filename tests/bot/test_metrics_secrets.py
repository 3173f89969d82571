"""Issue 13, finding 8: Prometheus errors shown in chat carry no credentials from prometheus_url.

A prometheus_url may hold ``user:pass@`` (requests sends it as basic auth) or a ``?token=``. Each way
Prometheus can fail (refused, hanging, an error page that echoes the request, a URL that does not
parse) is shown through `!query` and `!status`, and no part of the credentials may appear; a
Prometheus that wants the credentials still gets them.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bot.world import World
from commands.metrics import MetricsService, PrometheusClient, public_url
from tests.bot.helpers import embed_text, say

USER, PASSWORD, TOKEN = "promadmin", "s3cr3t-Pa55", "tok-abc123"
SECRETS = (USER, PASSWORD, TOKEN, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())


def with_credentials(base: str) -> str:
    scheme, rest = base.split("://")
    return f"{scheme}://{USER}:{PASSWORD}@{rest}/?token={TOKEN}"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    """A Prometheus look-alike: answers `up` = 1 to the right basic auth, else an error page that
    echoes the whole request (path, query, Authorization header), as some proxies do."""
    good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    async def handle(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != good or "fail" in request.query_string + request.path:
            echo = f"{request.method} {request.path_qs} Authorization: {request.headers.get('Authorization')}"
            return web.Response(status=502, text=f"<html>bad gateway for {echo}</html>")
        return web.json_response({"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def answers(world: World, url: str, *lines: str) -> list[str]:
    app = world.app
    before = app.prometheus
    app.prometheus = MetricsService(PrometheusClient(url, timeout=1.0), app.settings.metrics)
    try:
        return [embed_text(await say(world, "admin", line)) for line in lines]
    finally:
        await app.prometheus.close()
        app.prometheus = before


def assert_clean(texts: list[str]) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked: {text}"


async def test_refused_connection(world: World) -> None:
    port = closed_port()
    texts = await answers(world, with_credentials(f"http://127.0.0.1:{port}"), "!query up", "!status chat prod")
    assert f"cannot reach Prometheus at http://127.0.0.1:{port}: connection refused" in texts[0]
    assert "connection refused" in texts[1]
    assert_clean(texts)


async def test_an_error_page_that_echoes_the_request(world: World, echo_server: str) -> None:
    url = with_credentials(echo_server).replace(f"{PASSWORD}@", f"{PASSWORD}x@")  # wrong password: 502
    texts = await answers(world, url, "!query up")
    assert "502" in texts[0] and "bad gateway" in texts[0]
    assert_clean([t.replace(f"{PASSWORD}x", "") for t in texts])
    assert f"{PASSWORD}x" not in texts[0]


async def test_a_url_that_does_not_parse(world: World) -> None:
    texts = await answers(world, f"http://{USER}:{PASSWORD}@127.0.0.1:notaport/?token={TOKEN}", "!query up")
    assert texts[0].startswith("⚠️") and "Traceback" not in texts[0]
    assert_clean(texts)


async def test_a_hanging_prometheus(world: World) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        texts = await answers(world, with_credentials(base), "!query up")
    assert f"Prometheus at {base} did not answer within 1 s" in texts[0]
    assert_clean(texts)


async def test_the_credentials_are_still_used(world: World, echo_server: str) -> None:
    [text] = await answers(world, f"http://{USER}:{PASSWORD}@{echo_server.split('://')[1]}", "!query up")
    assert "scalar" in text and "1" in text
    assert_clean([text])


def test_public_url_drops_every_secret_part() -> None:
    assert public_url("https://u:p@ss@prom.example.com:9090/prom/?token=x#frag") == "https://prom.example.com:9090/prom"
    assert public_url("http://prom:9090") == "http://prom:9090"
    assert public_url("prom:9090?token=x") == "prom:9090"
