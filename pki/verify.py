"""Certificate validation the IGC-Santé way: a chain to the configured roots only, validity
dates, key usage and extended key usage for the role, certificate policies, revocation from CRLs.

The answer is a :class:`Verdict` with a machine-readable :class:`Reason`, so that the MTA, IMAP
and the API LPS can refuse with a precise reply and the audit trail says why.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.crl import CrlCache, RevocationStatus

MAX_CHAIN_LENGTH = 8
MIN_RSA_BITS = 2048
# Extensions whose meaning validation applies (or that carry no constraint on it).
_HANDLED_EXTENSIONS = {
    x509.BasicConstraints.oid,
    x509.KeyUsage.oid,
    x509.ExtendedKeyUsage.oid,
    x509.CertificatePolicies.oid,
    x509.SubjectAlternativeName.oid,
    x509.SubjectKeyIdentifier.oid,
    x509.AuthorityKeyIdentifier.oid,
    x509.CRLDistributionPoints.oid,
    x509.AuthorityInformationAccess.oid,
}


class Role(enum.StrEnum):
    SERVER = "server"  # a TLS server (a peer MX we deliver to)
    CLIENT = "client"  # a TLS client (a peer MTA connecting to our MX, a CPS card)
    SMIME = "smime"  # an S/MIME signer


class Reason(enum.StrEnum):
    OK = "ok"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    UNTRUSTED = "untrusted"  # no chain to a configured root (e.g. not IGC-Santé)
    BAD_SIGNATURE = "bad-signature"
    NOT_A_CA = "not-a-ca"
    WRONG_USAGE = "wrong-usage"
    POLICY_MISSING = "policy-missing"
    REVOKED = "revoked"
    REVOCATION_UNKNOWN = "revocation-unknown"  # no valid CRL: fail closed
    CHAIN_TOO_LONG = "chain-too-long"
    UNSUPPORTED_EXTENSION = "unsupported-critical-extension"
    WEAK_KEY = "weak-key"  # RSA under 2048 bits, SHA-1/MD5 signatures
    DN_NOT_LISTED = "dn-not-listed"  # valid, but not a DN the whitelist gives for the domain
    CN_DIFFERS = "cn-differs"  # listed DN but for its CN (the ANS "CN différent du DN" case)


@dataclass(frozen=True)
class Verdict:
    reason: Reason
    detail: str
    subject: str
    chain: tuple[x509.Certificate, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


_ROLE_EKU = {
    Role.SERVER: ExtendedKeyUsageOID.SERVER_AUTH,
    Role.CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH,
    Role.SMIME: ExtendedKeyUsageOID.EMAIL_PROTECTION,
}


def _fp(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


class TrustStore:
    """The configured roots (IGC-Santé, plus the TEST roots in test environments) and the
    intermediates known in advance (peers often present only their leaf)."""

    def __init__(
        self,
        roots: Iterable[x509.Certificate],
        intermediates: Iterable[x509.Certificate] = (),
    ) -> None:
        self.roots = list(roots)
        self.intermediates = list(intermediates)
        self._root_fps = {_fp(r) for r in self.roots}

    @classmethod
    def from_certificates(cls, certificates: Iterable[x509.Certificate]) -> TrustStore:
        """A trust file's certificates: the self-signed ones are roots, the others
        intermediates."""
        certificates = list(certificates)
        return cls(
            [c for c in certificates if c.issuer == c.subject],
            [c for c in certificates if c.issuer != c.subject],
        )

    def is_root(self, cert: x509.Certificate) -> bool:
        return _fp(cert) in self._root_fps

    def candidates(
        self, issuer_name: x509.Name, extra: Sequence[x509.Certificate]
    ) -> list[x509.Certificate]:
        # Ours first: a peer presenting a stale copy of a renewed intermediate must not shadow it.
        return [c for c in (*self.intermediates, *self.roots, *extra) if c.subject == issuer_name]


class Verifier:
    def __init__(
        self,
        trust: TrustStore,
        crls: CrlCache | None,
        *,
        required_policies: Iterable[str] = (),
    ) -> None:
        self.trust = trust
        self.crls = crls
        self.required_policies = frozenset(required_policies)

    async def verify(
        self,
        leaf: x509.Certificate,
        presented: Sequence[x509.Certificate] = (),
        *,
        role: Role,
        at: datetime | None = None,
    ) -> Verdict:
        """Validate ``leaf`` (with the intermediates the peer ``presented``) for ``role``."""
        now = at or datetime.now(UTC)
        subject = leaf.subject.rfc4514_string()

        def verdict(reason: Reason, detail: str, chain: Sequence[x509.Certificate] = ()) -> Verdict:
            return Verdict(reason, detail, subject, tuple(chain))

        chain, problem = self._build_chain(leaf, presented)
        if problem is not None:
            return verdict(*problem, chain=chain)
        for depth, cert in enumerate(chain):
            what = "certificate" if depth == 0 else f"CA {cert.subject.rfc4514_string()}"
            if now < cert.not_valid_before_utc:
                return verdict(
                    Reason.NOT_YET_VALID,
                    f"{what} is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                    chain,
                )
            if now > cert.not_valid_after_utc:
                return verdict(
                    Reason.EXPIRED,
                    f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                    chain,
                )
            problem = self._check_extensions_and_key(cert, what, is_root=depth == len(chain) - 1)
            if problem is not None:
                return verdict(*problem, chain=chain)
            if depth > 0:
                problem = self._check_ca(cert, depth - 1)
                if problem is not None:
                    return verdict(*problem, chain=chain)
        problem = self._check_usage(leaf, role)
        if problem is not None:
            return verdict(*problem, chain=chain)
        if self.required_policies:
            policies = _extension(leaf, x509.CertificatePolicies)
            present = (
                {p.policy_identifier.dotted_string for p in policies}
                if isinstance(policies, x509.CertificatePolicies)
                else set()
            )
            if not present & self.required_policies:
                return verdict(
                    Reason.POLICY_MISSING,
                    f"none of the required policies {sorted(self.required_policies)} "
                    f"(certificate has {sorted(present) or 'none'})",
                    chain,
                )
        if self.crls is not None:
            # RFC 5280 §6.3: every certificate below the root is checked against its issuer's CRL.
            for cert, issuer in itertools.pairwise(chain):
                status, detail = await self.crls.status(cert, issuer, at=now)
                if status is RevocationStatus.REVOKED:
                    return verdict(Reason.REVOKED, detail, chain)
                if status is RevocationStatus.UNKNOWN:
                    return verdict(Reason.REVOCATION_UNKNOWN, detail, chain)
        return verdict(Reason.OK, "valid", chain)

    def _build_chain(
        self, leaf: x509.Certificate, presented: Sequence[x509.Certificate]
    ) -> tuple[list[x509.Certificate], tuple[Reason, str] | None]:
        chain = [leaf]
        seen = {_fp(leaf)}
        current = leaf
        while not self.trust.is_root(current):
            if len(chain) > MAX_CHAIN_LENGTH:
                return chain, (Reason.CHAIN_TOO_LONG, f"more than {MAX_CHAIN_LENGTH} certificates")
            issuer = None
            bad_signature = False
            for candidate in self.trust.candidates(current.issuer, presented):
                try:
                    current.verify_directly_issued_by(candidate)
                except InvalidSignature:
                    bad_signature = True
                    continue
                except (ValueError, TypeError):
                    continue
                issuer = candidate
                break
            if issuer is None:
                if bad_signature:
                    return chain, (
                        Reason.BAD_SIGNATURE,
                        f"signature of {current.subject.rfc4514_string()} does not verify",
                    )
                return chain, (
                    Reason.UNTRUSTED,
                    f"issuer {current.issuer.rfc4514_string()} is not a configured IGC-Santé CA",
                )
            if _fp(issuer) in seen:
                if self.trust.is_root(issuer):
                    break
                return chain, (Reason.UNTRUSTED, "the chain loops without reaching a root")
            seen.add(_fp(issuer))
            chain.append(issuer)
            current = issuer
        return chain, None

    @staticmethod
    def _check_extensions_and_key(
        cert: x509.Certificate, what: str, *, is_root: bool
    ) -> tuple[Reason, str] | None:
        for ext in cert.extensions:
            if isinstance(ext.value, x509.NameConstraints):
                # IGC-Santé uses none; rather refuse than half-enforce them.
                return Reason.UNSUPPORTED_EXTENSION, f"{what} carries name constraints"
            # RFC 5280 §4.2: a critical extension we do not process makes the certificate unusable.
            if ext.critical and ext.oid not in _HANDLED_EXTENSIONS:
                return (
                    Reason.UNSUPPORTED_EXTENSION,
                    f"{what} has an unsupported critical extension {ext.oid.dotted_string}",
                )
        key = cert.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            return Reason.WEAK_KEY, f"{what} has an RSA key of {key.key_size} bits"
        if not is_root:  # a root's self-signature is not what makes it trusted
            algorithm = cert.signature_hash_algorithm
            if algorithm is None or algorithm.name in ("sha1", "md5"):
                name = algorithm.name if algorithm else "unknown"
                return Reason.WEAK_KEY, f"{what} is signed with {name}"
        return None

    @staticmethod
    def _check_ca(cert: x509.Certificate, below: int) -> tuple[Reason, str] | None:
        name = cert.subject.rfc4514_string()
        constraints = _extension(cert, x509.BasicConstraints)
        if not isinstance(constraints, x509.BasicConstraints) or not constraints.ca:
            return Reason.NOT_A_CA, f"{name} is not a CA certificate"
        if constraints.path_length is not None and below > constraints.path_length:
            return Reason.NOT_A_CA, f"{name} may not have {below} CA(s) below it"
        usage = _extension(cert, x509.KeyUsage)
        if isinstance(usage, x509.KeyUsage) and not usage.key_cert_sign:
            return Reason.NOT_A_CA, f"{name} may not sign certificates"
        return None

    @staticmethod
    def _check_usage(leaf: x509.Certificate, role: Role) -> tuple[Reason, str] | None:
        constraints = _extension(leaf, x509.BasicConstraints)
        if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
            return Reason.WRONG_USAGE, "a CA certificate cannot identify a server or a person"
        eku = _extension(leaf, x509.ExtendedKeyUsage)
        wanted = _ROLE_EKU[role]
        if isinstance(eku, x509.ExtendedKeyUsage) and wanted not in eku:
            return Reason.WRONG_USAGE, f"extended key usage does not allow {role.value} use"
        usage = _extension(leaf, x509.KeyUsage)
        if isinstance(usage, x509.KeyUsage):
            if role is Role.SMIME:
                allowed = usage.digital_signature or usage.content_commitment
            else:
                allowed = usage.digital_signature or usage.key_encipherment
            if not allowed:
                return Reason.WRONG_USAGE, f"key usage does not allow {role.value} use"
        return None


def match_listed_dn(cert: x509.Certificate, listed: Iterable[str]) -> Verdict:
    """Is the certificate's subject one of the DNs the whitelist lists for a domain?

    The ANS audit distinguishes an unlisted DN from a DN whose CN alone differs, and so do we.
    """
    from pki.dn import DistinguishedName

    subject = DistinguishedName.from_x509(cert.subject)
    shown = str(subject)
    listed_dns = [DistinguishedName.parse(text) for text in listed]
    if any(subject.matches(dn) for dn in listed_dns):
        return Verdict(Reason.OK, "DN listed", shown)

    def without_cn(dn: DistinguishedName) -> DistinguishedName:
        return DistinguishedName(tuple(r for r in dn.rdns if all(k != "CN" for k, _ in r)))

    if any(without_cn(subject).matches(without_cn(dn)) for dn in listed_dns):
        return Verdict(Reason.CN_DIFFERS, "the listed DN has another CN", shown)
    return Verdict(Reason.DN_NOT_LISTED, "DN not listed for this domain", shown)
