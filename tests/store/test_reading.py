"""Reading message octets: small blobs are read on the event loop (no thread hop), yet a
command reading thousands of them does not keep every other session waiting."""

from __future__ import annotations

import asyncio

from store import Store
from store.store import INLINE_READ_LIMIT, INLINE_READS_BETWEEN_YIELDS
from tests.store.messages import simple_message


async def test_many_small_reads_let_other_tasks_run(store: Store, doctor: str) -> None:
    for n in range(3):
        await store.deliver(doctor, simple_message(n))
    inbox = await store.get_folder(doctor, "INBOX")
    infos = await store.list_messages(inbox.id)
    assert all(0 < i.size <= INLINE_READ_LIMIT for i in infos)
    ticks = 0

    async def other_session() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_session())
    await asyncio.sleep(0)
    started = ticks
    reads = INLINE_READS_BETWEEN_YIELDS * 4
    for n in range(reads):
        info = infos[n % len(infos)]
        assert await store.read_message(info) == simple_message(info.uid - 1)
    other.cancel()
    assert ticks - started >= 3  # it ran while the reads went on, not only after
