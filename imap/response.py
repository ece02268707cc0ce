"""Formatting of server response data to wire bytes (RFC 9051 §4, §7; RFC 3501 §4, §7).

Sans-I/O, pure functions over the metadata computed at delivery (:mod:`store.mime`).

Conventions chosen here:

* A string is sent quoted when it is at most :data:`MAX_QUOTED` octets, has no CR, LF or NUL,
  and is 7-bit, or valid UTF-8 when ``utf8`` is set (RFC 9051 §6.3.1 UTF8=ACCEPT allows UTF-8 in
  quoted strings). Anything else is a literal ``{n}\\r\\n<octets>``: it never breaks framing.
* BODYSTRUCTURE media types, subtypes, parameter names and disposition types are sent as
  :mod:`store.mime` stores them, i.e. lower-case (Dovecot's convention; RFC 9051 §7.5.2 makes
  them case-insensitive). Transfer encodings are upper-case, as stored.
* Header text in ENVELOPE and BODYSTRUCTURE is sent as it appeared (encoded-words are left for
  the client to decode). Non-ASCII text (8-bit headers) goes as a UTF-8 literal, or quoted in
  UTF-8 mode. A non-ASCII MIME parameter value (decoded from RFC 2231 or 8-bit at delivery) is
  re-encoded as RFC 2231 ``name*`` = ``utf-8''%XX`` outside UTF-8 mode, so 7-bit clients can
  still recover it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from store.model import Flag

__all__ = [
    "MAX_QUOTED",
    "astring",
    "bodystructure",
    "envelope",
    "flag_list",
    "internal_date",
    "literal",
    "literal8",
    "nstring",
    "string",
]

# Long values go as literals: some clients cap quoted strings, and a literal costs only its
# "{n}\r\n" prefix.
MAX_QUOTED = 1024

NIL = b"NIL"

# RFC 9051 §9 QUOTED-CHAR: TEXT-CHAR (CHAR minus CR, LF; CHAR excludes NUL).
_QUOTED_7BIT_RE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_QUOTED_8BIT_RE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\xff]*")
# ASTRING-CHAR minus "]" (resp-specials are legal in astring, but quoting them costs nothing
# and spares naive client parsers): printable ASCII but ( ) { % * " \ ].
_ATOM_RE = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")
_KEYWORD_RE = re.compile(r"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_ADDRESS_KEYS = ("from", "sender", "reply_to", "to", "cc", "bcc")


# --------------------------------------------------------------------------------------------
# Strings (RFC 9051 §4.3)


def _octets(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: keep the protocol intact, lose the character
        return value.encode("utf-8", "replace")


def _quotable(data: bytes, utf8: bool) -> bool:
    if len(data) > MAX_QUOTED:
        return False
    if data.isascii():
        return _QUOTED_7BIT_RE.fullmatch(data) is not None
    if not utf8 or _QUOTED_8BIT_RE.fullmatch(data) is None:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _quote(data: bytes) -> bytes:
    if b"\\" in data or b'"' in data:
        data = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + data + b'"'


def literal(data: bytes) -> bytes:
    """A synchronising literal as the server sends it: ``{n}\\r\\n<octets>`` (RFC 9051 §4.3)."""
    return b"{%d}\r\n" % len(data) + data


def literal8(data: bytes) -> bytes:
    """A binary literal ``~{n}\\r\\n<octets>`` (RFC 3516 §4.3, RFC 9051 §4.3), may hold NUL."""
    return b"~{%d}\r\n" % len(data) + data


def string(value: str | bytes, *, utf8: bool = False) -> bytes:
    """``string`` (RFC 9051 §4.3): quoted when safe, otherwise a literal.

    ``str`` values are sent as UTF-8; ``bytes`` as they are. A NUL forces a literal, which
    RFC 3501 does not allow either: callers holding binary data use :func:`literal8`.
    """
    data = _octets(value)
    if _quotable(data, utf8):
        return _quote(data)
    return literal(data)


def nstring(value: str | bytes | None, *, utf8: bool = False) -> bytes:
    """``nstring`` (RFC 9051 §4.5): NIL for None, else :func:`string`."""
    if value is None:
        return NIL
    return string(value, utf8=utf8)


def astring(value: str | bytes, *, utf8: bool = False) -> bytes:
    """``astring`` (RFC 9051 §9): a bare atom when possible, else :func:`string`.

    "NIL" is quoted: some clients read a bare NIL as the null value wherever it appears.
    """
    data = _octets(value)
    if _ATOM_RE.fullmatch(data) and data.upper() != NIL:
        return data
    return string(data, utf8=utf8)


def _text(value: str | None, utf8: bool) -> bytes:
    """Header text from :mod:`store.mime`: NUL cannot travel in a (non-binary) string."""
    if value is None:
        return NIL
    if "\x00" in value:
        value = value.replace("\x00", "")
    return string(value, utf8=utf8)


# --------------------------------------------------------------------------------------------
# FLAGS and INTERNALDATE (RFC 9051 §7.5.2)


def flag_list(flags: Flag, keywords: Iterable[str] = (), recent: bool = False) -> bytes:
    """``flag-list`` (RFC 9051 §9), e.g. ``(\\Seen \\Flagged $Forwarded)``.

    System flags first in :class:`Flag` order, then ``\\Recent`` (RFC 3501 §2.3.2, per
    session), then keywords in the given order. A keyword that is not an atom is skipped: it
    could only come from a bug upstream and must not break the response.
    """
    if not keywords:
        return _system_flag_list(int(flags), recent)
    names = list(Flag(flags).imap_names)
    if recent:
        names.append("\\Recent")
    names.extend(keyword for keyword in keywords if _KEYWORD_RE.fullmatch(keyword))
    return ("(" + " ".join(names) + ")").encode("ascii")


@functools.lru_cache(maxsize=256)
def _system_flag_list(bits: int, recent: bool) -> bytes:
    # Every FETCH FLAGS and STORE formats one: iterating the enum cost more than the rest.
    names = Flag(bits).imap_names + (("\\Recent",) if recent else ())
    return ("(" + " ".join(names) + ")").encode("ascii")


def internal_date(value: datetime) -> bytes:
    """``date-time`` (RFC 9051 §9), quoted: ``"17-Jul-1996 02:44:25 -0700"``.

    The day is space-padded (date-day-fixed); month names are English whatever the locale
    (no strftime). A naive datetime is taken as UTC.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    offset = value.utcoffset()
    minutes = round(offset.total_seconds() / 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    text = (
        f'"{value.day:2d}-{_MONTHS[value.month - 1]}-{value.year:04d} '
        f'{value.hour:02d}:{value.minute:02d}:{value.second:02d} {sign}{hours:02d}{mins:02d}"'
    )
    return text.encode("ascii")


# --------------------------------------------------------------------------------------------
# ENVELOPE (RFC 3501 §7.4.2, RFC 9051 §7.5.2)


def _address_list(addresses: Sequence[Sequence[str | None]] | None, utf8: bool) -> bytes:
    if not addresses:
        return NIL
    out = bytearray(b"(")
    for address in addresses:
        # [name, adl, mailbox, host]; group markers come stored with NIL host (RFC 3501 §7.4.2).
        out += b"(" + b" ".join(_text(item, utf8) for item in address) + b")"
    out += b")"
    return bytes(out)


def envelope(env: Mapping[str, Any], *, utf8: bool = False) -> bytes:
    """The ENVELOPE structure (RFC 9051 §7.5.2) from a :mod:`store.mime` envelope dict:
    ``(date subject from sender reply-to to cc bcc in-reply-to message-id)``."""
    items = [_text(env.get("date"), utf8), _text(env.get("subject"), utf8)]
    items.extend(_address_list(env.get(key), utf8) for key in _ADDRESS_KEYS)
    items.append(_text(env.get("in_reply_to"), utf8))
    items.append(_text(env.get("message_id"), utf8))
    return b"(" + b" ".join(items) + b")"


_EMPTY_ENVELOPE: dict[str, Any] = {}
# Stands for the content of a message/rfc822 part that was not parsed (RFC 2046 §5.2.1 forbids
# encoding it, so store.mime leaves a base64 one opaque): the grammar still requires
# envelope and body after "MESSAGE" "RFC822".
_EMPTY_BODY: dict[str, Any] = {
    "type": "text",
    "subtype": "plain",
    "params": [["charset", "us-ascii"]],
    "encoding": "7BIT",
    "size": 0,
    "lines": 0,
}


# --------------------------------------------------------------------------------------------
# BODY / BODYSTRUCTURE (RFC 3501 §7.4.2, RFC 9051 §7.5.2)


def _params(params: Sequence[Sequence[str]] | None, utf8: bool) -> bytes:
    """``body-fld-param``: ``("name" "value" ...)`` or NIL."""
    if not params:
        return NIL
    items: list[bytes] = []
    for name, value in params:
        if not utf8 and not value.isascii():
            # RFC 2231 §4 extended value: what the header would have said for a 7-bit reader.
            name = name + "*"
            value = "utf-8''" + quote(value, safe="!#$&+-.^_`|~", encoding="utf-8")
        items.append(_text(name, utf8))
        items.append(_text(value, utf8))
    return b"(" + b" ".join(items) + b")"


def _disposition(disposition: Sequence[Any] | None, utf8: bool) -> bytes:
    if not disposition:
        return NIL
    return b"(" + _text(disposition[0], utf8) + b" " + _params(disposition[1], utf8) + b")"


def _language(language: Sequence[str] | None, utf8: bool) -> bytes:
    if not language:
        return NIL
    return b"(" + b" ".join(_text(tag, utf8) for tag in language) + b")"


def _extension(part: Mapping[str, Any], first: bytes, utf8: bool) -> bytes:
    """body-ext-1part / body-ext-mpart: ``first`` (md5 or params) dsp lang loc."""
    return b" ".join(
        (
            first,
            _disposition(part.get("disposition"), utf8),
            _language(part.get("language"), utf8),
            _text(part.get("location"), utf8),
        )
    )


def _body(out: bytearray, part: Mapping[str, Any], extensible: bool, utf8: bool) -> None:
    ctype: str = part.get("type") or "text"
    subtype: str = part.get("subtype") or "plain"
    children = part.get("parts")
    if ctype == "multipart":
        out += b"("
        if children:
            for child in children:
                _body(out, child, extensible, utf8)
        else:
            # body-type-mpart needs 1*body: stand in an empty text part, as Dovecot does.
            _body(out, _EMPTY_BODY, extensible, utf8)
        out += b" " + _text(subtype, utf8)
        if extensible:
            out += b" " + _extension(part, _params(part.get("params"), utf8), utf8)
        out += b")"
        return
    out += b"(" + _text(ctype, utf8) + b" " + _text(subtype, utf8) + b" "
    out += _params(part.get("params"), utf8) + b" "
    out += _text(part.get("id"), utf8) + b" " + _text(part.get("description"), utf8) + b" "
    out += _text(part.get("encoding") or "7BIT", utf8) + b" %d" % (part.get("size") or 0)
    if ctype == "message" and subtype in ("rfc822", "global"):
        message = part.get("message")
        inner_env = message["envelope"] if message else _EMPTY_ENVELOPE
        inner_body = message["body"] if message else _EMPTY_BODY
        out += b" " + envelope(inner_env, utf8=utf8) + b" "
        _body(out, inner_body, extensible, utf8)
        out += b" %d" % (part.get("lines") or 0)
    elif ctype == "text":
        out += b" %d" % (part.get("lines") or 0)
    if extensible:
        out += b" " + _extension(part, _text(part.get("md5"), utf8), utf8)
    out += b")"


def bodystructure(body: Mapping[str, Any], *, extensible: bool, utf8: bool = False) -> bytes:
    """BODY (``extensible=False``) or BODYSTRUCTURE (RFC 9051 §7.5.2) of a stored Part dict.

    Single parts carry md5, disposition, language and location as extension data; multiparts
    carry params, disposition, language and location.
    """
    out = bytearray()
    _body(out, body, extensible, utf8)
    return bytes(out)
