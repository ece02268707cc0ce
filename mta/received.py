"""The Received trace header the MX and the submission listeners put on top of a message (sans-I/O).

RFC 5321 §4.4 (Time-stamp-line), RFC 5322 §3.6.7, WITH protocol types of RFC 3848 (ESMTPA, ESMTPS,
ESMTPSA) and RFC 6531 §3.7.3 (UTF8SMTP, UTF8SMTPA, UTF8SMTPS, UTF8SMTPSA), laid out like Postfix's::

    Received: from mx.peer.fr (mx.peer.fr [192.0.2.7]) (using TLSv1.3 with cipher
     TLS_AES_256_GCM_SHA384 (256/256 bits) client DN "CN=mx.peer.fr,O=Peer,C=FR") by
     mx.colombe.fr (Colombe) with ESMTPS id 4XyZ for <dr.a@colombe.fr>; Sun, 22 Nov 2026
     07:18:39 +0000

The TLS version, cipher and peer certificate DN are what mssante-spec §10.1 asks the MX to log,
and what an operator reading a bounced message looks for first.

Folding: the header is folded at its spaces (a CRLF inserted before a space, so unfolding per RFC
5322 §2.2.3 gives back exactly the unfolded text) into lines of at most 78 octets where a space
allows it; every value is length-bounded so no line can exceed 998 octets (§2.1.1).

What the peer controls (HELO argument, reverse DNS name, certificate DN, recipient address,
login) is sanitised: control and format characters (C0, DEL, C1, bidi overrides, zero-width)
become ``?``, runs of white space become one space, non-ASCII becomes ``?`` unless the protocol is
one of the UTF8SMTP types (RFC 6532 headers), each value is cut to a bound in octets (``...``
marks a cut), and in a comment ``\\``, ``(``, ``)`` and ``"`` are backslash-escaped (RFC 5322
quoted-pair) so a DN cannot close the comment. Token values (HELO, rDNS, address) keep only
characters that cannot change the header's structure. What we supply (our host name, queue id,
TLS version and cipher names) is checked and refused with ValueError when malformed: a bug, not
input.

Privacy: ``authenticated_as`` does not appear by default. The WITH type (ESMTPA/ESMTPSA) already
records that the client authenticated; the login of a professional would otherwise travel in
every message to every recipient and their operators (Postfix's
``smtpd_sasl_authenticated_header = no`` default). ``reveal_login=True`` adds
``(Authenticated sender: login)``, for an operator whose policy wants it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from datetime import datetime
from email.utils import format_datetime
from typing import Final

from mta.routes import normalise_host

# The sanitising helpers are pure and see the same values (HELO, DN, addresses) message after
# message: they are memoised, which makes the header cheap on a busy session.

MAX_LINE: Final = 998  # RFC 5322 §2.1.1, octets without CRLF
FOLD_WIDTH: Final = 78  # RFC 5322 §2.1.1 "SHOULD"
SOFTWARE: Final = "Colombe"

MAX_HELO: Final = 255
MAX_DN: Final = 256
MAX_ADDRESS: Final = 320
MAX_LOGIN: Final = 128

PROTOCOLS: Final = frozenset(
    {
        "SMTP",
        "ESMTP",
        "ESMTPA",
        "ESMTPS",
        "ESMTPSA",
        "UTF8SMTP",
        "UTF8SMTPA",
        "UTF8SMTPS",
        "UTF8SMTPSA",
    }
)

_TOKEN_ASCII_RE: Final = re.compile(r"[A-Za-z0-9.\-_:\[\]]")
_ADDRESS_ASCII_RE: Final = re.compile(r"[!#-'*+\-/-9=?A-Z^-~@.\[\]:]")  # no <>();"\ SP ,
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_QUEUE_ID_RE: Final = re.compile(r"[A-Za-z0-9]{1,64}")


def with_protocol(*, esmtp: bool, tls: bool, authenticated: bool, utf8: bool = False) -> str:
    """The WITH type for a session: EHLO or HELO, TLS (STARTTLS or implicit, RFC 8314 §7),
    AUTH, SMTPUTF8 used for this message."""
    if not esmtp:
        if tls or authenticated or utf8:
            raise ValueError("TLS, AUTH and SMTPUTF8 need EHLO (ESMTP)")
        return "SMTP"
    base = "UTF8SMTP" if utf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def fold(name: str, value: str, width: int = FOLD_WIDTH) -> str:
    """``name: value`` folded at the spaces of ``value`` into lines of at most ``width`` octets
    where possible, CRLF-terminated. Removing every CRLF gives ``name: value`` back."""
    if "\r" in value or "\n" in value:
        raise ValueError("header value holds CR or LF")
    text = f"{name}: {value}"
    lines: list[str] = []
    start = 0
    while len(text[start:].encode()) > width:
        limit = start + 1  # never break at the line's own leading space
        best = -1
        pos = text.find(" ", limit)
        while pos != -1 and len(text[start:pos].encode()) <= width:
            best = pos
            pos = text.find(" ", pos + 1)
        if best == -1:
            best = pos  # a word longer than the width: break after it
        if best == -1:
            break
        lines.append(text[start:best])
        start = best
    lines.append(text[start:])
    return "\r\n".join(lines) + "\r\n"


def received_header(
    *,
    from_helo: str,
    peer_ip: str,
    peer_rdns: str | None,
    by_host: str,
    with_protocol: str,
    queue_id: str,
    at: datetime,
    tls_version: str | None = None,
    tls_cipher: str | None = None,
    tls_bits: int | None = None,
    peer_dn: str | None = None,
    recipient: str | None = None,
    authenticated_as: str | None = None,
    reveal_login: bool = False,
) -> str:
    """The folded ``Received:`` header, CRLF-terminated, to prepend to the message.

    ``recipient``: pass it only when the message has exactly one (RFC 5321 §7.2: listing
    several would disclose Bcc recipients). ``peer_dn``: the client certificate subject as
    RFC 4514 text. ``tls_version``/``tls_cipher``/``tls_bits``: from ``SSLObject.version()`` and
    ``.cipher()``; given exactly when the protocol is a TLS one (…S, …SA)."""
    protocol = with_protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown WITH protocol {protocol!r}")
    utf8 = protocol.startswith("UTF8")
    uses_tls = protocol.endswith(("S", "SA"))
    uses_auth = protocol.endswith("A")
    if uses_tls != (tls_version is not None):
        raise ValueError(f"{protocol} and tls_version={tls_version!r} disagree")
    if uses_auth != (authenticated_as is not None):
        raise ValueError(f"{protocol} and authenticated_as disagree")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("the Received date must carry a time zone")
    by = normalise_host(by_host)
    if by is None:
        raise ValueError(f"invalid by_host {by_host!r}")
    if not _QUEUE_ID_RE.fullmatch(queue_id):
        raise ValueError(f"invalid queue id {queue_id!r}")

    helo = _token(from_helo, MAX_HELO, utf8) or "unknown"
    rdns = _token(peer_rdns or "", MAX_HELO, utf8) or "unknown"
    parts = [f"from {helo} ({rdns} [{_address_literal(peer_ip)}])"]
    if tls_version is not None:
        if tls_cipher is None:
            raise ValueError("tls_cipher is required with tls_version")
        tls = f"(using {_name(tls_version)} with cipher {_name(tls_cipher)}"
        if tls_bits is not None:
            if tls_bits <= 0:
                raise ValueError(f"invalid cipher bits {tls_bits}")
            tls += f" ({tls_bits}/{tls_bits} bits)"
        if peer_dn is not None:
            tls += f' client DN "{_comment(peer_dn, MAX_DN, utf8)}"'
        parts.append(tls + ")")
    elif peer_dn is not None or tls_cipher is not None or tls_bits is not None:
        raise ValueError("TLS details without tls_version")
    if authenticated_as is not None and reveal_login:
        parts.append(f"(Authenticated sender: {_comment(authenticated_as, MAX_LOGIN, utf8)})")
    parts.append(f"by {by} ({SOFTWARE}) with {protocol} id {queue_id}")
    if recipient is not None:
        parts.append(f"for <{_address(recipient, utf8)}>")
    value = " ".join(parts) + f"; {format_datetime(at)}"
    return fold("Received", value)


def _address_literal(peer_ip: str) -> str:
    ip = ipaddress.ip_address(peer_ip)  # ValueError for a non-address: ours, a bug
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # a dual-stack socket's view of an IPv4 peer
            return str(ip.ipv4_mapped)
        return f"IPv6:{ip.compressed}"
    return str(ip)


def _name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"invalid TLS name {value!r}")
    return value


@functools.lru_cache(maxsize=4096)
def _clean(value: str, utf8: bool) -> str:
    """Controls and format characters to ``?``, non-ASCII too unless ``utf8``, white space
    runs to one space, trimmed."""
    out = []
    for c in value:
        category = unicodedata.category(c)
        if c.isspace():
            out.append(" ")
        elif category.startswith("C") or (not utf8 and not c.isascii()):
            out.append("?")  # Cc Cf Cs Co Cn
        else:
            out.append(c)
    return " ".join("".join(out).split())


def _bound(value: str, limit: int) -> str:
    """At most ``limit`` octets of UTF-8; ``...`` marks a cut."""
    data = value.encode()
    if len(data) <= limit:
        return value
    return data[: limit - 3].decode(errors="ignore") + "..."


@functools.lru_cache(maxsize=4096)
def _token(value: str, limit: int, utf8: bool) -> str:
    chars = [
        c if (_TOKEN_ASCII_RE.fullmatch(c) or (utf8 and not c.isascii())) else "?"
        for c in _clean(value, utf8)
    ]
    return _bound("".join(chars), limit)


@functools.lru_cache(maxsize=4096)
def _address(value: str, utf8: bool) -> str:
    chars = [
        c if (_ADDRESS_ASCII_RE.fullmatch(c) or (utf8 and not c.isascii())) else "?"
        for c in _clean(value, utf8)
    ]
    return _bound("".join(chars), MAX_ADDRESS)


@functools.lru_cache(maxsize=4096)
def _comment(value: str, limit: int, utf8: bool) -> str:
    text = _bound(_clean(value, utf8), limit)
    return re.sub(r'([\\()"])', r"\\\1", text)
