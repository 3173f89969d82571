"""Matchers (Alertmanager's syntax and semantics) and routing: table-driven."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alerts.routing import Matcher, MatcherError, Router, parse_matchers
from config.settings import AlertsConfig, Settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alertname=Foo", [("alertname", "=", "Foo")]),
        ('alertname="Foo Bar"', [("alertname", "=", "Foo Bar")]),
        ('service=~"chat.*"', [("service", "=~", "chat.*")]),
        ("env!=dev", [("env", "!=", "dev")]),
        ('instance!~"web-[0-9]+"', [("instance", "!~", "web-[0-9]+")]),
        ('alertname=Foo service=~"chat.*"', [("alertname", "=", "Foo"), ("service", "=~", "chat.*")]),
        ('{alertname="Foo", env="prod"}', [("alertname", "=", "Foo"), ("env", "=", "prod")]),
        ('a="x,y" , b=z', [("a", "=", "x,y"), ("b", "=", "z")]),
        (r'a="say \"hi\"\\"', [("a", "=", 'say "hi"\\')]),
        ('a=""', [("a", "=", "")]),
        ("a=", [("a", "=", "")]),
        ("", []),
        ("{}", []),
    ],
)
def test_parse(text: str, expected: list[tuple[str, str, str]]) -> None:
    assert [(m.name, m.op, m.value) for m in parse_matchers(text)] == expected


@pytest.mark.parametrize(
    "text",
    ["=foo", "alertname", "alertname==x", 'a="open', "{a=b", 'a=b"c', "1a=b", 'a=~"("', "a=b{"],
)
def test_parse_errors(text: str) -> None:
    with pytest.raises(MatcherError):
        parse_matchers(text)


def test_round_trip_through_text() -> None:
    for m in parse_matchers(r'a="x \"y\"" b=~".*" c!="" d!~"q|r"'):
        assert parse_matchers(str(m)) == [m]


@pytest.mark.parametrize(
    ("matcher", "labels", "hit"),
    [
        ('service="chat"', {"service": "chat"}, True),
        ('service="chat"', {"service": "chat-gui"}, False),
        ('service=~"chat"', {"service": "chat-gui"}, False),  # anchored like Alertmanager
        ('service=~"chat.*"', {"service": "chat-gui"}, True),
        ('service=~"chat.*"', {"service": "mychat"}, False),
        ('service=~"chat|auth"', {"service": "auth"}, True),
        ('service!~"chat.*"', {"service": "auth"}, True),
        ('service!="chat"', {}, True),  # a missing label is the empty string
        ('service=""', {}, True),
        ('service=~".+"', {}, False),
        ('env!=""', {"env": "prod"}, True),
    ],
)
def test_matching(matcher: str, labels: dict[str, str], hit: bool) -> None:
    assert parse_matchers(matcher)[0].matches(labels) is hit


def test_api_form() -> None:
    m = Matcher("service", "!~", "chat.*")
    assert m.to_api() == {"name": "service", "value": "chat.*", "isRegex": True, "isEqual": False}
    assert Matcher.from_api(m.to_api()) == m


def _router(*routes: dict, **default: object) -> Router:
    cfg = AlertsConfig(routes=list(routes), default_route=default)
    return Router.build(cfg.routes, default_channel=cfg.default_route.channel or "alerts",
                        default_mentions=cfg.default_route.mention_roles,
                        default_escalation=cfg.default_route.escalation)


def test_first_match_wins() -> None:
    r = _router(
        {"matchers": ['severity="critical"'], "channel": "pager", "mention_roles": [111], "escalation": "primary"},
        {"matchers": ['service=~"chat.*"'], "channel": "chat-alerts"},
    )
    [t] = r.route({"severity": "critical", "service": "chat"})
    assert (t.channel, t.mention_roles, t.escalation, t.route) == ("pager", (111,), "primary", 0)
    [t] = r.route({"severity": "warning", "service": "chat-gui"})
    assert t.channel == "chat-alerts"


def test_continue_collects_further_routes_and_merges_channels() -> None:
    r = _router(
        {"matchers": ['severity="critical"'], "channel": "pager", "mention_roles": [1], "continue": True},
        {"matchers": ['env="prod"'], "channel": "pager", "mention_roles": [2], "escalation": "prod", "continue": True},
        {"matchers": ['service="chat"'], "channel": "chat"},
        {"matchers": ['service="chat"'], "channel": "never"},
    )
    targets = r.route({"severity": "critical", "env": "prod", "service": "chat"})
    assert [(t.channel, t.mention_roles, t.escalation) for t in targets] == [
        ("pager", (1, 2), "prod"),
        ("chat", (), None),
    ]


def test_no_match_goes_to_the_default_route() -> None:
    r = _router({"matchers": ['service="auth"'], "channel": "auth"}, channel="catchall", mention_roles=[7])
    [t] = r.route({"service": "chat"})
    assert (t.channel, t.mention_roles, t.route) == ("catchall", (7,), None)


def test_settings_reject_bad_matchers_and_role_ids() -> None:
    with pytest.raises(ValidationError, match="invalid regular expression"):
        Settings(alerts={"routes": [{"matchers": ['a=~"("'], "channel": "x"}]})
    with pytest.raises(ValidationError, match="snowflake"):
        Settings(alerts={"routes": [{"matchers": ["a=b"], "channel": "x", "mention_roles": [-1]}]})
    with pytest.raises(ValidationError):
        Settings(alerts={"silence_buttons": ["1 hour"]})
    with pytest.raises(ValidationError, match="retry_max_seconds"):
        Settings(alerts={"retry_initial_seconds": 10, "retry_max_seconds": 1})
