"""RFC 7162: CONDSTORE (MODSEQ, HIGHESTMODSEQ, CHANGEDSINCE, UNCHANGEDSINCE) and QRESYNC
(SELECT ... (QRESYNC ...), VANISHED)."""

from __future__ import annotations

import re

from tests.imap.conftest import DOCTOR, Client, Imap, message


async def modseqs(c: Client) -> dict[int, int]:
    lines = await c.command("UID FETCH 1:* (MODSEQ)")
    out = {}
    for line in lines[:-1]:
        m = re.match(rb"\* \d+ FETCH \(UID (\d+) MODSEQ \((\d+)\)\)", line)
        assert m, line
        out[int(m.group(1))] = int(m.group(2))
    return out


async def inbox(imap: Imap, n: int) -> None:
    for i in range(1, n + 1):
        await imap.deliver(message(f"message {i}"))


async def uidvalidity(imap: Imap) -> int:
    return (await imap.store.get_folder(DOCTOR, "INBOX")).uidvalidity


async def test_enable_condstore_and_qresync_required_before_select_qresync(imap: Imap) -> None:
    c = await imap.connect()
    assert await c.command("ENABLE CONDSTORE") == [
        b"* ENABLED CONDSTORE\r\n",
        b"a2 OK ENABLE completed\r\n",
    ]
    assert await c.command("ENABLE QRESYNC X-UNKNOWN") == [
        b"* ENABLED QRESYNC\r\n",
        b"a3 OK ENABLE completed\r\n",
    ]
    assert await c.command("ENABLE X-UNKNOWN") == [b"* ENABLED\r\n", b"a4 OK ENABLE completed\r\n"]
    c = await imap.connect()
    assert await c.command("SELECT INBOX (QRESYNC (1 1))") == [
        b"a2 BAD QRESYNC must be enabled first\r\n"
    ]


async def test_select_condstore_reports_highestmodseq_and_fetch_includes_modseq(
    imap: Imap,
) -> None:
    await inbox(imap, 2)
    c = await imap.connect()
    lines = await c.command("SELECT INBOX (CONDSTORE)")
    assert b"* OK [HIGHESTMODSEQ 3] Highest\r\n" in lines
    assert lines[-1] == b"a2 OK [READ-WRITE] SELECT completed\r\n"
    # CONDSTORE is now on: every FETCH carries MODSEQ
    assert await c.command("FETCH 1:2 (FLAGS)") == [
        b"* 1 FETCH (FLAGS () MODSEQ (2))\r\n",
        b"* 2 FETCH (FLAGS () MODSEQ (3))\r\n",
        b"a3 OK FETCH completed\r\n",
    ]


async def test_fetch_changedsince_returns_only_changed(imap: Imap) -> None:
    await inbox(imap, 3)
    c = await imap.connect(select="INBOX")
    before = (await modseqs(c))[3]
    await c.ok("STORE 2 +FLAGS (\\Flagged)")
    after = (await modseqs(c))[2]
    assert after > before
    assert await c.command(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {before})") == [
        b"* 2 FETCH (FLAGS (\\Flagged) MODSEQ (%d))\r\n" % after,
        b"a6 OK FETCH completed\r\n",
    ]
    assert await c.command(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {after})") == [
        b"a7 OK FETCH completed\r\n"
    ]


async def test_store_unchangedsince_reports_modified(imap: Imap) -> None:
    await inbox(imap, 3)
    c = await imap.connect()
    await c.ok("ENABLE CONDSTORE")
    await c.ok("SELECT INBOX")
    ms = await modseqs(c)
    other = await imap.connect(select="INBOX")
    await other.ok("STORE 2 +FLAGS (\\Answered)")
    assert (await modseqs(other))[2] > ms[3]
    lines = await c.command(f"STORE 1:3 (UNCHANGEDSINCE {ms[3]}) +FLAGS (\\Seen)")
    m1 = re.match(rb"\* 1 FETCH \(FLAGS \(\\Seen\) MODSEQ \((\d+)\)\)\r\n", lines[0])
    assert m1, lines
    m3 = re.match(rb"\* 3 FETCH \(FLAGS \(\\Seen\) MODSEQ \((\d+)\)\)\r\n", lines[1])
    assert m3, lines
    assert lines[-1] == b"a5 OK [MODIFIED 2] Conditional STORE failed\r\n"
    assert b"\\Answered" in b"".join(lines[2:-1])  # message 2's new flags reach us too
    # UID STORE: MODIFIED lists UIDs; .SILENT still sends MODSEQ (RFC 7162 §3.1.3)
    assert await c.command(f"UID STORE 2 (UNCHANGEDSINCE {ms[2]}) +FLAGS.SILENT (\\Seen)") == [
        b"a6 OK [MODIFIED 2] Conditional STORE failed\r\n"
    ]
    current = (await modseqs(c))[2]
    lines = await c.command(f"UID STORE 2 (UNCHANGEDSINCE {current}) +FLAGS.SILENT (\\Seen)")
    assert re.fullmatch(rb"\* 2 FETCH \(UID 2 MODSEQ \(\d+\)\)\r\n", lines[0]), lines
    assert lines[1:] == [b"a8 OK STORE completed\r\n"]


async def test_search_modseq(imap: Imap) -> None:
    await inbox(imap, 3)
    c = await imap.connect(select="INBOX")
    base = (await modseqs(c))[3]
    await c.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
    new = (await modseqs(c))[1]
    assert await c.command(f"SEARCH MODSEQ {base + 1}") == [
        b"* SEARCH 1 (MODSEQ %d)\r\n" % new,
        b"a6 OK SEARCH completed\r\n",
    ]


async def test_select_qresync_sends_vanished_earlier_and_changed_flags(imap: Imap) -> None:
    await inbox(imap, 4)
    v = await uidvalidity(imap)
    c = await imap.connect(select="INBOX")
    base = (await modseqs(c))[4]
    await c.ok("STORE 3 +FLAGS.SILENT (\\Flagged)")
    await c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await c.ok("EXPUNGE")
    ms = await modseqs(c)
    highest = (await imap.store.get_folder(DOCTOR, "INBOX")).highest_modseq
    q = await imap.connect()
    await q.ok("ENABLE QRESYNC")
    lines = await q.command(f"SELECT INBOX (QRESYNC ({v} {base}))")
    assert lines == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n",
        b"* 3 EXISTS\r\n",
        b"* 0 RECENT\r\n",
        b"* OK [UNSEEN 1] First unseen\r\n",
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % v,
        b"* OK [UIDNEXT 5] Predicted next UID\r\n",
        b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % highest,
        b"* VANISHED (EARLIER) 1\r\n",
        b"* 2 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % ms[3],
        b"a3 OK [READ-WRITE] SELECT completed\r\n",
    ]
    # known UIDs restrict VANISHED (EARLIER); a stale UIDVALIDITY gets a full resync instead
    lines = await q.command(f"SELECT INBOX (QRESYNC ({v} {base} 2:4))")
    assert not any(b"VANISHED" in line for line in lines)
    lines = await q.command(f"SELECT INBOX (QRESYNC ({v + 1} {base}))")
    assert not any(b"VANISHED" in line or b"FETCH" in line for line in lines)


async def test_uid_fetch_changedsince_vanished(imap: Imap) -> None:
    await inbox(imap, 4)
    c = await imap.connect()
    await c.ok("ENABLE QRESYNC")
    await c.ok("SELECT INBOX")
    base = (await modseqs(c))[4]
    other = await imap.connect(select="INBOX")
    await other.ok("STORE 2,3 +FLAGS.SILENT (\\Deleted)")
    await other.ok("STORE 4 +FLAGS.SILENT (\\Seen)")
    await other.ok("UID EXPUNGE 2")
    ms4 = (await modseqs(other))[4]
    lines = await c.command(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {base} VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) 2\r\n"
    assert b"* 4 FETCH (UID 4 FLAGS (\\Seen) MODSEQ (%d))\r\n" % ms4 in lines
    assert lines[-1] == b"a5 OK FETCH completed\r\n"
    assert await c.command(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {base} VANISHED)") == [
        b"a6 BAD VANISHED requires UID FETCH with CHANGEDSINCE\r\n"
    ]


async def test_qresync_expunge_sends_vanished_not_expunge(imap: Imap) -> None:
    await inbox(imap, 3)
    c = await imap.connect()
    await c.ok("ENABLE QRESYNC")
    await c.ok("SELECT INBOX")
    await c.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    lines = await c.command("EXPUNGE")
    assert lines == [b"* VANISHED 1:2\r\n", b"a5 OK EXPUNGE completed\r\n"]
    other = await imap.connect(select="INBOX")
    await other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await other.ok("EXPUNGE")
    assert await c.command("NOOP") == [b"* VANISHED 3\r\n", b"a6 OK NOOP completed\r\n"]
