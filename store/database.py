"""Engines for the two supported databases, and schema migration.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``: a commit that returned is
on disk. It has one writer at a time, so the store keeps one write connection, used by a thread of
its own (:class:`HopWriteEngine`), whose transactions start with ``BEGIN IMMEDIATE`` (no deadlock on
lock upgrade, fair queueing between processes through ``busy_timeout``), and read connections whose
transactions never block writers: the hot reads run each statement whole in a thread
(:class:`HopEngine`), the others through aiosqlite. PostgreSQL uses one pooled asyncpg engine for
everything. Either way callers see the same API: ``writer.begin()`` blocks of statements, or
``Database.transaction(fn)`` for a synchronous function run whole in one transaction; on SQLite
the functions asked for while the writer is busy share one commit (group commit: one fsync).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine, Row, make_url
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import Executable

from store.errors import InvalidInput

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
WRITER_WAIT_S = 60.0
"""How long a transaction waits for SQLite's one writer before giving up."""
HOP_THREADS = 4
"""Threads (and connections) of the SQLite read path: reads run in parallel in WAL mode."""


def compact_json(value: Any) -> str:
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


@contextlib.contextmanager
def driver_errors(statement: str) -> Iterator[None]:
    """The sqlite3 module's exceptions as SQLAlchemy's (what the store's callers catch), for
    statements run on the driver's own connection."""
    try:
        yield
    except sqlite3.Error as exc:
        raise DBAPIError.instance(
            statement, None, exc, sqlite3.Error, hide_parameters=True
        ) from exc


def _sqlite_begin_immediate(conn: Connection) -> None:
    with driver_errors("BEGIN IMMEDIATE"):
        conn.connection.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]


def _sqlite_begin_deferred(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


class HopConnection:
    """Statements from the event loop, each run whole in a worker thread (one thread hop,
    rows buffered) on a pooled synchronous SQLite connection taken and returned within that
    hop. A connection is never held across an await: with as many threads as connections,
    holding one would let waiting threads starve the holders (a deadlock). So statements of
    one block do not share a snapshot; the store's multi-statement reads are written to be
    correct without one."""

    def __init__(self, engine: HopEngine) -> None:
        self._engine = engine

    async def execute(self, statement: Executable, parameters: Any = None) -> Rows:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._engine.executor, self._engine.run, statement, parameters
        )


class Rows:
    """The buffered rows of one statement, read with the few methods of
    :class:`sqlalchemy.engine.Result` the store uses. Rows fetched in the worker thread are
    handed over as they are: freezing a result and thawing it on the loop cost more than the
    query for a folder of 1,000 messages."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: Sequence[Row[Any]], rowcount: int = -1) -> None:
        self._rows = rows
        self.rowcount = rowcount

    @classmethod
    def of(cls, result: CursorResult[Any]) -> Rows:
        rows = result.all() if result.returns_rows else []
        return cls(rows, result.rowcount)

    def __iter__(self) -> Iterator[Row[Any]]:
        return iter(self._rows)

    def all(self) -> Sequence[Row[Any]]:
        return self._rows

    def first(self) -> Row[Any] | None:
        return self._rows[0] if self._rows else None

    def one(self) -> Row[Any]:
        if len(self._rows) != 1:
            raise NoResultFound() if not self._rows else MultipleResultsFound()
        return self._rows[0]

    def one_or_none(self) -> Row[Any] | None:
        if len(self._rows) > 1:
            raise MultipleResultsFound()
        return self.first()

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]

    def scalars(self) -> list[Any]:
        return [r[0] for r in self._rows]


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
        # One connection per thread, kept: taking one from the pool and giving it back cost
        # twice the statement. Statements run in autocommit (no BEGIN), each on the newest
        # snapshot, so a kept connection never holds an old one.
        self._local = threading.local()
        self._held: list[Connection] = []
        self._held_lock = threading.Lock()

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect()
            self._local.conn = conn
            with self._held_lock:
                self._held.append(conn)
        return conn

    def run(self, statement: Executable, parameters: Any = None) -> Rows:
        """One statement, in the calling worker thread, on that thread's connection."""
        conn = self._connection()
        try:
            return Rows.of(conn.execute(statement, parameters))
        finally:
            conn.rollback()  # ends SQLAlchemy's own transaction; SQLite had none open

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[HopConnection]:
        yield HopConnection(self)

    def dispose(self) -> None:
        self.executor.shutdown(wait=True)
        with self._held_lock:
            held, self._held = self._held, []
        for conn in held:
            with contextlib.suppress(Exception):
                conn.close()
        self.engine.dispose()


class HopTransaction:
    """One transaction of :class:`HopWriteEngine`: each statement, or each whole function given
    to :meth:`run_sync`, runs in the writer thread on the one write connection."""

    def __init__(self, writer: HopWriteEngine) -> None:
        self._writer = writer
        self._executor = writer.executor
        self._conn: Connection | None = None

    def _open(self) -> None:
        conn = self._writer.connection()
        try:
            conn.begin()  # BEGIN IMMEDIATE (the engine's "begin" listener)
        except BaseException:
            self._writer.discard(conn)
            raise
        self._conn = conn

    def _close(self, commit: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if commit:
                conn.commit()
            else:
                conn.rollback()
        except BaseException:
            self._writer.discard(conn)  # in an unknown state: the next transaction opens anew
            raise

    @property
    def dialect(self) -> Dialect:
        return self._writer.engine.dialect

    def _connection(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("the transaction is over")
        return self._conn

    async def _hop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def execute(self, statement: Executable, parameters: Any = None) -> Rows:
        def run() -> Rows:
            return Rows.of(self._connection().execute(statement, parameters))

        return await self._hop(run)

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Rows:
        def run() -> Rows:
            return Rows.of(self._connection().exec_driver_sql(statement, parameters))

        return await self._hop(run)

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(connection, *args, **kwargs)`` whole in the writer thread: one hop for a
        transaction of many statements."""
        return await self._hop(lambda: fn(self._connection(), *args, **kwargs))


@dataclass(slots=True)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    queued_at: float  # the loop's clock


class HopWriteEngine:
    """SQLite's one writer: a synchronous connection used by one thread of its own.

    A transaction (``begin()``) holds the connection from BEGIN IMMEDIATE to COMMIT; its
    statements hop to the writer thread one at a time, or all at once with ``run_sync``.
    Through aiosqlite each statement crossed threads four or five times (begin, execute,
    fetch, close, commit); a flag change or a batch of deliveries that runs whole in one hop
    holds the write lock for the fsync and little else. The single thread runs jobs in the
    order they were given, so the rollback of an abandoned transaction always runs before
    the next one begins. ``transaction(fn)`` calls made while a transaction runs are
    committed together next (:meth:`transaction`).
    """

    def __init__(self, engine: Engine, *, lock_timeout: float) -> None:
        self.engine = engine
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-write")
        self._lock = asyncio.Lock()
        self.lock_timeout = lock_timeout
        # The write connection, kept between transactions; used by the writer thread only.
        self._conn: Connection | None = None
        # transaction() calls waiting for the next group commit, and the task running them.
        self._queued: list[_Job] = []
        self._committer: asyncio.Task[None] | None = None

    def connection(self) -> Connection:
        """The write connection (in the writer thread), opened again after a failure."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.engine.connect()
        return self._conn

    def discard(self, conn: Connection) -> None:
        if self._conn is conn:
            self._conn = None
        with contextlib.suppress(Exception):
            conn.close()

    async def _acquire(self) -> None:
        try:
            async with asyncio.timeout(self.lock_timeout):
                await self._lock.acquire()
        except TimeoutError:
            raise SQLAlchemyTimeout(
                f"the SQLite writer stayed busy for {self.lock_timeout:g} s"
            ) from None

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[HopTransaction]:
        """A write transaction whose statements hop to the writer thread one by one."""
        await self._acquire()
        try:
            tx = HopTransaction(self)
            opened = asyncio.get_running_loop().run_in_executor(self.executor, tx._open)
            try:
                await opened
                yield tx
                await tx._hop(tx._close, True)
            except BaseException:
                # Queued behind whatever this transaction left running, so never skipped,
                # even when the commit's own hop was cancelled before the thread took it
                # (after a commit it finds nothing to roll back).
                self.executor.submit(tx._close, False)
                raise
        finally:
            self._lock.release()

    async def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` whole in a transaction, BEGIN to COMMIT in a single hop to
        the writer thread (a flag change: one thread round trip instead of three).

        Calls made while the writer is busy share the next transaction, each in a savepoint of
        its own (group commit): ten sessions changing flags at once pay one fsync, and one of
        them that raises leaves the others' writes in place. Each gets its result once all
        are durable, in the order they called.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queued.append(_Job(fn, args, future, loop.time()))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued(), name="sqlite-commit")
        return await future

    async def _commit_queued(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Job] = []
        try:
            while self._queued:
                try:
                    await self._acquire()
                except SQLAlchemyTimeout as exc:
                    # Only those that waited their whole lock_timeout give up; the ones
                    # queued meanwhile wait their own (a new round: at most twice as long).
                    now = loop.time()
                    for job in self._queued:
                        if now - job.queued_at >= self.lock_timeout and not job.future.done():
                            job.future.set_exception(exc)
                    self._queued = [job for job in self._queued if not job.future.done()]
                    continue
                try:
                    batch = [job for job in self._queued if not job.future.cancelled()]
                    self._queued = []
                    if not batch:
                        continue
                    try:
                        outcomes = await asyncio.shield(
                            loop.run_in_executor(self.executor, self._run_batch, batch)
                        )
                    except Exception as exc:
                        for job in batch:
                            if not job.future.done():
                                job.future.set_exception(exc)
                        continue
                finally:
                    self._lock.release()
                for job, (ok, value) in zip(batch, outcomes, strict=True):
                    if not job.future.done():
                        if ok:
                            job.future.set_result(value)
                        else:
                            job.future.set_exception(value)
                batch = []
        except BaseException as exc:
            # The loop is closing (or a bug): nobody may wait forever.
            for job in batch + self._queued:
                if job.future.done():
                    continue
                if isinstance(exc, Exception):
                    job.future.set_exception(exc)
                else:
                    job.future.cancel()
            self._queued = []
            if not isinstance(exc, Exception):
                raise
        finally:
            self._committer = None

    def _run_batch(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        """The writer thread's side of :meth:`transaction`: (True, result) or (False,
        exception) per job. A job alone needs no savepoint: its exception undoes it all."""
        tx = HopTransaction(self)
        tx._open()
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn = tx._connection()
            if len(batch) == 1:
                outcomes.append((True, batch[0].fn(conn, *batch[0].args)))
            else:
                # The driver's own SAVEPOINTs: SQLAlchemy's cost more than a flag change.
                raw = conn.connection.driver_connection
                assert raw is not None
                for job in batch:
                    with driver_errors("SAVEPOINT job"):
                        raw.execute("SAVEPOINT job")
                    try:
                        value = job.fn(conn, *job.args)
                    except Exception as exc:
                        if not raw.in_transaction:
                            raise  # SQLite undid the whole transaction (I/O error, disk full)
                        with driver_errors("ROLLBACK TO job"):
                            raw.execute("ROLLBACK TO job")
                            raw.execute("RELEASE job")
                        outcomes.append((False, exc))
                    else:
                        with driver_errors("RELEASE job"):
                            raw.execute("RELEASE job")
                        outcomes.append((True, value))
        except BaseException:
            tx._close(False)
            raise
        tx._close(True)
        return outcomes

    def dispose(self) -> None:
        self.executor.shutdown(wait=True)
        if self._conn is not None:
            self.discard(self._conn)
        self.engine.dispose()


WriteConnection = AsyncConnection | HopTransaction
"""A connection in a write transaction: PostgreSQL's async one, or SQLite's hop transaction."""


@dataclass(slots=True)
class Database:
    """The engines of one store. ``writer`` for transactions that write, ``reader`` for the rest."""

    url: str = field(repr=False)  # may hold a password
    dialect: str
    # SQLite: HopWriteEngine, one connection in a thread of its own.
    writer: AsyncEngine | HopWriteEngine
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
            sync_url = parsed.set(drivername="sqlite").render_as_string(hide_password=False)
            write_engine = create_engine(
                sync_url,
                pool_size=1,
                max_overflow=0,
                json_serializer=compact_json,
                hide_parameters=True,
            )
            event.listen(write_engine, "connect", _sqlite_on_connect)
            event.listen(write_engine, "begin", _sqlite_begin_immediate)
            writer = HopWriteEngine(write_engine, lock_timeout=WRITER_WAIT_S)
            reader = create_async_engine(url, pool_size=4, max_overflow=4, hide_parameters=True)
            event.listen(reader.sync_engine, "connect", _sqlite_on_connect)
            event.listen(reader.sync_engine, "begin", _sqlite_begin_deferred)
            hop = create_engine(
                sync_url,
                pool_size=HOP_THREADS,
                max_overflow=0,
                hide_parameters=True,
            )
            event.listen(hop, "connect", _sqlite_on_connect)
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
            json_serializer=compact_json,
            # SQL errors must not carry bound values (subjects, addresses, headers) into logs.
            hide_parameters=True,
            # An acknowledged delivery must not depend on the server's default durability.
            connect_args={"server_settings": {"synchronous_commit": "on"}},
        )
        return cls(url=url, dialect="postgresql", writer=engine, reader=engine, fast_reader=engine)

    async def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` whole in one write transaction; on SQLite in a single
        thread hop. ``fn`` is synchronous: it runs in the writer thread (SQLite) or through
        SQLAlchemy's greenlet bridge (PostgreSQL)."""
        if isinstance(self.writer, HopWriteEngine):
            return await self.writer.transaction(fn, *args)
        async with self.writer.begin() as conn:
            return await conn.run_sync(fn, *args)

    async def dispose(self) -> None:
        if isinstance(self.writer, HopWriteEngine):
            await asyncio.to_thread(self.writer.dispose)
        else:
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
