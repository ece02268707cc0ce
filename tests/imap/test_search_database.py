"""SEARCH on flags, dates, sizes and MODSEQ runs in the database, or on the in-memory index:
either must find exactly what the message-by-message matcher finds (RFC 9051 §6.4.4
semantics), on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from imap.model import (
    SearchAnd,
    SearchDateKey,
    SearchFlagKey,
    SearchKey,
    SearchModSeqKey,
    SearchNot,
    SearchNumberKey,
    SearchTextKey,
)
from imap.search import Candidate, Scope, database_filter, matches
from store import Flag, Store

FLAG_KEYS = ["ALL", "SEEN", "UNSEEN", "FLAGGED", "UNFLAGGED", "DELETED", "UNDELETED"]
FLAG_KEYS += ["ANSWERED", "UNANSWERED", "DRAFT", "UNDRAFT"]
START = datetime(2026, 3, 1, tzinfo=UTC)


def random_key(rng: random.Random) -> SearchKey:
    kind = rng.randrange(4)
    if kind == 0:
        return SearchFlagKey(rng.choice(FLAG_KEYS))
    if kind == 1:
        day = (START + timedelta(days=rng.randrange(-1, 12))).date()
        return SearchDateKey(rng.choice(["BEFORE", "ON", "SINCE"]), day)
    if kind == 2:
        return SearchNumberKey(rng.choice(["LARGER", "SMALLER"]), rng.randrange(150, 400))
    return SearchModSeqKey(rng.randrange(1, 40))


async def test_database_search_finds_what_the_matcher_finds(store: Store, doctor: str) -> None:
    rng = random.Random(20261205)
    for i in range(30):
        # Internal dates around midnight UTC, the boundary BEFORE/ON/SINCE turn on.
        offset = rng.choice(
            [timedelta(0), timedelta(minutes=30), timedelta(hours=23, seconds=3599)]
        )
        when = START + timedelta(days=i // 3) + offset
        flags = Flag(rng.randrange(32))
        body = "x" * rng.randrange(0, 250)
        raw = f"Subject: m{i}\r\n\r\n{body}\r\n".encode()
        await store.deliver(doctor, raw, flags=flags, internal_date=when)
    folder = await store.get_folder(doctor, "INBOX")
    infos = await store.list_messages(folder.id)
    uids = [i.uid for i in infos]
    # Some messages change again, so MODSEQs differ from UIDs.
    await store.set_flags(folder.id, uids[::4], flags=Flag.SEEN, mode="add")
    infos = await store.list_messages(folder.id)
    scope = Scope(uids=uids, count=len(uids), saved=(), now=datetime.now(UTC))
    top = (await store.folder(folder.id)).highest_modseq
    indexed = await store.indexed_messages(folder.id, top)
    assert indexed is not None
    for _ in range(150):
        criteria = SearchAnd(tuple(random_key(rng) for _ in range(rng.randrange(1, 4))))
        wanted = database_filter(criteria)
        assert wanted is not None, criteria
        found = [u for u, _ in await store.find_messages(folder.id, wanted)]
        expected = [
            i.uid
            for n, i in enumerate(infos, 1)
            if matches(criteria, Candidate(n, i.uid, i, False), scope)
        ]
        assert found == expected, criteria
        # The same conditions tested on the rows of the in-memory index (IMAP SEARCH's path
        # when the folder is indexed) find the same messages.
        keep = wanted.test()
        assert [i.uid for i in indexed.values() if keep(i)] == expected, criteria


def test_criteria_the_database_cannot_test_are_left_to_the_matcher() -> None:
    assert database_filter(SearchAnd((SearchFlagKey("RECENT"),))) is None
    assert database_filter(SearchAnd((SearchNot(SearchFlagKey("SEEN")),))) is None
    assert database_filter(SearchAnd((SearchTextKey("FROM", "martin"),))) is None
    mixed = SearchAnd((SearchFlagKey("UNSEEN"), SearchTextKey("SUBJECT", "x")))
    assert database_filter(mixed) is None
