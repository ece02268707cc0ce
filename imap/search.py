"""SEARCH evaluation and SEARCH / ESEARCH responses. Sans-I/O: the session loads, we match.

Standards: RFC 9051 §6.4.4 and RFC 3501 §6.4.4 (search keys), RFC 7162 §3.1.5 (MODSEQ),
RFC 5032 (OLDER / YOUNGER), RFC 4731 (ESEARCH and RETURN options), RFC 5182 (SEARCHRES ``$``
and ``RETURN (SAVE)``).

The session asks :func:`needs` what to load per message (metadata, header block or the whole
message), builds one :class:`Candidate` per message and calls :func:`matches` /
:func:`search`.

Semantic choices (the RFCs leave them to the server):

* String matching is a case-insensitive substring test: both sides are NFC-normalised and
  ``casefold()``-ed, so "RÉSULTATS", "résultats" and a decomposed "re\\u0301sultats" match
  "Résultats". Whitespace runs are compared as written (no collapsing).
* FROM / TO / CC / BCC / SUBJECT / HEADER look at the top-level header block only, every
  occurrence of the field, unfolded (RFC 5322 §2.2.3) and with RFC 2047 encoded-words decoded.
  A header block that is not UTF-8 (RFC 6532) is read as Latin-1, the usual legacy 8-bit
  charset of French mail.
* BODY searches the decoded text of the ``text/*`` leaves (Content-Transfer-Encoding undone,
  charset applied, unknown charsets read as UTF-8 with replacement) and descends into
  ``message/rfc822`` parts, whose header block is body text of the enclosing message. Other
  leaves (images, PDF, opaque encoded messages) and multipart preambles are not searched,
  like Dovecot without a full-text-search attachment decoder.
* TEXT is the decoded header fields of the top-level header block plus BODY.
* BEFORE / ON / SINCE compare the calendar date of INTERNALDATE as stored; the store keeps
  INTERNALDATE in UTC, so a day boundary is UTC midnight.
* SENTBEFORE / SENTON / SENTSINCE compare the calendar date of the Date header in its own
  timezone (what the sender's clock showed). A message without a parsable Date header falls
  back to INTERNALDATE, as Dovecot and Cyrus do, rather than never matching.
* OLDER n matches when INTERNALDATE is more than n seconds before ``Scope.now``; YOUNGER n
  when it is at most n seconds before: the two are complementary (RFC 5032 §3).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from imap.model import (
    SearchAnd,
    SearchDateKey,
    SearchFlagKey,
    SearchHeaderKey,
    SearchKey,
    SearchModSeqKey,
    SearchNot,
    SearchNumberKey,
    SearchOr,
    SearchSeqKey,
    SearchTextKey,
)
from imap.sequence import compact, contains
from store.mime import decode_header_value
from store.model import Flag, MessageFilter, MessageInfo

__all__ = [
    "Candidate",
    "Need",
    "Scope",
    "columns",
    "esearch_response",
    "matches",
    "needs",
    "result_modseq",
    "search",
    "search_response",
    "should_respond",
    "uses_modseq",
]


class Need(enum.IntEnum):
    """What the session must load per message before :func:`matches` (ordered: max wins)."""

    METADATA = 0  # MessageInfo only: flags, dates, sizes, UID, sequence number, modseq
    HEADER = 1  # the complete top-level header block (MessageInfo.header may be truncated)
    FULL = 2  # the raw message


@dataclass(slots=True)
class Candidate:
    """One message to test. ``header``/``raw`` are filled when :func:`needs` says so.

    ``header`` is the complete top-level header block; without it ``raw`` is used, then
    ``info.header`` (possibly truncated at delivery). ``fields``: the header already decoded
    (:func:`decoded_header`), in which case no header block is needed.
    """

    seq: int
    uid: int
    info: MessageInfo
    recent: bool
    header: bytes | None = None
    raw: bytes | None = None
    # Decoded text, computed on first use: an OR of several string keys decodes once.
    fields: list[tuple[str, str]] | None = field(default=None, repr=False)
    _body: str | None = field(default=None, init=False, repr=False)


@dataclass(frozen=True)
class Scope:
    """What a search needs to know about the mailbox as a whole.

    ``uids``: every UID of the mailbox, ascending (``*`` of a UID set is the last one);
    ``count``: the number of messages (``*`` of a sequence-number set);
    ``saved``: the UIDs saved by ``RETURN (SAVE)`` for ``$`` (RFC 5182 §2.1);
    ``now``: the reference instant of OLDER / YOUNGER (RFC 5032).
    """

    uids: Sequence[int]
    count: int
    saved: Sequence[int]
    now: datetime
    _saved_set: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # ``$`` is tested once per message: a set keeps a large saved result O(1).
        object.__setattr__(self, "_saved_set", frozenset(self.saved))


# --------------------------------------------------------------------------- what to load

_HEADER_KEYS = frozenset({"BCC", "CC", "FROM", "SUBJECT", "TO"})
_FULL_KEYS = frozenset({"BODY", "TEXT"})


def needs(criteria: SearchKey) -> Need:
    """The most the criteria require per message (see :class:`Need`).

    SENT* keys only need metadata: the Date header was parsed at delivery
    (``MessageInfo.sent_date``).
    """
    if isinstance(criteria, SearchTextKey):
        if criteria.name in _FULL_KEYS:
            return Need.FULL
        return Need.HEADER if criteria.name in _HEADER_KEYS else Need.METADATA
    if isinstance(criteria, SearchHeaderKey):
        return Need.HEADER
    if isinstance(criteria, SearchNot):
        return needs(criteria.key)
    if isinstance(criteria, SearchOr):
        return max(needs(criteria.left), needs(criteria.right))
    if isinstance(criteria, SearchAnd):
        return max((needs(key) for key in criteria.keys), default=Need.METADATA)
    return Need.METADATA


def columns(criteria: SearchKey) -> frozenset[str]:
    """The :class:`MessageInfo` fields :func:`matches` reads for the criteria (besides the UID
    and the blob, always there; the header block and the raw message are :func:`needs`'
    business): a search on the sender loads no dates, sizes or flags for 1,000 messages."""
    if isinstance(criteria, SearchAnd):
        return frozenset().union(*(columns(key) for key in criteria.keys))
    if isinstance(criteria, SearchOr):
        return columns(criteria.left) | columns(criteria.right)
    if isinstance(criteria, SearchNot):
        return columns(criteria.key)
    if isinstance(criteria, SearchFlagKey):
        return frozenset() if criteria.name in ("ALL", "OLD", "RECENT") else _FLAG_COLUMNS
    if isinstance(criteria, SearchTextKey):
        return _FLAG_COLUMNS if criteria.name in ("KEYWORD", "UNKEYWORD") else frozenset()
    if isinstance(criteria, SearchDateKey):
        if criteria.name.startswith("SENT"):
            return frozenset({"sent_date", "internal_date"})
        return frozenset({"internal_date"})
    if isinstance(criteria, SearchNumberKey):
        return frozenset({"size" if criteria.name in ("LARGER", "SMALLER") else "internal_date"})
    if isinstance(criteria, SearchModSeqKey):
        return frozenset({"modseq"})
    return frozenset()  # sequence sets


_FLAG_COLUMNS = frozenset({"flags", "keywords"})


def uses_modseq(criteria: SearchKey) -> bool:
    """Whether a MODSEQ key appears anywhere (RFC 7162 §3.1.5: the response then carries the
    highest mod-sequence of the returned messages)."""
    if isinstance(criteria, SearchModSeqKey):
        return True
    if isinstance(criteria, SearchNot):
        return uses_modseq(criteria.key)
    if isinstance(criteria, SearchOr):
        return uses_modseq(criteria.left) or uses_modseq(criteria.right)
    if isinstance(criteria, SearchAnd):
        return any(uses_modseq(key) for key in criteria.keys)
    return False


# --------------------------------------------------------------------------- matching


def database_filter(criteria: SearchKey) -> MessageFilter | None:
    """The criteria as conditions the store can test itself, when every key is one of those
    (system flags, BEFORE/ON/SINCE, LARGER/SMALLER, MODSEQ, ALL, in any AND); else None and
    :func:`matches` decides. Same semantics: INTERNALDATE's calendar date in UTC."""
    with_flags, without_flags = Flag(0), Flag(0)
    since: datetime | None = None
    before: datetime | None = None
    larger: int | None = None
    smaller: int | None = None
    modseq: int | None = None

    def midnight(day: date) -> datetime:
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    def visit(key: SearchKey) -> bool:
        nonlocal with_flags, without_flags, since, before, larger, smaller, modseq
        if isinstance(key, SearchAnd):
            return all(visit(k) for k in key.keys)
        if isinstance(key, SearchFlagKey):
            if key.name == "ALL":
                return True
            negate = key.name.startswith("UN")
            flag = _SYSTEM_FLAGS.get(key.name[2:] if negate else key.name)
            if flag is None:
                return False  # NEW, OLD, RECENT: per session
            if negate:
                without_flags |= flag
            else:
                with_flags |= flag
            return True
        if isinstance(key, SearchDateKey) and key.name in ("BEFORE", "ON", "SINCE"):
            start = midnight(key.date)
            if key.name in ("ON", "SINCE"):
                since = start if since is None else max(since, start)
            if key.name in ("ON", "BEFORE"):
                end = start + timedelta(days=1) if key.name == "ON" else start
                before = end if before is None else min(before, end)
            return True
        if isinstance(key, SearchNumberKey) and key.name in ("LARGER", "SMALLER"):
            if key.name == "LARGER":
                larger = key.value if larger is None else max(larger, key.value)
            else:
                smaller = key.value if smaller is None else min(smaller, key.value)
            return True
        if isinstance(key, SearchModSeqKey):
            modseq = key.modseq if modseq is None else max(modseq, key.modseq)
            return True
        return False

    if not visit(criteria):
        return None
    return MessageFilter(with_flags, without_flags, since, before, larger, smaller, modseq)


def search(criteria: SearchKey, candidates: Iterable[Candidate], scope: Scope) -> list[Candidate]:
    """The candidates matching ``criteria``, in the given order."""
    return [c for c in candidates if matches(criteria, c, scope)]


def matches(criteria: SearchKey, c: Candidate, scope: Scope) -> bool:
    """Whether message ``c`` satisfies ``criteria`` (RFC 9051 §6.4.4)."""
    return matcher(criteria, scope)(c)


Test = Callable[[Candidate], bool]


def matcher(criteria: SearchKey, scope: Scope) -> Test:
    """The test of ``criteria`` (RFC 9051 §6.4.4), built once for a whole mailbox: the keys
    are looked at here, not once per message."""
    if isinstance(criteria, SearchAnd):
        tests = [matcher(key, scope) for key in criteria.keys]
        if len(tests) == 1:
            return tests[0]
        return lambda c: all(test(c) for test in tests)
    if isinstance(criteria, SearchOr):
        left, right = matcher(criteria.left, scope), matcher(criteria.right, scope)
        return lambda c: left(c) or right(c)
    if isinstance(criteria, SearchNot):
        negated = matcher(criteria.key, scope)
        return lambda c: not negated(c)
    if isinstance(criteria, SearchFlagKey):
        return _flag_test(criteria.name)
    if isinstance(criteria, SearchTextKey):
        return _text_test(criteria.name, criteria.value)
    if isinstance(criteria, SearchHeaderKey):
        return _header_test(criteria.field_name.lower(), criteria.value)
    if isinstance(criteria, SearchDateKey):
        name, day = criteria.name, criteria.date
        return lambda c: _date_key(name, day, c.info)
    if isinstance(criteria, SearchNumberKey):
        name, value, now = criteria.name, criteria.value, scope.now
        return lambda c: _number_key(name, value, c.info, now)
    if isinstance(criteria, SearchSeqKey):
        seqset = criteria.sequence
        if seqset.saved:
            # RFC 5182 §2.1: "$" holds UIDs whether it appears as a sequence set or after UID.
            saved = scope._saved_set
            return lambda c: c.uid in saved
        if criteria.uid:
            last = scope.uids[-1] if scope.uids else 0
            return lambda c: contains(seqset, c.uid, last)
        count = scope.count
        return lambda c: contains(seqset, c.seq, count)
    # SearchModSeqKey, RFC 7162 §3.1.5: the entry name and type only narrow which metadata
    # item counted; we keep one mod-sequence per message, which covers every entry.
    modseq = criteria.modseq
    return lambda c: c.info.modseq >= modseq


def _flag_test(name: str) -> Test:
    if name == "ALL":
        return lambda c: True
    if name == "NEW":  # RFC 9051 §6.4.4: "RECENT UNSEEN" (RFC 3501)
        return lambda c: c.recent and not int(c.info.flags) & Flag.SEEN.value
    if name == "OLD":
        return lambda c: not c.recent
    if name == "RECENT":
        return lambda c: c.recent
    negate = name.startswith("UN")
    bit = _SYSTEM_FLAGS[name[2:] if negate else name].value
    if negate:
        return lambda c: not int(c.info.flags) & bit
    return lambda c: bool(int(c.info.flags) & bit)


def _text_test(name: str, value: str) -> Test:
    if name == "KEYWORD":
        return lambda c: _has_keyword(c.info, value)
    if name == "UNKEYWORD":
        return lambda c: not _has_keyword(c.info, value)
    needle = _norm(value)
    if name == "BODY":
        return lambda c: needle in _body_text(c)
    if name == "TEXT":
        return lambda c: (
            any(needle in f"{field}: {text}" for field, text in _fields(c))
            or needle in _body_text(c)
        )
    return _header_test(name.lower(), value)


def _header_test(field_name: str, value: str) -> Test:
    """RFC 9051 §6.4.4 HEADER: any occurrence of the field containing ``value``; an empty
    ``value`` matches every message having the field (the empty string is in every value)."""
    needle = _norm(value)
    return lambda c: any(name == field_name and needle in text for name, text in _fields(c))


_SYSTEM_FLAGS = {
    "ANSWERED": Flag.ANSWERED,
    "DELETED": Flag.DELETED,
    "DRAFT": Flag.DRAFT,
    "FLAGGED": Flag.FLAGGED,
    "SEEN": Flag.SEEN,
}


def _has_keyword(info: MessageInfo, keyword: str) -> bool:
    # RFC 9051 §2.3.2: flag names are case-insensitive. A system flag name given to KEYWORD is
    # honoured rather than silently never matching.
    system = Flag.from_imap([keyword])
    if system:
        return system in info.flags
    folded = keyword.casefold()
    return any(k.casefold() == folded for k in info.keywords)


def _date_key(name: str, day: date, info: MessageInfo) -> bool:
    if name.startswith("SENT"):
        when = info.sent_date or info.internal_date
        name = name[4:]
    else:
        when = info.internal_date
    # Calendar date in the datetime's own timezone; time of day ignored (RFC 9051 §6.4.4).
    actual = when.date()
    if name == "BEFORE":
        return actual < day
    if name == "ON":
        return actual == day
    return actual >= day  # SINCE


def _number_key(name: str, value: int, info: MessageInfo, now: datetime) -> bool:
    if name == "LARGER":
        return info.size > value
    if name == "SMALLER":
        return info.size < value
    age = (now - info.internal_date).total_seconds()
    if name == "OLDER":
        return age > value
    return age <= value  # YOUNGER


# --------------------------------------------------------------------------- decoded text


def _norm(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


# One field per match, with its continuation lines (RFC 5322 §2.2.3 folding).
_FIELD_RE = re.compile(r"^([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.M)
_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")


def _header_block(c: Candidate) -> bytes:
    if c.header is not None:
        return c.header
    if c.raw is not None:
        return c.raw[: c.info.body["body_start"]]
    return c.info.header


def _decode_header_block(block: bytes) -> list[tuple[str, str]]:
    """``(lower-case name, normalised decoded value)`` for every field, in order."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        text = block.decode("latin-1")
    fields: list[tuple[str, str]] = []
    for match in _FIELD_RE.finditer(text):
        value = _FOLD_RE.sub("", match.group(2)).strip()
        fields.append((match.group(1).lower(), _norm(decode_header_value(value))))
    return fields


# Decoded header fields by blob digest: a blob never changes (content-addressed), so a search
# run again over the same messages (practice software polling) decodes nothing.
_DECODED: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()
DECODED_CACHE_SIZE = 20_000


def decoded_header(blob: str) -> list[tuple[str, str]] | None:
    """The decoded header fields of the message stored in ``blob``, if a search decoded them
    recently: with them a search reads no header from the store."""
    cached = _DECODED.get(blob)
    if cached is not None:
        _DECODED.move_to_end(blob)
    return cached


def _fields(c: Candidate) -> list[tuple[str, str]]:
    if c.fields is None:
        complete = c.header is not None or c.raw is not None
        cached = _DECODED.get(c.info.blob) if complete and c.info.blob else None
        if cached is None:
            cached = _decode_header_block(_header_block(c))
            if complete and c.info.blob:
                _DECODED[c.info.blob] = cached
                if len(_DECODED) > DECODED_CACHE_SIZE:
                    _DECODED.popitem(last=False)
        else:
            _DECODED.move_to_end(c.info.blob)
        c.fields = cached
    return c.fields


def _body_text(c: Candidate) -> str:
    if c._body is None:
        if c.raw is None:
            # A silent "no match" would hide a session that skipped needs(): fail loudly.
            raise ValueError("BODY/TEXT search needs Candidate.raw (see needs())")
        out: list[str] = []
        _walk(c.raw, c.info.body, out)
        c._body = _norm("\n".join(out))
    return c._body


def _walk(raw: bytes, part: Mapping[str, Any], out: list[str]) -> None:
    children = part.get("parts")
    if children is not None:
        for child in children:
            _walk(raw, child, out)
        return
    message = part.get("message")
    if message is not None:
        inner = message["body"]
        # The embedded message's header is text of the enclosing body (RFC 2046 §5.2.1).
        for name, value in _decode_header_block(raw[inner["header_start"] : inner["body_start"]]):
            out.append(f"{name}: {value}")
        _walk(raw, inner, out)
        return
    if part.get("type") != "text":
        return
    data = _transfer_decode(raw[part["body_start"] : part["end"]], part.get("encoding"))
    out.append(_charset_decode(data, part.get("params") or []))


def _transfer_decode(data: bytes, encoding: str | None) -> bytes:
    """Undo the Content-Transfer-Encoding (RFC 2045 §6); damaged data is decoded leniently."""
    if encoding == "BASE64":
        # Line breaks and stray characters are skipped (RFC 2045 §6.8); restore padding so a
        # truncated last quantum still yields its complete octets.
        cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        if len(cleaned) % 4 == 1:  # a lone sextet carries no complete octet
            cleaned = cleaned[:-1]
        try:
            return base64.b64decode(cleaned + b"=" * (-len(cleaned) % 4))
        except (binascii.Error, ValueError):
            return data
    if encoding == "QUOTED-PRINTABLE":
        return binascii.a2b_qp(data)
    return data


def _charset_decode(data: bytes, params: Sequence[Sequence[str]]) -> str:
    charset = next((v for k, v in params if k.lower() == "charset"), "")
    name = charset.strip().lower()
    # US-ASCII (the RFC 2045 default) labelled 8-bit text is in practice UTF-8.
    if name and name not in ("us-ascii", "ascii"):
        try:
            # bytes.decode rejects unknown names and bytes-to-bytes codecs ("base64").
            return data.decode(name, "replace")
        except LookupError:
            pass
    return data.decode("utf-8", "replace")


# --------------------------------------------------------------------------- responses


def should_respond(returns: tuple[str, ...] | None) -> bool:
    """Whether an untagged SEARCH / ESEARCH response is sent.

    RFC 5182 §2.4: with ``RETURN (SAVE)`` alone the result is only saved, no ESEARCH is sent.
    """
    return returns is None or set(returns) != {"SAVE"}


def _options(returns: tuple[str, ...]) -> set[str]:
    # RFC 4731 §3.1: "RETURN ()" is "RETURN (ALL)". SAVE produces no item (RFC 5182 §2.4).
    return {"ALL"} if not returns else set(returns) - {"SAVE"}


def result_modseq(
    returns: tuple[str, ...] | None, matched: Sequence[int], modseq_of: Mapping[int, int]
) -> int | None:
    """The mod-sequence to report for a search using MODSEQ, or None when nothing matched.

    RFC 7162 §3.1.5: the highest mod-sequence of the messages returned. RFC 4731 §3.2: with
    only MIN and/or MAX requested, the messages returned are those one or two; with ALL or
    COUNT (or a plain SEARCH), all matching messages. ``matched`` is ascending; ``modseq_of``
    maps its numbers (sequence numbers or UIDs) to mod-sequences.
    """
    if not matched:
        return None
    opts = None if returns is None else _options(returns)
    if opts is None or "ALL" in opts or "COUNT" in opts:
        return max(modseq_of[n] for n in matched)
    picked = [matched[0]] if "MIN" in opts else []
    if "MAX" in opts:
        picked.append(matched[-1])
    return max((modseq_of[n] for n in picked), default=None)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def esearch_response(
    tag: str,
    *,
    uid: bool,
    matched: Sequence[int],
    returns: tuple[str, ...],
    highest_modseq: int | None,
) -> bytes:
    """``* ESEARCH (TAG "A1") UID MIN 2 MAX 9 COUNT 3 ALL 2,5,9`` (RFC 4731 §3.1, RFC 9051
    §7.3.4).

    ``matched`` is ascending. MIN, MAX and ALL are omitted when nothing matched; COUNT is
    always given when requested, "COUNT 0" included. ``highest_modseq`` (see
    :func:`result_modseq`) adds the ``MODSEQ n`` item of RFC 4731 §3.2 / RFC 7162 §3.1.5,
    only for a non-empty result.
    """
    opts = _options(returns)
    items = [f"* ESEARCH (TAG {_quote(tag)})"]
    if uid:
        items.append("UID")
    if matched:
        if "MIN" in opts:
            items.append(f"MIN {matched[0]}")
        if "MAX" in opts:
            items.append(f"MAX {matched[-1]}")
    if "COUNT" in opts:
        items.append(f"COUNT {len(matched)}")
    if matched and "ALL" in opts:
        items.append(f"ALL {compact(matched)}")
    if matched and highest_modseq is not None:
        items.append(f"MODSEQ {highest_modseq}")
    return (" ".join(items) + "\r\n").encode("ascii")


def search_response(matched: Sequence[int], highest_modseq: int | None) -> bytes:
    """``* SEARCH 2 5 9`` (RFC 3501 §7.2.5); ``* SEARCH`` alone when nothing matched.

    RFC 7162 §3.1.5 / §7 (search-sort-mod-seq): ``(MODSEQ n)`` follows the numbers, and only
    when there are numbers.
    """
    line = "* SEARCH"
    if matched:
        line += " " + " ".join(map(str, matched))
        if highest_modseq is not None:
            line += f" (MODSEQ {highest_modseq})"
    return (line + "\r\n").encode("ascii")
