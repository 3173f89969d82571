"""``POST /alerts/alertmanager``: Alertmanager's webhook, authenticated, bounded, persisted first.

Answers, so Alertmanager does the right thing (it retries 5xx, gives up on 4xx):

- 401 without the right credentials: ``Authorization: Bearer <webhook_token>``, or basic auth as
  ``<alerts.webhook_user>:<webhook_token>``; compared in constant time.
- 413 when the body is larger than ``alerts.max_body_bytes``. Alertmanager does not retry it, so
  the notification is lost: the intake logs it and ``on_too_large`` says so in chat (the ops
  channel, at most once per ``TOO_LARGE_NOTICE_EVERY``). Keep groups under the limit with
  ``max_alerts`` in Alertmanager's ``webhook_config``.
- 400 when the body is not JSON, 422 when it is not a version 4 payload (with a short reason).
  Size is never a reason for a 422: over-long values are cut with a visible marker and stored
  (see :mod:`alerts.models`).
- 503 when it could not be stored (the database is down or full): Alertmanager tries again.
- 200 once it is stored. Nothing here answers 500 or lets an exception escape.

The bot layer mounts :func:`webhook_routes` on its :class:`bot.http.HttpServer`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from alerts.models import IngestResult, WebhookPayload

log = logging.getLogger(__name__)

Ingest = Callable[[WebhookPayload], Awaitable[IngestResult]]
TooLarge = Callable[[str], Awaitable[None]]
TOO_LARGE_NOTICE_EVERY = 600.0  # seconds between two "a notification was lost" notices

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="opsbot", Basic realm="opsbot"'}


class Unavailable(Exception):
    """Raised by an ingest function when storing failed for a reason worth a 503."""


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


class WebhookIntake:
    def __init__(
        self,
        ingest: Ingest,
        *,
        token: str | None,
        user: str = "alertmanager",
        allow_unauthenticated: bool = False,
        max_body_bytes: int = 4 * 1024 * 1024,
        on_too_large: TooLarge | None = None,
    ) -> None:
        self._ingest = ingest
        self._on_too_large = on_too_large
        self._too_large_told: float | None = None
        self._token = token or None
        self._user = user
        self._open = allow_unauthenticated and self._token is None
        self._max = max_body_bytes
        self.counts: dict[int, int] = {}
        if self._token is None and not self._open:
            log.warning("alerts: webhook_token is not set: the webhook refuses every request (401)")

    def authorized(self, header: str | None) -> bool:
        if self._open:
            return True
        if self._token is None or not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return _same(value, self._token)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                return False
            user, sep, password = decoded.partition(":")
            # Both compared, always: how long this takes says nothing about which part was wrong.
            ok_user = _same(user, self._user)
            ok_password = _same(password, self._token)
            return bool(sep) and ok_user and ok_password
        return False

    async def handle(self, request: web.Request) -> web.Response:
        response = await self._handle(request)
        self.counts[response.status] = self.counts.get(response.status, 0) + 1
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        if not self.authorized(request.headers.get("Authorization")):
            return _error(401, "missing or wrong credentials", headers=_CHALLENGE)
        try:
            body = await self._read(request)
        except _TooLarge:
            await self._too_large(request)
            return _error(413, f"the body is larger than {self._max} bytes")
        except (ConnectionError, OSError, ValueError) as e:
            return _error(400, f"could not read the body: {type(e).__name__}")
        try:
            data: Any = json.loads(body)
        except (ValueError, RecursionError):
            return _error(400, "the body is not JSON")
        try:
            payload = WebhookPayload.model_validate(data)
        except ValidationError as e:
            return _error(422, "not an Alertmanager webhook payload (version 4): " + _problems(e))
        except (RecursionError, ValueError, TypeError) as e:
            return _error(422, f"not an Alertmanager webhook payload: {type(e).__name__}")
        try:
            result = await self._ingest(payload)
        except Exception:
            log.exception("alerts: could not store a webhook from receiver %r", payload.receiver)
            return _error(503, "could not store the alerts; try again")
        return web.json_response(
            {"status": "ok", "incident": result.incident_id, "duplicate": result.duplicate}, status=200
        )

    async def _too_large(self, request: web.Request) -> None:
        """A refused body is a lost notification (no retry on 4xx): log it, and tell chat now and then."""
        size = request.content_length
        what = f"{size} bytes" if size is not None else "a chunked body"
        log.warning("alerts: refused a webhook of %s (over alerts.max_body_bytes = %d); Alertmanager will "
                    "not send it again", what, self._max)
        if self._on_too_large is None:
            return
        now = time.monotonic()
        if self._too_large_told is not None and now - self._too_large_told < TOO_LARGE_NOTICE_EVERY:
            return
        self._too_large_told = now
        try:
            await self._on_too_large(
                f"⚠️ an Alertmanager notification was lost: its body ({what}) is over `alerts.max_body_bytes` "
                f"({self._max} bytes), and Alertmanager does not resend a refused one. Set `max_alerts` in "
                "Alertmanager's webhook_config (or raise the limit); `!alerts` shows what fires now.")
        except Exception:
            log.warning("alerts: could not report a refused webhook in chat", exc_info=True)

    async def _read(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self._max:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > self._max:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)


class _TooLarge(Exception):
    pass


def _problems(e: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in e.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = f" (+{e.error_count() - limit} more)" if e.error_count() > limit else ""
    return ("; ".join(parts) + more)[:1000]


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status, headers=headers)


def webhook_routes(intake: WebhookIntake, path: str = "/alerts/alertmanager") -> list[web.RouteDef]:
    """The routes to add to the bot's HTTP server (before it starts)."""
    return [web.post(path, intake.handle)]
