"""`colombe store port`: an SQLite store copied into PostgreSQL keeps every row and keeps working."""

from __future__ import annotations

from pathlib import Path

import pytest

from store import Flag, Store
from store.errors import StoreNotEmpty
from store.model import Recipient
from store.port import port_store
from tests.conftest import _empty_postgres
from tests.store.messages import message_of_size


async def _fill(store: Store) -> str:
    await store.add_domain("cabinet-test.mssante.fr")
    bal = await store.create_bal(
        "medecin@cabinet-test.mssante.fr", display_name="Dr Test", password="secret-port"
    )
    sec = await store.create_bal("secretariat@cabinet-test.mssante.fr")
    await store.add_delegation(bal.address, sec.address, can_send=True)
    for i in range(25):
        await store.deliver(bal.address, message_of_size(3000, i), keywords=["$Classe"])
    inbox = await store.get_folder(bal.address, "INBOX")
    await store.set_flags(inbox.id, [1, 2, 3], flags=Flag.DELETED | Flag.SEEN, mode="add")
    await store.expunge(inbox.id)
    await store.enqueue(bal.address, [Recipient("x@autre.mssante.fr")], b"Subject: q\r\n\r\nq\r\n")
    await store.audit("test", actor="pytest", bal=bal.address)
    return bal.address


async def test_sqlite_store_is_ported_to_postgresql_with_every_row(
    tmp_path: Path, pg_url: str
) -> None:
    await _empty_postgres(pg_url)
    sqlite_url = f"sqlite:///{tmp_path / 'source.db'}"
    source = await Store.open(sqlite_url, tmp_path / "blobs")
    bal = await _fill(source)
    src_inbox = await source.get_folder(bal, "INBOX")
    src_messages = await source.list_messages(src_inbox.id)
    src_changes = await source.changes_since(src_inbox.id, 0)
    await source.close()

    seen: list[tuple[str, int, int]] = []
    copied = await port_store(
        sqlite_url,
        pg_url,
        source_blob_dir=tmp_path / "blobs",
        target_blob_dir=tmp_path / "blobs2",
        progress=lambda t, d, n: seen.append((t, d, n)),
    )
    assert copied["messages"] == 22
    assert copied["expunged"] == 3
    assert copied["folders"] == 10
    assert ("messages", 22, 22) in seen

    target = await Store.open(pg_url, tmp_path / "blobs2")
    try:
        inbox = await target.get_folder(bal, "INBOX")
        assert (inbox.uidvalidity, inbox.uid_next, inbox.highest_modseq) == (
            src_inbox.uidvalidity,
            src_inbox.uid_next,
            src_inbox.highest_modseq,
        )
        ported = await target.list_messages(inbox.id)
        assert ported == src_messages
        assert await target.changes_since(inbox.id, 0) == src_changes
        for m in ported:
            assert await target.read_message(m) == await target.blobs.read(m.blob)
        assert await target.verify_password(bal, "secret-port")
        assert await target.can_send_as("secretariat@cabinet-test.mssante.fr", bal)
        assert len(await target.list_queue()) == 1
        assert [r.action for r in await target.tail_audit()] == ["test"]
        # Sequences continue after the copied ids: new rows do not collide.
        await target.add_domain("nouveau.mssante.fr")
        await target.create_bal("nouveau@nouveau.mssante.fr")
        r = await target.deliver(bal, b"Subject: after port\r\n\r\nx\r\n")
        assert r.uid == src_inbox.uid_next
        await target.audit("after", actor="pytest")
    finally:
        await target.close()


async def test_port_refuses_a_target_that_holds_data(tmp_path: Path, pg_url: str) -> None:
    await _empty_postgres(pg_url)
    existing = await Store.open(pg_url, tmp_path / "b")
    await existing.add_domain("deja.mssante.fr")
    await existing.close()
    source_url = f"sqlite:///{tmp_path / 's.db'}"
    source = await Store.open(source_url, tmp_path / "b")
    await source.add_domain("source.mssante.fr")
    await source.close()
    with pytest.raises(StoreNotEmpty, match="already holds data"):
        await port_store(source_url, pg_url)
