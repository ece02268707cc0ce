"""Fixtures of the directory suite: a real OpenLDAP slapd for the publication tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.testpki import TestPki
from tests.directory.slapd import SLAPD, Slapd

_branches = itertools.count(1)


def _new_slapd(workdir: Path, test_pki: TestPki) -> Slapd:
    if not SLAPD.exists():
        pytest.fail(f"{SLAPD} missing: `make test` installs the Debian package slapd")
    localhost = test_pki.certs["localhost"]
    return Slapd(
        workdir,
        cert_chain=localhost.chain_path,
        key=localhost.key_path,
        trust=test_pki.directory / "trust.pem",
    )


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory, test_pki: TestPki) -> Iterator[Slapd]:
    """One slapd for the session (each test publishes under its own branch: see ``ldap_base``)."""
    server = _new_slapd(tmp_path_factory.mktemp("slapd"), test_pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_slapd(tmp_path: Path, test_pki: TestPki) -> Iterator[Slapd]:
    """A slapd of the test's own, which it may stop and start again."""
    server = _new_slapd(tmp_path / "slapd", test_pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ldap_base(slapd: Slapd) -> str:
    """A fresh, empty ``ou=...`` under the suffix: the base DN of one test's publication."""
    return slapd.add_branch(f"colombe-{next(_branches)}")
