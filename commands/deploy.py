"""Deploy and rollback: plan (validate, resolve), then execute (patch, watch, roll back on failure).

No Discord here. The bot layer asks for a plan, confirms it with the user when the env wants
that, takes the operation lock, and runs ``execute`` in the background with a progress callback.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from commands.audit import MAX_QUERY_LIMIT, AuditLog, AuditRecord
from commands.catalog import Catalog, UserError
from commands.models import RevisionInfo, RolloutProgress
from commands.targets.base import NotFound, Platform, PlatformError, WatchingPlatform

# Docker's tag grammar: https://docs.docker.com/reference/cli/docker/image/tag/
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

Kind = Literal["deploy", "rollback"]
Outcome = Literal["deployed", "rolled_back", "failed", "rollback_failed"]
Phase = Literal["rollout", "rollback"]


@dataclass(frozen=True)
class Actor:
    """Who asked, for audit, change-cause and messages."""

    id: int
    name: str
    channel: str | None = None


class Plan(BaseModel):
    kind: Kind
    service: str
    env: str
    from_version: str | None = None
    to_version: str | None = None  # deploy: the version; rollback: the target revision's version
    image: str | None = None  # deploy only
    revision: int | None = None  # rollback only: the revision to go back to
    promoted_from: str | None = None  # deploy without a version: the env it was taken from
    notes: list[str] = []  # said with the plan: the revisions a default rollback skipped, and why
    warning: str | None = None  # an explicit rollback target known bad: kept (kubectl semantics), said

    def describe(self) -> str:
        if self.kind == "deploy":
            src = f" (promoted from {self.promoted_from})" if self.promoted_from else ""
            return f"deploy {self.service} {self.to_version} to {self.env}{src}"
        return f"roll back {self.service} in {self.env} to revision {self.revision} ({self.to_version})"


class Preview(BaseModel):
    """What a plan would do, for `--dry-run`: how the change is made and what is watched."""

    platform: str
    where: str
    strategy: str
    checks: list[str]


class Result(BaseModel):
    plan: Plan
    outcome: Outcome
    seconds: float
    reason: str | None = None  # why the rollout failed
    rolled_back_to: str | None = None  # version running after an automatic rollback
    rollback_error: str | None = None
    progress: RolloutProgress | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "deployed"


ProgressCallback = Callable[[Phase, RolloutProgress, float], Awaitable[None]]
AppliedCallback = Callable[[Phase, int], Awaitable[None]]


def change_cause(plan: Plan, actor: Actor) -> str:
    where = f" in #{actor.channel}" if actor.channel else ""
    if plan.kind == "deploy":
        return f"opsbot: deploy {plan.service} {plan.to_version} by {actor.name}{where}"
    return f"opsbot: rollback {plan.service} to revision {plan.revision} ({plan.to_version}) by {actor.name}{where}"


class Deployer:
    def __init__(self, catalog: Catalog, platforms: Mapping[str, Platform], audit: AuditLog,
                 *, poll_interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.catalog = catalog
        self.platforms = platforms
        self.audit = audit
        self.poll_interval = poll_interval
        self.clock = clock

    # ------------------------------------------------------------------ planning

    def _platform(self, service: str, env: str) -> tuple[Platform, object]:
        target = self.catalog.target(service, env)
        kind = getattr(target, "type", "kubernetes")
        platform = self.platforms.get(kind)
        if platform is None:
            raise UserError(f"no {kind} platform is configured for `{service}` in `{env}`")
        return platform, target

    async def _running_version(self, service: str, env: str) -> str | None:
        platform, target = self._platform(service, env)
        state = await platform.get_state(service, env, target)
        if state.error:
            raise UserError(f"cannot read `{service}` in `{env}`: {state.error}")
        return state.version

    async def plan_deploy(self, service: str, env: str, version: str | None = None) -> Plan:
        service, env = self.catalog.service(service), self.catalog.env(env)
        self.catalog.target(service, env)
        promoted_from = None
        if version is None:
            promoted_from = self.catalog.settings.previous_env(env)
            if promoted_from is None:
                raise UserError(f"`{env}` is first in the promotion order: give a version, "
                                f"e.g. `!deploy {service} {env} v1.2.3`")
            if promoted_from not in self.catalog.settings.services[service].envs:
                raise UserError(f"`{service}` does not run in `{promoted_from}` to promote from: give a version")
            version = await self._running_version(service, promoted_from)
            if version is None:
                raise UserError(f"cannot tell which version `{service}` runs in `{promoted_from}`: give a version")
        version = version.strip()
        if not TAG.match(version):
            raise UserError(f"`{version}` is not a valid image tag (letters, digits, `_`, `.`, `-`; "
                            "at most 128; not starting with `.` or `-`)")
        current = await self._running_version(service, env)
        repository = self.catalog.settings.services[service].repository
        return Plan(kind="deploy", service=service, env=env, from_version=current, to_version=version,
                    image=f"{repository}:{version}", promoted_from=promoted_from)

    async def history(self, service: str, env: str) -> list[RevisionInfo]:
        service, env = self.catalog.service(service), self.catalog.env(env)
        platform, target = self._platform(service, env)
        try:
            return await platform.history(service, env, target)
        except PlatformError as e:
            raise UserError(str(e)) from e

    async def plan_rollback(self, service: str, env: str, revision: int | None = None) -> Plan:
        """Without ``revision``: the newest earlier revision whose version did not fail its last
        rollout under the bot (a release rolled back automatically is not gone back to); the plan's
        notes name what was skipped. With one: that revision, as ``kubectl rollout undo
        --to-revision``, with a warning in the notes when it is known bad."""
        revisions = await self.history(service, env)
        service, env = self.catalog.service(service), self.catalog.env(env)
        current = next((r for r in revisions if r.current), None)
        others = [r for r in revisions if not r.current]
        bad = await self.known_bad(service, env)
        notes, warning = [], None
        if revision is None:
            if not others:
                raise UserError(f"`{service}` in `{env}` has no earlier revision to roll back to")
            chosen = next((r for r in reversed(others) if r.version not in bad), None)
            skipped = [r for r in reversed(others) if chosen is None or r.revision > chosen.revision]
            if chosen is None:
                listed = ", ".join(f"{r.revision} ({r.version}: {bad[r.version or '']})" for r in skipped)
                raise UserError(f"every earlier revision of `{service}` in `{env}` failed its rollout under the bot "
                                f"({listed}); name one to go back to it anyway: `!rollback {service} {env} "
                                f"{others[-1].revision}`")
            notes += [f"skipped revision {r.revision} ({r.version}): {bad[r.version or '']}" for r in skipped]
        else:
            chosen = next((r for r in revisions if r.revision == revision), None)
            if chosen is None:
                valid = ", ".join(f"`{r.revision}` ({r.version})" for r in others) or "none"
                raise UserError(f"`{service}` in `{env}` has no revision {revision}; valid: {valid}")
            if chosen.current:
                raise UserError(f"revision {revision} ({chosen.version}) is what `{service}` runs in `{env}` now")
            if chosen.version in bad:
                warning = f"revision {chosen.revision} ({chosen.version}) is known bad: {bad[chosen.version or '']}"
        return Plan(kind="rollback", service=service, env=env,
                    from_version=current.version if current else None,
                    to_version=chosen.version, revision=chosen.revision, notes=notes, warning=warning)

    async def known_bad(self, service: str, env: str) -> dict[str, str]:
        """Versions whose latest rollout under the bot in ``env`` failed (a deploy, or a rollback to
        them), from the audit log, each with what happened. A version deployed fine since is good."""
        records = [r for action in ("deploy", "rollback")
                   for r in await self.audit.query(service=service, env=env, action=action, limit=MAX_QUERY_LIMIT)]
        latest: dict[str, AuditRecord] = {}
        for r in sorted(records, key=lambda r: (r.at, r.id), reverse=True):  # newest first: a version's latest
            version = r.args.get("version")
            if isinstance(version, str) and r.result in ("ok", "rolled_back", "failed"):
                latest.setdefault(version, r)
        return {v: f"its {r.action} by {r.user_name} failed ({r.at:%Y-%m-%d %H:%M} UTC)"
                for v, r in latest.items() if r.result != "ok"}

    def preview(self, plan: Plan) -> Preview:
        """How ``plan`` would be carried out and watched (`--dry-run`); reads nothing."""
        platform, target = self._platform(plan.service, plan.env)
        env_cfg = self.catalog.settings.env(plan.env)
        if platform.name == "docker":
            where = f"container `{getattr(target, 'container', plan.service)}`"
            strategy = ("the container is replaced: the new one is created and started, the running one "
                        "stopped and kept for a rollback" if plan.kind == "deploy" else
                        "the kept container of that revision is started again (recreated from its image if it was "
                        "removed) and the running one stopped and kept")
        else:
            where = (f"Deployment `{getattr(target, 'deployment', None) or plan.service}` in namespace "
                     f"`{getattr(target, 'namespace', None) or plan.env}`")
            strategy = ("the Deployment's own rolling update (`kubectl set image` with a change-cause)"
                        if plan.kind == "deploy" else
                        "`kubectl rollout undo --to-revision`: that revision's pod template, rolled out by the "
                        "Deployment's own strategy")
        checks = [f"the rollout is watched until every replica is updated, ready and available, for at most "
                  f"{env_cfg.timeout_seconds} s",
                  "crash-looping pods, images that cannot be pulled and missed progress deadlines fail it"]
        if plan.kind == "deploy":
            checks.append("on failure: " + ("an automatic rollback to what runs now" if env_cfg.auto_rollback
                                             else "no automatic rollback (off for this env)"))
        else:
            checks.append("on failure: an automatic rollback to what runs now")
        return Preview(platform=platform.name, where=where, strategy=strategy, checks=checks)

    # ------------------------------------------------------------------ execution

    async def execute(self, plan: Plan, actor: Actor, on_progress: ProgressCallback,
                      *, timeout: float | None = None, auto_rollback: bool | None = None,
                      on_applied: AppliedCallback | None = None) -> Result:
        """Run the plan to its end. The caller holds the operation lock. Audits the outcome.

        ``on_applied(phase, generation)`` is told when a change is in the cluster (the rollout, then
        an automatic rollback), so that another replica can take the watch over (commands/handover.py).
        """
        platform, target = self._platform(plan.service, plan.env)
        started = self.clock()
        try:
            if plan.kind == "deploy":
                assert plan.image is not None
                generation = await platform.set_image(plan.service, plan.env, target, plan.image,
                                                      change_cause(plan, actor))
            else:
                _, generation = await platform.rollback(plan.service, plan.env, target, plan.revision,
                                                        change_cause(plan, actor))
        except (PlatformError, UserError) as e:
            result = Result(plan=plan, outcome="failed", seconds=self.clock() - started, reason=str(e))
            await self._audit(result, actor)
            return result
        if on_applied is not None:
            await on_applied("rollout", generation)
        return await self.resume(plan, actor, "rollout", generation, on_progress, timeout=timeout,
                                 auto_rollback=auto_rollback, on_applied=on_applied, started=started)

    async def resume(self, plan: Plan, actor: Actor, phase: Phase, generation: int, on_progress: ProgressCallback,
                     *, timeout: float | None = None, auto_rollback: bool | None = None,
                     on_applied: AppliedCallback | None = None, started: float | None = None) -> Result:
        """Watch an applied change to its end: the rollout (rolling a failure back) or the automatic
        rollback of one. ``execute`` continues here; a new leader starts here (commands/handover.py)."""
        env_cfg = self.catalog.settings.env(plan.env)
        timeout = float(timeout if timeout is not None else env_cfg.timeout_seconds)
        auto_rollback = env_cfg.auto_rollback if auto_rollback is None else auto_rollback
        platform, target = self._platform(plan.service, plan.env)
        started = self.clock() if started is None else started
        if phase == "rollback":
            return await self._watch_rollback(platform, target, plan, actor, generation, None, timeout,
                                              on_progress, started, reason="the rollout failed")
        try:
            progress = await self._watch(platform, plan, target, generation, "rollout", timeout, on_progress)
        except (PlatformError, UserError) as e:
            result = Result(plan=plan, outcome="failed", seconds=self.clock() - started, reason=str(e))
            await self._audit(result, actor)
            return result
        if progress.state == "complete":
            result = Result(plan=plan, outcome="deployed", seconds=self.clock() - started, progress=progress)
            await self._audit(result, actor)
            return result

        reason = _reason(progress)
        if not auto_rollback:
            result = Result(plan=plan, outcome="failed", seconds=self.clock() - started, reason=reason,
                            progress=progress)
            await self._audit(result, actor)
            return result
        # Automatic rollback to the revision before the failed one (kubectl rollout undo).
        try:
            back_to, generation = await platform.rollback(
                plan.service, plan.env, target, None,
                f"opsbot: automatic rollback of {plan.service} {plan.to_version} ({reason}), asked by {actor.name}")
        except (PlatformError, UserError) as e:
            result = Result(plan=plan, outcome="rollback_failed", seconds=self.clock() - started, reason=reason,
                            rollback_error=str(e), progress=progress)
            await self._audit(result, actor)
            return result
        if on_applied is not None:
            await on_applied("rollback", generation)
        return await self._watch_rollback(platform, target, plan, actor, generation, back_to, timeout,
                                          on_progress, started, reason=reason, progress=progress)

    async def _watch_rollback(self, platform: Platform, target: object, plan: Plan, actor: Actor, generation: int,
                              back_to: RevisionInfo | None, timeout: float, on_progress: ProgressCallback,
                              started: float, *, reason: str, progress: RolloutProgress | None = None) -> Result:
        undo = Plan(kind="rollback", service=plan.service, env=plan.env, from_version=plan.to_version)
        if back_to is not None:
            undo.revision, undo.to_version = back_to.revision, back_to.version
        try:
            after = await self._watch(platform, undo, target, generation, "rollback", timeout, on_progress)
            if after.state != "complete":
                raise PlatformError(f"the rollback did not complete either: {_reason(after)}")
            if back_to is None:  # taken over mid-rollback: what runs now is what it went back to
                state = await platform.get_state(plan.service, plan.env, target)
                rolled_back_to = state.version
            else:
                rolled_back_to = back_to.version
        except (PlatformError, UserError) as e:
            result = Result(plan=plan, outcome="rollback_failed", seconds=self.clock() - started, reason=reason,
                            rollback_error=str(e), progress=progress)
        else:
            result = Result(plan=plan, outcome="rolled_back", seconds=self.clock() - started, reason=reason,
                            rolled_back_to=rolled_back_to, progress=progress)
        await self._audit(result, actor)
        return result

    async def _watch(self, platform: Platform, plan: Plan, target: object, generation: int, phase: Phase,
                     timeout: float, on_progress: ProgressCallback) -> RolloutProgress:
        started = self.clock()
        while True:
            try:
                progress = await platform.progress(plan.service, plan.env, target, generation)
            except NotFound:
                raise
            except PlatformError as e:
                # A blip while watching is not a failed rollout: say so and keep watching.
                progress = RolloutProgress(state="progressing", message=f"cannot read progress: {e}")
            elapsed = self.clock() - started
            if not progress.done and elapsed >= timeout:
                progress = progress.model_copy(update={
                    "state": "failed", "reason": "Timeout",
                    "message": f"not done after {int(timeout)} s (the env's timeout)"})
            await on_progress(phase, progress, elapsed)
            if progress.done:
                return progress
            await self._until_change(platform, plan, target)

    async def _until_change(self, platform: Platform, plan: Plan, target: object) -> None:
        """Until the target may have changed (a platform that can watch says so at once), at most
        ``poll_interval``; other platforms are polled."""
        if not isinstance(platform, WatchingPlatform):
            await asyncio.sleep(self.poll_interval)
            return
        try:
            await platform.wait_for_change(plan.service, plan.env, target, timeout=self.poll_interval)
        except PlatformError:  # it should not raise; if it does, poll
            await asyncio.sleep(self.poll_interval)

    async def _audit(self, result: Result, actor: Actor) -> None:
        plan = result.plan
        detail = {
            "deployed": f"{plan.from_version} → {plan.to_version}",
            "rolled_back": f"{plan.to_version} failed ({result.reason}); rolled back to {result.rolled_back_to}",
            "failed": f"{plan.to_version} failed: {result.reason}",
            "rollback_failed": f"{plan.to_version} failed ({result.reason}); rollback failed: {result.rollback_error}",
        }[result.outcome]
        await self.audit.record(
            user_id=actor.id, user_name=actor.name, action=plan.kind, service=plan.service, env=plan.env,
            args={"version": plan.to_version, "revision": plan.revision, "from": plan.from_version},
            result="ok" if result.outcome == "deployed" else ("rolled_back" if result.outcome == "rolled_back" else "failed"),
            detail=detail, duration_ms=int(result.seconds * 1000), channel=actor.channel,
        )


def _reason(progress: RolloutProgress) -> str:
    parts = [progress.reason or "failed"]
    if progress.message:
        parts.append(progress.message)
    unnamed = [p for p in progress.failing_pods if p not in (progress.message or "")]
    if unnamed:
        parts.append("pods " + ", ".join(unnamed[:3]))
    return ": ".join(parts[:2]) + (f" ({parts[2]})" if len(parts) > 2 else "")
