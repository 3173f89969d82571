"""How the alerts core talks to chat, without importing discord: the Notifier protocol.

The core decides WHAT a message says (content, embeds as Discord-shaped dicts already packed
within Discord's limits, buttons by action) and WHEN to send or edit it (the outbox). The bot
layer's DiscordNotifier does the HOW: channel lookup, components, files, threads, rate limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ButtonStyle = Literal["primary", "secondary", "success", "danger", "link"]


@dataclass(frozen=True)
class Button:
    """A button. ``custom_id`` is ``opsbot:<action>:<key>`` (e.g. ``opsbot:ack:42``); link buttons have ``url``."""

    label: str
    custom_id: str | None = None
    url: str | None = None
    style: ButtonStyle = "secondary"
    disabled: bool = False


@dataclass(frozen=True)
class OutMessage:
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)  # Discord embed JSON
    buttons: list[list[Button]] = field(default_factory=list)  # rows of at most 5
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (filename, data)
    mention_roles: list[int] = field(default_factory=list)  # role IDs allowed to ping
    mention_users: list[int] = field(default_factory=list)
    # On edit: True means the message's attachments become exactly ``files`` (none when empty),
    # so a JSON attachment follows the latest state instead of piling up. False: files are added.
    replace_files: bool = False
    # An idempotency key for creates (≤ 25 characters): pass it as Discord's message ``nonce``
    # (with ``enforce_nonce``) so a create retried after a crash is not posted twice.
    nonce: str | None = None


class SendError(Exception):
    """A send failed. ``retryable`` False means: don't try this message again (e.g. unknown channel)."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class MessageGone(SendError):
    """The message to edit (or to open a thread under) no longer exists, e.g. someone deleted it.

    The core then posts a new message instead of retrying the edit.
    """

    def __init__(self, message: str = "message not found") -> None:
        super().__init__(message, retryable=False)


class Notifier(Protocol):
    """Chat as the alerts core sees it. Channels are names or IDs as in the config."""

    async def send(self, channel: str, message: OutMessage) -> str:
        """Post a message; return its ID."""
        ...

    async def edit(self, channel: str, message_id: str, message: OutMessage) -> None:
        """Replace a message's content, embeds, buttons (files are added, not replaced)."""
        ...

    async def thread_post(self, channel: str, message_id: str, thread_name: str, text: str, *,
                          files: Sequence[tuple[str, bytes]] = ()) -> str:
        """Post ``text`` in the thread under a message, creating the thread when needed; return the thread ID.

        ``files`` (filename, data) are attached to the post (alert graphs); only callers that have
        files pass them."""
        ...


class FindsRecent(Protocol):
    """Optional for a Notifier: look at the channel's newest messages for one the bot posted.

    After a crash between chat accepting a post and the outbox recording it (a leader killed, a
    timeout that had in fact gone through), the outbox looks before posting again, so the post is
    not doubled."""

    async def find_recent(self, channel: str, *, content: str | None = None, contains: str | None = None,
                          with_embeds: bool = False, limit: int = 50, thread_of: str | None = None) -> str | None:
        """The ID of the newest of the bot's last ``limit`` messages whose content equals ``content``
        (or contains ``contains``), and has embeds if ``with_embeds``; None if there is none.
        ``thread_of``: look in the thread under that message instead (None if it has none)."""
        ...

