"""Loading certificates, CRLs and keys from every packaging IGC-Santé material comes in."""

from __future__ import annotations

import base64
import subprocess
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pki.errors import PkiInputError
from pki.loading import (
    MAX_CRL_BYTES,
    MAX_INPUT_BYTES,
    fingerprint,
    load_certificate_file,
    load_certificates,
    load_crl,
    load_private_key,
)

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


@dataclass(frozen=True)
class Material:
    ca_key: rsa.RSAPrivateKey
    ca: x509.Certificate
    leaf_key: rsa.RSAPrivateKey
    leaf: x509.Certificate
    crl: x509.CertificateRevocationList

    def pem(self, *certs: x509.Certificate) -> bytes:
        return b"".join(cert.public_bytes(PEM) for cert in certs)


def _name(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


@pytest.fixture(scope="module")
def material() -> Material:
    """A self-signed CA, a leaf it issued and a CRL it signed (RSA 2048: generated once)."""
    now = datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = _name(
        (NameOID.COUNTRY_NAME, "FR"),
        (NameOID.ORGANIZATION_NAME, "COLOMBE-TEST"),
        (NameOID.COMMON_NAME, "AC TEST COLOMBE"),
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(
            _name(
                (NameOID.COUNTRY_NAME, "FR"),
                (NameOID.STATE_OR_PROVINCE_NAME, "Rhône (69)"),
                (NameOID.ORGANIZATION_NAME, "GIP - EXEMPLE"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "0002 123456789"),
                (NameOID.COMMON_NAME, "mta.example.mssante.fr"),
            )
        )
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_name)
        .last_update(now)
        .next_update(now + timedelta(days=7))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(leaf.serial_number)
            .revocation_date(now)
            .build()
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Material(ca_key, ca, leaf_key, leaf, crl)


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True).stdout


# -- certificates ---------------------------------------------------------------------------


def test_single_pem_certificate(material: Material) -> None:
    assert load_certificates(material.pem(material.leaf)) == [material.leaf]


def test_several_pem_certificates_keep_their_order(material: Material) -> None:
    assert load_certificates(material.pem(material.leaf, material.ca)) == [
        material.leaf,
        material.ca,
    ]


def test_pem_with_text_around_as_openssl_x509_text_prints_it(material: Material) -> None:
    texts = [
        openssl("x509", "-text", stdin=material.pem(cert)) for cert in (material.leaf, material.ca)
    ]
    assert texts[0].index(b"-----BEGIN CERTIFICATE-----") > 0
    bundle = b"Chaine IGC-Sante TEST\r\n" + b"\r\n".join(texts) + b"\r\n-- fin --\r\n"
    assert load_certificates(bundle) == [material.leaf, material.ca]


def test_pem_blocks_other_than_certificates_are_skipped(material: Material) -> None:
    key = material.leaf_key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    crl = material.crl.public_bytes(PEM)
    assert load_certificates(key + material.pem(material.leaf) + crl) == [material.leaf]


def test_der_certificate(material: Material) -> None:
    assert load_certificates(material.leaf.public_bytes(DER)) == [material.leaf]


@pytest.mark.parametrize("encoding", [DER, PEM], ids=["der", "pem"])
def test_p7b_built_by_cryptography(material: Material, encoding: serialization.Encoding) -> None:
    p7b = pkcs7.serialize_certificates([material.ca, material.leaf], encoding)
    assert set(load_certificates(p7b, "chain.p7b")) == {material.ca, material.leaf}


@pytest.mark.parametrize("outform", ["DER", "PEM"])
def test_p7b_built_by_openssl_crl2pkcs7(material: Material, tmp_path: Path, outform: str) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(material.pem(material.ca, material.leaf))
    p7b = openssl("crl2pkcs7", "-nocrl", "-certfile", str(chain), "-outform", outform)
    if outform == "PEM":
        assert p7b.startswith(b"-----BEGIN PKCS7-----")
    path = tmp_path / "Chaine_de_certification-IGC-Sante-TEST.p7b"
    path.write_bytes(p7b)
    assert set(load_certificate_file(path)) == {material.ca, material.leaf}


def test_p7b_in_ber_with_indefinite_lengths_is_accepted(material: Material) -> None:
    # Bundles exported by some tools are BER, not DER; cryptography accepts them (with a warning).
    der = pkcs7.serialize_certificates([material.leaf], DER)
    assert der[1] == 0x82  # two length octets follow
    ber = b"\x30\x80" + der[4:] + b"\x00\x00"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_certificates(ber) == [material.leaf]


def _bad_certificate_inputs(material: Material) -> dict[str, tuple[bytes, str]]:
    der = material.leaf.public_bytes(DER)
    leaf_pem, ca_pem = material.pem(material.leaf), material.pem(material.ca)
    lines = ca_pem.splitlines(keepends=True)
    broken = b"".join([lines[0], lines[1][:10] + b"*!" + lines[1][12:], *lines[2:]])
    truncated_block = b"".join(
        [
            b"-----BEGIN CERTIFICATE-----\n",
            _pem_body(der[: len(der) // 2]),
            b"-----END CERTIFICATE-----\n",
        ]
    )
    empty_p7b_der = openssl("crl2pkcs7", "-nocrl", "-outform", "DER")
    empty_p7b_pem = openssl("crl2pkcs7", "-nocrl", "-outform", "PEM")
    return {
        "empty": (b"", "empty input"),
        "blank": (b" \r\n\t\n", "empty input"),
        "garbage": (b"this is not a certificate\n", "neither PEM nor DER"),
        "binary garbage": (b"\x30\x03\x02\x01\x05", "unreadable certificate"),
        "truncated DER": (der[: len(der) // 2], "truncated DER"),
        "DER with trailing data": (der + b"\x00\x00", "trailing data"),
        "truncated DER in PEM block 2": (
            leaf_pem + truncated_block,
            "PEM block 2: unreadable certificate: truncated DER",
        ),
        "broken base64": (leaf_pem + broken, "broken base64 in PEM block 2"),
        "empty PEM block": (
            b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            "empty PEM block 1",
        ),
        "no END line": (
            leaf_pem + lines[0] + lines[1],
            "PEM block 2 (CERTIFICATE) has no END line",
        ),
        "END line of another block": (
            b"".join([*lines[:-1], b"-----END PKCS7-----\n"]),
            "begins as CERTIFICATE but ends as PKCS7",
        ),
        "only a key": (
            material.leaf_key.private_bytes(
                PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "no CERTIFICATE or PKCS7 PEM block (found PRIVATE KEY)",
        ),
        "p7b DER without certificates": (empty_p7b_der, "PKCS#7 bundle holds no certificate"),
        "p7b PEM without certificates": (
            empty_p7b_pem,
            "PEM block 1: PKCS#7 bundle holds no certificate",
        ),
        "truncated p7b": (
            pkcs7.serialize_certificates([material.leaf], DER)[:500],
            "unreadable PKCS#7 bundle: truncated DER",
        ),
        "oversize": (b"\x30" + b"\x00" * MAX_INPUT_BYTES, "more than the 16 MiB accepted"),
    }


def _pem_body(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"".join(encoded[i : i + 64] + b"\n" for i in range(0, len(encoded), 64))


def test_bad_certificate_inputs_raise_pki_input_error_naming_the_source(material: Material) -> None:
    for case, (data, problem) in _bad_certificate_inputs(material).items():
        with pytest.raises(PkiInputError) as caught:
            load_certificates(data, "resultats.p7b")
        message = str(caught.value)
        assert message.startswith("resultats.p7b: "), case
        assert problem in message, (case, message)


def test_certificate_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pem"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    with pytest.raises(PkiInputError, match=r"x\.pem: broken base64 in PEM block 1"):
        load_certificate_file(path)
    with pytest.raises(PkiInputError, match=r"missing\.pem: cannot read"):
        load_certificate_file(tmp_path / "missing.pem")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damaged_input_raises_only_pki_input_error(material: Material, data: st.DataObject) -> None:
    der = material.leaf.public_bytes(DER)
    pem = material.pem(material.leaf)
    base = data.draw(
        st.sampled_from([der, pem, pkcs7.serialize_certificates([material.leaf], DER)])
    )
    damaged = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    for candidate in (bytes(damaged), bytes(damaged[:cut]), data.draw(st.binary(max_size=64))):
        try:
            load_certificates(candidate, "fuzz")
        except PkiInputError as exc:
            message = str(exc)
        else:
            continue
        assert message.startswith("fuzz: ")


# -- CRLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [DER, PEM], ids=["der", "pem"])
def test_crl(material: Material, encoding: serialization.Encoding) -> None:
    crl = load_crl(material.crl.public_bytes(encoding), "ACI-EL-ORG.crl")
    assert crl == material.crl
    assert crl.get_revoked_certificate_by_serial_number(material.leaf.serial_number) is not None


def test_crl_pem_with_text_around(material: Material) -> None:
    text = openssl("crl", "-text", stdin=material.crl.public_bytes(PEM))
    assert load_crl(b"CRL du jour\n" + text) == material.crl


def test_bad_crl_inputs_raise_pki_input_error_naming_the_source(material: Material) -> None:
    der = material.crl.public_bytes(DER)
    pem = material.crl.public_bytes(PEM)
    lines = pem.splitlines(keepends=True)
    cases = {
        "empty": (b"", "empty input"),
        "garbage": (b"<html>404</html>", "neither PEM nor DER"),
        "truncated DER": (der[: len(der) // 2], "unreadable CRL: truncated DER"),
        "broken base64": (
            b"".join([lines[0], b"%%%\n", *lines[1:]]),
            "broken base64 in PEM block 1",
        ),
        "a certificate": (material.pem(material.leaf), "no X509 CRL PEM block (found CERTIFICATE)"),
        "a DER certificate": (material.leaf.public_bytes(DER), "unreadable CRL"),
        "two CRLs": (pem + pem, "2 X509 CRL PEM blocks, expected one"),
        "oversize": (b"\x30" + b"\x00" * MAX_CRL_BYTES, "more than the 64 MiB accepted"),
    }
    for case, (data, problem) in cases.items():
        with pytest.raises(PkiInputError) as caught:
            load_crl(data, "http://crl.example/ACI.crl")
        message = str(caught.value)
        assert message.startswith("http://crl.example/ACI.crl: "), case
        assert problem in message, (case, message)


# -- private keys ---------------------------------------------------------------------------

_KEY_FORMATS = {
    "pem-pkcs8": (PEM, serialization.PrivateFormat.PKCS8),
    "pem-traditional": (PEM, serialization.PrivateFormat.TraditionalOpenSSL),
    "der-pkcs8": (DER, serialization.PrivateFormat.PKCS8),
    "der-traditional": (DER, serialization.PrivateFormat.TraditionalOpenSSL),
}


@pytest.mark.parametrize("form", list(_KEY_FORMATS))
def test_private_key_formats(material: Material, form: str) -> None:
    encoding, private_format = _KEY_FORMATS[form]
    data = material.leaf_key.private_bytes(encoding, private_format, serialization.NoEncryption())
    key = load_private_key(data, "key")
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.private_numbers() == material.leaf_key.private_numbers()


@pytest.mark.parametrize("form", ["pem-pkcs8", "pem-traditional", "der-pkcs8"])
def test_encrypted_private_key(material: Material, form: str) -> None:
    encoding, private_format = _KEY_FORMATS[form]
    password = b"s3cret-Passphrase"
    data = material.leaf_key.private_bytes(
        encoding, private_format, serialization.BestAvailableEncryption(password)
    )
    key = load_private_key(data, "server.key", password)
    assert isinstance(key, rsa.RSAPrivateKey)
    cases = {
        b"wrong-Passphrase": "cannot decrypt the private key",
        None: "private key is encrypted and no password was given",
    }
    for given_password, problem in cases.items():
        with pytest.raises(PkiInputError) as caught:
            load_private_key(data, "server.key", given_password)
        assert str(caught.value).startswith("server.key: ")
        assert problem in str(caught.value)
        assert caught.value.__cause__ is None
        if given_password:
            assert given_password.decode() not in str(caught.value)


def test_private_key_next_to_its_certificate(material: Material) -> None:
    key_pem = material.leaf_key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = load_private_key(material.pem(material.leaf) + b"\n" + key_pem, "bundle.pem")
    assert isinstance(key, rsa.RSAPrivateKey)


def test_bad_private_key_inputs(material: Material) -> None:
    plain = material.leaf_key.private_bytes(
        DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cases: dict[str, tuple[bytes, bytes | None, str]] = {
        "empty": (b"", None, "empty input"),
        "garbage": (b"hello", None, "neither PEM nor DER"),
        "truncated": (plain[:100], None, "unreadable private key (truncated DER"),
        "certificate only": (
            material.pem(material.leaf),
            None,
            "no PRIVATE KEY PEM block (found CERTIFICATE)",
        ),
        "password for a plain key": (
            plain,
            b"pw",
            "a password was given but the private key is not encrypted",
        ),
    }
    for case, (data, password, problem) in cases.items():
        with pytest.raises(PkiInputError) as caught:
            load_private_key(data, "server.key", password)
        assert str(caught.value).startswith("server.key: "), case
        assert problem in str(caught.value), (case, str(caught.value))


# -- fingerprints ---------------------------------------------------------------------------


def test_fingerprint_is_what_openssl_prints(material: Material) -> None:
    for cert in (material.ca, material.leaf):
        printed = openssl("x509", "-noout", "-fingerprint", "-sha256", stdin=material.pem(cert))
        assert fingerprint(cert) == printed.decode().strip().split("=", 1)[1]
        assert len(fingerprint(cert)) == 32 * 3 - 1
