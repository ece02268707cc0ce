"""Nothing acknowledged is lost: SIGKILL a delivering process at random moments, then check that
every delivery that returned is present and readable, and that the store opens cleanly."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from store import Store
from tests.conftest import StoreLocation

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 4


async def _start_child(loc: StoreLocation, bal: str, count: int, concurrency: int, tag: str):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.store.deliver_loop",
        loc.url,
        str(loc.blob_dir),
        bal,
        str(count),
        str(concurrency),
        tag,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line != b"ready\n":
        _, err = await proc.communicate()
        raise AssertionError(f"child did not start: {line!r} {err.decode()[-2000:]}")
    return proc


@pytest.mark.slow
async def test_every_acknowledged_delivery_survives_sigkill(
    store_location: StoreLocation,
) -> None:
    setup = await Store.open(store_location.url, store_location.blob_dir)
    await setup.add_domain("hopital-test.mssante.fr")
    bal = (await setup.create_bal("dr.kill@hopital-test.mssante.fr")).address
    await setup.close()

    rng = random.Random(os.getpid())
    acknowledged: dict[int, str] = {}
    for round_no in range(ROUNDS):
        proc = await _start_child(store_location, bal, 0, 8, f"r{round_no}")
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        out, _ = await proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        for line in out.decode().splitlines():
            uid, digest = line.split()
            assert int(uid) not in acknowledged, "a UID was handed out twice"
            acknowledged[int(uid)] = digest

    assert len(acknowledged) > 20, "the child delivered too little to prove anything"
    store = await Store.open(store_location.url, store_location.blob_dir)
    try:
        if store_location.backend == "sqlite":
            async with store.db.reader.connect() as conn:
                check = (await conn.exec_driver_sql("PRAGMA integrity_check")).scalar()
            assert check == "ok"
        inbox = await store.get_folder(bal, "INBOX")
        present = {m.uid: m for m in await store.list_messages(inbox.id)}
        missing = sorted(set(acknowledged) - set(present))
        assert not missing, f"acknowledged but lost: {missing[:10]}"
        for uid, digest in acknowledged.items():
            info = present[uid]
            assert info.blob == digest
            assert hashlib.sha256(await store.read_message(info)).hexdigest() == digest
        # The store still takes deliveries after the crashes, with a fresh UID.
        after = await store.deliver(bal, b"Subject: after\r\n\r\nok\r\n")
        assert after.uid > max(present)
    finally:
        await store.close()
