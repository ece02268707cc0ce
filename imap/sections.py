"""BODY[section], BINARY[part] and partial fetches over a stored message (RFC 9051 §6.4.5,
RFC 3516).

Sans-I/O, pure functions over the raw message and the Part dict :mod:`store.mime` computed at
delivery. Nothing is re-parsed: every section is a byte range given by the stored offsets
(``header_start``, ``body_start``, ``end``), except HEADER.FIELDS, which scans only the header
block, and BINARY, which decodes only the part asked for.

Part numbering (RFC 9051 §6.4.5): a message's part N is child N of its body when the body is
multipart, and part 1 is the body itself otherwise; a message/rfc822 (or message/global) part
continues the numbering in the message it encapsulates.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

from imap.model import Section

__all__ = [
    "UnknownTransferEncoding",
    "binary_section",
    "binary_size",
    "find_part",
    "header_fields",
    "partial",
    "section_bytes",
]

Part = Mapping[str, Any]
Raw = bytes | bytearray | memoryview

_IDENTITY = frozenset({"7BIT", "8BIT", "BINARY"})
# Everything outside the base64 alphabet and "=" is dropped before decoding: line breaks,
# stray spaces and junk are common in real mail (RFC 2045 §6.8 says to ignore them).
_B64_KEEP = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_B64_DELETE = bytes(set(range(256)) - set(_B64_KEEP))


class UnknownTransferEncoding(ValueError):
    """BINARY of a part whose Content-Transfer-Encoding we cannot decode: the server answers
    ``NO [UNKNOWN-CTE]`` (RFC 3516 §4.3, RFC 9051 §7.1)."""

    def __init__(self, encoding: str) -> None:
        super().__init__(f"unknown Content-Transfer-Encoding {encoding!r}")
        self.encoding = encoding


# --------------------------------------------------------------------------------------------
# Part lookup


def _message_child(root: Part, number: int) -> Part | None:
    """Part ``number`` of the message whose top entity is ``root``."""
    children = root.get("parts")
    if children is not None:
        return children[number - 1] if 0 < number <= len(children) else None
    return root if number == 1 else None


def find_part(body: Part, part: tuple[int, ...]) -> Part | None:
    """The Part dict numbered ``part`` (RFC 9051 §6.4.5) in the message whose body is ``body``;
    ``()`` is the message itself. None when no such part exists."""
    if not part:
        return body
    node = _message_child(body, part[0])
    for number in part[1:]:
        if node is None:
            return None
        children = node.get("parts")
        if children is not None:
            node = children[number - 1] if 0 < number <= len(children) else None
        elif node.get("message") is not None:
            node = _message_child(node["message"]["body"], number)
        else:
            return None  # a leaf has no sub-parts
    return node


def _slice(raw: Raw, start: int, end: int) -> bytes:
    return bytes(raw[start:end])


# --------------------------------------------------------------------------------------------
# BODY[section]


def section_bytes(raw: Raw, body: Part, section: Section | None) -> bytes | None:
    """The octets of ``BODY[section]`` (RFC 9051 §6.4.5); None when the part does not exist.

    ``None`` or ``[]`` is the whole message. HEADER, HEADER.FIELDS[.NOT] and TEXT apply to the
    message itself or to a message/rfc822 part; MIME to any numbered part.
    """
    if section is None or (not section.part and section.text is None):
        return bytes(raw)
    node = find_part(body, section.part)
    if node is None:
        return None
    text = section.text
    if text is None:
        return _slice(raw, node["body_start"], node["end"])
    if text == "MIME":
        if not section.part:
            return None  # RFC 9051 §6.4.5: MIME must be prefixed by a part number
        return _slice(raw, node["header_start"], node["body_start"])
    if section.part:
        message = node.get("message")
        if message is None:
            return None  # HEADER/TEXT only exist for message/rfc822 parts
        root: Part = message["body"]
    else:
        root = body
    if text == "TEXT":
        return _slice(raw, root["body_start"], root["end"])
    header = _slice(raw, root["header_start"], root["body_start"])
    if text == "HEADER":
        return header
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return header_fields(header, section.fields, exclude=text == "HEADER.FIELDS.NOT")
    return None


def header_fields(header: bytes, fields: tuple[str, ...], *, exclude: bool = False) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT (RFC 9051 §6.4.5) of a header block.

    Keeps the matching fields (case-insensitive names) with their folded continuation lines, in
    their original order and line endings, then the blank line. The blank line uses the header's
    own line ending (CRLF, or LF for an LF-only message), like the rest of the octets returned.
    """
    wanted = {name.upper().encode("utf-8") for name in fields}
    newline = b"\n" if b"\r\n" not in header and b"\n" in header else b"\r\n"
    out: list[bytes] = []
    keep = False
    # Split on LF only: a bare CR inside a field value is not a line break (RFC 5322 §2.2).
    for line in _lf_lines(header):
        first = line[:1]
        if first in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        if line in (b"\r\n", b"\n"):
            break  # the header/body separator
        name, colon, _ = line.partition(b":")
        matched = bool(colon) and name.rstrip(b" \t").upper() in wanted
        keep = matched != exclude if colon else False
        if keep:
            out.append(line)
    if out and not out[-1].endswith(b"\n"):
        out[-1] += newline  # a header block cut short: keep the blank line a blank line
    out.append(newline)
    return b"".join(out)


def _lf_lines(header: bytes) -> list[bytes]:
    lines = header.split(b"\n")
    last = lines.pop()
    result = [line + b"\n" for line in lines]
    if last:
        result.append(last)
    return result


def partial(data: bytes, origin: int, length: int) -> bytes:
    """``<origin.length>`` (RFC 9051 §6.4.5): an origin past the end gives the empty string."""
    if origin >= len(data):
        return b""
    return data[origin : origin + length]


# --------------------------------------------------------------------------------------------
# BINARY[part] (RFC 3516, RFC 9051 §6.4.5)


def _decode_base64(data: bytes) -> bytes:
    clean = data.translate(None, _B64_DELETE)
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:
        # Broken padding or a truncated last quantum: decode what can be decoded.
        core = clean.replace(b"=", b"")
        if len(core) % 4 == 1:
            core = core[:-1]  # six lone bits cannot make an octet
        return binascii.a2b_base64(core + b"=" * (-len(core) % 4))


def _decode(data: bytes, encoding: str) -> bytes:
    if encoding in _IDENTITY:
        return data
    if encoding == "BASE64":
        return _decode_base64(data)
    if encoding == "QUOTED-PRINTABLE":
        return binascii.a2b_qp(data)
    raise UnknownTransferEncoding(encoding)


def binary_section(raw: Raw, body: Part, part: tuple[int, ...]) -> bytes | None:
    """``BINARY[part]`` (RFC 3516 §4.2): the part content with its transfer encoding undone.

    ``()`` is the whole message as stored. None when the part does not exist; raises
    :class:`UnknownTransferEncoding` for an encoding other than 7bit, 8bit, binary, base64 and
    quoted-printable.
    """
    if not part:
        return bytes(raw)
    node = find_part(body, part)
    if node is None:
        return None
    encoding = (node.get("encoding") or "7BIT").upper()
    return _decode(_slice(raw, node["body_start"], node["end"]), encoding)


def binary_size(raw: Raw, body: Part, part: tuple[int, ...]) -> int | None:
    """``BINARY.SIZE[part]`` (RFC 3516 §4.2): the decoded size, without copying identity parts."""
    if not part:
        return len(raw) if not isinstance(raw, memoryview) else raw.nbytes
    node = find_part(body, part)
    if node is None:
        return None
    encoding = (node.get("encoding") or "7BIT").upper()
    if encoding in _IDENTITY:
        return int(node["end"]) - int(node["body_start"])
    return len(_decode(_slice(raw, node["body_start"], node["end"]), encoding))
