"""The webhook: credentials, size limit, bad payloads, persistence first, dedup, 503 without a database."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from alerts.store import IncidentRow
from tests.alerts.conftest import (
    T0,
    TOKEN,
    Harness,
    alert,
    close_harness,
    make_db,
    open_harness,
    payload,
)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _incidents(h: Harness) -> int:
    return len(await h.service.incidents(open_only=False))


# ------------------------------------------------------------------------------ credentials


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (f"Bearer {TOKEN}", 200),
        (f"bearer   {TOKEN} ", 200),
        (_basic("alertmanager", TOKEN), 200),
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer wrong", 401),
        (f"Bearer {TOKEN}x", 401),
        (f"Token {TOKEN}", 401),
        (_basic("someone", TOKEN), 401),
        (_basic("alertmanager", "wrong"), 401),
        ("Basic !!!notbase64", 401),
        ("Basic " + base64.b64encode(b"no-colon").decode(), 401),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), 401),
    ],
)
async def test_credentials(harness: Harness, header: str | None, status: int) -> None:
    headers = {"Authorization": header} if header is not None else {}
    code, body = await harness.post(payload([alert()]), token=None, headers=headers)
    assert code == status
    if status == 401:
        assert body["status"] == "error" and await _incidents(harness) == 0


async def test_no_token_configured_refuses_everything(tmp_path: Path) -> None:
    h = await open_harness(tmp_path)
    h.service.intake._token = None  # as if webhook_token were not set
    try:
        assert (await h.post(payload([alert()])))[0] == 401
        assert (await h.post(payload([alert()]), token=None))[0] == 401
    finally:
        await close_harness(h)


async def test_unauthenticated_only_when_allowed(tmp_path: Path) -> None:
    from alerts.intake import WebhookIntake

    async def ingest(_: Any) -> Any:
        raise AssertionError

    assert WebhookIntake(ingest, token=None, allow_unauthenticated=True).authorized(None)
    assert not WebhookIntake(ingest, token=None).authorized(None)
    # A configured token always wins over allow_unauthenticated.
    assert not WebhookIntake(ingest, token="x", allow_unauthenticated=True).authorized(None)


# ------------------------------------------------------------------------------ bad bodies


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"", 400),
        (b"{", 400),
        (b"\xff\xfe", 400),
        (b"[" * 100_000, 400),
        (b"null", 422),
        (b"[]", 422),
        (b'"text"', 422),
        (b"{}", 422),
        (json.dumps({**payload([alert()]), "version": "3"}).encode(), 422),
        (json.dumps({**payload([alert()]), "groupKey": ""}).encode(), 422),
        (json.dumps({**payload([alert()]), "alerts": [{"status": "pending"}]}).encode(), 422),
        (json.dumps({**payload([alert()]), "alerts": [{**alert(), "labels": {"a": 1}}]}).encode(), 422),
        (json.dumps({**payload([alert()]), "truncatedAlerts": -1}).encode(), 422),
    ],
)
async def test_bad_bodies_get_4xx_with_a_reason(harness: Harness, raw: bytes, status: int) -> None:
    code, body = await harness.post(None, raw=raw)
    assert code == status, body
    assert body["error"]


async def test_body_size_limit(tmp_path: Path) -> None:
    h = await open_harness(tmp_path, max_body_bytes=4096)
    try:
        big = payload([alert(instance=str(i)) for i in range(40)])
        assert len(json.dumps(big)) > 4096
        code, body = await h.post(big)
        assert code == 413 and "4096" in body["error"]
        # Without a Content-Length (chunked), the limit holds too.
        import aiohttp

        async def chunks():  # type: ignore[no-untyped-def]
            data = json.dumps(big).encode()
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        async with aiohttp.ClientSession() as s, s.post(
            h.url, data=chunks(), headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            assert r.status == 413
        assert (await h.post(payload([alert()])))[0] == 200
    finally:
        await close_harness(h)


async def test_extra_fields_are_tolerated(harness: Harness) -> None:
    body = payload([{**alert(), "silenceURL": "x", "values": {"A": 1}}], notification_reason="firing",
                   routeLabels={"a": "b"}, orgId=1)
    code, answer = await harness.post(body)
    assert code == 200 and answer["incident"] == 1


async def test_go_zero_and_odd_times(harness: Harness) -> None:
    a = {**alert(), "startsAt": "0001-01-01T00:00:00+05:00", "endsAt": "9999-12-31T23:59:59-05:00"}
    assert (await harness.post(payload([a])))[0] == 200
    [inc] = await harness.service.incidents()
    assert inc.alerts == [] and inc.firing == 1


# ------------------------------------------------------------------------------ dedup


async def test_dedup_on_group_fingerprint_status_and_start(harness: Harness) -> None:
    first = payload([alert(instance="a")])
    assert (await harness.post(first))[1]["duplicate"] is False
    # An HA pair sends the same notification twice.
    assert (await harness.post(first))[1]["duplicate"] is True
    # A late copy of the firing after it resolved does not re-open anything.
    resolved = payload([alert(instance="a", status="resolved", ends=T0.replace(minute=5))])
    assert (await harness.post(resolved))[1]["duplicate"] is False
    assert (await harness.post(first))[1]["duplicate"] is True
    inc = await harness.service.incident(1)
    assert inc.status == "resolved" and not inc.open
    # The same alert firing again later (a new startsAt) opens a new incident for the group.
    again = payload([alert(instance="a", starts=T0.replace(hour=15))])
    assert (await harness.post(again))[1] == {"status": "ok", "incident": 2, "duplicate": False}
    await harness.service.wait_idle(10)
    assert len(harness.notifier.messages) == 2


async def test_a_late_firing_copy_without_a_receipt_stays_resolved(harness: Harness) -> None:
    await harness.post(payload([alert(instance="a"), alert(instance="b")]))
    await harness.post(payload([alert(instance="a", status="resolved", ends=T0.replace(minute=5)), alert(instance="b")]))
    with harness.db.session() as s:
        s.execute(text("DELETE FROM alert_receipts"))
    # Receipts are gone (retention); a stale firing of "a" with the old startsAt is still ignored.
    code, _ = await harness.post(payload([alert(instance="a"), alert(instance="b")]))
    assert code == 200
    inc = await harness.service.incident(1)
    assert {a.labels["instance"]: a.status for a in inc.alerts} == {"a": "resolved", "b": "firing"}


async def test_persisted_before_200(harness: Harness) -> None:
    await harness.service.outbox.stop()  # nothing is sent; the row must exist anyway
    code, _ = await harness.post(payload([alert()]))
    assert code == 200
    with harness.db.session() as s:
        assert s.query(IncidentRow).count() == 1


# ------------------------------------------------------------------------------ database trouble


async def test_a_dropped_table_is_503_then_recovers(harness: Harness) -> None:
    with harness.db.session() as s:
        s.execute(text("ALTER TABLE alert_receipts RENAME TO alert_receipts_away"))
    code, body = await harness.post(payload([alert()]))
    assert code == 503 and "try again" in body["error"]
    with harness.db.session() as s:
        s.execute(text("ALTER TABLE alert_receipts_away RENAME TO alert_receipts"))
    assert (await harness.post(payload([alert()])))[0] == 200


async def test_a_read_only_database_is_503(tmp_path: Path) -> None:
    db = make_db(tmp_path)
    h = await open_harness(tmp_path, db=db)
    try:
        from commands.db import Database

        # The same file opened read-only (SQLite's mode=ro holds even for root).
        read_only = Database(f"sqlite:///file:{tmp_path / 'opsbot.db'}?mode=ro&uri=true")
        h.service.store._db = read_only
        code, _ = await h.post(payload([alert()]))
        assert code == 503
        h.service.store._db = db
        read_only.dispose()
        assert (await h.post(payload([alert()])))[0] == 200
    finally:
        await close_harness(h)


async def test_a_database_that_cannot_be_opened_is_503(tmp_path: Path) -> None:
    db = make_db(tmp_path)
    h = await open_harness(tmp_path, db=db)
    try:
        # The bot pointed at a missing (new, empty) database file: every write fails.
        from commands.db import Database

        gone = Database(f"sqlite:///{tmp_path}/elsewhere/opsbot.db")
        h.service.store._db = gone
        for _ in range(2):
            assert (await h.post(payload([alert()])))[0] == 503
        h.service.store._db = db
        gone.dispose()
        assert (await h.post(payload([alert()])))[0] == 200
    finally:
        await close_harness(h)


# ------------------------------------------------------------------------------ fuzzing

_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
_json = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=25,
)
_times = st.one_of(
    st.just("0001-01-01T00:00:00Z"), st.just("2024-05-01T14:00:00.123456789+02:00"), st.text(max_size=30),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()), st.integers(), st.none(),
)
_labels = st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6)
_alert = st.fixed_dictionaries(
    {"status": st.sampled_from(["firing", "resolved"])},
    optional={
        "labels": st.one_of(_labels, _json),
        "annotations": st.one_of(_labels, _json),
        "startsAt": _times,
        "endsAt": _times,
        "generatorURL": st.one_of(st.text(max_size=80), _json),
        "fingerprint": st.one_of(st.text(max_size=20), st.integers()),
        "extra": _json,
    },
)
_payload = st.fixed_dictionaries(
    {
        "version": st.sampled_from(["4", "4", "4", "3", 4]),
        "groupKey": st.one_of(st.text(min_size=1, max_size=40), st.just("{}:{a=\"b\"}")),
        "status": st.sampled_from(["firing", "resolved", "x"]),
        "receiver": st.one_of(st.text(max_size=20), st.just("opsbot")),
        "alerts": st.lists(_alert, max_size=6),
    },
    optional={
        "groupLabels": st.one_of(_labels, _json),
        "commonLabels": st.one_of(_labels, _json),
        "commonAnnotations": _labels,
        "truncatedAlerts": st.one_of(st.integers(), _scalar),
        "externalURL": st.text(max_size=40),
        "notification_reason": _json,
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.one_of(_payload, _json), auth=st.sampled_from(["good", "good", "good", "none", "bad", "basic"]))
async def test_fuzzed_payloads_never_5xx(harness: Harness, body: Any, auth: str) -> None:
    headers = {
        "good": {"Authorization": f"Bearer {TOKEN}"},
        "none": {},
        "bad": {"Authorization": "Bearer nope"},
        "basic": {"Authorization": _basic("alertmanager", TOKEN)},
    }[auth]
    code, _ = await harness.post(body, token=None, headers=headers)
    assert code in (200, 400, 401, 422), code
    if auth in ("none", "bad"):
        assert code == 401


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=st.binary(max_size=300))
async def test_fuzzed_bytes_never_5xx(harness: Harness, raw: bytes) -> None:
    code, _ = await harness.post(None, raw=raw)
    assert code in (200, 400, 422), code


async def test_fuzzing_left_the_service_working(harness: Harness) -> None:
    assert (await harness.post(payload([alert()])))[0] == 200
    await harness.service.wait_idle(10)
    assert len(harness.notifier.messages) == 1
