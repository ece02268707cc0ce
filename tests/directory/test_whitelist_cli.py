"""``colombe whitelist fetch|show|check|stats`` as an operator runs them: child processes, both
store engines, the list served over HTTPS by a test server with an IGC-Santé TEST certificate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.testpki import TestPki
from tests.colombe.processes import cli_env, refused, run, run_many
from tests.conftest import StoreLocation
from tests.directory import whitelist_gen as gen
from tests.directory.test_whitelist_fetch import WhitelistServer, listing

PEER_DOMAIN = "cert-valide-audit.peer.test"


@pytest.fixture
def server(test_pki: TestPki) -> Iterator[WhitelistServer]:
    localhost = test_pki.certs["localhost"]
    s = WhitelistServer(localhost.chain_path, localhost.key_path)
    yield s
    s.close()


def with_peer(xml: bytes) -> bytes:
    """``xml`` plus the test PKI's valid peer, its DN written the way the real file writes DNs."""
    written = f"CN={PEER_DOMAIN}, OU=0002 123456789, O=GIP COLOMBE TEST, ST=Rhône (69), C=FR"
    entry = gen.entry_xml(PEER_DOMAIN, written).encode()
    return xml.replace(b"    </ListeDomaines>", entry + b"    </ListeDomaines>")


def test_operator_fetches_inspects_and_checks_the_whitelist(
    store_location: StoreLocation,
    tmp_path: Path,
    server: WhitelistServer,
    trust_file: Path,
    test_pki: TestPki,
) -> None:
    run(
        "init",
        "--dir",
        str(tmp_path),
        "--database-url",
        store_location.url,
        "--blob-dir",
        str(store_location.blob_dir),
        cwd=tmp_path,
    )
    env = cli_env(
        COLOMBE_WHITELIST_URL=server.url,
        COLOMBE_WHITELIST_CA_FILE=str(trust_file),
        COLOMBE_WHITELIST_MIN_ENTRIES="1000",
    )
    good = listing()
    server.publish(with_peer(good.xml), etag='"v13"')

    assert refused("whitelist", "show", cwd=tmp_path, env=env) == (
        "Error: no whitelist in the store; run `colombe whitelist fetch`"
    )
    fetched = run("whitelist", "fetch", cwd=tmp_path, env=env)
    assert fetched.stdout == (
        f"whitelist updated: {good.entries + 1} entries, {len(good.domains) + 1} domains, "
        f"{len(good.dns) + 1} DNs, generated 2025-03-13T14:54:10Z\n"
    )

    domain, dn = min(good.pairs)
    peer_cert = str(test_pki.certs["peer-valid"].cert_path)
    allowed, by_cert, shown, stats = run_many(
        [
            ["whitelist", "check", domain.upper(), dn],
            ["whitelist", "check", PEER_DOMAIN, "--cert", peer_cert],
            ["whitelist", "show", "--json"],
            ["whitelist", "stats", "--json", "--top", "3"],
        ],
        cwd=tmp_path,
        env=env,
    )
    assert allowed.stdout.startswith(f"allowed: {dn} is listed for {domain.upper()}")
    assert by_cert.stdout.startswith(f"allowed: CN={PEER_DOMAIN},OU=0002 123456789,")
    status = json.loads(shown.stdout)
    assert status["entries"] == good.entries + 1
    assert status["generated_at"] == "2025-03-13T14:54:10+00:00"
    assert status["stale"] is False
    assert status["url"] == server.url
    figures = json.loads(stats.stdout)
    assert figures["domains"] == len(good.domains) + 1
    assert figures["dns"] == len(good.dns) + 1
    assert figures["top_organisations"][0]["organisation"] == "GIP MIPIH"
    assert len(figures["top_organisations"]) == 3

    other_peer = str(test_pki.certs["peer-cn-diff"].cert_path)
    wrong_dn, unlisted, by_wrong_cert = run_many(
        [
            ["whitelist", "check", gen.MULTI_DOMAIN, gen.MIPIH_DN],
            ["whitelist", "check", "inconnu.mssante.fr"],
            ["whitelist", "check", PEER_DOMAIN, "--cert", other_peer, "--json"],
        ],
        cwd=tmp_path,
        env=env,
        code=1,
    )
    assert wrong_dn.stdout.splitlines()[0] == (
        f"refused: {gen.MIPIH_DN} is not listed for {gen.MULTI_DOMAIN}"
    )
    assert {line.removeprefix("  listed: ") for line in wrong_dn.stdout.splitlines()[1:]} == set(
        gen.MULTI_DNS
    )
    assert unlisted.stdout == "refused: inconnu.mssante.fr is not in the whitelist\n"
    verdict = json.loads(by_wrong_cert.stdout)
    assert (verdict["listed"], verdict["allowed"]) == (True, False)
    assert verdict["dn"].startswith("CN=autre-nom.peer.test,")
    assert refused("whitelist", "check", domain, "CN=x,,O=y", cwd=tmp_path, env=env).startswith(
        "Error: DN unreadable: "
    )

    # The mirror's truncated file is refused; the copy in the store stays.
    server.publish(gen.truncated_like_the_mirror(listing(14).xml), etag='"v14"')
    message = refused("whitelist", "fetch", cwd=tmp_path, env=env)
    assert message.startswith("Error: whitelist rejected: refused: not well-formed XML at line ")
    assert message.endswith("the copy generated 2025-03-13T14:54:10Z stays in use")
    server.publish(with_peer(good.xml), etag='"v13"')
    again, shown = run_many([["whitelist", "fetch"], ["whitelist", "show"]], cwd=tmp_path, env=env)
    assert again.stdout == (
        f"whitelist not modified (generated 2025-03-13T14:54:10Z, {good.entries + 1} entries)\n"
    )
    assert "generated  2025-03-13T14:54:10Z" in shown.stdout
    assert server.requests[-1].get("if-none-match") == '"v13"'
