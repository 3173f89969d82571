"""The platform-independent core of ``!logs``: options, time-ordered merging, the bounded collector.

``!logs <service> <env> [--since 10m] [--tail N] [--grep REGEX] [--previous] [--pod NAME]
[--container NAME]``. The platform adapters (``commands/targets/``) turn each pod or container into
an async iterator of :data:`LogLine` (``parse_k8s_stream`` does it for ``--timestamps`` output);
:func:`merge` interleaves them by time; a :class:`LogCollector` redacts, filters, prefixes and keeps
what will be shown within bounded memory; :meth:`LogCollector.finish` packs it as inline text, a
``.txt`` or a ``.txt.gz`` attachment. :func:`collect` drives the last two from async code.

Decisions worth knowing:

* ``--grep`` runs on the *redacted* text, so nobody can use it as an oracle to probe secret values
  (``--grep 'password=hunter2'`` matches nothing because the line reads ``password=[REDACTED]``).
  It costs one redaction per line read instead of per line shown. It matches the message, not the
  ``pod | `` prefix (use ``--pod`` for that). Smart case: a pattern without upper-case letters is
  case-insensitive (``--grep error`` finds ``ERROR``); one with any is case-sensitive.
* ``--grep`` patterns with a repetition inside an unbounded repetition (``(a+)+``, ``(\\w+\\s?)*``)
  are refused: Python's ``re`` backtracks exponentially on them and has no timeout, so one message
  could stall the bot. Overlapping alternations (``(a|aa)+``) are not detected.
* Without ``--tail`` the default is the last 200 lines, but ``--since`` alone means "every line in
  that window" (as ``kubectl logs --since`` does); memory stays bounded either way and the answer
  is limited by the attachment size.
* Memory: the collector keeps at most ``tail`` encoded lines or 256 KiB in a deque, then spools
  to temporary files (the first MiB of each in memory, then disk) in segments that are dropped as
  soon as newer ones hold everything that can still be shown (``tail`` lines, or
  ``max_text_bytes`` of text): disk use is bounded too, not just memory.
* Lines longer than ``max_line_chars`` are cut (after redaction, so a cut cannot split a secret
  into an unrecognisable half).
"""

from __future__ import annotations

import asyncio
import io
import re
import zlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from heapq import heapify, heappop, heapreplace
from tempfile import SpooledTemporaryFile
from typing import IO, Any, Self

from rapidfuzz import fuzz, process

from commands.catalog import UserError
from commands.redact import Redactor
from commands.timeutil import parse_duration, short

DEFAULT_TAIL = 200
MAX_TAIL = 100_000
MAX_SINCE = timedelta(days=7)
MAX_GREP_CHARS = 200

# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class LogQuery:
    """What ``!logs`` was asked for, validated. ``tail=None`` means every line (in ``since``)."""

    since: timedelta | None = None
    tail: int | None = DEFAULT_TAIL
    grep: re.Pattern[str] | None = None
    previous: bool = False
    pod: str | None = None
    container: str | None = None


# option -> metavar shown in help (None: a flag without value)
_OPTIONS: dict[str, str | None] = {
    "--since": "10m",
    "--tail": "N",
    "--grep": "REGEX",
    "--previous": None,
    "--pod": "NAME",
    "--container": "NAME",
}
_ALIASES = {"-p": "--previous", "-c": "--container"}
VALID_OPTIONS = ", ".join(f"`{o} {m}`" if m else f"`{o}`" for o, m in _OPTIONS.items())

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def parse_log_args(words: list[str]) -> LogQuery:
    """Parse the option words of ``!logs`` (after service and env).

    Accepts ``--since 10m`` and ``--since=10m``, ``-p`` for ``--previous``, ``-c`` for
    ``--container``. Raises :class:`UserError` with a message fit for chat on anything wrong.
    """
    values: dict[str, str | None] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        name, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        name = _ALIASES.get(name, name)
        if not name.startswith("-") or name == "-":
            hint = ""
            if "--grep" in values:
                hint = ' — quote a pattern with spaces: `--grep "connection refused"`'
            raise UserError(f"unexpected `{word}`{hint}; options are {VALID_OPTIONS}")
        if name not in _OPTIONS:
            best = process.extractOne(name.lstrip("-"), [o[2:] for o in _OPTIONS], scorer=fuzz.ratio,
                                      score_cutoff=70)
            close = f"--{best[0]}" if best else None
            did = f" — did you mean `{close}`?" if close else "."
            raise UserError(f"unknown option `{name}`{did} Valid options: {VALID_OPTIONS}")
        if name in values:
            raise UserError(f"`{name}` is given twice")
        metavar = _OPTIONS[name]
        if metavar is None:
            if eq:
                raise UserError(f"`{name}` takes no value")
            values[name] = None
            continue
        if not eq:
            if i >= len(words):
                raise UserError(f"`{name}` needs a value, e.g. `{name} {_example(name)}`")
            value = words[i]
            i += 1
        if not value:
            raise UserError(f"`{name}` needs a value, e.g. `{name} {_example(name)}`")
        values[name] = value

    since = None
    if (text := values.get("--since")) is not None:
        since = parse_duration(text, maximum=MAX_SINCE, what="`--since` duration")
    tail: int | None = DEFAULT_TAIL if since is None else None
    if (text := values.get("--tail")) is not None:
        tail = _parse_tail(text)
    grep = None
    if (text := values.get("--grep")) is not None:
        grep = compile_grep(text)
    return LogQuery(
        since=since,
        tail=tail,
        grep=grep,
        previous="--previous" in values,
        pod=_parse_name("--pod", values.get("--pod")),
        container=_parse_name("--container", values.get("--container")),
    )


def _example(name: str) -> str:
    return {"--since": "10m", "--tail": "500", "--grep": "error", "--pod": "auth-5d9c7b6f4-x2x7k",
            "--container": "app"}.get(name, "VALUE")


def _parse_tail(text: str) -> int:
    digits = text.replace("_", "").replace(",", "")
    if not (digits.isascii() and digits.isdigit()):
        raise UserError(f"`--tail` takes a number of lines, e.g. `--tail 500`; got `{text}`")
    n = int(digits)
    if n < 1:
        raise UserError("`--tail` must be at least 1 line")
    if n > MAX_TAIL:
        raise UserError(f"`--tail` can be at most {MAX_TAIL} lines; use `--since` or `--grep` to narrow")
    return n


def _parse_name(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not _NAME.fullmatch(value):
        raise UserError(
            f"`{option}` takes a name of letters, digits, `.`, `_` and `-` (like `{_example(option)}`); "
            f"got `{value}`"
        )
    return value


def compile_grep(pattern: str) -> re.Pattern[str]:
    """Compile a ``--grep`` pattern (smart case) or raise :class:`UserError` naming the problem."""
    if len(pattern) > MAX_GREP_CHARS:
        raise UserError(f"a `--grep` pattern can be at most {MAX_GREP_CHARS} characters")
    # Smart case: upper-case letters outside escapes (\S, \W, \D, \B, \A, \Z) make it case-sensitive.
    literal = re.sub(r"\\.", "", pattern)
    flags = 0 if any(c.isupper() for c in literal) else re.IGNORECASE
    try:
        compiled = re.compile(pattern, flags)
    except re.error as e:
        where = f" at position {e.pos}" if e.pos is not None else ""
        raise UserError(f"`--grep {pattern}` is not a valid regular expression: {e.msg}{where}") from None
    except (OverflowError, RecursionError):
        raise UserError(f"`--grep {pattern}` is too complex") from None
    if _nested_repeat(pattern, flags):
        raise UserError(
            f"`--grep {pattern}` repeats a repetition (like `(a+)+`), which can take forever on "
            "long lines; simplify it (e.g. `(a+)+` → `a+`)"
        )
    return compiled


def _nested_repeat(pattern: str, flags: int) -> bool:
    """True when a variable repetition sits inside an unbounded one, or an unbounded one inside any
    repetition: the shapes that make a backtracking engine exponential (``(a+)+``, ``(a{1,3})*``,
    ``(.*x){20}``). ``(\\d{1,3}\\.){3}`` is fine. Possessive and atomic parts can't backtrack."""
    from re import _constants as c  # type: ignore[attr-defined]
    from re import _parser  # type: ignore[attr-defined]

    repeats = {c.MAX_REPEAT, c.MIN_REPEAT}
    possessive = getattr(c, "POSSESSIVE_REPEAT", None)

    class Found(Exception):
        pass

    def children(op: Any, av: Any) -> list[Any]:
        if op is c.SUBPATTERN:
            return [av[-1]]
        if op is c.BRANCH:
            return list(av[1])
        if op in (c.ASSERT, c.ASSERT_NOT):
            return [av[1]]
        if op is c.GROUPREF_EXISTS:
            return [x for x in av[1:] if x is not None]
        return []

    def walk(items: Any) -> tuple[bool, bool]:
        """(contains an unbounded repeat, contains a variable-length repeat)"""
        unbounded = variable = False
        for op, av in items:
            if op in repeats:
                lo, hi, sub = av
                inner_unbounded, inner_variable = walk(sub)
                if (hi == c.MAXREPEAT and (inner_unbounded or inner_variable)) or (
                    inner_unbounded and hi > 1
                ):
                    raise Found
                unbounded |= hi == c.MAXREPEAT or inner_unbounded
                variable |= lo != hi or inner_variable
            elif op is possessive or op is getattr(c, "ATOMIC_GROUP", None):
                continue  # no backtracking into it
            else:
                for child in children(op, av):
                    u, v = walk(child)
                    unbounded |= u
                    variable |= v
        return unbounded, variable

    try:
        walk(_parser.parse(pattern, flags))
    except Found:
        return True
    except Exception:  # noqa: BLE001 -- the private parser changed shape: don't block users
        return False
    return False


# ---------------------------------------------------------------------------------------------
# Lines and merging


class NanoTime(datetime):
    """A ``datetime`` that also keeps the nanoseconds below its microseconds (0–999), as pandas'
    ``Timestamp.nanosecond`` does. Plain datetimes compare equal at microsecond resolution;
    :func:`merge` breaks such ties with ``nanosecond``. Arithmetic drops it."""

    __slots__ = ("nanosecond",)
    nanosecond: int

    def __new__(cls, *args: Any, nanosecond: int = 0, **kwargs: Any) -> Self:
        self = super().__new__(cls, *args, **kwargs)
        self.nanosecond = nanosecond
        return self


LogLine = tuple[datetime, str, str]
"""(timestamp, source such as the pod name, text without a trailing newline)"""

UNKNOWN_TIME = NanoTime(1970, 1, 1, tzinfo=UTC)
"""The timestamp of a line that has none and no earlier line to borrow one from."""

_TS = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?(?: |$)"
)
_ZONES: dict[str, timezone] = {"Z": UTC, "": UTC}


def _zone(text: str) -> timezone:
    tz = _ZONES.get(text)
    if tz is None:
        digits = text.replace(":", "")
        delta = timedelta(hours=int(digits[1:3]), minutes=int(digits[3:5]))
        tz = _ZONES[text] = timezone(-delta if digits[0] == "-" else delta)
    return tz


def parse_k8s_line(source: str, raw: str, last: datetime | None = None) -> LogLine:
    """Split a ``--timestamps`` line (``2026-11-30T02:38:53.123456789Z message``, as kubectl, the
    pods/log API and ``docker logs -t`` print it) into a :data:`LogLine`, keeping the nanoseconds.
    A line without a timestamp (a wrapped stack trace, say) gets ``last``, the previous line's."""
    raw = raw.rstrip("\r\n")
    m = _TS.match(raw)
    if m is not None:
        try:
            frac = (m[7] or "").ljust(9, "0")
            ts = NanoTime(
                int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), int(frac[:6]),
                tzinfo=_zone(m[8] or ""), nanosecond=int(frac[6:]),
            )
        except ValueError:  # 2026-13-45…: not a timestamp after all
            pass
        else:
            return ts, source, raw[m.end():]
    return (last if last is not None else UNKNOWN_TIME), source, raw


async def parse_k8s_stream(source: str, raw_lines: AsyncIterable[str | bytes]) -> AsyncIterator[LogLine]:
    """:func:`parse_k8s_line` over a stream, carrying timestamps to lines that have none."""
    last: datetime | None = None
    async for raw in raw_lines:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        line = parse_k8s_line(source, raw, last)
        last = line[0]
        yield line


_END: Any = object()


async def _first(it: AsyncIterator[LogLine]) -> Any:
    return await anext(it, _END)


def _order(ts: datetime) -> tuple[datetime, int]:
    return ts, getattr(ts, "nanosecond", 0)


async def merge(sources: list[AsyncIterator[LogLine]]) -> AsyncIterator[LogLine]:
    """K-way merge of sources that are each in time order, by timestamp (nanoseconds included).

    Stable: equal timestamps come out in source order, and each source's own order is kept.
    Holds one line per source (memory O(number of sources)). The first line of every source is
    awaited concurrently; after that a source is read when its line has been yielded. Timestamps
    must all be timezone-aware (or all naive). Sources are closed when the merge ends or is closed.
    """
    iters = [aiter(s) for s in sources]
    try:
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(_first(it)) for it in iters]
        except BaseExceptionGroup as group:  # callers expect the source's own error
            raise group.exceptions[0]  # the group would be noise here
        heap = [(_order(t.result()[0]), i, t.result()) for i, t in enumerate(tasks) if t.result() is not _END]
        heapify(heap)
        while heap:
            _, i, line = heap[0]
            yield line
            nxt = await anext(iters[i], _END)
            if nxt is _END:
                heappop(heap)
            else:
                heapreplace(heap, (_order(nxt[0]), i, nxt))
    finally:
        for it in iters:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except RuntimeError:  # still running (a failed first fetch): nothing to close
                    pass


# ---------------------------------------------------------------------------------------------
# Collecting


@dataclass
class LogResult:
    """What ``!logs`` answers. Exactly one of ``inline`` / ``attachment`` is set unless no line
    was kept. ``inline`` is safe inside a ``` code block (``` in logs is broken up by a zero-width
    space) and has no trailing newline."""

    lines: int  # lines in the answer
    matched: int  # lines that passed --grep (every line read when there is no grep)
    total_seen: int  # lines read
    sources: int  # pods/containers read
    inline: str | None = None
    attachment: tuple[str, bytes] | None = field(default=None, repr=False)
    truncated: bool = False  # older lines that tail/since asked for did not fit the attachment
    text_bytes: int = 0  # size of the plain text in the answer
    source_kind: str = "pod"
    since: timedelta | None = None
    tail: int | None = None
    grep: str | None = None
    attachment_limit: int = 8 * 1024 * 1024

    @property
    def empty(self) -> bool:
        return self.lines == 0

    def summary(self) -> str:
        """One line for the message, e.g. ``1,234 lines from 3 pods, last 10m, 12 matched /error/``."""
        src = _plural(self.sources, self.source_kind)
        window = f", last {short(self.since)}" if self.since else ""
        if self.total_seen == 0:
            return f"no log lines from {src}{' in the' + window[1:] if window else ''}"
        text = f"{_plural(self.total_seen, 'line')} from {src}{window}"
        if self.grep is not None:
            if self.matched == 0:
                return f"no line matched /{self.grep}/ ({text})"
            text += f", {self.matched:,} matched /{self.grep}/"
        if self.lines < self.matched:
            text += f"; showing the last {self.lines:,}"
            if self.truncated:
                text += f" (the rest is over the {_size(self.attachment_limit)} attachment limit)"
        return text


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


@dataclass
class _Segment:
    file: IO[bytes]
    lines: int = 0
    bytes: int = 0


_BATCH = 256 * 1024  # bytes of encoded lines held in the deque before they go to a spool file
_FENCE = "```"


class LogCollector:
    """Redacts, filters (``grep``), prefixes (``pod | ``) and keeps the lines to show, in bounded
    memory whatever the input size; :meth:`finish` packs them. Feed it with :meth:`add` (or
    :func:`collect`), call :meth:`finish` once. Not thread-safe; ``finish`` may run in a thread.
    """

    def __init__(
        self,
        redactor: Redactor,
        grep: re.Pattern[str] | None = None,
        tail: int | None = None,
        inline_limit: int = 1900,
        attachment_limit: int = 8 * 1024 * 1024,
        *,
        since: timedelta | None = None,
        sources: int | None = None,
        source_kind: str = "pod",
        name: str = "logs",
        max_line_chars: int = 16_384,
        max_text_bytes: int | None = None,
        spool_memory: int = 1024 * 1024,
        segment_bytes: int | None = None,
    ) -> None:
        if tail is not None and tail < 1:
            raise ValueError("tail must be at least 1")
        self.redactor = redactor
        self.grep = grep
        self.tail = tail
        self.inline_limit = inline_limit
        self.attachment_limit = attachment_limit
        self.since = since
        self.source_count = sources
        self.source_kind = source_kind
        self.name = name
        self.max_line_chars = max_line_chars
        # More plain text than this is never kept: even at 16:1 it would not fit gzipped.
        self.max_text_bytes = max_text_bytes if max_text_bytes is not None else 16 * attachment_limit
        self.spool_memory = spool_memory
        self.segment_bytes = segment_bytes or max(spool_memory, self.max_text_bytes // 8)

        self.total_seen = 0
        self.matched = 0
        self._sources: set[str] = set()
        self._recent: deque[bytes] = deque(maxlen=tail)
        self._recent_bytes = 0
        self._segments: deque[_Segment] = deque()
        self._seg_lines = 0  # totals over self._segments
        self._seg_bytes = 0
        self._finished = False

    # -- feeding -------------------------------------------------------------------------------

    def add(self, line: LogLine) -> None:
        _, source, text = line
        self.total_seen += 1
        if source not in self._sources:
            self._sources.add(source)
        if "\n" in text or "\r" in text:
            text = text.rstrip("\r\n").replace("\r", "\\r").replace("\n", "\\n")
        text = self.redactor.redact(text)
        if len(text) > self.max_line_chars:
            text = f"{text[: self.max_line_chars]} … [{len(text) - self.max_line_chars:,} more chars]"
        if self.grep is not None and self.grep.search(text) is None:
            return
        self.matched += 1
        self._keep(f"{source} | {text}\n".encode("utf-8", "replace"))

    def _keep(self, data: bytes) -> None:
        recent = self._recent
        if self.tail is not None and len(recent) == self.tail:
            # The deque alone holds the newest `tail` lines: whatever was spooled is too old.
            self._recent_bytes -= len(recent[0])
            if self._segments:
                self._drop_segments(len(self._segments))
        recent.append(data)
        self._recent_bytes += len(data)
        if self._recent_bytes >= _BATCH:
            self._spool()

    def _spool(self) -> None:
        if not self._segments or self._segments[-1].bytes >= self.segment_bytes:
            spool = SpooledTemporaryFile(max_size=self.spool_memory, mode="w+b")  # noqa: SIM115
            self._segments.append(_Segment(spool))  # closed by _drop_segments
        seg = self._segments[-1]
        seg.file.write(b"".join(self._recent))
        seg.lines += len(self._recent)
        seg.bytes += self._recent_bytes
        self._seg_lines += len(self._recent)
        self._seg_bytes += self._recent_bytes
        self._recent.clear()
        self._recent_bytes = 0
        # Drop the oldest segment while the newer ones already hold all that can be shown.
        n = 0
        lines, size = self._seg_lines, self._seg_bytes
        for seg in list(self._segments)[:-1]:
            lines -= seg.lines
            size -= seg.bytes
            if (self.tail is not None and lines >= self.tail) or size >= self.max_text_bytes:
                n += 1
            else:
                break
        if n:
            self._drop_segments(n)

    def _drop_segments(self, n: int) -> None:
        for _ in range(n):
            seg = self._segments.popleft()
            self._seg_lines -= seg.lines
            self._seg_bytes -= seg.bytes
            seg.file.close()

    # -- packing -------------------------------------------------------------------------------

    def _all_lines(self) -> Iterator[bytes]:
        for seg in self._segments:
            seg.file.seek(0)
            # A for loop, not `yield from`: closing an abandoned generator would close the file.
            for raw in seg.file:  # noqa: UP028
                yield raw
        yield from self._recent

    def _select(self, max_bytes: int) -> tuple[int, int, int]:
        """(lines to skip, lines kept, bytes kept): the newest lines within tail and max_bytes."""
        lines = self._seg_lines + len(self._recent)
        size = self._seg_bytes + self._recent_bytes
        limit = self.tail if self.tail is not None else lines
        if lines <= limit and size <= max_bytes:
            return 0, lines, size
        skip = 0
        for raw in self._all_lines():
            if lines <= limit and size <= max_bytes:
                break
            skip += 1
            lines -= 1
            size -= len(raw)
        return skip, lines, size

    def _kept(self, skip: int) -> Iterator[bytes]:
        it = self._all_lines()
        for _ in range(skip):
            next(it)
        return it

    def _read(self, skip: int, size: int) -> bytes:
        buf = io.BytesIO()
        batch: list[bytes] = []
        n = 0
        for raw in self._kept(skip):
            batch.append(raw)
            n += len(raw)
            if n >= 65536:
                buf.write(b"".join(batch))
                batch.clear()
                n = 0
        buf.write(b"".join(batch))
        return buf.getvalue()

    def _gzip(self, skip: int) -> tuple[bytes | None, int]:
        """gzip of the kept lines, or (None, raw bytes read) once it grows past the limit."""
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip container, mtime 0
        out = io.BytesIO()
        raw_read = 0
        batch: list[bytes] = []
        n = 0
        for raw in self._kept(skip):
            batch.append(raw)
            n += len(raw)
            if n >= 65536:
                out.write(comp.compress(b"".join(batch)))
                raw_read += n
                batch.clear()
                n = 0
                if out.tell() > self.attachment_limit:
                    return None, raw_read
        out.write(comp.compress(b"".join(batch)))
        raw_read += n
        out.write(comp.flush())
        if out.tell() > self.attachment_limit:
            return None, raw_read
        return out.getvalue(), raw_read

    def finish(self) -> LogResult:
        """Pack what was kept: inline text when it fits ``inline_limit`` characters, else a
        ``.txt`` attachment, else ``.txt.gz``; if even that is over ``attachment_limit``, the
        newest part that fits, with ``truncated=True``. Reads the spool (blocking disk I/O and
        compression: run it in a thread from async code, as :func:`collect` does)."""
        if self._finished:
            raise RuntimeError("finish() was already called")
        self._finished = True
        try:
            return self._finish()
        finally:
            self.close()

    def _finish(self) -> LogResult:
        result = LogResult(
            lines=0, matched=self.matched, total_seen=self.total_seen,
            sources=self.source_count if self.source_count is not None else len(self._sources),
            source_kind=self.source_kind, since=self.since, tail=self.tail,
            grep=self.grep.pattern if self.grep is not None else None,
            attachment_limit=self.attachment_limit,
        )
        want = self.matched if self.tail is None else min(self.matched, self.tail)  # asked for
        skip, lines, size = self._select(self.max_text_bytes)
        result.lines, result.text_bytes = lines, size
        if lines == 0:
            return result
        if size <= 4 * self.inline_limit:  # UTF-8: at most 4 bytes a character
            text = self._read(skip, size).decode("utf-8").rstrip("\n")
            text = text.replace(_FENCE, "``\u200b`")
            if len(text) <= self.inline_limit:
                result.inline = text
                result.truncated = lines < want
                return result
        if size <= self.attachment_limit:
            result.attachment = (f"{self.name}.txt", self._read(skip, size))
            result.truncated = lines < want
            return result
        max_bytes = size
        for _ in range(20):
            data, raw_read = self._gzip(skip)
            if data is not None:
                result.attachment = (f"{self.name}.txt.gz", data)
                break
            # Over the limit after raw_read bytes: aim for the share that compressed within it.
            estimate = int(raw_read * 0.9) if raw_read < max_bytes else int(max_bytes * 0.8)
            max_bytes = max(1, min(estimate, int(max_bytes * 0.9)))
            skip, lines, size = self._select(max_bytes)
        else:  # pathological (incompressible and huge lines): give up on the attachment
            lines, size = 0, 0
        result.lines, result.text_bytes = lines, size
        result.truncated = lines < want
        return result

    def close(self) -> None:
        """Release the spool files (also done by :meth:`finish`)."""
        self._drop_segments(len(self._segments))
        self._recent.clear()
        self._recent_bytes = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def collect(lines: AsyncIterable[LogLine], collector: LogCollector, *, yield_every: int = 1000) -> LogResult:
    """Feed ``lines`` (e.g. :func:`merge` output) into ``collector`` and finish it off the event
    loop. Redaction is CPU work; every ``yield_every`` lines the loop gets a turn."""
    n = 0
    try:
        async for line in lines:
            collector.add(line)
            n += 1
            if n % yield_every == 0:
                await asyncio.sleep(0)
    except BaseException:
        collector.close()
        raise
    return await asyncio.to_thread(collector.finish)
