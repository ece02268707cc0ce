"""The header fields of a received message, as much as the MTA needs (sans-I/O): the From:
addresses submission checks, and the X-MSS-* headers the audit trail summarises."""

from __future__ import annotations

from email.utils import getaddresses
from typing import Final

MAX_HEADER_BLOCK: Final = 256 * 1024
"""Octets of a message searched for its header block; a longer header is cut there."""


def header_block(data: bytes) -> bytes:
    """The header block of ``data`` (up to the empty line), bounded."""
    head = data[:MAX_HEADER_BLOCK]
    end = head.find(b"\r\n\r\n")
    return head if end < 0 else head[: end + 2]


def fields(block: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) pairs of a header block; lines that are not fields are skipped."""
    out: list[tuple[str, str]] = []
    for raw in block.split(b"\r\n"):
        if not raw:
            continue
        if raw[:1] in (b" ", b"\t"):
            if out:
                name, value = out[-1]
                out[-1] = (name, value + " " + raw.strip().decode("utf-8", "replace"))
            continue
        raw_name, colon, raw_value = raw.partition(b":")
        if not colon or not raw_name or b" " in raw_name.strip():
            continue
        out.append(
            (
                raw_name.strip().decode("ascii", "replace"),
                raw_value.strip().decode("utf-8", "replace"),
            )
        )
    return out


def from_addresses(header_fields: list[tuple[str, str]]) -> list[str]:
    """Every address of every From: field (RFC 5322 allows a list); display names dropped."""
    values = [value for name, value in header_fields if name.lower() == "from"]
    return [address for _, address in getaddresses(values) if address]


def message_id(header_fields: list[tuple[str, str]]) -> str | None:
    for name, value in header_fields:
        if name.lower() == "message-id":
            return value[:200]
    return None
