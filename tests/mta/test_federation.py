"""Two Colombe operators exchanging mail both ways, built from their configuration like
``colombe serve`` builds them: submission at one operator, its queue, mutual TLS with two SERV
certificates of the test PKI (each listed in the shared whitelist for its own domain), the other
operator's MX, and the success DSN travelling back the same way."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from colombe.config import (
    Config,
    DirectorySection,
    MxSection,
    QueueSection,
    ServerSection,
    StoreSection,
    SubmissionSection,
    TlsSection,
    WhitelistSection,
)
from colombe.mta import mx_component, queue_component, services, submission_component
from pki.testpki import TestPki
from store import Store
from tests.conftest import StoreLocation
from tests.mta.conftest import PASSWORD, eventually, in_thread, message, whitelist_xml

A_DOMAIN = "hopital-a.mssante.fr"
B_DOMAIN = "clinique-b.mssante.fr"
A_DOCTOR = f"dr.a@{A_DOMAIN}"
B_DOCTOR = f"dr.b@{B_DOMAIN}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Operator:
    name: str
    store: Store
    config: Config
    components: list
    submission_port: int

    async def inbox(self, address: str) -> list[bytes]:
        folder = await self.store.get_folder(address, "INBOX")
        return [await self.store.read_message(m) for m in await self.store.list_messages(folder.id)]

    async def wait_inbox(self, address: str, count: int) -> list[bytes]:
        async def arrived() -> bool:
            return len(await self.inbox(address)) >= count

        await eventually(arrived)
        return await self.inbox(address)

    async def stop(self) -> None:
        for component in reversed(self.components):
            await component.stop()


async def start_operator(
    name: str,
    store: Store,
    folder: Path,
    pki: TestPki,
    cert: str,
    domain: str,
    doctor: str,
    mx_port: int,
    peer_domain: str,
    peer_mx_port: int,
    whitelist_file: Path,
) -> Operator:
    await store.add_domain(domain)
    await store.create_bal(doctor, display_name=name, password=PASSWORD)
    routes = folder / "routes"
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(routes.write_text, f"{peer_domain} = 127.0.0.1:{peer_mx_port}\n")
    issued = pki.certs[cert]
    config = Config(
        store=StoreSection(database_url="unused", blob_dir=str(folder / "blobs")),
        server=ServerSection(hostname=f"mx.{domain}"),
        whitelist=WhitelistSection(url=whitelist_file.as_uri(), min_entries=1, ca_file=""),
        directory=DirectorySection(extraction_url="", import_interval=0),
        tls=TlsSection(
            cert_file=str(issued.chain_path),
            key_file=str(issued.key_path),
            trust_file=str(pki.directory / "trust.pem"),
            crl_dir=str(pki.directory / "crl"),
        ),
        mx=MxSection(listen=f"127.0.0.1:{mx_port}", timeout=20),
        submission=SubmissionSection(listen="127.0.0.1:0", timeout=20),
        queue=QueueSection(routes_file=str(routes), poll_interval=1, connect_timeout=5),
    )
    components = [
        c
        for c in (
            queue_component(config, store),
            mx_component(config, store),
            submission_component(config, store),
        )
        if c is not None
    ]
    started = []
    try:
        for component in components:
            await component.start()
            started.append(component)
        whitelist = services(config, store).whitelist

        async def loaded() -> bool:
            return whitelist.is_listed(peer_domain)

        await eventually(loaded)
    except BaseException:
        for component in reversed(started):
            await component.stop()
        raise
    submission = components[2]
    port = submission.listeners[0][0].sockets[0][1]
    return Operator(name, store, config, components, port)


@pytest.fixture
async def federation(
    store: Store, store_location: StoreLocation, test_pki: TestPki, tmp_path: Path
) -> AsyncIterator[tuple[Operator, Operator]]:
    a_cert, b_cert = test_pki.certs["operator"], test_pki.certs["peer-valid"]
    whitelist_file = tmp_path / "liste-blanche.xml"
    whitelist_file.write_bytes(
        whitelist_xml(
            [
                (A_DOMAIN, a_cert.cert.subject.rfc4514_string()),
                (B_DOMAIN, b_cert.cert.subject.rfc4514_string()),
            ]
        )
    )
    # Operator B always runs on SQLite in a folder of its own; A on the parametrised backend.
    b_store = await Store.open(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "b-blobs")
    a_port, b_port = free_port(), free_port()
    a = await start_operator(
        "A", store, tmp_path / "a", test_pki, "operator", A_DOMAIN, A_DOCTOR,
        a_port, B_DOMAIN, b_port, whitelist_file,
    )  # fmt: skip
    try:
        b = await start_operator(
            "B", b_store, tmp_path / "b", test_pki, "peer-valid", B_DOMAIN, B_DOCTOR,
            b_port, A_DOMAIN, a_port, whitelist_file,
        )  # fmt: skip
        try:
            yield a, b
        finally:
            await b.stop()
    finally:
        await a.stop()
        await b_store.close()


def submit(
    op: Operator, sender: str, recipient: str, data: bytes, notify: str | None = None
) -> None:
    import ssl

    client = smtplib.SMTP("127.0.0.1", op.submission_port, timeout=20)
    try:
        client.ehlo("poste")
        ctx = ssl.create_default_context(cafile=str(op.config.tls.trust_file))
        ctx.check_hostname = False
        client.starttls(context=ctx)
        client.ehlo("poste")
        client.login(sender, PASSWORD)
        client.mail(sender, ["ENVID=federation-1"])
        options = [f"NOTIFY={notify}"] if notify else []
        code, text = client.rcpt(recipient, options)
        assert code == 250, text
        code, text = client.data(data)
        assert code == 250, text
    finally:
        client.quit()


async def test_mail_crosses_both_ways_with_success_reports(
    federation: tuple[Operator, Operator],
) -> None:
    a, b = federation
    await in_thread(
        lambda: submit(a, A_DOCTOR, B_DOCTOR, message(A_DOCTOR, B_DOCTOR, "Aller"), "SUCCESS")
    )
    (received,) = await b.wait_inbox(B_DOCTOR, 1)
    assert b"Subject: Aller" in received
    unfolded = received.replace(b"\r\n ", b" ")
    # B's MX recorded A's certificate DN; A's submission is below it.
    assert b'client DN "CN=mx.colombe.test' in unfolded
    assert b"with ESMTPSA" in unfolded
    # B reports the delivery (NOTIFY=SUCCESS was relayed): back into A's mailbox.
    (report,) = await a.wait_inbox(A_DOCTOR, 1)
    assert b"multipart/report" in report
    assert b"report-type=delivery-status" in report.replace(b'"', b"")
    assert b"Action: delivered" in report
    assert b"Original-Envelope-Id: federation-1" in report

    await in_thread(
        lambda: submit(b, B_DOCTOR, A_DOCTOR, message(B_DOCTOR, A_DOCTOR, "Retour"), "SUCCESS")
    )
    inbox = await a.wait_inbox(A_DOCTOR, 2)
    assert any(b"Subject: Retour" in m for m in inbox)
    reports = [m for m in await b.wait_inbox(B_DOCTOR, 2) if b"multipart/report" in m]
    assert len(reports) == 1
    # Both queues are empty: everything was delivered, nothing is waiting for a retry.
    for op in (a, b):
        assert [e for e in await op.store.list_queue() if e.status.value != "done"] == []
