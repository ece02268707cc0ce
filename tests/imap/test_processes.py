"""Several processes on one PostgreSQL store: a change made by any of them reaches the IMAP
sessions of the others (ARCHITECTURE: front ends are stateless; IDLE fan-out through
LISTEN/NOTIFY). The "other process" is a second Store on the same database, which shares nothing
in memory with the one serving IMAP: only PostgreSQL carries the notification."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imap.auth import Plain, password_check
from imap.server import ImapServer
from pki.testpki import TestPki
from pki.tls import client_facing_context
from store import Store
from store.model import Flag
from tests.conftest import _empty_postgres
from tests.imap.conftest import DOCTOR, HOSTED, PASSWORD, Client, make_limits, message


@pytest.fixture
async def two_stores(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    await _empty_postgres(pg_url)
    serving = await Store.open(pg_url, tmp_path / "blobs")
    other = await Store.open(pg_url, tmp_path / "blobs")
    try:
        yield serving, other
    finally:
        await other.close()
        await serving.close()


async def test_idle_session_sees_a_delivery_made_by_another_process(
    two_stores: tuple[Store, Store], test_pki: TestPki, trust_file: Path
) -> None:
    serving, other = two_stores
    await serving.add_domain(HOSTED)
    await serving.create_bal(DOCTOR, display_name="Dr Jean Dupont")
    await serving.set_password(DOCTOR, PASSWORD)
    operator = test_pki.certs["operator"]
    check = password_check(serving)
    server = ImapServer(
        serving,
        tls_context=client_facing_context(operator.chain_path, operator.key_path),
        limits=make_limits(),
        mechanisms={"PLAIN": Plain(check)},
        password_check=check,
        implicit_tls=True,
    )
    await server.start("127.0.0.1", 0)
    context = ssl.create_default_context(cafile=str(trust_file))
    context.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0][1], ssl=context)
    client = Client(reader, writer)
    try:
        await client.line()
        await client.ok(f'LOGIN "{DOCTOR}" "{PASSWORD}"')
        await client.ok("SELECT INBOX")
        client.send(b"i1 IDLE\r\n")
        assert await client.line() == b"+ idling\r\n"

        started = time.monotonic()
        await other.deliver(DOCTOR, message("Par un autre processus"))
        assert await client.line(timeout=5) == b"* 1 EXISTS\r\n"
        assert time.monotonic() - started < 1.0
        assert await client.line() == b"* 1 RECENT\r\n"  # IMAP4rev1: new to this session

        # A flag change by the other process arrives as an unsolicited FETCH.
        folder = await other.get_folder(DOCTOR, "INBOX")
        await other.set_flags(folder.id, [1], flags=Flag.FLAGGED, mode="add")
        assert await client.line(timeout=5) == (b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\n")

        client.send(b"DONE\r\n")
        assert await client.line() == b"i1 OK IDLE terminated\r\n"

        # This process's message index follows what it was notified of: FETCH and SEARCH
        # answer from it, and must see the other process's changes, not the index's past.
        await client.ok("FETCH 1 (FLAGS)")
        other_folder = await other.get_folder(DOCTOR, "INBOX")
        await other.set_flags(other_folder.id, [1], flags=Flag.SEEN, mode="replace")
        await other.deliver(DOCTOR, message("Encore un"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = await client.ok("NOOP")
            if b"* 2 EXISTS\r\n" in lines:
                break
            await asyncio.sleep(0.05)
        lines = await client.ok("FETCH 1:* (FLAGS RFC822.SIZE)")
        assert lines[0].startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) RFC822.SIZE ")
        assert lines[1].startswith(b"* 2 FETCH (FLAGS (\\Recent) RFC822.SIZE ")
        assert (await client.ok("UID SEARCH SEEN"))[0] == b"* SEARCH 1\r\n"
        assert (await client.ok("UID SEARCH UNSEEN"))[0] == b"* SEARCH 2\r\n"
    finally:
        await client.close()
        await server.stop()
