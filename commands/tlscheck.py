"""The daily TLS certificate check: connect, verify, read the expiry, warn as it nears.

Each endpoint is reached with the system's trust store (or its ``ca_file``) and its name checked,
as a browser would. The expiry comes from the certificate itself (a small DER reader below, so a
certificate that fails verification, e.g. one already expired, still shows its dates). Warnings are
given once per threshold (``warn_days``, default 14, 7 and 1): the threshold last warned about is
kept per endpoint and certificate in ``tls_cert_warnings``, so a daily check does not repeat itself
and a renewed certificate starts over. Expired certificates and endpoints that cannot be checked are
said every time.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from commands.db import Base, Database, UTCDateTime, utcnow
from commands.when import fmt


class TlsWarningRow(Base):
    __tablename__ = "tls_cert_warnings"

    endpoint: Mapped[str] = mapped_column(String(300), primary_key=True)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    warned_days: Mapped[int] = mapped_column(Integer)


@dataclass(frozen=True)
class Finding:
    endpoint: str
    not_after: datetime | None = None
    days_left: float | None = None
    error: str | None = None  # could not connect or read a certificate
    verify_error: str | None = None  # connected, but the certificate did not verify
    threshold: int | None = None  # the warn_days threshold it is within
    new_warning: bool = False  # that threshold was not warned about yet

    @property
    def expired(self) -> bool:
        return self.days_left is not None and self.days_left < 0


# ----------------------------------------------------------------------------- DER


def _tlv(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at ``i``."""
    tag, length = data[i], data[i + 1]
    i += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[i:i + n], "big")
        i += n
    return tag, i, i + length


def _time(tag: int, raw: bytes) -> datetime:
    text = raw.decode("ascii").rstrip("Z")
    if tag == 0x17:  # UTCTime: YYMMDDHHMM[SS]Z, years 1950..2049
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    fmt_ = "%Y%m%d%H%M%S" if len(text) >= 14 else "%Y%m%d%H%M"
    return datetime.strptime(text[:14], fmt_).replace(tzinfo=UTC)


def validity(der: bytes) -> tuple[datetime, datetime]:
    """(notBefore, notAfter) of an X.509 certificate in DER."""
    _, cert, _ = _tlv(der, 0)  # Certificate ::= SEQUENCE
    _, i, _ = _tlv(der, cert)  # tbsCertificate ::= SEQUENCE
    fields = 0
    while True:
        tag, start, end = _tlv(der, i)
        if tag == 0xA0 and fields == 0:  # [0] version
            i = end
            continue
        fields += 1
        if fields == 4:  # serial, signature, issuer, then validity
            t1, s1, e1 = _tlv(der, start)
            t2, s2, e2 = _tlv(der, e1)
            return _time(t1, der[s1:e1]), _time(t2, der[s2:e2])
        i = end


# ----------------------------------------------------------------------------- checking


def fetch(host: str, port: int, server_name: str | None, ca_file: str | None,
          timeout: float) -> tuple[bytes, str | None]:
    """The endpoint's certificate (DER) and why it did not verify (None: it did). Blocking."""
    name = server_name or host
    context = ssl.create_default_context(cafile=ca_file)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                context.wrap_socket(sock, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der, None
    except ssl.SSLCertVerificationError as e:
        why = e.verify_message or str(e)
    loose = ssl.create_default_context()
    loose.check_hostname = False
    loose.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as sock, \
            loose.wrap_socket(sock, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der, why


class TlsChecker:
    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    async def check(self, endpoints: Sequence[Any], warn_days: Sequence[int]) -> list[Finding]:
        now = self.clock()
        thresholds = sorted(set(warn_days))
        results = await asyncio.gather(*(self._one(ep, now, thresholds) for ep in endpoints))
        return list(results)

    async def _one(self, ep: Any, now: datetime, thresholds: list[int]) -> Finding:
        label = ep.label
        try:
            der, verify_error = await asyncio.to_thread(
                fetch, ep.host, ep.port, ep.server_name, str(ep.ca_file) if ep.ca_file else None, ep.timeout_seconds)
            _, not_after = validity(der)
        except (OSError, ssl.SSLError, ValueError, IndexError) as e:
            reason = "no answer" if isinstance(e, TimeoutError) else (str(e) or type(e).__name__)
            return Finding(label, error=reason)
        days = (not_after - now) / timedelta(days=1)
        threshold = next((d for d in thresholds if days <= d), None)
        new = False
        if threshold is not None and days >= 0:
            new = await self.db.run(self._remember, label, not_after, threshold)
        return Finding(label, not_after=not_after, days_left=days, verify_error=verify_error, threshold=threshold,
                       new_warning=new)

    def _remember(self, label: str, not_after: datetime, threshold: int) -> bool:
        """True when ``threshold`` is news for this certificate (and remember it)."""
        with self.db.session() as session:
            row = session.get(TlsWarningRow, label)
            if row is not None and row.not_after == not_after and row.warned_days <= threshold:
                return False
            if row is None:
                session.add(TlsWarningRow(endpoint=label, not_after=not_after, warned_days=threshold))
            else:
                row.not_after, row.warned_days = not_after, threshold
            return True

    @staticmethod
    def report(name: str, findings: list[Finding], zone: str = "UTC") -> str | None:
        """The message for the ops channel; None when nothing needs saying."""
        lines = []
        for f in findings:
            if f.error:
                lines.append(f"❌ `{f.endpoint}`: cannot check the certificate: {f.error}")
                continue
            assert f.not_after is not None and f.days_left is not None
            when = fmt(f.not_after, zone if zone != "UTC" else None)
            if f.expired:
                lines.append(f"🔴 `{f.endpoint}`: the certificate **expired** {int(-f.days_left)}d ago ({when})")
            elif f.new_warning:
                icon = "🔴" if f.threshold is not None and f.threshold <= 1 else "🟠" if (f.threshold or 99) <= 7 else "🟡"
                left = f"{int(f.days_left)} days" if f.days_left >= 1 else f"{int(f.days_left * 24)} hours"
                lines.append(f"{icon} `{f.endpoint}`: the certificate expires in {left} ({when})")
            if f.verify_error and not f.expired:
                lines.append(f"⚠️ `{f.endpoint}`: the certificate does not verify: {f.verify_error}")
        if not lines:
            return None
        return f"🔐 TLS certificate check (`{name}`)\n" + "\n".join(lines)
