import os

import pytest


@pytest.fixture(autouse=True)
def _no_opsbot_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read OPSBOT_… variables: keep the developer's environment out of these tests."""
    for name in list(os.environ):
        if name.upper().startswith("OPSBOT_"):
            monkeypatch.delenv(name)
