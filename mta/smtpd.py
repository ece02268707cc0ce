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
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from cryptography import x509

from mta import replies
from mta.dsn_params import MailParams, ParamError, RcptParams, parse_mail_params, parse_rcpt_params
from mta.policy import RouteKind
from mta.replies import Reply, printable
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
from pki.tls import compact_tls_read_buffers, peer_certificate
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
    # The BALs ``user`` may send as (submission: looked up at MAIL, checked again on From:).
    send_as: list[str] | None = None
    auth_mechanism: str | None = None
    messages: int = 0

    @property
    def tls(self) -> bool:
        return self.tls_version is not None

    # The client certificate's subject as RFC 4514 text, set with peer_cert.
    peer_dn: str | None = None


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


class ConnectionBudget:
    """Connections in use, in all and per client IP; one budget may be shared by several
    listeners (submission's 587 and 465 count together)."""

    def __init__(self, limits: Limits) -> None:
        self.max_connections = limits.max_connections
        self.max_per_ip = limits.max_connections_per_ip
        self.in_use = 0
        self._per_ip: Counter[str] = Counter()

    def acquire(self, ip: str) -> bool:
        if self.in_use >= self.max_connections or self._per_ip[ip] >= self.max_per_ip:
            return False
        self.in_use += 1
        self._per_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.in_use -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]


class AuthThrottle:
    """Failed authentications per client IP over a sliding window, shared by every session (a
    client that reconnects does not start afresh, as with Dovecot's auth penalty): past
    ``max_failures`` in ``window`` seconds, AUTH is refused with 454 4.7.0 without even checking
    the credentials. Bounded: the oldest IPs are forgotten beyond ``max_ips``."""

    def __init__(self, *, max_failures: int = 10, window: float = 900.0, max_ips: int = 100_000):
        self.max_failures = max_failures
        self.window = window
        self.max_ips = max_ips
        self._failures: dict[str, list[float]] = {}

    def _recent(self, ip: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(ip, ()) if now - t < self.window]
        if times:
            self._failures[ip] = times
        else:
            self._failures.pop(ip, None)
        return times

    def blocked(self, ip: str) -> bool:
        return len(self._recent(ip, time.monotonic())) >= self.max_failures

    def failed(self, ip: str) -> None:
        now = time.monotonic()
        times = self._recent(ip, now)
        times.append(now)
        self._failures[ip] = times[-self.max_failures :]
        if len(self._failures) > self.max_ips:
            del self._failures[next(iter(self._failures))]


class Listener:
    """One listening socket for a handler: plain (STARTTLS offered when ``tls_context`` is given)
    or implicit TLS (``implicit_tls``, port 465; the handshake runs inside the session, after
    the connection limits, under the session timeout)."""

    def __init__(
        self,
        handler: SessionHandler,
        *,
        hostname: str,
        tls_context: ssl.SSLContext | None,
        limits: Limits,
        blob_writer: Callable[[], BlobSink],
        implicit_tls: bool = False,
        budget: ConnectionBudget | None = None,
        auth_throttle: AuthThrottle | None = None,
    ) -> None:
        if implicit_tls and tls_context is None:
            raise ValueError("implicit TLS needs a TLS context")
        self.handler = handler
        self.hostname = hostname
        self.tls_context = tls_context
        self.limits = limits
        self.implicit_tls = implicit_tls
        self.blob_writer = blob_writer
        self.budget = budget or ConnectionBudget(limits)
        self.auth_throttle = auth_throttle or AuthThrottle()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self.accepted = 0
        self.refused_connections = 0

    @property
    def sockets(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen; ``reuse_port``: several processes share the port (the kernel spreads the
        connections between them)."""
        self.stopping = False
        compact_tls_read_buffers()
        self._server = await asyncio.start_server(
            self._serve,
            host,
            port,
            limit=READ_SIZE,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )

    async def stop(self) -> None:
        """Stop accepting; idle sessions get 421 4.3.2 at once, busy ones (receiving or storing
        a message) finish their transaction first, for at most :data:`STOP_GRACE` seconds."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        for c in [c for c in self._connections if not c.busy]:
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
        if self.stopping or not self.budget.acquire(ip):
            self.refused_connections += 1
            with contextlib.suppress(Exception):
                refusal = replies.SHUTTING_DOWN if self.stopping else replies.TOO_MANY_CONNECTIONS
                if not self.implicit_tls:  # no TLS yet: nothing can be said on port 465
                    writer.write(refusal.wire())
                    await asyncio.wait_for(writer.drain(), 5)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        session = Session(secrets.token_hex(6), self.handler.name, ip, int(peer[1]))
        connection = Connection(self, reader, writer, session, task)
        self._connections.add(connection)
        self.accepted += 1
        try:
            await connection.run()
        except (Closed, ConnectionError, asyncio.CancelledError, TimeoutError, ssl.SSLError):
            pass
        except Exception:
            log.exception("session %s failed", session.id)
        finally:
            self._connections.discard(connection)
            self.budget.release(ip)
            with contextlib.suppress(Exception):
                if self.stopping and not connection.said_goodbye:
                    connection.queue(replies.SHUTTING_DOWN)
                connection.write_pending()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)


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
        self.said_goodbye = False
        self.errors = 0
        self.auth_failures = 0
        self.envelope: Envelope | None = None
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._out_size = 0
        self._eof = False

    # -- I/O --------------------------------------------------------------------------------------
    # Replies are queued and written when the session next waits for the client: a pipelining
    # client gets the replies to a batch of commands in one write (one TLS record, one syscall).

    def queue(self, reply: Reply | bytes) -> None:
        data = reply.wire() if isinstance(reply, Reply) else reply
        self._out.append(data)
        self._out_size += len(data)
        if reply is replies.CLOSING or (isinstance(reply, Reply) and reply.code == 421):
            self.said_goodbye = True

    def write_pending(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._out_size = 0
            self.writer.write(data)

    async def _flush(self) -> None:
        if not self._out:
            return
        try:
            self.write_pending()
            async with asyncio.timeout(self.limits.timeout):
                await self.writer.drain()
        except (TimeoutError, OSError) as exc:
            raise Closed from exc

    async def _send(self, reply: Reply | bytes) -> None:
        self.queue(reply)
        if self._out_size > READ_SIZE:
            await self._flush()

    async def _fill(self, deadline: float | None = None) -> None:
        """Read more from the client (flushing our replies first). ``deadline`` (loop time)
        bounds the wait in total, not per read: a client trickling one octet at a time cannot
        hold a session open."""
        await self._flush()
        if self._eof:
            raise Closed
        loop = asyncio.get_running_loop()
        limit = self.limits.timeout if deadline is None else max(deadline - loop.time(), 0.0)
        try:
            async with asyncio.timeout(limit):
                chunk = await self.reader.read(READ_SIZE)
        except TimeoutError:
            self.queue(replies.TIMEOUT)
            raise Closed from None
        except OSError as exc:  # includes ssl.SSLError: a broken TLS stream
            raise Closed from exc
        if not chunk:
            self._eof = True
            raise Closed
        self._buf += chunk

    async def _read_line(self, limit: int = MAX_COMMAND_LINE) -> bytes | None:
        """The next line, LF included, read within the session timeout; None when it was
        longer than ``limit`` (then dropped)."""
        deadline = asyncio.get_running_loop().time() + self.limits.timeout
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
                await self._drop_long_line(deadline)
                return None
            start = len(self._buf)
            await self._fill(deadline)

    async def _drop_long_line(self, deadline: float) -> None:
        dropped = 0
        while True:
            lf = self._buf.find(b"\n")
            if lf >= 0:
                del self._buf[: lf + 1]
                return
            dropped += len(self._buf)
            self._buf.clear()
            if dropped > MAX_DISCARDED_LINE:
                self.queue(replies.LINE_TOO_LONG)
                raise Closed
            await self._fill(deadline)

    async def _reply(self, reply: Reply, stage: str = "") -> None:
        """Send ``reply``; a refusal counts against the error limit."""
        if reply.code >= 400:
            if stage:
                self.handler.on_refusal(self.session, stage, reply)
            self.errors += 1
            if self.errors >= self.limits.max_errors and reply.code != 421:
                self.queue(reply)
                self.queue(replies.TOO_MANY_ERRORS)
                raise Closed
        await self._send(reply)
        if reply.code == 421:
            raise Closed

    # -- session ------------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.listener.implicit_tls:
            assert self.listener.tls_context is not None
            await self._handshake(self.listener.tls_context)
        await self._send(replies.greeting(self.listener.hostname))
        while True:
            # Read up to the AUTH limit; other commands are held to MAX_COMMAND_LINE below.
            line = await self._read_line(MAX_AUTH_LINE)
            if line is None or (len(line) > MAX_COMMAND_LINE and line[:5].upper() != b"AUTH "):
                await self._reply(replies.LINE_TOO_LONG)
                continue
            bad_ending = check_line_ending(line)
            if bad_ending is not None:
                self.handler.on_refusal(self.session, "command", bad_ending)
                self.queue(bad_ending)
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
                # A bug or an outage behind a hook, outside DATA (which handles its own): the
                # client is told to retry, the session goes on, the transaction is abandoned.
                log.exception("session %s: %s failed", self.session.id, parsed.verb)
                self.envelope = None
                await self._reply(replies.STORE_UNAVAILABLE)
            if self.listener.stopping and not self.busy:
                self.queue(replies.SHUTTING_DOWN)
                raise Closed

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
            self.queue(replies.CLOSING)
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
            await self._reply(_param_reply(exc), "mail")
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
            await self._reply(_param_reply(exc), "rcpt")
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
            try:
                message, problem, message_size = await self._receive(limit, trace)
            except (Closed, ConnectionError, asyncio.CancelledError):
                raise
            except Exception:
                # Mid-stream (a full disk...): what the client sends next is message text, not
                # commands. Hang up rather than read it as commands.
                log.exception("session %s: receiving message %s failed", self.session.id, queue_id)
                self.queue(replies.SESSION_FAILED)
                raise Closed from None
            if problem is not DataProblem.NONE:
                if problem is DataProblem.TOO_BIG:
                    await self._reply(self.handler.too_big(envelope, message_size), "data")
                    return
                # Bare LF/CR: refuse and hang up, so nothing after it is read as commands.
                reply = data_refusal(problem, limit)
                self.handler.on_refusal(self.session, "data", reply)
                self.queue(reply)
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
                    if reader.problem is not DataProblem.NONE:
                        parts.clear()
                        if sink is not None:
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

    def _plaintext_pending(self) -> bool:
        return bool(self._buf) or bool(getattr(self.reader, "_buffer", b""))

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
        # Everything we owe the client goes out first (this may wait for a client that does
        # not read); only then is the buffer checked.
        await self._flush()
        if self._plaintext_pending():
            # Commands sent in clear after STARTTLS would otherwise run as if they had been
            # sent over TLS (CVE-2011-0411).
            self.handler.on_refusal(self.session, "starttls", replies.PIPELINING_VIOLATION)
            self.queue(replies.PIPELINING_VIOLATION)
            raise Closed
        # From the check above to start_tls pausing the socket there is no suspension point
        # (drain() inside start_tls does not suspend: a 30-octet reply after a flush cannot
        # reach the high-water mark), so no plaintext can slip in and be read as TLS data.
        self.queue(replies.READY_FOR_TLS)
        self.write_pending()
        # RFC 3207 §4.2: forget everything learnt before TLS; the client starts with EHLO again.
        self.session.helo = None
        self.session.esmtp = False
        self.envelope = None
        await self._handshake(context)

    async def _handshake(self, context: ssl.SSLContext) -> None:
        """TLS on the connection (after STARTTLS's 220, or at once on port 465), then the
        handler's look at the peer. Any failure ends the session: never go on half set up."""
        try:
            async with asyncio.timeout(self.limits.timeout):
                await self.writer.start_tls(context)
        except ssl.SSLError as exc:
            self.handler.on_tls_failure(self.session, exc)
            raise Closed from None
        except (TimeoutError, OSError):
            raise Closed from None
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is None:
            raise Closed
        try:
            await self._tls_established(ssl_object)
        except Exception:
            log.exception("session %s: TLS set-up failed", self.session.id)
            self.queue(replies.TLS_SETUP_FAILED)
            raise Closed from None

    async def _tls_established(self, ssl_object: ssl.SSLObject) -> None:
        cipher = ssl_object.cipher()
        self.session.tls_version = ssl_object.version() or "TLS"
        if cipher is not None:
            self.session.tls_cipher = cipher[0]
            self.session.tls_bits = cipher[2]
        self.session.peer_cert = peer_certificate(ssl_object)
        if self.session.peer_cert is not None:
            self.session.peer_dn = self.session.peer_cert.subject.rfc4514_string()
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
        throttle = self.listener.auth_throttle
        if throttle.blocked(self.session.peer_ip):
            await self._reply(replies.AUTH_THROTTLED, "auth")
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
            throttle.failed(self.session.peer_ip)
            self.handler.on_refusal(self.session, "auth", replies.AUTH_FAILED)
            # A delay after each failure slows password guessing without tying up much.
            await self._flush()
            await asyncio.sleep(self.limits.auth_failure_delay)
            if self.auth_failures >= self.limits.max_auth_failures:
                self.queue(replies.AUTH_FAILED)
                self.queue(replies.TOO_MANY_AUTH_FAILURES)
                raise Closed
            await self._reply(replies.AUTH_FAILED)
            return
        self.session.user = user
        self.session.auth_mechanism = mechanism.name
        await self._send(replies.AUTH_SUCCEEDED)

    async def _exchange(self, challenge: bytes) -> bytes | None:
        self.queue(b"334 " + base64.b64encode(challenge) + b"\r\n")
        line = await self._read_line(MAX_AUTH_LINE)
        if line is None:
            await self._reply(replies.AUTH_LINE_TOO_LONG, "auth")
            raise AuthCancelled
        bad_ending = check_line_ending(line)
        if bad_ending is not None:
            self.queue(bad_ending)
            raise Closed
        text = line[:-2]
        if text == b"*":
            await self._reply(replies.AUTH_CANCELLED)
            raise AuthCancelled
        decoded = _b64(text.decode("ascii", errors="replace"))
        if decoded is None:
            await self._reply(Reply(501, "5.5.2", "Cannot decode response"), "auth")
            raise AuthCancelled
        return decoded


def _param_reply(exc: ParamError) -> Reply:
    return Reply(exc.code, exc.enhanced, printable(exc.reason, 400))


def _b64(text: str) -> bytes | None:
    if text == "=":  # RFC 4954 §4: an empty initial response
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
