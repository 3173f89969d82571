"""Leader election on a lease, with client-go's rules (k8s.io/client-go/tools/leaderelection).

Why not the ``kubernetes`` package's own ``leaderelection``: it runs in threads that cannot be
stopped, cannot release the lease on shutdown (client-go's ``ReleaseOnCancel``), and builds its
API client from the process-global configuration. The rules are short; they are kept here:

- A candidate reads the lease. Absent: it creates it (one create wins; the others get a conflict).
- The lease is held while its holder renews it. A candidate judges expiry by its **own** clock:
  from the moment it last saw the record change, plus the lease duration. Clocks of different
  machines are never compared, so skew between replicas does not matter.
- Taking over or renewing is a write carrying the resourceVersion that was read: of two
  candidates that saw the same version, exactly one write succeeds.
- The leader renews every ``retry_period``; if it has not managed to renew for ``renew_deadline``
  (shorter than the lease duration) it stops leading, before any standby may take over.
- Releasing (clean shutdown) empties the holder, so a standby takes over at once.

The lock is a port (:class:`LeaseLock`); :mod:`commands.targets.lease` is the Kubernetes one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel

from commands.db import utcnow
from commands.targets.base import Conflict, NotFound, PlatformError

log = logging.getLogger(__name__)


class LeaseRecord(BaseModel):
    """What a lease says (the spec of a coordination.k8s.io Lease)."""

    holder: str = ""
    lease_duration_seconds: float = 0.0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0
    resource_version: str | None = None

    def same_as(self, other: LeaseRecord | None) -> bool:
        if other is None:
            return False
        return (self.holder, self.renew_time, self.resource_version) == (
            other.holder, other.renew_time, other.resource_version)


class LeaseLock(Protocol):
    what: str

    async def get(self) -> LeaseRecord:
        """The current record; ``NotFound`` when there is none."""
        ...

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        """``Conflict`` when it exists already."""
        ...

    async def update(self, record: LeaseRecord, resource_version: str) -> LeaseRecord:
        """``Conflict`` when written since ``resource_version``."""
        ...


def default_identity() -> str:
    """``$POD_NAME`` in Kubernetes (the Deployment sets it), else host name and process ID."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class LeaderElector:
    def __init__(self, lock: LeaseLock, identity: str, *, lease_duration: float = 15.0,
                 renew_deadline: float = 10.0, retry_period: float = 2.0,
                 monotonic: Callable[[], float] = time.monotonic, now: Callable[[], datetime] = utcnow) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self.lock, self.identity = lock, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self._monotonic, self._now = monotonic, now
        self.observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ one attempt

    @property
    def leader(self) -> str | None:
        """Who holds the lease as this candidate last saw it."""
        return self.observed.holder or None if self.observed else None

    @property
    def is_leader(self) -> bool:
        return self.observed is not None and self.observed.holder == self.identity

    async def try_acquire_or_renew(self) -> bool:
        """One round: True when this candidate holds the lease afterwards."""
        now = self._now()
        try:
            current = await self.lock.get()
        except NotFound:
            record = LeaseRecord(holder=self.identity, lease_duration_seconds=self.lease_duration,
                                 acquire_time=now, renew_time=now, transitions=0)
            try:
                self._observe(await self.lock.create(record))
            except PlatformError as e:
                self.last_error = str(e)
                return False
            log.warning("%s: created %s and leads", self.identity, self.lock.what)
            return True
        except PlatformError as e:
            self.last_error = str(e)
            log.info("%s: cannot read %s: %s", self.identity, self.lock.what, e)
            return False

        if not current.same_as(self.observed):
            if self.observed is not None and current.holder != self.observed.holder:
                log.warning("%s: the leader is now %s", self.identity, current.holder or "nobody")
            self._observe(current)
        held_by_other = current.holder not in ("", self.identity)
        duration = current.lease_duration_seconds or self.lease_duration
        if held_by_other and self._observed_at + duration > self._monotonic():
            return False

        mine = current.holder == self.identity
        record = LeaseRecord(
            holder=self.identity, lease_duration_seconds=self.lease_duration,
            acquire_time=current.acquire_time if mine and current.acquire_time else now, renew_time=now,
            transitions=current.transitions if mine else current.transitions + 1)
        try:
            self._observe(await self.lock.update(record, current.resource_version or ""))
        except Conflict:
            return False  # another candidate wrote first; read again next round
        except PlatformError as e:
            self.last_error = str(e)
            return False
        if not mine:
            log.warning("%s: took over %s from %s", self.identity, self.lock.what, current.holder or "nobody")
        self.last_error = None
        return True

    def _observe(self, record: LeaseRecord) -> None:
        self.observed = record
        self._observed_at = self._monotonic()

    # ------------------------------------------------------------------ the loops

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Try every ``retry_period`` (with jitter) until leading (True) or ``stop`` is set (False)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            if await self.try_acquire_or_renew():
                return True
            if await _wait(stop, self.retry_period * (1 + 0.2 * random.random())):
                break
        return False

    async def hold(self, stop: asyncio.Event | None = None) -> bool:
        """Renew until ``stop`` is set (True: still leading) or until the lease is lost (False).

        Lost means: no successful renewal for ``renew_deadline``, or someone else holds it.
        """
        stop = stop or asyncio.Event()
        last_renewal = self._monotonic()
        while True:
            if await _wait(stop, self.retry_period):
                return True
            if await self.try_acquire_or_renew():
                last_renewal = self._monotonic()
                continue
            if self.observed is not None and self.observed.holder not in ("", self.identity):
                log.error("%s: %s is held by %s; stepping down", self.identity, self.lock.what, self.observed.holder)
                return False
            if self._monotonic() - last_renewal >= self.renew_deadline:
                log.error("%s: could not renew %s for %.0f s (%s); stepping down", self.identity,
                          self.lock.what, self.renew_deadline, self.last_error)
                return False

    async def release(self) -> bool:
        """Give the lease up (clean shutdown): a standby takes over at its next attempt."""
        if not self.is_leader or self.observed is None:
            return False
        record = self.observed.model_copy(update={"holder": "", "lease_duration_seconds": 1.0,
                                                  "renew_time": self._now()})
        try:
            self._observe(await self.lock.update(record, self.observed.resource_version or ""))
        except PlatformError as e:
            log.warning("%s: could not release %s: %s", self.identity, self.lock.what, e)
            return False
        log.warning("%s: released %s", self.identity, self.lock.what)
        return True


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``event`` is set first; True when it is set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True
