"""BODY[section], BINARY[part] and partial fetches (RFC 9051 §6.4.5, RFC 3516).

Messages go through :func:`store.mime.parse_message`, so the offsets are the stored ones.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap.model import Section
from imap.sections import (
    UnknownTransferEncoding,
    binary_section,
    binary_size,
    find_part,
    header_fields,
    partial,
    section_bytes,
)
from store.mime import parse_message


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


TOP_HEADER = (
    "From: Alice <alice@example.fr>\n"
    "To: bob@example.fr,\n"
    "\tcarol@example.fr\n"
    "subject: Compte rendu\n"
    "  de la réunion\n"
    "X-Custom : yes\n"
    "TO: dave@example.fr\n"
    'Content-Type: multipart/mixed; boundary="outer"\n'
    "\n"
)
PART1 = "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
PART1_BODY = "caf=C3=A9 =\nau lait"
INNER_HEADER = "From: x@y.fr\nSubject: inner\nContent-Type: multipart/alternative; boundary=b2\n\n"
INNER_P1 = "Content-Type: text/plain\n\n"
INNER_P2 = "Content-Type: text/html\n\n"
INNER_BODY = f"--b2\n{INNER_P1}a\n--b2\n{INNER_P2}<b>a</b>\n--b2--"
PART2 = "Content-Type: message/rfc822\n\n"
PART3 = "Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
PART3_BODY = "JVBE\nRi0x\r\nLjQ= \n"
PART4 = "Content-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n\n"
TOP_BODY = (
    "preamble\n"
    f"--outer\n{PART1}{PART1_BODY}\n"
    f"--outer\n{PART2}{INNER_HEADER}{INNER_BODY}\n"
    f"--outer\n{PART3}{PART3_BODY}\n"
    f"--outer\n{PART4}begin 644 x\n"
    "--outer--\n"
)
MESSAGE = crlf(TOP_HEADER + TOP_BODY)


@pytest.fixture(params=["crlf", "lf"])
def message(request: pytest.FixtureRequest) -> tuple[bytes, dict[str, Any], str]:
    """(raw, body, newline): the same message with CRLF and with LF-only line endings."""
    raw = MESSAGE if request.param == "crlf" else MESSAGE.replace(b"\r\n", b"\n")
    # PART3_BODY holds one deliberate CRLF: the LF variant keeps it as LF.
    return raw, parse_message(raw).body, "\r\n" if request.param == "crlf" else "\n"


def nl(text: str, newline: str) -> bytes:
    return text.replace("\n", newline).encode("utf-8")


def fetch(message: tuple[bytes, dict[str, Any], str], section: Section | None) -> bytes | None:
    raw, body, _ = message
    return section_bytes(raw, body, section)


# --------------------------------------------------------------------------- whole message


def test_whole_message(message: tuple[bytes, dict[str, Any], str]) -> None:
    raw = message[0]
    assert fetch(message, None) == raw
    assert fetch(message, Section()) == raw


def test_header_and_text(message: tuple[bytes, dict[str, Any], str]) -> None:
    newline = message[2]
    assert fetch(message, Section(text="HEADER")) == nl(TOP_HEADER, newline)
    assert fetch(message, Section(text="TEXT")) == nl(TOP_BODY, newline)


def test_memoryview_input(message: tuple[bytes, dict[str, Any], str]) -> None:
    raw, body, newline = message
    view = memoryview(raw)
    assert section_bytes(view, body, Section(text="HEADER")) == nl(TOP_HEADER, newline)
    assert section_bytes(view, body, None) == raw
    assert binary_section(view, body, (1,)) == "café au lait".encode()
    assert binary_size(view, body, ()) == len(raw)


# --------------------------------------------------------------------------- HEADER.FIELDS


def test_header_fields_folded_and_mixed_case(message: tuple[bytes, dict[str, Any], str]) -> None:
    newline = message[2]
    got = fetch(message, Section(text="HEADER.FIELDS", fields=("SUBJECT", "TO")))
    assert got == nl(
        "To: bob@example.fr,\n\tcarol@example.fr\n"
        "subject: Compte rendu\n  de la réunion\n"
        "TO: dave@example.fr\n\n",
        newline,
    )


def test_header_fields_space_before_colon(message: tuple[bytes, dict[str, Any], str]) -> None:
    got = fetch(message, Section(text="HEADER.FIELDS", fields=("X-CUSTOM",)))
    assert got == nl("X-Custom : yes\n\n", message[2])


def test_header_fields_none_match(message: tuple[bytes, dict[str, Any], str]) -> None:
    got = fetch(message, Section(text="HEADER.FIELDS", fields=("CC",)))
    assert got == nl("\n", message[2])


def test_header_fields_not(message: tuple[bytes, dict[str, Any], str]) -> None:
    newline = message[2]
    got = fetch(
        message, Section(text="HEADER.FIELDS.NOT", fields=("TO", "CONTENT-TYPE", "X-CUSTOM"))
    )
    assert got == nl(
        "From: Alice <alice@example.fr>\nsubject: Compte rendu\n  de la réunion\n\n", newline
    )


def test_header_fields_prefix_is_not_a_match() -> None:
    header = b"Subject-Extra: no\r\nSubject: yes\r\n\r\n"
    assert header_fields(header, ("SUBJECT",)) == b"Subject: yes\r\n\r\n"


def test_header_fields_keep_bare_cr_inside_value() -> None:
    header = b"Subject: a\rb\r\nTo: x\r\n\r\n"
    assert header_fields(header, ("SUBJECT",)) == b"Subject: a\rb\r\n\r\n"


def test_header_fields_of_a_cut_header() -> None:
    # No blank line (store.mime then ends the header at the end of the message).
    assert header_fields(b"Subject: x\r\nTo: y", ("TO",)) == b"To: y\r\n\r\n"
    assert header_fields(b"", ("TO",)) == b"\r\n"


def test_header_fields_of_message_rfc822_part(
    message: tuple[bytes, dict[str, Any], str],
) -> None:
    got = fetch(message, Section(part=(2,), text="HEADER.FIELDS", fields=("SUBJECT",)))
    assert got == nl("Subject: inner\n\n", message[2])


# --------------------------------------------------------------------------- parts


def test_part_contents(message: tuple[bytes, dict[str, Any], str]) -> None:
    newline = message[2]
    assert fetch(message, Section(part=(1,))) == nl(PART1_BODY, newline)
    assert fetch(message, Section(part=(2,))) == nl(INNER_HEADER + INNER_BODY, newline)
    assert fetch(message, Section(part=(4,))) == nl("begin 644 x", newline)


def test_mime_headers(message: tuple[bytes, dict[str, Any], str]) -> None:
    newline = message[2]
    assert fetch(message, Section(part=(1,), text="MIME")) == nl(PART1, newline)
    assert fetch(message, Section(part=(2,), text="MIME")) == nl(PART2, newline)
    # Nested: parts of the multipart inside the message/rfc822 part.
    assert fetch(message, Section(part=(2, 1), text="MIME")) == nl(INNER_P1, newline)
    assert fetch(message, Section(part=(2, 2), text="MIME")) == nl(INNER_P2, newline)


def test_message_rfc822_descent(message: tuple[bytes, dict[str, Any], str]) -> None:
    newline = message[2]
    assert fetch(message, Section(part=(2,), text="HEADER")) == nl(INNER_HEADER, newline)
    assert fetch(message, Section(part=(2,), text="TEXT")) == nl(INNER_BODY, newline)
    assert fetch(message, Section(part=(2, 1))) == b"a"
    assert fetch(message, Section(part=(2, 2))) == b"<b>a</b>"


@pytest.mark.parametrize(
    "section",
    [
        Section(part=(5,)),
        Section(part=(0,)),
        Section(part=(1, 1)),  # a leaf has no sub-parts
        Section(part=(2, 3)),
        Section(part=(2, 1, 1)),
        Section(part=(3, 1, 2)),
        Section(part=(1,), text="HEADER"),  # HEADER needs message/rfc822
        Section(part=(1,), text="TEXT"),
        Section(part=(3,), text="HEADER.FIELDS", fields=("TO",)),
        Section(part=(5,), text="MIME"),
        Section(text="MIME"),
    ],
)
def test_missing_parts(message: tuple[bytes, dict[str, Any], str], section: Section) -> None:
    assert fetch(message, section) is None


def test_single_part_message_numbering() -> None:
    raw = crlf("Subject: s\nContent-Type: text/plain\n\nhello\n")
    body = parse_message(raw).body
    assert section_bytes(raw, body, Section(part=(1,))) == b"hello\r\n"
    assert section_bytes(raw, body, Section(part=(1,), text="MIME")) == (
        b"Subject: s\r\nContent-Type: text/plain\r\n\r\n"
    )
    assert section_bytes(raw, body, Section(part=(2,))) is None
    assert section_bytes(raw, body, Section(part=(1, 1))) is None


def test_top_level_message_rfc822() -> None:
    inner = "Subject: in\n\nbody"
    raw = crlf("Content-Type: message/rfc822\n\n" + inner)
    body = parse_message(raw).body
    assert section_bytes(raw, body, Section(part=(1,))) == crlf(inner)
    assert section_bytes(raw, body, Section(part=(1,), text="HEADER")) == b"Subject: in\r\n\r\n"
    assert section_bytes(raw, body, Section(part=(1, 1))) == b"body"
    assert section_bytes(raw, body, Section(part=(1, 2))) is None


def test_nested_message_rfc822_in_message_rfc822() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=o\n\n"
        "--o\nContent-Type: message/rfc822\n\n"
        "Subject: level 1\nContent-Type: message/rfc822\n\n"
        "Subject: level 2\n\ndeep\n"
        "--o--\n"
    )
    body = parse_message(raw).body
    assert section_bytes(raw, body, Section(part=(1, 1), text="HEADER")) == (
        b"Subject: level 2\r\n\r\n"
    )
    assert section_bytes(raw, body, Section(part=(1, 1, 1))) == b"deep"
    assert section_bytes(raw, body, Section(part=(1,), text="TEXT")) == (
        b"Subject: level 2\r\n\r\ndeep"
    )


def test_find_part(message: tuple[bytes, dict[str, Any], str]) -> None:
    body = message[1]
    assert find_part(body, ()) is body
    assert find_part(body, (3,)) is body["parts"][2]
    assert find_part(body, (2, 2)) is body["parts"][1]["message"]["body"]["parts"][1]
    assert find_part(body, (9,)) is None


# --------------------------------------------------------------------------- partial


def test_partial_at_part_boundaries(message: tuple[bytes, dict[str, Any], str]) -> None:
    data = fetch(message, Section(part=(1,)))
    assert data is not None
    size = len(data)
    assert partial(data, 0, size) == data
    assert partial(data, 0, size + 100) == data
    assert partial(data, size, 10) == b""
    assert partial(data, size + 5, 10) == b""
    assert partial(data, size - 1, 10) == data[-1:]
    assert partial(data, 0, 0) == b""
    assert partial(data, 3, 4) == data[3:7]


@given(st.binary(max_size=50), st.integers(0, 60), st.integers(0, 60))
def test_partial_is_a_slice(data: bytes, origin: int, length: int) -> None:
    assert partial(data, origin, length) == data[origin : origin + length]


# --------------------------------------------------------------------------- BINARY


def test_binary_decodes(message: tuple[bytes, dict[str, Any], str]) -> None:
    raw, body, newline = message
    assert binary_section(raw, body, (1,)) == "café au lait".encode()
    assert binary_size(raw, body, (1,)) == len("café au lait".encode())
    # Base64 with line breaks, a stray CR LF and a trailing space.
    assert binary_section(raw, body, (3,)) == b"%PDF-1.4"
    assert binary_size(raw, body, (3,)) == 8
    # Identity encodings: the content as stored.
    inner = nl(INNER_HEADER + INNER_BODY, newline)
    assert binary_section(raw, body, (2,)) == inner
    assert binary_size(raw, body, (2,)) == len(inner)
    assert binary_section(raw, body, (2, 2)) == b"<b>a</b>"


def test_binary_whole_message(message: tuple[bytes, dict[str, Any], str]) -> None:
    raw, body, _ = message
    assert binary_section(raw, body, ()) == raw
    assert binary_size(raw, body, ()) == len(raw)


def test_binary_missing_part(message: tuple[bytes, dict[str, Any], str]) -> None:
    raw, body, _ = message
    assert binary_section(raw, body, (7,)) is None
    assert binary_size(raw, body, (1, 1)) is None


def test_binary_unknown_cte(message: tuple[bytes, dict[str, Any], str]) -> None:
    raw, body, _ = message
    with pytest.raises(UnknownTransferEncoding) as caught:
        binary_section(raw, body, (4,))
    assert caught.value.encoding == "X-UUENCODE"
    with pytest.raises(UnknownTransferEncoding):
        binary_size(raw, body, (4,))


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        (b"aGVsbG8=", b"hello"),
        (b"aGVs\r\nbG8=\r\n", b"hello"),
        (b"aGVsbG8", b"hello"),  # padding missing
        (b"aGVsbG8===", b"hello"),  # too much padding
        (b"aGVsbG8hI", b"hello!"),  # a lone trailing sextet
        (b"  a G V s b G 8 = ", b"hello"),
        (b"aGV*sbG8=", b"hello"),  # junk outside the alphabet
        (b"", b""),
    ],
)
def test_binary_base64_is_lenient(encoded: bytes, decoded: bytes) -> None:
    raw = b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
    body = parse_message(raw).body
    assert binary_section(raw, body, (1,)) == decoded
    assert binary_size(raw, body, (1,)) == len(decoded)


def test_binary_quoted_printable_soft_breaks() -> None:
    raw = b"Content-Transfer-Encoding: Quoted-Printable\r\n\r\nl=C3=A0 =\r\nbas=3D\r\nfin"
    body = parse_message(raw).body
    assert binary_section(raw, body, (1,)) == "là bas=\r\nfin".encode()
