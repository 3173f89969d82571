"""Pod logs for the sandbox: plausible, deterministic lines, computed rather than stored.

A container *run* (one start of a container, named by its containerID) writes about
``rate`` lines a second from its start (``DEFAULT_RATE``; a pod's annotation
``sandbox.opsbot.dev/log-lines-per-second`` overrides it, so a bench can give a pod 50,000
lines). Line ``i`` has a fixed time and text derived from the run and ``i`` alone, so any slice —
``tailLines``, ``sinceTime`` — is computed directly and a large log is streamed without ever
being held in memory. A run that ended with a non-zero exit code ends in a crash trace.

The text depends on the service (the pod's ``app`` label): chat logs websocket joins and
messages, chat-gui access lines, auth logins — some with an ``Authorization: Bearer eyJ…``
header or a ``password=`` field, deliberately, so the bot's redaction has something to do.

Which run a request reads, and the errors when there is none, follow the kubelet
(``validateContainerLogStatus``); the options follow ``PodLogOptions``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TypeVar

from sandbox.cluster import ApiError, Obj

LOG_RATE_ANNOTATION = "sandbox.opsbot.dev/log-lines-per-second"
DEFAULT_RATE = 1.0  # lines per second of a container's life
BANNER = 3  # startup lines every run prints first
CHUNK = 64 * 1024  # bytes per write when streaming
_NS = 1_000_000_000
T = TypeVar("T")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class LogOptions:
    """``PodLogOptions``: what part of which container's log to send."""

    container: str | None = None
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    since: datetime | None = None
    limit_bytes: int | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str], now: datetime) -> LogOptions:
        """Parse the query of ``GET …/pods/{name}/log``; bad values are 400s."""
        def flag(name: str) -> bool:
            return query.get(name, "").lower() in ("1", "true", "t", "yes")

        def number(name: str, minimum: int) -> int | None:
            raw = query.get(name)
            if raw in (None, ""):
                return None
            try:
                value = int(raw)
            except ValueError:
                raise ApiError.bad_request(f"{name}: invalid value {raw!r}") from None
            if value < minimum:
                raise ApiError(422, "Invalid", f'PodLogOptions "" is invalid: {name}: Invalid '
                                               f"value: {value}: must be greater than or equal "
                                               f"to {minimum}")
            return value

        since_seconds = number("sinceSeconds", 1)
        since_time = query.get("sinceTime")
        if since_seconds is not None and since_time:
            raise ApiError(422, "Invalid", 'PodLogOptions "" is invalid: sinceSeconds: Forbidden: '
                                           "at most one of `sinceTime` or `sinceSeconds` may be "
                                           "specified")
        since = None
        if since_seconds is not None:
            since = datetime.fromtimestamp(now.timestamp() - since_seconds, UTC)
        elif since_time:
            try:
                since = datetime.fromisoformat(since_time)
            except ValueError:
                raise ApiError.bad_request(f"sinceTime: invalid time {since_time!r}") from None
        return cls(container=query.get("container") or None, follow=flag("follow"),
                   previous=flag("previous"), timestamps=flag("timestamps"),
                   tail_lines=number("tailLines", 0), since=since,
                   limit_bytes=number("limitBytes", 1))


# --------------------------------------------------------------------------- randomness


_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit value from any integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class _Rng:
    """A tiny deterministic generator (one per line, so lines can be made in any order)."""

    __slots__ = ("state",)

    def __init__(self, seed: int):
        self.state = seed

    def next(self) -> int:
        self.state = _mix(self.state)
        return self.state

    def below(self, n: int) -> int:
        return self.next() % n

    def between(self, low: int, high: int) -> int:
        return low + self.below(high - low + 1)

    def pick(self, items: Sequence[T]) -> T:
        return items[self.below(len(items))]

    def chance(self, percent: float) -> bool:
        return self.below(10_000) < percent * 100

    def hex(self, digits: int) -> str:
        return f"{self.next():016x}"[:digits]

    def token(self, length: int) -> str:
        raw = b"".join(self.next().to_bytes(8, "little") for _ in range(length // 10 + 1))
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")[:length]


# --------------------------------------------------------------------------- what services say

USERS = ("Destiny", "Bob_Ross", "xXgamerXx", "lil_bean", "Cake", "Gnome", "Dharma", "snowman",
         "ArmchairAnalyst", "Mitch", "neodgg", "Ayana", "Lemon", "Kraemer", "Linusred", "Fritz")
PASSWORDS = ("hunter2", "correct-horse-battery-staple", "Tr0ub4dor&3", "dggL0ver!99", "letmein",
             "qwerty123", "Pepe1337")
PATHS = ("/", "/bigscreen", "/embed/chat", "/assets/chat.js", "/assets/chat.css",
         "/assets/emotes.json", "/api/chat/me", "/api/chat/history", "/favicon.ico")
AGENTS = (("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/131.0.0.0 Safari/537.36"),
          "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
          ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
           "like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"))
CHANNELS = ("twitch/destiny", "youtube/UC554eY5jNUfDq3yDOJYirOQ", "kick/destiny",
            "angelthump/dggcinema", "twitch/theprimeagen", "youtube/UCxMAbVFmxKUVGAll7WAvAiw")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

Say = Callable[[_Rng, "Run", int], str]


def _ip(rng: _Rng) -> str:
    first = rng.pick((73, 98, 172, 24, 86))
    return f"{first}.{rng.below(256)}.{rng.below(256)}.{rng.between(1, 254)}"


def _jwt(rng: _Rng, user: str, at: int) -> str:
    claims = json.dumps({"sub": user, "iat": at, "exp": at + 3600, "scope": "chat"},
                        separators=(",", ":"))
    payload = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{payload}.{rng.token(43)}"


def _chat(rng: _Rng, run: Run, at: int) -> str:
    user, conn = rng.pick(USERS), rng.hex(8)
    roll = rng.below(100)
    if roll < 30:
        return f'level=info msg="websocket join" user={user} conn={conn} ip={_ip(rng)}'
    if roll < 65:
        return (f'level=info msg="message" user={user} room=destinygg '
                f"len={rng.between(1, 280)} fanout={rng.between(900, 4200)}")
    if roll < 85:
        return (f'level=info msg="websocket leave" user={user} conn={conn} '
                f"duration={rng.between(3, 7200)}s")
    if roll < 93:
        return (f'level=debug msg="broadcast" recipients={rng.between(900, 4200)} '
                f"took={rng.between(1, 40)}ms")
    if roll < 97:
        return (f'level=warn msg="slow consumer, dropping messages" conn={conn} '
                f"queued={rng.between(256, 2048)}")
    return f'level=error msg="redis publish failed" error="i/o timeout" retry={rng.between(1, 3)}'


def _chat_gui(rng: _Rng, run: Run, at: int) -> str:
    moment = time.gmtime(at)
    stamp = (f"{moment.tm_mday:02d}/{_MONTHS[moment.tm_mon - 1]}/{moment.tm_year}:"
             f"{moment.tm_hour:02d}:{moment.tm_min:02d}:{moment.tm_sec:02d} +0000")
    path = rng.pick(PATHS)
    status = 404 if path == "/favicon.ico" else rng.pick((200,) * 30 + (304, 304, 502, 500))
    size = 0 if status == 304 else rng.between(200, 180_000)
    if status >= 500:
        return f"error: upstream chat api failed: GET {path}: {status} after {rng.between(1, 30)}s"
    return (f'::ffff:{_ip(rng)} - - [{stamp}] "GET {path} HTTP/1.1" {status} {size} '
            f'"https://www.destiny.gg/" "{rng.pick(AGENTS)}"')


def _auth(rng: _Rng, run: Run, at: int) -> str:
    user = rng.pick(USERS)
    roll = rng.below(100)
    if roll < 35:
        method = rng.pick(("password", "twitch", "google"))
        return (f'level=info msg="login ok" user={user} method={method} ip={_ip(rng)} '
                f"session=s_{rng.hex(12)}")
    if roll < 55:
        return f'level=info msg="token refreshed" user={user} expires_in=3600'
    if roll < 65:
        return (f'level=debug msg="upstream request" url=https://id.twitch.tv/oauth2/validate '
                f'header="Authorization: Bearer {_jwt(rng, user, at)}"')
    if roll < 73:
        return (f'level=warn msg="login failed" user={user} password={rng.pick(PASSWORDS)} '
                f'reason="invalid credentials" ip={_ip(rng)}')
    if roll < 97:
        return (f'level=info msg="request" method=GET path=/api/session status=200 '
                f"took={rng.between(2, 90)}ms")
    return 'level=error msg="session store error" error="context deadline exceeded"'


def _modbot(rng: _Rng, run: Run, at: int) -> str:
    user = rng.pick(USERS)
    roll = rng.below(100)
    if roll < 55:
        return (f'level=info msg="message checked" user={user} verdict=ok '
                f"score=0.{rng.between(0, 30):02d}")
    if roll < 75:
        duration = rng.pick(("1m", "10m", "1h"))
        reason = rng.pick(("spam", "emote spam", "slurs", "links"))
        return (f'level=info msg="timeout issued" target={user} duration={duration} '
                f'reason="{reason}" by=modbot')
    if roll < 88:
        return f'level=info msg="nuke expired" phrase="{rng.hex(6)}" victims={rng.between(1, 40)}'
    if roll < 96:
        return f'level=warn msg="ban evasion suspected" user={user} matches={rng.pick(USERS)}'
    return (f'level=error msg="discord webhook failed" status=429 '
            f"retry_after={rng.between(1, 30) / 10}s")


def _strims(rng: _Rng, run: Run, at: int) -> str:
    roll = rng.below(100)
    if roll < 35:
        return (f'level=info msg="stream online" channel={rng.pick(CHANNELS)} '
                f"viewers={rng.between(3, 24000)}")
    if roll < 60:
        return (f'level=info msg="embed cache refresh" entries={rng.between(40, 400)} '
                f"took={rng.between(5, 900)}ms")
    if roll < 90:
        return (f'level=info msg="request" method=GET path=/api/streams status=200 '
                f"took={rng.between(1, 60)}ms")
    if roll < 97:
        provider = rng.pick(("youtube", "twitch", "kick"))
        took = rng.between(1500, 9000)
        return f'level=warn msg="upstream slow" provider={provider} took={took}ms'
    return f'level=error msg="angelthump api error" status={rng.pick((502, 503))}'


def _generic(rng: _Rng, run: Run, at: int) -> str:
    status = rng.pick((200,) * 20 + (404, 500))
    level = "error" if status == 500 else "info"
    return (f'level={level} msg="request" method=GET path=/{rng.pick(("", "healthz", "api"))} '
            f"status={status} took={rng.between(1, 80)}ms")


SERVICES: dict[str, Say] = {"chat": _chat, "chat-gui": _chat_gui, "auth": _auth,
                            "modbot": _modbot, "strims": _strims}


def _banner(run: Run) -> tuple[str, str, str]:
    if run.service == "chat-gui":
        return (f"> chat-gui@{run.version.lstrip('v')} start", "> node server.js",
                f"chat-gui listening on :8080 (env={run.namespace})")
    commit = hashlib.sha1(f"{run.service}:{run.version}".encode()).hexdigest()[:7]
    return ((f'level=info msg="starting {run.service}" version={run.version} commit={commit} '
             "go=go1.23.4"),
            f'level=info msg="connected" backend=redis addr=redis.{run.namespace}.svc:6379',
            'level=info msg="listening" addr=:8080')


def _crash(run: Run) -> tuple[str, ...]:
    """What a run that exits non-zero prints last."""
    if run.service == "chat-gui":
        return ("/app/server.js:42",
                "    const cdn = loadConfig(process.env.CHAT_GUI_CONFIG).emotes.cdn;",
                "                                                              ^",
                "",
                "TypeError: Cannot read properties of undefined (reading 'cdn')",
                "    at Object.<anonymous> (/app/server.js:42:63)",
                "    at Module._compile (node:internal/modules/cjs/loader:1554:14)",
                "    at Object..js (node:internal/modules/cjs/loader:1706:10)",
                "    at Module.load (node:internal/modules/cjs/loader:1289:32)",
                "    at Function._load (node:internal/modules/cjs/loader:1108:12)",
                "",
                "Node.js v22.12.0")
    src = f"/src/cmd/{run.service}"
    return ("panic: runtime error: invalid memory address or nil pointer dereference [recovered]",
            "[signal SIGSEGV: segmentation violation code=0x1 addr=0x28 pc=0x8c1f2a]",
            "",
            "goroutine 1 [running]:",
            "main.(*Server).routes(0x0)",
            f"\t{src}/server.go:117 +0x2a",
            f"main.run({{0x7ffd5e2b1f3e, 0x{len(run.version):x}}})",
            f"\t{src}/main.go:58 +0x1c5",
            "main.main()",
            f"\t{src}/main.go:31 +0x3d",
            f'level=fatal msg="{run.service} crashed during startup, exiting" exit_code=1')


# --------------------------------------------------------------------------- one run's log


@dataclass(frozen=True)
class Run:
    """One run of a container, and the log it wrote: ``count`` regular lines, then the crash
    trace when it exited non-zero. Entry ``i`` is computed from ``i`` alone."""

    key: str  # the containerID
    service: str
    version: str
    namespace: str
    started_ns: int
    finished_ns: int | None
    exit_code: int | None
    rate: float

    @property
    def seed(self) -> int:
        return int(hashlib.sha256(self.key.encode()).hexdigest()[:16], 16)

    @property
    def _banner_step(self) -> int:
        """The startup banner comes out at once: its lines this far apart."""
        return max(1, min(1_000_000, int(_NS / self.rate) // (BANNER + 1)))

    @property
    def end_ns(self) -> int | None:
        """When the run ended (None while it runs); never before its banner was written,
        as startedAt and finishedAt are whole seconds."""
        if self.finished_ns is None:
            return None
        return max(self.finished_ns, self.started_ns + BANNER * self._banner_step)

    def time_ns(self, i: int) -> int:
        """When regular line ``i`` was written: the banner at the start, then line ``i`` at
        ``(i - BANNER + 1) / rate`` plus a jitter below 0.9/rate."""
        if i < BANNER:
            return self.started_ns + i * self._banner_step
        jitter = _mix(self.seed ^ (i * 0x2545F4914F6CDD1D)) % 900_000_000
        return self.started_ns + int(((i - BANNER + 1) * _NS + jitter) / self.rate)

    def _near(self, at_ns: int) -> int:
        """A guess of the index of the line written around ``at_ns``."""
        return max(0, BANNER - 1 + int((at_ns - self.started_ns) * self.rate / _NS))

    def count(self, until_ns: int) -> int:
        """How many regular lines were written by ``until_ns`` (and before the run ended)."""
        if (end := self.end_ns) is not None:
            until_ns = min(until_ns, end)
        if until_ns < self.started_ns:
            return 0
        n = self._near(until_ns) + 1
        while n > 0 and self.time_ns(n - 1) > until_ns:
            n -= 1
        while self.time_ns(n) <= until_ns:
            n += 1
        return n

    def first_at_or_after(self, since_ns: int) -> int:
        """The index of the first regular line written at or after ``since_ns``."""
        if since_ns <= self.started_ns:
            return 0
        i = self._near(since_ns)
        while i > 0 and self.time_ns(i - 1) >= since_ns:
            i -= 1
        while self.time_ns(i) < since_ns:
            i += 1
        return i

    def crash(self, now_ns: int) -> tuple[str, ...]:
        end = self.end_ns
        if end is None or end > now_ns or not self.exit_code:
            return ()
        return _crash(self)

    def entry(self, i: int, regular: int) -> tuple[int, str]:
        """(time, text) of entry ``i``: regular lines below ``regular``, the crash trace after
        (a microsecond apart, from the end of the run)."""
        if i >= regular:
            assert self.end_ns is not None
            return self.end_ns + 1000 * (i - regular + 1), _crash(self)[i - regular]
        at = self.time_ns(i)
        if i < BANNER:
            return at, _banner(self)[i]
        say = SERVICES.get(self.service, _generic)
        return at, say(_Rng(self.seed ^ _mix(i)), self, at // _NS)

    def window(self, now: datetime, options: LogOptions) -> tuple[int, int, int]:
        """(first, end, regular): the entries ``options`` select, and the regular line count.

        Like the kubelet: the last ``tail_lines`` entries, of those the ones at or after
        ``since``.
        """
        now_ns = _ns(now)
        regular = self.count(now_ns)
        end = regular + len(self.crash(now_ns))
        first = 0 if options.tail_lines is None else max(0, end - options.tail_lines)
        if options.since is not None:
            since_ns = _ns(options.since)
            by_time = min(self.first_at_or_after(since_ns), regular)
            if by_time == regular and end > regular:  # the crash trace, at end + k µs
                assert self.end_ns is not None
                late = -(-(since_ns - self.end_ns) // 1000) - 1
                by_time = regular + min(max(late, 0), end - regular)
            first = max(first, by_time)
        return first, end, regular


def _ns(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000) * 1000


def _parse(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class _Stamps:
    """RFC3339 with nanoseconds, as the kubelet prefixes lines (``…T02:38:53.123456789Z``)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ns: int) -> str:
        second, rest = divmod(ns, _NS)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S",
                                                               time.gmtime(second))
        return f"{self._prefix}.{rest:09d}Z"


def render(run: Run, first: int, end: int, regular: int, *, timestamps: bool = False,
           limit_bytes: int | None = None) -> Iterator[bytes]:
    """Entries ``first``..``end`` as text, in chunks of about :data:`CHUNK` bytes; at most
    ``limit_bytes`` bytes in all."""
    chunks = _chunks(run, first, end, regular, timestamps)
    if limit_bytes is None:
        yield from chunks
        return
    budget = limit_bytes
    for chunk in chunks:
        yield chunk[:budget]
        budget -= len(chunk)
        if budget <= 0:
            return


def _chunks(run: Run, first: int, end: int, regular: int, timestamps: bool) -> Iterator[bytes]:
    stamps = _Stamps()
    parts: list[str] = []
    size = 0
    for i in range(first, end):
        at, text = run.entry(i, regular)
        parts.append(f"{stamps(at)} {text}\n" if timestamps else f"{text}\n")
        size += len(parts[-1])
        if size >= CHUNK:
            yield "".join(parts).encode()
            parts, size = [], 0
    if parts:
        yield "".join(parts).encode()


# --------------------------------------------------------------------------- which run


def container_name(pod: Obj, container: str | None) -> str:
    """The container a request means (the API server's validateContainer)."""
    name = pod["metadata"]["name"]
    names = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
    if not container:
        if len(names) == 1:
            return names[0]
        if not names:
            raise ApiError.bad_request(f"a container name must be specified for pod {name}")
        raise ApiError.bad_request(f"a container name must be specified for pod {name}, "
                                   f"choose one of: [{' '.join(names)}]")
    if container not in names:
        raise ApiError.bad_request(f"container {container} is not valid for pod {name}, "
                                   f"choose one of: [{' '.join(names)}]")
    return container


def _run_of(pod: Obj, container: str, state: Obj) -> Run | None:
    started = _parse(state.get("startedAt"))
    if started is None:
        return None
    finished = _parse(state.get("finishedAt"))
    labels = pod["metadata"].get("labels") or {}
    image = next((c.get("image", "") for c in pod["spec"].get("containers") or []
                  if c["name"] == container), "")
    version = image.split("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2] or "latest"
    try:
        rate = float((pod["metadata"].get("annotations") or {}).get(LOG_RATE_ANNOTATION,
                                                                   DEFAULT_RATE))
    except ValueError:
        rate = DEFAULT_RATE
    key = state.get("containerID") or f"{pod['metadata'].get('uid')}/{container}/{started}"
    return Run(key=key, service=labels.get("app", container), version=version,
               namespace=pod["metadata"].get("namespace", ""), started_ns=_ns(started),
               finished_ns=_ns(finished) if finished else None,
               exit_code=state.get("exitCode"), rate=rate if rate > 0 else DEFAULT_RATE)


def select_run(pod: Obj, options: LogOptions) -> Run | None:
    """The run whose log a request reads; None when the pod has no node yet (an empty log).

    Raises the kubelet's errors (400) when there is nothing to read: a container still waiting
    to start, or no previous terminated container for ``previous``.
    """
    container = container_name(pod, options.container)
    name = pod["metadata"]["name"]
    if not (pod.get("spec") or {}).get("nodeName"):
        return None
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    status = next((s for s in statuses if s.get("name") == container), None)
    if status is None:
        raise ApiError.bad_request(f'container "{container}" in pod "{name}" is not available')
    state, last = status.get("state") or {}, (status.get("lastState") or {}).get("terminated")
    # In the kubelet's order: previous, running, terminated, last terminated, waiting.
    if options.previous:
        if not last or not last.get("containerID"):
            raise ApiError.bad_request(
                f'previous terminated container "{container}" in pod "{name}" not found')
        chosen = last | {"containerID": last["containerID"]}
    elif "running" in state:
        chosen = state["running"] | {"containerID": status.get("containerID", "")}
    elif "terminated" in state:
        chosen = state["terminated"]
        if not chosen.get("containerID"):
            if not last or not last.get("containerID"):
                raise ApiError.bad_request(f'container "{container}" in pod "{name}" is terminated')
            chosen = last
    elif last:
        if not last.get("containerID"):
            raise ApiError.bad_request(f'container "{container}" in pod "{name}" is terminated')
        chosen = last
    else:
        reason = (state.get("waiting") or {}).get("reason")
        detail = {"ErrImagePull": "image can't be pulled",
                  "ImagePullBackOff": "trying and failing to pull image"}.get(reason or "", reason)
        if detail:
            raise ApiError.bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {detail}')
        raise ApiError.bad_request(
            f'container "{container}" in pod "{name}" is waiting to start - no logs yet')
    run = _run_of(pod, container, chosen)
    if run is None:
        raise ApiError.bad_request(
            f'container "{container}" in pod "{name}" is waiting to start - no logs yet')
    return run


def ended(pod: Obj | None, run: Run, container: str, now: datetime) -> Run | None:
    """``run`` as it finished, once the pod shows it terminated; None while it runs (follow).

    A pod that is gone, or whose container moved on without showing how ``run`` ended, ends
    the run ``now`` (without a crash trace).
    """
    if pod is None:
        return replace(run, finished_ns=_ns(now), exit_code=0)
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != container:
            continue
        state = status.get("state") or {}
        if "running" in state and status.get("containerID") == run.key:
            return None
        for terminated in (state.get("terminated"), (status.get("lastState") or {}).get(
                "terminated")):
            if terminated and terminated.get("containerID") == run.key:
                return _run_of(pod, container, terminated)
    return replace(run, finished_ns=_ns(now), exit_code=0)


def log_lines(pod: Obj, options: LogOptions, now: datetime) -> Iterator[bytes]:
    """The whole (not followed) answer to a log request, in chunks; raises :class:`ApiError`."""
    run = select_run(pod, options)
    if run is None:
        return iter(())
    first, end, regular = run.window(now, options)
    return render(run, first, end, regular, timestamps=options.timestamps,
                  limit_bytes=options.limit_bytes)
