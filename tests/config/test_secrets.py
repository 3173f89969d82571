"""Secret settings: never printed, each readable from a file (``OPSBOT_<NAME>_FILE``), and the
unauthenticated webhook only on loopback (issue 13, findings 8 and 12)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from config.check import check
from config.settings import (
    Settings,
    SecretFileError,
    is_loopback_listen,
    load_settings,
    secret_env_name,
    secret_settings,
)

PASSWORD = "Pa55-DoNotPrintMe"
URL = f"postgresql+psycopg://opsbot:{PASSWORD}@db.internal:5432/opsbot"
CONFIG = """\
services:
  chat:
    repository: registry.local/dgg/chat
    envs:
      prod: {namespace: prod, deployment: chat}
permissions:
  roles:
    - {id: 1063245997674031186, name: Mod, grants: [deploy, status]}
guild_id: 1063245997672297000
"""


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "opsbot.yaml"
    path.write_text(CONFIG + extra, encoding="utf-8")
    return path


def _lines(path: Path | None) -> list[str]:
    return [str(p) for p in check(path).problems]


# ----------------------------------------------------------------------------- database_url


def test_the_database_url_is_a_secret_that_still_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_DATABASE_URL", URL)
    settings = load_settings(None)
    assert isinstance(settings.database_url, SecretStr)
    for text in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.model_dump())):
        assert PASSWORD not in text
    assert settings.database == URL  # what commands.db.Database is given


def test_without_a_database_url_sqlite_in_the_data_dir_is_used(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    assert settings.database == f"sqlite:///{(tmp_path / 'opsbot.db').resolve()}"


def test_ha_still_sees_a_postgresql_database_url_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "database_url"
    secret.write_text(URL + "\n")
    monkeypatch.setenv("OPSBOT_DATABASE_URL_FILE", str(secret))
    result = check(_config(tmp_path, "ha: {enabled: true}\n"))
    assert result.problems == []
    assert result.settings is not None and result.settings.database == URL
    assert PASSWORD not in result.render()


# ----------------------------------------------------------------------------- OPSBOT_<NAME>_FILE


def _field(path: tuple[str, ...]) -> Any:
    model: Any = Settings
    for name in path[:-1]:
        model = next(a for a in typing.get_args(model.model_fields[name].annotation) or
                     (model.model_fields[name].annotation,) if isinstance(a, type))
    return model.model_fields[path[-1]]


def test_every_secret_setting_has_a_file_variable() -> None:
    paths = secret_settings()
    assert {("discord_token",), ("webhook_token",), ("database_url",)} <= set(paths)
    assert all(SecretStr in typing.get_args(_field(p).annotation) for p in paths)
    assert secret_env_name(("github", "webhook_secret")) == "OPSBOT_GITHUB__WEBHOOK_SECRET"


class _GitHub(BaseModel):
    webhook_secret: SecretStr | None = None


class _WithNestedSecret(Settings):
    github: _GitHub = _GitHub()


def test_a_secret_in_a_nested_model_is_read_from_its_file_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A secret setting added later (design §4's GitHub webhook secret) needs no code of its own.
    assert ("github", "webhook_secret") in secret_settings(_WithNestedSecret)
    secret = tmp_path / "gh"
    secret.write_text("gh-s3cret\n")
    monkeypatch.setenv("OPSBOT_GITHUB__WEBHOOK_SECRET_FILE", str(secret))
    settings = _WithNestedSecret()
    assert settings.github.webhook_secret == SecretStr("gh-s3cret")
    monkeypatch.setenv("OPSBOT_GITHUB__WEBHOOK_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(SecretFileError, match="^OPSBOT_GITHUB__WEBHOOK_SECRET_FILE: .* does not exist$"):
        _WithNestedSecret()


@pytest.mark.parametrize("path", [("discord_token",), ("webhook_token",), ("database_url",)])
def test_each_secret_is_read_from_its_file_without_the_trailing_newline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: tuple[str, ...]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret value with inner spaces \n")
    monkeypatch.setenv(secret_env_name(path) + "_FILE", str(secret))
    settings = load_settings(None)
    value = getattr(settings, path[0])
    assert isinstance(value, SecretStr)
    assert value.get_secret_value() == "s3cret value with inner spaces "
    assert "s3cret" not in repr(settings)


def test_the_file_variable_is_case_insensitive_like_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "t"
    secret.write_text("tok\r\n")
    monkeypatch.setenv("opsbot_webhook_token_file", str(secret))
    assert load_settings(None).webhook_token == SecretStr("tok")


def test_a_missing_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_WEBHOOK_TOKEN_FILE", str(tmp_path / "nope"))
    with pytest.raises(SecretFileError) as info:
        load_settings(None)
    assert str(info.value) == f"OPSBOT_WEBHOOK_TOKEN_FILE: {tmp_path / 'nope'} does not exist"
    assert _lines(_config(tmp_path)) == [
        f"error: webhook_token (from OPSBOT_WEBHOOK_TOKEN_FILE): {tmp_path / 'nope'} does not exist"]
    assert check(_config(tmp_path)).exit_code == 1


@pytest.mark.parametrize(("make", "problem"), [
    (lambda p: p.mkdir(), "cannot read {path}: Is a directory"),
    (lambda p: p.write_text("\n"), "{path} is empty"),
    (lambda p: p.write_bytes(b"\xff\xfe token"), "{path} is not UTF-8 text"),
])
def test_an_unusable_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, problem) -> None:
    secret = tmp_path / "discord_token"
    make(secret)
    monkeypatch.setenv("OPSBOT_DISCORD_TOKEN_FILE", str(secret))
    expected = problem.format(path=secret)
    with pytest.raises(SecretFileError, match="^OPSBOT_DISCORD_TOKEN_FILE: "):
        load_settings(None)
    assert _lines(_config(tmp_path)) == [f"error: discord_token (from OPSBOT_DISCORD_TOKEN_FILE): {expected}"]


def test_a_variable_and_its_file_together_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "t"
    secret.write_text("from-the-file-DoNotPrintMe")
    monkeypatch.setenv("OPSBOT_WEBHOOK_TOKEN", "from-the-env-DoNotPrintMe")
    monkeypatch.setenv("OPSBOT_WEBHOOK_TOKEN_FILE", str(secret))
    with pytest.raises(SecretFileError) as info:
        load_settings(None)
    assert "DoNotPrintMe" not in str(info.value)
    result = check(_config(tmp_path))
    assert [str(p) for p in result.problems] == [
        "error: webhook_token (from OPSBOT_WEBHOOK_TOKEN_FILE): set, and so is OPSBOT_WEBHOOK_TOKEN: keep one of them"]
    assert "DoNotPrintMe" not in result.render()


def test_a_file_beats_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "t"
    secret.write_text("from-the-file")
    monkeypatch.setenv("OPSBOT_WEBHOOK_TOKEN_FILE", str(secret))
    path = _config(tmp_path, "webhook_token: in-the-yaml\n")
    assert load_settings(path).webhook_token == SecretStr("from-the-file")
    result = check(path)
    assert result.settings is not None and result.settings.webhook_token == SecretStr("from-the-file")
    assert [p.path for p in result.problems] == ["webhook_token"]  # the plaintext in the file is still warned


def test_a_file_variable_for_a_setting_that_is_no_secret_is_warned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_GUILD_ID_FILE", str(tmp_path / "guild"))
    assert _lines(_config(tmp_path)) == [
        "warning: environment variable OPSBOT_GUILD_ID_FILE is ignored: only secret settings are read from a "
        "file (OPSBOT_DATABASE_URL_FILE, OPSBOT_DISCORD_TOKEN_FILE, OPSBOT_WEBHOOK_TOKEN_FILE)"]


def test_secret_file_variables_are_known_to_check_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in secret_settings():
        secret = tmp_path / "_".join(path)
        secret.write_text("x" if path != ("database_url",) else URL)
        monkeypatch.setenv(secret_env_name(path) + "_FILE", str(secret))
    assert _lines(_config(tmp_path)) == []


# ----------------------------------------------------------------------------- allow_unauthenticated


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "127.0.0.2:0", "[::1]:8080", "localhost:8080"])
def test_an_open_webhook_is_allowed_on_loopback(tmp_path: Path, listen: str) -> None:
    assert is_loopback_listen(listen)
    path = _config(tmp_path, f"webhook_listen: '{listen}'\nalerts: {{allow_unauthenticated: true}}\n")
    assert _lines(path) == []
    assert load_settings(path).alerts.allow_unauthenticated


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080", "opsbot.internal:8080"])
def test_an_open_webhook_is_refused_elsewhere(tmp_path: Path, listen: str) -> None:
    assert not is_loopback_listen(listen)
    path = _config(tmp_path, f"webhook_listen: '{listen}'\nalerts: {{allow_unauthenticated: true}}\n")
    message = (f"allow_unauthenticated is refused with webhook_listen {listen}, which is not a loopback address: "
               "anyone who reaches the port could post alerts; set webhook_token (OPSBOT_WEBHOOK_TOKEN or "
               "OPSBOT_WEBHOOK_TOKEN_FILE) or listen on 127.0.0.1")
    assert _lines(path) == [f"error: alerts (line 11): {message}"]
    with pytest.raises(ValidationError, match="allow_unauthenticated is refused"):
        load_settings(path)


def test_an_open_webhook_is_refused_when_the_environment_moves_it_off_loopback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _config(tmp_path, "alerts: {allow_unauthenticated: true}\n")
    assert _lines(path) == []  # the default listen address is 127.0.0.1:8080
    monkeypatch.setenv("OPSBOT_WEBHOOK_LISTEN", "0.0.0.0:8080")
    (problem,) = check(path).errors
    assert problem.path == "alerts" and "allow_unauthenticated is refused" in problem.message
    with pytest.raises(ValidationError):
        load_settings(path)


# ----------------------------------------------------------------------------- guild_id


def test_an_unset_guild_id_is_warned(tmp_path: Path) -> None:
    path = _config(tmp_path)
    assert _lines(path) == []
    path.write_text(CONFIG.replace("guild_id: 1063245997672297000\n", ""))
    result = check(path)
    assert [str(p) for p in result.problems] == [
        "warning: guild_id: not set: the bot is bound to no guild, so slash commands sync globally and the "
        "`everyone` grants reach any server it is added to; set guild_id to your server's ID (and turn off "
        "Public Bot in the Developer Portal)"]
    assert result.exit_code == 0
