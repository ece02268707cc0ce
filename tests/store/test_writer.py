"""Write transactions: all or nothing whatever interrupts them, and the writer is never left
held (SQLite runs them on one connection in a thread of its own: HopWriteEngine)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout

from store import Store
from store.database import HopWriteEngine
from store.schema import domains


async def _domain_names(store: Store) -> list[str]:
    async with store.db.reader.connect() as conn:
        rows = await conn.execute(select(domains.c.name).order_by(domains.c.name))
        return [r.name for r in rows]


def _add(name: str) -> dict[str, object]:
    return {"name": name, "created_at": datetime.now(UTC)}


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[tuple[Store, HopWriteEngine]]:
    """An embedded store and its SQLite writer (the tests that hold or block its thread)."""
    store = await Store.open(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "blobs")
    try:
        writer = store.db.writer
        assert isinstance(writer, HopWriteEngine)
        yield store, writer
    finally:
        await store.close()


async def test_a_transaction_cancelled_midway_is_rolled_back_and_frees_the_writer(
    store: Store,
) -> None:
    holding = asyncio.Event()

    async def abandoned() -> None:
        async with store.db.writer.begin() as conn:
            await conn.execute(insert(domains), _add("abandoned.mssante.fr"))
            holding.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(abandoned())
    await holding.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(10):
        async with store.db.writer.begin() as conn:
            await conn.execute(insert(domains), _add("next.mssante.fr"))
    assert await _domain_names(store) == ["next.mssante.fr"]


async def test_an_error_in_a_transaction_undoes_every_statement_of_it(store: Store) -> None:
    async def fail_midway() -> None:
        async with store.db.writer.begin() as conn:
            await conn.execute(insert(domains), _add("first.mssante.fr"))
            await conn.execute(insert(domains), _add("second.mssante.fr"))
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        await fail_midway()
    assert await _domain_names(store) == []


async def test_a_failing_statement_in_a_one_hop_transaction_undoes_the_others(
    store: Store,
) -> None:
    def two_inserts(conn: Connection) -> None:
        conn.execute(insert(domains), _add("kept-only-if-both.mssante.fr"))
        conn.execute(insert(domains), _add("kept-only-if-both.mssante.fr"))  # unique: fails

    async def in_one_hop() -> None:
        async with store.db.writer.begin() as conn:
            await conn.run_sync(two_inserts)

    with pytest.raises(Exception, match=r"(?i)unique"):
        await in_one_hop()
    assert await _domain_names(store) == []


async def test_concurrent_transactions_each_see_their_own_statements(store: Store) -> None:
    async def add_two(i: int) -> list[str]:
        mine = [f"a{i}.mssante.fr", f"b{i}.mssante.fr"]
        async with store.db.writer.begin() as conn:
            await conn.execute(insert(domains), _add(mine[0]))
            await asyncio.sleep(0)
            await conn.execute(insert(domains), _add(mine[1]))
            seen = await conn.execute(
                select(domains.c.name).where(domains.c.name.in_(mine)).order_by(domains.c.name)
            )
            return [r.name for r in seen]

    seen = await asyncio.gather(*(add_two(i) for i in range(30)))
    assert seen == [[f"a{i}.mssante.fr", f"b{i}.mssante.fr"] for i in range(30)]
    assert len(await _domain_names(store)) == 60


async def test_sqlite_writer_busy_too_long_gives_a_timeout_not_a_hang(
    sqlite_store: tuple[Store, HopWriteEngine],
) -> None:
    store, writer = sqlite_store
    writer.lock_timeout = 0.2
    release = asyncio.Event()
    held = asyncio.Event()

    async def hold() -> None:
        async with writer.begin():
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    with pytest.raises(SQLAlchemyTimeout, match="busy"):
        async with writer.begin():
            pass
    release.set()
    await holder
    async with writer.begin() as conn:  # free again
        await conn.execute(insert(domains), _add("after.mssante.fr"))
    assert await _domain_names(store) == ["after.mssante.fr"]


async def test_sqlite_a_commit_cancelled_before_it_ran_is_rolled_back_and_frees_the_writer(
    sqlite_store: tuple[Store, HopWriteEngine],
) -> None:
    """The commit's hop cancelled while it waited its turn in the writer thread: the
    transaction is rolled back, never left holding SQLite's one write connection."""
    store, writer = sqlite_store
    blocker = threading.Event()
    body_done = asyncio.Event()

    async def transaction() -> None:
        async with writer.begin() as conn:
            await conn.execute(insert(domains), _add("never.mssante.fr"))
            # Whatever comes next (the commit) waits behind this job.
            writer.executor.submit(blocker.wait, 10)
            body_done.set()

    task = asyncio.create_task(transaction())
    await body_done.wait()
    await asyncio.sleep(0.05)  # the task now waits for its commit
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    blocker.set()
    async with asyncio.timeout(5):
        async with writer.begin() as conn:
            await conn.execute(insert(domains), _add("next.mssante.fr"))
    assert await _domain_names(store) == ["next.mssante.fr"]


async def test_a_one_hop_transaction_commits_all_or_nothing_and_frees_the_writer(
    store: Store,
) -> None:
    def add(conn: Connection, names: list[str]) -> int:
        for name in names:
            conn.execute(insert(domains), _add(name))
        return len(names)

    assert await store.db.transaction(add, ["one.mssante.fr", "two.mssante.fr"]) == 2
    with pytest.raises(Exception, match=r"(?i)unique"):
        await store.db.transaction(add, ["three.mssante.fr", "one.mssante.fr"])
    async with asyncio.timeout(10):
        assert await store.db.transaction(add, ["four.mssante.fr"]) == 1
    assert await _domain_names(store) == ["four.mssante.fr", "one.mssante.fr", "two.mssante.fr"]


async def test_sqlite_transactions_made_while_the_writer_is_busy_share_one_commit(
    sqlite_store: tuple[Store, HopWriteEngine],
) -> None:
    """Group commit: the calls queued behind a busy writer run in one transaction, each in a
    savepoint, so the one that fails is undone alone and the others commit; every caller gets
    its own result, and one cancelled before its turn writes nothing."""
    store, writer = sqlite_store
    commits: list[int] = []
    event.listen(writer.engine, "commit", lambda _conn: commits.append(1))

    def add(conn: Connection, names: list[str]) -> list[str]:
        for name in names:
            conn.execute(insert(domains), _add(name))
        return names

    blocker = threading.Event()
    writer.executor.submit(blocker.wait, 10)  # the writer thread is busy
    first = asyncio.ensure_future(store.db.transaction(add, ["a.mssante.fr"]))
    await asyncio.sleep(0.05)  # taken: waits in the writer thread's queue
    queued = [
        asyncio.ensure_future(store.db.transaction(add, names))
        for names in (
            ["b.mssante.fr", "c.mssante.fr"],
            ["d.mssante.fr", "b.mssante.fr"],  # unique: fails, after inserting d
            ["e.mssante.fr"],
            ["f.mssante.fr"],
        )
    ]
    await asyncio.sleep(0)
    queued[3].cancel()
    blocker.set()
    async with asyncio.timeout(10):
        assert await first == ["a.mssante.fr"]
        assert await queued[0] == ["b.mssante.fr", "c.mssante.fr"]
        with pytest.raises(Exception, match=r"(?i)unique"):
            await queued[1]
        assert await queued[2] == ["e.mssante.fr"]
        with pytest.raises(asyncio.CancelledError):
            await queued[3]
    assert len(commits) == 2  # "a" alone, then the three queued behind it together
    assert await _domain_names(store) == [
        "a.mssante.fr",
        "b.mssante.fr",
        "c.mssante.fr",
        "e.mssante.fr",
    ]


async def test_sqlite_a_transaction_waits_its_own_lock_timeout_not_the_first_queued_one(
    sqlite_store: tuple[Store, HopWriteEngine],
) -> None:
    store, writer = sqlite_store
    writer.lock_timeout = 0.4
    held = asyncio.Event()

    async def hold(seconds: float) -> None:
        async with writer.begin():
            held.set()
            await asyncio.sleep(seconds)

    def add(conn: Connection, name: str) -> str:
        conn.execute(insert(domains), _add(name))
        return name

    holder = asyncio.create_task(hold(0.6))
    await held.wait()
    early = asyncio.ensure_future(store.db.transaction(add, "early.mssante.fr"))
    await asyncio.sleep(0.25)
    late = asyncio.ensure_future(store.db.transaction(add, "late.mssante.fr"))
    with pytest.raises(SQLAlchemyTimeout):
        await early  # waited 0.4 s behind the holder
    async with asyncio.timeout(5):
        assert await late == "late.mssante.fr"  # 0.35 s of its own wait when the lock came
    await holder
    assert await _domain_names(store) == ["late.mssante.fr"]


async def test_sqlite_a_database_locked_by_another_process_is_a_sqlalchemy_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statements the store runs on the driver's own connection (BEGIN IMMEDIATE, a flag
    change) fail with SQLAlchemy's exceptions, which the callers handle, not sqlite3's."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from store import Flag
    from store import database as database_module
    from tests.store.messages import simple_message

    monkeypatch.setattr(database_module, "SQLITE_BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "c.db"
    store = await Store.open(f"sqlite:///{path}", tmp_path / "blobs")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await store.add_domain("hopital-test.mssante.fr")
        bal = await store.create_bal("jean.dupont@hopital-test.mssante.fr", display_name="J")
        await store.deliver(bal.address, simple_message(0))
        inbox = await store.get_folder(bal.address, "INBOX")
        other.execute("BEGIN IMMEDIATE")  # another process holds SQLite's write lock
        with pytest.raises(OperationalError, match="locked"):
            await store.set_flags(inbox.id, [1], flags=Flag.SEEN, mode="add")
        other.execute("ROLLBACK")
        changes = await store.set_flags(inbox.id, [1], flags=Flag.SEEN, mode="add")
        assert [c.uid for c in changes] == [1]
    finally:
        other.close()
        await store.close()
