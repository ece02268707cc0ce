"""``server.processes``: several processes share the MX port on PostgreSQL; SIGTERM stops them
all. On SQLite the setting is refused (measured slower than one process)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import threading
from pathlib import Path

from pki.testpki import TestPki
from store import Store
from tests.colombe.processes import Background, refused
from tests.conftest import _empty_postgres
from tests.mta.conftest import message, smtp_session, whitelist_xml
from tests.mta.test_federation import free_port

DOMAIN = "hopital-a.mssante.fr"
DOCTOR = f"dr.a@{DOMAIN}"
PEER_DOMAIN = "clinique-b.mssante.fr"


def config_text(pki: TestPki, url: str, blobs: Path, whitelist: Path, mx_port: int) -> str:
    issued = pki.certs["operator"]
    return f"""
[store]
database_url = {json.dumps(url)}
blob_dir = {json.dumps(str(blobs))}

[server]
hostname = "mx.{DOMAIN}"
processes = 2

[admin]
listen = ""

[whitelist]
url = {json.dumps(whitelist.as_uri())}
min_entries = 1

[directory]
import_interval = 0

[tls]
cert_file = {json.dumps(str(issued.chain_path))}
key_file = {json.dumps(str(issued.key_path))}
trust_file = {json.dumps(str(pki.directory / "trust.pem"))}
crl_dir = {json.dumps(str(pki.directory / "crl"))}

[mx]
listen = "127.0.0.1:{mx_port}"

[queue]
enabled = false
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def test_two_processes_share_the_mx_and_stop_together(
    pg_url: str, test_pki: TestPki, tmp_path: Path
) -> None:
    await _empty_postgres(pg_url)
    store = await Store.open(pg_url, tmp_path / "blobs")
    try:
        await store.add_domain(DOMAIN)
        await store.create_bal(DOCTOR)
    finally:
        await store.close()
    whitelist = tmp_path / "liste-blanche.xml"
    whitelist.write_bytes(
        whitelist_xml([(PEER_DOMAIN, test_pki.certs["peer-valid"].cert.subject.rfc4514_string())])
    )
    port = free_port()
    config = tmp_path / "colombe.toml"
    config.write_text(config_text(test_pki, pg_url, tmp_path / "blobs", whitelist, port))
    server = Background("--config", str(config), "serve", cwd=tmp_path)
    try:
        server.wait_for("stderr", r"^ready: ")
        assert len(children_of(server.proc.pid)) == 1  # the second front-end process
        # The child's listener may take a moment after the parent's: it is the same port.
        errors: list[BaseException] = []

        def send(n: int) -> None:
            try:
                ctx = ssl.create_default_context(cafile=str(test_pki.directory / "trust.pem"))
                ctx.check_hostname = False
                peer = test_pki.certs["peer-valid"]
                ctx.load_cert_chain(str(peer.chain_path), str(peer.key_path))
                client = smtp_session(port, ctx)
                sender = f"dr.b@{PEER_DOMAIN}"
                for i in range(3):
                    client.sendmail(sender, [DOCTOR], message(sender, DOCTOR, f"m{n}-{i}"))
                client.quit()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        child = children_of(server.proc.pid)
        assert server.stop(signal.SIGTERM) == 0
        assert not any(alive(pid) for pid in child)
    finally:
        server.kill()
    store = await Store.open(pg_url, tmp_path / "blobs")
    try:
        folder = await store.get_folder(DOCTOR, "INBOX")
        assert len(await store.list_messages(folder.id)) == 24
    finally:
        await store.close()


def test_several_processes_on_sqlite_are_refused(tmp_path: Path) -> None:
    (tmp_path / "colombe.toml").write_text(
        '[store]\ndatabase_url = "sqlite:///x.db"\n\n[server]\nprocesses = 2\n', encoding="utf-8"
    )
    assert refused("serve", cwd=tmp_path).endswith(
        "server.processes: several processes need PostgreSQL (store.database_url)"
    )
