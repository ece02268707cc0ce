"""The selected mailbox of one session: message sequence numbers and the updates owed.

A session sees the mailbox as it was when it last told the client: ``uids[i]`` is the UID of
message sequence number ``i + 1``. Changes made since (by deliveries, other sessions, other
processes) are read from the store with :meth:`store.Store.changes_since` and turned into
untagged EXISTS, FETCH FLAGS and EXPUNGE/VANISHED responses, at the moments RFC 9051 §7.5.1
allows: an EXPUNGE shifts sequence numbers, so it is held back while a FETCH, STORE or SEARCH
(by sequence number) runs, and the expunged message keeps its number until then.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from imap import response, sequence
from imap.mailboxes import Target
from imap.model import SequenceSet
from store import Store
from store.changes import FolderWatch
from store.model import Flag, Folder

FRESH = 2**63
"""A ``covering`` MODSEQ no shared answer reaches: ask the store afresh."""


@dataclass(slots=True)
class Modes:
    """What the client enabled (RFC 5161 ENABLE and the commands that imply it)."""

    condstore: bool = False
    qresync: bool = False
    rev2: bool = False
    utf8: bool = False


@dataclass(slots=True)
class SelectedMailbox:
    store: Store
    target: Target
    folder: Folder
    read_only: bool
    watch: FolderWatch
    uids: list[int]
    known_modseq: int
    recent: set[int] = field(default_factory=set)
    # Expunged elsewhere but not yet announced (their sequence numbers are still in use).
    pending_expunge: set[int] = field(default_factory=set)
    # Flag changes this session already reported (its own STORE): UID -> MODSEQ.
    reported: dict[int, int] = field(default_factory=dict)
    # RFC 5182 SEARCHRES: the UIDs the last SEARCH ... RETURN (SAVE) found.
    saved: list[int] = field(default_factory=list)

    @property
    def id(self) -> int:
        return self.folder.id

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def positions(self) -> dict[int, int]:
        """UID -> sequence number, for a command that looks up many (SEARCH)."""
        return {uid: seq for seq, uid in enumerate(self.uids, 1)}

    def resolve(self, seqset: SequenceSet, *, uid: bool) -> list[tuple[int, int]]:
        """(sequence number, UID) pairs a set names, in mailbox order."""
        if uid:
            chosen = sequence.select(seqset, self.uids, self.saved)
            return [(s, u) for u in chosen if (s := self.seq_of(u)) is not None]
        saved_seqs = [s for u in self.saved if (s := self.seq_of(u)) is not None]
        numbers = sequence.select(seqset, range(1, len(self.uids) + 1), saved_seqs)
        return [(n, self.uids[n - 1]) for n in numbers]

    def forget(self, uid: int) -> int | None:
        """Remove an expunged UID; returns the sequence number it had."""
        seq = self.seq_of(uid)
        if seq is not None:
            del self.uids[seq - 1]
            self.recent.discard(uid)
            self.pending_expunge.discard(uid)
        return seq

    async def poll(self, modes: Modes, *, expunges_allowed: bool, woken: bool = False) -> bytes:
        """Untagged responses for what changed since the client was last told. ``woken``: the
        caller already consumed the watch's signal (IDLE waits on it)."""
        changed = self.watch.take() or woken
        if not changed and not (expunges_allowed and self.pending_expunge):
            return b""
        covering = self.watch.modseq
        if self.watch.resync:
            self.watch.resync = False
            covering = FRESH
        changes = await self.store.changes_since(self.id, self.known_modseq, covering=covering)
        self.known_modseq = max(self.known_modseq, changes.highest_modseq)
        out = bytearray()
        self.pending_expunge.update(u for u in changes.vanished if self.seq_of(u) is not None)
        if expunges_allowed and self.pending_expunge:
            out += self.expunge_responses(sorted(self.pending_expunge), modes)
        largest = self.uids[-1] if self.uids else 0
        new = [c.uid for c in changes.changed if c.uid > largest]
        if new:
            self.uids.extend(new)
            self.recent.update(new)
            out += b"* %d EXISTS\r\n" % len(self.uids)
            if not modes.rev2:
                out += b"* %d RECENT\r\n" % len(self.recent)
        for change in changes.changed:
            if change.uid > largest or change.uid in self.pending_expunge:
                continue
            if self.reported.get(change.uid, 0) >= change.modseq:
                continue
            seq = self.seq_of(change.uid)
            if seq is None:
                continue
            out += self.flags_response(
                seq, change.uid, change.flags, change.keywords, change.modseq, modes
            )
        self.reported.clear()
        return bytes(out)

    def expunge_responses(self, uids: Sequence[int], modes: Modes) -> bytes:
        """EXPUNGE (or, with QRESYNC, VANISHED: RFC 7162 §3.2.10) for UIDs leaving the view."""
        out = bytearray()
        gone = [u for u in uids if self.seq_of(u) is not None]
        if modes.qresync:
            for u in gone:
                self.forget(u)
            if gone:
                out += b"* VANISHED %s\r\n" % sequence.compact(gone).encode()
            return bytes(out)
        for u in gone:
            seq = self.forget(u)
            if seq is not None:
                out += b"* %d EXPUNGE\r\n" % seq
        return bytes(out)

    def flags_response(
        self,
        seq: int,
        uid: int,
        flags: Flag,
        keywords: Sequence[str],
        modseq: int,
        modes: Modes,
    ) -> bytes:
        items = b"UID %d FLAGS %s" % (uid, response.flag_list(flags, keywords, uid in self.recent))
        if modes.condstore:
            items += b" MODSEQ (%d)" % modseq
        return b"* %d FETCH (%s)\r\n" % (seq, items)
