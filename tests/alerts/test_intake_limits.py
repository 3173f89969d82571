"""A well-formed Alertmanager webhook is never refused for its size (finding 14 of issue 13).

Alertmanager does not retry a 4xx, so a refusal drops the notification for good. Every bound the
payload models have cuts (with a visible marker) instead of refusing; only what is not an
Alertmanager webhook at all gets a 4xx, and a body over ``alerts.max_body_bytes`` (413) is said in chat.
Through the real HTTP webhook, on SQLite and PostgreSQL (whose VARCHAR columns refuse long values).
"""

from __future__ import annotations

import json
from pathlib import Path

from alerts.models import MAX_ALERTS, MAX_KEY, MAX_NAME, MAX_TEXT, WebhookPayload
from tests.alerts.conftest import Harness, alert, close_harness, open_harness, payload

KIB = 1024


async def _only_incident(h: Harness):  # type: ignore[no-untyped-def]
    [inc] = await h.service.incidents(open_only=False)
    return await h.service.incident(inc.id)


async def test_a_100_kib_annotation_is_stored_cut_and_shown(harness: Harness) -> None:
    a = alert(instance="web-1")
    a["annotations"]["description"] = "| pod | 5xx |\n" + "| web-1 | 7.3% |\n" * (100 * KIB // 16)
    assert len(a["annotations"]["description"]) > 100 * KIB
    code, body = await harness.post(payload([a]))
    assert code == 200, body
    inc = await _only_incident(harness)
    [stored] = inc.alerts
    text = stored.annotations["description"]
    assert len(text) <= MAX_TEXT and text.startswith("| pod | 5xx |")
    assert "truncated by opsbot" in text and "more characters]" in text
    await harness.service.wait_idle(10)
    [msg] = harness.notifier.messages.values()
    assert "web-1" in msg.text and "HighLatency" in msg.title


async def test_every_bounded_field_is_cut_not_refused(harness: Harness) -> None:
    long_name = "label_" + "x" * 400  # a well-formed label name, longer than MAX_NAME
    a = alert(instance="web-1")
    a["labels"].update({long_name: "v", "team": "t" * (MAX_TEXT + 10)})
    a["labels"]["env"] = "prod-" + "e" * 100  # longer than the incident's env column (64)
    a["labels"]["service"] = "chat-" + "s" * 200  # longer than its service column (128)
    a["generatorURL"] = "http://prometheus.example.com/graph?g0.expr=" + "u" * MAX_TEXT
    a["fingerprint"] = "f" * 300
    body = payload([a], receiver="r" * 1000)
    body["groupKey"] = "{}:{alertname=\"" + "k" * (MAX_KEY * 2) + "\"}"
    body["externalURL"] = "http://am.example.com/" + "a" * MAX_TEXT
    body["commonAnnotations"] = {"summary": "s" * (MAX_TEXT * 2)}
    body["truncatedAlerts"] = 2**40
    code, answer = await harness.post(body)
    assert code == 200, answer
    inc = await _only_incident(harness)
    [stored] = inc.alerts
    cut = [k for k in stored.labels if k.startswith("label_")]
    assert len(cut) == 1 and len(cut[0]) <= MAX_NAME and "sha256" in cut[0]
    assert "truncated by opsbot" in stored.labels["team"]
    assert inc.env is not None and inc.env.startswith("prod-") and len(inc.env) <= 64
    assert inc.service is not None and inc.service.startswith("chat-")
    assert "truncated by opsbot" in inc.common_annotations["summary"]
    assert len(inc.receiver) <= MAX_NAME
    # The same delivery again is a duplicate: the cut key and fingerprint are stable.
    code, answer = await harness.post(body)
    assert code == 200 and answer["duplicate"] is True


async def test_two_long_group_keys_that_differ_late_stay_two_groups(harness: Harness) -> None:
    first, second = payload([alert(instance="a")]), payload([alert(instance="b", fp="0b")])
    first["groupKey"] = "{}:{x=\"" + "k" * MAX_KEY + "1\"}"
    second["groupKey"] = "{}:{x=\"" + "k" * MAX_KEY + "2\"}"
    assert (await harness.post(first))[0] == 200
    assert (await harness.post(second))[0] == 200
    assert len(await harness.service.incidents(open_only=False)) == 2


async def test_more_alerts_than_kept_are_counted_as_truncated(tmp_path: Path) -> None:
    h = await open_harness(tmp_path, max_body_bytes=16 * KIB * KIB)
    try:
        alerts = [{"status": "firing", "labels": {"alertname": "Storm", "i": str(i)}, "fingerprint": f"{i:x}"}
                  for i in range(MAX_ALERTS + 5)]
        body = payload(alerts)
        body["truncatedAlerts"] = 7
        code, answer = await h.post(body)
        assert code == 200, answer
        inc = await _only_incident(h)
        assert inc.firing == MAX_ALERTS and inc.truncated == 12
        await h.service.wait_idle(30)
        [msg] = h.notifier.messages.values()
        assert f"{MAX_ALERTS} firing, 0 resolved, 12 more not sent" in msg.text
        parsed = WebhookPayload.model_validate(body)
        assert len(parsed.alerts) == MAX_ALERTS and parsed.truncated_alerts == 12
    finally:
        await close_harness(h)


async def test_what_is_not_a_webhook_is_still_refused(harness: Harness) -> None:
    for bad in ({**payload([alert()]), "version": "3"}, {**payload([alert()]), "groupKey": ""},
                {**payload([alert()]), "alerts": [{"status": "pending"}]}, {"text": "x" * 100 * KIB}):
        code, answer = await harness.post(bad)
        assert code == 422 and "not an Alertmanager webhook" in answer["error"]


async def test_a_body_over_the_limit_is_413_and_said_in_chat_once(tmp_path: Path) -> None:
    h = await open_harness(tmp_path, max_body_bytes=64 * KIB)
    try:
        big = alert()
        big["annotations"]["description"] = "d" * 100 * KIB
        for _ in range(3):
            code, answer = await h.post(payload([big]))
            assert code == 413 and str(64 * KIB) in answer["error"]
        await h.notifier.wait_for(lambda: len(h.notifier.notices) >= 1)
        assert (await h.post(payload([alert()])))[0] == 200
        await h.service.wait_idle(10)
        lost = [text for _, text in h.notifier.notices if "notification was lost" in text]
        assert len(lost) == 1 and "max_alerts" in lost[0] and json.dumps(64 * KIB) in lost[0]
    finally:
        await close_harness(h)
