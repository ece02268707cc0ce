"""S/MIME (RFC 8551) for MSSanté: signing, signature verification, encryption, decryption.

* :func:`sign` wraps a MIME entity in ``multipart/signed`` (RFC 1847 §2.1, RFC 8551 §3.5.3) with a
  detached CMS SignedData (RFC 5652 §5): SHA-256, RSA PKCS#1 v1.5, the signer certificate and its
  chain, signed attributes (contentType, signingTime, messageDigest, sMIMECapabilities).
* :func:`verify` checks such a message (or an opaque ``application/pkcs7-mime; smime-type=
  signed-data`` one): the messageDigest attribute against the content, the signature over the
  signed attributes, then the signer certificate with :class:`~pki.verify.Verifier` for
  :attr:`~pki.verify.Role.SMIME`. It never raises on bad input: the answer is a
  :class:`SignatureCheck` with a machine-readable ``reason``.
* :func:`encrypt` / :func:`decrypt`: ``application/pkcs7-mime; smime-type=enveloped-data``
  (RFC 8551 §3.3) with AES-256-CBC and RSA key transport (RFC 5652 §6).

cryptography builds the CMS structures and decrypts; it has no signature verification, so
:func:`verify` parses the SignedData with asn1crypto and checks the signature itself.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import email.utils
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from pki.errors import PkiError
from pki.loading import check_input
from pki.verify import Role, Verifier

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""Largest message signed, verified, encrypted or decrypted (the MTA's own limit is lower)."""

# Reasons of a SignatureCheck besides the certificate verdict's (pki.verify.Reason values).
OK: Final = "ok"
BAD_SIGNATURE: Final = "bad-signature"
CONTENT_ALTERED: Final = "content-altered"
NO_SIGNATURE: Final = "no-signature"
MALFORMED: Final = "malformed"
UNSUPPORTED_ALGORITHM: Final = "unsupported-algorithm"

_SIGNATURE_TYPES: Final = frozenset(
    {"application/pkcs7-signature", "application/x-pkcs7-signature"}
)
_MIME_TYPES: Final = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})

# RFC 8551 §2.1: SHA-256 MUST, SHA-384/512 SHOULD be supported; SHA-1 and MD5 are refused.
_DIGESTS: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

_HEADER_END: Final = re.compile(rb"\r?\n\r?\n")
_BARE_LF: Final = re.compile(rb"(?<!\r)\n")


class SmimeError(PkiError):
    """An S/MIME message that cannot be built or opened; the message says why."""


@dataclass(frozen=True)
class SignatureCheck:
    valid: bool
    reason: str
    detail: str
    signer: x509.Certificate | None = field(default=None, repr=False)
    content: bytes = field(default=b"", repr=False)


class _Refused(Exception):
    """Internal: verification stops with (reason, detail)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --- MIME helpers -----------------------------------------------------------------------------


def _canonical(entity: bytes) -> bytes:
    """RFC 8551 §3.1.1: the canonical form has CRLF line ends (bare LFs are converted)."""
    if entity.count(b"\n") == entity.count(b"\r\n"):
        return entity  # already canonical: skip a regex pass over a large body
    return _BARE_LF.sub(b"\r\n", entity)


def _split_entity(entity: bytes) -> tuple[bytes, bytes]:
    """(header block, body) of a MIME entity; the blank line belongs to neither."""
    if entity.startswith((b"\r\n", b"\n")):
        return b"", entity[2:] if entity.startswith(b"\r\n") else entity[1:]
    match = _HEADER_END.search(entity)
    if match is None:
        raise _Refused(MALFORMED, "no blank line between the headers and the body")
    return entity[: match.start()], entity[match.end() :]


@dataclass(frozen=True)
class _Headers:
    content_type: str  # lower case, "text/plain" when absent (RFC 2045 §5.2)
    params: dict[str, str]  # parameter names in lower case
    transfer_encoding: str  # lower case, "7bit" when absent


def _headers(block: bytes) -> _Headers:
    message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        block + b"\r\n\r\n"
    )
    params: dict[str, str] = {}
    for name, value in message.get_params(header="content-type", failobj=[])[1:]:
        params[name.lower()] = str(email.utils.collapse_rfc2231_value(value))
    encoding = str(message.get("content-transfer-encoding", "7bit")).strip().lower()
    return _Headers(message.get_content_type(), params, encoding)


def _decode_body(body: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        text = body.translate(None, b" \t\r\n")  # far faster than a regex on large bodies
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _Refused(MALFORMED, "broken base64 in the CMS part") from None
    if encoding in {"binary", "8bit", "7bit"}:
        return body
    raise _Refused(MALFORMED, f"unsupported Content-Transfer-Encoding {encoding!r}")


def _multipart_parts(body: bytes, boundary: str) -> list[bytes]:
    """The body parts of a multipart body, each exactly as transmitted (RFC 2046 §5.1.1).

    The line break before a delimiter belongs to the delimiter, not to the preceding part
    (RFC 1847 §2.1, RFC 8551 §3.5.3): the signed content is the first part's octets up to, and
    not including, that CRLF. Transport padding after the boundary is allowed.
    """
    # A literal search (bytes.find), then the checks a delimiter line needs: a regex starting
    # with an alternation would be tried at every octet of a large body.
    dash_boundary = b"--" + boundary.encode()
    parts: list[bytes] = []
    start: int | None = None
    pos = 0
    while (found := body.find(dash_boundary, pos)) != -1:
        pos = found + len(dash_boundary)
        if found == 0:
            line_start = 0
        elif body[found - 1 : found] == b"\n":
            line_start = found - (2 if body[found - 2 : found] == b"\r\n" else 1)
        else:
            continue  # not at the start of a line
        closing = body.startswith(b"--", pos)
        after = pos + (2 if closing else 0)
        while body[after : after + 1] in (b" ", b"\t"):
            after += 1
        if after < len(body) and not body.startswith((b"\r\n", b"\n"), after):
            continue  # "--boundary" followed by other text: not a delimiter line
        if start is not None:
            parts.append(body[start : max(start, line_start)])
        if closing:  # close delimiter: the epilogue follows
            return parts
        start = after + (2 if body.startswith(b"\r\n", after) else 1)
        pos = start
    raise _Refused(MALFORMED, "multipart body without a close delimiter")


def _base64_lines(der: bytes) -> bytes:
    text = base64.b64encode(der)
    return b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + b"\r\n"


def _new_boundary(content: bytes) -> str:
    while True:
        boundary = f"----=_colombe_{secrets.token_hex(16)}"
        if boundary.encode() not in content:
            return boundary


def _check_size(data: bytes, what: str) -> bytes:
    return check_input(data, what, MAX_MESSAGE_BYTES, error=SmimeError)


def _check_entity(message: bytes) -> bytes:
    entity = _canonical(_check_size(message, "message"))
    if not entity.startswith(b"\r\n") and b"\r\n\r\n" not in entity:
        raise SmimeError("message: not a MIME entity (no blank line after the headers)")
    return entity


# --- signing ----------------------------------------------------------------------------------


def sign(
    message: bytes,
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    chain: Sequence[x509.Certificate] = (),
) -> bytes:
    """``message`` (a MIME entity, headers and body) signed as ``multipart/signed``.

    Line ends are made canonical (CRLF) first: what is signed is what is sent (RFC 8551
    §3.1.1). 8-bit bodies are signed as given; the caller should use a 7-bit transfer encoding
    (RFC 8551 §3.1.2) if the message may cross a gateway that re-encodes it.
    """
    entity = _check_entity(message)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(entity).add_signer(cert, key, hashes.SHA256())
    for extra in chain:
        if extra != cert:
            builder = builder.add_certificate(extra)
    try:
        # Binary: the entity is already canonical, cryptography must not touch it. Detached:
        # RFC 8551 §3.5.3, the content travels in the first body part.
        der = builder.sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SmimeError(f"cannot sign: {exc}") from exc
    boundary = _new_boundary(entity)
    return b"".join(
        [
            b"MIME-Version: 1.0\r\n",
            b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n',
            f' micalg=sha-256; boundary="{boundary}"\r\n'.encode(),
            b"\r\n",
            b"This is an S/MIME signed message.\r\n",
            f"\r\n--{boundary}\r\n".encode(),
            entity,
            f"\r\n--{boundary}\r\n".encode(),
            b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n',
            b"Content-Transfer-Encoding: base64\r\n",
            b'Content-Disposition: attachment; filename="smime.p7s"\r\n',
            b"\r\n",
            _base64_lines(der),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )


# --- verification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Signed:
    content: bytes  # the signed octets (for multipart/signed: the first part as received)
    signer: x509.Certificate
    others: tuple[x509.Certificate, ...]


async def verify(
    signed: bytes, verifier: Verifier, *, at: datetime | None = None
) -> SignatureCheck:
    """Check an S/MIME signed message; never raises on bad input."""
    try:
        checked = _check_signature(signed)
    except _Refused as refused:
        return SignatureCheck(False, refused.reason, refused.detail)
    except Exception as exc:  # asn1crypto parses lazily: any failure deep in the DER lands here
        return SignatureCheck(False, MALFORMED, f"unreadable CMS structure ({type(exc).__name__})")
    try:
        verdict = await verifier.verify(checked.signer, checked.others, role=Role.SMIME, at=at)
    except Exception as exc:  # fail closed, whatever went wrong while validating the signer
        return SignatureCheck(
            False,
            "verification-error",
            f"signer not validated ({type(exc).__name__})",
            checked.signer,
        )
    return SignatureCheck(
        verdict.ok,
        verdict.reason.value,
        "signature valid" if verdict.ok else f"signer certificate: {verdict.detail}",
        checked.signer,
        checked.content,
    )


def _check_signature(signed: bytes) -> _Signed:
    if not isinstance(signed, bytes | bytearray | memoryview):
        raise _Refused(MALFORMED, f"expected bytes, got {type(signed).__name__}")
    signed = bytes(signed)
    if len(signed) > MAX_MESSAGE_BYTES:
        raise _Refused(MALFORMED, f"{len(signed)} bytes, more than the 64 MiB accepted")
    if not signed.strip():
        raise _Refused(MALFORMED, "empty message")
    header_block, body = _split_entity(signed)
    headers = _headers(header_block)
    if headers.content_type == "multipart/signed":
        protocol = headers.params.get("protocol", "").lower()
        if protocol not in _SIGNATURE_TYPES:
            raise _Refused(NO_SIGNATURE, f"multipart/signed with protocol {protocol!r}")
        boundary = headers.params.get("boundary")
        if not boundary:
            raise _Refused(MALFORMED, "multipart/signed without a boundary")
        parts = _multipart_parts(body, boundary)
        if len(parts) < 2:
            raise _Refused(NO_SIGNATURE, "multipart/signed without a signature part")
        if len(parts) > 2:
            raise _Refused(MALFORMED, f"multipart/signed with {len(parts)} parts, expected 2")
        content, signature_part = parts
        sig_block, sig_body = _split_entity(signature_part)
        sig_headers = _headers(sig_block)
        if sig_headers.content_type not in _SIGNATURE_TYPES:
            raise _Refused(NO_SIGNATURE, f"second part is {sig_headers.content_type}")
        der = _decode_body(sig_body, sig_headers.transfer_encoding)
        return _check_cms(der, content)
    if headers.content_type in _MIME_TYPES:
        smime_type = headers.params.get("smime-type", "signed-data").lower()
        if smime_type != "signed-data":
            raise _Refused(NO_SIGNATURE, f"application/pkcs7-mime of smime-type {smime_type}")
        return _check_cms(_decode_body(body, headers.transfer_encoding), None)
    raise _Refused(NO_SIGNATURE, f"{headers.content_type} is not an S/MIME signed message")


def _check_cms(der: bytes, detached: bytes | None) -> _Signed:
    if not der:
        raise _Refused(MALFORMED, "empty CMS structure")
    info = asn1_cms.ContentInfo.load(der, strict=True)
    if info["content_type"].native != "signed_data":
        raise _Refused(MALFORMED, f"CMS content is {info['content_type'].native}, not signed data")
    signed_data = info["content"]
    encap = signed_data["encap_content_info"]
    if encap["content_type"].native != "data":
        raise _Refused(MALFORMED, f"signed content type is {encap['content_type'].native}")
    embedded = encap["content"]
    if detached is not None:
        if embedded.native is not None:
            raise _Refused(MALFORMED, "multipart/signed whose CMS also embeds content")
        content = detached
    else:
        if embedded.native is None:
            raise _Refused(MALFORMED, "opaque signed-data without content")
        content = bytes(embedded.native)  # BER constructed OCTET STRINGs are concatenated
    signer_infos = signed_data["signer_infos"]
    if len(signer_infos) == 0:
        raise _Refused(NO_SIGNATURE, "SignedData without a SignerInfo")
    if len(signer_infos) > 1:
        raise _Refused(MALFORMED, f"{len(signer_infos)} signers: only one is supported")
    signer_info = signer_infos[0]
    certs = [
        choice.chosen
        for choice in (signed_data["certificates"] or [])
        if choice.name == "certificate"
    ]
    signer_asn1 = _find_signer(signer_info["sid"], certs)
    signer = x509.load_der_x509_certificate(signer_asn1.dump())
    others = tuple(x509.load_der_x509_certificate(c.dump()) for c in certs if c is not signer_asn1)

    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    digest_type = _DIGESTS.get(digest_name)
    if digest_type is None:
        raise _Refused(UNSUPPORTED_ALGORITHM, f"digest algorithm {digest_name} is not accepted")

    signed_attrs = signer_info["signed_attrs"]
    if signed_attrs.native is None:
        # RFC 5652 §5.4: without signed attributes, the signature is over the content itself.
        to_verify = content
        matched = content
    else:
        attrs = {attr["type"].native: attr["values"] for attr in signed_attrs}
        content_types = attrs.get("content_type")
        # RFC 5652 §11.1: the contentType attribute MUST be present and match eContentType.
        if content_types is None or [v.native for v in content_types] != ["data"]:
            raise _Refused(MALFORMED, "contentType signed attribute missing or not id-data")
        digests = attrs.get("message_digest")
        if digests is None or len(digests) != 1:
            raise _Refused(MALFORMED, "no messageDigest signed attribute")
        expected = bytes(digests[0].native)
        matched = _match_digest(content, expected, digest_type)
        # RFC 5652 §5.4: the signature covers the DER of the attributes as a SET OF (tag 0x31),
        # not the [0] IMPLICIT tag they carry inside the SignerInfo. The received octets are
        # used (re-sorting them would hide a non-DER encoding from the signature check).
        encoded = signed_attrs.dump()
        to_verify = b"\x31" + encoded[1:]
    _verify_signature(signer, signer_info, to_verify, digest_type)
    return _Signed(matched, signer, others)


def _match_digest(
    content: bytes, expected: bytes, digest_type: type[hashes.HashAlgorithm]
) -> bytes:
    """The content octets whose digest is ``expected``: as received, else in canonical form
    (a mail store may have turned CRLF into LF; RFC 8551 §3.1.1 signs the canonical form)."""
    candidates = [content]
    canonical = _canonical(content)
    if canonical != content:
        candidates.append(canonical)
    for candidate in candidates:
        digest = hashes.Hash(digest_type())
        digest.update(candidate)
        if secrets.compare_digest(digest.finalize(), expected):
            return content
    raise _Refused(CONTENT_ALTERED, "the content does not match the signed messageDigest")


def _find_signer(
    sid: asn1_cms.SignerIdentifier, certs: list[asn1_x509.Certificate]
) -> asn1_x509.Certificate:
    # RFC 5652 §5.3: the signer is named by issuer and serial number, or by subject key id.
    for cert in certs:
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            if (
                cert.serial_number == wanted["serial_number"].native
                and cert.issuer == wanted["issuer"]
            ):
                return cert
        elif cert.key_identifier is not None and cert.key_identifier == sid.chosen.native:
            return cert
    raise _Refused(MALFORMED, "the signer certificate is not included in the message")


def _verify_signature(
    signer: x509.Certificate,
    signer_info: asn1_cms.SignerInfo,
    data: bytes,
    digest_type: type[hashes.HashAlgorithm],
) -> None:
    algorithm = signer_info["signature_algorithm"]
    signature = bytes(signer_info["signature"].native)
    try:
        kind = algorithm.signature_algo
    except ValueError:
        kind = algorithm["algorithm"].native
    public_key = signer.public_key()
    try:
        if kind == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), digest_type())
        elif kind == "rsassa_pss" and isinstance(public_key, rsa.RSAPublicKey):
            params = algorithm["parameters"]
            pss_hash = _DIGESTS.get(params["hash_algorithm"]["algorithm"].native)
            mgf_hash = _DIGESTS.get(params["mask_gen_algorithm"]["parameters"]["algorithm"].native)
            if pss_hash is None or mgf_hash is None:
                raise _Refused(UNSUPPORTED_ALGORITHM, "RSA-PSS with an unaccepted hash")
            public_key.verify(
                signature,
                data,
                padding.PSS(padding.MGF1(mgf_hash()), params["salt_length"].native),
                pss_hash(),
            )
        elif kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(digest_type()))
        else:
            raise _Refused(
                UNSUPPORTED_ALGORITHM,
                f"signature algorithm {kind} with a {type(public_key).__name__} is not supported",
            )
    except InvalidSignature:
        raise _Refused(BAD_SIGNATURE, "the signature does not verify") from None


# --- encryption -------------------------------------------------------------------------------


def encrypt(message: bytes, recipients: Sequence[x509.Certificate]) -> bytes:
    """``message`` (a MIME entity) as ``application/pkcs7-mime; smime-type=enveloped-data``:
    AES-256-CBC, the content-encryption key wrapped for each RSA recipient (RFC 8551 §3.3)."""
    entity = _check_entity(message)
    if not recipients:
        raise SmimeError("cannot encrypt: no recipient")
    builder = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(entity)
        .set_content_encryption_algorithm(algorithms.AES256)
    )
    try:
        for recipient in recipients:
            builder = builder.add_recipient(recipient)
        der = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SmimeError(f"cannot encrypt: {exc}") from exc
    return b"".join(
        [
            b"MIME-Version: 1.0\r\n",
            b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n",
            b' name="smime.p7m"\r\n',
            b"Content-Transfer-Encoding: base64\r\n",
            b'Content-Disposition: attachment; filename="smime.p7m"\r\n',
            b"\r\n",
            _base64_lines(der),
        ]
    )


def decrypt(enveloped: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bytes:
    """The MIME entity inside an enveloped-data message addressed to ``cert``."""
    data = _check_size(enveloped, "enveloped message")
    try:
        header_block, body = _split_entity(data)
        headers = _headers(header_block)
        if headers.content_type not in _MIME_TYPES:
            raise SmimeError(f"not an S/MIME encrypted message ({headers.content_type})")
        smime_type = headers.params.get("smime-type", "enveloped-data").lower()
        if smime_type != "enveloped-data":
            raise SmimeError(f"not an S/MIME encrypted message (smime-type={smime_type})")
        der = _decode_body(body, headers.transfer_encoding)
    except _Refused as refused:
        raise SmimeError(f"malformed encrypted message: {refused.detail}") from None
    _check_enveloped(der, cert)
    try:
        return pkcs7.pkcs7_decrypt_der(der, cert, key, [])
    except UnsupportedAlgorithm as exc:
        raise SmimeError(f"unsupported encryption algorithm: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise SmimeError(f"cannot decrypt: {exc}") from exc


def _check_enveloped(der: bytes, cert: x509.Certificate) -> None:
    """Refuse, with a clear message, what cryptography would refuse with a vague one."""
    if not der:
        raise SmimeError("malformed encrypted message: empty CMS structure")
    try:
        info = asn1_cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "enveloped_data":
            raise SmimeError(f"not enveloped data (CMS content is {info['content_type'].native})")
        enveloped = info["content"]
        cipher = enveloped["encrypted_content_info"]["content_encryption_algorithm"]
        cipher_name = cipher["algorithm"].native
        recipients: list[tuple[str, object]] = []
        for recipient in enveloped["recipient_infos"]:
            if recipient.name != "ktri":
                recipients.append(("other", recipient.name))
                continue
            rid = recipient.chosen["rid"]
            recipients.append((rid.name, rid.chosen))
        # Matching parses the recipient identifiers (lazily, like everything in asn1crypto).
        for_us = any(_is_recipient(kind, rid, cert) for kind, rid in recipients)
    except SmimeError:
        raise
    except Exception as exc:
        raise SmimeError(f"malformed encrypted message ({type(exc).__name__})") from None
    if not for_us:
        raise SmimeError(
            f"the message is not encrypted for {cert.subject.rfc4514_string()} "
            f"(serial {cert.serial_number:x}): it is for {len(recipients)} other recipient(s)"
        )
    if cipher_name not in {"aes128_cbc", "aes256_cbc"}:
        raise SmimeError(f"unsupported content encryption algorithm {cipher_name}")


def _is_recipient(kind: str, rid: object, cert: x509.Certificate) -> bool:
    # RFC 5652 §6.2.1: a KeyTransRecipientInfo names the recipient certificate by issuer and
    # serial number, or by subject key identifier.
    if kind == "issuer_and_serial_number" and isinstance(rid, asn1_cms.IssuerAndSerialNumber):
        issuer = asn1_x509.Name.load(cert.issuer.public_bytes())
        return bool(rid["serial_number"].native == cert.serial_number and rid["issuer"] == issuer)
    if kind == "subject_key_identifier" and isinstance(rid, asn1_core.OctetString):
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return False
        return bool(rid.native == ski.digest)
    return False
