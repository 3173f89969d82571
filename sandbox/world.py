"""The sandbox world (design §5): one source of truth for the emulated cluster, the demo guild
and the demo configuration. Tests, the console and the demo all start from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SERVICES = ["chat", "chat-gui", "modbot", "auth", "strims"]
ENVS = ["dev", "staging", "prod"]
REPOSITORY = "registry.local/dgg/{service}"

SERVICE_DESCRIPTIONS = {
    "chat": "chat backend (websocket fan-out)",
    "chat-gui": "the chat web client",
    "modbot": "moderation bot",
    "auth": "login and sessions",
    "strims": "stream embeds and directory",
}


@dataclass(frozen=True)
class Revision:
    version: str
    change_cause: str


@dataclass(frozen=True)
class EnvSpec:
    replicas: int
    # Oldest first; the last one is what runs now.
    history: list[Revision] = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.history[-1].version


# prod v1.4.0 x3, staging v1.5.0 x2, dev v1.6.0-rc.1 x1, each with a little history.
ENV_SPECS: dict[str, EnvSpec] = {
    "prod": EnvSpec(
        3,
        [
            Revision("v1.2.0", "opsbot: deploy {service} v1.2.0 by admin in #ops"),
            Revision("v1.3.0", "opsbot: deploy {service} v1.3.0 by mod in #ops"),
            Revision("v1.4.0", "opsbot: deploy {service} v1.4.0 by mod in #ops"),
        ],
    ),
    "staging": EnvSpec(
        2,
        [
            Revision("v1.4.0", "opsbot: deploy {service} v1.4.0 by mod in #ops"),
            Revision("v1.5.0", "opsbot: deploy {service} v1.5.0 by mod in #ops"),
        ],
    ),
    "dev": EnvSpec(
        1,
        [
            Revision("v1.5.0", "opsbot: deploy {service} v1.5.0 by mod in #ops"),
            Revision("v1.6.0-rc.1", "kubectl set image deployment/{service} {service}=registry.local/dgg/{service}:v1.6.0-rc.1"),
        ],
    ),
}


def image(service: str, version: str) -> str:
    return f"{REPOSITORY.format(service=service)}:{version}"


# ---------------------------------------------------------------- the demo guild

# role name -> grants (design §5). Role IDs are made by the Discord world (simcord) and the
# policy is built from the created IDs, see bot/world.py.
ROLE_GRANTS: dict[str, list[str]] = {
    "Admin": ["*"],
    "Mod": ["status", "deploy", "rollback", "history", "logs", "lock", "audit", "alerts", "query"],
    "On-call": ["ack", "silence", "status", "logs", "rollback", "history", "alerts", "oncall", "query"],
    "Member": ["status"],
}

# user name -> role names
USERS: dict[str, list[str]] = {
    "admin": ["Admin"],
    "mod": ["Mod"],
    "oncall": ["On-call"],
    "member": ["Member"],
    "guest": [],
}

CHANNELS = ["ops", "alerts", "deploys"]
GUILD_NAME = "dgg ops"

# rotation name -> the oncall settings of a demo rotation, with members as demo user NAMES; the bot
# layer maps each name to the user ID the Discord world gave it (as it does for roles) and builds
# config.settings.RotationConfig from the rest. The first member holds the current shift when the
# mapper sets `start` to the date of the latest hand-off (today, or yesterday before 09:00): a fixed
# anchor would hand the daily demo rotation to someone else each day.
DEMO_ROTATIONS: dict[str, dict[str, object]] = {
    "primary": {"members": ["oncall", "admin"], "period": "daily", "handoff": "09:00"},
    "secondary": {"members": ["admin", "mod"], "period": "weekly", "handoff": "09:00"},
}

# The demo escalation policy, on the sandbox world's default alert route: an incident nobody
# acknowledges pages the primary on call after a minute and the secondary after three.
DEMO_ESCALATION_POLICY = "demo"
DEMO_ESCALATION: dict[str, object] = {
    "description": "demo: after 1 min mention the primary on call, after 3 min the secondary",
    "steps": [
        {"after": "1m", "notify": ["primary"]},
        {"after": "3m", "notify": ["secondary"]},
    ],
}
