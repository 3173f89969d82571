"""deploy/compose: what can be checked without `docker compose` or registry images, for real.

The YAML parses and names only files that exist; the bot's config passes check-config; promtool
and amtool accept the Prometheus and Alertmanager configs; the pieces are wired to each other
(Alertmanager posts to the bot's service, port and webhook path with the secret the bot reads;
Prometheus scrapes the bot's /metrics); the bot reads every secret from a mounted file through its
``OPSBOT_<NAME>_FILE`` variable, with no shell wrapper; and, end to end, the real Alertmanager with
the compose config delivers an alert to the real bot with the compose config and the compose
service's secret files (hostnames and /run/secrets rewritten to local ones).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from config.check import check
from config.settings import Settings, load_settings, secret_env_name, secret_settings
from tests.conftest import require_program

COMPOSE_DIR = Path(__file__).parents[2] / "deploy" / "compose"
REPO = COMPOSE_DIR.parents[1]
BOT = "opsbot"


def _yaml(name: str) -> Any:
    return yaml.safe_load((COMPOSE_DIR / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml("compose.yaml")


@pytest.fixture(scope="module")
def bot_settings() -> Settings:
    return load_settings(COMPOSE_DIR / "opsbot.yaml")


def _port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def _secret_target(entry: str | dict[str, Any]) -> tuple[str, str]:
    """(source, path in the container) of a service's secret entry (short or long syntax)."""
    if isinstance(entry, str):
        return entry, f"/run/secrets/{entry}"
    target = entry.get("target", entry["source"])
    return entry["source"], target if target.startswith("/") else f"/run/secrets/{target}"


def _secrets(service: dict[str, Any]) -> dict[str, str]:
    """container path -> secret name."""
    return {path: source for source, path in map(_secret_target, service.get("secrets", []))}


def _secret_files(service: dict[str, Any], secrets_dir: Path) -> dict[str, str]:
    """The service's OPSBOT_*_FILE variables with /run/secrets moved to ``secrets_dir``."""
    return {k: v.replace("/run/secrets", str(secrets_dir)) for k, v in service.get("environment", {}).items()
            if k.endswith("_FILE")}


def _bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path, for ./relative bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        src, _, rest = v.partition(":")
        if src.startswith("."):
            out[rest.split(":")[0]] = src
    return out


# ------------------------------------------------------------------------------------ structure


def test_compose_files_parse_and_name_existing_files(compose):
    ha = _yaml("compose.ha.yaml")
    assert set(compose["services"]) == {"opsbot", "prometheus", "alertmanager"}
    build = compose["services"][BOT]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file()
    for doc in (compose, ha):
        for name, service in doc["services"].items():
            for container_path, host in _bind_mounts(service).items():
                assert (COMPOSE_DIR / host).is_file(), f"{name}: {host} (-> {container_path}) is missing"
            for source in _secrets(service).values():
                assert source in doc.get("secrets", {}) or source in compose["secrets"], f"{name}: secret {source}?"
    # Secrets are not committed: each one's file is explained in secrets/README.md and ignored by git.
    readme = (COMPOSE_DIR / "secrets" / "README.md").read_text(encoding="utf-8")
    for doc in (compose, ha):
        for name, secret in doc["secrets"].items():
            assert secret["file"].startswith("./secrets/"), secret
            name_ = Path(secret["file"]).name
            assert f"`{name_}`" in readme, f"secrets/README.md does not explain {name_}"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(COMPOSE_DIR / "secrets" / "webhook_token")],
                             cwd=REPO, check=False)
    assert ignored.returncode == 0, "secrets/webhook_token would be committed"


def test_every_container_is_hardened(compose):
    services = dict(compose["services"])
    services["postgres"] = _yaml("compose.ha.yaml")["services"]["postgres"]
    for name, s in services.items():
        assert s.get("read_only") is True, name
        assert "/tmp" in s.get("tmpfs", []), name
        assert s.get("healthcheck", {}).get("test"), name
        assert s.get("restart") in ("unless-stopped", "always"), name
        assert s.get("stop_grace_period"), name
    bot = compose["services"][BOT]
    assert bot["cap_drop"] == ["ALL"] and "no-new-privileges:true" in bot["security_opt"]
    assert "ports" not in bot, "the webhook needs no published port: Alertmanager is on the compose network"
    # One replica by default (two would both talk to Discord); the HA overlay makes two with an election.
    assert bot.get("deploy", {}).get("replicas", 1) == 1
    ha_bot = _yaml("compose.ha.yaml")["services"][BOT]
    assert ha_bot["deploy"]["replicas"] == 2 and ha_bot["environment"]["OPSBOT_HA__ENABLED"] == "true"
    assert "opsbot-data" in _yaml("compose.yaml")["volumes"]
    assert any(v.startswith("opsbot-data:/data") for v in bot["volumes"])


# ------------------------------------------------------------------------ each config is valid


def test_bot_config_passes_check_config():
    result = check(COMPOSE_DIR / "opsbot.yaml")
    assert not result.errors, result.render()
    # A warning about a variable of the test run's own environment is not the file's fault.
    own = [p for p in result.warnings if "environment variable" not in p.message]
    assert not own, result.render()


def test_prometheus_config_passes_promtool():
    promtool = require_program("promtool")
    proc = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=COMPOSE_DIR,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rule files found" in proc.stdout + proc.stderr


def test_alertmanager_config_passes_amtool():
    amtool = require_program("amtool")
    proc = subprocess.run([amtool, "check-config", "alertmanager.yml"], cwd=COMPOSE_DIR,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ha_settings_are_real_settings(monkeypatch, tmp_path):
    assert "ha" in Settings.model_fields
    service = _yaml("compose.ha.yaml")["services"][BOT]
    for k, v in service["environment"].items():
        monkeypatch.setenv(k, v)
    # The database URL from its secret file, as the container sees it (the example's content).
    for k, v in _secret_files(service, tmp_path).items():
        monkeypatch.setenv(k, v)
        Path(v).write_text((COMPOSE_DIR / "secrets" / f"{Path(v).name}.example").read_text())
    assert "OPSBOT_DATABASE_URL_FILE" in service["environment"]
    result = check(COMPOSE_DIR / "opsbot.yaml")
    assert not result.errors, result.render()
    assert not [p for p in result.warnings if "environment variable" in p.message], result.render()
    assert result.settings is not None and result.settings.ha.enabled
    assert result.settings.database.startswith("postgresql+psycopg://")


# ------------------------------------------------------------------------------------- wiring


def test_alertmanager_posts_to_the_bots_webhook_with_the_bots_secret(compose, bot_settings):
    am = _yaml("alertmanager.yml")
    (receiver,) = [r for r in am["receivers"] if r["name"] == am["route"]["receiver"]]
    (hook,) = receiver["webhook_configs"]
    url = urlsplit(hook["url"])
    assert url.hostname == BOT
    assert url.port == _port(bot_settings.webhook_listen)
    assert url.path == bot_settings.alerts.webhook_path
    assert str(_port(bot_settings.webhook_listen)) in [str(p) for p in compose["services"][BOT]["expose"]]

    auth = hook["http_config"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    am_secrets = _secrets(compose["services"]["alertmanager"])
    token_secret = am_secrets[auth["credentials_file"]]
    # The bot reads the same secret's file through OPSBOT_WEBHOOK_TOKEN_FILE.
    bot = compose["services"][BOT]
    assert _secrets(bot)[bot["environment"]["OPSBOT_WEBHOOK_TOKEN_FILE"]] == token_secret
    assert not bot_settings.alerts.allow_unauthenticated


def test_prometheus_scrapes_the_bot_and_alerts_to_alertmanager(compose, bot_settings):
    prom = _yaml("prometheus.yml")
    targets = {(job.get("metrics_path", "/metrics"), t)
               for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert ("/metrics", f"{BOT}:{_port(bot_settings.webhook_listen)}") in targets
    (am_target,) = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    am_listen = next(a for a in compose["services"]["alertmanager"]["command"] if a.startswith("--web.listen-address"))
    assert am_target == "alertmanager:" + am_listen.rpartition(":")[2]
    assert bot_settings.alertmanager_url == f"http://{am_target}"
    prom_listen = next(a for a in compose["services"]["prometheus"]["command"] if a.startswith("--web.listen-address"))
    assert bot_settings.prometheus_url == "http://prometheus:" + prom_listen.rpartition(":")[2]
    # Mounted where prometheus.yml's rule_files looks (relative to the config file).
    mounts = _bind_mounts(compose["services"]["prometheus"])
    for rule_file in prom["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounts


def test_the_bot_service_matches_its_config(compose, bot_settings):
    bot = compose["services"][BOT]
    mounts = _bind_mounts(bot)
    config_path = bot["command"][bot["command"].index("--config") + 1]
    assert mounts[config_path] == "./opsbot.yaml"
    secrets = _secrets(bot)
    assert secrets[bot["environment"]["OPSBOT_DISCORD_TOKEN_FILE"]] == "discord_token"
    assert secrets[str(bot_settings.kubeconfig)] == "kubeconfig"
    # The environment wins over the file: it must say the same, and the healthcheck must ask that port.
    assert bot["environment"]["OPSBOT_WEBHOOK_LISTEN"] == bot_settings.webhook_listen
    assert f"127.0.0.1:{_port(bot_settings.webhook_listen)}/healthz" in " ".join(bot["healthcheck"]["test"])
    assert bot["environment"]["OPSBOT_DATA_DIR"] == str(bot_settings.data_dir) == "/data"


def test_the_bot_reads_every_secret_from_its_mounted_file(compose, tmp_path, monkeypatch):
    ha = _yaml("compose.ha.yaml")["services"][BOT]
    bot = compose["services"][BOT]
    # The image's own entrypoint (python is PID 1): no shell wrapper that exports secrets.
    assert "entrypoint" not in bot and "entrypoint" not in ha
    secret_vars = {secret_env_name(p) for p in secret_settings()}
    for service in (bot, ha):
        env = service["environment"]
        # No secret in the environment or on the command line, only the names of files.
        assert not secret_vars & set(env), "a secret as a plain variable"
        assert not any("token" in str(arg).lower() for arg in service.get("command", [])), service.get("command")
        files = {k: v for k, v in env.items() if k.endswith("_FILE")}
        assert files and set(files) <= {v + "_FILE" for v in secret_vars}
        mounted = {**_secrets(bot), **_secrets(service)}
        for var, path in files.items():
            assert path in mounted, f"{var}={path} is not a mounted secret"
    assert {"OPSBOT_DISCORD_TOKEN_FILE", "OPSBOT_WEBHOOK_TOKEN_FILE"} <= set(bot["environment"])
    assert "OPSBOT_DATABASE_URL_FILE" in ha["environment"]

    # What the bot gets from those files, as the container would (trailing newline stripped).
    (tmp_path / "discord_token").write_text("discord-s3cret\n")
    (tmp_path / "webhook_token").write_text("webhook-s3cret\n")
    for k, v in _secret_files(bot, tmp_path).items():
        monkeypatch.setenv(k, v)
    settings = load_settings(COMPOSE_DIR / "opsbot.yaml")
    assert settings.discord_token is not None and settings.discord_token.get_secret_value() == "discord-s3cret"
    assert settings.webhook_token is not None and settings.webhook_token.get_secret_value() == "webhook-s3cret"
    # A secret file that is not there stops it with a clear error (compose would not even start it).
    (tmp_path / "webhook_token").unlink()
    result = check(COMPOSE_DIR / "opsbot.yaml")
    assert [str(p) for p in result.errors] == [
        f"error: webhook_token (from OPSBOT_WEBHOOK_TOKEN_FILE): {tmp_path / 'webhook_token'} does not exist"]


# ------------------------------------------------------------------------------- end to end


@pytest.mark.integration
async def test_an_alert_reaches_the_bot_through_the_compose_alertmanager_config(tmp_path, monkeypatch):
    from bot.world import open_world
    from tests.alerts.conftest import alertmanager_binary, am_alert, free_port, start_alertmanager, stop_alertmanager
    from tests.bot.helpers import embed_text

    alertmanager_binary()  # skip (locally) or fail (CI) without it
    settings = load_settings(COMPOSE_DIR / "opsbot.yaml")
    port = free_port()
    token = "compose-e2e-" + os.urandom(8).hex()
    secret = tmp_path / "secrets" / "webhook_token"
    secret.parent.mkdir()
    secret.write_text(token + "\n")
    (tmp_path / "secrets" / "discord_token").write_text("not-used-by-the-simulated-discord")
    # The bot finds its secrets as the compose service says (OPSBOT_*_FILE), in the same directory.
    for k, v in _secret_files(_yaml("compose.yaml")["services"][BOT], secret.parent).items():
        monkeypatch.setenv(k, v)
    # The compose file itself, with compose's names made local: the bot's host and port, the
    # secret's path, and group_wait shortened (30 s is right in production, slow in a test).
    config = (COMPOSE_DIR / "alertmanager.yml").read_text(encoding="utf-8")
    config = config.replace(f"http://{BOT}:{_port(settings.webhook_listen)}/", f"http://127.0.0.1:{port}/")
    config = config.replace("/run/secrets/webhook_token", str(secret))
    config = re.sub(r"group_wait: \S+", "group_wait: 200ms", config)
    assert f"127.0.0.1:{port}{settings.alerts.webhook_path}" in config and str(secret) in config

    am = await start_alertmanager(tmp_path / "am", config, webhook_port=port, token=token)

    def local(s: Settings) -> None:  # no cluster or Prometheus in the test: the sandbox instead
        s.kubeconfig = None
        s.prometheus_url = None
        s.guild_id = None  # the simulated guild is not the placeholder
        assert s.webhook_token is not None and s.webhook_token.get_secret_value() == token  # from the file

    try:
        async with open_world(config=COMPOSE_DIR / "opsbot.yaml", data_dir=tmp_path / "data", clock_context=False,
                              serve_http=True, webhook_listen=f"127.0.0.1:{port}",
                              alertmanager_url=am.url, tweak=local) as world:
            async with aiohttp.ClientSession() as http:  # without the secret: refused
                async with http.post(f"http://127.0.0.1:{port}{settings.alerts.webhook_path}", json={}) as r:
                    assert r.status == 401
            await am.post_alerts([am_alert("ComposeWired", service="chat", env="prod")])
            bot_id = world.bot.user.id
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                posted = [m for m in world.channels["alerts"].history()
                          if m.author.id == bot_id and "ComposeWired" in embed_text(m)]
                if posted:
                    break
                assert asyncio.get_running_loop().time() < deadline, f"no alert message; alertmanager log:\n{am.log()}"
                await asyncio.sleep(0.2)
    finally:
        stop_alertmanager(am)
