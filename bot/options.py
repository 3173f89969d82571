"""Options of chat commands (`--dry-run`, `--scale 2`, `--since=10m`): one parser for every command.

A command names the options it knows where it is defined, next to ``@requires``::

    @commands.hybrid_command(name="deploy")
    @requires("deploy")
    @options(Option("--dry-run"), Option("--force"))

``install(bot)`` (once every extension is loaded) makes every command, prefix and slash:

- refuse surplus arguments (discord.py's ``ignore_extra=False`` raises ``TooManyArguments``; the
  error handler renders it with :func:`surplus_message`);
- refuse, once its arguments are parsed and before it runs (nothing audited, nothing sent to a
  platform), any ``--word`` in them that is not one of its options, with a suggestion.

Which text may hold ``--words`` of its own: only arguments declared ``text=`` (a PromQL query, a
metric or PromQL for ``!graph``). Everywhere else, reasons and descriptions included, a word that
starts with ``--`` (or ``—``, what phones make of ``--``) is an option: an unknown one is refused
rather than run as text, so ``!freeze prod 2d release --dry-run`` does not freeze (fail closed).
Write such a word in backticks or quotes to keep it as text: ``!lock prod `--force` is banned``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from discord.ext import commands
from rapidfuzz import fuzz, process

OPTIONS_ATTR = "__opsbot_options__"
F = TypeVar("F", bound=Callable[..., Any])

# `--name`, `--name=value`; phones turn `--` into an em or en dash.
_OPTION = re.compile(r"^(?:--|\u2014|\u2013)(?P<name>[A-Za-z][A-Za-z0-9_-]*)(?:=(?P<value>.*))?$", re.DOTALL)


class OptionError(commands.BadArgument):
    """An unknown, repeated or incomplete option. A ``UserInputError``: rendered with the usage."""


@dataclass(frozen=True)
class Option:
    name: str  # "--dry-run"
    metavar: str | None = None  # "N": the option takes a value
    example: str | None = None  # shown when the value is missing: `--scale 2`

    def __post_init__(self) -> None:
        if not _OPTION.match(self.name) or not self.name.startswith("--") or self.name != self.name.lower():
            raise ValueError(f"an option is spelt `--lower-case`, not {self.name!r}")

    def __str__(self) -> str:
        return f"{self.name} {self.metavar}" if self.metavar else self.name


@dataclass
class Parsed:
    """The options given (name → value, ``True`` for a flag) and the other words, in order."""

    values: dict[str, str | bool] = field(default_factory=dict)
    words: list[str] = field(default_factory=list)

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None


def is_option(word: str) -> bool:
    """Whether ``word`` is written as an option (``--x``, ``--x=1``, ``—x``); ``--`` alone is not."""
    return _OPTION.match(word) is not None


@dataclass(frozen=True)
class OptionSpec:
    """The options a command knows, and its arguments that are free text (``--words`` are theirs)."""

    options: tuple[Option, ...] = ()
    text: frozenset[str] = frozenset()

    def get(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def usage(self) -> str:
        return " ".join(f"[{o}]" for o in self.options)

    def known(self) -> str:
        return ", ".join(f"`{o}`" for o in self.options)

    def unknown(self, word: str, where: str) -> OptionError:
        """The error for ``word``, an option this command does not know, with the closest one."""
        m = _OPTION.match(word)
        name = f"--{m['name'].lower()}" if m else word
        text = f"unknown option `{clean(word)}` for `{where}`"
        if not self.options:
            return OptionError(f"{text}: it takes no options")
        best = process.extractOne(name, [o.name for o in self.options], scorer=fuzz.ratio, score_cutoff=60)
        if best:
            text += f" — did you mean `{best[0]}`?"
        return OptionError(f"{text} (it knows {self.known()})")

    def parse(self, words: Iterable[str], where: str) -> Parsed:
        """Split ``words`` into options and the rest. Raises :class:`OptionError` (fit for chat) on an
        unknown option, one given twice, a value missing or one given to a flag."""
        out = Parsed()
        items = list(words)
        i = 0
        while i < len(items):
            word = items[i]
            i += 1
            m = _OPTION.match(word)
            if m is None:
                out.words.append(word)
                continue
            name = f"--{m['name'].lower()}"
            option = self.get(name)
            if option is None:
                raise self.unknown(word, where)
            if name in out.values:
                raise OptionError(f"`{name}` is given twice")
            value = m["value"]
            if option.metavar is None:
                if value is not None:
                    raise OptionError(f"`{name}` takes no value")
                out.values[name] = True
                continue
            if value is None:
                if i >= len(items) or is_option(items[i]):
                    raise OptionError(f"`{name}` needs a value, e.g. `{name} {option.example or option.metavar}`")
                value = items[i]
                i += 1
            if not value:
                raise OptionError(f"`{name}` needs a value, e.g. `{name} {option.example or option.metavar}`")
            out.values[name] = value
        return out


NONE = OptionSpec()


def clean(text: str, limit: int = 60) -> str:
    """A user's word, safe inside backticks in a reply."""
    text = text.replace("`", "ˋ").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def options(*known: Option | str, text: Iterable[str] = ()) -> Callable[[F], F]:
    """Declare the options a command knows (``Option("--scale", "N")``, or a flag's name) and the
    arguments that are free text of their own. A command without it knows no options."""
    spec = OptionSpec(tuple(o if isinstance(o, Option) else Option(o) for o in known), frozenset(text))

    def decorator(func: F) -> F:
        target = func.callback if isinstance(func, commands.Command) else func
        setattr(target, OPTIONS_ATTR, spec)
        return func

    return decorator


def spec_of(command: commands.Command[Any, ..., Any] | None) -> OptionSpec:
    if command is None:
        return NONE
    return getattr(command.callback, OPTIONS_ATTR, NONE)


def invoked(ctx: commands.Context[Any]) -> str:
    prefix = "/" if ctx.interaction is not None else ctx.bot.app.settings.command_prefix
    return f"{prefix}{ctx.command.qualified_name}" if ctx.command else prefix


def parse(ctx: commands.Context[Any], *values: str | None) -> Parsed:
    """The options (and other words) in a command's arguments, by the command's own spec."""
    words = [w for v in values if v for w in v.split()]
    return spec_of(ctx.command).parse(words, invoked(ctx))


def _arguments(ctx: commands.Context[Any]) -> dict[str, Any]:
    """The command's parsed arguments by name (positional ones live in ctx.args)."""
    if ctx.command is None:
        return dict(ctx.kwargs)
    offset = 2 if ctx.command.cog is not None else 1  # (cog,) ctx, then the parameters
    bound = dict(zip(ctx.command.clean_params, ctx.args[offset:], strict=False))
    bound.update(ctx.kwargs)
    return bound


async def refuse_unknown_options(*args: Any) -> None:
    """After the arguments are parsed, before anything runs: every ``--word`` must be known.

    A command's hook is called with (cog, ctx) when the command has a cog, else (ctx)."""
    ctx: commands.Context[Any] = args[-1]
    spec = spec_of(ctx.command)
    for name, value in _arguments(ctx).items():
        if name in spec.text or not isinstance(value, str):
            continue
        spec.parse(value.split(), invoked(ctx))


def surplus_message(ctx: commands.Context[Any]) -> str:
    """What to say for ``TooManyArguments``: the unknown option, or the words nothing takes."""
    view = ctx.view
    rest = view.buffer[view.index:].strip() if view is not None else ""
    first = rest.split(maxsplit=1)[0] if rest else ""
    if first and is_option(first):
        return str(spec_of(ctx.command).unknown(first, invoked(ctx)))
    if isinstance(ctx.command, commands.Group) and ctx.command.commands and ctx.subcommand_passed:
        names = sorted(c.name for c in ctx.command.commands)
        word = ctx.subcommand_passed
        best = process.extractOne(word.lower(), names, scorer=fuzz.ratio, score_cutoff=60)
        hint = f" — did you mean `{invoked(ctx)} {best[0]}`?" if best else ""
        return (f"`{invoked(ctx)}` has no subcommand `{clean(word)}`{hint} (it has "
                + ", ".join(f"`{n}`" for n in names) + ")")
    if rest:
        return f"`{invoked(ctx)}` takes nothing after that: `{clean(rest)}` is too many"
    return "too many arguments"


def bad_argument_message(ctx: commands.Context[Any]) -> str | None:
    """For a conversion that failed on an option-like word (`!ack --all`): say it is an unknown option."""
    current = getattr(ctx, "current_argument", None)
    if isinstance(current, str) and is_option(current.strip()):
        spec = spec_of(ctx.command)
        name = current.strip()
        m = _OPTION.match(name)
        if m and spec.get(f"--{m['name'].lower()}") is not None:
            return f"`{clean(name)}` goes after the other arguments"
        return str(spec.unknown(name, invoked(ctx)))
    return None


def install(bot: commands.Bot) -> None:
    """Every command refuses surplus arguments and unknown options (call after loading extensions)."""
    for command in bot.walk_commands():
        command.ignore_extra = False
        if command._before_invoke is not None:  # noqa: SLF001 - discord.py keeps one hook per command
            raise RuntimeError(f"`{command.qualified_name}` has its own before_invoke hook; chain it here")
        command.before_invoke(refuse_unknown_options)


__all__ = ["Option", "OptionError", "OptionSpec", "Parsed", "install", "is_option", "options", "parse", "spec_of",
           "surplus_message"]
