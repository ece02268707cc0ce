"""SMTP smuggling (CVE-2023-51764 family) and STARTTLS command injection (CVE-2011-0411) against
the MX, over real TLS: every variant is refused, the connection closed, nothing delivered, and
above all no second message comes out of one DATA."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.mta.conftest import DOCTOR, REMOTE, Mta, in_thread

SENDER = f"dr.b@{REMOTE}"
SMUGGLED = (
    f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{DOCTOR}>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"
).encode()


class TlsPeer:
    """A peer operator speaking raw SMTP over TLS (the bytes are ours to choose)."""

    def __init__(self, mta: Mta) -> None:
        self.raw = socket.create_connection(("127.0.0.1", mta.mx_port), timeout=10)
        self.file = self.raw.makefile("rb")
        assert self.reply().startswith(b"220 ")
        self.send(b"EHLO mx.peer.test\r\n")
        assert b"STARTTLS" in self.reply()
        self.send(b"STARTTLS\r\n")
        assert self.reply().startswith(b"220 ")
        self.file.close()
        self.sock = mta.peer_context("peer-valid").wrap_socket(self.raw)
        self.file = self.sock.makefile("rb")
        self.send(b"EHLO mx.peer.test\r\n")
        assert self.reply().startswith(b"250")

    def send(self, data: bytes) -> None:
        (getattr(self, "sock", None) or self.raw).sendall(data)

    def reply(self) -> bytes:
        out = b""
        while True:
            line = self.file.readline()
            out += line
            if not line or line[3:4] != b"-":
                return out

    def closed(self) -> bool:
        try:
            return self.file.readline() == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.file.close()
        getattr(self, "sock", self.raw).close()


def smuggle(mta: Mta, body: bytes, *, refused: bool = True) -> tuple[list[bytes], bool]:
    peer = TlsPeer(mta)
    try:
        peer.send(f"MAIL FROM:<{SENDER}>\r\n".encode())
        first = [peer.reply()]
        peer.send(f"RCPT TO:<{DOCTOR}>\r\n".encode())
        first.append(peer.reply())
        peer.send(b"DATA\r\n")
        first.append(peer.reply())
        peer.send(body)
        first.append(peer.reply())
        return first, peer.closed() if refused else False
    finally:
        peer.close()


@pytest.mark.parametrize(
    ("ending", "refusal"),
    [
        (b"\n.\n", b"550 5.5.2 Error: bare <LF> received"),
        (b"\n.\r\n", b"550 5.5.2 Error: bare <LF> received"),
        (b"\r.\r", b"550 5.5.2 Error: bare <CR> received"),
        (b"\r\n.\n", b"550 5.5.2 Error: bare <LF> received"),
        (b"\r.\r\n", b"550 5.5.2 Error: bare <CR> received"),
    ],
    ids=["LF.LF", "LF.CRLF", "CR.CR", "CRLF.LF", "CR.CRLF"],
)
async def test_smuggling_variant_is_refused_and_nothing_delivered(
    mta: Mta, ending: bytes, refusal: bytes
) -> None:
    body = b"Subject: real\r\n\r\nhello" + ending + SMUGGLED + b".\r\n"
    replies, closed = await in_thread(lambda: smuggle(mta, body))
    assert replies[0].startswith(b"250")
    assert replies[1].startswith(b"250")
    assert replies[2].startswith(b"354")
    assert replies[3].startswith(refusal)
    assert closed
    assert await mta.inbox(DOCTOR) == []


async def test_bare_lf_in_a_header_is_refused(mta: Mta) -> None:
    replies, closed = await in_thread(
        lambda: smuggle(mta, b"Subject: x\nTo: y\r\n\r\nbody\r\n.\r\n")
    )
    assert replies[3].startswith(b"550 5.5.2 Error: bare <LF> received")
    assert closed
    assert await mta.inbox(DOCTOR) == []


async def test_dot_stuffing_is_undone(mta: Mta) -> None:
    replies, _ = await in_thread(
        lambda: smuggle(mta, b"Subject: x\r\n\r\n..leading dot\r\n...\r\n.\r\n", refused=False)
    )
    assert replies[3].startswith(b"250 2.0.0")
    (stored,) = await mta.inbox(DOCTOR)
    assert stored.endswith(b"\r\n\r\n.leading dot\r\n..\r\n")


async def test_bare_lf_command_is_refused_and_closed(mta: Mta) -> None:
    def attempt() -> tuple[bytes, bool]:
        peer = TlsPeer(mta)
        try:
            peer.send(b"NOOP\n")
            return peer.reply(), peer.closed()
        finally:
            peer.close()

    reply, closed = await in_thread(attempt)
    assert reply.startswith(b"550 5.5.2 Error: bare <LF> received")
    assert closed


async def test_commands_pipelined_after_starttls_are_refused(mta: Mta) -> None:
    def attempt() -> tuple[bytes, bool]:
        sock = socket.create_connection(("127.0.0.1", mta.mx_port), timeout=10)
        f = sock.makefile("rb")
        try:
            f.readline()
            sock.sendall(b"EHLO x\r\n")
            while f.readline()[3:4] == b"-":
                pass
            # The injected command rides in clear behind STARTTLS.
            sock.sendall(b"STARTTLS\r\nMAIL FROM:<" + SENDER.encode() + b">\r\n")
            reply = f.readline()
            return reply, f.readline() == b""
        finally:
            f.close()
            sock.close()

    reply, closed = await in_thread(attempt)
    assert reply.startswith(b"554 5.5.0 Error: SMTP protocol synchronization")
    assert closed


async def test_legitimate_pipelining_works(mta: Mta) -> None:
    def attempt() -> list[bytes]:
        peer = TlsPeer(mta)
        try:
            peer.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{DOCTOR}>\r\nDATA\r\n".encode())
            replies = [peer.reply(), peer.reply(), peer.reply()]
            peer.send(b"Subject: ok\r\n\r\nok\r\n.\r\nQUIT\r\n")
            replies += [peer.reply(), peer.reply()]
            return replies
        finally:
            peer.close()

    replies = await in_thread(attempt)
    assert [r[:3] for r in replies] == [b"250", b"250", b"354", b"250", b"221"]
    assert len(await mta.inbox(DOCTOR)) == 1
