"""Revocation from CRLs fetched over HTTP: refresh, last good CRL, fail closed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pki.crl import CrlCache, CrlError, RevocationStatus
from pki.loading import load_crl
from pki.testpki import ACI_EL_ORG, ROOT_OTHER, TestPki, make_test_pki
from pki.verify import Reason, Role, TrustStore, Verifier
from tests.pki.crlserver import CrlServer


@pytest.fixture
def own_pki(tmp_path: Path) -> Iterator[tuple[TestPki, CrlServer]]:
    """A PKI of its own: these tests revoke certificates and stop the CRL server."""
    server = CrlServer()
    pki = make_test_pki(tmp_path / "pki", crl_base_url=server.base_url)
    server.crl_dir = tmp_path / "pki" / "crl"
    yield pki, server
    server.close()


def verifier(pki: TestPki, cache: CrlCache) -> Verifier:
    return Verifier(TrustStore(pki.igc_roots(), pki.igc_intermediates()), cache)


async def test_certificate_revoked_after_start_is_refused_once_the_crl_is_refreshed(
    own_pki: tuple[TestPki, CrlServer],
) -> None:
    pki, server = own_pki
    cache = CrlCache(max_age=timedelta(minutes=10), retry_after=timedelta(0))
    v = verifier(pki, cache)
    leaf = pki.certs["peer-valid"].cert
    assert (await v.verify(leaf, role=Role.CLIENT)).reason is Reason.OK
    fetched = server.requests
    pki.revoke("peer-valid")
    # Within max_age the cached CRL answers (no fetch per handshake)...
    assert (await v.verify(leaf, role=Role.CLIENT)).reason is Reason.OK
    assert server.requests == fetched
    # ...and once it is due, the new CRL is fetched and the certificate refused.
    later = datetime.now(UTC) + timedelta(minutes=11)
    verdict = await v.verify(leaf, role=Role.CLIENT, at=later)
    assert verdict.reason is Reason.REVOKED
    assert server.requests > fetched


async def test_unreachable_crl_server_keeps_the_last_good_crl_until_next_update(
    own_pki: tuple[TestPki, CrlServer],
) -> None:
    pki, server = own_pki
    cache = CrlCache(max_age=timedelta(minutes=10), retry_after=timedelta(0))
    v = verifier(pki, cache)
    leaf = pki.certs["peer-valid"].cert
    assert (await v.verify(leaf, role=Role.CLIENT)).ok
    next_update = cache.cached(pki.cas[ACI_EL_ORG][0]).next_update_utc  # type: ignore[union-attr]
    server.close()
    # Due for refresh, but the distribution point is down: the last good CRL still answers.
    assert (await v.verify(leaf, role=Role.CLIENT, at=next_update - timedelta(minutes=5))).ok
    # Past its nextUpdate, no valid CRL remains: fail closed.
    verdict = await v.verify(leaf, role=Role.CLIENT, at=next_update + timedelta(minutes=1))
    assert verdict.reason is Reason.REVOCATION_UNKNOWN
    assert "expired" in verdict.detail


async def test_no_crl_at_all_fails_closed(tmp_path: Path) -> None:
    server = CrlServer()  # publishes nothing: every fetch is a 404
    try:
        pki = make_test_pki(tmp_path, crl_base_url=server.base_url)
        verdict = await verifier(pki, CrlCache()).verify(
            pki.certs["peer-valid"].cert, role=Role.CLIENT
        )
        assert verdict.reason is Reason.REVOCATION_UNKNOWN
    finally:
        server.close()


def test_crl_signed_by_the_wrong_key_is_refused(own_pki: tuple[TestPki, CrlServer]) -> None:
    pki, _ = own_pki
    foreign = load_crl(pki.crl_path(ROOT_OTHER).read_bytes(), "root-other.crl")
    with pytest.raises(CrlError, match="not signed by"):
        CrlCache().add(foreign, pki.cas[ACI_EL_ORG][0])


async def test_revoked_serial_is_reported_with_its_number(
    own_pki: tuple[TestPki, CrlServer],
) -> None:
    pki, _ = own_pki
    cache = CrlCache()
    issuer = pki.cas[ACI_EL_ORG][0]
    revoked = pki.certs["peer-revoked"].cert
    status, detail = await cache.status(revoked, issuer)
    assert status is RevocationStatus.REVOKED
    assert f"{revoked.serial_number:x}" in detail
