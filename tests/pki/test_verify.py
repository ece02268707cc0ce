"""Validation rules beyond the audit cases: usage per role, policies, dates, signatures, loops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from pki.crl import CrlCache
from pki.testpki import ACI_EL_ORG, TEST_POLICY_OID, TestPki
from pki.verify import Reason, Role, TrustStore, Verifier


def verifier(pki: TestPki, **kw: object) -> Verifier:
    return Verifier(TrustStore(pki.igc_roots(), pki.igc_intermediates()), CrlCache(), **kw)  # type: ignore[arg-type]


async def test_server_certificate_is_valid_for_server_and_client_roles(test_pki: TestPki) -> None:
    leaf = test_pki.certs["peer-valid"].cert
    v = verifier(test_pki)
    assert (await v.verify(leaf, role=Role.SERVER)).ok
    assert (await v.verify(leaf, role=Role.CLIENT)).ok


async def test_server_certificate_cannot_sign_mail(test_pki: TestPki) -> None:
    verdict = await verifier(test_pki).verify(test_pki.certs["peer-valid"].cert, role=Role.SMIME)
    assert verdict.reason is Reason.WRONG_USAGE


async def test_org_certificate_cannot_serve_tls(test_pki: TestPki) -> None:
    verdict = await verifier(test_pki).verify(test_pki.certs["org"].cert, role=Role.SERVER)
    assert verdict.reason is Reason.WRONG_USAGE


async def test_personal_certificate_chains_to_the_fort_root(test_pki: TestPki) -> None:
    verdict = await verifier(test_pki).verify(test_pki.certs["person"].cert, role=Role.CLIENT)
    assert verdict.ok
    assert "FORT" in verdict.chain[-1].subject.rfc4514_string()


async def test_required_policy_must_be_present(test_pki: TestPki) -> None:
    leaf = test_pki.certs["peer-valid"].cert
    assert (
        await verifier(test_pki, required_policies=[TEST_POLICY_OID]).verify(leaf, role=Role.CLIENT)
    ).ok
    verdict = await verifier(test_pki, required_policies=["1.2.250.1.71.9.9.9"]).verify(
        leaf, role=Role.CLIENT
    )
    assert verdict.reason is Reason.POLICY_MISSING


async def test_certificate_is_not_valid_before_its_start_date(test_pki: TestPki) -> None:
    leaf = test_pki.certs["peer-valid"].cert
    verdict = await verifier(test_pki).verify(
        leaf, role=Role.CLIENT, at=leaf.not_valid_before_utc - timedelta(days=1)
    )
    assert verdict.reason is Reason.NOT_YET_VALID


async def test_expiry_detail_says_which_certificate_and_when(test_pki: TestPki) -> None:
    leaf = test_pki.certs["peer-valid"].cert
    verdict = await verifier(test_pki).verify(
        leaf, role=Role.CLIENT, at=leaf.not_valid_after_utc + timedelta(days=1)
    )
    assert verdict.reason is Reason.EXPIRED
    assert verdict.detail.startswith("certificate expired on")
    assert f"{leaf.not_valid_after_utc:%Y-%m-%d}" in verdict.detail


def _forge(pki: TestPki, issuer_name: x509.Name, *, ca: bool = False) -> x509.Certificate:
    """A certificate naming an IGC-Santé CA as issuer but signed by another key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "forged.test")]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


async def test_forged_issuer_name_is_a_bad_signature(test_pki: TestPki) -> None:
    forged = _forge(test_pki, test_pki.cas[ACI_EL_ORG][0].subject)
    verdict = await verifier(test_pki).verify(forged, role=Role.CLIENT)
    assert verdict.reason is Reason.BAD_SIGNATURE


async def test_presented_intermediates_cannot_make_an_untrusted_root_trusted(
    test_pki: TestPki,
) -> None:
    non_igc = test_pki.certs["peer-non-igc"].cert
    from pki.testpki import ROOT_OTHER

    verdict = await verifier(test_pki).verify(
        non_igc, [test_pki.cas[ROOT_OTHER][0]], role=Role.CLIENT
    )
    assert verdict.reason is Reason.UNTRUSTED


async def test_ca_certificate_cannot_be_used_as_a_leaf(test_pki: TestPki) -> None:
    verdict = await verifier(test_pki).verify(test_pki.cas[ACI_EL_ORG][0], role=Role.SERVER)
    assert verdict.reason is Reason.WRONG_USAGE
