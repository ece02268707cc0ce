"""The MTA's components of ``colombe serve``: ``mx``, ``submission`` and ``queue``.

They share one set of services per store (:func:`services`): the TLS contexts built from
``[tls]``, the certificate :class:`~pki.verify.Verifier` with its CRL cache, the whitelist
component, the batched audit writer, the DSN sender and the queue runner that submission wakes
when it queues a message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from colombe.config import Config, ConfigError, MxSection, SubmissionSection, parse_listen
from colombe.whitelist import WhitelistComponent, whitelist_component
from mta.audit import AuditWriter
from mta.delivery import Receiver
from mta.mx import MxHandler
from mta.outbound import QueueRunner
from mta.reports import ReportSender
from mta.routes import ConnectionLimits, RouteTable, parse_routes
from mta.sasl import Login, Plain
from mta.schedule import RetryPolicy
from mta.smtpd import AuthThrottle, ConnectionBudget, Limits, Listener, SaslMechanism
from mta.submission import SubmissionHandler
from pki.crl import CrlCache
from pki.loading import load_certificate_file, load_crl
from pki.tls import client_facing_context, mx_listener_context, outbound_context
from pki.verify import TrustStore, Verifier
from store import Store

log = logging.getLogger(__name__)

WHITELIST_WAIT = 15.0
"""Seconds a starting MTA component waits for the whitelist (the stored copy, or the first
download) before opening its ports anyway."""


@dataclass
class MtaServices:
    config: Config
    store: Store
    whitelist: WhitelistComponent
    verifier: Verifier
    audit: AuditWriter
    reports: ReportSender
    receiver: Receiver
    runner: QueueRunner | None = None
    users: int = 0
    started: set[str] = field(default_factory=set)

    def notify_queue(self) -> None:
        if self.runner is not None:
            self.runner.notify()

    async def acquire(self) -> None:
        """A component starts: the first one starts the whitelist (idempotent) and waits a
        little for it, so that a fresh process does not open its ports without one."""
        self.users += 1
        await self.whitelist.start()
        for _ in range(int(WHITELIST_WAIT / 0.1)):
            if self.whitelist.loaded:
                break
            await asyncio.sleep(0.1)
        if not self.whitelist.loaded:
            log.warning("no whitelist yet: the MTA answers 451 to peers until one is loaded")

    async def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            await self.audit.close()
            await self.whitelist.stop()


_services: weakref.WeakKeyDictionary[Store, MtaServices] = weakref.WeakKeyDictionary()


def _tls_paths(config: Config) -> tuple[Path, Path, Path]:
    tls = config.tls
    if not (tls.cert_file and tls.key_file and tls.trust_file):
        raise ConfigError("the MTA needs tls.cert_file, tls.key_file and tls.trust_file")
    return (
        config.resolve(tls.cert_file),
        config.resolve(tls.key_file),
        config.resolve(tls.trust_file),
    )


def build_verifier(config: Config) -> Verifier:
    """The IGC-Santé trust anchors of ``tls.trust_file`` and the CRLs of ``tls.crl_dir``."""
    _, _, trust_path = _tls_paths(config)
    certificates = load_certificate_file(trust_path)
    trust = TrustStore.from_certificates(certificates)
    if not trust.roots:
        raise ConfigError(f"tls.trust_file {trust_path}: no root certificate in it")
    crls = CrlCache()
    if config.tls.crl_dir:
        directory = config.resolve(config.tls.crl_dir)
        for path in sorted(directory.iterdir()) if directory.is_dir() else []:
            if path.suffix.lower() not in (".crl", ".pem", ".der"):
                continue
            try:
                crl = load_crl(path.read_bytes(), str(path))
                issuer = next((c for c in certificates if c.subject == crl.issuer), None)
                if issuer is None:
                    log.warning("CRL %s: its issuer is not in tls.trust_file", path.name)
                    continue
                crls.add(crl, issuer)
            except Exception as exc:
                log.warning("CRL %s not loaded: %s", path.name, exc)
    return Verifier(trust, crls)


def services(config: Config, store: Store) -> MtaServices:
    found = _services.get(store)
    if found is not None:
        return found
    whitelist = whitelist_component(config, store)
    audit = AuditWriter(store)
    reports = ReportSender(store, hostname=config.server.hostname, whitelist=whitelist)
    made = MtaServices(
        config=config,
        store=store,
        whitelist=whitelist,
        verifier=build_verifier(config),
        audit=audit,
        reports=reports,
        receiver=Receiver(store, hostname=config.server.hostname, audit=audit, reports=reports),
    )
    made.receiver.on_queued = made.notify_queue
    _services[store] = made
    return made


class SmtpComponent:
    """One handler's listeners (MX: one; submission: 587 and 465)."""

    def __init__(
        self,
        name: str,
        shared: MtaServices,
        listeners: list[tuple[Listener, str, int]],
    ) -> None:
        self.name = name
        self.shared = shared
        self.listeners = listeners
        self._running: list[Listener] = []

    async def start(self) -> None:
        await self.shared.acquire()
        try:
            shared_ports = self.shared.config.server.processes > 1
            for listener, host, port in self.listeners:
                await listener.start(host, port, reuse_port=shared_ports)
                self._running.append(listener)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for listener in reversed(self._running):
            await listener.stop()
        self._running.clear()
        await self.shared.release()

    def endpoints(self) -> list[str]:
        out = []
        for listener in self._running:
            kind = "smtps" if listener.implicit_tls else "smtp"
            for host, port in listener.sockets:
                out.append(f"{self.name}: {kind}://{host}:{port}")
        return out


def _limits(section: MxSection | SubmissionSection) -> Limits:
    return Limits(
        max_message_size=section.max_message_size,
        max_recipients=section.max_recipients,
        max_connections=section.max_connections,
        max_connections_per_ip=section.max_connections_per_ip,
        max_errors=section.max_errors,
        timeout=float(section.timeout),
    )


def mx_component(config: Config, store: Store) -> SmtpComponent | None:
    section = config.mx
    if not section.listen:
        return None
    shared = services(config, store)
    cert, key, trust = _tls_paths(config)
    limits = _limits(section)
    handler = MxHandler(
        shared.receiver,
        verifier=shared.verifier,
        whitelist=shared.whitelist,
        max_message_size=section.max_message_size,
    )
    listener = Listener(
        handler,
        hostname=config.server.hostname,
        tls_context=mx_listener_context(cert, key, trust),
        limits=limits,
        blob_writer=store.blobs.writer,
    )
    host, port = parse_listen(section.listen, "mx.listen")
    return SmtpComponent("mx", shared, [(listener, host, port)])


def submission_component(config: Config, store: Store) -> SmtpComponent | None:
    section = config.submission
    if not section.listen and not section.listen_tls:
        return None
    shared = services(config, store)
    cert, key, _ = _tls_paths(config)
    limits = dataclasses.replace(
        _limits(section),
        max_auth_failures=section.max_auth_failures,
        auth_failure_delay=float(section.auth_failure_delay),
    )
    mechanisms: dict[str, SaslMechanism] = {}
    handler = SubmissionHandler(
        shared.receiver,
        whitelist=shared.whitelist,
        mechanisms=mechanisms,
        max_message_size=section.max_message_size,
    )
    mechanisms["PLAIN"] = Plain(handler.check_password)
    mechanisms["LOGIN"] = Login(handler.check_password)
    context: ssl.SSLContext = client_facing_context(cert, key)
    # 587 and 465 share one connection budget and one memory of failed logins.
    budget, throttle = ConnectionBudget(limits), AuthThrottle()
    listeners: list[tuple[Listener, str, int]] = []
    for value, key_name, implicit in (
        (section.listen, "submission.listen", False),
        (section.listen_tls, "submission.listen_tls", True),
    ):
        if value:
            host, port = parse_listen(value, key_name)
            listener = Listener(
                handler,
                hostname=config.server.hostname,
                tls_context=context,
                limits=limits,
                blob_writer=store.blobs.writer,
                implicit_tls=implicit,
                budget=budget,
                auth_throttle=throttle,
            )
            listeners.append((listener, host, port))
    return SmtpComponent("submission", shared, listeners)


def read_routes(config: Config) -> RouteTable:
    if not config.queue.routes_file:
        return RouteTable()
    path = config.resolve(config.queue.routes_file)
    try:
        return parse_routes(path.read_text(encoding="utf-8").splitlines())
    except OSError as exc:
        raise ConfigError(f"queue.routes_file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"queue.routes_file {path}: {exc}") from None


class QueueComponent:
    name = "queue"

    def __init__(self, shared: MtaServices, runner: QueueRunner) -> None:
        self.shared = shared
        self.runner = runner

    async def start(self) -> None:
        await self.shared.acquire()
        self.shared.runner = self.runner
        self.shared.reports.attach(self.runner)
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        self.shared.runner = None
        await self.shared.release()

    def endpoints(self) -> list[str]:
        return []


def queue_component(config: Config, store: Store) -> QueueComponent | None:
    section = config.queue
    if not section.enabled:
        return None
    if not (config.tls.cert_file and config.tls.key_file and config.tls.trust_file):
        log.info("queue: no [tls] certificate configured, outbound delivery off")
        return None
    shared = services(config, store)
    cert, key, trust = _tls_paths(config)
    policy = RetryPolicy.from_config(
        {
            "minimal_backoff": section.minimal_backoff,
            "maximal_backoff": section.maximal_backoff,
            "lifetime": section.lifetime,
            "bounce_lifetime": section.bounce_lifetime,
            "delay_warning": section.delay_warning,
        }
    )
    runner = QueueRunner(
        store=store,
        hostname=config.server.hostname,
        tls_context=outbound_context(cert, key, trust),
        verifier=shared.verifier,
        whitelist=shared.whitelist,
        policy=policy,
        routes=read_routes(config),
        limits=ConnectionLimits(
            global_limit=max(section.workers, 1) * 5,
            per_domain=section.max_connections_per_domain,
        ),
        workers=section.workers,
        poll_interval=float(section.poll_interval),
        connect_timeout=float(section.connect_timeout),
        command_timeout=float(section.command_timeout),
        port=section.port,
        reports=shared.reports,
        lease=timedelta(seconds=section.claim_lease),
    )
    return QueueComponent(shared, runner)
