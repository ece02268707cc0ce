"""With PostgreSQL the change feed crosses processes (LISTEN/NOTIFY): a delivery made by another
front end wakes this process's IDLE sessions, and a lost listener connection recovers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from store import Store
from store.changes import PostgresChangeFeed
from tests.conftest import StoreLocation, _empty_postgres
from tests.store.test_durability import _start_child


async def test_delivery_in_another_process_wakes_a_watcher_here(
    tmp_path: Path, pg_url: str
) -> None:
    await _empty_postgres(pg_url)
    store = await Store.open(pg_url, tmp_path / "blobs")
    try:
        assert isinstance(store.changes, PostgresChangeFeed)
        await store.add_domain("hopital-test.mssante.fr")
        bal = (await store.create_bal("idle@hopital-test.mssante.fr")).address
        inbox = await store.get_folder(bal, "INBOX")
        async with store.changes.watch(inbox.id) as watch:
            child = await _start_child(
                StoreLocation("postgresql", pg_url, tmp_path / "blobs"), bal, 1, 1, "x"
            )
            out, err = await asyncio.wait_for(child.communicate(), 60)
            assert child.returncode == 0, err.decode()
            uid = int(out.split()[0])
            assert await watch.wait(timeout=5), "the NOTIFY of the other process never arrived"
            changes = await store.changes_since(inbox.id, 0)
            assert [c.uid for c in changes.changed] == [uid]
    finally:
        await store.close()


async def test_listener_reconnects_and_wakes_everyone_after_losing_its_connection(
    tmp_path: Path, pg_url: str
) -> None:
    await _empty_postgres(pg_url)
    store = await Store.open(pg_url, tmp_path / "blobs")
    feed = store.changes
    assert isinstance(feed, PostgresChangeFeed)
    feed.RECONNECT_DELAY = 0.1
    try:
        await store.add_domain("hopital-test.mssante.fr")
        bal = (await store.create_bal("idle@hopital-test.mssante.fr")).address
        inbox = await store.get_folder(bal, "INBOX")
        dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        admin = await asyncpg.connect(dsn)
        try:
            async with feed.watch(inbox.id) as watch:
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
                assert killed == 1
                # Whatever changed while deaf is unknown: every watcher is told to re-check.
                assert await watch.wait(timeout=10)
                # And the new connection hears the next delivery made by another connection.
                await admin.execute("SELECT pg_notify('colombe_changes', $1)", f"{inbox.id}:999")
                assert await watch.wait(timeout=10)
                assert watch.modseq == 999
        finally:
            await admin.close()
    finally:
        await store.close()
