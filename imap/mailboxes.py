"""Which mailboxes a user sees, under which names, with which rights (RFC 2342 namespaces).

The user's own BAL is the personal namespace (no prefix). Every BAL delegated to the user (a
secretary reading a doctor's BAL, a team sharing a service BAL) appears under the shared
namespace as ``Partagés/<address>/<folder>``, read-only or read-write as the delegation says.
Names here are Unicode; the session encodes them (modified UTF-7 for IMAP4rev1 clients).
"""

from __future__ import annotations

from dataclasses import dataclass

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


MAX_PATTERN = 1024
"""Octets in a LIST pattern (reference included); longer ones are refused."""


class PatternTooLong(ValueError):
    pass


def matches(reference: str, pattern: str, name: str) -> bool:
    """RFC 9051 §6.3.9: ``*`` matches anything, ``%`` anything but the hierarchy delimiter.

    Matched in O(len(pattern) x len(name)) by keeping the set of pattern positions reachable
    so far (a regular expression would backtrack exponentially on ``***...x``, and one LIST
    would stall every session of the process). INBOX is case-insensitive (RFC 9051 §5.1).
    """
    full = reference + pattern
    if len(full) > MAX_PATTERN:
        raise PatternTooLong(f"LIST pattern longer than {MAX_PATTERN} characters")
    if full[:5].upper() == "INBOX" and name[:5].upper() == "INBOX":
        full, name = "INBOX" + full[5:], "INBOX" + name[5:]
    states = _closure(full, {0})
    for ch in name:
        following: set[int] = set()
        for i in states:
            if i == len(full):
                continue
            p = full[i]
            if p == "*" or (p == "%" and ch != DELIMITER):
                following.add(i)  # the wildcard takes this character and may take more
            elif p == ch:
                following.add(i + 1)
        if not following:
            return False
        states = _closure(full, following)
    return len(full) in states


def _closure(pattern: str, states: set[int]) -> set[int]:
    """Add the positions reachable by letting wildcards match nothing."""
    out = set(states)
    for i in sorted(states):
        while i < len(pattern) and pattern[i] in "*%":
            i += 1
            out.add(i)
    return out


def has_children(name: str, names: set[str]) -> bool:
    prefix = name + DELIMITER
    return any(other.startswith(prefix) for other in names)
