"""Label matchers (Alertmanager's syntax and semantics) and the router that picks channels.

Matchers are written as in Alertmanager and amtool: ``name=value``, ``name!=value``,
``name=~regex``, ``name!~regex``; values may be double-quoted (``service=~"chat.*"``) with
``\\"``, ``\\\\`` and ``\\n`` escapes. A list is separated by commas and/or spaces and may be
wrapped in braces: ``{alertname="Foo", env="prod"}``. As in Alertmanager, a missing label
counts as the empty string, and regexes are anchored at both ends (``chat.*`` does not match
``mychat``).

No import of config here: :class:`Router` takes any objects with the route attributes, so
``config.settings`` can validate matcher text with :func:`parse_matchers` without a cycle.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

Op = Literal["=", "!=", "=~", "!~"]
_OPS: tuple[Op, ...] = ("=~", "!~", "!=", "=")  # two-character operators first
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_END = set(" \t\r\n,{}\"")
MAX_MATCHERS = 64
MAX_VALUE = 1024


class MatcherError(ValueError):
    """Matcher text that does not parse; the message says where."""


@dataclass(frozen=True)
class Matcher:
    name: str
    op: Op
    value: str

    def __post_init__(self) -> None:
        if self.is_regex:
            try:
                re.compile(self.value)
            except re.error as e:
                raise MatcherError(f"{self.name}{self.op}: invalid regular expression: {e}") from None

    @property
    def is_regex(self) -> bool:
        return self.op in ("=~", "!~")

    @property
    def is_equal(self) -> bool:
        return self.op in ("=", "=~")

    @cached_property
    def _regex(self) -> re.Pattern[str]:
        return re.compile(self.value, re.DOTALL)

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.name, "")
        if self.is_regex:
            hit = self._regex.fullmatch(value) is not None
        else:
            hit = value == self.value
        return hit if self.is_equal else not hit

    def to_api(self) -> dict[str, Any]:
        """Alertmanager API v2 ``matcher`` object."""
        return {"name": self.name, "value": self.value, "isRegex": self.is_regex, "isEqual": self.is_equal}

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Matcher:
        regex = bool(data.get("isRegex"))
        equal = bool(data.get("isEqual", True))
        op: Op = ("=~" if equal else "!~") if regex else ("=" if equal else "!=")
        return cls(str(data.get("name", "")), op, str(data.get("value", "")))

    def __str__(self) -> str:
        return f"{self.name}{self.op}{quote(self.value)}"


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def parse_matcher(text: str) -> Matcher:
    """Exactly one matcher, e.g. ``severity="critical"``."""
    matchers = parse_matchers(text)
    if len(matchers) != 1:
        raise MatcherError(f"expected one matcher like name=\"value\", got {len(matchers)}")
    return matchers[0]


def parse_matchers(text: str) -> list[Matcher]:
    """``alertname=Foo service=~"chat.*"`` or ``{alertname="Foo", env!="dev"}`` → matchers."""
    s = text.strip()
    if s.startswith("{"):
        if not s.endswith("}"):
            raise MatcherError("a matcher list that opens with { must close with }")
        s = s[1:-1]
    out: list[Matcher] = []
    i, n = 0, len(s)
    while True:
        while i < n and (s[i].isspace() or s[i] == ","):
            i += 1
        if i >= n:
            break
        m = _NAME.match(s, i)
        if m is None:
            raise MatcherError(f"expected a label name at position {i + 1}: {_near(s, i)}")
        name, i = m.group(), m.end()
        op = next((o for o in _OPS if s.startswith(o, i)), None)
        if op is None:
            raise MatcherError(f"expected =, !=, =~ or !~ after {name!r}: {_near(s, i)}")
        i += len(op)
        if i < n and s[i] == '"':
            value, i = _quoted(s, i)
        else:
            start = i
            while i < n and s[i] not in _BARE_END:
                i += 1
            value = s[start:i]
            if value[:1] in ("=", "~"):
                raise MatcherError(f"{name}{op}{value}: quote a value that starts with {value[0]!r}")
            if i < n and s[i] in '{}"':
                raise MatcherError(f"unexpected {s[i]!r} in the value of {name!r}; quote the value")
        if len(value) > MAX_VALUE:
            raise MatcherError(f"the value of {name!r} is longer than {MAX_VALUE} characters")
        out.append(Matcher(name, op, value))
        if len(out) > MAX_MATCHERS:
            raise MatcherError(f"at most {MAX_MATCHERS} matchers")
        if i < n and not (s[i].isspace() or s[i] == ","):
            raise MatcherError(f"expected a comma or space after {name}{op}…: {_near(s, i)}")
    return out


def _quoted(s: str, i: int) -> tuple[str, int]:
    assert s[i] == '"'
    i += 1
    chars: list[str] = []
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            chars.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
            continue
        if c == '"':
            return "".join(chars), i + 1
        chars.append(c)
        i += 1
    raise MatcherError("a quoted value is not closed with \"")


def _near(s: str, i: int) -> str:
    return repr(s[i : i + 20]) if i < len(s) else "end of text"


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


# -------------------------------------------------------------------------------- silence scope

# Values a label may take, unlike each other (letters, digits, punctuation, a space, non-ASCII):
# a regex that matches all of them, or the empty string, cannot tell alerts apart.
_PROBES = ("a", "Z", "0", "x-y_z.1", "HighErrorRate", "prod", "chat-gui", "critical", "web-1:9100",
           "a b", "é", "/", "opsbot-probe-7f3a")
_PROBE_SECONDS = 0.25  # for all probes of one matcher; a slower regex counts as matching anything


def matches_any_value(m: Matcher) -> bool:
    """True when a matcher does not narrow what it selects: a negative one (``!=``, ``!~``: all but
    some), one that matches the empty string (a missing label), or a regex that matches every probe
    value (``.+``, ``.*``, ``[^/]*.+`` …). Fails closed: a regex too slow to check counts as broad.

    Regexes are checked with the ``regex`` module under a timeout, anchored as Alertmanager does."""
    if not m.is_equal:
        return True
    if not m.is_regex:
        return m.value == ""
    import regex

    try:
        pattern = regex.compile(m.value, regex.DOTALL)
        deadline = time.monotonic() + _PROBE_SECONDS
        for probe in ("", *_PROBES):
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            hit = pattern.fullmatch(probe, timeout=left, concurrent=True) is not None
            if probe == "" and hit:
                return True
            if probe and not hit:
                return False
    except (regex.error, TimeoutError):
        return True
    return True


def too_broad(matchers: Sequence[Matcher], env_label: str = "env", *, whole_env: bool = False) -> str | None:
    """Why a silence with these matchers would mute every alert, or every alert of an env; None if
    it is narrower. It needs a positive matcher that can tell alerts apart on a label other than the
    env label (``alertname="Foo"``, ``service=~"chat|auth"``), or with ``whole_env`` at least one on
    the env label. Runs user regexes: call it off the loop."""
    narrowing = [m for m in matchers if not matches_any_value(m)]
    if any(m.name != env_label for m in narrowing) or (whole_env and narrowing):
        return None
    if narrowing:
        return (f"those matchers match every alert of an env ({', '.join(str(m) for m in narrowing)}); "
                "add one that names what to silence, e.g. `alertname=HighLatency` or `service=\"chat\"`")
    return ("those matchers match every alert; add one that names what to silence, "
            "e.g. `alertname=HighLatency` or `service=\"chat\"`")


# -------------------------------------------------------------------------------- routing


class RouteLike(Protocol):
    """What the router needs from a configured route (``config.settings.AlertRouteConfig``)."""

    matchers: list[str]
    channel: str
    mention_roles: list[int]
    escalation: str | None
    continue_: bool


@dataclass(frozen=True)
class RouteTarget:
    """Where an incident's message goes and whom it pings."""

    channel: str
    mention_roles: tuple[int, ...] = ()
    escalation: str | None = None
    route: int | None = None  # index in the configured routes; None = the default route


@dataclass
class _Route:
    matchers: list[Matcher]
    target: RouteTarget
    cont: bool


@dataclass
class Router:
    """First matching route wins unless it says ``continue``; no match → the default route.

    One target per channel: when routes with ``continue`` name the same channel twice, their
    mentions are merged and the first escalation policy is kept.
    """

    default: RouteTarget
    routes: list[_Route] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        routes: Sequence[RouteLike],
        *,
        default_channel: str,
        default_mentions: Iterable[int] = (),
        default_escalation: str | None = None,
    ) -> Router:
        built = [
            _Route(
                matchers=[m for text in r.matchers for m in parse_matchers(text)],
                target=RouteTarget(r.channel, tuple(r.mention_roles), r.escalation, i),
                cont=r.continue_,
            )
            for i, r in enumerate(routes)
        ]
        return cls(RouteTarget(default_channel, tuple(default_mentions), default_escalation, None), built)

    def quiet(self) -> Router:
        """The same channels with no mentions and no escalation (sample alerts: they ping nobody)."""
        def hush(t: RouteTarget) -> RouteTarget:
            return RouteTarget(t.channel, (), None, t.route)

        return Router(hush(self.default), [_Route(r.matchers, hush(r.target), r.cont) for r in self.routes])

    def route(self, labels: Mapping[str, str]) -> list[RouteTarget]:
        """The targets for an alert group with these (common) labels; never empty."""
        found: list[RouteTarget] = []
        for r in self.routes:
            if matches_all(r.matchers, labels):
                found.append(r.target)
                if not r.cont:
                    break
        if not found:
            return [self.default]
        merged: dict[str, RouteTarget] = {}
        for t in found:
            if t.channel in merged:
                prev = merged[t.channel]
                roles = tuple(dict.fromkeys(prev.mention_roles + t.mention_roles))
                merged[t.channel] = RouteTarget(t.channel, roles, prev.escalation or t.escalation, prev.route)
            else:
                merged[t.channel] = t
        return list(merged.values())
