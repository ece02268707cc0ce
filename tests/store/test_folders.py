"""Folders: names, hierarchy, UIDVALIDITY (RFC 9051 §2.3.1.1, §5.1)."""

from __future__ import annotations

import pytest

from store import FolderExists, FolderNotFound, Store
from store.errors import InvalidInput


async def test_inbox_is_case_insensitive_rfc9051_5_1(store: Store, doctor: str) -> None:
    assert (await store.get_folder(doctor, "inbox")).name == "INBOX"
    assert (await store.get_folder(doctor, "InBoX")).name == "INBOX"


async def test_created_folder_gets_a_fresh_uidvalidity(store: Store, doctor: str) -> None:
    before = max(f.uidvalidity for f in await store.list_folders(doctor))
    f = await store.create_folder(doctor, "Patients/Dupont")
    assert f.uidvalidity > before
    with pytest.raises(FolderExists):
        await store.create_folder(doctor, "Patients/Dupont")


async def test_recreated_folder_never_reuses_uidvalidity_rfc9051_2_3_1_1(
    store: Store, doctor: str
) -> None:
    first = await store.create_folder(doctor, "Résultats")
    await store.delete_folder(doctor, "Résultats")
    second = await store.create_folder(doctor, "Résultats")
    assert second.uidvalidity != first.uidvalidity


async def test_rename_moves_children_too(store: Store, doctor: str) -> None:
    await store.create_folder(doctor, "Labo")
    await store.create_folder(doctor, "Labo/2026")
    await store.rename_folder(doctor, "Labo", "Biologie")
    names = {f.name for f in await store.list_folders(doctor)}
    assert {"Biologie", "Biologie/2026"} <= names
    assert "Labo" not in names


async def test_deleting_a_folder_removes_its_messages(store: Store, doctor: str) -> None:
    f = await store.create_folder(doctor, "Old")
    await store.deliver(doctor, b"Subject: x\r\n\r\nbody\r\n", "Old")
    await store.delete_folder(doctor, "Old")
    with pytest.raises(FolderNotFound):
        await store.get_folder(doctor, "Old")
    assert await store.list_messages(f.id) == []


@pytest.mark.parametrize("bad", ["", "a//b", "/lead", "trail/", "tab\there", "x" * 1100])
async def test_bad_folder_names_are_refused(store: Store, doctor: str, bad: str) -> None:
    with pytest.raises(InvalidInput):
        await store.create_folder(doctor, bad)


async def test_inbox_cannot_be_deleted_or_renamed(store: Store, doctor: str) -> None:
    with pytest.raises(InvalidInput):
        await store.delete_folder(doctor, "INBOX")
    with pytest.raises(InvalidInput):
        await store.rename_folder(doctor, "INBOX", "Ailleurs")
