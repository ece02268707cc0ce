"""ESMTP MAIL/RCPT parameters: the generic list parser and the RFC 3461 DSN parameters.

Pure functions over ``str``: no I/O, no logging, fuzzable. The SMTP layer hands the text after the
``<address>`` of a ``MAIL FROM:`` or ``RCPT TO:`` command to :func:`parse_esmtp_params`, then the
values to the typed parsers below (:func:`parse_notify`, :func:`parse_ret`, :func:`parse_envid`,
:func:`parse_orcpt`, :func:`parse_size`, :func:`parse_body`). Every refusal is a :class:`ParamError`
whose ``str()`` is the exact reason and which carries the reply to send (:meth:`ParamError.reply`).

Values kept in the store (``Recipient.notify``, ``Recipient.orcpt``, ``QueueEntry.envid``,
``QueueEntry.ret``) are the canonical wire forms produced by the ``format_*`` functions, so the queue
runner relays them verbatim (RFC 3461 §5.2).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# Limits (one named constant each).
MAX_PARAMS = 16  # parameters on one MAIL/RCPT command
MAX_PARAM_LENGTH = 600  # characters of one KEY=VALUE (an ORCPT of 500 plus its key and type)
MAX_ENVID_LENGTH = 100  # RFC 3461 §4.4: at most 100 characters (decoded)
MAX_ORCPT_LENGTH = 500  # decoded address; RFC 3461 §4 budgets 500 more characters per RCPT
MAX_ADDR_TYPE_LENGTH = 32

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\Z")
_HEX_UPPER = frozenset("0123456789ABCDEF")
_UTF8_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


class ParamError(ValueError):
    """A refused ESMTP parameter; ``str(error)`` is the exact reason.

    ``code`` and ``enhanced`` are the reply to give: ``501 5.5.4`` (invalid parameter value, RFC 3463
    X.5.4) for a bad value or a duplicate, ``501 5.5.2`` for a list that is not parameter syntax,
    ``555 5.5.4`` (RFC 5321 §4.1.1.11) for a parameter we do not know.
    """

    def __init__(self, reason: str, *, code: int = 501, enhanced: str = "5.5.4") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.enhanced = enhanced

    def reply(self) -> str:
        """The SMTP reply line, without CRLF: ``501 5.5.4 <reason>``."""
        return f"{self.code} {self.enhanced} {self.reason}"


def _syntax(reason: str) -> ParamError:
    return ParamError(reason, code=501, enhanced="5.5.2")


# --- the generic parameter list (RFC 5321 §4.1.2, RFC 6531 §3.3) ---------------------------------


def parse_esmtp_params(text: str, *, utf8: bool = False) -> dict[str, str | None]:
    """Parse ``KEY=VALUE KEY ...`` into an ordered mapping of upper-cased keys to values.

    A keyword alone maps to ``None``. Keys are case-insensitive and unique; values keep their case.
    RFC 5321 §4.1.2: esmtp-value is any CHAR but ``=``, SP and controls; with ``utf8`` (the client
    used SMTPUTF8, RFC 6531 §3.3) non-ASCII characters are allowed in values too.
    """
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue  # tolerate runs of spaces, as Postfix does
        if len(params) >= MAX_PARAMS:
            raise _syntax(f"too many parameters (at most {MAX_PARAMS})")
        if len(item) > MAX_PARAM_LENGTH:
            raise _syntax(f"parameter too long (at most {MAX_PARAM_LENGTH} characters)")
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key):
            raise _syntax(f"invalid parameter keyword {key[:40]!r}")
        ukey = key.upper()
        if ukey in params:
            raise ParamError(f"duplicate parameter {ukey}")
        if not eq:
            params[ukey] = None
            continue
        if not value:
            raise _syntax(f"empty value for parameter {ukey}")
        for ch in value:
            o = ord(ch)
            if o == 0x3D or o < 0x21 or o == 0x7F or (o > 0x7F and not utf8):
                raise _syntax(f"invalid character in the value of parameter {ukey}")
        params[ukey] = value
    return params


def require_value(key: str, value: str | None) -> str:
    """The value of ``key``, refused when the keyword came alone."""
    if value is None:
        raise ParamError(f"parameter {key} requires a value")
    return value


def require_no_value(key: str, value: str | None) -> None:
    """Refuse a value on a keyword-only parameter (SMTPUTF8)."""
    if value is not None:
        raise ParamError(f"parameter {key} takes no value")


def unknown_param(key: str) -> ParamError:
    """The refusal of a parameter the server does not implement (RFC 5321 §4.1.1.11)."""
    return ParamError(f"parameter {key} not supported", code=555, enhanced="5.5.4")


# --- SIZE (RFC 1870) and BODY (RFC 6152, RFC 3030) ----------------------------------------------


class Body(enum.StrEnum):
    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"
    BINARY_MIME = "BINARYMIME"


def parse_size(value: str) -> int:
    """RFC 1870 §3: ``SIZE=`` a decimal number of octets (at most 20 digits)."""
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise ParamError("SIZE must be a decimal number of octets")
    return int(value)


def parse_body(value: str) -> Body:
    """``BODY=7BIT|8BITMIME|BINARYMIME`` (case-insensitive)."""
    try:
        return Body(value.upper())
    except ValueError:
        raise ParamError("BODY must be 7BIT, 8BITMIME or BINARYMIME") from None


# --- xtext (RFC 3461 §4) ------------------------------------------------------------------------


def xtext_encode(text: str) -> str:
    """RFC 3461 §4: ``!``..``~`` except ``+`` and ``=`` as is, every other octet as ``+HH``.

    xtext carries US-ASCII only; non-ASCII text is refused.
    """
    out: list[str] = []
    for ch in text:
        o = ord(ch)
        if o > 0x7F:
            raise ParamError("xtext can only encode US-ASCII")
        if 0x21 <= o <= 0x7E and ch not in "+=":
            out.append(ch)
        else:
            out.append(f"+{o:02X}")
    return "".join(out)


def xtext_decode(value: str) -> str:
    """Decode xtext, refusing anything RFC 3461 §4 does not produce.

    ``hexchar = "+" 2(%x30-39 / %x41-46)``: upper-case hex only; a raw ``=``, a space, a control or a
    non-ASCII character is refused, and so is an encoded non-ASCII octet.
    """
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "+":
            hh = value[i + 1 : i + 3]
            if len(hh) != 2 or not set(hh) <= _HEX_UPPER:
                raise ParamError(
                    "malformed xtext: '+' must be followed by two upper-case hex digits"
                )
            o = int(hh, 16)
            if o > 0x7F:
                raise ParamError("malformed xtext: encoded octet is not US-ASCII")
            out.append(chr(o))
            i += 3
            continue
        o = ord(ch)
        if o < 0x21 or o > 0x7E or ch == "=":
            raise ParamError("malformed xtext: invalid character")
        out.append(ch)
        i += 1
    return "".join(out)


# --- NOTIFY (RFC 3461 §4.1) ---------------------------------------------------------------------


class Notify(enum.StrEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


_NOTIFY_ORDER = (Notify.SUCCESS, Notify.FAILURE, Notify.DELAY)


def parse_notify(value: str) -> frozenset[Notify]:
    """``NEVER`` (the empty set) or a list of SUCCESS, FAILURE, DELAY (case-insensitive).

    RFC 3461 §4.1: NEVER must appear alone; each keyword at most once; nothing else.
    """
    words = value.upper().split(",")
    if "NEVER" in words:
        if len(words) != 1:
            raise ParamError("NOTIFY=NEVER cannot be combined with other values")
        return frozenset()
    result: set[Notify] = set()
    for word in words:
        try:
            item = Notify(word)
        except ValueError:
            raise ParamError("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY") from None
        if item in result:
            raise ParamError(f"duplicate NOTIFY value {word}")
        result.add(item)
    return frozenset(result)


def format_notify(notify: frozenset[Notify]) -> str:
    """The canonical wire value: ``NEVER`` or e.g. ``SUCCESS,FAILURE`` (RFC order)."""
    if not notify:
        return "NEVER"
    return ",".join(n.value for n in _NOTIFY_ORDER if n in notify)


# --- RET (RFC 3461 §4.3) ------------------------------------------------------------------------


class Ret(enum.StrEnum):
    FULL = "FULL"
    HDRS = "HDRS"


def parse_ret(value: str) -> Ret:
    """``RET=FULL|HDRS`` (case-insensitive)."""
    try:
        return Ret(value.upper())
    except ValueError:
        raise ParamError("RET must be FULL or HDRS") from None


# --- ENVID (RFC 3461 §4.4) ----------------------------------------------------------------------


def parse_envid(value: str) -> str:
    """The decoded envelope identifier: xtext, printable US-ASCII, at most 100 characters."""
    decoded = xtext_decode(value)
    _check_envid(decoded)
    return decoded


def format_envid(envid: str) -> str:
    """The xtext wire form of a decoded envelope identifier (checked like a received one)."""
    _check_envid(envid)
    return xtext_encode(envid)


def _check_envid(decoded: str) -> None:
    if not decoded:
        raise ParamError("ENVID must not be empty")
    if len(decoded) > MAX_ENVID_LENGTH:
        raise ParamError(f"ENVID too long (at most {MAX_ENVID_LENGTH} characters)")
    if not all(0x20 <= ord(c) <= 0x7E for c in decoded):
        raise ParamError("ENVID must be printable US-ASCII")


# --- ORCPT (RFC 3461 §4.2, RFC 6533 §3) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OriginalRecipient:
    """A decoded ORCPT: its address type (lower-cased atom: ``rfc822``, ``utf-8``...) and address."""

    addr_type: str
    address: str

    def to_param(self) -> str:
        """The wire value ``type;xtext`` (RFC 3461 §4.2; ``utf-8`` uses RFC 6533 ``\\x{HEX}``)."""
        return format_orcpt(self)

    def to_field(self, *, utf8: bool) -> str:
        """The value of a DSN ``Original-Recipient`` field (RFC 3464 §2.3.1).

        With ``utf8`` (a ``message/global-delivery-status``, RFC 6533 §3) a ``utf-8`` address is
        written as is; otherwise non-ASCII is escaped as ``\\x{HEX}``.
        """
        if self.addr_type == "utf-8" and not utf8:
            return f"{self.addr_type};{_utf8_escape(self.address)}"
        return f"{self.addr_type};{self.address}"


def parse_orcpt(value: str) -> OriginalRecipient:
    """Parse ``addr-type;xtext``. The ``utf-8`` type (RFC 6533) also decodes ``\\x{HEX}``
    escapes and accepts raw UTF-8 (utf-8-addr-unitext); other types must be printable US-ASCII."""
    addr_type, semi, encoded = value.partition(";")
    if not semi:
        raise ParamError("ORCPT must be addr-type;address")
    if len(addr_type) > MAX_ADDR_TYPE_LENGTH or not _ATOM.match(addr_type):
        raise ParamError("ORCPT address type must be an atom such as rfc822")
    atype = addr_type.lower()
    if not encoded:
        raise ParamError("ORCPT address must not be empty")
    if atype == "utf-8":
        address = _decode_utf8_addr(encoded)
    else:
        address = xtext_decode(encoded)
        if not all(0x20 <= ord(c) <= 0x7E for c in address):
            raise ParamError("ORCPT address must be printable US-ASCII")
    if len(address) > MAX_ORCPT_LENGTH:
        raise ParamError(f"ORCPT address too long (at most {MAX_ORCPT_LENGTH} characters)")
    return OriginalRecipient(atype, address)


def format_orcpt(orcpt: OriginalRecipient) -> str:
    """The canonical wire form ``type;xtext`` of a decoded ORCPT."""
    if orcpt.addr_type == "utf-8":
        return f"utf-8;{xtext_encode(_utf8_escape(orcpt.address))}"
    return f"{orcpt.addr_type};{xtext_encode(orcpt.address)}"


def _decode_utf8_addr(encoded: str) -> str:
    # RFC 6533 §3: utf-8-addr-xtext is xtext whose decoding may hold \x{HEX} escapes;
    # utf-8-addr-unitext additionally allows raw UTF-8 (only under SMTPUTF8: the list parser
    # refuses non-ASCII otherwise).
    pieces: list[str] = []
    buf: list[str] = []
    for c in encoded:
        if ord(c) >= 0x80:
            if buf:
                pieces.append(xtext_decode("".join(buf)))
                buf = []
            pieces.append(c)
        else:
            buf.append(c)
    if buf:
        pieces.append(xtext_decode("".join(buf)))
    text = "".join(pieces)

    def unescape(m: re.Match[str]) -> str:
        point = int(m.group(1), 16)
        if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
            raise ParamError("ORCPT \\x{...} escape is not a Unicode scalar value")
        return chr(point)

    address = _UTF8_ESCAPE.sub(unescape, text)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in address):
        raise ParamError("ORCPT address must not contain control characters")
    return address


def _utf8_escape(address: str) -> str:
    # RFC 6533 §3: non-ASCII and "\" become \x{HEX} in utf-8-addr-xtext.
    return "".join(f"\\x{{{ord(c):X}}}" if ord(c) > 0x7E or c == "\\" else c for c in address)


# --- the typed parameter sets of MAIL and RCPT ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class MailParams:
    """What ``MAIL FROM:<...> params`` asked for (RFC 1870, 6152, 3030, 6531, 3461)."""

    size: int | None = None
    body: Body | None = None
    smtputf8: bool = False
    ret: Ret | None = None
    envid: str | None = None  # decoded


@dataclass(frozen=True, slots=True)
class RcptParams:
    """What ``RCPT TO:<...> params`` asked for (RFC 3461 §4.1-4.2)."""

    notify: frozenset[Notify] | None = None  # None: not given (RFC 3461 §4.1 default applies)
    orcpt: OriginalRecipient | None = None


def parse_mail_params(text: str, *, utf8: bool = False) -> MailParams:
    """Parse the parameters of MAIL; an unknown keyword is refused with 555 5.5.4."""
    params = parse_esmtp_params(text, utf8=utf8)
    size: int | None = None
    body: Body | None = None
    smtputf8 = False
    ret: Ret | None = None
    envid: str | None = None
    for key, value in params.items():
        if key == "SIZE":
            size = parse_size(require_value(key, value))
        elif key == "BODY":
            body = parse_body(require_value(key, value))
        elif key == "SMTPUTF8":
            require_no_value(key, value)
            smtputf8 = True
        elif key == "RET":
            ret = parse_ret(require_value(key, value))
        elif key == "ENVID":
            envid = parse_envid(require_value(key, value))
        else:
            raise unknown_param(key)
    return MailParams(size=size, body=body, smtputf8=smtputf8, ret=ret, envid=envid)


def parse_rcpt_params(text: str, *, utf8: bool = False) -> RcptParams:
    """Parse the parameters of RCPT; an unknown keyword is refused with 555 5.5.4."""
    params = parse_esmtp_params(text, utf8=utf8)
    notify: frozenset[Notify] | None = None
    orcpt: OriginalRecipient | None = None
    for key, value in params.items():
        if key == "NOTIFY":
            notify = parse_notify(require_value(key, value))
        elif key == "ORCPT":
            orcpt = parse_orcpt(require_value(key, value))
        else:
            raise unknown_param(key)
    return RcptParams(notify=notify, orcpt=orcpt)
