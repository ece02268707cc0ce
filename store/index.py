"""Message indexes: the light fields of a folder's messages, kept in memory.

IMAP clients ask the same questions of the same folder again and again: FETCH 1:* (FLAGS),
SEARCH UNSEEN, a body by UID. Reading 1,000 rows for each cost more than everything else the
command did, so the store keeps, for the folders used lately, what those questions need: UID,
MODSEQ, flags, keywords, INTERNALDATE, size and blob (Dovecot's ``dovecot.index`` holds the same;
the envelope and the MIME structure stay in the database, as in its ``dovecot.index.cache``).

An index is exact as of its ``modseq``: a reader first brings it up to the MODSEQ it must cover
(:meth:`store.Store.indexed_messages`), from the changes this process recorded or else from the
database, which stays the only authority: a lost notification makes an index late, never wrong
once it is asked to cover a MODSEQ read from the database. Indexes share one budget of messages;
the least recently used goes first, and a folder larger than the budget is read from the
database as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from store.model import FolderChanges, MessageInfo

INDEX_BUDGET = 500_000
"""Messages held in all the indexes of a process (about 400 bytes each)."""

INDEXED_FIELDS = frozenset(
    {"folder_id", "uid", "modseq", "internal_date", "size", "blob", "flags", "keywords"}
)
"""The :class:`MessageInfo` fields an index holds; the others are empty in its rows."""


class FolderIndex:
    """The indexed messages of one folder, in UID order (UIDs only grow, so insertion order is
    UID order). Rows are shared with readers: never changed, only replaced."""

    __slots__ = ("folder_id", "lock", "messages", "modseq", "uid_top")

    def __init__(self, folder_id: int) -> None:
        self.folder_id = folder_id
        self.modseq = -1  # not loaded yet
        self.messages: dict[int, MessageInfo] = {}
        # The largest UID ever seen here: a changed UID above it is a new message to load.
        self.uid_top = 0
        self.lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self.modseq >= 0

    def load(self, modseq: int, rows: Iterable[MessageInfo]) -> None:
        self.messages = {info.uid: info for info in rows}
        self.uid_top = max(self.messages, default=0)
        self.modseq = modseq

    def new_uids(self, changes: FolderChanges) -> list[int]:
        """The UIDs of the new messages among ``changes``, whose rows :meth:`apply` needs."""
        top = self.uid_top
        return [c.uid for c in changes.changed if c.uid > top]

    def apply(
        self, changes: FolderChanges, new: Sequence[int], rows: Iterable[MessageInfo]
    ) -> None:
        """Apply flag changes and expunges, add the rows of the ``new`` messages (those not
        expunged since, in UID order), then take the changes' MODSEQ: all without an await.

        A change older than a row's own MODSEQ is ignored: a row read from the database may
        already be newer than the changes that follow its read."""
        messages = self.messages
        for uid in changes.vanished:
            messages.pop(uid, None)
        for change in changes.changed:
            info = messages.get(change.uid)
            if info is not None and change.modseq > info.modseq:
                messages[change.uid] = dataclasses.replace(
                    info, modseq=change.modseq, flags=change.flags, keywords=tuple(change.keywords)
                )
        top = self.uid_top
        for info in rows:
            if info.uid > top:
                messages[info.uid] = info
        self.uid_top = max(top, *new) if new else top
        self.modseq = max(self.modseq, changes.highest_modseq)


class MessageIndexes:
    """The folder indexes of one process, least recently used first, within one budget."""

    def __init__(self, budget: int = INDEX_BUDGET) -> None:
        self.budget = budget
        self._indexes: OrderedDict[int, FolderIndex] = OrderedDict()
        # Messages of each index as of its last refresh, and their sum: checking the budget
        # costs nothing with thousands of folders indexed (10,000 IDLE BALs).
        self._counted: dict[int, int] = {}
        self._total = 0

    def get(self, folder_id: int) -> FolderIndex:
        index = self._indexes.get(folder_id)
        if index is None:
            index = self._indexes[folder_id] = FolderIndex(folder_id)
        else:
            self._indexes.move_to_end(folder_id)
        return index

    def fits(self, index: FolderIndex) -> bool:
        """Counts ``index`` as refreshed and evicts the least recently used indexes until it
        fits in the budget; False (and ``index`` dropped) when it cannot fit alone."""
        size = len(index.messages)
        if size > self.budget:
            self.discard(index)
            return False
        if self._indexes.get(index.folder_id) is not index:
            return True  # dropped meanwhile: its reader uses it once, nobody keeps it
        self._total += size - self._counted.get(index.folder_id, 0)
        self._counted[index.folder_id] = size
        while self._total > self.budget:
            oldest = next(iter(self._indexes.values()))
            if oldest is index:
                break
            self.drop(oldest.folder_id)
        return True

    def drop(self, folder_id: int) -> None:
        # A reader in the middle of a refresh keeps its copy: it is still exact as of its MODSEQ.
        self._indexes.pop(folder_id, None)
        self._total -= self._counted.pop(folder_id, 0)

    def discard(self, index: FolderIndex) -> None:
        """Drop ``index`` if it is still the one held for its folder (not a newer one)."""
        if self._indexes.get(index.folder_id) is index:
            self.drop(index.folder_id)

    def __contains__(self, folder_id: int) -> bool:
        return folder_id in self._indexes

    def __len__(self) -> int:
        return len(self._indexes)
