"""Publication of our BALs to a real OpenLDAP slapd (started by the tests on 127.0.0.1 with the
shipped schema), over LDAPS and StartTLS with the server certificate verified, on both store
engines: create, modify, close, liste rouge on/off, the directory down and back, and a full
reconciliation repairing what was changed behind our back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from directory.publisher import LdapSettings, Publisher, RetryPolicy
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
            return state.state == "error" and state.attempts >= 1

        await eventually(failed)
        (state,) = await store.publication_states(addresses=[DOCTOR], only_problems=True)
        assert state.pending
        assert state.last_error is not None
        assert "cannot reach localhost" in state.last_error
        assert PUBLISHER_PASSWORD not in state.last_error
        assert (state.published_revision, state.revision) == (1, 2)

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
