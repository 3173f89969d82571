"""Persisted jobs on APScheduler 3: escalation steps, on-call hand-offs, maintenance windows.

One :class:`Scheduler` per process wraps an ``AsyncIOScheduler`` whose job store is a table
(``scheduler_jobs``) in the app's own database, so jobs survive restarts.

**Jobs are text.** A job names its function as ``"package.module:function"`` and carries only
plain JSON keyword arguments (checked, and round-tripped through JSON when added, so a job behaves
the same before and after a restart). Every stored job calls the same trampoline,
:func:`dispatch`, which finds the live :class:`Scheduler` by the ``scheduler`` name stored in the
job and calls ``function(scheduler, **kwargs)``. The function reaches live services through
``scheduler.context`` (``scheduler.context["escalation"]``), set by whoever owns them. The module
registry of live schedulers is filled by :meth:`Scheduler.start` and emptied by
:meth:`Scheduler.shutdown`; two schedulers in one process (tests) need different names, and a
restarted process must use the same name to run the jobs the last one stored.

**Job ids are deterministic** (``esc:<incident>:<generation>:<tick>``,
``oncall:handoff:primary``): adding an id again replaces the job (or, with
``replace_existing=False``, raises :class:`JobExists`), so a restart never duplicates one.

**Nothing is dropped silently.** A job that could not run within ``misfire_grace_time`` of its
time (the bot was down) is not run but reported as ``missed``; a job that raised, one skipped
because its previous run was still going, and one cut off by shutdown are reported too. Handlers
registered with :meth:`Scheduler.on_problem` receive a :class:`JobProblem` (with the job's
function and arguments, so they can say *what* was missed); without a handler it is logged as a
warning. A job that passes ``misfire_grace_time=None`` runs however late and can say so itself.

**The clock is injectable.** APScheduler itself asks ``datetime.now``; this subclass asks the
``clock`` instead when it looks for due jobs and judges misfires, and sleeps on the event loop's
timer for the difference. With the wall clock nothing changes. Tests pass a fake clock, move it and
call :meth:`Scheduler.run_due` (no sleeping). Under simcord pass ``clock=env.now`` and call
``run_due()`` after ``env.advance_time(...)``: simcord makes only bot-owned timers virtual, so the
scheduler's own timer (started outside bot work) still waits in real time.

Limits: APScheduler 3 runs one scheduler per job store; several bot replicas on one database
would each run every job (run one). Job store reads run on the event loop thread, as in
APScheduler itself (small indexed queries); adding, cancelling and listing run in a worker thread.
An in-memory SQLite database gets an in-memory job store (nothing outlives the process anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from threading import TIMEOUT_MAX
from typing import TYPE_CHECKING, Any, Literal, Self

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore, ConflictingIdError, JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_PAUSED, STATE_STOPPED, BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.util import ref_to_obj
from pydantic import BaseModel, ConfigDict, Field

from commands.db import Database, utcnow
from commands.timeutil import short

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger(__name__)

DISPATCH = "commands.scheduler:dispatch"
DEFAULT_TABLE = "scheduler_jobs"
_STORE = "default"
_EXECUTOR = "default"
MAX_JOB_ID = 191  # the job store's key length

ProblemKind = Literal["missed", "error", "skipped", "interrupted"]
ProblemHandler = Callable[["JobProblem"], Awaitable[object] | object]
Clock = Callable[[], datetime]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()

# name -> the started Scheduler of that name (see the module docstring)
_LIVE: dict[str, Scheduler] = {}


class SchedulerGone(RuntimeError):
    """A job ran while no scheduler of its name was running (it is reported as an error)."""


class JobExists(ValueError):
    """``replace_existing=False`` and a job with that id is already scheduled."""


async def dispatch(*, scheduler: str, ref: str, kwargs: dict[str, Any]) -> Any:
    """The function every stored job calls: ``ref(live_scheduler, **kwargs)``."""
    owner = _LIVE.get(scheduler)
    if owner is None:
        raise SchedulerGone(f"no running scheduler {scheduler!r} for {ref}")
    fn = ref_to_obj(ref)
    result = fn(owner, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def live(name: str) -> Scheduler | None:
    """The started scheduler called ``name``, if any."""
    return _LIVE.get(name)


# ----------------------------------------------------------------------------- public models


class JobInfo(BaseModel):
    """A scheduled job as callers see it."""

    model_config = ConfigDict(frozen=True)

    id: str
    ref: str = Field(description="the job's function, 'package.module:function'")
    kwargs: dict[str, Any]
    next_run: datetime | None = Field(description="UTC; None: paused")
    trigger: str

    @classmethod
    def from_job(cls, job: Job) -> JobInfo:
        ref, kwargs = _unwrap(job)
        next_run = job.next_run_time.astimezone(UTC) if job.next_run_time else None
        return cls(id=job.id, ref=ref or job.func_ref, kwargs=kwargs, next_run=next_run, trigger=str(job.trigger))


class JobProblem(BaseModel):
    """Something about a job that somebody should hear about."""

    model_config = ConfigDict(frozen=True)

    kind: ProblemKind = Field(description="missed: not run, too late; error: raised; skipped: "
                                          "the previous run was still going; interrupted: by shutdown")
    job_id: str
    ref: str | None = Field(description="the job's function; None if it could not be known")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    scheduled_at: datetime | None = None
    noticed_at: datetime
    error: str | None = None

    @property
    def late_by(self) -> timedelta | None:
        return None if self.scheduled_at is None else self.noticed_at - self.scheduled_at

    def describe(self) -> str:
        """One line for the ops channel."""
        what = f"`{self.job_id}`" + (f" ({self.ref})" if self.ref else "")
        due = f" due {self.scheduled_at:%Y-%m-%d %H:%M} UTC" if self.scheduled_at else ""
        if self.kind == "missed":
            late = self.late_by or timedelta(0)
            return (f"scheduled job {what}{due} was missed by {short(late)} (the bot was not running "
                    f"or was busy) and was not run")
        if self.kind == "skipped":
            return f"scheduled job {what}{due} was skipped: its previous run was still going"
        if self.kind == "interrupted":
            return f"scheduled job {what}{due} was interrupted by a shutdown and did not finish"
        return f"scheduled job {what}{due} failed: {self.error or 'unknown error'}"


# ----------------------------------------------------------------------------- helpers


def _unwrap(job: Job) -> tuple[str | None, dict[str, Any]]:
    kw = job.kwargs or {}
    if job.func_ref == DISPATCH and isinstance(kw.get("kwargs"), dict):
        return kw.get("ref"), dict(kw["kwargs"])
    return job.func_ref, dict(kw)


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        text = json.dumps(kwargs, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"job arguments must be plain JSON (str, int, float, bool, None, lists, "
                         f"dicts): {e}") from None
    return json.loads(text)


def _check_ref(func_ref: str) -> None:
    if not isinstance(func_ref, str) or ":" not in func_ref:
        raise ValueError(f"a job function is named as 'package.module:function', not {func_ref!r}")
    try:
        fn = ref_to_obj(func_ref)
    except (ImportError, LookupError, ValueError) as e:
        raise ValueError(f"no job function {func_ref!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"{func_ref!r} is not callable")  # noqa: TRY004 - refused like other bad references


def _check_id(job_id: str) -> None:
    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID or job_id != job_id.strip():
        raise ValueError(f"bad job id {job_id!r}: 1..{MAX_JOB_ID} characters, no surrounding blanks")


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime {when!r}: pass an aware datetime")
    return when.astimezone(UTC)


# ----------------------------------------------------------------------------- APScheduler parts


class _SharedEngineStore(SQLAlchemyJobStore):
    """The app's engine is the app's to dispose of, not the job store's."""

    def shutdown(self) -> None:
        pass


@dataclass
class _Snapshot:
    ref: str | None
    kwargs: dict[str, Any]


class _ClockedExecutor(AsyncIOExecutor):
    """Runs jobs as tasks on the loop; misfires are judged by the owner's clock."""

    def __init__(self, owner: Scheduler) -> None:
        super().__init__()
        self._owner = owner
        self.submitted = 0

    @property
    def pending(self) -> set[asyncio.Future[Any]]:
        return set(getattr(self, "_pending_futures", ()))

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        ref, kwargs = _unwrap(job)
        snapshot = _Snapshot(ref, kwargs)
        self._owner._snapshots[job.id] = snapshot
        first_run = run_times[0] if run_times else None
        task = self._eventloop.create_task(self._owner._run_job(job, run_times), name=f"scheduler:{job.id}")
        self.submitted += 1

        def done(f: asyncio.Future[list[JobEvent]]) -> None:
            self._pending_futures.discard(f)
            try:
                if f.cancelled():
                    self._run_job_error(job.id, asyncio.CancelledError("interrupted"))
                    self._owner._problem("interrupted", job.id, snapshot, first_run)
                    return
                exc = f.exception()
                if exc is not None:  # _run_job catches job errors; this is a bug in it
                    self._run_job_error(job.id, exc, exc.__traceback__)
                    self._owner._problem("error", job.id, snapshot, first_run, error=repr(exc))
                    return
                self._run_job_success(job.id, f.result())
            finally:
                if self._owner._snapshots.get(job.id) is snapshot:
                    del self._owner._snapshots[job.id]

        task.add_done_callback(done)
        self._pending_futures.add(task)


class _ClockedScheduler(AsyncIOScheduler):
    """AsyncIOScheduler that asks ``clock`` for the time when it looks for due jobs."""

    def __init__(self, clock: Clock, **options: Any) -> None:
        self._clock = clock
        super().__init__(**options)

    def _now(self) -> datetime:
        return _aware(self._clock()).astimezone(self.timezone)

    def stop_now(self) -> None:
        """Shut down on the calling (loop) thread; AsyncIOScheduler.shutdown defers it."""
        BaseScheduler.shutdown(self, wait=False)
        self._stop_timer()
        self._eventloop = None

    # A copy of BaseScheduler._process_jobs (APScheduler 3.11) with the clock in place of
    # datetime.now; the rest is unchanged.
    def _process_jobs(self) -> float | None:
        if self.state == STATE_PAUSED:
            return None
        now = self._now()
        next_wakeup_time: datetime | None = None
        events: list[JobEvent] = []

        with self._jobstores_lock:
            for jobstore_alias, jobstore in self._jobstores.items():
                try:
                    due_jobs = jobstore.get_due_jobs(now)
                except Exception as e:  # noqa: BLE001 - as in APScheduler: retry later
                    self._logger.warning("Error getting due jobs from job store %r: %s", jobstore_alias, e)
                    retry_wakeup_time = now + timedelta(seconds=self.jobstore_retry_interval)
                    if not next_wakeup_time or next_wakeup_time > retry_wakeup_time:
                        next_wakeup_time = retry_wakeup_time
                    continue

                for job in due_jobs:
                    try:
                        executor = self._lookup_executor(job.executor)
                    except BaseException:  # noqa: BLE001 - as in APScheduler
                        self._logger.error('Executor lookup ("%s") failed for job "%s" -- removing it',
                                           job.executor, job)
                        self.remove_job(job.id, jobstore_alias)
                        continue

                    run_times = job._get_run_times(now)
                    run_times = run_times[-1:] if run_times and job.coalesce else run_times
                    if run_times:
                        try:
                            executor.submit_job(job, run_times)
                        except MaxInstancesReachedError:
                            self._logger.warning('Execution of job "%s" skipped: maximum number of '
                                                 "running instances reached (%d)", job, job.max_instances)
                            events.append(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, job.id,
                                                             jobstore_alias, run_times))
                        except BaseException:
                            self._logger.exception('Error submitting job "%s" to executor "%s"',
                                                   job, job.executor)
                        else:
                            events.append(JobSubmissionEvent(EVENT_JOB_SUBMITTED, job.id,
                                                             jobstore_alias, run_times))

                        job_next_run = job.trigger.get_next_fire_time(run_times[-1], now)
                        if job_next_run:
                            job._modify(next_run_time=job_next_run)
                            jobstore.update_job(job)
                        else:
                            self.remove_job(job.id, jobstore_alias)

                jobstore_next_run_time = jobstore.get_next_run_time()
                if jobstore_next_run_time and (next_wakeup_time is None
                                               or jobstore_next_run_time < next_wakeup_time):
                    next_wakeup_time = jobstore_next_run_time.astimezone(self.timezone)

        for event in events:
            self._dispatch_event(event)

        if self.state == STATE_PAUSED or next_wakeup_time is None:
            return None
        wait = next_wakeup_time.timestamp() - self._now().timestamp()
        return min(max(wait, 0), TIMEOUT_MAX)


# ----------------------------------------------------------------------------- the scheduler


class Scheduler:
    """Persisted, restart-safe jobs for the whole app (see the module docstring).

    ``db``: the app's :class:`Database` (its engine is shared; the job table is ``table``), a
    SQLAlchemy URL (an engine of its own, disposed on shutdown) or None (in memory).
    ``misfire_grace_time`` (seconds) and ``coalesce`` are the defaults for every job
    (``settings.scheduler``). ``clock`` returns the current aware time.
    """

    def __init__(
        self,
        db: Database | str | None = None,
        *,
        name: str = "opsbot",
        table: str = DEFAULT_TABLE,
        misfire_grace_time: int | None = 300,
        coalesce: bool = True,
        clock: Clock = utcnow,
        on_problem: ProblemHandler | None = None,
    ) -> None:
        if not name:
            raise ValueError("a scheduler needs a name")
        self.name = name
        self.clock = clock
        self.misfire_grace_time = misfire_grace_time
        self.coalesce = coalesce
        self.context: dict[str, Any] = {}
        self._handlers: list[ProblemHandler] = [on_problem] if on_problem else []
        self._handler_tasks: set[asyncio.Task[Any]] = set()
        self._snapshots: dict[str, _Snapshot] = {}
        self._started = False
        self.persistent = True
        store: BaseJobStore
        if isinstance(db, Database):
            if db.url.get_backend_name() == "sqlite" and (db.url.database or ":memory:") == ":memory:":
                store, self.persistent = MemoryJobStore(), False
            else:
                store = _SharedEngineStore(engine=db.engine, tablename=table)
        elif isinstance(db, str):
            store = SQLAlchemyJobStore(url=db, tablename=table)
        else:
            store, self.persistent = MemoryJobStore(), False
        self._executor = _ClockedExecutor(self)
        self._aps = _ClockedScheduler(
            clock,
            jobstores={_STORE: store},
            executors={_EXECUTOR: self._executor},
            job_defaults={"coalesce": coalesce, "max_instances": 1, "misfire_grace_time": misfire_grace_time},
            timezone=UTC,
        )
        self._aps.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES)

    @classmethod
    def from_settings(cls, db: Database, settings: Settings, *, name: str = "opsbot",
                      clock: Clock = utcnow, on_problem: ProblemHandler | None = None) -> Scheduler:
        return cls(db, name=name, misfire_grace_time=settings.scheduler.misfire_grace_seconds,
                   coalesce=settings.scheduler.coalesce, clock=clock, on_problem=on_problem)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Scheduler({self.name!r}, {state})"

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._started and self._aps.state != STATE_STOPPED

    async def start(self, *, paused: bool = False) -> None:
        """Register under ``name`` and start. Jobs that came due while nobody ran are looked at
        right away: run if still within their grace time, else reported as missed.

        ``paused``: store jobs but run none until :meth:`resume` (tests).
        """
        if self._started:
            raise RuntimeError(f"{self!r} was started already; make a new one")
        other = _LIVE.get(self.name)
        if other is not None:
            raise RuntimeError(f"a scheduler named {self.name!r} is running already")
        _LIVE[self.name] = self
        try:
            self._aps.start(paused=paused)
        except BaseException:
            _LIVE.pop(self.name, None)
            raise
        self._started = True

    def resume(self) -> None:
        self._aps.resume()

    async def shutdown(self, wait: bool = True, *, grace: float = 5.0) -> None:
        """Stop. ``wait``: let running jobs finish for up to ``grace`` seconds; the rest are
        cancelled and reported as interrupted. Stored jobs stay stored for the next start."""
        if not self.running:
            if _LIVE.get(self.name) is self:
                del _LIVE[self.name]
            return
        if wait:
            try:
                await asyncio.wait_for(self._settle_jobs(), grace)
            except TimeoutError:
                log.warning("scheduler %s: cancelling unfinished jobs", self.name)
        running = self._executor.pending
        self._aps.stop_now()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settle_handlers(), grace)
        if _LIVE.get(self.name) is self:
            del _LIVE[self.name]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    # -- problems ----------------------------------------------------------------------------

    def on_problem(self, handler: ProblemHandler) -> ProblemHandler:
        """Call ``handler(problem)`` (sync or async) for each :class:`JobProblem`. Usable as a decorator."""
        self._handlers.append(handler)
        return handler

    def _on_event(self, event: JobEvent) -> None:
        snapshot = self._snapshots.get(event.job_id)
        if event.code == EVENT_JOB_MISSED:
            assert isinstance(event, JobExecutionEvent)
            self._problem("missed", event.job_id, snapshot, event.scheduled_run_time)
        elif event.code == EVENT_JOB_ERROR:
            assert isinstance(event, JobExecutionEvent)
            exc = event.exception
            error = f"{type(exc).__name__}: {exc}" if exc is not None else None
            self._problem("error", event.job_id, snapshot, event.scheduled_run_time, error=error)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            assert isinstance(event, JobSubmissionEvent)
            when = event.scheduled_run_times[-1] if event.scheduled_run_times else None
            self._problem("skipped", event.job_id, snapshot, when)

    def _problem(self, kind: ProblemKind, job_id: str, snapshot: _Snapshot | None,
                 scheduled_at: datetime | None, *, error: str | None = None) -> None:
        problem = JobProblem(
            kind=kind, job_id=job_id, ref=snapshot.ref if snapshot else None,
            kwargs=snapshot.kwargs if snapshot else {},
            scheduled_at=scheduled_at.astimezone(UTC) if scheduled_at else None,
            noticed_at=_aware(self.clock()), error=error,
        )
        log.warning("scheduler %s: %s", self.name, problem.describe())
        for handler in list(self._handlers):
            try:
                result = handler(problem)
            except Exception:
                log.exception("scheduler %s: problem handler failed", self.name)
                continue
            if inspect.isawaitable(result):
                task = asyncio.get_running_loop().create_task(self._guard(result))
                self._handler_tasks.add(task)
                task.add_done_callback(self._handler_tasks.discard)

    async def _guard(self, awaitable: Awaitable[object]) -> None:
        try:
            await awaitable
        except Exception:
            log.exception("scheduler %s: problem handler failed", self.name)

    # -- running jobs ------------------------------------------------------------------------

    async def _run_job(self, job: Job, run_times: list[datetime]) -> list[JobEvent]:
        """APScheduler's run_coroutine_job, with misfires judged by our clock."""
        events: list[JobEvent] = []
        for run_time in run_times:
            if job.misfire_grace_time is not None:
                late = _aware(self.clock()) - run_time
                if late > timedelta(seconds=job.misfire_grace_time):
                    events.append(JobExecutionEvent(EVENT_JOB_MISSED, job.id, _STORE, run_time))
                    continue
            try:
                result = job.func(*job.args, **job.kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                log.exception("scheduler %s: job %s raised", self.name, job.id)
                events.append(JobExecutionEvent(EVENT_JOB_ERROR, job.id, _STORE, run_time, exception=exc,
                                                traceback="".join(traceback.format_exception(exc))))
            else:
                events.append(JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, _STORE, run_time, retval=result))
        return events

    async def run_due(self) -> int:
        """Look for due jobs now (by the clock), run them and wait for them and for the problem
        handlers they caused. Returns how many jobs were started. For tests with a fake clock."""
        self._require_started()
        before = self._executor.submitted
        wait = self._aps._process_jobs()
        self._aps._start_timer(wait)
        await self.settle()
        return self._executor.submitted - before

    async def settle(self, timeout: float | None = None) -> None:
        """Wait until no job and no problem handler is running."""
        async def both() -> None:
            await self._settle_jobs()
            await self._settle_handlers()
            if self._executor.pending or self._handler_tasks:
                await both()

        await asyncio.wait_for(both(), timeout)

    async def _settle_jobs(self) -> None:
        while pending := self._executor.pending:
            await asyncio.wait(pending)

    async def _settle_handlers(self) -> None:
        while pending := set(self._handler_tasks):
            await asyncio.wait(pending)

    def wakeup(self) -> None:
        """Look for due jobs soon (e.g. after a fake clock moved)."""
        if self.running:
            self._aps.wakeup()

    # -- adding, cancelling, listing ---------------------------------------------------------

    async def add_at(self, job_id: str, when: datetime, func_ref: str, *, replace_existing: bool = True,
                     misfire_grace_time: int | None = UNSET, **kwargs: Any) -> JobInfo:
        """Run ``func_ref(scheduler, **kwargs)`` once at ``when`` (aware).

        ``replace_existing=False`` raises :class:`JobExists` if ``job_id`` is scheduled.
        ``misfire_grace_time``: seconds, or None to run however late; default the scheduler's.
        The two option names cannot be job arguments.
        """
        at = _aware(when)
        return await self._add(job_id, DateTrigger(run_date=at, timezone=UTC), func_ref, kwargs,
                               replace_existing=replace_existing, misfire_grace_time=misfire_grace_time)

    async def add_cron(self, job_id: str, crontab: str, func_ref: str, *, timezone: str = "UTC",
                       replace_existing: bool = True, misfire_grace_time: int | None = UNSET,
                       **kwargs: Any) -> JobInfo:
        """Run ``func_ref(scheduler, **kwargs)`` on a 5-field crontab (``"0 4 * * 1"``) in ``timezone``."""
        from zoneinfo import ZoneInfo

        trigger = CronTrigger.from_crontab(crontab, timezone=ZoneInfo(timezone))
        return await self._add(job_id, trigger, func_ref, kwargs,
                               replace_existing=replace_existing, misfire_grace_time=misfire_grace_time)

    async def _add(self, job_id: str, trigger: BaseTrigger, func_ref: str, kwargs: dict[str, Any], *,
                   replace_existing: bool, misfire_grace_time: int | None) -> JobInfo:
        self._require_started()
        _check_id(job_id)
        _check_ref(func_ref)
        plain = _plain(kwargs)
        grace = self.misfire_grace_time if misfire_grace_time is UNSET else misfire_grace_time
        next_run = trigger.get_next_fire_time(None, self._aps._now())
        if next_run is None:
            raise ValueError(f"job {job_id}: its trigger never fires")

        def add() -> Job:
            return self._aps.add_job(
                DISPATCH, trigger=trigger, id=job_id, name=func_ref,
                kwargs={"scheduler": self.name, "ref": func_ref, "kwargs": plain},
                replace_existing=replace_existing, misfire_grace_time=grace, coalesce=self.coalesce,
                max_instances=1, next_run_time=next_run, jobstore=_STORE, executor=_EXECUTOR,
            )

        try:
            job = await asyncio.to_thread(add)
        except ConflictingIdError:
            raise JobExists(f"job {job_id} is already scheduled") from None
        return JobInfo.from_job(job)

    async def cancel(self, job_id: str) -> bool:
        """Remove a scheduled job; False if there was none."""
        self._require_started()

        def remove() -> bool:
            try:
                self._aps.remove_job(job_id, _STORE)
            except JobLookupError:
                return False
            return True

        return await asyncio.to_thread(remove)

    async def cancel_prefix(self, prefix: str) -> int:
        """Remove every job whose id starts with ``prefix`` (not empty); return how many."""
        if not prefix:
            raise ValueError("cancel_prefix needs a prefix; an empty one would cancel every job")
        self._require_started()

        def remove() -> int:
            removed = 0
            for job in self._aps.get_jobs(_STORE):
                if job.id.startswith(prefix):
                    try:
                        self._aps.remove_job(job.id, _STORE)
                    except JobLookupError:
                        continue
                    removed += 1
            return removed

        return await asyncio.to_thread(remove)

    async def jobs(self, prefix: str = "") -> list[JobInfo]:
        """Scheduled jobs whose id starts with ``prefix``, soonest first."""
        self._require_started()

        def read() -> list[JobInfo]:
            return [JobInfo.from_job(j) for j in self._aps.get_jobs(_STORE) if j.id.startswith(prefix)]

        return await asyncio.to_thread(read)

    def running_jobs(self) -> set[str]:
        """Ids of the jobs running right now (no longer in the store, not finished yet)."""
        return set(self._snapshots)

    async def get(self, job_id: str) -> JobInfo | None:
        self._require_started()
        job = await asyncio.to_thread(self._aps.get_job, job_id, _STORE)
        return JobInfo.from_job(job) if job is not None else None

    def _require_started(self) -> None:
        if not self.running:
            raise RuntimeError(f"{self!r}: start() it first")
