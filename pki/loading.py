"""Loading certificates, CRLs and private keys from bytes, whatever the packaging.

IGC-Santé material arrives as PEM files (often ``openssl x509 -text`` output, with text around
the blocks), single DER certificates, and PKCS#7 "certs-only" bundles in DER or PEM (ANS publishes
its chains as ``.p7b``). Every function here either returns parsed objects or raises
:class:`~pki.errors.PkiInputError` whose message starts with the source name and says what is
wrong; errors from ``cryptography`` (``ValueError``, ``TypeError``, ``UnsupportedAlgorithm``...)
never escape.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7

from pki.errors import PkiError, PkiInputError

MAX_INPUT_BYTES: Final = 16 * 1024 * 1024
"""Largest certificate or key input accepted (a whole trust store is a few hundred kB)."""

MAX_CRL_BYTES: Final = 64 * 1024 * 1024
"""Largest CRL accepted: CRLs of CAs issuing many certificates grow large, and ``pki.crl``
downloads up to 50 MiB; this bound only has to stop absurd input."""

_CERTIFICATE_LABELS: Final = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE"})
_PKCS7_LABELS: Final = frozenset({b"PKCS7", b"CMS"})
_CRL_LABELS: Final = frozenset({b"X509 CRL"})
_KEY_LABELS: Final = frozenset(
    {
        b"PRIVATE KEY",
        b"ENCRYPTED PRIVATE KEY",
        b"RSA PRIVATE KEY",
        b"EC PRIVATE KEY",
        b"DSA PRIVATE KEY",
    }
)

# RFC 7468 §3 encapsulation boundaries. The label is captured so that the END line can be checked.
_PEM_BEGIN: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----")
_PEM_END: Final = re.compile(rb"-----END ([A-Z0-9 ]{1,64})-----")
_PEM_WHITESPACE: Final = re.compile(rb"[ \t\r\n\v\f]+")
# RFC 1421 headers ("Proc-Type: 4,ENCRYPTED", "DEK-Info: ...") of legacy encrypted keys.
_PEM_HEADER: Final = re.compile(rb"^[ \t]*[A-Za-z0-9-]+:[^\r\n]*$", re.MULTILINE)

# DER of the PKCS#7 signedData content type, 1.2.840.113549.1.7.2 (RFC 2315 §14), as it appears
# right after the ContentInfo SEQUENCE header of a .p7b.
_SIGNED_DATA_OID: Final = bytes.fromhex("06092a864886f70d010702")


@dataclass(frozen=True)
class _PemBlock:
    number: int  # 1-based position among the PEM blocks of the input
    label: bytes
    text: bytes  # the whole block, BEGIN and END lines included
    body: bytes  # what lies between the boundaries


def check_input(
    data: bytes, source: str, limit: int, *, error: type[PkiError] = PkiInputError
) -> bytes:
    """``data`` as bytes, refused with ``error`` naming ``source`` when it is not bytes, larger
    than ``limit`` or blank (every pki entry point bounds its input this way)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error(f"{source}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > limit:
        raise error(
            f"{source}: {len(data)} bytes, more than the {limit // (1024 * 1024)} MiB accepted"
        )
    if not data.strip():
        raise error(f"{source}: empty input")
    return data


def _pem_blocks(data: bytes, source: str) -> list[_PemBlock]:
    """Every PEM block of ``data``, text between and around them ignored (RFC 7468 §2)."""
    blocks: list[_PemBlock] = []
    pos = 0
    while (begin := _PEM_BEGIN.search(data, pos)) is not None:
        number = len(blocks) + 1
        label = begin.group(1)
        end = _PEM_END.search(data, begin.end())
        following = _PEM_BEGIN.search(data, begin.end())
        if end is None or (following is not None and following.start() < end.start()):
            raise PkiInputError(f"{source}: PEM block {number} ({label.decode()}) has no END line")
        if end.group(1) != label:
            raise PkiInputError(
                f"{source}: PEM block {number} begins as {label.decode()} but ends as {end.group(1).decode()}"
            )
        body = data[begin.end() : end.start()]
        blocks.append(_PemBlock(number, label, data[begin.start() : end.end()], body))
        pos = end.end()
    return blocks


def _single_block(
    blocks: list[_PemBlock],
    labels: Collection[bytes],
    what: str,
    source: str,
    *,
    plural: str | None = None,
) -> _PemBlock:
    """The one PEM block with one of ``labels``; other kinds of block are skipped."""
    found = [block for block in blocks if block.label in labels]
    if not found:
        seen = ", ".join(sorted({block.label.decode() for block in blocks}))
        raise PkiInputError(f"{source}: no {what} PEM block (found {seen})")
    if len(found) > 1:
        raise PkiInputError(f"{source}: {len(found)} {plural or what} PEM blocks, expected one")
    return found[0]


def _pem_der(block: _PemBlock, source: str) -> bytes:
    """The DER content of a block; a broken base64 body (RFC 7468 §3, strict) is an error."""
    body = _PEM_WHITESPACE.sub(b"", block.body)
    if not body:
        raise PkiInputError(f"{source}: empty PEM block {block.number}")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise PkiInputError(f"{source}: broken base64 in PEM block {block.number}") from None


def _der_problem(der: bytes) -> str | None:
    """What is wrong with the outer TLV of ``der`` (X.690 §8.1), if it is visibly wrong."""
    if len(der) < 2:
        return "truncated DER"
    if der[0] != 0x30:
        return "not DER (no outer SEQUENCE)"
    first = der[1]
    if first == 0x80:
        return None  # BER indefinite length: let the parser judge
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if count > 4:
            return "not DER (absurd length)"
        if len(der) < 2 + count:
            return "truncated DER"
        header, length = 2 + count, int.from_bytes(der[2 : 2 + count], "big")
    if len(der) < header + length:
        return f"truncated DER ({len(der)} of {header + length} bytes)"
    if len(der) > header + length:
        return f"{len(der) - header - length} bytes of trailing data after the DER"
    return None


def _is_pkcs7(der: bytes) -> bool:
    """Whether ``der`` is a ContentInfo of type signedData (what a .p7b holds)."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    first = der[1]
    header = 2 + (first & 0x7F if first > 0x80 else 0)
    return der[header : header + len(_SIGNED_DATA_OID)] == _SIGNED_DATA_OID


def _describe(der: bytes, exc: Exception) -> str:
    return _der_problem(der) or f"invalid DER ({exc})"


def _pkcs7_certificates(der: bytes, where: str) -> list[x509.Certificate]:
    # RFC 2315 §9.1 / RFC 5652 §5.1: a "degenerate" signedData carrying only certificates.
    # cryptography falls back to BER (with a UserWarning) for bundles that are not DER.
    try:
        certificates = pkcs7.load_der_pkcs7_certificates(der)
    except Exception as exc:  # ValueError, UnsupportedAlgorithm...: rewrapped below
        if "no certificate" in str(exc):
            raise PkiInputError(f"{where}: PKCS#7 bundle holds no certificate") from exc
        raise PkiInputError(f"{where}: unreadable PKCS#7 bundle: {_describe(der, exc)}") from exc
    if not certificates:
        raise PkiInputError(f"{where}: PKCS#7 bundle holds no certificate")
    return certificates


def _der_certificate(der: bytes, where: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except Exception as exc:
        raise PkiInputError(f"{where}: unreadable certificate: {_describe(der, exc)}") from exc


def load_certificates(data: bytes, source: str = "<data>") -> list[x509.Certificate]:
    """The certificates in ``data``, in the order found: PEM ``CERTIFICATE`` blocks (other
    blocks and surrounding text are skipped), PEM ``PKCS7`` bundles, or a single DER certificate
    or DER PKCS#7 bundle. Raises :class:`PkiInputError` (naming ``source``) when nothing can be
    loaded or any certificate block is damaged: a partly readable bundle is refused.
    """
    data = check_input(data, source, MAX_INPUT_BYTES)
    blocks = _pem_blocks(data, source)
    if blocks:
        certificates: list[x509.Certificate] = []
        used = 0
        for block in blocks:
            where = f"{source}: PEM block {block.number}"
            if block.label in _CERTIFICATE_LABELS:
                der = _pem_der(block, source)
                certificates.append(_der_certificate(der, where))
            elif block.label in _PKCS7_LABELS:
                certificates.extend(_pkcs7_certificates(_pem_der(block, source), where))
            else:
                continue  # a key or CRL next to the certificates
            used += 1
        if not used:
            labels = ", ".join(sorted({block.label.decode() for block in blocks}))
            raise PkiInputError(f"{source}: no CERTIFICATE or PKCS7 PEM block (found {labels})")
        return certificates
    if _is_pkcs7(data):
        return _pkcs7_certificates(data, source)
    if data[0] != 0x30:
        raise PkiInputError(f"{source}: neither PEM nor DER (no PEM block, no DER SEQUENCE)")
    return [_der_certificate(data, source)]


def load_certificate_file(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """:func:`load_certificates` on the content of ``path``, named as given in errors."""
    source = os.fspath(path)
    return load_certificates(_read(path, source, MAX_INPUT_BYTES), source)


def _read(path: str | os.PathLike[str], source: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)  # enough to know it is too large, no more
    except OSError as exc:
        raise PkiInputError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    return data


def load_crl(data: bytes, source: str = "<data>") -> x509.CertificateRevocationList:
    """The CRL in ``data``: one PEM ``X509 CRL`` block (text around it is skipped) or DER
    (RFC 5280 §5). Raises :class:`PkiInputError` naming ``source``."""
    data = check_input(data, source, MAX_CRL_BYTES)
    blocks = _pem_blocks(data, source)
    where = source
    if blocks:
        crl_block = _single_block(blocks, _CRL_LABELS, "X509 CRL", source)
        der = _pem_der(crl_block, source)
        where = f"{source}: PEM block {crl_block.number}"
    elif data[0] != 0x30:
        raise PkiInputError(f"{source}: neither PEM nor DER (no PEM block, no DER SEQUENCE)")
    else:
        der = data
    try:
        return x509.load_der_x509_crl(der)
    except Exception as exc:
        raise PkiInputError(f"{where}: unreadable CRL: {_describe(der, exc)}") from exc


def load_private_key(data: bytes, source: str, password: bytes | None = None) -> PrivateKeyTypes:
    """The private key in ``data``: PEM (PKCS#8 ``PRIVATE KEY``/``ENCRYPTED PRIVATE KEY`` or
    traditional ``RSA``/``EC`` ``PRIVATE KEY``, text and other blocks around it skipped) or DER
    (PKCS#8 or traditional). Raises :class:`PkiInputError` naming ``source``; the message never
    contains the password.
    """
    data = check_input(data, source, MAX_INPUT_BYTES)
    blocks = _pem_blocks(data, source)
    if blocks:
        block = _single_block(blocks, _KEY_LABELS, "PRIVATE KEY", source, plural="private key")
        where = f"{source}: PEM block {block.number}"
        # Check the base64 ourselves for a precise message; legacy encrypted PEM has RFC 1421
        # headers before it, which cryptography reads from the block text.
        body = _PEM_HEADER.sub(b"", block.body)
        der = _pem_der(_PemBlock(block.number, block.label, block.text, body), source)
        if body != block.body:
            der = b""  # encrypted with RFC 1421 headers: the DER is not inspectable
        try:
            return serialization.load_pem_private_key(block.text, password)
        except Exception as exc:
            raise PkiInputError(f"{where}: {_key_problem(exc, password, der)}") from None
    if data[0] != 0x30:
        raise PkiInputError(f"{source}: neither PEM nor DER (no PEM block, no DER SEQUENCE)")
    try:
        return serialization.load_der_private_key(data, password)
    except Exception as exc:
        raise PkiInputError(f"{source}: {_key_problem(exc, password, data)}") from None


def _key_problem(exc: Exception, password: bytes | None, der: bytes) -> str:
    """A message for a key that did not load. Built from fixed phrases only: neither the
    password nor text derived from it can leak into logs. (The original exception is not
    chained for the same reason.)"""
    text = str(exc).lower()
    if isinstance(exc, TypeError) and "not encrypted" in text:
        return "a password was given but the private key is not encrypted"
    if isinstance(exc, TypeError) and "password" in text:
        return "private key is encrypted and no password was given"
    if password is not None and ("incorrect password" in text or "decrypt" in text):
        return "cannot decrypt the private key (wrong password?)"
    if isinstance(exc, UnsupportedAlgorithm):
        return "unsupported private key type or encryption"
    problem = _der_problem(der) if der[:1] == b"\x30" else None
    detail = problem or "not a supported key format or type"
    return f"unreadable private key ({detail})"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as ``openssl x509 -fingerprint -sha256`` prints it:
    upper-case hex pairs separated by colons."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()
