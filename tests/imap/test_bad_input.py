"""Malformed, oversized and hostile input: the server answers BAD (or BYE), never hangs, never
buffers without bound, and stays usable."""

from __future__ import annotations

import asyncio

import pytest

from imap.server import Limits
from tests.imap.conftest import DOCTOR, Imap, make_limits, message

LIMIT = 100_000


@pytest.fixture
def imap_limits() -> Limits:
    return make_limits(max_message_size=LIMIT, max_errors=8)


async def test_unbalanced_parentheses_is_bad(imap: Imap) -> None:
    await imap.deliver(message())
    c = await imap.connect(select="INBOX")
    for command, text in (
        ("FETCH 1 (FLAGS", b"unbalanced parentheses"),
        ("FETCH 1 FLAGS)", b"unexpected characters at end of command"),
        ("SEARCH (OR SEEN DRAFT", b"unbalanced parentheses"),
        ("STORE 1 +FLAGS (\\Seen", b"unbalanced parentheses"),
    ):
        assert await c.command(command) == [b"a%d BAD %s\r\n" % (c.counter, text)]
    assert await c.command("NOOP") == [b"a7 OK NOOP completed\r\n"]


async def test_unknown_command_and_garbage_are_bad(imap: Imap) -> None:
    c = await imap.connect(None)
    assert await c.command("XYZZY foo") == [b"a1 BAD Unknown command XYZZY\r\n"]
    assert await c.command("NOOP") == [b"a2 OK NOOP completed\r\n"]
    c = await imap.connect(None)
    c.send(b"*\r\n")
    line = await c.line()
    assert line.startswith(b"* BAD "), line
    assert await c.command("NOOP") == [b"a1 OK NOOP completed\r\n"]
    c = await imap.connect(None)
    c.send(b"\x00\xff\xfe garbage\r\n")
    line = await c.line()
    assert line.startswith(b"* BAD "), line
    assert await c.command("NOOP") == [b"a1 OK NOOP completed\r\n"]


async def test_invalid_sequence_sets_and_numbers_beyond_exists_are_bad(imap: Imap) -> None:
    await imap.deliver(message("un"))
    await imap.deliver(message("deux"))
    c = await imap.connect(select="INBOX")
    for command, text in (
        ("FETCH 0 FLAGS", b"invalid sequence number in sequence set"),
        ("FETCH 1:x FLAGS", b"invalid sequence set"),
        ("FETCH 1,,2 FLAGS", b"invalid sequence set"),
        ("FETCH -1 FLAGS", b"expected a sequence set"),
    ):
        assert await c.command(command) == [b"a%d BAD %s\r\n" % (c.counter, text)]
    assert await c.command("FETCH 1 (BODY[]<0.0>)") == [b"a7 BAD number must not be zero\r\n"]
    c = await imap.connect(select="INBOX")
    assert await c.command("FETCH 3 FLAGS") == [b"a3 BAD Invalid message sequence number 3\r\n"]
    assert await c.command("STORE 1:5 +FLAGS (\\Seen)") == [
        b"a4 BAD Invalid message sequence number 5\r\n"
    ]
    assert await c.command("COPY 4 Trash") == [b"a5 BAD Invalid message sequence number 4\r\n"]
    # "*" and UIDs beyond the mailbox are fine
    assert (await c.command("FETCH 2:* (UID)"))[-1] == b"a6 OK FETCH completed\r\n"
    assert await c.command("UID FETCH 9 (UID)") == [b"a7 OK FETCH completed\r\n"]
    # the failed STORE changed nothing
    assert await c.command("FETCH 1:2 FLAGS") == [
        b"* 1 FETCH (FLAGS ())\r\n",
        b"* 2 FETCH (FLAGS ())\r\n",
        b"a8 OK FETCH completed\r\n",
    ]


async def test_literal_over_limit_is_toobig_and_never_read(imap: Imap) -> None:
    c = await imap.connect()
    c.send(b"a2 APPEND INBOX {%d}\r\n" % (LIMIT + 1))
    line = await c.line()
    assert line.startswith(b"a2 BAD [TOOBIG] "), line
    c.counter = 2
    assert await c.command("NOOP") == [b"a3 OK NOOP completed\r\n"]
    # before login a literal can only be a credential: 8 KiB at most
    d = await imap.connect(None)
    d.send(b"a1 LOGIN {9000}\r\n")
    line = await d.line()
    assert line.startswith(b"a1 BAD [TOOBIG] "), line
    c = await imap.connect()
    data = b"x" * (LIMIT + 10)
    c.send(b"a2 APPEND INBOX {%d+}\r\n%s\r\n" % (len(data), data))
    line = await c.line()
    assert line.startswith(b"a2 BAD [TOOBIG] "), line
    c.counter = 2
    assert await c.command("NOOP") == [b"a3 OK NOOP completed\r\n"]
    assert (await c.command("STATUS INBOX (MESSAGES)"))[0] == b"* STATUS INBOX (MESSAGES 0)\r\n"


async def test_ten_megabyte_command_line_is_bad_and_connection_survives(imap: Imap) -> None:
    c = await imap.connect()
    c.send(b"a2 NOOP " + b"x" * (10 * 1024 * 1024) + b"\r\n")
    line = await c.line(timeout=20)
    assert line == b"a2 BAD [TOOBIG] line too long (limit 8192 octets)\r\n"
    c.counter = 2
    assert await c.command("NOOP", timeout=20) == [b"a3 OK NOOP completed\r\n"]


async def test_client_vanishing_mid_literal_stores_nothing(imap: Imap) -> None:
    c = await imap.connect()
    c.send(b"a2 APPEND INBOX {1000+}\r\n" + b"x" * 500)
    await c.writer.drain()
    await c.close()
    for _ in range(100):
        if imap.server_tls.session_count == 0:
            break
        await asyncio.sleep(0.02)
    assert imap.server_tls.session_count == 0
    d = await imap.connect()
    assert (await d.command("STATUS INBOX (MESSAGES)"))[0] == b"* STATUS INBOX (MESSAGES 0)\r\n"
    folder = await imap.store.get_folder(DOCTOR, "INBOX")
    assert await imap.store.uids(folder.id) == []


async def test_too_many_errors_is_bye(imap: Imap) -> None:
    c = await imap.connect(None)
    for i in range(1, 8):
        assert await c.command("BOGUS") == [b"a%d BAD Unknown command BOGUS\r\n" % i]
    c.send(b"a8 BOGUS\r\n")
    assert await c.line() == b"a8 BAD Unknown command BOGUS\r\n"
    assert await c.line() == b"* BYE Too many errors\r\n"
    assert await c.line() == b""
