"""``opsbot check-config``: validate a config file and everything layered on it.

Every problem is collected at once, each with where it is: a YAML path such as
``services.chat-gui.envs.prodd`` plus the file line, or the ``OPSBOT_…`` variable or CLI flag
the value came from. Values are never printed, so secrets cannot leak into a terminal or a CI log.

The settings are assembled exactly as :func:`config.settings.load_settings` does (the sources of
``Settings.settings_customise_sources``, highest priority first: CLI flags, ``OPSBOT_…``
variables, the YAML file), except that the file is parsed once here with a loader that keeps line
numbers and notices duplicate keys, which PyYAML otherwise drops silently.

Output (plain text, stable for tests): problems first, one a line,
``error: services.chatgui.envs.prod.namespace (line 12): field required``; then the services ×
envs and the environments; then the permission matrix; last a verdict line. Exit code: 0 no
problems or warnings only, 1 errors, 2 the file cannot be read or parsed as a YAML mapping.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import sys
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
)

from commands.permissions import ACTIONS, SCOPED, Grant, Policy, validate_grant
from config.settings import (
    SECRET_FILE_SUFFIX,
    SERVICE_NAME,
    DockerTarget,
    PermissionsConfig,
    RoleGrants,
    SecretFilesSource,
    Settings,
    _YamlSource,
    docker_host_problem,
    secret_env_name,
    secret_settings,
    yaml_error_text,
)

Severity = Literal["error", "warning"]
Key = str | int
YamlPath = tuple[Key, ...]

ENV_PREFIX = str(Settings.model_config.get("env_prefix") or "")
ENV_DELIMITER = str(Settings.model_config.get("env_nested_delimiter") or "__")
DEFAULT_PROMOTION: list[str] = Settings.model_fields["promotion"].get_default(call_default_factory=True)
DEFAULT_EVERYONE: list[str] = PermissionsConfig.model_fields["everyone"].get_default(call_default_factory=True)

DISCORD_EPOCH_MS = 1_420_070_400_000
# Actions that change something or silence someone: worth a warning when granted to everyone.
MUTATING = {"deploy", "deploy:force", "rollback", "lock", "ack", "silence", "oncall", "maintenance", "freeze"}
SECRET_KEY = re.compile(r"token|secret|passw(or)?d|passphrase|api[-_]?key|private[-_]?key|credential", re.I)
DISCORD_TOKEN = re.compile(r"\b[MNO][A-Za-z\d_-]{23,27}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,}\b")
PLACEHOLDER = re.compile(r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$")  # $VAR or ${VAR}
BRACED_PLACEHOLDER = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?-[^}]*)?\}$")  # ${VAR}, ${VAR:-default}


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Problem:
    severity: Severity
    path: str  # dotted YAML path, "" for the file as a whole
    message: str
    line: int | None = None  # 1-based line in the config file
    source: str | None = None  # where the value came from when not the file: OPSBOT_X or --flag

    def __str__(self) -> str:
        if not self.path:  # about the file or the environment as a whole; the message says where
            return f"{self.severity}: {self.message}"
        where = self.path
        if self.line is not None:
            where += f" (line {self.line})"
        elif self.source:
            where += f" (from {self.source})"
        return f"{self.severity}: {where}: {self.message}"


@dataclass
class CheckResult:
    path: Path | None
    problems: list[Problem] = field(default_factory=list)
    # The validated settings; None when validation failed.
    settings: Settings | None = None
    # Best effort for the summary: ``settings``, or what validates once entries with errors are
    # left out (None when even that fails).
    partial: Settings | None = None
    # False when the file could not be read or parsed: nothing else was checked.
    readable: bool = True

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return self.readable and not self.errors

    @property
    def exit_code(self) -> int:
        if not self.readable:
            return 2
        return 1 if self.errors else 0

    def render(self, unicode: bool = True) -> str:
        return "\n".join(_render(self, unicode)) + "\n"


# ----------------------------------------------------------------------------- entry points


def main(path: Path | str | None = None, **overrides: Any) -> int:
    """Check, print the report to stdout, return the exit code (0 ok, 1 errors, 2 unreadable)."""
    result = check(Path(path) if path else None, **overrides)
    unicode = _can_print("✓·×")
    text = result.render(unicode=unicode)
    if not unicode:  # names and messages from the file may still hold any character
        text = text.encode("ascii", "replace").decode("ascii")
    sys.stdout.write(text)
    sys.stdout.flush()
    return result.exit_code


def check(path: Path | str | None = None, **overrides: Any) -> CheckResult:
    """Validate the file at ``path`` (default ``$OPSBOT_CONFIG``, else none) with ``OPSBOT_…``
    variables and ``overrides`` (CLI flags; None values are ignored) on top."""
    if path is None and os.environ.get("OPSBOT_CONFIG"):
        path = os.environ["OPSBOT_CONFIG"]
    path = Path(path) if path else None
    result = CheckResult(path)
    doc = _Document()
    if path is not None:
        try:
            doc = _Document.load(path)
        except _Unreadable as e:
            result.readable = False
            result.problems.append(Problem("error", "", e.message, e.line))
            return result
    given = {k: v for k, v in overrides.items() if v is not None}
    _Checker(doc, given, result).run()
    return result


# ----------------------------------------------------------------------------- reading the file


class _Unreadable(Exception):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message, self.line = message, line


@dataclass
class _Document:
    data: dict[Any, Any] = field(default_factory=dict)
    lines: dict[YamlPath, int] = field(default_factory=dict)
    duplicates: list[tuple[YamlPath, int, int]] = field(default_factory=list)  # path, line, first line
    empty: bool = False

    @classmethod
    def load(cls, path: Path) -> _Document:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise _Unreadable(f"{path}: cannot read: not UTF-8 text") from None
        except OSError as e:
            raise _Unreadable(f"{path}: cannot read: {e.strerror or e}") from None
        doc = cls()
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:  # walk first: constructing flattens merge keys into the nodes
                doc._walk(loader, node, (), frozenset(), primary=True)
            data = loader.construct_document(node) if node is not None else None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            raise _Unreadable(f"{path}: not valid YAML: {yaml_error_text(e)}", mark.line + 1 if mark else None) from None
        finally:
            loader.dispose()
        if data is None:
            doc.empty = True
            return doc
        if not isinstance(data, dict):
            raise _Unreadable(f"{path}: the top level must be a mapping (key: value lines)", 1)
        doc.data = data
        return doc

    def _walk(self, loader: yaml.SafeLoader, node: yaml.Node, path: YamlPath, stack: frozenset[int], primary: bool) -> None:
        """Record the line of every key and item; find duplicate keys (merge keys ``<<`` may override)."""
        if id(node) in stack:  # a recursive alias
            return
        stack = stack | {id(node)}
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            merged: list[yaml.Node] = []
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    merged.extend(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
                    continue
                key = loader.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue
                line = key_node.start_mark.line + 1
                if primary and key in seen:
                    self.duplicates.append((path + (key,), line, seen[key]))
                seen.setdefault(key, line)
                if primary:
                    self.lines[path + (key,)] = line  # the last one wins, as in PyYAML
                else:
                    self.lines.setdefault(path + (key,), line)
                self._walk(loader, value_node, path + (key,), stack, primary)
            for source in merged:
                self._walk(loader, source, path, stack, primary=False)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                if primary:
                    self.lines[path + (i,)] = item.start_mark.line + 1
                else:
                    self.lines.setdefault(path + (i,), item.start_mark.line + 1)
                self._walk(loader, item, path + (i,), stack, primary)


# ----------------------------------------------------------------------------- the checker


@dataclass
class _Source:
    kind: Literal["flags", "env", "file", "secret-files", "other"]
    data: dict[str, Any]


class _Checker:
    def __init__(self, doc: _Document, given: dict[str, Any], result: CheckResult) -> None:
        self.doc, self.given, self.result = doc, given, result
        self.sources: list[_Source] = []
        self.merged: dict[str, Any] = {}

    # -- plumbing

    def add(self, severity: Severity, path: YamlPath, message: str, in_file: bool = False) -> None:
        """Record a problem at ``path``; ``in_file``: about the file's text, even if overridden."""
        line, source = (self._line(path), None) if in_file else self.locate(path)
        self.result.problems.append(Problem(severity, _dotted(path, self.merged), message, line, source))

    def locate(self, path: YamlPath) -> tuple[int | None, str | None]:
        """(file line, or the variable/flag the value came from) for a path into the merged data."""
        for n in range(len(path), 0, -1):
            for src in self.sources:
                if _provides(src.data, path[:n]):
                    if src.kind == "file":
                        return self._line(path), None
                    if src.kind == "env":
                        return None, self._env_var(path[:n])
                    if src.kind == "flags":
                        return None, "--" + str(path[0]).replace("_", "-")
                    if src.kind == "secret-files":
                        return None, secret_env_name(tuple(str(p) for p in path[:n])) + SECRET_FILE_SUFFIX
                    return None, None
        return None, None

    def _line(self, path: YamlPath) -> int | None:
        for n in range(len(path), 0, -1):
            line = self.doc.lines.get(path[:n])
            if line is None and isinstance(path[n - 1], str) and path[n - 1].lstrip("-").isdigit():
                line = self.doc.lines.get(path[: n - 1] + (int(path[n - 1]),))
            if line is not None:
                return line
        return None

    def _env_var(self, path: YamlPath) -> str:
        """The OPSBOT_… variable that set this path (the longest one matching)."""
        want = [str(p).lower() for p in path]
        above: list[tuple[int, str]] = []  # variables that set this path or a level above it
        below: list[str] = []  # variables that set something inside it
        for name in sorted(os.environ):
            if not name.upper().startswith(ENV_PREFIX.upper()):
                continue
            parts = name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER)
            if parts == want[: len(parts)]:
                above.append((len(parts), name))
            elif want == parts[: len(want)]:
                below.append(name)
        if above:
            return max(above)[1]
        if below:
            return below[0] if len(below) == 1 else f"{below[0]} and {len(below) - 1} more"
        return ENV_PREFIX + ENV_DELIMITER.join(str(p).upper() for p in path)

    # -- the run

    def run(self) -> None:
        r = self.result
        if self.doc.empty:
            self.add("warning", (), "the file is empty: only defaults and OPSBOT_ variables apply")
        self._collect_sources()
        self.merged = _merge([s.data for s in self.sources])
        for path, line, first in self.doc.duplicates:
            what = "service" if len(path) == 2 and path[0] == "services" else "key"
            r.problems.append(
                Problem("error", _dotted(path, self.doc.data), f"duplicate {what} {path[-1]!r} (first at line {first}): "
                        "YAML keeps only the last one", line)
            )
        self._unknown_env_vars()
        for key in [k for k in self.merged if not isinstance(k, str)]:
            # `yes:`, `no:`, `on:` and numbers are not text in YAML; Settings(**data) cannot take them.
            self.add("error", (key,), "unknown key: not text (YAML reads yes/no/on/off and numbers as such; "
                     "quote it)")
            del self.merged[key]
        try:
            r.settings = _validate(self.merged)
        except ValidationError as e:
            for path, message in _pydantic_problems(e, self.merged):
                self.add("error", path, message)
            r.partial = _best_effort(self.merged, e)
        else:
            r.partial = r.settings
        for settings in (r.settings, r.partial):
            if settings is not None and r.path is not None:
                settings.source_file = r.path
        self._semantics()
        self._secrets()
        # Errors first, each severity in file order; problems without a line (environment) last.
        order = {"error": 0, "warning": 1}
        r.problems.sort(key=lambda p: (order[p.severity], p.line is None, p.line or 0))

    def _collect_sources(self) -> None:
        init = InitSettingsSource(Settings, init_kwargs=dict(self.given))
        try:
            env: PydanticBaseSettingsSource = EnvSettingsSource(Settings)
            env_data = env()
        except Exception as e:  # pydantic_settings.SettingsError: a complex value that is not JSON
            self.result.problems.append(Problem("error", "", f"environment: {e}"))
            env, env_data = EnvSettingsSource(Settings), {}
        dotenv, secrets = DotEnvSettingsSource(Settings), SecretsSettingsSource(Settings)
        ordered = Settings.settings_customise_sources(
            Settings, init_settings=init, env_settings=env, dotenv_settings=dotenv, file_secret_settings=secrets
        )
        for src in ordered:
            if isinstance(src, _YamlSource):
                self.sources.append(_Source("file", self.doc.data))
            elif src is init:
                self.sources.append(_Source("flags", dict(self.given)))
            elif src is env:
                self.sources.append(_Source("env", env_data))
            elif isinstance(src, SecretFilesSource):
                files, problems = src.read()
                for path, var, message in problems:
                    self.result.problems.append(Problem("error", ".".join(path), message, source=var))
                self.sources.append(_Source("secret-files", files))
            else:
                self.sources.append(_Source("other", src()))

    def _unknown_env_vars(self) -> None:
        fields = set(Settings.model_fields) - {"source_file"}
        secret_files = {secret_env_name(p) + SECRET_FILE_SUFFIX for p in secret_settings()}
        for name in sorted(os.environ):
            if not name.upper().startswith(ENV_PREFIX.upper()) or name.upper() == ENV_PREFIX + "CONFIG":
                continue
            if name.upper() in secret_files:
                continue
            if name.upper().endswith(SECRET_FILE_SUFFIX) and name[len(ENV_PREFIX):-len(SECRET_FILE_SUFFIX)].lower() in fields:
                names = ", ".join(sorted(secret_files))
                self.result.problems.append(Problem(
                    "warning", "", f"environment variable {name} is ignored: only secret settings are read from "
                    f"a file ({names})"))
                continue
            top = name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER)[0]
            if top not in fields:
                hint = _suggest(top, fields)
                hint = f" (did you mean {ENV_PREFIX}{hint.upper()}?)" if hint else ""
                self.result.problems.append(
                    Problem("warning", "", f"environment variable {name} is not a setting and is ignored{hint}")
                )

    # -- checks that need more than one field at a time

    def _semantics(self) -> None:
        m = self.merged
        services = m.get("services")
        services = services if isinstance(services, dict) else {}
        environments = m.get("environments")
        environments = environments if isinstance(environments, dict) else {}
        explicit_promotion = "promotion" in m
        raw = m.get("promotion") if explicit_promotion else DEFAULT_PROMOTION
        # (index, name): indices as in the file, for locations
        promo_items = [(i, e) for i, e in enumerate(raw) if isinstance(e, str)] if isinstance(raw, list) else []
        promotion = [e for _, e in promo_items]

        used: dict[str, list[str]] = {}  # env -> services running there
        for name, svc in services.items():
            envs = svc.get("envs") if isinstance(svc, dict) else None
            if isinstance(envs, dict):
                for env in envs:
                    used.setdefault(str(env), []).append(str(name))
        known_envs = set(environments) | set(used) | (set(promotion) if explicit_promotion else set())

        self._env_names(services, environments, promo_items if explicit_promotion else [])
        self._services(services, set(environments) | set(promotion))
        self._environments(environments, used)
        if explicit_promotion:
            self._promotion(promo_items, set(environments) | set(used))
        self._permissions(known_envs, {str(s) for s in services})
        self._maintenance(known_envs, {str(s) for s in services})
        self._misc()

    def _env_names(
        self, services: dict[Any, Any], environments: dict[Any, Any], promotion: list[tuple[int, str]]
    ) -> None:
        """Env names are matched against lowercased command arguments and written in grants."""
        places: list[tuple[Any, YamlPath]] = [(e, ("environments", e)) for e in environments]
        places += [(e, ("promotion", i)) for i, e in promotion]
        for name, svc in services.items():
            envs = svc.get("envs") if isinstance(svc, dict) else None
            places += [(e, ("services", name, "envs", e)) for e in envs] if isinstance(envs, dict) else []
        reported: set[Any] = set()
        for env, path in places:
            if env in reported or not isinstance(env, str) or re.fullmatch(SERVICE_NAME, env):
                continue
            reported.add(env)
            self.add("error", path, f"env name {env!r} must be a DNS label: lowercase letters, digits and '-'")

    def _services(self, services: dict[Any, Any], defined_envs: set[str]) -> None:
        if not services:
            self.add("warning", ("services",), "no services configured: deploy, status and logs have nothing to act on")
        targets: dict[tuple[Any, ...], YamlPath] = {}
        docker_targets: list[YamlPath] = []
        for name, svc in services.items():
            p: YamlPath = ("services", name)
            if isinstance(name, str) and not re.fullmatch(SERVICE_NAME, name):
                self.add("error", p, f"service name {name!r} must be a DNS label: lowercase letters, digits and '-'")
            if not isinstance(svc, dict):
                continue
            repo = svc.get("repository")
            if isinstance(repo, str):
                last = repo.rsplit("/", 1)[-1]
                if not repo.strip():
                    self.add("error", p + ("repository",), "must not be empty")
                elif ":" in last or "@" in last:
                    self.add("warning", p + ("repository",),
                             "looks like it has a tag or digest; give the repository only, opsbot adds ':<version>'")
            envs = svc.get("envs", {})
            if isinstance(envs, dict) and not envs:
                self.add("warning", p, "service has no envs: no command can reach it")
            if not isinstance(envs, dict):
                continue
            for env, target in envs.items():
                ep = p + ("envs", env)
                if env not in defined_envs:
                    hint = _suggest(str(env), defined_envs)
                    self.add("warning", ep, f"env {env!r} is in neither environments nor promotion: it gets default "
                             "settings (no confirmation) and no place in the promotion order"
                             + (f"; did you mean {hint!r}?" if hint else ""))
                if isinstance(target, dict):
                    key = tuple(str(target.get(k)) for k in ("type", "context", "namespace", "deployment", "container"))
                    key = (str(target.get("type", "kubernetes")), *key[1:])
                    if target.get("type") == "docker":
                        key = ("docker", str(target.get("host") or self.merged.get("docker_host")), str(target.get("container")))
                    if key in targets:
                        what = "container" if key[0] == "docker" else "deployment"
                        self.add("warning", ep, f"same target as {_dotted(targets[key], self.merged)}: "
                                 f"two names for one {what}")
                    else:
                        targets[key] = ep
                    if target.get("type") == "docker":
                        docker_targets.append(ep)
        self._docker(services, docker_targets)

    def _docker(self, services: dict[Any, Any], paths: list[YamlPath]) -> None:
        """Docker hosts: the global one must be a URL; a target with no host anywhere gets a warning."""
        host = self.merged.get("docker_host")
        if isinstance(host, str) and (problem := docker_host_problem(host)):
            self.add("error", ("docker_host",), problem)
        if host or os.environ.get("DOCKER_HOST"):
            return
        hostless = [p for p in paths if not _at(services, p[1:]).get("host")]
        if hostless:
            more = f" (and {len(hostless) - 1} more docker targets)" if len(hostless) > 1 else ""
            self.add("warning", hostless[0], "no Docker host is given for this target" + more + ": it uses "
                     "unix:///var/run/docker.sock; set docker_host (--docker-host, OPSBOT_DOCKER_HOST) "
                     "or the target's host to be sure")

    def _environments(self, environments: dict[Any, Any], used: dict[str, list[str]]) -> None:
        if not used:
            return
        for env, cfg in environments.items():
            if env not in used:
                hint = _suggest(str(env), set(used))
                self.add("warning", ("environments", env), f"no service runs in env {env!r}"
                         + (f"; did you mean {hint!r}? (that env gets default settings)" if hint else ""))
            channels = cfg.get("channels") if isinstance(cfg, dict) else None
            if isinstance(channels, list):
                for i, ch in enumerate(channels):
                    if isinstance(ch, str) and ch.startswith("#"):
                        self.add("warning", ("environments", env, "channels", i), "write the channel name without '#'")

    def _promotion(self, promotion: list[tuple[int, str]], known: set[str]) -> None:
        seen: set[str] = set()
        for i, env in promotion:
            if env in seen:
                self.add("error", ("promotion", i), f"env {env!r} appears twice")
            seen.add(env)
            if env not in known:
                hint = _suggest(env, known)
                self.add("error", ("promotion", i), f"unknown env {env!r}: not in environments and no service runs there"
                         + (f"; did you mean {hint!r}?" if hint else ""))

    def _permissions(self, envs: set[str], services: set[str]) -> None:
        perms = self.merged.get("permissions")
        perms = perms if isinstance(perms, dict) else {}
        roles = perms.get("roles", [])
        roles = roles if isinstance(roles, list) else []
        ids: dict[int, int] = {}
        names: dict[str, int] = {}
        for i, role in enumerate(roles):
            rp: YamlPath = ("permissions", "roles", i)
            if not isinstance(role, dict):
                continue
            rid = _as_int(role.get("id"))
            if rid is not None and 0 < rid < 2**64:
                self._snowflake(rp + ("id",), rid, "role")
                if rid in ids:
                    self.add("error", rp + ("id",), f"duplicate role ID (also permissions.roles[{ids[rid]}]): "
                             "only the last entry's grants would count")
                ids.setdefault(rid, i)
            name = role.get("name")
            if isinstance(name, str) and name:
                if name in names:
                    self.add("warning", rp + ("name",), f"role name {name!r} also used by permissions.roles[{names[name]}]: "
                             "the permission matrix cannot tell them apart")
                names.setdefault(name, i)
            self._grants(rp + ("grants",), role.get("grants"), envs, services)
        users = perms.get("users", {})
        if isinstance(users, dict):
            for uid, grants in users.items():
                n = _as_int(uid)
                if n is not None and 0 < n < 2**64:
                    self._snowflake(("permissions", "users", uid), n, "user")
                elif n is not None:
                    self.add("error", ("permissions", "users", uid), "a Discord user ID is a positive 64-bit snowflake")
                self._grants(("permissions", "users", uid), grants, envs, services)
        everyone = perms.get("everyone", DEFAULT_EVERYONE)
        self._grants(("permissions", "everyone"), everyone, envs, services)
        if isinstance(everyone, list):
            for i, g in enumerate(everyone):
                try:
                    grant = Grant.parse(g) if isinstance(g, str) else None
                except ValueError:
                    continue
                if grant and (grant.action == "*" or grant.action in MUTATING):
                    self.add("warning", ("permissions", "everyone", i), f"every member of the guild gets {g!r}")
        if not roles and self.merged.get("services"):
            self.add("warning", ("permissions", "roles"), "no roles: only the 'everyone' grants apply (deny by default)")

    def _grants(self, path: YamlPath, grants: Any, envs: set[str], services: set[str]) -> None:
        if not isinstance(grants, list):
            return
        for j, text in enumerate(grants):
            if not isinstance(text, str):
                continue
            problem = validate_grant(text, envs, services)
            if problem:
                hint = ""
                m = re.match(r"unknown (action|env|service) '([^']*)'", problem)
                if m:
                    pool = {"action": set(ACTIONS), "env": envs, "service": services}[m.group(1)]
                    hint = _suggest(m.group(2), pool)
                self.add("error", path + (j,), problem + (f"; did you mean {hint!r}?" if hint else ""))
                continue
            g = Grant.parse(text)
            if g.action not in ("*", *SCOPED) and (g.env != "*" or g.service != "*"):
                self.add("warning", path + (j,), f"{g.action!r} is not checked per env or service, so this grant "
                         f"allows it everywhere; write {g.action!r}")

    def _snowflake(self, path: YamlPath, value: int, what: str) -> None:
        if len(str(value)) < 17:
            self.add("error", path, f"not a Discord {what} ID: snowflakes have 17 to 20 digits "
                     f"(Developer Mode, then right-click the {what} -> Copy ID)")
        elif (value >> 22) + DISCORD_EPOCH_MS > (time.time() + 86400) * 1000:
            self.add("warning", path, f"this {what} ID would be created in the future: a typo?")

    def _maintenance(self, envs: set[str], services: set[str]) -> None:
        """Names in maintenance.recurring and freezes.scheduled must be the catalog's."""
        m = self.merged

        def env_ok(path: YamlPath, env: Any) -> None:
            if isinstance(env, str) and env not in envs:
                hint = _suggest(env, envs)
                self.add("error", path, f"no env {env!r}" + (f"; did you mean {hint!r}?" if hint else ""))

        def service_ok(path: YamlPath, service: Any) -> None:
            if isinstance(service, str) and service != "all" and service not in services:
                hint = _suggest(service, services)
                self.add("error", path, f"no service {service!r}" + (f"; did you mean {hint!r}?" if hint else ""))

        recurring = _at(m, ("maintenance",)).get("recurring")
        for name, task in (recurring.items() if isinstance(recurring, dict) else []):
            if not isinstance(task, dict):
                continue
            base = ("maintenance", "recurring", name)
            if "env" in task:
                env_ok((*base, "env"), task["env"])
            if "service" in task:
                service_ok((*base, "service"), task["service"])
            for key in ("services", "envs"):
                items = task.get(key)
                for i, item in enumerate(items if isinstance(items, list) else []):
                    (service_ok if key == "services" else env_ok)((*base, key, i), item)
            endpoints = task.get("endpoints")
            for i, ep in enumerate(endpoints if isinstance(endpoints, list) else []):
                ca = ep.get("ca_file") if isinstance(ep, dict) else None
                if isinstance(ca, str) and not Path(ca).expanduser().exists():
                    self.add("warning", (*base, "endpoints", i, "ca_file"), f"{ca} does not exist (yet)")
        scheduled = _at(m, ("freezes",)).get("scheduled")
        for name, freeze in (scheduled.items() if isinstance(scheduled, dict) else []):
            envs_ = freeze.get("envs") if isinstance(freeze, dict) else None
            for i, env in enumerate(envs_ if isinstance(envs_, list) else []):
                env_ok(("freezes", "scheduled", name, "envs", i), env)

    def _misc(self) -> None:
        m = self.merged
        for key in ("alertmanager_url", "prometheus_url"):
            url = m.get(key)
            if isinstance(url, str) and not re.match(r"^https?://[^/\s]+", url):
                self.add("error", (key,), "must be an http:// or https:// URL")
        prefix = m.get("command_prefix")
        if isinstance(prefix, str) and (not prefix or prefix != prefix.strip()):
            self.add("error", ("command_prefix",), "must be non-empty without surrounding spaces")
        channels = m.get("channels")
        if isinstance(channels, dict):
            for key, ch in channels.items():
                if isinstance(ch, str) and ch.startswith("#"):
                    self.add("warning", ("channels", key), "write the channel name without '#'")
                elif isinstance(ch, str) and not ch.strip():
                    self.add("error", ("channels", key), "must not be empty")
        metrics = m.get("metrics")
        own = metrics.get("services") if isinstance(metrics, dict) else None
        if isinstance(own, dict):
            services = m.get("services") if isinstance(m.get("services"), dict) else {}
            for svc in own:
                if svc not in services:
                    hint = _suggest(str(svc), {str(s) for s in services})
                    self.add("warning", ("metrics", "services", svc),
                             f"unknown service {svc!r}" + (f"; did you mean {hint!r}?" if hint else "; it is never used"))

        if m.get("guild_id") in (None, ""):
            self.add("warning", ("guild_id",), "not set: the bot is bound to no guild, so slash commands sync "
                     "globally and the `everyone` grants reach any server it is added to; set guild_id to your "
                     "server's ID (and turn off Public Bot in the Developer Portal)")

        ha = m.get("ha")
        if isinstance(ha, dict) and ha.get("enabled") is True:
            url = m.get("database_url")
            if not isinstance(url, str) or url.startswith("sqlite"):
                self.add("error", ("ha", "enabled"),
                         "replicas must share one database: set database_url to a PostgreSQL server "
                         "(postgresql+psycopg://…); SQLite files are per replica")

    def _secrets(self) -> None:
        """Secrets written literally in the file (never in the output)."""
        for path, value in _leaves(self.doc.data):
            if value is None or value == "" or isinstance(value, bool):
                continue
            key = path[-1] if path else ""
            text = str(value).strip()
            secret_key = isinstance(key, str) and bool(SECRET_KEY.search(key))
            if isinstance(value, str) and (BRACED_PLACEHOLDER.match(text) or secret_key and PLACEHOLDER.match(text)):
                self.add("error", path, "looks like a variable placeholder, but the file is not expanded: "
                         f"the literal text would be used; set {_env_name(path)} instead", in_file=True)
            elif secret_key:
                self.add("warning", path, f"plaintext secret in the config file: set {_env_name(path)}"
                         f"{_file_hint(path)} instead", in_file=True)
            elif isinstance(value, str) and _url_password(text):
                self.add("warning", path, f"URL with a password in the config file: set {_env_name(path)}"
                         f"{_file_hint(path)} instead", in_file=True)
            elif isinstance(value, str) and DISCORD_TOKEN.search(text):
                self.add("warning", path, "looks like a Discord token written in the config file: "
                         "set OPSBOT_DISCORD_TOKEN instead", in_file=True)


# ----------------------------------------------------------------------------- helpers


def _dotted(path: YamlPath, data: Any = None) -> str:
    """``services.chat.envs.prod``, ``permissions.roles[2].id``: list indices in brackets."""
    out, cur = "", data
    for p in path:
        if isinstance(cur, list) and isinstance(p, int):
            out += f"[{p}]"
            cur = cur[p] if 0 <= p < len(cur) else None
        else:
            text = str(p) if re.fullmatch(r"[^\s.\[\]\"']+", str(p)) else f"[{str(p)!r}]"
            out += text if not out or text.startswith("[") else f".{text}"
            cur = cur.get(p) if isinstance(cur, dict) else None
    return out


def _at(data: Any, path: YamlPath) -> dict[Any, Any]:
    """The mapping at ``path`` in ``data`` ({} when there is none)."""
    for k in path:
        data = data.get(k) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def _provides(data: Any, path: YamlPath) -> bool:
    """Whether a source's data sets the value at ``path`` (lists and scalars are set whole)."""
    cur = data
    for k in path:
        if not isinstance(cur, dict):
            return True
        if k in cur:
            cur = cur[k]
        elif str(k) in cur:
            cur = cur[str(k)]
        elif isinstance(k, str) and k.lstrip("-").isdigit() and int(k) in cur:
            cur = cur[int(k)]
        else:
            return False
    return True


def _merge(sources: list[dict[str, Any]]) -> dict[str, Any]:
    """Sources highest priority first -> one dict; nested dicts merge, anything else is replaced."""
    state: dict[str, Any] = {}
    for data in sources:
        state = _deep_update(data, state)
    return state


def _deep_update(base: dict[Any, Any], update: dict[Any, Any]) -> dict[Any, Any]:
    out = dict(base)
    for k, v in update.items():
        if k in out and isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = v
    return out


def _raw_path(loc: tuple[Any, ...], data: Any) -> tuple[YamlPath, bool]:
    """A pydantic error location -> the path into the input (keys as written); and whether it exists."""
    out: list[Key] = []
    cur, exists = data, True
    for k in loc:
        if k == "[key]":
            break
        if exists and isinstance(cur, dict):
            if k in cur:
                out.append(k)
                cur = cur[k]
                continue
            if isinstance(k, str) and k.lstrip("-").isdigit() and int(k) in cur:
                out.append(int(k))
                cur = cur[int(k)]
                continue
            if isinstance(k, str) and cur.get("type", "kubernetes") == k:
                continue  # the tag pydantic adds for a tagged union
        elif exists and isinstance(cur, list) and isinstance(k, int) and 0 <= k < len(cur):
            out.append(k)
            cur = cur[k]
            continue
        out.append(k)
        exists = False
    return tuple(out), exists


def _pydantic_problems(exc: ValidationError, data: dict[str, Any]) -> Iterator[tuple[YamlPath, str]]:
    for err in exc.errors(include_url=False, include_input=False):
        path, _ = _raw_path(err["loc"], data)
        kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
        if kind == "missing":
            message = "field required"
        elif kind == "extra_forbidden":
            allowed = _fields_at(path[:-1], data)
            hint = _suggest(str(path[-1]), allowed) if allowed else None
            message = f"unknown key {path[-1]!r}"
            if hint:
                message += f" (did you mean {hint!r}?)"
            elif allowed:
                message += f"; expected one of: {', '.join(sorted(allowed))}"
        elif kind == "union_tag_invalid":
            message = f"unknown target type {ctx.get('tag')!r}; expected {ctx.get('expected_tags')}"
        elif kind == "string_type":
            message = "expected text (quote numbers, dates and yes/no)"
        elif kind == "value_error":
            message = msg.removeprefix("Value error, ")
        else:
            message = msg[:1].lower() + msg[1:]
        if "[key]" in err["loc"]:
            message = f"invalid key: {message}"
        yield path, message


def _fields_at(path: YamlPath, data: Any = None) -> set[str] | None:
    """The field names of the model at ``path`` in Settings (for "did you mean"); in a union of
    models (the target types) the one whose ``type`` the data at ``path`` names."""
    tp: Any = Settings
    for k in path:
        tp = _step(tp, k)
        if tp is None:
            return None
        data = data.get(k) if isinstance(data, dict) else None
    tag = data.get("type", "kubernetes") if isinstance(data, dict) else None
    model = _model_of(tp, tag if isinstance(tag, str) else None)
    return set(model.model_fields) - {"source_file"} if model else None


def _model_of(tp: Any, tag: str | None = None) -> type[BaseModel] | None:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        models = [m for m in (_model_of(arg) for arg in typing.get_args(tp)) if m]
        for m in models:
            field = m.model_fields.get("type")
            if tag is not None and field is not None and field.annotation == Literal[tag]:  # type: ignore[valid-type]
                return m
        return models[0] if models else None
    return None


def _step(tp: Any, key: Key) -> Any:
    model = _model_of(tp)
    if model is not None:
        f = model.model_fields.get(str(key))
        return f.annotation if f else None
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    origin = typing.get_origin(tp)
    if origin is dict:
        return typing.get_args(tp)[1]
    if origin is list:
        return typing.get_args(tp)[0]
    return None


class _FromData(Settings):
    """Settings validated from given data only: model_validate on BaseSettings reads the
    environment (and $OPSBOT_CONFIG) again, which would undo what was merged or left out here."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: Any, init_settings: PydanticBaseSettingsSource, *args: Any, **kwargs: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _validate(data: dict[str, Any]) -> Settings:
    v = _FromData(**data)
    return Settings.model_construct(_fields_set=set(v.model_fields_set), **{k: getattr(v, k) for k in Settings.model_fields})


def _best_effort(merged: dict[str, Any], exc: ValidationError) -> Settings | None:
    """Leave out what failed (an entry missing a field goes whole) until the rest validates."""
    data = copy.deepcopy(merged)
    for _ in range(6):
        paths = set()
        for err in exc.errors(include_url=False, include_input=False):
            path, exists = _raw_path(err["loc"], data)
            keep = len(path) if exists else len(path) - 1
            if keep > 0:
                paths.add(path[:keep])
        for path in sorted(paths, key=lambda p: [(0, k) if isinstance(k, int) else (1, str(k)) for k in p], reverse=True):
            _delete(data, path)
        try:
            return _validate(data)
        except ValidationError as e:
            exc = e
    return None


def _delete(data: Any, path: YamlPath) -> None:
    cur = data
    for k in path[:-1]:
        try:
            cur = cur[k]
        except (KeyError, IndexError, TypeError):
            return
    try:
        del cur[path[-1]]
    except (KeyError, IndexError, TypeError):
        pass


def _leaves(data: Any, path: YamlPath = (), stack: frozenset[int] = frozenset()) -> Iterator[tuple[YamlPath, Any]]:
    if isinstance(data, (dict, list)):
        if id(data) in stack:  # a recursive alias
            return
        stack = stack | {id(data)}
        items = data.items() if isinstance(data, dict) else enumerate(data)
        for k, v in items:
            yield from _leaves(v, path + (k,), stack)
    else:
        yield path, data


def _env_name(path: YamlPath) -> str:
    keys = [str(p).upper() for p in path if not isinstance(p, int)]
    return ENV_PREFIX + ENV_DELIMITER.join(keys)


def _file_hint(path: YamlPath) -> str:
    """`` or OPSBOT_X_FILE`` for a secret setting (each can be read from a file)."""
    if tuple(str(p) for p in path) not in secret_settings():
        return ""
    flag = " or --token-file" if path == ("discord_token",) else ""
    return f" or {_env_name(path)}{SECRET_FILE_SUFFIX}{flag}"


def _url_password(text: str) -> bool:
    if "://" not in text:
        return False
    try:
        return bool(urlsplit(text.strip()).password)
    except ValueError:
        return False


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return None


def _suggest(word: str, pool: set[str] | list[str]) -> str | None:
    matches = difflib.get_close_matches(word, [str(p) for p in pool], n=1, cutoff=0.6)
    return matches[0] if matches else None


def _can_print(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


# ----------------------------------------------------------------------------- the report


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *rows]]


def _render(r: CheckResult, unicode: bool) -> Iterator[str]:
    yes, no = ("✓", "·") if unicode else ("yes", "-")
    for p in r.problems:
        yield str(p)
    if r.problems:
        yield ""
    s = r.partial
    if r.readable and s is not None:
        if r.settings is None:
            yield "(partial: entries with errors are left out below)"
            yield ""
        yield from _render_services(s, "×" if unicode else "x")
        yield ""
        yield from _render_environments(s, yes, no)
        yield ""
        yield from _render_matrix(s, yes, no)
        yield ""
    name = str(r.path) if r.path else "(no config file: defaults and OPSBOT_ variables)"
    if not r.readable:
        verdict = "cannot be checked"
    elif not r.problems:
        verdict = "OK"
    else:
        counts = [(len(r.errors), "error"), (len(r.warnings), "warning")]
        verdict = ", ".join(f"{n} {word}{'s' * (n != 1)}" for n, word in counts if n)
    yield f"check-config: {name}: {verdict}"


def _render_services(s: Settings, times: str) -> Iterator[str]:
    envs = s.env_order()
    yield f"services ({len(s.services)}) {times} envs ({', '.join(envs) or 'none'}):"
    rows = []
    for name, svc in s.services.items():
        if not svc.envs:
            rows.append([name, "-", "(no envs)", svc.repository])
        for env in [e for e in envs if e in svc.envs]:
            target = svc.envs[env]
            where = target.describe()
            if isinstance(target, DockerTarget) and not target.host:
                where += f" on {s.docker_host or os.environ.get('DOCKER_HOST') or 'unix:///var/run/docker.sock'}"
            rows.append([name, env, where, svc.repository])
    if rows:
        yield from _table(["service", "env", "target", "repository"], rows)
    else:
        yield "  (none)"


def _render_environments(s: Settings, yes: str, no: str) -> Iterator[str]:
    promo = [e for e in s.promotion if e in s.env_order()]
    yield f"environments (promotion: {' -> '.join(promo) or 'none'}):"
    rows = []
    for env in s.env_order():
        c = s.env(env)
        rows.append([
            env + ("" if env in s.environments else " (defaults)"),
            yes if c.confirm else no, str(c.approvals), f"{c.timeout_seconds}s",
            yes if c.auto_rollback else no, ", ".join(c.channels) or "any",
        ])
    if rows:
        yield from _table(["env", "confirm", "approvals", "timeout", "auto-rollback", "channels"], rows)
    else:
        yield "  (none)"


def _render_matrix(s: Settings, yes: str, no: str) -> Iterator[str]:
    perms = _parseable(s.permissions)
    envs = s.env_order()
    yield f"permissions ({yes} every env, env names: only those, {no} not allowed; deny by default):"
    rows = []
    for label, row in Policy(perms).matrix(envs):
        rows.append([label] + [yes if row[a] == "all" else (row[a] or no) for a in ACTIONS])
    yield from _table(["role", *ACTIONS], rows)
    scoped = [
        (role.name or str(role.id), g)
        for role in perms.roles
        for g in role.grants
        if Grant.parse(g).service != "*"
    ] + [("everyone", g) for g in perms.everyone if Grant.parse(g).service != "*"]
    if scoped:
        yield "  limited to some services (the matrix shows them as if for every service):"
        yield from _table(["role", "grant"], [list(x) for x in scoped], indent="    ")[1:]
    if perms.users:
        yield "  users with their own grants:"
        yield from _table(["user", "grants"], [[str(u), ", ".join(gs)] for u, gs in perms.users.items()], indent="    ")[1:]


def _parseable(p: PermissionsConfig) -> PermissionsConfig:
    """Without grants that do not parse (reported as errors), so the matrix can still be shown."""

    def ok(g: str) -> bool:
        try:
            Grant.parse(g)
        except ValueError:
            return False
        return True

    return PermissionsConfig(
        roles=[RoleGrants(id=r.id, name=r.name, grants=[g for g in r.grants if ok(g)]) for r in p.roles],
        users={u: [g for g in gs if ok(g)] for u, gs in p.users.items()},
        everyone=[g for g in p.everyone if ok(g)],
    )
