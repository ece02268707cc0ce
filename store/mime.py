"""MIME metadata computed once at delivery: IMAP ENVELOPE and BODYSTRUCTURE with byte offsets.

Sans-I/O. :func:`parse_message` never raises: malformed input yields best-effort metadata plus
human-readable ``problems``. Every part carries absolute offsets into the raw message so that
``BODY[1.2]``, ``BODY[1.HEADER]``, ``BODY[1.MIME]`` and partial fetches are byte-range reads.

Part dict (JSON-serialisable), RFC 3501 §7.4.2 / RFC 9051 §7.5.2::

    {"type", "subtype", "params", "id", "description", "encoding", "size", "lines", "md5",
     "disposition", "language", "location", "header_start", "body_start", "end",
     "parts": [Part, ...] | None, "message": {"envelope": ..., "body": Part} | None}
"""

from __future__ import annotations

import base64
import binascii
import functools
import mmap
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeAlias
from urllib.parse import unquote_to_bytes

__all__ = [
    "MAX_DEPTH",
    "MAX_HEADER_BYTES",
    "MAX_PARTS",
    "MISSING_HOST",
    "MessageMetadata",
    "decode_header_value",
    "parse_address_list",
    "parse_message",
]

MAX_DEPTH = 32
MAX_PARTS = 5000
MAX_HEADER_BYTES = 1 << 20
# Host given to a mailbox without "@domain": a NIL host would read as an RFC 3501 group marker.
# Same convention as UW c-client.
MISSING_HOST = ".MISSING-HOST-NAME."

_MAX_PROBLEMS = 100
_COUNT_CHUNK = 1 << 20
_LF = 0x0A
_CR = 0x0D

_Buf: TypeAlias = bytes | bytearray | mmap.mmap
_Address: TypeAlias = list[str | None]


@dataclass(frozen=True, slots=True)
class MessageMetadata:
    """What IMAP needs about a stored message, computed once at delivery."""

    envelope: dict[str, Any]
    body: dict[str, Any]
    header_size: int
    subject: str | None
    message_id: str | None
    sent_date: datetime | None
    from_addr: str | None
    problems: tuple[str, ...]


class _Ctx:
    """Parse state shared by the recursive descent."""

    __slots__ = ("buf", "dropped", "parts", "parts_noted", "problems")

    def __init__(self, buf: _Buf) -> None:
        self.buf = buf
        self.problems: list[str] = []
        self.dropped = 0
        self.parts = 0
        self.parts_noted = False

    def problem(self, note: str) -> None:
        # A hostile message can contain millions of defects: keep the list bounded.
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(note)
        else:
            self.dropped += 1


def _at(section: str) -> str:
    return f" at {section}" if section else ""


# --------------------------------------------------------------------------------------------
# Public entry point


def parse_message(data: bytes | bytearray | memoryview | mmap.mmap) -> MessageMetadata:
    """Compute ENVELOPE, BODYSTRUCTURE (with offsets) and search fields. Never raises."""
    try:
        return _parse_message(data)
    except Exception as exc:  # the contract is "never raise": degrade to an opaque leaf
        try:
            size = len(data)
        except Exception:
            size = 0
        body = _make_part("text", "plain", [["charset", "us-ascii"]], {}, 0, 0, size, None)
        return MessageMetadata(
            envelope=_envelope_of({}, []),
            body=body,
            header_size=0,
            subject=None,
            message_id=None,
            sent_date=None,
            from_addr=None,
            problems=(f"internal parser error: {exc!r}",),
        )


def _as_buffer(data: bytes | bytearray | memoryview | mmap.mmap) -> _Buf:
    """A buffer supporting ``find``; memoryview has none, so use its exporter when possible."""
    if isinstance(data, memoryview):
        obj = data.obj
        if (
            isinstance(obj, bytes | bytearray | mmap.mmap)
            and data.c_contiguous
            and data.nbytes == len(obj)
        ):
            return obj
        return data.tobytes()  # a sub-view: one copy is unavoidable
    return data


def _parse_message(data: bytes | bytearray | memoryview | mmap.mmap) -> MessageMetadata:
    buf = _as_buffer(data)
    ctx = _Ctx(buf)
    size = len(buf)
    body, fields = _parse_entity(ctx, 0, size, size, 0, "", False, False)
    notes: list[str] = []
    envelope = _envelope_of(fields, notes)
    for note in notes:
        ctx.problem(note)
    if ctx.dropped:
        ctx.problems.append(f"{ctx.dropped} further problems not listed")
    raw_subject = envelope["subject"]
    return MessageMetadata(
        envelope=envelope,
        body=body,
        header_size=body["body_start"],
        subject=decode_header_value(raw_subject) if raw_subject is not None else None,
        message_id=envelope["message_id"] or None,
        sent_date=_parse_date(envelope["date"]),
        from_addr=_first_mailbox(envelope["from"]),
        problems=tuple(ctx.problems),
    )


# --------------------------------------------------------------------------------------------
# Entities (a message or a body part): header block, then body


def _parse_entity(
    ctx: _Ctx,
    start: int,
    end: int,
    limit: int,
    depth: int,
    section: str,
    in_digest: bool,
    force_leaf: bool,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse the entity in ``[start, end)``; ``limit`` >= end bounds the blank-line search."""
    ctx.parts += 1
    body_start, fields = _read_header(ctx, start, end, limit, section)
    ctype, subtype, params = _content_type(ctx, fields.get("content-type"), in_digest, section)
    part = _make_part(ctype, subtype, params, fields, start, body_start, end, ctx)
    if ctype == "multipart":
        part["parts"] = _multipart_children(
            ctx, subtype, params, body_start, end, limit, depth, section, force_leaf
        )
    elif ctype == "message" and subtype in ("rfc822", "global"):
        # RFC 2046 §5.2.1: only identity encodings may be parsed as an embedded message;
        # a base64/QP-encoded one stays an opaque leaf.
        if part["encoding"] not in ("7BIT", "8BIT", "BINARY"):
            pass
        elif depth >= MAX_DEPTH:
            ctx.problem(f"nesting deeper than {MAX_DEPTH}{_at(section)}: message not descended")
        elif force_leaf or ctx.parts >= MAX_PARTS:
            _note_parts_limit(ctx, section)
        else:
            inner, inner_fields = _parse_entity(
                ctx, body_start, end, limit, depth + 1, section, False, False
            )
            notes: list[str] = []
            part["message"] = {"envelope": _envelope_of(inner_fields, notes), "body": inner}
            for note in notes:
                ctx.problem(note + _at(section))
    return part, fields


def _make_part(
    ctype: str,
    subtype: str,
    params: list[list[str]],
    fields: dict[str, str],
    header_start: int,
    body_start: int,
    end: int,
    ctx: _Ctx | None,
) -> dict[str, Any]:
    lines: int | None = None
    if ctx is not None and (
        ctype == "text" or (ctype == "message" and subtype in ("rfc822", "global"))
    ):
        lines = _count_lines(ctx.buf, body_start, end)
    section_problems: list[str] = []
    disposition = _disposition(fields.get("content-disposition"), section_problems)
    if ctx is not None:
        for note in section_problems:
            ctx.problem(note)
    return {
        "type": ctype,
        "subtype": subtype,
        "params": params,
        "id": fields.get("content-id"),
        "description": fields.get("content-description"),
        "encoding": _encoding(fields.get("content-transfer-encoding")),
        "size": end - body_start,
        "lines": lines,
        "md5": fields.get("content-md5"),
        "disposition": disposition,
        "language": _language(fields.get("content-language")),
        "location": fields.get("content-location"),
        "header_start": header_start,
        "body_start": body_start,
        "end": end,
        "parts": None,
        "message": None,
    }


def _synthetic(ctx: _Ctx, start: int, end: int) -> dict[str, Any]:
    """A header-less text/plain part standing for content that is not (or cannot be) split."""
    ctx.parts += 1
    return _make_part("text", "plain", [["charset", "us-ascii"]], {}, start, start, end, ctx)


def _note_parts_limit(ctx: _Ctx, section: str) -> None:
    if not ctx.parts_noted:
        ctx.parts_noted = True
        ctx.problem(f"more than {MAX_PARTS} parts: remaining content kept in part {section}")


def _count_lines(buf: _Buf, start: int, end: int) -> int:
    """Line count as IMAP servers report it: LFs, plus one for an unterminated last line."""
    if end <= start:
        return 0
    if isinstance(buf, bytes | bytearray):
        count = buf.count(b"\n", start, end)
    else:
        # mmap has no count(): bounded slices keep memory flat on a 30 MB body.
        count = 0
        for pos in range(start, end, _COUNT_CHUNK):
            count += buf[pos : min(pos + _COUNT_CHUNK, end)].count(b"\n")
    if buf[end - 1] != _LF:
        count += 1
    return count


# One field per match: name (RFC 5322 §3.6.8 ftext, printable ASCII but ":"), optional WSP before
# the colon (RFC 5322 §4.5 obs-optional), value with its folded continuation lines (§2.2.3).
# Anything else, with its continuation lines, is a malformed line (group 3).
_FIELD_RE = re.compile(r"([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)|([^\n]+(?:\n[ \t][^\n]*)*)")


def _read_header(
    ctx: _Ctx, start: int, end: int, limit: int, section: str
) -> tuple[int, dict[str, str]]:
    """Find the header/body separator and parse fields; returns (body_start, fields)."""
    buf = ctx.buf
    if start >= end:
        return end, {}
    # RFC 5322 §2.1 / RFC 2046 §5.1.1: a blank first line means "no header fields".
    head = buf[start : min(start + 2, limit)]
    if head[:1] == b"\n":
        return min(start + 1, end), {}
    if head == b"\r\n":
        return min(start + 2, end), {}
    # ``limit`` may exceed ``end`` by the CRLF that precedes a multipart delimiter: a part made
    # of header fields and an empty body ends its blank line inside that CRLF.
    window = min(limit, start + MAX_HEADER_BYTES)
    # Search first for the separator matching the first line's ending, then bound the other
    # search by its result: otherwise each part would be scanned to its end once more.
    newline = buf.find(b"\n", start, window)
    if newline > start and buf[newline - 1] == _CR:
        crlf = buf.find(b"\n\r\n", start, window)
        lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else window)
    else:
        lf = buf.find(b"\n\n", start, window)
        crlf = buf.find(b"\n\r\n", start, lf + 3 if lf >= 0 else window)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        text_end, body_start = crlf + 1, crlf + 3
    elif lf >= 0:
        text_end, body_start = lf + 1, lf + 2
    elif window >= limit:
        text_end = body_start = end
        ctx.problem(f"no header/body separator{_at(section)}")
    else:
        cut = buf.rfind(b"\n", start, window)
        text_end = body_start = cut + 1 if cut >= 0 else window
        ctx.problem(
            f"header block larger than {MAX_HEADER_BYTES} octets{_at(section)}: "
            "rest treated as body"
        )
    text_end = min(text_end, end)
    body_start = min(body_start, end)
    return body_start, _parse_fields(ctx, buf[start:text_end], section)


def _parse_fields(ctx: _Ctx, block: bytes | bytearray, section: str) -> dict[str, str]:
    """Header fields, unfolded (RFC 5322 §2.2.3); the first occurrence of a name wins."""
    fields: dict[str, str] = {}
    # 8-bit headers happen (RFC 6532 or plain garbage): decode leniently, raw bytes stay stored.
    text = block.decode("utf-8", "replace")
    for match in _FIELD_RE.finditer(text):
        name = match.group(1)
        if name is None:
            junk = match.group(3).strip()
            if junk:
                ctx.problem(f"malformed header line skipped{_at(section)}: {junk[:40]!r}")
            continue
        name = name.lower()
        if name not in fields:
            value = match.group(2)
            if "\n" in value:
                value = value.replace("\r\n", "").replace("\n", "")
            fields[name] = value.strip()
    return fields


# --------------------------------------------------------------------------------------------
# Multipart (RFC 2046 §5.1)


def _multipart_children(
    ctx: _Ctx,
    subtype: str,
    params: list[list[str]],
    bstart: int,
    bend: int,
    limit: int,
    depth: int,
    section: str,
    force_leaf: bool,
) -> list[dict[str, Any]]:
    label = f"multipart/{subtype}"
    if depth >= MAX_DEPTH:
        ctx.problem(f"nesting deeper than {MAX_DEPTH}{_at(section)}: {label} not descended")
        return [_synthetic(ctx, bstart, bend)]
    if force_leaf or ctx.parts >= MAX_PARTS:
        _note_parts_limit(ctx, section)
        return [_synthetic(ctx, bstart, bend)]
    boundary = next((value for key, value in params if key == "boundary"), "")
    if not boundary:
        ctx.problem(f"{label}{_at(section)} has no boundary parameter")
        return [_synthetic(ctx, bend, bend)]
    buf = ctx.buf
    dash = b"--" + boundary.encode("utf-8", "replace")
    # RFC 2046 §5.1.1: a delimiter is CRLF "--" boundary; the CRLF belongs to the delimiter.
    pattern = b"\n" + dash
    first: tuple[int, bool, int] | None = None
    if buf[bstart : min(bstart + len(dash), bend)] == dash:
        tail = _delimiter_tail(buf, bstart + len(dash), bend)
        if tail is not None:
            first = (bstart, tail[0], tail[1])
    if first is None:
        first = _find_delimiter(buf, pattern, bstart, bend)
    if first is None or first[1]:
        ctx.problem(f"no parts found in {label}{_at(section)}")
        return [_synthetic(ctx, bend, bend)]

    in_digest = subtype == "digest"
    children: list[dict[str, Any]] = []
    pos = first[2]
    while True:
        child_section = f"{section}.{len(children) + 1}" if section else str(len(children) + 1)
        if ctx.parts >= MAX_PARTS - 1:  # this child is the last part allowed
            _note_parts_limit(ctx, child_section)
            child, _ = _parse_entity(
                ctx, pos, bend, limit, depth + 1, child_section, in_digest, True
            )
            children.append(child)
            break
        # Search from the LF that ended the previous delimiter line, so that an empty part
        # ("--b\r\n--b") is found.
        nxt = _find_delimiter(buf, pattern, pos - 1, bend)
        if nxt is None:
            ctx.problem(f"missing closing boundary for {label}{_at(section)}")
            child, _ = _parse_entity(
                ctx, pos, bend, limit, depth + 1, child_section, in_digest, False
            )
            children.append(child)
            break
        line_start, close, after = nxt
        cend = line_start - 1
        if cend > pos and buf[cend - 1] == _CR:
            cend -= 1
        cend = max(cend, pos)
        child, _ = _parse_entity(
            ctx, pos, cend, line_start, depth + 1, child_section, in_digest, False
        )
        children.append(child)
        if close:
            break  # RFC 2046 §5.1.1: what follows the close delimiter is the epilogue
        pos = after
    return children


def _delimiter_tail(buf: _Buf, pos: int, end: int) -> tuple[bool, int] | None:
    """Given the offset just after "--boundary": (is_close, next_line_start) or None.

    RFC 2046 §5.1.1: the boundary may be followed by "--" (close) and then only linear white
    space up to the line end; anything else means a longer boundary sharing this prefix.
    """
    close = buf[pos : min(pos + 2, end)] == b"--"
    if close:
        pos += 2
    tail = buf[pos : min(pos + 256, end)]
    rest = tail.lstrip(b" \t")
    eol = pos + len(tail) - len(rest)
    if rest[:1] == b"\n":
        return close, eol + 1
    if rest[:2] == b"\r\n":
        return close, eol + 2
    if (not rest and eol == end) or (rest == b"\r" and eol + 1 == end):
        return close, end
    return None


def _find_delimiter(
    buf: _Buf, pattern: bytes, start: int, end: int
) -> tuple[int, bool, int] | None:
    """Next delimiter line at or after ``start``: (line_start, is_close, next_line_start)."""
    size = len(pattern)
    while True:
        found = buf.find(pattern, start, end)
        if found < 0:
            return None
        tail = _delimiter_tail(buf, found + size, end)
        if tail is not None:
            return found + 1, tail[0], tail[1]
        start = found + 1


# --------------------------------------------------------------------------------------------
# MIME header fields (RFC 2045, RFC 2183, RFC 2231, RFC 3066/3282)

_TOKEN = r"[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+"  # RFC 2045 §5.1 token
_TYPE_RE = re.compile(rf"\s*({_TOKEN})\s*/\s*({_TOKEN})\s*")
_DISPOSITION_RE = re.compile(rf"\s*({_TOKEN})\s*")
_SEGMENT_RE = re.compile(
    r'(?:"(?:[^"\\]|\\.)*\\?(?:"|\Z)|\((?:[^()\\]|\\.)*\\?(?:\)|\Z)|[^;"(])+', re.S
)
_COMMENT_RE = re.compile(r'("(?:[^"\\]|\\.)*\\?(?:"|\Z))|\((?:[^()\\]|\\.)*\\?(?:\)|\Z)', re.S)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.S)
_DIGITS_RE = re.compile(r"[0-9]{1,4}")


def _strip_comments(value: str) -> str:
    """Remove RFC 822 comments outside quoted strings (nested comments: best effort)."""
    if "(" not in value:
        return value
    return _COMMENT_RE.sub(lambda m: m.group(1) or " ", value)


def _segments(value: str) -> list[str]:
    """Split a MIME header value on ";" outside quoted strings, comments removed."""
    return [_strip_comments(m.group()) for m in _SEGMENT_RE.finditer(value)]


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"'):
        value = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
        return _QUOTED_PAIR_RE.sub(r"\1", value)
    return value


def _content_type(
    ctx: _Ctx, value: str | None, in_digest: bool, section: str
) -> tuple[str, str, list[list[str]]]:
    # RFC 2045 §5.2 default; RFC 2046 §5.1.5 default inside multipart/digest.
    default = (
        ("message", "rfc822", []) if in_digest else ("text", "plain", [["charset", "us-ascii"]])
    )
    if value is None:
        return default[0], default[1], list(default[2])
    segments = _segments(value)
    match = _TYPE_RE.match(segments[0]) if segments else None
    if match is None:
        ctx.problem(f"unparsable Content-Type{_at(section)}: {value[:40]!r}")
        return default[0], default[1], list(default[2])
    if match.end() != len(segments[0]):
        ctx.problem(f"trailing garbage in Content-Type{_at(section)}: {value[:40]!r}")
    problems: list[str] = []
    params = _parameters(segments[1:], problems)
    for note in problems:
        ctx.problem(note + _at(section))
    return match.group(1).lower(), match.group(2).lower(), params


def _parameters(segments: list[str], problems: list[str]) -> list[list[str]]:
    """``[[name, value], ...]`` with RFC 2231 continuations and charsets joined and decoded."""
    result: list[list[str]] = []
    index_of: dict[str, int] = {}
    extended: dict[str, list[tuple[int, bool, str]]] = {}
    for segment in segments:
        raw_name, sep, raw_value = segment.partition("=")
        name = raw_name.strip().lower()
        if not sep or not name:
            if segment.strip():
                problems.append(f"malformed parameter {segment.strip()[:40]!r}")
            continue
        value = _unquote(raw_value)
        base, star, rest = name.partition("*")
        if star and base:
            # RFC 2231 §3-4: name*=charset'lang'%XX, name*0=..., name*1*=%XX
            if rest == "":
                extended.setdefault(base, []).append((0, True, value))
            elif rest.endswith("*") and _DIGITS_RE.fullmatch(rest[:-1]):
                extended.setdefault(base, []).append((int(rest[:-1]), True, value))
            elif _DIGITS_RE.fullmatch(rest):
                extended.setdefault(base, []).append((int(rest), False, value))
            else:
                base = ""
            if base:
                if base not in index_of:
                    index_of[base] = len(result)
                    result.append([base, ""])
                continue
        if name in index_of:
            continue  # first occurrence wins (an RFC 2231 form of the name takes precedence)
        index_of[name] = len(result)
        result.append([name, value])
    for base, pieces in extended.items():
        result[index_of[base]][1] = _join_rfc2231(pieces)
    return result


def _join_rfc2231(pieces: list[tuple[int, bool, str]]) -> str:
    pieces.sort(key=lambda piece: piece[0])
    charset = ""
    chunks: list[bytes] = []
    for position, (_, is_extended, value) in enumerate(pieces):
        if is_extended:
            if position == 0 and value.count("'") >= 2:
                # RFC 2231 §4: only the first segment carries charset'language'
                charset, _, rest = value.split("'", 2)
                value = rest
            chunks.append(unquote_to_bytes(value))
        else:
            chunks.append(value.encode("utf-8", "replace"))
    return _decode_bytes(b"".join(chunks), _codec(charset) or "utf-8")


def _encoding(value: str | None) -> str:
    words = _strip_comments(value).split() if value else []
    return _unquote(words[0]).upper() if words and _unquote(words[0]) else "7BIT"


def _disposition(value: str | None, problems: list[str]) -> list[Any] | None:
    if value is None:
        return None
    segments = _segments(value)
    match = _DISPOSITION_RE.fullmatch(segments[0]) if segments else None
    if match is None:
        problems.append(f"unparsable Content-Disposition {value[:40]!r}")
        return None
    return [match.group(1).lower(), _parameters(segments[1:], problems)]


def _language(value: str | None) -> list[str] | None:
    if value is None:
        return None
    tags = [tag.strip() for tag in _strip_comments(value).split(",")]
    return [tag for tag in tags if tag] or None


# --------------------------------------------------------------------------------------------
# ENVELOPE (RFC 3501 §7.4.2 / RFC 9051 §7.5.2)

_ADDRESS_FIELDS = (
    ("from", "from"),
    ("sender", "sender"),
    ("reply_to", "reply-to"),
    ("to", "to"),
    ("cc", "cc"),
    ("bcc", "bcc"),
)


def _envelope_of(fields: dict[str, str], problems: list[str]) -> dict[str, Any]:
    lists: dict[str, list[_Address]] = {}
    for key, header in _ADDRESS_FIELDS:
        raw = fields.get(header)
        if raw is None:
            lists[key] = []
            continue
        addresses, clean = _parse_addresses(raw)
        if not clean:
            problems.append(f"malformed address list in {header.title()}: {raw[:60]!r}")
        lists[key] = addresses
    # RFC 3501 §7.4.2: an absent or empty Sender / Reply-To is set to the From list.
    for key in ("sender", "reply_to"):
        if not lists[key]:
            lists[key] = [list(address) for address in lists["from"]]
    return {
        "date": fields.get("date"),
        "subject": fields.get("subject"),
        "from": lists["from"],
        "sender": lists["sender"],
        "reply_to": lists["reply_to"],
        "to": lists["to"],
        "cc": lists["cc"],
        "bcc": lists["bcc"],
        "in_reply_to": fields.get("in-reply-to"),
        "message_id": fields.get("message-id"),
    }


def _first_mailbox(addresses: list[_Address]) -> str | None:
    for _, _, mailbox, host in addresses:
        if host is None:
            continue  # group start/end marker
        if mailbox and host != MISSING_HOST:
            return f"{mailbox}@{host}".lower()
        return None
    return None


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except Exception:  # garbage dates raise TypeError/ValueError/OverflowError depending on form
        return None
    # RFC 5322 §3.3: "-0000" means UTC with unknown local zone (parsed as naive).
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# RFC 5322 §3.4 address lists, with the obsolete forms of §4.4

_ADDRESS_TOKEN_RE = re.compile(
    r"(?P<ws>[ \t\r\n]+)"
    r'|"(?P<qtext>(?:[^"\\]|\\.)*)\\?(?P<qend>"|\Z)'
    r"|(?P<literal>\[(?:[^\]\\]|\\.)*\\?(?:\]|\Z))"
    r"|(?P<comment>\()"
    r"|(?P<special>[<>:;,@])"
    r'|(?P<atom>[^ \t\r\n"\[\]()<>:;,@]+)'
    r"|(?P<stray>.)",
    re.S,
)
_WORDS = frozenset({"atom", "quoted", "literal"})

# (kind, text, preceded_by_whitespace_or_comment); kind is "atom", "quoted", "literal" or the
# special character itself.
_Token: TypeAlias = tuple[str, str, bool]


def parse_address_list(value: str) -> list[list[str | None]]:
    """RFC 5322 address-list as IMAP ENVELOPE addresses ``[name, adl, mailbox, host]``.

    Groups give ``[None, None, name, None]`` ... ``[None, None, None, None]`` (RFC 3501 §7.4.2).
    Best effort on garbage; never raises.
    """
    return _parse_addresses(value)[0]


def _tokenize(value: str) -> tuple[list[_Token], bool]:
    tokens: list[_Token] = []
    clean = True
    space = False
    pos = 0
    size = len(value)
    while pos < size:
        match = _ADDRESS_TOKEN_RE.match(value, pos)
        if match is None:  # cannot happen: "stray" matches any character
            break
        kind = match.lastgroup
        pos = match.end()
        if kind == "ws":
            space = True
        elif kind == "comment":
            # RFC 5322 §3.2.2: comments nest and are semantically invisible.
            pos, terminated = _skip_comment(value, match.start())
            clean = clean and terminated
            space = True
        elif kind == "stray":
            clean = False
            space = True
        elif kind == "special":
            tokens.append((match.group(), match.group(), space))
            space = False
        elif kind == "qend":
            if not match.group("qend"):
                clean = False  # unterminated quoted string
            tokens.append(("quoted", _QUOTED_PAIR_RE.sub(r"\1", match.group("qtext")), space))
            space = False
        else:
            tokens.append((kind or "atom", match.group(), space))
            space = False
    return tokens, clean


def _skip_comment(value: str, pos: int) -> tuple[int, bool]:
    depth = 0
    size = len(value)
    while pos < size:
        char = value[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return pos + 1, True
        pos += 1
    return size, False


def _phrase(tokens: list[_Token]) -> str | None:
    out: list[str] = []
    for index, (_, text, space) in enumerate(tokens):
        if index and space:
            out.append(" ")
        out.append(text)
    return "".join(out) or None


def _concat(tokens: list[_Token]) -> str:
    return "".join(text for _, text, _ in tokens)


def _parse_addresses(value: str) -> tuple[list[_Address], bool]:
    tokens, clean = _tokenize(value)
    out: list[_Address] = []
    count = len(tokens)
    pos = 0
    in_group = False
    while pos < count:
        kind = tokens[pos][0]
        if kind == ",":
            pos += 1
            continue
        if kind == ";":
            if in_group:
                out.append([None, None, None, None])
                in_group = False
            else:
                clean = False
            pos += 1
            continue
        words_end = pos
        while words_end < count and tokens[words_end][0] in _WORDS:
            words_end += 1
        following = tokens[words_end][0] if words_end < count else ""
        address: _Address | None
        if following == "<":
            address, pos, ok = _angle_addr(tokens, words_end + 1, _phrase(tokens[pos:words_end]))
            clean = clean and ok
        elif following == ":":
            if in_group:  # RFC 5322 §3.4: groups do not nest
                clean = False
                pos = words_end + 1
                continue
            # RFC 3501 §7.4.2: group start marker holds the group name in the mailbox field
            out.append([None, None, _phrase(tokens[pos:words_end]) or "", None])
            in_group = True
            pos = words_end + 1
            continue
        elif following == "@":
            domain_end = words_end + 1
            while domain_end < count and tokens[domain_end][0] in _WORDS:
                domain_end += 1
            if domain_end < count and tokens[domain_end][0] == "<":
                # Unquoted display name containing "@" (common breakage): keep it as the name.
                address, pos, _ = _angle_addr(
                    tokens, domain_end + 1, _phrase(tokens[pos:domain_end])
                )
                clean = False
            else:
                local = _concat(tokens[pos:words_end])
                domain = _concat(tokens[words_end + 1 : domain_end])
                address = [None, None, local, domain or MISSING_HOST]
                clean = clean and bool(local and domain)
                pos = domain_end
        else:
            # Words without "@domain" (or a stray ">"): an unqualified mailbox at best.
            clean = False
            address = None
            if words_end > pos:
                address = [None, None, _phrase(tokens[pos:words_end]), MISSING_HOST]
            pos = words_end + 1 if following == ">" else words_end
        if address is not None:
            out.append(address)
        if pos < count and tokens[pos][0] not in (",", ";"):
            clean = False  # missing comma between addresses
    if in_group:
        out.append([None, None, None, None])  # keep group markers balanced
        clean = False
    return out, clean


def _angle_addr(
    tokens: list[_Token], pos: int, name: str | None
) -> tuple[_Address | None, int, bool]:
    """Parse after "<": [obs-route] addr-spec ">"; returns (address, next position, clean)."""
    count = len(tokens)
    clean = True
    route: str | None = None
    if pos < count and tokens[pos][0] == "@":
        # RFC 5322 §4.4 obs-route: "@a,@b:" before the addr-spec; IMAP calls it the adl.
        scan = pos
        while scan < count and (tokens[scan][0] in ("@", ",") or tokens[scan][0] in _WORDS):
            scan += 1
        if scan < count and tokens[scan][0] == ":":
            hops = [hop for hop in _concat(tokens[pos:scan]).split(",") if hop]
            route = ",".join(hops) or None
            pos = scan + 1
    local_end = pos
    while local_end < count and tokens[local_end][0] in _WORDS:
        local_end += 1
    local = _concat(tokens[pos:local_end])
    domain = ""
    pos = local_end
    if pos < count and tokens[pos][0] == "@":
        domain_end = pos + 1
        while domain_end < count and tokens[domain_end][0] in _WORDS:
            domain_end += 1
        domain = _concat(tokens[pos + 1 : domain_end])
        pos = domain_end
    if pos < count and tokens[pos][0] == ">":
        pos += 1
    else:
        clean = False
        while pos < count and tokens[pos][0] not in (">", ",", ";", "<"):
            pos += 1
        if pos < count and tokens[pos][0] == ">":
            pos += 1
    if not local and not domain:
        return None, pos, False  # "<>": nothing an ENVELOPE can express
    return [name, route, local, domain or MISSING_HOST], pos, clean and bool(local and domain)


# --------------------------------------------------------------------------------------------
# RFC 2047 encoded words

_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


@functools.lru_cache(maxsize=128)
def _codec(charset: str) -> str | None:
    """A usable text codec name for a MIME charset, or None (RFC 2231 §5 "*lang" dropped)."""
    name = charset.split("*", 1)[0].strip().lower()
    if not name:
        return None
    try:
        # Rejects unknown names and bytes-to-bytes codecs such as "base64" (an empty input
        # would short-circuit the codec lookup).
        b"a".decode(name, "replace")
    except Exception:
        return None
    return name


def _decode_bytes(data: bytes, codec: str) -> str:
    try:
        return data.decode(codec, "replace")
    except Exception:
        return data.decode("latin-1")


def _decode_word(charset: str, encoding: str, text: str) -> tuple[str, bytes] | None:
    codec = _codec(charset)
    if codec is None:
        return None
    try:
        raw = text.encode("ascii")
        if encoding in "bB":
            if len(raw) % 4 == 1:
                return None
            data = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
        else:
            data = binascii.a2b_qp(raw, header=True)  # RFC 2047 §4.2: "_" is a space
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    return codec, data


def decode_header_value(value: str) -> str:
    """Decode RFC 2047 encoded-words; undecodable words (unknown charset, bad base64) stay raw."""
    if "=?" not in value:
        return value
    out: list[str] = []
    run: list[tuple[str, bytes]] = []
    pos = 0
    for match in _ENCODED_WORD_RE.finditer(value):
        gap = value[pos : match.start()]
        word = _decode_word(match.group(1), match.group(2), match.group(3))
        if word is None:
            _flush_words(run, out)
            out.append(gap)
            out.append(match.group())
        else:
            # RFC 2047 §6.2: white space between adjacent encoded-words is not displayed.
            if not run or gap.strip(" \t\r\n"):
                _flush_words(run, out)
                out.append(gap)
            run.append(word)
        pos = match.end()
    _flush_words(run, out)
    out.append(value[pos:])
    return "".join(out)


def _flush_words(run: list[tuple[str, bytes]], out: list[str]) -> None:
    # Adjacent words in one charset are joined before decoding: a multi-byte character may be
    # split across two encoded-words.
    index = 0
    while index < len(run):
        codec = run[index][0]
        chunks = [run[index][1]]
        index += 1
        while index < len(run) and run[index][0] == codec:
            chunks.append(run[index][1])
            index += 1
        out.append(_decode_bytes(b"".join(chunks), codec))
    run.clear()
