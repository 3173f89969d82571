"""check-config knows the maintenance and freeze sections: names must be the catalog's, crontabs
valid, and the example configuration stays clean."""

from __future__ import annotations

from pathlib import Path

from config.check import check

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "opsbot.example.yaml"

CONFIG = """\
services:
  chat:
    repository: registry.local/chat
    envs:
      prod: {namespace: prod, deployment: chat}
maintenance:
  recurring:
    backup:
      task: run-job
      cron: "0 2 * * *"
      service: chta
      env: prd
      cronjob: db-backup
    restart:
      task: window
      cron: "0 4 * * mon"
      services: [all]
      env: prod
      duration: 15m
      reason: weekly
    bad:
      task: digest
      cron: "0 9 * *"
freezes:
  scheduled:
    weekend:
      cron: "0 18 * * fri"
      duration: 62h
      envs: [staging]
      reason: weekend
"""


def test_wrong_names_and_crontabs_are_errors(tmp_path: Path):
    path = tmp_path / "opsbot.yaml"
    path.write_text(CONFIG)
    result = check(path)
    errors = [str(p) for p in result.errors]
    assert any("maintenance.recurring.bad" in e and "5 fields" in e for e in errors), errors
    assert any("maintenance.recurring.backup.service" in e and "no service 'chta'; did you mean 'chat'?" in e
               for e in errors), errors
    assert any("maintenance.recurring.backup.env" in e and "no env 'prd'; did you mean 'prod'?" in e
               for e in errors), errors
    assert any("freezes.scheduled.weekend.envs[0]" in e and "no env 'staging'" in e for e in errors), errors
    assert not any("recurring.restart" in e for e in errors), errors


def test_the_example_configuration_is_clean():
    result = check(EXAMPLE)
    # Only that the sandbox's example names no guild (check-config warns about it everywhere).
    assert result.ok and [p.path for p in result.warnings] == ["guild_id"], [str(p) for p in result.warnings]
