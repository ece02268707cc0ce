"""``colombe store port``: copy a whole store into another database (SQLite -> PostgreSQL).

Operators start on the embedded default and move to PostgreSQL when they grow. The copy reads one
consistent snapshot of the source and writes the target in a single transaction, so the target is
either a complete copy or untouched. Row counts are compared afterwards. Blobs stay where they are
unless a new blob directory is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from store.blobs import BlobStore
from store.database import Database, migrate
from store.errors import StoreError, StoreNotEmpty
from store.schema import TABLES_IN_DEPENDENCY_ORDER, messages, outbound_queue

BATCH = 1000

Progress = Callable[[str, int, int], None]


async def port_store(
    source_url: str,
    target_url: str,
    *,
    source_blob_dir: Path | None = None,
    target_blob_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Copy every table; return rows copied per table. The target must be empty."""
    source = Database.connect(source_url)
    target = Database.connect(target_url)
    try:
        await migrate(target)
        async with target.reader.connect() as conn:
            for table in TABLES_IN_DEPENDENCY_ORDER:
                if (await conn.execute(select(func.count()).select_from(table))).scalar_one():
                    raise StoreNotEmpty(
                        f"the target database already holds data (table {table.name}); "
                        "port only into an empty database"
                    )
        copied: dict[str, int] = {}
        # One snapshot of the source for every table (PostgreSQL's default READ COMMITTED would
        # let a folder's UIDNEXT be read before a later message is), and everything on the
        # target side, the check and the blobs included, done before its single commit.
        async with source.reader.connect() as src:
            if source.is_postgresql:
                await src.execution_options(isolation_level="REPEATABLE READ")
            await src.begin()
            totals = {
                t.name: (await src.execute(select(func.count()).select_from(t))).scalar_one()
                for t in TABLES_IN_DEPENDENCY_ORDER
            }
            async with target.writer.begin() as dst:
                for table in TABLES_IN_DEPENDENCY_ORDER:
                    done = 0
                    pk = list(table.primary_key.columns)
                    result = await src.stream(select(table).order_by(*pk))
                    async for batch in result.mappings().partitions(BATCH):
                        await dst.execute(insert(table), [dict(r) for r in batch])
                        done += len(batch)
                        if progress is not None:
                            progress(table.name, done, totals[table.name])
                    if progress is not None and done == 0:
                        progress(table.name, 0, 0)
                    copied[table.name] = done
                if target.is_postgresql:
                    for table in TABLES_IN_DEPENDENCY_ORDER:
                        if "id" in table.c and table.c.id.autoincrement is True:
                            await dst.execute(
                                text(
                                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                    f"COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table.name}"
                                )
                            )
                for table in TABLES_IN_DEPENDENCY_ORDER:
                    count = (
                        await dst.execute(select(func.count()).select_from(table))
                    ).scalar_one()
                    if count != totals[table.name]:
                        raise StoreError(
                            f"port check failed: {table.name} has {count} rows in the target, "
                            f"{totals[table.name]} in the source; nothing was committed"
                        )
                if target_blob_dir is not None and source_blob_dir is not None:
                    await _copy_blobs(src, Path(source_blob_dir), Path(target_blob_dir))
        return copied
    finally:
        await source.dispose()
        await target.dispose()


async def _copy_blobs(conn: AsyncConnection, from_dir: Path, to_dir: Path) -> None:
    digests = set((await conn.execute(select(messages.c.blob).distinct())).scalars())
    digests |= set((await conn.execute(select(outbound_queue.c.blob).distinct())).scalars())
    await asyncio.to_thread(_copy_blob_files, sorted(digests), from_dir, to_dir)


def _copy_blob_files(digests: list[str], from_dir: Path, to_dir: Path) -> None:
    if from_dir.resolve() == to_dir.resolve():
        return
    src, dst = BlobStore(from_dir), BlobStore(to_dir)
    try:
        for digest in digests:
            if not dst.exists(digest):
                dst.import_file(src.path(digest), expected=digest)
    finally:
        src.close()
        dst.close()
