"""The inbound MX: mail from the other operators of the Espace de confiance (ARCHITECTURE flow 1,
mssante-spec §2.2 and §10.1).

- STARTTLS is required before MAIL (530 5.7.0); the peer presents its IGC-Santé SERV certificate
  as TLS client certificate. The handshake only checks that the chain leads to our trust anchors
  (dates are left to :class:`pki.verify.Verifier`, see :func:`pki.tls.mx_listener_context`), so
  that an expired, revoked or otherwise invalid certificate, or none, gets an SMTP reply that
  names the problem at MAIL FROM instead of a bare TLS alert. A certificate that does not chain
  to IGC-Santé at all fails the handshake (OpenSSL cannot be told to go on); the audit trail
  records why.
- MAIL FROM: the certificate must be valid for TLS client authentication, and its DN listed in
  the whitelist for the sender's domain (for ``<>``: listed for at least one domain); a DN whose
  CN alone differs from the listed one is told apart (the ANS audit case "CN différent du DN").
- RCPT TO: active BALs of our domains only (550 5.1.1 otherwise, no backscatter).
- DATA: delivered into each BAL; ``250`` once durable; success DSNs when asked.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping

from mta import policy, replies
from mta.delivery import HostedDomains, Receiver
from mta.dsn_params import MailParams, RcptParams
from mta.policy import RouteKind, WhitelistView
from mta.replies import Reply
from mta.schedule import redact
from mta.smtpd import AcceptedRecipient, Envelope, Message, SaslMechanism, Session
from pki.verify import Reason, Role, Verifier, match_listed_dn

log = logging.getLogger(__name__)


class MxHandler:
    name = "mx"
    require_tls = True
    require_auth = False
    mechanisms: Mapping[str, SaslMechanism] = {}

    def __init__(
        self,
        receiver: Receiver,
        *,
        verifier: Verifier,
        whitelist: WhitelistView,
        max_message_size: int,
    ) -> None:
        self.receiver = receiver
        self.store = receiver.store
        self.verifier = verifier
        self.whitelist = whitelist
        self.limit = max_message_size
        self.domains = HostedDomains(receiver.store)

    async def on_tls(self, session: Session, ssl_object: ssl.SSLObject) -> None:
        if session.peer_cert is not None:
            session.cert_verdict = await self.verifier.verify(session.peer_cert, role=Role.CLIENT)

    async def on_mail(self, session: Session, address: str, params: MailParams) -> Reply:
        cert, verdict = session.peer_cert, session.cert_verdict
        if cert is None:
            return replies.NO_CLIENT_CERTIFICATE
        if not getattr(self.whitelist, "loaded", True):
            return replies.WHITELIST_UNAVAILABLE
        if verdict is None:
            # Never judged (the check failed): fail closed, and let the peer retry.
            return replies.CERTIFICATE_UNCHECKED
        domain = address.rpartition("@")[2]
        if not verdict.ok:
            return replies.certificate_refused(verdict.reason, domain)
        if address:
            parsed = policy.parse_address(address)
            if isinstance(parsed, Reply):
                return (
                    parsed if parsed is replies.NON_ASCII_DOMAIN else replies.INVALID_SENDER_ADDRESS
                )
        refusal = policy.check_inbound_sender(address, cert.subject, self.whitelist)
        # Of check_inbound_sender's refusals, only "DN not listed" is 5.7.1 for a non-null sender.
        if refusal is not None and address and refusal.enhanced == "5.7.1":
            dns_for = getattr(self.whitelist, "dns_for", None)
            listed: list[str] = dns_for(domain) if dns_for is not None else []
            if listed and match_listed_dn(cert, listed).reason is Reason.CN_DIFFERS:
                return replies.certificate_refused(Reason.CN_DIFFERS, domain)
        return refusal or replies.SENDER_OK

    async def on_rcpt(
        self, session: Session, envelope: Envelope, address: str, params: RcptParams
    ) -> Reply | AcceptedRecipient:
        if address.lower() == "postmaster":
            return await self.domains.postmaster_recipient(params)
        parsed, hosted, status = await self.domains.resolve(address)
        refusal = policy.check_inbound_recipient(address, hosted_domains=hosted, bal_status=status)
        if refusal is not None:
            return refusal
        assert isinstance(parsed, policy.Address)
        return AcceptedRecipient(parsed.lowered, params, RouteKind.LOCAL)

    def max_message_size(self, envelope: Envelope) -> int:
        return self.limit

    def too_big(self, envelope: Envelope, size: int) -> Reply:
        return replies.message_too_big(self.limit)

    def trace_header(self, session: Session, envelope: Envelope, queue_id: str) -> bytes:
        return self.receiver.trace(session, envelope, queue_id)

    async def on_message(
        self, session: Session, envelope: Envelope, message: Message, queue_id: str
    ) -> Reply:
        fields = await self.receiver.header_fields(message)
        return await self.receiver.accept(
            "mta.inbound", session, envelope, message, fields, queue_id
        )

    def on_refusal(self, session: Session, stage: str, reply: Reply) -> None:
        self.receiver.audit.record(
            "mta.inbound",
            actor=session.peer_dn or session.peer_ip,
            source=session.peer_ip,
            result="refused",
            detail={
                "session": session.id,
                "stage": stage,
                "reply": redact(str(reply))[:200],
                "tls": session.tls_version,
                "peer_dn": session.peer_dn,
                "cert": session.cert_verdict.reason.value if session.cert_verdict else None,
            },
        )

    def on_tls_failure(self, session: Session, error: ssl.SSLError) -> None:
        from pki.tls import verdict_from_handshake_error

        verdict = verdict_from_handshake_error(error)
        self.receiver.audit.record(
            "mta.inbound",
            actor=session.peer_ip,
            source=session.peer_ip,
            result="refused",
            detail={
                "session": session.id,
                "stage": "tls",
                "cert": verdict.reason.value if verdict else None,
                "error": (verdict.detail if verdict else type(error).__name__)[:200],
            },
        )
