"""Keeping the whitelist: HTTPS download with the IGC-Santé chain, conditional requests,
validation before use, last good copy in the store (both engines), several processes, alarm."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, generate_latest

from colombe.admin import AdminServer
from colombe.config import Config, WhitelistSection
from colombe.whitelist import WhitelistCollector, WhitelistComponent, settings_from_config
from colombe.whitelist import whitelist as whitelist_cli
from directory.bounded_http import is_loopback_host
from directory.whitelist_fetch import (
    DOCUMENT,
    LEASE,
    FetchError,
    Outcome,
    WhitelistKeeper,
    WhitelistSettings,
    download,
    tls_context,
)
from pki.testpki import TestPki
from store import Store
from tests.colombe.processes import http
from tests.directory import whitelist_gen as gen

PATH = "/listeblanchemssante.xml"
MAX_DRIP_SECONDS = 10.0


class WhitelistServer:
    """The ANS endpoint, on 127.0.0.1 over TLS, with ETag/Last-Modified and knobs for faults."""

    def __init__(self, chain: Path, key: Path) -> None:
        self.body = b""
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.status: int | None = None  # answer this status instead of the file
        self.drip = 0.0  # seconds between octets (a server that dribbles)
        self.drip_head = 0.0  # seconds between octets of the status line and headers
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append({k.lower(): v for k, v in self.headers.items()})
                if server.status is not None:
                    self.send_error(server.status)
                    return
                if self.path.partition("?")[0] != PATH:
                    self.send_error(404)
                    return
                if server.drip_head:
                    drip_head(self.wfile, server.drip_head)
                    return
                # RFC 9110 §13.2.2: If-None-Match first; If-Modified-Since only without it.
                match = self.headers.get("If-None-Match")
                since = self.headers.get("If-Modified-Since")
                if (match is not None and match == server.etag) or (
                    match is None and since is not None and since == server.last_modified
                ):
                    self.send_response(304)
                    self._validators()
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(server.body)))
                self._validators()
                self.end_headers()
                if not server.drip:
                    self.wfile.write(server.body)
                    return
                started = time.monotonic()
                for octet in server.body:
                    if time.monotonic() - started > MAX_DRIP_SECONDS:
                        break
                    self.wfile.write(bytes([octet]))
                    self.wfile.flush()
                    time.sleep(server.drip)

            def _validators(self) -> None:
                if server.etag:
                    self.send_header("ETag", server.etag)
                if server.last_modified:
                    self.send_header("Last-Modified", server.last_modified)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # refused handshakes and clients that hang up are the point of some tests

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key)
        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}{PATH}"

    def publish(
        self, body: bytes, etag: str | None = None, last_modified: str | None = None
    ) -> None:
        self.body, self.etag, self.last_modified = body, etag, last_modified

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def drip_head(wfile: Any, pause: float) -> None:
    """A status line and headers sent one octet every ``pause`` seconds (for a minute at most)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nX-Padding: " + b"x" * 300
    started = time.monotonic()
    for octet in head:
        if time.monotonic() - started > 60:
            break
        try:
            wfile.write(bytes([octet]))
            wfile.flush()
        except OSError:
            return  # the client gave up: the point
        time.sleep(pause)


class PlainServer:
    """A plain http:// server on 127.0.0.1: redirects to ``location``, or drips its headers."""

    def __init__(self) -> None:
        self.location: str | None = None
        self.drip_head = 0.0
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if server.drip_head:
                    drip_head(self.wfile, server.drip_head)
                    return
                self.send_response(302)
                self.send_header("Location", server.location or "/")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{PATH}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def plain() -> Iterator[PlainServer]:
    s = PlainServer()
    yield s
    s.close()


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The host names resolved during the test: what the fetcher tried to reach."""
    seen: list[str] = []
    real = socket.getaddrinfo

    def recording(host: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    return seen


@pytest.fixture
def server(test_pki: TestPki) -> Iterator[WhitelistServer]:
    localhost = test_pki.certs["localhost"]
    s = WhitelistServer(localhost.chain_path, localhost.key_path)
    yield s
    s.close()


@pytest.fixture(scope="session")
def self_signed_localhost(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A server certificate for "localhost" that no IGC-Santé CA issued."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("self-signed")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@functools.cache
def listing(day: int = 13, domains: int = 1500) -> gen.GeneratedList:
    """A realistic list generated on 2025-03-<day> (later days: newer lists)."""
    return gen.generate(
        domains=domains, dns=120, seed=day, generated_at=gen.GENERATED_AT.replace(day=day)
    )


def settings(url: str, trust: Path | None, **overrides: Any) -> WhitelistSettings:
    values: dict[str, Any] = {
        "url": url,
        "ca_file": trust,
        "refresh_interval": 3600.0,
        "max_age": 86400.0,
        "min_entries": 1000,
        "timeout": 5.0,
    }
    values.update(overrides)
    return WhitelistSettings(**values)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def sample_pair(generated: gen.GeneratedList) -> tuple[str, str]:
    return min(generated.pairs)


# -- download and validation -------------------------------------------------------------------


async def test_first_fetch_over_https_with_the_igc_chain_installs_and_stores_the_list(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    first = listing()
    server.publish(first.xml, etag='"v13"', last_modified="Thu, 13 Mar 2025 14:54:10 GMT")
    keeper = WhitelistKeeper(store, settings(server.url, trust_file))
    domain, dn = sample_pair(first)
    assert not keeper.allows(domain, dn)  # no copy yet: fail closed

    result = await keeper.refresh()

    assert result.outcome is Outcome.UPDATED
    assert keeper.allows(domain, dn)
    assert keeper.is_listed(gen.CAPITALS_WRITTEN)
    assert not keeper.allows(domain, gen.AMP_CERT.replace("SOINS", "AUTRES"))
    document = await store.load_document(DOCUMENT)
    assert document is not None
    assert document.content == first.xml
    meta = document.meta
    assert meta["url"] == server.url
    assert meta["etag"] == '"v13"'
    assert meta["last_modified"] == "Thu, 13 Mar 2025 14:54:10 GMT"
    assert meta["generated_at"] == "2025-03-13T14:54:10Z"
    assert meta["entries"] == first.entries
    assert meta["fetched_at"] == meta["checked_at"]
    assert server.requests[0].get("if-none-match") is None  # nothing to confirm yet


async def test_conditional_request_gets_304_and_the_copy_is_confirmed_not_reparsed(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    clock = Clock()
    server.publish(listing().xml, etag='"v13"', last_modified="Thu, 13 Mar 2025 14:54:10 GMT")
    keeper = WhitelistKeeper(store, settings(server.url, trust_file), now=clock)
    assert (await keeper.refresh()).outcome is Outcome.UPDATED
    installed = keeper.current
    clock.now += timedelta(hours=2)

    result = await keeper.refresh()

    assert result.outcome is Outcome.NOT_MODIFIED
    assert server.requests[-1]["if-none-match"] == '"v13"'
    assert server.requests[-1]["if-modified-since"] == "Thu, 13 Mar 2025 14:54:10 GMT"
    assert keeper.current is installed
    document = await store.load_document(DOCUMENT, with_content=False)
    assert document is not None
    assert document.meta["checked_at"] != document.meta["fetched_at"]
    assert keeper.status().age_seconds == 0


async def test_last_modified_alone_makes_a_conditional_request(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing().xml, last_modified="Thu, 13 Mar 2025 14:54:10 GMT")
    keeper = WhitelistKeeper(store, settings(server.url, trust_file))
    await keeper.refresh(force=True)
    assert (await keeper.refresh(force=True)).outcome is Outcome.NOT_MODIFIED
    assert "if-none-match" not in server.requests[-1]
    assert server.requests[-1]["if-modified-since"] == "Thu, 13 Mar 2025 14:54:10 GMT"


async def test_same_octets_without_validators_confirm_the_copy(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing().xml)
    keeper = WhitelistKeeper(store, settings(server.url, trust_file))
    assert (await keeper.refresh()).outcome is Outcome.UPDATED
    assert (await keeper.refresh(force=True)).outcome is Outcome.NOT_MODIFIED


async def test_new_list_replaces_the_old_one_atomically(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    old, new = listing(13), listing(14)
    server.publish(old.xml, etag='"v13"')
    keeper = WhitelistKeeper(store, settings(server.url, trust_file))
    await keeper.refresh()
    before = keeper.current
    only_old = next(p for p in sorted(old.pairs) if p not in new.pairs)
    only_new = next(p for p in sorted(new.pairs) if p not in old.pairs)
    assert keeper.allows(*only_old)
    assert not keeper.allows(*only_new)

    server.publish(new.xml, etag='"v14"')
    assert (await keeper.refresh(force=True)).outcome is Outcome.UPDATED

    assert keeper.current is not before
    assert before is not None
    assert before.allows(*only_old)
    assert keeper.allows(*only_new)
    assert not keeper.allows(*only_old)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("truncated", "refused: not well-formed XML"),
        ("empty", "refused: 0 usable entries"),
        ("short", "refused: 20 usable entries, fewer than the 1000 required"),
        ("older", "refused: generated 2025-03-12T14:54:10Z, before the copy in use"),
        ("html", "refused: root element is 'html'"),
    ],
)
async def test_invalid_download_is_rejected_and_the_previous_copy_kept(
    store: Store, server: WhitelistServer, trust_file: Path, fault: str, reason: str
) -> None:
    good = listing(13)
    server.publish(good.xml, etag='"good"')
    keeper = WhitelistKeeper(store, settings(server.url, trust_file))
    await keeper.refresh()
    installed = keeper.current
    bad = {
        "truncated": gen.truncated_like_the_mirror(listing(14).xml),
        "empty": gen.document([], gen.GENERATED_AT.replace(day=14)),
        "short": gen.document(
            [gen.entry_xml(f"d{i}.mssante.fr", gen.MIPIH_DN) for i in range(20)],
            gen.GENERATED_AT.replace(day=14),
        ),
        "older": listing(12).xml,
        "html": b"<html><body>maintenance</body></html>",
    }[fault]
    server.publish(bad, etag='"bad"')

    result = await keeper.refresh(force=True)

    assert result.outcome is Outcome.REJECTED
    assert result.detail.startswith(reason)
    assert "stays in use" in result.detail
    assert keeper.current is installed
    assert keeper.allows(*sample_pair(good))
    document = await store.load_document(DOCUMENT)
    assert document is not None
    assert document.content == good.xml
    assert document.meta["etag"] == '"good"'
    assert document.meta["last_error"].startswith(reason)
    # A fresh process still gets the good copy.
    other = WhitelistKeeper(store, settings(server.url, trust_file))
    assert await other.load()
    assert other.allows(*sample_pair(good))


async def test_server_certificate_not_from_the_trust_bundle_is_refused_and_copy_kept(
    store: Store,
    server: WhitelistServer,
    trust_file: Path,
    self_signed_localhost: tuple[Path, Path],
) -> None:
    good = listing()
    server.publish(good.xml)
    keeper = WhitelistKeeper(store, settings(server.url, trust_file))
    await keeper.refresh()
    impostor = WhitelistServer(*self_signed_localhost)
    try:
        impostor.publish(listing(14).xml)
        keeper.settings = settings(impostor.url, trust_file)
        result = await keeper.refresh(force=True)
    finally:
        impostor.close()
    assert result.outcome is Outcome.FAILED
    assert "server certificate refused" in result.detail
    assert impostor.requests == []  # nothing was asked over the untrusted connection
    assert keeper.current is not None
    assert keeper.current.generated_at == good.generated_at


async def test_igc_server_is_refused_when_the_bundle_does_not_hold_its_chain(
    store: Store, server: WhitelistServer, self_signed_localhost: tuple[Path, Path]
) -> None:
    server.publish(listing().xml)
    # Trusting another CA only (and, with ca_file empty, the system store: no IGC-Santé in it).
    for trust in (self_signed_localhost[0], None):
        keeper = WhitelistKeeper(store, settings(server.url, trust))
        result = await keeper.refresh()
        assert result.outcome is Outcome.FAILED
        assert "certificate refused" in result.detail
        assert keeper.current is None
    assert server.requests == []


async def test_pkcs7_trust_bundle_like_the_ans_p7b_is_accepted(
    store: Store, server: WhitelistServer, test_pki: TestPki, tmp_path: Path
) -> None:
    bundle = tmp_path / "Chaine_de_certification-IGC-Sante.p7b"
    bundle.write_bytes(
        pkcs7.serialize_certificates(
            [*test_pki.igc_roots(), *test_pki.igc_intermediates()], serialization.Encoding.DER
        )
    )
    server.publish(listing().xml)
    keeper = WhitelistKeeper(store, settings(server.url, bundle))
    assert (await keeper.refresh()).outcome is Outcome.UPDATED


async def test_unreadable_trust_bundle_fails_the_fetch_naming_the_setting(
    store: Store, server: WhitelistServer, tmp_path: Path
) -> None:
    bundle = tmp_path / "igc.p7b"
    bundle.write_bytes(b"not a bundle")
    keeper = WhitelistKeeper(store, settings(server.url, bundle))
    result = await keeper.refresh()
    assert result.outcome is Outcome.FAILED
    assert result.detail.startswith("whitelist.ca_file: ")


async def test_http_error_is_a_failure_that_keeps_the_copy(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing().xml)
    keeper = WhitelistKeeper(store, settings(server.url, trust_file))
    await keeper.refresh()
    server.status = 503
    result = await keeper.refresh(force=True)
    assert result.outcome is Outcome.FAILED
    assert "HTTP 503" in result.detail
    assert keeper.allows(*sample_pair(listing()))
    assert keeper.next_delay(result) == 300.0


async def test_download_larger_than_the_bound_is_refused(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing().xml)
    keeper = WhitelistKeeper(store, settings(server.url, trust_file, max_bytes=100_000))
    result = await keeper.refresh()
    assert result.outcome is Outcome.FAILED
    assert "more than 100000" in result.detail


async def test_dribbling_server_is_cut_off_at_the_timeout(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing().xml)
    server.drip = 0.05
    keeper = WhitelistKeeper(store, settings(server.url, trust_file, timeout=1.0))
    started = time.monotonic()
    result = await keeper.refresh()
    assert time.monotonic() - started < 4
    assert result.outcome is Outcome.FAILED
    assert "whitelist.timeout" in result.detail


async def test_file_url_serves_operators_who_distribute_the_list_themselves(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "liste blanche.xml"
    path.write_bytes(listing().xml)
    keeper = WhitelistKeeper(store, settings(path.as_uri(), None))
    assert (await keeper.refresh()).outcome is Outcome.UPDATED
    assert keeper.allows(*sample_pair(listing()))
    assert (await keeper.refresh(force=True)).outcome is Outcome.NOT_MODIFIED
    path.unlink()
    result = await keeper.refresh(force=True)
    assert result.outcome is Outcome.FAILED
    assert keeper.allows(*sample_pair(listing()))


async def test_unsupported_url_scheme_fails_naming_the_setting(store: Store) -> None:
    keeper = WhitelistKeeper(store, settings("ftp://example.org/liste.xml", None))
    result = await keeper.refresh()
    assert result.outcome is Outcome.FAILED
    assert "unsupported URL scheme 'ftp' in whitelist.url" in result.detail


# -- several processes, restarts --------------------------------------------------------------------


async def test_restarted_process_serves_the_stored_copy_when_the_server_is_unreachable(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing().xml)
    await WhitelistKeeper(store, settings(server.url, trust_file)).refresh()
    url = server.url
    server.close()

    restarted = WhitelistKeeper(store, settings(url, trust_file, timeout=2.0))
    assert await restarted.load()
    assert restarted.allows(*sample_pair(listing()))
    result = await restarted.refresh(force=True)
    assert result.outcome is Outcome.FAILED
    assert restarted.allows(*sample_pair(listing()))


async def test_second_process_does_not_download_within_the_interval_and_adopts_newer_copies(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing(13).xml, etag='"v13"')
    first = WhitelistKeeper(store, settings(server.url, trust_file))
    second = WhitelistKeeper(store, settings(server.url, trust_file))
    await first.refresh()
    assert len(server.requests) == 1

    result = await second.refresh()

    assert result.outcome is Outcome.SKIPPED
    assert len(server.requests) == 1
    assert second.allows(*sample_pair(listing(13)))  # loaded from the store instead
    server.publish(listing(14).xml, etag='"v14"')
    assert (await first.refresh(force=True)).outcome is Outcome.UPDATED
    assert (await second.refresh()).outcome is Outcome.SKIPPED
    assert second.current is not None
    assert second.current.generated_at == listing(14).generated_at
    assert len(server.requests) == 2


async def test_download_waits_while_another_process_holds_the_lease(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing().xml)
    assert await store.acquire_lease(LEASE, "other-host:1", timedelta(minutes=5))
    keeper = WhitelistKeeper(store, settings(server.url, trust_file))
    result = await keeper.refresh()
    assert result.outcome is Outcome.SKIPPED
    assert "another process" in result.detail
    assert server.requests == []
    # No copy to serve yet (a process starting beside the one downloading): look again soon.
    assert keeper.next_delay(result) == 1.0
    await store.release_lease(LEASE, "other-host:1")
    assert (await keeper.refresh()).outcome is Outcome.UPDATED
    # With a copy in use, there is no hurry.
    assert await store.acquire_lease(LEASE, "other-host:1", timedelta(minutes=5))
    again = await keeper.refresh(force=True)
    assert again.outcome is Outcome.SKIPPED
    assert keeper.next_delay(again) == 60.0


async def test_due_refresh_happens_after_the_interval(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    clock = Clock()
    server.publish(listing().xml, etag='"v13"')
    keeper = WhitelistKeeper(store, settings(server.url, trust_file), now=clock)
    first = await keeper.refresh()
    assert keeper.next_delay(first) == 3600.0
    clock.now += timedelta(minutes=59)
    assert (await keeper.refresh()).outcome is Outcome.SKIPPED
    assert keeper.next_delay(first) == pytest.approx(60.0)
    clock.now += timedelta(minutes=2)
    assert (await keeper.refresh()).outcome is Outcome.NOT_MODIFIED
    assert len(server.requests) == 2


# -- alarm and metrics -------------------------------------------------------------------------------


async def test_copy_not_confirmed_within_max_age_raises_the_alarm_and_stays_in_use(
    store: Store, server: WhitelistServer, trust_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    server.publish(listing().xml, etag='"v13"')
    keeper = WhitelistKeeper(store, settings(server.url, trust_file), now=clock)
    await keeper.refresh()
    registry = CollectorRegistry()
    registry.register(WhitelistCollector(keeper))
    assert not keeper.check_age()
    assert b"colombe_whitelist_stale 0.0" in generate_latest(registry)

    server.status = 500
    clock.now += timedelta(hours=25)
    with caplog.at_level(logging.WARNING, logger="directory.whitelist_fetch"):
        await keeper.refresh()
        assert keeper.check_age()
    assert keeper.allows(*sample_pair(listing()))
    alarm = [r.getMessage() for r in caplog.records if "whitelist alarm" in r.getMessage()]
    assert alarm
    assert "last confirmed 25.0 h ago" in alarm[0]
    assert "HTTP 500" in alarm[0]
    assert all(b"<Domaine>" not in r.getMessage().encode() for r in caplog.records)
    metrics = generate_latest(registry).decode()
    assert "colombe_whitelist_stale 1.0" in metrics
    assert "colombe_whitelist_age_seconds 90000.0" in metrics
    assert 'colombe_whitelist_fetches_total{result="failed"} 1.0' in metrics
    assert 'colombe_whitelist_fetches_total{result="updated"} 1.0' in metrics

    server.status = None
    clock.now += timedelta(minutes=1)
    assert (await keeper.refresh()).outcome is Outcome.NOT_MODIFIED
    assert not keeper.check_age()


async def test_no_copy_at_all_is_stale_and_refuses_everything(store: Store) -> None:
    keeper = WhitelistKeeper(store, settings("", None))
    assert (await keeper.refresh()).outcome is Outcome.DISABLED
    assert keeper.status().stale
    assert not keeper.is_listed(gen.CAPITALS_DOMAIN)
    assert not keeper.allows(gen.CAPITALS_DOMAIN, gen.MIPIH_DN)


async def test_component_serves_the_stored_copy_refreshes_and_shows_on_admin_metrics(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing(13).xml, etag='"v13"')
    await WhitelistKeeper(store, settings(server.url, trust_file)).refresh()
    server.publish(listing(14).xml, etag='"v14"')
    admin = AdminServer(store, "127.0.0.1", 0)
    await admin.start()
    # Refreshing every second: the stored copy is due at once (force the first fetch by age).
    component = WhitelistComponent(
        WhitelistKeeper(store, settings(server.url, trust_file, refresh_interval=1.0))
    )
    try:
        await component.start()
        assert component.endpoints() == []
        assert component.allows(*sample_pair(listing(13)))  # from the store, before any fetch
        for _ in range(100):
            current = component.keeper.current
            if current is not None and current.generated_at == listing(14).generated_at:
                break
            await asyncio.sleep(0.05)
        assert component.is_listed(sorted(listing(14).domains)[0])
        status, _, body = await asyncio.to_thread(
            http, admin.port, b"GET /metrics HTTP/1.1\r\n\r\n"
        )
        assert status == 200
        assert f"colombe_whitelist_entries {float(listing(14).entries)}".encode() in body
        assert b"colombe_whitelist_stale 0.0" in body
        started = time.monotonic()
        await component.stop()
        assert time.monotonic() - started < 3
        _, _, body = await asyncio.to_thread(http, admin.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert b"colombe_whitelist_entries" not in body
    finally:
        await component.stop()
        await admin.stop()


# -- security review: transport ----------------------------------------------------------------------


async def test_plain_http_url_to_another_host_is_refused_without_any_request(
    store: Store, lookups: list[str]
) -> None:
    keeper = WhitelistKeeper(store, settings("http://whitelist.example/liste.xml", None))
    result = await keeper.refresh()
    assert result.outcome is Outcome.FAILED
    assert result.detail.startswith("plain http:// refused for http://whitelist.example/")
    assert lookups == []  # not even resolved


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_plain_http_to_a_loopback_host_is_still_allowed(
    store: Store, tmp_path: Path, plain: PlainServer, host: str
) -> None:
    path = tmp_path / "liste.xml"
    path.write_bytes(listing().xml)
    plain.location = path.as_uri()  # file:// is not followed: the redirect itself is refused
    url = f"http://{host}:{plain.port}{PATH}"
    result = await WhitelistKeeper(store, settings(url, None)).refresh()
    assert plain.requests == 1  # the request was made
    assert "plain http" not in result.detail


def test_only_localhost_127_8_and_ipv6_loopback_count_as_loopback() -> None:
    for host in ("localhost", "LOCALHOST", "127.0.0.1", "127.3.2.1", "::1"):
        assert is_loopback_host(host), host
    for host in ("example.org", "10.0.0.1", "127.example.org", "localhost.example", "::2", ""):
        assert not is_loopback_host(host), host


async def test_redirect_from_loopback_http_to_another_http_host_is_refused(
    store: Store, plain: PlainServer, lookups: list[str]
) -> None:
    plain.location = "http://whitelist.example/liste.xml"
    result = await WhitelistKeeper(store, settings(plain.url, None)).refresh()
    assert result.outcome is Outcome.FAILED
    assert "redirect from http:// to http:// on a non-loopback host refused" in result.detail
    assert plain.requests == 1
    assert "whitelist.example" not in lookups


async def test_redirect_from_http_to_https_is_verified_with_the_configured_ca_file(
    store: Store, plain: PlainServer, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing().xml)
    plain.location = server.url
    # The IGC-Santé TEST chain is only in ca_file, not in the system's store.
    result = await WhitelistKeeper(store, settings(plain.url, trust_file)).refresh()
    assert result.outcome is Outcome.UPDATED, result.detail
    assert len(server.requests) == 1


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_server_dripping_its_headers_is_cut_off_at_the_total_timeout(
    server: WhitelistServer, plain: PlainServer, trust_file: Path, scheme: str
) -> None:
    # One octet every 0.2 s: each read is well within any socket timeout, the whole never ends.
    server.drip_head = plain.drip_head = 0.2
    url = server.url if scheme == "https" else plain.url
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"no complete answer within 1.5 s \(whitelist.timeout\)"):
        await asyncio.to_thread(download, url, context=tls_context(trust_file), timeout=1.5)
    assert 1.4 < time.monotonic() - started < 2.5


async def test_keeper_download_thread_ends_at_the_timeout_with_a_dripping_server(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing().xml)
    server.drip_head = 0.2
    keeper = WhitelistKeeper(store, settings(server.url, trust_file, timeout=1.5))
    result = await keeper.refresh()
    assert result.outcome is Outcome.FAILED
    assert "whitelist.timeout" in result.detail
    for _ in range(20):
        if not any(t.name == "whitelist-download" for t in threading.enumerate()):
            break
        await asyncio.sleep(0.1)
    assert not any(t.name == "whitelist-download" for t in threading.enumerate())


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost:{port}/listeblanchemssante.xml?token=t0ps3cret",
        "https://robot:t0ps3cret@localhost:{port}/listeblanchemssante.xml",
    ],
    ids=["query", "userinfo"],
)
async def test_secrets_in_the_url_never_reach_logs_store_or_status(
    store: Store,
    server: WhitelistServer,
    trust_file: Path,
    caplog: pytest.LogCaptureFixture,
    lookups: list[str],
    url: str,
) -> None:
    server.status = 503
    keeper = WhitelistKeeper(store, settings(url.format(port=server.port), trust_file))
    with caplog.at_level(logging.DEBUG):
        result = await keeper.refresh()
        keeper.check_age()
    assert result.outcome is Outcome.FAILED
    document = await store.load_document(DOCUMENT, with_content=False)
    assert document is not None
    status = keeper.status()
    shown = [result.detail, caplog.text, json.dumps(document.meta), status.url]
    shown.append(status.last_error or "")
    for text in shown:
        assert "t0ps3cret" not in text
    assert "***" in status.url
    assert document.meta["last_error"]
    # user:password@ is HTTP Basic authentication, never part of a name sent to the resolver.
    assert lookups
    assert not any("t0ps3cret" in host for host in lookups)
    if "robot" in url:
        assert server.requests[0]["authorization"] == "Basic cm9ib3Q6dDBwczNjcmV0"


# -- security review: what may replace the copy in use ------------------------------------------------


def future_listing(generated_at: datetime) -> gen.GeneratedList:
    return gen.generate(domains=1500, dns=120, seed=99, generated_at=generated_at)


async def test_generation_date_in_the_future_is_refused(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing(13).xml)
    keeper = WhitelistKeeper(store, settings(server.url, trust_file))
    await keeper.refresh()
    server.publish(future_listing(datetime(9999, 12, 31, tzinfo=UTC)).xml)
    for override in (False, True):
        result = await keeper.refresh(force=True, override=override)
        assert result.outcome is Outcome.REJECTED
        assert result.detail.startswith("refused: generated 9999-12-31T00:00:00Z, in the future")
    assert keeper.current is not None
    assert keeper.current.generated_at == listing(13).generated_at
    # A day of clock skew is tolerated.
    clock = Clock()
    soon = future_listing((clock.now + timedelta(hours=20)).replace(microsecond=0))
    server.publish(soon.xml)
    keeper = WhitelistKeeper(store, settings(server.url, trust_file), now=clock)
    assert (await keeper.refresh(force=True)).outcome is Outcome.UPDATED


async def test_copy_dated_in_the_future_does_not_freeze_later_lists(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    # A copy dated 9999 got into the store (a wrong clock, an older Colombe).
    wrong_clock = Clock()
    wrong_clock.now = datetime(9999, 12, 30, tzinfo=UTC)
    server.publish(future_listing(datetime(9999, 12, 30, tzinfo=UTC)).xml)
    keeper = WhitelistKeeper(store, settings(server.url, trust_file), now=wrong_clock)
    assert (await keeper.refresh()).outcome is Outcome.UPDATED

    restarted = WhitelistKeeper(store, settings(server.url, trust_file))
    assert await restarted.load()
    server.publish(listing(14).xml)
    result = await restarted.refresh(force=True)
    assert result.outcome is Outcome.UPDATED, result.detail
    assert restarted.current is not None
    assert restarted.current.generated_at == listing(14).generated_at
    # And from there on the check applies again.
    server.publish(listing(13).xml)
    assert (await restarted.refresh(force=True)).outcome is Outcome.REJECTED


async def test_copy_from_another_url_is_not_a_reference_for_the_generation_date(
    store: Store, server: WhitelistServer, trust_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "liste.xml"
    path.write_bytes(listing(14).xml)
    keeper = WhitelistKeeper(store, settings(path.as_uri(), None))
    assert (await keeper.refresh()).outcome is Outcome.UPDATED
    server.publish(listing(13).xml)
    keeper.settings = settings(server.url, trust_file)
    result = await keeper.refresh(force=True)
    assert result.outcome is Outcome.UPDATED, result.detail
    assert keeper.current is not None
    assert keeper.current.generated_at == listing(13).generated_at
    # The same URL again: never backwards.
    server.publish(listing(12).xml)
    result = await keeper.refresh(force=True)
    assert result.outcome is Outcome.REJECTED
    assert "--force" in result.detail


async def test_override_accepts_an_older_list_and_every_process_takes_it(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(listing(14).xml)
    first = WhitelistKeeper(store, settings(server.url, trust_file))
    second = WhitelistKeeper(store, settings(server.url, trust_file))
    await first.refresh()
    assert await second.load()
    server.publish(listing(13).xml)
    refused = await first.refresh(force=True)
    assert refused.outcome is Outcome.REJECTED
    assert refused.detail.startswith("refused: generated 2025-03-13T14:54:10Z, before the copy")

    assert (await first.refresh(force=True, override=True)).outcome is Outcome.UPDATED

    assert first.current is not None
    assert first.current.generated_at == listing(13).generated_at
    assert (await second.refresh()).outcome is Outcome.SKIPPED
    assert second.current is not None
    assert second.current.generated_at == listing(13).generated_at


def test_fetch_force_says_it_overrides_the_generation_date_check() -> None:
    result = CliRunner().invoke(whitelist_cli, ["fetch", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--force" in text
    assert "DateDeGeneration is older than the copy in use" in text


async def test_min_entries_zero_still_refuses_an_empty_download(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    server.publish(gen.document([], gen.GENERATED_AT.replace(day=14)))
    keeper = WhitelistKeeper(store, settings(server.url, trust_file, min_entries=0))
    result = await keeper.refresh()
    assert result.outcome is Outcome.REJECTED
    assert result.detail.startswith("refused: 0 usable entries, fewer than the 1 required")
    assert keeper.current is None


async def test_empty_copy_in_the_store_is_never_loaded(store: Store) -> None:
    empty = gen.document([], gen.GENERATED_AT)
    await store.save_document(DOCUMENT, empty, {"url": "", "generated_at": "2025-03-13T14:54:10Z"})
    keeper = WhitelistKeeper(store, settings("", None))
    assert not await keeper.load()
    assert not keeper.is_listed(gen.CAPITALS_DOMAIN)


def test_configured_min_entries_is_never_below_one() -> None:
    for configured in (0, -3):
        config = Config(whitelist=WhitelistSection(min_entries=configured))
        assert settings_from_config(config).min_entries == 1


async def test_list_with_fewer_than_half_the_entries_in_use_is_refused_unless_forced(
    store: Store, server: WhitelistServer, trust_file: Path
) -> None:
    good = listing(13)
    server.publish(good.xml)
    keeper = WhitelistKeeper(store, settings(server.url, trust_file, min_entries=100))
    await keeper.refresh()
    shrunk = gen.generate(
        domains=400, dns=120, seed=14, generated_at=gen.GENERATED_AT.replace(day=14)
    )
    assert 2 * shrunk.entries < good.entries
    server.publish(shrunk.xml)

    result = await keeper.refresh(force=True)

    assert result.outcome is Outcome.REJECTED
    assert result.detail.startswith(
        f"refused: {shrunk.entries} usable entries, fewer than half of the {good.entries} "
        "of the copy in use"
    )
    assert "--force" in result.detail
    assert keeper.current is not None
    assert keeper.current.generated_at == good.generated_at
    assert (await keeper.refresh(force=True, override=True)).outcome is Outcome.UPDATED
    assert len(keeper.current.entries) == shrunk.entries
