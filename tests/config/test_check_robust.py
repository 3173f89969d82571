"""check-config reports problems; it never fails with a traceback, whatever the file holds."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.check import check

KEYS = [
    "services", "envs", "prod", "staging", "chat", "chat-gui", "repository", "namespace", "deployment", "type",
    "context", "environments", "confirm", "timeout_seconds", "channels", "promotion", "permissions", "roles",
    "id", "name", "grants", "users", "everyone", "timezone", "webhook_listen", "redact_patterns",
    "discord_token", "ops", "",
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from(KEYS),
    st.sampled_from(["deploy:prod", "*", "a:b:c:d", "(", "Europe/Berlin", "1063245997674031186", "${X}"]),
    st.text(max_size=8),
)
keys = st.one_of(st.sampled_from(KEYS), st.integers(0, 3), st.booleans())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=25)
documents = st.dictionaries(keys, values, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_gives_a_report(doc: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "c.yaml"
        f.write_text(yaml.safe_dump(doc), encoding="utf-8")
        result = check(f)
        assert result.exit_code in (0, 1)
        text = result.render()
        assert text.rstrip().splitlines()[-1].startswith("check-config: ")
        assert all(str(p) in text for p in result.problems)
