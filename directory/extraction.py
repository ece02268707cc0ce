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
import lzma
import re
import shutil
import ssl
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, NamedTuple

# The download's deadline and watchdog, and the rules for plain http and for showing URLs, are
# those of the whitelist download.
from directory.bounded_http import (
    BoundedHTTPHandler,
    BoundedHTTPSHandler,
    Deadline,
    SafeRedirects,
    client_context,
    is_loopback_host,
    redact_url,
    scrub_secrets,
)
from pki.errors import PkiError
from store import Store
from store.address_book import AddressBookEntry, AddressBookImport, folded_key
from store.text import departement_of, search_key

log = logging.getLogger(__name__)

# -- limits -----------------------------------------------------------------------------------

MAX_LINE_BYTES: Final = 16 * 1024  # real lines are about 170 octets
MAX_FIELD_CHARS: Final = 1000
# Longest search key (name_key, city_key, profession_key) an entry may have, in characters. The
# keys are ASCII (store.text.search_key), so characters are octets. PostgreSQL refuses a btree
# index row over 2704 octets, and one such row fails the whole batch; the widest index,
# (generation, city_key, name_key, address), stays below it with keys of at most 1000 octets
# (1000 + 1000 + 320 + overhead). name_key joins five fields of up to MAX_FIELD_CHARS each.
MAX_KEY_CHARS: Final = 1000
MAX_DOWNLOAD_BYTES: Final = 256 * 1024 * 1024  # the zip is ~20 MB, the bare .txt ~90 MB
MAX_TEXT_BYTES: Final = 1024 * 1024 * 1024  # uncompressed, against zip bombs
MAX_LINES: Final = 5_000_000  # ten times today's file
SOCKET_TIMEOUT: Final = 60.0  # per socket operation
# For the whole reading of the source: connecting, TLS, status line, headers, redirects, body.
DOWNLOAD_DEADLINE: Final = 1800.0
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
# The lease is renewed every LEASE_RENEW_SECONDS by a task of its own, whatever the import is
# doing (a download, a long transaction); the TTL leaves room for several renewals to fail
# (the store busy or briefly away) before another process may take it.
LEASE_RENEW_SECONDS: Final = 60.0
LEASE_TTL: Final = timedelta(minutes=10)

BAL_TYPES: Final = frozenset({"PER", "ORG", "APP", "CAB"})
# The local part is a dot-atom of RFC 5322 atext (lower case: addresses are folded), the domain
# LDH labels; nothing that a terminal or a web page could take for markup or a control sequence.
_ATEXT = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]"
_ADDRESS = re.compile(
    r"(?=[^@]{1,64}@)" + _ATEXT + r"+(?:\." + _ATEXT + r"+)*@[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?"
)
# C0 controls, DEL and C1 controls (U+009B is an 8-bit CSI): never stored, never shown.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
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
    if _CONTROL.search(text):
        return "control character"
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
    if not _ADDRESS.fullmatch(address) or ".." in address:
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
    for key, value in (
        ("name", entry.name_key),
        ("city", folded_key(entry.city)),
        ("profession", folded_key(entry.profession, entry.specialty)),
    ):
        if len(value) > MAX_KEY_CHARS:
            return f"{key} longer than {MAX_KEY_CHARS} characters once folded"
    return entry


# -- reading a source -------------------------------------------------------------------------


class ImportCancelled(ExtractionError):
    """The reading of the source was stopped (the import was cancelled or failed)."""


class NotModified(ExtractionError):
    """The server answered ``304 Not Modified`` to a conditional request."""


class _Stop:
    """Set by the event loop, seen by the reader thread: every read of the source checks it, and
    setting it aborts the download under way (a read blocked on a silent server ends at once)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._transfers: list[Deadline] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        with self._lock:
            self._event.set()
            transfers = list(self._transfers)
        for transfer in transfers:
            transfer.abort()

    def attach(self, transfer: Deadline) -> None:
        with self._lock:
            self._transfers.append(transfer)
            stopped = self._event.is_set()
        if stopped:
            transfer.abort()


class _Bounded(io.RawIOBase):
    """A readable stream that stops at ``limit`` octets and at ``deadline`` (monotonic), checks
    ``stop`` before and after every read, and refuses an end of stream before the ``expected``
    length (an HTTP body cut short: http.client's read1 then returns b"" without an error)."""

    def __init__(
        self,
        inner: IO[bytes],
        limit: int,
        deadline: float,
        what: str,
        *,
        stop: _Stop | None = None,
        transfer: Deadline | None = None,
        expected: int | None = None,
    ) -> None:
        self._inner = inner
        self._limit = limit
        self._deadline = deadline
        self._what = what
        self._stop = stop
        self._transfer = transfer
        self._expected = expected
        self._pending = b""
        self.count = 0

    def readable(self) -> bool:
        return True

    def _check(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise ImportCancelled(f"{self._what}: reading stopped")
        if time.monotonic() > self._deadline or (
            self._transfer is not None and self._transfer.expired
        ):
            raise ExtractionUnavailable(f"{self._what}: transfer took longer than allowed")

    def _read(self, size: int) -> bytes:
        self._check()
        read1 = getattr(self._inner, "read1", None)
        data: bytes = read1(size) if read1 is not None else self._inner.read(size)
        self._check()  # the watchdog or a stop may have cut the connection: data may be short
        self.count += len(data)
        if self.count > self._limit:
            raise ExtractionRefused(f"{self._what}: larger than {self._limit} octets")
        if not data and size and self._expected is not None and self.count < self._expected:
            raise ExtractionUnavailable(
                f"{self._what}: connection closed after {self.count} of the "
                f"{self._expected} octets announced"
            )
        return data

    def head(self, size: int) -> bytes:
        """The first ``size`` octets (fewer only at the end of the stream), read again by the
        next reads: one read may return a single octet."""
        while len(self._pending) < size and (data := self._read(size - len(self._pending))):
            self._pending += data
        return self._pending[:size]

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        if self._pending:
            size = min(len(view), len(self._pending))
            view[:size] = self._pending[:size]
            self._pending = self._pending[size:]
            return size
        data = self._read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._inner.close()
        super().close()


def describe_source(source: str) -> str:
    """The source as it may be shown, logged and recorded: user info and query string replaced
    by ``***`` (a token often travels there)."""
    if urllib.parse.urlsplit(source).scheme.lower() in ("http", "https"):
        return redact_url(source)
    return source


def _scrub(text: str, source: str) -> str:
    """``text`` without the secrets of ``source`` (user info, password, query), for messages
    that may quote them (urllib's and http.client's do); a local path has none."""
    if not source.lower().startswith(("http://", "https://")):
        return text
    return scrub_secrets(text, source)


def _local_path(source: str, shown: str) -> Path | None:
    parsed = urllib.parse.urlsplit(source)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ExtractionRefused(f"{shown}: file:// URL on another host")
        return Path(urllib.parse.unquote(parsed.path))
    if scheme == "http":
        if not is_loopback_host(parsed.hostname):
            raise ExtractionRefused(
                f"plain http:// refused for {shown}: anyone on the path could change the "
                "address book; use https:// (http:// only to a loopback host)"
            )
        return None
    if scheme == "https":
        return None
    if scheme and len(scheme) > 1:  # "C:" is a drive, not a scheme
        raise ExtractionRefused(
            f"unsupported source {shown!r}: a file, file://, https:// (or http:// to a loopback "
            "host)"
        )
    return Path(source)


# Errors that say the file itself is damaged (a zip's CRC, a truncated compressed stream...).
_DAMAGED: Final = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    ValueError,
    struct.error,
)


def _failure(exc: BaseException, source: str, shown: str) -> ExtractionError:
    """Any error met while reading ``source`` as an :class:`ExtractionError`, its message
    scrubbed of the source's secrets."""
    if isinstance(exc, ExtractionError):
        return exc
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return _failure(exc.reason, source, shown)
    what = f"{type(exc).__name__}: {exc}"
    error: ExtractionError
    if isinstance(exc, urllib.error.URLError):
        error = ExtractionUnavailable(f"{shown}: {exc.reason}")
    elif isinstance(exc, ssl.SSLCertVerificationError):
        error = ExtractionUnavailable(f"{shown}: server certificate refused ({exc.verify_message})")
    elif isinstance(exc, TimeoutError):
        error = ExtractionUnavailable(f"{shown}: no answer within {SOCKET_TIMEOUT:g} s")
    elif isinstance(exc, _DAMAGED):
        error = ExtractionRefused(f"{shown}: damaged or unreadable file ({what})")
    elif isinstance(exc, (OSError, http.client.HTTPException)):
        error = ExtractionUnavailable(f"{shown}: {what}")
    else:
        log.debug("unexpected error reading the extraction", exc_info=exc)
        error = ExtractionUnavailable(f"{shown}: unexpected error ({what})")
    return type(error)(_scrub(str(error), source))


class OpenedExtraction(NamedTuple):
    """The text of the extraction, its name and the server's validators (None for a file)."""

    stream: BinaryIO
    name: str
    etag: str | None = None
    last_modified: str | None = None


def _open_http(
    stack: contextlib.ExitStack,
    source: str,
    shown: str,
    ca_file: str | None,
    transfer: Deadline,
    etag: str | None,
    last_modified: str | None,
) -> http.client.HTTPResponse:
    try:
        context = client_context(ca_file)
    except (PkiError, ssl.SSLError, OSError) as exc:
        raise ExtractionRefused(f"extraction CA file: {exc}") from None
    handlers: list[urllib.request.BaseHandler] = [
        SafeRedirects(ExtractionRefused),
        BoundedHTTPHandler(transfer),
        BoundedHTTPSHandler(transfer, context),
    ]
    if is_loopback_host(urllib.parse.urlsplit(source).hostname):
        handlers.append(urllib.request.ProxyHandler({}))  # a proxy never serves the loopback
    request = urllib.request.Request(source, headers={"User-Agent": "colombe"})
    # RFC 9110 §13.1.2/§13.1.3: with both, the server uses If-None-Match.
    if etag:
        request.add_header("If-None-Match", etag)
    if last_modified:
        request.add_header("If-Modified-Since", last_modified)
    try:
        response: http.client.HTTPResponse = urllib.request.build_opener(*handlers).open(
            request, timeout=SOCKET_TIMEOUT
        )
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 304 and (etag or last_modified):
                raise NotModified(f"{shown}: not modified") from None
            raise ExtractionUnavailable(f"{shown}: HTTP {exc.code} {exc.reason}") from None
    return stack.enter_context(response)


@contextlib.contextmanager
def open_extraction(
    source: str,
    *,
    ca_file: str | None = None,
    max_download: int = MAX_DOWNLOAD_BYTES,
    deadline_seconds: float = DOWNLOAD_DEADLINE,
    etag: str | None = None,
    last_modified: str | None = None,
    stop: _Stop | None = None,
) -> Iterator[OpenedExtraction]:
    """The text of the extraction as a binary stream, and its name (the member of a zip).

    ``source``: a path, ``file://``, ``https://`` (checked against ``ca_file``, PEM or PKCS#7,
    else the system's trust store), or ``http://`` to a loopback host only; redirects from https
    to http are refused. ``deadline_seconds`` bounds the whole reading, connection, TLS, headers
    and redirects included. With ``etag``/``last_modified`` the request is conditional and a
    ``304`` raises :class:`NotModified`. A zip is recognised by its content, not its name.
    Every error, including those of the reads made in the ``with`` block, is an
    :class:`ExtractionError` whose message never shows the URL's user, password or query.
    """
    shown = describe_source(source)
    stop = stop if stop is not None else _Stop()
    deadline = time.monotonic() + deadline_seconds
    try:
        with contextlib.ExitStack() as stack:
            found_etag = found_last_modified = None
            path = _local_path(source, shown)
            if path is not None:
                try:
                    handle: IO[bytes] = stack.enter_context(open(path, "rb"))
                except OSError as exc:
                    raise ExtractionUnavailable(f"{shown}: {exc.strerror or exc}") from None
                raw = _Bounded(handle, MAX_TEXT_BYTES, deadline, shown, stop=stop)
                name = path.name
            else:
                transfer = Deadline(deadline_seconds, socket_timeout=SOCKET_TIMEOUT)
                stack.callback(transfer.close)
                stop.attach(transfer)
                response = _open_http(stack, source, shown, ca_file, transfer, etag, last_modified)
                length = response.length
                if length is not None and length > max_download:
                    raise ExtractionRefused(
                        f"{shown}: announces {length} octets, more than {max_download}"
                    )
                raw = _Bounded(
                    response,
                    max_download,
                    deadline,
                    shown,
                    stop=stop,
                    transfer=transfer,
                    expected=length,
                )
                found_etag = response.headers.get("ETag")
                found_last_modified = response.headers.get("Last-Modified")
                name = Path(urllib.parse.urlsplit(response.geturl()).path).name or shown
            stack.callback(raw.close)
            if raw.head(4) != b"PK\x03\x04":
                stream = io.BufferedReader(raw, 256 * 1024)
            else:
                if path is not None:
                    handle.seek(0)
                    zipped = handle
                else:
                    # A zip's directory is at its end: spool the download (bounded) to a file.
                    zipped = stack.enter_context(
                        tempfile.TemporaryFile(prefix="colombe-extraction-")
                    )
                    shutil.copyfileobj(raw, zipped, 1024 * 1024)
                    zipped.seek(0)
                archive = stack.enter_context(zipfile.ZipFile(zipped))
                member = _extraction_member(archive, shown)
                if member.file_size > MAX_TEXT_BYTES:
                    raise ExtractionRefused(f"{shown}: {member.filename} is larger than allowed")
                try:
                    inner = stack.enter_context(archive.open(member))
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                    raise ExtractionRefused(
                        f"{shown}: cannot open {member.filename}: {exc}"
                    ) from None
                stream = io.BufferedReader(
                    _Bounded(inner, MAX_TEXT_BYTES, deadline, shown, stop=stop), 256 * 1024
                )
                stack.callback(stream.close)
                name = member.filename
            yield OpenedExtraction(stream, name, found_etag, found_last_modified)
    except Exception as exc:
        if stop.is_set() and not isinstance(exc, ExtractionError):
            raise ImportCancelled(f"{shown}: reading stopped") from None
        error = _failure(exc, source, shown)
        if error is exc:
            raise
        raise error from None


def _extraction_member(archive: zipfile.ZipFile, shown: str) -> zipfile.ZipInfo:
    # Directory entries and the resource forks a Mac adds (__MACOSX/, ._name) are not candidates.
    texts = [
        i
        for i in archive.infolist()
        if not i.is_dir()
        and not i.filename.startswith("__MACOSX/")
        and not Path(i.filename).name.startswith("._")
        and i.filename.lower().endswith(".txt")
    ]
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
    # The server's validators of the file read (https), kept with the import record.
    etag: str | None = None
    last_modified: str | None = None
    # The server answered 304 to the validators given: nothing was imported or recorded.
    not_modified: bool = False

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
            "etag": self.etag,
            "last_modified": self.last_modified,
        }


@dataclass(slots=True)
class _Batch:
    records: list[tuple[int, AddressBookEntry]]
    bad: list[tuple[int, str]]
    lines: int


class _LineReader:
    """Splits a binary stream into data lines, each bounded, and parses them into batches."""

    def __init__(self, stream: BinaryIO) -> None:
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
    etag: str | None,
    last_modified: str | None,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[tuple[str, Any]],
    stop: _Stop,
) -> None:
    """The reader thread: opens the source and puts ("opened", (name, etag, last_modified)),
    ("batch", _Batch)..., then ("end", None), or ("not_modified", None), or ("error",
    ExtractionError) on ``queue``. Stops when ``stop`` is set."""

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
        with open_extraction(
            source, ca_file=ca_file, etag=etag, last_modified=last_modified, stop=stop
        ) as opened:
            if not put("opened", (opened.name, opened.etag, opened.last_modified)):
                return
            reader = _LineReader(opened.stream)
            while not stop.is_set():
                batch = reader.batch(BATCH_LINES)
                if batch is None:
                    break
                if not put("batch", batch):
                    return
        put("end", None)
    except NotModified:
        with contextlib.suppress(RuntimeError):
            put("not_modified", None)
    except Exception as exc:
        # Whatever happened, the consumer hears of it (it would wait for ever otherwise), unless
        # it is gone: the import stopped us, or the event loop is closed.
        if stop.is_set() or loop.is_closed():
            return
        error = _failure(exc, source, describe_source(source))
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            put("error", error)


# -- the import -------------------------------------------------------------------------------

Progress = Callable[[ExtractionReport], None]


def _store_failure(exc: Exception) -> ExtractionError:
    """An error of the store (or a bug) during an import, as an :class:`ExtractionError`."""
    if isinstance(exc, ExtractionError):
        return exc
    log.debug("address book import: unexpected error", exc_info=exc)
    return ExtractionUnavailable(f"store: {type(exc).__name__}: {exc}")


async def import_extraction(
    store: Store,
    source: str,
    *,
    holder: str,
    ca_file: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    etag: str | None = None,
    last_modified: str | None = None,
) -> ExtractionReport:
    """Import the extraction at ``source`` as the new national address book.

    Takes the ``addressbook-import`` lease for ``holder`` (raises :class:`ImportBusy` if another
    process holds it) and renews it every LEASE_RENEW_SECONDS while the import runs; if it is
    lost, the import stops. On success the new book is current and the report says what was
    read; on any :class:`ExtractionError` (every error is one) the current book is unchanged.
    ``force`` accepts a file that would shrink the book below MIN_SIZE_RATIO of its size.
    ``etag``/``last_modified``: the validators of a file already seen; if the server answers
    304, nothing is imported or recorded and the report says ``not_modified``.
    """
    try:
        taken = await store.acquire_lease(LEASE, holder, LEASE_TTL)
    except Exception as exc:
        raise _store_failure(exc) from None
    if not taken:
        raise ImportBusy("another process is importing the extraction; try again later")
    lost: asyncio.Future[ExtractionError] = asyncio.get_running_loop().create_future()
    keeper = asyncio.create_task(_keep_lease(store, holder, lost), name="addressbook-lease")
    work = asyncio.create_task(
        _import_holding_lease(
            store, source, holder, ca_file, force, progress, etag, last_modified, lost
        ),
        name="addressbook-import-work",
    )
    try:
        try:
            first: set[asyncio.Future[Any]] = {work, lost}
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                # The lease is lost, or we are cancelled: the work stops and records its failure.
                work.cancel()
                await asyncio.wait({work})
        if work.cancelled() and lost.done():
            raise lost.result()
        return work.result()
    finally:
        keeper.cancel()
        await asyncio.wait({keeper})
        with contextlib.suppress(Exception):
            await store.release_lease(LEASE, holder)


async def _keep_lease(store: Store, holder: str, lost: asyncio.Future[ExtractionError]) -> None:
    """Renew the import lease every LEASE_RENEW_SECONDS; settle ``lost`` when it is gone."""
    renewed = time.monotonic()
    ttl = LEASE_TTL.total_seconds()
    # Never less than four renewals per TTL, whatever the two settings say.
    period = min(LEASE_RENEW_SECONDS, ttl / 4)
    # Bounded: ends when the lease is lost, or cancelled at the end of the import.
    while True:
        await asyncio.sleep(period)
        try:
            held = await store.acquire_lease(LEASE, holder, LEASE_TTL)
        except Exception as exc:
            # The store may come back before the lease expires: try again at the next period.
            if time.monotonic() - renewed + period < ttl:
                log.warning(
                    "address book import: cannot renew the import lease (%s); will try again",
                    type(exc).__name__,
                )
                continue
            held = False
        if held:
            renewed = time.monotonic()
            continue
        if not lost.done():
            lost.set_result(
                ExtractionUnavailable(
                    "the import lease was lost (another process took it, or it could not be "
                    "renewed): import abandoned, the address book is unchanged"
                )
            )
        return


async def _import_holding_lease(
    store: Store,
    source: str,
    holder: str,
    ca_file: str | None,
    force: bool,
    progress: Progress | None,
    etag: str | None,
    last_modified: str | None,
    lost: asyncio.Future[ExtractionError],
) -> ExtractionReport:
    shown = describe_source(source)
    report = ExtractionReport(source=shown)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=QUEUE_BATCHES)
    stop = _Stop()
    # A daemon thread, not the default executor: a download stuck in a socket read must not hold
    # the process at exit (serve stopping, an interrupted CLI).
    thread = threading.Thread(
        target=_read_in_thread,
        args=(source, ca_file, etag, last_modified, loop, queue, stop),
        name="extraction-reader",
        daemon=True,
    )
    thread.start()
    generation: int | None = None
    try:
        # Bounded: the reader thread ends with "end", "not_modified" or "error", and reads at
        # most MAX_LINES.
        kind, value = await queue.get()
        if kind == "not_modified":
            # The file already imported or refused: no import to record.
            report.not_modified = True
            report.etag, report.last_modified = etag, last_modified
            return report
        generation = await store.start_address_book_import(shown)
        report.generation = generation
        while kind != "end":
            if kind == "error":
                raise value
            if kind == "opened":
                report.name, report.etag, report.last_modified = value
            elif kind == "batch":
                await _write_batch(store, generation, value, report)
                report.seconds = time.monotonic() - started
                if progress is not None:
                    progress(report)
            kind, value = await queue.get()
        _check(report, await store.current_address_book(), force)
        # The lease may have been taken since the last renewal: never switch books without it.
        if not await store.acquire_lease(LEASE, holder, LEASE_TTL):
            raise ExtractionUnavailable(
                "the import lease was lost before the end: import abandoned, the address book "
                "is unchanged"
            )
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
        stop.set()  # the reader thread stops, its download is cut
        report.seconds = time.monotonic() - started
        error: BaseException = exc
        if lost.done():
            error = lost.result()
        elif isinstance(exc, Exception):
            error = _store_failure(exc)
        detail = report.detail() | {
            "error": str(error) or type(error).__name__,
            "refused": isinstance(error, ExtractionRefused),
        }
        # Shielded: a cancelled import (serve stopping) still records its failure and deletes
        # what it wrote.
        # An import cancelled before its source answered (serve stopping, a conditional request
        # under way) leaves no record: there is nothing to say about the file.
        recorded = generation is not None or not isinstance(error, asyncio.CancelledError)
        with contextlib.suppress(Exception):
            if generation is None and recorded:
                generation = await asyncio.shield(store.start_address_book_import(shown))
            if generation is not None:
                await asyncio.shield(store.fail_address_book_import(generation, detail))
        if error is exc or not isinstance(exc, Exception):
            raise
        raise error from None


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
