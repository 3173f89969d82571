"""The bot's own HTTP server: ``/healthz``, ``/readyz`` and ``/metrics``.

Later features (the Alertmanager webhook) add their routes with :meth:`HttpServer.add_routes`
or ``server.app.router`` before :meth:`HttpServer.start`; aiohttp freezes the router on start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from bot.metrics import Metrics

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, str]]


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8080`` for IPv6) into host and port; port 0 picks a free one."""
    host, sep, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host, int(port_text)


class HttpServer:
    """An aiohttp server for probes and metrics, started and stopped with the bot.

    ``ready`` answers whether the bot can serve commands, and why not; it must be quick and
    not block. An exception from it counts as not ready.
    """

    def __init__(
        self,
        listen: str,
        metrics: Metrics,
        ready: ReadyCheck,
        *,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.host, self._requested_port = parse_listen(listen)
        self.metrics = metrics
        self._ready = ready
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self.app = web.Application()
        self.add_routes(
            [
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
                web.get("/metrics", self._metrics),
            ]
        )

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Add routes; only before :meth:`start`."""
        self.app.router.add_routes(routes)

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for); only while started."""
        if self._port is None:
            raise RuntimeError("the HTTP server is not running")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the HTTP server is already running")
        runner = web.AppRunner(self.app, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        log.info("HTTP server listening on %s", self.url)

    async def stop(self) -> None:
        """Stop serving and release the port; safe to call when not running."""
        runner, self._runner, self._port = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            ready, reason = self._ready()
        except Exception as e:
            log.exception("readiness check failed")
            ready, reason = False, f"readiness check failed: {type(e).__name__}"
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.metrics.registry), headers={"Content-Type": content_type})
