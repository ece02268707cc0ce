"""TLS profiles of the three doors, checked on real handshakes over 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from pki.crl import CrlCache
from pki.testpki import TestPki
from pki.tls import (
    MSSANTE_TLS12_CIPHERS,
    client_facing_context,
    mx_server_context,
    outbound_context,
    peer_certificate,
)
from pki.verify import Reason, Role, TrustStore, Verifier


async def serve_once(ctx: ssl.SSLContext) -> tuple[int, asyncio.Future[dict[str, object]]]:
    seen: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

    async def on_connection(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(ctx)
            obj = writer.get_extra_info("ssl_object")
            seen.set_result(
                {"version": obj.version(), "cipher": obj.cipher()[0], "peer": peer_certificate(obj)}
            )
        except (ssl.SSLError, ConnectionError) as exc:
            seen.set_result({"error": exc})
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    seen.add_done_callback(lambda _f: server.close())
    return server.sockets[0].getsockname()[1], seen


async def connect(port: int, ctx: ssl.SSLContext) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.start_tls(ctx)
    writer.close()


def tls12_client(test_pki: TestPki, trust: Path, ciphers: str) -> ssl.SSLContext:
    peer = test_pki.certs["peer-valid"]
    ctx = outbound_context(peer.chain_path, peer.key_path, trust)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    return ctx


async def test_mx_negotiates_tls13_with_a_modern_peer(test_pki: TestPki, trust_file: Path) -> None:
    op, peer = test_pki.certs["operator"], test_pki.certs["peer-valid"]
    port, seen = await serve_once(mx_server_context(op.chain_path, op.key_path, trust_file))
    await connect(port, outbound_context(peer.chain_path, peer.key_path, trust_file))
    result = await asyncio.wait_for(seen, 10)
    assert result["version"] == "TLSv1.3"


async def test_mx_on_tls12_uses_only_the_mssante_ecdhe_rsa_suites(
    test_pki: TestPki, trust_file: Path
) -> None:
    op = test_pki.certs["operator"]
    port, seen = await serve_once(mx_server_context(op.chain_path, op.key_path, trust_file))
    await connect(port, tls12_client(test_pki, trust_file, "ALL"))
    result = await asyncio.wait_for(seen, 10)
    assert result["version"] == "TLSv1.2"
    assert result["cipher"] in MSSANTE_TLS12_CIPHERS.split(":")


async def test_mx_refuses_a_tls12_peer_without_ecdhe(test_pki: TestPki, trust_file: Path) -> None:
    op = test_pki.certs["operator"]
    port, seen = await serve_once(mx_server_context(op.chain_path, op.key_path, trust_file))
    await connect(port, tls12_client(test_pki, trust_file, "AES256-GCM-SHA384"))
    result = await asyncio.wait_for(seen, 10)
    assert isinstance(result.get("error"), ssl.SSLError)


async def test_mx_refuses_a_peer_without_client_certificate(
    test_pki: TestPki, trust_file: Path
) -> None:
    op = test_pki.certs["operator"]
    port, seen = await serve_once(mx_server_context(op.chain_path, op.key_path, trust_file))
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE
    await connect(port, anonymous)
    result = await asyncio.wait_for(seen, 10)
    assert isinstance(result.get("error"), ssl.SSLError)


async def test_client_facing_door_takes_clients_with_or_without_a_card(
    test_pki: TestPki, trust_file: Path
) -> None:
    op, person = test_pki.certs["operator"], test_pki.certs["person"]
    ctx = client_facing_context(op.chain_path, op.key_path, trust_file)
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    plain.load_verify_locations(str(trust_file))
    plain.check_hostname = False
    port, seen = await serve_once(ctx)
    await connect(port, plain)
    assert (await asyncio.wait_for(seen, 10))["peer"] is None
    with_card = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with_card.load_verify_locations(str(trust_file))
    with_card.check_hostname = False
    with_card.load_cert_chain(str(person.chain_path), str(person.key_path))
    port, seen = await serve_once(ctx)
    await connect(port, with_card)
    peer = (await asyncio.wait_for(seen, 10))["peer"]
    assert isinstance(peer, x509.Certificate)
    assert peer.subject == person.cert.subject


async def test_outbound_refuses_a_peer_mx_outside_igc_sante(
    test_pki: TestPki, trust_file: Path
) -> None:
    """We deliver only to an MX whose certificate chains to IGC-Santé."""
    rogue, op = test_pki.certs["peer-non-igc"], test_pki.certs["operator"]
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(rogue.chain_path), str(rogue.key_path))
    port, seen = await serve_once(server_ctx)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(ssl.SSLCertVerificationError):
        await writer.start_tls(outbound_context(op.chain_path, op.key_path, trust_file))
    writer.close()
    await asyncio.wait_for(seen, 10)


def _ca(
    subject: str, issuer: str, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey
) -> x509.Certificate:
    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])

    return (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


async def test_a_chain_loop_ends_untrusted_rfc5280_6_1(test_pki: TestPki) -> None:
    key_a = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_b = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    a = _ca("Boucle A", "Boucle B", key_a, key_b)
    b = _ca("Boucle B", "Boucle A", key_b, key_a)
    leaf = _ca("feuille", "Boucle A", key_b, key_a)
    verifier = Verifier(TrustStore(test_pki.igc_roots(), test_pki.igc_intermediates()), CrlCache())
    verdict = await verifier.verify(leaf, [a, b], role=Role.CLIENT)
    assert verdict.reason is Reason.UNTRUSTED
    assert "loops" in verdict.detail


def test_tls_read_buffers_are_compacted_for_many_idle_connections() -> None:
    """asyncio's 256 KiB per TLS connection would make 10,000 IDLE sessions cost 2.7 GiB."""
    import asyncio.sslproto

    from pki.tls import TLS_READ_BUFFER, compact_tls_read_buffers

    compact_tls_read_buffers()
    assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_BUFFER
