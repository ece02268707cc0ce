"""Store methods for the national address book (the ANS open-data extraction, mssante-spec §5.4)
and the search of our own BALs.

A mixin of :class:`store.Store`.

Imports write a new *generation* beside the current one in small transactions (a delivery never
waits long for the SQLite write lock), then switch to it with one update of its import record: the
current generation is the latest import whose status is ``done``. Every search reads the current
generation through a subquery of its own statement, so a reader sees the old book or the new one,
never a mix, even while the old generation is being deleted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from store.database import Database
from store.errors import InvalidInput
from store.model import Bal, BalStatus
from store.schema import address_book, address_book_imports, address_book_words, bals
from store.text import prefix_upper_bound, search_key

# Rows deleted per transaction when a generation goes: each transaction holds the SQLite write
# lock for a few milliseconds only.
DELETE_BATCH = 5000
# A search is driven by its most selective indexed criterion when that one matches fewer entries
# than this; otherwise the name index is walked in result order until the page is full (the
# criteria are then common enough that the page fills quickly).
DRIVER_CAP = 20_000
MAX_SEARCH_LIMIT = 1000
# Local BALs are filtered on city and profession in Python (accent folding): read by pages.
LOCAL_PAGE = 500
MAX_LOCAL_PAGES = 2000
# Import records kept (the history shown by `colombe directory status`).
KEPT_IMPORTS = 30


@functools.lru_cache(maxsize=1 << 16)
def _fold(part: str) -> str:
    return search_key(part)


def folded_key(*parts: str | None) -> str:
    """:func:`store.text.search_key` of ``parts``, part by part through a cache: names, cities
    and professions repeat across the 500,000 lines of an extraction."""
    return " ".join(k for p in parts if p and (k := _fold(p)))


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AddressBookEntry:
    """One MSSanté BAL of the national address book."""

    address: str
    bal_type: str
    person_id: str | None = None
    structure_id: str | None = None
    service: str | None = None
    civility: str | None = None
    last_name: str | None = None
    first_name: str | None = None
    profession_code: str | None = None
    profession: str | None = None
    specialty: str | None = None
    organisation: str | None = None
    trade_name: str | None = None
    street: str | None = None
    city: str | None = None
    postal_code: str | None = None
    departement: str | None = None
    country: str | None = None
    dematerialisation: bool | None = None

    @property
    def name_key(self) -> str:
        return folded_key(
            self.last_name, self.first_name, self.organisation, self.trade_name, self.service
        )


_ENTRY_FIELDS = tuple(AddressBookEntry.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class AddressBookImport:
    """One import of the extraction; ``id`` is the generation it wrote."""

    id: int
    source: str
    started_at: datetime
    finished_at: datetime | None
    # running | done | failed
    status: str
    entries: int
    bad_lines: int
    duplicates: int
    detail: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class DirectoryQuery:
    """What a directory search asks, already folded (see :mod:`directory.search`).

    ``words``: each must be the prefix of a word of the name. ``profession_words``: each the prefix
    of a word of the profession or specialty label, unless ``profession_code`` matches exactly.
    ``city``: prefix of the folded city. ``address``: prefix of the address (lower case).
    """

    words: tuple[str, ...] = ()
    profession_words: tuple[str, ...] = ()
    profession_code: str | None = None
    city: str | None = None
    departement: str | None = None
    bal_type: str | None = None
    address: str | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.words
            or self.profession_words
            or self.profession_code
            or self.city
            or self.departement
            or self.bal_type
            or self.address
        )


def _import(row: Row[Any]) -> AddressBookImport:
    return AddressBookImport(
        id=row.id,
        source=row.source,
        started_at=row.started_at,
        finished_at=row.finished_at,
        status=row.status,
        entries=row.entries,
        bad_lines=row.bad_lines,
        duplicates=row.duplicates,
        detail=row.detail,
    )


def _entry(row: Row[Any]) -> AddressBookEntry:
    return AddressBookEntry(**{name: getattr(row, name) for name in _ENTRY_FIELDS})


def _has_word_prefixes(key: ColumnElement[str], words: Sequence[str]) -> list[ColumnElement[bool]]:
    """Each of ``words`` is the prefix of a word of ``key`` (folded words: no LIKE wildcard)."""
    spaced = literal(" ") + key
    return [spaced.like(f"% {w}%") for w in words]


def _prefix_range(column: Any, prefix: str) -> ColumnElement[bool]:
    return and_(column >= prefix, column < prefix_upper_bound(prefix))


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


class AddressBookStore:
    """Mixin: needs ``self.db`` (provided by :class:`store.Store`)."""

    db: Database

    def _bal_from_row(self, row: Row[Any]) -> Bal:
        raise NotImplementedError  # provided by Store

    # -- imports ----------------------------------------------------------------------------------

    async def start_address_book_import(self, source: str) -> int:
        """Record a running import and return the generation it writes.

        The caller holds the ``addressbook-import`` lease: an import still marked running is one
        that died; it is marked failed and what it wrote is deleted.
        """
        async with self.db.writer.begin() as conn:
            await conn.execute(
                update(address_book_imports)
                .where(address_book_imports.c.status == "running")
                .values(status="failed", finished_at=_now(), detail={"error": "interrupted"})
            )
            generation = (
                await conn.execute(
                    insert(address_book_imports)
                    .values(source=source[:2000], started_at=_now(), status="running")
                    .returning(address_book_imports.c.id)
                )
            ).scalar_one()
        await self._purge_generations(keep=(generation, await self._current_generation()))
        return int(generation)

    async def add_address_book_entries(
        self, generation: int, entries: Sequence[AddressBookEntry]
    ) -> list[bool]:
        """Insert a batch of entries into ``generation`` (one transaction); for each entry, whether
        it was inserted: False when its address is already in the generation (the first line of
        an address wins).

        The caller holds the import lease: nobody else inserts, so the rows this call inserted are
        those with an id above the highest before it. Plain executemany through the driver: the
        import is bound by this insert, and building SQLAlchemy parameters per row costs more
        than the database does.
        """
        if not entries:
            return []
        rows = [
            (
                generation,
                *(getattr(e, name) for name in _ENTRY_FIELDS),
                e.name_key,
                folded_key(e.profession, e.specialty),
                folded_key(e.city),
            )
            for e in entries
        ]
        entry_sql, words_sql = self._insert_sql()
        async with self.db.writer.begin() as conn:
            before = (
                await conn.execute(select(func.coalesce(func.max(address_book.c.id), 0)))
            ).scalar_one()
            await conn.exec_driver_sql(entry_sql, rows)
            inserted = {
                r.address: r.id
                for r in await conn.execute(
                    select(address_book.c.address, address_book.c.id).where(
                        address_book.c.id > before
                    )
                )
            }
            words: list[tuple[int, str, int]] = []
            added: list[bool] = []
            for e, row in zip(entries, rows, strict=True):
                # Within one batch the same address may come twice: the first one was inserted.
                entry_id = inserted.pop(e.address, None)
                added.append(entry_id is not None)
                if entry_id is not None:
                    words.extend((generation, w, entry_id) for w in set(row[-3].split()))
            if words:
                await conn.exec_driver_sql(words_sql, words)
        return added

    def _insert_sql(self) -> tuple[str, str]:
        columns = ("generation", *_ENTRY_FIELDS, "name_key", "profession_key", "city_key")
        if self.db.is_postgresql:
            marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
            word_marks = "$1, $2, $3"
        else:
            marks = ", ".join("?" for _ in columns)
            word_marks = "?, ?, ?"
        entry_sql = (
            f"INSERT INTO {address_book.name} ({', '.join(columns)}) VALUES ({marks}) "
            "ON CONFLICT (generation, address) DO NOTHING"
        )
        words_sql = (
            f"INSERT INTO {address_book_words.name} (generation, word, entry) VALUES ({word_marks})"
        )
        return entry_sql, words_sql

    async def finish_address_book_import(
        self,
        generation: int,
        *,
        entries: int,
        bad_lines: int,
        duplicates: int,
        detail: dict[str, Any] | None = None,
    ) -> AddressBookImport:
        """Make ``generation`` the current address book (one update), then delete the older
        generations."""
        async with self.db.writer.begin() as conn:
            row = (
                await conn.execute(
                    update(address_book_imports)
                    .where(
                        address_book_imports.c.id == generation,
                        address_book_imports.c.status == "running",
                    )
                    .values(
                        status="done",
                        finished_at=_now(),
                        entries=entries,
                        bad_lines=bad_lines,
                        duplicates=duplicates,
                        detail=detail,
                    )
                    .returning(address_book_imports)
                )
            ).first()
            if row is None:
                raise InvalidInput(f"address book import {generation} is not running")
        await self._purge_generations(keep=(generation,))
        await self._prune_import_records()
        return _import(row)

    async def fail_address_book_import(
        self, generation: int, detail: dict[str, Any]
    ) -> AddressBookImport | None:
        """The import of ``generation`` failed: keep the current book, delete what it wrote."""
        async with self.db.writer.begin() as conn:
            row = (
                await conn.execute(
                    update(address_book_imports)
                    .where(
                        address_book_imports.c.id == generation,
                        address_book_imports.c.status == "running",
                    )
                    .values(status="failed", finished_at=_now(), detail=detail)
                    .returning(address_book_imports)
                )
            ).first()
        await self._purge_generations(keep=(await self._current_generation(),))
        await self._prune_import_records()
        return None if row is None else _import(row)

    async def current_address_book(self) -> AddressBookImport | None:
        """The import whose generation readers see, or None before the first successful one."""
        query = (
            select(address_book_imports)
            .where(address_book_imports.c.status == "done")
            .order_by(address_book_imports.c.id.desc())
            .limit(1)
        )
        async with self.db.reader.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _import(row)

    async def address_book_imports(self, *, limit: int = 10) -> list[AddressBookImport]:
        """The latest imports, newest first (running and failed ones included)."""
        query = (
            select(address_book_imports)
            .order_by(address_book_imports.c.id.desc())
            .limit(max(1, min(limit, KEPT_IMPORTS)))
        )
        async with self.db.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_import(r) for r in rows]

    async def address_book_size(self, generation: int | None = None) -> int:
        """Entries in ``generation`` (default: the current one)."""
        gen = generation if generation is not None else await self._current_generation()
        if gen is None:
            return 0
        async with self.db.reader.connect() as conn:
            return int(
                (
                    await conn.execute(select(func.count()).where(address_book.c.generation == gen))
                ).scalar_one()
            )

    async def _current_generation(self) -> int | None:
        async with self.db.reader.connect() as conn:
            return (await conn.execute(select(_current_generation_subquery()))).scalar()

    async def _purge_generations(self, keep: Sequence[int | None]) -> None:
        """Delete the rows of every generation not in ``keep``, a few thousand per transaction."""
        kept = [g for g in keep if g is not None]
        for table in (address_book_words, address_book):
            # Bounded: each round deletes up to DELETE_BATCH rows and nothing adds rows to a
            # generation that is not kept (the import lease), so the rounds end.
            while True:
                async with self.db.writer.begin() as conn:
                    ids = (
                        select(table.c.id)
                        .where(table.c.generation.not_in(kept) if kept else literal(True))
                        .limit(DELETE_BATCH)
                        .scalar_subquery()
                    )
                    done = await conn.execute(delete(table).where(table.c.id.in_(ids)))
                if done.rowcount < DELETE_BATCH:
                    break

    async def _prune_import_records(self) -> None:
        async with self.db.writer.begin() as conn:
            newest = (
                select(address_book_imports.c.id)
                .order_by(address_book_imports.c.id.desc())
                .limit(KEPT_IMPORTS)
                .scalar_subquery()
            )
            current = _current_generation_subquery()
            await conn.execute(
                delete(address_book_imports).where(
                    address_book_imports.c.id.not_in(newest),
                    address_book_imports.c.id != func.coalesce(current, 0),
                    address_book_imports.c.status != "running",
                )
            )

    # -- search -----------------------------------------------------------------------------------

    async def search_address_book(
        self, query: DirectoryQuery, *, limit: int = 20, hide_unlisted_local: bool = True
    ) -> list[AddressBookEntry]:
        """Entries of the current generation matching ``query``, by name then address.

        ``hide_unlisted_local``: leave out the addresses of our own BALs that must not be shown
        (liste rouge, suspended, closed), even if a stale extraction still lists them.
        """
        limit = max(1, min(limit, MAX_SEARCH_LIMIT))
        ab = address_book
        async with self.db.reader.connect() as conn:
            generation = (await conn.execute(select(_current_generation_subquery()))).scalar()
            if generation is None:
                return []
            driver = await self._choose_driver(conn, generation, query)
            conditions = self._entry_conditions(query)
            # The generation read again inside the statement: atomic with respect to a switch.
            # A driver (a subquery of ids) restricts to it already; naming it here too would
            # let SQLite prefer walking the generation's name index over the driver's few ids.
            if driver is not None:
                conditions.append(driver)
            else:
                conditions.append(ab.c.generation == _current_generation_subquery())
            if hide_unlisted_local:
                ours: ColumnElement[str] = ab.c.address
                if self.db.is_postgresql:
                    # bals.address has the database's collation, ours is "C": compare in the
                    # former so that the unique index of bals is used.
                    ours = ours.collate("default")
                conditions.append(
                    ~select(bals.c.id)
                    .where(
                        bals.c.address == ours,
                        or_(bals.c.status != BalStatus.ACTIVE.value, bals.c.liste_rouge),
                    )
                    .exists()
                )
            statement: Select[Any] = (
                select(*(ab.c[name] for name in _ENTRY_FIELDS))
                .where(*conditions)
                .order_by(ab.c.name_key, ab.c.address)
                .limit(limit)
            )
            rows = (await conn.execute(statement)).all()
        return [_entry(r) for r in rows]

    def _entry_conditions(self, query: DirectoryQuery) -> list[ColumnElement[bool]]:
        ab = address_book
        conditions = _has_word_prefixes(ab.c.name_key, query.words)
        if query.profession_words or query.profession_code:
            alternatives = []
            if query.profession_code:
                alternatives.append(ab.c.profession_code == query.profession_code)
            if query.profession_words:
                alternatives.append(
                    and_(*_has_word_prefixes(ab.c.profession_key, query.profession_words))
                )
            conditions.append(or_(*alternatives))
        if query.city:
            conditions.append(_prefix_range(ab.c.city_key, query.city))
        if query.departement:
            conditions.append(ab.c.departement == query.departement)
        if query.bal_type:
            conditions.append(ab.c.bal_type == query.bal_type)
        if query.address:
            conditions.append(_prefix_range(ab.c.address, query.address))
        return conditions

    async def _choose_driver(
        self, conn: AsyncConnection, generation: int, query: DirectoryQuery
    ) -> ColumnElement[bool] | None:
        """The condition that restricts the search to the fewest entries, when one matches fewer
        than DRIVER_CAP of them (each candidate counted through its index, up to the cap).

        None: every criterion is common; walking the name index in order fills the page fastest.
        """
        ab, words = address_book, address_book_words
        candidates: list[tuple[ColumnElement[bool], ColumnElement[bool]]] = []
        for word in query.words:
            in_words = and_(words.c.generation == generation, _prefix_range(words.c.word, word))
            entries = select(words.c.entry).where(
                words.c.generation == _current_generation_subquery(),
                _prefix_range(words.c.word, word),
            )
            candidates.append((in_words, ab.c.id.in_(entries)))
        # (condition on address_book, the same on an alias for the subquery of ids)
        column_drivers: list[tuple[ColumnElement[bool], Any]] = []
        d = address_book.alias("d")

        def ids_of(condition: ColumnElement[bool]) -> Any:
            return (
                select(d.c.id)
                .where(d.c.generation == _current_generation_subquery(), condition)
                .scalar_subquery()
            )

        if query.city:
            column_drivers.append(
                (
                    _prefix_range(ab.c.city_key, query.city),
                    ids_of(_prefix_range(d.c.city_key, query.city)),
                )
            )
        if query.departement:
            column_drivers.append(
                (
                    ab.c.departement == query.departement,
                    ids_of(d.c.departement == query.departement),
                )
            )
        if query.address:
            column_drivers.append(
                (
                    _prefix_range(ab.c.address, query.address),
                    ids_of(_prefix_range(d.c.address, query.address)),
                )
            )
        best: tuple[int, ColumnElement[bool]] | None = None
        for count_condition, driver in candidates:
            inner = select(words.c.id).where(count_condition).limit(DRIVER_CAP).subquery()
            n = (await conn.execute(select(func.count()).select_from(inner))).scalar_one()
            if n < DRIVER_CAP and (best is None or n < best[0]):
                best = (n, driver)
        for condition, ids in column_drivers:
            inner = (
                select(ab.c.id)
                .where(ab.c.generation == generation, condition)
                .limit(DRIVER_CAP)
                .subquery()
            )
            n = (await conn.execute(select(func.count()).select_from(inner))).scalar_one()
            if n < DRIVER_CAP and (best is None or n < best[0]):
                # As a subquery of ids, like the words: the planner then starts from it instead
                # of walking the name index to spare a sort (SQLite has no statistics to tell).
                best = (n, ab.c.id.in_(ids))
        return None if best is None else best[1]

    async def search_bals(
        self, query: DirectoryQuery, *, limit: int = 20, include_unpublishable: bool = False
    ) -> list[Bal]:
        """Our BALs matching ``query``, by name key then address. Only the publishable ones (active,
        not liste rouge) unless ``include_unpublishable`` (an operator asking explicitly)."""
        limit = max(1, min(limit, MAX_SEARCH_LIMIT))
        conditions = _has_word_prefixes(bals.c.name_key, query.words)
        if not include_unpublishable:
            conditions += [bals.c.status == BalStatus.ACTIVE.value, ~bals.c.liste_rouge]
        if query.bal_type:
            conditions.append(bals.c.type == query.bal_type)
        if query.departement:
            conditions.append(bals.c.departement == query.departement)
        if query.address:
            conditions.append(bals.c.address.like(_like_prefix(query.address), escape="\\"))
        found: list[Bal] = []
        after: tuple[str, str] | None = None
        async with self.db.reader.connect() as conn:
            for _page in range(MAX_LOCAL_PAGES):
                statement = select(bals).where(*conditions)
                if after is not None:
                    statement = statement.where(
                        or_(
                            bals.c.name_key > after[0],
                            and_(bals.c.name_key == after[0], bals.c.address > after[1]),
                        )
                    )
                statement = statement.order_by(bals.c.name_key, bals.c.address).limit(LOCAL_PAGE)
                rows = (await conn.execute(statement)).all()
                for row in rows:
                    if _bal_matches(row, query):
                        found.append(self._bal_from_row(row))
                        if len(found) >= limit:
                            return found
                if len(rows) < LOCAL_PAGE:
                    break
                after = (rows[-1].name_key, rows[-1].address)
        return found


def _current_generation_subquery() -> Any:
    return (
        select(func.max(address_book_imports.c.id))
        .where(address_book_imports.c.status == "done")
        .scalar_subquery()
    )


def _bal_matches(row: Row[Any], query: DirectoryQuery) -> bool:
    """The criteria of ``query`` that SQL cannot fold (accents of city and profession)."""
    if query.city and not search_key(row.city).startswith(query.city):
        return False
    if query.profession_words or query.profession_code:
        code_ok = query.profession_code is not None and row.profession == query.profession_code
        words = f" {search_key(row.profession)}"
        words_ok = bool(query.profession_words) and all(
            f" {w}" in words for w in query.profession_words
        )
        if not (code_ok or words_ok):
            return False
    return True
