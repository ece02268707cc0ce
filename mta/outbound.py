"""The outbound queue runner (ARCHITECTURE flow 3, mssante-spec §2.2, §2.5, §10.2).

:class:`QueueRunner` claims due entries of the store's outbound queue and delivers them to the
recipient domains' servers, then retries, bounces or completes each entry:

1. Recipients are grouped by domain; each domain gets the targets of its static route
   (:func:`mta.routes.route_for`) or of its MX records (:func:`mta.routes.mx_targets`).
2. Per target: connect, EHLO, **STARTTLS always** (a peer that does not offer it gets QUIT and
   the recipients fail with 5.7.10: the trust space never exchanges mail in clear), our SERV SSL
   certificate as client certificate. The peer's certificate must chain to IGC-Santé at the
   handshake (OpenSSL), then pass :meth:`pki.verify.Verifier.verify` for a TLS server
   (revocation included), then have its DN listed in the whitelist for the recipient domain.
   A refused peer gets QUIT before MAIL: nothing is handed over.
3. MAIL FROM with SIZE, BODY=8BITMIME, SMTPUTF8 when useful and offered, RET/ENVID when the peer
   offers DSN; RCPT TO with NOTIFY/ORCPT relayed (RFC 3461 §5.2); DATA streamed from the blob.
4. Each recipient ends delivered (2xx to the final dot only), retried (4xx, connection
   problems, a malformed or unexpected reply, any exception a broken or hostile peer makes our
   code raise) or failed (5xx, peer refused by our checks). A target that fails before MAIL
   (connection, greeting, EHLO, STARTTLS, or our refusal of its certificate) hands over to the
   next one, as Postfix does; a failure after MAIL does not. When every target failed, the
   domain is retried if one of them failed for now (it may be back at the next attempt), else
   the refusal is final.
   A domain at its connection limit is not waited for (that would hold a worker and the
   claim): its recipients go back to the queue, due again after :data:`BUSY_RETRY`.
5. Delivered and failed recipients leave the entry; the others stay, retried at
   :meth:`mta.schedule.RetryPolicy.next_attempt` until the lifetime ends (then failed with
   :data:`mta.schedule.EXPIRED_STATUS`).

Reports (RFC 3464, :func:`mta.dsn.build_dsn`) go to the envelope sender through
:class:`mta.reports.ReportSender` when NOTIFY asks for them: "failed", one "delayed" per entry,
and "relayed" when SUCCESS was asked but the peer does not speak DSN (RFC 3461 §5.2.2.3; a peer
that offers DSN got the parameters and reports itself). Never to the null sender.

Every attempt leaves an ``mta.outbound`` audit record: the peer, its certificate DN, the TLS
version and each recipient's outcome; never the body, and patient addresses masked (their
local part is an INS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import aiosmtplib
from aiosmtplib import SMTPResponse
from cryptography import x509

from mta.dsn import DEFAULT_MAX_RETURNED_SIZE, Action, RecipientReport, build_dsn, dsn_requested
from mta.dsn_params import (
    Notify,
    OriginalRecipient,
    ParamError,
    Ret,
    format_envid,
    parse_envid,
    parse_notify,
    parse_orcpt,
)
from mta.policy import WhitelistView
from mta.replies import printable
from mta.reports import ReportSender, mask
from mta.routes import ConnectionLimits, RouteTable, Target, mx_targets, route_for
from mta.schedule import (
    MAX_DIAGNOSTIC,
    NO_STARTTLS,
    Decision,
    Outcome,
    RetryPolicy,
    TransportProblem,
    classify_reply,
    peer_refusal,
    redact,
    transport_failure,
)
from pki.tls import peer_certificate, verdict_from_handshake_error
from pki.verify import Reason, Role, Verifier, match_listed_dn
from store import Store
from store.errors import BlobMissing
from store.model import QueueEntry, Recipient

log = logging.getLogger(__name__)

AUDIT_ACTION: Final = "mta.outbound"
ACTOR: Final = "mta"
DEFAULT_LEASE: Final = timedelta(minutes=2)
"""How long a claim protects an entry. The runner renews the claims of the entries it is
delivering every third of it, so another runner only takes an entry whose runner died, and does
so within this delay."""
STOP_GRACE: Final = 30.0
"""Seconds in-flight deliveries get to finish when the runner stops; then they are cancelled
and their entries put back in the queue."""
HEADER_READ: Final = 256 * 1024
"""Octets of the message read for a report that returns headers only."""
DNS_LIFETIME: Final = 30.0
BUSY_RETRY: Final = timedelta(seconds=5)
"""When an entry whose recipient domain had no free connection slot is due again. The runner
never holds a worker (and its claim) waiting for a slot: one slow domain would take them all."""
BUSY_STATUS: Final = "4.4.5"
"""RFC 3463 X.4.5 "Mail system congestion": our own per-domain (or global) connection cap."""

_ENHANCED: Final = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?:\s+|\Z)")
_LINE_ENDINGS: Final = re.compile(rb"\r\n|\n|\r(?!\n)")
_EIGHT_BIT: Final = re.compile(rb"[\x80-\xff]")
_DNS_NAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")

Resolver = Callable[[str], Awaitable[Sequence[tuple[int, str]]]]
"""An MX lookup: domain -> [(preference, exchange)]; [] when the domain has no MX (implicit MX);
raises :class:`DnsTemporaryError` when the answer cannot be had now."""


class DnsTemporaryError(Exception):
    """SERVFAIL, timeout: the MX lookup is retried later (4.4.3)."""


class Reports(Protocol):
    """Where the runner's DSNs go (:class:`mta.reports.ReportSender`)."""

    async def send(self, envelope_sender: str, report: bytes) -> None: ...


async def resolve_mx(domain: str) -> list[tuple[int, str]]:
    """The MX records of ``domain`` with dnspython. NXDOMAIN and an empty answer give [] (RFC
    5321 §5.1: the domain is its own implicit MX); anything else that fails is temporary."""
    import dns.asyncresolver
    import dns.exception
    import dns.resolver
    from dns.rdtypes.ANY.MX import MX

    try:
        answer = await dns.asyncresolver.resolve(domain, "MX", lifetime=DNS_LIFETIME)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:  # SERVFAIL (NoNameservers), timeouts
        raise DnsTemporaryError(type(exc).__name__) from exc
    return [(int(r.preference), r.exchange.to_text()) for r in answer if isinstance(r, MX)]


class DotStuffer:
    """The DATA transparency of RFC 5321 §4.5.2 over a stream of chunks: every line ending made
    CRLF (as aiosmtplib does for a whole message), a "." starting a line doubled, and the final
    "<CRLF>.<CRLF>". State crosses chunk boundaries, so a 25 MB message is never held whole."""

    def __init__(self) -> None:
        self._pending_cr = False  # the chunk ended with CR: is it CRLF or a bare CR?
        self._at_line_start = True

    def feed(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._pending_cr = True
        if not chunk:
            return b""
        data = _LINE_ENDINGS.sub(b"\r\n", chunk).replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and data.startswith(b"."):
            data = b"." + data
        self._at_line_start = data.endswith(b"\r\n")
        return data

    def end(self) -> bytes:
        out = b""
        if self._pending_cr:
            out = b"\r\n"
            self._pending_cr = False
        elif not self._at_line_start:
            out = b"\r\n"
        self._at_line_start = True
        return out + b".\r\n"


# -- outcomes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One recipient after one attempt: ``decision`` None means the peer accepted it."""

    decision: Decision | None
    peer: str | None = None
    remote_mta: str | None = None
    relayed: bool = False  # accepted by a peer that does not offer DSN
    busy: bool = False  # not tried: no connection slot for the domain (not a real attempt)


@dataclass(slots=True)
class _Session:
    """One connection to one target, for the audit trail and the next-target decision."""

    target: Target
    domain: str
    failure: Decision | None = None  # the target as a whole failed before MAIL
    outcomes: dict[str, _Outcome] = field(default_factory=dict)
    peer_dn: str | None = None
    tls: str | None = None
    refused: bool = False  # by our checks (STARTTLS, certificate, whitelist), not by the peer
    mail_sent: bool = False  # MAIL went out: a failure now is no longer the target's as a whole

    @property
    def peer(self) -> str:
        return str(self.target)

    def refuse(self, reason: Reason | str) -> Decision:
        self.refused = True
        return peer_refusal(reason, peer=self.peer, domain=self.domain)

    @property
    def remote_mta(self) -> str | None:
        return self.target.host if _DNS_NAME.match(self.target.host) else None


@dataclass(frozen=True, slots=True)
class _Message:
    eight_bit: bool
    utf8: bool


def _split_reply(message: str) -> tuple[str | None, str]:
    """(enhanced status code, text) of a reply's text (RFC 2034 §4: the code starts the text)."""
    m = _ENHANCED.match(message)
    if m is None:
        return None, message
    return m.group(1), message[m.end() :]


def _reply_waiting(protocol: Any) -> bool:
    """Whether aiosmtplib's protocol holds a complete reply not read yet (private API)."""
    waiter = getattr(protocol, "_response_waiter", None)
    return (
        waiter is not None
        and waiter.done()
        and not waiter.cancelled()
        and waiter.exception() is None
    )


def _reply_decision(response: SMTPResponse) -> Decision:
    enhanced, text = _split_reply(response.message)
    return classify_reply(response.code, enhanced, text)


def _now() -> datetime:
    return datetime.now(UTC)


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


# -- the runner -----------------------------------------------------------------------------------


class QueueRunner:
    """Delivers the outbound queue. ``start()`` runs it in the background; ``notify()`` wakes it
    when something was queued; ``run_once()`` delivers what is due now (tests, CLI)."""

    def __init__(
        self,
        *,
        store: Store,
        hostname: str,
        tls_context: ssl.SSLContext,
        verifier: Verifier,
        whitelist: WhitelistView,
        policy: RetryPolicy | None = None,
        routes: RouteTable | None = None,
        resolver: Resolver | None = None,
        limits: ConnectionLimits | None = None,
        workers: int = 8,
        poll_interval: float = 30.0,
        connect_timeout: float = 30.0,
        command_timeout: float = 300.0,
        port: int = 25,
        reports: Reports | None = None,
        lease: timedelta = DEFAULT_LEASE,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        if workers < 1:
            raise ValueError("[queue] workers must be at least 1")
        self.store = store
        self.hostname = hostname
        self.tls_context = tls_context
        self.verifier = verifier
        self.whitelist = whitelist
        self.policy = policy or RetryPolicy()
        self.routes = routes or RouteTable()
        self.resolver: Resolver = resolver or resolve_mx
        self.limits = limits or ConnectionLimits()
        self.workers = workers
        self.poll_interval = poll_interval
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.port = port
        self.lease = lease
        self.stop_grace = stop_grace
        if reports is None:
            sender = ReportSender(store, hostname=hostname, whitelist=whitelist)
            sender.attach(self)
            reports = sender
        elif isinstance(reports, ReportSender):
            reports.attach(self)
        self.reports: Reports = reports
        # Unique per process and per runner: claims name their holder.
        self.worker = f"{hostname}/{os.getpid()}/{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        # Entries this runner is delivering, by task: their claims are renewed while they run.
        self._claimed: dict[asyncio.Task[None], int] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="queue-runner")
        self._heartbeat = asyncio.create_task(self._renew_claims(), name="queue-claims")

    async def stop(self) -> None:
        """Stop claiming, let in-flight deliveries finish for up to ``stop_grace`` seconds, then
        cancel them (their entries go back to the queue, due at once)."""
        self._stopping = True
        self._wake.set()
        heartbeat, self._heartbeat = self._heartbeat, None
        task, self._task = self._task, None
        if task is not None:
            # A claim stuck on an unresponsive database is abandoned (wait_for cancels it).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, self.stop_grace)
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=self.stop_grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=self.stop_grace)
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    def notify(self) -> None:
        """Something was queued: look at the queue now instead of at the next poll."""
        self._wake.set()

    async def run_once(self) -> int:
        """Deliver every entry due now, ``workers`` at a time; return how many were handled."""
        handled = 0
        while True:
            entries = await self.store.claim_queue_entries(
                self.worker, limit=self.workers, lease=self.lease
            )
            if not entries:
                return handled
            await asyncio.gather(*(self._process(e) for e in entries))
            handled += len(entries)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self.workers - len(self._in_flight)
            claimed = 0
            if free > 0:
                try:
                    entries = await self.store.claim_queue_entries(
                        self.worker, limit=free, lease=self.lease
                    )
                except Exception as exc:  # the store is down: try again at the next poll
                    # The type only: a store error's text may hold addresses (INS).
                    log.error("queue runner: cannot claim entries: %s", type(exc).__name__)
                    entries = []
                claimed = len(entries)
                for entry in entries:
                    task = asyncio.create_task(self._process(entry), name=f"deliver-{entry.id}")
                    self._in_flight.add(task)
                    self._claimed[task] = entry.id
                    task.add_done_callback(self._finished)
            if claimed and claimed == free:
                continue  # there may be more due: claim again when a worker is free
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _renew_claims(self) -> None:
        """Renew the claims of the entries in delivery every third of the lease: the lease can
        stay short (a crashed runner's entries are retried within it) however long a delivery
        takes."""
        every = max(self.lease.total_seconds() / 3, 0.1)
        while True:
            await asyncio.sleep(every)
            ids = list(self._claimed.values())
            if not ids:
                continue
            try:
                renewed = await self.store.renew_queue_claims(self.worker, ids, self.lease)
            except Exception as exc:  # the store is down: the next beat tries again
                log.error("queue runner: cannot renew claims: %s", type(exc).__name__)
                continue
            if renewed < len(ids):
                await self._drop_lost_claims()

    async def _drop_lost_claims(self) -> None:
        """Some claims were not renewed: their lease ran out (the store was unreachable longer
        than it) and another runner may deliver those entries now. Cancel our delivery of each
        of them, before MAIL/DATA if it is not that far yet; its outcome would not be recorded
        anyway (the finish calls check ``claimed_by``). A task that is recording its outcome
        left :attr:`_claimed` already and is never cancelled here."""
        for task, entry_id in list(self._claimed.items()):
            try:  # one at a time: which claim is still ours (renewing it again is harmless)
                held = await self.store.renew_queue_claims(self.worker, [entry_id], self.lease)
            except Exception as exc:  # the store is down again: the next beat tries again
                log.error("queue runner: cannot renew claims: %s", type(exc).__name__)
                return
            if not held and self._claimed.get(task) == entry_id:
                log.warning("queue entry %s: claim lost, delivery cancelled", entry_id)
                self._claimed.pop(task, None)
                task.cancel()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._claimed.pop(task, None)
        self._wake.set()  # a worker is free

    # -- one entry --------------------------------------------------------------------------------

    async def _process(self, entry: QueueEntry) -> None:
        outcomes: dict[str, _Outcome] = {}
        try:
            try:
                message = await self._inspect(entry)
            except (BlobMissing, OSError) as exc:
                decision = Decision(
                    Outcome.RETRY, "4.3.0", f"message file unavailable: {type(exc).__name__}"
                )
                outcomes = {r.address: _Outcome(decision) for r in entry.recipients}
            else:
                by_domain: dict[str, list[Recipient]] = {}
                for r in entry.recipients:
                    by_domain.setdefault(_domain_of(r.address), []).append(r)
                for domain, recipients in by_domain.items():
                    # Never wait for a slot: the worker and the claim would be held by a slow
                    # domain. Its recipients go back to the queue, due shortly.
                    if not self.limits.try_acquire(domain):
                        busy = Decision(
                            Outcome.RETRY,
                            BUSY_STATUS,
                            printable(f"connection limit reached for {domain}, will retry", 400),
                        )
                        for r in recipients:
                            outcomes[r.address] = _Outcome(busy, busy=True)
                        continue
                    try:
                        outcomes.update(
                            await self._deliver_domain(entry, domain, recipients, message)
                        )
                    finally:
                        self.limits.release(domain)
            await self._settle(entry, outcomes)
        except asyncio.CancelledError:
            await self._put_back(entry, outcomes, "interrupted: the queue runner stopped", _now())
            raise
        except Exception as exc:
            # The type only: an exception's text may hold addresses (INS).
            log.error("queue entry %s: delivery attempt failed: %s", entry.id, type(exc).__name__)
            await self._internal_error(entry, outcomes)

    async def _internal_error(self, entry: QueueEntry, outcomes: dict[str, _Outcome]) -> None:
        """A fault of ours interrupted the attempt: the recipients not settled yet are retried
        on the policy's schedule like any transient failure, so the entry still expires (and
        its sender gets the DSN) at the end of its lifetime; it never spins nor stays forever."""
        decision = Decision(Outcome.RETRY, "4.3.0", "internal error in the queue runner")
        full = {r.address: outcomes.get(r.address) or _Outcome(decision) for r in entry.recipients}
        try:
            await self._settle(entry, full)
            return
        except Exception as exc:
            log.error("queue entry %s: cannot settle: %s", entry.id, type(exc).__name__)
        now = _now()
        retry_at = self.policy.next_attempt(
            entry.created_at,
            entry.attempts + 1,
            now,
            null_sender=entry.mail_from == "",
            key=entry.id,
        )
        if retry_at is not None:
            await self._put_back(entry, outcomes, decision.diagnostic, retry_at)
            return
        # The lifetime is over and even the report cannot be built: give up without one.
        remaining = [
            r
            for r in entry.recipients
            if not (r.address in outcomes and outcomes[r.address].decision is None)
        ]
        try:
            await self.store.fail_queue_entry(
                entry.id,
                self.worker,
                decision.expired().diagnostic,
                recipients=remaining or None,
            )
        except Exception as exc:
            log.error("queue entry %s: cannot fail it: %s", entry.id, type(exc).__name__)

    async def _put_back(
        self, entry: QueueEntry, outcomes: dict[str, _Outcome], why: str, retry_at: datetime
    ) -> None:
        """Return an interrupted entry to the queue, without the recipients already delivered."""
        remaining = [
            r
            for r in entry.recipients
            if not (r.address in outcomes and outcomes[r.address].decision is None)
        ]
        try:
            if remaining:
                await self.store.defer_queue_entry(
                    entry.id, self.worker, why, retry_at, recipients=remaining
                )
            else:
                await self.store.complete_queue_entry(entry.id, self.worker)
        except Exception as exc:  # the lease runs out and another runner takes it
            log.error("queue entry %s: cannot put it back: %s", entry.id, type(exc).__name__)

    async def _inspect(self, entry: QueueEntry) -> _Message:
        def eight_bit() -> bool:
            with self.store.blobs.mapped(entry.blob) as data:
                return _EIGHT_BIT.search(data) is not None

        addresses = [entry.mail_from, *(r.address for r in entry.recipients)]
        return _Message(
            eight_bit=await asyncio.to_thread(eight_bit),
            utf8=not all(a.isascii() for a in addresses),
        )

    # -- one domain -------------------------------------------------------------------------------

    async def _deliver_domain(
        self, entry: QueueEntry, domain: str, recipients: list[Recipient], message: _Message
    ) -> dict[str, _Outcome]:
        def everyone(decision: Decision, peer: str | None = None) -> dict[str, _Outcome]:
            return {r.address: _Outcome(decision, peer) for r in recipients}

        try:
            targets = route_for(domain, self.routes)
        except ValueError:
            decision = Decision(Outcome.FAIL, "5.1.2", f"invalid recipient domain {domain!r}")
            await self._audit_failure(entry, domain, recipients, decision)
            return everyone(decision)
        if targets is None:
            try:
                records = await self.resolver(domain)
                found = mx_targets(domain, records, local_names=(self.hostname,), port=self.port)
            except DnsTemporaryError as exc:
                found = transport_failure(TransportProblem.DNS_TEMPORARY, domain, str(exc))
            except ValueError as exc:  # a malformed MX record: the publisher's to fix
                found = transport_failure(TransportProblem.DNS_TEMPORARY, domain, str(exc))
            except Exception as exc:  # a resolver fault: for now, like any DNS trouble
                found = transport_failure(
                    TransportProblem.DNS_TEMPORARY, domain, type(exc).__name__
                )
            if isinstance(found, Decision):
                await self._audit_failure(entry, domain, recipients, found)
                return everyone(found)
            targets = found

        refused: _Session | None = None
        transient: _Session | None = None
        for target in targets:
            session = await self._session(entry, domain, recipients, message, target)
            await self._audit_session(entry, domain, recipients, session)
            if session.failure is None:
                return session.outcomes
            if session.failure.outcome is Outcome.RETRY:
                transient = session
            elif refused is None:
                refused = session
        # RFC 5321 §5.1: every target was tried. One that failed for now may work at the next
        # attempt, so the domain is retried; if all of them refused, the refusal is final.
        final = transient or refused
        assert final is not None
        assert final.failure is not None
        return everyone(final.failure, final.peer)

    async def _session(
        self,
        entry: QueueEntry,
        domain: str,
        recipients: list[Recipient],
        message: _Message,
        target: Target,
    ) -> _Session:
        session = _Session(target, domain)
        smtp = aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            local_hostname=self.hostname,
            timeout=self.command_timeout,
            start_tls=False,  # we do it ourselves: never fall back to clear text
            tls_context=self.tls_context,
        )
        try:
            session.failure = await self._open(smtp, session)
            if session.failure is None:
                await self._transaction(smtp, session, entry, domain, recipients, message)
        except Exception as exc:
            # Whatever a broken or hostile peer makes any code of ours raise, this target
            # failed for now: the next one is tried, the entry keeps its schedule. Fail closed
            # still: nothing went out unless _open() returned None (STARTTLS, verified, listed).
            log.error(
                "queue entry %s: session with %s failed: %s",
                entry.id,
                session.peer,
                type(exc).__name__,
            )
            decision = transport_failure(
                TransportProblem.PROTOCOL_ERROR, session.peer, f"unexpected {type(exc).__name__}"
            )
            if session.failure is None and session.mail_sent:
                for r in recipients:
                    if r.address not in session.outcomes:
                        session.outcomes[r.address] = _Outcome(
                            decision, session.peer, session.remote_mta
                        )
            else:
                session.failure = decision
                session.refused = False
        finally:
            smtp.close()
        return session

    async def _open(self, smtp: aiosmtplib.SMTP, session: _Session) -> Decision | None:
        """Connect, EHLO, STARTTLS and check the peer; None when mail may be handed over."""
        peer = session.peer
        try:
            await smtp.connect(timeout=self.connect_timeout)
        except aiosmtplib.SMTPConnectTimeoutError:
            return transport_failure(TransportProblem.CONNECTION_TIMEOUT, peer)
        except aiosmtplib.SMTPConnectResponseError as exc:  # a 4xx/5xx (or absurd) greeting
            return classify_reply(exc.code, *_split_reply(exc.message))
        except aiosmtplib.SMTPResponseException as exc:  # not SMTP at all (code -1)
            return transport_failure(
                TransportProblem.PROTOCOL_ERROR, peer, _detail(f"invalid greeting: {exc.message}")
            )
        except (aiosmtplib.SMTPConnectError, OSError) as exc:
            return _connect_failure(exc, peer)
        except aiosmtplib.SMTPException as exc:  # disconnected before the greeting
            return transport_failure(TransportProblem.CONNECTION_LOST, peer, type(exc).__name__)
        try:
            try:
                await smtp.ehlo(timeout=self.command_timeout)
            except aiosmtplib.SMTPHeloError as exc:
                if exc.code >= 500:  # no ESMTP, hence no STARTTLS
                    await self._quit(smtp)
                    return session.refuse(NO_STARTTLS)
                return classify_reply(exc.code, *_split_reply(exc.message))
            if not smtp.supports_extension("starttls"):
                await self._quit(smtp)
                return session.refuse(NO_STARTTLS)
            try:
                await smtp.starttls(tls_context=self.tls_context, timeout=self.command_timeout)
            except ssl.SSLCertVerificationError as exc:
                # OpenSSL refused the peer's chain (expired, not IGC-Santé...): our refusal.
                verdict = verdict_from_handshake_error(exc)
                assert verdict is not None
                return session.refuse(verdict.reason)
            except ssl.SSLError as exc:
                detail = _detail(exc.reason or type(exc).__name__)
                return transport_failure(TransportProblem.TLS_HANDSHAKE_FAILED, peer, detail)
            except aiosmtplib.SMTPResponseException as exc:
                detail = _detail(f"{exc.code} {exc.message}", 200)
                return transport_failure(TransportProblem.STARTTLS_REFUSED, peer, detail)
            ssl_object = smtp.get_transport_info("ssl_object")
            session.tls = ssl_object.version() if ssl_object is not None else None
            refusal = await self._check_peer(ssl_object, session)
            if refusal is not None:
                await self._quit(smtp)
                return refusal
            # RFC 3207 §4.2: what the server said before TLS is forgotten; ask again.
            await smtp.ehlo(timeout=self.command_timeout)
            return None
        except aiosmtplib.SMTPHeloError as exc:
            return classify_reply(exc.code, *_split_reply(exc.message))
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            return transport_failure(TransportProblem.CONNECTION_TIMEOUT, peer)
        except (aiosmtplib.SMTPException, ConnectionError, OSError) as exc:
            detail = _detail(str(exc) or type(exc).__name__)
            return transport_failure(TransportProblem.CONNECTION_LOST, peer, detail)

    async def _check_peer(self, ssl_object: Any, session: _Session) -> Decision | None:
        """The IGC-Santé verdict on the peer's certificate, then its DN against the whitelist
        entries of the recipient domain; the refusal, or None."""
        domain = session.domain
        leaf = peer_certificate(ssl_object)
        if leaf is None:  # cannot happen with CERT_REQUIRED; fail closed anyway
            return session.refuse(Reason.UNTRUSTED)
        session.peer_dn = leaf.subject.rfc4514_string()
        verdict = await self.verifier.verify(leaf, _presented_chain(ssl_object), role=Role.SERVER)
        if not verdict.ok:
            return session.refuse(verdict.reason)
        reason = self._whitelist_reason(leaf, domain)
        if reason is not Reason.OK:
            return session.refuse(reason)
        return None

    def _whitelist_reason(self, leaf: x509.Certificate, domain: str) -> Reason:
        """OK when the peer's DN is one of those listed for ``domain`` (mssante-spec §2.2);
        otherwise CN_DIFFERS when only the CN differs from a listed DN (the ANS
        "cert-cn-diff-dn" audit case), else DN_NOT_LISTED."""
        if self.whitelist.allows(domain, leaf.subject):
            return Reason.OK
        listed = _listed_dns(self.whitelist, domain)
        if listed and match_listed_dn(leaf, listed).reason is Reason.CN_DIFFERS:
            return Reason.CN_DIFFERS
        return Reason.DN_NOT_LISTED

    async def _transaction(
        self,
        smtp: aiosmtplib.SMTP,
        session: _Session,
        entry: QueueEntry,
        domain: str,
        recipients: list[Recipient],
        message: _Message,
    ) -> None:
        """MAIL, RCPT, DATA over an open, checked session; fills ``session.outcomes``."""
        peer, remote = session.peer, session.remote_mta
        outcomes = session.outcomes

        def decide(decision: Decision, who: Sequence[Recipient]) -> None:
            for r in who:
                outcomes[r.address] = _Outcome(decision, peer, remote)

        extensions = smtp.esmtp_extensions
        dsn = "dsn" in extensions
        limit = _size_limit(extensions.get("size"))
        if limit and entry.size > limit:
            decide(
                Decision(
                    Outcome.FAIL,
                    "5.3.4",
                    f"message of {entry.size} octets exceeds the limit of {limit} of {peer}",
                ),
                recipients,
            )
            await self._quit(smtp)
            return
        if message.utf8 and "smtputf8" not in extensions:
            # RFC 6531 §3.2: no downgrade of an internationalised address.
            decide(
                Decision(
                    Outcome.FAIL, "5.6.7", f"{peer} does not accept internationalised addresses"
                ),
                recipients,
            )
            await self._quit(smtp)
            return
        encoding = "utf-8" if message.utf8 else "ascii"
        mail_params: list[str] = []
        if "size" in extensions:
            mail_params.append(f"SIZE={entry.size}")
        if message.eight_bit and "8bitmime" in extensions:
            mail_params.append("BODY=8BITMIME")
        # Without 8BITMIME the octets go as they are, as Postfix does when it cannot convert:
        # MSSanté peers all announce 8BITMIME.
        if message.utf8:
            mail_params.append("SMTPUTF8")
        if dsn and entry.ret:
            mail_params.append(f"RET={entry.ret}")
        envid = _wire_envid(entry.envid)
        if dsn and envid:
            mail_params.append(f"ENVID={envid}")
        accepted: list[Recipient] = []
        try:
            session.mail_sent = True
            response = await smtp.execute_command(
                b"MAIL",
                b"FROM:<" + entry.mail_from.encode(encoding) + b">",
                *(p.encode(encoding) for p in mail_params),
            )
            if response.code != 250:
                decide(_reply_decision(response), recipients)
                await self._quit(smtp)
                return
            for r in recipients:
                rcpt_params: list[str] = []
                if dsn and r.notify:
                    rcpt_params.append(f"NOTIFY={r.notify}")
                if dsn and r.orcpt:
                    rcpt_params.append(f"ORCPT={r.orcpt}")
                try:
                    response = await smtp.execute_command(
                        b"RCPT",
                        b"TO:<" + r.address.encode(encoding) + b">",
                        *(p.encode(encoding) for p in rcpt_params),
                    )
                except ValueError:  # a control character: never put on the wire
                    decide(Decision(Outcome.FAIL, "5.1.3", "invalid recipient address"), [r])
                    continue
                if response.code in (250, 251):
                    accepted.append(r)
                    continue
                decide(_reply_decision(response), [r])
                if response.code == 421:  # the peer is closing: the others wait too
                    decide(
                        _reply_decision(response),
                        [x for x in recipients if x.address not in outcomes],
                    )
                    return
            if not accepted:
                await self._quit(smtp)
                return
            response, complete = await self._data(smtp, entry)
            if complete and 200 <= response.code < 300:
                # Only the reply to the final dot delivers.
                for r in accepted:
                    outcomes[r.address] = _Outcome(None, peer, remote, relayed=not dsn)
            else:
                # A refusal, or a reply that came early (to DATA instead of 354, or during the
                # stream): a positive one is a protocol error (4.5.0 "unexpected reply").
                decide(_reply_decision(response), accepted)
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            pending = [r for r in recipients if r.address not in outcomes]
            decide(transport_failure(TransportProblem.CONNECTION_TIMEOUT, peer), pending)
            return
        except (aiosmtplib.SMTPException, ConnectionError, OSError, ValueError) as exc:
            pending = [r for r in recipients if r.address not in outcomes]
            detail = _detail(str(exc) or type(exc).__name__)
            decide(transport_failure(TransportProblem.CONNECTION_LOST, peer, detail), pending)
            return
        await self._quit(smtp)

    async def _data(self, smtp: aiosmtplib.SMTP, entry: QueueEntry) -> tuple[SMTPResponse, bool]:
        """DATA with the blob streamed in chunks (aiosmtplib's ``data()`` wants the whole
        message in memory, and copies it twice more for line endings and dot-stuffing).

        Returns the reply and whether it answers the final dot (True) or came before it: to
        DATA itself instead of 354, or while the message was streamed (a peer refusing
        mid-stream, e.g. 552 then closing). Only a reply to the final dot can deliver."""
        response = await smtp.execute_command(b"DATA")
        if response.code != 354:
            return response, False
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        # aiosmtplib (pinned >=5.1,<6 for these private names) drops what arrives while no
        # reply is awaited: a reply sent during the stream would go unheard and the message be
        # retried for days as "connection lost". Awaiting one from now on keeps it.
        protocol._response_pending = True
        stuffer = DotStuffer()
        try:
            async for chunk in self.store.blobs.stream(entry.blob):
                if _reply_waiting(protocol):  # the peer answered early: stop sending
                    return await protocol.read_response(timeout=self.command_timeout), False
                data = stuffer.feed(chunk)
                if data:
                    protocol.write(data)
                    # Flow control: wait while the socket's buffer is full.
                    await asyncio.wait_for(protocol._drain_helper(), self.command_timeout)
            if _reply_waiting(protocol):
                return await protocol.read_response(timeout=self.command_timeout), False
            protocol.write(stuffer.end())
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError, OSError):
            # The peer closed or reset; if it said why first, its reply counts.
            if _reply_waiting(protocol):
                return await protocol.read_response(timeout=self.command_timeout), False
            raise
        return await protocol.read_response(timeout=self.command_timeout), True

    async def _quit(self, smtp: aiosmtplib.SMTP) -> None:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await asyncio.wait_for(smtp.quit(), self.command_timeout)

    # -- after the attempt ------------------------------------------------------------------------

    async def _settle(self, entry: QueueEntry, outcomes: dict[str, _Outcome]) -> None:
        now = _now()
        null_sender = entry.mail_from == ""
        delivered: list[tuple[Recipient, _Outcome]] = []
        failed: list[tuple[Recipient, _Outcome, Decision]] = []
        retry: list[tuple[Recipient, _Outcome, Decision]] = []
        for r in entry.recipients:
            outcome = outcomes[r.address]
            if outcome.decision is None:
                delivered.append((r, outcome))
            elif outcome.decision.outcome is Outcome.FAIL:
                failed.append((r, outcome, outcome.decision))
            else:
                retry.append((r, outcome, outcome.decision))
        retry_at: datetime | None = None
        if retry:
            retry_at = self.policy.next_attempt(
                entry.created_at, entry.attempts + 1, now, null_sender=null_sender, key=entry.id
            )
            if retry_at is None:  # the lifetime is over
                failed += [(r, o, d.expired()) for r, o, d in retry]
                retry = []
            elif any(o.busy for _, o, _ in retry):
                # A domain had no free connection slot: its recipients were not tried; they
                # are due again shortly.
                retry_at = min(retry_at, now + BUSY_RETRY)
        # Nothing was tried at all (every domain busy): not an attempt, the backoff stays.
        untried = bool(retry) and not delivered and not failed and all(o.busy for _, o, _ in retry)
        warn = bool(retry) and self.policy.delay_warning_due(
            entry.created_at, now, entry.delay_warned
        )

        reports: list[RecipientReport] = []
        sender = entry.mail_from
        for r, o, d in failed:
            if dsn_requested(sender, _notify(r), Action.FAILED):
                reports.append(self._report(r, o, Action.FAILED, d.status, d.diagnostic, now))
        for r, o in delivered:
            if o.relayed and dsn_requested(sender, _notify(r), Action.RELAYED):
                reports.append(self._report(r, o, Action.RELAYED, "2.0.0", None, now))
        if warn:
            until = self.policy.expires_at(entry.created_at, null_sender=null_sender)
            for r, o, d in retry:
                if dsn_requested(sender, _notify(r), Action.DELAYED):
                    reports.append(
                        self._report(r, o, Action.DELAYED, d.status, d.diagnostic, now, until)
                    )

        # The outcome is being recorded: the heartbeat no longer renews (nor cancels) this.
        current = asyncio.current_task()
        if current is not None:
            self._claimed.pop(current, None)
        if retry:
            assert retry_at is not None
            kept = [r for r, _, _ in retry]
            # The last error stays a real one when there is one (not "connection limit").
            last_error = next(
                (d.diagnostic for _, o, d in retry if not o.busy), retry[0][2].diagnostic
            )
            ok = await self.store.defer_queue_entry(
                entry.id,
                self.worker,
                last_error,
                retry_at,
                recipients=kept if len(kept) != len(entry.recipients) else None,
                delay_warned=True if warn else None,
                count_attempt=not untried,
            )
        elif failed:
            ok = await self.store.fail_queue_entry(
                entry.id,
                self.worker,
                failed[0][2].diagnostic,
                recipients=[r for r, _, _ in failed],
            )
        else:
            ok = await self.store.complete_queue_entry(entry.id, self.worker)
        if not ok:
            # The lease ran out and another runner owns the entry now: its outcome counts, and
            # it reports.
            log.warning("queue entry %s: claim lost before the outcome was recorded", entry.id)
            return
        log.info(
            "queue entry %s: %d delivered, %d failed, %d deferred",
            entry.id,
            len(delivered),
            len(failed),
            len(retry),
        )
        if reports and not null_sender:  # never a report to the null sender: no bounce loops
            await self._send_report(entry, reports, now)

    def _report(
        self,
        r: Recipient,
        outcome: _Outcome,
        action: Action,
        status: str,
        diagnostic: str | None,
        now: datetime,
        will_retry_until: datetime | None = None,
    ) -> RecipientReport:
        orcpt: OriginalRecipient | None = None
        if r.orcpt:
            with contextlib.suppress(ParamError):
                orcpt = parse_orcpt(r.orcpt)
        return RecipientReport(
            final_recipient=r.address,
            action=action,
            status=status,
            original_recipient=orcpt,
            remote_mta=outcome.remote_mta,
            diagnostic=diagnostic,
            last_attempt=now,
            will_retry_until=will_retry_until,
        )

    async def _send_report(
        self, entry: QueueEntry, recipients: list[RecipientReport], now: datetime
    ) -> None:
        ret = Ret(entry.ret) if entry.ret in ("FULL", "HDRS") else None
        # RFC 3464 §2.2.1: "original-envelope-id-field = "Original-Envelope-Id" ":" envelope-id"
        # with "envelope-id = *text", case and spelling preserved. xtext is only the ENVID
        # parameter's SMTP transfer form (RFC 3461 §4, §4.4: "+" and "=" cannot appear raw in
        # an ESMTP parameter value); the DSN is a message, not an SMTP command, so it carries
        # the identifier the sender chose, decoded once here from the stored wire form (as
        # Postfix and Sendmail do: "Original-Envelope-Id: abc+def= x" for ENVID=abc+2Bdef+3D+20x).
        envid: str | None = None
        wire = _wire_envid(entry.envid)
        if wire:
            with contextlib.suppress(ParamError):
                envid = parse_envid(wire)
        try:
            if ret is Ret.FULL and entry.size <= DEFAULT_MAX_RETURNED_SIZE:
                original = await self.store.blobs.read(entry.blob)
            else:
                original = await self.store.blobs.read_range(entry.blob, 0, HEADER_READ)
        except (BlobMissing, OSError):
            original = b""
        try:
            report = build_dsn(
                reporting_mta=self.hostname,
                envelope_sender=entry.mail_from,
                recipients=recipients,
                original=original,
                arrival_date=entry.created_at,
                envid=envid,
                ret=ret,
                smtputf8=not entry.mail_from.isascii(),
                now=now,
            )
            await self.reports.send(entry.mail_from, report)
        except Exception as exc:  # the entry's state is recorded; only the report is lost
            log.error(
                "queue entry %s: report to %s not sent: %s",
                entry.id,
                mask(entry.mail_from),
                type(exc).__name__,
            )

    # -- audit ------------------------------------------------------------------------------------

    async def _audit_session(
        self, entry: QueueEntry, domain: str, recipients: list[Recipient], session: _Session
    ) -> None:
        if session.failure is not None:
            if session.refused:
                result = "refused"
            elif session.failure.outcome is Outcome.FAIL:
                result = "failed"
            else:
                result = "deferred"
            per = {mask(r.address): session.failure.status for r in recipients}
        else:
            per = {}
            kinds = set()
            for r in recipients:
                o = session.outcomes.get(r.address)
                if o is None:
                    continue
                if o.decision is None:
                    per[mask(r.address)] = "2.0.0"
                    kinds.add("delivered")
                else:
                    per[mask(r.address)] = o.decision.status
                    kinds.add("failed" if o.decision.outcome is Outcome.FAIL else "deferred")
            result = kinds.pop() if len(kinds) == 1 else "partial"
        detail: dict[str, Any] = {
            "queue_id": entry.id,
            "attempt": entry.attempts + 1,
            "domain": domain,
            "peer": session.peer,
            "peer_dn": session.peer_dn,
            "tls": session.tls,
            "recipients": per,
        }
        if session.failure is not None:
            detail["diagnostic"] = mask(session.failure.diagnostic)
        else:
            problems = {
                mask(o.decision.diagnostic)
                for o in session.outcomes.values()
                if o.decision is not None
            }
            if problems:
                detail["diagnostic"] = "; ".join(sorted(problems))[:MAX_DIAGNOSTIC]
        await self._audit(entry, session.peer, result, detail)

    async def _audit_failure(
        self, entry: QueueEntry, domain: str, recipients: list[Recipient], decision: Decision
    ) -> None:
        result = "failed" if decision.outcome is Outcome.FAIL else "deferred"
        detail: dict[str, Any] = {
            "queue_id": entry.id,
            "attempt": entry.attempts + 1,
            "domain": domain,
            "peer": None,
            "recipients": {mask(r.address): decision.status for r in recipients},
            "diagnostic": mask(decision.diagnostic),
        }
        await self._audit(entry, None, result, detail)

    async def _audit(
        self, entry: QueueEntry, source: str | None, result: str, detail: dict[str, Any]
    ) -> None:
        try:
            await self.store.audit(
                AUDIT_ACTION,
                actor=ACTOR,
                bal=entry.sender_bal,
                source=source,
                result=result,
                detail=detail,
            )
        except Exception as exc:  # a failing audit write must not lose the delivery outcome
            log.error("queue entry %s: audit record not written: %s", entry.id, type(exc).__name__)


# -- helpers --------------------------------------------------------------------------------------


def _notify(r: Recipient) -> frozenset[Notify] | None:
    """The recipient's NOTIFY (None: not given, RFC 3461 §4.1 default)."""
    if r.notify is None:
        return None
    try:
        return parse_notify(r.notify)
    except ParamError:
        return None


def _size_limit(value: str | None) -> int:
    """The peer's SIZE (RFC 1870 §4): 0 or absent means no fixed limit."""
    if value and value.strip().isdigit():
        return int(value.strip())
    return 0


def _connect_failure(exc: BaseException, peer: str) -> Decision:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, socket.gaierror):
        problem = (
            TransportProblem.DNS_TEMPORARY
            if cause.errno == socket.EAI_AGAIN
            else TransportProblem.DNS_NO_ADDRESS
        )
        return transport_failure(problem, peer)
    if isinstance(cause, ConnectionRefusedError):
        return transport_failure(TransportProblem.CONNECTION_REFUSED, peer)
    if isinstance(cause, TimeoutError):
        return transport_failure(TransportProblem.CONNECTION_TIMEOUT, peer)
    if isinstance(cause, aiosmtplib.SMTPServerDisconnected):
        return transport_failure(TransportProblem.CONNECTION_LOST, peer)
    detail = _detail(str(cause) or type(cause).__name__)
    return transport_failure(TransportProblem.CONNECTION_REFUSED, peer, detail)


def _detail(text: str, limit: int = 120) -> str:
    """A peer's or an exception's text for a diagnostic: :func:`mta.schedule.redact` first,
    then cut (cutting first could leave a piece of an INS the masks no longer recognise)."""
    return printable(redact(text), limit)


def _wire_envid(stored: str | None) -> str | None:
    """The ENVID to relay. The queue holds its xtext wire form (RFC 3461 §4.4; mta.delivery
    stores ``format_envid(decoded)``): relayed as is once checked to be xtext, so it can never
    carry a space, hence never smuggle another MAIL parameter. A value that is not xtext (a row
    written when the queue held the decoded form) is encoded; one that cannot be is dropped."""
    if not stored:
        return None
    try:
        parse_envid(stored)
        return stored
    except ParamError:
        pass
    try:
        return format_envid(stored)
    except ParamError:
        return None


def _presented_chain(ssl_object: Any) -> list[x509.Certificate]:
    """The certificates the peer sent after its leaf, when Python can tell (3.13+); the
    verifier knows the IGC-Santé intermediates anyway."""
    get_chain = getattr(ssl_object, "get_unverified_chain", None)
    if get_chain is None:
        return []
    chain: list[x509.Certificate] = []
    with contextlib.suppress(Exception):
        for item in get_chain()[1:]:
            der = item if isinstance(item, bytes) else item.public_bytes()
            chain.append(x509.load_der_x509_certificate(der))
    return chain


def _listed_dns(whitelist: object, domain: str) -> list[str]:
    """The DNs listed for ``domain`` as text, from whatever whitelist object the runner got: a
    :class:`directory.whitelist.Whitelist` (``dns_for``), a ``WhitelistKeeper`` (``current``) or
    a ``WhitelistComponent`` (``keeper.current``). Empty when none can tell."""
    keeper = getattr(whitelist, "keeper", None)
    for candidate in (
        whitelist,
        getattr(whitelist, "current", None),
        keeper,
        getattr(keeper, "current", None),
    ):
        dns_for = getattr(candidate, "dns_for", None)
        if callable(dns_for):
            return [str(dn) for dn in dns_for(domain)]
    return []
