"""Untagged updates about the selected mailbox (RFC 9051 §5.2, §7.5.1, §7.4.1): what other
sessions and deliveries change reaches the client, EXPUNGE only when sequence numbers may
shift, and IDLE (RFC 2177, RFC 9051 §6.3.13)."""

from __future__ import annotations

import asyncio
import time

from store.model import Flag
from tests.imap.conftest import DOCTOR, Imap, message


async def two_sessions(imap: Imap, n: int = 3):  # type: ignore[no-untyped-def]
    for i in range(1, n + 1):
        await imap.deliver(message(f"message {i}"))
    return await imap.connect(select="INBOX"), await imap.connect(select="INBOX")


async def test_delivery_shows_as_exists_and_recent_on_noop(imap: Imap) -> None:
    a, _ = await two_sessions(imap, 1)
    await imap.deliver(message("nouveau"))
    assert await a.command("NOOP") == [
        b"* 2 EXISTS\r\n",
        b"* 1 RECENT\r\n",
        b"a3 OK NOOP completed\r\n",
    ]
    assert await a.command("FETCH 2 (UID FLAGS)") == [
        b"* 2 FETCH (UID 2 FLAGS (\\Recent))\r\n",
        b"a4 OK FETCH completed\r\n",
    ]
    assert await a.command("NOOP") == [b"a5 OK NOOP completed\r\n"]


async def test_other_session_store_shows_as_fetch_flags(imap: Imap) -> None:
    a, b = await two_sessions(imap)
    await b.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
    assert await a.command("NOOP") == [
        b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n",
        b"a3 OK NOOP completed\r\n",
    ]
    # a session is not told again about its own changes
    assert await b.command("NOOP") == [b"a4 OK NOOP completed\r\n"]
    # a change made outside IMAP (webmail, API LPS: the store directly) reaches the session too
    folder = await imap.store.get_folder(DOCTOR, "INBOX")
    await imap.store.set_flags(folder.id, [1], flags=Flag.ANSWERED, mode="add")
    await asyncio.sleep(0)
    assert await a.command("NOOP") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Answered))\r\n",
        b"a4 OK NOOP completed\r\n",
    ]


async def test_other_session_expunge_shows_as_expunge_on_noop(imap: Imap) -> None:
    a, b = await two_sessions(imap)
    await b.ok("STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    await b.ok("EXPUNGE")
    lines = await a.command("NOOP")
    assert lines == [b"* 1 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n", b"a3 OK NOOP completed\r\n"]
    assert await a.command("FETCH 1:* (UID)") == [
        b"* 1 FETCH (UID 2)\r\n",
        b"a4 OK FETCH completed\r\n",
    ]


async def test_expunge_not_sent_during_fetch_store_search_but_after(imap: Imap) -> None:
    a, b = await two_sessions(imap)
    await b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await b.ok("EXPUNGE")
    await imap.deliver(message("nouveau"))
    # RFC 9051 §7.5.1: message 1 keeps its number through FETCH, STORE and SEARCH
    assert await a.command("FETCH 3 (UID)") == [
        b"* 3 FETCH (UID 3)\r\n",
        b"* 4 EXISTS\r\n",
        b"* 1 RECENT\r\n",
        b"a3 OK FETCH completed\r\n",
    ]
    assert await a.command("STORE 2 +FLAGS (\\Flagged)") == [
        b"* 2 FETCH (FLAGS (\\Flagged))\r\n",
        b"a4 OK STORE completed\r\n",
    ]
    assert await a.command("SEARCH FLAGGED") == [b"* SEARCH 2\r\n", b"a5 OK SEARCH completed\r\n"]
    assert await a.command("NOOP") == [b"* 1 EXPUNGE\r\n", b"a6 OK NOOP completed\r\n"]
    assert await a.command("SEARCH FLAGGED") == [b"* SEARCH 1\r\n", b"a7 OK SEARCH completed\r\n"]


async def test_expunge_sent_after_uid_commands(imap: Imap) -> None:
    a, b = await two_sessions(imap)
    await b.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    await b.ok("EXPUNGE")
    assert await a.command("UID FETCH 3 (FLAGS)") == [
        b"* 3 FETCH (UID 3 FLAGS ())\r\n",
        b"* 2 EXPUNGE\r\n",
        b"a3 OK FETCH completed\r\n",
    ]


async def test_fetch_of_message_expunged_elsewhere_is_expungeissued(imap: Imap) -> None:
    a, b = await two_sessions(imap)
    await b.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    await b.ok("EXPUNGE")
    # RFC 9051 §7.1: the rest is returned, the command fails with EXPUNGEISSUED
    assert await a.command("FETCH 1:3 (UID)") == [
        b"* 1 FETCH (UID 1)\r\n",
        b"* 3 FETCH (UID 3)\r\n",
        b"a3 NO [EXPUNGEISSUED] Some messages were expunged meanwhile\r\n",
    ]
    # by UID a vanished message is simply not there
    assert await a.command("UID FETCH 1:3 (UID)") == [
        b"* 1 FETCH (UID 1)\r\n",
        b"* 3 FETCH (UID 3)\r\n",
        b"* 2 EXPUNGE\r\n",
        b"a4 OK FETCH completed\r\n",
    ]


async def test_idle_reports_delivery_within_a_second_and_done_ends_it(imap: Imap) -> None:
    a, b = await two_sessions(imap, 1)
    tag = a.next_tag()
    a.send(f"{tag} IDLE\r\n")
    assert await a.line() == b"+ idling\r\n"
    start = time.monotonic()
    await imap.deliver(message("pendant IDLE"))
    assert await a.line(timeout=1) == b"* 2 EXISTS\r\n"
    assert await a.line(timeout=1) == b"* 1 RECENT\r\n"
    assert time.monotonic() - start < 1
    await b.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    assert await a.line(timeout=1) == b"* 1 FETCH (UID 1 FLAGS (\\Flagged))\r\n"
    await b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await b.ok("EXPUNGE")
    lines = [await a.line(timeout=1)]
    if lines[0].endswith(b"FETCH (UID 1 FLAGS (\\Flagged \\Deleted))\r\n"):
        lines = [await a.line(timeout=1)]
    assert lines == [b"* 1 EXPUNGE\r\n"]
    a.send(b"DONE\r\n")
    assert await a.until(tag) == [f"{tag} OK IDLE terminated\r\n".encode()]
    assert await a.command("NOOP") == [f"a{a.counter} OK NOOP completed\r\n".encode()]


async def test_idle_unselected_bad_continuation_and_pipelined_done(imap: Imap) -> None:
    c = await imap.connect()
    c.send(b"a2 IDLE\r\n")
    assert await c.line() == b"+ idling\r\n"
    c.send(b"NOT-DONE\r\n")
    assert await c.until("a2") == [b"a2 BAD Expected DONE\r\n"]
    c.counter = 2
    assert await c.command("NOOP") == [b"a3 OK NOOP completed\r\n"]
    c = await imap.connect(select="INBOX")
    c.counter = 3
    c.send(b"a3 IDLE\r\nDONE\r\na4 NOOP\r\n")
    assert await c.until("a4") == [
        b"+ idling\r\n",
        b"a3 OK IDLE terminated\r\n",
        b"a4 OK NOOP completed\r\n",
    ]
