"""Buttons. custom_id is ``opsbot:<action>:<key>``; every view re-checks permissions itself
(buttons bypass command checks), and the handlers are DynamicItems so a click after a restart
is answered by whichever bot runs then.

Confirm / Approve / Cancel: a command that wants a confirmation is written to the database
(``pending_confirmations``, commands/db.py) with its expiry, invoker, approvals (user IDs) and
everything needed to run it (``payload``), and the command registers a :class:`ConfirmHandler` under
its ``kind`` at start-up. So a press after a restart, or on the next leader, is honoured within the
expiry; a press changes the row under ``Database.exclusive``, so a request starts at most once
even when two replicas see presses at the same moment. The press that completes a request
re-checks at that moment what the command checked when it was typed (the invoker's grant, locks,
freezes: the handler's ``recheck``); a refusal answers and records nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import discord
from sqlalchemy import delete

from bot.checks import member_allows
from commands.db import Database, PendingConfirmationRow

if TYPE_CHECKING:
    from bot.app import App

log = logging.getLogger(__name__)

CONFIRM_SECONDS = 60
KEEP_ANSWERED = timedelta(days=1)  # answered requests are kept this long (a late press says what happened)


@dataclass(frozen=True)
class Approval:
    id: int
    name: str  # for display only: approvals count by ID


@dataclass(frozen=True)
class Request:
    """A pending (or answered) confirmation, as stored."""

    key: str
    kind: str  # the handler that runs it
    action: str  # the grant needed, e.g. "deploy"
    service: str
    env: str
    invoker_id: int
    invoker_name: str
    summary: str  # "deploy chat-gui v1.5.1 to prod"
    payload: dict[str, Any]
    channel_id: int
    message_id: int | None
    expires_at: datetime
    approvals_needed: int
    approvals: tuple[Approval, ...] = ()
    confirmed: bool = False
    state: str = "pending"  # pending, started, cancelled, expired

    @property
    def approved(self) -> bool:
        return len(self.approvals) >= self.approvals_needed

    @property
    def approver_names(self) -> list[str]:
        return [a.name for a in self.approvals]

    @classmethod
    def of(cls, row: PendingConfirmationRow) -> Request:
        return cls(key=row.key, kind=row.kind, action=row.action, service=row.service, env=row.env,
                   invoker_id=row.invoker_id, invoker_name=row.invoker_name, summary=row.summary,
                   payload=json.loads(row.payload), channel_id=int(row.channel_id),
                   message_id=int(row.message_id) if row.message_id else None, expires_at=row.expires_at,
                   approvals_needed=row.approvals_needed,
                   approvals=tuple(Approval(int(i), str(n)) for i, n in json.loads(row.approvals or "[]")),
                   confirmed=row.confirmed, state=row.state)


@dataclass(frozen=True)
class ConfirmHandler:
    """What a command that asks for confirmation provides (registered under its ``kind``)."""

    # At the press, before anything is recorded: a refusal to answer with, or None to go on.
    recheck: Callable[[discord.Interaction, Request], Awaitable[str | None]]
    # Run the command: the request was confirmed (and approved), by this press.
    start: Callable[[discord.Interaction, Request], Awaitable[None]]
    # (request, "cancelled" | "expired", by whom): for the audit log.
    ended: Callable[[Request, str, str], Awaitable[None]]


class PendingStore:
    """Pending confirmations in the database; the handlers and expiry timers of this process."""

    def __init__(self) -> None:
        self.handlers: dict[str, ConfirmHandler] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}

    def register(self, kind: str, handler: ConfirmHandler) -> None:
        self.handlers[kind] = handler

    @staticmethod
    def new_key() -> str:
        return secrets.token_hex(6)

    # -- database (blocking: call through Database.run) ---------------------------------------------

    @staticmethod
    def add(db: Database, request: Request, now: datetime) -> None:
        with db.session() as session:
            session.execute(delete(PendingConfirmationRow).where(
                PendingConfirmationRow.expires_at < now - KEEP_ANSWERED))
            session.add(PendingConfirmationRow(
                key=request.key, kind=request.kind, action=request.action, service=request.service,
                env=request.env, invoker_id=request.invoker_id, invoker_name=request.invoker_name[:100],
                summary=request.summary, payload=json.dumps(request.payload), channel_id=str(request.channel_id),
                message_id=None, created_at=now, expires_at=request.expires_at,
                approvals_needed=request.approvals_needed, approvals="[]", confirmed=False, state="pending"))

    @staticmethod
    def set_message(db: Database, key: str, message_id: int) -> None:
        with db.session() as session:
            row = session.get(PendingConfirmationRow, key)
            if row is not None:
                row.message_id = str(message_id)

    @staticmethod
    def get(db: Database, key: str) -> Request | None:
        with db.session() as session:
            row = session.get(PendingConfirmationRow, key)
            return Request.of(row) if row is not None else None

    @staticmethod
    def open_requests(db: Database) -> list[Request]:
        with db.session() as session:
            rows = session.query(PendingConfirmationRow).filter(PendingConfirmationRow.state == "pending").all()
            return [Request.of(r) for r in rows]

    @staticmethod
    def press(db: Database, key: str, verb: str, user_id: int, user_name: str, now: datetime,
              valid_approvers: frozenset[int] | None = None) -> tuple[str, Request | None]:
        """One press, atomically: (outcome, the request after it).

        Outcomes: ``gone`` (unknown, or answered already), ``expired`` (this press found it past
        its expiry and marked it so), ``cancelled``, ``already`` (this approver approved before),
        ``recorded`` (counted; more is needed), ``complete`` (this press completes it: run it now;
        no other press ever gets this outcome). ``valid_approvers``: approvals by anyone else
        no longer count (they lost the grant since).
        """
        with db.session() as session:
            db.exclusive(session, f"confirm:{key}")
            row = session.get(PendingConfirmationRow, key)
            if row is None:
                return "gone", None
            if row.state != "pending":
                return "gone", Request.of(row)
            if now >= row.expires_at:
                row.state = "expired"
                return "expired", Request.of(row)
            if verb == "cancel":
                row.state = "cancelled"
                return "cancelled", Request.of(row)
            approvals = [(int(i), str(n)) for i, n in json.loads(row.approvals or "[]")]
            if valid_approvers is not None:
                approvals = [a for a in approvals if a[0] in valid_approvers]
            if verb == "approve":
                if user_id in {i for i, _ in approvals}:
                    return "already", Request.of(row)
                approvals.append((user_id, user_name[:100]))
            else:
                row.confirmed = True
            row.approvals = json.dumps(approvals)
            if row.confirmed and len(approvals) >= row.approvals_needed:
                row.state = "started"
                return "complete", Request.of(row)
            return "recorded", Request.of(row)

    @staticmethod
    def expire(db: Database, key: str, now: datetime) -> Request | None:
        """Mark a pending request past its expiry as expired; the request if this call did."""
        with db.session() as session:
            db.exclusive(session, f"confirm:{key}")
            row = session.get(PendingConfirmationRow, key)
            if row is None or row.state != "pending" or now < row.expires_at:
                return None
            row.state = "expired"
            return Request.of(row)

    # -- expiry timers -------------------------------------------------------------------------------

    def arm(self, app: App, request: Request) -> None:
        """Mark ``request`` expired in chat when its time is up (if nobody answered it by then)."""
        self.disarm(request.key)
        self._timers[request.key] = asyncio.get_running_loop().create_task(
            self._expire_later(app, request), name=f"confirm-expiry:{request.key}")

    def disarm(self, key: str) -> None:
        task = self._timers.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _expire_later(self, app: App, request: Request) -> None:
        try:
            await asyncio.sleep(max((request.expires_at - discord.utils.utcnow()).total_seconds(), 0) + 0.05)
            expired = await app.db.run(self.expire, app.db, request.key, discord.utils.utcnow())
            if expired is not None:
                await _show_expired(app, expired)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not expire the confirmation %s", request.key)
        finally:
            if self._timers.get(request.key) is asyncio.current_task():
                del self._timers[request.key]


def _app(interaction: discord.Interaction) -> App:
    return interaction.client.app  # type: ignore[attr-defined,no-any-return]


async def _say(interaction: discord.Interaction, text: str) -> None:
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


async def member_of(interaction: discord.Interaction, user_id: int) -> discord.Member | None:
    """The guild member ``user_id`` now (roles as they are now), or None if not in the guild.

    From the cache, else asked of Discord: after a restart the member cache may be empty."""
    if interaction.user.id == user_id and isinstance(interaction.user, discord.Member):
        return interaction.user
    guild = interaction.guild
    if guild is None:
        return None
    member = guild.get_member(user_id)
    if member is not None:
        return member
    try:
        return await guild.fetch_member(user_id)
    except discord.NotFound:
        return None


def _pending_text(r: Request) -> str:
    lines = [f"⚠️ **{r.summary}**? Requested by {r.invoker_name}. "
             f"Expires <t:{int(r.expires_at.timestamp())}:R>."]
    if r.approvals_needed:
        got = ", ".join(r.approver_names) or "nobody yet"
        lines.append(f"Needs {r.approvals_needed} approval(s) by someone else with `{r.action}:{r.env}` — {got}.")
    if r.confirmed and not r.approved:
        lines.append("Confirmed by the requester; waiting for approval.")
    return "\n".join(lines)


def _expired_text(r: Request) -> str:
    return f"⌛ {r.summary} — expired after {CONFIRM_SECONDS} s; nothing was done."


def _buttons(r: Request, *, disabled: bool = False) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    verbs = ["confirm", *(["approve"] if r.approvals_needed else []), "cancel"]
    for verb in verbs:
        item = _PendingButton(verb, r.key)
        item.item.disabled = disabled
        view.add_item(item)
    return view


async def _show_expired(app: App, r: Request) -> None:
    """The request expired: say so on its message, buttons disabled; audit."""
    bot = app.bot
    channel = bot.get_channel(r.channel_id) if bot is not None else None
    if r.message_id is not None and isinstance(channel, discord.abc.Messageable):
        try:
            await channel.get_partial_message(r.message_id).edit(  # type: ignore[union-attr]
                content=_expired_text(r), view=_buttons(r, disabled=True))
        except discord.HTTPException:
            log.warning("could not mark a confirmation as expired", exc_info=True)
    await _ended(app, r, "expired", r.invoker_name)


async def _ended(app: App, r: Request, result: str, who: str) -> None:
    handler = app.pending.handlers.get(r.kind)
    if handler is not None:
        await handler.ended(r, result, who)


_GONE = {"started": "was confirmed and started already", "cancelled": "was cancelled",
         "expired": "expired; nothing was done"}


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
            await _say(interaction, "🔁 The bot is restarting and starts nothing new; the request stays pending "
                                    "until it expires: press again in a few seconds.")
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        app = _app(interaction)
        db = app.db
        request = await db.run(PendingStore.get, db, self.key)
        if request is None or request.state != "pending":
            await self._gone(interaction, request)
            return
        now = discord.utils.utcnow()
        if now >= request.expires_at:
            await self._expired(interaction, await db.run(PendingStore.expire, db, self.key, now))
            return
        handler = app.pending.handlers.get(request.kind)
        if handler is None:  # a command this version of the bot does not know: fail closed
            await _say(interaction, "This request cannot be run by this version of the bot; run the command again.")
            return
        user = interaction.user
        name = getattr(user, "display_name", str(user))
        if self.verb in ("confirm", "cancel") and user.id != request.invoker_id:
            await _say(interaction, f"Only {request.invoker_name}, who asked, can {self.verb} this.")
            return
        valid: frozenset[int] | None = None
        if self.verb != "cancel":
            if self.verb == "approve":
                if user.id == request.invoker_id:
                    await _say(interaction, "You can't approve your own request; a second person must.")
                    return
                if not member_allows(app, user, request.action, request.env, request.service):
                    await _say(interaction, f"Approving needs the `{request.action}:{request.env}` grant.")
                    return
                if user.id in {a.id for a in request.approvals}:
                    await _say(interaction, "You approved this already.")
                    return
            refusal = await handler.recheck(interaction, request)
            if refusal is not None:
                await _say(interaction, refusal)
                return
            valid = await self._still_allowed(interaction, request)
        outcome, request = await db.run(PendingStore.press, db, self.key, self.verb, user.id, name,
                                        discord.utils.utcnow(), valid)
        if outcome == "gone" or request is None:
            await self._gone(interaction, request)
        elif outcome == "expired":
            await self._expired(interaction, request)
        elif outcome == "already":
            await _say(interaction, "You approved this already.")
        elif outcome == "cancelled":
            app.pending.disarm(self.key)
            await interaction.response.edit_message(content=f"✖️ {request.summary} — cancelled by {name}.", view=None)
            await handler.ended(request, "cancelled", name)
        elif outcome == "complete":
            app.pending.disarm(self.key)
            approved = ", ".join(request.approver_names)
            await interaction.response.edit_message(
                content=f"✅ {request.summary} — confirmed by {request.invoker_name}"
                        + (f", approved by {approved}" if approved else "") + ".", view=None)
            await handler.start(interaction, request)
        else:
            await interaction.response.edit_message(content=_pending_text(request), view=_buttons(request))

    async def _still_allowed(self, interaction: discord.Interaction, r: Request) -> frozenset[int]:
        """The approvers who still hold the grant (a member who lost the role no longer counts)."""
        app = _app(interaction)
        keep = set()
        for a in r.approvals:
            member = await member_of(interaction, a.id)
            if member is not None and member_allows(app, member, r.action, r.env, r.service):
                keep.add(a.id)
        return frozenset(keep)

    async def _gone(self, interaction: discord.Interaction, r: Request | None) -> None:
        if r is None:
            await _say(interaction, "This request is no longer pending (it expired or was answered). "
                                    "Run the command again.")
        elif r.state == "expired":
            await self._expired(interaction, None, r)
        else:
            await _say(interaction, f"This request {_GONE.get(r.state, 'is no longer pending')}.")

    async def _expired(self, interaction: discord.Interaction, marked: Request | None,
                       known: Request | None = None) -> None:
        """Past its expiry: the message says so with its buttons disabled; the presser is told."""
        r = marked or known or await _app(interaction).db.run(PendingStore.get, _app(interaction).db, self.key)
        if r is None:
            await self._gone(interaction, None)
            return
        _app(interaction).pending.disarm(self.key)
        await interaction.response.edit_message(content=_expired_text(r), view=_buttons(r, disabled=True))
        await interaction.followup.send(f"This request expired <t:{int(r.expires_at.timestamp())}:R>; nothing was "
                                        "done. Run the command again.", ephemeral=True)
        if marked is not None:
            await _ended(_app(interaction), marked, "expired", marked.invoker_name)


async def ask_confirmation(app: App, channel: discord.abc.Messageable, *, kind: str, action: str, service: str,
                           env: str, user: discord.abc.User, summary: str,
                           payload: dict[str, Any]) -> discord.Message:
    """Ask ``user`` to confirm (and others to approve, where the env wants it) a command that the
    handler registered under ``kind`` runs from ``payload`` (JSON-able: it is stored)."""
    now = discord.utils.utcnow()
    request = Request(
        key=PendingStore.new_key(), kind=kind, action=action, service=service, env=env, invoker_id=user.id,
        invoker_name=getattr(user, "display_name", str(user)), summary=summary, payload=payload,
        channel_id=channel.id, message_id=None,  # type: ignore[attr-defined]
        expires_at=now + timedelta(seconds=CONFIRM_SECONDS), approvals_needed=app.settings.env(env).approvals)
    await app.db.run(PendingStore.add, app.db, request, now)
    message = await channel.send(_pending_text(request), view=_buttons(request),
                                 allowed_mentions=discord.AllowedMentions.none())
    await app.db.run(PendingStore.set_message, app.db, request.key, message.id)
    app.pending.arm(app, replace(request, message_id=message.id))
    return message


async def resume_pending(app: App) -> None:
    """After a start or a take-over: expire what expired meanwhile; time the rest."""
    for request in await app.db.run(PendingStore.open_requests, app.db):
        app.pending.arm(app, request)


DYNAMIC_ITEMS = (_PendingButton,)
