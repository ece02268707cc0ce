"""S/MIME against the test PKI, with openssl as the other side: what Colombe signs or encrypts,
openssl verifies or decrypts, and the other way round."""

from __future__ import annotations

import base64
import contextlib
import random
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki import smime
from pki.crl import CrlCache
from pki.smime import SmimeError
from pki.testpki import ACI_EL_ORG, TestPki, make_test_pki
from pki.verify import TrustStore, Verifier
from tests.pki.crlserver import CrlServer

MESSAGE = (
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Bonjour,\r\n"
    b"Compte rendu d'hospitalisation ci-joint.\r\n" + "Dr Médecin\r\n".encode()
)


def openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(
        ["openssl", *map(str, args)], input=stdin, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def verifier_for(pki: TestPki, crls: CrlCache | None = None) -> Verifier:
    return Verifier(TrustStore(pki.igc_roots(), pki.igc_intermediates()), crls or CrlCache())


@pytest.fixture
def verifier(test_pki: TestPki) -> Verifier:
    return verifier_for(test_pki)


def signed_by_org(pki: TestPki, message: bytes = MESSAGE) -> bytes:
    org = pki.certs["org"]
    return smime.sign(message, org.cert, org.key, [pki.cas[ACI_EL_ORG][0]])


def _signature_der(signed: bytes) -> tuple[bytes, bytes]:
    """(the message before the base64 block of the signature, the signature DER)."""
    head, _, tail = signed.partition(
        b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n'
    )
    text = tail.split(b"\r\n\r\n--", 1)[0]
    return head, base64.b64decode(b"".join(text.split()))


def _with_signature(signed: bytes, der: bytes) -> bytes:
    head, _ = _signature_der(signed)
    boundary = re.search(rb'boundary="([^"]+)"', signed).group(1)  # type: ignore[union-attr]
    encoded = base64.encodebytes(der).replace(b"\n", b"\r\n")
    return (
        head
        + b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n'
        + encoded
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )


# --- Colombe signs, openssl verifies ----------------------------------------------------------


def test_colombe_signature_verifies_with_openssl_smime(test_pki: TestPki, tmp_path: Path) -> None:
    signed = tmp_path / "signed.eml"
    signed.write_bytes(signed_by_org(test_pki))
    # The intermediate travels in the message (`openssl smime` 3.0 only uses -certfile to find the signer).
    out = openssl(
        "smime", "-verify", "-in", signed, "-CAfile", test_pki.roots_path, "-purpose", "any"
    )
    assert out == MESSAGE


def test_colombe_signature_verifies_with_openssl_cms(
    test_pki: TestPki, trust_file: Path, tmp_path: Path
) -> None:
    org = test_pki.certs["org"]
    signed = tmp_path / "signed.eml"
    # Leaf only in the message: openssl 3.0 has no -untrusted here, so the intermediates go in
    # the CA file with the roots (the chain must still end at a root).
    signed.write_bytes(smime.sign(MESSAGE, org.cert, org.key))
    out = openssl("cms", "-verify", "-in", signed, "-CAfile", trust_file, "-purpose", "any")
    assert out == MESSAGE


def test_signing_makes_line_ends_canonical(test_pki: TestPki, tmp_path: Path) -> None:
    signed = signed_by_org(test_pki, MESSAGE.replace(b"\r\n", b"\n"))
    assert b"\n" not in signed.replace(b"\r\n", b"")
    (tmp_path / "signed.eml").write_bytes(signed)
    out = openssl(
        "cms", "-verify", "-in", tmp_path / "signed.eml",
        "-CAfile", test_pki.roots_path, "-purpose", "any",
    )  # fmt: skip
    assert out == MESSAGE


# --- openssl signs, Colombe verifies ----------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        pytest.param("smime", [], id="smime"),
        pytest.param("cms", ["-md", "sha256"], id="cms-detached"),
        pytest.param("cms", ["-md", "sha256", "-nodetach"], id="cms-opaque"),
        pytest.param("cms", ["-md", "sha384"], id="cms-sha384"),
        pytest.param("cms", ["-md", "sha256", "-keyopt", "rsa_padding_mode:pss"], id="cms-pss"),
    ],
)
async def test_openssl_signature_is_valid_with_org_as_signer(
    test_pki: TestPki, verifier: Verifier, tmp_path: Path, command: str, extra: list[str]
) -> None:
    org = test_pki.certs["org"]
    (tmp_path / "msg.eml").write_bytes(MESSAGE)
    signed = openssl(
        command, "-sign", "-binary", "-signer", org.cert_path, "-inkey", org.key_path,
        "-certfile", test_pki.intermediates_path, "-in", tmp_path / "msg.eml", *extra,
    )  # fmt: skip
    check = await smime.verify(signed, verifier)
    assert check.valid, check
    assert check.reason == "ok"
    assert check.signer == org.cert
    assert check.content == MESSAGE


async def test_openssl_text_signature_covers_the_added_text_plain_header(
    test_pki: TestPki, verifier: Verifier, tmp_path: Path
) -> None:
    org = test_pki.certs["org"]
    (tmp_path / "body.txt").write_bytes(b"Bonjour\n")
    signed = openssl(
        "smime", "-sign", "-signer", org.cert_path, "-inkey", org.key_path,
        "-certfile", test_pki.intermediates_path, "-in", tmp_path / "body.txt", "-text",
    )  # fmt: skip
    check = await smime.verify(signed, verifier)
    assert check.valid, check
    assert check.content == b"Content-Type: text/plain\r\n\r\nBonjour\r\n"


async def test_colombe_signature_is_valid_for_colombe(
    test_pki: TestPki, verifier: Verifier
) -> None:
    check = await smime.verify(signed_by_org(test_pki), verifier)
    assert (check.valid, check.reason, check.signer) == (True, "ok", test_pki.certs["org"].cert)
    assert check.content == MESSAGE


async def test_signature_survives_a_store_that_turned_crlf_into_lf(
    test_pki: TestPki, verifier: Verifier
) -> None:
    check = await smime.verify(signed_by_org(test_pki).replace(b"\r\n", b"\n"), verifier)
    assert check.valid, check
    assert check.content == MESSAGE.replace(b"\r\n", b"\n")


# --- refusals ---------------------------------------------------------------------------------


async def test_one_changed_byte_of_content_is_content_altered(
    test_pki: TestPki, verifier: Verifier
) -> None:
    signed = signed_by_org(test_pki).replace(b"Bonjour", b"Bonsoir", 1)
    check = await smime.verify(signed, verifier)
    assert (check.valid, check.reason) == (False, "content-altered")


async def test_corrupted_signature_value_is_bad_signature(
    test_pki: TestPki, verifier: Verifier
) -> None:
    signed = signed_by_org(test_pki)
    _, der = _signature_der(signed)
    # Without unsigned attributes, the signature value is the last element of the DER.
    corrupted = der[:-10] + bytes([der[-10] ^ 0x01]) + der[-9:]
    check = await smime.verify(_with_signature(signed, corrupted), verifier)
    assert (check.valid, check.reason) == (False, "bad-signature")


async def test_corrupted_signed_attributes_are_bad_signature(
    test_pki: TestPki, verifier: Verifier
) -> None:
    signed = signed_by_org(test_pki)
    _, der = _signature_der(signed)
    # Move the signingTime by one second (a UTCTime ...Z): the signed attributes no longer match.
    match = list(re.finditer(rb"\x17\x0d(\d{12})Z", der))[-1]
    seconds = match.group(1)
    changed = seconds[:-1] + (b"1" if seconds[-1:] != b"1" else b"2")
    corrupted = der[: match.start(1)] + changed + der[match.end(1) :]
    check = await smime.verify(_with_signature(signed, corrupted), verifier)
    assert (check.valid, check.reason) == (False, "bad-signature")


async def test_revoked_signer_is_refused_once_the_crl_lists_it(tmp_path: Path) -> None:
    server = CrlServer()
    try:
        pki = make_test_pki(tmp_path / "pki", crl_base_url=server.base_url)
        server.crl_dir = tmp_path / "pki" / "crl"
        verifier = verifier_for(pki, CrlCache(max_age=timedelta(0), retry_after=timedelta(0)))
        signed = signed_by_org(pki)
        assert (await smime.verify(signed, verifier)).valid
        pki.revoke("org")
        check = await smime.verify(signed, verifier)
        assert (check.valid, check.reason) == (False, "revoked")
        assert check.signer == pki.certs["org"].cert
    finally:
        server.close()


async def test_self_signed_signer_is_untrusted(verifier: Verifier) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "faux@exemple.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .sign(key, hashes.SHA256())
    )
    check = await smime.verify(smime.sign(MESSAGE, cert, key), verifier)
    assert (check.valid, check.reason, check.signer) == (False, "untrusted", cert)


async def test_signer_expired_at_verification_time_is_expired(
    test_pki: TestPki, verifier: Verifier
) -> None:
    later = test_pki.certs["org"].cert.not_valid_after_utc + timedelta(days=1)
    check = await smime.verify(signed_by_org(test_pki), verifier, at=later)
    assert (check.valid, check.reason) == (False, "expired")


async def test_unsigned_message_is_no_signature(verifier: Verifier) -> None:
    check = await smime.verify(MESSAGE, verifier)
    assert (check.valid, check.reason) == (False, "no-signature")


# --- encryption -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["smime", "cms"])
def test_colombe_encryption_decrypts_with_openssl(
    test_pki: TestPki, tmp_path: Path, command: str
) -> None:
    org = test_pki.certs["org"]
    (tmp_path / "enc.eml").write_bytes(smime.encrypt(MESSAGE, [org.cert]))
    out = openssl(
        command, "-decrypt", "-binary", "-in", tmp_path / "enc.eml",
        "-recip", org.cert_path, "-inkey", org.key_path,
    )  # fmt: skip
    assert out == MESSAGE


@pytest.mark.parametrize("command", ["smime", "cms"])
def test_openssl_encryption_decrypts_with_colombe(
    test_pki: TestPki, tmp_path: Path, command: str
) -> None:
    org = test_pki.certs["org"]
    (tmp_path / "msg.eml").write_bytes(MESSAGE)
    enveloped = openssl(
        command, "-encrypt", "-binary", "-aes256", "-in", tmp_path / "msg.eml", org.cert_path
    )
    assert smime.decrypt(enveloped, org.cert, org.key) == MESSAGE


def test_message_for_two_recipients_decrypts_for_each(test_pki: TestPki) -> None:
    org, person = test_pki.certs["org"], test_pki.certs["person"]
    enveloped = smime.encrypt(MESSAGE, [org.cert, person.cert])
    assert smime.decrypt(enveloped, org.cert, org.key) == MESSAGE
    assert smime.decrypt(enveloped, person.cert, person.key) == MESSAGE


def test_decrypting_with_another_certificate_says_it_is_not_for_it(test_pki: TestPki) -> None:
    org, person = test_pki.certs["org"], test_pki.certs["person"]
    enveloped = smime.encrypt(MESSAGE, [org.cert])
    with pytest.raises(SmimeError, match="not encrypted for CN=899700000001/Claire MARTIN"):
        smime.decrypt(enveloped, person.cert, person.key)


def test_unsupported_content_encryption_is_refused_by_name(
    test_pki: TestPki, tmp_path: Path
) -> None:
    org = test_pki.certs["org"]
    (tmp_path / "msg.eml").write_bytes(MESSAGE)
    enveloped = openssl(
        "cms", "-encrypt", "-binary", "-des3", "-in", tmp_path / "msg.eml", org.cert_path
    )
    with pytest.raises(SmimeError, match="unsupported content encryption algorithm"):
        smime.decrypt(enveloped, org.cert, org.key)


# --- bad input --------------------------------------------------------------------------------


def _bad_inputs(pki: TestPki) -> Iterator[tuple[str, bytes]]:
    signed = signed_by_org(pki)
    enveloped = smime.encrypt(MESSAGE, [pki.certs["org"].cert])
    yield "empty", b""
    yield "blank", b"\r\n\r\n"
    yield "garbage", bytes(random.Random(1).randrange(256) for _ in range(2000))
    yield "truncated signature", signed[: len(signed) * 3 // 4] + b"\r\n"
    yield "truncated base64", enveloped[: len(enveloped) - 7]
    yield "no headers", b"Bonjour"
    content_end = signed.index(b"\r\n--", signed.index(MESSAGE))
    yield (
        "no signature part",
        signed[:content_end] + signed[content_end:].split(b"\r\n", 2)[0] + b"--\r\n",
    )
    yield "no close delimiter", signed[: signed.rindex(b"\r\n--")]
    yield (
        "not base64",
        signed.replace(b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted"),
    )
    yield "signature not CMS", _with_signature(signed, b"\x30\x03\x02\x01\x01")


@pytest.mark.parametrize(
    "name",
    [
        "empty",
        "blank",
        "garbage",
        "truncated signature",
        "truncated base64",
        "no headers",
        "no signature part",
        "no close delimiter",
        "not base64",
        "signature not CMS",
    ],
)
async def test_bad_input_is_refused_without_other_exceptions(
    test_pki: TestPki, verifier: Verifier, name: str
) -> None:
    data = dict(_bad_inputs(test_pki))[name]
    check = await smime.verify(data, verifier)
    assert not check.valid
    assert check.reason in {"malformed", "no-signature", "bad-signature"}, check
    org = test_pki.certs["org"]
    with pytest.raises(SmimeError):
        smime.decrypt(data, org.cert, org.key)


async def test_random_damage_never_raises_anything_but_smime_error(test_pki: TestPki) -> None:
    verifier = verifier_for(test_pki)
    verifier.crls = None  # no CRL fetch for the rare mutation that still verifies
    org = test_pki.certs["org"]
    signed = signed_by_org(test_pki)
    enveloped = smime.encrypt(MESSAGE, [org.cert])
    rng = random.Random(0)
    for _ in range(150):
        for original in (signed, enveloped):
            damaged = bytearray(original)
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            cut = (
                bytes(damaged[: rng.randrange(len(damaged) + 1)])
                if rng.random() < 0.3
                else bytes(damaged)
            )
            assert isinstance(await smime.verify(cut, verifier), smime.SignatureCheck)
            with contextlib.suppress(SmimeError):
                smime.decrypt(cut, org.cert, org.key)


async def test_input_over_64_mib_is_refused(test_pki: TestPki, verifier: Verifier) -> None:
    org = test_pki.certs["org"]
    huge = b"Content-Type: text/plain\r\n\r\n" + b"a" * (64 * 1024 * 1024)
    with pytest.raises(SmimeError, match="MiB"):
        smime.sign(huge, org.cert, org.key)
    with pytest.raises(SmimeError, match="MiB"):
        smime.encrypt(huge, [org.cert])
    with pytest.raises(SmimeError, match="MiB"):
        smime.decrypt(huge, org.cert, org.key)
    check = await smime.verify(huge, verifier)
    assert (check.valid, check.reason) == (False, "malformed")


def test_signing_an_empty_message_is_refused(test_pki: TestPki) -> None:
    org = test_pki.certs["org"]
    with pytest.raises(SmimeError, match="empty"):
        smime.sign(b"", org.cert, org.key)


# --- size -------------------------------------------------------------------------------------


async def test_one_megabyte_message_round_trips(test_pki: TestPki, verifier: Verifier) -> None:
    org = test_pki.certs["org"]
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    big = b"Content-Type: text/plain\r\n\r\n" + line * (1024 * 1024 // len(line) + 1)
    check = await smime.verify(smime.sign(big, org.cert, org.key), verifier)
    assert check.valid, check
    assert check.content == big
    assert smime.decrypt(smime.encrypt(big, [org.cert]), org.cert, org.key) == big
