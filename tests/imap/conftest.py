"""An IMAP server on 127.0.0.1 for the tests, over real TLS (the test IGC-Santé PKI's operator
certificate), on the store of the ``store`` fixture (SQLite and PostgreSQL).

:class:`Client` is a raw protocol client: it sends exactly the octets a test writes and returns
the response lines with their literals inline, so tests assert the exact wire format."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imap.auth import Plain, password_check
from imap.server import ImapServer, Limits, SaslMechanism
from pki.testpki import TestPki
from pki.tls import client_facing_context
from store import Store

HOSTED = "hopital-test.mssante.fr"
DOCTOR = f"jean.dupont@{HOSTED}"
SECRETARY = f"secretariat@{HOSTED}"
OTHER = f"claire.martin@{HOSTED}"
PASSWORD = "mot-de-passe-de-test"

_LITERAL = re.compile(rb"~?\{(\d+)\+?\}\r\n\Z")


class Client:
    """One connection; ``command`` tags and sends a line, returns every line up to its tagged
    reply (literals inline, CRLF kept)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counter = 0

    async def line(self, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            out = bytearray()
            while True:
                chunk = await self.reader.readline()
                if not chunk:
                    return bytes(out)
                out += chunk
                m = _LITERAL.search(chunk)
                if m is None:
                    return bytes(out)
                out += await self.reader.readexactly(int(m.group(1)))

    def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    def next_tag(self) -> str:
        self.counter += 1
        return f"a{self.counter}"

    async def command(self, text: bytes | str, timeout: float = 10.0) -> list[bytes]:
        tag = self.next_tag()
        raw = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + raw + b"\r\n")
        return await self.until(tag, timeout)

    async def until(self, tag: str, timeout: float = 10.0) -> list[bytes]:
        lines: list[bytes] = []
        while True:
            line = await self.line(timeout)
            if not line:
                raise ConnectionError(f"closed before {tag}; got {lines!r}")
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines

    async def ok(self, text: bytes | str) -> list[bytes]:
        lines = await self.command(text)
        assert b" OK " in lines[-1], lines
        return lines

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


@dataclass
class Imap:
    store: Store
    server: ImapServer
    server_tls: ImapServer
    trust: Path
    clients: list[Client] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.sockets[0][1]

    @property
    def tls_port(self) -> int:
        return self.server_tls.sockets[0][1]

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.trust))
        ctx.check_hostname = False
        return ctx

    async def connect(
        self, user: str | None = DOCTOR, *, password: str = PASSWORD, select: str | None = None
    ) -> Client:
        """Implicit TLS, logged in as ``user`` (None: not logged in, greeting read)."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.tls_port, ssl=self.client_context()
        )
        client = Client(reader, writer)
        self.clients.append(client)
        greeting = await client.line()
        assert greeting.startswith(b"* OK"), greeting
        if user is not None:
            await client.ok(f'LOGIN "{user}" "{password}"')
        if select is not None:
            await client.ok(f'SELECT "{select}"')
        return client

    async def connect_plain(self) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        client = Client(reader, writer)
        self.clients.append(client)
        assert (await client.line()).startswith(b"* OK")
        return client

    async def deliver(self, message: bytes, bal: str = DOCTOR, folder: str = "INBOX") -> int:
        return (await self.store.deliver(bal, message, folder)).uid


def make_limits(**overrides: object) -> Limits:
    values: dict[str, object] = {"auth_failure_delay": 0.05, "login_timeout": 10.0}
    values.update(overrides)
    return Limits(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def imap_users() -> tuple[str, ...]:
    return (DOCTOR, SECRETARY, OTHER)


@pytest.fixture
def imap_limits() -> Limits:
    return make_limits()


@pytest.fixture
async def imap(
    store: Store, test_pki: TestPki, trust_file: Path, imap_limits: Limits
) -> AsyncIterator[Imap]:
    await store.add_domain(HOSTED)
    for address, name in (
        (DOCTOR, "Dr Jean Dupont"),
        (SECRETARY, "Secrétariat"),
        (OTHER, "Dr Claire Martin"),
    ):
        await store.create_bal(address, display_name=name)
    await asyncio.gather(*(store.set_password(a, PASSWORD) for a in (DOCTOR, SECRETARY, OTHER)))
    operator = test_pki.certs["operator"]
    context = client_facing_context(operator.chain_path, operator.key_path)
    check = password_check(store)
    mechanisms: dict[str, SaslMechanism] = {"PLAIN": Plain(check)}
    server = ImapServer(
        store, tls_context=context, limits=imap_limits, mechanisms=mechanisms, password_check=check
    )
    server_tls = ImapServer(
        store,
        tls_context=context,
        limits=imap_limits,
        mechanisms=mechanisms,
        password_check=check,
        implicit_tls=True,
        budget=server.budget,
        throttle=server.throttle,
    )
    await server.start("127.0.0.1", 0)
    await server_tls.start("127.0.0.1", 0)
    env = Imap(store, server, server_tls, trust_file)
    try:
        yield env
    finally:
        for client in env.clients:
            await client.close()
        await server.stop()
        await server_tls.stop()


def message(
    subject: str = "Compte rendu",
    body: str = "Bonjour,\r\nVoici le compte rendu.\r\n",
    sender: str = "Dr Martin <claire.martin@hopital-test.mssante.fr>",
    to: str = DOCTOR,
    extra: str = "",
) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
        f"Message-ID: <{abs(hash(subject + body))}@test>\r\n{extra}"
        "\r\n" + body
    ).encode()


@pytest.fixture(autouse=True)
def _cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at its production cost makes every login and every fixture set-up take tenths of
    a second; the protocol tests use the cheapest parameters (run before ``store``: autouse)."""
    import argon2

    import store.store as store_module

    def cheap() -> argon2.PasswordHasher:
        return argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)

    monkeypatch.setattr(store_module, "PasswordHasher", cheap)
