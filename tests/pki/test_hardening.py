"""Fail-closed rules found in review: each would let a bad certificate or CRL through, or let a
hostile distribution point stall validation, without its fix."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from pki import crl as crl_module
from pki.crl import CrlCache, CrlError
from pki.testpki import ACI_EL_ORG, TestPki, make_test_pki
from pki.verify import Reason, Role, TrustStore, Verifier


def _crl(
    pki: TestPki, *extensions: tuple[x509.ExtensionType, bool], last_update: datetime | None = None
) -> x509.CertificateRevocationList:
    cert, key = pki.cas[ACI_EL_ORG]
    now = last_update or datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
    )
    for value, critical in extensions:
        builder = builder.add_extension(value, critical)
    return builder.sign(key, hashes.SHA256())


def test_delta_crl_is_refused_rfc5280_5_2_4(test_pki: TestPki) -> None:
    with pytest.raises(CrlError, match="delta"):
        CrlCache().add(
            _crl(test_pki, (x509.DeltaCRLIndicator(1), True)), test_pki.cas[ACI_EL_ORG][0]
        )


def test_crl_limited_to_ca_certificates_is_refused_rfc5280_5_2_5(test_pki: TestPki) -> None:
    idp = x509.IssuingDistributionPoint(
        full_name=None,
        relative_name=None,
        only_contains_user_certs=False,
        only_contains_ca_certs=True,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )
    with pytest.raises(CrlError, match="partial"):
        CrlCache().add(_crl(test_pki, (idp, True)), test_pki.cas[ACI_EL_ORG][0])


def test_crl_dated_in_the_future_is_refused(test_pki: TestPki) -> None:
    future = datetime.now(UTC) + timedelta(days=30)
    with pytest.raises(CrlError, match="future"):
        CrlCache().add(_crl(test_pki, last_update=future), test_pki.cas[ACI_EL_ORG][0])


@pytest.fixture
def hostile_server() -> Iterator[tuple[int, list[str]]]:
    """A distribution point that answers garbage, or drips one octet per second."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    mode = ["garbage"]
    stop = threading.Event()

    def run() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                if mode[0] == "garbage":
                    conn.sendall(b"GARBAGE\r\n\r\n")
                else:
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n")
                    while not stop.is_set():
                        try:
                            conn.sendall(b"0")
                        except OSError:
                            break
                        time.sleep(0.5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield listener.getsockname()[1], mode
    stop.set()
    thread.join(5)
    listener.close()


async def test_garbage_from_the_distribution_point_fails_closed_without_raising(
    tmp_path: Path, hostile_server: tuple[int, list[str]]
) -> None:
    port, _ = hostile_server
    pki = make_test_pki(tmp_path, crl_base_url=f"http://127.0.0.1:{port}/crl")
    verifier = Verifier(TrustStore(pki.igc_roots(), pki.igc_intermediates()), CrlCache())
    verdict = await verifier.verify(pki.certs["peer-valid"].cert, role=Role.CLIENT)
    assert verdict.reason is Reason.REVOCATION_UNKNOWN


async def test_a_dripping_distribution_point_cannot_hold_validation(
    tmp_path: Path, hostile_server: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, mode = hostile_server
    mode[0] = "drip"
    monkeypatch.setattr(crl_module, "FETCH_DEADLINE", 1.5)
    pki = make_test_pki(tmp_path, crl_base_url=f"http://127.0.0.1:{port}/crl")
    verifier = Verifier(TrustStore(pki.igc_roots(), pki.igc_intermediates()), CrlCache())
    started = time.monotonic()
    verdict = await asyncio.wait_for(
        verifier.verify(pki.certs["peer-valid"].cert, role=Role.CLIENT), 20
    )
    assert verdict.reason is Reason.REVOCATION_UNKNOWN
    assert time.monotonic() - started < 10


def _leaf(
    pki: TestPki, *, key_size: int = 2048, extra: x509.ExtensionType | None = None
) -> x509.Certificate:
    issuer, issuer_key = pki.cas[ACI_EL_ORG]
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x.peer.test")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
    )
    if extra is not None:
        builder = builder.add_extension(extra, critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


async def test_unknown_critical_extension_is_refused_rfc5280_4_2(test_pki: TestPki) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    verifier = Verifier(TrustStore(test_pki.igc_roots(), test_pki.igc_intermediates()), None)
    verdict = await verifier.verify(_leaf(test_pki, extra=unknown), role=Role.CLIENT)
    assert verdict.reason is Reason.UNSUPPORTED_EXTENSION


async def test_rsa_key_under_2048_bits_is_refused(test_pki: TestPki) -> None:
    verifier = Verifier(TrustStore(test_pki.igc_roots(), test_pki.igc_intermediates()), None)
    verdict = await verifier.verify(_leaf(test_pki, key_size=1024), role=Role.CLIENT)
    assert verdict.reason is Reason.WEAK_KEY


async def test_a_stale_copy_of_our_intermediate_does_not_shadow_the_current_one(
    test_pki: TestPki,
) -> None:
    current, key = test_pki.cas[ACI_EL_ORG]
    root_key = test_pki.cas["root-el"][1]
    stale = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(current.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(days=900))
        .not_valid_after(datetime.now(UTC) - timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    verifier = Verifier(TrustStore(test_pki.igc_roots(), test_pki.igc_intermediates()), None)
    verdict = await verifier.verify(test_pki.certs["peer-valid"].cert, [stale], role=Role.CLIENT)
    assert verdict.ok
