"""Certificate revocation from CRLs: fetched from the distribution point, signature-checked,
cached per issuer, refreshed before nextUpdate, the last good CRL kept while the distribution
point is unreachable, and "unknown" (so: refused) once no valid CRL remains (fail closed)."""

from __future__ import annotations

import asyncio
import enum
import logging
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from pki.errors import PkiError, PkiInputError
from pki.loading import load_crl

log = logging.getLogger(__name__)

MAX_CRL_BYTES = 50 * 1024 * 1024
FETCH_TIMEOUT = 10.0

Fetch = Callable[[str], Awaitable[bytes]]


class RevocationStatus(enum.StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # no CRL valid now: the caller must refuse


class CrlError(PkiError):
    pass


async def http_fetch(url: str) -> bytes:
    """GET a CRL over HTTP(S) (IGC-Santé publishes them over plain HTTP: they are signed)."""
    if not url.startswith(("http://", "https://")):
        raise CrlError(f"unsupported CRL distribution point {url!r}")

    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
            data: bytes = response.read(MAX_CRL_BYTES + 1)
        if len(data) > MAX_CRL_BYTES:
            raise CrlError(f"CRL at {url} is larger than {MAX_CRL_BYTES} octets")
        return data

    return await asyncio.to_thread(get)


def _issuer_key(issuer: x509.Certificate) -> bytes:
    return issuer.fingerprint(hashes.SHA256())


def distribution_points(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    urls = []
    for point in ext:
        for name in point.full_name or []:
            if isinstance(name, x509.UniformResourceIdentifier):
                urls.append(name.value)
    return urls


@dataclass
class _Entry:
    crl: x509.CertificateRevocationList
    revoked: frozenset[int]
    url: str | None
    fetched_at: datetime

    def due(self, now: datetime, margin: timedelta, max_age: timedelta) -> bool:
        next_update = self.crl.next_update_utc
        if next_update is None or now >= next_update - margin:
            return True
        # Revocations published before nextUpdate are picked up within max_age.
        return self.url is not None and now - self.fetched_at >= max_age


class CrlCache:
    """CRLs by issuer. ``status(cert, issuer)`` answers from cache, fetching when the cached CRL
    is missing or due for refresh (``refresh_margin`` before its nextUpdate)."""

    def __init__(
        self,
        *,
        fetch: Fetch = http_fetch,
        refresh_margin: timedelta = timedelta(hours=1),
        max_age: timedelta = timedelta(hours=1),
        retry_after: timedelta = timedelta(minutes=1),
    ) -> None:
        self._fetch = fetch
        self._margin = refresh_margin
        self._max_age = max_age
        self._retry_after = retry_after
        self._entries: dict[bytes, _Entry] = {}
        self._last_attempt: dict[bytes, datetime] = {}
        self._locks: dict[bytes, asyncio.Lock] = {}

    def add(
        self,
        crl: x509.CertificateRevocationList,
        issuer: x509.Certificate,
        url: str | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        """Install a CRL (loaded from a file, or fetched). Refused if ``issuer`` did not sign it."""
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise CrlError(f"CRL is not signed by {issuer.subject.rfc4514_string()}")
        key = _issuer_key(issuer)
        current = self._entries.get(key)
        if current is not None and crl.last_update_utc < current.crl.last_update_utc:
            log.warning(
                "ignoring a CRL older than the cached one for %s", issuer.subject.rfc4514_string()
            )
            return
        revoked = frozenset(r.serial_number for r in crl)
        self._entries[key] = _Entry(
            crl, revoked, url or (current.url if current else None), now or datetime.now(UTC)
        )

    def cached(self, issuer: x509.Certificate) -> x509.CertificateRevocationList | None:
        entry = self._entries.get(_issuer_key(issuer))
        return entry.crl if entry else None

    async def status(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime | None = None
    ) -> tuple[RevocationStatus, str]:
        """(status, human detail) of ``cert``, issued by ``issuer``, at ``at`` (default now)."""
        now = at or datetime.now(UTC)
        key = _issuer_key(issuer)
        entry = self._entries.get(key)
        if entry is None or entry.due(now, self._margin, self._max_age):
            await self._refresh(key, cert, issuer, now)
            entry = self._entries.get(key)
        if entry is None:
            return RevocationStatus.UNKNOWN, "no CRL could be obtained for the issuer"
        next_update = entry.crl.next_update_utc
        if next_update is None or now > next_update:
            return RevocationStatus.UNKNOWN, (
                f"the last good CRL expired at {next_update:%Y-%m-%d %H:%M} UTC"
                if next_update
                else "the CRL has no nextUpdate"
            )
        if cert.serial_number in entry.revoked:
            return RevocationStatus.REVOKED, f"serial {cert.serial_number:x} is listed in the CRL"
        return RevocationStatus.GOOD, "not listed in a current CRL"

    async def _refresh(
        self, key: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: datetime
    ) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self._entries.get(key)
            if entry is not None and not entry.due(now, self._margin, self._max_age):
                return  # another task refreshed it while we waited
            last = self._last_attempt.get(key)
            if last is not None and now - last < self._retry_after:
                return  # do not hammer an unreachable distribution point
            self._last_attempt[key] = now
            urls = distribution_points(cert) or ([entry.url] if entry and entry.url else [])
            for url in urls:
                try:
                    crl = load_crl(await self._fetch(url), url)
                    self.add(crl, issuer, url, now=now)
                    return
                except (OSError, PkiError, PkiInputError, TimeoutError) as exc:
                    log.warning("CRL refresh from %s failed: %s", url, exc)
