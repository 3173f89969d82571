"""DiscordNotifier: the alerts core's Notifier protocol on discord.py."""

from __future__ import annotations

import asyncio
import io
import logging

import discord

from collections.abc import Callable, Sequence

from alerts.notify import Button, MessageGone, OutMessage, SendError

log = logging.getLogger(__name__)

_STYLES = {
    "primary": discord.ButtonStyle.primary,
    "secondary": discord.ButtonStyle.secondary,
    "success": discord.ButtonStyle.success,
    "danger": discord.ButtonStyle.danger,
    "link": discord.ButtonStyle.link,
}


def _view(rows: list[list[Button]]) -> discord.ui.View | None:
    """A stateless view: clicks are answered by the DynamicItems registered on the bot."""
    if not rows:
        return None
    view = discord.ui.View(timeout=None)
    for r, row in enumerate(rows[:5]):
        for b in row[:5]:
            if b.url:
                item = discord.ui.Button(label=b.label, url=b.url, style=discord.ButtonStyle.link, row=r,
                                         disabled=b.disabled)
            else:
                item = discord.ui.Button(label=b.label, custom_id=b.custom_id, style=_STYLES[b.style], row=r,
                                         disabled=b.disabled)
            view.add_item(item)
    return view


def _mentions(m: OutMessage) -> discord.AllowedMentions:
    return discord.AllowedMentions(everyone=False, users=[discord.Object(u) for u in m.mention_users],
                                   roles=[discord.Object(r) for r in m.mention_roles])


def _error(e: discord.HTTPException, what: str) -> SendError:
    retryable = e.status >= 500 or e.status == 429
    retry_after = getattr(e, "retry_after", None)
    return SendError(f"{what}: HTTP {e.status} {e.text or ''}".strip(), retryable=retryable, retry_after=retry_after)


class DiscordNotifier:
    """``bot`` is a callable so the notifier can exist (and the outbox run) before the bot does:
    until the Discord session is ready every send is a retryable failure."""

    def __init__(self, bot: Callable[[], discord.Client | None], guild_id: int | None = None) -> None:
        self._bot = bot
        self.guild_id = guild_id
        self._thread_locks: dict[str, asyncio.Lock] = {}

    @property
    def bot(self) -> discord.Client:
        bot = self._bot()
        if bot is None or not bot.is_ready():
            raise SendError("the Discord session is not ready yet", retryable=True, retry_after=2.0)
        return bot

    def _channel(self, name: str) -> discord.TextChannel:
        if name.isdigit():
            channel = self.bot.get_channel(int(name))
            if isinstance(channel, discord.TextChannel):
                return channel
        for guild in self.bot.guilds:
            if self.guild_id and guild.id != self.guild_id:
                continue
            found = discord.utils.get(guild.text_channels, name=name.lstrip("#"))
            if found is not None:
                return found
        raise SendError(f"no text channel {name!r} the bot can see", retryable=False)

    async def send(self, channel: str, message: OutMessage) -> str:
        target = self._channel(channel)
        kwargs = dict(content=message.content or None, embeds=[discord.Embed.from_dict(e) for e in message.embeds],
                      allowed_mentions=_mentions(message),
                      files=[discord.File(io.BytesIO(data), filename=name) for name, data in message.files])
        view = _view(message.buttons)
        if view is not None:
            kwargs["view"] = view
        if message.nonce:
            kwargs["nonce"] = message.nonce
        try:
            sent = await target.send(**kwargs)
        except discord.HTTPException as e:
            raise _error(e, f"send to #{target.name}") from e
        return str(sent.id)

    async def edit(self, channel: str, message_id: str, message: OutMessage) -> None:
        target = self._channel(channel)
        partial = target.get_partial_message(int(message_id))
        kwargs: dict = dict(content=message.content or None,
                            embeds=[discord.Embed.from_dict(e) for e in message.embeds],
                            view=_view(message.buttons), allowed_mentions=_mentions(message))
        files = [discord.File(io.BytesIO(d), filename=n) for n, d in message.files]
        if message.replace_files:
            kwargs["attachments"] = files
        elif files:
            current = await target.fetch_message(int(message_id))
            kwargs["attachments"] = [*current.attachments, *files]
        try:
            await partial.edit(**kwargs)
        except discord.NotFound as e:
            raise MessageGone(f"message {message_id} in #{target.name} is gone", retryable=False) from e
        except discord.HTTPException as e:
            raise _error(e, f"edit in #{target.name}") from e

    async def thread_post(self, channel: str, message_id: str, thread_name: str, text: str, *,
                          files: Sequence[tuple[str, bytes]] = ()) -> str:
        target = self._channel(channel)
        # The timeline and the alert graphs post under the same message concurrently: one creates
        # the thread, the other finds it (two creates would fail with "thread already exists").
        lock = self._thread_locks.setdefault(message_id, asyncio.Lock())
        try:
            async with lock:
                thread = target.guild.get_thread(int(message_id))  # a message's thread has the message's ID
                if thread is None:
                    try:
                        thread = await target.guild.fetch_channel(int(message_id))  # type: ignore[assignment]
                    except discord.NotFound:
                        thread = None
                if thread is None:
                    thread = await target.get_partial_message(int(message_id)).create_thread(
                        name=thread_name[:100], auto_archive_duration=1440)
            attachments = [discord.File(io.BytesIO(data), filename=name) for name, data in files]
            await thread.send(text[:2000], files=attachments,  # type: ignore[union-attr]
                              allowed_mentions=discord.AllowedMentions.none())
        except discord.NotFound as e:
            raise MessageGone(f"message {message_id} in #{target.name} is gone", retryable=False) from e
        except discord.HTTPException as e:
            raise _error(e, f"thread post in #{target.name}") from e
        finally:
            if not lock.locked() and len(self._thread_locks) > 256:
                self._thread_locks.pop(message_id, None)
        return str(thread.id)

    async def find_recent(self, channel: str, *, content: str | None = None, contains: str | None = None,
                          with_embeds: bool = False, limit: int = 50, thread_of: str | None = None) -> str | None:
        """The newest of the bot's last ``limit`` messages that matches (alerts.notify.FindsRecent);
        with ``thread_of``, in the thread under that message (None when it has no thread)."""
        target: discord.abc.Messageable = self._channel(channel)
        me = self.bot.user
        try:
            if thread_of is not None:
                parent = target
                thread = parent.guild.get_thread(int(thread_of))  # type: ignore[attr-defined]
                if thread is None:
                    try:
                        thread = await parent.guild.fetch_channel(int(thread_of))  # type: ignore[attr-defined]
                    except discord.NotFound:
                        return None  # no thread: nothing was posted in it
                target = thread
            async for m in target.history(limit=limit):
                if me is None or m.author.id != me.id or (with_embeds and not m.embeds):
                    continue
                if (content is not None and m.content == content) or (contains is not None and contains in m.content):
                    return str(m.id)
        except discord.HTTPException as e:
            raise _error(e, f"history of #{getattr(target, 'name', channel)}") from e
        return None

    async def send_dm(self, user_id: int, message: OutMessage) -> None:
        """Escalation's optional direct message."""
        try:
            user = self.bot.get_user(user_id) or await self.bot.fetch_user(user_id)
            await user.send(content=message.content or None, embeds=[discord.Embed.from_dict(e) for e in message.embeds])
        except discord.HTTPException as e:
            raise _error(e, f"DM to {user_id}") from e


class RoleSync:
    """Keeps an on-call Discord role on whoever is on call (alerts.oncall calls it at hand-offs)."""

    def __init__(self, bot: Callable[[], discord.Client | None]) -> None:
        self._bot = bot

    async def set_oncall_role(self, rotation: str, role_id: int, user_id: int) -> None:
        bot = self._bot()
        if bot is None:
            raise RuntimeError("the bot is not running")
        for guild in bot.guilds:
            role = guild.get_role(role_id)
            if role is None:
                continue
            try:
                for member in list(role.members):
                    if member.id != user_id:
                        await member.remove_roles(role, reason=f"on-call hand-off ({rotation})")
                member = guild.get_member(user_id) or await guild.fetch_member(user_id)
                if role not in member.roles:
                    await member.add_roles(role, reason=f"on call now ({rotation})")
            except discord.Forbidden as e:
                raise PermissionError(f"the bot may not manage the role {role.name}: {e.text}") from e
            return
        raise LookupError(f"no guild has the on-call role {role_id}")
