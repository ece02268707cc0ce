"""`colombe pki make-test-pki|show|check`, driven as an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pki.testpki import TestPki


def colombe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "colombe.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_test_pki_writes_the_hierarchy_and_audit_certificates(tmp_path: Path) -> None:
    done = colombe("pki", "make-test-pki", str(tmp_path / "p"), "--crl-base-url", "http://x/crl")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert {"peer-valid", "peer-expired", "peer-revoked", "peer-non-igc"} <= set(manifest["certs"])
    assert all("TEST" in subject or "HORS" in subject for subject in manifest["cas"].values())
    assert (tmp_path / "p" / "crl" / "aci-el-org.crl").is_file()


def test_show_describes_every_certificate_of_a_chain(test_pki: TestPki) -> None:
    done = colombe("pki", "show", "--json", str(test_pki.certs["peer-valid"].chain_path))
    assert done.returncode == 0, done.stderr
    described = json.loads(done.stdout)
    assert described[0]["subject"].startswith("CN=cert-valide-audit.peer.test")
    assert described[0]["extended usage"] == ["serverAuth", "clientAuth"]
    assert described[1]["ca"] == "yes"


def test_show_refuses_garbage_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    done = colombe("pki", "show", str(bad))
    assert done.returncode == 1
    assert "bad.pem" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_accepts_a_valid_peer_and_refuses_an_expired_one(
    test_pki: TestPki, trust_file: Path
) -> None:
    ok = colombe(
        "pki",
        "check",
        str(test_pki.certs["peer-valid"].cert_path),
        "--role",
        "client",
        "--trust",
        str(trust_file),
        "--json",
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["reason"] == "ok"
    expired = colombe(
        "pki",
        "check",
        str(test_pki.certs["peer-expired"].cert_path),
        "--role",
        "client",
        "--trust",
        str(trust_file),
    )
    assert expired.returncode == 2
    assert expired.stdout.startswith("REFUSED (expired)")
    revoked = colombe(
        "pki",
        "check",
        str(test_pki.certs["peer-revoked"].cert_path),
        "--role",
        "server",
        "--trust",
        str(trust_file),
    )
    assert revoked.returncode == 2
    assert "revoked" in revoked.stdout
