"""Publication of our BALs to a real OpenLDAP slapd (started by the tests on 127.0.0.1 with the
shipped schema), over LDAPS and StartTLS with the server certificate verified, on both store
engines: create, modify, close, liste rouge on/off, the directory down and back, and a full
reconciliation repairing what was changed behind our back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from directory.ldap_entry import Attributes
from directory.publisher import LEASE, LdapSettings, LeaseLost, Publisher, RetryPolicy
from store import BalStatus, BalType, Store
from tests.directory.slapd import PUBLISHER_DN, PUBLISHER_PASSWORD, Slapd

HOPITAL = "hopital-test.mssante.fr"
DOCTOR = f"jean.dupont@{HOPITAL}"
CARDIO = f"cardiologie@{HOPITAL}"
SECRET = f"anonyme@{HOPITAL}"


def settings(slapd: Slapd, base: str, *, ldaps: bool = True, **changes: object) -> LdapSettings:
    values: dict[str, object] = {
        "url": slapd.ldaps_url if ldaps else slapd.ldap_url,
        "starttls": not ldaps,
        "base_dn": base,
        "bind_dn": PUBLISHER_DN,
        "bind_password": PUBLISHER_PASSWORD,
        "ca_file": slapd.trust,
        "timeout": 5.0,
    }
    values.update(changes)
    return LdapSettings(**values)  # type: ignore[arg-type]


def publisher(store: Store, slapd: Slapd, base: str, **changes: object) -> Publisher:
    return Publisher(
        store,
        settings(slapd, base, **changes),
        poll_interval=0.2,
        full_interval=3600,
        retry_min=0.3,
        retry_max=0.6,
    )


async def entries(slapd: Slapd, base: str) -> dict[str, dict[str, list[str]]]:
    return await asyncio.to_thread(slapd.entries, base)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def hospital(store: Store) -> None:
    await store.add_domain(HOPITAL)
    await store.create_bal(
        DOCTOR,
        BalType.PER,
        display_name="Dr Jean Dupont",
        national_id="810001234567",
        profession="10",
    )
    await store.create_bal(
        CARDIO,
        BalType.ORG,
        display_name="Secrétariat de cardiologie",
        national_id="1750000001",
        service="Cardiologie",
        description="Prise de rendez-vous",
        rank=2,
    )
    await store.create_bal(SECRET, BalType.PER, display_name="Dr X", liste_rouge=True)


async def states(store: Store) -> dict[str, tuple[str, int, int, bool]]:
    return {
        s.address: (s.state, s.published_revision, s.revision, s.pending)
        for s in await store.publication_states()
    }


async def test_new_bals_are_published_over_ldaps_and_liste_rouge_is_not(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await hospital(store)
    p = publisher(store, slapd, ldap_base)
    try:
        report = await p.publish_due()
    finally:
        await p.close()
    assert (report.added, report.unchanged, report.failed, report.error) == (2, 1, 0, None)
    found = await entries(slapd, ldap_base)
    assert set(found) == {DOCTOR, CARDIO}
    doctor = found[DOCTOR]
    assert doctor["objectClass"] == ["mssBal"]
    assert doctor["mssBalType"] == ["PER"]
    assert doctor["mssPersonId"] == ["810001234567"]
    assert doctor["mssDisplayName"] == ["Dr Jean Dupont"]
    assert doctor["mssListeRouge"] == ["FALSE"]
    assert doctor["mssRank"] == ["1"]
    cardio = found[CARDIO]
    assert cardio["mssStructureId"] == ["1750000001"]
    assert cardio["mssService"] == ["Cardiologie"]
    assert cardio["mssDescription"] == ["Prise de rendez-vous"]
    assert cardio["mssRank"] == ["2"]
    assert await states(store) == {
        DOCTOR: ("published", 1, 1, False),
        CARDIO: ("published", 1, 1, False),
        SECRET: ("unpublished", 1, 1, False),
    }
    (doctor_state,) = await store.publication_states(addresses=[DOCTOR])
    assert doctor_state.dn == f"mail={DOCTOR},{ldap_base}"


async def test_changes_close_and_liste_rouge_on_and_off_over_starttls(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await hospital(store)
    p = publisher(store, slapd, ldap_base, ldaps=False)
    try:
        await p.publish_due()
        # Modify: a new name, the description cleared.
        await store.update_bal(CARDIO, display_name="Cardiologie adultes", description="")
        report = await p.publish_due()
        assert (report.modified, report.changes) == (
            1,
            [(CARDIO, "modified", "mssDescription, mssDisplayName")],
        )
        cardio = (await entries(slapd, ldap_base))[CARDIO]
        assert cardio["mssDisplayName"] == ["Cardiologie adultes"]
        assert "mssDescription" not in cardio

        # Liste rouge on: the entry goes; off: it comes back.
        await store.update_bal(DOCTOR, liste_rouge=True)
        assert (await p.publish_due()).deleted == 1
        assert DOCTOR not in await entries(slapd, ldap_base)
        assert (await states(store))[DOCTOR] == ("unpublished", 2, 2, False)
        await store.update_bal(DOCTOR, liste_rouge=False)
        assert (await p.publish_due()).added == 1
        assert DOCTOR in await entries(slapd, ldap_base)

        # Closed: removed. Suspended: removed too (see directory.publisher: not reachable).
        await store.set_bal_status(CARDIO, BalStatus.CLOSED)
        await store.set_bal_status(DOCTOR, BalStatus.SUSPENDED)
        assert (await p.publish_due()).deleted == 2
        assert await entries(slapd, ldap_base) == {}
        await store.set_bal_status(DOCTOR, BalStatus.ACTIVE)
        assert (await p.publish_due()).added == 1
        assert set(await entries(slapd, ldap_base)) == {DOCTOR}

        # A change that touches nothing published (the placement) costs no LDAP write.
        from store import Placement

        await store.set_placement(DOCTOR, Placement.V1)
        report = await p.publish_due()
        assert (report.unchanged, report.changed) == (1, 0)
        assert (await states(store))[DOCTOR] == ("published", 6, 6, False)
    finally:
        await p.close()


async def test_full_reconciliation_repairs_what_was_changed_behind_our_back(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await hospital(store)
    p = publisher(store, slapd, ldap_base)
    try:
        await p.publish_due()
        with slapd.admin() as admin:
            # A value changed, an attribute added, an entry deleted...
            assert admin.modify(
                f"mail={DOCTOR},{ldap_base}",
                {
                    "mssDisplayName": [("MODIFY_REPLACE", ["Vandalised"])],
                    "mssService": [("MODIFY_ADD", ["Not ours to add"])],
                },
            ), admin.result
            assert admin.delete(f"mail={CARDIO},{ldap_base}"), admin.result
            # ... a liste rouge BAL published, a stray BAL entry, and a foreign entry.
            assert admin.add(
                f"mail={SECRET},{ldap_base}",
                ["mssBal"],
                {"mail": SECRET, "mssBalType": "PER", "mssListeRouge": "FALSE", "mssRank": "1"},
            ), admin.result
            assert admin.add(
                f"mail=stray@{HOPITAL},{ldap_base}",
                ["mssBal"],
                {
                    "mail": f"stray@{HOPITAL}",
                    "mssBalType": "PER",
                    "mssListeRouge": "FALSE",
                    "mssRank": "1",
                },
            ), admin.result
            assert admin.add(
                f"cn=annuaire-admin,{ldap_base}", ["organizationalRole"], {"cn": "annuaire-admin"}
            ), admin.result
        # The incremental pass knows nothing of it (no BAL changed)...
        assert (await p.publish_due()).changed == 0
        # ... the full reconciliation repairs it all and leaves the foreign entry alone.
        report = await p.reconcile_full()
        assert report.error is None
        assert (report.added, report.modified, report.deleted, report.foreign) == (1, 1, 2, 1)
        found = await entries(slapd, ldap_base)
        assert set(found) == {DOCTOR, CARDIO, f"cn=annuaire-admin,{ldap_base}".lower()}
        assert found[DOCTOR]["mssDisplayName"] == ["Dr Jean Dupont"]
        assert "mssService" not in found[DOCTOR]
        assert found[CARDIO]["mssService"] == ["Cardiologie"]
        # Idempotent: a second reconciliation changes nothing, and the states are all settled.
        again = await p.reconcile_full()
        assert (again.changed, again.failed, again.unchanged, again.foreign) == (0, 0, 3, 1)
        assert {s[0] for s in (await states(store)).values()} == {"published", "unpublished"}
        document = await store.load_document("directory-publication", with_content=False)
        assert document is not None
        assert document.meta["last_full"]["modified"] == 0
    finally:
        await p.close()


async def test_a_bal_changed_while_the_directory_is_down_is_published_once_it_is_back(
    store: Store, own_slapd: Slapd
) -> None:
    base = own_slapd.add_branch("colombe")
    await hospital(store)
    p = publisher(store, own_slapd, base)
    await p.start()
    try:

        async def published(address: str, name: str) -> bool:
            found = await entries(own_slapd, base)
            return found.get(address, {}).get("mssDisplayName") == [name]

        await eventually(lambda: published(DOCTOR, "Dr Jean Dupont"))
        own_slapd.stop()
        await store.update_bal(DOCTOR, display_name="Dr Jean Dupont-Martin")

        async def failed() -> bool:
            (state,) = await store.publication_states(addresses=[DOCTOR])
            return state.state == "error"

        await eventually(failed)
        (state,) = await store.publication_states(addresses=[DOCTOR], only_problems=True)
        assert state.pending
        assert state.last_error is not None
        assert "cannot reach localhost" in state.last_error
        assert PUBLISHER_PASSWORD not in state.last_error
        assert (state.published_revision, state.revision) == (1, 2)
        # An outage is backed off by the publisher as a whole, not BAL by BAL: nothing pushes
        # this BAL's retry time away, it goes as soon as the directory is back.
        assert state.attempts == 0
        assert state.next_attempt_at <= datetime.now(UTC)

        own_slapd.start()
        await eventually(lambda: published(DOCTOR, "Dr Jean Dupont-Martin"))

        async def settled() -> bool:
            return (await states(store))[DOCTOR] == ("published", 2, 2, False)

        await eventually(settled)
        (state,) = await store.publication_states(addresses=[DOCTOR])
        assert (state.attempts, state.last_error) == (0, None)
    finally:
        await p.stop()
    # The lease is released on stop: another process may publish at once.
    assert await store.acquire_lease("directory-publisher", "someone-else", p._lease_ttl)


async def test_a_change_in_this_process_is_published_without_waiting_for_the_poll(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await store.add_domain(HOPITAL)
    p = Publisher(
        store, settings(slapd, ldap_base), poll_interval=60, full_interval=3600, retry_min=1
    )
    await p.start()
    try:
        await asyncio.sleep(0.3)  # the first full reconciliation of an empty store
        await store.create_bal(DOCTOR, display_name="Dr Jean Dupont")

        async def there() -> bool:
            return DOCTOR in await entries(slapd, ldap_base)

        await eventually(there, seconds=5)
    finally:
        await p.stop()


async def test_only_the_lease_holder_publishes(store: Store, slapd: Slapd, ldap_base: str) -> None:
    first = publisher(store, slapd, ldap_base)
    second = publisher(store, slapd, ldap_base)
    try:
        assert await first.take_lease()
        assert not await second.take_lease()
    finally:
        await first.close()
        await second.close()


# -- TLS and credentials: fail closed, and say why --------------------------------------------


async def _one_failure(store: Store, p: Publisher) -> str:
    try:
        report = await p.publish_due()
    finally:
        await p.close()
    assert report.error is not None
    assert report.failed == 1
    (state,) = await store.publication_states()
    assert state.state == "error"
    assert state.last_error is not None
    return state.last_error


async def test_a_server_certificate_for_another_name_is_refused(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await store.add_domain(HOPITAL)
    await store.create_bal(DOCTOR, display_name="Dr Jean Dupont")
    # The certificate is for "localhost"; the same server reached as 127.0.0.1 must not pass.
    url = f"ldaps://127.0.0.1:{slapd.ldaps_port}"
    error = await _one_failure(store, publisher(store, slapd, ldap_base, url=url))
    assert "127.0.0.1" in error
    assert DOCTOR not in await entries(slapd, ldap_base)


async def test_a_server_certificate_from_an_untrusted_ca_is_refused_over_starttls(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await store.add_domain(HOPITAL)
    await store.create_bal(DOCTOR, display_name="Dr Jean Dupont")
    # No ca_file: the system's trust store, which does not know the TEST IGC-Santé roots.
    p = publisher(store, slapd, ldap_base, ldaps=False, ca_file=None)
    error = await _one_failure(store, p)
    assert "CERTIFICATE_VERIFY_FAILED" in error
    assert DOCTOR not in await entries(slapd, ldap_base)


async def test_a_wrong_bind_password_is_an_error_that_does_not_show_the_password(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await store.add_domain(HOPITAL)
    await store.create_bal(DOCTOR, display_name="Dr Jean Dupont")
    wrong = "Wrong-password-4d2c"
    error = await _one_failure(store, publisher(store, slapd, ldap_base, bind_password=wrong))
    assert "invalidCredentials" in error
    assert wrong not in error


def test_backoff_doubles_from_retry_min_up_to_retry_max() -> None:
    policy = RetryPolicy(30, 3600)
    assert [policy.delay(n).total_seconds() for n in range(9)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]
    assert policy.delay(10_000).total_seconds() == 3600


# -- only entries of ours, never a mass deletion ------------------------------------------------

OTHER = "clinique-voisine.mssante.fr"  # another operator's domain, in the same branch


def _bal_entry(address: str) -> tuple[list[str], dict[str, str]]:
    return ["mssBal"], {
        "mail": address,
        "mssBalType": "PER",
        "mssListeRouge": "FALSE",
        "mssRank": "1",
    }


def _add_entries(slapd: Slapd, base: str, addresses: list[str]) -> None:
    with slapd.admin() as admin:
        for address in addresses:
            classes, attrs = _bal_entry(address)
            assert admin.add(f"mail={address},{base}", classes, attrs), admin.result


async def test_a_full_reconciliation_of_an_empty_store_deletes_no_foreign_domain_entry(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    others = [f"dr{i}@{OTHER}" for i in range(3)]
    _add_entries(slapd, ldap_base, others)
    p = publisher(store, slapd, ldap_base)
    try:
        report = await p.reconcile_full()
    finally:
        await p.close()
    assert (report.deleted, report.foreign, report.error) == (0, 3, None)
    assert set(await entries(slapd, ldap_base)) == set(others)


async def test_a_full_reconciliation_leaves_entries_of_unhosted_domains_alone(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await hospital(store)
    _add_entries(slapd, ldap_base, [f"dr@{OTHER}", f"stray@{HOPITAL}"])
    with slapd.admin() as admin:
        # An mssBal entry not named mail=<address>: no address to tell whose it is.
        classes, attrs = _bal_entry(f"cn@{HOPITAL}")
        assert admin.add(
            f"mssDisplayName=unnamed,{ldap_base}", classes, {**attrs, "mssDisplayName": "unnamed"}
        ), admin.result
    p = publisher(store, slapd, ldap_base)
    try:
        report = await p.reconcile_full()
    finally:
        await p.close()
    assert (report.added, report.deleted, report.foreign, report.error) == (2, 1, 2, None)
    found = await entries(slapd, ldap_base)
    assert f"stray@{HOPITAL}" not in found
    assert f"dr@{OTHER}" in found
    assert f"cn@{HOPITAL}" in found


async def test_a_full_reconciliation_refuses_a_mass_deletion_unless_allowed(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await hospital(store)
    strays = [f"stray{i}@{HOPITAL}" for i in range(12)]
    p = publisher(store, slapd, ldap_base)
    try:
        await p.publish_due()
        _add_entries(slapd, ldap_base, strays)
        report = await p.reconcile_full()
        assert report.deleted == 0
        assert report.error is not None
        assert "refusing to delete 12 of our 14 entries" in report.error
        assert "--allow-mass-delete" in report.error
        assert set(strays) <= set(await entries(slapd, ldap_base))
        document = await store.load_document("directory-publication", with_content=False)
        assert document is not None
        assert "refusing" in document.meta["last_full"]["error"]

        report = await p.reconcile_full(allow_mass_delete=True)
        assert (report.deleted, report.error) == (12, None)
        assert set(await entries(slapd, ldap_base)) == {DOCTOR, CARDIO}
    finally:
        await p.close()


async def test_a_store_without_bals_deletes_none_of_our_entries_unless_allowed(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await store.add_domain(HOPITAL)
    _add_entries(slapd, ldap_base, [DOCTOR])
    p = publisher(store, slapd, ldap_base)
    try:
        report = await p.reconcile_full()
        assert report.deleted == 0
        assert report.error is not None
        assert "holds no BAL" in report.error
        assert DOCTOR in await entries(slapd, ldap_base)
        report = await p.reconcile_full(allow_mass_delete=True)
        assert (report.deleted, report.error) == (1, None)
    finally:
        await p.close()


async def test_a_foreign_entry_at_our_bals_dn_is_an_error_and_left_alone(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await hospital(store)
    with slapd.admin() as admin:
        for address in (DOCTOR, SECRET):
            assert admin.add(
                f"mail={address},{ldap_base}",
                ["organizationalRole", "extensibleObject"],
                {"mail": address, "cn": "someone else"},
            ), admin.result
    p = publisher(store, slapd, ldap_base)
    try:
        report = await p.publish_due()
        assert (report.added, report.failed) == (1, 2)
        failures = dict(report.errors)
        assert failures[DOCTOR] == (
            f"a foreign entry occupies mail={DOCTOR},{ldap_base} (not objectClass mssBal): "
            "left alone"
        )
        assert "a foreign entry occupies" in failures[SECRET]
        found = await entries(slapd, ldap_base)
        assert found[DOCTOR]["objectClass"] == ["organizationalRole", "extensibleObject"]
        assert found[SECRET]["objectClass"] == ["organizationalRole", "extensibleObject"]
        (state,) = await store.publication_states(addresses=[DOCTOR])
        assert state.state == "error"
        assert state.last_error is not None
        assert "a foreign entry occupies" in state.last_error

        # The full reconciliation leaves them alone too.
        report = await p.reconcile_full()
        assert (report.deleted, report.modified, report.failed) == (0, 0, 2)
        found = await entries(slapd, ldap_base)
        assert found[DOCTOR]["objectClass"] == ["organizationalRole", "extensibleObject"]
        assert found[SECRET]["objectClass"] == ["organizationalRole", "extensibleObject"]
    finally:
        await p.close()


# -- the lease: one publisher at a time ----------------------------------------------------------


def _slow_adds(p: Publisher, seconds: float) -> threading.Event:
    """Every LDAP add of ``p`` takes ``seconds`` longer; the event is set at the first one."""
    started = threading.Event()
    add = p._client.add

    def slow_add(dn: str, attributes: Attributes) -> bool:
        started.set()
        time.sleep(seconds)
        return add(dn, attributes)

    p._client.add = slow_add  # type: ignore[method-assign]
    return started


async def test_the_lease_of_a_live_publisher_is_renewed_past_its_ttl_during_a_long_batch(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await store.add_domain(HOPITAL)
    addresses = [f"dr{i}@{HOPITAL}" for i in range(6)]
    for address in addresses:
        await store.create_bal(address, display_name="Dr X")
    p = Publisher(
        store, settings(slapd, ldap_base), poll_interval=60, full_interval=3600, lease_ttl=1.0
    )
    _slow_adds(p, 0.4)  # one batch of ~2.4 s: more than twice the TTL
    taken_over: list[bool] = []

    async def intruder() -> None:
        while True:
            taken_over.append(await store.acquire_lease(LEASE, "intruder", timedelta(seconds=1)))
            await asyncio.sleep(0.1)

    try:
        assert await p.take_lease()
        watcher = asyncio.create_task(intruder())
        try:
            report = await p.publish_due()
        finally:
            watcher.cancel()
    finally:
        await p.close()
    assert (report.added, report.error) == (6, None)
    assert len(taken_over) > 15
    assert not any(taken_over)


async def test_no_batch_is_published_without_the_lease(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await hospital(store)
    p = publisher(store, slapd, ldap_base)
    try:
        assert await store.acquire_lease(LEASE, "someone-else", timedelta(minutes=5))
        with pytest.raises(LeaseLost):
            await p.publish_due()
        report = await p.reconcile_full()
        assert report.lease_lost
        # The holder's reconciliation state is not overwritten by a process without the lease.
        assert await store.load_document("directory-publication") is None
    finally:
        await p.close()
    assert await entries(slapd, ldap_base) == {}


async def test_a_publisher_that_loses_its_lease_stops_between_ldap_operations(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await store.add_domain(HOPITAL)
    addresses = [f"dr{i}@{HOPITAL}" for i in range(10)]
    for address in addresses:
        await store.create_bal(address, display_name="Dr X")
    p = Publisher(
        store, settings(slapd, ldap_base), poll_interval=60, full_interval=3600, lease_ttl=1.5
    )
    started = _slow_adds(p, 0.3)
    try:
        assert await p.take_lease()
        publishing = asyncio.create_task(p.publish_due())
        await asyncio.to_thread(started.wait, 5)
        # Another process takes over (as if our lease had expired).
        async with store.db.writer.begin() as conn:
            from sqlalchemy import text

            await conn.execute(text("UPDATE leases SET holder = 'other'"))
        with pytest.raises(LeaseLost):
            await publishing
    finally:
        await p.close()
    published = len(await entries(slapd, ldap_base))
    assert 0 < published < len(addresses)
    # What was not published stays pending, without an error of its own.
    pending = [s for s in await store.publication_states() if s.pending]
    assert len(pending) == len(addresses) - published
    assert all(s.state == "pending" for s in pending)
    # The lease is not ours: close() did not release someone else's.
    assert not await store.acquire_lease(LEASE, "third", timedelta(minutes=1))


async def test_close_releases_the_lease_only_after_the_worker_stopped(
    store: Store, slapd: Slapd, ldap_base: str
) -> None:
    await store.add_domain(HOPITAL)
    for i in range(10):
        await store.create_bal(f"dr{i}@{HOPITAL}", display_name="Dr X")
    p = publisher(store, slapd, ldap_base)
    started = _slow_adds(p, 0.3)
    await p.start()
    await asyncio.to_thread(started.wait, 10)
    await p.stop()  # the loop cancelled mid-batch; the worker stops at its next operation
    settled = len(await entries(slapd, ldap_base))
    assert await store.acquire_lease(LEASE, "next", timedelta(minutes=1))
    await asyncio.sleep(1.0)
    # Nothing was written after the lease was released.
    assert len(await entries(slapd, ldap_base)) == settled < 10
