"""Import of the ANS MSSanté extraction into the national address book, on both engines."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from directory.extraction import (
    KEPT_PROBLEMS,
    ExtractionRefused,
    ExtractionUnavailable,
    ImportBusy,
    import_extraction,
)
from directory.search import search
from store import Store
from tests.directory.extraction_gen import HEADER, PLANTED, write_extraction


async def test_100000_line_file_with_quirks_is_imported_searchable_and_bad_lines_reported(
    store: Store, tmp_path: Path
) -> None:
    info = write_extraction(tmp_path / "extraction.txt", 100_000, seed=7)
    assert info.bad
    assert info.duplicates
    assert info.blank

    report = await import_extraction(store, str(tmp_path / "extraction.txt"), holder="test")

    assert report.entries == info.entries
    assert report.bad_lines == len(info.bad)
    assert report.duplicates == len(info.duplicates)
    assert report.lines == info.lines
    # Reported by line number, in order, the first KEPT_PROBLEMS of them; never the content.
    assert [n for n, _ in report.bad_line_samples] == sorted(info.bad)[:KEPT_PROBLEMS]
    assert report.duplicate_samples == info.duplicates[:KEPT_PROBLEMS]
    problems = dict(report.bad_line_samples)
    for line, kind in info.bad.items():
        if line in problems:
            expected = {
                "missing columns": "expected 31 fields",
                "extra column": "expected 31 fields",
                "invalid address": "address",
                "unknown type": "BAL type",
                "not UTF-8": "not UTF-8",
                "too long": "longer than",
            }[kind]
            assert expected in problems[line], (line, kind, problems[line])
            assert "@" not in problems[line]

    current = await store.current_address_book()
    assert current is not None
    assert (current.entries, current.bad_lines, current.duplicates) == (
        info.entries,
        len(info.bad),
        len(info.duplicates),
    )
    assert await store.address_book_size() == info.entries

    # Non-ASCII names are found without their accents, by any word of the name.
    eloise = await search(store, "eloise lefevre coeur")
    assert [e.address for e in eloise] == [PLANTED[0][7]]
    assert eloise[0].last_name == "LEFÈVRE-CŒUR"
    assert eloise[0].departement == "2A"
    assert eloise[0].city == "AJACCIO"
    assert eloise[0].postal_code == "20000"
    assert eloise[0].person_id is not None
    assert eloise[0].person_id.startswith("8")
    assert [e.address for e in await search(store, "LEFÈVRE-CŒUR", departement="2a")] == [
        PLANTED[0][7]
    ]
    # A word inside an organisation's name, and a service.
    herriot = await search(store, "herriot cardio", bal_type="ORG", city="lyon")
    assert PLANTED[1][7] in [e.address for e in herriot]
    fontaine = await search(store, "fontaine jean pierre", city="Lyon", limit=100)
    assert PLANTED[2][7] in [e.address for e in fontaine]
    assert {(e.last_name, e.first_name, e.city) for e in fontaine} == {
        ("DE LA FONTAINE", "Jean-Pierre", "LYON"),
        ("FONTAINE", "Jean-Pierre", "LYON"),
    }
    assert [e.address for e in await search(store, address="therese.nguyen@")] == [PLANTED[3][7]]
    # Filters agree with the generator's counts.
    in_2b = await search(store, departement="2B", limit=1000)
    assert len(in_2b) == min(1000, info.by_departement["2B"])
    assert all(e.departement == "2B" and e.city == "BASTIA" for e in in_2b)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _line(address: str, last: str = "DUPONT", first: str = "Jean", dep: str = "69") -> str:
    fields = [""] * 31
    fields[0], fields[1], fields[9], fields[10] = "PER", address, last, first
    fields[13], fields[14], fields[17] = "10", "Médecin", "True"
    fields[27], fields[28], fields[29] = "69003 LYON", "69003", dep
    return "|".join(fields)


async def test_header_without_the_bal_columns_is_refused_and_the_book_kept(
    store: Store, tmp_path: Path
) -> None:
    good = _write(tmp_path / "good.txt", [HEADER, _line("a@medecin.mssante.fr")])
    await import_extraction(store, str(good), holder="test")
    before = await store.current_address_book()

    bad = _write(tmp_path / "bad.txt", ["Nom|Prénom|Ville", "DUPONT|Jean|Lyon"])
    with pytest.raises(ExtractionRefused, match='lacks "Type de BAL" or "Adresse BAL"'):
        await import_extraction(store, str(bad), holder="test")
    with pytest.raises(ExtractionUnavailable):
        await import_extraction(store, str(tmp_path / "missing.txt"), holder="test")

    assert await store.current_address_book() == before
    assert [e.address for e in await search(store, "dupont")] == ["a@medecin.mssante.fr"]
    failed = (await store.address_book_imports())[0]
    assert failed.status == "failed"
    assert failed.detail is not None


async def test_columns_are_found_by_name_whatever_the_case_accents_and_suffix(
    store: Store, tmp_path: Path
) -> None:
    names = HEADER.replace(" structure BAL", "").upper().replace("É", "E").split("|")
    # Reordered columns: found by name, not position.
    order = list(range(31))
    order[0], order[1] = 1, 0
    header = "|".join(names[i] for i in order)
    fields = _line("b@medecin.mssante.fr", last="LÉA-ÖZTÜRK", dep="2A").split("|")
    path = _write(tmp_path / "e.txt", [header, "|".join(fields[i] for i in order)])
    report = await import_extraction(store, str(path), holder="test")
    assert (report.entries, report.bad_lines) == (1, 0)
    [entry] = await search(store, "ozturk")
    assert (entry.address, entry.departement, entry.city) == ("b@medecin.mssante.fr", "2A", "LYON")


async def test_a_new_import_replaces_the_book_and_a_shrinking_one_needs_force(
    store: Store, tmp_path: Path
) -> None:
    first = _write(
        tmp_path / "1.txt", [HEADER] + [_line(f"old{i}@medecin.mssante.fr") for i in range(10)]
    )
    await import_extraction(store, str(first), holder="test")
    second = _write(
        tmp_path / "2.txt", [HEADER] + [_line(f"new{i}@medecin.mssante.fr") for i in range(8)]
    )
    await import_extraction(store, str(second), holder="test")
    found = {e.address for e in await search(store, "dupont", limit=100)}
    assert found == {f"new{i}@medecin.mssante.fr" for i in range(8)}

    small = _write(tmp_path / "3.txt", [HEADER, _line("only@medecin.mssante.fr")])
    with pytest.raises(ExtractionRefused, match="probably truncated"):
        await import_extraction(store, str(small), holder="test")
    assert len(await search(store, "dupont", limit=100)) == 8
    await import_extraction(store, str(small), holder="test", force=True)
    assert [e.address for e in await search(store, "dupont")] == ["only@medecin.mssante.fr"]
    # Older generations are gone from the table, not only hidden.
    assert await store.address_book_size() == 1


async def test_another_import_in_progress_is_refused(store: Store, tmp_path: Path) -> None:
    path = _write(tmp_path / "e.txt", [HEADER, _line("a@medecin.mssante.fr")])
    from datetime import timedelta

    assert await store.acquire_lease("addressbook-import", "other-process", timedelta(minutes=5))
    with pytest.raises(ImportBusy):
        await import_extraction(store, str(path), holder="test")
    await store.release_lease("addressbook-import", "other-process")
    await import_extraction(store, str(path), holder="test")


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """Serves tmp_path on 127.0.0.1; yields the base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_zip_over_http_is_imported(store: Store, tmp_path: Path, http_server: str) -> None:
    info = write_extraction(tmp_path / "extraction.zip", 3000, seed=3, as_zip=True)
    report = await import_extraction(store, f"{http_server}/extraction.zip", holder="test")
    assert report.name.startswith("Extraction_Correspondance_MSSante_")
    assert (report.entries, report.bad_lines, report.duplicates) == (
        info.entries,
        len(info.bad),
        len(info.duplicates),
    )
    assert PLANTED[3][7] in [e.address for e in await search(store, "therese nguyen")]
    with pytest.raises(ExtractionUnavailable, match="HTTP 404"):
        await import_extraction(store, f"{http_server}/nothing.zip", holder="test")


async def test_a_file_of_mostly_bad_lines_is_refused(store: Store, tmp_path: Path) -> None:
    lines = [HEADER] + [_line(f"x{i}@medecin.mssante.fr") for i in range(10)] + ["PER|bad"] * 20
    with pytest.raises(ExtractionRefused, match="20 bad lines out of 30"):
        await import_extraction(store, str(_write(tmp_path / "e.txt", lines)), holder="test")
    assert await store.current_address_book() is None
    assert await store.address_book_size((await store.address_book_imports())[0].id) == 0


async def test_serve_component_imports_at_start_and_survives_an_unreachable_source(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from colombe.addressbook import AddressBookImporter
    from colombe.config import Config, DirectorySection

    def component(url: str, interval: int = 3600) -> AddressBookImporter | None:
        config = Config(directory=DirectorySection(extraction_url=url, import_interval=interval))
        return AddressBookImporter.from_config(config, store)

    assert component("", 3600) is None
    assert component("file:///x.txt", 0) is None

    # Unreachable: logged once as one line, serve goes on, nothing imported.
    down = component("http://127.0.0.1:9/extraction.zip")
    assert down is not None
    await down.start()
    for _ in range(100):
        if any("not imported" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    await down.stop()
    failures = [r for r in caplog.records if "not imported" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is None
    assert await store.current_address_book() is None

    path = _write(tmp_path / "e.txt", [HEADER, _line("a@medecin.mssante.fr")])
    up = component(path.as_uri())
    assert up is not None
    await up.start()
    for _ in range(200):
        if await store.current_address_book() is not None:
            break
        await asyncio.sleep(0.05)
    await up.stop()
    current = await store.current_address_book()
    assert current is not None
    assert current.entries == 1
    # The lease is released once the import is over.
    from datetime import timedelta

    assert await store.acquire_lease("addressbook-import", "someone-else", timedelta(seconds=5))
