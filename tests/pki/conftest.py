from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.testpki import TestPki, make_test_pki
from tests.pki.crlserver import CrlServer


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPki]:
    """The IGC-Santé TEST hierarchy with its CRLs served over HTTP on 127.0.0.1."""
    server = CrlServer()
    directory = tmp_path_factory.mktemp("pki")
    pki = make_test_pki(directory, crl_base_url=server.base_url)
    server.crl_dir = directory / "crl"
    trust = directory / "trust.pem"
    trust.write_bytes(pki.roots_path.read_bytes() + pki.intermediates_path.read_bytes())
    yield pki
    server.close()


@pytest.fixture
def trust_file(test_pki: TestPki) -> Path:
    return test_pki.directory / "trust.pem"
