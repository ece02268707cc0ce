"""The import of the ANS extraction against hostile or broken sources, servers and stores: cut
downloads, slow servers, redirects, lost leases, damaged zips, overlong keys, control characters.
Test servers listen on 127.0.0.1 only and are stopped at the end of each test."""

from __future__ import annotations

import asyncio
import http.server
import io
import itertools
import logging
import lzma
import socket
import ssl
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

import colombe.addressbook as addressbook
import directory.extraction as ex
from colombe.addressbook import AddressBookImporter
from colombe.config import Config, DirectorySection
from directory.extraction import (
    ExtractionError,
    ExtractionRefused,
    ExtractionUnavailable,
    Header,
    ImportBusy,
    import_extraction,
    open_extraction,
    parse_line,
)
from pki.testpki import TestPki
from store import Store
from store.errors import InvalidInput
from store.schema import leases
from tests.colombe.processes import cli_env, refused, run
from tests.conftest import StoreLocation
from tests.directory.extraction_gen import HEADER


def _line(address: str, last: str = "DUPONT", first: str = "Jean") -> str:
    fields = [""] * 31
    fields[0], fields[1], fields[9], fields[10] = "PER", address, last, first
    fields[13], fields[14], fields[17] = "10", "Médecin", "True"
    fields[27], fields[28], fields[29] = "69003 LYON", "69003", "69"
    return "|".join(fields)


def _text(count: int, prefix: str = "a") -> bytes:
    lines = [HEADER] + [_line(f"{prefix}{i}@medecin.mssante.fr") for i in range(count)]
    return ("\n".join(lines) + "\n").encode()


def _zip(body: bytes, *extra: tuple[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr("Extraction_Correspondance_MSSante_202501010300.txt", body)
        for name, data in extra:
            archive.writestr(name, data)
    return buffer.getvalue()


async def _import_good_book(store: Store, tmp_path: Path) -> int:
    path = tmp_path / "good.txt"
    path.write_bytes(_text(3, "good"))
    report = await import_extraction(store, str(path), holder="test")
    assert report.generation is not None
    return report.generation


# -- servers ----------------------------------------------------------------------------------

Answer = Callable[[socket.socket, bytes, threading.Event], None]


class RawServer:
    """A TCP server on 127.0.0.1: each connection gets ``answer(conn, request, stopping)`` in a
    thread of its own (``stopping`` is set when the server closes: sleep on it)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def url(self, path: str = "/x.txt") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            request = b""
            try:
                while b"\r\n\r\n" not in request and (chunk := conn.recv(65536)):
                    request += chunk
                self.requests.append(request)
                self.answer(conn, request, self.stopping)
            except OSError:
                pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Answer], RawServer]]:
    servers: list[RawServer] = []

    def start(answer: Answer) -> RawServer:
        servers.append(RawServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _headers(length: int | None, extra: str = "") -> bytes:
    announced = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"HTTP/1.1 200 OK\r\n{announced}{extra}Connection: close\r\n\r\n".encode()


def _reader_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "extraction-reader" and t.is_alive()}


# -- H1: a download cut short -----------------------------------------------------------------


async def test_a_download_cut_short_is_unavailable_and_the_book_kept(
    store: Store, tmp_path: Path, raw_server: Callable[[Answer], RawServer]
) -> None:
    kept = await _import_good_book(store, tmp_path)
    body = _text(40)

    def half(conn: socket.socket, request: bytes, stopping: threading.Event) -> None:
        conn.sendall(_headers(len(body)) + body[: len(body) // 2])

    server = raw_server(half)
    with pytest.raises(ExtractionUnavailable, match=r"connection closed after \d+ of the \d+"):
        await import_extraction(store, server.url(), holder="test")
    current = await store.current_address_book()
    assert current is not None
    assert current.id == kept
    assert await store.address_book_size() == 3
    failed = (await store.address_book_imports())[0]
    assert failed.status == "failed"
    assert await store.address_book_size(failed.id) == 0


# -- H2: plain http, redirects, secrets in URLs -----------------------------------------------


@pytest.fixture
def https_server(test_pki: TestPki) -> Iterator[tuple[int, dict[str, Any]]]:
    """An HTTPS server on 127.0.0.1 with the TEST PKI's localhost certificate; ``routes`` maps a
    path to (status, headers, body)."""
    routes: dict[str, Any] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = routes.get(self.path.split("?")[0], (404, {}, b""))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    localhost = test_pki.certs["localhost"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(localhost.chain_path, localhost.key_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_plain_http_and_https_to_http_redirects_are_refused_and_urls_redacted(
    store: Store,
    tmp_path: Path,
    https_server: tuple[int, dict[str, Any]],
    trust_file: Path,
    raw_server: Callable[[Answer], RawServer],
) -> None:
    port, routes = https_server
    body = _text(5)

    def plain(conn: socket.socket, request: bytes, stopping: threading.Event) -> None:
        conn.sendall(_headers(len(body)) + body)

    loopback = raw_server(plain)
    routes["/x.txt"] = (200, {}, body)
    routes["/down"] = (302, {"Location": loopback.url()}, b"")
    routes["/away"] = (302, {"Location": "http://example.invalid/x.txt"}, b"")
    ca = str(trust_file)

    with pytest.raises(ExtractionRefused, match=r"plain http:// refused"):
        await import_extraction(store, "http://example.invalid/x.txt", holder="test")
    with pytest.raises(ExtractionRefused, match=r"redirect from https:// to http:// refused"):
        await import_extraction(store, f"https://localhost:{port}/down", holder="t", ca_file=ca)
    with pytest.raises(ExtractionRefused, match=r"redirect from https:// to http:// refused"):
        await import_extraction(store, f"https://localhost:{port}/away", holder="t", ca_file=ca)
    assert loopback.requests == []
    # Plain http to a loopback host is still allowed (tests, a local mirror).
    assert (await import_extraction(store, loopback.url(), holder="test")).entries == 5

    # A token in the query, a password in the user info: never shown, logged or recorded.
    report = await import_extraction(
        store, f"https://localhost:{port}/x.txt?token=SECRET-TOKEN", holder="t", ca_file=ca
    )
    assert report.entries == 5
    assert "SECRET-TOKEN" not in report.source
    with pytest.raises(ExtractionError) as failed:
        await import_extraction(
            store, f"https://user:SECRET-PASSWORD@localhost:{port}/x.txt", holder="t", ca_file=ca
        )
    assert "SECRET-PASSWORD" not in str(failed.value)
    for record in await store.address_book_imports(limit=30):
        assert "SECRET" not in record.source
        assert "SECRET" not in repr(record.detail)


# -- H3: the lease ----------------------------------------------------------------------------


async def test_the_lease_is_renewed_during_a_download_without_batches(
    store: Store, monkeypatch: pytest.MonkeyPatch, raw_server: Callable[[Answer], RawServer]
) -> None:
    monkeypatch.setattr(ex, "LEASE_TTL", timedelta(seconds=1))
    monkeypatch.setattr(ex, "LEASE_RENEW_SECONDS", 0.2)
    data = _zip(_text(40))

    def slow_zip(conn: socket.socket, request: bytes, stopping: threading.Event) -> None:
        conn.sendall(_headers(len(data)))
        step = len(data) // 10 + 1
        for i in range(0, len(data), step):
            conn.sendall(data[i : i + step])
            stopping.wait(0.25)

    server = raw_server(slow_zip)
    task = asyncio.create_task(import_extraction(store, server.url("/x.zip"), holder="A"))
    # The zip is spooled for 2.5 s, 2.5 lease TTLs, with no batch: the lease stays A's.
    for _ in range(10):
        await asyncio.sleep(0.2)
        assert not await store.acquire_lease(ex.LEASE, "B", timedelta(seconds=5))
    report = await task
    assert report.entries == 40


async def test_an_import_that_loses_its_lease_fails_and_the_book_is_kept(
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    raw_server: Callable[[Answer], RawServer],
) -> None:
    kept = await _import_good_book(store, tmp_path)
    monkeypatch.setattr(ex, "LEASE_TTL", timedelta(seconds=1))
    monkeypatch.setattr(ex, "LEASE_RENEW_SECONDS", 0.2)
    monkeypatch.setattr(ex, "BATCH_LINES", 5)
    body = _text(200)

    def dribble(conn: socket.socket, request: bytes, stopping: threading.Event) -> None:
        conn.sendall(_headers(len(body)))
        for i in range(0, len(body), 400):
            conn.sendall(body[i : i + 400])
            if stopping.wait(0.03):
                return

    server = raw_server(dribble)
    task = asyncio.create_task(import_extraction(store, server.url(), holder="A"))
    await asyncio.sleep(0.6)
    async with store.db.writer.begin() as conn:  # another process takes the lease
        await conn.execute(
            update(leases)
            .where(leases.c.name == ex.LEASE)
            .values(holder="B", expires_at=datetime(2999, 1, 1, tzinfo=UTC))
        )
    with pytest.raises(ExtractionError, match="lease was lost"):
        await task
    current = await store.current_address_book()
    assert current is not None
    assert current.id == kept
    failed = (await store.address_book_imports())[0]
    assert failed.status == "failed"
    assert failed.detail is not None
    assert "lease was lost" in failed.detail["error"]
    assert await store.address_book_size(failed.id) == 0


async def test_store_errors_during_an_import_are_extraction_errors(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.txt"
    path.write_bytes(_text(3))

    async def not_running(*args: object, **kwargs: object) -> None:
        raise InvalidInput("address book import 1 is not running")

    monkeypatch.setattr(store, "finish_address_book_import", not_running)
    with pytest.raises(ExtractionUnavailable, match="is not running"):
        await import_extraction(store, str(path), holder="test")
    assert await store.current_address_book() is None
    # The lease is released.
    assert await store.acquire_lease(ex.LEASE, "other", timedelta(seconds=5))


# -- H4: search keys within the index limits --------------------------------------------------


async def test_a_line_whose_search_key_is_too_long_is_a_bad_line(
    store: Store, tmp_path: Path
) -> None:
    words = " ".join(f"MOT{i:05d}" for i in range(110))  # 989 characters, under MAX_FIELD_CHARS
    fields = _line("long@medecin.mssante.fr").split("|")
    fields[7] = fields[9] = fields[10] = fields[18] = fields[19] = words
    lines = [HEADER, _line("a@medecin.mssante.fr"), "|".join(fields), _line("b@medecin.mssante.fr")]
    path = tmp_path / "e.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    report = await import_extraction(store, str(path), holder="test")

    assert (report.entries, report.bad_lines) == (2, 1)
    assert report.bad_line_samples == [
        (3, f"name longer than {ex.MAX_KEY_CHARS} characters once folded")
    ]
    assert await store.address_book_size() == 2


# -- M1: the deadline covers the headers ------------------------------------------------------


def test_the_deadline_covers_connecting_and_headers(
    raw_server: Callable[[Answer], RawServer],
) -> None:
    def drip_headers(conn: socket.socket, request: bytes, stopping: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for i in range(20):
            conn.sendall(b"X-A%d: b\r\n" % i)
            if stopping.wait(0.3):
                return

    server = raw_server(drip_headers)
    started = time.monotonic()
    with (
        pytest.raises(ExtractionUnavailable, match=r"longer than allowed|no answer"),
        open_extraction(server.url(), deadline_seconds=1.0),
    ):
        pass
    assert time.monotonic() - started < 2.5


# -- M2: the serve component ------------------------------------------------------------------


def _component(store: Store, url: str, interval: int) -> AddressBookImporter:
    config = Config(directory=DirectorySection(extraction_url=url, import_interval=interval))
    component = AddressBookImporter.from_config(config, store)
    assert component is not None
    return component


def _record_attempts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    attempts: list[tuple[float, float]] = []

    async def recorded(*args: Any, **kwargs: Any) -> ex.ExtractionReport:
        started = time.monotonic()
        try:
            return await import_extraction(*args, **kwargs)
        finally:
            attempts.append((started, time.monotonic()))

    monkeypatch.setattr(addressbook, "import_extraction", recorded)
    return attempts


async def _run_until(component: AddressBookImporter, done: Callable[[], bool]) -> None:
    await component.start()
    try:
        for _ in range(200):
            if done():
                return
            await asyncio.sleep(0.05)
        pytest.fail("the component did not get there in 10 s")
    finally:
        await component.stop()


async def test_serve_backs_off_after_refusals_but_not_after_unavailable_sources(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(addressbook, "RETRY_SECONDS", 0.04)
    attempts = _record_attempts(monkeypatch)
    bad = tmp_path / "bad.txt"
    bad.write_text("Nom|Prénom\nDUPONT|Jean\n", encoding="utf-8")

    await _run_until(_component(store, bad.as_uri(), 1), lambda: len(attempts) >= 7)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(attempts)]
    # 0.04, 0.08, 0.16, 0.32, 0.64, then the interval (1 s). A sleep is never shorter than
    # asked (lower bounds exact); a loaded machine may make it longer (upper bounds loose).
    for i, gap in enumerate(gaps[:5]):
        assert gap >= 0.95 * 0.04 * 2**i, gaps
    assert 0.95 <= gaps[5] < 1.6, gaps

    attempts.clear()
    missing = _component(store, (tmp_path / "missing.txt").as_uri(), 1)
    await _run_until(missing, lambda: len(attempts) >= 6)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(attempts)]
    assert max(gaps) < 0.5, gaps  # no back-off: 0.04 s each


async def test_serve_bounds_each_import_in_time(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    raw_server: Callable[[Answer], RawServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(addressbook, "DOWNLOAD_DEADLINE", 0.5)
    monkeypatch.setattr(addressbook, "IMPORT_MARGIN", 0.5)

    def silent(conn: socket.socket, request: bytes, stopping: threading.Event) -> None:
        stopping.wait(30)

    server = raw_server(silent)
    caplog.set_level(logging.WARNING, logger="colombe.addressbook")
    started = time.monotonic()
    await _run_until(
        _component(store, server.url(), 3600),
        lambda: any("took longer than" in r.getMessage() for r in caplog.records),
    )
    assert time.monotonic() - started < 3
    assert await store.current_address_book() is None
    assert await store.acquire_lease(ex.LEASE, "other", timedelta(seconds=5))


class EtagServer:
    """Serves one file with an ETag over http on 127.0.0.1, answering 304 to a matching
    If-None-Match; counts the answers."""

    def __init__(self, start: Callable[[Answer], RawServer]) -> None:
        self.body = b""
        self.etag = ""
        self.answers: list[tuple[int, str]] = []
        self.server = start(self._answer)

    def publish(self, body: bytes, etag: str) -> None:
        self.body, self.etag = body, etag

    def _answer(self, conn: socket.socket, request: bytes, stopping: threading.Event) -> None:
        headers = request.decode("latin-1").lower()
        if f"if-none-match: {self.etag}".lower() in headers:
            self.answers.append((304, self.etag))
            conn.sendall(f"HTTP/1.1 304 Not Modified\r\nETag: {self.etag}\r\n\r\n".encode())
            return
        self.answers.append((200, self.etag))
        conn.sendall(_headers(len(self.body), f"ETag: {self.etag}\r\n") + self.body)

    def count(self, status: int, etag: str) -> int:
        return self.answers.count((status, etag))


async def test_serve_does_not_download_again_a_file_already_refused_or_imported(
    store: Store, monkeypatch: pytest.MonkeyPatch, raw_server: Callable[[Answer], RawServer]
) -> None:
    monkeypatch.setattr(addressbook, "RETRY_SECONDS", 0.02)
    source = EtagServer(raw_server)
    source.publish(b"Nom|Prenom\nDUPONT|Jean\n", '"bad1"')
    url = source.server.url()

    await _run_until(_component(store, url, 1), lambda: source.count(304, '"bad1"') >= 2)
    assert source.count(200, '"bad1"') == 1
    assert len(await store.address_book_imports()) == 1

    source.publish(_text(4), '"good2"')
    await _run_until(_component(store, url, 1), lambda: source.count(304, '"good2"') >= 2)
    assert source.count(200, '"good2"') == 1
    imports = await store.address_book_imports()
    assert [(i.status, (i.detail or {}).get("etag")) for i in imports] == [
        ("done", '"good2"'),
        ("failed", '"bad1"'),
    ]
    current = await store.current_address_book()
    assert current is not None
    assert current.entries == 4


# -- M3: damaged zips -------------------------------------------------------------------------


def _damaged_zips(tmp_path: Path) -> list[Path]:
    body = _text(3000)
    paths = []
    for method, name in ((zipfile.ZIP_LZMA, "lzma"), (zipfile.ZIP_DEFLATED, "deflate")):
        data = bytearray(_zip(body, method=method))
        for i in range(200, 400):
            data[i] ^= 0x55
        paths.append(tmp_path / f"{name}.zip")
        paths[-1].write_bytes(bytes(data))
    stored = bytearray(_zip(body, method=zipfile.ZIP_STORED))
    stored[len(stored) // 2] ^= 0x01  # a wrong CRC
    paths.append(tmp_path / "crc.zip")
    paths[-1].write_bytes(bytes(stored))
    return paths


async def test_damaged_zips_are_refused_and_the_book_kept(store: Store, tmp_path: Path) -> None:
    kept = await _import_good_book(store, tmp_path)
    for path in _damaged_zips(tmp_path):
        with pytest.raises(ExtractionRefused, match="damaged or unreadable"):
            await import_extraction(store, str(path), holder="test")
    current = await store.current_address_book()
    assert current is not None
    assert current.id == kept
    assert lzma  # the LZMA zip above needs the module


def test_the_cli_says_in_one_line_that_a_damaged_zip_is_not_imported(
    store_location: StoreLocation, tmp_path: Path
) -> None:
    run(
        "init",
        "--dir",
        str(tmp_path),
        "--database-url",
        store_location.url,
        "--blob-dir",
        str(store_location.blob_dir),
        cwd=tmp_path,
    )
    damaged = _damaged_zips(tmp_path)[0]
    line = refused("directory", "import-extraction", str(damaged), cwd=tmp_path, env=cli_env())
    assert line.startswith("Error: extraction not imported: ")
    assert "damaged or unreadable file (LZMAError" in line


# -- M4: a cancelled import stops reading -----------------------------------------------------


async def test_a_cancelled_import_stops_its_reader_thread_at_once(
    store: Store, raw_server: Callable[[Answer], RawServer]
) -> None:
    sent = threading.Event()

    def stall(conn: socket.socket, request: bytes, stopping: threading.Event) -> None:
        # A zip being spooled, then silence.
        conn.sendall(_headers(10_000_000) + b"PK\x03\x04" + b"\0" * 1000)
        sent.set()
        stopping.wait(30)

    server = raw_server(stall)
    before = _reader_threads()
    task = asyncio.create_task(import_extraction(store, server.url("/x.zip"), holder="test"))
    for _ in range(100):
        if sent.is_set():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    readers = _reader_threads() - before
    assert readers
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 2
    for thread in readers:
        await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in readers)
    assert await store.current_address_book() is None


# -- L1, L2, L3 -------------------------------------------------------------------------------


async def test_an_unexpected_error_in_the_reader_thread_fails_the_import(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.txt"
    path.write_bytes(_text(3))

    def broken(text: str, header: Header) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(ex, "parse_line", broken)
    with pytest.raises(ExtractionError, match="RuntimeError: boom"):
        await asyncio.wait_for(import_extraction(store, str(path), holder="test"), 10)


async def test_a_zip_whose_first_octets_arrive_one_at_a_time_is_a_zip(
    store: Store, raw_server: Callable[[Answer], RawServer]
) -> None:
    data = _zip(_text(30))

    def trickle(conn: socket.socket, request: bytes, stopping: threading.Event) -> None:
        conn.sendall(_headers(len(data)))
        stopping.wait(0.2)
        conn.sendall(data[:1])
        stopping.wait(0.2)
        conn.sendall(data[1:])

    server = raw_server(trickle)
    report = await import_extraction(store, server.url("/x.zip"), holder="test")
    assert report.name.startswith("Extraction_Correspondance_MSSante_")
    assert report.entries == 30


async def test_a_zip_made_on_a_mac_with_folders_is_imported(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "mac.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.mkdir("Extraction")
        archive.writestr("Extraction/Extraction_Correspondance_MSSante_1.txt", _text(20))
        archive.writestr("__MACOSX/Extraction/._Extraction_Correspondance_MSSante_1.txt", b"\0\5")
        archive.mkdir("__MACOSX/Extraction/sub.txt")
    path.write_bytes(buffer.getvalue())
    report = await import_extraction(store, str(path), holder="test")
    assert report.entries == 20


# -- L6: control characters, addresses --------------------------------------------------------


def test_control_characters_and_addresses_that_are_not_dot_atoms_make_bad_lines() -> None:
    header = Header.parse(HEADER)
    for name in ("DU\x1b[2JPONT", "DU\x7fPONT", "DU\x9bPONT", "DU\tPONT", "DU\x00PONT"):
        assert parse_line(_line("a@medecin.mssante.fr", last=name), header) == ("control character")
    for address in (
        "jean(x)@medecin.mssante.fr",
        'a"b@medecin.mssante.fr',
        "élodie@medecin.mssante.fr",
        ".a@medecin.mssante.fr",
        "a.@medecin.mssante.fr",
        "a..b@medecin.mssante.fr",
        "a<b>@medecin.mssante.fr",
        "a;b@medecin.mssante.fr",
        "a@b@medecin.mssante.fr",
        f"{'a' * 65}@medecin.mssante.fr",
    ):
        assert parse_line(_line(address), header) == "invalid address", address
    for address in ("o'brien+tag@medecin.mssante.fr", "Jean.Dupont-2@Medecin.MSSante.fr"):
        entry = parse_line(_line(address), header)
        assert not isinstance(entry, str), address
        assert entry.address == address.lower()


async def test_busy_is_still_busy(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "e.txt"
    path.write_bytes(_text(2))
    assert await store.acquire_lease(ex.LEASE, "other-process", timedelta(minutes=5))
    with pytest.raises(ImportBusy):
        await import_extraction(store, str(path), holder="test")
