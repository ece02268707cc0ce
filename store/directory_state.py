"""Store methods for the directory package: named documents, singleton leases, and the publication
state of each BAL in the national directory.

A mixin of :class:`store.Store` (one storage area per module, as Synapse splits its data stores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row

from store.database import Database, WriteConnection
from store.errors import DomainNotFound, InvalidInput
from store.model import Bal, BalStatus, BalType, Document, Placement
from store.schema import bals, directory_publication, documents, domains, leases
from store.text import departement_of, search_key

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PublicationState:
    """Where a BAL stands with the national directory."""

    address: str
    bal_id: int
    revision: int
    wanted_revision: int
    published_revision: int
    pending: bool
    # pending | published | unpublished | error
    state: str
    dn: str | None
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class PublicationOutcome:
    """The directory now holds ``revision`` of a BAL: ``published`` at ``dn``, or ``unpublished``
    (no entry: liste rouge, suspended, closed)."""

    bal_id: int
    revision: int
    state: str
    dn: str | None


@dataclass(frozen=True, slots=True)
class PublicationFailure:
    """Publishing ``revision`` of a BAL failed with ``error``: retry after ``retry_in``; None: the
    directory as a whole was unavailable (an outage), which the publisher backs off from globally:
    the error is noted but the BAL's own attempts and retry time are left as they are, so that
    everything pending goes at once when the directory is back."""

    bal_id: int
    revision: int
    error: str
    retry_in: timedelta | None


MAX_ERROR_CHARS = 2000
# Rows per statement of the batch methods (well under SQLite's and asyncpg's parameter limits).
_BATCH = 500


async def _database_now(conn: WriteConnection) -> datetime:
    """The database's clock (aware, UTC): what leases compare against, so that the hosts of a
    cluster, whose clocks may differ, agree on when a lease expires. Read once and then bound like
    any other timestamp, so that comparisons go through the same column type on both engines
    (SQLite keeps naive UTC text, PostgreSQL timestamptz)."""
    if conn.dialect.name == "sqlite":
        # Same host as the process, but with the same text form as the columns' (CURRENT_TIMESTAMP
        # has no fraction of a second).
        text = (await conn.execute(select(func.strftime("%Y-%m-%d %H:%M:%f", "now")))).scalar_one()
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    value = (await conn.execute(select(func.now()))).scalar_one()
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _upsert(conn: WriteConnection, table: Any) -> Any:
    """INSERT ... ON CONFLICT for the connection's engine (both have the same API)."""
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    return postgresql.insert(table)


def _publication(row: Row[Any]) -> PublicationState:
    return PublicationState(
        address=row.address,
        bal_id=row.bal_id,
        revision=row.revision,
        wanted_revision=row.wanted_revision,
        published_revision=row.published_revision,
        pending=row.pending,
        state=row.state,
        dn=row.dn,
        attempts=row.attempts,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        last_attempt_at=row.last_attempt_at,
        published_at=row.published_at,
    )


_PUBLICATION_COLUMNS = (bals.c.address, bals.c.revision, *directory_publication.c)


class DirectoryStateStore:
    """Mixin: needs ``self.db`` and ``self._bal_from_row`` (provided by :class:`store.Store`)."""

    db: Database

    def _bal_from_row(self, row: Row[Any]) -> Bal:
        raise NotImplementedError  # provided by Store

    # -- documents --------------------------------------------------------------------------------

    async def save_document(
        self, name: str, content: bytes | None, meta: dict[str, Any]
    ) -> Document:
        """Create or replace the document ``name``. ``content=None`` keeps the stored content and
        replaces only the metadata (e.g. "checked at" after an HTTP 304)."""
        if content is not None and len(content) > MAX_DOCUMENT_BYTES:
            raise InvalidInput(f"document {name!r} larger than {MAX_DOCUMENT_BYTES} octets")
        now = _now()
        async with self.db.writer.begin() as conn:
            # One statement: two processes saving the same new document at once both succeed.
            stmt = _upsert(conn, documents).values(
                name=name, content=content, meta=meta, updated_at=now
            )
            replace: dict[str, Any] = {"meta": stmt.excluded.meta, "updated_at": now}
            if content is not None:
                replace["content"] = stmt.excluded.content
            await conn.execute(
                stmt.on_conflict_do_update(index_elements=[documents.c.name], set_=replace)
            )
            row = (await conn.execute(select(documents).where(documents.c.name == name))).one()
        return Document(row.name, row.content, row.meta, row.updated_at)

    async def load_document(self, name: str, *, with_content: bool = True) -> Document | None:
        columns = [documents.c.name, documents.c.meta, documents.c.updated_at]
        if with_content:
            columns.append(documents.c.content)
        async with self.db.reader.connect() as conn:
            row = (await conn.execute(select(*columns).where(documents.c.name == name))).first()
        if row is None:
            return None
        return Document(row.name, row.content if with_content else None, row.meta, row.updated_at)

    # -- leases -----------------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl: timedelta) -> bool:
        """Take or renew the singleton lease ``name`` for ``holder`` until now + ``ttl``.

        True if ``holder`` holds it now; False if another holder's lease has not expired. One
        process of a cluster runs the directory publisher, whichever holds the lease.
        """
        async with self.db.writer.begin() as conn:
            # The database's clock, not this host's: see _database_now.
            now = await _database_now(conn)
            # One statement (no update-then-insert): of two processes creating the lease at once,
            # one gets it and the other False, never an IntegrityError.
            stmt = _upsert(conn, leases).values(name=name, holder=holder, expires_at=now + ttl)
            taken = await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[leases.c.name],
                    set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
                    where=or_(leases.c.holder == holder, leases.c.expires_at < now),
                )
            )
            return bool(taken.rowcount)

    async def release_lease(self, name: str, holder: str) -> None:
        async with self.db.writer.begin() as conn:
            await conn.execute(
                delete(leases).where(leases.c.name == name, leases.c.holder == holder)
            )

    # -- publication ------------------------------------------------------------------------------

    async def due_publications(self, *, limit: int = 100) -> list[tuple[Bal, PublicationState]]:
        """BALs with a revision not yet in the national directory whose retry time has come."""
        query = (
            select(bals, *directory_publication.c)
            .join(directory_publication, directory_publication.c.bal_id == bals.c.id)
            .where(
                directory_publication.c.pending, directory_publication.c.next_attempt_at <= _now()
            )
            .order_by(directory_publication.c.next_attempt_at, bals.c.id)
            .limit(limit)
        )
        async with self.db.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(self._bal_from_row(r), _publication(r)) for r in rows]

    async def next_publication_due(self) -> datetime | None:
        """When the earliest pending publication is due (None: nothing pending)."""
        query = (
            select(directory_publication.c.next_attempt_at)
            .where(directory_publication.c.pending)
            .order_by(directory_publication.c.next_attempt_at)
            .limit(1)
        )
        async with self.db.reader.connect() as conn:
            return (await conn.execute(query)).scalar()

    async def record_publication(
        self, bal_id: int, revision: int, *, state: str, dn: str | None
    ) -> bool:
        """The directory now holds ``revision`` of the BAL (``state`` published or unpublished).

        Clears ``pending`` only if no newer revision was queued meanwhile; returns whether it did.
        """
        if state not in ("published", "unpublished"):
            raise InvalidInput(f"unknown publication state {state!r}")
        now = _now()
        async with self.db.writer.begin() as conn:
            await conn.execute(
                update(directory_publication)
                .where(
                    directory_publication.c.bal_id == bal_id,
                    # Never backwards: an older outcome recorded late does not undo a newer one.
                    directory_publication.c.published_revision <= revision,
                )
                .values(
                    published_revision=revision,
                    state=state,
                    dn=dn,
                    attempts=0,
                    last_error=None,
                    last_attempt_at=now,
                    published_at=now,
                )
            )
            done = await conn.execute(
                update(directory_publication)
                .where(
                    directory_publication.c.bal_id == bal_id,
                    directory_publication.c.wanted_revision <= revision,
                )
                .values(pending=False)
            )
        return bool(done.rowcount)

    async def record_publications(self, outcomes: Sequence[PublicationOutcome]) -> None:
        """:meth:`record_publication` for many BALs in one transaction per few hundred (what a
        full reconciliation of a large directory needs)."""
        for outcome in outcomes:
            if outcome.state not in ("published", "unpublished"):
                raise InvalidInput(f"unknown publication state {outcome.state!r}")
        now = _now()
        record = (
            update(directory_publication)
            .where(
                directory_publication.c.bal_id == bindparam("b_id"),
                directory_publication.c.published_revision <= bindparam("b_revision"),
            )
            .values(
                published_revision=bindparam("b_revision"),
                state=bindparam("b_state"),
                dn=bindparam("b_dn"),
                attempts=0,
                last_error=None,
                last_attempt_at=now,
                published_at=now,
            )
        )
        # Only if no newer revision was queued meanwhile: that one still has to be published.
        clear = (
            update(directory_publication)
            .where(
                directory_publication.c.bal_id == bindparam("b_id"),
                directory_publication.c.wanted_revision <= bindparam("b_revision"),
            )
            .values(pending=False)
        )
        for start in range(0, len(outcomes), _BATCH):
            params = [
                {"b_id": o.bal_id, "b_revision": o.revision, "b_state": o.state, "b_dn": o.dn}
                for o in outcomes[start : start + _BATCH]
            ]
            async with self.db.writer.begin() as conn:
                await conn.execute(record, params)
                await conn.execute(
                    clear, [{"b_id": p["b_id"], "b_revision": p["b_revision"]} for p in params]
                )

    async def record_publication_failure(
        self, bal_id: int, revision: int, error: str, *, retry_in: timedelta | None
    ) -> None:
        """Publishing ``revision`` failed: keep it pending, note the error, try again after
        ``retry_in`` (None: the directory is unavailable; see :class:`PublicationFailure`)."""
        await self.record_publication_failures(
            [PublicationFailure(bal_id, revision, error, retry_in)]
        )

    async def record_publication_failures(self, failures: Sequence[PublicationFailure]) -> None:
        """Publishing these BALs failed: state ``error``, one more attempt, retried after each one's
        ``retry_in``. They are (re)marked pending: a failure found by the full reconciliation on a
        BAL published long ago must be retried by the incremental loop too.

        Only where the failed revision is still the one wanted: a failure of an older revision
        (the BAL changed meanwhile) notes its error but does not delay the newer change. An outage
        (``retry_in`` None) notes the error without counting an attempt or moving the retry time.
        """
        now = _now()
        table = directory_publication
        current = (
            table.c.bal_id == bindparam("b_id"),
            table.c.wanted_revision == bindparam("b_revision"),
        )
        backoff = (
            update(table)
            .where(*current)
            .values(
                state="error",
                pending=True,
                attempts=table.c.attempts + 1,
                last_error=bindparam("b_error"),
                last_attempt_at=now,
                next_attempt_at=bindparam("b_next"),
            )
        )
        outage = (
            update(table)
            .where(*current)
            .values(
                state="error", pending=True, last_error=bindparam("b_error"), last_attempt_at=now
            )
        )
        stale = (
            update(table)
            .where(
                table.c.bal_id == bindparam("b_id"),
                table.c.wanted_revision != bindparam("b_revision"),
            )
            .values(pending=True, last_error=bindparam("b_error"), last_attempt_at=now)
        )
        for start in range(0, len(failures), _BATCH):
            chunk = failures[start : start + _BATCH]
            params = [
                {"b_id": f.bal_id, "b_revision": f.revision, "b_error": f.error[:MAX_ERROR_CHARS]}
                for f in chunk
            ]
            timed = [
                {**p, "b_next": now + f.retry_in}
                for p, f in zip(params, chunk, strict=True)
                if f.retry_in is not None
            ]
            untimed = [p for p, f in zip(params, chunk, strict=True) if f.retry_in is None]
            async with self.db.writer.begin() as conn:
                if timed:
                    await conn.execute(backoff, timed)
                if untimed:
                    await conn.execute(outage, untimed)
                await conn.execute(stale, params)

    async def publication_page(
        self, *, after_id: int = 0, limit: int = 1000
    ) -> list[tuple[Bal, PublicationState]]:
        """Every BAL (any status) with its publication state, by id, after ``after_id``: the full
        reconciliation walks the store with it, one page at a time (keyset paging: no OFFSET)."""
        query = (
            select(bals, *directory_publication.c)
            .join(directory_publication, directory_publication.c.bal_id == bals.c.id)
            .where(bals.c.id > after_id)
            .order_by(bals.c.id)
            .limit(limit)
        )
        async with self.db.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(self._bal_from_row(r), _publication(r)) for r in rows]

    async def publication_states(
        self, *, addresses: Sequence[str] | None = None, only_problems: bool = False
    ) -> list[PublicationState]:
        query = select(*_PUBLICATION_COLUMNS).join(
            directory_publication, directory_publication.c.bal_id == bals.c.id
        )
        if addresses is not None:
            query = query.where(bals.c.address.in_([a.lower() for a in addresses]))
        if only_problems:
            query = query.where(
                or_(directory_publication.c.state == "error", directory_publication.c.pending)
            )
        async with self.db.reader.connect() as conn:
            rows = (await conn.execute(query.order_by(bals.c.address))).all()
        return [_publication(r) for r in rows]

    async def publication_counts(self) -> dict[str, int]:
        """Number of BALs per publication state, plus ``pending``."""
        async with self.db.reader.connect() as conn:
            by_state = (
                await conn.execute(
                    select(directory_publication.c.state, func.count()).group_by(
                        directory_publication.c.state
                    )
                )
            ).all()
            pending = (
                await conn.execute(select(func.count()).where(directory_publication.c.pending))
            ).scalar_one()
        counts = {state: n for state, n in by_state}
        counts["pending_total"] = pending
        return counts

    # -- benchmarks -------------------------------------------------------------------------------

    async def insert_bals_for_bench(self, domain: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert BALs in bulk, queued for publication: ONLY for benchmarks (bench/ldap_bench.py).

        ``rows`` hold :meth:`store.Store.create_bal` keywords (``address``, ``bal_type``,
        ``display_name``, ``national_id``, ``profession``, ``description``, ``service``, ``rank``,
        ``liste_rouge``). Unlike ``create_bal`` these BALs get no folders and no password: they
        exist for the directory only (``create_bal`` does ~50 BALs/s on SQLite, 100,000 would take
        half an hour). Returns the number inserted.
        """
        now = _now()
        async with self.db.writer.begin() as conn:
            domain_id = (
                await conn.execute(select(domains.c.id).where(domains.c.name == domain))
            ).scalar()
        if domain_id is None:
            raise DomainNotFound(domain)
        for start in range(0, len(rows), _BATCH):
            chunk = rows[start : start + _BATCH]
            values = [
                {
                    "address": r["address"].lower(),
                    "domain_id": domain_id,
                    "type": BalType(r.get("bal_type", BalType.PER)).value,
                    "national_id": r.get("national_id"),
                    "display_name": r.get("display_name", ""),
                    "profession": r.get("profession"),
                    "description": r.get("description"),
                    "liste_rouge": bool(r.get("liste_rouge", False)),
                    "status": BalStatus.ACTIVE.value,
                    "placement": Placement.V2.value,
                    "service": r.get("service"),
                    "rank": int(r.get("rank", 1)),
                    "city": r.get("city"),
                    "postal_code": r.get("postal_code"),
                    "departement": departement_of(r.get("postal_code")),
                    "name_key": search_key(
                        r.get("display_name", ""), r.get("description"), r.get("service")
                    ),
                    "revision": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for r in chunk
            ]
            async with self.db.writer.begin() as conn:
                await conn.execute(insert(bals), values)
                await conn.execute(
                    insert(directory_publication).from_select(
                        [
                            "bal_id",
                            "wanted_revision",
                            "published_revision",
                            "pending",
                            "state",
                            "next_attempt_at",
                        ],
                        select(
                            bals.c.id,
                            literal(1),
                            literal(0),
                            literal(True),
                            literal("pending"),
                            literal(now, directory_publication.c.next_attempt_at.type),
                        ).where(bals.c.address.in_([v["address"] for v in values])),
                    )
                )
        return len(rows)
