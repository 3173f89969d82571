"""The README documents every setting, and starts with exactly the two commands."""

from __future__ import annotations

from pathlib import Path

from config.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_configuration_reference():
    reference = README.split("## Configuration reference", 1)[1]
    missing = [name for name, field in Settings.model_fields.items()
               if not field.exclude and f"`{name}" not in reference]
    assert not missing, f"README's configuration reference lacks {missing}"


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["scripts/demo", "scripts/test"]
    root = Path(__file__).resolve().parents[1]
    for c in commands:
        assert (root / c).stat().st_mode & 0o111, f"{c} is not executable"
    assert "scripts/test" in (root / ".ci" / "run").read_text()
