"""The domain model the store hands out: plain frozen values, no database objects."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class BalType(enum.StrEnum):
    """The four kinds of MSSanté mailbox of the national directory (mssante-spec §5.1)."""

    PER = "PER"  # personal, bound to a professional (RPPS/ADELI)
    ORG = "ORG"  # organisational: a service, a team
    APP = "APP"  # applicative: read by software (PFI, LPS)
    CAB = "CAB"  # a practice (cabinet)


class BalStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


class Placement(enum.StrEnum):
    """Where a BAL lives while the aiguilleur migrates an operator: the old platform or Colombe."""

    V1 = "v1"
    V2 = "v2"


class Flag(enum.IntFlag):
    """IMAP system flags, stored as a bitmask (RFC 9051 §2.3.2).

    \\Recent is per session, not stored.
    """

    SEEN = 1
    ANSWERED = 2
    FLAGGED = 4
    DELETED = 8
    DRAFT = 16

    @property
    def imap_names(self) -> tuple[str, ...]:
        return tuple(_IMAP_NAMES[f] for f in Flag if f in self)

    @classmethod
    def from_imap(cls, names: list[str] | tuple[str, ...]) -> Flag:
        """The system flags among ``names`` (case-insensitive); other names are keywords."""
        result = cls(0)
        for name in names:
            flag = _BY_IMAP_NAME.get(name.lower())
            if flag is not None:
                result |= flag
        return result


NO_FLAGS = Flag(0)

_IMAP_NAMES = {
    Flag.SEEN: "\\Seen",
    Flag.ANSWERED: "\\Answered",
    Flag.FLAGGED: "\\Flagged",
    Flag.DELETED: "\\Deleted",
    Flag.DRAFT: "\\Draft",
}
_BY_IMAP_NAME = {name.lower(): flag for flag, name in _IMAP_NAMES.items()}


class SpecialUse(enum.StrEnum):
    """RFC 6154 special-use attributes of the folders every BAL is created with."""

    SENT = "\\Sent"
    DRAFTS = "\\Drafts"
    TRASH = "\\Trash"
    ARCHIVE = "\\Archive"
    JUNK = "\\Junk"


DEFAULT_FOLDERS: tuple[tuple[str, SpecialUse | None], ...] = (
    ("INBOX", None),
    ("Sent", SpecialUse.SENT),
    ("Drafts", SpecialUse.DRAFTS),
    ("Trash", SpecialUse.TRASH),
    ("Archive", SpecialUse.ARCHIVE),
)


@dataclass(frozen=True, slots=True)
class Domain:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Bal:
    id: int
    address: str
    type: BalType
    national_id: str | None
    display_name: str
    profession: str | None
    description: str | None
    liste_rouge: bool
    status: BalStatus
    placement: Placement
    created_at: datetime
    updated_at: datetime
    service: str | None = None
    rank: int = 1
    city: str | None = None
    postal_code: str | None = None
    departement: str | None = None
    # Incremented by every change of the BAL (the directory publisher publishes revisions).
    revision: int = 1

    @property
    def publishable(self) -> bool:
        """Whether the national directory should list this BAL: active and not on liste rouge."""
        return self.status is BalStatus.ACTIVE and not self.liste_rouge

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class Delegation:
    """``delegate`` may open ``bal`` (read), manage its messages (write) and/or send as it (send)."""

    bal: str
    delegate: str
    can_read: bool
    can_write: bool
    can_send: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Folder:
    id: int
    bal_id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uid_next: int
    highest_modseq: int
    subscribed: bool


@dataclass(frozen=True, slots=True)
class FolderTotals:
    """A folder with its counts: messages, unseen, flagged \\Deleted, and octets."""

    folder: Folder
    messages: int
    unseen: int
    deleted: int
    size: int


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What a durable delivery produced: the message is committed and its blob fsync'd."""

    folder_id: int
    uid: int
    modseq: int
    blob: str
    size: int


@dataclass(slots=True)
class MessageInfo:
    """A message's metadata as computed at delivery; reading it never opens the blob.

    Treat it as immutable (``dataclasses.replace`` for a changed copy). It is not declared
    frozen because a frozen dataclass builds its instances seven times slower, and a FETCH or
    SEARCH builds one per message of the mailbox.
    """

    folder_id: int
    uid: int
    modseq: int
    internal_date: datetime
    size: int
    blob: str
    flags: Flag
    keywords: tuple[str, ...]
    envelope: dict[str, Any]
    body: dict[str, Any]
    header: bytes
    subject: str | None
    message_id: str | None
    sent_date: datetime | None
    from_addr: str | None
    problems: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Conditions on a message that the database tests, all of which must hold (the IMAP
    SEARCH keys on flags, INTERNALDATE, size and MODSEQ)."""

    with_flags: Flag = NO_FLAGS
    without_flags: Flag = NO_FLAGS
    received_from: datetime | None = None  # INTERNALDATE >= this
    received_before: datetime | None = None  # INTERNALDATE < this
    larger_than: int | None = None
    smaller_than: int | None = None
    modseq_from: int | None = None

    def test(self) -> Callable[[MessageInfo], bool]:
        """The conditions as a test of one row (of an in-memory index), the database's way."""
        tests: list[Callable[[MessageInfo], bool]] = []
        if self.with_flags:
            wanted = int(self.with_flags)
            tests.append(lambda i: int(i.flags) & wanted == wanted)
        if self.without_flags:
            unwanted = int(self.without_flags)
            tests.append(lambda i: not int(i.flags) & unwanted)
        if (since := self.received_from) is not None:
            tests.append(lambda i: i.internal_date >= since)
        if (before := self.received_before) is not None:
            tests.append(lambda i: i.internal_date < before)
        if (larger := self.larger_than) is not None:
            tests.append(lambda i: i.size > larger)
        if (smaller := self.smaller_than) is not None:
            tests.append(lambda i: i.size < smaller)
        if (modseq := self.modseq_from) is not None:
            tests.append(lambda i: i.modseq >= modseq)
        if not tests:
            return lambda i: True
        if len(tests) == 1:
            return tests[0]
        return lambda i: all(test(i) for test in tests)


@dataclass(frozen=True, slots=True)
class FlagChange:
    uid: int
    modseq: int
    flags: Flag
    keywords: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FolderChanges:
    """What changed in a folder since a MODSEQ: the basis of IMAP untagged updates and QRESYNC."""

    highest_modseq: int
    changed: tuple[FlagChange, ...]
    vanished: tuple[int, ...]


class QueueStatus(enum.StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Recipient:
    """One envelope recipient with its DSN parameters (RFC 3461 §4)."""

    address: str
    notify: str | None = None
    orcpt: str | None = None


@dataclass(frozen=True, slots=True)
class QueueEntry:
    id: int
    mail_from: str
    recipients: tuple[Recipient, ...]
    blob: str
    size: int
    status: QueueStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    sender_bal: str | None
    envid: str | None
    ret: str | None
    last_error: str | None
    delay_warned: bool = False
    """The sender already got this entry's (single) "delayed" DSN."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    bal: str | None
    source: str | None
    result: str
    detail: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Document:
    """A named document kept in the store (e.g. the last good whitelist) with its metadata."""

    name: str
    content: bytes | None
    meta: dict[str, Any]
    updated_at: datetime
