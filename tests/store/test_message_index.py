"""The in-memory message index answers as the database does, once asked to cover a MODSEQ:
after every kind of write, after a write it never heard of (another process), within its
budget, and never for a deleted folder whose id was given again."""

from __future__ import annotations

import asyncio
import random

import pytest

from store import Flag, Store
from store.index import INDEXED_FIELDS, FolderIndex, MessageIndexes
from store.model import MessageInfo
from tests.conftest import StoreLocation
from tests.store.messages import random_write, simple_message


def _light(infos: list[MessageInfo] | dict[int, MessageInfo]) -> list[tuple[object, ...]]:
    rows = infos.values() if isinstance(infos, dict) else infos
    return [
        (i.uid, i.modseq, i.flags, i.keywords, i.internal_date, i.size, i.blob, i.folder_id)
        for i in rows
    ]


async def _database(store: Store, folder_id: int) -> list[tuple[object, ...]]:
    return _light(await store.list_messages(folder_id, columns=INDEXED_FIELDS))


async def test_the_index_equals_the_database_after_every_kind_of_write(
    store: Store, doctor: str
) -> None:
    """Deliveries, flag changes, expunges, copies and moves in a seeded random order, the index
    read after some of them only (it catches up over several writes at once), in both folders."""
    await store.deliver(doctor, simple_message(0))
    inbox = await store.get_folder(doctor, "INBOX")
    other = await store.create_folder(doctor, "Archives")
    rng = random.Random(11)
    largest = 0
    async with store.changes.watch(inbox.id), store.changes.watch(other.id):
        for step in range(80):
            action = await random_write(store, doctor, inbox.id, other.id, rng, step)
            if rng.random() < 0.4:
                for folder in (inbox, other):
                    top = (await store.folder(folder.id)).highest_modseq
                    indexed = await store.indexed_messages(folder.id, top)
                    assert indexed is not None
                    assert _light(indexed) == await _database(store, folder.id), (step, action)
                    assert list(indexed) == sorted(indexed)
                    largest = max(largest, len(indexed))
        top = (await store.folder(inbox.id)).highest_modseq
        indexed = await store.indexed_messages(inbox.id, top)
        assert indexed is not None
        assert largest > 5
        assert _light(indexed) == await _database(store, inbox.id)


async def test_a_write_by_another_process_is_found_once_its_modseq_is_asked_for(
    store: Store, store_location: StoreLocation, doctor: str
) -> None:
    """No notification reaches this process (on SQLite none is sent): the index is late until
    a reader asks it to cover the MODSEQ read from the database, then exact."""
    for n in range(3):
        await store.deliver(doctor, simple_message(n))
    inbox = await store.get_folder(doctor, "INBOX")
    before = (await store.folder(inbox.id)).highest_modseq
    assert await store.indexed_messages(inbox.id, before) is not None
    elsewhere = await Store.open(store_location.url, store_location.blob_dir)
    try:
        await elsewhere.set_flags(inbox.id, [1], flags=Flag.FLAGGED, mode="add")
        await elsewhere.deliver(doctor, simple_message(9))
        await elsewhere.set_flags(inbox.id, [2], flags=Flag.DELETED, mode="add")
        await elsewhere.expunge(inbox.id)
    finally:
        await elsewhere.close()
    late = await store.indexed_messages(inbox.id, before)
    assert late is not None
    assert 2 in late
    top = (await store.folder(inbox.id)).highest_modseq
    indexed = await store.indexed_messages(inbox.id, top)
    assert indexed is not None
    assert _light(indexed) == await _database(store, inbox.id)
    assert list(indexed) == [1, 3, 4]
    assert Flag.FLAGGED in indexed[1].flags


async def test_a_folder_larger_than_the_budget_is_read_from_the_database(
    store: Store, doctor: str
) -> None:
    store.indexes.budget = 3
    for n in range(4):
        await store.deliver(doctor, simple_message(n))
    inbox = await store.get_folder(doctor, "INBOX")
    top = (await store.folder(inbox.id)).highest_modseq
    assert await store.indexed_messages(inbox.id, top) is None
    assert inbox.id not in store.indexes
    # Not loaded again at every command: the folder is left out for a while.
    assert await store.indexed_messages(inbox.id, top) is None


async def test_the_least_recently_used_index_goes_first_when_the_budget_is_spent(
    store: Store, doctor: str
) -> None:
    store.indexes.budget = 4
    names = ["A", "B", "C"]
    ids = {}
    for name in names:
        folder = await store.create_folder(doctor, name)
        ids[name] = folder.id
        for n in range(2):
            await store.deliver(doctor, simple_message(n), name)
    for name in names:
        folder = await store.folder(ids[name])
        assert await store.indexed_messages(folder.id, folder.highest_modseq) is not None
    assert ids["A"] not in store.indexes
    assert ids["B"] in store.indexes
    assert ids["C"] in store.indexes


async def test_a_deleted_folder_leaves_no_index_for_the_next_folder_given_its_id(
    store: Store, doctor: str
) -> None:
    first = await store.create_folder(doctor, "Projets")
    await store.deliver(doctor, simple_message(0), "Projets")
    folder = await store.folder(first.id)
    assert await store.indexed_messages(first.id, folder.highest_modseq) is not None
    await store.delete_folder(doctor, "Projets")
    assert first.id not in store.indexes
    second = await store.create_folder(doctor, "Projets 2")
    folder = await store.folder(second.id)
    indexed = await store.indexed_messages(second.id, folder.highest_modseq)
    assert indexed == {}


def test_a_change_older_than_the_row_it_names_is_ignored() -> None:
    """A row read from the database may already be newer than the changes that follow."""
    from datetime import UTC, datetime

    from store.model import FlagChange, FolderChanges

    index = FolderIndex(1)
    row = MessageInfo(
        1, 7, 12, datetime(2026, 1, 1, tzinfo=UTC), 10, "b" * 64, Flag.SEEN, (), {}, {},
        b"", None, None, None, None,
    )  # fmt: skip
    index.load(10, [row])
    changes = FolderChanges(
        12, (FlagChange(7, 11, Flag(0), ()), FlagChange(8, 12, Flag(0), ())), ()
    )
    new = index.new_uids(changes)
    assert new == [8]
    assert index.modseq == 10  # nothing changes before the new rows are read
    index.apply(changes, new, [])  # message 8 was expunged before its row was read
    assert index.messages[7] is row
    assert 8 not in index.messages
    assert index.uid_top == 8
    assert index.modseq == 12
    later = FolderChanges(13, (FlagChange(7, 13, Flag.FLAGGED, ("$x",)),), (7,))
    assert index.new_uids(later) == []
    index.apply(later, [], [])
    assert 7 not in index.messages


def test_the_registry_drops_an_index_that_cannot_fit_alone() -> None:
    registry = MessageIndexes(budget=1)
    index = registry.get(5)
    index.load(1, [])
    assert registry.fits(index)
    index.messages = {1: None, 2: None}  # type: ignore[dict-item]
    assert not registry.fits(index)
    assert 5 not in registry


async def test_a_reader_during_a_refresh_never_sees_the_new_modseq_without_the_new_message(
    store: Store, doctor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh reads the new rows before it changes anything: a reader served meanwhile
    waits for it or gets the index as it was, and a failed read leaves nothing half done."""
    await store.deliver(doctor, simple_message(0))
    inbox = await store.get_folder(doctor, "INBOX")
    first = (await store.folder(inbox.id)).highest_modseq
    assert await store.indexed_messages(inbox.id, first) is not None
    await store.deliver(doctor, simple_message(1))
    top = (await store.folder(inbox.id)).highest_modseq
    reading = asyncio.Event()
    release = asyncio.Event()
    fail = True
    real = store.list_messages

    async def slow(folder_id: int, uids: object = None, **kw: object) -> object:
        if uids:
            reading.set()
            await release.wait()
            if fail:
                raise RuntimeError("the database went away")
        return await real(folder_id, uids, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "list_messages", slow)
    refresh = asyncio.create_task(store.indexed_messages(inbox.id, top))
    await reading.wait()
    as_it_was = await store.indexed_messages(inbox.id, first)
    assert as_it_was is not None
    assert list(as_it_was) == [1]
    waiting = asyncio.create_task(store.indexed_messages(inbox.id, top))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # it needs MODSEQ ``top``: it waits for the refresh
    release.set()
    with pytest.raises(RuntimeError):
        await refresh
    fail = False
    indexed = await waiting
    assert indexed is not None
    assert list(indexed) == [1, 2]
    again = await store.indexed_messages(inbox.id, top)
    assert again is not None
    assert list(again) == [1, 2]


def test_an_old_index_that_fails_or_overflows_leaves_the_newer_one_of_its_folder() -> None:
    registry = MessageIndexes(budget=1)
    old = registry.get(5)
    registry.drop(5)  # evicted while a refresh of ``old`` ran
    newer = registry.get(5)
    old.messages = {1: None, 2: None}  # type: ignore[dict-item]
    assert not registry.fits(old)
    registry.discard(old)
    assert registry.get(5) is newer
    registry.discard(newer)
    assert 5 not in registry
