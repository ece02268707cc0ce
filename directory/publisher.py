"""Publication of our BALs to a directory over LDAP (mssante-spec §2.8, §5, §10.4).

The LDAP schema is our own (``directory/ldap_schema/``, see :mod:`directory.ldap_entry`): the
national directory's LDAP schema was never made public, and current ANS guidance for operators is
publication through FHIR and the open-data extraction (mssante-spec §5.5). This channel serves an
LDAP directory: the operator's own, or the national one where it accepts LDAP with this schema. A
FHIR publication channel is expected later (mssante-spec §5.3, §10.4), fed by the same per-BAL
publication queue.

The store is the truth; the directory is made to match it:

- **incremental**: every BAL change bumps its revision and marks it pending in the same
  transaction (:mod:`store.directory_state`); the publisher takes the due BALs in batches and, for
  each, reads its entry and adds, modifies or deletes it. Woken at once when this process changes a
  BAL (``store.bal_changed``), otherwise every ``poll_interval`` seconds (changes made by other
  processes of a cluster), and when a retry falls due.
- **full reconciliation** every ``full_interval`` seconds: a paged search of everything under the
  base DN, compared with a walk of the whole store; missing entries are added, differing managed
  attributes replaced, entries that should not be there deleted. It repairs what was changed
  behind our back and what an incremental pass could not know about.

Only entries of ours are ever modified or deleted: objectClass ``mssBal`` *and* an address in a
domain we host (``Store.list_domains``). Anything else under the base DN (other operators' BALs in
a shared branch, entries not named ``mail=<address>``, other object classes) is foreign: counted
and left alone; a foreign entry at the DN of one of our BALs is an error for that BAL, not
replaced. A full reconciliation refuses to delete more than ``MASS_DELETE_SHARE`` of our entries
(beyond ``MASS_DELETE_MIN`` of them), or any entry while the store holds no BAL at all — an empty
or wrong database must not empty the directory — unless the operator asks for it
(``colombe directory publish --full --allow-mass-delete``).

Both are idempotent: running either twice changes nothing the second time. Only *publishable*
BALs (``Bal.publishable``: active, not liste rouge) have an entry; the others are removed:
liste rouge because the holder asked not to be listed, closed because the mailbox is gone, and
suspended too — a suspended BAL is out of service (suspension rules are the operator's since
Ref #1 v1.3.1, mssante-spec §2.8), and an entry would send correspondents to a mailbox nobody
reads. Suspension is usually temporary, and that is cheap here: reactivating bumps the revision
and the entry is added back by the next pass. An LDAP error on a BAL puts
it in state ``error`` with the message, retried after ``retry_min`` seconds doubling up to
``retry_max``; all of it is visible per BAL in ``colombe directory status``.

ldap3 is synchronous: every LDAP exchange runs in one dedicated worker thread (one connection,
used by one thread at a time, never by the event loop), a batch of operations per hop so that a
hundred thousand entries do not cost a hundred thousand thread switches.

One process of a cluster publishes: the one holding the store lease ``directory-publisher``. It is
renewed by a heartbeat every third of its TTL for as long as the publisher runs, whatever the
worker thread is doing, and expires by the database's clock. A publisher that cannot renew it (taken
over, or the store unreachable for most of a TTL) stops its worker at the next LDAP operation; one
that stops releases the lease only once its worker has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException, LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from directory.ldap_entry import (
    Attributes,
    Changes,
    address_of_dn,
    bal_dn,
    decode_attributes,
    describe_changes,
    entry_digest,
    is_ours,
    modifications,
    same_dn,
    wanted_attributes,
)
from store import Store
from store.directory_state import PublicationFailure, PublicationOutcome, PublicationState
from store.model import Bal

log = logging.getLogger(__name__)

T = TypeVar("T")

LEASE = "directory-publisher"
# Store document holding the outcome of the last full reconciliation (for `directory status` and
# so that a restart does not redo a full reconciliation that ran an hour ago).
STATE_DOCUMENT = "directory-publication"

BATCH = 200  # BALs per incremental batch: one worker-thread hop, one store transaction
MAX_BATCHES_PER_PASS = 50  # then the loop comes back (lease renewed, stop honoured)
PAGE = 500  # LDAP paged-search page and store page of the full reconciliation
MAX_PAGES = 20_000  # 10 million entries: a bound, not a limit anyone should meet
MAX_REPORTED = 1000  # per-BAL lines kept in a pass report
# A full reconciliation deletes no more than this share of our entries, beyond this many, unless
# told to (allow_mass_delete): a store restored empty or pointed at the wrong database would
# otherwise remove every BAL from the directory.
MASS_DELETE_SHARE = 0.10
MASS_DELETE_MIN = 10

# LDAP result codes we handle (RFC 4511 §4.1.9).
NO_SUCH_OBJECT = 32
ENTRY_ALREADY_EXISTS = 68
PAGED_RESULTS = "1.2.840.113556.1.4.319"  # RFC 2696


class PublicationConfigError(ValueError):
    """A setting of the publication is unusable; ``key`` names it (``url``, ``base_dn``...)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class LdapError(Exception):
    """An LDAP operation on one entry failed (the server answered with an error)."""


class DirectoryUnavailable(LdapError):
    """The directory cannot be used at all: connection refused or lost, TLS or bind failure."""


class LeaseLost(Exception):
    """Another process took the publisher lease during a pass (or this publisher is stopping)."""


class Stopped(LeaseLost):
    """The worker was told to stop (lease lost, publisher closing) between two LDAP operations."""


@dataclass(frozen=True)
class LdapSettings:
    """Where and how to publish. Refuses anything that would send the bind password or BAL data
    in clear text (fail closed)."""

    url: str
    base_dn: str
    bind_dn: str
    bind_password: str = field(repr=False)
    starttls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        scheme = parts.scheme.lower()
        if scheme not in ("ldap", "ldaps"):
            raise PublicationConfigError(
                "url", f"must be ldaps://host[:port] or ldap://host[:port], not {self.url!r}"
            )
        if not parts.hostname:
            raise PublicationConfigError("url", f"no host in {self.url!r}")
        try:
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            raise PublicationConfigError("url", f"bad port in {self.url!r}") from None
        if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
            raise PublicationConfigError(
                "url", "must be only scheme://host[:port] (base DN and credentials are settings)"
            )
        if scheme == "ldap" and not self.starttls:
            raise PublicationConfigError(
                "starttls",
                "ldap:// without starttls would send the bind password and BAL data in clear "
                "text: use ldaps://, or set starttls = true",
            )
        if scheme == "ldaps" and self.starttls:
            raise PublicationConfigError(
                "starttls", "ldaps:// is already TLS; starttls = true applies to ldap:// only"
            )
        for key, value in (("base_dn", self.base_dn), ("bind_dn", self.bind_dn)):
            if not value.strip():
                raise PublicationConfigError(key, "is required to publish")
            try:
                parse_dn(value)
            except LDAPInvalidDnError:
                raise PublicationConfigError(key, f"not a valid DN: {value!r}") from None
        if not self.bind_password:
            raise PublicationConfigError(
                "bind_password_file", "no bind password (bind_password_file or bind_password)"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise PublicationConfigError("cert_file", "cert_file and key_file go together")
        if self.timeout <= 0:
            raise PublicationConfigError("timeout", "must be positive")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def use_ssl(self) -> bool:
        return urlsplit(self.url).scheme.lower() == "ldaps"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (636 if self.use_ssl else 389)


@dataclass(frozen=True)
class RetryPolicy:
    minimum: float
    maximum: float

    def delay(self, attempts: int) -> timedelta:
        """Wait before the next try after ``attempts`` failed ones: minimum, doubling, capped."""
        seconds = self.minimum * 2 ** min(attempts, 32)
        return timedelta(seconds=max(self.minimum, min(seconds, self.maximum)))


# -- the LDAP side (runs in the worker thread) --------------------------------------------------


def _result_text(conn: ldap3.Connection) -> str:
    r = conn.result or {}
    text = f"{r.get('description', 'error')} ({r.get('result', '?')})"
    message = str(r.get("message") or "").strip()
    return f"{text}: {message}" if message else text


def _exception_text(exc: BaseException) -> str:
    # ldap3's messages name the host and the reason; never the password (we never format the
    # Connection object, whose repr holds it).
    return f"{type(exc).__name__}: {exc}"[:500]


class LdapClient:
    """One authenticated LDAP connection, opened on first use and re-opened after a failure.

    Synchronous: used by the publisher's worker thread only.
    """

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        self._conn: ldap3.Connection | None = None
        # Set from the event loop: no further operation starts (each raises Stopped).
        self.stop = threading.Event()

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped("the publisher is stopping or lost its lease")

    def _open(self) -> ldap3.Connection:
        s = self.settings
        conn: ldap3.Connection | None = None
        try:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=str(s.ca_file) if s.ca_file else None,
                local_certificate_file=str(s.cert_file) if s.cert_file else None,
                local_private_key_file=str(s.key_file) if s.key_file else None,
                sni=s.host,
            )
            server = ldap3.Server(
                s.host,
                port=s.port,
                use_ssl=s.use_ssl,
                tls=tls,
                get_info=ldap3.NONE,
                connect_timeout=s.timeout,
            )
            conn = ldap3.Connection(
                server,
                user=s.bind_dn,
                password=s.bind_password,
                authentication=ldap3.SIMPLE,
                auto_bind=ldap3.AUTO_BIND_NONE,
                # ldap3 packs it into a socket option: whole seconds only.
                receive_timeout=max(1, round(s.timeout)),
                raise_exceptions=False,
                # A referral must not make us bind (password included) to another server.
                auto_referrals=False,
                return_empty_attributes=False,
            )
            # ldaps://: TLS handshake, certificate chain and host name checked here.
            conn.open()
            if s.starttls and not conn.start_tls():
                raise DirectoryUnavailable(f"StartTLS refused by {s.host}: {_result_text(conn)}")
            if not (s.use_ssl or conn.tls_started):
                # Belt and braces: the settings refuse this; never bind in clear text.
                raise DirectoryUnavailable("refusing to bind without TLS")
            if not conn.bind():
                raise DirectoryUnavailable(f"bind as {s.bind_dn} refused: {_result_text(conn)}")
        except Exception as exc:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.unbind()
            if isinstance(exc, DirectoryUnavailable):
                raise
            # LDAPException mostly, but ldap3 lets OSError, ssl and struct errors through too.
            raise DirectoryUnavailable(
                f"cannot reach {s.host}:{s.port}: {_exception_text(exc)}"
            ) from None
        return conn

    def _run(self, operation: Callable[[ldap3.Connection], T]) -> T:
        """Run one operation; a connection that died since its last use (server restarted, idle
        timeout) is re-opened once and the operation replayed — every operation here is
        idempotent or checked by the caller."""
        for attempt in (1, 2):
            self._check_stop()
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._open()
            try:
                return operation(self._conn)
            except (LDAPException, OSError) as exc:
                self.close()
                if not reused or attempt == 2:
                    raise DirectoryUnavailable(
                        f"connection to {self.settings.host} lost: {_exception_text(exc)}"
                    ) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(LDAPException, OSError):
                conn.unbind()

    def check(self) -> None:
        """Connect and bind (raises DirectoryUnavailable), then read the base entry."""

        def op(conn: ldap3.Connection) -> None:
            if not conn.search(
                self.settings.base_dn, "(objectClass=*)", ldap3.BASE, attributes=["1.1"]
            ):
                raise LdapError(f"base DN {self.settings.base_dn}: {_result_text(conn)}")

        self._run(op)

    def read(self, dn: str) -> Attributes | None:
        def op(conn: ldap3.Connection) -> Attributes | None:
            if conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[ldap3.ALL_ATTRIBUTES]):
                for item in conn.response or []:
                    if item.get("type") == "searchResEntry":
                        return decode_attributes(item["raw_attributes"])
                return None
            if (conn.result or {}).get("result") == NO_SUCH_OBJECT:
                return None
            raise LdapError(f"read {dn}: {_result_text(conn)}")

        return self._run(op)

    def add(self, dn: str, attributes: Attributes) -> bool:
        """Add the entry; False if one is already there."""

        def op(conn: ldap3.Connection) -> bool:
            # types-ldap3 leaves add/modify/delete unannotated.
            if conn.add(dn, attributes=attributes):  # type: ignore[no-untyped-call]
                return True
            if (conn.result or {}).get("result") == ENTRY_ALREADY_EXISTS:
                return False
            raise LdapError(f"add {dn}: {_result_text(conn)}")

        return self._run(op)

    def modify(self, dn: str, changes: Changes) -> None:
        def op(conn: ldap3.Connection) -> None:
            if not conn.modify(dn, changes):  # type: ignore[no-untyped-call]
                raise LdapError(f"modify {dn} ({describe_changes(changes)}): {_result_text(conn)}")

        self._run(op)

    def delete(self, dn: str) -> bool:
        """Delete the entry; False if it was not there."""

        def op(conn: ldap3.Connection) -> bool:
            if conn.delete(dn):  # type: ignore[no-untyped-call]
                return True
            if (conn.result or {}).get("result") == NO_SUCH_OBJECT:
                return False
            raise LdapError(f"delete {dn}: {_result_text(conn)}")

        return self._run(op)

    def search_page(
        self, base_dn: str, cookie: bytes | None, size: int
    ) -> tuple[list[tuple[str, Attributes]], bytes | None]:
        """One page of the entries directly under ``base_dn`` (RFC 2696 paged results) and the
        cookie of the next page (None: that was the last)."""
        self._check_stop()
        conn = self._conn
        if cookie is not None and conn is None:
            # The paged search lives in a connection: a new one cannot continue it.
            raise DirectoryUnavailable("connection lost during a paged search")

        def op(conn: ldap3.Connection) -> tuple[list[tuple[str, Attributes]], bytes | None]:
            ok = conn.search(
                base_dn,
                "(objectClass=*)",
                ldap3.LEVEL,
                attributes=[ldap3.ALL_ATTRIBUTES],
                paged_size=size,
                paged_cookie=cookie,
            )
            if not ok and (conn.result or {}).get("result") != 0:
                raise LdapError(f"search under {base_dn}: {_result_text(conn)}")
            entries = [
                (str(item["dn"]), decode_attributes(item["raw_attributes"]))
                for item in conn.response or []
                if item.get("type") == "searchResEntry"
            ]
            control = ((conn.result or {}).get("controls") or {}).get(PAGED_RESULTS)
            next_cookie = control["value"]["cookie"] if control else None
            return entries, next_cookie or None

        if cookie is None:
            return self._run(op)
        assert conn is not None
        try:
            return op(conn)
        except (LDAPException, OSError) as exc:
            self.close()
            raise DirectoryUnavailable(
                f"connection to {self.settings.host} lost: {_exception_text(exc)}"
            ) from None


# -- what one BAL needs -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Task:
    bal: Bal
    state: PublicationState | None
    dn: str  # where the entry is (or is to be)
    wanted: Attributes | None  # None: there must be no entry
    # Known from the full reconciliation's search: False absent, True present; None: read it.
    present: bool | None = None


@dataclass(frozen=True, slots=True)
class _Result:
    task: _Task
    action: str  # added | modified | replaced | deleted | unchanged | absent | failed
    detail: str = ""
    error: str | None = None
    # The failure was the directory's as a whole (unreachable, TLS, bind), not this entry's.
    outage: bool = False


def _foreign(dn: str) -> LdapError:
    return LdapError(f"a foreign entry occupies {dn} (not objectClass mssBal): left alone")


def _delete_ours(client: LdapClient, dn: str, *, present: bool | None = None) -> bool:
    """Delete the entry at ``dn`` if it is one of ours (False: there was none). A foreign entry
    there raises LdapError: it is not ours to delete. ``present`` True: known from the full
    reconciliation's search to be ours."""
    if present is not True:
        existing = client.read(dn)
        if existing is None:
            return False
        if not is_ours(existing):
            raise _foreign(dn)
    return client.delete(dn)


def _sync_entry(client: LdapClient, task: _Task) -> tuple[str, str]:
    """Make the directory hold what ``task`` wants for one BAL; returns (action, detail).

    Only entries of ours (objectClass mssBal) are modified or deleted; a foreign entry at the
    BAL's DN is an error for that BAL (the directory's administrators have to sort it out)."""
    previous = task.state.dn if task.state is not None else None
    if previous and not same_dn(previous, task.dn):
        # Published under another DN (the base DN changed): that one goes, if it is ours.
        old = client.read(previous)
        if old is not None and is_ours(old):
            client.delete(previous)
    if task.wanted is None:
        return ("deleted", "") if _delete_ours(client, task.dn) else ("absent", "")
    if task.present is False and client.add(task.dn, task.wanted):
        return "added", ""
    existing = client.read(task.dn)
    if existing is None:
        if client.add(task.dn, task.wanted):
            return "added", ""
        existing = client.read(task.dn)  # added by someone else in between
        if existing is None:
            raise LdapError(f"add {task.dn}: the entry exists and cannot be read")
    if not is_ours(existing):
        raise _foreign(task.dn)
    changes = modifications(existing, task.wanted)
    if not changes:
        return "unchanged", ""
    client.modify(task.dn, changes)
    return "modified", describe_changes(changes)


def _apply(client: LdapClient, tasks: list[_Task]) -> list[_Result]:
    """Run the tasks in order (worker thread). When the directory becomes unavailable the rest
    of the batch is not tried: each remaining BAL fails with that error. When the worker is told
    to stop, the rest is not tried either, and not reported: those BALs stay as they were."""
    results: list[_Result] = []
    for i, task in enumerate(tasks):
        try:
            action, detail = _sync_entry(client, task)
            results.append(_Result(task, action, detail))
        except Stopped:
            break
        except DirectoryUnavailable as exc:
            results.extend(_Result(t, "failed", error=str(exc), outage=True) for t in tasks[i:])
            break
        except LdapError as exc:
            results.append(_Result(task, "failed", error=str(exc)))
    return results


def _delete_all(
    client: LdapClient, dns: list[str]
) -> tuple[list[tuple[str, str | None]], str | None]:
    """Delete entries of ours (worker thread): [(dn, error or None)], and the outage that stopped
    it. Stops quietly when told to."""
    out: list[tuple[str, str | None]] = []
    for dn in dns:
        try:
            client.delete(dn)
            out.append((dn, None))
        except Stopped:
            break
        except DirectoryUnavailable as exc:
            return out, str(exc)
        except LdapError as exc:
            out.append((dn, str(exc)))
    return out, None


# -- reports ------------------------------------------------------------------------------------


@dataclass
class PassReport:
    """What one pass did. ``changes`` lists (address or DN, action, detail), at most
    MAX_REPORTED of them; the counters count everything."""

    kind: str  # incremental | full
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    added: int = 0
    modified: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: int = 0
    # Entries under the base DN that are not BAL entries: left alone, counted.
    foreign: int = 0
    seen_entries: int = 0
    seen_bals: int = 0
    # Pass-level failure (directory unavailable, lease lost, search refused): the pass stopped.
    error: str | None = None
    # ... and it was the directory being unreachable (incremental passes pause with backoff).
    outage: bool = False
    # ... or the lease was lost (this process must not publish any more).
    lease_lost: bool = False
    changes: list[tuple[str, str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def note(self, who: str, action: str, detail: str = "", error: str | None = None) -> None:
        if action == "failed":
            self.failed += 1
            if len(self.errors) < MAX_REPORTED:
                self.errors.append((who, error or ""))
        elif action in ("unchanged", "absent"):
            self.unchanged += 1
            return
        elif action == "added":
            self.added += 1
        elif action in ("modified", "replaced"):
            self.modified += 1
        elif action == "deleted":
            self.deleted += 1
        if len(self.changes) < MAX_REPORTED:
            self.changes.append((who, action, detail or (error or "")))

    @property
    def changed(self) -> int:
        return self.added + self.modified + self.deleted

    @property
    def seconds(self) -> float:
        end = self.finished_at or datetime.now(UTC)
        return (end - self.started_at).total_seconds()

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "started_at": self.started_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "added": self.added,
            "modified": self.modified,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "foreign": self.foreign,
            "error": self.error,
        }


# -- the publisher ------------------------------------------------------------------------------


class Publisher:
    """The ``publisher`` component of ``colombe serve``, and what ``colombe directory publish``
    runs once."""

    name = "publisher"

    def __init__(
        self,
        store: Store,
        settings: LdapSettings,
        *,
        poll_interval: float = 5.0,
        full_interval: float = 86400.0,
        retry_min: float = 30.0,
        retry_max: float = 3600.0,
        holder: str | None = None,
        lease_ttl: float | None = None,
    ) -> None:
        self._store = store
        self.settings = settings
        self.poll_interval = max(0.05, poll_interval)
        self.full_interval = max(1.0, full_interval)
        self.retry = RetryPolicy(max(0.05, retry_min), max(retry_min, retry_max))
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Renewed by the heartbeat every third of it, and after each worker-thread hop; it
        # outlives one LDAP operation (bounded by the timeout) several times, so that a worker told
        # to stop has stopped before another process can take over.
        if lease_ttl is None:
            lease_ttl = max(120.0, 3 * poll_interval, 4 * settings.timeout)
        self._lease_ttl = timedelta(seconds=lease_ttl)
        self._client = LdapClient(settings)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ldap-publisher")
        self._task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        # Why the lease is not ours any more (None: held, or never taken).
        self._lease_lost: str | None = None
        self._closed = False
        # Directory unavailable: no incremental pass before this (monotonic) time.
        self._paused_until = 0.0
        self._outages = 0
        self.last_report: PassReport | None = None

    # -- component ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="directory-publisher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.close()

    def endpoints(self) -> list[str]:
        return [f"directory publication to {self.settings.url} under {self.settings.base_dn}"]

    async def close(self) -> None:
        """Stop the worker at its next LDAP operation, wait for it, and only then release the
        lease: until the worker has stopped, another process must not start publishing."""
        self._closed = True
        self._client.stop.set()
        drained = False
        # Queued behind any operation still running in the worker (each bounded by the timeout);
        # the heartbeat keeps the lease meanwhile.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._call(self._client.close), self.settings.timeout + 5)
            drained = True
        heartbeat, self._heartbeat_task = self._heartbeat_task, None
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await heartbeat
        if drained:
            with contextlib.suppress(Exception):
                await self._store.release_lease(LEASE, self.holder)
        else:
            # Stuck in an operation: the lease expires by itself once its TTL has passed.
            log.warning("directory publisher worker did not stop in time; lease left to expire")
        self._executor.shutdown(wait=False)

    # -- plumbing -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args))

    async def take_lease(self) -> bool:
        """Take or renew the lease; while it is held, a heartbeat task keeps renewing it."""
        if self._closed:
            return False
        if not await self._store.acquire_lease(LEASE, self.holder, self._lease_ttl):
            if self._lease_lost is None:
                self._lose_lease("another process took the directory publisher lease")
            return False
        if self._lease_lost is not None:
            # Ours again (the worker, told to stop when it was lost, is idle: every hop is awaited).
            self._lease_lost = None
            self._client.stop.clear()
        if self._heartbeat_task is None or self._heartbeat_task.done():
            self._heartbeat_task = asyncio.create_task(
                self._heartbeat(), name="directory-publisher-lease"
            )
        return True

    def _lose_lease(self, reason: str) -> None:
        self._lease_lost = reason
        # The worker stops before its next LDAP operation.
        self._client.stop.set()

    async def _heartbeat(self) -> None:
        """Renew the lease every third of its TTL, whatever the worker is doing (a batch may
        outlast the TTL). Not renewed for two thirds of it (store unreachable): consider it lost
        before it expires, and stop the worker."""
        ttl = self._lease_ttl.total_seconds()
        interval = ttl / 3
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            if self._lease_lost is not None or self._closed:
                return
            started = time.monotonic()
            try:
                held = await self._store.acquire_lease(LEASE, self.holder, self._lease_ttl)
            except Exception as exc:
                log.warning("directory publisher lease not renewed: %s", exc)
                if time.monotonic() - renewed < ttl - interval:
                    continue
                held = False
            if held:
                renewed = started
                continue
            self._lose_lease("the directory publisher lease could not be renewed in time")
            log.warning("directory publication: %s; stopping", self._lease_lost)

    def _check_lease(self) -> None:
        if self._closed:
            raise LeaseLost("the directory publisher is stopping")
        if self._lease_lost is not None:
            raise LeaseLost(self._lease_lost)

    async def _renew_lease(self) -> None:
        self._check_lease()
        if not await self.take_lease():
            raise LeaseLost(
                self._lease_lost or "another process took the directory publisher lease"
            )

    async def check(self) -> None:
        """Connect, bind and read the base DN (raises DirectoryUnavailable or LdapError)."""
        await self._call(self._client.check)

    # -- incremental ----------------------------------------------------------------------------

    async def publish_due(self, *, max_batches: int = MAX_BATCHES_PER_PASS) -> PassReport:
        """Publish the BALs whose change is due, in batches, until none is due (or
        ``max_batches``, or the directory becomes unavailable)."""
        report = PassReport("incremental")
        # Never a batch without the lease (e.g. right after a full reconciliation that lost it).
        await self._renew_lease()
        for _ in range(max_batches):
            due = await self._store.due_publications(limit=BATCH)
            if not due:
                break
            tasks = [
                _Task(
                    bal,
                    state,
                    bal_dn(bal.address, self.settings.base_dn),
                    wanted_attributes(bal) if bal.publishable else None,
                )
                for bal, state in due
            ]
            results = await self._call(_apply, self._client, tasks)
            await self._record(results, report, always=True)
            self._check_lease()  # told to stop during the batch: the rest stays pending
            unavailable = _unavailable(results)
            if unavailable is not None:
                report.error = unavailable
                report.outage = True
                break
            await self._renew_lease()
        report.finished_at = datetime.now(UTC)
        self._after_pass(report)
        self.last_report = report
        return report

    async def _record(self, results: list[_Result], report: PassReport, *, always: bool) -> None:
        """Write the outcome of each BAL to the store. ``always`` False (full reconciliation):
        only where the recorded state is not already what the directory holds, so that a
        no-change reconciliation of 100,000 BALs writes nothing."""
        outcomes: list[PublicationOutcome] = []
        failures: list[PublicationFailure] = []
        for r in results:
            bal, state = r.task.bal, r.task.state
            report.note(bal.address, r.action, r.detail, r.error)
            if r.error is not None:
                attempts = state.attempts if state is not None else 0
                # An outage is backed off globally (_after_pass), not BAL by BAL.
                retry_in = None if r.outage else self.retry.delay(attempts)
                failures.append(PublicationFailure(bal.id, bal.revision, r.error, retry_in))
                continue
            outcome = PublicationOutcome(
                bal.id,
                bal.revision,
                "published" if r.task.wanted is not None else "unpublished",
                bal_dn(bal.address, self.settings.base_dn) if r.task.wanted is not None else None,
            )
            if always or _needs_record(state, outcome):
                outcomes.append(outcome)
        if outcomes:
            await self._store.record_publications(outcomes)
        if failures:
            await self._store.record_publication_failures(failures)

    def _after_pass(self, report: PassReport) -> None:
        if report.outage:
            delay = self.retry.delay(self._outages).total_seconds()
            self._outages += 1
            self._paused_until = time.monotonic() + delay
            log.warning(
                "directory %s pass stopped: %s (next try in %.0f s)",
                report.kind,
                report.error,
                delay,
            )
        elif report.error is None:
            self._outages = 0
            self._paused_until = 0.0
        else:
            log.warning("directory %s pass stopped: %s", report.kind, report.error)
        if report.changed or report.failed:
            log.info(
                "directory %s pass: %d added, %d modified, %d deleted, %d failed in %.1f s",
                report.kind,
                report.added,
                report.modified,
                report.deleted,
                report.failed,
                report.seconds,
            )

    # -- full reconciliation --------------------------------------------------------------------

    async def reconcile_full(
        self,
        *,
        progress: Callable[[str, int], None] | None = None,
        allow_mass_delete: bool = False,
    ) -> PassReport:
        """Make the whole tree under the base DN match the store (see the module docstring).
        ``allow_mass_delete``: delete stray entries of ours even beyond the safety limit (the
        operator's ``--allow-mass-delete``)."""
        report = PassReport("full")
        try:
            await self._renew_lease()
            await self._reconcile(report, progress, allow_mass_delete=allow_mass_delete)
        except DirectoryUnavailable as exc:
            report.error = str(exc)
            report.outage = True
        except LeaseLost as exc:
            report.error = str(exc)
            report.lease_lost = True
        except LdapError as exc:
            # The search itself failed (base DN missing, size limit...): nothing was decided.
            report.error = str(exc)
        report.finished_at = datetime.now(UTC)
        self._after_pass(report)
        self.last_report = report
        if report.lease_lost:
            return report  # the holder's reconciliation is the one to keep
        await self._store.save_document(
            STATE_DOCUMENT,
            None,
            {
                "last_full": report.summary(),
                "url": self.settings.url,
                "base_dn": self.settings.base_dn,
            },
        )
        return report

    async def _reconcile(
        self,
        report: PassReport,
        progress: Callable[[str, int], None] | None,
        *,
        allow_mass_delete: bool = False,
    ) -> None:
        base = self.settings.base_dn
        hosted = {d.name.lower() for d in await self._store.list_domains()}
        # 1. What the directory holds: address -> (DN, digest of what we manage, ours?). A digest
        #    rather than the entry keeps memory small; the rare entry that differs is re-read.
        #    Ours: objectClass mssBal, named mail=<address> in a domain we host. Anything else is
        #    foreign and left alone (a foreign entry at one of our BALs' DN is that BAL's error).
        index: dict[str, tuple[str, bytes, bool]] = {}
        ours_seen = 0
        cookie: bytes | None = None
        for _ in range(MAX_PAGES):
            entries, cookie = await self._call(self._client.search_page, base, cookie, PAGE)
            self._check_lease()
            for dn, attrs in entries:
                report.seen_entries += 1
                address = address_of_dn(dn)
                domain = _domain_of(address)
                if address is None or domain not in hosted:
                    report.foreign += 1
                    continue
                ours = is_ours(attrs)
                index[address] = (dn, entry_digest(attrs), ours)
                if ours:
                    ours_seen += 1
                else:
                    report.foreign += 1
            if progress is not None:
                progress("read", report.seen_entries)
            await self._renew_lease()
            if not cookie:
                break
        # 2. What it should hold: walk the store, one page per worker hop and per transaction.
        after = 0
        for _ in range(MAX_PAGES):
            page = await self._store.publication_page(after_id=after, limit=PAGE)
            if not page:
                break
            after = page[-1][0].id
            tasks: list[_Task] = []
            settled: list[_Result] = []
            for bal, state in page:
                report.seen_bals += 1
                found = index.pop(bal.address.lower(), None)
                dn = bal_dn(bal.address, base)
                wanted = wanted_attributes(bal) if bal.publishable else None
                if found is not None and not found[2]:
                    # Not ours to replace or delete.
                    task = _Task(bal, state, found[0], wanted, present=True)
                    settled.append(_Result(task, "failed", error=str(_foreign(found[0]))))
                elif wanted is not None:
                    if found is None:
                        tasks.append(_Task(bal, state, dn, wanted, present=False))
                    elif found[1] != entry_digest(wanted):
                        tasks.append(_Task(bal, state, found[0], wanted, present=True))
                    else:
                        settled.append(_Result(_Task(bal, state, dn, wanted), "unchanged"))
                elif found is not None:
                    tasks.append(_Task(bal, state, found[0], None, present=True))
                else:
                    settled.append(_Result(_Task(bal, state, dn, None), "absent"))
            results = await self._call(_apply, self._client, tasks) if tasks else []
            await self._record(settled + results, report, always=False)
            self._check_lease()
            unavailable = _unavailable(results)
            if unavailable is not None:
                raise DirectoryUnavailable(unavailable)
            if progress is not None:
                progress("reconciled", report.seen_bals)
            await self._renew_lease()
        # 3. Entries of ours that match no BAL of the store (BAL gone, or an entry added behind
        #    our back): deleted, within limits (see the module docstring).
        leftovers = sorted(dn for dn, _, ours in index.values() if ours)
        refusal = _mass_delete_refusal(len(leftovers), ours_seen, report.seen_bals)
        if refusal is not None and not allow_mass_delete:
            report.error = refusal
            log.error("directory full reconciliation: %s", refusal)
            return
        for start in range(0, len(leftovers), PAGE):
            chunk = leftovers[start : start + PAGE]
            done, outage = await self._call(_delete_all, self._client, chunk)
            for dn, error in done:
                report.note(dn, "failed" if error else "deleted", error=error)
            self._check_lease()
            if outage is not None:
                raise DirectoryUnavailable(outage)
            await self._renew_lease()

    # -- the loop -------------------------------------------------------------------------------

    async def _next_full(self) -> float:
        """Monotonic time of the next full reconciliation: ``full_interval`` after the last one
        (kept in the store across restarts), or now if there never was one."""
        document = await self._store.load_document(STATE_DOCUMENT, with_content=False)
        started = None
        if document is not None:
            last = document.meta.get("last_full") or {}
            if not last.get("error") and last.get("started_at"):
                with contextlib.suppress(ValueError):
                    started = datetime.fromisoformat(last["started_at"])
        if started is None:
            return time.monotonic()
        age = (datetime.now(UTC) - started).total_seconds()
        return time.monotonic() + max(0.0, self.full_interval - age)

    async def _loop(self) -> None:
        next_full = await self._next_full()
        full_failures = 0
        while True:
            try:
                if await self.take_lease():
                    if time.monotonic() >= next_full:
                        report = await self.reconcile_full()
                        if report.lease_lost:
                            raise LeaseLost(report.error or "lease lost")
                        if report.error is None:
                            full_failures = 0
                            next_full = time.monotonic() + self.full_interval
                        else:
                            next_full = (
                                time.monotonic() + self.retry.delay(full_failures).total_seconds()
                            )
                            full_failures += 1
                    if time.monotonic() >= self._paused_until:
                        # Cleared before looking: a change committed during the pass sets it
                        # again and the next wait returns at once.
                        self._store.bal_changed.clear()
                        await self.publish_due()
            except asyncio.CancelledError:
                raise
            except LeaseLost as exc:
                log.info("directory publication: %s", exc)
            except Exception:
                log.exception("directory publication pass failed")
            await self._wait(next_full)

    async def _wait(self, next_full: float) -> None:
        now = time.monotonic()
        timeout = min(self.poll_interval, next_full - now)
        if self._paused_until > now:
            timeout = min(max(timeout, self._paused_until - now), self.retry.maximum)
        else:
            with contextlib.suppress(Exception):
                due = await self._store.next_publication_due()
                if due is not None:
                    timeout = min(timeout, (due - datetime.now(UTC)).total_seconds())
        timeout = max(0.05, timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._store.bal_changed.wait(), timeout)


def _domain_of(address: str | None) -> str | None:
    if not address:
        return None
    local, at, domain = address.rpartition("@")
    return domain.lower() if at and local and domain else None


def _mass_delete_refusal(deleting: int, ours: int, bals: int) -> str | None:
    """Why deleting ``deleting`` of our ``ours`` entries is refused (None: it is not)."""
    if deleting == 0:
        return None
    if bals == 0:
        return (
            f"refusing to delete {deleting} entries: the store holds no BAL at all (empty or "
            "wrong database?); if this is intended, run `colombe directory publish --full "
            "--allow-mass-delete`"
        )
    if deleting > MASS_DELETE_MIN and deleting > MASS_DELETE_SHARE * ours:
        return (
            f"refusing to delete {deleting} of our {ours} entries (more than "
            f"{MASS_DELETE_SHARE:.0%}) that match no BAL of the store; check the store and "
            "base_dn, then if this is intended run `colombe directory publish --full "
            "--allow-mass-delete`"
        )
    return None


def _unavailable(results: Iterable[_Result]) -> str | None:
    """The error of a batch that stopped because the directory became unavailable."""
    return next((r.error for r in results if r.outage), None)


def _needs_record(state: PublicationState | None, outcome: PublicationOutcome) -> bool:
    if state is None:
        return True
    return (
        state.pending
        or state.state != outcome.state
        or state.published_revision != outcome.revision
        or (state.dn or None) != outcome.dn
    )
