"""Domains, BALs, credentials and delegations: the directory side of the store."""

from __future__ import annotations

import time

import pytest

from store import BalNotFound, BalStatus, BalType, DomainNotFound, Placement, Store
from store.errors import BalExists, DomainExists, InvalidInput
from tests.conftest import StoreLocation


async def test_domain_names_are_normalised_and_unique(store: Store) -> None:
    d = await store.add_domain("Clinique-Test.MSSante.fr.")
    assert d.name == "clinique-test.mssante.fr"
    with pytest.raises(DomainExists):
        await store.add_domain("clinique-test.mssante.fr")
    assert [x.name for x in await store.list_domains()] == ["clinique-test.mssante.fr"]


async def test_invalid_domain_is_refused_with_a_message(store: Store) -> None:
    with pytest.raises(InvalidInput, match="not a valid domain"):
        await store.add_domain("no spaces.fr")


async def test_bal_needs_a_hosted_domain(store: Store) -> None:
    with pytest.raises(DomainNotFound):
        await store.create_bal("a@elsewhere.mssante.fr")


async def test_bal_is_created_with_its_attributes_and_default_folders(
    store: Store, doctor: str
) -> None:
    bal = await store.get_bal("Jean.Dupont@Hopital-Test.mssante.fr")
    assert bal.address == doctor
    assert bal.type is BalType.PER
    assert bal.national_id == "810001234567"
    assert bal.status is BalStatus.ACTIVE
    assert bal.placement is Placement.V2
    assert bal.domain == "hopital-test.mssante.fr"
    assert bal.created_at.tzinfo is not None
    folders = {f.name: f for f in await store.list_folders(doctor)}
    assert set(folders) == {"INBOX", "Sent", "Drafts", "Trash", "Archive"}
    assert folders["Sent"].special_use == "\\Sent"
    assert folders["INBOX"].special_use is None
    assert all(f.uid_next == 1 and f.uidvalidity > 0 for f in folders.values())


async def test_duplicate_bal_is_refused(store: Store, doctor: str) -> None:
    with pytest.raises(BalExists):
        await store.create_bal(doctor.upper())


async def test_bals_are_listed_by_domain_and_status(store: Store, doctor: str) -> None:
    await store.add_domain("labo.mssante.fr")
    await store.create_bal("accueil@labo.mssante.fr", BalType.ORG, display_name="Accueil")
    await store.set_bal_status("accueil@labo.mssante.fr", BalStatus.SUSPENDED)
    assert [b.address for b in await store.list_bals()] == ["accueil@labo.mssante.fr", doctor]
    assert [b.address for b in await store.list_bals(domain="labo.mssante.fr")] == [
        "accueil@labo.mssante.fr"
    ]
    suspended = await store.list_bals(status=BalStatus.SUSPENDED)
    assert [b.address for b in suspended] == ["accueil@labo.mssante.fr"]


async def test_bals_of_a_person_are_found_by_national_id(store: Store, doctor: str) -> None:
    assert [b.address for b in await store.bals_of_person("810001234567")] == [doctor]
    assert await store.bals_of_person("899999999999") == []


PASSWORD = "correct horse battery staple"


async def test_password_is_checked_and_stored_hashed(store: Store, doctor: str) -> None:
    await store.set_password(doctor, PASSWORD)
    assert await store.verify_password(doctor, PASSWORD)
    assert not await store.verify_password(doctor, "wrong")
    assert not await store.verify_password("nobody@hopital-test.mssante.fr", "x")
    assert not await store.verify_password("not an address", "x")
    async with store.db.reader.connect() as conn:
        stored = (await conn.exec_driver_sql("SELECT password_hash FROM credentials")).scalar()
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored


async def test_password_change_replaces_the_old_one(store: Store, doctor: str) -> None:
    await store.set_password(doctor, PASSWORD)
    await store.set_password(doctor, "nouveau mot de passe")
    assert await store.verify_password(doctor, "nouveau mot de passe")
    assert not await store.verify_password(doctor, PASSWORD)


async def test_suspended_or_closed_bal_cannot_log_in(store: Store, doctor: str) -> None:
    await store.set_password(doctor, PASSWORD)
    await store.set_bal_status(doctor, BalStatus.SUSPENDED)
    assert not await store.verify_password(doctor, PASSWORD)
    await store.set_bal_status(doctor, BalStatus.CLOSED)
    assert not await store.verify_password(doctor, PASSWORD)
    await store.set_bal_status(doctor, BalStatus.ACTIVE)
    assert await store.verify_password(doctor, PASSWORD)


async def test_unknown_bal_status_change_is_an_error(store: Store) -> None:
    with pytest.raises(BalNotFound):
        await store.set_bal_status("x@hopital-test.mssante.fr", BalStatus.CLOSED)


async def test_placement_moves_between_platforms(store: Store, doctor: str) -> None:
    assert (await store.set_placement(doctor, Placement.V1)).placement is Placement.V1
    assert (await store.get_bal(doctor)).placement is Placement.V1


async def test_delegation_gives_a_secretary_rights_on_a_doctor_bal(
    store: Store, doctor: str
) -> None:
    sec = await store.create_bal("secretariat@hopital-test.mssante.fr", display_name="Secrétariat")
    d = await store.add_delegation(doctor, sec.address, can_read=True, can_send=True)
    assert (d.bal, d.delegate, d.can_read, d.can_write, d.can_send) == (
        doctor,
        sec.address,
        True,
        False,
        True,
    )
    assert await store.can_send_as(sec.address, doctor)
    assert await store.can_send_as(doctor, doctor)
    assert not await store.can_send_as(doctor, sec.address)
    # Re-delegating replaces the rights.
    await store.add_delegation(doctor, sec.address, can_read=True, can_send=False)
    assert not await store.can_send_as(sec.address, doctor)
    assert [x.delegate for x in await store.list_delegations(bal=doctor)] == [sec.address]
    assert [x.bal for x in await store.list_delegations(delegate=sec.address)] == [doctor]
    assert await store.remove_delegation(doctor, sec.address)
    assert await store.list_delegations() == []
    assert not await store.remove_delegation(doctor, sec.address)


async def test_a_bal_cannot_be_delegated_to_itself(store: Store, doctor: str) -> None:
    with pytest.raises(InvalidInput):
        await store.add_delegation(doctor, doctor)


async def test_remembered_login_is_forgotten_when_the_password_changes(
    store: Store, doctor: str, store_location: StoreLocation
) -> None:
    """A success is remembered (no argon2 hash at the next login), but a password set since,
    even by another process, voids it at once."""
    await store.set_password(doctor, PASSWORD)
    assert await store.verify_password(doctor, PASSWORD)
    started = time.perf_counter()
    assert await store.verify_password(doctor, PASSWORD)
    assert time.perf_counter() - started < 0.05  # argon2 alone takes about 0.1 s
    other = await Store.open(store_location.url, store_location.blob_dir)
    try:
        await other.set_password(doctor, "nouveau mot de passe")
    finally:
        await other.close()
    assert not await store.verify_password(doctor, PASSWORD)
    assert await store.verify_password(doctor, "nouveau mot de passe")


async def test_remembered_login_does_not_survive_a_suspension(store: Store, doctor: str) -> None:
    await store.set_password(doctor, PASSWORD)
    assert await store.verify_password(doctor, PASSWORD)
    await store.set_bal_status(doctor, BalStatus.SUSPENDED)
    assert not await store.verify_password(doctor, PASSWORD)


async def test_remembering_logins_can_be_turned_off(store: Store, doctor: str) -> None:
    store.verified_ttl = 0
    await store.set_password(doctor, PASSWORD)
    assert await store.verify_password(doctor, PASSWORD)
    assert not store._verified
