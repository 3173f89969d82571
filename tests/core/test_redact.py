"""Redaction of secrets in log lines: table-driven cases and Hypothesis properties."""

from __future__ import annotations

import base64
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.redact import _KEYWORDS, _TRIGGER, MARK, Redactor

R = Redactor()

REDACTED = [
    # query strings and key=value
    ("GET /login?user=bob&password=hunter2&next=/ HTTP/1.1", "GET /login?user=bob&password=[REDACTED]&next=/ HTTP/1.1"),
    ("GET /x?token=abc123&page=2", "GET /x?token=[REDACTED]&page=2"),
    ("connect db_password=s3cr3t host=db", "connect db_password=[REDACTED] host=db"),
    ("PASSWD=x1y2 user=root", "PASSWD=[REDACTED] user=root"),
    ("pwd=p4ss", "pwd=[REDACTED]"),
    ("secret=shh api_key=k1 apikey=k2 API-KEY=k3 access_key=k4 access-key=k5", "secret=[REDACTED] api_key=[REDACTED] apikey=[REDACTED] API-KEY=[REDACTED] access_key=[REDACTED] access-key=[REDACTED]"),
    ("access_token=abc refresh_token=def", "access_token=[REDACTED] refresh_token=[REDACTED]"),
    ("aws_secret_access_key=wJalrXUtnFEMI", "aws_secret_access_key=[REDACTED]"),
    ("password = 'a b c' next", "password = '[REDACTED]' next"),
    ('logfmt password="with spaces" ok=1', 'logfmt password="[REDACTED]" ok=1'),
    ("Password=abc;Server=db", "Password=[REDACTED]"),  # ;-separated: the rest goes too (safe side)
    ("ruby {:password => 'x1'}", "ruby {:password => '[REDACTED]'}"),
    ("secretoken=abc", "secretoken=[REDACTED]"),  # overlapping keywords
    # JSON, escaped JSON, Python repr, YAML
    ('{"user": "bob", "password": "hun\\"ter2", "n": 1}', '{"user": "bob", "password": "[REDACTED]", "n": 1}'),
    ('{"apiKey":"k-123","x":1}', '{"apiKey":"[REDACTED]","x":1}'),
    ('{"token": 123456}', '{"token": [REDACTED]'),  # unquoted JSON value: up to whitespace
    ('msg="{\\"password\\":\\"abc\\"}"', 'msg="{\\"password\\":\\"[REDACTED]\\"}"'),
    ("{'clientSecret': 's3'}", "{'clientSecret': '[REDACTED]'}"),
    ("password: hunter2", "password: [REDACTED]"),
    ("  db_password: hunter2  # yaml", "  db_password: [REDACTED]  # yaml"),
    ("X-Api-Key: abc", "X-Api-Key: [REDACTED]"),
    ("invalid token: expired", "invalid token: [REDACTED]"),  # documented false positive
    # Authorization headers
    ("Authorization: Bearer abc.def-123 user=bob", "Authorization: Bearer [REDACTED] user=bob"),
    ("authorization: basic dXNlcjpwYXNz", "authorization: basic [REDACTED]"),
    ('"Authorization": "Basic dXNlcjpwYXNz"', '"Authorization": "Basic [REDACTED]"'),
    ("{'authorization': 'Token t0k'}", "{'authorization': 'Token [REDACTED]'}"),
    ("map[Accept:[*/*] Authorization:[Bearer abc.def]]", "map[Accept:[*/*] Authorization:[Bearer [REDACTED]]]"),
    ('Authorization: Digest username="Mufasa", response="6629fae4"', "Authorization: Digest [REDACTED]"),
    ("Authorization: s3cr3t-without-scheme", "Authorization: [REDACTED]"),
    ("Proxy-Authorization: Basic Zm9vOmJhcg==", "Proxy-Authorization: Basic [REDACTED]"),
    ("authorization=Bearer%20abc&x=1", "authorization=[REDACTED]"),
    # bare bearer tokens
    ("calling upstream with Bearer abcdefgh1234 now", "calling upstream with Bearer [REDACTED] now"),
    ("bearer ABCDEFGHIJKLMNOPQRSTUVWXYZ", "bearer [REDACTED]"),
    # documented false positive: "bearer" followed by anything token-like
    ("forwarded to bearer /api/v1/users", "forwarded to bearer [REDACTED]"),
    # URL userinfo
    ("dsn=postgres://app:hunter2@db:5432/x", "dsn=postgres://app:[REDACTED]@db:5432/x"),
    ("redis://:onlypass@cache:6379", "redis://:[REDACTED]@cache:6379"),
    # shapes
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcDEF_- done", "jwt [REDACTED] done"),
    ("tok MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz123456 x", "tok [REDACTED] x"),
    ("legacy mfa." + "a" * 84, "legacy [REDACTED]"),
    # non-ASCII where lower() changes the length: the slow path still works
    ("İstanbul password=x1 İ", "İstanbul password=[REDACTED] İ"),
]

UNCHANGED = [
    "token_count=5 max_tokens=100 tokens: 3 tokenizer=bpe",
    "secret_name=db-creds secrets=2 password_reset=sent passwords_checked=4",
    "GET /api/v1/keys?page=2 200 12ms",
    "monkey=1 keyboard=us hotkey: ctrl",
    "the bearer of bad news; bearer authentication failed",
    "Authorization failed for user bob",
    "authorization_header_missing=true",
    "https://example.com/path?x=1 user@example.com ssh://git@github.com:22/x http://host:8080/a@b",
    "pod chat-gui-5d9c7b6f4-x2x7k ready 10.0.12.7:8080 v1.5.0 db.internal.svc.cluster.local",
    "request_id=9f8e7d6c-1b2a-4c3d-8e9f-0a1b2c3d4e5f sha=3f786850e387550fdab836ed7e6dc881de23001b",
    "2026-11-30T02:38:53.123456789Z level=info msg=\"served\" status=200 latency=12ms",
    'eyJ alone, "eyJhbGci" and eyJabc.def only two segments',
    "",
]


@pytest.mark.parametrize(("line", "expected"), REDACTED)
def test_redacts(line: str, expected: str) -> None:
    assert R.redact(line) == expected


@pytest.mark.parametrize("line", UNCHANGED)
def test_leaves_ordinary_lines_alone(line: str) -> None:
    assert R.redact(line) == line


def test_idempotent() -> None:
    for line, _ in REDACTED:
        once = R.redact(line)
        assert R.redact(once) == once


def test_trigger_covers_every_keyword() -> None:
    # _TRIGGER is written out by hand for speed; it must find every key _KEYWORDS accepts.
    for key in ["authorization", "bearer", "password", "passwd", "pwd", "token", "secret",
                "api_key", "api-key", "apikey", "access_key", "access-key", "accesskey"]:
        assert _TRIGGER.fullmatch(key), key
        assert key in ("authorization", "bearer") or re.fullmatch(_KEYWORDS, key)


def test_config_patterns_replace_the_whole_match() -> None:
    r = Redactor([r"sk-[A-Za-z0-9]{10,}", r"AKIA[0-9A-Z]{16}"])
    assert r.redact("key sk-abcdefghijkl1 id AKIAABCDEFGHIJKLMNOP ok") == "key [REDACTED] id [REDACTED] ok"
    assert len(r._extra) == 1  # combined into one regex


def test_config_patterns_with_groups_or_flags_still_work() -> None:
    r = Redactor([r"(ab)\1-\d+", r"(?i)secretish"])
    assert r.redact("x abab-12 SECRETISH y") == "x [REDACTED] [REDACTED] y"
    r = Redactor([r"(?i)foo\d", r"(?s)bar\d"])  # global flags mid-pattern would not combine
    assert r.redact("FOO1 bar2") == "[REDACTED] [REDACTED]"


def test_bad_config_pattern_raises() -> None:
    with pytest.raises(re.error):
        Redactor(["[unclosed"])


# ----------------------------------------------------------------------------- properties

KEYS = st.sampled_from(["password", "PASSWORD", "Passwd", "pwd", "token", "Token", "secret",
                        "api_key", "apiKey", "API-KEY", "access_key", "accessKey", "db_password",
                        "access_token", "clientSecret", "x-api-key"])
# A secret value: no whitespace and none of the characters that end an unquoted value (& " ' \).
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%()*+,-./:;<>?@[]^_{|}~",
                min_size=8, max_size=40)
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/",
                min_size=7, max_size=60).map(lambda s: s + "7")  # bearer tokens have a digit
USERINFO = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$*+,;=%",
                   min_size=8, max_size=30)
B64URL = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=10, max_size=60)
# Random text, or adversarial bits of syntax glued together.
NOISE = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(["bearer", "Bearer ", "Authorization:", "authorization=", "password",
                              "token=", "=", ": ", '"', "'", "\\", "[", "]", "eyJ", "://", "@", " ",
                              "x1", "&", "=>", "Basic ", "[REDACTED]"]), max_size=8).map("".join),
)


@st.composite
def keyed_secret(draw: st.DrawFn) -> tuple[str, str]:
    key, value = draw(KEYS), draw(VALUE)
    form = draw(st.sampled_from([
        "{k}={v}", "{k}: {v}", "{k} = {v}", '"{k}": "{v}"', '"{k}":"{v}"', "'{k}': '{v}'",
        "?{k}={v}&page=2", '\\"{k}\\":\\"{v}\\"', "{k} => {v}",
    ]))
    if "'" in form or '"' in form:
        value = value.replace("\\", "")  # a backslash would escape the closing quote
    return form.format(k=key, v=value), value


@st.composite
def header_secret(draw: st.DrawFn) -> tuple[str, str]:
    token = draw(TOKEN)
    form = draw(st.sampled_from([
        "Authorization: Bearer {t}", "authorization: basic {t}", '"Authorization": "Bearer {t}"',
        "Authorization:[Bearer {t}]", "Authorization: {t}", 'Authorization: Digest username="bob", response="{t}"',
        "Proxy-Authorization: Negotiate {t}", "Bearer {t}", "bearer  {t}",
    ]))
    return form.format(t=token), token


@st.composite
def shaped_secret(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(st.sampled_from(["jwt", "discord", "url"]))
    if kind == "jwt":
        header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256"}).encode()).decode().rstrip("=")
        payload = "eyJ" + draw(B64URL)
        jwt = f"{header}.{payload}.{draw(B64URL)}"
        return jwt, payload
    if kind == "discord":
        uid = str(draw(st.integers(10**16, 10**20 - 1)))
        first = base64.b64encode(uid.encode()).decode().rstrip("=")
        hmac = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                            min_size=27, max_size=38))
        return f"{first}.GaBcDe.{hmac}", hmac
    password = draw(USERINFO)
    return f"postgres://app:{password}@db.internal:5432/chat", password


SECRETS = st.one_of(keyed_secret(), header_secret(), shaped_secret())


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(before=NOISE, secret=SECRETS, after=NOISE, sep=st.sampled_from([" ", "\t", " | ", ", "]))
def test_a_secret_between_words_never_survives(before: str, secret: tuple[str, str], after: str, sep: str) -> None:
    text, value = secret
    line = f"{before}{sep}{text}{sep}{after}"
    out = R.redact(line).replace(MARK, "\0")  # a value may be a piece of the marker itself
    assert value not in out or value in before or value in after
    assert "\0" in out


@settings(max_examples=300)
@given(before=NOISE, secret=st.one_of(keyed_secret(), shaped_secret()), after=NOISE)
def test_a_secret_glued_to_random_text_never_survives(before: str, secret: tuple[str, str], after: str) -> None:
    text, value = secret
    out = R.redact(before + text + after).replace(MARK, "\0")
    assert value not in out or value in before or value in after


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(blacklist_characters="=:.", blacklist_categories=("Cs",))))
def test_text_without_separators_is_unchanged(text: str) -> None:
    # No key/value separator and no dot: nothing can look like a keyed secret, JWT, token or URL.
    assert R.redact(text) == text


WORDS = st.sampled_from([
    "GET", "POST", "/api/v1/users", "/healthz", "status=200", "latency=12ms", "user_id=4821",
    "level=info", 'msg="served request"', "Connected", "to", "db.internal:5432", "pool", "size=10",
    "retry", "in", "5s", "WARN", "ERROR", "timeout", "chat-gui-5d9c7b6f4-x2x7k", "token_count=5",
    "max_tokens=100", "secret_name=db", "tokens:", "keyboard", "10.0.0.12", "v1.5.0",
    "ok", '{"n":', "1}", "https://example.com/a?b=c", "user@example.com", "authorization_id=3",
])


@settings(max_examples=300)
@given(st.lists(WORDS, max_size=25).map(" ".join))
def test_ordinary_log_lines_are_unchanged(line: str) -> None:
    assert R.redact(line) == line
