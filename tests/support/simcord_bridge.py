"""A cross-process bridge for simcord: bot processes talking to ONE in-memory Discord.

simcord runs Discord in-process. This bridge lets other OS processes (e.g. two opsbot
instances doing leader election) use that same Discord as if it were the real one:

* **Host side** (the pytest process): :class:`BridgeHost` serves on ``127.0.0.1:<free port>``
  (aiohttp) next to a running simcord :class:`~simcord.Env` (whose attached "relay" client —
  a plain ``discord.Client`` with all intents, see :func:`open_relay_env` — is the bot user's
  identity inside simcord):

  - ``POST /rest``: a member's REST call (method, path, query params, JSON body, audit-log
    reason, multipart form parts, files as base64) is executed by simcord's own route table
    (``simcord.http.router.dispatch``, what simcord's ``FakeHTTPClient`` does for an in-process
    bot) as the bot user. The answer is ``{"status", "data"}``: Discord's status code and body,
    or its error JSON (``{"code", "message", "errors"}``).
  - ``GET /gateway``: a websocket speaking the real Discord gateway protocol (HELLO,
    IDENTIFY, HEARTBEAT/ACK, DISPATCH with sequence numbers, REQUEST_GUILD_MEMBERS, RESUME is
    answered with INVALID_SESSION). On IDENTIFY the member gets READY and one GUILD_CREATE
    per guild, built by simcord's own serializers as ``ShardRouter.identify`` does, then every
    gateway event the backend emits (MESSAGE_CREATE, MESSAGE_UPDATE, INTERACTION_CREATE,
    THREAD_CREATE, GUILD_MEMBER_UPDATE, ...) in order. Each event goes through simcord's
    ``FakeGateway`` for that member (intent gating, message-content censoring, GUILD_CREATE
    member pruning — by the intents the member IDENTIFYed with), exactly as for the relay.
  - :attr:`BridgeHost.sessions` lists the connected (identified) members — which process
    holds the Discord session; a member's socket closing (``bot.close()``, or the process
    dying, SIGKILL included) ends its session, :meth:`BridgeSession.wait_closed` waits for it.

* **Member side** (the bot process; no pytest, no simcord import): :func:`attach` makes an
  unmodified bot's normal ``await bot.start(token)`` / ``await bot.close()`` go through the
  bridge. Its ``http`` becomes a :class:`BridgedHTTPClient` (every ``request()`` is forwarded;
  ``ws_connect`` goes to the host's gateway) and interaction responses/followups go through a
  :class:`BridgeWebhookAdapter` installed as discord.py's webhook adapter. discord.py's real
  ``DiscordWebSocket`` then runs unchanged: ``is_ready()``, ``wait_until_ready()``,
  ``get_channel()``, ``guild.text_channels``, commands, views, all work as on Discord.
  For a program that must stay unmodified (``opsbot run``), :func:`install` attaches every
  client of the process at login; the launcher does it from the command line::

      python -m tests.support.simcord_bridge --url http://127.0.0.1:PORT --name leader -m bot.cli run ...

* Test helpers: :func:`open_relay_env` (a simcord Env with a relay attached), :func:`open_bridge`,
  :func:`wait_until`; ``tests/support/bridge_member.py`` holds a scriptable bot process and its
  driver, :class:`~tests.support.bridge_member.MemberProcess`.

Errors: a Discord error comes back to the member as the genuine ``discord.NotFound`` /
``discord.Forbidden`` / ``discord.DiscordServerError`` / ``discord.HTTPException`` with the
status, code and message simcord gave. A route or field simcord does not implement raises
:class:`BridgeRouteNotImplemented` (not an ``HTTPException``, as in simcord itself, so a broad
``except discord.HTTPException`` cannot hide a parity gap); a crash in the host raises
:class:`BridgeError`.

Limitations:

* The bridge does not enforce a single session: like Discord, it accepts several members
  at once and sends each of them every event. Leader election is the bots' business; tests
  check :attr:`BridgeHost.sessions`.
* No RESUME: a member that loses its socket gets INVALID_SESSION and re-IDENTIFYs (a fresh
  READY; events in between are lost, as after a real failed resume).
* Sharding: IDENTIFY's ``shard`` is honoured for guild/event routing, but ``/gateway/bot``
  always advises one shard.
* Presence updates and voice state (gateway ops 3, 4) are accepted and dropped.
* Virtual time is the host's: simcord's clock (``env.advance_time``) moves only the host;
  members run on the wall clock. Timestamps in payloads come from simcord's clock.
* ``env.settle()`` joins only the relay's work: it does not wait for member processes. Poll the
  host's state (:func:`wait_until`) after acting as a user.
* REST calls are executed one at a time on the host's event loop, outside simcord's bot scope;
  ``env.http_requests`` logs them (as the relay's would be) and :attr:`BridgeHost.rest_log`
  says which member sent each one. ``env.inject_error`` faults apply to them too.
* Interaction clicks work (INTERACTION_CREATE is forwarded, the member responds through the
  webhook adapter), but simcord's ``click()`` returns before a remote member answered: poll
  the returned ``InteractionResult``.
* Uploads are base64 in JSON: fine for test files, not for large media.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import logging
import os
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import discord
import yarl
from aiohttp import web
from discord.http import HTTPClient, Route
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

if TYPE_CHECKING:
    import simcord

__all__ = [
    "BridgeError",
    "BridgeHost",
    "BridgeLink",
    "BridgeRouteNotImplemented",
    "BridgeSession",
    "BridgeWebhookAdapter",
    "BridgedHTTPClient",
    "RestCall",
    "attach",
    "install",
    "open_bridge",
    "open_relay_env",
    "wait_until",
]

_log = logging.getLogger(__name__)

#: Gateway opcodes (https://discord.com/developers/docs/topics/opcodes-and-status-codes).
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_PRESENCE, OP_VOICE_STATE = 0, 1, 2, 3, 4
OP_RESUME, OP_RECONNECT, OP_REQUEST_MEMBERS, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 6, 7, 8, 9, 10, 11

MEMBER_HEADER = "X-Bridge-Member"
PID_HEADER = "X-Bridge-Pid"
_API_PREFIX = "/api/v"


class BridgeError(RuntimeError):
    """The bridge itself failed (host unreachable, host crashed executing a call)."""


class BridgeRouteNotImplemented(BridgeError):
    """simcord does not implement this route or field: a parity gap, never an HTTPException."""


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)


def _path_of(url: str) -> str:
    """``https://discord.com/api/v10/channels/1/messages?x=1`` -> ``/channels/1/messages``."""
    path = url.split("?", 1)[0]
    index = path.find(_API_PREFIX)
    if index != -1:
        path = path[index + len(_API_PREFIX):]
        path = path[path.find("/"):]
    return path


async def wait_until(predicate: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.05,
                     what: str = "condition") -> Any:
    """Poll ``predicate`` (sync, or returning an awaitable) on the wall clock until it is truthy."""
    deadline = time.perf_counter() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# ============================================================================ host side


@dataclass
class RestCall:
    """One REST call a member made through the bridge, as the host saw it."""

    member: str
    pid: int | None
    method: str
    path: str
    status: int


class _EventSink:
    """``ConnectionState.parsers`` stand-in: every event FakeGateway feeds goes to the member."""

    def __init__(self, send: Callable[[str, Any], None]) -> None:
        self._send = send

    def __getitem__(self, event: str) -> Callable[[Any], None]:
        return lambda data: self._send(event, data)

    def get(self, event: str, default: Any = None) -> Callable[[Any], None]:
        return self[event]


class _SinkState:
    """The little of a ConnectionState that simcord's FakeGateway reads."""

    def __init__(self, intents: discord.Intents, send: Callable[[str, Any], None]) -> None:
        self.intents = intents
        self.parsers = _EventSink(send)


@dataclass(eq=False)
class BridgeSession:
    """One member's gateway connection."""

    sid: int
    name: str
    pid: int | None
    connected_at: float = field(default_factory=time.time)
    intents: discord.Intents | None = None
    shard: tuple[int, int] = (0, 1)
    identified: bool = False
    closed: bool = False
    close_code: int | None = None
    closed_at: float | None = None
    #: Names of the events dispatched to this member, in order (READY first).
    events: list[str] = field(default_factory=list)
    _ws: Any = None
    _queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    _seq: int = 0
    _gateway: Any = None
    _chunker: Any = None
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def alive(self) -> bool:
        return self.identified and not self.closed

    def _send(self, op: int, data: Any = None) -> None:
        if not self.closed:
            self._queue.put_nowait(_dumps({"op": op, "d": data}))

    def _dispatch(self, event: str, data: Any) -> None:
        if self.closed:
            return
        self._seq += 1
        self.events.append(event)
        self._queue.put_nowait(_dumps({"op": OP_DISPATCH, "t": event, "s": self._seq, "d": data}))

    def _owns(self, event: str, payload: Mapping[str, Any]) -> bool:
        shard_id, count = self.shard
        if count <= 1:
            return True
        if event.startswith("ENTITLEMENT_"):  # application events belong to shard 0
            return shard_id == 0
        guild_id = payload.get("guild_id")
        if guild_id is None and event in {"GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"}:
            guild_id = payload.get("id")
        target = 0 if guild_id is None else (int(guild_id) >> 22) % count
        return target == shard_id

    async def wait_closed(self, timeout: float = 15.0) -> None:
        """Wait until the host has noticed this member's socket close."""
        await asyncio.wait_for(self._done.wait(), timeout)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "live" if self.identified else "connecting"
        return f"<BridgeSession #{self.sid} {self.name!r} pid={self.pid} {state}>"


class BridgeHost:
    """Serve a simcord Env to bot processes over HTTP + a Discord-style gateway websocket.

    ``async with BridgeHost(env) as host:`` (or ``await host.start()`` / ``await host.close()``);
    members :func:`attach` to :attr:`url`.
    """

    def __init__(self, env: simcord.Env, *, host: str = "127.0.0.1", port: int = 0,
                 heartbeat_interval: float = 41.25, ws_ping: float | None = 5.0) -> None:
        self.env = env
        self.backend = env.backend
        self._host = host
        self._port = port
        self._heartbeat_interval = heartbeat_interval
        self._ws_ping = ws_ping
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)
        #: Every member session ever connected, in connection order (see :attr:`sessions`).
        self.all_sessions: list[BridgeSession] = []
        #: Every REST call members made, in order.
        self.rest_log: list[RestCall] = []
        #: Exceptions raised while feeding events to members (should stay empty).
        self.errors: list[BaseException] = []
        approved = env.approved_intents
        self._message_content_access = approved is None or approved.message_content

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL members attach to: ``http://127.0.0.1:<port>``."""
        if self._runner is None:
            raise BridgeError("the bridge host is not started")
        return f"http://{self._host}:{self._port}"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self._host}:{self._port}/gateway"

    async def start(self) -> Self:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/rest", self._rest)
        app.router.add_post("/cdn", self._cdn)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]
        self.backend.subscribers.append(self._on_event)
        return self

    async def close(self) -> None:
        try:
            self.backend.subscribers.remove(self._on_event)
        except ValueError:
            pass
        for session in list(self.all_sessions):
            if session._ws is not None and not session.closed:
                await session._ws.close(code=1001, message=b"bridge host closing")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ sessions

    @property
    def sessions(self) -> list[BridgeSession]:
        """The members holding a live (identified, not closed) gateway session right now."""
        return [s for s in self.all_sessions if s.alive]

    async def wait_for_session(self, *, name: str | None = None, pid: int | None = None,
                               timeout: float = 20.0) -> BridgeSession:
        """Wait for a live session (of the member ``name`` and/or process ``pid``) and return it."""

        def find() -> BridgeSession | None:
            for s in self.sessions:
                if (name is None or s.name == name) and (pid is None or s.pid == pid):
                    return s
            return None

        return await wait_until(find, timeout=timeout, what=f"a bridge session name={name} pid={pid}")

    # ------------------------------------------------------------------ REST

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"sessions": [s.name for s in self.sessions]})

    async def _rest(self, request: web.Request) -> web.Response:
        from simcord.backend.errors import BackendError
        from simcord.http import router

        body = await request.json()
        member = request.headers.get(MEMBER_HEADER, "?")
        pid_text = request.headers.get(PID_HEADER)
        method, path = body["method"], body["path"]
        status: int = 200
        data: Any = None
        if path in ("/gateway", "/gateway/bot") and method == "GET":
            data = {"url": f"ws://{self._host}:{self._port}/gateway"}
            if path == "/gateway/bot":
                data |= {"shards": 1, "session_start_limit": {
                    "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}}
        else:
            files = [
                discord.File(io.BytesIO(base64.b64decode(f["data"])), filename=f["filename"],
                             description=f.get("description"), spoiler=bool(f.get("spoiler")))
                for f in body.get("files") or []
            ]
            payload = body.get("json")
            if body.get("form"):
                parsed, files = router.parse_form(body["form"], files)
                if parsed is not None:
                    payload = parsed
            try:
                data = router.dispatch(
                    self.backend, method, path, json=payload, params=body.get("params"), files=files,
                    reason=body.get("reason"), message_content_access=self._message_content_access,
                )
            except (router.RouteNotImplemented, router.UnsupportedField) as exc:
                status, data = 501, {"code": 0, "message": str(exc), "bridge": "not-implemented"}
            except BackendError as exc:
                status, data = exc.status, exc.to_json()
            except Exception as exc:  # noqa: BLE001 — a crash in simcord: report it, keep serving
                _log.exception("bridge: %s %s failed in the host", method, path)
                status, data = 500, {"code": 0, "message": f"{type(exc).__name__}: {exc}", "bridge": "host-error"}
        self.rest_log.append(RestCall(member, int(pid_text) if pid_text else None, method, path, status))
        return web.json_response({"status": status, "data": data}, dumps=_dumps)

    async def _cdn(self, request: web.Request) -> web.Response:
        body = await request.json()
        blob = self.backend.cdn.get(body["url"])
        if blob is None:
            return web.json_response({"status": 404, "data": {"code": 0, "message": "asset not found"}})
        return web.json_response({"status": 200, "data": base64.b64encode(blob).decode()})

    # ------------------------------------------------------------------ gateway

    def _on_event(self, event: str, payload: Mapping[str, Any]) -> None:
        """Backend subscriber: forward every gateway event to each live member, in order."""
        for session in self.all_sessions:
            if not session.alive or not session._owns(event, payload):
                continue
            try:
                session._gateway.feed(event, payload)
            except Exception as exc:  # noqa: BLE001 — never break the backend's emit for other subscribers
                _log.exception("bridge: feeding %s to %r failed", event, session)
                self.errors.append(exc)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=self._ws_ping, max_msg_size=0)
        await ws.prepare(request)
        pid = request.query.get("pid")
        session = BridgeSession(next(self._ids), request.query.get("member", "?"), int(pid) if pid else None)
        session._ws = ws
        self.all_sessions.append(session)
        writer = asyncio.ensure_future(self._write(session))
        session._send(OP_HELLO, {"heartbeat_interval": int(self._heartbeat_interval * 1000)})
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await self._handle(session, json.loads(msg.data))
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    break
        except Exception:  # noqa: BLE001 — logged; the session ends below either way
            _log.exception("bridge: gateway connection of %r failed", session)
        finally:
            session.closed = True
            session.closed_at = time.time()
            session.close_code = ws.close_code
            session._queue.put_nowait(None)
            try:
                await asyncio.wait_for(writer, 5)
            except Exception:  # noqa: BLE001 — TimeoutError included
                writer.cancel()
            if not ws.closed:
                await ws.close()
            session._done.set()
            _log.info("bridge: %r disconnected (code %s)", session, session.close_code)
        return ws

    @staticmethod
    async def _write(session: BridgeSession) -> None:
        while True:
            item = await session._queue.get()
            if item is None:
                return
            try:
                await session._ws.send_str(item)
            except Exception:  # noqa: BLE001 — the socket went away; the reader side notices and cleans up
                return

    async def _handle(self, session: BridgeSession, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        data: Any = msg.get("d") or {}
        if op == OP_HEARTBEAT:
            session._send(OP_HEARTBEAT_ACK)
        elif op == OP_IDENTIFY:
            if session.identified:
                await session._ws.close(code=4005, message=b"Already authenticated.")
                return
            self._identify(session, data)
        elif op == OP_RESUME:
            session._send(OP_INVALID_SESSION, False)  # no resume: re-IDENTIFY
        elif op == OP_REQUEST_MEMBERS and session.alive:
            guild_id = int(data["guild_id"])
            user_ids = data.get("user_ids")
            if isinstance(user_ids, (str, int)):
                user_ids = [user_ids]
            await session._chunker.request_chunks(
                guild_id, data.get("query"), limit=data.get("limit") or 0,
                user_ids=[int(u) for u in user_ids] if user_ids else None,
                presences=bool(data.get("presences")), nonce=data.get("nonce"),
            )
        # OP_PRESENCE, OP_VOICE_STATE and anything else: accepted and dropped.

    def _identify(self, session: BridgeSession, data: Mapping[str, Any]) -> None:
        """READY + one GUILD_CREATE per guild, then live events: all without awaiting in between,

        so the snapshot and the event stream that follows cannot miss or repeat anything."""
        from simcord.backend import serializers
        from simcord.gateway import FakeGateway, FakeWebSocket

        intents_value = data.get("intents")
        session.intents = (discord.Intents._from_value(int(intents_value)) if intents_value is not None
                           else discord.Intents.default())
        shard = data.get("shard") or [0, 1]
        session.shard = (int(shard[0]), int(shard[1]))
        gateway = FakeGateway(self.backend, _SinkState(session.intents, session._dispatch))
        session._gateway = gateway
        session._chunker = FakeWebSocket(self.backend, gateway, shard_id=session.shard[0])
        backend = self.backend
        gateway.feed("READY", {
            "v": 10,
            "user": dict(serializers.user_payload(backend.bot_user)),
            "guilds": [],
            "session_id": f"bridge-session-{session.sid}",
            "resume_gateway_url": self.gateway_url,
            "shard": list(session.shard),
            "application": {"id": str(backend.application_id), "flags": 0},
        })
        for guild in list(backend.guilds.values()):
            if session._owns("GUILD_CREATE", {"id": guild.id}):
                gateway.feed("GUILD_CREATE", serializers.guild_create_payload(backend, guild))
        session.identified = True
        _log.info("bridge: %r identified", session)


@asynccontextmanager
async def open_relay_env(**env_options: Any) -> AsyncIterator[simcord.Env]:
    """A simcord Env with a plain all-intents ``discord.Client`` attached as the relay.

    Use it in one task (a test body), not across an async fixture's setup and teardown:
    ``simcord.run`` enters simcord's clock context in the task that enters it.
    """
    import simcord

    relay = discord.Client(intents=discord.Intents.all())
    async with simcord.run(relay, **env_options) as env:
        yield env


@asynccontextmanager
async def open_bridge(env: simcord.Env, **host_options: Any) -> AsyncIterator[BridgeHost]:
    """``async with open_bridge(env) as host:`` — a started :class:`BridgeHost`."""
    host = BridgeHost(env, **host_options)
    await host.start()
    try:
        yield host
    finally:
        await host.close()


# ============================================================================ member side


class _FakeResponse:
    """Just enough of an aiohttp response for discord.HTTPException."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                       429: "Too Many Requests", 500: "Internal Server Error"}.get(status, "Error")
        self.headers: dict[str, str] = {}


def _raise_for(status: int, data: Any, method: str, path: str) -> None:
    if isinstance(data, dict) and data.get("bridge") == "not-implemented":
        raise BridgeRouteNotImplemented(data.get("message") or f"{method} {path}")
    if isinstance(data, dict) and data.get("bridge") == "host-error":
        raise BridgeError(f"the bridge host failed on {method} {path}: {data.get('message')}")
    response: Any = _FakeResponse(status)
    if status == 403:
        raise discord.Forbidden(response, data)
    if status == 404:
        raise discord.NotFound(response, data)
    if status >= 500:
        raise discord.DiscordServerError(response, data)
    raise discord.HTTPException(response, data)


def _encode_files(files: Sequence[discord.File] | None) -> list[dict[str, Any]]:
    out = []
    for f in files or ():
        f.reset()
        out.append({"filename": f.filename, "description": f.description, "spoiler": f.spoiler,
                    "data": base64.b64encode(f.fp.read()).decode()})
    return out


def _encode_form(form: Iterable[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if form is None:
        return None
    parts = []
    for part in form:
        if "filename" in part:  # file parts travel in "files"
            continue
        value = part["value"]
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode()
        parts.append({"name": part["name"], "value": value})
    return parts


class BridgeLink:
    """The member's connection to a :class:`BridgeHost` (REST over HTTP, one aiohttp session)."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url.rstrip("/")
        self.name = name
        self._session: aiohttp.ClientSession | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {MEMBER_HEADER: self.name, PID_HEADER: str(os.getpid())}

    def gateway_url(self, discord_url: str) -> str:
        """Discord's gateway URL (with its v/encoding/compress query) re-aimed at the host."""
        query = dict(yarl.URL(discord_url).query)
        query.pop("compress", None)  # the host sends plain text frames
        query |= {"member": self.name, "pid": str(os.getpid())}
        return str(yarl.URL(self.url).with_scheme("ws").with_path("/gateway").with_query(query))

    async def _post(self, endpoint: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self.headers,
                                                  timeout=aiohttp.ClientTimeout(total=120))
        try:
            async with self._session.post(self.url + endpoint, data=_dumps(body),
                                          headers={"Content-Type": "application/json"}) as resp:
                if resp.status != 200:
                    raise BridgeError(f"bridge host answered HTTP {resp.status}: {await resp.text()}")
                out = await resp.json()
        except aiohttp.ClientError as exc:
            raise BridgeError(f"bridge host {self.url} unreachable: {exc}") from exc
        return out["status"], out["data"]

    async def rest(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                   reason: str | None = None, form: Iterable[dict[str, Any]] | None = None,
                   files: Sequence[discord.File] | None = None) -> Any:
        body = {"method": method, "path": path, "params": dict(params) if params else None, "json": json,
                "reason": reason, "form": _encode_form(form), "files": _encode_files(files)}
        status, data = await self._post("/rest", body)
        if status < 300:
            return data
        _raise_for(status, data, method, path)

    async def cdn(self, url: str) -> bytes:
        status, data = await self._post("/cdn", {"url": url})
        if status != 200:
            _raise_for(status, data, "GET", url)
        return base64.b64decode(data)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class BridgedHTTPClient(HTTPClient):
    """discord.py's HTTPClient with every REST call and the gateway socket sent to the bridge.

    Installed by :func:`attach` by switching the class of the bot's own HTTPClient, so every
    reference to it (``ConnectionState.http``, ``CommandTree._http``) follows.
    """

    _bridge: BridgeLink

    async def request(self, route: Route, *, files: Sequence[discord.File] | None = None,
                      form: Iterable[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
        return await self._bridge.rest(route.method, _path_of(route.url), json=kwargs.get("json"),
                                       params=kwargs.get("params"), reason=kwargs.get("reason"),
                                       form=form, files=files)

    async def ws_connect(self, url: str, *, compress: int = 0) -> Any:
        return await super().ws_connect(self._bridge.gateway_url(url), compress=compress)

    async def get_from_cdn(self, url: str) -> bytes:
        return await self._bridge.cdn(url)

    async def close(self) -> None:
        await super().close()
        await self._bridge.close()


class BridgeWebhookAdapter(AsyncWebhookAdapter):
    """discord.py's webhook adapter (interaction responses, followups, webhooks) via the bridge."""

    def __init__(self, link: BridgeLink) -> None:
        super().__init__()
        self._bridge = link

    async def request(self, route: Any, session: Any, *, payload: dict[str, Any] | None = None,
                      multipart: list[dict[str, Any]] | None = None, proxy: Any = None, proxy_auth: Any = None,
                      files: Sequence[discord.File] | None = None, reason: str | None = None,
                      auth_token: str | None = None, params: dict[str, Any] | None = None) -> Any:
        return await self._bridge.rest(route.method, _path_of(route.url), json=payload, params=params,
                                       reason=reason, form=multipart, files=files)


def attach(bot: discord.Client, url: str | BridgeLink, *, name: str | None = None,
           guild_ready_timeout: float | None = 0.5) -> BridgeLink:
    """Route ``bot`` through the bridge host at ``url``; then ``await bot.start(any_token)``.

    Call it before ``bot.start`` in the task (or thread) that runs the bot: the webhook adapter
    is a context variable that the bot's tasks inherit. ``name`` labels this member in the
    host's :attr:`BridgeHost.sessions` and :attr:`BridgeHost.rest_log` (default: ``pid-<pid>``).
    ``guild_ready_timeout`` shortens discord.py's wait for straggling GUILD_CREATEs after READY
    (the host sends them all at once); ``None`` keeps discord.py's 2 s.
    """
    link = url if isinstance(url, BridgeLink) else BridgeLink(url, name or f"pid-{os.getpid()}")
    http = bot.http
    http.__class__ = BridgedHTTPClient
    http._bridge = link  # type: ignore[attr-defined]
    async_context.set(BridgeWebhookAdapter(link))
    if guild_ready_timeout is not None:
        bot._connection.guild_ready_timeout = guild_ready_timeout
    return link


def install(url: str, *, name: str | None = None, guild_ready_timeout: float | None = 0.5) -> None:
    """Attach every ``discord.Client`` of this process to the bridge when it logs in.

    For programs that must stay unmodified (``opsbot run``): call it before the program starts
    its event loop, or use the launcher, ``python -m tests.support.simcord_bridge --url URL
    [--name NAME] -m <module> [args...]``, which runs ``<module>`` as ``__main__``.
    """
    label = name or f"pid-{os.getpid()}"
    # Interaction responses of any task of the program: set in the base context, inherited.
    async_context.set(BridgeWebhookAdapter(BridgeLink(url, label)))
    original = discord.Client.login
    if getattr(original, "__bridge_installed__", False):
        return

    async def login(self: discord.Client, token: str) -> None:
        if not isinstance(self.http, BridgedHTTPClient):
            attach(self, url, name=label, guild_ready_timeout=guild_ready_timeout)
        await original(self, token)

    login.__bridge_installed__ = True  # type: ignore[attr-defined]
    discord.Client.login = login  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.support.simcord_bridge --url URL [--name NAME] -m module [args...]``."""
    import argparse
    import runpy
    import sys

    parser = argparse.ArgumentParser(prog="python -m tests.support.simcord_bridge",
                                     description="Run a Python module with its discord.py bot on a simcord bridge.")
    parser.add_argument("--url", required=True, help="the BridgeHost URL (BridgeHost.url)")
    parser.add_argument("--name", help="this member's label on the host (default: pid-<pid>)")
    parser.add_argument("-m", dest="module", required=True, help="the module to run as __main__")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the module's own arguments")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    install(ns.url, name=ns.name)
    sys.argv = [ns.module, *ns.args]
    runpy.run_module(ns.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
