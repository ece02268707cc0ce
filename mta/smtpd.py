"""The SMTP server: listeners, sessions and their limits, over asyncio streams.

One task per connection runs a :class:`Connection`: it reads command lines, checks them with the
pure layer (:mod:`mta.smtp_proto`, :mod:`mta.dsn_params`), keeps the SMTP state (greeting, EHLO,
TLS, AUTH, MAIL, RCPT, DATA) and asks a :class:`SessionHandler` for every decision that depends on
the listener: the MX (:mod:`mta.mx`) and submission (:mod:`mta.submission`) are two handlers of
this one server. Replies come from :mod:`mta.replies` only.

Why not aiosmtpd's server: its command loop answers with texts of its own (no enhanced status
codes), reads a whole message into memory before its DATA hook, refuses the DSN parameters at MAIL
and RCPT, and calls authenticators synchronously (our password check is asynchronous). Replacing
those parts would have left nothing of it; Python 3.11's ``StreamWriter.start_tls`` gives the one
thing it did that is hard to write (the STARTTLS upgrade of a stream). aiosmtpd serves as the
independent peer in the outbound tests instead.

Limits (every one answers with a reply, never a hang): connections in all and per client IP
(421 4.7.0 at connect), command line length (500 5.5.2), idle time per read (421 4.4.2), errors
per session (421 4.7.0 after ``max_errors`` 4xx/5xx replies, Postfix's ``smtpd_hard_error_limit``),
recipients per message (452 4.5.3), message size (552 5.3.4, declared with SIZE= or counted),
authentication failures (a delay after each, 421 after ``max_auth_failures``).

Smuggling and injection, as Postfix 3.9 with ``smtpd_forbid_bare_newline = reject``: a command
line that does not end in CRLF or holds a bare CR is refused and the connection closed; a message
with a bare LF or CR is refused after its end of data (which is ``<CRLF>.<CRLF>`` only) and the
connection closed, so nothing the peer sent after it is ever read as commands; commands pipelined
after STARTTLS (CVE-2011-0411) are refused before the handshake and the connection closed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import secrets
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from cryptography import x509

from mta import replies
from mta.dsn_params import MailParams, ParamError, RcptParams, parse_mail_params, parse_rcpt_params
from mta.policy import RouteKind
from mta.replies import Reply
from mta.smtp_proto import (
    MAX_COMMAND_LINE,
    Command,
    DataProblem,
    DataReader,
    check_line_ending,
    data_refusal,
    parse_command,
    parse_path,
)
from pki.tls import peer_certificate
from pki.verify import Verdict

log = logging.getLogger(__name__)

READ_SIZE: Final = 64 * 1024
IN_MEMORY_MESSAGE: Final = 1024 * 1024
"""Messages up to this size are kept in memory until delivered; larger ones are streamed to a
blob as they arrive (a 25 MB message never sits in memory)."""
MAX_DISCARDED_LINE: Final = 1024 * 1024
"""An over-long command line is read and dropped up to this many octets, then we hang up."""
STOP_GRACE: Final = 10.0
"""Seconds a stopping listener lets busy sessions (receiving or delivering a message) finish."""
MAX_AUTH_LINE: Final = 12 * 1024
"""Octets in one SASL response line (an XOAUTH2 token can be several KB)."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_size: int = 26_214_400
    max_recipients: int = 100
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    max_errors: int = 20
    timeout: float = 300.0
    max_auth_failures: int = 3
    auth_failure_delay: float = 2.0


@dataclass(slots=True)
class Session:
    """What is known about one connection; handlers read it and may annotate it."""

    id: str
    listener: str
    peer_ip: str
    peer_port: int
    helo: str | None = None
    esmtp: bool = False
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_bits: int | None = None
    peer_cert: x509.Certificate | None = None
    # The MX's judgement of the client certificate, given once after the TLS handshake.
    cert_verdict: Verdict | None = None
    user: str | None = None  # the authenticated BAL address (submission)
    auth_mechanism: str | None = None
    messages: int = 0

    @property
    def tls(self) -> bool:
        return self.tls_version is not None

    @property
    def peer_dn(self) -> str | None:
        return self.peer_cert.subject.rfc4514_string() if self.peer_cert is not None else None


@dataclass(frozen=True, slots=True)
class AcceptedRecipient:
    address: str  # as the handler normalised it
    params: RcptParams
    kind: RouteKind


@dataclass(slots=True)
class Envelope:
    mail_from: str
    params: MailParams
    recipients: list[AcceptedRecipient] = field(default_factory=list)

    @property
    def smtputf8(self) -> bool:
        return self.params.smtputf8


@dataclass(frozen=True, slots=True)
class Message:
    """A received message: in memory (``data``) or already written to a blob (``blob``).
    ``size`` counts the octets received, without the trace header."""

    data: bytes | None
    blob: str | None
    size: int
    trace: bytes  # our Received header, on top of the stored message

    @property
    def stored_size(self) -> int:
        return self.size + len(self.trace)


class Exchange(Protocol):
    """One SASL round trip: send a 334 challenge, get the decoded response (None: the client
    cancelled with ``*``, and was answered)."""

    def __call__(self, challenge: bytes) -> Awaitable[bytes | None]: ...


class SaslMechanism(Protocol):
    """A SASL mechanism (RFC 4954). ``authenticate`` returns the authenticated BAL address, or
    None when the credentials are refused; it may raise :class:`AuthUnavailable` (454)."""

    name: str

    async def authenticate(
        self, session: Session, initial: bytes | None, exchange: Exchange
    ) -> str | None: ...


class AuthUnavailable(Exception):
    """The credentials could not be checked now (store or identity provider down)."""


class AuthCancelled(Exception):
    """The client cancelled the exchange; it has been answered."""


class SessionHandler(Protocol):
    """The decisions of one kind of listener. Each hook returns the reply to send."""

    name: str
    require_tls: bool  # MAIL refused with 530 5.7.0 before STARTTLS (or on a plain listener)
    require_auth: bool  # MAIL refused with 530 5.7.0 before AUTH
    mechanisms: Mapping[str, SaslMechanism]  # offered only once TLS is active

    async def on_tls(self, session: Session, ssl_object: ssl.SSLObject) -> None:
        """The TLS handshake succeeded (STARTTLS or implicit TLS)."""

    async def on_mail(self, session: Session, address: str, params: MailParams) -> Reply: ...

    async def on_rcpt(
        self, session: Session, envelope: Envelope, address: str, params: RcptParams
    ) -> Reply | AcceptedRecipient: ...

    def max_message_size(self, envelope: Envelope) -> int:
        """The limit for this transaction (lowered for patients)."""

    def too_big(self, envelope: Envelope, size: int) -> Reply:
        """The refusal of a message over :meth:`max_message_size`."""

    def trace_header(self, session: Session, envelope: Envelope, queue_id: str) -> bytes:
        """Our Received header for the message about to be received."""

    async def on_message(
        self, session: Session, envelope: Envelope, message: Message, queue_id: str
    ) -> Reply:
        """Deliver or queue; the 250 is sent only once this returns it."""

    def on_refusal(self, session: Session, stage: str, reply: Reply) -> None:
        """A command was refused (audit trail)."""

    def on_tls_failure(self, session: Session, error: ssl.SSLError) -> None:
        """The TLS handshake failed (audit trail)."""


class Closed(Exception):
    """The client went away, or we hung up."""


class Listener:
    """One listening socket for a handler: plain (STARTTLS offered when ``tls_context`` is given)
    or implicit TLS (``implicit_tls``, port 465)."""

    def __init__(
        self,
        handler: SessionHandler,
        *,
        hostname: str,
        tls_context: ssl.SSLContext | None,
        limits: Limits,
        blob_writer: Callable[[], BlobSink],
        implicit_tls: bool = False,
    ) -> None:
        if implicit_tls and tls_context is None:
            raise ValueError("implicit TLS needs a TLS context")
        self.handler = handler
        self.hostname = hostname
        self.tls_context = tls_context
        self.limits = limits
        self.implicit_tls = implicit_tls
        self.blob_writer = blob_writer
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._per_ip: Counter[str] = Counter()
        self.accepted = 0
        self.refused_connections = 0

    @property
    def sockets(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._serve,
            host,
            port,
            ssl=self.tls_context if self.implicit_tls else None,
            limit=READ_SIZE,
            reuse_address=True,
            backlog=1024,
        )

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        idle = [c for c in self._connections if not c.busy]
        for c in idle:
            c.task.cancel()
        busy = [c.task for c in self._connections if c.busy]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
        remaining = [c.task for c in self._connections]
        if remaining:
            await asyncio.wait(remaining, timeout=STOP_GRACE)
        await self._server.wait_closed()
        self._server = None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        ip = str(peer[0])
        limits = self.limits
        if (
            len(self._connections) >= limits.max_connections
            or self._per_ip[ip] >= limits.max_connections_per_ip
        ):
            self.refused_connections += 1
            with contextlib.suppress(Exception):
                writer.write(replies.TOO_MANY_CONNECTIONS.wire())
                await asyncio.wait_for(writer.drain(), 5)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        session = Session(secrets.token_hex(6), self.handler.name, ip, int(peer[1]))
        connection = Connection(self, reader, writer, session, task)
        self._connections.add(connection)
        self._per_ip[ip] += 1
        self.accepted += 1
        try:
            await connection.run()
        except (Closed, ConnectionError, asyncio.CancelledError, TimeoutError):
            pass
        except Exception:
            log.exception("session %s failed", session.id)
        finally:
            self._connections.discard(connection)
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)


class BlobSink(Protocol):
    """Where a large message is streamed (``store.blobs.writer()``)."""

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> str: ...

    def abort(self) -> None: ...


class Connection:
    def __init__(
        self,
        listener: Listener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
        task: asyncio.Task[None],
    ) -> None:
        self.listener = listener
        self.handler = listener.handler
        self.limits = listener.limits
        self.reader = reader
        self.writer = writer
        self.session = session
        self.task = task
        self.busy = False
        self.errors = 0
        self.auth_failures = 0
        self.envelope: Envelope | None = None
        self._buf = bytearray()
        self._eof = False

    # -- I/O --------------------------------------------------------------------------------------

    async def _fill(self) -> None:
        if self._eof:
            raise Closed
        try:
            async with asyncio.timeout(self.limits.timeout):
                chunk = await self.reader.read(READ_SIZE)
        except TimeoutError:
            await self._send(replies.TIMEOUT)
            raise Closed from None
        if not chunk:
            self._eof = True
            raise Closed
        self._buf += chunk

    async def _read_line(self, limit: int = MAX_COMMAND_LINE) -> bytes | None:
        """The next line, LF included; None when it was longer than ``limit`` (then dropped)."""
        start = 0
        while True:
            lf = self._buf.find(b"\n", start)
            if lf >= 0:
                if lf + 1 > limit:
                    del self._buf[: lf + 1]
                    return None
                line = bytes(self._buf[: lf + 1])
                del self._buf[: lf + 1]
                return line
            if len(self._buf) > limit:
                await self._drop_long_line()
                return None
            start = len(self._buf)
            await self._fill()

    async def _drop_long_line(self) -> None:
        dropped = 0
        while True:
            lf = self._buf.find(b"\n")
            if lf >= 0:
                del self._buf[: lf + 1]
                return
            dropped += len(self._buf)
            self._buf.clear()
            if dropped > MAX_DISCARDED_LINE:
                await self._send(replies.LINE_TOO_LONG)
                raise Closed
            await self._fill()

    async def _send(self, reply: Reply | bytes) -> None:
        data = reply.wire() if isinstance(reply, Reply) else reply
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.limits.timeout):
                await self.writer.drain()
        except TimeoutError:
            raise Closed from None

    async def _reply(self, reply: Reply, stage: str = "") -> None:
        """Send ``reply``; a refusal counts against the error limit."""
        if reply.code >= 400:
            if stage:
                self.handler.on_refusal(self.session, stage, reply)
            self.errors += 1
            if self.errors >= self.limits.max_errors and reply.code != 421:
                await self._send(reply)
                await self._send(replies.TOO_MANY_ERRORS)
                raise Closed
        await self._send(reply)
        if reply.code == 421:
            raise Closed

    # -- session ------------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.listener.implicit_tls:
            ssl_object = self.writer.get_extra_info("ssl_object")
            if ssl_object is None:
                raise Closed
            await self._tls_established(ssl_object)
        await self._send(replies.greeting(self.listener.hostname))
        while True:
            line = await self._read_line()
            if line is None:
                await self._reply(replies.LINE_TOO_LONG)
                continue
            bad_ending = check_line_ending(line)
            if bad_ending is not None:
                self.handler.on_refusal(self.session, "command", bad_ending)
                await self._send(bad_ending)
                raise Closed
            parsed = parse_command(line[:-2])
            if isinstance(parsed, Reply):
                await self._reply(parsed, "command")
                continue
            try:
                await self._dispatch(parsed)
            except (Closed, ConnectionError, asyncio.CancelledError):
                raise
            except Exception:
                # A bug or an outage behind a hook: the client is told to retry, the session
                # goes on (the transaction, if any, is abandoned).
                log.exception("session %s: %s failed", self.session.id, parsed.verb)
                self.envelope = None
                await self._reply(replies.STORE_UNAVAILABLE)

    async def _dispatch(self, command: Command) -> None:
        verb, argument = command.verb, command.argument
        if verb == "EHLO" or verb == "HELO":
            await self._hello(verb, argument)
        elif verb == "MAIL":
            await self._mail(argument)
        elif verb == "RCPT":
            await self._rcpt(argument)
        elif verb == "DATA":
            await self._data(argument)
        elif verb == "RSET":
            self.envelope = None
            await self._reply(replies.OK)
        elif verb == "NOOP":
            await self._reply(replies.OK)
        elif verb == "QUIT":
            await self._send(replies.CLOSING)
            raise Closed
        elif verb == "STARTTLS":
            await self._starttls(argument)
        elif verb == "AUTH":
            await self._auth(argument)
        elif verb in ("VRFY", "EXPN"):
            # No address harvesting (RFC 5321 §7.3 allows refusing both).
            await self._reply(Reply(502, "5.5.1", "VRFY and EXPN are disabled"), verb.lower())
        elif verb == "HELP":
            await self._reply(Reply(214, "2.0.0", "See RFC 5321"))
        elif verb in ("BDAT", "ETRN", "TURN", "ATRN"):
            await self._reply(replies.COMMAND_NOT_IMPLEMENTED, "command")
        else:
            await self._reply(replies.COMMAND_UNRECOGNIZED, "command")

    def _extensions(self) -> list[str]:
        extensions = [
            "PIPELINING",
            f"SIZE {self.limits.max_message_size}",
        ]
        if self.listener.tls_context is not None and not self.session.tls:
            extensions.append("STARTTLS")
        if self.session.tls and self.handler.mechanisms:
            extensions.append("AUTH " + " ".join(self.handler.mechanisms))
        extensions += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8"]
        return extensions

    async def _hello(self, verb: str, argument: str) -> None:
        if not argument or len(argument.split()) != 1:
            await self._reply(Reply(501, "5.5.4", f"Syntax: {verb} hostname"), "helo")
            return
        self.session.helo = argument
        self.session.esmtp = verb == "EHLO"
        self.envelope = None
        if verb == "EHLO":
            await self._send(replies.ehlo(self.listener.hostname, self._extensions()))
        else:
            await self._send(replies.helo(self.listener.hostname))

    def _precondition(self) -> Reply | None:
        if self.session.helo is None:
            return replies.NEED_EHLO
        if self.handler.require_tls and not self.session.tls:
            return replies.STARTTLS_REQUIRED
        if self.handler.require_auth and self.session.user is None:
            return replies.AUTH_REQUIRED
        return None

    async def _mail(self, argument: str) -> None:
        refusal = self._precondition()
        if refusal is None and self.envelope is not None:
            refusal = replies.NESTED_MAIL
        if refusal is not None:
            await self._reply(refusal, "mail")
            return
        path = parse_path(argument, "FROM:")
        if isinstance(path, Reply):
            await self._reply(path, "mail")
            return
        if path.parameters and not self.session.esmtp:
            await self._reply(replies.SYNTAX_ERROR, "mail")
            return
        try:
            params = parse_mail_params(path.parameters, utf8=True)
        except ParamError as exc:
            await self._send(exc.reply().encode("ascii") + b"\r\n")
            self.errors += 1
            return
        if params.size is not None and params.size > self.limits.max_message_size:
            await self._reply(replies.message_too_big(self.limits.max_message_size), "mail")
            return
        if not params.smtputf8 and not path.address.isascii():
            await self._reply(replies.INVALID_SENDER_ADDRESS, "mail")
            return
        reply = await self.handler.on_mail(self.session, path.address, params)
        if reply.code < 400:
            self.envelope = Envelope(path.address, params)
        await self._reply(reply, "mail")

    async def _rcpt(self, argument: str) -> None:
        refusal = self._precondition()
        if refusal is None and self.envelope is None:
            refusal = replies.NEED_MAIL
        if refusal is not None:
            await self._reply(refusal, "rcpt")
            return
        assert self.envelope is not None
        if len(self.envelope.recipients) >= self.limits.max_recipients:
            await self._reply(replies.TOO_MANY_RECIPIENTS, "rcpt")
            return
        path = parse_path(argument, "TO:")
        if isinstance(path, Reply) or not path.address:
            await self._reply(replies.SYNTAX_ERROR, "rcpt")
            return
        if path.parameters and not self.session.esmtp:
            await self._reply(replies.SYNTAX_ERROR, "rcpt")
            return
        try:
            params = parse_rcpt_params(path.parameters, utf8=self.envelope.smtputf8)
        except ParamError as exc:
            await self._send(exc.reply().encode("ascii") + b"\r\n")
            self.errors += 1
            return
        outcome = await self.handler.on_rcpt(self.session, self.envelope, path.address, params)
        if isinstance(outcome, Reply):
            await self._reply(outcome, "rcpt")
            return
        self.envelope.recipients.append(outcome)
        await self._reply(replies.RECIPIENT_OK)

    async def _data(self, argument: str) -> None:
        refusal = self._precondition()
        if refusal is None and self.envelope is None:
            refusal = replies.NEED_MAIL
        if refusal is None and argument:
            refusal = replies.SYNTAX_ERROR
        if refusal is None and self.envelope is not None and not self.envelope.recipients:
            refusal = replies.NEED_RCPT
        if refusal is not None:
            await self._reply(refusal, "data")
            return
        envelope = self.envelope
        assert envelope is not None
        self.envelope = None
        queue_id = secrets.token_hex(8).upper()
        limit = min(self.handler.max_message_size(envelope), self.limits.max_message_size)
        trace = self.handler.trace_header(self.session, envelope, queue_id)
        await self._send(replies.START_DATA)
        self.busy = True
        try:
            message, problem, message_size = await self._receive(limit, trace)
            if problem is not DataProblem.NONE:
                if problem is DataProblem.TOO_BIG:
                    reply = self.handler.too_big(envelope, message_size)
                    await self._reply(reply, "data")
                    return
                # Bare LF/CR: refuse and hang up, so nothing after it is read as commands.
                reply = data_refusal(problem, limit)
                self.handler.on_refusal(self.session, "data", reply)
                await self._send(reply)
                raise Closed
            assert message is not None
            reply = await self.handler.on_message(self.session, envelope, message, queue_id)
            if reply.code < 400:
                self.session.messages += 1
            await self._reply(reply, "" if reply.code < 400 else "message")
        finally:
            self.busy = False

    async def _receive(self, limit: int, trace: bytes) -> tuple[Message | None, DataProblem, int]:
        reader = DataReader(limit)
        parts: list[bytes] = []
        in_memory = 0
        sink: BlobSink | None = None
        try:
            while True:
                if self._buf:
                    content, used = reader.feed(bytes(self._buf))
                    del self._buf[:used]
                    if content:
                        if sink is None and in_memory + len(content) > IN_MEMORY_MESSAGE:
                            sink = self.listener.blob_writer()
                            await sink.write(trace)
                            for part in parts:
                                await sink.write(part)
                            parts.clear()
                        if sink is not None:
                            await sink.write(content)
                        else:
                            parts.append(content)
                            in_memory += len(content)
                    if reader.done:
                        break
                    if reader.problem is not DataProblem.NONE and sink is not None:
                        sink.abort()
                        sink = None
                await self._fill()
            if reader.problem is not DataProblem.NONE:
                return None, reader.problem, reader.size
            if sink is not None:
                digest = await sink.commit()
                sink = None
                return Message(None, digest, reader.size, trace), DataProblem.NONE, reader.size
            message = Message(trace + b"".join(parts), None, reader.size, trace)
            return message, DataProblem.NONE, reader.size
        finally:
            if sink is not None:
                sink.abort()

    # -- TLS --------------------------------------------------------------------------------------

    async def _starttls(self, argument: str) -> None:
        context = self.listener.tls_context
        if argument:
            await self._reply(replies.SYNTAX_ERROR, "starttls")
            return
        if context is None:
            await self._reply(replies.COMMAND_NOT_IMPLEMENTED, "starttls")
            return
        if self.session.tls:
            await self._reply(replies.TLS_ALREADY_ACTIVE, "starttls")
            return
        pending = getattr(self.reader, "_buffer", b"")
        if self._buf or pending:
            # Commands sent in clear after STARTTLS would otherwise run as if they had been
            # sent over TLS (CVE-2011-0411).
            self.handler.on_refusal(self.session, "starttls", replies.PIPELINING_VIOLATION)
            await self._send(replies.PIPELINING_VIOLATION)
            raise Closed
        await self._send(replies.READY_FOR_TLS)
        try:
            async with asyncio.timeout(self.limits.timeout):
                await self.writer.start_tls(context)
        except ssl.SSLError as exc:
            self.handler.on_tls_failure(self.session, exc)
            raise Closed from None
        except (TimeoutError, ConnectionError, OSError):
            raise Closed from None
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is None:
            raise Closed
        # RFC 3207 §4.2: forget everything learnt before TLS; the client starts with EHLO again.
        self.session.helo = None
        self.session.esmtp = False
        self.envelope = None
        await self._tls_established(ssl_object)

    async def _tls_established(self, ssl_object: ssl.SSLObject) -> None:
        cipher = ssl_object.cipher()
        self.session.tls_version = ssl_object.version() or "TLS"
        if cipher is not None:
            self.session.tls_cipher = cipher[0]
            self.session.tls_bits = cipher[2]
        self.session.peer_cert = peer_certificate(ssl_object)
        await self.handler.on_tls(self.session, ssl_object)

    # -- AUTH (RFC 4954) ------------------------------------------------------------------------

    async def _auth(self, argument: str) -> None:
        if not self.handler.mechanisms:
            await self._reply(replies.COMMAND_NOT_IMPLEMENTED, "auth")
            return
        if self.session.helo is None or not self.session.esmtp:
            await self._reply(replies.NEED_EHLO, "auth")
            return
        if not self.session.tls:
            await self._reply(replies.ENCRYPTION_REQUIRED_FOR_AUTH, "auth")
            return
        if self.session.user is not None:
            await self._reply(replies.AUTH_ALREADY_DONE, "auth")
            return
        if self.envelope is not None:
            await self._reply(Reply(503, "5.5.1", "AUTH not allowed during a mail transaction"))
            return
        words = argument.split()
        if not 1 <= len(words) <= 2:
            await self._reply(replies.SYNTAX_ERROR, "auth")
            return
        mechanism = self.handler.mechanisms.get(words[0].upper())
        if mechanism is None:
            await self._reply(replies.AUTH_MECHANISM_UNSUPPORTED, "auth")
            return
        initial: bytes | None = None
        if len(words) == 2:
            decoded = _b64(words[1])
            if decoded is None:
                await self._reply(Reply(501, "5.5.2", "Cannot decode response"), "auth")
                return
            initial = decoded
        try:
            user = await mechanism.authenticate(self.session, initial, self._exchange)
        except AuthCancelled:
            return
        except AuthUnavailable:
            await self._reply(replies.AUTH_TEMPORARY_FAILURE, "auth")
            return
        if user is None:
            self.auth_failures += 1
            self.handler.on_refusal(self.session, "auth", replies.AUTH_FAILED)
            # A delay after each failure slows password guessing without tying up much.
            await asyncio.sleep(self.limits.auth_failure_delay)
            if self.auth_failures >= self.limits.max_auth_failures:
                await self._send(replies.AUTH_FAILED)
                await self._send(
                    Reply(421, "4.7.0", "Too many authentication failures / trop d'echecs")
                )
                raise Closed
            await self._reply(replies.AUTH_FAILED)
            return
        self.session.user = user
        self.session.auth_mechanism = mechanism.name
        await self._send(replies.AUTH_SUCCEEDED)

    async def _exchange(self, challenge: bytes) -> bytes | None:
        await self._send(b"334 " + base64.b64encode(challenge) + b"\r\n")
        line = await self._read_line(MAX_AUTH_LINE)
        if line is None:
            await self._reply(replies.AUTH_LINE_TOO_LONG, "auth")
            raise AuthCancelled
        text = line.rstrip(b"\r\n")
        if text == b"*":
            await self._reply(replies.AUTH_CANCELLED)
            raise AuthCancelled
        decoded = _b64(text.decode("ascii", errors="replace"))
        if decoded is None:
            await self._reply(Reply(501, "5.5.2", "Cannot decode response"), "auth")
            raise AuthCancelled
        return decoded


def _b64(text: str) -> bytes | None:
    if text == "=":  # RFC 4954 §4: an empty initial response
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
