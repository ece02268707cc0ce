"""QUOTA (RFC 9208), the login deadline, consecutive errors, LIST patterns that must not
backtrack, and delegation rights withdrawn while a session is open."""

from __future__ import annotations

import asyncio
import time

import pytest

from imap.mailboxes import matches
from imap.server import Limits
from tests.imap.conftest import DOCTOR, SECRETARY, Imap, make_limits, message

QUOTA = 4096


@pytest.fixture
def imap_limits() -> Limits:
    return make_limits(quota_storage=QUOTA, login_timeout=2.0, max_errors=3)


async def test_getquotaroot_reports_usage_and_limit_in_kilobytes_rfc9208_4_3(imap: Imap) -> None:
    await imap.deliver(message(body="x" * 1500))
    c = await imap.connect()
    lines = await c.command("GETQUOTAROOT INBOX")
    assert lines[0] == b'* QUOTAROOT INBOX ""\r\n'
    assert lines[1] == b'* QUOTA "" (STORAGE 2 4)\r\n'
    assert lines[2].endswith(b"OK GETQUOTAROOT completed\r\n")
    assert (await c.command('GETQUOTA ""'))[0] == b'* QUOTA "" (STORAGE 2 4)\r\n'


async def test_append_beyond_the_quota_is_refused_overquota_rfc9208_5(imap: Imap) -> None:
    c = await imap.connect()
    big = message(body="y" * 5000)
    c.send(b"a1 APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
    (reply,) = await c.until("a1")
    assert reply == b"a1 NO [OVERQUOTA] Quota depasse\r\n"
    assert (await c.command("STATUS INBOX (MESSAGES)"))[0] == b"* STATUS INBOX (MESSAGES 0)\r\n"


async def test_move_within_the_bal_is_allowed_at_quota_so_mail_can_be_deleted(
    imap: Imap,
) -> None:
    """Thunderbird and Outlook delete by moving to Trash: that frees nothing but must work."""
    await imap.deliver(message(body="z" * 3000))
    c = await imap.connect(select="INBOX")
    assert (await c.command("COPY 1 Archive"))[-1].endswith(b"NO [OVERQUOTA] Quota depasse\r\n")
    lines = await c.command("MOVE 1 Trash")
    assert lines[-1].endswith(b"OK MOVE completed\r\n")
    assert b"* 1 EXPUNGE\r\n" in lines


async def test_append_limit_is_a_status_item_rfc7889_3(imap: Imap) -> None:
    c = await imap.connect()
    lines = await c.command("STATUS INBOX (APPENDLIMIT)")
    assert lines[0] == b"* STATUS INBOX (APPENDLIMIT 26214400)\r\n"


async def test_a_connection_that_never_logs_in_is_closed_at_the_login_deadline(
    imap: Imap,
) -> None:
    """The deadline holds for the whole connection, not per command: NOOPs do not extend it."""
    c = await imap.connect(user=None)
    started = time.monotonic()
    bye = b""
    while time.monotonic() - started < 6:
        c.send(b"n NOOP\r\n")
        line = await c.line(timeout=3)
        if line.startswith(b"* BYE") or not line:
            bye = line
            break
        await asyncio.sleep(0.5)
    assert bye == b"* BYE Autologout; idle for too long\r\n"
    assert 1.5 < time.monotonic() - started < 4


async def test_only_consecutive_errors_end_the_session(imap: Imap) -> None:
    c = await imap.connect()
    for _ in range(5):  # more errors in all than max_errors, never two in a row
        assert (await c.command("BOGUS"))[-1].split()[1] == b"BAD"
        await c.ok("NOOP")
    for _ in range(2):
        await c.command("BOGUS")
    c.send(b"z BOGUS\r\n")
    assert await c.line() == b"z BAD Unknown command BOGUS\r\n"
    assert await c.line() == b"* BYE Too many errors\r\n"


async def test_store_reports_the_flags_of_unchanged_messages_too_rfc9051_6_4_6(
    imap: Imap,
) -> None:
    for i in range(2):
        await imap.deliver(message(f"m{i}"))
    c = await imap.connect(select="INBOX")
    await c.ok("STORE 1 +FLAGS (\\Flagged)")
    lines = await c.command("STORE 1:2 +FLAGS (\\Flagged)")
    assert lines[:2] == [
        b"* 1 FETCH (FLAGS (\\Flagged))\r\n",
        b"* 2 FETCH (FLAGS (\\Flagged))\r\n",
    ]


async def test_withdrawn_write_right_stops_an_open_session_from_changing_the_bal(
    imap: Imap,
) -> None:
    await imap.store.add_delegation(DOCTOR, SECRETARY, can_read=True, can_write=True)
    await imap.deliver(message())
    c = await imap.connect(SECRETARY, select=f"Partagés/{DOCTOR}/INBOX".replace("é", "&AOk-"))
    await c.ok("STORE 1 +FLAGS (\\Flagged)")
    await imap.store.add_delegation(DOCTOR, SECRETARY, can_read=True, can_write=False)
    lines = await c.command("STORE 1 +FLAGS (\\Deleted)")
    assert lines[-1].endswith(b"NO [READ-ONLY] Mailbox is read-only\r\n")
    assert (await c.command("EXPUNGE"))[-1].endswith(b"NO [READ-ONLY] Mailbox is read-only\r\n")
    folder = await imap.store.get_folder(DOCTOR, "INBOX")
    (info,) = await imap.store.list_messages(folder.id)
    assert "\\Deleted" not in info.flags.imap_names


def test_list_patterns_match_in_linear_time() -> None:
    """``*`` as a regular expression backtracks exponentially: 10 stars took 10 s."""
    started = time.perf_counter()
    assert not matches("", "*" * 40 + "x", "a" * 200)
    assert not matches("", "*a" * 30 + "*b", "a" * 200)
    assert time.perf_counter() - started < 0.5
    assert matches("", "*", "Projets/2026")
    assert not matches("", "%", "Projets/2026")
    assert matches("Projets/", "%", "Projets/2026")
    assert matches("", "inbox", "INBOX")
    assert matches("", "P*6", "Projets/2026")
    assert not matches("", "P%6", "Projets/2026")


async def test_an_overlong_list_pattern_is_refused(imap: Imap) -> None:
    c = await imap.connect()
    lines = await c.command(f'LIST "" "{"*" * 2000}"')
    assert lines[-1].endswith(b"BAD LIST pattern longer than 1024 characters\r\n")
