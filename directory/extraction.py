"""The national address book: import of the ANS open-data extraction of every MSSanté BAL
(mssante-spec §5.4) into the store.

The extraction is a UTF-8, ``|``-separated text file with one header line and 31 columns (about
536,000 lines, 90 MB), served as a .zip holding one ``Extraction_Correspondance_MSSante_*.txt`` or
as the bare .txt. It is read as a stream: a reader thread parses lines into batches handed to the
event loop through a small queue (memory stays bounded whatever the file size) and the store
inserts each batch in its own short transaction, into a new generation that replaces the current
one only when the whole file went in (see :mod:`store.address_book`).

Bad lines (wrong number of fields, no or invalid address, unknown BAL type, not UTF-8, too long)
are skipped, counted and reported by line number and problem, never by content: the file holds
names. An address seen again on a later line is a duplicate: the first line wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import logging
import re
import shutil
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Final

from cryptography.hazmat.primitives.serialization import Encoding

from pki.errors import PkiError
from pki.loading import load_certificate_file
from store import Store
from store.address_book import AddressBookEntry, AddressBookImport
from store.text import departement_of, search_key

log = logging.getLogger(__name__)

# -- limits -----------------------------------------------------------------------------------

MAX_LINE_BYTES: Final = 16 * 1024  # real lines are about 170 octets
MAX_FIELD_CHARS: Final = 1000
MAX_DOWNLOAD_BYTES: Final = 256 * 1024 * 1024  # the zip is ~20 MB, the bare .txt ~90 MB
MAX_TEXT_BYTES: Final = 1024 * 1024 * 1024  # uncompressed, against zip bombs
MAX_LINES: Final = 5_000_000  # ten times today's file
SOCKET_TIMEOUT: Final = 60.0  # per socket operation
DOWNLOAD_DEADLINE: Final = 1800.0  # for the whole transfer
BATCH_LINES: Final = 2000  # rows per insert transaction
QUEUE_BATCHES: Final = 2  # parsed batches waiting for the database
KEPT_PROBLEMS: Final = 100  # bad lines and duplicates reported by line number
# A file with more bad lines than this share is not the format we know: refused as a whole.
MAX_BAD_LINE_RATIO: Final = 0.05
TOLERATED_BAD_LINES: Final = 10  # in any file, however small
# An import that would shrink the address book below this share of the current one is refused
# unless forced (a truncated or half-empty file must not replace a good book).
MIN_SIZE_RATIO: Final = 0.5
LEASE: Final = "addressbook-import"
LEASE_TTL: Final = timedelta(minutes=10)
LEASE_RENEW_SECONDS: Final = 60.0

BAL_TYPES: Final = frozenset({"PER", "ORG", "APP", "CAB"})
_ADDRESS = re.compile(r"^[^@\s]{1,64}@[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?$")
_L6 = re.compile(r"^(\d{5})\s+(.+)$")
_DEPARTEMENT = re.compile(r"^(?:\d{2,3}|2A|2B)$")


class ExtractionError(Exception):
    """The import did not happen; the current address book is unchanged."""


class ExtractionRefused(ExtractionError):
    """The file is not an extraction we can trust (header, format, size, too many bad lines)."""


class ExtractionUnavailable(ExtractionError):
    """The file could not be read or downloaded."""


class ImportBusy(ExtractionError):
    """Another process is importing the extraction."""


# -- the columns ------------------------------------------------------------------------------


def _column_key(name: str) -> str:
    """A header name folded so that case, accents and the " structure BAL" suffix do not matter."""
    key = search_key(name)
    return key.removesuffix(" structure bal").strip()


# Folded header name -> record field. Columns we do not keep are absent.
COLUMNS: Final[dict[str, str]] = {
    "type de bal": "bal_type",
    "adresse bal": "address",
    "type identifiant pp": "person_id_type",
    "identifiant pp": "person_id_raw",
    "identification nationale pp": "person_id",
    "type identifiant structure": "structure_id_type",
    "identification structure": "structure_id",
    "service de rattachement": "service",
    "civilite d exercice": "civility",
    "nom d exercice": "last_name",
    "prenom d exercice": "first_name",
    "code profession": "profession_code",
    "libelle profession": "profession",
    "code savoir faire": "specialty_code",
    "libelle savoir faire": "specialty",
    "dematerialisation": "dematerialisation",
    "raison sociale": "organisation",
    "enseigne commerciale": "trade_name",
    "l2complementlocalisation": "l2",
    "l3complementdistribution": "l3",
    "l4numerovoie": "l4_number",
    "l4complementnumerovoie": "l4_complement",
    "nl4typevoie": "l4_type",
    "l4libellevoie": "l4_name",
    "l5lieuditmention": "l5",
    "l6ligneacheminement": "l6",
    "code postal": "postal_code",
    "departement": "departement",
    "pays": "country",
}
REQUIRED: Final = ("type de bal", "adresse bal")
# Lengths the schema enforces (PostgreSQL refuses longer values: one would fail a whole batch).
_MAX_LENGTHS: Final = {
    "address": 320,
    "person_id": 64,
    "structure_id": 64,
    "civility": 32,
    "profession_code": 16,
    "postal_code": 16,
}


@dataclass(frozen=True, slots=True)
class Header:
    """Where each known field is in the lines of this file."""

    width: int
    positions: dict[str, int]

    @classmethod
    def parse(cls, line: str) -> Header:
        names = line.rstrip("\r\n").removeprefix("\ufeff").split("|")
        positions: dict[str, int] = {}
        for index, name in enumerate(names):
            field_name = COLUMNS.get(_column_key(name))
            if field_name is not None and field_name not in positions:
                positions[field_name] = index
        missing = [c for c in REQUIRED if COLUMNS[c] not in positions]
        if missing:
            raise ExtractionRefused(
                'not an MSSanté extraction: the header line lacks "Type de BAL" or '
                f'"Adresse BAL" ({len(names)} columns found)'
            )
        return cls(len(names), positions)


def _dematerialisation(value: str) -> bool | None:
    folded = value.strip().lower()
    if folded in ("true", "1", "oui", "vrai", "yes"):
        return True
    if folded in ("false", "0", "non", "faux", "no"):
        return False
    return None


def _departement(value: str, postal_code: str | None) -> str | None:
    code = value.strip().upper().split(" ", 1)[0].split("-", 1)[0].strip()
    if code.isdigit() and len(code) == 1:
        code = "0" + code
    if _DEPARTEMENT.match(code):
        return code
    return departement_of(postal_code)


def parse_line(text: str, header: Header) -> AddressBookEntry | str:
    """One data line (without its end of line) as an entry, or the problem that makes it bad.

    The problem names the field, never its content.
    """
    fields = text.split("|")
    if len(fields) != header.width:
        return f"expected {header.width} fields, found {len(fields)}"
    if "\x00" in text:
        return "NUL character"
    values: dict[str, str] = {}
    for name, index in header.positions.items():
        value = fields[index].strip()
        if len(value) > MAX_FIELD_CHARS:
            return f"field {name} longer than {MAX_FIELD_CHARS} characters"
        values[name] = value
    bal_type = values["bal_type"].upper()
    if bal_type not in BAL_TYPES:
        return "unknown BAL type" if bal_type else "no BAL type"
    address = values["address"].lower()
    if not address:
        return "no address"
    if not _ADDRESS.match(address) or ".." in address:
        return "invalid address"

    def get(name: str) -> str | None:
        return values.get(name) or None

    person_id = get("person_id")
    if person_id is None and get("person_id_raw"):
        # The national identifier is the type prefix followed by the identifier (§5.6).
        person_id = (values.get("person_id_type") or "") + values["person_id_raw"]
    l6 = get("l6")
    city, postal_code = l6, get("postal_code")
    if l6 and (m := _L6.match(l6)):
        city = m.group(2).strip()
        postal_code = postal_code or m.group(1)
    number = " ".join(
        v for v in (get("l4_number"), get("l4_complement"), get("l4_type"), get("l4_name")) if v
    )
    street = ", ".join(v for v in (get("l2"), get("l3"), number, get("l5")) if v) or None
    entry = AddressBookEntry(
        address=address,
        bal_type=bal_type,
        person_id=person_id,
        structure_id=get("structure_id"),
        service=get("service"),
        civility=get("civility"),
        last_name=get("last_name"),
        first_name=get("first_name"),
        profession_code=get("profession_code"),
        profession=get("profession"),
        specialty=get("specialty"),
        organisation=get("organisation"),
        trade_name=get("trade_name"),
        street=street,
        city=city,
        postal_code=postal_code,
        departement=_departement(values.get("departement", ""), postal_code),
        country=get("country"),
        dematerialisation=_dematerialisation(values.get("dematerialisation", "")),
    )
    for name, limit in _MAX_LENGTHS.items():
        value = getattr(entry, name)
        if value is not None and len(value) > limit:
            return f"field {name} longer than {limit} characters"
    return entry


# -- reading a source -------------------------------------------------------------------------


class _Bounded(io.RawIOBase):
    """A readable stream that stops at ``limit`` octets and at ``deadline`` (monotonic)."""

    def __init__(self, inner: IO[bytes], limit: int, deadline: float, what: str) -> None:
        self._inner = inner
        self._limit = limit
        self._deadline = deadline
        self._what = what
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if time.monotonic() > self._deadline:
            raise ExtractionUnavailable(f"{self._what}: transfer took longer than allowed")
        view = memoryview(buffer)
        read1 = getattr(self._inner, "read1", None)
        data = read1(len(view)) if read1 is not None else self._inner.read(len(view))
        self.count += len(data)
        if self.count > self._limit:
            raise ExtractionRefused(f"{self._what}: larger than {self._limit} octets")
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._inner.close()
        super().close()


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects only to http(s) (data.gouv.fr redirects its stable URL to the file)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if not newurl.lower().startswith(("http://", "https://")):
            raise ExtractionRefused(f"redirect to a non-HTTP URL refused: {newurl[:100]!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    if not ca_file:
        context = ssl.create_default_context()
    else:
        # PEM or PKCS#7 (the IGC-Santé chain is published both ways): loaded by pki.
        pem = "".join(
            c.public_bytes(Encoding.PEM).decode("ascii") for c in load_certificate_file(ca_file)
        )
        context = ssl.create_default_context(cadata=pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def describe_source(source: str) -> str:
    """The source as it may be shown and recorded: no user info, no query string."""
    parsed = urllib.parse.urlsplit(source)
    if parsed.scheme in ("http", "https"):
        host = parsed.hostname or ""
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{host}{port}{parsed.path}"
    return source


def _local_path(source: str) -> Path | None:
    parsed = urllib.parse.urlsplit(source)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ExtractionRefused(f"{source}: file:// URL on another host")
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" is a drive, not a scheme
        raise ExtractionRefused(
            f"unsupported source {describe_source(source)!r}: a file, file://, http:// or https://"
        )
    return Path(source)


@contextlib.contextmanager
def open_extraction(
    source: str,
    *,
    ca_file: str | None = None,
    max_download: int = MAX_DOWNLOAD_BYTES,
    deadline_seconds: float = DOWNLOAD_DEADLINE,
) -> Iterator[tuple[io.BufferedReader, str]]:
    """The text of the extraction as a binary stream, and its name (the member of a zip).

    ``source``: a path, ``file://``, ``http://`` or ``https://`` (checked against ``ca_file``, PEM
    or PKCS#7, else the system's trust store). A zip is recognised by its content, not its name.
    """
    shown = describe_source(source)
    deadline = time.monotonic() + deadline_seconds
    with contextlib.ExitStack() as stack:
        path = _local_path(source)
        if path is not None:
            try:
                stream = stack.enter_context(open(path, "rb"))
            except OSError as exc:
                raise ExtractionUnavailable(f"{shown}: {exc.strerror or exc}") from None
            name = path.name
            limit = MAX_TEXT_BYTES
        else:
            try:
                context = _tls_context(ca_file)
            except (PkiError, ssl.SSLError) as exc:
                raise ExtractionRefused(f"extraction CA file: {exc}") from None
            opener = urllib.request.build_opener(
                _HttpOnlyRedirects, urllib.request.HTTPSHandler(context=context)
            )
            request = urllib.request.Request(source, headers={"User-Agent": "colombe"})
            try:
                response = stack.enter_context(opener.open(request, timeout=SOCKET_TIMEOUT))
            except urllib.error.HTTPError as exc:
                raise ExtractionUnavailable(f"{shown}: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise ExtractionUnavailable(f"{shown}: {reason}") from None
            bounded = _Bounded(response, max_download, deadline, shown)
            stream = stack.enter_context(io.BufferedReader(bounded, 256 * 1024))
            name = Path(urllib.parse.urlsplit(response.geturl()).path).name or shown
            limit = MAX_TEXT_BYTES
        try:
            magic = stream.peek(4)[:4]
        except OSError as exc:
            raise ExtractionUnavailable(f"{shown}: {exc}") from None
        if magic == b"PK\x03\x04":
            if path is None:
                # A zip's directory is at its end: spool the download (bounded) to a file.
                spool = stack.enter_context(tempfile.TemporaryFile(prefix="colombe-extraction-"))
                try:
                    shutil.copyfileobj(stream, spool, 1024 * 1024)
                except OSError as exc:
                    raise ExtractionUnavailable(f"{shown}: {exc}") from None
                spool.seek(0)
                archive = stack.enter_context(zipfile.ZipFile(spool))
            else:
                try:
                    archive = stack.enter_context(zipfile.ZipFile(stream))
                except zipfile.BadZipFile as exc:
                    raise ExtractionRefused(f"{shown}: damaged zip ({exc})") from None
            member = _extraction_member(archive, shown)
            if member.file_size > MAX_TEXT_BYTES:
                raise ExtractionRefused(f"{shown}: {member.filename} is larger than allowed")
            try:
                inner = stack.enter_context(archive.open(member))
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                raise ExtractionRefused(f"{shown}: cannot open {member.filename}: {exc}") from None
            stream = stack.enter_context(
                io.BufferedReader(_Bounded(inner, limit, deadline, shown), 256 * 1024)
            )
            name = member.filename
        yield stream, name


def _extraction_member(archive: zipfile.ZipFile, shown: str) -> zipfile.ZipInfo:
    texts = [i for i in archive.infolist() if i.filename.lower().endswith(".txt")]
    if len(texts) > 1:
        texts = [i for i in texts if "extraction_correspondance_mssante" in i.filename.lower()]
    if len(texts) != 1:
        raise ExtractionRefused(
            f"{shown}: the zip must hold one Extraction_Correspondance_MSSante_*.txt "
            f"({len(texts)} candidate files)"
        )
    return texts[0]


# -- the report -------------------------------------------------------------------------------


@dataclass(slots=True)
class ExtractionReport:
    """What an import read and did. Line numbers count the header as line 1."""

    source: str
    name: str = ""
    lines: int = 0  # data lines read (empty lines skipped)
    entries: int = 0  # entries written
    bad_lines: int = 0
    duplicates: int = 0
    # (line number, problem) of the first KEPT_PROBLEMS bad lines
    bad_line_samples: list[tuple[int, str]] = field(default_factory=list)
    # line numbers of the first KEPT_PROBLEMS duplicate addresses
    duplicate_samples: list[int] = field(default_factory=list)
    seconds: float = 0.0
    generation: int | None = None

    def note_bad(self, line: int, problem: str) -> None:
        self.bad_lines += 1
        if len(self.bad_line_samples) < KEPT_PROBLEMS:
            self.bad_line_samples.append((line, problem))

    def note_duplicate(self, line: int) -> None:
        self.duplicates += 1
        if len(self.duplicate_samples) < KEPT_PROBLEMS:
            self.duplicate_samples.append(line)

    def detail(self) -> dict[str, Any]:
        """What the import record keeps (line numbers and problems, no content)."""
        return {
            "name": self.name,
            "lines": self.lines,
            "seconds": round(self.seconds, 1),
            "bad_line_samples": [[n, p] for n, p in self.bad_line_samples],
            "duplicate_samples": self.duplicate_samples,
        }


@dataclass(slots=True)
class _Batch:
    records: list[tuple[int, AddressBookEntry]]
    bad: list[tuple[int, str]]
    lines: int


class _LineReader:
    """Splits a binary stream into data lines, each bounded, and parses them into batches."""

    def __init__(self, stream: io.BufferedReader) -> None:
        self._stream = stream
        self.line_number = 0
        first = self._next_line()
        if first is None:
            raise ExtractionRefused("empty file: no header line")
        _, raw = first
        if raw is None:
            raise ExtractionRefused("the header line is longer than allowed")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ExtractionRefused("the header line is not UTF-8") from None
        self.header = Header.parse(text)

    def _next_line(self) -> tuple[int, bytes | None] | None:
        """(number, octets without end of line), None octets for a line too long; None at end."""
        line = self._stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return None
        self.line_number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            # Skip the rest of that line, without holding it.
            while (rest := self._stream.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            return self.line_number, None
        return self.line_number, line.rstrip(b"\r\n")

    def batch(self, size: int) -> _Batch | None:
        records: list[tuple[int, AddressBookEntry]] = []
        bad: list[tuple[int, str]] = []
        lines = 0
        while lines < size:
            if self.line_number > MAX_LINES:
                raise ExtractionRefused(f"more than {MAX_LINES} lines")
            item = self._next_line()
            if item is None:
                break
            number, raw = item
            if raw is None:
                lines += 1
                bad.append((number, f"line longer than {MAX_LINE_BYTES} octets"))
                continue
            if not raw.strip():
                continue
            lines += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.append((number, "not UTF-8"))
                continue
            parsed = parse_line(text, self.header)
            if isinstance(parsed, str):
                bad.append((number, parsed))
            else:
                records.append((number, parsed))
        if lines == 0:
            return None
        return _Batch(records, bad, lines)


def _read_in_thread(
    source: str,
    ca_file: str | None,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[tuple[str, Any]],
    stop: threading.Event,
) -> None:
    """The reader thread: opens the source and puts ("name", str), ("batch", _Batch)...,
    then ("end", None) or ("error", exception) on ``queue``. Stops when ``stop`` is set."""

    def put(kind: str, value: Any) -> bool:
        future = asyncio.run_coroutine_threadsafe(queue.put((kind, value)), loop)
        # Bounded waits: the consumer may have gone (cancelled import, stopping serve).
        while not stop.is_set():
            try:
                future.result(timeout=1.0)
                return True
            except TimeoutError:
                continue
        future.cancel()
        return False

    try:
        with open_extraction(source, ca_file=ca_file) as (stream, name):
            reader = _LineReader(stream)
            if not put("name", name):
                return
            while not stop.is_set():
                batch = reader.batch(BATCH_LINES)
                if batch is None:
                    break
                if not put("batch", batch):
                    return
        put("end", None)
    except RuntimeError:
        # The event loop is closed: nobody is waiting any more.
        return
    except ExtractionError as exc:
        with contextlib.suppress(RuntimeError):
            put("error", exc)
    except (OSError, zipfile.BadZipFile, EOFError, http.client.HTTPException) as exc:
        # A zip whose CRC or length is wrong, a connection cut in the middle.
        with contextlib.suppress(RuntimeError):
            put("error", ExtractionUnavailable(f"{describe_source(source)}: {exc!r}"))
    except Exception as exc:
        # Anything else is a bug: handed over as is, so the import fails instead of waiting.
        with contextlib.suppress(RuntimeError):
            put("error", exc)


# -- the import -------------------------------------------------------------------------------

Progress = Callable[[ExtractionReport], None]


async def import_extraction(
    store: Store,
    source: str,
    *,
    holder: str,
    ca_file: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ExtractionReport:
    """Import the extraction at ``source`` as the new national address book.

    Takes the ``addressbook-import`` lease for ``holder`` (raises :class:`ImportBusy` if another
    process holds it). On success the new book is current and the report says what was read; on
    any :class:`ExtractionError` the current book is unchanged. ``force`` accepts a file that
    would shrink the book below MIN_SIZE_RATIO of its size.
    """
    if not await store.acquire_lease(LEASE, holder, LEASE_TTL):
        raise ImportBusy("another process is importing the extraction; try again later")
    try:
        return await _import_holding_lease(store, source, holder, ca_file, force, progress)
    finally:
        with contextlib.suppress(Exception):
            await store.release_lease(LEASE, holder)


async def _import_holding_lease(
    store: Store,
    source: str,
    holder: str,
    ca_file: str | None,
    force: bool,
    progress: Progress | None,
) -> ExtractionReport:
    shown = describe_source(source)
    report = ExtractionReport(source=shown)
    started = time.monotonic()
    generation = await store.start_address_book_import(shown)
    report.generation = generation
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=QUEUE_BATCHES)
    stop = threading.Event()
    # A daemon thread, not the default executor: a download stuck in a socket read must not hold
    # the process at exit (serve stopping, an interrupted CLI).
    thread = threading.Thread(
        target=_read_in_thread,
        args=(source, ca_file, loop, queue, stop),
        name="extraction-reader",
        daemon=True,
    )
    thread.start()
    renewed = time.monotonic()
    try:
        # Bounded: the reader thread ends with "end" or "error", and reads at most MAX_LINES.
        while True:
            kind, value = await queue.get()
            if kind == "error":
                raise value
            if kind == "end":
                break
            if kind == "name":
                report.name = value
                continue
            await _write_batch(store, generation, value, report)
            if time.monotonic() - renewed > LEASE_RENEW_SECONDS:
                await store.acquire_lease(LEASE, holder, LEASE_TTL)
                renewed = time.monotonic()
            report.seconds = time.monotonic() - started
            if progress is not None:
                progress(report)
        _check(report, await store.current_address_book(), force)
        report.seconds = time.monotonic() - started
        await store.finish_address_book_import(
            generation,
            entries=report.entries,
            bad_lines=report.bad_lines,
            duplicates=report.duplicates,
            detail=report.detail(),
        )
        log.info(
            "address book imported from %s: %d entries, %d bad lines, %d duplicates, %.1f s",
            shown,
            report.entries,
            report.bad_lines,
            report.duplicates,
            report.seconds,
        )
        return report
    except BaseException as exc:
        stop.set()
        report.seconds = time.monotonic() - started
        detail = report.detail() | {"error": str(exc) or type(exc).__name__}
        # Shielded: a cancelled import (serve stopping) still deletes what it wrote.
        with contextlib.suppress(Exception):
            await asyncio.shield(store.fail_address_book_import(generation, detail))
        raise


async def _write_batch(
    store: Store, generation: int, batch: _Batch, report: ExtractionReport
) -> None:
    report.lines += batch.lines
    for number, problem in batch.bad:
        report.note_bad(number, problem)
    entries = [entry for _, entry in batch.records]
    added = await store.add_address_book_entries(generation, entries)
    for (number, _), was_added in zip(batch.records, added, strict=True):
        if was_added:
            report.entries += 1
        else:
            report.note_duplicate(number)


def _check(report: ExtractionReport, current: AddressBookImport | None, force: bool) -> None:
    if report.entries == 0:
        raise ExtractionRefused(
            f"no valid line in the extraction ({report.lines} lines, {report.bad_lines} bad)"
        )
    if report.bad_lines > max(TOLERATED_BAD_LINES, MAX_BAD_LINE_RATIO * report.lines):
        first = ", ".join(f"line {n}: {p}" for n, p in report.bad_line_samples[:3])
        raise ExtractionRefused(
            f"{report.bad_lines} bad lines out of {report.lines} (more than "
            f"{MAX_BAD_LINE_RATIO:.0%}): not the format expected ({first})"
        )
    if not force and current is not None and report.entries < MIN_SIZE_RATIO * current.entries:
        raise ExtractionRefused(
            f"the extraction has {report.entries} entries, the current address book "
            f"{current.entries}: refused as probably truncated (force to accept it)"
        )
