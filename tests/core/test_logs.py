"""The core of !logs: option parsing, time-ordered merging, the bounded collector."""

from __future__ import annotations

import asyncio
import gzip
import random
import re
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from commands.catalog import UserError
from commands.logs import (
    DEFAULT_TAIL,
    UNKNOWN_TIME,
    VALID_OPTIONS,
    LogCollector,
    LogLine,
    LogQuery,
    LogResult,
    NanoTime,
    collect,
    compile_grep,
    merge,
    parse_k8s_line,
    parse_k8s_stream,
    parse_log_args,
)
from commands.redact import Redactor

T0 = datetime(2026, 11, 30, 2, 38, tzinfo=UTC)

# ----------------------------------------------------------------------------- options

PARSE_ERRORS = [
    (["--tail", "100001"], "`--tail` can be at most 100000 lines; use `--since` or `--grep` to narrow"),
    (["--tail", "0"], "`--tail` must be at least 1 line"),
    (["--tail", "ten"], "`--tail` takes a number of lines, e.g. `--tail 500`; got `ten`"),
    (["--tail", "-5"], "`--tail` takes a number of lines, e.g. `--tail 500`; got `-5`"),
    (["--tail"], "`--tail` needs a value, e.g. `--tail 500`"),
    (["--since="], "`--since` needs a value, e.g. `--since 10m`"),
    (["--since", "8d"], "a `--since` duration can be at most 7d"),
    (["--since", "soon"], "`soon` is not a `--since` duration; try `30s`, `10m`, `1h30m` or `2d`"),
    (["--grep", "[a"], "`--grep [a` is not a valid regular expression: unterminated character set at position 0"),
    (["--grep", "(?P<x"], "`--grep (?P<x` is not a valid regular expression: missing >, unterminated name at position 4"),
    (["--grep", "(a+)+$"], ("`--grep (a+)+$` repeats a repetition (like `(a+)+`), which can take forever on long "
                            "lines; simplify it (e.g. `(a+)+` → `a+`)")),
    (["--grep", "x" * 201], "a `--grep` pattern can be at most 200 characters"),
    (["--previous=yes"], "`--previous` takes no value"),
    (["--tail", "5", "--tail", "6"], "`--tail` is given twice"),
    (["--greb", "x"], f"unknown option `--greb` — did you mean `--grep`? Valid options: {VALID_OPTIONS}"),
    (["--follow"], f"unknown option `--follow`. Valid options: {VALID_OPTIONS}"),
    (["-f"], f"unknown option `-f`. Valid options: {VALID_OPTIONS}"),
    (["prod"], f"unexpected `prod`; options are {VALID_OPTIONS}"),
    (["--grep", "connection", "refused"],
     f'unexpected `refused` — quote a pattern with spaces: `--grep "connection refused"`; options are {VALID_OPTIONS}'),
    (["--pod", "a b"], "`--pod` takes a name of letters, digits, `.`, `_` and `-` (like `auth-5d9c7b6f4-x2x7k`); got `a b`"),
    (["--container", "-x"], "`--container` takes a name of letters, digits, `.`, `_` and `-` (like `app`); got `-x`"),
]


@pytest.mark.parametrize(("words", "message"), PARSE_ERRORS)
def test_parse_errors(words: list[str], message: str) -> None:
    with pytest.raises(UserError) as err:
        parse_log_args(words)
    assert str(err.value) == message


def test_valid_options_are_listed() -> None:
    assert VALID_OPTIONS == "`--since 10m`, `--tail N`, `--grep REGEX`, `--previous`, `--pod NAME`, `--container NAME`"


def test_parse_defaults() -> None:
    assert parse_log_args([]) == LogQuery(tail=DEFAULT_TAIL)
    assert parse_log_args([]).tail == 200


def test_parse_everything_both_spellings() -> None:
    q = parse_log_args(["--since=10m", "--tail", "1_000", "--grep=Error|timeout", "-p", "--pod", "auth-1", "-c", "app"])
    assert q.since == timedelta(minutes=10)
    assert q.tail == 1000
    assert q.grep is not None and q.grep.pattern == "Error|timeout"
    assert q.previous and q.pod == "auth-1" and q.container == "app"
    q = parse_log_args(["--since", "1h30m", "--tail=100000", "--container=app"])
    assert (q.since, q.tail, q.container) == (timedelta(hours=1, minutes=30), 100_000, "app")


def test_since_without_tail_means_the_whole_window() -> None:
    assert parse_log_args(["--since", "10m"]).tail is None
    assert parse_log_args(["--since", "10m", "--tail", "50"]).tail == 50


def test_grep_is_smart_case() -> None:
    assert compile_grep("error").search("ERROR: boom")
    assert not compile_grep("Error").search("ERROR: boom")
    assert compile_grep(r"\S+ error").search("x ERROR")  # \S is not an upper-case letter


@pytest.mark.parametrize("pattern", [r"(\d{1,3}\.){3}\d{1,3}", r"error.*timeout", r"(GET|POST) /api", r"(?>a+)+", r"a++b"])
def test_ordinary_grep_patterns_are_accepted(pattern: str) -> None:
    compile_grep(pattern)


@pytest.mark.parametrize("pattern", [r"(a+)+", r"(\w+\s?)*$", r"(a{1,3})*", r"(.*x){20}", r"((ab)*c)+"])
def test_catastrophic_grep_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(UserError, match="repeats a repetition"):
        compile_grep(pattern)


# ----------------------------------------------------------------------------- lines

def test_parse_k8s_line_keeps_nanoseconds() -> None:
    ts, source, text = parse_k8s_line("auth-1", "2026-11-30T02:38:53.123456789Z GET /healthz 200\n")
    assert (source, text) == ("auth-1", "GET /healthz 200")
    assert ts == datetime(2026, 11, 30, 2, 38, 53, 123456, tzinfo=UTC)
    assert isinstance(ts, NanoTime) and ts.nanosecond == 789


@pytest.mark.parametrize(("raw", "micro", "nano", "offset"), [
    ("2026-11-30T02:38:53Z x", 0, 0, 0),
    ("2026-11-30T02:38:53.5Z x", 500000, 0, 0),
    ("2026-11-30T02:38:53.000000001Z x", 0, 1, 0),
    ("2026-11-30T03:38:53.123+01:00 x", 123000, 0, 60),
])
def test_parse_k8s_line_formats(raw: str, micro: int, nano: int, offset: int) -> None:
    ts, _, text = parse_k8s_line("p", raw)
    assert text == "x"
    assert ts.microsecond == micro and ts.nanosecond == nano  # type: ignore[attr-defined]
    assert ts.utcoffset() == timedelta(minutes=offset)
    assert ts.astimezone(UTC).replace(microsecond=0) == datetime(2026, 11, 30, 2, 38, 53, tzinfo=UTC)


def test_lines_without_timestamp_carry_the_previous_one() -> None:
    first = parse_k8s_line("p", "2026-11-30T02:38:53.000000001Z Traceback:")
    assert parse_k8s_line("p", '  File "x.py", line 1', first[0]) == (first[0], "p", '  File "x.py", line 1')
    assert parse_k8s_line("p", "no timestamp at all")[0] == UNKNOWN_TIME
    assert parse_k8s_line("p", "2026-13-45T99:00:00Z not a date")[2] == "2026-13-45T99:00:00Z not a date"


async def test_parse_k8s_stream() -> None:
    async def raw() -> AsyncIterator[bytes]:
        for line in [b"2026-11-30T02:38:53.1Z a\n", b"  continued\n", b"2026-11-30T02:38:54Z b\xff\n"]:
            yield line

    lines = [line async for line in parse_k8s_stream("pod", raw())]
    assert [t for _, _, t in lines] == ["a", "  continued", "b\ufffd"]
    assert lines[1][0] == lines[0][0]


# ----------------------------------------------------------------------------- merge

async def source(lines: list[LogLine]) -> AsyncIterator[LogLine]:
    for line in lines:
        await asyncio.sleep(0)
        yield line


def at(seconds: float, name: str, text: str) -> LogLine:
    return (T0 + timedelta(seconds=seconds), name, text)


async def test_merge_orders_by_time_and_is_stable() -> None:
    a = [at(0, "a", "a0"), at(1, "a", "a1"), at(1, "a", "a2"), at(3, "a", "a3")]
    b = [at(0, "b", "b0"), at(1, "b", "b1"), at(2, "b", "b2")]
    c = [at(1, "c", "c0"), at(1, "c", "c1"), at(5, "c", "c2")]
    out = [t async for _, _, t in merge([source(a), source(b), source(c)])]
    # equal timestamps: source order (a, b, c), and each source keeps its own order
    assert out == ["a0", "b0", "a1", "a2", "b1", "c0", "c1", "b2", "a3", "c2"]


async def test_merge_uses_nanoseconds() -> None:
    def k(name: str, ns: str) -> LogLine:
        return parse_k8s_line(name, f"2026-11-30T02:38:53.123456{ns}Z {name}{ns}")

    a = [k("a", "003"), k("a", "900")]
    b = [k("b", "001"), k("b", "500")]
    c = [k("c", "002"), k("c", "500"), k("c", "999")]
    out = [t async for _, _, t in merge([source(a), source(b), source(c)])]
    assert out == ["b001", "c002", "a003", "b500", "c500", "a900", "c999"]


async def test_merge_of_nothing() -> None:
    assert [x async for x in merge([])] == []
    assert [x async for x in merge([source([]), source([at(0, "b", "only")])])] == [at(0, "b", "only")]


async def test_merge_closes_its_sources_when_closed_early() -> None:
    closed: list[str] = []

    async def endless(name: str) -> AsyncIterator[LogLine]:
        try:
            i = 0
            while True:
                yield at(i, name, str(i))
                i += 1
        finally:
            closed.append(name)

    merged = merge([endless("a"), endless("b")])
    assert [t async for _, _, t in _take(merged, 5)] == ["0", "0", "1", "1", "2"]
    await merged.aclose()
    assert sorted(closed) == ["a", "b"]


async def _take(it: AsyncIterator[LogLine], n: int) -> AsyncIterator[LogLine]:
    for _ in range(n):
        yield await anext(it)


async def test_merge_raises_a_sources_own_error() -> None:
    async def broken() -> AsyncIterator[LogLine]:
        raise LookupError("pod went away")
        yield at(0, "x", "never")  # pragma: no cover

    with pytest.raises(LookupError, match="pod went away"):
        [x async for x in merge([source([at(0, "a", "a")]), broken()])]


# ----------------------------------------------------------------------------- collector

def lines(n: int, name: str = "auth-1", text: str = "line {i}") -> Iterator[LogLine]:
    for i in range(n):
        yield (T0 + timedelta(milliseconds=i), name, text.format(i=i))


def test_collector_prefixes_redacts_and_inlines() -> None:
    c = LogCollector(Redactor(), sources=1)
    c.add(at(0, "auth-1", "login ok password=hunter2"))
    c.add(at(1, "auth-1", "Authorization: Bearer abc.def.123"))
    r = c.finish()
    assert r.inline == "auth-1 | login ok password=[REDACTED]\nauth-1 | Authorization: Bearer [REDACTED]"
    assert r.attachment is None
    assert (r.lines, r.matched, r.total_seen) == (2, 2, 2)


def test_grep_sees_only_redacted_text() -> None:
    # grep after redaction: a secret's value can't be probed by grepping for it
    grep = compile_grep("hunter2")
    c = LogCollector(Redactor(), grep=grep)
    c.add(at(0, "a", "password=hunter2"))
    c.add(at(1, "a", "user typed hunter2 as a name"))
    r = c.finish()
    assert r.inline == "a | user typed hunter2 as a name"
    assert (r.matched, r.total_seen) == (1, 2)
    c = LogCollector(Redactor(), grep=compile_grep(r"password=\[REDACTED\]"))
    c.add(at(0, "a", "password=hunter2"))
    assert c.finish().inline == "a | password=[REDACTED]"


def test_grep_matches_the_message_not_the_pod_prefix() -> None:
    c = LogCollector(Redactor(), grep=compile_grep("auth"))
    c.add(at(0, "auth-1", "GET /healthz"))
    c.add(at(1, "auth-1", "auth failed"))
    assert c.finish().inline == "auth-1 | auth failed"


def test_tail_keeps_the_last_n_in_order() -> None:
    c = LogCollector(Redactor(), tail=10)
    for line in lines(1000):
        c.add(line)
    r = c.finish()
    assert r.inline is not None
    assert r.inline.splitlines() == [f"auth-1 | line {i}" for i in range(990, 1000)]
    assert (r.lines, r.matched, r.total_seen, r.truncated) == (10, 1000, 1000, False)
    assert r.summary() == "1,000 lines from 1 pod; showing the last 10"


def test_large_tail_spools_and_keeps_exactly_the_last_n() -> None:
    # 60,000 lines of ~70 bytes: the 256 KiB batches go to small spool segments that are dropped
    # once newer ones hold the tail.
    c = LogCollector(Redactor(), tail=25_000, spool_memory=64 * 1024, segment_bytes=300 * 1024)
    for line in lines(60_000, text="line {i} " + "x" * 50):
        c.add(line)
    assert len(c._segments) < 10
    r = c.finish()
    assert r.attachment is not None and r.attachment[0] == "logs.txt"
    got = r.attachment[1].decode().splitlines()
    assert got == [f"auth-1 | line {i} " + "x" * 50 for i in range(35_000, 60_000)]
    assert r.lines == 25_000 and not r.truncated


def test_inline_threshold() -> None:
    def result(chars: int) -> LogResult:
        c = LogCollector(Redactor(), inline_limit=100)
        c.add(at(0, "p", "x" * (chars - len("p | "))))
        return c.finish()

    fits = result(100)
    assert fits.inline == "p | " + "x" * 96 and fits.attachment is None
    over = result(101)
    assert over.inline is None
    assert over.attachment == ("logs.txt", b"p | " + b"x" * 97 + b"\n")


def test_inline_text_cannot_close_the_code_block() -> None:
    c = LogCollector(Redactor())
    c.add(at(0, "p", "```py"))
    r = c.finish()
    assert r.inline is not None and "```" not in r.inline


def test_multiline_and_huge_lines_are_tamed() -> None:
    c = LogCollector(Redactor(), max_line_chars=20)
    c.add(at(0, "p", "one\ntwo\r\n"))
    c.add(at(1, "p", "y" * 50 + " password=hunter2"))
    r = c.finish()
    assert r.inline == "p | one\\ntwo\np | " + "y" * 20 + " … [50 more chars]"


def test_gzip_when_plain_text_is_over_the_limit() -> None:
    c = LogCollector(Redactor(), attachment_limit=100_000, name="auth-prod")
    for line in lines(6_000):  # ~113 kB of plain text
        c.add(line)
    r = c.finish()
    assert r.attachment is not None
    name, data = r.attachment
    assert name == "auth-prod.txt.gz" and len(data) <= 100_000
    assert gzip.decompress(data).decode().splitlines()[-1] == "auth-1 | line 5999"
    assert r.lines == 6_000 and not r.truncated


def test_gzip_over_the_limit_keeps_the_newest_part() -> None:
    rnd = random.Random(1)
    c = LogCollector(Redactor(), attachment_limit=50_000)
    n = 20_000
    for i in range(n):  # random hex compresses about 2:1, so ~1.3 MB won't fit in 50 kB
        c.add(at(i, "p", f"{i} {rnd.getrandbits(192):048x}"))
    r = c.finish()
    assert r.attachment is not None
    name, data = r.attachment
    assert name == "logs.txt.gz" and len(data) <= 50_000
    text = gzip.decompress(data).decode().splitlines()
    assert r.truncated and r.lines == len(text) < n
    assert len(data) > 50_000 * 0.6  # not absurdly pessimistic
    assert [int(t.split()[2]) for t in text] == list(range(n - len(text), n))  # newest, contiguous
    assert r.summary() == f"20,000 lines from 1 pod; showing the last {r.lines:,} (the rest is over the 48.8 KiB attachment limit)"


def test_text_beyond_max_text_bytes_is_dropped_while_spooling() -> None:
    # Nothing older than max_text_bytes can ever be shown, so old segments go early (disk bound).
    c = LogCollector(Redactor(), attachment_limit=1_000_000, max_text_bytes=400_000, segment_bytes=100_000,
                     spool_memory=10_000)
    n = 60_000  # ~1.4 MB of text
    for line in lines(n):
        c.add(line)
        assert c._seg_bytes <= 400_000 + 100_000 + 256 * 1024
    r = c.finish()
    assert r.attachment is not None and r.attachment[0] == "logs.txt"
    got = r.attachment[1].decode().splitlines()
    assert len(r.attachment[1]) <= 400_000 and r.lines == len(got) < n
    assert got[-1] == f"auth-1 | line {n - 1}" and got[0] == f"auth-1 | line {n - len(got)}"
    assert r.truncated


def test_memory_stays_bounded_for_a_big_input() -> None:
    """300,000 lines (~30 MB of text) through the collector: Python's peak stays small, and the
    answer is a gzip attachment holding every line."""
    rnd = random.Random(7)
    messages = [
        f"level=info msg=\"request served\" path=/api/v1/users/{rnd.randrange(10**6)} status=200 "
        f"latency_ms={rnd.randrange(1000)} token={rnd.getrandbits(40):010x}"
        for _ in range(1000)
    ]
    n = 300_000
    pods = [f"auth-5d9c7b6f4-{k}" for k in ("x2x7k", "b8q2m", "zz91c")]
    size = 0

    def feed() -> Iterator[LogLine]:
        nonlocal size
        for i in range(n):
            text = f"{i} {messages[i % 1000]}"
            size += len(text) + 20
            yield (T0, pods[i % 3], text)

    tracemalloc.start()
    try:
        c = LogCollector(Redactor(), sources=3)
        for line in feed():
            c.add(line)
        r = c.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 30_000_000
    print(f"peak {peak:,} bytes for {size:,} bytes of input")
    assert peak < 20_000_000, f"peak {peak:,} bytes"
    assert r.attachment is not None and r.attachment[0] == "logs.txt.gz"
    assert r.text_bytes > 8 * 1024 * 1024 and not r.truncated and r.lines == n
    text = gzip.decompress(r.attachment[1])
    assert text.count(b"\n") == n
    assert text.startswith(b"auth-5d9c7b6f4-x2x7k | 0 level=info")
    assert b"token=[REDACTED]" in text[:200] and b"token=0" not in text
    assert r.summary() == "300,000 lines from 3 pods"


def test_empty_results_and_summaries() -> None:
    c = LogCollector(Redactor(), since=timedelta(minutes=10), sources=3)
    r = c.finish()
    assert r.empty and r.inline is None and r.attachment is None
    assert r.summary() == "no log lines from 3 pods in the last 10m"

    c = LogCollector(Redactor(), grep=compile_grep("error"), since=timedelta(minutes=10), sources=3)
    for line in lines(1234):
        c.add(line)
    assert c.finish().summary() == "no line matched /error/ (1,234 lines from 3 pods, last 10m)"


def test_summary_with_grep() -> None:
    c = LogCollector(Redactor(), grep=compile_grep("error"), since=timedelta(minutes=10), sources=3)
    for i, line in enumerate(lines(1234)):
        c.add(line if i % 100 else (line[0], line[1], "error " + line[2]))
    assert c.finish().summary() == "1,234 lines from 3 pods, last 10m, 13 matched /error/"


def test_docker_containers_as_sources() -> None:
    c = LogCollector(Redactor(), source_kind="container")
    c.add(at(0, "chat-1", "x"))
    assert c.finish().summary() == "1 line from 1 container"


def test_finish_twice_is_an_error() -> None:
    c = LogCollector(Redactor())
    c.finish()
    with pytest.raises(RuntimeError):
        c.finish()


async def test_collect_merges_streams_and_finishes() -> None:
    a = [at(i, "a", f"a{i} password=x{i}") for i in range(0, 3000, 2)]
    b = [at(i, "b", f"b{i}") for i in range(1, 3000, 2)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        q = parse_log_args(["--tail", "4"])
        r = await collect(merge([source(a), source(b)]), LogCollector(Redactor(), tail=q.tail, sources=2))
    finally:
        task.cancel()
    assert r.inline == "a | a2996 password=[REDACTED]\nb | b2997\na | a2998 password=[REDACTED]\nb | b2999"
    assert ticks > 2  # the event loop got turns while lines were redacted


def test_tz_offsets_merge_in_real_time_order() -> None:
    plus_one = timezone(timedelta(hours=1))
    a = parse_k8s_line("a", "2026-11-30T03:00:00.5+01:00 a")
    b = parse_k8s_line("b", "2026-11-30T02:00:00.4Z b")
    assert b[0] < a[0]
    assert a[0].tzinfo == plus_one


def test_log_result_repr_hides_the_attachment() -> None:
    r = LogResult(lines=1, matched=1, total_seen=1, sources=1, attachment=("x.txt", b"secretbytes"))
    assert "secretbytes" not in repr(r)


def test_grep_pattern_object_is_a_real_re_pattern() -> None:
    assert isinstance(parse_log_args(["--grep", "x"]).grep, re.Pattern)
