"""Fixtures for the on-call and scheduler tests: a fake clock and a database file."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.support.clock import FakeClock

T0 = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


class FakeNotifier:
    """The Notifier protocol, recording what the core posts. ``fail`` makes the next sends raise."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []
        self.threads: list[tuple[str, str, str, str]] = []
        self.dms: list[tuple[int, object]] = []
        self.fail: list[Exception] = []
        self.fail_dm: dict[int, Exception] = {}

    async def send(self, channel: str, message) -> str:
        if self.fail:
            raise self.fail.pop(0)
        self.sent.append((channel, message))
        return str(1000 + len(self.sent))

    async def edit(self, channel: str, message_id: str, message) -> None:
        pass

    async def thread_post(self, channel: str, message_id: str, thread_name: str, text: str) -> str:
        self.threads.append((channel, message_id, thread_name, text))
        return message_id

    async def send_dm(self, user_id: int, message) -> None:
        if user_id in self.fail_dm:
            raise self.fail_dm[user_id]
        self.dms.append((user_id, message))

    @property
    def contents(self) -> list[str]:
        return [m.content for _, m in self.sent]  # type: ignore[attr-defined]


@pytest.fixture
def notifier() -> FakeNotifier:
    return FakeNotifier()
