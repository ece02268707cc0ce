"""The store's side of the directory: BAL revisions queued for publication in the same transaction,
publication state, named documents, singleton leases, search keys, and the 0001 -> 0002 upgrade."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from store import BalStatus, BalType, Store
from store.database import Database
from store.directory_state import PublicationFailure, PublicationOutcome
from store.errors import InvalidInput
from store.text import departement_of, prefix_upper_bound, search_key, search_words
from tests.conftest import PG_ADMIN_URL, StoreLocation, _pg_admin_sync


async def _due(store: Store) -> dict[str, int]:
    return {bal.address: state.wanted_revision for bal, state in await store.due_publications()}


async def test_a_new_bal_is_queued_for_publication_at_revision_1(store: Store, doctor: str) -> None:
    due = await _due(store)
    assert due == {doctor: 1}
    (state,) = await store.publication_states()
    assert (state.state, state.pending, state.published_revision) == ("pending", True, 0)


async def test_every_change_bumps_the_revision_and_queues_it(store: Store, doctor: str) -> None:
    await store.update_bal(doctor, display_name="Dr Jean Dupont-Martin")
    b = await store.set_bal_status(doctor, BalStatus.SUSPENDED)
    assert b.revision == 3
    assert await _due(store) == {doctor: 3}


async def test_publication_of_an_old_revision_leaves_the_newer_one_pending(
    store: Store, doctor: str
) -> None:
    """The publisher read revision 1; the BAL changed while it was publishing: not done."""
    bal = await store.get_bal(doctor)
    await store.update_bal(doctor, profession="21")
    cleared = await store.record_publication(bal.id, 1, state="published", dn="mail=x")
    assert not cleared
    assert await _due(store) == {doctor: 2}
    assert await store.record_publication(bal.id, 2, state="published", dn="mail=x")
    assert await _due(store) == {}
    (state,) = await store.publication_states()
    assert (state.state, state.published_revision, state.revision) == ("published", 2, 2)


async def test_a_failure_is_recorded_and_retried_after_the_backoff(
    store: Store, doctor: str
) -> None:
    bal = await store.get_bal(doctor)
    await store.record_publication_failure(bal.id, 1, "LDAP down", retry_in=timedelta(hours=1))
    assert await _due(store) == {}
    (state,) = await store.publication_states(only_problems=True)
    assert (state.state, state.attempts, state.last_error) == ("error", 1, "LDAP down")
    due_at = await store.next_publication_due()
    assert due_at is not None
    assert state.last_attempt_at is not None
    assert due_at > state.last_attempt_at + timedelta(minutes=59)
    # A new change is published at once, whatever the backoff said.
    await store.update_bal(doctor, description="Cardiologie")
    assert await _due(store) == {doctor: 2}


async def test_an_older_outcome_recorded_late_does_not_move_the_published_revision_back(
    store: Store, doctor: str
) -> None:
    bal = await store.get_bal(doctor)
    await store.update_bal(doctor, profession="21")
    await store.update_bal(doctor, liste_rouge=True)
    assert await store.record_publication(bal.id, 3, state="unpublished", dn=None)
    # A slower pass that had read revision 2 records it afterwards: ignored.
    await store.record_publication(bal.id, 2, state="published", dn="mail=x")
    await store.record_publications([PublicationOutcome(bal.id, 1, "published", "mail=x")])
    (state,) = await store.publication_states()
    assert (state.state, state.published_revision, state.dn, state.pending) == (
        "unpublished",
        3,
        None,
        False,
    )


async def test_published_revision_never_goes_backwards(store: Store, doctor: str) -> None:
    bal = await store.get_bal(doctor)
    await store.update_bal(doctor, profession="21")
    assert await store.record_publication(bal.id, 2, state="published", dn="mail=x")
    await store.record_publication(bal.id, 1, state="unpublished", dn=None)
    (state,) = await store.publication_states()
    assert (state.state, state.published_revision, state.dn) == ("published", 2, "mail=x")


async def test_a_failure_of_an_old_revision_does_not_delay_the_newer_change(
    store: Store, doctor: str
) -> None:
    bal = await store.get_bal(doctor)
    await store.update_bal(doctor, profession="21")
    await store.update_bal(doctor, profession="22")  # revision 3 queued
    await store.record_publication_failure(bal.id, 2, "refused", retry_in=timedelta(hours=1))
    assert await _due(store) == {doctor: 3}
    (state,) = await store.publication_states()
    assert (state.attempts, state.last_error) == (0, "refused")
    # The same failure on the wanted revision does back off.
    await store.record_publication_failure(bal.id, 3, "refused", retry_in=timedelta(hours=1))
    assert await _due(store) == {}
    (state,) = await store.publication_states()
    assert (state.state, state.attempts) == ("error", 1)


async def test_an_outage_notes_the_error_without_backing_off_each_bal(
    store: Store, doctor: str
) -> None:
    bal = await store.get_bal(doctor)
    for _ in range(3):
        await store.record_publication_failures(
            [PublicationFailure(bal.id, 1, "cannot reach the directory", None)]
        )
    (state,) = await store.publication_states()
    assert (state.state, state.pending, state.attempts) == ("error", True, 0)
    assert state.last_error == "cannot reach the directory"
    # Due now: when the directory is back, everything pending goes at once.
    assert await _due(store) == {doctor: 1}


async def test_search_key_of_a_bal_follows_its_name(store: Store) -> None:
    await store.add_domain("chu-test.mssante.fr")
    await store.create_bal(
        "cardio@chu-test.mssante.fr",
        BalType.ORG,
        display_name="Secrétariat Cardiologie",
        service="Hôpital Édouard-Herriot",
        postal_code="69003",
    )
    b = await store.get_bal("cardio@chu-test.mssante.fr")
    assert b.departement == "69"
    await store.update_bal(b.address, display_name="Accueil Pédiatrie")
    async with store.db.reader.connect() as conn:
        key = (await conn.execute(text("SELECT name_key FROM bals"))).scalar_one()
    assert key == "accueil pediatrie hopital edouard herriot"


async def test_rank_below_1_is_refused(store: Store, doctor: str) -> None:
    with pytest.raises(InvalidInput):
        await store.update_bal(doctor, rank=0)


async def test_concurrent_savers_of_a_new_document_all_succeed(
    store: Store, store_location: StoreLocation
) -> None:
    other = await Store.open(store_location.url, store_location.blob_dir)
    try:
        await asyncio.gather(
            *(
                s.save_document("state", b"x" if i % 2 else None, {"n": i})
                for i, s in enumerate([store, other] * 4)
            )
        )
    finally:
        await other.close()
    doc = await store.load_document("state")
    assert doc is not None
    assert doc.meta["n"] in range(8)


async def test_documents_keep_content_and_replace_metadata_alone(store: Store) -> None:
    await store.save_document("whitelist", b"<xml/>", {"etag": '"a"'})
    doc = await store.save_document("whitelist", None, {"etag": '"a"', "checked_at": "now"})
    assert doc.content == b"<xml/>"
    assert doc.meta == {"etag": '"a"', "checked_at": "now"}
    light = await store.load_document("whitelist", with_content=False)
    assert light is not None
    assert light.content is None
    assert light.meta["checked_at"] == "now"
    assert await store.load_document("absent") is None


async def test_a_lease_is_held_by_one_holder_until_it_expires(store: Store) -> None:
    assert await store.acquire_lease("publisher", "a", timedelta(minutes=5))
    assert not await store.acquire_lease("publisher", "b", timedelta(minutes=5))
    assert await store.acquire_lease("publisher", "a", timedelta(seconds=-1))  # renew (expired)
    assert await store.acquire_lease("publisher", "b", timedelta(minutes=5))  # taken over
    await store.release_lease("publisher", "a")  # not a's any more: no effect
    assert not await store.acquire_lease("publisher", "a", timedelta(minutes=5))
    await store.release_lease("publisher", "b")
    assert await store.acquire_lease("publisher", "a", timedelta(minutes=5))


async def test_concurrent_acquirers_of_a_new_lease_get_it_once(
    store: Store, store_location: StoreLocation
) -> None:
    other = await Store.open(store_location.url, store_location.blob_dir)
    try:
        for round_ in range(3):
            name = f"race-{round_}"
            taken = await asyncio.gather(
                *(
                    s.acquire_lease(name, f"holder-{i}", timedelta(minutes=5))
                    for i, s in enumerate([store, other] * 4)
                )
            )
            assert sorted(taken) == [False] * 7 + [True]
    finally:
        await other.close()


async def test_a_lease_is_timed_by_the_database_clock_not_the_hosts(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose clock is an hour late takes the lease for 5 minutes: a host with the right
    clock must still find it held."""
    import store.directory_state as directory_state

    right = directory_state._now
    monkeypatch.setattr(directory_state, "_now", lambda: right() - timedelta(hours=1))
    assert await store.acquire_lease("publisher", "late-host", timedelta(minutes=5))
    monkeypatch.setattr(directory_state, "_now", right)
    assert not await store.acquire_lease("publisher", "right-host", timedelta(minutes=5))


async def test_a_lease_expires_by_the_database_clock(store: Store) -> None:
    """The expiry is the database's now + ttl, stored in the column's own form: a lease taken for
    a second is held during it and free after it, on both engines."""
    assert await store.acquire_lease("publisher", "a", timedelta(seconds=1))
    assert not await store.acquire_lease("publisher", "b", timedelta(seconds=1))
    async with store.db.reader.connect() as conn:
        expires_at = (await conn.execute(text("SELECT expires_at FROM leases"))).scalar_one()
    if isinstance(expires_at, str):  # SQLite: SQLAlchemy's text form of a naive UTC time
        assert len(expires_at) == len("2024-01-01 12:00:00.000000")
    await asyncio.sleep(1.2)
    assert await store.acquire_lease("publisher", "b", timedelta(seconds=1))


# -- search keys ------------------------------------------------------------------------------


def test_search_key_folds_accents_case_ligatures_and_punctuation() -> None:
    assert search_key("Hôpital Édouard-Herriot") == "hopital edouard herriot"
    assert search_key("CŒUR", None, "", "l'Œil") == "coeur l oeil"
    assert search_key("  ") == ""
    assert search_words("Dupont  dupont Jean-Marc") == ["dupont", "jean", "marc"]


@pytest.mark.parametrize(
    ("postal_code", "departement"),
    [
        ("69003", "69"),
        ("01000", "01"),
        ("20000", "2A"),
        ("20167", "2A"),
        ("20200", "2B"),
        ("97400", "974"),
        ("98800", "988"),
        ("6900", None),
        ("ABCDE", None),
        (None, None),
    ],
)
def test_departement_of_a_postal_code(postal_code: str | None, departement: str | None) -> None:
    assert departement_of(postal_code) == departement


@given(st.text(min_size=1, max_size=20), st.text(max_size=20))
def test_prefix_upper_bound_bounds_every_extension(prefix: str, rest: str) -> None:
    key = search_key(prefix)
    if not key:
        return
    bound = prefix_upper_bound(key)
    assert key <= key + rest < bound
    assert not bound.startswith(key)


# -- upgrade from revision 0001 ---------------------------------------------------------------


def _seed_at_0001(conn: Connection) -> None:
    from alembic import command

    from store.database import _alembic_config

    command.upgrade(_alembic_config(conn), "0001")
    conn.execute(
        text("INSERT INTO domains (name, created_at) VALUES ('old.mssante.fr', CURRENT_TIMESTAMP)")
    )
    conn.execute(
        text(
            "INSERT INTO bals (address, domain_id, type, display_name, description, liste_rouge, "
            "status, placement, created_at, updated_at) VALUES ('anne@old.mssante.fr', 1, 'PER', "
            "'Dr Anne Lefèvre', 'Médecine générale', false, 'active', 'v2', CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP)"
        )
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_upgrade_from_0001_indexes_and_queues_existing_bals(
    backend: str, tmp_path: Path
) -> None:
    name = f"colombe_upgrade_{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        _pg_admin_sync(f'CREATE DATABASE "{name}"')
        url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        db = Database.connect(url)
        try:
            async with db.writer.begin() as conn:
                await conn.run_sync(_seed_at_0001)
        finally:
            await db.dispose()
        store = await Store.open(url, tmp_path / "blobs")
        try:
            bal = await store.get_bal("anne@old.mssante.fr")
            assert (bal.revision, bal.rank) == (1, 1)
            assert await _due(store) == {"anne@old.mssante.fr": 1}
            async with store.db.reader.connect() as conn:
                key = (await conn.execute(text("SELECT name_key FROM bals"))).scalar_one()
            assert key == "dr anne lefevre medecine generale"
        finally:
            await store.close()
    finally:
        if backend == "postgresql":
            _pg_admin_sync(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_bal_change_wakes_this_process_publisher(store: Store, doctor: str) -> None:
    assert store.bal_changed.is_set()  # the doctor fixture created a BAL
    store.bal_changed.clear()
    await store.update_bal(doctor, rank=2)
    assert store.bal_changed.is_set()
