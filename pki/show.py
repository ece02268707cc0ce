"""Human description of certificates, for ``colombe pki show``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from pki.loading import fingerprint, load_certificate_file


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    key = cert.public_key()
    key_text = (
        f"RSA {key.key_size} bits" if isinstance(key, rsa.RSAPublicKey) else type(key).__name__
    )
    out: dict[str, Any] = {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "not before": f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
        "not after": f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        "key": key_text,
        "sha256": fingerprint(cert),
    }
    constraints = _ext(cert, x509.BasicConstraints)
    out["ca"] = "yes" if constraints is not None and constraints.ca else "no"
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if eku is not None:
        out["extended usage"] = [oid._name for oid in eku]
    sans = _ext(cert, x509.SubjectAlternativeName)
    if sans is not None:
        out["alt names"] = [str(name.value) for name in sans]
    policies = _ext(cert, x509.CertificatePolicies)
    if policies is not None:
        out["policies"] = [p.policy_identifier.dotted_string for p in policies]
    points = _ext(cert, x509.CRLDistributionPoints)
    if points is not None:
        out["crl"] = [n.value for p in points for n in (p.full_name or [])]
    return out


def describe(path: Path) -> list[dict[str, Any]]:
    return [describe_certificate(c) for c in load_certificate_file(path)]
