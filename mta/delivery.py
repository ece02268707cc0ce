"""What the MX and submission do with a received message: the trace header, local delivery into
BALs, queueing for other operators, success DSNs, and the audit record of the exchange.

``250`` is answered only after :meth:`Receiver.deliver` / :meth:`Receiver.enqueue` return: the
blob is fsync'd and the rows committed by then (``store.deliver`` and ``store.enqueue``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from mta import headers, policy, replies
from mta.audit import AuditWriter
from mta.dsn import Action, RecipientReport, build_dsn, dsn_requested
from mta.dsn_params import RcptParams, format_envid, format_notify, format_orcpt
from mta.policy import RouteKind, mss_headers
from mta.received import received_header, with_protocol
from mta.replies import Reply
from mta.schedule import redact
from mta.smtpd import AcceptedRecipient, Envelope, Message, Session
from store import Store
from store.errors import BalNotFound
from store.model import BalStatus, Recipient

log = logging.getLogger(__name__)


class ReportSink(Protocol):
    """Where DSNs go (:class:`mta.reports.ReportSender`)."""

    async def send(self, envelope_sender: str, report: bytes) -> None: ...


DOMAINS_TTL = 10.0
"""Seconds the list of hosted domains is cached (a domain added is served within this delay)."""
BAL_TTL = 5.0
"""Seconds a BAL's status is cached (a BAL created, suspended or closed is seen within it)."""
MAX_CACHED_BALS = 50_000


class HostedDomains:
    """The store's domains, cached for :data:`DOMAINS_TTL` seconds."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._names: frozenset[str] = frozenset()
        self._at = 0.0
        self._statuses: dict[str, tuple[BalStatus | None, float]] = {}

    async def names(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._at > DOMAINS_TTL:
            self._names = frozenset(d.name for d in await self._store.list_domains())
            self._at = now
        return self._names

    async def bal_status(self, address: str) -> BalStatus | None:
        """The BAL's status, cached for :data:`BAL_TTL` seconds (one query per recipient is
        a fifth of the MX's work; a suspension takes effect within the delay)."""
        now = time.monotonic()
        cached = self._statuses.get(address)
        if cached is not None and now - cached[1] <= BAL_TTL:
            return cached[0]
        try:
            status: BalStatus | None = (await self._store.get_bal(address)).status
        except BalNotFound:
            status = None
        if len(self._statuses) >= MAX_CACHED_BALS:
            self._statuses.clear()
        self._statuses[address] = (status, now)
        return status

    async def resolve(
        self, address: str
    ) -> tuple[policy.Address | Reply, frozenset[str], BalStatus | None]:
        """``address`` parsed, our domains, and the BAL's status when the domain is ours."""
        parsed = policy.parse_address(address)
        hosted = await self.names()
        status = None
        if isinstance(parsed, policy.Address) and parsed.domain in hosted:
            status = await self.bal_status(parsed.lowered)
        return parsed, hosted, status

    async def postmaster_recipient(self, params: RcptParams) -> Reply | AcceptedRecipient:
        """``RCPT TO:<Postmaster>``, accepted as RFC 5321 §4.5.1 requires when we have one."""
        postmaster = await self.postmaster()
        if postmaster is None:
            return replies.UNKNOWN_MAILBOX
        return AcceptedRecipient(postmaster, params, RouteKind.LOCAL)

    async def postmaster(self) -> str | None:
        """Where ``RCPT TO:<Postmaster>`` (no domain, RFC 5321 §4.5.1) goes: the active
        ``postmaster@`` BAL of the first of our domains (in name order) that has one."""
        for domain in sorted(await self.names()):
            address = f"postmaster@{domain}"
            if await self.bal_status(address) is BalStatus.ACTIVE:
                return address
        return None


class Receiver:
    def __init__(
        self,
        store: Store,
        *,
        hostname: str,
        audit: AuditWriter,
        reports: ReportSink | None = None,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.hostname = hostname
        self.audit = audit
        self.reports = reports
        self.on_queued = on_queued

    def trace(self, session: Session, envelope: Envelope, queue_id: str) -> bytes:
        """Our Received header (RFC 5321 §4.4), with the TLS parameters and the peer DN."""
        recipients = envelope.recipients
        header = received_header(
            from_helo=session.helo or "unknown",
            peer_ip=session.peer_ip,
            peer_rdns=None,
            by_host=self.hostname,
            with_protocol=with_protocol(
                esmtp=session.esmtp or session.tls,
                tls=session.tls,
                authenticated=session.user is not None,
                utf8=envelope.smtputf8,
            ),
            queue_id=queue_id,
            at=datetime.now(UTC),
            tls_version=session.tls_version,
            tls_cipher=session.tls_cipher,
            tls_bits=session.tls_bits,
            peer_dn=session.peer_dn,
            recipient=recipients[0].address if len(recipients) == 1 else None,
            # Recorded only as the WITH type (ESMTPSA) unless reveal_login: see mta.received.
            authenticated_as=session.user,
        )
        return header.encode("utf-8")

    async def header_fields(self, message: Message) -> list[tuple[str, str]]:
        if message.data is not None:
            block = headers.header_block(message.data[len(message.trace) :])
        else:
            assert message.blob is not None
            head = await self.store.blobs.read_range(
                message.blob, len(message.trace), len(message.trace) + headers.MAX_HEADER_BLOCK
            )
            block = headers.header_block(head)
        return headers.fields(block)

    async def deliver(
        self, envelope: Envelope, message: Message, recipients: Sequence[AcceptedRecipient]
    ) -> None:
        """Deliver into each recipient's INBOX; returns once every copy is durable."""
        if not recipients:
            return
        if message.data is not None and len(recipients) == 1:
            # The common case: blob write and parse overlap inside store.deliver.
            await self.store.deliver(recipients[0].address, message.data)
            return
        blob = message.blob
        if blob is None:
            assert message.data is not None
            blob, _ = await self.store.blobs.put(message.data)
        await asyncio.gather(*(self.store.deliver(r.address, blob) for r in recipients))

    async def enqueue(
        self,
        envelope: Envelope,
        message: Message,
        recipients: Sequence[AcceptedRecipient],
        *,
        sender_bal: str | None,
    ) -> int:
        """Queue for the other operators (and Mon espace santé); durable when this returns."""
        entry = await self.store.enqueue(
            envelope.mail_from,
            [
                Recipient(
                    r.address,
                    notify=format_notify(r.params.notify) if r.params.notify else None,
                    orcpt=format_orcpt(r.params.orcpt) if r.params.orcpt else None,
                )
                for r in recipients
            ],
            message.data if message.data is not None else _blob(message),
            sender_bal=sender_bal,
            # The queue keeps the ENVID in its xtext wire form, relayed as is (RFC 3461 §4.4).
            envid=format_envid(envelope.params.envid) if envelope.params.envid else None,
            ret=envelope.params.ret.value if envelope.params.ret else None,
        )
        if self.on_queued is not None:
            self.on_queued()
        return entry.id

    async def accept(
        self,
        action: str,
        session: Session,
        envelope: Envelope,
        message: Message,
        fields: list[tuple[str, str]],
        queue_id: str,
        *,
        sender_bal: str | None = None,
    ) -> Reply:
        """Store a received message for every recipient (local ones delivered, the others
        queued), audit the exchange, send the success DSNs; the reply to give: 250 once all
        of it is durable, 451 if the store failed."""
        local = [r for r in envelope.recipients if r.kind is RouteKind.LOCAL]
        remote = [r for r in envelope.recipients if r.kind is not RouteKind.LOCAL]
        try:
            if remote:
                await self.enqueue(envelope, message, remote, sender_bal=sender_bal)
            await self.deliver(envelope, message, local)
        except Exception:
            log.exception("message %s could not be stored", queue_id)
            self.record(action, session, envelope, message, fields, queue_id, result="error")
            return replies.STORE_UNAVAILABLE
        self.record(
            action,
            session,
            envelope,
            message,
            fields,
            queue_id,
            local=len(local),
            queued=len(remote),
        )
        await self.report_delivered(envelope, message, local)
        return replies.accepted(queue_id)

    async def report_delivered(
        self, envelope: Envelope, message: Message, delivered: Sequence[AcceptedRecipient]
    ) -> None:
        """The success DSN (RFC 3464, "delivered") for recipients that asked NOTIFY=SUCCESS.
        A failure here is logged, never turned into a refusal: the message is delivered."""
        wanted = [
            r
            for r in delivered
            if dsn_requested(envelope.mail_from, r.params.notify, Action.DELIVERED)
        ]
        if not wanted or self.reports is None:
            return
        try:
            # A success report carries the header block only (RFC 3461 §4.3: RET=FULL is for
            # failures), so only that is read, however big the message.
            original = headers.header_block(
                message.data[len(message.trace) :]
                if message.data is not None
                else await self.store.blobs.read_range(
                    _blob(message),
                    len(message.trace),
                    len(message.trace) + headers.MAX_HEADER_BLOCK,
                )
            )
            now = datetime.now(UTC)
            report = build_dsn(
                reporting_mta=self.hostname,
                envelope_sender=envelope.mail_from,
                recipients=[
                    RecipientReport(
                        final_recipient=r.address,
                        action=Action.DELIVERED,
                        status="2.0.0",
                        original_recipient=r.params.orcpt,
                        last_attempt=now,
                    )
                    for r in wanted
                ],
                original=original,
                arrival_date=now,
                envid=envelope.params.envid,
                ret=envelope.params.ret,
                smtputf8=envelope.smtputf8,
                now=now,
            )
            await self.reports.send(envelope.mail_from, report)
        except Exception:
            log.exception("success DSN for %s could not be sent", redact(envelope.mail_from))

    def record(
        self,
        action: str,
        session: Session,
        envelope: Envelope,
        message: Message,
        header_fields: list[tuple[str, str]],
        queue_id: str,
        *,
        result: str = "accepted",
        local: int = 0,
        queued: int = 0,
    ) -> None:
        """The audit record of one exchange (mssante-spec §2.4, §10.1.6): no body, no INS."""
        detail = {
            "queue_id": queue_id,
            "session": session.id,
            "helo": (session.helo or "")[:100],
            "tls": session.tls_version,
            "cipher": session.tls_cipher,
            "peer_dn": session.peer_dn,
            "mail_from": redact(envelope.mail_from),
            "recipients": [redact(r.address) for r in envelope.recipients][:20],
            "size": message.size,
            "message_id": headers.message_id(header_fields),
            "local": local,
            "queued": queued,
            "mss": mss_headers(header_fields),
        }
        self.audit.record(
            action,
            actor=session.user or session.peer_dn or session.peer_ip,
            bal=session.user,
            source=session.peer_ip,
            result=result,
            detail=detail,
        )


def _blob(message: Message) -> str:
    assert message.blob is not None
    return message.blob
