"""The validators in config.settings that check-config relies on (and `opsbot run` too)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from config.settings import ConfigFileError, KubernetesTarget, Settings, load_settings, read_yaml


def _errors(**kw: object) -> dict[tuple, str]:
    with pytest.raises(ValidationError) as info:
        Settings(**kw)
    return {e["loc"]: e["msg"] for e in info.value.errors()}


def test_target_type_defaults_to_kubernetes() -> None:
    s = Settings(services={"chat": {"repository": "r", "envs": {"prod": {"namespace": "prod", "deployment": "chat"}}}})
    assert isinstance(s.services["chat"].envs["prod"], KubernetesTarget)


def test_missing_target_field_is_named() -> None:
    errors = _errors(services={"chat": {"repository": "r", "envs": {"prod": {"namespace": "prod"}}}})
    assert errors == {("services", "chat", "envs", "prod", "kubernetes", "deployment"): "Field required"}


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "0.0.0.0:0", "localhost:65535", "[::]:8080", "[::1]:9"])
def test_good_listen(listen: str) -> None:
    assert Settings(webhook_listen=listen).webhook_listen == listen


@pytest.mark.parametrize("listen", ["8080", ":8080", "host:", "host:http", "host:65536", "::1:80", "host:-1"])
def test_bad_listen(listen: str) -> None:
    assert list(_errors(webhook_listen=listen)) == [("webhook_listen",)]


def test_timezone() -> None:
    assert Settings(timezone="Europe/Berlin").timezone == "Europe/Berlin"
    assert "unknown timezone 'Europe/Berln'" in _errors(timezone="Europe/Berln")[("timezone",)]


def test_redact_pattern_error_names_the_item() -> None:
    errors = _errors(redact_patterns=[r"token=\S+", "(unclosed"])
    assert list(errors) == [("redact_patterns", 1)]
    assert "invalid regular expression" in errors[("redact_patterns", 1)]


def test_validation_errors_do_not_echo_values() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(discord_tokn="MTIzNDU2Nzg5.secret-value")  # a typo'd key holding a token
    assert "secret-value" not in str(info.value)


def test_yaml_syntax_error_does_not_echo_the_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("discord_token: abc-secret-value: oops\n")
    with pytest.raises(ConfigFileError) as info:
        read_yaml(f)
    assert "line 1" in str(info.value)
    assert "secret-value" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_load_settings_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("timezone: Europe/Berlin\nenvironments: {prod: {confirm: true}}\n")
    monkeypatch.setenv("OPSBOT_ENVIRONMENTS__PROD__TIMEOUT_SECONDS", "900")
    s = load_settings(f)
    assert s.timezone == "Europe/Berlin"
    assert (s.environments["prod"].confirm, s.environments["prod"].timeout_seconds) == (True, 900)
