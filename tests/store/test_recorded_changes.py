"""The change feed's record of this process's own writes answers ``changes_since`` exactly as
the database would, and only when it knows every MODSEQ in between."""

from __future__ import annotations

import random

from store import Flag, Store
from store.model import FolderChanges
from tests.conftest import StoreLocation
from tests.store.messages import random_write, simple_message


async def _from_database(store: Store, folder_id: int, modseq: int) -> FolderChanges:
    return await store._changes_since(folder_id, modseq)


async def test_recorded_changes_equal_the_database_answer_after_every_kind_of_write(
    store: Store, doctor: str
) -> None:
    """Deliveries, flag changes, expunges, copies and moves, in a seeded random order, with a
    session watching: from every MODSEQ it might know (a session learns MODSEQs at the end of
    transactions), the answer from the record (taken without a query) is the database's."""
    await store.deliver(doctor, simple_message(0))
    inbox = await store.get_folder(doctor, "INBOX")
    other = await store.create_folder(doctor, "Archives")
    rng = random.Random(7)
    async with store.changes.watch(inbox.id):
        start = (await store.get_folder(doctor, "INBOX")).highest_modseq
        ends = [start]
        for step in range(60):
            await random_write(store, doctor, inbox.id, other.id, rng, step)
            ends.append((await store.get_folder(doctor, "INBOX")).highest_modseq)
        top = ends[-1]
        assert len(set(ends)) > 40
        for modseq in sorted(set(ends))[:-1]:
            recorded = store.changes.changes_known(inbox.id, modseq, top)
            assert recorded is not None, f"MODSEQ {modseq}: the record should cover it"
            assert recorded == await _from_database(store, inbox.id, modseq), modseq
            assert await store.changes_since(inbox.id, modseq, covering=top) == recorded


async def test_a_change_made_by_another_process_sends_the_question_to_the_database(
    store: Store, store_location: StoreLocation, doctor: str
) -> None:
    await store.deliver(doctor, simple_message(0))
    inbox = await store.get_folder(doctor, "INBOX")
    async with store.changes.watch(inbox.id):
        before = (await store.get_folder(doctor, "INBOX")).highest_modseq
        await store.set_flags(inbox.id, [1], flags=Flag.SEEN, mode="add")  # recorded
        elsewhere = await Store.open(store_location.url, store_location.blob_dir)
        try:
            await elsewhere.set_flags(inbox.id, [1], flags=Flag.FLAGGED, mode="add")
        finally:
            await elsewhere.close()
        await store.set_flags(inbox.id, [1], flags=Flag.ANSWERED, mode="add")  # recorded
        top = (await store.get_folder(doctor, "INBOX")).highest_modseq
        assert top == before + 3
        # Up to its own first change the record knows; past it, the other process's MODSEQ
        # is missing, so nothing after ``before`` can be answered from the record.
        assert store.changes.changes_known(inbox.id, before, before + 1) is not None
        assert store.changes.changes_known(inbox.id, before, top) is None
        answer = await store.changes_since(inbox.id, before, covering=top)
        assert answer == await _from_database(store, inbox.id, before)
        [change] = answer.changed
        assert change.flags == Flag.SEEN | Flag.FLAGGED | Flag.ANSWERED


async def test_an_unwatched_folder_records_nothing(store: Store, doctor: str) -> None:
    await store.deliver(doctor, simple_message(0))
    inbox = await store.get_folder(doctor, "INBOX")
    before = inbox.highest_modseq
    await store.set_flags(inbox.id, [1], flags=Flag.SEEN, mode="add")
    assert store.changes.changes_known(inbox.id, before, before + 1) is None
    async with store.changes.watch(inbox.id):
        await store.set_flags(inbox.id, [1], flags=Flag.FLAGGED, mode="add")
        assert store.changes.changes_known(inbox.id, before + 1, before + 2) is not None
    # The last watcher gone, the record goes too.
    assert store.changes.changes_known(inbox.id, before + 1, before + 2) is None


async def test_a_deleted_folder_leaves_no_record_to_answer_for_its_id(
    store: Store, doctor: str
) -> None:
    """SQLite gives a deleted folder's id to the next folder created: what was recorded of
    the old one must not answer for the new one, and its watchers are sent to look again."""
    inbox = (await store.get_folder(doctor, "INBOX")).id
    for i in range(2):
        await store.deliver(doctor, simple_message(i))
    old = await store.create_folder(doctor, "Ancien")
    start = old.highest_modseq
    async with store.changes.watch(old.id) as watch:
        await store.copy_messages(inbox, [1], old.id)  # start + 1
        await store.set_flags(old.id, [1], flags=Flag.SEEN, mode="add")  # start + 2
        assert store.changes.changes_known(old.id, start + 1, start + 2) is not None
        watch.take()
        await store.delete_folder(doctor, "Ancien")
        assert watch.take()
        assert watch.resync
        assert store.changes.changes_known(old.id, start + 1, start + 2) is None
        new = await store.create_folder(doctor, "Nouveau")
        assert new.highest_modseq == start
        # Both copies in one transaction (start + 1 and + 2): with the same id, a stale
        # record of the old folder at start + 2 would answer for the second.
        await store.copy_messages(inbox, [1, 2], new.id)
        answer = await store.changes_since(new.id, start + 1, covering=start + 2)
        assert answer == await _from_database(store, new.id, start + 1)
        assert [c.uid for c in answer.changed] == [2]
