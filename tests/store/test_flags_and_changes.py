"""Flags, MODSEQ (RFC 7162 CONDSTORE/QRESYNC), expunge and the change feed."""

from __future__ import annotations

import asyncio

import pytest

from store import Flag, Store
from store.errors import InvalidInput
from tests.store.messages import simple_message


async def _inbox_with(store: Store, bal: str, n: int) -> int:
    for i in range(n):
        await store.deliver(bal, simple_message(i))
    return (await store.get_folder(bal, "INBOX")).id


async def test_store_flags_gives_each_changed_message_a_new_modseq_rfc7162_3_1(
    store: Store, doctor: str
) -> None:
    folder_id = await _inbox_with(store, doctor, 3)
    before = (await store.get_folder(doctor, "INBOX")).highest_modseq
    changed = await store.set_flags(folder_id, [1, 2], flags=Flag.SEEN, mode="add")
    assert [c.uid for c in changed] == [1, 2]
    assert all(c.modseq > before for c in changed)
    assert changed[0].modseq != changed[1].modseq
    after = await store.get_folder(doctor, "INBOX")
    assert after.highest_modseq == max(c.modseq for c in changed)
    # Setting what is already set changes nothing and spends no MODSEQ.
    assert await store.set_flags(folder_id, [1], flags=Flag.SEEN, mode="add") == []
    assert (await store.get_folder(doctor, "INBOX")).highest_modseq == after.highest_modseq


async def test_add_remove_replace_flags_and_keywords(store: Store, doctor: str) -> None:
    folder_id = await _inbox_with(store, doctor, 1)
    await store.set_flags(folder_id, [1], flags=Flag.FLAGGED, keywords=["$Label1"], mode="add")
    await store.set_flags(folder_id, [1], keywords=["Classe"], mode="add")
    [m] = await store.list_messages(folder_id)
    assert (m.flags, m.keywords) == (Flag.FLAGGED, ("$Label1", "Classe"))
    await store.set_flags(folder_id, [1], flags=Flag.FLAGGED, keywords=["$Label1"], mode="remove")
    [m] = await store.list_messages(folder_id)
    assert (m.flags, m.keywords) == (Flag(0), ("Classe",))
    await store.set_flags(folder_id, [1], flags=Flag.SEEN | Flag.DRAFT, mode="replace")
    [m] = await store.list_messages(folder_id)
    assert (m.flags, m.keywords) == (Flag.SEEN | Flag.DRAFT, ())


async def test_unchangedsince_skips_messages_modified_later_rfc7162_3_1_3(
    store: Store, doctor: str
) -> None:
    folder_id = await _inbox_with(store, doctor, 2)
    [m1, _m2] = await store.list_messages(folder_id)
    await store.set_flags(folder_id, [2], flags=Flag.SEEN, mode="add")
    changed = await store.set_flags(
        folder_id, [1, 2], flags=Flag.FLAGGED, mode="add", unchanged_since=m1.modseq
    )
    assert [c.uid for c in changed] == [1]


async def test_expunge_removes_only_deleted_and_is_remembered_for_qresync_rfc7162_3_2_10(
    store: Store, doctor: str
) -> None:
    folder_id = await _inbox_with(store, doctor, 4)
    mark = (await store.get_folder(doctor, "INBOX")).highest_modseq
    await store.set_flags(folder_id, [2, 3, 4], flags=Flag.DELETED, mode="add")
    assert await store.expunge(folder_id, uids=[3, 4]) == [3, 4]  # UID EXPUNGE (RFC 4315)
    assert await store.uids(folder_id) == [1, 2]
    changes = await store.changes_since(folder_id, mark)
    assert changes.vanished == (3, 4)
    assert [c.uid for c in changes.changed] == [2]
    assert await store.expunge(folder_id) == [2]
    assert await store.uids(folder_id) == [1]


async def test_uids_never_go_back_after_expunge_rfc9051_2_3_1_1(store: Store, doctor: str) -> None:
    folder_id = await _inbox_with(store, doctor, 3)
    await store.set_flags(folder_id, [1, 2, 3], flags=Flag.DELETED, mode="add")
    await store.expunge(folder_id)
    r = await store.deliver(doctor, simple_message(99))
    assert r.uid == 4


async def test_folder_status_counts_messages_and_unseen(store: Store, doctor: str) -> None:
    folder_id = await _inbox_with(store, doctor, 3)
    await store.set_flags(folder_id, [1], flags=Flag.SEEN, mode="add")
    folder, total, unseen = await store.folder_status(folder_id)
    assert (folder.name, total, unseen) == ("INBOX", 3, 2)


async def test_change_feed_wakes_a_watcher_on_delivery(store: Store, doctor: str) -> None:
    inbox = await store.get_folder(doctor, "INBOX")
    async with store.changes.watch(inbox.id) as watch:
        assert not await watch.wait(timeout=0.05)
        delivered = asyncio.create_task(store.deliver(doctor, simple_message()))
        assert await watch.wait(timeout=5)
        result = await delivered
        assert watch.modseq >= result.modseq


async def test_change_feed_wakes_a_watcher_on_flag_change(store: Store, doctor: str) -> None:
    folder_id = await _inbox_with(store, doctor, 1)
    async with store.changes.watch(folder_id) as watch:
        await store.set_flags(folder_id, [1], flags=Flag.SEEN, mode="add")
        assert await watch.wait(timeout=5)


async def test_change_feed_ignores_other_folders(store: Store, doctor: str) -> None:
    sent = await store.get_folder(doctor, "Sent")
    async with store.changes.watch(sent.id) as watch:
        await store.deliver(doctor, simple_message())
        assert not await watch.wait(timeout=0.3)


async def test_listing_only_some_columns_leaves_the_others_empty(store: Store, doctor: str) -> None:
    """FETCH FLAGS and SEARCH UNSEEN read no MIME structure: what is not asked is empty."""
    await store.deliver(doctor, simple_message("Colonnes"), flags=Flag.SEEN, keywords=["$Label1"])
    folder_id = (await store.get_folder(doctor, "INBOX")).id
    (whole,) = await store.list_messages(folder_id)
    (light,) = await store.list_messages(folder_id, columns=("flags", "keywords"))
    assert (light.uid, light.blob, light.flags, light.keywords) == (
        whole.uid,
        whole.blob,
        Flag.SEEN,
        ("$Label1",),
    )
    assert whole.envelope
    assert whole.body
    assert whole.header
    assert (light.envelope, light.body, light.header, light.size) == ({}, {}, b"", 0)
    with pytest.raises(InvalidInput):
        await store.list_messages(folder_id, columns=("password_hash",))


async def test_concurrent_identical_change_queries_share_one_answer(
    store: Store, doctor: str
) -> None:
    """Every IMAP session of a BAL wakes for one delivery: they share the query, and an answer
    older than the change a caller woke for is never used."""
    result = await store.deliver(doctor, simple_message("Partage"))
    answers = await asyncio.gather(
        *(store.changes_since(result.folder_id, 0, covering=result.modseq) for _ in range(20))
    )
    assert all(a.highest_modseq >= result.modseq for a in answers)
    assert all(a is answers[0] for a in answers[1:])
