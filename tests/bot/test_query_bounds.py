"""Issue 13, finding 7: `!query` answers are bounded whatever Prometheus returns.

A Prometheus look-alike over real HTTP answers with 50,000 series, label values of 10,000
characters, a range vector of many points, a huge string: the answer is one message of at most
2,000 characters, at most 20 series, and says "showing N of M series".
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bot.world import World
from commands.metrics import MAX_TABLE_ROWS, InstantResult, MetricsService, PrometheusClient, Sample, result_table
from tests.bot.helpers import say

N = 50_000


def vector(n: int, label_size: int = 20) -> dict:
    return {"resultType": "vector", "result": [
        {"metric": {"__name__": "big", "i": str(i), "pad": "x" * label_size}, "value": [0, str(i)]} for i in range(n)]}


RESULTS = {
    "many": vector(N),
    "wide": vector(30, label_size=10_000),
    "matrix": {"resultType": "matrix", "result": [
        {"metric": {"i": str(i)}, "values": [[t, str(t)] for t in range(2_000)]} for i in range(200)]},
    "string": {"resultType": "string", "result": [0, "s" * 50_000]},
}


@pytest.fixture
async def big_prometheus() -> AsyncIterator[str]:
    bodies = {k: json.dumps({"status": "success", "data": v}).encode() for k, v in RESULTS.items()}

    async def handle(request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else request.query
        return web.Response(body=bodies[str(form.get("query"))], content_type="application/json")

    app = web.Application(client_max_size=1024**2)
    app.router.add_route("*", "/api/v1/query", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_query_answers_are_bounded(world: World, big_prometheus: str) -> None:
    app = world.app
    before = app.prometheus
    app.prometheus = MetricsService(PrometheusClient(big_prometheus, timeout=10.0), app.settings.metrics)
    try:
        many = await say(world, "admin", "!query many")
        assert many.content.startswith(f"🔎 `many` — vector, showing {MAX_TABLE_ROWS} of {N} series (largest first)")
        rows = many.content.split("```")[1].strip().splitlines()
        assert len(rows) == MAX_TABLE_ROWS and rows[0].startswith(f'big{{i="{N - 1}"')
        wide = await say(world, "admin", "!query wide")
        shown = len(wide.content.split("```")[1].strip().splitlines())
        assert 1 <= shown < 30 and f"showing {shown} of 30 series" in wide.content
        matrix = await say(world, "admin", "!query matrix")
        assert "showing 20 of 200 series" in matrix.content and "(2000 samples)" in matrix.content
        string = await say(world, "admin", "!query string")
        assert string.content.count("s") < 400
        for reply in (many, wide, matrix, string):
            assert len(reply.content) <= 2000 and reply.content.endswith("```")
    finally:
        await app.prometheus.close()
        app.prometheus = before


def test_the_table_of_a_huge_vector_is_quick_and_small() -> None:
    result = InstantResult("vector", 0, samples=[Sample({"i": str(i), "pad": "y" * 300}, (i * 7919) % 100_003)
                                                 for i in range(200_000)] + [Sample({"i": "nan"}, math.nan)])
    started = time.perf_counter()
    text, more = result_table(result)
    took = time.perf_counter() - started
    assert len(text) <= 1600 and more == len(result.samples) - len(text.splitlines())
    assert took < 1.0, took  # O(n log 20): no sort or formatting of every row
