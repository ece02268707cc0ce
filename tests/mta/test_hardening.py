"""What a hostile or broken client, or a failure behind the server, must not achieve: a session
going on half set up, a message body read as commands, an audit trail blocked by one message,
unbounded sessions, password guessing by reconnecting, INS numbers in the audit trail."""

from __future__ import annotations

import base64
import contextlib
import smtplib
import socket
import ssl
import time

from mta.smtpd import AuthThrottle, ConnectionBudget, Limits
from tests.mta.conftest import DOCTOR, HOSTED, PASSWORD, REMOTE, Mta, RawClient, in_thread
from tests.mta.test_smuggling import TlsPeer

SENDER = f"dr.b@{REMOTE}"


async def test_certificate_check_failure_ends_the_session(mta: Mta) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CRL backend down")

    mta.mx.handler.verifier.verify = broken  # type: ignore[attr-defined,method-assign]

    def attempt() -> bytes:
        client = smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=10)
        client.ehlo("x")
        client.starttls(context=mta.peer_context("peer-revoked"))
        try:
            client.ehlo("x")
            return client.ehlo_resp or b""
        except smtplib.SMTPServerDisconnected:
            return b"closed"
        finally:
            client.close()

    # Never "250 Sender OK" for a certificate nobody could judge.
    reply = await in_thread(attempt)
    assert reply == b"closed" or reply.startswith(b"4.7.0 TLS session setup failed")
    assert await mta.inbox(DOCTOR) == []


class FailingSink:
    """A blob writer that breaks on its third chunk (a full disk)."""

    def __init__(self) -> None:
        self.writes = 0

    async def write(self, chunk: bytes) -> None:
        self.writes += 1
        if self.writes >= 3:
            raise OSError(28, "No space left on device")

    async def commit(self) -> str:
        raise AssertionError("never reached")

    def abort(self) -> None:
        pass


async def test_failure_while_receiving_hangs_up_instead_of_reading_the_body(mta: Mta) -> None:
    mta.mx.blob_writer = FailingSink

    def attempt() -> tuple[bytes, bool]:
        peer = TlsPeer(mta)
        try:
            peer.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{DOCTOR}>\r\nDATA\r\n".encode())
            assert [peer.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
            body = b"Subject: x\r\n\r\n" + b"X" * 76 * 20_000 + b"\r\n" + b"NOOP\r\n" * 50
            peer.send(body + b"VRFY smuggled\r\n.\r\n")
            return peer.reply(), peer.closed()
        finally:
            peer.close()

    reply, closed = await in_thread(attempt)
    assert reply.startswith(b"421 4.3.0")
    assert closed


async def test_non_utf8_command_is_refused_and_the_audit_goes_on(mta: Mta) -> None:
    def attempt() -> bytes:
        peer = TlsPeer(mta)
        try:
            peer.send(b"MAIL FROM:<a\xff@" + REMOTE.encode() + b"> SMTPUTF8\r\n")
            return peer.reply()
        finally:
            peer.close()

    assert (await in_thread(attempt)).startswith(b"500 5.5.2 Error: command is not valid UTF-8")
    await mta.audit.flush()
    assert mta.audit.dropped == 0
    assert not mta.audit._pending


async def test_malformed_sender_is_refused_on_the_mx(mta: Mta) -> None:
    def attempt() -> bytes:
        peer = TlsPeer(mta)
        try:
            peer.send(f"MAIL FROM:<a..b@{REMOTE}>\r\n".encode())
            return peer.reply()
        finally:
            peer.close()

    assert (await in_thread(attempt)).startswith(b"501 5.1.7")


async def test_implicit_tls_port_counts_connections_before_the_handshake(users: Mta) -> None:
    mta = users
    mta.submission_tls.budget = ConnectionBudget(Limits(max_connections_per_ip=2))
    idle = [socket.create_connection(("127.0.0.1", mta.submission_tls_port)) for _ in range(2)]
    try:
        third = socket.create_connection(("127.0.0.1", mta.submission_tls_port), timeout=5)
        with third:
            # Closed at once, without a handshake.
            assert await in_thread(lambda: third.recv(10)) == b""
    finally:
        for s in idle:
            s.close()


async def test_patient_ins_is_masked_in_refusal_records(users: Mta) -> None:
    mta = users
    ins = "279035121518989"

    def attempt() -> tuple[int, bytes]:
        client = smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=10)
        try:
            client.ehlo("x")
            client.starttls(context=mta.client_context())
            client.ehlo("x")
            client.login(DOCTOR, PASSWORD)
            return client.mail(f"{ins}@patient.mssante.fr")
        finally:
            client.quit()

    code, _ = await in_thread(attempt)
    assert code == 553
    await mta.audit.flush()
    records = await mta.store.tail_audit(limit=50)
    assert records
    assert all(ins not in repr(r) for r in records)


async def test_failed_logins_are_remembered_across_connections(users: Mta) -> None:
    mta = users
    mta.submission.auth_throttle = AuthThrottle(max_failures=4)

    def login(password: str) -> int:
        client = smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=10)
        try:
            client.ehlo("x")
            client.starttls(context=mta.client_context())
            client.ehlo("x")
            client.user, client.password = DOCTOR, password
            try:
                return client.auth("PLAIN", client.auth_plain)[0]
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code
        finally:
            client.close()

    outcomes = [await in_thread(lambda: login("mauvais")) for _ in range(4)]
    assert outcomes == [535, 535, 535, 535]
    # Even the right password is not checked now: the client's IP is throttled.
    assert await in_thread(lambda: login(PASSWORD)) == 454


async def test_trickling_client_is_cut_off(mta: Mta) -> None:
    mta.mx.limits = Limits(timeout=1.0)

    def attempt() -> tuple[bytes, float]:
        client = RawClient(mta.mx_port)
        try:
            client.reply()
            started = time.monotonic()
            for octet in b"NOOP":  # each octet within the per-read timeout, the line not
                client.send(bytes([octet]))
                time.sleep(0.4)
            return client.reply(), time.monotonic() - started
        finally:
            client.close()

    reply, elapsed = await in_thread(attempt)
    assert reply.startswith(b"421 4.4.2")
    assert elapsed < 3


async def test_unknown_parameter_has_an_enhanced_code_and_counts_as_an_error(mta: Mta) -> None:
    mta.mx.limits = Limits(max_errors=2, timeout=10)

    def attempt() -> list[bytes]:
        peer = TlsPeer(mta)
        try:
            peer.send(f"MAIL FROM:<{SENDER}> FOO=1\r\n".encode())
            first = peer.reply()
            peer.send(f"MAIL FROM:<{SENDER}> FOO=1\r\n".encode())
            return [first, peer.reply(), peer.reply()]
        finally:
            peer.close()

    first, second, last = await in_thread(attempt)
    assert first.startswith(b"555 5.5.4")
    assert second.startswith(b"555 5.5.4")
    assert last.startswith(b"421 4.7.0 Too many errors")


async def test_long_auth_initial_response_is_read(users: Mta) -> None:
    mta = users

    def attempt() -> int:
        client = smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=10)
        try:
            client.ehlo("x")
            client.starttls(context=mta.client_context())
            client.ehlo("x")
            token = base64.b64encode(f"\0{DOCTOR}\0{'x' * 3000}".encode()).decode()
            return client.docmd("AUTH", f"PLAIN {token}")[0]
        finally:
            client.close()

    assert await in_thread(attempt) == 535  # checked (and wrong), not "line too long"


async def test_auth_response_with_a_bare_lf_is_refused(users: Mta) -> None:
    mta = users

    def attempt() -> bytes:
        raw = socket.create_connection(("127.0.0.1", mta.submission_port), timeout=10)
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"EHLO x\r\n")
        while f.readline()[3:4] == b"-":
            pass
        raw.sendall(b"STARTTLS\r\n")
        f.readline()
        f.close()
        sock = mta.client_context().wrap_socket(raw)
        f = sock.makefile("rb")
        try:
            sock.sendall(b"EHLO x\r\n")
            while f.readline()[3:4] == b"-":
                pass
            sock.sendall(b"AUTH PLAIN\r\n")
            assert f.readline().startswith(b"334")
            sock.sendall(base64.b64encode(f"\0{DOCTOR}\0{PASSWORD}".encode()) + b"\n")
            return f.readline()
        finally:
            f.close()
            sock.close()

    assert (await in_thread(attempt)).startswith(b"550 5.5.2 Error: bare <LF> received")


async def test_store_failure_during_auth_is_a_temporary_failure(users: Mta) -> None:
    mta = users

    async def broken(address: str, password: str) -> bool:
        raise ConnectionError("database unreachable")

    mta.store.verify_password = broken  # type: ignore[method-assign]

    def attempt() -> int:
        client = smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=10)
        try:
            client.ehlo("x")
            client.starttls(context=mta.client_context())
            client.ehlo("x")
            client.user, client.password = DOCTOR, PASSWORD
            try:
                return client.auth("PLAIN", client.auth_plain)[0]
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code
        finally:
            client.close()

    assert await in_thread(attempt) == 454


async def test_postmaster_without_domain_is_accepted(mta: Mta) -> None:
    await mta.store.create_bal(f"postmaster@{HOSTED}")

    def attempt() -> dict[str, tuple[int, bytes]]:
        client = smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=10)
        try:
            client.ehlo("x")
            client.starttls(context=mta.peer_context("peer-valid"))
            client.ehlo("x")
            return client.sendmail(SENDER, ["Postmaster"], b"Subject: hello\r\n\r\nhi\r\n")
        finally:
            client.quit()

    assert await in_thread(attempt) == {}
    assert len(await mta.inbox(f"postmaster@{HOSTED}")) == 1


async def test_stopping_tells_idle_sessions_to_come_back(mta: Mta) -> None:
    client = RawClient(mta.mx_port)
    try:
        assert (await in_thread(client.reply)).startswith(b"220")
        await mta.mx.stop()
        assert (await in_thread(client.reply)).startswith(b"421 4.3.2")
    finally:
        client.close()


async def test_handshake_garbage_is_not_an_error_in_the_logs(mta: Mta, caplog) -> None:  # type: ignore[no-untyped-def]
    def attempt() -> None:
        raw = socket.create_connection(("127.0.0.1", mta.mx_port), timeout=10)
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"STARTTLS\r\n")
        f.readline()
        raw.sendall(b"\x16\x03\x01\x00\x05garbage-not-tls")
        raw.settimeout(5)
        with contextlib.suppress(OSError, ssl.SSLError):
            raw.recv(100)
        f.close()
        raw.close()

    await in_thread(attempt)
    assert not [r for r in caplog.records if r.levelname == "ERROR" and r.name == "mta.smtpd"]
