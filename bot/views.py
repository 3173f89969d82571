"""Buttons. custom_id is ``opsbot:<action>:<key>``; every view re-checks permissions itself
(buttons bypass command checks), and the handlers are DynamicItems so a click after a restart
gets a clear answer instead of "This interaction failed".
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import discord

from bot.checks import member_allows

if TYPE_CHECKING:
    from bot.app import App

log = logging.getLogger(__name__)

CONFIRM_SECONDS = 60


@dataclass
class Pending:
    """An action waiting for its invoker's Confirm (and maybe a second person's Approve)."""

    key: str
    action: str  # the grant needed, e.g. "deploy"
    service: str
    env: str
    invoker_id: int
    invoker_name: str
    summary: str  # "deploy chat-gui v1.5.1 to prod"
    expires_at: datetime
    approvals_needed: int
    start: Callable[[discord.Interaction], Awaitable[None]]  # runs once confirmed (and approved)
    on_end: Callable[[str, str], Awaitable[None]]  # (result, who) for cancel/expiry audit
    approved_by: list[str] = field(default_factory=list)
    confirmed: bool = False
    message: discord.Message | None = None
    view: ConfirmView | None = None

    @property
    def approved(self) -> bool:
        return len(self.approved_by) >= self.approvals_needed


class PendingStore:
    """Pending confirmations live in memory: they expire in a minute and a restart cancels them."""

    def __init__(self) -> None:
        self._items: dict[str, Pending] = {}

    def add(self, pending: Pending) -> None:
        self._items[pending.key] = pending

    def get(self, key: str) -> Pending | None:
        return self._items.get(key)

    def pop(self, key: str) -> Pending | None:
        return self._items.pop(key, None)

    @staticmethod
    def new_key() -> str:
        return secrets.token_hex(6)


def _app(interaction: discord.Interaction) -> App:
    return interaction.client.app  # type: ignore[attr-defined,no-any-return]


async def _say(interaction: discord.Interaction, text: str) -> None:
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


def _pending_text(p: Pending) -> str:
    lines = [f"⚠️ **{p.summary}**? Requested by {p.invoker_name}. "
             f"Expires <t:{int(p.expires_at.timestamp())}:R>."]
    if p.approvals_needed:
        got = ", ".join(p.approved_by) or "nobody yet"
        lines.append(f"Needs {p.approvals_needed} approval(s) by someone else with `{p.action}:{p.env}` — {got}.")
    if p.confirmed and not p.approved:
        lines.append("Confirmed by the requester; waiting for approval.")
    return "\n".join(lines)


class _PendingButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"opsbot:(?P<verb>confirm|cancel|approve):(?P<key>[0-9a-f]+)"):
    LABELS = {"confirm": ("Confirm", discord.ButtonStyle.danger),
              "cancel": ("Cancel", discord.ButtonStyle.secondary),
              "approve": ("Approve", discord.ButtonStyle.primary)}

    def __init__(self, verb: str, key: str) -> None:
        label, style = self.LABELS[verb]
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=f"opsbot:{verb}:{key}"))
        self.verb, self.key = verb, key

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button[Any],
                             match: Any, /) -> _PendingButton:
        return cls(match["verb"], match["key"])

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if _app(interaction).draining and self.verb != "cancel":
            await _say(interaction, "🔁 The bot is restarting and starts nothing new; run the command again "
                                    "in a few seconds.")
            return False
        pending = _app(interaction).pending.get(self.key)
        if pending is None:
            await _say(interaction, "This request is no longer pending (it expired, was answered, or the bot "
                                    "restarted). Run the command again.")
            return False
        if discord.utils.utcnow() >= pending.expires_at:
            await _say(interaction, "This request has expired; run the command again.")
            return False
        user = interaction.user
        if self.verb in ("confirm", "cancel") and user.id != pending.invoker_id:
            await _say(interaction, f"Only {pending.invoker_name}, who asked, can {self.verb} this.")
            return False
        if self.verb == "approve":
            if user.id == pending.invoker_id:
                await _say(interaction, "You can't approve your own request; a second person must.")
                return False
            if not member_allows(_app(interaction), user, pending.action, pending.env, pending.service):
                await _say(interaction, f"Approving needs the `{pending.action}:{pending.env}` grant.")
                return False
            if user.display_name in pending.approved_by:
                await _say(interaction, "You approved this already.")
                return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        app = _app(interaction)
        pending = app.pending.get(self.key)
        if pending is None:  # raced with expiry
            await _say(interaction, "This request is no longer pending.")
            return
        if self.verb == "cancel":
            app.pending.pop(self.key)
            _stop(pending)
            await interaction.response.edit_message(
                content=f"✖️ {pending.summary} — cancelled by {interaction.user.display_name}.", view=None)
            await pending.on_end("cancelled", interaction.user.display_name)
            return
        if self.verb == "approve":
            pending.approved_by.append(interaction.user.display_name)
        else:
            pending.confirmed = True
        if pending.confirmed and pending.approved:
            app.pending.pop(self.key)
            _stop(pending)
            await interaction.response.edit_message(
                content=f"✅ {pending.summary} — confirmed by {pending.invoker_name}"
                        + (f", approved by {', '.join(pending.approved_by)}" if pending.approved_by else "")
                        + ".", view=None)
            await pending.start(interaction)
            return
        await interaction.response.edit_message(content=_pending_text(pending), view=pending.view)


def _stop(pending: Pending) -> None:
    if pending.view is not None:
        pending.view.stop()


class ConfirmView(discord.ui.View):
    """Confirm / Cancel (and Approve when the env wants a second person). Expires after a minute."""

    def __init__(self, app: App, pending: Pending) -> None:
        super().__init__(timeout=(pending.expires_at - discord.utils.utcnow()).total_seconds())
        self.app = app
        self.pending = pending
        pending.view = self
        self.add_item(_PendingButton("confirm", pending.key))
        if pending.approvals_needed:
            self.add_item(_PendingButton("approve", pending.key))
        self.add_item(_PendingButton("cancel", pending.key))

    async def on_timeout(self) -> None:
        pending = self.pending
        if self.app.pending.pop(pending.key) is None:
            return  # answered in the meantime
        for item in self.children:
            button = item.item if isinstance(item, discord.ui.DynamicItem) else item
            if isinstance(button, discord.ui.Button):
                button.disabled = True
        if pending.message is not None:
            try:
                await pending.message.edit(content=f"⌛ {pending.summary} — expired after {CONFIRM_SECONDS} s; "
                                                    "nothing was done.", view=self)
            except discord.HTTPException:
                log.warning("could not mark a confirmation as expired", exc_info=True)
        await pending.on_end("expired", pending.invoker_name)


async def ask_confirmation(app: App, channel: discord.abc.Messageable, pending: Pending) -> discord.Message:
    view = ConfirmView(app, pending)
    app.pending.add(pending)
    pending.message = await channel.send(_pending_text(pending), view=view,
                                         allowed_mentions=discord.AllowedMentions.none())
    return pending.message


def new_pending(app: App, *, action: str, service: str, env: str, user: discord.abc.User, summary: str,
                start: Callable[[discord.Interaction], Awaitable[None]],
                on_end: Callable[[str, str], Awaitable[None]]) -> Pending:
    return Pending(
        key=PendingStore.new_key(), action=action, service=service, env=env, invoker_id=user.id,
        invoker_name=getattr(user, "display_name", str(user)), summary=summary,
        expires_at=discord.utils.utcnow() + timedelta(seconds=CONFIRM_SECONDS),
        approvals_needed=app.settings.env(env).approvals, start=start, on_end=on_end,
    )


DYNAMIC_ITEMS = (_PendingButton,)

