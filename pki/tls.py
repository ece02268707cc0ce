"""TLS contexts for every door of Colombe, and what to make of a peer's certificate.

- The MX listener (inter-operator): TLS >= 1.2, client certificate required, chained to the
  IGC-Santé roots at handshake; the full verdict (revocation, usage, policy, whitelisted DN) is
  then given by :class:`pki.verify.Verifier` on the peer certificate.
- Client-facing listeners (submission, IMAP, web): client certificate optional (CPS-like cards).
- Outbound delivery: our SERV SSL certificate presented as client certificate; the peer is
  verified by ``pki`` (chain, revocation, listed DN), not by host name alone.

TLS 1.3 is offered; on TLS 1.2 only the ECDHE-RSA suites of the MSSanté client profile
(mssante-spec §2.2).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

from pki.verify import Reason, Verdict

MSSANTE_TLS12_CIPHERS = ":".join(
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-SHA384",
        "ECDHE-RSA-AES128-SHA256",
    )
)


def _base(purpose: int, cert_chain: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MSSANTE_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if cert_chain is not None:
        ctx.load_cert_chain(str(cert_chain), str(key) if key else None)
    return ctx


def mx_server_context(cert_chain: Path, key: Path, trust: Path) -> ssl.SSLContext:
    """Inbound MX: a peer operator must present an IGC-Santé certificate (``trust`` holds the
    roots and the intermediates, PEM)."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, cert_chain, key)
    ctx.load_verify_locations(cafile=str(trust))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (not exported by the ssl module).
_NO_CHECK_TIME = 0x200000


def mx_listener_context(cert_chain: Path, key: Path, trust: Path) -> ssl.SSLContext:
    """The MX listener's context: a client certificate is asked for and, when presented, must
    chain to ``trust``; its dates are not checked during the handshake. The MTA then judges the
    certificate with :class:`pki.verify.Verifier` (dates, revocation, usage, policy) and the
    whitelist, and refuses at MAIL FROM with a reply that says what is wrong: an expired
    certificate, or none at all, gets "550 5.7.0 Client certificate expired" rather than a TLS
    alert the peer operator has to decode. Never use it without that verdict."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, cert_chain, key)
    ctx.load_verify_locations(cafile=str(trust))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.verify_flags |= _NO_CHECK_TIME
    return ctx


def client_facing_context(cert_chain: Path, key: Path, trust: Path | None = None) -> ssl.SSLContext:
    """Submission, IMAP, web: a client certificate is asked for only when ``trust`` is given,
    and never required (passwords and Pro Santé Connect tokens are the usual way in)."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, cert_chain, key)
    if trust is not None:
        ctx.load_verify_locations(cafile=str(trust))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def outbound_context(cert_chain: Path, key: Path, trust: Path) -> ssl.SSLContext:
    """Delivering to a peer MX: present our certificate, require the peer's to chain to
    IGC-Santé. Host names are not what identifies an MSSanté peer: its DN listed in the
    whitelist for the recipient domain is, and that check follows the handshake."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, cert_chain, key)
    ctx.load_verify_locations(cafile=str(trust))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> x509.Certificate | None:
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


# OpenSSL verify codes (X509_V_ERR_*) the handshake may fail with, as our reasons.
_OPENSSL_REASONS = {
    9: Reason.NOT_YET_VALID,
    10: Reason.EXPIRED,
    2: Reason.UNTRUSTED,
    18: Reason.UNTRUSTED,
    19: Reason.UNTRUSTED,
    20: Reason.UNTRUSTED,
    21: Reason.UNTRUSTED,
    7: Reason.BAD_SIGNATURE,
    23: Reason.REVOKED,
    24: Reason.NOT_A_CA,
    25: Reason.NOT_A_CA,
    26: Reason.WRONG_USAGE,
    32: Reason.WRONG_USAGE,
}


def verdict_from_handshake_error(exc: ssl.SSLError, subject: str = "") -> Verdict | None:
    """The verdict for a handshake that failed on certificate verification, None for other
    TLS failures (no certificate, protocol or cipher mismatch...)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _OPENSSL_REASONS.get(exc.verify_code, Reason.UNTRUSTED)
        return Verdict(reason, f"TLS handshake: {exc.verify_message}", subject)
    return None


TLS_READ_BUFFER = 32 * 1024


def compact_tls_read_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Give each asyncio TLS connection a ``size``-octet read buffer instead of 256 KiB.

    Python 3.11's ``asyncio.sslproto.SSLProtocol`` allocates ``max_size`` (256 KiB) per
    connection up front: 10,000 IDLE sessions held 2.7 GiB of it (bench/RESULTS.md). A TLS
    record is at most 16 KiB, so 32 KiB costs nothing in throughput. Process-wide (the class
    attribute is the only hook asyncio offers); servers call it before listening.
    """
    import asyncio.sslproto

    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > size:
        asyncio.sslproto.SSLProtocol.max_size = size
