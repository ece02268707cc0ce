"""The ``imap`` component of ``colombe serve``: port 143 (STARTTLS) and 993 (implicit TLS).

Both listeners share one connection budget (per IP, per user) and one memory of failed logins,
as Dovecot's do. The TLS certificate is ``[tls]``'s, as for submission.
"""

from __future__ import annotations

import logging

from colombe.config import Config, ImapSection, parse_listen
from imap.auth import Plain, password_check
from imap.server import Budget, ImapServer, Limits, LoginThrottle, SaslMechanism
from pki.tls import client_facing_context
from store import Store

log = logging.getLogger(__name__)


def limits_from(section: ImapSection) -> Limits:
    return Limits(
        max_connections=section.max_connections,
        max_connections_per_ip=section.max_connections_per_ip,
        max_connections_per_user=section.max_connections_per_user,
        timeout=float(section.timeout),
        login_timeout=float(section.login_timeout),
        max_message_size=section.max_message_size,
        max_auth_failures=section.max_auth_failures,
        auth_failure_delay=float(section.auth_failure_delay),
        quota_storage=section.quota_storage,
    )


class ImapComponent:
    name = "imap"

    def __init__(self, listeners: list[tuple[ImapServer, str, int]], reuse_port: bool) -> None:
        self.listeners = listeners
        self.reuse_port = reuse_port

    async def start(self) -> None:
        started: list[ImapServer] = []
        try:
            for server, host, port in self.listeners:
                await server.start(host, port, reuse_port=self.reuse_port)
                started.append(server)
        except BaseException:
            for server in started:
                await server.stop()
            raise

    async def stop(self) -> None:
        for server, _, _ in self.listeners:
            await server.stop()

    def endpoints(self) -> list[str]:
        lines: list[str] = []
        for server, _, _ in self.listeners:
            kind = "imaps" if server.implicit_tls else "imap"
            lines.extend(f"{self.name}: {kind}://{host}:{port}" for host, port in server.sockets)
        return lines


def imap_component(config: Config, store: Store) -> ImapComponent | None:
    section = config.imap
    if not section.listen and not section.listen_tls:
        return None
    context = client_facing_context(
        config.resolve(config.tls.cert_file), config.resolve(config.tls.key_file)
    )
    limits = limits_from(section)
    check = password_check(store)
    mechanisms: dict[str, SaslMechanism] = {"PLAIN": Plain(check)}
    budget, throttle = Budget(limits), LoginThrottle()
    listeners: list[tuple[ImapServer, str, int]] = []
    for value, key, implicit in (
        (section.listen, "imap.listen", False),
        (section.listen_tls, "imap.listen_tls", True),
    ):
        if value:
            host, port = parse_listen(value, key)
            server = ImapServer(
                store,
                tls_context=context,
                limits=limits,
                mechanisms=mechanisms,
                password_check=check,
                implicit_tls=implicit,
                budget=budget,
                throttle=throttle,
                hostname=config.server.hostname,
            )
            listeners.append((server, host, port))
    return ImapComponent(listeners, reuse_port=config.server.processes > 1)
