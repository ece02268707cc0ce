"""The mailbox store: BALs, folders, messages, flags, blobs, outbound queue, audit trail.

The only package that talks to the database and to blob storage. Callers use the intention-revealing
async methods of :class:`store.Store`; they never build SQL.
"""

from store.errors import (
    BalNotFound,
    DomainNotFound,
    FolderExists,
    FolderNotFound,
    StoreError,
)
from store.model import (
    Bal,
    BalStatus,
    BalType,
    Delegation,
    DeliveryResult,
    Domain,
    Flag,
    Folder,
    MessageInfo,
    Placement,
    QueueEntry,
)
from store.store import Store

__all__ = [
    "Bal",
    "BalNotFound",
    "BalStatus",
    "BalType",
    "Delegation",
    "DeliveryResult",
    "Domain",
    "DomainNotFound",
    "Flag",
    "Folder",
    "FolderExists",
    "FolderNotFound",
    "MessageInfo",
    "Placement",
    "QueueEntry",
    "Store",
    "StoreError",
]
