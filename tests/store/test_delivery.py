"""deliver(): blobs, rows, UIDs, MODSEQs and the metadata computed once at delivery."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

import pytest

from store import BalNotFound, Flag, FolderNotFound, Store
from store.errors import InvalidInput
from tests.store.messages import message_of_size, simple_message


async def test_delivery_stores_the_exact_octets_and_returns_increasing_uids(
    store: Store, doctor: str
) -> None:
    first = await store.deliver(doctor, simple_message(1))
    second = await store.deliver(doctor, simple_message(2))
    assert (first.uid, second.uid) == (1, 2)
    assert second.modseq > first.modseq
    assert first.blob == hashlib.sha256(simple_message(1)).hexdigest()
    inbox = await store.get_folder(doctor, "INBOX")
    assert inbox.uid_next == 3
    assert inbox.highest_modseq >= second.modseq
    stored = await store.list_messages(inbox.id)
    assert [m.uid for m in stored] == [1, 2]
    assert await store.read_message(stored[0]) == simple_message(1)


async def test_metadata_is_computed_at_delivery(store: Store, doctor: str) -> None:
    raw = message_of_size(20_000, 7)
    result = await store.deliver(doctor, raw)
    [info] = await store.list_messages(result.folder_id, [result.uid])
    assert info.size == len(raw)
    assert info.subject == "Résultats d'analyses 7"
    assert info.message_id is not None
    assert info.message_id.startswith("<7.")
    assert info.from_addr == "resultats@labo-test.mssante.fr"
    assert info.sent_date == datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    assert info.envelope["from"] == [["Laboratoire", None, "resultats", "labo-test.mssante.fr"]]
    assert info.body["type"] == "multipart"
    assert info.body["subtype"] == "mixed"
    pdf = info.body["parts"][1]
    assert (pdf["type"], pdf["subtype"], pdf["encoding"]) == ("application", "pdf", "BASE64")
    # Offsets let a reader serve BODY[2] by reading a byte range, never re-parsing.
    assert raw[pdf["end"] :] == b"\r\n--=_b7--\r\n"
    assert raw[pdf["header_start"] : pdf["body_start"]].startswith(b"Content-Type: application/pdf")
    assert await store.read_header(info) == raw[: info.body["body_start"]]
    assert info.problems == ()


async def test_flags_keywords_and_internal_date_are_kept(store: Store, doctor: str) -> None:
    when = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    r = await store.deliver(
        doctor,
        simple_message(),
        "Sent",
        flags=Flag.SEEN | Flag.ANSWERED,
        keywords=["$Classe", "NonLu"],
        internal_date=when,
    )
    [info] = await store.list_messages(r.folder_id)
    assert info.flags == Flag.SEEN | Flag.ANSWERED
    assert info.flags.imap_names == ("\\Seen", "\\Answered")
    assert info.keywords == ("$Classe", "NonLu")
    assert info.internal_date == when


async def test_identical_messages_share_one_blob(store: Store, doctor: str) -> None:
    a = await store.deliver(doctor, simple_message(5))
    b = await store.deliver(doctor, simple_message(5), "Archive")
    assert a.blob == b.blob
    assert len(list(store.blobs.digests())) == 1


async def test_delivery_to_unknown_bal_or_folder_is_an_error(store: Store, doctor: str) -> None:
    with pytest.raises(BalNotFound):
        await store.deliver("personne@hopital-test.mssante.fr", simple_message())
    with pytest.raises(FolderNotFound):
        await store.deliver(doctor, simple_message(), "Inexistant")


async def test_delivery_to_a_deleted_folder_fails_cleanly(store: Store, doctor: str) -> None:
    await store.create_folder(doctor, "Temp")
    await store.deliver(doctor, simple_message(1), "Temp")  # caches the folder id
    await store.delete_folder(doctor, "Temp")
    with pytest.raises(FolderNotFound):
        await store.deliver(doctor, simple_message(2), "Temp")


async def test_invalid_keyword_is_refused(store: Store, doctor: str) -> None:
    with pytest.raises(InvalidInput):
        await store.deliver(doctor, simple_message(), keywords=["has space"])


async def test_streamed_blob_can_be_delivered_by_digest(store: Store, doctor: str) -> None:
    raw = message_of_size(300_000, 3)
    writer = store.blobs.writer()
    for i in range(0, len(raw), 65536):
        await writer.write(raw[i : i + 65536])
    digest = await writer.commit()
    r = await store.deliver(doctor, digest)
    [info] = await store.list_messages(r.folder_id)
    assert info.size == len(raw)
    assert await store.read_message(info) == raw
    assert info.body["parts"][1]["subtype"] == "pdf"


async def test_concurrent_deliveries_are_group_committed(store: Store, doctor: str) -> None:
    before_batches, before_msgs = store.commit_stats
    results = await asyncio.gather(*(store.deliver(doctor, simple_message(i)) for i in range(64)))
    batches, msgs = store.commit_stats
    assert msgs - before_msgs == 64
    # Deliveries that arrive while a commit is in flight share the next one.
    assert batches - before_batches < 64
    assert sorted(r.uid for r in results) == list(range(1, 65))


async def test_read_range_serves_a_part_without_reading_the_rest(store: Store, doctor: str) -> None:
    raw = message_of_size(50_000, 9)
    r = await store.deliver(doctor, raw)
    [info] = await store.list_messages(r.folder_id)
    text_part = info.body["parts"][0]
    got = await store.blobs.read_range(info.blob, text_part["body_start"], text_part["end"])
    assert got == "Bonjour Docteur, veuillez trouver ci-joint les résultats.".encode()


async def test_garbage_collection_removes_only_unreferenced_old_blobs(
    store: Store, doctor: str
) -> None:
    from datetime import timedelta

    from store import Flag

    shared = await store.deliver(doctor, simple_message(1))
    await store.deliver(doctor, simple_message(1), "Archive")  # same blob, second reference
    alone = await store.deliver(doctor, simple_message(2))
    await store.set_flags(shared.folder_id, [shared.uid, alone.uid], flags=Flag.DELETED)
    await store.expunge(shared.folder_id)
    # Young unreferenced blobs are kept: a delivery in flight may be about to reference them.
    assert await store.collect_garbage() == (0, 0)
    removed, freed = await store.collect_garbage(grace=timedelta(seconds=-1))
    assert (removed, freed) == (1, len(simple_message(2)))
    assert not store.blobs.exists(alone.blob)
    assert store.blobs.exists(shared.blob)
    [archived] = await store.list_messages((await store.get_folder(doctor, "Archive")).id)
    assert await store.read_message(archived) == simple_message(1)
