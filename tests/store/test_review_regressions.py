"""Races and leaks found in review: each test fails on the code before its fix."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta

import pytest

from store import Flag, Store
from store.database import Database, normalise_url
from store.errors import InvalidInput
from tests.conftest import StoreLocation
from tests.store.messages import simple_message


async def test_reused_old_blob_is_not_collected(store: Store, doctor: str) -> None:
    first = await store.deliver(doctor, simple_message(1))
    await store.set_flags(first.folder_id, [first.uid], flags=Flag.DELETED)
    await store.expunge(first.folder_id)
    path = store.blobs.path(first.blob)
    old = time.time() - 7200
    os.utime(path, (old, old))
    # Re-delivered (a sender retrying): the existing file is reused and must count as young.
    await store.blobs.put(simple_message(1))
    assert await store.collect_garbage(grace=timedelta(hours=1)) == (0, 0)
    assert path.exists()


async def test_blob_moved_aside_by_a_crashed_collection_is_restored(
    store: Store, doctor: str
) -> None:
    r = await store.deliver(doctor, simple_message(3))
    path = store.blobs.path(r.blob)
    os.replace(path, store.blobs.root / "tmp" / f"gc-{r.blob}")
    await store.collect_garbage(grace=timedelta(seconds=-1))
    [info] = await store.list_messages(r.folder_id)
    assert await store.read_message(info) == simple_message(3)


async def test_concurrent_flag_changes_from_two_processes_lose_nothing(
    store: Store, store_location: StoreLocation, doctor: str
) -> None:
    r = await store.deliver(doctor, simple_message())
    other = await Store.open(store_location.url, store_location.blob_dir)
    try:
        await asyncio.gather(
            *(
                (store if i % 2 else other).set_flags(
                    r.folder_id, [r.uid], keywords=[f"k{i}"], mode="add"
                )
                for i in range(20)
            )
        )
    finally:
        await other.close()
    [info] = await store.list_messages(r.folder_id)
    assert sorted(info.keywords) == sorted(f"k{i}" for i in range(20))


async def test_only_one_concurrent_unchangedsince_store_wins_rfc7162_3_1_3(
    store: Store, store_location: StoreLocation, doctor: str
) -> None:
    r = await store.deliver(doctor, simple_message())
    other = await Store.open(store_location.url, store_location.blob_dir)
    try:
        results = await asyncio.gather(
            *(
                (store if i % 2 else other).set_flags(
                    r.folder_id, [r.uid], keywords=[f"k{i}"], mode="add", unchanged_since=r.modseq
                )
                for i in range(10)
            )
        )
    finally:
        await other.close()
    assert sum(1 for changed in results if changed) == 1


async def test_concurrent_expunges_report_each_message_once(
    store: Store, store_location: StoreLocation, doctor: str
) -> None:
    for i in range(5):
        await store.deliver(doctor, simple_message(i))
    folder_id = (await store.get_folder(doctor, "INBOX")).id
    await store.set_flags(folder_id, [1, 2, 3, 4, 5], flags=Flag.DELETED)
    other = await Store.open(store_location.url, store_location.blob_dir)
    try:
        a, b = await asyncio.gather(store.expunge(folder_id), other.expunge(folder_id))
    finally:
        await other.close()
    assert sorted(a + b) == [1, 2, 3, 4, 5]


async def test_rename_does_not_touch_folders_matching_like_wildcards(
    store: Store, doctor: str
) -> None:
    for name in ("R_D", "RxD", "RxD/secret", "projets", "PROJETS", "PROJETS/y"):
        await store.create_folder(doctor, name)
    await store.rename_folder(doctor, "R_D", "Old")
    await store.rename_folder(doctor, "projets", "P2")
    names = {f.name for f in await store.list_folders(doctor)}
    assert {"RxD/secret", "PROJETS/y", "Old", "P2"} <= names
    assert "Old/secret" not in names
    assert "P2/y" not in names


async def test_delivery_follows_a_folder_renamed_and_recreated_by_another_process(
    store: Store, store_location: StoreLocation, doctor: str
) -> None:
    await store.create_folder(doctor, "Projets")
    await store.deliver(doctor, simple_message(1), "Projets")
    other = await Store.open(store_location.url, store_location.blob_dir)
    try:
        await other.rename_folder(doctor, "Projets", "Ancien")
        await other.create_folder(doctor, "Projets")
    finally:
        await other.close()
    r = await store.deliver(doctor, simple_message(2), "Projets")
    assert r.folder_id == (await store.get_folder(doctor, "Projets")).id


def test_database_urls_never_show_their_password() -> None:
    with pytest.raises(InvalidInput) as bad:
        normalise_url("mysql://colombe:S3cret@db/x")
    assert "S3cret" not in str(bad.value)
    with pytest.raises(InvalidInput) as garbage:
        normalise_url("::S3cret::")
    assert "S3cret" not in str(garbage.value)
    db = Database.connect("postgresql://colombe:S3cret@127.0.0.1/x")
    assert "S3cret" not in repr(db)
