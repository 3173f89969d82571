"""`!graph <service> <env> [metric|promql] [range]` and `!query <promql>`: Prometheus in chat."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import autocomplete
from bot.checks import Denied, member_allows, requires
from bot.options import options as takes_options
from bot.render import clip, code_block
from commands.catalog import UserError
from commands.metrics import (
    MetricsService,
    parse_graph_args,
    result_table,
    short_duration,
)


class Metrics(commands.Cog):
    """Charts and numbers from Prometheus."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = bot.app  # type: ignore[attr-defined]

    def _prometheus(self) -> MetricsService:
        if self.app.prometheus is None:
            raise UserError("no Prometheus is configured: set `prometheus_url` (or `--prometheus-url`)")
        return self.app.prometheus  # type: ignore[no-any-return]

    @commands.hybrid_command(name="graph")
    @app_commands.autocomplete(service=autocomplete.services, env=autocomplete.envs)
    @requires("status")
    @takes_options(text=["what"])  # PromQL is free text: its `--words` are its own
    @app_commands.describe(service="a service", env="an environment",
                           what="a metric (request_rate, error_ratio, latency_p95, cpu, memory, up) or PromQL, "
                                "then a range such as 6h (default: request_rate over 1h)")
    async def graph(self, ctx: commands.Context[Any], service: str, env: str, *, what: str = "") -> None:
        """A chart of a service's metric (default: request rate) or of PromQL, as a PNG."""
        prometheus = self._prometheus()
        catalog = self.app.catalog
        service, env = catalog.service(service), catalog.env(env)
        target = catalog.target(service, env)
        config = prometheus.config
        request = parse_graph_args(what, prometheus.metric_names(service), default_metric=config.graph_default,
                                   default_range=config.graph_range)
        if request.raw and not member_allows(self.app, ctx.author, "query"):
            raise Denied("query")  # PromQL reads anything Prometheus has, not only this service
        await ctx.defer()
        chart = await prometheus.graph(service, env, target, request)
        what_text = request.metric or "PromQL"
        await ctx.send(f"📈 `{service}` in `{env}`: {what_text} over the last {short_duration(chart.span)} "
                       f"({chart.series} series)",
                       file=discord.File(io.BytesIO(chart.png), filename=chart.filename),
                       allowed_mentions=discord.AllowedMentions.none())

    @commands.hybrid_command(name="query")
    @requires("query", env_arg=None, service_arg=None)
    @takes_options(text=["promql"])  # PromQL is free text: its `--words` are its own
    @app_commands.describe(promql="a PromQL expression, evaluated now")
    async def query(self, ctx: commands.Context[Any], *, promql: str) -> None:
        """The value of a PromQL expression now, as a table (largest first)."""
        prometheus = self._prometheus()
        await ctx.defer()
        result = await prometheus.query(promql)
        table, more = await asyncio.to_thread(result_table, result)  # Python code on ~50k series: off the loop
        shown = clip(promql.strip().strip("`"), 200).replace("`", "ˋ")
        if not table:
            await ctx.send(f"∅ nothing matches `{shown}` now", allowed_mentions=discord.AllowedMentions.none())
            return
        count = {"vector": len(result.samples), "matrix": len(result.series)}.get(result.kind, 1)
        if more:  # bounded: MAX_TABLE_ROWS series and MAX_TABLE_CHARS characters at most
            order = "largest first" if result.kind == "vector" else "as Prometheus listed them"
            head = f"🔎 `{shown}` — {result.kind}, showing {count - more} of {count} series ({order})"
        else:
            head = f"🔎 `{shown}` — {result.kind}, {count} {'series' if result.kind in ('vector', 'matrix') else 'value'}"
        await ctx.send(f"{head}\n{code_block(table, 2000 - len(head) - 1)}",
                       allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Metrics(bot))
