"""Submission (ports 587 with STARTTLS and 465 with implicit TLS, RFC 6409 and RFC 8314): mail
written by professionals, their practice software and the webmail (ARCHITECTURE flow 2).

- AUTH PLAIN/LOGIN only over TLS (538 5.7.11 before), with the BAL address as login; further
  mechanisms (XOAUTH2/OAUTHBEARER with Pro Santé Connect tokens) plug in as
  :class:`mta.smtpd.SaslMechanism`. MAIL needs AUTH (530 5.7.0).
- The user may send only as a BAL it owns or holds the send right on, in the envelope (MAIL FROM,
  553 5.7.1) and in From: (550 5.7.1 after DATA).
- Each recipient is routed by :func:`mta.policy.route_recipient`: a hosted BAL is delivered
  locally, a whitelisted domain and ``patient.mssante.fr`` (15-digit INS, 25 MB) are queued, any
  other domain is refused at RCPT (550 5.7.1 "domaine hors de l'espace de confiance MSSante").
- ``250`` once the local copies and the queue entry are durable.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping

from mta import policy, replies
from mta.delivery import HostedDomains, Receiver
from mta.dsn_params import MailParams, RcptParams
from mta.headers import from_addresses
from mta.policy import RouteKind, WhitelistView
from mta.replies import Reply
from mta.schedule import redact
from mta.smtpd import (
    AcceptedRecipient,
    AuthUnavailable,
    Envelope,
    Message,
    SaslMechanism,
    Session,
)

log = logging.getLogger(__name__)


class SubmissionHandler:
    name = "submission"
    require_tls = True
    require_auth = True

    def __init__(
        self,
        receiver: Receiver,
        *,
        whitelist: WhitelistView,
        mechanisms: Mapping[str, SaslMechanism],
        max_message_size: int,
    ) -> None:
        self.receiver = receiver
        self.store = receiver.store
        self.whitelist = whitelist
        self.mechanisms = mechanisms
        self.limit = max_message_size
        self.domains = HostedDomains(receiver.store)

    async def check_password(self, login: str, password: str) -> str | None:
        """The SASL PLAIN/LOGIN check: the login is the BAL address."""
        address = policy.parse_address(login.strip())
        try:
            if isinstance(address, Reply):
                # Still pay for a hash: a malformed login must not answer faster than a wrong one.
                await self.store.verify_password("", password)
                return None
            if await self.store.verify_password(address.lowered, password):
                return address.lowered
        except Exception as exc:
            raise AuthUnavailable(type(exc).__name__) from exc
        return None

    async def _may_send_as(self, user: str) -> list[str]:
        delegations = await self.store.list_delegations(delegate=user)
        return [d.bal for d in delegations if d.can_send]

    async def _send_rights(self, session: Session, *, fresh: bool) -> list[str]:
        """The BALs the user may send as; looked up at MAIL, reused for the transaction's
        From: check."""
        if fresh or session.send_as is None:
            assert session.user is not None
            session.send_as = await self._may_send_as(session.user)
        return session.send_as

    async def on_tls(self, session: Session, ssl_object: ssl.SSLObject) -> None:
        return None

    async def on_mail(self, session: Session, address: str, params: MailParams) -> Reply:
        assert session.user is not None
        refusal = policy.sender_allowed(
            session.user, address, None, await self._send_rights(session, fresh=True)
        )
        return refusal or replies.SENDER_OK

    async def on_rcpt(
        self, session: Session, envelope: Envelope, address: str, params: RcptParams
    ) -> Reply | AcceptedRecipient:
        if address.lower() == "postmaster":
            return await self.domains.postmaster_recipient(params)
        _, hosted, status = await self.domains.resolve(address)
        route = policy.route_recipient(
            address, hosted_domains=hosted, local_bal_status=status, whitelist=self.whitelist
        )
        if (
            route.kind is RouteKind.REFUSED
            and route.reply is not None
            and route.reply.enhanced == "5.7.1"
            and not getattr(self.whitelist, "loaded", True)
        ):
            # "Outside the trust space" cannot be told without a whitelist: try again later.
            return replies.WHITELIST_UNAVAILABLE
        if route.kind is RouteKind.REFUSED:
            assert route.reply is not None
            return route.reply
        if envelope.params.size is not None:
            too_big = policy.check_message_size(envelope.params.size, [route.kind], self.limit)
            if too_big is not None:
                return too_big
        return AcceptedRecipient(route.address, params, route.kind)

    def max_message_size(self, envelope: Envelope) -> int:
        return policy.size_limit_for((r.kind for r in envelope.recipients), self.limit)

    def too_big(self, envelope: Envelope, size: int) -> Reply:
        kinds = [r.kind for r in envelope.recipients]
        return policy.check_message_size(size, kinds, self.limit) or replies.message_too_big(
            self.limit
        )

    def trace_header(self, session: Session, envelope: Envelope, queue_id: str) -> bytes:
        return self.receiver.trace(session, envelope, queue_id)

    async def on_message(
        self, session: Session, envelope: Envelope, message: Message, queue_id: str
    ) -> Reply:
        assert session.user is not None
        fields = await self.receiver.header_fields(message)
        refusal = policy.sender_allowed(
            session.user,
            envelope.mail_from,
            from_addresses(fields),
            await self._send_rights(session, fresh=False),
        )
        if refusal is None:
            refusal = policy.check_message_size(
                message.size, [r.kind for r in envelope.recipients], self.limit
            )
        if refusal is not None:
            self.receiver.record(
                "mta.submission", session, envelope, message, fields, queue_id, result="refused"
            )
            return refusal
        return await self.receiver.accept(
            "mta.submission", session, envelope, message, fields, queue_id, sender_bal=session.user
        )

    def on_refusal(self, session: Session, stage: str, reply: Reply) -> None:
        self.receiver.audit.record(
            "mta.submission",
            actor=session.user or session.peer_ip,
            bal=session.user,
            source=session.peer_ip,
            result="refused",
            detail={"session": session.id, "stage": stage, "reply": redact(str(reply))[:200]},
        )

    def on_tls_failure(self, session: Session, error: ssl.SSLError) -> None:
        self.receiver.audit.record(
            "mta.submission",
            actor=session.peer_ip,
            source=session.peer_ip,
            result="refused",
            detail={"session": session.id, "stage": "tls", "error": type(error).__name__},
        )
