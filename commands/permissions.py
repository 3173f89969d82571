"""The permission policy: Discord role IDs -> grants. Deny by default.

A grant is ``action[:env[:service]]``; any part may be ``*``; missing parts mean "any".
Examples: ``status`` (status everywhere), ``deploy:staging``, ``deploy:prod:chat-gui``,
``rollback:*``, ``*`` (everything).

No discord import: the bot layer passes plain role and user IDs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from config.settings import PermissionsConfig

# Every action a command may require. Grants naming anything else are config errors.
ACTIONS: dict[str, str] = {
    "help": "see the command list",
    "perms": "see who may do what",
    "status": "see service status",
    "deploy": "deploy a version",
    "deploy:force": "deploy during a freeze (with --force)",
    "rollback": "roll back to an earlier revision",
    "history": "see the revision history",
    "logs": "read service logs",
    "lock": "lock and unlock deploy targets",
    "audit": "read the audit log",
    "ack": "acknowledge incidents",
    "silence": "create and expire Alertmanager silences",
    "alerts": "see live alerts and incidents",
    "oncall": "change the on-call rotation",
    "maintenance": "schedule maintenance windows",
    "freeze": "freeze and unfreeze deploys",
    "query": "run PromQL queries",
}

# Actions whose grants may be scoped to env and service.
SCOPED = {"status", "deploy", "rollback", "history", "logs", "lock", "audit", "maintenance", "freeze"}


@dataclass(frozen=True, slots=True)
class Grant:
    action: str
    env: str = "*"
    service: str = "*"

    @classmethod
    def parse(cls, text: str) -> Grant:
        text = text.strip()
        if text == "*":
            return cls("*")
        # "deploy:force" is one action name, optionally scoped after it.
        if text == "deploy:force" or text.startswith("deploy:force:"):
            rest = text[len("deploy:force:") :]
            parts = ["deploy:force", *(rest.split(":") if rest else [])]
        else:
            parts = text.split(":")
        if len(parts) > 3 or any(p == "" for p in parts):
            raise ValueError(f"grant {text!r} is not action[:env[:service]]")
        return cls(*parts)  # type: ignore[arg-type]

    def matches(self, action: str, env: str | None, service: str | None) -> bool:
        if self.action not in ("*", action):
            return False
        if env is not None and self.env not in ("*", env):
            return False
        if service is not None and self.service not in ("*", service):
            return False
        return True

    def __str__(self) -> str:
        parts = [self.action, self.env, self.service]
        while len(parts) > 1 and parts[-1] == "*":
            parts.pop()
        return ":".join(parts)


def validate_grant(text: str, envs: Iterable[str], services: Iterable[str]) -> str | None:
    """Return a problem with this grant, or None."""
    try:
        g = Grant.parse(text)
    except ValueError as e:
        return str(e)
    if g.action != "*" and g.action not in ACTIONS:
        return f"unknown action {g.action!r} in grant {text!r}"
    if g.env != "*" and g.env not in set(envs):
        return f"unknown env {g.env!r} in grant {text!r}"
    if g.service != "*" and g.service not in set(services):
        return f"unknown service {g.service!r} in grant {text!r}"
    return None


class Policy:
    """Answers "may this member do that?" from role IDs and user ID."""

    def __init__(self, config: PermissionsConfig) -> None:
        self._roles: dict[int, tuple[str, list[Grant]]] = {
            r.id: (r.name or str(r.id), [Grant.parse(g) for g in r.grants]) for r in config.roles
        }
        self._users = {uid: [Grant.parse(g) for g in gs] for uid, gs in config.users.items()}
        self._everyone = [Grant.parse(g) for g in config.everyone]

    def grants(self, user_id: int, role_ids: Iterable[int]) -> list[tuple[str, Grant]]:
        """Every grant the member holds, with where it comes from."""
        out: list[tuple[str, Grant]] = [("everyone", g) for g in self._everyone]
        for rid in role_ids:
            if rid in self._roles:
                label, gs = self._roles[rid]
                out.extend((f"role {label}", g) for g in gs)
        out.extend(("user", g) for g in self._users.get(user_id, []))
        return out

    def allows(
        self,
        user_id: int,
        role_ids: Iterable[int],
        action: str,
        env: str | None = None,
        service: str | None = None,
    ) -> bool:
        """True when some grant covers (action, env, service).

        ``env``/``service`` None means "in some scope" (a pre-check before arguments are known).
        """
        return any(g.matches(action, env, service) for _, g in self.grants(user_id, role_ids))

    def role_label(self, role_id: int) -> str | None:
        entry = self._roles.get(role_id)
        return entry[0] if entry else None

    def matrix(self, envs: list[str]) -> list[tuple[str, dict[str, str]]]:
        """Rows (role label, {action: 'all'|'env,env'|''}) for check-config and !perms."""
        rows = []
        sources = [("everyone", self._everyone)] + [(label, gs) for label, gs in self._roles.values()]
        for label, gs in sources:
            row = {}
            for action in ACTIONS:
                allowed = [e for e in envs if any(g.matches(action, e, None) for g in gs)]
                if any(g.matches(action, None, None) and g.env == "*" for g in gs):
                    row[action] = "all"
                else:
                    row[action] = ",".join(allowed)
            rows.append((label, row))
        return rows
