"""Group commit of deliveries.

Every delivery needs a commit (and so an fsync of the database journal) before the MTA may answer
``250``. Concurrent deliveries are gathered while the previous commit is in flight and committed
together: one transaction, one fsync, however many messages. No artificial delay is added; a lone
delivery commits at once.

UIDs are allocated inside the committing transaction by incrementing the folder row, which
PostgreSQL locks until commit: a UID becomes visible only after every smaller UID of the folder, so
IMAP clients never see a UID appear "in the past", even with many processes delivering.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, IntegrityError

from store.changes import ChangeFeed, Written, notify_other_processes
from store.database import Database
from store.errors import StoreError
from store.model import DeliveryResult, Flag, FlagChange
from store.schema import folders, messages

log = logging.getLogger(__name__)

MAX_BATCH = 256
# A delivery waits at most this long for its commit; the MTA then answers 451 and the sender
# retries (at worst a duplicate, never a loss, if the commit completes later).
COMMIT_TIMEOUT = 120.0


class FolderVanished(StoreError):
    """The folder was deleted or renamed between lookup and commit."""

    def __init__(self, folder_id: int) -> None:
        super().__init__(f"folder {folder_id} no longer exists")
        self.folder_id = folder_id


@dataclass(slots=True)
class _Pending:
    folder_id: int
    folder_name: str
    row: dict[str, Any]
    future: asyncio.Future[DeliveryResult]


class GroupCommitter:
    """Commits message rows in batches; ``submit`` returns once its row is durable."""

    def __init__(self, db: Database, feed: ChangeFeed, *, max_batch: int = MAX_BATCH) -> None:
        self._db = db
        self._feed = feed
        self._max_batch = max_batch
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0  # for metrics and the benchmark: commits made
        self.committed = 0  # messages committed

    async def submit(self, folder_id: int, folder_name: str, row: dict[str, Any]) -> DeliveryResult:
        """Commit ``row`` into the folder ``folder_id``, provided it is still named
        ``folder_name`` (callers may resolve names from a cache; another process may have
        renamed the folder since: then FolderVanished, and the caller looks the name up again)."""
        if self._closing:
            raise StoreError("store is closing")
        future: asyncio.Future[DeliveryResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(folder_id, folder_name, row, future))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="group-commit")
        # Shielded: a cancelled caller (client hung up) does not cancel a commit shared by others.
        async with asyncio.timeout(COMMIT_TIMEOUT):
            return await asyncio.shield(future)

    async def close(self) -> None:
        """Commit what is pending, then stop."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            await self._commit_isolating_failures(batch)

    async def _commit_isolating_failures(self, batch: list[_Pending]) -> None:
        try:
            await self._commit(batch)
        except Exception as exc:
            # Only a statement error can be one row's fault; a lost connection or a locked
            # database fails everybody at once rather than being retried row by row.
            if len(batch) == 1 or not isinstance(exc, IntegrityError | DataError):
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            # One bad row must not fail its neighbours: retry them one by one.
            log.warning(
                "batch of %d deliveries failed (%s); retrying singly",
                len(batch),
                type(exc).__name__,
            )
            for item in batch:
                try:
                    await self._commit([item])
                except Exception as single_exc:
                    if not item.future.done():
                        item.future.set_exception(single_exc)

    async def _commit(self, batch: list[_Pending]) -> None:
        results, vanished, written = await self._db.transaction(_insert_batch, batch)
        self.batches += 1
        self.committed += len(results)
        for item, result in results:
            if not item.future.done():
                item.future.set_result(result)
        for item in vanished:
            if not item.future.done():
                item.future.set_exception(FolderVanished(item.folder_id))
        for folder_id, record in written:
            self._feed.publish(folder_id, record.last, record)


def _insert_batch(
    conn: Connection, batch: list[_Pending]
) -> tuple[list[tuple[_Pending, DeliveryResult]], list[_Pending], list[tuple[int, Written]]]:
    """The rows of a batch, in one transaction (one thread hop on SQLite): the deliveries
    committed with their UIDs, those whose folder vanished, and what each folder got."""
    by_folder: dict[tuple[int, str], list[_Pending]] = defaultdict(list)
    for item in batch:
        by_folder[item.folder_id, item.folder_name].append(item)
    results: list[tuple[_Pending, DeliveryResult]] = []
    vanished: list[_Pending] = []
    written: list[tuple[int, Written]] = []
    rows: list[dict[str, Any]] = []
    # Lock folders in id order: two processes committing overlapping batches cannot deadlock.
    for folder_id, folder_name in sorted(by_folder):
        items = by_folder[folder_id, folder_name]
        n = len(items)
        allocated = conn.execute(
            update(folders)
            .where(folders.c.id == folder_id, folders.c.name == folder_name)
            .values(
                uid_next=folders.c.uid_next + n,
                highest_modseq=folders.c.highest_modseq + n,
            )
            .returning(folders.c.uid_next, folders.c.highest_modseq)
        ).first()
        if allocated is None:
            vanished.extend(items)
            continue
        first_uid = allocated.uid_next - n
        first_modseq = allocated.highest_modseq - n + 1
        new: list[FlagChange] = []
        for i, item in enumerate(items):
            row = dict(item.row, folder_id=folder_id, uid=first_uid + i)
            row["modseq"] = first_modseq + i
            rows.append(row)
            result = DeliveryResult(
                folder_id=folder_id,
                uid=first_uid + i,
                modseq=first_modseq + i,
                blob=row["blob"],
                size=row["size"],
            )
            results.append((item, result))
            new.append(
                FlagChange(result.uid, result.modseq, Flag(row["flags"]), tuple(row["keywords"]))
            )
        written.append((folder_id, Written(first_modseq, allocated.highest_modseq, new)))
    if rows:
        conn.execute(insert(messages), rows)
    for folder_id, record in written:
        notify_other_processes(conn, folder_id, record.last)
    return results, vanished, written
