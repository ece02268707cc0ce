"""An MTA on 127.0.0.1 for the tests: MX and submission listeners over real TLS with the test
IGC-Santé PKI, a real whitelist, and the store of the ``store`` fixture (SQLite and PostgreSQL).

Clients are Python's smtplib (in a thread) presenting the test PKI's certificates, or raw sockets
for the protocol-level cases."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest

from directory.whitelist import Whitelist, parse_whitelist
from mta.audit import AuditWriter
from mta.delivery import Receiver
from mta.mx import MxHandler
from mta.sasl import Login, Plain
from mta.smtpd import Limits, Listener, SaslMechanism
from mta.submission import SubmissionHandler
from pki.crl import CrlCache
from pki.testpki import TestPki
from pki.tls import client_facing_context, mx_listener_context
from pki.verify import TrustStore, Verifier
from store import Store

NAMESPACE = "https://listeblanche.mssante.fr/schema"
HOSTED = "hopital-test.mssante.fr"
DOCTOR = f"jean.dupont@{HOSTED}"
SECRETARY = f"secretariat@{HOSTED}"
OTHER = f"claire.martin@{HOSTED}"
PASSWORD = "mot-de-passe-de-test"
REMOTE = "clinique-distante.mssante.fr"


def whitelist_xml(pairs: list[tuple[str, str]], now: datetime | None = None) -> bytes:
    """A whitelist in the ANS format binding each domain to a DN (RFC 4514 text)."""
    now = now or datetime.now(UTC)
    entries = "".join(
        "<Domaine>"
        f"<Nom>{escape(domain)}</Nom>"
        "<Description>test</Description>"
        f"<DNCertificatOperateur>{escape(dn)}</DNCertificatOperateur>"
        "<ResponsableContact>test</ResponsableContact>"
        "<SupportContact>test</SupportContact>"
        f"<DateMAJ>{now:%Y-%m-%dT%H:%M:%SZ}</DateMAJ>"
        "</Domaine>"
        for domain, dn in pairs
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<ListeBlancheMSSante xmlns="{NAMESPACE}">'
        f"<DateDeGeneration>{now:%Y-%m-%dT%H:%M:%SZ}</DateDeGeneration>"
        f"<ListeDomaines>{entries}</ListeDomaines>"
        "</ListeBlancheMSSante>\n"
    ).encode()


class StaticWhitelist:
    """A parsed whitelist behind the component's interface (allows, is_listed, dns_for)."""

    def __init__(self, whitelist: Whitelist) -> None:
        self.current = whitelist

    def allows(self, domain: str, peer_dn: Any) -> bool:
        return self.current.allows(domain, peer_dn)

    def is_listed(self, domain: str) -> bool:
        return self.current.is_listed(domain)

    def dn_is_listed(self, peer_dn: Any) -> bool:
        return self.current.dn_is_listed(peer_dn)

    def dns_for(self, domain: str) -> list[str]:
        return [str(dn) for dn in self.current.dns_for(domain)]


def test_whitelist(pki: TestPki) -> StaticWhitelist:
    """Each audit peer's certificate FQDN is its mail domain; what is listed for it makes the
    audit case (mssante-spec §2.2)."""
    subject = {name: pki.certs[name].cert.subject.rfc4514_string() for name in pki.certs}
    pairs = [
        ("cert-valide-audit.peer.test", subject["peer-valid"]),
        (REMOTE, subject["peer-valid"]),
        ("cert-expire-audit.peer.test", subject["peer-expired"]),
        ("cert-revoque-audit.peer.test", subject["peer-revoked"]),
        ("cert-non-igc-audit.peer.test", subject["peer-non-igc"]),
        (
            "cert-no-match-audit.peer.test",
            subject["peer-not-listed"].replace("GIP COLOMBE TEST", "AUTRE OPERATEUR"),
        ),
        (
            "autre-nom.peer.test",
            subject["peer-cn-diff"].replace("autre-nom.peer.test", "cert-cn-diff-dn-audit"),
        ),
        ("patient.mssante.fr", subject["peer-valid"]),
        (HOSTED, subject["operator"]),
    ]
    return StaticWhitelist(parse_whitelist(whitelist_xml(pairs)))


# This helper is not a test despite its name.
test_whitelist.__test__ = False  # type: ignore[attr-defined]


@dataclass
class Mta:
    store: Store
    pki: TestPki
    trust: Path
    whitelist: StaticWhitelist
    audit: AuditWriter
    mx: Listener
    submission: Listener
    submission_tls: Listener
    queued: list[int] = field(default_factory=list)

    @property
    def mx_port(self) -> int:
        return self.mx.sockets[0][1]

    @property
    def submission_port(self) -> int:
        return self.submission.sockets[0][1]

    @property
    def submission_tls_port(self) -> int:
        return self.submission_tls.sockets[0][1]

    def peer_context(self, name: str | None = "peer-valid") -> ssl.SSLContext:
        """What a peer operator's MTA uses: its certificate as client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.trust))
        ctx.check_hostname = False
        if name is not None:
            issued = self.pki.certs[name]
            ctx.load_cert_chain(str(issued.chain_path), str(issued.key_path))
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """What a mail client uses: it checks our certificate, presents none."""
        ctx = ssl.create_default_context(cafile=str(self.trust))
        ctx.check_hostname = False
        return ctx

    async def inbox(self, address: str) -> list[bytes]:
        folder = await self.store.get_folder(address, "INBOX")
        messages = await self.store.list_messages(folder.id)
        return [await self.store.read_message(m) for m in messages]


@pytest.fixture
async def mta(store: Store, test_pki: TestPki, trust_file: Path) -> AsyncIterator[Mta]:
    await store.add_domain(HOSTED)
    for address, name in (
        (DOCTOR, "Dr Jean Dupont"),
        (SECRETARY, "Secrétariat"),
        (OTHER, "Dr Claire Martin"),
    ):
        await store.create_bal(address, display_name=name)
    await store.add_delegation(DOCTOR, SECRETARY, can_send=True)
    whitelist = test_whitelist(test_pki)
    verifier = Verifier(TrustStore(test_pki.igc_roots(), test_pki.igc_intermediates()), CrlCache())
    audit = AuditWriter(store)
    queued: list[int] = []
    receiver = Receiver(store, hostname="mx.hopital-test.mssante.fr", audit=audit)
    operator = test_pki.certs["operator"]
    limits = Limits(
        max_message_size=30_000_000, max_connections_per_ip=20, auth_failure_delay=0.05, timeout=10
    )
    mx = Listener(
        MxHandler(receiver, verifier=verifier, whitelist=whitelist, max_message_size=30_000_000),
        hostname="mx.hopital-test.mssante.fr",
        tls_context=mx_listener_context(operator.chain_path, operator.key_path, trust_file),
        limits=limits,
        blob_writer=store.blobs.writer,
    )
    mechanisms: dict[str, SaslMechanism] = {}
    handler = SubmissionHandler(
        receiver, whitelist=whitelist, mechanisms=mechanisms, max_message_size=30_000_000
    )
    mechanisms["PLAIN"] = Plain(handler.check_password)
    mechanisms["LOGIN"] = Login(handler.check_password)
    context = client_facing_context(operator.chain_path, operator.key_path)
    submission = Listener(
        handler,
        hostname="smtp.hopital-test.mssante.fr",
        tls_context=context,
        limits=limits,
        blob_writer=store.blobs.writer,
    )
    submission_tls = Listener(
        handler,
        hostname="smtp.hopital-test.mssante.fr",
        tls_context=context,
        limits=limits,
        blob_writer=store.blobs.writer,
        implicit_tls=True,
    )
    await mx.start("127.0.0.1", 0)
    await submission.start("127.0.0.1", 0)
    await submission_tls.start("127.0.0.1", 0)
    env = Mta(store, test_pki, trust_file, whitelist, audit, mx, submission, submission_tls, queued)
    try:
        yield env
    finally:
        await mx.stop()
        await submission.stop()
        await submission_tls.stop()
        await audit.close()


@pytest.fixture
async def users(mta: Mta) -> Mta:
    """The MTA with passwords set for the doctor and the secretary (argon2 is slow on purpose:
    only the submission tests pay for it)."""
    await asyncio.gather(
        mta.store.set_password(DOCTOR, PASSWORD), mta.store.set_password(SECRETARY, PASSWORD)
    )
    return mta


def message(
    sender: str, recipient: str, subject: str = "Compte rendu", body: str = "Bonjour."
) -> bytes:
    return (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash((sender, recipient, subject)))}@test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def smtp_session(
    port: int, context: ssl.SSLContext | None, *, starttls: bool = True
) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("mx.peer.test")
    if starttls and context is not None:
        client.starttls(context=context)
        client.ehlo("mx.peer.test")
    return client


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    """Wait until ``check()`` holds (polling), failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


class RawClient:
    """A line-level SMTP client on a plain socket (for malformed input)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                break
            lines.append(line)
            if line[3:4] != b"-":
                break
        return b"".join(lines)

    def closed(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()
