"""Child process for the durability and concurrency tests.

``python -m tests.store.deliver_loop URL BLOB_DIR BAL COUNT CONCURRENCY TAG`` delivers COUNT messages
(0 = until killed) with CONCURRENCY tasks and prints ``<uid> <sha256>`` on stdout, flushed, for each
delivery that RETURNED: the parent holds us to every line printed.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

from store import Store
from tests.store.messages import message_of_size


async def main(url: str, blob_dir: str, bal: str, count: int, concurrency: int, tag: str) -> None:
    store = await Store.open(url, blob_dir, migrate_schema=False)
    counter = itertools.count()
    out = sys.stdout

    async def worker() -> None:
        while True:
            n = next(counter)
            if count and n >= count:
                return
            raw = message_of_size(4_000 + (n % 7) * 3_000, n, seed=hash((tag, n)) & 0xFFFF)
            raw = raw.replace(b"Subject: ", f"X-Tag: {tag}-{n}\r\nSubject: ".encode(), 1)
            result = await store.deliver(bal, raw)
            out.write(f"{result.uid} {result.blob}\n")
            out.flush()

    print("ready", flush=True)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await store.close()


if __name__ == "__main__":
    url, blob_dir, bal, count, concurrency, tag = sys.argv[1:7]
    asyncio.run(main(url, blob_dir, bal, int(count), int(concurrency), tag))
