"""A real peer MTA for the outbound tests: aiosmtpd on 127.0.0.1 in its own thread, STARTTLS with
one of the test PKI's server certificates and a client certificate required (as an MSSanté MX
does), or no STARTTLS at all. It records every command it saw, so a test can tell that nothing
was handed over (no MAIL) and that we said QUIT."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from pki.testpki import TestPki

_DSN_MAIL = ("RET", "ENVID")
_DSN_RCPT = ("NOTIFY", "ORCPT")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class PeerHandler:
    """What the peer answers and what it saw. ``rcpt_replies``: address (lower case) -> replies
    to give to successive RCPTs of it ("250" accepts); ``data_replies`` likewise for the end of
    DATA."""

    dsn: bool = True
    rcpt_delay: float = 0.0  # seconds before answering each RCPT (a slow peer)
    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self.commands.append(f"EHLO {hostname}")
        if self.dsn:
            responses.insert(-1, "250-DSN")
        return responses

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.rcpt_delay:
            await asyncio.sleep(self.rcpt_delay)
        queued = self.rcpt_replies.get(address.lower())
        if queued:
            reply = queued.pop(0)
            if reply != "250":
                return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            reply = self.data_replies.pop(0)
            if reply != "250":
                return reply
        content = envelope.original_content or b""
        assert envelope.mail_from is not None
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), content))
        return "250 2.0.0 OK queued"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "221 2.0.0 Bye"

    def saw(self, verb: str) -> list[str]:
        return [c for c in self.commands if c.split(" ", 1)[0] == verb]


def _strip(arg: str, keys: tuple[str, ...]) -> str:
    """``arg`` without the DSN parameters aiosmtpd does not know (it refuses them with 555)."""
    return " ".join(w for w in arg.split(" ") if w.split("=", 1)[0].upper() not in keys)


class RecordingSMTP(SMTP):
    def _log(self, line: str) -> None:
        handler: PeerHandler = self.event_handler
        handler.commands.append(line)

    async def smtp_STARTTLS(self, arg: str) -> None:
        self._log("STARTTLS")
        await super().smtp_STARTTLS(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._log(f"MAIL {arg}")
        await super().smtp_MAIL(_strip(arg, _DSN_MAIL) if arg else arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._log(f"RCPT {arg}")
        await super().smtp_RCPT(_strip(arg, _DSN_RCPT) if arg else arg)

    async def smtp_DATA(self, arg: str) -> None:
        self._log("DATA")
        await super().smtp_DATA(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        self._log("QUIT")
        await super().smtp_QUIT(arg)


class DataAnswered250SMTP(RecordingSMTP):
    """A broken peer: answers DATA itself with 250 instead of 354 (and never gets the body)."""

    async def smtp_DATA(self, arg: str) -> None:
        self._log("DATA")
        await self.push("250 2.0.0 weird")


class EarlyRejectSMTP(RecordingSMTP):
    """A peer that refuses the message while it is being sent: 552 after the first 64 KiB,
    then it closes the connection (as a size-checking MTA may)."""

    async def smtp_DATA(self, arg: str) -> None:
        self._log("DATA")
        await self.push("354 go ahead")
        await self._reader.read(65536)
        await self.push("552 5.3.4 message too big for this server")
        await asyncio.sleep(0.5)
        assert self.transport is not None
        self.transport.close()


class PeerController(Controller):
    smtp_class: type[RecordingSMTP] = RecordingSMTP

    def factory(self) -> SMTP:
        return self.smtp_class(self.handler, **self.SMTP_kwargs)


class GarbageServer:
    """A plain TCP "MX" that greets every connection with ``greeting`` (not SMTP, or an
    impossible reply code) and closes. Use as a context manager; ``port`` is where it listens."""

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(5)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> GarbageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                try:
                    conn.sendall(self.greeting)
                    conn.settimeout(2)
                    conn.recv(1000)
                except OSError:
                    pass


def peer_tls_context(pki: TestPki, cert: str, trust: Path) -> ssl.SSLContext:
    """The peer MX's context: ``cert``'s chain, and a client certificate required, chained to the
    IGC-Santé TEST roots (the peer checks us as we check it)."""
    issued = pki.certs[cert]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(issued.chain_path), str(issued.key_path))
    ctx.load_verify_locations(cafile=str(trust))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_peer(
    handler: PeerHandler,
    tls_context: ssl.SSLContext | None,
    smtp_class: type[RecordingSMTP] = RecordingSMTP,
    **smtp: Any,
) -> Iterator[int]:
    """Run a peer MX on 127.0.0.1; yields its port. ``tls_context`` None: no STARTTLS.
    ``smtp_class``: the server's SMTP session (a broken or hostile peer)."""
    port = free_port()
    controller = PeerController(
        handler,
        hostname="127.0.0.1",
        port=port,
        server_hostname="mx.peer.test",
        tls_context=tls_context,
        require_starttls=tls_context is not None,
        **smtp,
    )
    controller.smtp_class = smtp_class
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
