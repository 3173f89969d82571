"""`!deploy`, `!rollback`, `!history`: releases with confirmation, one live progress message,
automatic rollback, and a line in #deploys. `--dry-run` shows the plan and changes nothing; `--force`
passes a freeze (grant `deploy:force`). A rollback without a revision skips releases that failed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import autocomplete
from bot.checks import Denied, member_allows, requires
from bot.options import OptionError, clean
from bot.options import options as takes_options
from bot.options import parse as parse_options
from bot.render import (
    BLUE,
    clip,
    handover_embed,
    history_embed,
    progress_embed,
    result_embed,
    result_line,
)
from bot.views import ConfirmHandler, Request, ask_confirmation, member_of, resume_pending
from commands.deploy import Actor, Plan, Result
from commands.freeze import FreezeNeedsGrant, Frozen
from commands.handover import Inflight
from commands.locks import Locked, OperationLock

log = logging.getLogger(__name__)

EDIT_INTERVAL = 2.0  # at most one progress edit every ~2 s (Discord rate limits, readable)
CONFIRM_KIND = "release"  # deploys and rollbacks waiting for a Confirm press (bot/views.py)
# `--dry-run`: show the plan, change nothing; `--force`: past a freeze (grant deploy:force)
OPTIONS_HELP = "--dry-run (show the plan, change nothing) · --force (past a freeze; needs deploy:force)"


class ThrottledEditor:
    """Edits one message at most every ``interval`` seconds; the latest state always wins."""

    def __init__(self, message: discord.Message, interval: float = EDIT_INTERVAL) -> None:
        self.message = message
        self.interval = interval
        self._last = 0.0
        self.edits = 0

    async def update(self, embed: discord.Embed) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        await self._edit(embed)

    async def final(self, embed: discord.Embed) -> None:
        await self._edit(embed, final=True)

    async def _edit(self, embed: discord.Embed, final: bool = False) -> None:
        self._last = time.monotonic()
        for attempt in range(3 if final else 1):
            try:
                await self.message.edit(content=None, embed=embed)
                self.edits += 1
                return
            except discord.HTTPException:
                log.warning("progress edit failed (attempt %d)", attempt + 1, exc_info=True)
                await asyncio.sleep(1 + attempt)


def _actor(ctx_or_user: Any, channel: Any) -> Actor:
    user = getattr(ctx_or_user, "author", ctx_or_user)
    return Actor(id=user.id, name=getattr(user, "display_name", str(user)), channel=getattr(channel, "name", None))


class Deploy(commands.Cog):
    """Deploys, rollbacks and revision history."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.app = bot.app  # type: ignore[attr-defined]
        # A Confirm press (maybe after a restart, on another replica) runs a stored plan through these.
        self.app.pending.register(CONFIRM_KIND, ConfirmHandler(recheck=self._recheck_confirmed,
                                                               start=self._start_confirmed,
                                                               ended=self._confirm_ended))

    # ------------------------------------------------------------------ commands

    @commands.hybrid_command(name="deploy")
    @app_commands.autocomplete(service=autocomplete.services, env=autocomplete.envs)
    @requires("deploy")
    @takes_options("--dry-run", "--force")
    @app_commands.describe(service="what to deploy", env="where", version="image tag (default: what the previous env runs)",
                           options=OPTIONS_HELP)
    async def deploy(self, ctx: commands.Context[Any], service: str, env: str, version: str | None = None, *,
                     options: str = "") -> None:
        """Deploy a version (default: promote what the previous env runs), watching the rollout."""
        given = parse_options(ctx, version, options)  # `!deploy chat prod --force`: promote, forced
        if len(given.words) > 1:
            raise OptionError(f"`{clean(' '.join(given.words[1:]))}` is too many after the version")
        version = given.words[0] if given.words else None
        await ctx.defer()
        plan = await self.app.deployer.plan_deploy(service, env, version)
        if plan.from_version == plan.to_version:
            await ctx.send(f"ℹ️ `{plan.service}` already runs `{plan.to_version}` in `{plan.env}`; deploying it again "
                           "restarts nothing. Use a different version.")
            return
        if "--dry-run" in given:
            await self._dry_run(ctx, plan, force="--force" in given)
            return
        await self._begin(ctx, plan, force="--force" in given)

    @commands.hybrid_command(name="rollback")
    @app_commands.autocomplete(service=autocomplete.services, env=autocomplete.envs)
    @requires("rollback")
    @takes_options("--dry-run", "--force")
    @app_commands.describe(service="what to roll back", env="where",
                           revision="revision number (default: the newest earlier one that did not fail)",
                           options=OPTIONS_HELP)
    async def rollback(self, ctx: commands.Context[Any], service: str, env: str, revision: int | None = None, *,
                       options: str = "") -> None:
        """Go back to an earlier revision (kubectl rollout undo semantics; by default skipping releases
        whose rollout failed under the bot)."""
        given = parse_options(ctx, options)
        if given.words:
            raise OptionError(f"`{clean(given.words[0])}` is not a revision number")
        await ctx.defer()
        plan = await self.app.deployer.plan_rollback(service, env, revision)
        if "--dry-run" in given:
            await self._dry_run(ctx, plan, force="--force" in given)
            return
        await self._begin(ctx, plan, force="--force" in given)

    @commands.hybrid_command(name="history")
    @app_commands.autocomplete(service=autocomplete.services, env=autocomplete.envs)
    @requires("history")
    async def history(self, ctx: commands.Context[Any], service: str, env: str) -> None:
        """Revisions with image, change-cause, age and who, and which one runs now."""
        await ctx.defer()
        revisions = await self.app.deployer.history(service, env)
        service, env = self.app.catalog.service(service), self.app.catalog.env(env)
        who = await self._who(service, env, revisions)
        await ctx.send(embed=history_embed(service, env, revisions, who, datetime.now(UTC)))

    async def _who(self, service: str, env: str, revisions: list[Any]) -> dict[int, str]:
        """Who made each revision, from the audit log: the newest successful deploy of that version."""
        records = await self.app.audit.query(service=service, env=env, action="deploy", limit=200)
        by_version: dict[str, str] = {}
        for r in reversed(records):  # oldest first, so newer ones win
            if r.result == "ok" and r.args.get("version"):
                by_version[r.args["version"]] = r.user_name
        return {rev.revision: by_version[rev.version] for rev in revisions if rev.version in by_version}



    # ------------------------------------------------------------------ dry run

    async def _dry_run(self, ctx: commands.Context[Any], plan: Plan, *, force: bool) -> None:
        """`--dry-run`: the plan and what stands in its way; no lock, no audit, no write anywhere."""
        app = self.app
        user = ctx.author
        name = discord.utils.escape_markdown(getattr(user, "display_name", str(user)))
        env_cfg = app.settings.env(plan.env)
        preview = app.deployer.preview(plan)
        now = datetime.now(UTC)
        locks = await app.locks.active(plan.env, plan.service)
        freezes = await app.freezes.active(plan.env)
        e = discord.Embed(title=clip(f"🧪 dry run: {plan.describe()}", 256), colour=BLUE)
        change = f"`{plan.from_version or '?'}` → `{plan.to_version or '?'}`"
        if plan.kind == "rollback":
            change += f" (revision {plan.revision})"
        elif plan.image:
            change += f" (image `{plan.image}`)"
        lines = [f"**Change** {change} on {preview.platform}, {preview.where}",
                 f"**Strategy** {preview.strategy}"]
        lines += [f"↷ {n}" for n in plan.notes] + ([f"⚠️ {plan.warning}"] if plan.warning else [])
        e.description = clip("\n".join(lines), 4096)
        e.add_field(name="Checked while it runs", value=clip("\n".join(f"• {c}" for c in preview.checks), 1024),
                    inline=False)
        if env_cfg.approvals:
            confirm = (f"a Confirm press by {name} (within the confirmation window), then "
                       f"{env_cfg.approvals} approval(s) by someone else holding `{plan.kind}:{plan.env}`")
        elif env_cfg.confirm:
            confirm = f"a Confirm press by {name} (within the confirmation window)"
        else:
            confirm = "nobody: it starts at once"
        e.add_field(name="Who must confirm", value=clip(confirm, 1024), inline=False)
        blocked = []
        if locks:
            blocked.append("locked")
        lock_text = "\n".join(("🔒 " if i.kind == "manual" else "🚀 ") + i.describe(now) for i in locks) or "none"
        e.add_field(name="Locks in force", value=clip(lock_text, 1024), inline=False)
        if freezes:
            may_force = member_allows(app, user, "deploy:force", plan.env, plan.service)
            if force and may_force:
                verdict = "`--force` passes it (you hold `deploy:force`; it would be audited)"
            elif force:
                verdict = "refused: `--force` needs the `deploy:force` grant, which you do not hold"
            else:
                verdict = "refused now; `--force` passes it for holders of `deploy:force`"
            if not (force and may_force):
                blocked.append("frozen")
            freeze_text = "\n".join(f"🧊 {f.describe(app.settings.timezone)}" for f in freezes) + f"\n→ {verdict}"
        else:
            freeze_text = "none"
        e.add_field(name="Freezes in force", value=clip(freeze_text, 1024), inline=False)
        run = f"`{app.settings.command_prefix}{plan.kind} {plan.service} {plan.env} " + (
            f"{plan.to_version}`" if plan.kind == "deploy" else f"{plan.revision}`")
        outcome = (f"as things stand it would be refused ({' and '.join(blocked)})" if blocked
                   else f"{run} does it")
        e.set_footer(text=clip(f"Nothing was changed: no lock taken, no change sent to {preview.platform}. {outcome}.",
                               2048).replace("`", ""))
        await ctx.send(embed=e, allowed_mentions=discord.AllowedMentions.none())

    # ------------------------------------------------------------------ flow

    async def _begin(self, ctx: commands.Context[Any], plan: Plan, *, force: bool = False) -> None:
        """Refuse early if locked or frozen; confirm where the env wants it; then start."""
        await self._refuse_if_locked(plan)
        await self._refuse_if_frozen(ctx, plan, force)
        said = [f"↷ {n}" for n in plan.notes] + ([f"⚠️ {plan.warning}"] if plan.warning else [])
        if said:  # what a default rollback skipped, or that the revision named is known bad
            await ctx.send(clip("\n".join(said), 2000), allowed_mentions=discord.AllowedMentions.none())
        actor = _actor(ctx, ctx.channel)
        env_cfg = self.app.settings.env(plan.env)
        if not (env_cfg.confirm or env_cfg.approvals):
            message = await self._start(plan, actor, ctx.channel)
            if ctx.interaction is not None:  # close the slash command's "thinking…"
                await ctx.send(f"Started: {message.jump_url}", ephemeral=True)
            return

        message = await ask_confirmation(
            self.app, ctx.channel, kind=CONFIRM_KIND, action=plan.kind, service=plan.service, env=plan.env,
            user=ctx.author, summary=plan.describe(),
            payload={"plan": plan.model_dump(mode="json"), "force": force, "channel": actor.channel})
        if ctx.interaction is not None:
            await ctx.send(f"Confirmation asked: {message.jump_url}", ephemeral=True)

    # -- the Confirm press (bot/views.py): everything comes from the stored request ------------------

    async def _recheck_confirmed(self, interaction: discord.Interaction, request: Request) -> str | None:
        """At the press: the invoker still holds the grant, and no lock or freeze came meanwhile."""
        plan = Plan.model_validate(request.payload["plan"])
        invoker = await member_of(interaction, request.invoker_id)
        if invoker is None or not member_allows(self.app, invoker, plan.kind, plan.env, plan.service):
            await self.app.audit.record(user_id=request.invoker_id, user_name=request.invoker_name, action=plan.kind,
                                        service=plan.service, env=plan.env, result="denied",
                                        args={"version": plan.to_version, "revision": plan.revision},
                                        detail="the grant was gone at the Confirm press",
                                        channel=request.payload.get("channel"))
            return (f"🚫 {request.invoker_name} no longer holds the `{plan.kind}:{plan.env}` grant for "
                    f"`{plan.service}`; nothing was started.")
        try:
            await self._refuse_if_locked(plan)
            await self.app.freezes.gate(
                plan.env, plan.service, plan.describe(), force=bool(request.payload.get("force")),
                may_force=member_allows(self.app, invoker, "deploy:force", plan.env, plan.service),
                user_id=invoker.id, user_name=request.invoker_name, channel=request.payload.get("channel"),
                kind=plan.kind)
        except (Locked, Frozen) as e:
            return f"⚠️ {e} Nothing was started."
        except FreezeNeedsGrant as e:
            return f"🚫 {e}, and {request.invoker_name} no longer holds `deploy:force`; nothing was started."
        return None

    async def _start_confirmed(self, interaction: discord.Interaction, request: Request) -> None:
        plan = Plan.model_validate(request.payload["plan"])
        actor = Actor(id=request.invoker_id, name=request.invoker_name, channel=request.payload.get("channel"))
        try:
            await self._start(plan, actor, interaction.channel)
        except Locked as e:
            await interaction.followup.send(f"⚠️ {e}", ephemeral=True)

    async def _confirm_ended(self, request: Request, result: str, who: str) -> None:
        plan = Plan.model_validate(request.payload["plan"])
        await self.app.audit.record(user_id=request.invoker_id, user_name=request.invoker_name, action=plan.kind,
                                    service=plan.service, env=plan.env,
                                    args={"version": plan.to_version, "revision": plan.revision},
                                    result="cancelled", detail=f"{result} by {who}",
                                    channel=request.payload.get("channel"))

    async def _refuse_if_frozen(self, ctx: commands.Context[Any], plan: Plan, force: bool) -> None:
        """A freeze refuses with its reason; `--force` passes for holders of deploy:force (audited)."""
        user = ctx.author
        try:
            gate = await self.app.freezes.gate(
                plan.env, plan.service, plan.describe(), force=force,
                may_force=member_allows(self.app, user, "deploy:force", plan.env, plan.service),
                user_id=user.id, user_name=getattr(user, "display_name", str(user)),
                channel=getattr(ctx.channel, "name", None), kind=plan.kind)
        except FreezeNeedsGrant as e:
            raise Denied("deploy:force", plan.env, plan.service, reason=f"{e}, which you do not hold") from None
        if gate.note:
            await ctx.send(gate.note, allowed_mentions=discord.AllowedMentions.none())

    async def _refuse_if_locked(self, plan: Plan) -> None:
        blocking = await self.app.locks.active(plan.env, plan.service)
        if blocking:
            raise Locked(blocking[0], now=datetime.now(UTC))

    async def _start(self, plan: Plan, actor: Actor, channel: Any) -> discord.Message:
        """Take the operation lock, post the progress message, run the rest in the background."""
        lock = await self.app.locks.acquire_operation(plan.service, plan.env, actor.id, actor.name, plan.describe(),
                                                      ttl=self._ttl(plan))
        try:
            message = await channel.send(f"🚀 {plan.describe()} — started by {actor.name}")
            # Written down, so that another replica can finish it if this one dies (commands/handover.py).
            await self.app.journal.begin(lock.id, plan, actor, channel.id, message.id, self.app.identity)
        except BaseException:
            await lock.release()
            raise
        self.app.supervisor.submit(f"{plan.kind} {plan.service} {plan.env}",
                                   lambda: self._run(plan, actor, message, lock))
        return message

    def _ttl(self, plan: Plan) -> timedelta:
        return timedelta(seconds=self.app.settings.env(plan.env).timeout_seconds * 2 + 120)

    async def _run(self, plan: Plan, actor: Actor, message: Any, lock: OperationLock,
                   resume: Inflight | None = None) -> Result | None:
        editor = ThrottledEditor(message)
        first_failure: list[str] = []

        async def on_progress(phase: str, p: Any, elapsed: float) -> None:
            if phase == "rollout" and p.state == "failed":
                first_failure.append(p.reason or "failed")
            embed = progress_embed(plan, actor.name, phase, p, elapsed,
                                   first=first_failure[0] if phase == "rollback" and first_failure else None)
            if phase == "rollout" and p.state == "failed":
                await editor.final(embed)  # say at once that it failed, before rolling back
            else:
                await editor.update(embed)

        async def on_applied(phase: Any, generation: int) -> None:
            await self.app.journal.applied(lock.id, phase, generation)

        handed_over = False
        try:
            if resume is not None and resume.generation is not None:
                result = await self.app.deployer.resume(plan, actor, resume.phase, resume.generation, on_progress,
                                                        on_applied=on_applied)
            else:
                result = await self.app.deployer.execute(plan, actor, on_progress, on_applied=on_applied)
        except asyncio.CancelledError:
            if self.app.draining:
                # Shutting down and the rollout outlived the grace: keep the lock and the journal
                # entry; the next leader watches it to the end and edits this message.
                handed_over = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(editor.final(handover_embed(plan, actor.name)), 5)
            raise
        finally:
            if not handed_over:
                await self.app.journal.end(lock.id)
                await lock.release()
        await editor.final(result_embed(result, actor.name))
        await self._announce(message.guild, result_line(result, actor.name, actor.channel))
        return result

    async def cog_load(self) -> None:
        self.app.supervisor.submit("take over running deploys", self._take_over)

    @commands.Cog.listener("on_ready")
    async def _resume_confirmations(self) -> None:
        """Confirmations asked before a restart or a failover expire on time (this bot runs on the leader)."""
        await resume_pending(self.app)

    async def _take_over(self) -> None:
        """Operations a previous leader left running: watch them to the end from here."""
        await self.bot.wait_until_ready()
        if not self.app.is_leader:
            return
        for item in await self.app.journal.take_over(self.app.identity):
            info = await self.app.locks.renew(item.lock_id, self._ttl(item.plan))
            channel = self.bot.get_channel(item.channel_id)
            if info is None or not isinstance(channel, discord.abc.Messageable):
                # The lock expired (or was broken by hand), or the channel is gone: nothing to finish.
                log.warning("not taking over %s (lock %s, channel %s)", item.plan.describe(), info, channel)
                await self.app.journal.end(item.lock_id)
                continue
            log.warning("taking over %s from %s", item.plan.describe(), item.previous_owner)
            message = channel.get_partial_message(item.message_id)  # type: ignore[union-attr]
            with contextlib.suppress(discord.HTTPException):
                await channel.send(f"🔁 {item.plan.describe()} (by {item.actor.name}) was running when the bot "
                                   f"restarted; watching it to the end here: {message.jump_url}",
                                   allowed_mentions=discord.AllowedMentions.none())
            lock = OperationLock(self.app.locks, info)
            self.app.supervisor.submit(
                f"{item.plan.kind} {item.plan.service} {item.plan.env} (taken over)",
                lambda item=item, message=message, lock=lock: self._run(  # type: ignore[misc]
                    item.plan, item.actor, message, lock, resume=item))

    async def _announce(self, guild: discord.Guild | None, line: str) -> None:
        if guild is None:
            return
        name = self.app.settings.channels.deploys
        channel = discord.utils.get(guild.text_channels, name=name) or (
            guild.get_channel(int(name)) if name.isdigit() else None)
        if channel is None:
            log.warning("deploys channel %r not found", name)
            return
        try:
            await channel.send(line, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException:
            log.warning("could not post to the deploys channel", exc_info=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Deploy(bot))
