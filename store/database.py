"""Engines for the two supported databases, and schema migration.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``: a commit that returned is
on disk. It has one writer at a time, so the store keeps a single-connection write engine whose
transactions start with ``BEGIN IMMEDIATE`` (no deadlock on lock upgrade, fair queueing between
processes through ``busy_timeout``) and a separate read engine whose transactions never block writers.
PostgreSQL uses one pooled engine for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, FrozenResult, Result, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import Executable

from store.errors import InvalidInput

SQLITE_BUSY_TIMEOUT_MS = 30_000
HOP_THREADS = 4
"""Threads (and connections) of the SQLite read path: reads run in parallel in WAL mode."""


def _compact_json(value: Any) -> str:
    # Metadata JSON is stored for every message: no padding spaces, UTF-8 kept as is.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def normalise_url(url: str) -> str:
    """Accept the URLs an operator writes and pick our async drivers.

    ``sqlite:///var/colombe.db`` -> ``sqlite+aiosqlite:///var/colombe.db``;
    ``postgresql://...`` / ``postgres://...`` -> ``postgresql+asyncpg://...``.
    """
    try:
        parsed = make_url(url)
    except Exception:
        # The text may hold a password: never echo it.
        raise InvalidInput(
            "not a database URL (expected sqlite:///... or postgresql://...)"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise InvalidInput(
        f"unsupported database {backend!r} in {shown}: use sqlite:/// or postgresql://"
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, emit BEGIN (see _sqlite_begin_*).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "PRAGMA journal_mode=WAL",
        # FULL: a committed transaction survives power loss, not only a process crash.
        "PRAGMA synchronous=FULL",
        f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        "PRAGMA foreign_keys=ON",
    ):
        cursor.execute(pragma)
    cursor.close()


def _sqlite_begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin_deferred(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


class HopConnection:
    """Statements from the event loop, each run whole in a worker thread (one thread hop,
    rows buffered) on a pooled synchronous SQLite connection taken and returned within that
    hop. A connection is never held across an await: with as many threads as connections,
    holding one would let waiting threads starve the holders (a deadlock). So statements of
    one block do not share a snapshot; the store's multi-statement reads are written to be
    correct without one."""

    def __init__(self, engine: Engine, executor: ThreadPoolExecutor) -> None:
        self._engine = engine
        self._executor = executor

    async def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]:
        def run() -> FrozenResult[Any]:
            with self._engine.connect() as conn:
                return conn.execute(statement, parameters).freeze()

        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(self._executor, run))()


class HopEngine:
    """SQLite reads in one thread hop per statement.

    aiosqlite crosses threads for every step of a statement (begin, execute, fetch, close,
    rollback): 1.9 ms for a one-row SELECT on the project's machines, against 0.27 ms for the
    same statement run whole in a thread. The IMAP read path (FETCH, SEARCH, polls) goes
    through this engine.
    """

    def __init__(self, engine: Engine, threads: int) -> None:
        self.engine = engine
        # Threads of its own: in the default executor, reads would queue behind password
        # hashes (0.1 s each) and every session would stall while many users log in.
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="sqlite-read")

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[HopConnection]:
        yield HopConnection(self.engine, self.executor)

    def dispose(self) -> None:
        self.executor.shutdown(wait=True)
        self.engine.dispose()


@dataclass(slots=True)
class Database:
    """The engines of one store. ``writer`` for transactions that write, ``reader`` for the rest."""

    url: str = field(repr=False)  # may hold a password
    dialect: str
    writer: AsyncEngine
    reader: AsyncEngine
    # The hot read path (see HopEngine); the async reader itself with PostgreSQL.
    fast_reader: AsyncEngine | HopEngine

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @classmethod
    def connect(cls, url: str, *, pool_size: int = 10) -> Database:
        url = normalise_url(url)
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            writer = create_async_engine(
                url,
                pool_size=1,
                max_overflow=0,
                pool_timeout=60,
                json_serializer=_compact_json,
                hide_parameters=True,
            )
            reader = create_async_engine(url, pool_size=4, max_overflow=4, hide_parameters=True)
            event.listen(writer.sync_engine, "connect", _sqlite_on_connect)
            event.listen(writer.sync_engine, "begin", _sqlite_begin_immediate)
            event.listen(reader.sync_engine, "connect", _sqlite_on_connect)
            event.listen(reader.sync_engine, "begin", _sqlite_begin_deferred)
            hop = create_engine(
                parsed.set(drivername="sqlite").render_as_string(hide_password=False),
                pool_size=HOP_THREADS,
                max_overflow=0,
                hide_parameters=True,
            )
            event.listen(hop, "connect", _sqlite_on_connect)
            event.listen(hop, "begin", _sqlite_begin_deferred)
            return cls(
                url=url,
                dialect="sqlite",
                writer=writer,
                reader=reader,
                fast_reader=HopEngine(hop, HOP_THREADS),
            )
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            json_serializer=_compact_json,
            # SQL errors must not carry bound values (subjects, addresses, headers) into logs.
            hide_parameters=True,
            # An acknowledged delivery must not depend on the server's default durability.
            connect_args={"server_settings": {"synchronous_commit": "on"}},
        )
        return cls(url=url, dialect="postgresql", writer=engine, reader=engine, fast_reader=engine)

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()
        if isinstance(self.fast_reader, HopEngine):
            self.fast_reader.dispose()


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


async def migrate(db: Database) -> None:
    """Bring the schema to the newest revision (idempotent)."""

    def upgrade(connection: Connection) -> None:
        command.upgrade(_alembic_config(connection), "head")

    async with db.writer.begin() as conn:
        if db.is_postgresql:
            # Several front ends starting together: one migrates, the others wait, then find
            # the schema at head.
            await conn.execute(text("SELECT pg_advisory_xact_lock(7460616)"))
        await conn.run_sync(upgrade)


async def schema_revision(db: Database) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with db.reader.connect() as conn:
        return await conn.run_sync(current)
