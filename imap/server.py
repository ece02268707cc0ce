"""The IMAP listener: sockets, connection limits and the memory of failed logins.

One task per connection runs an :class:`imap.session.Session`. Limits answer, never hang: past
``max_connections`` or ``max_connections_per_ip`` a new connection gets ``* BYE`` at once; past
``max_connections_per_user`` a login gets ``NO [LIMIT]`` (Dovecot's
``mail_max_userip_connections``); failed logins are remembered per IP across connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from imap.cache import FormattedCache
from pki.tls import compact_tls_read_buffers
from store import Store

if TYPE_CHECKING:
    from imap.session import Session

log = logging.getLogger(__name__)

STOP_GRACE = 5.0
READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 10_000
    max_connections_per_ip: int = 100
    max_connections_per_user: int = 20
    # RFC 9051 §5.4: the autologout timer is at least 30 minutes once authenticated ...
    timeout: float = 1800.0
    # ... and may be short before (a connection that never logs in).
    login_timeout: float = 60.0
    max_line_length: int = 8192
    # APPEND's literal: the largest message accepted (also announced as APPENDLIMIT).
    max_message_size: int = 26_214_400
    # Before login only small literals are read (a password), so that no stranger can make
    # the server hold megabytes.
    max_login_literal: int = 8192
    max_errors: int = 20
    max_auth_failures: int = 3
    auth_failure_delay: float = 2.0
    # Octets a BAL may hold (RFC 9208 STORAGE); 0: no quota.
    quota_storage: int = 0


class Exchange(Protocol):
    """Send a SASL challenge, get the client's decoded response (None: it cancelled)."""

    def __call__(self, challenge: bytes) -> Awaitable[bytes | None]: ...


class SaslMechanism(Protocol):
    """A SASL mechanism (PLAIN here; XOAUTH2/OAUTHBEARER from the API LPS)."""

    name: str

    async def authenticate(self, initial: bytes | None, exchange: Exchange) -> str | None:
        """The authenticated BAL address, or None."""


class AuthUnavailable(Exception):
    """The credentials could not be checked (store down): ``NO [UNAVAILABLE]``."""


PasswordCheck = Callable[[str, str], Awaitable[str | None]]


class Budget:
    """Connections in use in all, per client IP and per authenticated user."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.in_use = 0
        self._per_ip: Counter[str] = Counter()
        self._per_user: Counter[str] = Counter()

    def acquire(self, ip: str) -> bool:
        if self.in_use >= self.limits.max_connections:
            return False
        if self._per_ip[ip] >= self.limits.max_connections_per_ip:
            return False
        self.in_use += 1
        self._per_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.in_use -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]

    def acquire_user(self, user: str) -> bool:
        if self._per_user[user] >= self.limits.max_connections_per_user:
            return False
        self._per_user[user] += 1
        return True

    def release_user(self, user: str) -> None:
        self._per_user[user] -= 1
        if self._per_user[user] <= 0:
            del self._per_user[user]


class LoginThrottle:
    """Failed logins per client IP over a sliding window, shared by every connection: past
    ``max_failures`` in ``window`` seconds, logins from that IP are refused unchecked."""

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


class ImapServer:
    """One listening socket: plain with STARTTLS (143) or implicit TLS (993)."""

    def __init__(
        self,
        store: Store,
        *,
        tls_context: ssl.SSLContext | None,
        limits: Limits,
        mechanisms: Mapping[str, SaslMechanism],
        password_check: PasswordCheck,
        implicit_tls: bool = False,
        budget: Budget | None = None,
        throttle: LoginThrottle | None = None,
        hostname: str = "localhost",
    ) -> None:
        if implicit_tls and tls_context is None:
            raise ValueError("implicit TLS needs a TLS context")
        self.store = store
        self.tls_context = tls_context
        self.limits = limits
        self.mechanisms = dict(mechanisms)
        self.password_check = password_check
        self.implicit_tls = implicit_tls
        self.budget = budget or Budget(limits)
        self.throttle = throttle or LoginThrottle()
        self.hostname = hostname
        self.formatted = FormattedCache()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._sessions: set[Session] = set()
        self.accepted = 0
        self.refused = 0

    @property
    def sockets(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        self.stopping = False
        compact_tls_read_buffers()
        self._server = await asyncio.start_server(
            self._serve,
            host,
            port,
            limit=READ_SIZE,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=4096,
        )

    async def stop(self) -> None:
        """Stop accepting; every session is told ``* BYE`` and closed."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        tasks = [s.task for s in self._sessions if s.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from imap.session import Session

        peer = writer.get_extra_info("peername") or ("?", 0)
        ip = str(peer[0])
        if self.stopping or not self.budget.acquire(ip):
            self.refused += 1
            with contextlib.suppress(Exception):
                if self.implicit_tls:
                    # Nothing can be said before the handshake: a bounded one, so that the
                    # client reads why (as Dovecot's login process does) instead of a TLS error.
                    assert self.tls_context is not None
                    async with asyncio.timeout(5):
                        await writer.start_tls(self.tls_context)
                writer.write(b"* BYE [UNAVAILABLE] Too many connections, try later\r\n")
                await asyncio.wait_for(writer.drain(), 5)
            writer.close()
            return
        session = Session(self, reader, writer, ip)
        session.task = asyncio.current_task()
        self._sessions.add(session)
        self.accepted += 1
        try:
            await session.run()
        except (ConnectionError, asyncio.CancelledError, TimeoutError, ssl.SSLError):
            pass
        except Exception:
            log.exception("IMAP session %s failed", session.id)
        finally:
            self._sessions.discard(session)
            self.budget.release(ip)
            await session.close()
