"""Deployer.known_bad: which versions failed their latest rollout under the bot, from the audit log.

The default `!rollback` target skips these (finding 10 of issue 13; the chat tests on Kubernetes and
Docker are in tests/bot/test_rollback.py). Table-driven over a real AuditLog on both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.world import sandbox_settings
from commands.audit import AuditLog
from commands.catalog import Catalog
from commands.db import Database
from commands.deploy import Deployer

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class StepClock:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return T0 + timedelta(minutes=self.calls - 1)


# (action, version, result, service, env), oldest first → the versions known bad in chat/prod
CASES = [
    ([], set()),
    ([("deploy", "v2", "rolled_back", "chat", "prod")], {"v2"}),
    ([("deploy", "v2", "failed", "chat", "prod")], {"v2"}),
    ([("deploy", "v2", "ok", "chat", "prod")], set()),
    # fixed since: the newest rollout of a version decides
    ([("deploy", "v2", "rolled_back", "chat", "prod"), ("deploy", "v2", "ok", "chat", "prod")], set()),
    ([("deploy", "v2", "ok", "chat", "prod"), ("deploy", "v2", "rolled_back", "chat", "prod")], {"v2"}),
    # a rollback to a version that then failed makes it bad too
    ([("rollback", "v1", "rolled_back", "chat", "prod")], {"v1"}),
    # not a rollout: refused, cancelled or denied attempts say nothing about the version
    ([("deploy", "v2", "cancelled", "chat", "prod"), ("deploy", "v3", "denied", "chat", "prod")], set()),
    # other envs and services are other releases
    ([("deploy", "v2", "rolled_back", "chat", "staging"), ("deploy", "v2", "failed", "auth", "prod")], set()),
]


@pytest.mark.parametrize(("records", "bad"), CASES)
async def test_known_bad(db: Database, records, bad):
    audit = AuditLog(db, clock=StepClock())
    deployer = Deployer(Catalog(sandbox_settings()), {}, audit)
    for action, version, result, service, env in records:
        await audit.record(user_id=1, user_name="mod", action=action, result=result, service=service, env=env,
                           args={"version": version})
    found = await deployer.known_bad("chat", "prod")
    assert set(found) == bad
    for version in bad:
        assert found[version].startswith("its ") and " by mod failed (2024-05-01 " in found[version]
