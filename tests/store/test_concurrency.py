"""UIDs stay strictly increasing and unique under concurrent deliveries (RFC 9051 §2.3.1.1),
from several tasks and from several processes, and appear to readers in UID order."""

from __future__ import annotations

import asyncio

from store import Store
from tests.conftest import StoreLocation
from tests.store.messages import simple_message
from tests.store.test_durability import _start_child

WRITERS = 50


async def test_50_concurrent_deliveries_get_unique_increasing_uids(
    store: Store, doctor: str
) -> None:
    results = await asyncio.gather(
        *(store.deliver(doctor, simple_message(i)) for i in range(WRITERS))
    )
    uids = sorted(r.uid for r in results)
    assert uids == list(range(1, WRITERS + 1))
    modseqs = [r.modseq for r in sorted(results, key=lambda r: r.uid)]
    assert modseqs == sorted(set(modseqs)), "MODSEQ must grow with the UID"


async def test_uids_from_several_processes_are_unique_and_visible_in_order(
    store: Store, store_location: StoreLocation, doctor: str
) -> None:
    """5 processes x 10 concurrent writers = 50 concurrent deliveries, while a reader polls:
    every snapshot the reader sees is 1..n with no hole, i.e. no UID shows up "in the past"."""
    inbox = await store.get_folder(doctor, "INBOX")
    per_process = 20
    children = [
        await _start_child(store_location, doctor, per_process, 10, f"p{i}") for i in range(5)
    ]
    snapshots: list[list[int]] = []

    async def poll() -> None:
        while any(c.returncode is None for c in children):
            snapshots.append(await store.uids(inbox.id))
            await asyncio.sleep(0.005)

    poller = asyncio.create_task(poll())
    outputs = await asyncio.gather(*(c.communicate() for c in children))
    await poller
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err.decode()[-2000:]
    acknowledged = [
        int(line.split()[0]) for out, _ in outputs for line in out.decode().split("\n")[:-1]
    ]
    total = 5 * per_process
    assert sorted(acknowledged) == list(range(1, total + 1))
    assert await store.uids(inbox.id) == list(range(1, total + 1))
    assert len(snapshots) > 1
    for snap in snapshots:
        assert snap == list(range(1, len(snap) + 1)), f"hole in a reader's view: {snap}"


async def test_many_concurrent_multi_statement_reads_do_not_wait_on_each_other(
    store: Store, doctor: str
) -> None:
    """More concurrent readers than read threads and connections (every IMAP session polling
    after a delivery): none may hold a connection while waiting for a thread."""
    result = await store.deliver(doctor, b"Subject: x\r\n\r\nx\r\n")
    async with asyncio.timeout(20):
        await asyncio.gather(
            *(store.folder_totals(result.folder_id) for _ in range(200)),
            *(store.changes_since(result.folder_id, i) for i in range(200)),
        )
