"""Parsed IMAP commands and parser events (pure data, no behaviour).

Every command carries its ``tag`` and its upper-case ``name``; the session layer matches on the
class. Names follow RFC 9051 §9 (formal syntax) and the extension RFCs cited on each class.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

# --------------------------------------------------------------------------- sequence sets


@dataclass(frozen=True, slots=True)
class SeqRange:
    """``start:end`` (or a single number when equal). ``None`` stands for ``*``.

    Kept as written: ``5:2`` is the same set as ``2:5`` (RFC 9051 §9 seq-range), the server
    orders the bounds once it knows what ``*`` is.
    """

    start: int | None
    end: int | None


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence-set; ``saved`` is ``$`` (RFC 5182 SEARCHRES, RFC 9051 seq-last-command)."""

    ranges: tuple[SeqRange, ...] = ()
    saved: bool = False


# --------------------------------------------------------------------------- SEARCH keys


@dataclass(frozen=True, slots=True)
class SearchFlagKey:
    """Argument-less keys: ALL, SEEN, UNSEEN, NEW, OLD, RECENT, ANSWERED, ..."""

    name: str


@dataclass(frozen=True, slots=True)
class SearchTextKey:
    """BCC, BODY, CC, FROM, SUBJECT, TEXT, TO (string) and KEYWORD, UNKEYWORD (flag keyword)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class SearchHeaderKey:
    field_name: str
    value: str


@dataclass(frozen=True, slots=True)
class SearchDateKey:
    """BEFORE, ON, SINCE, SENTBEFORE, SENTON, SENTSINCE."""

    name: str
    date: _dt.date


@dataclass(frozen=True, slots=True)
class SearchNumberKey:
    """LARGER, SMALLER (octets), OLDER, YOUNGER (seconds, RFC 5032 WITHIN)."""

    name: str
    value: int


@dataclass(frozen=True, slots=True)
class SearchSeqKey:
    """A bare sequence set (``uid=False``) or ``UID sequence-set``."""

    sequence: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class SearchModSeqKey:
    """RFC 7162 §3.1.5: ``MODSEQ [entry-name entry-type] mod-sequence-valzer``."""

    modseq: int
    entry_name: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True, slots=True)
class SearchNot:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class SearchOr:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class SearchAnd:
    """A parenthesised group, and the top-level list of keys (implicit AND)."""

    keys: tuple[SearchKey, ...]


SearchKey = (
    SearchFlagKey
    | SearchTextKey
    | SearchHeaderKey
    | SearchDateKey
    | SearchNumberKey
    | SearchSeqKey
    | SearchModSeqKey
    | SearchNot
    | SearchOr
    | SearchAnd
)

# --------------------------------------------------------------------------- FETCH items


@dataclass(frozen=True, slots=True)
class Section:
    """``[1.2.HEADER.FIELDS (FROM TO)]``: part numbers then an optional text specifier.

    ``text`` is one of None, HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME;
    ``fields`` is only set for the HEADER.FIELDS forms (upper-cased field names).
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchAttr:
    """One fetch attribute.

    ``name`` is the attribute without its section: FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE,
    BODYSTRUCTURE, BODY, UID, MODSEQ, RFC822, RFC822.HEADER, RFC822.TEXT, BINARY, BINARY.SIZE.
    ``BODY.PEEK[...]`` is ``name="BODY", peek=True``; ``BODY`` without brackets has
    ``section=None`` and means the non-extensible BODYSTRUCTURE. ``partial`` is
    ``(origin, length)`` from ``<origin.length>``.
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Simple:
    """Commands without arguments: CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE UNSELECT
    EXPUNGE NAMESPACE IDLE."""

    tag: str
    name: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    """``initial_response`` is the SASL-IR text (RFC 4959) as sent; ``"="`` means empty."""

    tag: str
    mechanism: str
    initial_response: str | None = None
    name: str = "AUTHENTICATE"


@dataclass(frozen=True, slots=True)
class Login:
    tag: str
    username: str
    password: str
    name: str = "LOGIN"


@dataclass(frozen=True, slots=True)
class Enable:
    tag: str
    capabilities: tuple[str, ...]
    name: str = "ENABLE"


@dataclass(frozen=True, slots=True)
class QResyncParams:
    """RFC 7162 §3.2.5: ``(QRESYNC (uidvalidity modseq [known-uids [(seqs uids)]]))``."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class Select:
    """SELECT or EXAMINE (``name``), with RFC 7162 CONDSTORE/QRESYNC parameters."""

    tag: str
    name: str
    mailbox: str
    condstore: bool = False
    qresync: QResyncParams | None = None


@dataclass(frozen=True, slots=True)
class MailboxCommand:
    """DELETE, SUBSCRIBE, UNSUBSCRIBE, GETQUOTAROOT: one mailbox argument."""

    tag: str
    name: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class Create:
    """``special_use`` from RFC 6154 ``(USE (\\Drafts ...))``."""

    tag: str
    mailbox: str
    special_use: tuple[str, ...] = ()
    name: str = "CREATE"


@dataclass(frozen=True, slots=True)
class Rename:
    tag: str
    old: str
    new: str
    name: str = "RENAME"


@dataclass(frozen=True, slots=True)
class ListCommand:
    """LIST (RFC 9051 §6.3.9, RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS) and LSUB.

    ``selection`` and ``returns`` are upper-cased option names; ``return_status`` holds the
    STATUS items when ``RETURN (STATUS (...))`` was given.
    """

    tag: str
    name: str
    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    return_status: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Status:
    tag: str
    mailbox: str
    items: tuple[str, ...]
    name: str = "STATUS"


@dataclass(frozen=True, slots=True)
class AppendMessage:
    flags: tuple[str, ...]
    internal_date: _dt.datetime | None
    data: bytes
    binary: bool = False  # sent as literal8 ``~{n}`` (RFC 3516)


@dataclass(frozen=True, slots=True)
class Append:
    """APPEND; more than one message is RFC 3502 MULTIAPPEND."""

    tag: str
    mailbox: str
    messages: tuple[AppendMessage, ...]
    name: str = "APPEND"


@dataclass(frozen=True, slots=True)
class Expunge:
    """UID EXPUNGE (RFC 4315 / RFC 9051); plain EXPUNGE is ``Simple``."""

    tag: str
    uids: SequenceSet
    name: str = "EXPUNGE"


@dataclass(frozen=True, slots=True)
class Search:
    """SEARCH / UID SEARCH.

    ``returns`` is None without ``RETURN``, else the ESEARCH options (RFC 4731; an empty tuple
    means ``RETURN ()``, i.e. ALL). String arguments are decoded with ``charset``.
    """

    tag: str
    uid: bool
    charset: str | None
    criteria: SearchAnd
    returns: tuple[str, ...] | None = None
    name: str = "SEARCH"


@dataclass(frozen=True, slots=True)
class Fetch:
    """FETCH / UID FETCH; macros ALL/FAST/FULL are expanded; ``macro`` keeps the name."""

    tag: str
    uid: bool
    sequence: SequenceSet
    attributes: tuple[FetchAttr, ...]
    changed_since: int | None = None
    vanished: bool = False
    macro: str | None = None
    name: str = "FETCH"


@dataclass(frozen=True, slots=True)
class Store:
    """STORE / UID STORE. ``mode`` is ``""`` (replace), ``"+"`` or ``"-"``."""

    tag: str
    uid: bool
    sequence: SequenceSet
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None
    name: str = "STORE"


@dataclass(frozen=True, slots=True)
class Copy:
    """COPY or MOVE (``name``), with or without UID."""

    tag: str
    name: str
    uid: bool
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Id:
    """RFC 2971 ID; ``params`` is None for ``ID NIL``. Values may be None (NIL)."""

    tag: str
    params: tuple[tuple[str, str | None], ...] | None
    name: str = "ID"


@dataclass(frozen=True, slots=True)
class GetQuota:
    tag: str
    root: str
    name: str = "GETQUOTA"


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed tag followed by a command name we do not implement."""

    tag: str
    name: str


Command = (
    Simple
    | Authenticate
    | Login
    | Enable
    | Select
    | MailboxCommand
    | Create
    | Rename
    | ListCommand
    | Status
    | Append
    | Expunge
    | Search
    | Fetch
    | Store
    | Copy
    | Id
    | GetQuota
    | Unknown
)

# --------------------------------------------------------------------------- parser events


@dataclass(frozen=True, slots=True)
class ContinuationNeeded:
    """A synchronising literal of ``size`` octets was announced: the server must now either
    send ``+ ...`` and keep feeding, or reply tagged NO/BAD and call
    :meth:`~imap.parser.CommandParser.reject_literal` (RFC 9051 §7.5)."""

    tag: str | None
    size: int
    command: str | None = None  # upper-cased command name from the first line, e.g. "APPEND"


@dataclass(frozen=True, slots=True)
class ParseError:
    """A command that cannot be accepted; reply ``<tag> BAD [code] text`` (untagged if no tag).

    ``discarding`` is True when the rest of that command is still on the wire and the parser
    will silently swallow it (e.g. an over-long line or a non-synchronising literal over the
    limit): the server replies now and keeps feeding.
    """

    tag: str | None
    text: str
    code: str | None = None
    discarding: bool = False


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The ``DONE`` line that ends IDLE (RFC 2177, RFC 9051 §6.3.13)."""


Event = Command | ContinuationNeeded | ParseError | IdleDone

__all__ = [
    "Append",
    "AppendMessage",
    "Authenticate",
    "Command",
    "ContinuationNeeded",
    "Copy",
    "Create",
    "Enable",
    "Event",
    "Expunge",
    "Fetch",
    "FetchAttr",
    "GetQuota",
    "Id",
    "IdleDone",
    "ListCommand",
    "Login",
    "MailboxCommand",
    "ParseError",
    "QResyncParams",
    "Rename",
    "Search",
    "SearchAnd",
    "SearchDateKey",
    "SearchFlagKey",
    "SearchHeaderKey",
    "SearchKey",
    "SearchModSeqKey",
    "SearchNot",
    "SearchNumberKey",
    "SearchOr",
    "SearchSeqKey",
    "SearchTextKey",
    "Section",
    "Select",
    "SeqRange",
    "SequenceSet",
    "Simple",
    "Status",
    "Store",
    "Unknown",
]
