"""Modified UTF-7 for mailbox names (RFC 3501 §5.1.3, kept by RFC 9051 §5.1.3 without UTF8=ACCEPT).

Sans-I/O, pure functions. Printable US-ASCII (0x20-0x7E) stands for itself except ``&``, which
is written ``&-``; any other character sequence is UTF-16BE, base64-encoded with ``,`` instead
of ``/`` and no ``=`` padding, between ``&`` and ``-``.
"""

from __future__ import annotations

import binascii
import re

__all__ = ["decode", "encode"]

# Names made only of printable ASCII other than "&" are their own encoding: the common case.
_PLAIN_RE = re.compile(r"[\x20-\x25\x27-\x7e]*")
_B64_RE = re.compile(r"[A-Za-z0-9+,]+")


def _is_direct(char: str) -> bool:
    return "\x20" <= char <= "\x7e"


def _shift(chars: list[str], out: list[str]) -> None:
    """Append the base64 run for ``chars`` (RFC 3501 §5.1.3 modified BASE64)."""
    data = "".join(chars).encode("utf-16-be")
    encoded = binascii.b2a_base64(data, newline=False).rstrip(b"=").replace(b"/", b",")
    out.append("&" + encoded.decode("ascii") + "-")
    chars.clear()


def encode(name: str) -> str:
    """Encode a Unicode mailbox name to modified UTF-7 (RFC 3501 §5.1.3).

    Raises ValueError (UnicodeEncodeError) on a lone surrogate, which UTF-16 cannot carry.
    """
    if _PLAIN_RE.fullmatch(name):
        return name
    out: list[str] = []
    pending: list[str] = []
    for char in name:
        if _is_direct(char):
            if pending:
                _shift(pending, out)
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    if pending:
        _shift(pending, out)
    return "".join(out)


def decode(name: str) -> str:
    """Decode a modified UTF-7 mailbox name (RFC 3501 §5.1.3).

    Raises ValueError on malformed input: a character outside printable ASCII, an ``&`` without
    its closing ``-``, bad base64, an odd number of UTF-16 octets or an unpaired surrogate, and
    any non-canonical form (encoded printable ASCII, two adjacent encoded runs, non-zero padding
    bits). Rejecting non-canonical forms keeps one name from having two spellings, so that
    ``encode(decode(x)) == x`` for every accepted ``x``.
    """
    if _PLAIN_RE.fullmatch(name):
        return name
    out: list[str] = []
    pos = 0
    size = len(name)
    while pos < size:
        char = name[pos]
        if char == "&":
            close = name.find("-", pos + 1)
            if close < 0:
                raise ValueError("unterminated '&' shift in mailbox name")
            if close == pos + 1:
                out.append("&")
            else:
                out.append(_decode_run(name[pos + 1 : close]))
            pos = close + 1
        elif _is_direct(char):
            out.append(char)
            pos += 1
        else:
            raise ValueError(f"character {char!r} must be encoded in a mailbox name")
    result = "".join(out)
    if encode(result) != name:
        raise ValueError("non-canonical modified UTF-7 in mailbox name")
    return result


def _decode_run(run: str) -> str:
    if not _B64_RE.fullmatch(run) or len(run) % 4 == 1:
        raise ValueError(f"invalid modified base64 {run!r} in mailbox name")
    padded = run.replace(",", "/") + "=" * (-len(run) % 4)
    try:
        data = binascii.a2b_base64(padded.encode("ascii"), strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid modified base64 {run!r} in mailbox name") from exc
    if len(data) % 2:
        raise ValueError("odd number of UTF-16 octets in mailbox name")
    try:
        return data.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise ValueError("unpaired UTF-16 surrogate in mailbox name") from exc
