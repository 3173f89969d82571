"""A small bot process attached to a simcord bridge, and a driver for it from the test process.

Child: ``python -m tests.support.bridge_member <bridge url> <name>`` runs a ``commands.Bot``
(prefix ``!``, all intents; ``!ping`` answers ``pong from <name>``; a persistent "Ack" button,
custom_id ``bridge:ack``, edits its message to ``acked by <name>``) attached with
:func:`tests.support.simcord_bridge.attach`, and takes orders as JSON lines on stdin::

    {"id": 1, "op": "status"}                      -> is_ready, user, guilds with text channel names
    {"id": 1, "op": "wait_ready"}                  -> status after bot.wait_until_ready()
    {"id": 2, "op": "post", "channel_id": ..., "content": ..., "title": ..., "button": true,
     "files": {"name.txt": "text"}}                -> message_id
    {"id": 3, "op": "edit", "channel_id": ..., "message_id": ..., "content": ..., "title": ...}
    {"id": 4, "op": "thread", "channel_id": ..., "message_id": ..., "name": ..., "content": ...}
    {"id": 5, "op": "fetch", "channel_id": ..., "message_id": ...}
    {"id": 6, "op": "chunk", "guild_id": ..., "query": ...}   -> guild.chunk(), guild.query_members()
    {"id": 7, "op": "dm", "user_id": ..., "content": ...}
    {"id": 8, "op": "role", "guild_id": ..., "user_id": ..., "role_id": ..., "add": true, "reason": ...}
    {"id": 9, "op": "close"}                       -> bot.close(), then the process exits

answering each with one JSON line on stdout ``{"id": n, ...}`` (``{"id": n, "error": <exception
class>, "message", "status", "code"}`` when it raised); it also prints ``{"event": "ready", ...}``
and ``{"event": "command", "name": ...}``. Logs go to stderr.

Parent: :class:`MemberProcess` spawns one and talks to it (asyncio, no pytest).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import sys
from collections import deque
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


# ============================================================================ child process


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


async def _child(url: str, name: str) -> None:
    import discord
    from discord.ext import commands

    from tests.support.simcord_bridge import attach

    class AckView(discord.ui.View):
        def __init__(self) -> None:
            super().__init__(timeout=None)

        @discord.ui.button(label="Ack", custom_id="bridge:ack", style=discord.ButtonStyle.primary)
        async def ack(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
            _emit({"event": "click", "custom_id": button.custom_id, "user_id": interaction.user.id})
            await interaction.response.edit_message(content=f"acked by {name}")

    class MemberBot(commands.Bot):
        async def setup_hook(self) -> None:
            self.add_view(AckView())

    bot = MemberBot(command_prefix="!", intents=discord.Intents.all())

    @bot.command()
    async def ping(ctx: commands.Context) -> None:
        _emit({"event": "command", "name": "ping", "author_id": ctx.author.id})
        await ctx.send(f"pong from {name}")

    @bot.event
    async def on_ready() -> None:
        _emit({"event": "ready", **status()})

    def status() -> dict[str, Any]:
        return {
            "ready": bot.is_ready(),
            "user_id": bot.user.id if bot.user else None,
            "user": str(bot.user),
            "guilds": [{"id": g.id, "name": g.name, "text_channels": [c.name for c in g.text_channels],
                        "members": sorted(m.name for m in g.members)} for g in bot.guilds],
        }

    async def channel(order: dict[str, Any]) -> Any:
        found = bot.get_channel(int(order["channel_id"]))
        return found if found is not None else await bot.fetch_channel(int(order["channel_id"]))

    async def run(order: dict[str, Any]) -> dict[str, Any]:
        op = order["op"]
        if op == "status":
            return status()
        if op == "wait_ready":
            await asyncio.wait_for(bot.wait_until_ready(), 20)
            return status()
        if op == "post":
            ch = await channel(order)
            embed = discord.Embed(title=order.get("title"), description=order.get("description"))
            files = [discord.File(io.BytesIO(text.encode()), filename=fname)
                     for fname, text in (order.get("files") or {}).items()]
            msg = await ch.send(order.get("content"), embed=embed, files=files,
                                view=AckView() if order.get("button") else None)
            return {"message_id": msg.id, "channel_id": ch.id}
        if op == "edit":
            ch = await channel(order)
            msg = await ch.fetch_message(int(order["message_id"]))
            edited = await msg.edit(content=order.get("content"),
                                    embed=discord.Embed(title=order.get("title")))
            return {"message_id": edited.id, "content": edited.content,
                    "edited_at": edited.edited_at.isoformat() if edited.edited_at else None}
        if op == "thread":
            ch = await channel(order)
            msg = await ch.fetch_message(int(order["message_id"]))
            thread = await msg.create_thread(name=order["name"])
            posted = await thread.send(order["content"])
            return {"thread_id": thread.id, "message_id": posted.id, "parent_id": thread.parent_id}
        if op == "fetch":
            ch = await channel(order)
            msg = await ch.fetch_message(int(order["message_id"]))
            return {"message_id": msg.id, "content": msg.content}
        if op == "chunk":
            guild = bot.get_guild(int(order["guild_id"]))
            assert guild is not None
            chunked = await guild.chunk()
            found = await guild.query_members(order.get("query", ""), limit=10)
            return {"members": sorted(m.name for m in chunked), "query": sorted(m.name for m in found)}
        if op == "dm":
            user = bot.get_user(int(order["user_id"])) or await bot.fetch_user(int(order["user_id"]))
            sent = await user.send(order["content"])
            return {"message_id": sent.id, "channel_id": sent.channel.id}
        if op == "role":
            guild = bot.get_guild(int(order["guild_id"]))
            assert guild is not None
            target = guild.get_member(int(order["user_id"])) or await guild.fetch_member(int(order["user_id"]))
            role = guild.get_role(int(order["role_id"]))
            assert role is not None
            add = order.get("add", True)
            # The REST call does not touch the cache: GUILD_MEMBER_UPDATE from the gateway does.
            updated = asyncio.ensure_future(bot.wait_for(
                "member_update", timeout=10, check=lambda _, after: after.id == target.id and (role in after.roles) == add))
            if add:
                await target.add_roles(role, reason=order.get("reason"))
            else:
                await target.remove_roles(role, reason=order.get("reason"))
            _, after = await updated
            return {"roles": sorted(r.name for r in after.roles)}
        if op == "close":
            await bot.close()
            return {"closed": bot.is_closed()}
        raise ValueError(f"unknown op {op!r}")

    async def serve(order: dict[str, Any]) -> None:
        try:
            reply = await run(order)
        except Exception as exc:
            logging.getLogger("bridge_member").exception("op %s failed", order.get("op"))
            reply = {"error": type(exc).__name__, "message": str(exc),
                     "status": getattr(exc, "status", None), "code": getattr(exc, "code", None)}
        _emit({"id": order.get("id"), **reply})

    async def control() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        tasks = set()
        while line := await reader.readline():
            if line.strip():
                task = asyncio.create_task(serve(json.loads(line)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await bot.close()  # stdin closed: the parent is gone

    attach(bot, url, name=name)
    controller = asyncio.create_task(control())
    try:
        await bot.start("bridge-member-token")
    finally:
        controller.cancel()
    await asyncio.sleep(0.2)  # let the last replies flush


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {argv[1]} %(name)s %(levelname)s %(message)s")
    asyncio.run(_child(argv[0], argv[1]))


# ============================================================================ parent side


class MemberProcess:
    """A running ``bridge_member`` child process, driven over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.stderr_tail: deque[str] = deque(maxlen=200)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._changed = asyncio.Event()
        self._readers = [asyncio.ensure_future(self._read_stdout()), asyncio.ensure_future(self._read_stderr())]

    @classmethod
    async def spawn(cls, url: str, name: str) -> MemberProcess:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                   PYTHONUNBUFFERED="1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.bridge_member", url, name,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT), env=env,
        )
        return cls(proc, name)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_tail)

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                obj = json.loads(line)
            except ValueError:
                self.stderr_tail.append(f"[stdout] {line.decode(errors='replace')}")
                continue
            if "id" in obj and obj["id"] in self._replies:
                fut = self._replies.pop(obj["id"])
                if not fut.done():
                    fut.set_result(obj)
            else:
                self.events.append(obj)
            self._changed.set()
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(RuntimeError(f"member {self.name} exited; stderr:\n{self.stderr}"))
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr_tail.append(line.decode(errors="replace"))

    async def wait_event(self, event: str, timeout: float = 30.0, **match: Any) -> dict[str, Any]:
        """The first ``{"event": event, **match}`` line the child printed (waiting for it)."""
        async def find() -> dict[str, Any]:
            while True:
                for obj in self.events:
                    if obj.get("event") == event and all(obj.get(k) == v for k, v in match.items()):
                        return obj
                if self.proc.stdout is not None and self.proc.stdout.at_eof():
                    raise RuntimeError(f"member {self.name} exited before {event!r}; stderr:\n{self.stderr}")
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            raise TimeoutError(f"member {self.name}: no {event!r} within {timeout}s; stderr:\n{self.stderr}") from None

    async def call(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send one order and wait for its reply (an ``{"error": ...}`` reply is returned, not raised)."""
        assert self.proc.stdin is not None
        self._next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._next_id] = fut
        self.proc.stdin.write((json.dumps({"id": self._next_id, "op": op, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"member {self.name}: no reply to {op!r} within {timeout}s; "
                               f"stderr:\n{self.stderr}") from None

    def kill(self) -> None:
        """SIGKILL: no goodbye, the socket just drops."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """Make sure the child is gone (close stdin, then SIGTERM, then SIGKILL); its exit code."""
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout / 3)
                break
            except TimeoutError:
                continue
        await asyncio.gather(*self._readers, return_exceptions=True)
        return self.proc.returncode


if __name__ == "__main__":
    main(sys.argv[1:])
