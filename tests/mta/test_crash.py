"""Nothing acknowledged is lost (ARCHITECTURE invariant): ``colombe serve`` is killed with SIGKILL
while clients submit mail to a local BAL and to another operator; after a restart every message
that got its 250 is in the local mailbox or reaches the other operator through the queue."""

from __future__ import annotations

import asyncio
import json
import signal
import smtplib
import ssl
import threading
from pathlib import Path

import pytest

from pki.testpki import TestPki
from store import Store
from tests.colombe.processes import Background
from tests.conftest import StoreLocation
from tests.mta.conftest import PASSWORD, eventually, whitelist_xml
from tests.mta.test_federation import free_port, start_operator

A_DOMAIN = "hopital-a.mssante.fr"
B_DOMAIN = "clinique-b.mssante.fr"
SENDER = f"dr.a@{A_DOMAIN}"
LOCAL = f"dr.c@{A_DOMAIN}"
REMOTE = f"dr.b@{B_DOMAIN}"
CLIENTS = 4
PER_CLIENT = 150  # an upper bound: the server is killed long before
KILL_AFTER = 60  # acknowledged messages
LOAD_SECONDS = 30.0


def write_config(
    folder: Path, pki: TestPki, location: StoreLocation, whitelist: Path, ports: dict[str, int]
) -> Path:
    issued = pki.certs["operator"]
    routes = folder / "routes"
    routes.write_text(f"{B_DOMAIN} = 127.0.0.1:{ports['b_mx']}\n")
    config = folder / "colombe.toml"
    config.write_text(
        f"""
[store]
database_url = {json.dumps(location.url)}
blob_dir = {json.dumps(str(location.blob_dir))}

[server]
hostname = "mx.{A_DOMAIN}"

[admin]
listen = "127.0.0.1:0"

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

[submission]
listen = "127.0.0.1:{ports["a_submission"]}"

[mx]
listen = "127.0.0.1:{ports["a_mx"]}"

[queue]
routes_file = {json.dumps(str(routes))}
poll_interval = 1
minimal_backoff = 1
maximal_backoff = 2
claim_lease = 3
""",
        encoding="utf-8",
    )
    return config


def load(
    port: int,
    trust: Path,
    acked: list[str],
    enough: threading.Event,
    stop: threading.Event,
    client: int,
) -> None:
    """One client: a session, then messages until the server dies; records what got 250."""
    ctx = ssl.create_default_context(cafile=str(trust))
    ctx.check_hostname = False
    try:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
        smtp.ehlo("poste")
        smtp.starttls(context=ctx)
        smtp.ehlo("poste")
        smtp.login(SENDER, PASSWORD)
        for i in range(PER_CLIENT):
            if stop.is_set():
                break
            tag = f"load-{client}-{i}"
            recipient = LOCAL if i % 2 else REMOTE
            data = (
                f"From: {SENDER}\r\nTo: {recipient}\r\nSubject: {tag}\r\n"
                f"Message-ID: <{tag}@a>\r\n\r\n" + "ligne de compte rendu\r\n" * 200
            ).encode()
            smtp.sendmail(SENDER, [recipient], data)  # raises unless 250
            acked.append(tag)
            if len(acked) >= KILL_AFTER:
                enough.set()
    except (smtplib.SMTPException, OSError):
        pass  # the server was killed: what follows was never acknowledged


async def subjects(store: Store, address: str) -> list[str]:
    folder = await store.get_folder(address, "INBOX")
    out = []
    for message in await store.list_messages(folder.id):
        out.append(message.subject or "")
    return out


@pytest.mark.slow
async def test_sigkill_during_load_loses_nothing_acknowledged(
    store: Store, store_location: StoreLocation, test_pki: TestPki, tmp_path: Path
) -> None:
    whitelist = tmp_path / "liste-blanche.xml"
    whitelist.write_bytes(
        whitelist_xml(
            [
                (A_DOMAIN, test_pki.certs["operator"].cert.subject.rfc4514_string()),
                (B_DOMAIN, test_pki.certs["peer-valid"].cert.subject.rfc4514_string()),
            ]
        )
    )
    ports = {"a_mx": free_port(), "a_submission": free_port(), "b_mx": free_port()}
    # Operator A, the one killed, runs in a child process on the store under test (SQLite or
    # PostgreSQL); its data is prepared here.
    await store.add_domain(A_DOMAIN)
    await store.create_bal(SENDER, password=PASSWORD)
    await store.create_bal(LOCAL)
    a_folder = tmp_path / "a"
    a_folder.mkdir()
    config = write_config(a_folder, test_pki, store_location, whitelist, ports)
    # Operator B, in this process on a SQLite store of its own, receives A's queued mail.
    b_store = await Store.open(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "b-blobs")
    b = await start_operator(
        "B", b_store, tmp_path / "b", test_pki, "peer-valid", B_DOMAIN, REMOTE,
        ports["b_mx"], A_DOMAIN, ports["a_mx"], whitelist,
    )  # fmt: skip
    server = Background("--config", str(config), "serve", cwd=tmp_path)
    try:
        server.wait_for("stderr", r"^ready: ")
        acked: list[str] = []
        enough, stop = threading.Event(), threading.Event()
        threads = [
            threading.Thread(
                target=load,
                args=(
                    ports["a_submission"],
                    test_pki.directory / "trust.pem",
                    acked,
                    enough,
                    stop,
                    n,
                ),
            )
            for n in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        await asyncio.to_thread(enough.wait, LOAD_SECONDS)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        stop.set()
        for t in threads:
            await asyncio.to_thread(t.join, 30)
        server.kill()
        assert len(acked) >= KILL_AFTER, "the load did not get going before the kill"
        acked_remote = {t for t in acked if int(t.rsplit("-", 1)[1]) % 2 == 0}
        acked_local = set(acked) - acked_remote

        server = Background("--config", str(config), "serve", cwd=tmp_path)
        server.wait_for("stderr", r"^ready: ")

        async def remote_all_delivered() -> bool:
            return acked_remote <= set(await subjects(b.store, REMOTE))

        await eventually(remote_all_delivered, seconds=90)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.kill()
        await b.stop()
        await b_store.close()
    local = set(await subjects(store, LOCAL))
    assert acked_local <= local, f"lost: {sorted(acked_local - local)}"
