"""A test PKI that mirrors the IGC-Santé hierarchy, every CA name marked TEST.

``colombe pki make-test-pki DIR`` writes it; the test suites use it for real TLS handshakes and
S/MIME. It holds the certificates of the ANS audit cases (mssante-spec §2.2): valid, expired,
revoked, issued by a non-IGC CA, DN not listed, CN different from the listed DN.

Layout of DIR:
    ca/<name>.pem            CA certificates (roots and intermediates)
    certs/<name>.pem|.key    end-entity certificate and its private key (PKCS#8, unencrypted)
    certs/<name>.chain.pem   the certificate followed by its intermediate (what a server presents)
    crl/<ca>.crl             DER CRLs, to be served over HTTP at ``crl_base_url``
    roots.pem                the IGC-Santé TEST roots (what a trust store holds)
    intermediates.pem        the IGC-Santé TEST intermediates
    manifest.json            names, subjects and roles of everything above
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_SIZE = 2048
# An OID under a private test arc: the IGC-Santé policy OIDs are not published in a form we could
# verify (mssante-spec §6.3); deployments configure the real ones.
TEST_POLICY_OID = "1.2.250.1.71.4.2.99.1"
DEFAULT_CRL_BASE_URL = "http://127.0.0.1:8787/crl"

ROOT_EL = "root-el"
ACI_EL_ORG = "aci-el-org"
ROOT_FO = "root-fo"
ACI_FO_PP = "aci-fo-pp"
ROOT_OTHER = "root-other"


@dataclass(frozen=True)
class Issued:
    name: str
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    issuer: str
    cert_path: Path
    key_path: Path
    chain_path: Path


@dataclass
class TestPki:
    __test__ = False  # not a pytest test class, despite its name

    directory: Path
    crl_base_url: str
    cas: dict[str, tuple[x509.Certificate, rsa.RSAPrivateKey]] = field(default_factory=dict)
    certs: dict[str, Issued] = field(default_factory=dict)
    revoked: dict[str, list[int]] = field(default_factory=dict)

    @property
    def roots_path(self) -> Path:
        return self.directory / "roots.pem"

    @property
    def intermediates_path(self) -> Path:
        return self.directory / "intermediates.pem"

    def crl_path(self, ca: str) -> Path:
        return self.directory / "crl" / f"{ca}.crl"

    def igc_roots(self) -> list[x509.Certificate]:
        return [self.cas[ROOT_EL][0], self.cas[ROOT_FO][0]]

    def igc_intermediates(self) -> list[x509.Certificate]:
        return [self.cas[ACI_EL_ORG][0], self.cas[ACI_FO_PP][0]]

    def revoke(self, name: str, *, at: datetime | None = None) -> None:
        """Revoke an issued certificate: its CA's CRL is re-issued with it listed."""
        issued = self.certs[name]
        self.revoked.setdefault(issued.issuer, []).append(issued.cert.serial_number)
        self._write_crl(issued.issuer, at or datetime.now(UTC))

    def _write_crl(
        self, ca: str, now: datetime, *, next_update: timedelta = timedelta(days=7)
    ) -> None:
        cert, key = self.cas[ca]
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(cert.subject)
            .last_update(now - timedelta(minutes=1))
            .next_update(now + next_update)
        )
        for serial in self.revoked.get(ca, []):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - timedelta(minutes=1))
                .build()
            )
        crl = builder.sign(key, hashes.SHA256())
        path = self.crl_path(ca)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.DER))
        os.replace(tmp, path)


def _name(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    # Given most specific first (as the whitelist writes DNs); ASN.1 order is the reverse.
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in reversed(attributes)])


def _ca_name(cn: str) -> x509.Name:
    return _name(
        (NameOID.COMMON_NAME, cn),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "IGC-SANTE TEST"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "0002 187512751"),
        (NameOID.ORGANIZATION_NAME, "ASIP-SANTE"),
        (NameOID.COUNTRY_NAME, "FR"),
    )


def server_name(fqdn: str, structure_id: str, organisation: str, departement: str) -> x509.Name:
    """The subject of a SERV SSL certificate: CN=<fqdn>,OU=<id>,O=<org>,ST=<dept>,C=FR."""
    return _name(
        (NameOID.COMMON_NAME, fqdn),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, structure_id),
        (NameOID.ORGANIZATION_NAME, organisation),
        (NameOID.STATE_OR_PROVINCE_NAME, departement),
        (NameOID.COUNTRY_NAME, "FR"),
    )


def _write_pem(path: Path, *certs: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))


class _Builder:
    def __init__(self, pki: TestPki, now: datetime) -> None:
        self.pki = pki
        self.now = now
        self.serial = 1000

    def key(self) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)

    def _next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def ca(self, name: str, cn: str, issuer: str | None, *, path_length: int | None) -> None:
        key = self.key()
        subject = _ca_name(cn)
        if issuer is None:
            issuer_name, issuer_key = subject, key
        else:
            issuer_cert, issuer_key = self.pki.cas[issuer]
            issuer_name = issuer_cert.subject
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(self._next_serial())
            .not_valid_before(self.now - timedelta(days=365))
            .not_valid_after(self.now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if issuer is not None:
            builder = self._issuer_extensions(builder, issuer)
        cert = builder.sign(issuer_key, hashes.SHA256())
        self.pki.cas[name] = (cert, key)
        _write_pem(self.pki.directory / "ca" / f"{name}.pem", cert)

    def _issuer_extensions(
        self, builder: x509.CertificateBuilder, issuer: str
    ) -> x509.CertificateBuilder:
        _issuer_cert, issuer_key = self.pki.cas[issuer]
        url = f"{self.pki.crl_base_url}/{issuer}.crl"
        return builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        ).add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            False,
        )

    def leaf(
        self,
        name: str,
        issuer: str,
        subject: x509.Name,
        *,
        ekus: list[x509.ObjectIdentifier],
        dns: str | None = None,
        email: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> Issued:
        key = self.key()
        issuer_cert, issuer_key = self.pki.cas[issuer]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(self._next_serial())
            .not_valid_before(not_before or self.now - timedelta(days=30))
            .not_valid_after(not_after or self.now + timedelta(days=3 * 365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
            .add_extension(
                x509.CertificatePolicies(
                    [x509.PolicyInformation(x509.ObjectIdentifier(TEST_POLICY_OID), None)]
                ),
                critical=False,
            )
        )
        builder = self._issuer_extensions(builder, issuer)
        alt_names: list[x509.GeneralName] = []
        if dns:
            alt_names.append(x509.DNSName(dns))
        if email:
            alt_names.append(x509.RFC822Name(email))
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), False)
        cert = builder.sign(issuer_key, hashes.SHA256())
        directory = self.pki.directory / "certs"
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        chain_path = directory / f"{name}.chain.pem"
        _write_pem(cert_path, cert)
        chain = (
            [cert]
            if self.pki.cas[issuer][0].issuer == self.pki.cas[issuer][0].subject
            else [
                cert,
                issuer_cert,
            ]
        )
        _write_pem(chain_path, *chain)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        os.chmod(key_path, 0o600)
        issued = Issued(name, cert, key, issuer, cert_path, key_path, chain_path)
        self.pki.certs[name] = issued
        return issued


SERVER_EKUS = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def make_test_pki(
    directory: Path | str,
    *,
    crl_base_url: str = DEFAULT_CRL_BASE_URL,
    operator_fqdn: str = "mx.colombe.test",
    now: datetime | None = None,
) -> TestPki:
    """Generate the whole test hierarchy and the audit-case certificates into ``directory``."""
    now = now or datetime.now(UTC)
    pki = TestPki(Path(directory), crl_base_url.rstrip("/"))
    pki.directory.mkdir(parents=True, exist_ok=True)
    b = _Builder(pki, now)
    b.ca(ROOT_EL, "TEST AC RACINE IGC-SANTE ELEMENTAIRE", None, path_length=1)
    b.ca(ACI_EL_ORG, "TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS", ROOT_EL, path_length=0)
    b.ca(ROOT_FO, "TEST AC RACINE IGC-SANTE FORT", None, path_length=1)
    b.ca(ACI_FO_PP, "TEST AC IGC-SANTE FORT PERSONNES PHYSIQUES", ROOT_FO, path_length=0)
    b.ca(ROOT_OTHER, "AUTRE AC RACINE (HORS IGC-SANTE)", None, path_length=1)

    def serv(
        name: str,
        fqdn: str,
        issuer: str = ACI_EL_ORG,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> Issued:
        subject = server_name(fqdn, "0002 123456789", "GIP COLOMBE TEST", "Rhône (69)")
        return b.leaf(
            name,
            issuer,
            subject,
            ekus=SERVER_EKUS,
            dns=fqdn,
            not_before=not_before,
            not_after=not_after,
        )

    # Our own operator certificate (presented by our MX and as client certificate outbound).
    serv("operator", operator_fqdn)
    # A server on this machine (the whitelist's HTTPS server, the LDAP directory in the tests).
    serv("localhost", "localhost")
    # Peers, one per audit case of the ANS tool (mssante-spec §2.2).
    serv("peer-valid", "cert-valide-audit.peer.test")
    serv(
        "peer-expired",
        "cert-expire-audit.peer.test",
        not_before=now - timedelta(days=800),
        not_after=now - timedelta(days=1),
    )
    serv("peer-revoked", "cert-revoque-audit.peer.test")
    serv("peer-non-igc", "cert-non-igc-audit.peer.test", issuer=ROOT_OTHER)
    serv("peer-not-listed", "cert-no-match-audit.peer.test")
    # Valid in every respect, but its CN differs from the DN the whitelist lists for its domain.
    serv("peer-cn-diff", "autre-nom.peer.test")
    # ORG certificate of a structure (client auth, signature, encryption; S/MIME).
    b.leaf(
        "org",
        ACI_EL_ORG,
        _name(
            (NameOID.COMMON_NAME, "secretariat@clinique-test.mssante.fr"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "0002 123456789"),
            (NameOID.ORGANIZATION_NAME, "CLINIQUE TEST"),
            (NameOID.STATE_OR_PROVINCE_NAME, "Rhône (69)"),
            (NameOID.COUNTRY_NAME, "FR"),
        ),
        ekus=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION],
        email="secretariat@clinique-test.mssante.fr",
    )
    # A CPS-like personal certificate from the "Fort" branch.
    b.leaf(
        "person",
        ACI_FO_PP,
        _name(
            (NameOID.COMMON_NAME, "899700000001/Claire MARTIN"),
            (NameOID.GIVEN_NAME, "Claire"),
            (NameOID.SURNAME, "MARTIN"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "Médecin"),
            (NameOID.COUNTRY_NAME, "FR"),
        ),
        ekus=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION],
        email="claire.martin@cabinet-test.mssante.fr",
    )
    pki.revoked[ACI_EL_ORG] = [pki.certs["peer-revoked"].cert.serial_number]
    for ca in pki.cas:
        pki._write_crl(ca, now)
    _write_pem(pki.roots_path, *pki.igc_roots())
    _write_pem(pki.intermediates_path, *pki.igc_intermediates())
    manifest = {
        "crl_base_url": pki.crl_base_url,
        "policy_oid": TEST_POLICY_OID,
        "cas": {name: cert.subject.rfc4514_string() for name, (cert, _) in pki.cas.items()},
        "certs": {
            name: {
                "subject": i.cert.subject.rfc4514_string(),
                "issuer": i.issuer,
                "not_after": i.cert.not_valid_after_utc.isoformat(),
            }
            for name, i in pki.certs.items()
        },
    }
    (pki.directory / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return pki
