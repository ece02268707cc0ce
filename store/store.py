"""The store's public API: intention-revealing async methods over the database and the blobs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import (
    Integer,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Row, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from store import mime
from store.address_book import AddressBookStore
from store.blobs import BlobStore
from store.changes import ChangeFeed, PostgresChangeFeed, Written, notify_other_processes
from store.database import Database, WriteConnection, compact_json, driver_errors, migrate
from store.delivery import FolderVanished, GroupCommitter
from store.directory_state import DirectoryStateStore
from store.errors import (
    BalExists,
    BalNotFound,
    DomainExists,
    DomainNotFound,
    FolderExists,
    FolderNotFound,
    InvalidInput,
    QueueEntryBusy,
    QueueEntryNotFound,
    StoreError,
    StoreUnavailable,
)
from store.index import INDEXED_FIELDS, MessageIndexes
from store.model import (
    DEFAULT_FOLDERS,
    NO_FLAGS,
    AuditRecord,
    Bal,
    BalStatus,
    BalType,
    Delegation,
    DeliveryResult,
    Domain,
    Flag,
    FlagChange,
    Folder,
    FolderChanges,
    FolderTotals,
    MessageFilter,
    MessageInfo,
    Placement,
    QueueEntry,
    QueueStatus,
    Recipient,
)
from store.schema import (
    audit,
    bals,
    credentials,
    delegations,
    directory_publication,
    domains,
    expunged,
    folders,
    messages,
    outbound_queue,
)
from store.text import departement_of, search_key

# Messages above this size are parsed in a worker thread so the event loop stays responsive.
PARSE_INLINE_LIMIT = 256 * 1024
# The top-level header block is kept in the row (HEADER fetches need no blob read) up to this size.
HEADER_ROW_LIMIT = 64 * 1024
INLINE_READ_LIMIT = 64 * 1024  # blobs read on the event loop, not in a thread
INLINE_READS_BETWEEN_YIELDS = 16
MAX_KEYWORD_LENGTH = 128
MAX_FOLDER_NAME = 1024
FOLDER_DELIMITER = "/"
SQL_IN_CHUNK = 500
FOLDER_CACHE_SIZE = 100_000
VERIFIED_TTL = 300.0
VERIFIED_CACHE_SIZE = 100_000
UNINDEXED_RETRY = 300.0  # seconds before a folder too large to index is tried again

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_LOCAL_PART = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")
_KEYWORD = re.compile(r"^[!#$&'+,\-.0-9:;<=>?@A-Z^_`a-z|~]+$")  # RFC 9051 atom minus specials

Message = bytes | bytearray | memoryview
T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def normalise_address(address: str) -> str:
    """Lower-case and validate a BAL address (``local@domain``)."""
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not _LOCAL_PART.match(local) or not _DOMAIN.match(domain) or ".." in local:
        raise InvalidInput(f"not a valid mailbox address: {address!r}")
    return address


def normalise_domain(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    if not _DOMAIN.match(name):
        raise InvalidInput(f"not a valid domain name: {name!r}")
    return name


def normalise_folder_name(name: str) -> str:
    """Validate a folder name; any case of INBOX is INBOX (RFC 9051 §5.1)."""
    if not name or len(name.encode()) > MAX_FOLDER_NAME:
        raise InvalidInput("folder name must be 1 to 1024 octets")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidInput("folder name contains control characters")
    parts = name.split(FOLDER_DELIMITER)
    if any(p == "" for p in parts):
        raise InvalidInput(f"folder name has an empty level: {name!r}")
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return FOLDER_DELIMITER.join(parts)


def _validate_keywords(keywords: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for k in keywords:
        if not _KEYWORD.match(k) or len(k) > MAX_KEYWORD_LENGTH:
            raise InvalidInput(f"not a valid IMAP keyword: {k!r}")
        if k not in out:
            out.append(k)
    return tuple(out)


def _clean_text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; such octets come only from malformed headers.
    return value.replace("\x00", "\ufffd") if value is not None else None


def _chunks(seq: Sequence[int], size: int = SQL_IN_CHUNK) -> Iterable[Sequence[int]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _domain(row: Row[Any]) -> Domain:
    return Domain(id=row.id, name=row.name, created_at=row.created_at)


def _bal(row: Row[Any]) -> Bal:
    return Bal(
        id=row.id,
        address=row.address,
        type=BalType(row.type),
        national_id=row.national_id,
        display_name=row.display_name,
        profession=row.profession,
        description=row.description,
        liste_rouge=row.liste_rouge,
        status=BalStatus(row.status),
        placement=Placement(row.placement),
        created_at=row.created_at,
        updated_at=row.updated_at,
        service=row.service,
        rank=row.rank,
        city=row.city,
        postal_code=row.postal_code,
        departement=row.departement,
        revision=row.revision,
    )


def _folder(row: Row[Any]) -> Folder:
    return Folder(
        id=row.id,
        bal_id=row.bal_id,
        name=row.name,
        special_use=row.special_use,
        uidvalidity=row.uidvalidity,
        uid_next=row.uid_next,
        highest_modseq=row.highest_modseq,
        subscribed=row.subscribed,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EMPTY: dict[str, Any] = {
    "modseq": 0,
    "internal_date": _EPOCH,
    "size": 0,
    "flags": 0,
    "keywords": (),
    "envelope": {},
    "body": {},
    "header": b"",
    "subject": None,
    "message_id": None,
    "sent_date": None,
    "from_addr": None,
    "problems": None,
}


_FLAG_VALUES = tuple(Flag(bits) for bits in range(64))


def _flag(bits: int) -> Flag:
    # Enum construction is slow next to a tuple index, and a FETCH or SEARCH reads 1,000 rows.
    return _FLAG_VALUES[bits] if 0 <= bits < len(_FLAG_VALUES) else Flag(bits)


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "flags": _flag,
    "keywords": tuple,
    "header": bytes,
    "problems": lambda value: tuple(value or ()),
}


# The message columns a MessageInfo holds (all but the row id), in table order.
_MESSAGE_FIELDS = tuple(c.name for c in messages.c if c.name in MessageInfo.__dataclass_fields__)


@functools.cache
def _message_reader(names: tuple[str, ...]) -> Callable[[Row[Any]], MessageInfo]:
    """Builds :class:`MessageInfo` from rows of the columns ``names``, in that order; the
    fields not read hold empty values. Planned once per column set: FETCH and SEARCH read a
    thousand rows at a time, and a generic conversion per row cost more than the query."""
    fields = list(MessageInfo.__dataclass_fields__)
    template: list[Any] = [_EMPTY.get(name) for name in fields]
    plan = [(i, fields.index(name), _CONVERTERS.get(name)) for i, name in enumerate(names)]

    def read(row: Row[Any]) -> MessageInfo:
        values = template.copy()
        for i, field, convert in plan:
            values[field] = row[i] if convert is None else convert(row[i])
        return MessageInfo(*values)

    return read


_FOLDER_BY_ID = select(folders).where(folders.c.id == bindparam("folder_id"))
_HIGHEST_MODSEQ = select(folders.c.highest_modseq).where(folders.c.id == bindparam("folder_id"))
_CHANGED_SINCE = (
    select(messages.c.uid, messages.c.modseq, messages.c.flags, messages.c.keywords)
    .where(messages.c.folder_id == bindparam("folder_id"), messages.c.modseq > bindparam("modseq"))
    .order_by(messages.c.uid)
)
_EXPUNGED_SINCE = (
    select(expunged.c.uid)
    .where(expunged.c.folder_id == bindparam("folder_id"), expunged.c.modseq > bindparam("modseq"))
    .order_by(expunged.c.uid)
)


@functools.cache
def _messages_query(names: tuple[str, ...], which: Literal["all", "some", "one"]) -> Select[Any]:
    """The SELECT of :meth:`Store.list_messages` for a column set, built once: building the
    expression anew cost more than running it for a single message (IMAP FETCH of one body)."""
    columns = [messages.c[n] for n in names]
    condition = messages.c.folder_id == bindparam("folder_id")
    if which == "some":
        condition = condition & messages.c.uid.in_(bindparam("uids", expanding=True))
    elif which == "one":
        condition = condition & (messages.c.uid == bindparam("uid"))
    return select(*columns).where(condition).order_by(messages.c.uid)


def _queue_entry(row: Row[Any]) -> QueueEntry:
    return QueueEntry(
        id=row.id,
        mail_from=row.mail_from,
        recipients=tuple(Recipient(**r) for r in row.recipients),
        blob=row.blob,
        size=row.size,
        status=QueueStatus(row.status),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        sender_bal=row.sender_bal,
        envid=row.envid,
        ret=row.ret,
        last_error=row.last_error,
        delay_warned=bool(row.delay_warned),
    )


# The statements of the hot write paths, built once (building one costs about as much as
# running it on SQLite).
_LOCK_FOLDER = select(folders.c.id).where(folders.c.id == bindparam("folder_id")).with_for_update()
_TAKE_MODSEQS = (
    update(folders)
    .where(folders.c.id == bindparam("folder_id"))
    .values(highest_modseq=folders.c.highest_modseq + bindparam("count", type_=Integer))
    .returning(folders.c.highest_modseq)
)
_FLAGS_OF = (
    select(messages.c.id, messages.c.uid, messages.c.modseq, messages.c.flags, messages.c.keywords)
    .where(
        messages.c.folder_id == bindparam("folder_id"),
        messages.c.uid.in_(bindparam("uids", expanding=True)),
    )
    .order_by(messages.c.uid)
)
_SET_FLAGS = (
    update(messages)
    .where(messages.c.id == bindparam("row_id"))
    .values(
        flags=bindparam("new_flags"),
        keywords=bindparam("new_keywords"),
        modseq=bindparam("new_modseq"),
    )
)


def _lock_folder(conn: Connection, folder_id: int) -> None:
    """Serialise writers of one folder: deliveries, flag changes, expunges and deletion all
    lock the folder row first (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises), so
    a read-then-write in one of them cannot interleave with another (RFC 7162 UNCHANGEDSINCE
    needs exactly that)."""
    if conn.execute(_LOCK_FOLDER, {"folder_id": folder_id}).scalar() is None:
        raise StoreError(f"folder {folder_id} does not exist")


def _take_modseqs(conn: Connection, folder_id: int, count: int) -> int:
    """Reserve ``count`` MODSEQs of the folder; returns the highest."""
    return int(conn.execute(_TAKE_MODSEQS, {"folder_id": folder_id, "count": count}).scalar_one())


_FlagRow = tuple[int, int, int, int, list[str]]  # row id, UID, MODSEQ, flag bits, keywords
_FlagPlan = tuple[int, int, int, list[str]]  # row id, UID, new flag bits, new keywords


def _set_flags(
    conn: Connection,
    folder_id: int,
    uids: Sequence[int],
    flags: Flag,
    keywords: tuple[str, ...],
    mode: Literal["replace", "add", "remove"],
    unchanged_since: int | None,
) -> list[FlagChange]:
    """The transaction of :meth:`Store.set_flags`, whole (one thread hop on SQLite)."""
    plan = functools.partial(
        _plan_flags, flags=flags, keywords=keywords, mode=mode, unchanged_since=unchanged_since
    )
    if conn.dialect.name == "sqlite":
        with driver_errors("set flags"):
            return _set_flags_sqlite(conn.connection.driver_connection, folder_id, uids, plan)
    _lock_folder(conn, folder_id)
    current: list[_FlagRow] = []
    for chunk in _chunks(sorted(set(uids))):
        rows = conn.execute(_FLAGS_OF, {"folder_id": folder_id, "uids": chunk}).all()
        current.extend((r.id, r.uid, r.modseq, r.flags, list(r.keywords)) for r in rows)
    planned = plan(current)
    if not planned:
        return []
    changes = _numbered(planned, _take_modseqs(conn, folder_id, len(planned)))
    conn.execute(
        _SET_FLAGS,
        [
            {
                "row_id": row_id,
                "new_flags": flag_bits,
                "new_keywords": keyword_list,
                "new_modseq": change.modseq,
            }
            for (row_id, _, flag_bits, keyword_list), change in zip(planned, changes, strict=True)
        ],
    )
    notify_other_processes(conn, folder_id, changes[-1].modseq)
    return changes


def _plan_flags(
    current: Iterable[_FlagRow],
    flags: Flag,
    keywords: tuple[str, ...],
    mode: Literal["replace", "add", "remove"],
    unchanged_since: int | None,
) -> list[_FlagPlan]:
    """(row id, UID, new flag bits, new keywords) of the rows ``(row id, UID, MODSEQ, flag
    bits, keywords)`` a flag change alters."""
    bits = int(flags)
    planned: list[_FlagPlan] = []
    for row_id, uid, modseq, old_flags, old_keywords in current:
        if unchanged_since is not None and modseq > unchanged_since:
            continue
        if mode == "replace":
            new_flags, new_keywords = bits, list(keywords)
        elif mode == "add":
            new_flags = old_flags | bits
            new_keywords = old_keywords + [k for k in keywords if k not in old_keywords]
        else:
            new_flags = old_flags & ~bits
            new_keywords = [k for k in old_keywords if k not in keywords]
        if new_flags != old_flags or new_keywords != old_keywords:
            planned.append((row_id, uid, new_flags, new_keywords))
    return planned


def _numbered(planned: list[_FlagPlan], top: int) -> list[FlagChange]:
    """The planned changes with the MODSEQs taken for them, ``top`` the highest."""
    first = top - len(planned) + 1
    return [
        FlagChange(uid, first + n, _flag(flag_bits), tuple(keyword_list))
        for n, (_, uid, flag_bits, keyword_list) in enumerate(planned)
    ]


# The statements of _set_flags_sqlite, as the schema names them (tests run both paths).
_SQLITE_FOLDER_EXISTS = "SELECT id FROM folders WHERE id = ?"
_SQLITE_FLAGS_OF = (
    "SELECT id, uid, modseq, flags, keywords FROM messages WHERE folder_id = ? AND uid IN (%s)"
    " ORDER BY uid"
)
_SQLITE_TAKE_MODSEQS = (
    "UPDATE folders SET highest_modseq = highest_modseq + ? WHERE id = ? RETURNING highest_modseq"
)
_SQLITE_SET_FLAGS = "UPDATE messages SET flags = ?, keywords = ?, modseq = ? WHERE id = ?"


def _set_flags_sqlite(
    raw: Any,
    folder_id: int,
    uids: Sequence[int],
    plan: Callable[[list[_FlagRow]], list[_FlagPlan]],
) -> list[FlagChange]:
    """:func:`_set_flags` on SQLite's own driver connection, in the transaction SQLAlchemy
    began: a STORE of one message ran six times faster than through SQLAlchemy's statement
    machinery, which was most of the writer thread's work for an IMAP STORE."""
    if raw.execute(_SQLITE_FOLDER_EXISTS, (folder_id,)).fetchone() is None:
        raise StoreError(f"folder {folder_id} does not exist")
    current: list[_FlagRow] = []
    for chunk in _chunks(sorted(set(uids))):
        query = _SQLITE_FLAGS_OF % ",".join("?" * len(chunk))
        for row_id, uid, modseq, flag_bits, keyword_text in raw.execute(query, (folder_id, *chunk)):
            current.append((row_id, uid, modseq, flag_bits, json.loads(keyword_text)))
    planned = plan(current)
    if not planned:
        return []
    (top,) = raw.execute(_SQLITE_TAKE_MODSEQS, (len(planned), folder_id)).fetchone()
    changes = _numbered(planned, top)
    raw.executemany(
        _SQLITE_SET_FLAGS,
        [
            (flag_bits, compact_json(keyword_list), change.modseq, row_id)
            for (row_id, _, flag_bits, keyword_list), change in zip(planned, changes, strict=True)
        ],
    )
    return changes


def _expunge(conn: Connection, folder_id: int, uids: Sequence[int] | None) -> tuple[list[int], int]:
    """The transaction of :meth:`Store.expunge`: the UIDs removed and the MODSEQ taken."""
    _lock_folder(conn, folder_id)
    query = select(messages.c.uid).where(
        messages.c.folder_id == folder_id,
        messages.c.flags.op("&")(int(Flag.DELETED)) != 0,
    )
    found = list(conn.execute(query.order_by(messages.c.uid)).scalars())
    if uids is not None:
        allowed = set(uids)
        found = [u for u in found if u in allowed]
    if not found:
        return [], 0
    top = _take_modseqs(conn, folder_id, 1)
    for chunk in _chunks(found):
        conn.execute(
            delete(messages).where(messages.c.folder_id == folder_id, messages.c.uid.in_(chunk))
        )
    conn.execute(
        insert(expunged), [{"folder_id": folder_id, "uid": u, "modseq": top} for u in found]
    )
    notify_other_processes(conn, folder_id, top)
    return found, top


class Store(DirectoryStateStore, AddressBookStore):
    """One mailbox store: a database (SQLite or PostgreSQL) plus a blob directory.

    Open with :meth:`open`, close with :meth:`close`. Safe to share between all the tasks of one
    event loop; several processes may open the same store (PostgreSQL, or SQLite on one host).
    """

    def __init__(self, db: Database, blobs: BlobStore, feed: ChangeFeed) -> None:
        self.db = db
        self.blobs = blobs
        self.changes = feed
        self._committer = GroupCommitter(db, feed)
        self._hasher = PasswordHasher()
        self._hash_executor = ThreadPoolExecutor(
            max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="password-hash"
        )
        self._dummy_hash: str | None = None
        # Successful password checks, remembered for ``verified_ttl`` seconds (Dovecot's
        # auth_cache): practice software that logs in every minute must not cost an argon2
        # hash (0.1 s of CPU, 64 MiB) each time. Keyed HMACs only: never a password.
        self.verified_ttl = VERIFIED_TTL
        self._verified: dict[bytes, float] = {}
        self._verified_key = secrets.token_bytes(32)
        self._folder_ids: dict[tuple[str, str], int] = {}
        self._changes_in_flight: dict[tuple[int, int], asyncio.Future[FolderChanges]] = {}
        self.indexes = MessageIndexes()
        self._inline_reads = 0
        # Folders found larger than the index budget: not indexed again until this time.
        self._unindexed: dict[int, float] = {}
        # Set after a BAL change commits in this process: wakes the directory publisher at once
        # (other processes' changes are found by its periodic look at the publication queue).
        self.bal_changed = asyncio.Event()

    def _bal_from_row(self, row: Row[Any]) -> Bal:
        return _bal(row)

    # -- life cycle -------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        database_url: str,
        blob_dir: Path | str,
        *,
        migrate_schema: bool = True,
        pool_size: int = 10,
    ) -> Store:
        db = Database.connect(database_url, pool_size=pool_size)
        try:
            try:
                if migrate_schema:
                    await migrate(db)
                else:
                    async with db.reader.connect() as conn:
                        await conn.execute(text("SELECT 1"))
            except (OSError, SQLAlchemyError) as exc:
                shown = make_url(db.url).render_as_string(hide_password=True)
                reason = getattr(exc, "orig", None) or exc
                raise StoreUnavailable(
                    f"cannot open the store at {shown}: {type(reason).__name__}: {reason}"
                ) from exc
            feed: ChangeFeed
            if db.is_postgresql:
                dsn = make_url(db.url).set(drivername="postgresql")
                feed = PostgresChangeFeed(dsn.render_as_string(hide_password=False))
            else:
                feed = ChangeFeed()
            await feed.start()
        except BaseException:
            await db.dispose()
            raise
        return cls(db, BlobStore(blob_dir), feed)

    async def close(self) -> None:
        await self._committer.close()
        await self.changes.close()
        await self.db.dispose()
        self.blobs.close()
        self._hash_executor.shutdown(wait=False)

    @property
    def writes_only_here(self) -> bool:
        """Whether every write to the store is made by this process and published here as it
        commits (the embedded SQLite store), so that an index brought up to the latest change
        published is exact; with PostgreSQL, other processes' changes arrive a moment later."""
        return not self.db.is_postgresql

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(commits, messages committed) by this process's group committer."""
        return self._committer.batches, self._committer.committed

    # -- domains ----------------------------------------------------------------------------------

    async def add_domain(self, name: str) -> Domain:
        name = normalise_domain(name)
        try:
            async with self.db.writer.begin() as conn:
                row = (
                    await conn.execute(
                        insert(domains).values(name=name, created_at=_now()).returning(domains)
                    )
                ).one()
        except IntegrityError:
            raise DomainExists(name) from None
        return _domain(row)

    async def list_domains(self) -> list[Domain]:
        async with self.db.reader.connect() as conn:
            rows = (await conn.execute(select(domains).order_by(domains.c.name))).all()
        return [_domain(r) for r in rows]

    async def get_domain(self, name: str) -> Domain:
        name = normalise_domain(name)
        async with self.db.reader.connect() as conn:
            row = (await conn.execute(select(domains).where(domains.c.name == name))).first()
        if row is None:
            raise DomainNotFound(name)
        return _domain(row)

    # -- BALs -------------------------------------------------------------------------------------

    async def create_bal(
        self,
        address: str,
        bal_type: BalType = BalType.PER,
        *,
        display_name: str = "",
        national_id: str | None = None,
        profession: str | None = None,
        description: str | None = None,
        liste_rouge: bool = False,
        placement: Placement = Placement.V2,
        password: str | None = None,
        service: str | None = None,
        rank: int = 1,
        city: str | None = None,
        postal_code: str | None = None,
        departement: str | None = None,
    ) -> Bal:
        """Create a BAL in a hosted domain, with its default folders (and a password if given).

        The BAL is queued for publication to the national directory in the same transaction.
        """
        address = normalise_address(address)
        if rank < 1:
            raise InvalidInput("rank must be at least 1")
        domain_name = address.rpartition("@")[2]
        password_hash = await self._hash(password) if password is not None else None
        now = _now()
        try:
            async with self.db.writer.begin() as conn:
                domain_id = (
                    await conn.execute(select(domains.c.id).where(domains.c.name == domain_name))
                ).scalar()
                if domain_id is None:
                    raise DomainNotFound(domain_name)
                row = (
                    await conn.execute(
                        insert(bals)
                        .values(
                            address=address,
                            domain_id=domain_id,
                            type=BalType(bal_type).value,
                            national_id=national_id,
                            display_name=display_name,
                            profession=profession,
                            description=description,
                            liste_rouge=liste_rouge,
                            status=BalStatus.ACTIVE.value,
                            placement=Placement(placement).value,
                            service=service,
                            rank=rank,
                            city=city,
                            postal_code=postal_code,
                            departement=departement or departement_of(postal_code),
                            name_key=search_key(display_name, description, service),
                            revision=1,
                            created_at=now,
                            updated_at=now,
                        )
                        .returning(bals)
                    )
                ).one()
                await self._queue_publication(conn, row.id, row.revision)
                for name, special_use in DEFAULT_FOLDERS:
                    await self._insert_folder(conn, row.id, name, special_use)
                if password_hash is not None:
                    await conn.execute(
                        insert(credentials).values(
                            bal_id=row.id, password_hash=password_hash, updated_at=now
                        )
                    )
        except IntegrityError:
            raise BalExists(address) from None
        self.bal_changed.set()
        return _bal(row)

    async def get_bal(self, address: str) -> Bal:
        address = normalise_address(address)
        async with self.db.fast_reader.connect() as conn:
            row = (await conn.execute(select(bals).where(bals.c.address == address))).first()
        if row is None:
            raise BalNotFound(address)
        return _bal(row)

    async def list_bals(
        self, *, domain: str | None = None, status: BalStatus | None = None
    ) -> list[Bal]:
        query = select(bals).order_by(bals.c.address)
        if domain is not None:
            query = query.join(domains, domains.c.id == bals.c.domain_id).where(
                domains.c.name == normalise_domain(domain)
            )
        if status is not None:
            query = query.where(bals.c.status == BalStatus(status).value)
        async with self.db.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_bal(r) for r in rows]

    async def bals_of_person(self, national_id: str) -> list[Bal]:
        """The BALs bound to a national identifier (RPPS...): what a PSC identity may open."""
        async with self.db.reader.connect() as conn:
            rows = (
                await conn.execute(
                    select(bals).where(bals.c.national_id == national_id).order_by(bals.c.address)
                )
            ).all()
        return [_bal(r) for r in rows]

    async def _update_bal(self, address: str, **values: Any) -> Bal:
        address = normalise_address(address)
        async with self.db.writer.begin() as conn:
            row = (
                await conn.execute(
                    update(bals)
                    .where(bals.c.address == address)
                    .values(updated_at=_now(), revision=bals.c.revision + 1, **values)
                    .returning(bals)
                )
            ).first()
            if row is None:
                raise BalNotFound(address)
            if {"display_name", "description", "service"} & values.keys():
                key = search_key(row.display_name, row.description, row.service)
                await conn.execute(update(bals).where(bals.c.id == row.id).values(name_key=key))
            await self._queue_publication(conn, row.id, row.revision)
        self.bal_changed.set()
        return _bal(row)

    async def _queue_publication(self, conn: WriteConnection, bal_id: int, revision: int) -> None:
        """Mark the BAL's new revision for publication (same transaction as the change, so a
        change is never lost between the store and the directory publisher)."""
        now = _now()
        changed = await conn.execute(
            update(directory_publication)
            .where(directory_publication.c.bal_id == bal_id)
            .values(
                wanted_revision=revision,
                pending=True,
                attempts=0,
                next_attempt_at=now,
            )
        )
        if changed.rowcount == 0:
            await conn.execute(
                insert(directory_publication).values(
                    bal_id=bal_id,
                    wanted_revision=revision,
                    published_revision=0,
                    pending=True,
                    state="pending",
                    next_attempt_at=now,
                )
            )

    async def set_bal_status(self, address: str, status: BalStatus) -> Bal:
        return await self._update_bal(address, status=BalStatus(status).value)

    async def set_placement(self, address: str, placement: Placement) -> Bal:
        return await self._update_bal(address, placement=Placement(placement).value)

    async def update_bal(
        self,
        address: str,
        *,
        display_name: str | None = None,
        profession: str | None = None,
        description: str | None = None,
        liste_rouge: bool | None = None,
        national_id: str | None = None,
        service: str | None = None,
        rank: int | None = None,
        city: str | None = None,
        postal_code: str | None = None,
        departement: str | None = None,
    ) -> Bal:
        """Change the given attributes (None leaves one as it is; "" clears a text one)."""
        if rank is not None and rank < 1:
            raise InvalidInput("rank must be at least 1")
        if postal_code and departement is None:
            departement = departement_of(postal_code)
        changes = {
            k: (v or None) if isinstance(v, str) and k != "display_name" else v
            for k, v in {
                "display_name": display_name,
                "profession": profession,
                "description": description,
                "liste_rouge": liste_rouge,
                "national_id": national_id,
                "service": service,
                "rank": rank,
                "city": city,
                "postal_code": postal_code,
                "departement": departement,
            }.items()
            if v is not None
        }
        return await self._update_bal(address, **changes)

    # -- credentials ------------------------------------------------------------------------------

    async def _hash(self, password: str) -> str:
        if not password:
            raise InvalidInput("empty password")
        return await self._hashing(self._hasher.hash, password)

    async def _hashing(self, fn: Callable[..., T], *args: Any) -> T:
        """Password hashing on threads of its own (one per core at most: it is all CPU), so
        that a wave of logins never delays blob reads or queries queued on the default ones."""
        return await asyncio.get_running_loop().run_in_executor(self._hash_executor, fn, *args)

    async def set_password(self, address: str, password: str) -> None:
        password_hash = await self._hash(password)
        bal = await self.get_bal(address)
        now = _now()
        async with self.db.writer.begin() as conn:
            done = await conn.execute(
                update(credentials)
                .where(credentials.c.bal_id == bal.id)
                .values(password_hash=password_hash, updated_at=now)
            )
            if done.rowcount == 0:
                await conn.execute(
                    insert(credentials).values(
                        bal_id=bal.id, password_hash=password_hash, updated_at=now
                    )
                )

    async def verify_password(self, address: str, password: str) -> bool:
        """True only for an active BAL whose password matches. Unknown addresses cost the same
        time as known ones, so timing does not reveal which BALs exist."""
        try:
            address = normalise_address(address)
        except InvalidInput:
            address = ""
        async with self.db.fast_reader.connect() as conn:
            row = (
                await conn.execute(
                    select(credentials.c.password_hash, bals.c.status)
                    .join(bals, bals.c.id == credentials.c.bal_id)
                    .where(bals.c.address == address)
                )
            ).first()
        if row is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self._hashing(self._hasher.hash, "not-a-password")
            stored, active = self._dummy_hash, False
        else:
            stored, active = row.password_hash, row.status == BalStatus.ACTIVE.value
        # The stored hash is part of the key: a new password (even set by another process)
        # makes every remembered success of the old one worthless at once.
        remembered = hmac.digest(
            self._verified_key,
            b"\0".join(s.encode() for s in (address, password, stored)),
            "sha256",
        )
        now = time.monotonic()
        if active and self._verified.get(remembered, 0.0) > now:
            return True

        def check() -> bool:
            try:
                return self._hasher.verify(stored, password)
            except (VerificationError, InvalidHashError):
                return False

        if await self._hashing(check) and active:
            if self.verified_ttl > 0:
                if len(self._verified) >= VERIFIED_CACHE_SIZE:
                    self._verified.clear()
                self._verified[remembered] = now + self.verified_ttl
            return True
        return False

    # -- delegations ------------------------------------------------------------------------------

    async def add_delegation(
        self,
        bal: str,
        delegate: str,
        *,
        can_read: bool = True,
        can_write: bool = False,
        can_send: bool = False,
    ) -> Delegation:
        """Let ``delegate`` open ``bal`` (and manage it, and send as it). Replaces earlier rights."""
        owner, user = await self.get_bal(bal), await self.get_bal(delegate)
        if owner.id == user.id:
            raise InvalidInput("a BAL cannot be delegated to itself")
        now = _now()
        async with self.db.writer.begin() as conn:
            await conn.execute(
                delete(delegations).where(
                    delegations.c.bal_id == owner.id, delegations.c.delegate_id == user.id
                )
            )
            await conn.execute(
                insert(delegations).values(
                    bal_id=owner.id,
                    delegate_id=user.id,
                    can_read=can_read,
                    can_write=can_write,
                    can_send=can_send,
                    created_at=now,
                )
            )
        return Delegation(owner.address, user.address, can_read, can_write, can_send, now)

    async def remove_delegation(self, bal: str, delegate: str) -> bool:
        owner, user = await self.get_bal(bal), await self.get_bal(delegate)
        async with self.db.writer.begin() as conn:
            done = await conn.execute(
                delete(delegations).where(
                    delegations.c.bal_id == owner.id, delegations.c.delegate_id == user.id
                )
            )
        return bool(done.rowcount)

    async def list_delegations(
        self, *, bal: str | None = None, delegate: str | None = None
    ) -> list[Delegation]:
        owner = bals.alias("owner")
        user = bals.alias("user_bal")
        query = (
            select(
                owner.c.address.label("bal"),
                user.c.address.label("delegate"),
                delegations.c.can_read,
                delegations.c.can_write,
                delegations.c.can_send,
                delegations.c.created_at,
            )
            .join(owner, owner.c.id == delegations.c.bal_id)
            .join(user, user.c.id == delegations.c.delegate_id)
            .order_by(owner.c.address, user.c.address)
        )
        if bal is not None:
            query = query.where(owner.c.address == normalise_address(bal))
        if delegate is not None:
            query = query.where(user.c.address == normalise_address(delegate))
        async with self.db.fast_reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Delegation(r.bal, r.delegate, r.can_read, r.can_write, r.can_send, r.created_at)
            for r in rows
        ]

    async def can_send_as(self, user: str, bal: str) -> bool:
        """The owner, or a delegate with the send right, may send as ``bal``."""
        user, bal = normalise_address(user), normalise_address(bal)
        if user == bal:
            return True
        return any(d.can_send for d in await self.list_delegations(bal=bal, delegate=user))

    # -- folders ----------------------------------------------------------------------------------

    async def _insert_folder(
        self, conn: WriteConnection, bal_id: int, name: str, special_use: str | None
    ) -> Row[Any]:
        # RFC 9051 §2.3.1.1: a folder must never reuse the UIDVALIDITY of an earlier folder of
        # the same name, deleted ones included: the BAL row keeps the high-water mark.
        now = int(time.time())
        following = bals.c.last_uidvalidity + 1
        uidvalidity = (
            await conn.execute(
                update(bals)
                .where(bals.c.id == bal_id)
                .values(last_uidvalidity=case((following > now, following), else_=now))
                .returning(bals.c.last_uidvalidity)
            )
        ).scalar_one()
        row: Row[Any] = (
            await conn.execute(
                insert(folders)
                .values(
                    bal_id=bal_id,
                    name=name,
                    special_use=special_use,
                    uidvalidity=uidvalidity,
                    uid_next=1,
                    highest_modseq=1,
                    subscribed=True,
                    created_at=_now(),
                )
                .returning(folders)
            )
        ).one()
        return row

    async def create_folder(self, bal: str, name: str, special_use: str | None = None) -> Folder:
        owner = await self.get_bal(bal)
        name = normalise_folder_name(name)
        try:
            async with self.db.writer.begin() as conn:
                row = await self._insert_folder(conn, owner.id, name, special_use)
        except IntegrityError:
            raise FolderExists(owner.address, name) from None
        return _folder(row)

    async def list_folders(self, bal: str) -> list[Folder]:
        owner = await self.get_bal(bal)
        async with self.db.fast_reader.connect() as conn:
            rows = (
                await conn.execute(
                    select(folders).where(folders.c.bal_id == owner.id).order_by(folders.c.name)
                )
            ).all()
        return [_folder(r) for r in rows]

    async def get_folder(self, bal: str, name: str) -> Folder:
        address, name = normalise_address(bal), normalise_folder_name(name)
        async with self.db.fast_reader.connect() as conn:
            row = (
                await conn.execute(
                    select(folders)
                    .join(bals, bals.c.id == folders.c.bal_id)
                    .where(bals.c.address == address, folders.c.name == name)
                )
            ).first()
        if row is None:
            await self.get_bal(address)  # BalNotFound takes precedence
            raise FolderNotFound(address, name)
        return _folder(row)

    async def rename_folder(self, bal: str, old: str, new: str) -> Folder:
        """Rename a folder and its children. Renaming INBOX is not supported here (RFC 9051
        §6.3.6 makes it a move of all messages; the IMAP layer implements that)."""
        folder = await self.get_folder(bal, old)
        new = normalise_folder_name(new)
        if folder.name == "INBOX" or new == "INBOX":
            raise InvalidInput("INBOX cannot be renamed, nor anything renamed to INBOX")
        prefix = folder.name + FOLDER_DELIMITER
        try:
            async with self.db.writer.begin() as conn:
                candidates = (
                    await conn.execute(
                        select(folders.c.id, folders.c.name).where(
                            folders.c.bal_id == folder.bal_id,
                            folders.c.name.startswith(prefix, autoescape=True),
                        )
                    )
                ).all()
                # LIKE is case-insensitive on SQLite: keep only the exact children.
                children = [c for c in candidates if c.name.startswith(prefix)]
                await conn.execute(
                    update(folders).where(folders.c.id == folder.id).values(name=new)
                )
                for child in children:
                    await conn.execute(
                        update(folders)
                        .where(folders.c.id == child.id)
                        .values(name=new + child.name[len(folder.name) :])
                    )
        except IntegrityError:
            raise FolderExists(bal, new) from None
        return await self.get_folder(bal, new)

    async def delete_folder(self, bal: str, name: str) -> None:
        """Delete a folder and its messages (blobs are reclaimed by garbage collection)."""
        folder = await self.get_folder(bal, name)
        if folder.name == "INBOX":
            raise InvalidInput("INBOX cannot be deleted")
        async with self.db.writer.begin() as conn:
            await self._lock_folder(conn, folder.id)
            await conn.execute(delete(messages).where(messages.c.folder_id == folder.id))
            await conn.execute(delete(expunged).where(expunged.c.folder_id == folder.id))
            await conn.execute(delete(folders).where(folders.c.id == folder.id))
        # SQLite may give the id to the next folder created: nothing recorded or indexed of
        # this one may answer for it, and its watchers must look again (their folder is gone).
        self.changes.forget(folder.id)
        self.indexes.drop(folder.id)

    # -- delivery ---------------------------------------------------------------------------------

    async def deliver(
        self,
        bal: str,
        message: Message | str,
        folder: str = "INBOX",
        *,
        flags: Flag = NO_FLAGS,
        keywords: Iterable[str] = (),
        internal_date: datetime | None = None,
    ) -> DeliveryResult:
        """Store a message in a folder of a BAL; return once blob and rows are durable.

        ``message`` is the raw octets, or the digest of a blob already written with
        ``store.blobs.writer()`` (how the MTA streams large messages without holding them).
        The octets are stored as received; metadata is computed once here.
        """
        keywords = _validate_keywords(keywords)
        address, folder = normalise_address(bal), normalise_folder_name(folder)
        folder_id = await self._folder_id(address, folder)
        if isinstance(message, str):
            digest = message
            with self.blobs.mapped(digest) as data:
                size = len(data)
                meta = await asyncio.to_thread(mime.parse_message, data)
                header = bytes(data[: min(meta.header_size, HEADER_ROW_LIMIT)])
        else:
            size = len(message)
            if size <= PARSE_INLINE_LIMIT:
                # The blob's write and fsyncs run in a thread while we parse here.
                stored = asyncio.ensure_future(self.blobs.put(message))
                try:
                    meta = mime.parse_message(message)
                finally:
                    digest, _ = await stored
            else:
                (digest, _), meta = await asyncio.gather(
                    self.blobs.put(message), asyncio.to_thread(mime.parse_message, message)
                )
            header = bytes(message[: min(meta.header_size, HEADER_ROW_LIMIT)])
        row = {
            "internal_date": internal_date or _now(),
            "size": size,
            "blob": digest,
            "flags": int(flags),
            "keywords": list(keywords),
            "envelope": meta.envelope,
            "body": meta.body,
            "header": header,
            "subject": _clean_text(meta.subject),
            "message_id": _clean_text(meta.message_id),
            "sent_date": meta.sent_date,
            "from_addr": _clean_text(meta.from_addr),
            "problems": list(meta.problems) or None,
        }
        try:
            return await self._committer.submit(folder_id, folder, row)
        except FolderVanished:
            # Renamed or deleted since it was cached (maybe by another process): look again.
            self._folder_ids.pop((address, folder), None)
            folder_id = await self._folder_id(address, folder)
            try:
                return await self._committer.submit(folder_id, folder, row)
            except FolderVanished:
                raise FolderNotFound(address, folder) from None

    async def _folder_id(self, address: str, folder: str) -> int:
        """Folder ids by (BAL, name), cached: a delivery costs no lookup query. The commit checks
        the name still matches, so a stale entry is detected, never used."""
        key = (address, folder)
        folder_id = self._folder_ids.get(key)
        if folder_id is None:
            folder_id = (await self.get_folder(address, folder)).id
            if len(self._folder_ids) >= FOLDER_CACHE_SIZE:
                self._folder_ids.clear()
            self._folder_ids[key] = folder_id
        return folder_id

    # -- reading ----------------------------------------------------------------------------------

    async def list_messages(
        self,
        folder_id: int,
        uids: Sequence[int] | None = None,
        *,
        columns: Iterable[str] | None = None,
    ) -> list[MessageInfo]:
        """Metadata of the messages of a folder (all, or the given UIDs), in UID order.

        ``columns`` names the :class:`MessageInfo` fields wanted besides ``uid`` and ``blob``
        (all by default); the others hold empty values. Decoding the MIME structure and the
        header block is most of the cost of reading many rows: FETCH FLAGS or SEARCH UNSEEN
        need none of it.
        """
        if columns is None:
            names = _MESSAGE_FIELDS
        else:
            wanted = {"folder_id", "uid", "blob", *columns}
            unknown = wanted.difference(_MESSAGE_FIELDS)
            if unknown:
                raise InvalidInput(f"unknown message columns: {sorted(unknown)}")
            names = tuple(name for name in _MESSAGE_FIELDS if name in wanted)
        async with self.db.fast_reader.connect() as conn:
            if uids is None:
                rows = (
                    await conn.execute(_messages_query(names, "all"), {"folder_id": folder_id})
                ).all()
            elif len(uids) == 1:
                rows = (
                    await conn.execute(
                        _messages_query(names, "one"), {"folder_id": folder_id, "uid": uids[0]}
                    )
                ).all()
            else:
                rows = []
                for chunk in _chunks(sorted(set(uids))):
                    rows.extend(
                        (
                            await conn.execute(
                                _messages_query(names, "some"),
                                {"folder_id": folder_id, "uids": chunk},
                            )
                        ).all()
                    )
        read = _message_reader(names)
        return [read(r) for r in rows]

    async def indexed_messages(
        self, folder_id: int, covering: int
    ) -> dict[int, MessageInfo] | None:
        """UID -> the indexed fields (:data:`store.index.INDEXED_FIELDS`) of a folder's
        messages, in UID order, from this process's index brought up to MODSEQ ``covering`` at
        least (a MODSEQ the caller read or was notified of); the other fields are empty.

        None when the folder does not fit in the index budget, or is gone: read it with
        :meth:`list_messages`. The mapping is the index's own, changed by later calls: read it
        before the next await, never change it.
        """
        if (until := self._unindexed.get(folder_id)) is not None:
            if time.monotonic() < until:
                return None
            del self._unindexed[folder_id]
        index = self.indexes.get(folder_id)
        if index.modseq >= covering:
            return index.messages
        async with index.lock:
            try:
                if not index.loaded:
                    # HIGHESTMODSEQ before the rows: a change committed in between is in the
                    # rows and after the index's MODSEQ, applied twice at worst (no-op).
                    async with self.db.fast_reader.connect() as conn:
                        top = (
                            await conn.execute(_HIGHEST_MODSEQ, {"folder_id": folder_id})
                        ).scalar()
                    if top is None:
                        raise StoreError(f"folder {folder_id} does not exist")
                    rows = await self.list_messages(folder_id, columns=INDEXED_FIELDS)
                    index.load(top, rows)
                if index.modseq < covering:
                    changes = self.changes.changes_known(folder_id, index.modseq, covering)
                    if changes is None:
                        changes = await self._changes_since(folder_id, index.modseq)
                    # Every read before the index changes: a reader served between two awaits
                    # (its MODSEQ already covered) must never find the MODSEQ advanced and the
                    # new messages missing, and a failed read (or a client gone) leaves the
                    # index as it was, exact as of its own MODSEQ.
                    new = index.new_uids(changes)
                    rows = (
                        await self.list_messages(folder_id, new, columns=INDEXED_FIELDS)
                        if new
                        else []
                    )
                    index.apply(changes, new, rows)
            except StoreError:  # the folder is gone
                self.indexes.discard(index)
                return None
            if not self.indexes.fits(index):
                self._unindexed[folder_id] = time.monotonic() + UNINDEXED_RETRY
                return None
            return index.messages

    async def find_messages(self, folder_id: int, wanted: MessageFilter) -> list[tuple[int, int]]:
        """``(UID, MODSEQ)`` of the messages meeting every condition of ``wanted``, in UID order:
        a SEARCH on flags, dates and sizes reads no row it does not return."""
        flags, date = messages.c.flags, messages.c.internal_date
        conditions = [messages.c.folder_id == folder_id]
        if wanted.with_flags:
            conditions.append(flags.op("&")(int(wanted.with_flags)) == int(wanted.with_flags))
        if wanted.without_flags:
            conditions.append(flags.op("&")(int(wanted.without_flags)) == 0)
        if wanted.received_from is not None:
            conditions.append(date >= wanted.received_from)
        if wanted.received_before is not None:
            conditions.append(date < wanted.received_before)
        if wanted.larger_than is not None:
            conditions.append(messages.c.size > wanted.larger_than)
        if wanted.smaller_than is not None:
            conditions.append(messages.c.size < wanted.smaller_than)
        if wanted.modseq_from is not None:
            conditions.append(messages.c.modseq >= wanted.modseq_from)
        query = select(messages.c.uid, messages.c.modseq).where(*conditions)
        async with self.db.fast_reader.connect() as conn:
            rows: Sequence[Any] = (await conn.execute(query.order_by(messages.c.uid))).all()
        return [(uid, modseq) for uid, modseq in rows]

    async def uids(self, folder_id: int) -> list[int]:
        async with self.db.fast_reader.connect() as conn:
            return list(
                (
                    await conn.execute(
                        select(messages.c.uid)
                        .where(messages.c.folder_id == folder_id)
                        .order_by(messages.c.uid)
                    )
                ).scalars()
            )

    async def folder(self, folder_id: int) -> Folder:
        """The folder row as it is now (its UIDNEXT and HIGHESTMODSEQ)."""
        async with self.db.fast_reader.connect() as conn:
            row = (await conn.execute(_FOLDER_BY_ID, {"folder_id": folder_id})).first()
        if row is None:
            raise StoreError(f"folder {folder_id} does not exist")
        return _folder(row)

    async def folder_status(self, folder_id: int) -> tuple[Folder, int, int]:
        """The folder row, its message count and its unseen count."""
        totals = await self.folder_totals(folder_id)
        return totals.folder, totals.messages, totals.unseen

    async def folder_totals(self, folder_id: int) -> FolderTotals:
        """The folder row and its counts (IMAP SELECT and STATUS, RFC 9051 §6.3.11)."""
        seen, deleted = int(Flag.SEEN), int(Flag.DELETED)
        flags = messages.c.flags
        async with self.db.fast_reader.connect() as conn:
            row = (await conn.execute(_FOLDER_BY_ID, {"folder_id": folder_id})).first()
            if row is None:
                raise StoreError(f"folder {folder_id} does not exist")
            counts = (
                await conn.execute(
                    select(
                        func.count(),
                        func.coalesce(func.sum(case((flags.op("&")(seen) == 0, 1), else_=0)), 0),
                        func.coalesce(func.sum(case((flags.op("&")(deleted) != 0, 1), else_=0)), 0),
                        func.coalesce(func.sum(messages.c.size), 0),
                    ).where(messages.c.folder_id == folder_id)
                )
            ).one()
        return FolderTotals(_folder(row), *(int(c) for c in counts))

    async def first_unseen_uid(self, folder_id: int) -> int | None:
        """The lowest UID without \\Seen (IMAP4rev1 SELECT's ``OK [UNSEEN n]``), or None."""
        async with self.db.fast_reader.connect() as conn:
            uid = (
                await conn.execute(
                    select(func.min(messages.c.uid)).where(
                        messages.c.folder_id == folder_id,
                        messages.c.flags.op("&")(int(Flag.SEEN)) == 0,
                    )
                )
            ).scalar()
        return None if uid is None else int(uid)

    async def read_message(self, message: MessageInfo) -> bytes:
        if 0 < message.size <= INLINE_READ_LIMIT:
            # From the page cache a small blob reads in microseconds, ten times less than the
            # thread hop (IMAP FETCH of one message, a practice software's everyday request).
            # A command reading thousands (SEARCH BODY) still lets the other sessions run.
            self._inline_reads += 1
            if self._inline_reads % INLINE_READS_BETWEEN_YIELDS == 0:
                await asyncio.sleep(0)
            return self.blobs.read_sync(message.blob)
        return await self.blobs.read(message.blob)

    async def read_header(self, message: MessageInfo) -> bytes:
        """The top-level header block, from the row when it fits there, else from the blob."""
        header_size = int(message.body.get("body_start", 0))
        if len(message.header) >= header_size:
            return message.header
        return await self.blobs.read_range(message.blob, 0, header_size)

    # -- flags and expunge ------------------------------------------------------------------------

    async def set_flags(
        self,
        folder_id: int,
        uids: Sequence[int],
        *,
        flags: Flag = NO_FLAGS,
        keywords: Iterable[str] = (),
        mode: Literal["replace", "add", "remove"] = "replace",
        unchanged_since: int | None = None,
    ) -> list[FlagChange]:
        """Change flags/keywords of messages; each changed message gets a new MODSEQ.

        With ``unchanged_since`` (RFC 7162 §3.1.3 UNCHANGEDSINCE), messages modified after that
        MODSEQ are left alone. Returns the messages actually changed.
        """
        wanted_keywords = _validate_keywords(keywords)

        async def change() -> list[FlagChange]:
            changes = await self.db.transaction(
                _set_flags, folder_id, uids, flags, wanted_keywords, mode, unchanged_since
            )
            if changes:
                top = changes[-1].modseq
                self.changes.publish(folder_id, top, Written(changes[0].modseq, top, changes))
            return changes

        # Shielded: a client that hangs up mid-STORE does not stop the change from being
        # published once committed (the IDLE sessions of the mailbox must hear of it).
        return await asyncio.shield(change())

    async def expunge(self, folder_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove the messages flagged \\Deleted (only among ``uids`` if given: UID EXPUNGE)."""

        async def remove() -> list[int]:
            found, top = await self.db.transaction(_expunge, folder_id, uids)
            if found:
                self.changes.publish(folder_id, top, Written(top, top, vanished=found))
            return found

        return await asyncio.shield(remove())

    async def copy_messages(
        self, source_id: int, uids: Sequence[int], target_id: int, *, move: bool = False
    ) -> list[tuple[int, int]]:
        """Copy (or move) messages to another folder; returns ``(source UID, new UID)`` pairs.

        The copies share the blobs, keep flags, keywords and INTERNALDATE (RFC 9051 §6.4.7) and
        get UIDs and MODSEQs of the target. A move removes the originals in the same transaction
        (RFC 6851: never a state where the message is in both folders, or in neither)."""
        if source_id == target_id and move:
            return []
        pairs: list[tuple[int, int]] = []
        async with self.db.writer.begin() as conn:
            # Lock in id order, as the group committer does: two movers cannot deadlock.
            for folder_id in sorted({source_id, target_id}):
                await self._lock_folder(conn, folder_id)
            originals: list[Any] = []
            for chunk in _chunks(sorted(set(uids))):
                originals.extend(
                    (
                        await conn.execute(
                            select(messages)
                            .where(messages.c.folder_id == source_id, messages.c.uid.in_(chunk))
                            .order_by(messages.c.uid)
                        )
                    ).all()
                )
            if not originals:
                return []
            n = len(originals)
            allocated = (
                await conn.execute(
                    update(folders)
                    .where(folders.c.id == target_id)
                    .values(
                        uid_next=folders.c.uid_next + n,
                        highest_modseq=folders.c.highest_modseq + n,
                    )
                    .returning(folders.c.uid_next, folders.c.highest_modseq)
                )
            ).one()
            first_uid, first_modseq = allocated.uid_next - n, allocated.highest_modseq - n + 1
            rows = []
            copies: list[FlagChange] = []
            for i, original in enumerate(originals):
                row = dict(original._mapping)
                del row["id"]
                row.update(folder_id=target_id, uid=first_uid + i, modseq=first_modseq + i)
                rows.append(row)
                pairs.append((original.uid, first_uid + i))
                copies.append(
                    FlagChange(
                        first_uid + i,
                        first_modseq + i,
                        Flag(original.flags),
                        tuple(original.keywords),
                    )
                )
            await conn.execute(insert(messages), rows)
            await self._notify(conn, target_id, allocated.highest_modseq)
            source_top = None
            if move:
                source_top = (
                    await conn.execute(
                        update(folders)
                        .where(folders.c.id == source_id)
                        .values(highest_modseq=folders.c.highest_modseq + 1)
                        .returning(folders.c.highest_modseq)
                    )
                ).scalar_one()
                moved = [uid for uid, _ in pairs]
                for chunk in _chunks(moved):
                    await conn.execute(
                        delete(messages).where(
                            messages.c.folder_id == source_id, messages.c.uid.in_(chunk)
                        )
                    )
                await conn.execute(
                    insert(expunged),
                    [{"folder_id": source_id, "uid": u, "modseq": source_top} for u in moved],
                )
                await self._notify(conn, source_id, source_top)
        top = allocated.highest_modseq
        self.changes.publish(target_id, top, Written(first_modseq, top, copies))
        if source_top is not None:
            moved = [uid for uid, _ in pairs]
            self.changes.publish(source_id, source_top, Written(source_top, source_top, (), moved))
        return pairs

    async def set_subscribed(self, folder_id: int, subscribed: bool) -> None:
        async with self.db.writer.begin() as conn:
            await conn.execute(
                update(folders).where(folders.c.id == folder_id).values(subscribed=subscribed)
            )

    async def usage(self, bal: str) -> tuple[int, int]:
        """Octets and messages a BAL holds, all folders together (IMAP QUOTA, RFC 9208)."""
        owner = await self.get_bal(bal)
        async with self.db.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(func.coalesce(func.sum(messages.c.size), 0), func.count())
                    .select_from(messages.join(folders, folders.c.id == messages.c.folder_id))
                    .where(folders.c.bal_id == owner.id)
                )
            ).one()
        return int(row[0]), int(row[1])

    async def changes_since(
        self, folder_id: int, modseq: int, *, covering: int = 0
    ) -> FolderChanges:
        """Flag changes and expunges after ``modseq`` (new messages show up as changes too).

        Callers asking the same question at the same time share one query: a delivery wakes
        every IMAP session of the BAL at once. ``covering`` is the MODSEQ of the notification
        the caller woke for; a shared answer older than that is not used (the query must have
        started after that commit), so sharing never hides a change.
        """
        known = self.changes.changes_known(folder_id, modseq, covering)
        if known is not None:
            return known
        key = (folder_id, modseq)
        pending = self._changes_in_flight.get(key)
        if pending is not None:
            with contextlib.suppress(Exception):
                shared = await asyncio.shield(pending)
                if shared.highest_modseq >= covering:
                    return shared
        future: asyncio.Future[FolderChanges] = asyncio.get_running_loop().create_future()
        self._changes_in_flight[key] = future
        try:
            result = await self._changes_since(folder_id, modseq)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else StoreError("cancelled"))
            future.exception()  # retrieved: nobody may be waiting
            raise
        else:
            future.set_result(result)
            return result
        finally:
            if self._changes_in_flight.get(key) is future:
                del self._changes_in_flight[key]

    async def _changes_since(self, folder_id: int, modseq: int) -> FolderChanges:
        # HIGHESTMODSEQ is read first: a change committed between the statements (they need
        # not share a snapshot) is then reported now and again at the next look, never lost.
        since = {"folder_id": folder_id, "modseq": modseq}
        async with self.db.fast_reader.connect() as conn:
            top = (await conn.execute(_HIGHEST_MODSEQ, since)).scalar()
            if top is None:
                raise StoreError(f"folder {folder_id} does not exist")
            changed: Sequence[Any] = (await conn.execute(_CHANGED_SINCE, since)).all()
            vanished = tuple((await conn.execute(_EXPUNGED_SINCE, since)).scalars())
        return FolderChanges(
            highest_modseq=top,
            changed=tuple(
                FlagChange(uid, change_modseq, _flag(flags), tuple(keywords))
                for uid, change_modseq, flags, keywords in changed
            ),
            vanished=vanished,
        )

    async def _lock_folder(self, conn: WriteConnection, folder_id: int) -> None:
        await conn.run_sync(_lock_folder, folder_id)

    async def _notify(self, conn: WriteConnection, folder_id: int, modseq: int) -> None:
        if self.db.is_postgresql:
            await conn.run_sync(notify_other_processes, folder_id, modseq)

    # -- outbound queue ---------------------------------------------------------------------------

    async def enqueue(
        self,
        mail_from: str,
        recipients: Sequence[Recipient],
        message: Message | str,
        *,
        sender_bal: str | None = None,
        envid: str | None = None,
        ret: str | None = None,
        not_before: datetime | None = None,
    ) -> QueueEntry:
        """Queue a message for outbound delivery; durable when this returns."""
        if not recipients:
            raise InvalidInput("a queue entry needs at least one recipient")
        if isinstance(message, str):
            digest = message
            size = (await asyncio.to_thread(self.blobs.path(digest).stat)).st_size
        else:
            digest, size = await self.blobs.put(message)
        now = _now()
        async with self.db.writer.begin() as conn:
            row = (
                await conn.execute(
                    insert(outbound_queue)
                    .values(
                        created_at=now,
                        sender_bal=sender_bal,
                        mail_from=mail_from,
                        recipients=[asdict(r) for r in recipients],
                        envid=envid,
                        ret=ret,
                        blob=digest,
                        size=size,
                        status=QueueStatus.QUEUED.value,
                        attempts=0,
                        next_attempt_at=not_before or now,
                    )
                    .returning(outbound_queue)
                )
            ).one()
        return _queue_entry(row)

    async def claim_queue_entries(
        self, worker: str, *, limit: int = 10, lease: timedelta = timedelta(minutes=10)
    ) -> list[QueueEntry]:
        """Take up to ``limit`` due entries for ``worker``. A claim whose lease ran out (the worker
        died) is due again, so no entry is stranded."""
        now = _now()
        due = or_(
            and_(
                outbound_queue.c.status == QueueStatus.QUEUED.value,
                outbound_queue.c.next_attempt_at <= now,
            ),
            and_(
                outbound_queue.c.status == QueueStatus.CLAIMED.value,
                outbound_queue.c.claimed_until < now,
            ),
        )
        query = (
            select(outbound_queue.c.id)
            .where(due)
            .order_by(outbound_queue.c.next_attempt_at)
            .limit(limit)
        )
        if self.db.is_postgresql:
            # Several queue runners (processes, hosts) share the table without blocking each other.
            query = query.with_for_update(skip_locked=True)
        async with self.db.writer.begin() as conn:
            ids = list((await conn.execute(query)).scalars())
            if not ids:
                return []
            rows = (
                await conn.execute(
                    update(outbound_queue)
                    .where(outbound_queue.c.id.in_(ids))
                    .values(
                        status=QueueStatus.CLAIMED.value,
                        claimed_by=worker,
                        claimed_until=now + lease,
                    )
                    .returning(outbound_queue)
                )
            ).all()
        return sorted((_queue_entry(r) for r in rows), key=lambda e: e.next_attempt_at)

    async def renew_queue_claims(
        self, worker: str, entry_ids: Sequence[int], lease: timedelta
    ) -> int:
        """Extend ``worker``'s claims on ``entry_ids`` (a heartbeat while it delivers them), so
        that a short lease suffices: if the worker dies, its entries are due again as soon as
        the lease runs out. Returns how many claims were still held."""
        if not entry_ids:
            return 0
        renewed = 0
        async with self.db.writer.begin() as conn:
            for chunk in _chunks(list(entry_ids)):
                result = await conn.execute(
                    update(outbound_queue)
                    .where(
                        outbound_queue.c.id.in_(chunk),
                        outbound_queue.c.status == QueueStatus.CLAIMED.value,
                        outbound_queue.c.claimed_by == worker,
                    )
                    .values(claimed_until=_now() + lease)
                )
                renewed += result.rowcount or 0
        return renewed

    async def complete_queue_entry(self, entry_id: int, worker: str) -> bool:
        """Mark delivered. False when ``worker`` no longer holds the claim (its lease ran out
        and another runner took the entry): that runner's outcome is the one that counts."""
        return await self._finish_queue_entry(entry_id, worker, status=QueueStatus.DONE)

    async def fail_queue_entry(
        self,
        entry_id: int,
        worker: str,
        error: str,
        *,
        recipients: Sequence[Recipient] | None = None,
    ) -> bool:
        """Give up on an entry (the caller sends the DSN). False if the claim was lost.

        ``recipients``, when given, replaces the entry's recipients: the queue runner keeps
        only the ones that failed, so an operator's retry never sends twice to a recipient
        that was delivered."""
        return await self._finish_queue_entry(
            entry_id, worker, status=QueueStatus.FAILED, last_error=error, recipients=recipients
        )

    async def defer_queue_entry(
        self,
        entry_id: int,
        worker: str,
        error: str,
        retry_at: datetime,
        *,
        recipients: Sequence[Recipient] | None = None,
        delay_warned: bool | None = None,
        count_attempt: bool = True,
    ) -> bool:
        """Try again at ``retry_at``. False if the claim was lost.

        ``recipients``, when given, replaces the entry's recipients (those still to deliver
        after a partial attempt); ``delay_warned`` records that the "delayed" DSN was sent;
        ``count_attempt=False`` puts back an entry that was not tried at all (no connection
        slot for its domain), so its backoff does not grow."""
        return await self._finish_queue_entry(
            entry_id,
            worker,
            status=QueueStatus.QUEUED,
            last_error=error,
            retry_at=retry_at,
            recipients=recipients,
            delay_warned=delay_warned,
            count_attempt=count_attempt,
        )

    async def _finish_queue_entry(
        self,
        entry_id: int,
        worker: str,
        *,
        status: QueueStatus,
        last_error: str | None = None,
        retry_at: datetime | None = None,
        recipients: Sequence[Recipient] | None = None,
        delay_warned: bool | None = None,
        count_attempt: bool = True,
    ) -> bool:
        values: dict[str, Any] = {
            "status": status.value,
            "attempts": outbound_queue.c.attempts + (1 if count_attempt else 0),
            "claimed_by": None,
            "claimed_until": None,
            "last_error": last_error,
        }
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
        if recipients is not None:
            if not recipients:
                raise InvalidInput("a queue entry needs at least one recipient")
            values["recipients"] = [asdict(r) for r in recipients]
        if delay_warned is not None:
            values["delay_warned"] = delay_warned
        async with self.db.writer.begin() as conn:
            done = await conn.execute(
                update(outbound_queue)
                .where(
                    outbound_queue.c.id == entry_id,
                    outbound_queue.c.status == QueueStatus.CLAIMED.value,
                    outbound_queue.c.claimed_by == worker,
                )
                .values(**values)
            )
        return bool(done.rowcount)

    async def list_queue(
        self,
        *,
        status: QueueStatus | Iterable[QueueStatus] | None = None,
        domain: str | None = None,
        created_before: datetime | None = None,
    ) -> list[QueueEntry]:
        """Queue entries by id. ``status`` keeps one status or several; ``domain`` keeps entries
        with at least one recipient in that domain; ``created_before`` keeps older entries."""
        query = select(outbound_queue).order_by(outbound_queue.c.id)
        if isinstance(status, QueueStatus):
            query = query.where(outbound_queue.c.status == status.value)
        elif status is not None:
            query = query.where(outbound_queue.c.status.in_([s.value for s in status]))
        if created_before is not None:
            query = query.where(outbound_queue.c.created_at < created_before)
        async with self.db.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        entries = [_queue_entry(r) for r in rows]
        if domain is not None:
            # Recipients are a JSON list: filtered here, the same way on both engines.
            wanted = domain.strip().lower().rstrip(".")
            entries = [
                e
                for e in entries
                if any(r.address.rpartition("@")[2].lower() == wanted for r in e.recipients)
            ]
        return entries

    async def get_queue_entry(self, entry_id: int) -> QueueEntry:
        async with self.db.reader.connect() as conn:
            row = (
                await conn.execute(select(outbound_queue).where(outbound_queue.c.id == entry_id))
            ).one_or_none()
        if row is None:
            raise QueueEntryNotFound(entry_id)
        return _queue_entry(row)

    async def retry_queue_entry(self, entry_id: int) -> QueueEntry:
        """Make an entry due now (an operator's retry): queued or failed entries, and claims
        whose lease ran out, become queued; attempts are kept. Refused (:class:`QueueEntryBusy`)
        while a runner holds a live claim, and (:class:`InvalidInput`) once delivered."""
        now = _now()
        async with self.db.writer.begin() as conn:
            row = (
                await conn.execute(
                    update(outbound_queue)
                    .where(
                        outbound_queue.c.id == entry_id,
                        outbound_queue.c.status != QueueStatus.DONE.value,
                        self._not_claimed(now),
                    )
                    .values(
                        status=QueueStatus.QUEUED.value,
                        next_attempt_at=now,
                        claimed_by=None,
                        claimed_until=None,
                    )
                    .returning(outbound_queue)
                )
            ).one_or_none()
            if row is None:
                await self._explain_queue_refusal(conn, entry_id, now)
        assert row is not None
        return _queue_entry(row)

    async def delete_queue_entry(self, entry_id: int) -> QueueEntry:
        """Remove an entry from the queue (no DSN is sent) and return what it was. Refused
        (:class:`QueueEntryBusy`) while a runner holds a live claim. Its blob stays until
        :meth:`collect_garbage` finds nothing references it any more."""
        now = _now()
        async with self.db.writer.begin() as conn:
            row = (
                await conn.execute(
                    delete(outbound_queue)
                    .where(outbound_queue.c.id == entry_id, self._not_claimed(now))
                    .returning(outbound_queue)
                )
            ).one_or_none()
            if row is None:
                await self._explain_queue_refusal(conn, entry_id, now)
        assert row is not None
        return _queue_entry(row)

    @staticmethod
    def _not_claimed(now: datetime) -> Any:
        """No runner holds a live claim (one whose lease ran out counts as abandoned)."""
        return or_(
            outbound_queue.c.status != QueueStatus.CLAIMED.value,
            outbound_queue.c.claimed_until.is_(None),
            outbound_queue.c.claimed_until < now,
        )

    @staticmethod
    async def _explain_queue_refusal(conn: WriteConnection, entry_id: int, now: datetime) -> None:
        """Raise why a guarded change of ``entry_id`` touched no row."""
        row = (
            await conn.execute(select(outbound_queue).where(outbound_queue.c.id == entry_id))
        ).one_or_none()
        if row is None:
            raise QueueEntryNotFound(entry_id)
        if row.status == QueueStatus.DONE.value:
            raise InvalidInput(f"queue entry {entry_id} was already delivered")
        raise QueueEntryBusy(entry_id, row.claimed_by, row.claimed_until)

    # -- audit trail ------------------------------------------------------------------------------

    async def audit(
        self,
        action: str,
        *,
        actor: str,
        bal: str | None = None,
        source: str | None = None,
        result: str = "ok",
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append an audit record. ``detail`` must never hold a body, an INS, a password or a
        token: it is shown to operators."""
        async with self.db.writer.begin() as conn:
            await conn.execute(
                insert(audit).values(
                    at=_now(),
                    actor=actor,
                    action=action,
                    bal=bal,
                    source=source,
                    result=result,
                    detail=detail,
                )
            )

    async def audit_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append several audit records in one transaction (busy listeners batch theirs).
        Each mapping has the keyword arguments of :meth:`audit` and may carry its own ``at``."""
        if not records:
            return
        now = _now()
        rows = [
            {
                "at": r.get("at") or now,
                "actor": r["actor"],
                "action": r["action"],
                "bal": r.get("bal"),
                "source": r.get("source"),
                "result": r.get("result", "ok"),
                "detail": r.get("detail"),
            }
            for r in records
        ]
        async with self.db.writer.begin() as conn:
            await conn.execute(insert(audit), rows)

    async def tail_audit(
        self, *, limit: int = 20, bal: str | None = None, since: datetime | None = None
    ) -> list[AuditRecord]:
        """The newest records, oldest first."""
        query = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if bal is not None:
            query = query.where(audit.c.bal == normalise_address(bal))
        if since is not None:
            query = query.where(audit.c.at >= since)
        async with self.db.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            AuditRecord(r.id, r.at, r.actor, r.action, r.bal, r.source, r.result, r.detail)
            for r in reversed(rows)
        ]

    # -- maintenance ------------------------------------------------------------------------------

    async def collect_garbage(self, *, grace: timedelta = timedelta(hours=1)) -> tuple[int, int]:
        """Remove blobs no message and no queue entry references any more (expunged, deleted
        folders), once older than ``grace``; return (files removed, octets freed)."""
        older_than = (_now() - grace).timestamp()
        async with self.db.reader.connect() as conn:
            referenced = set((await conn.execute(select(messages.c.blob).distinct())).scalars())
            referenced |= set(
                (await conn.execute(select(outbound_queue.c.blob).distinct())).scalars()
            )
        return await asyncio.to_thread(
            self.blobs.remove_unreferenced, referenced, older_than=older_than
        )

    # -- statistics -------------------------------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        """Row counts for operators and metrics."""
        out: dict[str, int] = {}
        async with self.db.reader.connect() as conn:
            for name, table in (
                ("domains", domains),
                ("bals", bals),
                ("messages", messages),
                ("queued", outbound_queue),
            ):
                query = select(func.count()).select_from(table)
                if table is outbound_queue:
                    query = query.where(
                        outbound_queue.c.status.in_(
                            [QueueStatus.QUEUED.value, QueueStatus.CLAIMED.value]
                        )
                    )
                out[name] = int((await conn.execute(query)).scalar_one())
        return out
