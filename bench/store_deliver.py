"""deliver() throughput for 20 KB messages, 1 and 32 concurrent writers, SQLite and PostgreSQL,
and the size on disk per 10,000 messages.

    .venv/bin/python -m bench.store_deliver [--messages 10000] [--single 1500] [--seconds 120]

Each run starts from an empty store (a temporary SQLite file, or a temporary PostgreSQL database on
COLOMBE_TEST_POSTGRES / 127.0.0.1:5432) and delivers distinct, realistic 20 KB messages (a text
part and a base64 attachment) to one INBOX: every delivery fsyncs its blob and is committed
(group commit) before it returns, exactly as for an SMTP 250.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.results import write_section
from store import Store, mime
from store.schema import TABLES_IN_DEPENDENCY_ORDER
from tests.store.messages import message_of_size

PG_ADMIN = os.environ.get(
    "COLOMBE_TEST_POSTGRES", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)
SIZE = 20_000


@dataclass
class Run:
    backend: str
    writers: int
    messages: int
    seconds: float
    p50_ms: float
    p99_ms: float
    commits: int
    db_bytes: int
    blob_bytes: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


async def _pg_admin(sql: str) -> None:
    dsn = make_url(PG_ADMIN).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _db_size(store: Store, backend: str, db_path: Path | None) -> int:
    if backend == "sqlite":
        assert db_path is not None
        # Checkpoint the WAL into the main file so the figure is the settled size.
        with sqlite3.connect(db_path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(
            p.stat().st_size for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)
        )
    names = ", ".join(f"'{t.name}'" for t in TABLES_IN_DEPENDENCY_ORDER)
    async with store.db.reader.connect() as conn:
        await conn.commit()
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                        f"WHERE c.relname IN ({names}) AND c.relkind = 'r'"
                    )
                )
            ).scalar_one()
        )


async def run(backend: str, writers: int, count: int, max_seconds: float) -> Run:
    with tempfile.TemporaryDirectory(
        prefix="colombe-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        tmp_path = Path(tmp)
        db_path: Path | None = None
        pg_name = f"colombe_bench_{os.getpid()}"
        if backend == "sqlite":
            db_path = tmp_path / "colombe.db"
            url = f"sqlite:///{db_path}"
        else:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            await _pg_admin(f'CREATE DATABASE "{pg_name}"')
            url = make_url(PG_ADMIN).set(database=pg_name).render_as_string(hide_password=False)
        store = await Store.open(url, tmp_path / "blobs")
        try:
            await store.add_domain("bench.mssante.fr")
            bal = (await store.create_bal("bench@bench.mssante.fr")).address
            # Generated up front: the benchmark measures delivery, not message synthesis.
            bodies = [message_of_size(SIZE, i, seed=i) for i in range(count)]
            latencies: list[float] = []
            next_index = 0
            deadline = time.monotonic() + max_seconds

            async def writer() -> None:
                nonlocal next_index
                while next_index < count and time.monotonic() < deadline:
                    raw = bodies[next_index]
                    next_index += 1
                    t0 = time.perf_counter()
                    await store.deliver(bal, raw)
                    latencies.append(time.perf_counter() - t0)

            commits_before = store.commit_stats[0]
            started = time.perf_counter()
            await asyncio.gather(*(writer() for _ in range(writers)))
            elapsed = time.perf_counter() - started
            commits = store.commit_stats[0] - commits_before
            latencies.sort()
            if backend == "postgresql":
                db_bytes = await _db_size(store, backend, db_path)
            blob_bytes = _dir_size(tmp_path / "blobs")
        finally:
            await store.close()
        if backend == "sqlite":
            db_bytes = await _db_size(store, backend, db_path)
            if backend == "postgresql":
                await _pg_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    return Run(
        backend=backend,
        writers=writers,
        messages=len(latencies),
        seconds=elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[int(len(latencies) * 0.99) - 1] * 1000,
        commits=commits,
        db_bytes=db_bytes,
        blob_bytes=blob_bytes,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--messages", type=int, default=10_000, help="messages for the 32-writer runs"
    )
    parser.add_argument("--single", type=int, default=1_500, help="messages for the 1-writer runs")
    parser.add_argument("--seconds", type=float, default=120, help="time limit per run")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    sample = message_of_size(SIZE, 0, seed=0)
    started = time.perf_counter()
    for _ in range(500):
        mime.parse_message(sample)
    parse_us = (time.perf_counter() - started) / 500 * 1e6
    print(f"metadata computation (store.mime) of one 20 KB message: {parse_us:.0f} us", flush=True)

    runs: list[Run] = []
    for backend in ("sqlite", "postgresql"):
        for writers, count in ((1, args.single), (32, args.messages)):
            r = await run(backend, writers, count, args.seconds)
            runs.append(r)
            print(
                f"{backend:10} writers={writers:2} {r.messages:6} msgs in {r.seconds:6.1f}s "
                f"= {r.rate:7.0f} msg/s  p50 {r.p50_ms:6.1f} ms  p99 {r.p99_ms:6.1f} ms  "
                f"{r.messages / max(1, r.commits):5.1f} msgs/commit",
                flush=True,
            )

    lines = [
        "| backend | writers | messages | msg/s | MB/s | p50 latency | p99 latency | msgs per commit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.backend} | {r.writers} | {r.messages} | {r.rate:,.0f} | "
            f"{r.rate * SIZE / 1e6:.1f} | {r.p50_ms:.1f} ms | {r.p99_ms:.1f} ms | "
            f"{r.messages / max(1, r.commits):.1f} |"
        )
    lines += [
        "",
        "Size on disk, per 10,000 messages of 20 KB (from the 32-writer runs; blob sizes are "
        "allocated blocks):",
        "",
        "| backend | database | blobs | total | overhead over raw octets |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        if r.writers != 32:
            continue
        scale = 10_000 / r.messages
        db, blobs = r.db_bytes * scale, r.blob_bytes * scale
        raw = SIZE * 10_000
        lines.append(
            f"| {r.backend} | {db / 1e6:.1f} MB | {blobs / 1e6:.1f} MB | "
            f"{(db + blobs) / 1e6:.1f} MB | {((db + blobs) / raw - 1) * 100:.0f} % |"
        )
    lines += [
        "",
        "Reading the figures: one writer pays, in sequence, the blob's two fsyncs (file, then "
        "directory entry), the metadata parse and one database commit (fsync). With 32 writers "
        "the group commit shares each database commit among several deliveries (a batch runs "
        "BEGIN to COMMIT in one hop to SQLite's writer thread); the limit is then Python CPU "
        "(parse, SQLAlchemy, thread hops), not the disk. "
        "The machine's disk is shared: fsync latency was seen between 0.14 and 0.53 ms during "
        "the same session, which moves the 1-writer figures by up to 2x.",
        "",
        f"Metadata computation at delivery (store.mime.parse_message), one 20 KB message: "
        f"{parse_us:.0f} µs.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(
            "store deliver()",
            "make bench  (= .venv/bin/python -m bench.store_deliver)",
            __doc__.split("\n\n", 2)[2] + "\n\n" + body if __doc__ else body,
        )


if __name__ == "__main__":
    asyncio.run(main())
