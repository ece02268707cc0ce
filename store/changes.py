"""The change feed: wait until "something changed in folder F" (IMAP IDLE, webmail push).

A notification carries only the folder and its new HIGHESTMODSEQ; a watcher then asks the store what
changed since the MODSEQ it knew (``Store.changes_since``), so lost or duplicated notifications are
harmless. In one process (SQLite) the store publishes after each commit; with PostgreSQL every
process also LISTENs on one channel, and writers NOTIFY inside their transaction, so a delivery made
by any front end reaches the IDLE sessions of all the others.

A change made in this process is also published with what it was (:class:`Written`), kept while
the folder is watched: when the changes since a watcher's MODSEQ are all known here, the store
answers without a query (ten sessions on one mailbox, each STORE woke nine polls). A MODSEQ
missing from the record (a change made by another process, or by a write that does not record)
sends the question to the database, so the record only ever saves queries, never decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from store.model import FlagChange, FolderChanges

log = logging.getLogger(__name__)

CHANNEL = "colombe_changes"
ALL_FOLDERS = -1  # published after a reconnect: every watcher must re-check


def notify_other_processes(conn: Connection, folder_id: int, modseq: int) -> None:
    """NOTIFY inside the writing transaction (PostgreSQL delivers it at commit, never before);
    nothing to do on SQLite, whose one process publishes after the commit."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": f"{folder_id}:{modseq}"},
        )


class FolderWatch:
    """A subscription to one folder. ``wait()`` returns once a change newer than ``seen`` arrives."""

    def __init__(self, folder_id: int) -> None:
        self.folder_id = folder_id
        self.modseq = 0
        # Set when notifications may have been lost (the PostgreSQL listener reconnected):
        # the next look must query afresh, not trust any MODSEQ it knows.
        self.resync = False
        self._event = asyncio.Event()

    def _notify(self, modseq: int, *, resync: bool = False) -> None:
        self.resync = self.resync or resync
        self.modseq = max(self.modseq, modseq)
        self._event.set()

    def take(self) -> bool:
        """True, once, when a change arrived since the previous ``wait`` or ``take``: lets a
        session skip the query of a poll (IMAP NOOP) when nothing happened."""
        if self._event.is_set():
            self._event.clear()
            return True
        return False

    async def wait(self, timeout: float | None = None) -> bool:
        """True when a change arrived (since the previous wait), False on timeout."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        self._event.clear()
        return True


@dataclass(frozen=True, slots=True)
class Written:
    """What one committed transaction of this process did to a folder: it took the MODSEQs
    ``first`` to ``last``; the messages it created or whose flags it changed, with their state
    then; the UIDs it expunged."""

    first: int
    last: int
    changed: Sequence[FlagChange] = ()
    vanished: Sequence[int] = ()


RECORDED_PER_FOLDER = 64
"""Transactions remembered per watched folder (a session further behind asks the database)."""


class ChangeFeed:
    """In-process fan-out of folder changes."""

    def __init__(self) -> None:
        self._watches: dict[int, set[FolderWatch]] = defaultdict(set)
        # Watched folders only: MODSEQ first -> Written, in commit order.
        self._written: dict[int, OrderedDict[int, Written]] = {}

    @contextlib.asynccontextmanager
    async def watch(self, folder_id: int) -> AsyncIterator[FolderWatch]:
        w = FolderWatch(folder_id)
        self._watches[folder_id].add(w)
        try:
            yield w
        finally:
            watchers = self._watches.get(folder_id)
            if watchers is not None:
                watchers.discard(w)
                if not watchers:
                    del self._watches[folder_id]
                    self._written.pop(folder_id, None)

    def publish(self, folder_id: int, modseq: int, written: Written | None = None) -> None:
        """Wake the watchers of a folder whose HIGHESTMODSEQ reached ``modseq``; ``written``:
        what this process's transaction did, remembered if the folder is watched."""
        if written is not None and folder_id in self._watches:
            record = self._written.setdefault(folder_id, OrderedDict())
            record[written.first] = written
            if len(record) > RECORDED_PER_FOLDER:
                record.popitem(last=False)
        if folder_id == ALL_FOLDERS:
            self._written.clear()  # notifications were missed: trust the database alone
            for watchers in self._watches.values():
                for w in watchers:
                    w._notify(modseq, resync=True)
            return
        for w in self._watches.get(folder_id, ()):
            w._notify(modseq)

    def forget(self, folder_id: int) -> None:
        """The folder was deleted: drop its record and send its watchers to the database."""
        self._written.pop(folder_id, None)
        for w in self._watches.get(folder_id, ()):
            w._notify(w.modseq, resync=True)

    def changes_known(self, folder_id: int, modseq: int, covering: int) -> FolderChanges | None:
        """The changes after ``modseq`` up to at least ``covering``, if every MODSEQ between
        was taken by a transaction recorded here; else None (ask the database)."""
        record = self._written.get(folder_id)
        if record is None or not modseq < covering:
            return None
        changed: dict[int, FlagChange] = {}
        vanished: set[int] = set()
        at = modseq
        while (written := record.get(at + 1)) is not None:
            for change in written.changed:
                changed[change.uid] = change
            for uid in written.vanished:
                changed.pop(uid, None)
                vanished.add(uid)
            at = written.last
        if at < covering:
            return None
        return FolderChanges(
            highest_modseq=at,
            changed=tuple(changed[uid] for uid in sorted(changed)),
            vanished=tuple(sorted(vanished)),
        )

    def watcher_count(self) -> int:
        return sum(len(s) for s in self._watches.values())

    async def start(self) -> None:
        """Nothing to start in process; the PostgreSQL feed connects its listener here."""

    async def close(self) -> None:
        """Nothing to stop in process."""


class PostgresChangeFeed(ChangeFeed):
    """Receives NOTIFYs from every process sharing the database (LISTEN on a dedicated connection)."""

    RECONNECT_DELAY = 1.0
    # A connection dropped silently (NAT, load balancer) never reports its death: probe it.
    KEEPALIVE_INTERVAL = 30.0
    KEEPALIVE_TIMEOUT = 5.0

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="pg-change-feed")
        # Deliveries made before LISTEN is active would not be heard; wait for it (bounded).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 10)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            folder, _, modseq = payload.partition(":")
            self.publish(int(folder), int(modseq))
        except ValueError:
            log.warning("ignoring malformed change notification %r", payload[:64])

    async def _listen_forever(self) -> None:
        import asyncpg

        first = True
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn)
                await conn.add_listener(CHANNEL, self._on_notify)
                self._connected.set()
                if not first:
                    # Changes made while we were disconnected were not heard: wake everyone.
                    self.publish(ALL_FOLDERS, 0)
                first = False
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=closed: ev.set())
                while not closed.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closed.wait(), self.KEEPALIVE_INTERVAL)
                    if not closed.is_set():
                        await asyncio.wait_for(conn.execute("SELECT 1"), self.KEEPALIVE_TIMEOUT)
                log.warning("change feed connection lost; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change feed cannot listen (%s); retrying", type(exc).__name__)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            await asyncio.sleep(self.RECONNECT_DELAY)
