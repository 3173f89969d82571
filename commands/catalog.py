"""The service catalog: resolving names users type to configured services, envs and targets."""

from __future__ import annotations

from rapidfuzz import process

from config.settings import Settings


class UserError(Exception):
    """Bad input from a user. The message is shown in chat as is."""


def suggest(word: str, choices: list[str]) -> str | None:
    """The closest choice to ``word`` if it is close enough to be a likely typo."""
    if not choices:
        return None
    best = process.extractOne(word, choices, score_cutoff=60)
    return best[0] if best else None


def _unknown(kind: str, word: str, choices: list[str]) -> UserError:
    hint = suggest(word, choices)
    if hint:
        return UserError(f"no {kind} `{word}` — did you mean `{hint}`?")
    return UserError(f"no {kind} `{word}`; known: {', '.join(f'`{c}`' for c in choices) or 'none'}")


class Catalog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def services(self) -> list[str]:
        return list(self.settings.services)

    @property
    def envs(self) -> list[str]:
        return self.settings.env_order()

    def service(self, name: str) -> str:
        name = name.strip().lower()
        if name in self.settings.services:
            return name
        raise _unknown("service", name, self.services)

    def env(self, name: str) -> str:
        name = name.strip().lower()
        if name in self.envs:
            return name
        raise _unknown("env", name, self.envs)

    def lone_env(self, service: str | None, env: str | None) -> tuple[str | None, str | None]:
        """`!status prod` means every service in prod: a lone argument naming an env (and no
        service) is the env."""
        if service and env is None and service.lower() in self.envs and service.lower() not in self.services:
            return None, service
        return service, env

    def target(self, service: str, env: str) -> object:
        svc = self.settings.services[service]
        if env not in svc.envs:
            raise UserError(
                f"`{service}` does not run in `{env}`; it runs in "
                + ", ".join(f"`{e}`" for e in svc.envs)
            )
        return svc.envs[env]

    def pairs(self, service: str | None = None, env: str | None = None) -> list[tuple[str, str]]:
        """(service, env) pairs the catalog knows, filtered, in catalog and promotion order."""
        out = []
        order = self.envs
        for svc_name, svc in self.settings.services.items():
            if service and svc_name != service:
                continue
            for e in sorted(svc.envs, key=lambda x: order.index(x) if x in order else len(order)):
                if env and e != env:
                    continue
                out.append((svc_name, e))
        return out
