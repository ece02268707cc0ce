"""Certificate revocation from CRLs: fetched from the distribution point, signature-checked,
cached per issuer, refreshed before nextUpdate, the last good CRL kept while the distribution
point is unreachable, and "unknown" (so: refused) once no valid CRL remains (fail closed)."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from pki.errors import PkiError
from pki.loading import load_crl

log = logging.getLogger(__name__)

MAX_CRL_BYTES = 50 * 1024 * 1024
FETCH_TIMEOUT = 10.0  # per socket operation
FETCH_DEADLINE = 30.0  # for the whole download
CLOCK_SKEW = timedelta(minutes=5)
# CRL extensions we understand; any other one marked critical makes the CRL unusable (RFC 5280 §5.2).
_KNOWN_CRL_EXTENSIONS = {
    x509.CRLNumber.oid,
    x509.AuthorityKeyIdentifier.oid,
    x509.IssuingDistributionPoint.oid,
}

Fetch = Callable[[str], Awaitable[bytes]]


class RevocationStatus(enum.StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # no CRL valid now: the caller must refuse


class CrlError(PkiError):
    pass


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): a CRL URL must not lead urllib to ftp:// or elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if not newurl.lower().startswith(("http://", "https://")):
            raise CrlError(f"CRL redirect to a non-HTTP URL refused: {newurl[:100]!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


async def http_fetch(url: str) -> bytes:
    """GET a CRL over HTTP(S) (IGC-Santé publishes them over plain HTTP: they are signed),
    bounded in size and in total time (a server dripping octets cannot hold us)."""
    if not url.lower().startswith(("http://", "https://")):
        raise CrlError(f"unsupported CRL distribution point {url[:100]!r}")
    deadline = time.monotonic() + FETCH_DEADLINE

    def get() -> bytes:
        chunks: list[bytes] = []
        size = 0
        with _OPENER.open(url, timeout=FETCH_TIMEOUT) as response:
            # read1: return what has arrived, so the deadline is checked even on a slow drip.
            while chunk := response.read1(64 * 1024):
                size += len(chunk)
                if size > MAX_CRL_BYTES:
                    raise CrlError(f"CRL at {url} is larger than {MAX_CRL_BYTES} octets")
                if time.monotonic() > deadline:
                    raise CrlError(f"CRL download from {url} took longer than {FETCH_DEADLINE}s")
                chunks.append(chunk)
        return b"".join(chunks)

    return await asyncio.wait_for(asyncio.to_thread(get), FETCH_DEADLINE + 1)


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
        """Install a CRL (loaded from a file, or fetched). Refused unless ``issuer`` signed it and
        it is a complete CRL for all the issuer's certificates (RFC 5280 §5.2: no delta CRL, no
        partition, no unknown critical extension) not dated in the future."""
        now = now or datetime.now(UTC)
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise CrlError(f"CRL is not signed by {issuer.subject.rfc4514_string()}")
        _check_scope(crl, url)
        if crl.last_update_utc > now + CLOCK_SKEW:
            raise CrlError(f"CRL is dated in the future ({crl.last_update_utc:%Y-%m-%d %H:%M} UTC)")
        key = _issuer_key(issuer)
        current = self._entries.get(key)
        if current is not None and _is_older(crl, current.crl):
            log.warning(
                "ignoring a CRL older than the cached one for %s", issuer.subject.rfc4514_string()
            )
            return
        revoked = frozenset(r.serial_number for r in crl)
        self._entries[key] = _Entry(crl, revoked, url or (current.url if current else None), now)

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
            lock = self._locks.get(key)
            still_valid = entry is not None and now <= (entry.crl.next_update_utc or now)
            # While another task refreshes, a still-valid cached CRL answers: no queueing.
            if not (still_valid and lock is not None and lock.locked()):
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
                except Exception as exc:  # any failure: keep the last good CRL, try the next URL
                    log.warning("CRL refresh from %s failed: %s: %s", url, type(exc).__name__, exc)


def _is_older(new: x509.CertificateRevocationList, current: x509.CertificateRevocationList) -> bool:
    """RFC 5280 §5.2.3: CRL numbers order CRLs; fall back to thisUpdate when one lacks it."""
    try:
        new_number = new.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        old_number = current.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        return new_number < old_number
    except x509.ExtensionNotFound:
        return new.last_update_utc < current.last_update_utc


def _check_scope(crl: x509.CertificateRevocationList, url: str | None) -> None:
    for ext in crl.extensions:
        if isinstance(ext.value, x509.DeltaCRLIndicator):
            raise CrlError("delta CRLs are not supported: a complete CRL is required")
        if ext.critical and ext.oid not in _KNOWN_CRL_EXTENSIONS:
            raise CrlError(f"CRL has an unsupported critical extension {ext.oid.dotted_string}")
        if isinstance(ext.value, x509.IssuingDistributionPoint):
            idp = ext.value
            if (
                idp.only_contains_ca_certs
                or idp.only_contains_user_certs
                or idp.only_contains_attribute_certs
                or idp.only_some_reasons
                or idp.indirect_crl
            ):
                raise CrlError("partial CRL (issuing distribution point limits its scope)")
            names = [
                n.value
                for n in idp.full_name or []
                if isinstance(n, x509.UniformResourceIdentifier)
            ]
            if url is not None and names and url not in names:
                raise CrlError(f"CRL is for {names[0]}, not for {url}")
    for revoked in crl:
        for ext in revoked.extensions:
            if ext.critical:
                raise CrlError(
                    f"CRL entry has an unsupported critical extension {ext.oid.dotted_string}"
                )
