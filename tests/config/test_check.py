"""`opsbot check-config`: every problem at once, located, with the right exit code."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from commands.permissions import ACTIONS, Policy
from config.check import CheckResult, Problem, check, main
from config.settings import Settings, load_settings
from sandbox import world

DATA = Path(__file__).parent / "data"
EXAMPLE = Path(__file__).parents[2] / "config" / "examples" / "opsbot.example.yaml"


GUILD = "guild_id: 1063245997672297000\n"
UNSET_GUILD = ("not set: the bot is bound to no guild, so slash commands sync globally and the `everyone` "
               "grants reach any server it is added to; set guild_id to your server's ID (and turn off "
               "Public Bot in the Developer Portal)")


def _write(tmp_path: Path, text: str, *, guild: bool = True) -> Path:
    """The config file; with ``guild`` a guild_id line is added last (unless there is one), since
    every case but one is about something else (test_an_unset_guild_id_is_warned)."""
    f = tmp_path / "opsbot.yaml"
    text = textwrap.dedent(text).lstrip("\n")
    if guild and not re.search(r"^guild_id:", text, re.M):
        text += ("" if text.endswith("\n") or not text else "\n") + GUILD
    f.write_text(text, encoding="utf-8")
    return f


def _lines(result: CheckResult) -> list[str]:
    return [str(p) for p in result.problems]


# A small valid config; every case below breaks one thing in a copy of it.
VALID = """
services:
  chat:
    repository: registry.local/dgg/chat
    envs:
      prod: {namespace: prod, deployment: chat}
environments:
  prod: {confirm: true}
promotion: [prod]
permissions:
  roles:
    - {id: 1063245997674031186, name: Mod, grants: [deploy, status]}
"""


def test_the_valid_base_is_valid(tmp_path: Path) -> None:
    result = check(_write(tmp_path, VALID))
    assert result.problems == []
    assert result.exit_code == 0


CASES: list[tuple[str, str, list[str]]] = [
    (
        "target field missing",
        VALID.replace("{namespace: prod, deployment: chat}", "{namespace: prod}"),
        ["error: services.chat.envs.prod.deployment (line 5): field required"],
    ),
    (
        "misspelt target key",
        VALID.replace("{namespace: prod, deployment: chat}", "{namespace: prod, deployment: chat, namespce: x}"),
        ["error: services.chat.envs.prod.namespce (line 5): unknown key 'namespce' (did you mean 'namespace'?)"],
    ),
    (
        "unknown target type",
        VALID.replace("{namespace: prod, deployment: chat}", "{type: nomad, namespace: prod, deployment: chat}"),
        ["error: services.chat.envs.prod (line 5): unknown target type 'nomad'; expected 'kubernetes', 'docker'"],
    ),
    (
        "service without envs",
        VALID.replace("services:\n", "services:\n  auth: {repository: registry.local/dgg/auth}\n"),
        ["warning: services.auth (line 2): service has no envs: no command can reach it"],
    ),
    (
        "service name not a DNS label",
        VALID.replace("  chat:\n", "  Chat_GUI:\n").replace("grants: [deploy, status]", "grants: [status]"),
        ["error: services.Chat_GUI (line 2): service name 'Chat_GUI' must be a DNS label: lowercase letters, digits and '-'"],
    ),
    (
        "repository with a tag",
        VALID.replace("registry.local/dgg/chat\n", "registry.local:5000/dgg/chat:v1.4.0\n"),
        ["warning: services.chat.repository (line 3): looks like it has a tag or digest; give the repository only, "
         "opsbot adds ':<version>'"],
    ),
    (
        "env typo in a service",
        VALID.replace("      prod: {namespace", "      prodd: {namespace"),
        ["warning: services.chat.envs.prodd (line 5): env 'prodd' is in neither environments nor promotion: it gets "
         "default settings (no confirmation) and no place in the promotion order; did you mean 'prod'?",
         "warning: environments.prod (line 7): no service runs in env 'prod'; did you mean 'prodd'? "
         "(that env gets default settings)"],
    ),
    (
        "env name with capitals",
        VALID.replace("      prod: {namespace", "      Prod: {namespace").replace("promotion: [prod]", "promotion: [Prod, prod]"),
        ["error: promotion[0] (line 8): env name 'Prod' must be a DNS label: lowercase letters, digits and '-'",
         "warning: environments.prod (line 7): no service runs in env 'prod'; did you mean 'Prod'? "
         "(that env gets default settings)"],
    ),
    (
        "promotion names an unknown env",
        VALID.replace("promotion: [prod]", "promotion: [staging, prod, prod]"),
        ["error: promotion[0] (line 8): unknown env 'staging': not in environments and no service runs there",
         "error: promotion[2] (line 8): env 'prod' appears twice"],
    ),
    (
        "two services on one deployment",
        VALID.replace("services:\n", "services:\n  chat2:\n    repository: r/chat\n    envs:\n"
                      "      prod: {namespace: prod, deployment: chat}\n"),
        ["warning: services.chat.envs.prod (line 9): same target as services.chat2.envs.prod: two names for one deployment"],
    ),
    (
        "timeout out of range",
        VALID.replace("{confirm: true}", "{confirm: true, timeout_seconds: 5}"),
        ["error: environments.prod.timeout_seconds (line 7): input should be greater than or equal to 10"],
    ),
    (
        "misspelt top-level key",
        "discord_tokn: x\n" + VALID,
        ["error: discord_tokn (line 1): unknown key 'discord_tokn' (did you mean 'discord_token'?)"],
    ),
    (
        "unknown top-level key",
        "frobnicate: 3\n" + VALID,
        # Every top-level setting is offered (sections are added by several features at once).
        ["error: frobnicate (line 1): unknown key 'frobnicate'; expected one of: "
         + ", ".join(sorted(name for name, f in Settings.model_fields.items() if not f.exclude))],
    ),
    (
        "unknown action in a grant",
        VALID.replace("grants: [deploy, status]", "grants: [deploy, statsu]"),
        ["error: permissions.roles[0].grants[1] (line 11): unknown action 'statsu' in grant 'statsu'; did you mean 'status'?"],
    ),
    (
        "unknown env in a grant",
        VALID.replace("grants: [deploy, status]", "grants: ['deploy:prodd', status]"),
        ["error: permissions.roles[0].grants[0] (line 11): unknown env 'prodd' in grant 'deploy:prodd'; did you mean 'prod'?"],
    ),
    (
        "unknown service in a grant",
        VALID.replace("grants: [deploy, status]", "grants: ['deploy:prod:chat-gui', status]"),
        ["error: permissions.roles[0].grants[0] (line 11): unknown service 'chat-gui' in grant 'deploy:prod:chat-gui'; "
         "did you mean 'chat'?"],
    ),
    (
        "malformed grant",
        VALID.replace("grants: [deploy, status]", "grants: ['deploy:prod:chat:x', status]"),
        ["error: permissions.roles[0].grants[0] (line 11): grant 'deploy:prod:chat:x' is not action[:env[:service]]"],
    ),
    (
        "env scope on an action that is not scoped",
        VALID.replace("grants: [deploy, status]", "grants: ['ack:prod', status]"),
        ["warning: permissions.roles[0].grants[0] (line 11): 'ack' is not checked per env or service, so this grant "
         "allows it everywhere; write 'ack'"],
    ),
    (
        "role ID not positive",
        VALID.replace("id: 1063245997674031186", "id: -5"),
        ["error: permissions.roles[0].id (line 11): a Discord role ID is a positive 64-bit snowflake"],
    ),
    (
        "role ID too short for a snowflake",
        VALID.replace("id: 1063245997674031186", "id: 42"),
        ["error: permissions.roles[0].id (line 11): not a Discord role ID: snowflakes have 17 to 20 digits "
         "(Developer Mode, then right-click the role -> Copy ID)"],
    ),
    (
        "role ID not a number",
        VALID.replace("id: 1063245997674031186", "id: Mod"),
        ["error: permissions.roles[0].id (line 11): input should be a valid integer, unable to parse string as an integer"],
    ),
    (
        "duplicated role ID",
        VALID + "    - {id: 1063245997674031186, name: Admin, grants: ['*']}\n",
        ["error: permissions.roles[1].id (line 12): duplicate role ID (also permissions.roles[0]): "
         "only the last entry's grants would count"],
    ),
    (
        "role ID missing",
        VALID.replace("{id: 1063245997674031186, name: Mod", "{name: Mod"),
        ["error: permissions.roles[0].id (line 11): field required"],
    ),
    (
        "user ID key not a number",
        VALID + "  users:\n    alice: [deploy]\n",
        ["error: permissions.users.alice (line 13): invalid key: input should be a valid integer, unable to parse "
         "string as an integer"],
    ),
    (
        "everyone may deploy",
        VALID + "  everyone: [help, perms, 'deploy:prod']\n",
        ["warning: permissions.everyone[2] (line 12): every member of the guild gets 'deploy:prod'"],
    ),
    (
        "bad timezone",
        "timezone: Europe/Berln\n" + VALID,
        ["error: timezone (line 1): unknown timezone 'Europe/Berln'; use an IANA name like Europe/Berlin"],
    ),
    (
        "bad regex",
        "redact_patterns: ['token=\\S+', '(unclosed']\n" + VALID,
        ["error: redact_patterns[1] (line 1): invalid regular expression: missing ), unterminated subpattern at position 0"],
    ),
    (
        "listen without port",
        "webhook_listen: 0.0.0.0\n" + VALID,
        ["error: webhook_listen (line 1): expected HOST:PORT, e.g. 127.0.0.1:8080 or [::]:8080"],
    ),
    (
        "listen given as a number",
        "webhook_listen: 8080\n" + VALID,
        ["error: webhook_listen (line 1): expected text (quote numbers, dates and yes/no)"],
    ),
    (
        "URL without scheme",
        "alertmanager_url: alertmanager:9093\n" + VALID,
        ["error: alertmanager_url (line 1): must be an http:// or https:// URL"],
    ),
    (
        "channel with a hash",
        "channels: {ops: '#ops'}\n" + VALID,
        ["warning: channels.ops (line 1): write the channel name without '#'"],
    ),
    (
        "no roles",
        VALID.split("permissions:")[0],
        ["warning: permissions.roles: no roles: only the 'everyone' grants apply (deny by default)"],
    ),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_config(tmp_path: Path, text: str, expected: list[str]) -> None:
    result = check(_write(tmp_path, text))
    assert _lines(result) == expected
    assert result.exit_code == (1 if any(e.startswith("error") for e in expected) else 0)


def test_every_problem_at_once_in_file_order() -> None:
    result = check(DATA / "many_problems.yaml")
    assert _lines(result) == [
        "error: timezone (line 1): unknown timezone 'Europe/Berln'; use an IANA name like Europe/Berlin",
        "error: webhook_listen (line 2): expected HOST:PORT, e.g. 127.0.0.1:8080 or [::]:8080",
        "error: redact_patterns[1] (line 3): invalid regular expression: missing ), unterminated subpattern at position 0",
        "error: promotion[1] (line 4): unknown env 'stagin': not in environments and no service runs there",
        "error: environments.prod.timeout_seconds (line 6): input should be greater than or equal to 10",
        "error: services.chatgui.envs.prod.deployment (line 12): field required",
        "error: services.chat.envs.prod.replicas (line 18): unknown key 'replicas'; "
        "expected one of: container, context, deployment, namespace, type",
        "error: permissions.roles[0].id (line 21): not a Discord role ID: snowflakes have 17 to 20 digits "
        "(Developer Mode, then right-click the role -> Copy ID)",
        "error: permissions.roles[0].grants[1] (line 23): unknown action 'deploi' in grant 'deploi'; did you mean 'deploy'?",
        "error: permissions.roles[0].grants[2] (line 23): unknown service 'chat-gui' in grant 'deploy:prod:chat-gui'; "
        "did you mean 'chatgui'?",
        "error: permissions.roles[2].id (line 27): duplicate role ID (also permissions.roles[1]): "
        "only the last entry's grants would count",
        "warning: environments.prdo (line 7): no service runs in env 'prdo'; did you mean 'prod'? "
        "(that env gets default settings)",
        "warning: services.chatgui.envs.prodd (line 13): env 'prodd' is in neither environments nor promotion: it gets "
        "default settings (no confirmation) and no place in the promotion order; did you mean 'prod'?",
    ]
    assert result.settings is None and result.exit_code == 1
    # What validates is still summarised: chatgui without prod (no deployment), chat without the
    # unknown key, the three roles.
    assert result.partial is not None
    assert {s: sorted(c.envs) for s, c in result.partial.services.items()} == {"chatgui": ["prodd"], "chat": ["dev", "prod"]}
    assert len(result.partial.permissions.roles) == 3


# ----------------------------------------------------------------------------- duplicates


def test_duplicate_service_and_keys_are_found() -> None:
    result = check(DATA / "duplicates.yaml")
    assert _lines(result) == [
        "error: services.chat.envs.prod.namespace (line 13): duplicate key 'namespace' (first at line 11): "
        "YAML keeps only the last one",
        "error: services.chat-gui (line 14): duplicate service 'chat-gui' (first at line 3): YAML keeps only the last one",
        "error: promotion (line 19): duplicate key 'promotion' (first at line 18): YAML keeps only the last one",
        "warning: permissions.roles: no roles: only the 'everyone' grants apply (deny by default)",
    ]
    assert result.exit_code == 1


def test_merge_keys_may_override_without_a_duplicate() -> None:
    result = check(DATA / "anchors.yaml")
    assert result.problems == []
    assert result.settings is not None
    assert result.settings.services["chat-gui"].envs["prod"].describe() == "k8s sandbox/prod/deploy/chat-gui"


# ----------------------------------------------------------------------------- secrets


def test_plaintext_secrets_are_warned_and_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(DATA / "secrets.yaml")
    out = capsys.readouterr()
    assert code == 0  # warnings only
    assert "DoNotPrintMe" not in out.out + out.err
    problems = out.out.split("\n\n")[0].splitlines()
    assert problems == [
        "warning: discord_token (line 1): plaintext secret in the config file: set OPSBOT_DISCORD_TOKEN "
        "or OPSBOT_DISCORD_TOKEN_FILE or --token-file instead",
        "warning: webhook_token (line 2): plaintext secret in the config file: set OPSBOT_WEBHOOK_TOKEN "
        "or OPSBOT_WEBHOOK_TOKEN_FILE instead",
        "warning: database_url (line 3): URL with a password in the config file: set OPSBOT_DATABASE_URL "
        "or OPSBOT_DATABASE_URL_FILE instead",
        "warning: permissions.roles: no roles: only the 'everyone' grants apply (deny by default)",
    ]


def test_a_token_under_any_key_is_noticed(tmp_path: Path) -> None:
    token = "MTA2MzI0NTk5NzY3MjI5NzQxNw.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789"
    result = check(_write(tmp_path, VALID.replace("registry.local/dgg/chat\n", f"registry.local/dgg/chat\n    description: {token}\n")))
    assert _lines(result) == [
        "warning: services.chat.description (line 4): looks like a Discord token written in the config file: "
        "set OPSBOT_DISCORD_TOKEN instead"
    ]
    assert token not in result.render()


def test_an_unexpanded_placeholder_is_an_error(tmp_path: Path) -> None:
    result = check(_write(tmp_path, "discord_token: ${DISCORD_TOKEN}\n" + VALID))
    assert _lines(result) == [
        "error: discord_token (line 1): looks like a variable placeholder, but the file is not expanded: "
        "the literal text would be used; set OPSBOT_DISCORD_TOKEN instead"
    ]


def test_a_yaml_syntax_error_does_not_print_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(DATA / "bad_syntax.yaml")
    out = capsys.readouterr().out
    assert code == 2
    assert "DoNotPrintMe" not in out
    assert out.splitlines() == [
        f"error: {DATA / 'bad_syntax.yaml'}: not valid YAML: line 4, column 28: mapping values are not allowed here",
        "",
        f"check-config: {DATA / 'bad_syntax.yaml'}: cannot be checked",
    ]


def test_a_placeholder_anywhere_is_an_error(tmp_path: Path) -> None:
    result = check(_write(tmp_path, "database_url: ${DATABASE_URL}\n" + VALID))
    assert _lines(result) == [
        "error: database_url (line 1): looks like a variable placeholder, but the file is not expanded: "
        "the literal text would be used; set OPSBOT_DATABASE_URL instead"
    ]


def test_a_secret_in_the_file_is_reported_even_when_the_environment_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSBOT_DISCORD_TOKEN", "from-the-env")
    result = check(_write(tmp_path, "discord_token: in-the-file-DoNotPrintMe\n" + VALID))
    assert _lines(result) == [
        "warning: discord_token (line 1): plaintext secret in the config file: set OPSBOT_DISCORD_TOKEN "
        "or OPSBOT_DISCORD_TOKEN_FILE or --token-file instead"
    ]
    assert result.settings is not None
    assert result.settings.discord_token.get_secret_value() == "from-the-env"  # type: ignore[union-attr]


def test_secrets_from_the_environment_are_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_DISCORD_TOKEN", "from-the-env-DoNotPrintMe")
    result = check(_write(tmp_path, VALID))
    assert result.problems == []
    assert result.settings is not None and result.settings.discord_token is not None
    assert "DoNotPrintMe" not in result.render()


# ----------------------------------------------------------------------------- environment and flags


def test_env_var_overrides_the_file_and_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_ENVIRONMENTS__PROD__TIMEOUT_SECONDS", "1200")
    monkeypatch.setenv("OPSBOT_PERMISSIONS__EVERYONE", '["help", "perms", "status"]')
    f = _write(tmp_path, VALID)
    result = check(f)
    assert result.problems == []
    s = result.settings
    assert s is not None
    assert (s.environments["prod"].confirm, s.environments["prod"].timeout_seconds) == (True, 1200)
    assert s.permissions.everyone == ["help", "perms", "status"]
    assert [r.name for r in s.permissions.roles] == ["Mod"]  # the file's roles are kept
    # Exactly what the bot itself would load.
    assert s.model_dump() == load_settings(f).model_dump()


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_ENVIRONMENTS__PROD__TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("OPSBOT_TIMEZNE", "Europe/Berlin")
    result = check(_write(tmp_path, VALID))
    assert _lines(result) == [
        "error: environments.prod.timeout_seconds (from OPSBOT_ENVIRONMENTS__PROD__TIMEOUT_SECONDS): "
        "input should be greater than or equal to 10",
        "warning: environment variable OPSBOT_TIMEZNE is not a setting and is ignored (did you mean OPSBOT_TIMEZONE?)",
    ]


def test_a_complex_env_var_that_is_not_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_PROMOTION", "dev,prod")
    result = check(_write(tmp_path, VALID))
    assert _lines(result) == [
        'error: environment: error parsing value for field "promotion" from source "EnvSettingsSource"'
    ]


def test_overrides_win_and_are_located_as_flags(tmp_path: Path) -> None:
    f = _write(tmp_path, "webhook_listen: 0.0.0.0:9000\n" + VALID)
    assert check(f, webhook_listen="127.0.0.1:0", kubeconfig=None).settings.webhook_listen == "127.0.0.1:0"  # type: ignore[union-attr]
    result = check(f, webhook_listen="nope")
    assert _lines(result) == [
        "error: webhook_listen (from --webhook-listen): expected HOST:PORT, e.g. 127.0.0.1:8080 or [::]:8080"
    ]


def test_opsbot_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = _write(tmp_path, VALID.replace("{namespace: prod}", ""))
    monkeypatch.setenv("OPSBOT_CONFIG", str(f))
    result = check(None)
    assert result.path == f and result.problems == []


def test_no_file_at_all_checks_defaults(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(None) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:2] == [
        "warning: services: no services configured: deploy, status and logs have nothing to act on",
        f"warning: guild_id: {UNSET_GUILD}",
    ]
    assert out.splitlines()[-1] == "check-config: (no config file: defaults and OPSBOT_ variables): 2 warnings"


# ----------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    "name, code",
    [
        ("../../../config/examples/opsbot.example.yaml", 0),
        ("secrets.yaml", 0),  # warnings only
        ("many_problems.yaml", 1),
        ("duplicates.yaml", 1),
        ("bad_syntax.yaml", 2),
        ("not_a_mapping.yaml", 2),
        ("does-not-exist.yaml", 2),
    ],
)
def test_exit_codes(name: str, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(DATA / name) == code
    assert check(DATA / name).exit_code == code


def test_unreadable_file_says_why(tmp_path: Path) -> None:
    result = check(tmp_path / "nope.yaml")
    assert not result.readable
    assert _lines(result) == [f"error: {tmp_path / 'nope.yaml'}: cannot read: No such file or directory"]
    assert check(DATA / "not_a_mapping.yaml").problems == [
        Problem("error", "", f"{DATA / 'not_a_mapping.yaml'}: the top level must be a mapping (key: value lines)", 1)
    ]


def test_an_empty_file_is_a_warning(tmp_path: Path) -> None:
    result = check(_write(tmp_path, "# nothing yet\n", guild=False))
    assert _lines(result)[0] == "warning: the file is empty: only defaults and OPSBOT_ variables apply"
    assert result.exit_code == 0


# ----------------------------------------------------------------------------- the example file


def test_the_example_passes_without_any_problem(capsys: pytest.CaptureFixture[str]) -> None:
    # The example is the sandbox world, which names no guild: only that is warned.
    assert main(EXAMPLE) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:2] == [f"warning: guild_id: {UNSET_GUILD}", ""]
    assert out.splitlines()[2].startswith("services (5) × envs (dev, staging, prod):")
    assert out.splitlines()[-1] == f"check-config: {EXAMPLE}: 1 warning"
    assert check(EXAMPLE).settings.model_dump() == load_settings(EXAMPLE).model_dump()  # type: ignore[union-attr]


def test_the_example_is_the_sandbox_world() -> None:
    s = load_settings(EXAMPLE)
    assert list(s.services) == world.SERVICES
    assert s.env_order() == world.ENVS
    for name, svc in s.services.items():
        assert svc.repository == world.REPOSITORY.format(service=name)
        assert svc.description == world.SERVICE_DESCRIPTIONS[name]
        for env in world.ENVS:
            t = svc.envs[env]
            assert (t.context, t.namespace, t.deployment) == ("sandbox", env, name)
    assert s.environments["prod"].confirm and not s.environments["staging"].confirm
    assert {r.name: r.grants for r in s.permissions.roles} == world.ROLE_GRANTS
    ids = [r.id for r in s.permissions.roles]
    assert len(set(ids)) == len(ids) and all(18 <= len(str(i)) <= 19 for i in ids)
    assert s.discord_token is None and s.webhook_token is None
    assert {s.channels.ops, s.channels.alerts, s.channels.deploys} == set(world.CHANNELS)


def test_the_example_documents_env_overrides() -> None:
    text = EXAMPLE.read_text()
    for needle in ("OPSBOT_DISCORD_TOKEN", "OPSBOT_PERMISSIONS__EVERYONE", "OPSBOT_ENVIRONMENTS__PROD__TIMEOUT_SECONDS",
                   "__", "OPSBOT_CONFIG", "--token-file"):
        assert needle in text


def test_the_example_as_a_packaged_file_is_found() -> None:
    # pyproject ships config/examples/*.yaml as package data.
    import config

    assert (Path(config.__file__).parent / "examples" / "opsbot.example.yaml").is_file()


# ----------------------------------------------------------------------------- the report


def _matrix(out: str) -> dict[str, dict[str, str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("permissions ("))
    header = re.split(r"\s{2,}", lines[start + 1].strip())
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("  ") or line.rstrip().endswith(":"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    return rows


def test_report_sections_and_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    main(EXAMPLE)
    out = capsys.readouterr().out
    sections = [block.splitlines()[0] for block in out.split("\n\n")]
    assert sections == [
        f"warning: guild_id: {UNSET_GUILD}",
        "services (5) × envs (dev, staging, prod):",
        "environments (promotion: dev -> staging -> prod):",
        "permissions (✓ every env, env names: only those, · not allowed; deny by default):",
        f"check-config: {EXAMPLE}: 1 warning",
    ]
    assert "  chat-gui  prod     k8s sandbox/prod/deploy/chat-gui     registry.local/dgg/chat-gui" in out
    assert re.search(r"^  prod +✓ +0 +900s +✓ +any$", out, re.M)
    m = _matrix(out)
    assert list(m) == ["everyone", "Admin", "Mod", "On-call", "Member"]
    assert all(list(row) == list(ACTIONS) for row in m.values())
    assert m["Admin"] == dict.fromkeys(ACTIONS, "✓")
    assert (m["Mod"]["deploy"], m["Mod"]["ack"], m["On-call"]["ack"], m["Member"]["deploy"]) == ("✓", "·", "✓", "·")
    assert (m["everyone"]["help"], m["everyone"]["status"]) == ("✓", "·")


def test_matrix_shows_env_lists_and_service_scoped_grants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _write(tmp_path, """
        services:
          chat:
            repository: r/chat
            envs:
              staging: {namespace: staging, deployment: chat}
              prod: {namespace: prod, deployment: chat}
        permissions:
          roles:
            - {id: 1063245997674031186, name: Frontend, grants: ['deploy:staging', 'deploy:prod:chat', logs]}
          users:
            808849716020558253: ['deploy:force']
        """)
    assert main(f) == 0
    out = capsys.readouterr().out
    m = _matrix(out)
    assert (m["Frontend"]["deploy"], m["Frontend"]["logs"], m["Frontend"]["status"]) == ("staging,prod", "✓", "·")
    assert "  limited to some services (the matrix shows them as if for every service):\n    Frontend  deploy:prod:chat\n" in out
    assert "  users with their own grants:\n    808849716020558253  deploy:force\n" in out
    # Policy.matrix is the source of truth for the cells.
    policy_row = dict(Policy(load_settings(f).permissions).matrix(["staging", "prod"]))["Frontend"]
    assert policy_row["deploy"] == "staging,prod"


def test_partial_summary_when_there_are_errors(capsys: pytest.CaptureFixture[str]) -> None:
    main(DATA / "many_problems.yaml")
    out = capsys.readouterr().out
    assert "(partial: entries with errors are left out below)" in out
    assert re.search(r"^  chat +dev +k8s dev/deploy/chat +registry.local/dgg/chat$", out, re.M)
    assert _matrix(out)["Member"]["status"] == "✓"  # the later duplicate role wins, as in Policy


def test_ascii_fallback() -> None:
    text = check(EXAMPLE).render(unicode=False)
    assert text.isascii()
    assert text.splitlines()[2] == "services (5) x envs (dev, staging, prod):"
    assert re.search(r"^  prod +yes +0 +900s +yes +any$", text, re.M)


def test_ha_needs_a_shared_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, VALID + "ha: {enabled: true}\n")
    result = check(path)
    assert result.exit_code == 1
    assert any(p.path == "ha.enabled" and "share one database" in p.message for p in result.errors), _lines(result)
    # The URL may come from the environment, as in deploy/kubernetes (a Secret).
    monkeypatch.setenv("OPSBOT_DATABASE_URL", "postgresql+psycopg://opsbot@db:5432/opsbot")
    assert check(path).problems == []


def test_ha_timing_must_leave_room(tmp_path: Path) -> None:
    text = VALID + ("database_url: postgresql+psycopg://opsbot@db/opsbot\n"
                    "ha: {enabled: true, lease_duration_seconds: 10, renew_deadline_seconds: 10}\n")
    result = check(_write(tmp_path, text))
    assert result.exit_code == 1
    assert any("renew_deadline_seconds must be shorter" in p.message for p in result.errors), _lines(result)
