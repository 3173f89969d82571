"""Drains the persistent outbox: one sender task per channel, paced, retried, restart-safe.

Each channel has one sender, so one incident's message is only ever written by one task. A sender
asks the store for its most urgent due operation (notices, then messages most severe first and
new before edits, then timeline batches), renders it from the incident's state *now* (so ten
changes while the channel was busy become one edit), waits for the channel's rate limiter
(at most ``send_rate_operations`` in any ``send_rate_seconds``, on top of discord.py's own
rate-limit handling) and calls the :class:`~alerts.notify.Notifier`.

Failures: a retryable :class:`~alerts.notify.SendError` retries that operation with exponential
backoff (or after ``retry_after``, which also pauses the channel); a non-retryable one gives up on
that version and logs it; :class:`~alerts.notify.MessageGone` posts a new message. Any other
exception counts as retryable.

Restarts: the created message's ID is stored the moment ``send`` returns (shielded from
cancellation), and a create is marked in flight before it starts, so after a restart a sender
edits the stored message instead of posting a second one. A create cut off by a crash is retried
with the same ``nonce``, which lets Discord drop the duplicate. Notices and timeline posts are
marked in flight too; one whose outcome is unknown is looked for in chat (the channel, or the
incident's thread) before it is posted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from alerts.notify import MessageGone, Notifier, OutMessage, SendError
from alerts.store import AlertStore, MessageWork, NoticeWork, TimelineWork, Work

log = logging.getLogger(__name__)

T = TypeVar("T")
DbRun = Callable[..., Awaitable[Any]]


class RateLimiter:
    """At most ``operations`` in any window of ``per_seconds`` (Discord counts in windows too).

    A token bucket refilling at ``operations / per_seconds`` would allow a burst and then one
    more a second, which Discord's per-channel window (5 per 5 s) answers with 429s.
    """

    def __init__(self, operations: int, per_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.operations = operations
        # A little slack: Discord counts when requests arrive, and they arrive a little later
        # than they leave, by differing amounts.
        self.per_seconds = per_seconds * 1.02 + 0.05
        self._clock = clock
        self._recent: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0] <= now - self.per_seconds:
            self._recent.popleft()

    def delay(self) -> float:
        """Seconds until an operation may start (0 when one may now)."""
        now = self._clock()
        self._trim(now)
        if len(self._recent) < self.operations:
            return 0.0
        return self._recent[0] + self.per_seconds - now

    def take(self) -> None:
        now = self._clock()
        self._trim(now)
        self._recent.append(now)


class Outbox:
    def __init__(
        self,
        store: AlertStore,
        notifier: Notifier,
        *,
        render_message: Callable[[MessageWork], OutMessage],
        render_timeline: Callable[[TimelineWork], str],
        render_notice: Callable[[str], OutMessage],
        db_run: DbRun,
        rate_operations: int = 5,
        rate_seconds: float = 5.0,
        retry_initial: float = 1.0,
        retry_max: float = 300.0,
        idle_seconds: float = 30.0,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._render_message = render_message
        self._render_timeline = render_timeline
        self._render_notice = render_notice
        self._db_run = db_run
        self._rate = (rate_operations, rate_seconds)
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._idle = idle_seconds
        self._clock = clock
        self._events: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._limiters: dict[str, RateLimiter] = {}
        self._paused_until: dict[str, float] = {}
        self._busy: set[str] = set()
        self._stopping = asyncio.Event()
        self._running = False
        self.stats: Counter[str] = Counter()
        # Told about every incident message chat now shows (escalation starts and stops by it).
        self.on_message: Callable[[MessageWork, str], Awaitable[None]] | None = None
        # Told once when an incident's primary message is first posted (alert graphs); must not block.
        self.on_created: Callable[[MessageWork, str], None] | None = None

    # ------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._running = True
        self._stopping.clear()
        # Senders are started by this task, never by whoever calls wake(): a command handler
        # that acknowledges an incident must not become the owner of a long-lived sender.
        self._spawn_requests: asyncio.Queue[str] = asyncio.Queue()
        self._spawner = asyncio.get_running_loop().create_task(self._spawn_loop(), name="alerts-senders")
        self.wake(await self._db_run(self._store.pending_channels))

    def wake(self, channels: Iterable[str]) -> None:
        """There is news for these channels (starts their senders when needed)."""
        if not self._running:
            return
        for channel in channels:
            if channel not in self._events:
                self._events[channel] = asyncio.Event()
            if channel not in self._tasks or self._tasks[channel].done():
                self._spawn_requests.put_nowait(channel)
            self._events[channel].set()

    async def _spawn_loop(self) -> None:
        while True:
            channel = await self._spawn_requests.get()
            if self._stopping.is_set():
                return
            if channel in self._tasks and not self._tasks[channel].done():
                continue
            self._limiters.setdefault(channel, RateLimiter(*self._rate))
            self._tasks[channel] = asyncio.get_running_loop().create_task(
                self._sender(channel), name=f"alerts-sender:{channel}"
            )

    @property
    def busy(self) -> bool:
        """A chat operation is in flight right now."""
        return bool(self._busy)

    async def stop(self, grace: float = 5.0) -> None:
        """Finish the operation in flight (up to ``grace`` seconds), then stop every sender."""
        self._running = False
        self._stopping.set()
        spawner = getattr(self, "_spawner", None)
        if spawner is not None:
            spawner.cancel()
            await asyncio.gather(spawner, return_exceptions=True)
        for event in self._events.values():
            event.set()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    # ------------------------------------------------------------------------ the sender

    async def _sender(self, channel: str) -> None:
        event = self._events[channel]
        while not self._stopping.is_set():
            try:
                event.clear()
                work, due = await self._db_run(self._store.next_work, channel)
                if work is None:
                    timeout = self._idle
                    if due is not None:
                        timeout = min(timeout, max((due - self._clock()).total_seconds(), 0.01))
                    await self._wait(event, timeout)
                    continue
                if not await self._pace(channel):
                    return
                self._busy.add(channel)
                try:
                    await self._perform(work)
                finally:
                    self._busy.discard(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database or a bug: log it, breathe, go on. The work stays in the outbox.
                log.exception("alert sender for %s failed; retrying", channel)
                await self._wait(self._stopping, 2.0)

    async def _wait(self, event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def _pace(self, channel: str) -> bool:
        """Wait for the channel's pause (a 429) and its rate limiter; False when stopping."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            pause = self._paused_until.get(channel, 0.0) - loop.time()
            wait = max(pause, self._limiters[channel].delay())
            if wait <= 0:
                return True  # the operation takes its slot in _admit, right before calling chat
            await self._wait(self._stopping, wait)
        return False

    def _admit(self, channel: str) -> None:
        """Count a chat call in the channel's window at the moment it leaves, after the database
        writes that precede it: a slow write then spaces calls out instead of bunching them."""
        self._limiters[channel].take()

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        if retry_after is not None and retry_after >= 0:
            return float(retry_after)
        return min(self._retry_max, self._retry_initial * 2 ** max(attempts - 1, 0))

    async def _perform(self, work: Work) -> None:
        if isinstance(work, MessageWork):
            await self._message(work)
        elif isinstance(work, TimelineWork):
            await self._timeline(work)
        else:
            await self._notice(work)

    async def _persist(self, fn: Callable[..., Any], *args: Any) -> None:
        # Shielded: a stop arriving now must not lose what chat already shows.
        await asyncio.shield(self._db_run(fn, *args))

    async def _message(self, work: MessageWork) -> None:
        message = self._render_message(work)
        channel, incident = work.channel, work.incident.id
        posted = None
        if work.message_id is None and work.create_in_flight:
            # A create was interrupted (a crash, another replica that died): chat may show it.
            looked, posted = await self._find_recent(channel, contains=f"#{incident} ", with_embeds=True)
            if not looked:
                return  # the work stays as it is, interrupted: looked at again after the pause
            log.warning("incident #%s in %s: a create was interrupted before; %s", incident, channel,
                        f"found its message {posted}" if posted else f"posting again with nonce {message.nonce}")
        try:
            if posted is not None:
                message_id = posted
                self._admit(channel)
                await self._notifier.edit(channel, posted, message)
                await self._persist(self._store.message_sent, work.delivery_id, work.version, posted)
                self.stats["adopted"] += 1
            elif work.message_id is None:
                await self._db_run(self._store.create_started, work.delivery_id)
                self._admit(channel)
                message_id = await self._notifier.send(channel, message)
                await self._persist(self._store.message_sent, work.delivery_id, work.version, str(message_id))
                self.stats["send"] += 1
            else:
                message_id = work.message_id
                self._admit(channel)
                await self._notifier.edit(channel, work.message_id, message)
                await self._persist(self._store.message_sent, work.delivery_id, work.version, None)
                self.stats["edit"] += 1
        except MessageGone:
            log.warning("incident #%s: its message in %s is gone; posting a new one", incident, channel)
            self.stats["gone"] += 1
            await self._db_run(self._store.message_gone, work.delivery_id)
        except SendError as e:
            self.stats["failed"] += 1
            if not e.retryable:
                log.error("incident #%s: giving up on its message in %s (version %s): %s", incident, channel, work.version, e)
                await self._db_run(self._store.message_failed, work.delivery_id, str(e), None, work.version)
                return
            delay = self._backoff(work.attempts + 1, e.retry_after)
            if e.retry_after is not None:
                self._paused_until[channel] = asyncio.get_running_loop().time() + delay
            log.warning("incident #%s: sending to %s failed (%s); retry in %.1fs", incident, channel, e, delay)
            await self._db_run(self._store.message_failed, work.delivery_id, str(e), delay, work.version, True)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.stats["failed"] += 1
            delay = self._backoff(work.attempts + 1, None)
            log.exception("incident #%s: the notifier failed for %s; retry in %.1fs", incident, channel, delay)
            await self._db_run(self._store.message_failed, work.delivery_id, f"{type(e).__name__}: {e}", delay, work.version)
        else:
            if self.on_message is not None:
                try:
                    await self.on_message(work, str(message_id))
                except Exception:
                    log.exception("incident #%s: the message observer failed", incident)
            if work.message_id is None and work.primary and self.on_created is not None:
                try:
                    self.on_created(work, str(message_id))
                except Exception:
                    log.exception("incident #%s: the new-message observer failed", incident)

    async def _timeline(self, work: TimelineWork) -> None:
        text = self._render_timeline(work)
        if work.in_flight_text is not None:
            # A post of these entries was started and never recorded (a crash, a timeout): chat may show it.
            looked, posted = await self._find_recent(work.channel, content=work.in_flight_text,
                                                     thread_of=work.message_id)
            if not looked:
                return  # stays interrupted: looked at again after the pause
            if posted is not None:
                log.warning("incident #%s: its timeline post in %s was made before a crash; not posting it again",
                            work.incident_id, work.channel)
                await self._persist(self._store.timeline_posted, work.delivery_id, work.entry_ids, None)
                self.stats["adopted"] += 1
                return
        try:
            await self._db_run(self._store.timeline_started, work.delivery_id, work.entry_ids, text)
            self._admit(work.channel)
            thread_id = await self._notifier.thread_post(work.channel, work.message_id, work.thread_name, text)
            await self._persist(self._store.timeline_posted, work.delivery_id, work.entry_ids, thread_id)
            self.stats["thread_post"] += 1
        except MessageGone:
            self.stats["gone"] += 1
            await self._db_run(self._store.message_gone, work.delivery_id)
        except SendError as e:
            self.stats["failed"] += 1
            if not e.retryable:
                log.error("incident #%s: dropping %d timeline entries: %s", work.incident_id, len(work.entry_ids), e)
                await self._db_run(self._store.timeline_posted, work.delivery_id, work.entry_ids, None)
                return
            delay = self._backoff(2, e.retry_after)
            if e.retry_after is not None:
                self._paused_until[work.channel] = asyncio.get_running_loop().time() + delay
            await self._db_run(self._store.timeline_failed, work.delivery_id, delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not chat's answer (a timeout, a bug): the post may have gone through. The mark stays,
            # so the next try looks in the thread first.
            self.stats["failed"] += 1
            log.exception("incident #%s: posting its timeline failed", work.incident_id)
            await self._db_run(self._store.timeline_failed, work.delivery_id, self._backoff(2, None), False)

    async def _find_recent(self, channel: str, **what: Any) -> tuple[bool, str | None]:
        """Ask the notifier whether chat shows a post already (``alerts.notify.FindsRecent``):
        (looked, its ID). When chat cannot be asked now (not connected yet, just after a takeover)
        the channel pauses and nothing is recorded, so the work keeps its interrupted mark: posting
        without looking, or recording a failure that drops the mark, could post it twice."""
        find = getattr(self._notifier, "find_recent", None)
        if find is None:
            return True, None
        try:
            return True, await find(channel, **what)
        except SendError as e:
            delay = e.retry_after if e.retry_after is not None else 2.0
            self._paused_until[channel] = asyncio.get_running_loop().time() + delay
            log.warning("cannot look at %s for an interrupted post yet (%s); again in %.1fs", channel, e, delay)
            return False, None

    async def _notice(self, work: NoticeWork) -> None:
        message = self._render_notice(work.text)
        if work.unknown:
            looked, posted = await self._find_recent(work.channel, content=message.content)
            if not looked:
                return
            if posted is not None:
                log.warning("a notice for %s was posted before a crash; not posting it again", work.channel)
                await self._persist(self._store.notice_done, work.notice_id)
                self.stats["adopted"] += 1
                return
        try:
            await self._db_run(self._store.notice_started, work.notice_id)
            self._admit(work.channel)
            await self._notifier.send(work.channel, message)
            await self._persist(self._store.notice_done, work.notice_id)
            self.stats["notice"] += 1
        except SendError as e:
            self.stats["failed"] += 1
            if not e.retryable:
                log.error("dropping a notice for %s: %s", work.channel, e)
                await self._db_run(self._store.notice_failed, work.notice_id, None)
                return
            await self._db_run(self._store.notice_failed, work.notice_id, self._backoff(work.attempts + 1, e.retry_after))
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not chat's answer (a timeout, a bug): the post may have gone through. The notice keeps
            # its interrupted mark, so the next try looks first; the wait is the channel's pause.
            self.stats["failed"] += 1
            delay = self._backoff(work.attempts + 1, None)
            log.exception("posting a notice to %s failed; looking and retrying in %.1fs", work.channel, delay)
            self._paused_until[work.channel] = asyncio.get_running_loop().time() + delay
