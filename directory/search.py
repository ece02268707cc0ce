"""Finding a correspondent: one search over our own BALs and the national address book.

What webmail, API and CLI users type is folded like the stored search keys (accents and case
ignored). ``text``: every word must be the prefix of a word of the name (last name, first name,
organisation or trade name, service). Filters: ``profession`` (each word the prefix of a word of
the profession or specialty label, or the exact profession code), ``city`` (prefix), ``departement``
(exact code: "69", "2A", "974"), ``bal_type`` (PER/ORG/APP/CAB), ``address`` (prefix).

Our BALs are searched live (a change shows at once) and only when publishable (active, not liste
rouge) unless an operator asks for all; the national book gives the rest of France. An address
found in both is shown once, from our BALs; one of ours that must not be shown is hidden from the
national results too (a stale extraction may still list it). Results come ordered by their
folded name then address, at most ``limit`` of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from store import Bal, Store
from store.address_book import MAX_SEARCH_LIMIT, AddressBookEntry, DirectoryQuery
from store.text import search_key, search_words

MAX_QUERY_CHARS: Final = 200
MAX_QUERY_WORDS: Final = 8
DEFAULT_LIMIT: Final = 20
BAL_TYPES: Final = ("PER", "ORG", "APP", "CAB")
_DEPARTEMENT = re.compile(r"^(?:\d{2,3}|2A|2B)$")
_PROFESSION_CODE = re.compile(r"^[0-9A-Za-z]{1,16}$")


class SearchError(ValueError):
    """The query cannot be run as given (the message says which criterion and why)."""


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One correspondent found. ``source``: "local" (one of our BALs) or "national"."""

    address: str
    bal_type: str
    display_name: str
    source: str
    civility: str | None = None
    last_name: str | None = None
    first_name: str | None = None
    organisation: str | None = None
    service: str | None = None
    profession_code: str | None = None
    profession: str | None = None
    specialty: str | None = None
    street: str | None = None
    postal_code: str | None = None
    city: str | None = None
    departement: str | None = None
    person_id: str | None = None
    structure_id: str | None = None
    # False only for our BALs an operator asked to see although unpublishable.
    listed: bool = True


def _text(value: str | None, what: str, limit: int = MAX_QUERY_CHARS) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > limit:
        raise SearchError(f"{what}: longer than {limit} characters")
    return value or None


def build_query(
    text: str | None = None,
    *,
    profession: str | None = None,
    city: str | None = None,
    departement: str | None = None,
    bal_type: str | None = None,
    address: str | None = None,
) -> DirectoryQuery:
    """The folded query; :class:`SearchError` for an unusable criterion or no criterion at all."""
    words = tuple(search_words(_text(text, "text") or ""))
    if len(words) > MAX_QUERY_WORDS:
        raise SearchError(f"text: more than {MAX_QUERY_WORDS} words")
    profession_code = None
    profession_words: tuple[str, ...] = ()
    if (p := _text(profession, "profession")) is not None:
        if p.isdigit() or (_PROFESSION_CODE.match(p) and any(c.isdigit() for c in p)):
            profession_code = p.upper()
        else:
            profession_words = tuple(search_words(p))
            if not profession_words or len(profession_words) > MAX_QUERY_WORDS:
                raise SearchError("profession: give a code or up to 8 words of the label")
    city_key = None
    if (c := _text(city, "city")) is not None:
        city_key = search_key(c) or None
        if city_key is None:
            raise SearchError("city: no letter or digit")
    dep = None
    if (d := _text(departement, "departement", 3)) is not None:
        dep = d.upper()
        if dep.isdigit() and len(dep) == 1:
            dep = "0" + dep
        if not _DEPARTEMENT.match(dep):
            raise SearchError('departement: a code such as "69", "2A" or "974"')
    kind = None
    if (t := _text(bal_type, "type", 3)) is not None:
        kind = t.upper()
        if kind not in BAL_TYPES:
            raise SearchError(f"type: one of {', '.join(BAL_TYPES)}")
    prefix = _text(address, "address", 320)
    query = DirectoryQuery(
        words=words,
        profession_words=profession_words,
        profession_code=profession_code,
        city=city_key,
        departement=dep,
        bal_type=kind,
        address=prefix.lower() if prefix else None,
    )
    if query.empty:
        raise SearchError("give at least one criterion (text, profession, city, ...)")
    return query


def _from_bal(bal: Bal) -> DirectoryEntry:
    return DirectoryEntry(
        address=bal.address,
        bal_type=bal.type.value,
        display_name=bal.display_name or bal.address,
        source="local",
        organisation=bal.description,
        service=bal.service,
        profession_code=bal.profession,
        postal_code=bal.postal_code,
        city=bal.city,
        departement=bal.departement,
        person_id=bal.national_id if bal.type.value in ("PER", "CAB") else None,
        structure_id=bal.national_id if bal.type.value in ("ORG", "APP") else None,
        listed=bal.publishable,
    )


def display_name(entry: AddressBookEntry) -> str:
    """How a national entry is shown: the person, else the organisation and its service."""
    person = " ".join(p for p in (entry.first_name, entry.last_name) if p)
    if person:
        return person
    name = entry.trade_name or entry.organisation or entry.address
    return f"{name} — {entry.service}" if entry.service else name


def _from_national(entry: AddressBookEntry) -> DirectoryEntry:
    return DirectoryEntry(
        address=entry.address,
        bal_type=entry.bal_type,
        display_name=display_name(entry),
        source="national",
        civility=entry.civility,
        last_name=entry.last_name,
        first_name=entry.first_name,
        organisation=entry.organisation or entry.trade_name,
        service=entry.service,
        profession_code=entry.profession_code,
        profession=entry.profession,
        specialty=entry.specialty,
        street=entry.street,
        postal_code=entry.postal_code,
        city=entry.city,
        departement=entry.departement,
        person_id=entry.person_id,
        structure_id=entry.structure_id,
    )


async def search(
    store: Store,
    text: str | None = None,
    *,
    profession: str | None = None,
    city: str | None = None,
    departement: str | None = None,
    bal_type: str | None = None,
    address: str | None = None,
    limit: int = DEFAULT_LIMIT,
    include_unpublishable: bool = False,
    national: bool = True,
) -> list[DirectoryEntry]:
    """Correspondents matching every criterion given, ours first on a shared address.

    ``include_unpublishable``: also our liste rouge, suspended and closed BALs (operators only).
    ``national=False``: our BALs only. Raises :class:`SearchError` for an unusable query.
    """
    if not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise SearchError(f"limit: between 1 and {MAX_SEARCH_LIMIT}")
    query = build_query(
        text,
        profession=profession,
        city=city,
        departement=departement,
        bal_type=bal_type,
        address=address,
    )
    local = await store.search_bals(query, limit=limit, include_unpublishable=include_unpublishable)
    ours = {b.address for b in local}
    # Order of each list is the store's: folded name, then address. One more national entry per
    # local one found, so that dropping the addresses we hold still leaves a full page.
    keyed_local = [
        ((search_key(b.display_name, b.description, b.service), b.address), _from_bal(b))
        for b in local
    ]
    keyed_national: list[tuple[tuple[str, str], DirectoryEntry]] = []
    if national:
        entries = await store.search_address_book(
            query, limit=limit + len(local), hide_unlisted_local=not include_unpublishable
        )
        keyed_national = [
            ((e.name_key, e.address), _from_national(e)) for e in entries if e.address not in ours
        ]
    # Sorted here again: bals.name_key is ordered by the database's collation on PostgreSQL.
    merged = sorted(keyed_local + keyed_national, key=lambda item: item[0])
    return [entry for _, entry in merged][:limit]
