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
import json
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
# An indexed criterion can drive a search (all its entries read, the page sorted from them) when
# it matches fewer entries than this; it is counted up to this many (see
# AddressBookStore._choose_plan). Otherwise an index is walked in result order.
DRIVER_CAP = 50_000
# The plan's estimates (see AddressBookStore._choose_plan): a table row read beside an index entry
# costs this many index entries; the share of entries a profession or a BAL type keeps.
HEAP_COST = 4.0
GUESSED_PROFESSION_SELECTIVITY = 0.1
GUESSED_TYPE_SELECTIVITY = 0.5
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


@dataclass(frozen=True, slots=True)
class _Plan:
    """How a search reads its page: ``kind`` names the index it starts from (word: the words
    index, for ``word``; city, departement, address, name: an index of address_book)."""

    kind: str
    word: str | None = None


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
            words: list[tuple[int, str, int, str, str]] = []
            added: list[bool] = []
            for e, row in zip(entries, rows, strict=True):
                # Within one batch the same address may come twice: the first one was inserted.
                entry_id = inserted.pop(e.address, None)
                added.append(entry_id is not None)
                if entry_id is not None:
                    name_key = row[-3]
                    words.extend(
                        (generation, w, entry_id, name_key, e.address)
                        for w in set(name_key.split())
                    )
            if words:
                await conn.exec_driver_sql(words_sql, words)
        return added

    def _insert_sql(self) -> tuple[str, str]:
        columns = ("generation", *_ENTRY_FIELDS, "name_key", "profession_key", "city_key")
        if self.db.is_postgresql:
            marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
            word_marks = "$1, $2, $3, $4, $5"
        else:
            marks = ", ".join("?" for _ in columns)
            word_marks = "?, ?, ?, ?, ?"
        entry_sql = (
            f"INSERT INTO {address_book.name} ({', '.join(columns)}) VALUES ({marks}) "
            "ON CONFLICT (generation, address) DO NOTHING"
        )
        words_sql = (
            f"INSERT INTO {address_book_words.name} (generation, word, entry, name_key, address) "
            f"VALUES ({word_marks})"
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
        await self._vacuum_address_book()
        return _import(row)

    async def _vacuum_address_book(self) -> None:
        """PostgreSQL, once the old generation is gone: statistics for the planner, and the
        visibility map without which the searches could not read their indexes alone (index-only
        scans). SQLite plans its searches with the indexes they name."""
        if not self.db.is_postgresql:
            return
        # PostgreSQL only: the reader is the writer's engine there.
        async with self.db.reader.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in (address_book, address_book_words):
                await conn.exec_driver_sql(f"VACUUM (ANALYZE) {table.name}")

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
        (liste rouge, suspended, closed), even if a stale extraction still lists them. They are
        few: the page is read first, then those of its addresses are looked up among our BALs,
        and the page read again, longer, in the rare case that some were hidden (or that the
        same entry came twice, see _search_statement).
        """
        limit = max(1, min(limit, MAX_SEARCH_LIMIT))
        async with self.db.reader.connect() as conn:
            current = (
                await conn.execute(
                    select(address_book_imports.c.id, address_book_imports.c.entries).where(
                        address_book_imports.c.id == _current_generation_subquery()
                    )
                )
            ).first()
            if current is None:
                return []
            plan = await self._choose_plan(conn, current.id, current.entries, query, limit)
            wanted = limit
            while True:
                rows = (await conn.execute(self._search_statement(query, plan, wanted))).all()
                # The same entry twice (two of its words start with the driving word) comes
                # twice in a row: sorted by name, then address.
                unique = [
                    r for i, r in enumerate(rows) if i == 0 or r.address != rows[i - 1].address
                ]
                hidden = (
                    await self._hidden_local(conn, [r.address for r in unique])
                    if hide_unlisted_local
                    else set()
                )
                visible = [r for r in unique if r.address not in hidden]
                if len(visible) >= limit or len(rows) < wanted:
                    return [_entry(r) for r in visible[:limit]]
                # Strictly more each round: fewer than ``limit`` visible among ``wanted`` rows.
                wanted = len(rows) + limit - len(visible)

    async def _hidden_local(self, conn: AsyncConnection, addresses: Sequence[str]) -> set[str]:
        """Those of ``addresses`` that are our BALs and must not be shown."""
        if not addresses:
            return set()
        statement = select(bals.c.address).where(
            bals.c.address.in_(sorted(set(addresses))),
            or_(bals.c.status != BalStatus.ACTIVE.value, bals.c.liste_rouge),
        )
        return set((await conn.execute(statement)).scalars())

    def _entry_conditions(
        self, query: DirectoryQuery, driver: str | None = None
    ) -> list[ColumnElement[bool]]:
        ab = address_book
        conditions = _has_word_prefixes(ab.c.name_key, query.words)
        conditions += self._filter_conditions(query, driver)
        return conditions

    def _filter_conditions(
        self, query: DirectoryQuery, driver: str | None = None
    ) -> list[ColumnElement[bool]]:
        """The conditions of ``query`` other than its words. On SQLite, which has no statistics
        to choose from, only the ``driver`` column's condition can use its index."""
        ab = address_book

        def column(name: str) -> Any:
            if name == driver or self.db.is_postgresql:
                return ab.c[name]
            # "x || ''": the same value, but no index of x serves the condition.
            return ab.c[name].concat("")

        conditions: list[ColumnElement[bool]] = []
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
            conditions.append(_prefix_range(column("city_key"), query.city))
        if query.departement:
            conditions.append(column("departement") == query.departement)
        if query.bal_type:
            conditions.append(ab.c.bal_type == query.bal_type)
        if query.address:
            conditions.append(_prefix_range(column("address"), query.address))
        return conditions

    async def _choose_plan(
        self, conn: AsyncConnection, generation: int, total: int, query: DirectoryQuery, limit: int
    ) -> _Plan:
        """The cheapest way to read the page, by an estimate of the index entries and table rows
        each way reads.

        Each indexed criterion (a word, the city, the département, the address) is counted, up to
        DRIVER_CAP (see _count_candidates). A criterion below the cap can
        drive: its entries are all read and the page sorted from them. Or an index is walked in
        result order (the département's, else the names') until the page is full: about
        ``limit`` divided by the selectivity of the other criteria (taken as independent). Every
        index ends with (name_key, address), so the words are checked in the index entries; the
        other criteria cost a table row each.
        """
        ab, words = address_book, address_book_words
        counted: list[tuple[_Plan, Select[Any]]] = [
            (
                _Plan("word", word),
                select(words.c.generation).where(
                    words.c.generation == generation, _prefix_range(words.c.word, word)
                ),
            )
            for word in query.words
        ]
        on_table = select(ab.c.generation).where(ab.c.generation == generation)
        if query.city:
            counted.append(
                (_Plan("city"), on_table.where(_prefix_range(ab.c.city_key, query.city)))
            )
        if query.departement:
            counted.append(
                (_Plan("departement"), on_table.where(ab.c.departement == query.departement))
            )
        if query.address:
            counted.append(
                (_Plan("address"), on_table.where(_prefix_range(ab.c.address, query.address)))
            )
        if not counted:
            return _Plan("name")
        if len(counted) == 1 and query.departement:
            # In result order after the code: nothing to compare it with.
            return _Plan("departement")
        counts_row = await self._count_candidates(conn, [s for _, s in counted])
        total = max(total, DRIVER_CAP, 1)
        counts = {plan: int(n) for (plan, _), n in zip(counted, counts_row, strict=True)}
        selectivity = {plan: max(n, 1) / total for plan, n in counts.items()}
        guessed = 1.0
        if query.profession_words or query.profession_code:
            guessed *= GUESSED_PROFESSION_SELECTIVITY
        if query.bal_type:
            guessed *= GUESSED_TYPE_SELECTIVITY
        word_plans = [p for p in counts if p.kind == "word"]

        def product(plans: Sequence[_Plan]) -> float:
            result = 1.0
            for p in plans:
                result *= selectivity[p]
            return result

        def cost(plan: _Plan, ordered: bool) -> float:
            # Criteria read in the index entries of ``plan``, and whether others need the row.
            index_only = [p for p in word_plans if p != plan] if plan.kind != "address" else []
            needs_row = guessed < 1 or any(p not in index_only and p != plan for p in counts)
            served = selectivity[plan] if plan.kind != "name" else 1.0
            if ordered:
                rest = guessed * product([p for p in counts if p != plan])
                entries = min(total * served, limit / rest)
                if any(p != plan for p in word_plans):
                    # Not independent of the order: the entries of a last name are together,
                    # so the walk may have to get to them first (half the index, on average).
                    entries = min(total * served, max(entries, total * served / 2))
            else:
                entries = counts[plan]
            rows = entries * product(index_only) if needs_row else 0.0
            return entries + HEAP_COST * rows

        name = _Plan("name")
        selectivity[name] = 1.0
        options = [(cost(name, ordered=True), name)]
        for plan, n in counts.items():
            if plan.kind == "departement":
                options.append((cost(plan, ordered=True), plan))
            elif n < DRIVER_CAP:
                options.append((cost(plan, ordered=False), plan))
        return min(options, key=lambda option: option[0])[1]

    async def _count_candidates(
        self, conn: AsyncConnection, statements: Sequence[Select[Any]]
    ) -> list[int]:
        """The rows of each of ``statements``, up to DRIVER_CAP. PostgreSQL: the planner's
        estimate (its statistics of the prefix ranges are close enough to choose a plan, and
        counting would read as many index entries as the search itself); SQLite, which has
        none: counted through the index, in one statement."""
        if self.db.is_postgresql:
            counts = []
            for statement in statements:
                # Literal values: folded keys and integers only.
                sql = statement.compile(conn.engine, compile_kwargs={"literal_binds": True})
                explained = (
                    await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}")
                ).scalar_one()
                plan: Any = json.loads(explained) if isinstance(explained, str) else explained
                counts.append(min(int(plan[0]["Plan"]["Plan Rows"]), DRIVER_CAP))
            return counts
        row = (
            await conn.execute(
                select(
                    *(
                        select(func.count())
                        .select_from(s.limit(DRIVER_CAP).subquery())
                        .scalar_subquery()
                        for s in statements
                    )
                )
            )
        ).one()
        return [int(n) for n in row]

    def _search_statement(self, query: DirectoryQuery, plan: _Plan, limit: int) -> Select[Any]:
        """The page of ``query`` read the way ``plan`` says. The generation is read again inside
        the statement: atomic with respect to a switch."""
        ab, words = address_book, address_book_words
        fields = [ab.c[name] for name in _ENTRY_FIELDS]
        if plan.kind == "word":
            # One index entry per matching word of an entry: the caller drops the repeats
            # (cheaper than DISTINCT, which would have to group every match before sorting).
            others = [w for w in query.words if w != plan.word]
            filters = self._filter_conditions(query)
            page = select(words.c.name_key, words.c.address).where(
                words.c.generation == _current_generation_subquery(),
                _prefix_range(words.c.word, plan.word or ""),
                *_has_word_prefixes(words.c.name_key, others),
            )
            if filters:
                page = page.join(
                    ab, and_(ab.c.generation == words.c.generation, ab.c.address == words.c.address)
                ).where(*filters)
            inner = page.order_by(words.c.name_key, words.c.address).limit(limit).subquery("page")
        else:
            column = {"city": "city_key", "departement": "departement", "address": "address"}.get(
                plan.kind
            )
            order: list[Any] = [ab.c.name_key, ab.c.address]
            if plan.kind in ("city", "address") and not self.db.is_postgresql:
                # Sorted, not read in order from the name index.
                order = [c.concat("") for c in order]
            inner = (
                select(ab.c.name_key, ab.c.address)
                .where(
                    ab.c.generation == _current_generation_subquery(),
                    *self._entry_conditions(query, column),
                )
                .order_by(*order)
                .limit(limit)
                .subquery("page")
            )
        # Ordered by the page's columns: with the order of address_book's, SQLite would rather
        # walk its name index than look the page's few addresses up.
        return (
            select(*fields)
            .select_from(inner)
            .join(
                ab,
                and_(
                    ab.c.generation == _current_generation_subquery(),
                    ab.c.address == inner.c.address,
                ),
            )
            .order_by(inner.c.name_key, inner.c.address)
        )

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
