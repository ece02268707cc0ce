"""One search over our BALs and the national address book: listeRouge honoured, ours wins on a
shared address, filters, order and limit; and the ``colombe directory`` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from directory.extraction import import_extraction
from directory.search import SearchError, build_query, search
from store import BalStatus, BalType, Store
from store.address_book import AddressBookStore, DirectoryQuery, _Plan
from store.schema import address_book
from tests.colombe.processes import refused, run
from tests.conftest import StoreLocation
from tests.directory.extraction_gen import HEADER, write_extraction

DOMAIN = "hopital-test.mssante.fr"


def _line(address: str, last: str, first: str, city: str = "69003 LYON", dep: str = "69") -> str:
    fields = [""] * 31
    fields[0], fields[1], fields[9], fields[10] = "PER", address, last, first
    fields[13], fields[14], fields[16] = "10", "Médecin", "Cardiologie et maladies vasculaires"
    fields[27], fields[29] = city, dep
    return "|".join(fields)


NATIONAL = [
    _line(f"jean.dupont@{DOMAIN}", "DUPONT", "Jean (national)"),
    _line(f"rouge@{DOMAIN}", "DUPONT", "Rouge"),
    _line("anne.dupont@medecin.mssante.fr", "DUPONT", "Anne", "20000 AJACCIO", "2A"),
    _line("zoe.dupont@medecin.mssante.fr", "DUPONT", "Zoé", "42000 SAINT-ÉTIENNE", "42"),
    _line("marc.durand@medecin.mssante.fr", "DURAND", "Marc"),
]


async def _populate(store: Store, tmp_path: Path) -> None:
    await store.add_domain(DOMAIN)
    await store.create_bal(
        f"jean.dupont@{DOMAIN}",
        display_name="Jean Dupont",
        profession="10",
        city="Lyon",
        postal_code="69003",
    )
    await store.create_bal(f"rouge@{DOMAIN}", display_name="Rouge Dupont", liste_rouge=True)
    await store.create_bal(f"parti@{DOMAIN}", display_name="Parti Dupont")
    await store.set_bal_status(f"parti@{DOMAIN}", BalStatus.CLOSED)
    await store.create_bal(
        f"secretariat@{DOMAIN}",
        BalType.ORG,
        display_name="Secrétariat",
        service="Cardiologie Dupont",
        postal_code="20200",
        city="Bastia",
    )
    path = tmp_path / "extraction.txt"
    path.write_text("\n".join([HEADER, *NATIONAL]) + "\n", encoding="utf-8")
    await import_extraction(store, str(path), holder="test")


async def test_ours_win_liste_rouge_and_closed_are_hidden_unless_asked(
    store: Store, tmp_path: Path
) -> None:
    await _populate(store, tmp_path)
    found = await search(store, "dupont", limit=50)
    by_address = {e.address: e for e in found}
    # Once each; ours (live data) rather than the national copy.
    assert len(found) == len(by_address)
    assert by_address[f"jean.dupont@{DOMAIN}"].source == "local"
    assert by_address[f"jean.dupont@{DOMAIN}"].display_name == "Jean Dupont"
    assert by_address["anne.dupont@medecin.mssante.fr"].source == "national"
    # Liste rouge: hidden, even though a stale extraction still lists it. Closed: hidden.
    assert f"rouge@{DOMAIN}" not in by_address
    assert f"parti@{DOMAIN}" not in by_address
    assert set(by_address) == {
        f"jean.dupont@{DOMAIN}",
        f"secretariat@{DOMAIN}",
        "anne.dupont@medecin.mssante.fr",
        "zoe.dupont@medecin.mssante.fr",
    }
    # Stable order: by folded name, then address; the limit cuts that order.
    assert found == await search(store, "DUPONT", limit=50)
    assert await search(store, "dupont", limit=2) == found[:2]

    everything = await search(store, "dupont", limit=50, include_unpublishable=True)
    unlisted = {e.address for e in everything if not e.listed}
    assert unlisted == {f"rouge@{DOMAIN}", f"parti@{DOMAIN}"}
    local_only = await search(store, "dupont", national=False)
    assert {e.source for e in local_only} == {"local"}


async def test_filters(store: Store, tmp_path: Path) -> None:
    await _populate(store, tmp_path)

    async def addresses(*args: str, **kwargs: str) -> set[str]:
        return {e.address for e in await search(store, *args, limit=50, **kwargs)}

    assert await addresses("dup", departement="2a") == {"anne.dupont@medecin.mssante.fr"}
    assert await addresses(departement="2B") == {f"secretariat@{DOMAIN}"}
    assert await addresses("dupont", city="saint etienne") == {"zoe.dupont@medecin.mssante.fr"}
    assert await addresses("zoe", city="ST") == set()
    assert await addresses(city="bast") == {f"secretariat@{DOMAIN}"}
    assert await addresses("dupont", profession="cardio", city="ajaccio") == {
        "anne.dupont@medecin.mssante.fr"
    }
    assert f"jean.dupont@{DOMAIN}" in await addresses(profession="10", city="lyon")
    assert await addresses("marc", profession="pharma") == set()
    assert await addresses(bal_type="ORG") == {f"secretariat@{DOMAIN}"}
    assert await addresses(address="anne.") == {"anne.dupont@medecin.mssante.fr"}
    assert await addresses("cardiologie", bal_type="org") == {f"secretariat@{DOMAIN}"}
    # Prefix of a word, not a substring.
    assert await addresses("upont") == set()
    for bad in ({"departement": "7X"}, {"departement": "ABC"}, {"bal_type": "XYZ"}, {}):
        with pytest.raises(SearchError):
            await search(store, **bad)


def _matches(row: Any, q: DirectoryQuery) -> bool:
    """What a search means, in Python, for an address_book row."""
    name, profession = f" {row.name_key}", f" {row.profession_key}"
    if not all(f" {w}" in name for w in q.words):
        return False
    if q.profession_words or q.profession_code:
        by_code = q.profession_code is not None and row.profession_code == q.profession_code
        by_words = bool(q.profession_words) and all(
            f" {w}" in profession for w in q.profession_words
        )
        if not (by_code or by_words):
            return False
    return (
        (not q.city or row.city_key.startswith(q.city))
        and (not q.departement or row.departement == q.departement)
        and (not q.bal_type or row.bal_type == q.bal_type)
        and (not q.address or row.address.startswith(q.address))
    )


async def test_every_plan_finds_the_same_page(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever index a search starts from, the same entries in the same order; an entry two of
    whose words start with the query word comes once."""
    path = tmp_path / "extraction.txt"
    write_extraction(path, 1500, seed=7, quirks=False)
    with path.open("a", encoding="utf-8") as out:
        out.write(_line("martin.martine@medecin.mssante.fr", "MARTIN", "Martine") + "\n")
    await import_extraction(store, str(path), holder="test")
    async with store.db.reader.connect() as conn:
        rows = sorted(
            (await conn.execute(select(address_book))).all(), key=lambda r: (r.name_key, r.address)
        )
    chosen: list[_Plan] = []
    original = AddressBookStore._choose_plan

    async def forced(self: Any, *args: Any) -> _Plan:
        return chosen[0] if chosen else await original(self, *args)

    monkeypatch.setattr(AddressBookStore, "_choose_plan", forced)
    queries = [
        {"text": "mar"},
        {"text": "martin mar"},
        {"text": "herriot"},
        {"text": "gar", "city": "lyo"},
        {"text": "du", "departement": "69", "profession": "cardio"},
        {"departement": "2A", "bal_type": "ORG"},
        {"city": "saint", "profession": "10"},
        {"address": "ma", "text": "m"},
        {"text": "zzyzx", "city": "paris"},
    ]
    for kwargs in queries:
        q = build_query(**kwargs)
        expected = [r.address for r in rows if _matches(r, q)]
        plans = [_Plan("name"), *(_Plan("word", w) for w in q.words)]
        plans += [_Plan(k) for k in ("city", "departement", "address") if getattr(q, k)]
        for limit in (3, 50):
            for plan in [None, *plans]:
                chosen[:] = [plan] if plan else []
                found = await store.search_address_book(q, limit=limit)
                assert [e.address for e in found] == expected[:limit], (kwargs, plan, limit)


def _site(tmp_path: Path, location: StoreLocation) -> Path:
    run(
        "init",
        "--dir",
        str(tmp_path / "site"),
        "--database-url",
        location.url,
        "--blob-dir",
        str(location.blob_dir),
        cwd=tmp_path,
    )
    return tmp_path / "site" / "colombe.toml"


def test_cli_imports_an_extraction_and_searches(
    store_location: StoreLocation, tmp_path: Path
) -> None:
    config = _site(tmp_path, store_location)
    path = tmp_path / "extraction.txt"
    path.write_text(
        "\n".join([HEADER, *NATIONAL, "PER|broken", NATIONAL[0]]) + "\n", encoding="utf-8"
    )
    done = run("--config", str(config), "directory", "import-extraction", str(path), cwd=tmp_path)
    assert done.stdout.startswith("imported 5 entries from extraction.txt in ")
    assert "1 bad lines, 1 duplicates" in done.stdout
    assert "  line 7: expected 31 fields, found 2\n" in done.stdout
    assert "duplicate addresses (first line kept) on lines 8" in done.stdout
    assert "DUPONT" not in done.stdout + done.stderr  # no content in the report

    done = run(
        "--config", str(config), "directory", "search", "dupont", "--departement", "2A", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    [entry] = json.loads(done.stdout)
    assert entry["address"] == "anne.dupont@medecin.mssante.fr"
    assert entry["source"] == "national"
    assert entry["city"] == "AJACCIO"
    table = run("--config", str(config), "directory", "search", "zoé", cwd=tmp_path).stdout
    assert table.splitlines()[0].split() == [
        "ADDRESS", "TYPE", "NAME", "PROFESSION", "CITY", "DEP", "SOURCE",
    ]  # fmt: skip
    assert "zoe.dupont@medecin.mssante.fr" in table.splitlines()[2]

    bad = tmp_path / "bad.txt"
    bad.write_text("Nom|Prénom\nDUPONT|Jean\n", encoding="utf-8")
    message = refused(
        "--config", str(config), "directory", "import-extraction", str(bad), cwd=tmp_path
    )
    assert message.startswith("Error: extraction not imported: not an MSSanté extraction")
    message = refused("--config", str(config), "directory", "search", cwd=tmp_path)
    assert message == "Error: give at least one criterion (text, profession, city, ...)"
    # The refused file left the book as it was.
    again = run("--config", str(config), "directory", "search", "zoe", "--json", cwd=tmp_path)
    assert len(json.loads(again.stdout)) == 1
