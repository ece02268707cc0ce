"""Store methods for the national address book (the ANS open-data extraction, mssante-spec §5.4)
and the search of our own BALs.

A mixin of :class:`store.Store`.
"""

from __future__ import annotations

from store.database import Database


class AddressBookStore:
    """Mixin: needs ``self.db`` (provided by :class:`store.Store`)."""

    db: Database
