"""Formatted ENVELOPE and BODYSTRUCTURE responses, kept by blob digest.

A blob is content-addressed, so the responses computed from it never change: they can be shared
by every session, folder and copy of the message, and need no invalidation (Dovecot keeps the
same in its ``dovecot.index.cache``). Reading them back from the store means decoding JSON,
which is most of the cost of ``FETCH 1:* (ENVELOPE)``; the cache is bounded (least recently
used entries go first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

MAX_ENTRIES = 50_000

Key = tuple[str, str, bool]  # (blob digest, "ENVELOPE" | "BODYSTRUCTURE" | "BODY", UTF-8 mode)


class FormattedCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Key, bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def get(self, key: Key, compute: Callable[[], bytes]) -> bytes:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return value
        self.misses += 1
        value = compute()
        self._entries[key] = value
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)
