"""The ANS audit cases (MOTCO1: valid, expired, revoked, non-IGC, DN not listed, CN different from
the DN), each presented by a peer over a real TLS handshake on 127.0.0.1 to an MX-like listener
(STARTTLS on a plain connection, as SMTP does), with the verdict and reason Colombe reaches."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from pki.crl import CrlCache
from pki.testpki import TestPki
from pki.tls import (
    mx_server_context,
    outbound_context,
    peer_certificate,
    verdict_from_handshake_error,
)
from pki.verify import Reason, Role, TrustStore, Verdict, Verifier, match_listed_dn


@dataclass
class Outcome:
    verdict: Verdict | None
    tls_version: str | None = None


def listed_dn(fqdn: str) -> str:
    # As the whitelist writes it: ", " separators, most specific first.
    return f"CN={fqdn}, OU=0002 123456789, O=GIP COLOMBE TEST, ST=Rhône (69), C=FR"


# What the whitelist lists for each audit domain of our test federation.
WHITELIST = {
    "cert-valide-audit": [listed_dn("cert-valide-audit.peer.test")],
    "cert-expire-audit": [listed_dn("cert-expire-audit.peer.test")],
    "cert-revoque-audit": [listed_dn("cert-revoque-audit.peer.test")],
    "cert-non-igc-audit": [listed_dn("cert-non-igc-audit.peer.test")],
    "cert-no-match-audit": [listed_dn("un-autre-mta.peer.test").replace("GIP COLOMBE", "AUTRE")],
    "cert-cn-diff-dn-audit": [listed_dn("cert-cn-diff-dn-audit.peer.test")],
}


async def handshake(pki: TestPki, trust: Path, peer: str, domain: str) -> Outcome:
    """A peer presenting ``peer``'s certificate connects to our MX; we judge it for ``domain``."""
    verifier = Verifier(TrustStore(pki.igc_roots(), pki.igc_intermediates()), CrlCache())
    operator = pki.certs["operator"]
    server_ctx = mx_server_context(operator.chain_path, operator.key_path, trust)
    outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(server_ctx)
        except ssl.SSLError as exc:
            outcome.set_result(Outcome(verdict_from_handshake_error(exc)))
            writer.close()
            return
        ssl_object = writer.get_extra_info("ssl_object")
        leaf = peer_certificate(ssl_object)
        assert leaf is not None
        verdict = await verifier.verify(leaf, role=Role.CLIENT)
        if verdict.ok:
            verdict = match_listed_dn(leaf, WHITELIST[domain])
        outcome.set_result(Outcome(verdict, ssl_object.version()))
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        issued = pki.certs[peer]
        client_ctx = outbound_context(issued.chain_path, issued.key_path, trust)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        # The server may refuse us mid-handshake: what matters is its verdict.
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.start_tls(client_ctx)
        result = await asyncio.wait_for(outcome, 10)
        writer.close()
        return result
    finally:
        server.close()
        await server.wait_closed()


async def test_valid_listed_certificate_is_accepted(test_pki: TestPki, trust_file: Path) -> None:
    outcome = await handshake(test_pki, trust_file, "peer-valid", "cert-valide-audit")
    assert outcome.verdict is not None
    assert outcome.verdict.reason is Reason.OK
    assert outcome.tls_version in ("TLSv1.2", "TLSv1.3")


async def test_expired_certificate_is_refused_as_expired(
    test_pki: TestPki, trust_file: Path
) -> None:
    outcome = await handshake(test_pki, trust_file, "peer-expired", "cert-expire-audit")
    assert outcome.verdict is not None
    assert outcome.verdict.reason is Reason.EXPIRED


async def test_revoked_certificate_is_refused_as_revoked(
    test_pki: TestPki, trust_file: Path
) -> None:
    outcome = await handshake(test_pki, trust_file, "peer-revoked", "cert-revoque-audit")
    assert outcome.verdict is not None
    assert outcome.verdict.reason is Reason.REVOKED


async def test_non_igc_certificate_is_refused_as_untrusted(
    test_pki: TestPki, trust_file: Path
) -> None:
    outcome = await handshake(test_pki, trust_file, "peer-non-igc", "cert-non-igc-audit")
    assert outcome.verdict is not None
    assert outcome.verdict.reason is Reason.UNTRUSTED


async def test_unlisted_dn_is_refused_as_not_listed(test_pki: TestPki, trust_file: Path) -> None:
    outcome = await handshake(test_pki, trust_file, "peer-not-listed", "cert-no-match-audit")
    assert outcome.verdict is not None
    assert outcome.verdict.reason is Reason.DN_NOT_LISTED


async def test_cn_different_from_listed_dn_is_refused_as_cn_differs(
    test_pki: TestPki, trust_file: Path
) -> None:
    outcome = await handshake(test_pki, trust_file, "peer-cn-diff", "cert-cn-diff-dn-audit")
    assert outcome.verdict is not None
    assert outcome.verdict.reason is Reason.CN_DIFFERS
