"""Which mailboxes a user sees, under which names, with which rights (RFC 2342 namespaces).

The user's own BAL is the personal namespace (no prefix). Every BAL delegated to the user (a
secretary reading a doctor's BAL, a team sharing a service BAL) appears under the shared
namespace as ``Partagés/<address>/<folder>``, read-only or read-write as the delegation says.
Names here are Unicode; the session encodes them (modified UTF-7 for IMAP4rev1 clients).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from store import Store
from store.errors import FolderNotFound, InvalidInput
from store.model import Delegation, Folder
from store.store import FOLDER_DELIMITER, normalise_folder_name

DELIMITER = FOLDER_DELIMITER
SHARED_PREFIX = "Partagés"
"""The root of the shared namespace: French, as the users who read it."""


class NoSuchMailbox(Exception):
    """RFC 5530 NONEXISTENT."""


class NoPermission(Exception):
    """RFC 5530 NOPERM: the mailbox exists but this user may not do that to it."""


@dataclass(frozen=True, slots=True)
class Target:
    """A mailbox name resolved: whose BAL, which folder, and what the user may do."""

    bal: str
    folder: str
    writable: bool
    shared: bool

    @property
    def owner_prefix(self) -> str:
        return f"{SHARED_PREFIX}{DELIMITER}{self.bal}{DELIMITER}" if self.shared else ""

    def display(self, folder: str | None = None) -> str:
        return self.owner_prefix + (folder if folder is not None else self.folder)


@dataclass(frozen=True, slots=True)
class Visible:
    """One entry of a LIST: a mailbox (``folder`` set) or a non-selectable level."""

    name: str
    folder: Folder | None
    target: Target | None


class Namespace:
    """The mailboxes of one authenticated user."""

    def __init__(self, store: Store, user: str) -> None:
        self.store = store
        self.user = user

    async def delegations(self) -> list[Delegation]:
        return [d for d in await self.store.list_delegations(delegate=self.user) if d.can_read]

    async def resolve(self, name: str) -> Target:
        """The BAL and folder a mailbox name designates (raises NoSuchMailbox)."""
        parts = name.split(DELIMITER)
        if parts[0] == SHARED_PREFIX:
            if len(parts) < 3:
                raise NoSuchMailbox(name)
            bal = parts[1].lower()
            delegation = next((d for d in await self.delegations() if d.bal == bal), None)
            if delegation is None:
                raise NoSuchMailbox(name)
            folder = _folder_name(DELIMITER.join(parts[2:]))
            return Target(bal, folder, delegation.can_write, shared=True)
        return Target(self.user, _folder_name(name), writable=True, shared=False)

    async def folder(self, name: str) -> tuple[Target, Folder]:
        target = await self.resolve(name)
        try:
            return target, await self.store.get_folder(target.bal, target.folder)
        except FolderNotFound:
            raise NoSuchMailbox(name) from None

    async def visible(self) -> list[Visible]:
        """Every mailbox the user may see, and the non-selectable levels above the shared ones."""
        own = Target(self.user, "", writable=True, shared=False)
        entries = [Visible(f.name, f, own) for f in await self.store.list_folders(self.user)]
        delegations = await self.delegations()
        if delegations:
            entries.append(Visible(SHARED_PREFIX, None, None))
        for delegation in delegations:
            target = Target(delegation.bal, "", delegation.can_write, shared=True)
            entries.append(Visible(target.owner_prefix.rstrip(DELIMITER), None, None))
            for f in await self.store.list_folders(delegation.bal):
                entries.append(Visible(target.display(f.name), f, target))
        return entries


def _folder_name(name: str) -> str:
    try:
        return normalise_folder_name(name)
    except InvalidInput:
        raise NoSuchMailbox(name) from None


@lru_cache(maxsize=1024)
def _pattern(reference: str, pattern: str) -> re.Pattern[str]:
    # RFC 9051 §6.3.9: "*" matches anything, "%" anything but the hierarchy delimiter.
    out = []
    for ch in reference + pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            out.append(re.escape(ch))
    text = "".join(out)
    # INBOX is case-insensitive (RFC 9051 §5.1): match "inbox", "Inbox/..." too.
    if text.upper().startswith("INBOX"):
        text = "(?i:INBOX)" + text[5:]
    return re.compile(text + r"\Z", re.DOTALL)


def matches(reference: str, pattern: str, name: str) -> bool:
    return _pattern(reference, pattern).match(name) is not None


def has_children(name: str, names: set[str]) -> bool:
    prefix = name + DELIMITER
    return any(other.startswith(prefix) for other in names)
