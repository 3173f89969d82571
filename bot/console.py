"""``opsbot console``: the embedded world from a terminal (design §4).

Each stdin line is a message from the current user in the current channel; the bot's messages,
edits and deletions are printed as they happen (text, or one JSON object a line with --json).
Control lines: /as USER, /channel NAME, /click LABEL [MESSAGE_ID], /slash NAME key=value …,
/wait SECONDS, /help, /quit. EOF ends cleanly.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from bot.world import World, open_world

CONTROL_HELP = """console control lines:
  /as USER                 speak as USER (admin, mod, oncall, member, guest)
  /channel NAME            move to channel NAME (ops, alerts, deploys)
  /click LABEL [MSG_ID]    click the button LABEL on the newest bot message here that has it,
                           or on message MSG_ID in any channel or thread you can see
  /slash NAME key=value …  run a slash command with options
  /wait SECONDS            let time pass (background work keeps printing)
  /quit                    leave (so does end of input)
anything else is sent as a chat message, e.g. !status chat-gui prod"""


def _embed_json(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": e.get("title"),
        "description": e.get("description"),
        "color": e.get("color"),
        "fields": [{"name": f.get("name"), "value": f.get("value")} for f in e.get("fields", [])],
        "footer": (e.get("footer") or {}).get("text"),
    }


def _labels(message: Any) -> list[str]:
    return [c.label for row in message.components for c in getattr(row, "children", [row])
            if getattr(c, "label", None)]


def _buttons(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    stack = list(components or [])
    while stack:
        c = stack.pop(0)
        if c.get("type") == 2:
            out.append({"label": c.get("label"), "custom_id": c.get("custom_id"),
                        "disabled": bool(c.get("disabled", False)), "url": c.get("url")})
        stack[0:0] = c.get("components", [])
    return out


class EventPrinter:
    """Turns gateway dispatches into console events."""

    def __init__(self, world: World, out: TextIO, as_json: bool) -> None:
        self.world, self.out, self.as_json = world, out, as_json
        self.bot_id = world.bot.user.id if world.bot.user else None

    def _channel_name(self, channel_id: Any) -> str:
        ch = self.world.channel_by_id(int(channel_id)) if channel_id else None
        if ch is not None:
            return ch.name
        for c in self.world.env.backend.channels.values():
            if c.id == int(channel_id):
                return getattr(c, "name", None) or str(channel_id)
        return str(channel_id)

    def __call__(self, event: str, payload: Any) -> None:
        if event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE") or not isinstance(payload, dict):
            return
        kind = {"MESSAGE_CREATE": "message", "MESSAGE_UPDATE": "edit", "MESSAGE_DELETE": "delete"}[event]
        author = payload.get("author") or {}
        if kind != "delete" and str(author.get("id")) != str(self.bot_id):
            return  # the console shows what the bot does; your own lines are already on screen
        self.emit(kind, payload)

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        author = (payload.get("author") or {}).get("username") or "opsbot"
        record = {
            "event": kind,
            "channel": self._channel_name(payload.get("channel_id")),
            "id": str(payload.get("id")),
            "author": author,
            "content": payload.get("content") or "",
            "embeds": [_embed_json(e) for e in payload.get("embeds") or []],
            "buttons": _buttons(payload.get("components") or []),
            "attachments": [{"filename": a.get("filename"), "size": a.get("size")}
                            for a in payload.get("attachments") or []],
        }
        if int(payload.get("flags") or 0) & 64:
            record["ephemeral"] = True
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n" if self.as_json else render_text(record))
        self.out.flush()


def render_text(r: dict[str, Any]) -> str:
    if r["event"] == "delete":
        return f"[#{r['channel']}] (message {r['id']} deleted)\n"
    tag = " (edited)" if r["event"] == "edit" else ""
    eph = " (only you)" if r.get("ephemeral") else ""
    lines = [f"[#{r['channel']}] {r['author']}{tag}{eph} · {r['id']}"]
    if r["content"]:
        lines += ["  " + line for line in r["content"].splitlines()]
    for e in r["embeds"]:
        if e["title"]:
            lines.append(f"  ┃ {e['title']}")
        if e["description"]:
            lines += [f"  ┃ {line}" for line in e["description"].splitlines()]
        for f in e["fields"]:
            value = (f["value"] or "").splitlines() or [""]
            lines.append(f"  ┃ {f['name']}: {value[0]}")
            lines += [f"  ┃   {line}" for line in value[1:]]
        if e["footer"]:
            lines.append(f"  ┃ — {e['footer']}")
    if r["buttons"]:
        lines.append("  " + " ".join(f"[{b['label']}{' ✗' if b['disabled'] else ''}]" for b in r["buttons"]))
    for a in r["attachments"]:
        lines.append(f"  📎 {a['filename']} ({a['size']} bytes)")
    return "\n".join(lines) + "\n"


class Console:
    def __init__(self, world: World, user: str, channel: str, out: TextIO, as_json: bool) -> None:
        self.world, self.out, self.as_json = world, out, as_json
        self.user = self._member(user)
        self.user_name = user
        self.channel = self._channel(channel)
        self.printer = EventPrinter(world, out, as_json)

    def _member(self, name: str) -> Any:
        if name not in self.world.members:
            raise ValueError(f"no user {name!r}; users: {', '.join(self.world.members)}")
        return self.world.members[name]

    def _channel(self, name: str) -> Any:
        name = name.lstrip("#")
        if name not in self.world.channels:
            raise ValueError(f"no channel {name!r}; channels: {', '.join(self.world.channels)}")
        return self.world.channels[name]

    def note(self, text: str) -> None:
        """Console's own remarks: on stderr, so --json stdout stays pure events."""
        print(f"console: {text}", file=sys.stderr, flush=True)

    async def handle(self, line: str) -> bool:
        """Handle one input line. False means quit."""
        line = line.rstrip("\n")
        if not line.strip():
            return True
        if line.startswith("/"):
            try:
                words = shlex.split(line)
            except ValueError as e:
                self.note(f"cannot parse: {e}")
                return True
            cmd, args = words[0], words[1:]
            handler: Callable[[list[str]], Any] | None = {
                "/as": self._as, "/channel": self._channel_cmd, "/click": self._click,
                "/slash": self._slash, "/wait": self._wait, "/help": self._help,
            }.get(cmd)
            if cmd == "/quit":
                return False
            if handler is None:
                self.note(f"unknown control line {cmd}; /help lists them")
                return True
            try:
                await handler(args)
            except Exception as e:  # a console mistake never ends the session
                self.note(f"{cmd} failed: {e}")
            return True
        try:
            await self.user.send(self.channel, line)
        except Exception as e:
            self.note(f"could not send: {e}")
        return True

    async def _as(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ValueError("usage: /as USER")
        self.user, self.user_name = self._member(args[0]), args[0]
        self.note(f"you are now {args[0]}")

    async def _channel_cmd(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ValueError("usage: /channel NAME")
        self.channel = self._channel(args[0])
        self.note(f"now in #{self.channel.name}")

    async def _help(self, args: list[str]) -> None:
        self.note(CONTROL_HELP)

    async def _wait(self, args: list[str]) -> None:
        seconds = float(args[0]) if args else 1.0
        if not 0 <= seconds <= 3600:
            raise ValueError("/wait takes 0 to 3600 seconds")
        await asyncio.sleep(seconds)

    async def _click(self, args: list[str]) -> None:
        if not args or len(args) > 2:
            raise ValueError("usage: /click LABEL [MESSAGE_ID]")
        label = args[0]
        if len(args) == 2:
            if not args[1].isdigit():
                raise ValueError(f"{args[1]!r} is not a message ID (the number after · in the output)")
            target = self._message_by_id(int(args[1]), label)
        else:
            target = self._newest_with_button(label)
        result = await self.user.click(target, label=label)
        self._print_interaction(result)

    def _newest_with_button(self, label: str) -> Any:
        """The newest bot message in the current channel that has a button ``label``."""
        bot_id = self.world.bot.user.id
        for message in reversed(self.channel.history(viewer=self.user)):
            if message.author.id == bot_id and label in _labels(message):
                return message
        raise ValueError(f"no bot message with a button {label!r} in #{self.channel.name}; "
                         "give its ID (/click LABEL MESSAGE_ID) to click one in another channel")

    def _message_by_id(self, message_id: int, label: str) -> Any:
        """Message ``message_id`` in any channel or thread the current user can see."""
        from simcord.backend.access import channel_accessible
        from simcord.results import to_discord_message

        backend = self.world.env.backend
        viewer = self.user.id
        for channel_id, messages in list(backend.messages.items()):
            stored = messages.get(message_id)
            if stored is None:
                continue
            if not (channel_accessible(backend, channel_id, viewer, history=True) and stored.visible_to(viewer)):
                break  # it exists, but not for this user: the same answer as a miss
            message = to_discord_message(self.world.env, stored)
            labels = _labels(message)
            if label not in labels:
                where = getattr(message.channel, "name", None) or channel_id
                raise ValueError(f"message {message_id} in #{where} has no button {label!r}"
                                 + (f"; its buttons: {', '.join(map(repr, labels))}" if labels else
                                    "; it has no buttons"))
            return message
        raise ValueError(f"no message {message_id} that {self.user_name} can see in any channel or thread; "
                         "check the ID (the number after · in the output), or /as a user who can see it")

    async def _slash(self, args: list[str]) -> None:
        if not args:
            raise ValueError("usage: /slash NAME key=value …")
        options: dict[str, Any] = {}
        for a in args[1:]:
            key, sep, value = a.partition("=")
            if not sep:
                raise ValueError(f"option {a!r} is not key=value")
            options[key] = self._option_value(value)
        result = await self.user.slash(self.channel, args[0], **options)
        self._print_interaction(result)

    def _option_value(self, value: str) -> Any:
        if value.startswith("@") and value[1:] in self.world.members:
            return self.world.members[value[1:]]
        return value

    def _print_interaction(self, result: Any) -> None:
        """Ephemeral answers never reach the channel's event stream: print them from the result."""
        for msg in [result.response, *getattr(result, "followups", [])]:
            if msg is not None and msg.ephemeral:
                m = msg.message
                payload = {
                    "id": m.id, "channel_id": m.channel.id, "author": {"username": m.author.name},
                    "content": m.content, "embeds": [e.to_dict() for e in m.embeds],
                    "components": [c.to_dict() for c in m.components], "flags": 64,
                    "attachments": [{"filename": a.filename, "size": a.size} for a in m.attachments],
                }
                self.printer.emit("message", payload)


def _start_reader(queue: asyncio.Queue[str | None], stream: TextIO) -> None:
    """Read stdin on a daemon thread, so a blocked read never holds up exit after /quit."""
    loop = asyncio.get_running_loop()

    def read() -> None:
        for line in iter(stream.readline, ""):
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="console-stdin", daemon=True).start()


async def run_console(user: str, *, as_json: bool = False, channel: str = "ops",
                      stdin: TextIO | None = None, out: TextIO | None = None, **world_args: Any) -> int:
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    async with open_world(wall_clock=True, **world_args) as world:
        console = Console(world, user, channel, out, as_json)
        world.env.backend.subscribers.append(console.printer)
        if stdin.isatty():
            console.note(f"you are {user} in #{channel}; type !help, or /help for console lines")
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        _start_reader(queue, stdin)
        try:
            while (line := await queue.get()) is not None:
                if not await console.handle(line):
                    break
            # Let background work (rollouts, alerts) that the last lines started finish printing.
            try:
                await world.app.supervisor.join(timeout=world.app.settings.env("prod").timeout_seconds)
            except TimeoutError:
                console.note("stopping unfinished background work: " + ", ".join(world.app.supervisor.running))
        finally:
            world.env.backend.subscribers.remove(console.printer)
    return 0
