"""Keeping the whitelist: bounded conditional download, validation, atomic swap, last good copy.

mssante-spec §2.3, "Refresh policy": poll with conditional requests, validate (well-formed, root
and namespace, a minimum number of entries, ``DateDeGeneration`` never going backwards), keep the
last good copy, swap the in-memory index atomically, raise the alarm when the copy is old, and
never empty the table on a failed fetch.

Several ``colombe serve`` processes may share one store. The last good copy is the store document
``whitelist`` (content + metadata); a lease makes one process download at a time; a process that
finds the copy checked less than ``refresh_interval`` ago does not download, and one that finds a
copy newer than its own in the store loads it. The MTA asks :meth:`WhitelistKeeper.allows` and
:meth:`WhitelistKeeper.is_listed`, answered from one reference to an immutable
:class:`~directory.whitelist.Whitelist` that a refresh replaces in a single assignment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import http.client
import logging
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any, Final, TypeVar

from cryptography import x509

from directory.bounded_http import (
    BoundedHTTPHandler,
    BoundedHTTPSHandler,
    Deadline,
    SafeRedirects,
    client_context,
    is_loopback_host,
    redact_url,
    scrub_secrets,
)
from directory.whitelist import (
    MAX_WHITELIST_BYTES,
    Whitelist,
    WhitelistError,
    parse_datetime,
    parse_whitelist,
)
from pki.dn import DistinguishedName
from pki.errors import PkiError
from store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

DOCUMENT: Final = "whitelist"
LEASE: Final = "whitelist-fetch"
READ_CHUNK: Final = 64 * 1024
FAILURE_RETRY: Final = 300.0
"""Seconds before trying again after a failed or refused download (capped by refresh_interval)."""
NO_COPY_RETRY: Final = 1.0
"""Seconds between looks at the store while another process downloads and we have no copy."""
LEASE_RETRY: Final = 60.0
"""Seconds before looking again while another process holds the download lease."""
FUTURE_TOLERANCE: Final = timedelta(days=1)
"""A ``DateDeGeneration`` later than now plus this is refused: adopted, it would make every
correct list after it look older, and so freeze the copy in use."""


class FetchError(Exception):
    """The download failed (network, TLS, HTTP status, size, time); the message says how."""


@dataclass(frozen=True, slots=True)
class WhitelistSettings:
    """The ``[whitelist]`` section, paths resolved, durations in seconds."""

    url: str
    ca_file: Path | None = None
    refresh_interval: float = 3600.0
    max_age: float = 86400.0
    min_entries: int = 1000
    timeout: float = 60.0
    max_bytes: int = MAX_WHITELIST_BYTES


@dataclass(frozen=True, slots=True)
class Download:
    """What the server answered: ``content`` None for ``304 Not Modified``."""

    content: bytes | None
    etag: str | None = None
    last_modified: str | None = None


# -- download ---------------------------------------------------------------------------------


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """:func:`~directory.bounded_http.client_context`, its errors named after the setting."""
    try:
        return client_context(ca_file)
    except PkiError as exc:
        raise FetchError(f"whitelist.ca_file: {exc}") from None


def _plain_http_refused(url: str) -> FetchError | None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "http" or is_loopback_host(parts.hostname):
        return None
    return FetchError(
        f"plain http:// refused for {redact_url(url)} (whitelist.url): anyone on the path could "
        "add their DN to any domain; use https:// (http:// only to a loopback host)"
    )


def _read_bounded(read: Callable[[int], bytes], limit: int, deadline: float, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    # read1 returns what has arrived: a server dripping octets cannot hold us past the deadline.
    while chunk := read(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise FetchError(f"{what} is larger than {limit} octets")
        if time.monotonic() > deadline:
            raise FetchError(f"{what} took longer than the time allowed (whitelist.timeout)")
        chunks.append(chunk)
    return b"".join(chunks)


def download(
    url: str,
    *,
    context: ssl.SSLContext | None = None,
    etag: str | None = None,
    last_modified: str | None = None,
    timeout: float = 60.0,
    max_bytes: int = MAX_WHITELIST_BYTES,
) -> Download:
    """GET ``url`` (https://, file://, or http:// to a loopback host only), conditionally when
    ``etag``/``last_modified`` of the copy we hold are given. Blocking; bounded in size and in
    total time: ``timeout`` covers connecting, the TLS handshake, the status line, the headers,
    every redirect hop and the body together (see :class:`Deadline`); only the resolution of
    the host name is left to the system resolver's own limits. ``context`` verifies every https
    hop, redirects from http included (the system's store when None). Raises
    :class:`FetchError`; its message never shows the URL's user, password or query."""
    deadline = time.monotonic() + timeout
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise FetchError(f"unreadable whitelist.url {shown}") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = urllib.request.url2pathname(parts.path)
        try:
            with open(path, "rb") as handle:
                return Download(_read_bounded(handle.read, max_bytes, deadline, path))
        except OSError as exc:
            raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from None
    if scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme {scheme or '(none)'!r} in whitelist.url")
    refused = _plain_http_refused(url)
    if refused is not None:
        raise refused
    bound = Deadline(timeout)
    try:
        return _get(url, bound, context, etag, last_modified, timeout, max_bytes)
    except FetchError as exc:
        if bound.expired:
            raise _too_slow(shown, timeout) from None
        raise FetchError(scrub_secrets(str(exc), url)) from None
    finally:
        bound.close()


def _too_slow(shown: str, timeout: float) -> FetchError:
    return FetchError(f"{shown}: no complete answer within {timeout:g} s (whitelist.timeout)")


def _get(
    url: str,
    deadline: Deadline,
    context: ssl.SSLContext | None,
    etag: str | None,
    last_modified: str | None,
    timeout: float,
    max_bytes: int,
) -> Download:
    shown = redact_url(url)
    parts = urllib.parse.urlsplit(url)
    target = url
    authorization: str | None = None
    if "@" in parts.netloc:
        # user:password@ is HTTP Basic authentication, sent to this host only (an unredirected
        # header), never part of the host name urllib would otherwise resolve.
        target = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        credentials = f"{urllib.parse.unquote(parts.username or '')}:" + urllib.parse.unquote(
            parts.password or ""
        )
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    request = urllib.request.Request(target, headers={"User-Agent": "colombe-whitelist"})
    if authorization is not None:
        request.add_unredirected_header("Authorization", authorization)
    # RFC 9110 §13.1.2/§13.1.3: with both, the server uses If-None-Match.
    if etag:
        request.add_header("If-None-Match", etag)
    if last_modified:
        request.add_header("If-Modified-Since", last_modified)
    handlers: list[urllib.request.BaseHandler] = [
        SafeRedirects(FetchError),
        BoundedHTTPHandler(deadline),
        BoundedHTTPSHandler(deadline, context or tls_context(None)),
    ]
    if is_loopback_host(urllib.parse.urlsplit(url).hostname):
        handlers.append(urllib.request.ProxyHandler({}))  # a proxy never serves the loopback
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"{shown} announces {length} octets, more than {max_bytes}")
            body = _read_bounded(response.read1, max_bytes, deadline.at, shown)
            if deadline.expired:  # the watchdog cut the connection: the body may be short
                raise _too_slow(shown, timeout)
            if length is not None and length.isdigit() and len(body) != int(length):
                raise FetchError(f"{shown}: {len(body)} octets received of the {length} announced")
            return Download(body, *_validators(response.headers))
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 304:
                return Download(None, *_validators(exc.headers))
            raise FetchError(f"{shown}: HTTP {exc.code} {exc.reason}") from None
    except FetchError:
        raise
    except Exception as exc:
        if deadline.expired or isinstance(exc, TimeoutError):
            raise _too_slow(shown, timeout) from None
        if isinstance(exc, urllib.error.URLError):
            reason = exc.reason
            if isinstance(reason, FetchError):
                raise reason from None
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise FetchError(
                    f"{shown}: server certificate refused ({reason.verify_message})"
                ) from None
            if isinstance(reason, TimeoutError):
                raise _too_slow(shown, timeout) from None
            raise FetchError(f"{shown}: {reason}") from None
        if isinstance(exc, ssl.SSLError):
            raise FetchError(f"{shown}: TLS error ({exc.reason or exc})") from None
        if isinstance(exc, (OSError, ValueError, http.client.HTTPException)):
            raise FetchError(f"{shown}: {type(exc).__name__}: {exc}") from None
        raise


def _validators(headers: Message) -> tuple[str | None, str | None]:
    return headers.get("ETag"), headers.get("Last-Modified")


async def in_daemon_thread(fn: Callable[[], T], timeout: float) -> T:
    """``fn()`` in a daemon thread, awaited at most ``timeout`` seconds.

    Not the loop's default executor: ``asyncio.run`` joins that one at exit, so a download stuck
    in DNS resolution or a TLS handshake would delay ``colombe serve``'s stop. An abandoned
    thread ends by itself (every download is bounded by its own deadline)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="whitelist-download", daemon=True).start()
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        raise FetchError(f"no whitelist within {timeout:g} s (whitelist.timeout)") from None


# -- keeping ----------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    UPDATED = "updated"  # a new, valid copy is in use
    NOT_MODIFIED = "not_modified"  # the server confirmed our copy (304, or the same octets)
    SKIPPED = "skipped"  # another process checked recently, or is downloading now
    FAILED = "failed"  # no answer, TLS refused, HTTP error, too large, too slow
    REJECTED = "rejected"  # downloaded but invalid (truncated, empty, older...): not used
    DISABLED = "disabled"  # whitelist.url is empty


@dataclass(frozen=True, slots=True)
class RefreshResult:
    outcome: Outcome
    detail: str


@dataclass(frozen=True, slots=True)
class WhitelistStatus:
    """What the metrics and ``colombe whitelist show`` report."""

    url: str
    loaded: bool
    generated_at: datetime | None
    entries: int
    domains: int
    dns: int
    fetched_at: datetime | None  # last download of a new copy (by any process)
    checked_at: datetime | None  # last confirmation by the server, 200 or 304 (by any process)
    age_seconds: float | None  # since checked_at
    stale: bool
    last_error: str | None
    results: dict[str, int]


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _meta_time(meta: dict[str, Any], key: str) -> datetime | None:
    value = meta.get(key)
    return parse_datetime(value) if isinstance(value, str) else None


class WhitelistKeeper:
    """The current whitelist of this process, kept from the store and the ANS server."""

    def __init__(
        self,
        store: Store,
        settings: WhitelistSettings,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self.settings = settings
        self._now = now
        self._holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # The snapshot: replaced whole, never mutated, so a reader sees the old or the new.
        self._current: Whitelist | None = None
        self._sha256: str | None = None
        self._passed_over: str | None = None  # a stored copy older than ours, not reloaded
        self._meta: dict[str, Any] = {}
        self._alarmed = False
        self.results: Counter[str] = Counter()
        self._refresh_lock = asyncio.Lock()

    # -- the MTA's questions ----------------------------------------------------------------------

    @property
    def current(self) -> Whitelist | None:
        return self._current

    def is_listed(self, domain: str) -> bool:
        """Whether ``domain`` is in the whitelist. No copy at all: nothing is listed."""
        current = self._current
        return current is not None and current.is_listed(domain)

    def allows(self, domain: str, peer_dn: DistinguishedName | x509.Name | str) -> bool:
        """Whether the certificate subject ``peer_dn`` is listed for ``domain`` (fail closed)."""
        current = self._current
        return current is not None and current.allows(domain, peer_dn)

    def dn_is_listed(self, peer_dn: DistinguishedName | x509.Name | str) -> bool:
        current = self._current
        return current is not None and current.dn_is_listed(peer_dn)

    # -- store ------------------------------------------------------------------------------------

    async def load(self) -> bool:
        """Install the last good copy from the store (at start, before any download). Returns
        whether a copy is in use afterwards."""
        document = await self._store.load_document(DOCUMENT)
        if document is not None:
            self._meta = dict(document.meta)
            if document.content is not None:
                await self._adopt(document.content)
        return self._current is not None

    async def _adopt(self, content: bytes, *, accept_older: bool = False) -> None:
        sha = hashlib.sha256(content).hexdigest()
        if sha in (self._sha256, self._passed_over):
            return
        try:
            # The copy was validated when it was stored; min_entries may have been raised since,
            # but a stored copy beats none. An empty one never does (parse_whitelist wants 1).
            # In a thread: ~0.3 s for the real list, the MX's event loop must not wait for it.
            whitelist = await asyncio.to_thread(parse_whitelist, content, min_entries=1)
        except WhitelistError as exc:
            self._passed_over = sha
            log.error("the whitelist copy in the store is unusable (%s); not loaded", exc.reason)
            return
        current = self._current
        if (
            not accept_older
            and current is not None
            and whitelist.generated_at < current.generated_at
        ):
            self._passed_over = sha
            return
        self._install(whitelist, sha)
        log.info(
            "whitelist loaded from the store: %d entries, %d domains, %d DNs, generated %s",
            len(whitelist.entries),
            whitelist.domain_count,
            whitelist.dn_count,
            _iso(whitelist.generated_at),
        )

    def _install(self, whitelist: Whitelist, sha: str) -> None:
        self._current = whitelist  # the atomic swap: one reference replaced
        self._sha256 = sha

    async def _sync_from_store(self) -> dict[str, Any]:
        """The stored metadata; the stored copy is loaded if it is not the one we use and not
        older (another process downloaded it)."""
        document = await self._store.load_document(DOCUMENT, with_content=False)
        meta = dict(document.meta) if document is not None else {}
        self._meta = meta
        stored_sha = meta.get("sha256")
        if isinstance(stored_sha, str) and stored_sha not in (self._sha256, self._passed_over):
            stored_generated = _meta_time(meta, "generated_at")
            current = self._current
            # A copy stored without the monotonic check (--force, or another URL) replaces
            # ours even if older: the operator chose it for every process.
            overridden = meta.get("overridden") is True
            if (
                current is None
                or overridden
                or (stored_generated is not None and stored_generated >= current.generated_at)
            ):
                full = await self._store.load_document(DOCUMENT)
                if full is not None and full.content is not None:
                    await self._adopt(full.content, accept_older=overridden)
        return meta

    # -- refresh ----------------------------------------------------------------------------------

    async def refresh(self, *, force: bool = False, override: bool = False) -> RefreshResult:
        """One refresh: download if due (always when ``force``), validate, store, swap.

        ``override`` (``colombe whitelist fetch --force``) accepts a valid list that is older
        than the copy in use or has fewer than half its entries; never one that is invalid,
        empty, below ``min_entries`` or dated in the future."""
        async with self._refresh_lock:
            result = await self._refresh(force, override)
        self.results[result.outcome.value] += 1
        return result

    @property
    def _shown_url(self) -> str:
        """``settings.url`` as stored and shown (no user, password or query)."""
        return redact_url(self.settings.url)

    def _checked_recently(self, meta: dict[str, Any], now: datetime) -> bool:
        checked = _meta_time(meta, "checked_at")
        return (
            checked is not None
            and meta.get("url") == self._shown_url
            and timedelta(0) <= now - checked < timedelta(seconds=self.settings.refresh_interval)
        )

    async def _refresh(self, force: bool, override: bool) -> RefreshResult:
        meta = await self._sync_from_store()
        if not self.settings.url:
            return RefreshResult(
                Outcome.DISABLED, "whitelist.url is empty: the stored copy is used"
            )
        now = self._now()
        if not force and self._current is not None and self._checked_recently(meta, now):
            return RefreshResult(Outcome.SKIPPED, f"checked at {meta.get('checked_at')}")
        ttl = timedelta(seconds=self.settings.timeout + 60)
        if not await self._store.acquire_lease(LEASE, self._holder, ttl):
            return RefreshResult(Outcome.SKIPPED, "another process is downloading the whitelist")
        try:
            # Another process may have finished a download between our look and the lease.
            meta = await self._sync_from_store()
            if not force and self._current is not None and self._checked_recently(meta, now):
                return RefreshResult(Outcome.SKIPPED, f"checked at {meta.get('checked_at')}")
            return await self._download_and_install(meta, override)
        finally:
            await self._store.release_lease(LEASE, self._holder)

    async def _download_and_install(self, meta: dict[str, Any], override: bool) -> RefreshResult:
        settings = self.settings
        shown_url = self._shown_url
        # Conditional only for the copy we actually hold, fetched from the same URL.
        ours = self._current is not None and meta.get("sha256") == self._sha256
        same_url = meta.get("url") == shown_url
        etag = meta.get("etag") if ours and same_url else None
        last_modified = meta.get("last_modified") if ours and same_url else None

        def get() -> Download:
            context = None
            # For http:// too: a redirect to https:// is verified against ca_file as well.
            if urllib.parse.urlsplit(settings.url).scheme.lower() in ("http", "https"):
                context = tls_context(settings.ca_file)
            return download(
                settings.url,
                context=context,
                etag=etag if isinstance(etag, str) else None,
                last_modified=last_modified if isinstance(last_modified, str) else None,
                timeout=settings.timeout,
                max_bytes=settings.max_bytes,
            )

        try:
            answer = await in_daemon_thread(get, settings.timeout + 1)
        except FetchError as exc:
            return await self._failed(meta, Outcome.FAILED, str(exc))
        now = self._now()
        confirmed = {
            **meta,
            "url": shown_url,
            "checked_at": _iso(now),
            "attempted_at": _iso(now),
            "last_error": None,
        }
        if answer.content is None or (
            ours and hashlib.sha256(answer.content).hexdigest() == self._sha256
        ):
            if answer.content is None and not ours:
                # A 304 to a request that was not conditional: nothing usable was received.
                return await self._failed(meta, Outcome.FAILED, "304 without a copy to confirm")
            confirmed["etag"] = answer.etag or meta.get("etag")
            confirmed["last_modified"] = answer.last_modified or meta.get("last_modified")
            await self._store.save_document(DOCUMENT, None, confirmed)
            self._meta = confirmed
            return RefreshResult(Outcome.NOT_MODIFIED, "the server confirmed the copy in use")
        try:
            whitelist = await asyncio.to_thread(
                parse_whitelist, answer.content, min_entries=settings.min_entries
            )
        except WhitelistError as exc:
            return await self._failed(meta, Outcome.REJECTED, f"refused: {exc.reason}")
        refusal = self._refusal(whitelist, meta, now, override)
        if refusal is not None:
            return await self._failed(meta, Outcome.REJECTED, f"refused: {refusal}")
        # Installed without the monotonic check: other processes must take it even if older.
        overridden = override or meta.get("url") not in (None, shown_url)
        if override:
            log.warning("whitelist: installed with --force (older or shorter lists accepted)")
        sha = hashlib.sha256(answer.content).hexdigest()
        stored = {
            **confirmed,
            "etag": answer.etag,
            "last_modified": answer.last_modified,
            "sha256": sha,
            "generated_at": _iso(whitelist.generated_at),
            "fetched_at": _iso(now),
            "entries": len(whitelist.entries),
            "domains": whitelist.domain_count,
            "dns": whitelist.dn_count,
            "overridden": overridden,
        }
        # Stored first: if the store refuses, this process keeps the old copy like the others.
        await self._store.save_document(DOCUMENT, answer.content, stored)
        self._meta = stored
        self._install(whitelist, sha)
        if whitelist.problem_count:
            log.warning(
                "whitelist: %d entries left out (first: entry %d, %s)",
                whitelist.problem_count,
                whitelist.problems[0].position,
                whitelist.problems[0].reason,
            )
        log.info(
            "whitelist updated: %d entries, %d domains, %d DNs, generated %s",
            len(whitelist.entries),
            whitelist.domain_count,
            whitelist.dn_count,
            _iso(whitelist.generated_at),
        )
        return RefreshResult(
            Outcome.UPDATED,
            f"{len(whitelist.entries)} entries, {whitelist.domain_count} domains, "
            f"{whitelist.dn_count} DNs, generated {_iso(whitelist.generated_at)}",
        )

    def _refusal(
        self, whitelist: Whitelist, meta: dict[str, Any], now: datetime, override: bool
    ) -> str | None:
        """Why the valid list ``whitelist`` must not replace the copy in use, or None."""
        latest = now + FUTURE_TOLERANCE
        if whitelist.generated_at > latest:
            return (
                f"generated {_iso(whitelist.generated_at)}, in the future (more than "
                f"{FUTURE_TOLERANCE.days} day after now, {_iso(now)})"
            )
        if override:
            return None
        current = self._current
        if current is not None and 2 * len(whitelist.entries) < len(current.entries):
            return (
                f"{len(whitelist.entries)} usable entries, fewer than half of the "
                f"{len(current.entries)} of the copy in use (truncated or emptied?); "
                "`colombe whitelist fetch --force` accepts it"
            )
        # DateDeGeneration never goes back, compared with copies from the same URL only (the
        # operator who changes the URL chooses another source), and never with a date in the
        # future: such a copy was wrongly accepted once and must not freeze the list.
        if meta.get("url") not in (None, self._shown_url):
            return None
        previous = [
            t
            for t in (
                _meta_time(meta, "generated_at"),
                current.generated_at if current is not None else None,
            )
            if t is not None and t <= latest
        ]
        if previous and whitelist.generated_at < max(previous):
            return (
                f"generated {_iso(whitelist.generated_at)}, before the copy in use "
                f"({_iso(max(previous))}); `colombe whitelist fetch --force` accepts it"
            )
        return None

    async def _failed(self, meta: dict[str, Any], outcome: Outcome, error: str) -> RefreshResult:
        kept = (
            f"the copy generated {_iso(self._current.generated_at)} stays in use"
            if self._current is not None
            else "no copy in use: every exchange is refused"
        )
        log.warning("whitelist %s: %s; %s", outcome.value, error, kept)
        noted = {**meta, "attempted_at": _iso(self._now()), "last_error": error[:500]}
        try:
            await self._store.save_document(DOCUMENT, None, noted)
            self._meta = noted
        except Exception as exc:  # the failure is already logged; the store may be the cause
            log.warning(
                "whitelist: cannot record the failure in the store (%s)", type(exc).__name__
            )
        return RefreshResult(outcome, f"{error}; {kept}")

    # -- age and status ---------------------------------------------------------------------------

    def status(self) -> WhitelistStatus:
        current = self._current
        meta = self._meta
        checked = _meta_time(meta, "checked_at")
        age = (self._now() - checked).total_seconds() if checked is not None else None
        last_error = meta.get("last_error")
        return WhitelistStatus(
            url=self._shown_url,
            loaded=current is not None,
            generated_at=current.generated_at if current is not None else None,
            entries=len(current.entries) if current is not None else 0,
            domains=current.domain_count if current is not None else 0,
            dns=current.dn_count if current is not None else 0,
            fetched_at=_meta_time(meta, "fetched_at"),
            checked_at=checked,
            age_seconds=age,
            stale=current is None or age is None or age > self.settings.max_age,
            last_error=last_error if isinstance(last_error, str) else None,
            results=dict(self.results),
        )

    def check_age(self) -> bool:
        """Log the alarm while the copy is older than ``max_age`` (or missing); True if stale."""
        status = self.status()
        if not status.stale:
            if self._alarmed:
                log.info("whitelist alarm cleared: the copy was confirmed at %s", status.checked_at)
            self._alarmed = False
            return False
        self._alarmed = True
        if not status.loaded:
            log.warning("whitelist alarm: no copy in use, every inter-operator exchange is refused")
        else:
            age = (
                "never confirmed"
                if status.age_seconds is None
                else (f"last confirmed {status.age_seconds / 3600:.1f} h ago")
            )
            log.warning(
                "whitelist alarm: copy generated %s, %s (whitelist.max_age %d s); last error: %s",
                _iso(status.generated_at) if status.generated_at else "?",
                age,
                int(self.settings.max_age),
                status.last_error or "none",
            )
        return True

    def next_delay(self, result: RefreshResult | None) -> float:
        """Seconds until the next refresh should be tried after ``result``."""
        interval = max(1.0, self.settings.refresh_interval)
        if result is None or result.outcome in (Outcome.FAILED, Outcome.REJECTED):
            return min(interval, FAILURE_RETRY)
        if result.outcome is Outcome.SKIPPED and "another process" in result.detail:
            if self._current is None:
                # Nothing to serve yet (a process starting beside the one downloading): look
                # at the store again shortly, the MTA answers 451 until then.
                return min(interval, NO_COPY_RETRY)
            return min(interval, LEASE_RETRY)
        checked = _meta_time(self._meta, "checked_at")
        if checked is None:
            return interval
        due = (checked - self._now()).total_seconds() + interval
        return min(interval, max(1.0, due))

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop`` is set: at once when the copy is missing or due, then every
        ``refresh_interval``; failures are logged and retried, the copy in use is never dropped."""
        while not stop.is_set():
            result: RefreshResult | None
            try:
                result = await self.refresh()
            except Exception as exc:  # the store is down, most likely: try again later
                log.warning("whitelist refresh failed: %s: %s", type(exc).__name__, exc)
                result = None
            self.check_age()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.next_delay(result))
