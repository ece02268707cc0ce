"""Response formatting: strings, flags, dates, ENVELOPE and BODYSTRUCTURE (RFC 9051 §4, §7.5.2).

Bodies and envelopes come from :func:`store.mime.parse_message`, so the tests pin the exact
shapes the store hands out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap.response import (
    MAX_QUOTED,
    astring,
    bodystructure,
    envelope,
    flag_list,
    internal_date,
    literal,
    literal8,
    nstring,
    string,
)
from store.mime import parse_message
from store.model import Flag


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


# --------------------------------------------------------------------------- strings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hello", b'"hello"'),
        ("", b'""'),
        ('a "b" \\c', b'"a \\"b\\" \\\\c"'),
        (b"raw bytes", b'"raw bytes"'),
        ("a\r\nb", b"{4}\r\na\r\nb"),
        ("a\nb", b"{3}\r\na\nb"),
        ("a\rb", b"{3}\r\na\rb"),
        ("a\x00b", b"{3}\r\na\x00b"),
        ("café", b"{5}\r\ncaf\xc3\xa9"),
        (b"caf\xe9", b"{4}\r\ncaf\xe9"),
    ],
)
def test_string(value: str | bytes, expected: bytes) -> None:
    assert string(value) == expected


def test_string_utf8_mode_quotes_valid_utf8_only() -> None:
    assert string("café", utf8=True) == b'"caf\xc3\xa9"'
    assert string(b"caf\xe9", utf8=True) == b"{4}\r\ncaf\xe9"  # not UTF-8
    assert string("a\r\nb", utf8=True) == b"{4}\r\na\r\nb"


def test_string_length_threshold() -> None:
    assert string("x" * MAX_QUOTED) == b'"' + b"x" * MAX_QUOTED + b'"'
    long = b"x" * (MAX_QUOTED + 1)
    assert string(long) == b"{1025}\r\n" + long
    # The threshold counts octets before escaping.
    assert string('"' * MAX_QUOTED) == b'"' + b'\\"' * MAX_QUOTED + b'"'


def test_lone_surrogate_does_not_break_protocol() -> None:
    assert string("a\ud800") == b'"a?"'


def test_nstring() -> None:
    assert nstring(None) == b"NIL"
    assert nstring("NIL") == b'"NIL"'
    assert nstring("x") == b'"x"'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("INBOX", b"INBOX"),
        ("Sent", b"Sent"),
        ("a.b/c-d_e+f&g", b"a.b/c-d_e+f&g"),
        ("", b'""'),
        ("NIL", b'"NIL"'),
        ("nil", b'"nil"'),
        ("with space", b'"with space"'),
        ("a*", b'"a*"'),
        ("a%", b'"a%"'),
        ("a(b)", b'"a(b)"'),
        ("a{b", b'"a{b"'),
        ("a]", b'"a]"'),
        ('a"b', b'"a\\"b"'),
        ("a\\b", b'"a\\\\b"'),
        ("été", b"{5}\r\n\xc3\xa9t\xc3\xa9"),
    ],
)
def test_astring(value: str, expected: bytes) -> None:
    assert astring(value) == expected


def test_astring_utf8() -> None:
    assert astring("été", utf8=True) == b'"\xc3\xa9t\xc3\xa9"'


def test_literals() -> None:
    assert literal(b"") == b"{0}\r\n"
    assert literal(b"abc") == b"{3}\r\nabc"
    assert literal8(b"\x00\x01") == b"~{2}\r\n\x00\x01"


@given(st.text() | st.binary())
def test_string_is_always_well_framed(value: str | bytes) -> None:
    out = string(value)
    data = value if isinstance(value, bytes) else value.encode("utf-8", "replace")
    if out.startswith(b'"'):
        assert out.endswith(b'"')
        body = out[1:-1]
        assert not {0x00, 0x0A, 0x0D} & set(body)
        assert body.isascii()
        assert body.replace(b'\\"', b'"').replace(b"\\\\", b"\\") == data
    else:
        header, _, rest = out.partition(b"\r\n")
        assert header == b"{%d}" % len(data)
        assert rest == data


# --------------------------------------------------------------------------- flags, dates


def test_flag_list() -> None:
    assert flag_list(Flag(0), ()) == b"()"
    assert flag_list(Flag.SEEN | Flag.FLAGGED, ["$Forwarded"]) == b"(\\Seen \\Flagged $Forwarded)"
    assert flag_list(Flag.DRAFT | Flag.SEEN, (), recent=True) == b"(\\Seen \\Draft \\Recent)"
    every = Flag.SEEN | Flag.ANSWERED | Flag.FLAGGED | Flag.DELETED | Flag.DRAFT
    assert flag_list(every, ["$MDNSent", "Junk"]) == (
        b"(\\Seen \\Answered \\Flagged \\Deleted \\Draft $MDNSent Junk)"
    )


def test_flag_list_skips_non_atoms() -> None:
    assert flag_list(Flag(0), ["ok", "bad word", "", "x)", "\\Fake"]) == b"(ok)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(timedelta(hours=-7))),
            b'"17-Jul-1996 02:44:25 -0700"',
        ),
        (datetime(2024, 1, 5, 23, 0, 9, tzinfo=UTC), b'" 5-Jan-2024 23:00:09 +0000"'),
        (
            datetime(
                2025, 12, 31, 8, 7, 6, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))
            ),
            b'"31-Dec-2025 08:07:06 +0530"',
        ),
        (
            datetime(2025, 3, 1, 0, 0, 0, tzinfo=timezone(-timedelta(hours=3, minutes=30))),
            b'" 1-Mar-2025 00:00:00 -0330"',
        ),
        (datetime(2025, 5, 9, 12, 0, 0), b'" 9-May-2025 12:00:00 +0000"'),  # naive: UTC
    ],
)
def test_internal_date(value: datetime, expected: bytes) -> None:
    assert internal_date(value) == expected


# --------------------------------------------------------------------------- ENVELOPE


def test_envelope_full() -> None:
    raw = crlf(
        "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
        "From: Terry Gray <gray@cac.washington.edu>\n"
        "Subject: IMAP4rev1 WG mtg summary and minutes\n"
        "To: imap@cac.washington.edu\n"
        "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\n"
        "Message-Id: <B27397-0100000@cac.washington.edu>\n"
        "In-Reply-To: <x@y>\n"
        "\n"
        "body\n"
    )
    env = parse_message(raw).envelope
    assert envelope(env) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL "<x@y>" "<B27397-0100000@cac.washington.edu>")'
    )


def test_envelope_empty() -> None:
    env = parse_message(crlf("\nbody\n")).envelope
    assert envelope(env) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_envelope_groups_routes_and_encoded_words() -> None:
    raw = crlf(
        "From: =?utf-8?q?Jos=C3=A9?= <jose@example.fr>\n"
        "Reply-To: <@relay.fr:bob@example.fr>\n"
        'To: Equipe: a@b.fr, "C \\"D\\"" <c@d.fr>;, undisclosed-recipients:;\n'
        "Subject: =?iso-8859-1?q?r=E9union?=\n"
        "\n"
    )
    env = parse_message(raw).envelope
    assert envelope(env) == (
        b'(NIL "=?iso-8859-1?q?r=E9union?=" '
        b'(("=?utf-8?q?Jos=C3=A9?=" NIL "jose" "example.fr")) '
        b'(("=?utf-8?q?Jos=C3=A9?=" NIL "jose" "example.fr")) '
        b'((NIL "@relay.fr" "bob" "example.fr")) '
        b'((NIL NIL "Equipe" NIL)(NIL NIL "a" "b.fr")("C \\"D\\"" NIL "c" "d.fr")'
        b'(NIL NIL NIL NIL)(NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
        b"NIL NIL NIL NIL)"
    )


def test_envelope_8bit_header_is_a_literal_or_utf8_quoted() -> None:
    raw = "Subject: réunion\r\nFrom: Hélène <h@x.fr>\r\n\r\n".encode()
    env = parse_message(raw).envelope
    assert envelope(env) == (
        b"(NIL {8}\r\nr\xc3\xa9union "
        b'(({8}\r\nH\xc3\xa9l\xc3\xa8ne NIL "h" "x.fr")) '
        b'(({8}\r\nH\xc3\xa9l\xc3\xa8ne NIL "h" "x.fr")) '
        b'(({8}\r\nH\xc3\xa9l\xc3\xa8ne NIL "h" "x.fr")) '
        b"NIL NIL NIL NIL NIL)"
    )
    assert envelope(env, utf8=True) == (
        b'(NIL "r\xc3\xa9union" '
        b'(("H\xc3\xa9l\xc3\xa8ne" NIL "h" "x.fr")) '
        b'(("H\xc3\xa9l\xc3\xa8ne" NIL "h" "x.fr")) '
        b'(("H\xc3\xa9l\xc3\xa8ne" NIL "h" "x.fr")) '
        b"NIL NIL NIL NIL NIL)"
    )


def test_envelope_never_sends_nul() -> None:
    env: dict[str, Any] = {"subject": "a\x00b", "from": [], "to": []}
    assert envelope(env) == b'(NIL "ab" NIL NIL NIL NIL NIL NIL NIL NIL)'


# --------------------------------------------------------------------------- BODYSTRUCTURE


def test_simple_text_plain() -> None:
    raw = crlf(
        "Subject: x\nContent-Type: text/plain; charset=UTF-8; format=flowed\n\nline 1\nline 2\n"
    )
    body = parse_message(raw).body
    assert bodystructure(body, extensible=False) == (
        b'("text" "plain" ("charset" "UTF-8" "format" "flowed") NIL NIL "7BIT" 16 2)'
    )
    assert bodystructure(body, extensible=True) == (
        b'("text" "plain" ("charset" "UTF-8" "format" "flowed") NIL NIL "7BIT" 16 2'
        b" NIL NIL NIL NIL)"
    )


def test_missing_content_type_defaults_to_us_ascii_text() -> None:
    body = parse_message(crlf("Subject: x\n\nhello")).body
    assert bodystructure(body, extensible=False) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7BIT" 5 1)'
    )


def test_single_part_extension_fields() -> None:
    raw = crlf(
        'Content-Type: image/png; name="logo.png"\n'
        "Content-ID: <logo@x>\n"
        "Content-Description: Le logo\n"
        "Content-Transfer-Encoding: base64\n"
        "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n"
        "Content-Disposition: inline\n"
        "Content-Language: fr, en\n"
        "Content-Location: http://x.fr/logo.png\n"
        "\n"
        "iVBORw0KGgo=\n"
    )
    body = parse_message(raw).body
    assert bodystructure(body, extensible=False) == (
        b'("image" "png" ("name" "logo.png") "<logo@x>" "Le logo" "BASE64" 14)'
    )
    assert bodystructure(body, extensible=True) == (
        b'("image" "png" ("name" "logo.png") "<logo@x>" "Le logo" "BASE64" 14'
        b' "Q2hlY2sgSW50ZWdyaXR5IQ==" ("inline" NIL) ("fr" "en") "http://x.fr/logo.png")'
    )


MIXED = crlf(
    "From: a@b.fr\n"
    "Subject: mixed\n"
    'Content-Type: multipart/mixed; boundary="outer"\n'
    "\n"
    "preamble\n"
    "--outer\n"
    "Content-Type: multipart/alternative; boundary=inner\n"
    "\n"
    "--inner\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n"
    "Bonjour\n"
    "--inner\n"
    "Content-Type: text/html; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "<p>Bonjour</p>\n"
    "--inner--\n"
    "\n"
    "--outer\n"
    'Content-Type: application/pdf; name="compte rendu.pdf"\n'
    'Content-Disposition: attachment; filename="compte rendu.pdf"; size=3\n'
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "AAAA\n"
    "--outer--\n"
    "epilogue\n"
)


def test_multipart_mixed_with_nested_alternative() -> None:
    body = parse_message(MIXED).body
    assert bodystructure(body, extensible=False) == (
        b'((("text" "plain" ("charset" "utf-8") NIL NIL "7BIT" 7 1)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "QUOTED-PRINTABLE" 14 1) "alternative")'
        b'("application" "pdf" ("name" "compte rendu.pdf") NIL NIL "BASE64" 4) "mixed")'
    )
    assert bodystructure(body, extensible=True) == (
        b'((("text" "plain" ("charset" "utf-8") NIL NIL "7BIT" 7 1 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "QUOTED-PRINTABLE" 14 1 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "inner") NIL NIL NIL)'
        b'("application" "pdf" ("name" "compte rendu.pdf") NIL NIL "BASE64" 4 NIL'
        b' ("attachment" ("filename" "compte rendu.pdf" "size" "3")) NIL NIL)'
        b' "mixed" ("boundary" "outer") NIL NIL NIL)'
    )


def test_message_rfc822_attachment_containing_a_multipart() -> None:
    raw = crlf(
        "Subject: fwd\n"
        "Content-Type: multipart/mixed; boundary=b1\n"
        "\n"
        "--b1\n"
        "Content-Type: text/plain\n"
        "\n"
        "see attached\n"
        "--b1\n"
        "Content-Type: message/rfc822\n"
        "Content-Disposition: attachment\n"
        "\n"
        "From: x@y.fr\n"
        "Subject: inner\n"
        "Content-Type: multipart/alternative; boundary=b2\n"
        "\n"
        "--b2\n"
        "Content-Type: text/plain\n"
        "\n"
        "a\n"
        "--b2\n"
        "Content-Type: text/html\n"
        "\n"
        "<b>a</b>\n"
        "--b2--\n"
        "--b1--\n"
    )
    body = parse_message(raw).body
    inner_env = (
        b'(NIL "inner" ((NIL NIL "x" "y.fr")) ((NIL NIL "x" "y.fr")) ((NIL NIL "x" "y.fr"))'
        b" NIL NIL NIL NIL NIL)"
    )
    attachment_size = body["parts"][1]["size"]
    assert attachment_size == 168
    assert bodystructure(body, extensible=False) == (
        b'(("text" "plain" NIL NIL NIL "7BIT" 12 1)'
        b'("message" "rfc822" NIL NIL NIL "7BIT" 168 ' + inner_env + b" "
        b'(("text" "plain" NIL NIL NIL "7BIT" 1 1)("text" "html" NIL NIL NIL "7BIT" 8 1)'
        b' "alternative") 13) "mixed")'
    )
    assert bodystructure(body, extensible=True) == (
        b'(("text" "plain" NIL NIL NIL "7BIT" 12 1 NIL NIL NIL NIL)'
        b'("message" "rfc822" NIL NIL NIL "7BIT" 168 ' + inner_env + b" "
        b'(("text" "plain" NIL NIL NIL "7BIT" 1 1 NIL NIL NIL NIL)'
        b'("text" "html" NIL NIL NIL "7BIT" 8 1 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "b2") NIL NIL NIL) 13 NIL ("attachment" NIL) NIL NIL)'
        b' "mixed" ("boundary" "b1") NIL NIL NIL)'
    )


def test_base64_message_rfc822_keeps_the_grammar() -> None:
    raw = crlf(
        "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogeA0KDQo=\n"
    )
    body = parse_message(raw).body
    assert body["message"] is None
    assert bodystructure(body, extensible=False) == (
        b'("message" "rfc822" NIL NIL NIL "BASE64" 22 '
        b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) "
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7BIT" 0 0) 1)'
    )


def test_rfc2231_parameters() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=zz\n"
        "\n"
        "--zz\n"
        "Content-Type: application/octet-stream;\n"
        " name*0*=utf-8''%C3%A9t%C3%A9;\n"
        ' name*1=".txt"\n'
        "Content-Disposition: attachment;\n"
        " filename*=iso-8859-1'fr'r%E9sum%E9.txt\n"
        "\n"
        "x\n"
        "--zz\n"
        "Content-Type: text/plain; title*=us-ascii'en'This%20is%20plain\n"
        "\n"
        "y\n"
        "--zz--\n"
    )
    body = parse_message(raw).body
    assert bodystructure(body, extensible=True) == (
        b'(("application" "octet-stream" ("name*" "utf-8\'\'%C3%A9t%C3%A9.txt") NIL NIL'
        b' "7BIT" 1 NIL ("attachment" ("filename*" "utf-8\'\'r%C3%A9sum%C3%A9.txt")) NIL NIL)'
        b'("text" "plain" ("title" "This is plain") NIL NIL "7BIT" 1 1 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "zz") NIL NIL NIL)'
    )
    assert bodystructure(body["parts"][0], extensible=False, utf8=True) == (
        b'("application" "octet-stream" ("name" "\xc3\xa9t\xc3\xa9.txt") NIL NIL "7BIT" 1)'
    )


def test_empty_multipart_gets_a_placeholder_part() -> None:
    body: dict[str, Any] = {
        "type": "multipart",
        "subtype": "mixed",
        "params": [["boundary", "x"]],
        "encoding": "7BIT",
        "size": 0,
        "parts": [],
    }
    assert bodystructure(body, extensible=False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7BIT" 0 0) "mixed")'
    )
    assert bodystructure(body, extensible=True) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "x") NIL NIL NIL)'
    )


def test_multipart_without_parts_found_by_the_store() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=nope\n\nno delimiter here\n")
    body = parse_message(raw).body
    assert bodystructure(body, extensible=False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7BIT" 0 0) "mixed")'
    )


def test_8bit_description_is_a_literal() -> None:
    raw = "Content-Description: Résumé\r\n\r\nx".encode()
    body = parse_message(raw).body
    assert bodystructure(body, extensible=False) == (
        b'("text" "plain" ("charset" "us-ascii") NIL {8}\r\nR\xc3\xa9sum\xc3\xa9 "7BIT" 1 1)'
    )


def test_lf_only_message_sizes_come_from_the_store() -> None:
    body = parse_message(MIXED.replace(b"\r\n", b"\n")).body
    assert bodystructure(body, extensible=False) == (
        b'((("text" "plain" ("charset" "utf-8") NIL NIL "7BIT" 7 1)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "QUOTED-PRINTABLE" 14 1) "alternative")'
        b'("application" "pdf" ("name" "compte rendu.pdf") NIL NIL "BASE64" 4) "mixed")'
    )
