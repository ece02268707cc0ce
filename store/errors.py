"""Errors raised by the store. Each names the object at fault so callers can answer precisely."""

from __future__ import annotations

from datetime import datetime


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class DomainNotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"domain not hosted here: {name}")
        self.name = name


class DomainExists(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"domain already hosted: {name}")
        self.name = name


class BalNotFound(StoreError):
    def __init__(self, address: str) -> None:
        super().__init__(f"no such BAL: {address}")
        self.address = address


class BalExists(StoreError):
    def __init__(self, address: str) -> None:
        super().__init__(f"BAL already exists: {address}")
        self.address = address


class FolderNotFound(StoreError):
    def __init__(self, bal: str, name: str) -> None:
        super().__init__(f"no folder {name!r} in BAL {bal}")
        self.bal = bal
        self.name = name


class FolderExists(StoreError):
    def __init__(self, bal: str, name: str) -> None:
        super().__init__(f"folder {name!r} already exists in BAL {bal}")
        self.bal = bal
        self.name = name


class InvalidInput(StoreError):
    """A value the store refuses to record (bad address, bad folder name, bad type...)."""


class BlobMissing(StoreError):
    def __init__(self, digest: str) -> None:
        super().__init__(f"blob {digest} is missing from the blob directory")
        self.digest = digest


class StoreNotEmpty(StoreError):
    """Raised by the port tool when the destination already holds data."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or opened (the URL is given without its password)."""


class QueueEntryNotFound(StoreError):
    def __init__(self, entry_id: int) -> None:
        super().__init__(f"no such queue entry: {entry_id}")
        self.entry_id = entry_id


class QueueEntryBusy(StoreError):
    """A queue runner holds a live claim on the entry: it is being delivered right now."""

    def __init__(self, entry_id: int, worker: str | None, until: datetime | None) -> None:
        when = f" until {until:%Y-%m-%d %H:%M:%S} UTC" if until is not None else ""
        super().__init__(
            f"queue entry {entry_id} is being delivered by {worker or 'a queue runner'}{when}; "
            "try again once its claim ends"
        )
        self.entry_id = entry_id
        self.worker = worker
        self.until = until
