"""A small Alertmanager API v2 client: alert groups, alerts, silences.

Typed errors, so the bot can say what went wrong without a traceback:

- :class:`AlertmanagerNotConfigured`: no ``alertmanager_url``.
- :class:`AlertmanagerUnavailable`: connection refused, DNS, timeout, or a 5xx (after retries for
  idempotent requests).
- :class:`AlertmanagerRejected`: a 4xx, e.g. an invalid silence; :class:`SilenceNotFound` for 404.

Every request has a total timeout. GET and DELETE are retried with a short backoff; creating a
silence is not (two silences would be worse than an error). Credentials in the URL
(``http://user:pass@am:9093``) become basic auth and never appear in messages.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Self
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
from pydantic import TypeAdapter, ValidationError

from alerts.models import ApiAlert, ApiAlertGroup, ApiSilence
from alerts.routing import Matcher

log = logging.getLogger(__name__)

_GROUPS = TypeAdapter(list[ApiAlertGroup])
_ALERTS = TypeAdapter(list[ApiAlert])
_SILENCES = TypeAdapter(list[ApiSilence])


class AlertmanagerError(Exception):
    """Something about Alertmanager went wrong; the message is fit to show in chat."""


class AlertmanagerNotConfigured(AlertmanagerError):
    def __init__(self) -> None:
        super().__init__("no Alertmanager is configured (alertmanager_url / --alertmanager-url)")


class AlertmanagerUnavailable(AlertmanagerError):
    """Could not reach Alertmanager, it timed out, or it answered 5xx."""


class AlertmanagerRejected(AlertmanagerError):
    """Alertmanager refused the request (4xx)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SilenceNotFound(AlertmanagerRejected):
    pass


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without credentials, and an Authorization header made of them (if any)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("alertmanager_url must be an http(s) URL with a host")
    auth: dict[str, str] = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts._replace(query="", fragment="")).rstrip("/"), auth


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


class AlertmanagerClient:
    """One Alertmanager (or an HA pair behind one URL). Use ``async with`` or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        retry_delay: float = 0.25,
    ) -> None:
        self.base_url, self._headers = _split_credentials(base_url)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._retry_delay = retry_delay
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Any = None,
        retry: bool = True,
    ) -> Any:
        url = f"{self.base_url}/api/v2/{path.lstrip('/')}"
        attempts = 1 + (self._retries if retry else 0)
        last: AlertmanagerError | None = None
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self._retry_delay * 2 ** (attempt - 1))
            try:
                async with self._http().request(method, url, params=list(params), json=body) as resp:
                    text = await resp.text(errors="replace")
                    if path.startswith("silence/") and (resp.status == 404 or "not found" in text.lower()):
                        # GET answers 404; DELETE answers 500 "silence not found" (0.25).
                        raise SilenceNotFound(f"no silence {path.split('/', 1)[1]}", 404)
                    if resp.status >= 500:
                        last = AlertmanagerUnavailable(
                            f"Alertmanager at {self.base_url} answered {resp.status}: {_short(text)}"
                        )
                        continue
                    if resp.status >= 400:
                        raise AlertmanagerRejected(
                            f"Alertmanager refused {method} {path}: {resp.status} {_short(text)}", resp.status
                        )
                    if not text.strip():
                        return None
                    try:
                        return await resp.json(content_type=None)
                    except ValueError:
                        raise AlertmanagerUnavailable(
                            f"Alertmanager at {self.base_url} sent something that is not JSON"
                        ) from None
            except TimeoutError:
                last = AlertmanagerUnavailable(f"Alertmanager at {self.base_url} did not answer in time")
            except aiohttp.ClientError as e:
                last = AlertmanagerUnavailable(f"Alertmanager at {self.base_url} is unreachable: {_reason(e)}")
        assert last is not None
        raise last

    @staticmethod
    def _parse(adapter: TypeAdapter[Any], data: Any, what: str) -> Any:
        try:
            return adapter.validate_python(data if data is not None else [])
        except ValidationError as e:
            raise AlertmanagerUnavailable(f"Alertmanager sent {what} opsbot cannot read: {e.error_count()} problems") from None

    # ------------------------------------------------------------------------ reading

    async def status(self) -> dict[str, Any]:
        data = await self._request("GET", "status")
        return data if isinstance(data, dict) else {}

    async def alert_groups(
        self, *, receiver: str | None = None, active: bool = True, silenced: bool = True, inhibited: bool = True
    ) -> list[ApiAlertGroup]:
        params = _flags(active=active, silenced=silenced, inhibited=inhibited)
        if receiver:
            params.append(("receiver", f"^(?:{_re_escape(receiver)})$"))
        return self._parse(_GROUPS, await self._request("GET", "alerts/groups", params=params), "alert groups")  # type: ignore[no-any-return]

    async def alerts(
        self,
        matchers: Iterable[Matcher] = (),
        *,
        active: bool = True,
        silenced: bool = True,
        inhibited: bool = True,
        unprocessed: bool = True,
    ) -> list[ApiAlert]:
        params = _flags(active=active, silenced=silenced, inhibited=inhibited, unprocessed=unprocessed)
        params += [("filter", str(m)) for m in matchers]
        return self._parse(_ALERTS, await self._request("GET", "alerts", params=params), "alerts")  # type: ignore[no-any-return]

    async def silences(self, matchers: Iterable[Matcher] = ()) -> list[ApiSilence]:
        params = [("filter", str(m)) for m in matchers]
        return self._parse(_SILENCES, await self._request("GET", "silences", params=params), "silences")  # type: ignore[no-any-return]

    async def silence(self, silence_id: str) -> ApiSilence:
        data = await self._request("GET", f"silence/{_path_id(silence_id)}")
        try:
            return ApiSilence.model_validate(data)
        except ValidationError:
            raise AlertmanagerUnavailable("Alertmanager sent a silence opsbot cannot read") from None

    # ------------------------------------------------------------------------ writing

    async def create_silence(
        self,
        matchers: Sequence[Matcher],
        *,
        starts_at: datetime,
        ends_at: datetime,
        created_by: str,
        comment: str,
    ) -> str:
        """Create a silence; return its ID. Not retried: a retry could create a second one."""
        body = {
            "matchers": [m.to_api() for m in matchers],
            "startsAt": _iso(starts_at),
            "endsAt": _iso(ends_at),
            "createdBy": created_by,
            "comment": comment,
        }
        data = await self._request("POST", "silences", body=body, retry=False)
        silence_id = data.get("silenceID") if isinstance(data, dict) else None
        if not silence_id:
            raise AlertmanagerUnavailable("Alertmanager did not return the new silence's ID")
        return str(silence_id)

    async def expire_silence(self, silence_id: str) -> None:
        await self._request("DELETE", f"silence/{_path_id(silence_id)}")

    async def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Push alerts as Prometheus does (tests, the bench and the demo use it)."""
        await self._request("POST", "alerts", body=alerts)


def _flags(**flags: bool) -> list[tuple[str, str]]:
    return [(k, "true" if v else "false") for k, v in flags.items()]


def _re_escape(text: str) -> str:
    import re

    return re.escape(text)


def _path_id(silence_id: str) -> str:
    silence_id = silence_id.strip()
    if not silence_id or not all(c.isalnum() or c == "-" for c in silence_id) or len(silence_id) > 64:
        raise SilenceNotFound(f"`{silence_id[:64]}` is not a silence ID", 404)
    return silence_id


def _short(text: str) -> str:
    text = " ".join(text.split()).strip('"')
    return text[:200] if text else "(no message)"


def _reason(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        return str(e.os_error.strerror or e.os_error) if e.os_error else "cannot connect"
    return type(e).__name__ if not str(e) else str(e)[:200]
