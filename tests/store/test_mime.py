"""store.mime: ENVELOPE and BODYSTRUCTURE (with byte offsets) computed once at delivery."""

from __future__ import annotations

import base64
import json
import mmap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store.mime import (
    MAX_DEPTH,
    MAX_HEADER_BYTES,
    MAX_PARTS,
    MISSING_HOST,
    decode_header_value,
    parse_address_list,
    parse_message,
)

# --------------------------------------------------------------------------------------------
# Helpers


def walk(part: dict[str, Any], depth: int = 0) -> Iterator[tuple[dict[str, Any], int]]:
    """Every part with its nesting depth, descending into multiparts and embedded messages."""
    yield part, depth
    for child in part["parts"] or []:
        yield from walk(child, depth + 1)
    if part["message"] is not None:
        yield from walk(part["message"]["body"], depth + 1)


def body_of(raw: bytes, part: dict[str, Any]) -> bytes:
    return raw[part["body_start"] : part["end"]]


def mime_header_of(raw: bytes, part: dict[str, Any]) -> bytes:
    return raw[part["header_start"] : part["body_start"]]


def assert_offsets_consistent(part: dict[str, Any], size: int) -> None:
    for p, _ in walk(part):
        assert 0 <= p["header_start"] <= p["body_start"] <= p["end"] <= size, p
        assert p["size"] == p["end"] - p["body_start"]
        if p["parts"] is not None:
            assert p["type"] == "multipart"
            assert len(p["parts"]) >= 1
            for child in p["parts"]:
                assert p["body_start"] <= child["header_start"] <= child["end"] <= p["end"]
        if p["message"] is not None:
            inner = p["message"]["body"]
            assert inner["header_start"] == p["body_start"]
            assert inner["end"] == p["end"]


SIMPLE = (
    b"From: Dr Martin <martin@Clinique-Test.mssante.fr>\r\n"
    b"To: Jean Dupont <jean.dupont@hopital-test.mssante.fr>\r\n"
    b"Subject: =?utf-8?q?Compte_rendu_op=C3=A9ratoire?=\r\n"
    b"Date: Sun, 22 Nov 2026 10:00:00 +0100\r\n"
    b"Message-ID: <1.test@clinique-test.mssante.fr>\r\n"
    b"\r\n"
    b"Bonjour,\r\n"
    b"voici le compte rendu.\r\n"
)


# --------------------------------------------------------------------------------------------
# Single-part messages


def test_simple_text_message_offsets_size_lines_and_defaults_rfc3501() -> None:
    meta = parse_message(SIMPLE)
    body = meta.body
    separator = SIMPLE.index(b"\r\n\r\n") + 4
    assert meta.header_size == separator == body["body_start"]
    assert body["header_start"] == 0
    assert body["end"] == len(SIMPLE)
    assert body_of(SIMPLE, body) == b"Bonjour,\r\nvoici le compte rendu.\r\n"
    assert body["size"] == len(b"Bonjour,\r\nvoici le compte rendu.\r\n")
    assert body["lines"] == 2
    # RFC 2045 §5.2: no Content-Type means text/plain; charset=us-ascii, 7bit.
    assert (body["type"], body["subtype"]) == ("text", "plain")
    assert body["params"] == [["charset", "us-ascii"]]
    assert body["encoding"] == "7BIT"
    assert body["id"] is None
    assert body["description"] is None
    assert body["md5"] is None
    assert body["disposition"] is None
    assert body["language"] is None
    assert body["location"] is None
    assert body["parts"] is None
    assert body["message"] is None
    assert meta.problems == ()


def test_envelope_fields_are_raw_and_sender_reply_to_default_to_from_rfc3501() -> None:
    meta = parse_message(SIMPLE)
    env = meta.envelope
    assert list(env) == [
        "date",
        "subject",
        "from",
        "sender",
        "reply_to",
        "to",
        "cc",
        "bcc",
        "in_reply_to",
        "message_id",
    ]
    assert env["date"] == "Sun, 22 Nov 2026 10:00:00 +0100"
    # IMAP sends encoded-words raw; the decoded form is for search/display only.
    assert env["subject"] == "=?utf-8?q?Compte_rendu_op=C3=A9ratoire?="
    assert meta.subject == "Compte rendu opératoire"
    frm = [["Dr Martin", None, "martin", "Clinique-Test.mssante.fr"]]
    assert env["from"] == frm
    assert env["sender"] == frm
    assert env["reply_to"] == frm
    assert env["to"] == [["Jean Dupont", None, "jean.dupont", "hopital-test.mssante.fr"]]
    assert env["cc"] == []
    assert env["bcc"] == []
    assert env["in_reply_to"] is None
    assert env["message_id"] == "<1.test@clinique-test.mssante.fr>"
    assert meta.message_id == "<1.test@clinique-test.mssante.fr>"
    assert meta.from_addr == "martin@clinique-test.mssante.fr"
    assert meta.sent_date == datetime(2026, 11, 22, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    json.dumps(env)


def test_explicit_sender_and_empty_reply_to_rfc3501() -> None:
    raw = (
        b"From: a@example.org\r\nSender: secretariat@example.org\r\nReply-To:\r\n"
        b"In-Reply-To: <parent@x>\r\n\r\nx"
    )
    env = parse_message(raw).envelope
    assert env["sender"] == [[None, None, "secretariat", "example.org"]]
    # RFC 3501 §7.4.2: an empty Reply-To is replaced by From, like an absent one.
    assert env["reply_to"] == [[None, None, "a", "example.org"]]
    assert env["in_reply_to"] == "<parent@x>"
    assert env["subject"] is None
    assert env["date"] is None
    assert env["message_id"] is None


def test_folded_header_values_are_unfolded_rfc5322() -> None:
    raw = b"Subject: a long\r\n  subject\r\n\tline\r\nTo: x@y,\r\n z@w\r\n\r\n"
    meta = parse_message(raw)
    # RFC 5322 §2.2.3: unfolding removes the CRLF, keeps the white space.
    assert meta.envelope["subject"] == "a long  subject\tline"
    assert meta.envelope["to"] == [[None, None, "x", "y"], [None, None, "z", "w"]]


def test_first_occurrence_of_a_header_wins_and_names_are_case_insensitive() -> None:
    raw = b"SUBJECT: first\r\nsubject: second\r\nCONTENT-TYPE: Text/HTML; Charset=UTF-8\r\n\r\n<p>"
    meta = parse_message(raw)
    assert meta.envelope["subject"] == "first"
    assert (meta.body["type"], meta.body["subtype"]) == ("text", "html")
    assert meta.body["params"] == [["charset", "UTF-8"]]


def test_sent_date_is_timezone_aware_or_none_rfc5322() -> None:
    assert parse_message(b"Date: Mon, 1 Jan 2024 10:00:00 -0000\r\n\r\n").sent_date == datetime(
        2024, 1, 1, 10, 0, tzinfo=UTC
    )
    assert parse_message(b"Date: not a date\r\n\r\n").sent_date is None
    assert parse_message(b"Date: Mon, 99 Foo 99999 99:99:99 +9999\r\n\r\n").sent_date is None
    assert parse_message(b"Subject: x\r\n\r\n").sent_date is None


def test_mime_part_fields_id_description_md5_disposition_language_location_rfc3501() -> None:
    raw = (
        b'Content-Type: text/plain; charset="utf-8"; format=flowed\r\n'
        b"Content-ID: <part1@x>\r\n"
        b"Content-Description: Compte rendu\r\n"
        b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
        b'Content-Disposition: INLINE; filename="cr.txt"\r\n'
        b"Content-Language: fr, en (comment)\r\n"
        b"Content-Location: https://example.org/cr.txt\r\n"
        b"Content-Transfer-Encoding: Quoted-Printable\r\n"
        b"\r\n"
        b"caf=C3=A9"
    )
    body = parse_message(raw).body
    assert body["params"] == [["charset", "utf-8"], ["format", "flowed"]]
    assert body["id"] == "<part1@x>"
    assert body["description"] == "Compte rendu"
    assert body["md5"] == "Q2hlY2sgSW50ZWdyaXR5IQ=="
    assert body["disposition"] == ["inline", [["filename", "cr.txt"]]]
    assert body["language"] == ["fr", "en"]
    assert body["location"] == "https://example.org/cr.txt"
    assert body["encoding"] == "QUOTED-PRINTABLE"
    # Unterminated last line counts as a line.
    assert body["lines"] == 1


def test_unparsable_content_type_defaults_to_text_plain_rfc2045() -> None:
    meta = parse_message(b"Content-Type: garbage\r\n\r\nbody")
    assert (meta.body["type"], meta.body["subtype"]) == ("text", "plain")
    assert meta.body["params"] == [["charset", "us-ascii"]]
    assert any("Content-Type" in p for p in meta.problems)


def test_lines_only_for_text_and_message_parts_rfc3501() -> None:
    meta = parse_message(b"Content-Type: application/octet-stream\r\n\r\na\nb\n")
    assert meta.body["lines"] is None
    assert meta.body["size"] == 4


# --------------------------------------------------------------------------------------------
# Multipart (RFC 2046 §5.1)

PDF = base64.encodebytes(b"%PDF-1.4 fake pdf content " * 20).replace(b"\n", b"\r\n")
MIXED = (
    b"From: Laboratoire <resultats@labo.example>\r\n"
    b"To: jean@hopital.example\r\n"
    b"Subject: Resultats\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="=_outer"\r\n'
    b"\r\n"
    b"This is a multi-part message in MIME format.\r\n"
    b"--=_outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Veuillez trouver les resultats.\r\n"
    b"--=_outer\r\n"
    b"Content-Type: application/pdf;\r\n"
    b" name*0*=utf-8''r%C3%A9sultats%20;\r\n"
    b' name*1="2024.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename*=utf-8'fr'r%C3%A9sultats%202024.pdf\r\n"
    b"\r\n" + PDF + b"--=_outer--\r\n"
    b"epilogue\r\n"
)


def test_multipart_mixed_with_base64_attachment_and_rfc2231_filename() -> None:
    meta = parse_message(MIXED)
    root = meta.body
    assert (root["type"], root["subtype"]) == ("multipart", "mixed")
    assert root["params"] == [["boundary", "=_outer"]]
    assert root["lines"] is None
    text, pdf = root["parts"]
    assert body_of(MIXED, text) == b"Veuillez trouver les resultats."
    assert mime_header_of(MIXED, text) == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    assert text["lines"] == 1
    assert text["params"] == [["charset", "utf-8"]]
    assert (pdf["type"], pdf["subtype"], pdf["encoding"]) == ("application", "pdf", "BASE64")
    # RFC 2046 §5.1.1: the CRLF before the close delimiter belongs to the delimiter.
    assert body_of(MIXED, pdf) == PDF[:-2]
    assert base64.b64decode(body_of(MIXED, pdf)) == b"%PDF-1.4 fake pdf content " * 20
    assert pdf["lines"] is None
    # RFC 2231 §3-4: continuations joined, charset'language' decoded under the base name.
    assert pdf["params"] == [["name", "résultats 2024.pdf"]]
    assert pdf["disposition"] == ["attachment", [["filename", "résultats 2024.pdf"]]]
    assert meta.problems == ()
    assert_offsets_consistent(root, len(MIXED))


def test_rfc2231_value_takes_precedence_over_plain_parameter() -> None:
    raw = (
        b"Content-Type: application/octet-stream; name=\"fallback.bin\"; name*=iso-8859-1''%E9.bin;"
        b' title*0="a"; title*2="c"; title*1="b"\r\n\r\n'
    )
    assert parse_message(raw).body["params"] == [["name", "é.bin"], ["title", "abc"]]


NESTED = (
    b"Content-Type: multipart/mixed; boundary=outer\r\n"
    b"\r\n"
    b"--outer\r\n"
    b"Content-Type: multipart/alternative; boundary=inner\r\n"
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"plain version\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>html version</p>\r\n"
    b"--inner--\r\n"
    b"\r\n"
    b"--outer\r\n"
    b"Content-Type: image/png\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"iVBORw0KGgo=\r\n"
    b"--outer--\r\n"
)


def test_nested_alternative_inside_mixed_offsets_slice_exact_bodies_rfc2046() -> None:
    meta = parse_message(NESTED)
    root = meta.body
    alternative, image = root["parts"]
    plain, html = alternative["parts"]
    assert (alternative["type"], alternative["subtype"]) == ("multipart", "alternative")
    assert body_of(NESTED, plain) == b"plain version"
    assert body_of(NESTED, html) == b"<p>html version</p>"
    assert body_of(NESTED, image) == b"iVBORw0KGgo="
    # BODY[1] of the multipart/alternative: its whole body, close delimiter included.
    assert body_of(NESTED, alternative) == (
        b"--inner\r\nContent-Type: text/plain\r\n\r\nplain version\r\n"
        b"--inner\r\nContent-Type: text/html\r\n\r\n<p>html version</p>\r\n--inner--\r\n"
    )
    # BODY[1.2.MIME] and BODY[2.MIME] (RFC 3501 §6.4.5): the part's own header block.
    assert mime_header_of(NESTED, html) == b"Content-Type: text/html\r\n\r\n"
    assert mime_header_of(NESTED, image) == (
        b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    assert (plain["lines"], html["lines"]) == (1, 1)
    assert meta.problems == ()
    assert_offsets_consistent(root, len(NESTED))


def test_boundary_that_is_a_prefix_of_another_boundary_rfc2046() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\n"
        b"Content-Type: multipart/mixed; boundary=b2\r\n\r\n"
        b"--b2\r\n\r\none\r\n"
        b"--b2 \t\r\n\r\ntwo\r\n"
        b"--b2--\r\n"
        b"--bx is not a delimiter\r\n"
        b"--b\r\n\r\nthree\r\n"
        b"--b--\r\n"
    )
    meta = parse_message(raw)
    inner, third = meta.body["parts"]
    assert [body_of(raw, p) for p in inner["parts"]] == [b"one", b"two"]
    assert body_of(raw, inner).endswith(b"--b2--\r\n--bx is not a delimiter")
    assert body_of(raw, third) == b"three"
    assert meta.problems == ()


def test_preamble_epilogue_and_empty_parts_rfc2046() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=sep\r\n\r\n"
        b"preamble --sep inline is not a delimiter\r\n"
        b"--sep\r\n"
        b"--sep\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"--sep\r\n"
        b"\r\n"
        b"body without header\r\n"
        b"--sep--\r\n"
        b"epilogue\r\n--sep\r\nnot a part\r\n"
    )
    meta = parse_message(raw)
    empty, header_only, headerless = meta.body["parts"]
    assert body_of(raw, empty) == b""
    assert mime_header_of(raw, empty) == b""
    assert body_of(raw, header_only) == b""
    assert mime_header_of(raw, header_only) == b"Content-Type: text/plain\r\n"
    assert body_of(raw, headerless) == b"body without header"
    assert mime_header_of(raw, headerless) == b"\r\n"
    assert meta.problems == ()


def test_missing_closing_boundary_last_part_runs_to_end_rfc2046() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--zz\r\n\r\nfirst\r\n"
        b"--zz\r\nContent-Type: text/plain\r\n\r\ntruncated mess"
    )
    meta = parse_message(raw)
    first, last = meta.body["parts"]
    assert body_of(raw, first) == b"first"
    assert body_of(raw, last) == b"truncated mess"
    assert last["end"] == len(raw)
    assert "missing closing boundary for multipart/mixed" in meta.problems


def test_missing_closing_boundary_in_nested_part_is_located() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=o\r\n\r\n"
        b"--o\r\n\r\nx\r\n"
        b"--o\r\nContent-Type: multipart/related; boundary=i\r\n\r\n"
        b"--i\r\n\r\ny\r\n"
        b"--o--\r\n"
    )
    meta = parse_message(raw)
    related = meta.body["parts"][1]
    assert body_of(raw, related["parts"][0]) == b"y"
    assert "missing closing boundary for multipart/related at 2" in meta.problems


def test_multipart_without_parts_gets_one_empty_text_part() -> None:
    for raw in (
        b"Content-Type: multipart/mixed; boundary=q\r\n\r\nno delimiter here\r\n",
        b"Content-Type: multipart/mixed\r\n\r\n--q\r\n\r\nx\r\n--q--\r\n",
    ):
        meta = parse_message(raw)
        (only,) = meta.body["parts"]
        assert (only["type"], only["subtype"], only["size"]) == ("text", "plain", 0)
        assert meta.problems


def test_multipart_digest_default_type_is_message_rfc822_rfc2046() -> None:
    raw = (
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n"
        b"--d\r\n"
        b"\r\n"
        b"From: one@x\r\nSubject: first\r\n\r\nfirst body\r\n"
        b"--d\r\n"
        b"Content-Type: text/plain\r\n\r\nexplicit text\r\n"
        b"--d--\r\n"
    )
    meta = parse_message(raw)
    digest_item, text = meta.body["parts"]
    # RFC 2046 §5.1.5: in a digest, the default Content-Type is message/rfc822.
    assert (digest_item["type"], digest_item["subtype"]) == ("message", "rfc822")
    assert digest_item["params"] == []
    assert digest_item["message"]["envelope"]["subject"] == "first"
    assert body_of(raw, digest_item["message"]["body"]) == b"first body"
    assert (text["type"], text["subtype"]) == ("text", "plain")


# --------------------------------------------------------------------------------------------
# message/rfc822


FORWARD = (
    b"From: a@example.org\r\n"
    b"Subject: Fwd: inner\r\n"
    b"Content-Type: multipart/mixed; boundary=XX\r\n"
    b"\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"see attached\r\n"
    b"--XX\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b'From: "Inner, Sender" <inner@z.example>\r\n'
    b"To: undisclosed-recipients:;\r\n"
    b"Subject: inner\r\n"
    b"Message-ID: <in@z.example>\r\n"
    b"Content-Type: multipart/alternative; boundary=YY\r\n"
    b"\r\n"
    b"--YY\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"plain\r\n"
    b"--YY\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>html</p>\r\n"
    b"--YY--\r\n"
    b"\r\n"
    b"--XX--\r\n"
)


def test_message_rfc822_part_has_envelope_and_nested_body_rfc3501() -> None:
    meta = parse_message(FORWARD)
    text, forwarded = meta.body["parts"]
    assert body_of(FORWARD, text) == b"see attached"
    assert (forwarded["type"], forwarded["subtype"]) == ("message", "rfc822")
    inner_raw = body_of(FORWARD, forwarded)
    assert inner_raw.startswith(b'From: "Inner, Sender"')
    assert inner_raw.endswith(b"--YY--\r\n")
    assert forwarded["lines"] == inner_raw.count(b"\n")
    env = forwarded["message"]["envelope"]
    assert env["from"] == [["Inner, Sender", None, "inner", "z.example"]]
    assert env["sender"] == env["from"]
    assert env["reply_to"] == env["from"]
    assert env["to"] == [[None, None, "undisclosed-recipients", None], [None, None, None, None]]
    assert env["subject"] == "inner"
    assert env["message_id"] == "<in@z.example>"
    inner = forwarded["message"]["body"]
    # Offsets of the embedded message are absolute in the outer raw message.
    assert inner["header_start"] == forwarded["body_start"]
    assert inner["end"] == forwarded["end"]
    assert FORWARD[inner["header_start"] : inner["body_start"]].endswith(b"boundary=YY\r\n\r\n")
    plain, html = inner["parts"]
    assert body_of(FORWARD, plain) == b"plain"
    assert body_of(FORWARD, html) == b"<p>html</p>"
    # The top-level envelope is not affected by the embedded one.
    assert meta.envelope["subject"] == "Fwd: inner"
    assert meta.problems == ()
    assert_offsets_consistent(meta.body, len(FORWARD))


def test_base64_encoded_message_rfc822_is_a_leaf_rfc2046() -> None:
    encoded = base64.b64encode(b"Subject: hidden\r\n\r\nbody\r\n")
    raw = (
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"\r\n"
    )
    body = parse_message(raw).body
    assert (body["type"], body["subtype"], body["encoding"]) == ("message", "rfc822", "BASE64")
    assert body["message"] is None
    assert body["lines"] == 1


def test_top_level_message_global_is_descended_rfc6532() -> None:
    raw = b"Content-Type: message/global\r\n\r\nSubject: \xc3\xa9t\xc3\xa9\r\n\r\nbody\r\n"
    body = parse_message(raw).body
    assert body["message"]["envelope"]["subject"] == "été"
    assert body_of(raw, body["message"]["body"]) == b"body\r\n"


# --------------------------------------------------------------------------------------------
# Addresses (RFC 5322 §3.4, §4.4; RFC 3501 §7.4.2)


def test_group_syntax_gives_start_and_end_markers_rfc3501() -> None:
    value = (
        "A Group(Some people):Chris Jones <c@(Chris's host.)public.example>, "
        "joe@example.org, John <jdoe@one.test> (my dear friend); (the end of the group)"
    )
    assert parse_address_list(value) == [
        [None, None, "A Group", None],
        ["Chris Jones", None, "c", "public.example"],
        [None, None, "joe", "example.org"],
        ["John", None, "jdoe", "one.test"],
        [None, None, None, None],
    ]
    assert parse_address_list("undisclosed-recipients:;") == [
        [None, None, "undisclosed-recipients", None],
        [None, None, None, None],
    ]


def test_unterminated_group_is_closed_and_noted() -> None:
    meta = parse_message(b"To: team: a@b.c, d@e.f\r\n\r\n")
    assert meta.envelope["to"] == [
        [None, None, "team", None],
        [None, None, "a", "b.c"],
        [None, None, "d", "e.f"],
        [None, None, None, None],
    ]
    assert any("To" in p for p in meta.problems)


def test_quoted_names_with_quoted_pairs_and_encoded_words_kept_raw_rfc3501() -> None:
    value = (
        '"Joe Q. Public" <john.q.public@example.com>, '
        r'"Giant; \"Big\" Box" <sysservices@example.net>, '
        '"=?UTF-8?Q?Fran=C3=A7ois?=" <f@example.fr>, '
        "=?utf-8?b?SsOpcsO0bWU=?= Dupont <jerome@example.fr>, "
        "John Q. Public <jqp@example.com>"
    )
    assert parse_address_list(value) == [
        ["Joe Q. Public", None, "john.q.public", "example.com"],
        ['Giant; "Big" Box', None, "sysservices", "example.net"],
        ["=?UTF-8?Q?Fran=C3=A7ois?=", None, "f", "example.fr"],
        ["=?utf-8?b?SsOpcsO0bWU=?= Dupont", None, "jerome", "example.fr"],
        ["John Q. Public", None, "jqp", "example.com"],
    ]


def test_comments_are_ignored_in_addresses_rfc5322() -> None:
    value = r"Pete(A nice \) chap) <pete(his account)@silly.test(his host)>, bob@x (Bob)"
    assert parse_address_list(value) == [
        ["Pete", None, "pete", "silly.test"],
        [None, None, "bob", "x"],
    ]


def test_obsolete_route_becomes_adl_rfc5322() -> None:
    assert parse_address_list("Boss <@relay1.example,@relay2.example:boss@nil.test>") == [
        ["Boss", "@relay1.example,@relay2.example", "boss", "nil.test"]
    ]


def test_quoted_local_part_and_domain_literal_rfc5322() -> None:
    assert parse_address_list('"john doe"@example.org, postmaster@[192.0.2.1]') == [
        [None, None, "john doe", "example.org"],
        [None, None, "postmaster", "[192.0.2.1]"],
    ]


def test_empty_and_missing_address_headers_give_empty_lists() -> None:
    assert parse_address_list("") == []
    assert parse_address_list("  ,, ") == []
    env = parse_message(b"To:\r\n\r\n").envelope
    assert env["to"] == []
    assert env["from"] == []
    assert env["sender"] == []


def test_garbage_addresses_do_not_crash_and_are_noted() -> None:
    assert parse_address_list("postmaster") == [[None, None, "postmaster", MISSING_HOST]]
    for value in ('<<<>>>"', "@@@", ";;:", "(unterminated", '"open', "a@b <c", "<>", ">"):
        for address in parse_address_list(value):
            assert len(address) == 4
    meta = parse_message(b"From: <<<garbage\r\nCc: x@\r\n\r\n")
    assert any("From" in p for p in meta.problems)
    assert any("Cc" in p for p in meta.problems)
    assert meta.envelope["cc"] == [[None, None, "x", MISSING_HOST]]
    assert meta.from_addr is None


def test_display_name_containing_at_sign_is_kept() -> None:
    assert parse_address_list("jean@hopital.example <jean@hopital.example>") == [
        ["jean@hopital.example", None, "jean", "hopital.example"]
    ]


# --------------------------------------------------------------------------------------------
# RFC 2047 encoded words


def test_decode_header_value_rfc2047() -> None:
    assert decode_header_value("plain") == "plain"
    assert decode_header_value("=?utf-8?q?caf=C3=A9_cr=C3=A8me?=") == "café crème"
    assert decode_header_value("=?ISO-8859-1?B?RnJhbudvaXM=?=") == "François"
    # RFC 2047 §6.2: white space between adjacent encoded-words is dropped...
    assert decode_header_value("=?utf-8?q?a?= \r\n =?utf-8?q?b?=") == "ab"
    # ... but not between an encoded-word and ordinary text.
    assert decode_header_value("=?utf-8?q?a?= b") == "a b"
    # A multi-byte character split across two encoded-words.
    assert decode_header_value("=?utf-8?b?w6k=?= =?utf-8?b?w6k=?=") == "éé"
    assert decode_header_value("=?UTF-8?Q?=C3?= =?UTF-8?Q?=A9?=") == "é"
    # RFC 2231 §5 language suffix.
    assert decode_header_value("=?utf-8*fr?q?=C3=A9?=") == "é"


def test_undecodable_encoded_words_stay_raw() -> None:
    for raw in ("=?x-unknown?q?abc?=", "=?utf-8?b?!!!!?=", "=?base64?q?abc?=", "=?utf-8?b?a?="):
        assert decode_header_value(raw) == raw
    assert decode_header_value("=?x-unknown?q?a?= =?utf-8?q?b?=") == "=?x-unknown?q?a?= b"


# --------------------------------------------------------------------------------------------
# Malformed input: never raise, note problems


def test_bare_lf_line_endings() -> None:
    raw = SIMPLE.replace(b"\r\n", b"\n")
    meta = parse_message(raw)
    assert meta.header_size == raw.index(b"\n\n") + 2
    assert body_of(raw, meta.body) == b"Bonjour,\nvoici le compte rendu.\n"
    assert meta.body["lines"] == 2
    assert meta.envelope["subject"] == "=?utf-8?q?Compte_rendu_op=C3=A9ratoire?="
    nested = NESTED.replace(b"\r\n", b"\n")
    parsed = parse_message(nested)
    alternative, image = parsed.body["parts"]
    assert [body_of(nested, p) for p in alternative["parts"]] == [
        b"plain version",
        b"<p>html version</p>",
    ]
    assert body_of(nested, image) == b"iVBORw0KGgo="
    assert parsed.problems == ()


def test_8bit_header_gives_replacement_characters_without_crash() -> None:
    raw = b"Subject: caf\xe9 \xff\xfe\r\nFrom: Ren\xe9 <rene@example.fr>\r\n\r\nbody"
    meta = parse_message(raw)
    assert meta.envelope["subject"] == "caf\ufffd \ufffd\ufffd"
    assert meta.subject == "caf\ufffd \ufffd\ufffd"
    assert meta.envelope["from"] == [["Ren\ufffd", None, "rene", "example.fr"]]
    assert body_of(raw, meta.body) == b"body"
    utf8 = parse_message("Subject: Résumé\r\n\r\n".encode())
    assert utf8.envelope["subject"] == "Résumé"


def test_empty_message() -> None:
    meta = parse_message(b"")
    assert meta.header_size == 0
    body = meta.body
    assert (body["header_start"], body["body_start"], body["end"]) == (0, 0, 0)
    assert (body["size"], body["lines"]) == (0, 0)
    assert meta.envelope["from"] == []
    assert meta.envelope["subject"] is None
    assert (meta.subject, meta.message_id, meta.sent_date, meta.from_addr) == (
        None,
        None,
        None,
        None,
    )
    json.dumps(meta.body)


def test_message_without_headers_starts_with_blank_line_rfc5322() -> None:
    raw = b"\r\nJust a body\r\nline two"
    meta = parse_message(raw)
    assert meta.header_size == 2
    assert body_of(raw, meta.body) == b"Just a body\r\nline two"
    assert meta.body["lines"] == 2
    assert meta.envelope["subject"] is None
    assert meta.problems == ()
    assert parse_message(b"\nLF body").header_size == 1


def test_message_without_blank_line_is_all_header() -> None:
    raw = b"Subject: only headers\r\nFrom: a@b.c"
    meta = parse_message(raw)
    assert meta.header_size == len(raw)
    assert meta.body["body_start"] == meta.body["end"] == len(raw)
    assert meta.body["size"] == 0
    assert meta.body["lines"] == 0
    assert meta.envelope["subject"] == "only headers"
    assert meta.from_addr == "a@b.c"
    assert "no header/body separator" in meta.problems


def test_header_line_without_colon_is_skipped_and_noted() -> None:
    raw = b"Subject: ok\r\nthis is not a header\r\n  continued junk\r\nTo: a@b.c\r\n\r\nbody"
    meta = parse_message(raw)
    assert meta.envelope["subject"] == "ok"
    assert meta.envelope["to"] == [[None, None, "a", "b.c"]]
    assert len(meta.problems) == 1
    assert "malformed header line" in meta.problems[0]


def test_header_block_larger_than_limit_rest_is_body() -> None:
    line = b"X-Filler: " + b"a" * 990 + b"\r\n"
    raw = b"Subject: big\r\n" + line * (MAX_HEADER_BYTES // len(line) + 10) + b"\r\nbody"
    meta = parse_message(raw)
    assert meta.envelope["subject"] == "big"
    assert meta.header_size <= MAX_HEADER_BYTES
    assert raw[meta.header_size - 2 : meta.header_size] == b"\r\n"
    assert any("header block larger" in p for p in meta.problems)


def test_nesting_100_deep_is_bounded_without_recursion_error() -> None:
    depth = 100
    prefix = [
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth)
    ]
    suffix = [b"\r\n--b%d--" % i for i in reversed(range(depth))]
    raw = b"".join(prefix) + b"Content-Type: text/plain\r\n\r\nleaf" + b"".join(suffix)
    meta = parse_message(raw)
    depths = [d for _, d in walk(meta.body)]
    assert max(depths) == MAX_DEPTH + 1
    assert any(f"nesting deeper than {MAX_DEPTH}" in p for p in meta.problems)
    # The undescended multipart keeps its content reachable as one text/plain leaf.
    deepest = next(p for p, d in walk(meta.body) if d == MAX_DEPTH + 1)
    assert (deepest["type"], deepest["subtype"]) == ("text", "plain")
    assert body_of(raw, deepest).startswith(b"--b%d\r\n" % MAX_DEPTH)
    assert body_of(raw, deepest).endswith(b"--b%d--" % MAX_DEPTH)
    assert_offsets_consistent(meta.body, len(raw))


def test_message_rfc822_nesting_is_bounded_too() -> None:
    depth = 200
    raw = b"Content-Type: message/rfc822\r\n\r\n" * depth + b"Subject: deep\r\n\r\nx"
    meta = parse_message(raw)
    assert max(d for _, d in walk(meta.body)) == MAX_DEPTH
    assert any(f"nesting deeper than {MAX_DEPTH}" in p for p in meta.problems)


def test_parts_beyond_max_parts_end_up_in_the_last_leaf() -> None:
    count = MAX_PARTS + 500
    raw = (
        b"Content-Type: multipart/mixed; boundary=p\r\n\r\n"
        + b"".join(b"--p\r\n\r\n%d\r\n" % i for i in range(count))
        + b"--p--\r\n"
    )
    meta = parse_message(raw)
    parts = meta.body["parts"]
    assert len(parts) == MAX_PARTS - 1  # the root multipart counts as one part
    assert parts[-1]["end"] == meta.body["end"]
    assert body_of(raw, parts[-1]).startswith(b"%d\r\n--p\r\n" % (MAX_PARTS - 2))
    assert any(f"more than {MAX_PARTS} parts" in p for p in meta.problems)


def test_problem_list_is_bounded() -> None:
    raw = b"".join(b"junk line %d\r\n" % i for i in range(1000)) + b"\r\nbody"
    meta = parse_message(raw)
    assert 1 < len(meta.problems) <= 101
    assert meta.problems[-1].endswith("further problems not listed")


# --------------------------------------------------------------------------------------------
# Inputs: bytearray, memoryview, mmap; size


def test_bytes_bytearray_memoryview_give_the_same_metadata() -> None:
    expected = parse_message(FORWARD)
    assert parse_message(bytearray(FORWARD)) == expected
    assert parse_message(memoryview(FORWARD)) == expected
    # A sub-view is parsed as the message it delimits.
    padded = b"xxx" + FORWARD
    assert parse_message(memoryview(padded)[3:]) == expected


def test_mmap_and_memoryview_of_mmap_inputs(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(NESTED)
    expected = parse_message(NESTED)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert parse_message(mm) == expected
        view = memoryview(mm)
        try:
            assert parse_message(view) == expected
        finally:
            view.release()


def test_unreadable_input_degrades_instead_of_raising(tmp_path: Path) -> None:
    path = tmp_path / "closed.eml"
    path.write_bytes(SIMPLE)
    with path.open("rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    mm.close()
    meta = parse_message(mm)
    assert meta.problems[0].startswith("internal parser error")
    assert (meta.body["type"], meta.body["subtype"]) == ("text", "plain")


@pytest.mark.slow
def test_30mb_message_through_mmap_is_fast(tmp_path: Path) -> None:
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n"
    attachment = line * (30 * 1024 * 1024 // len(line))
    head = (
        b"From: labo@example.org\r\nSubject: big\r\n"
        b"Content-Type: multipart/mixed; boundary=big\r\n\r\n"
        b"--big\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
        b"--big\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    path = tmp_path / "big.eml"
    path.write_bytes(head + attachment + b"--big--\r\n")
    single = tmp_path / "single.eml"
    single.write_bytes(b"Subject: big text\r\n\r\n" + attachment)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        started = time.perf_counter()
        meta = parse_message(mm)
        elapsed = time.perf_counter() - started
        text, blob = meta.body["parts"]
        assert mm[text["body_start"] : text["end"]] == b"see attachment"
        assert blob["body_start"] == len(head)
        assert blob["size"] == len(attachment) - 2
        assert meta.problems == ()
    with single.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        started = time.perf_counter()
        single_meta = parse_message(mm)
        elapsed = max(elapsed, time.perf_counter() - started)
        assert single_meta.body["lines"] == attachment.count(b"\n")
        assert single_meta.body["size"] == len(attachment)
    # Not a benchmark (bench/ has the figures): a guard against a quadratic scan, 20x above normal.
    assert elapsed < 2.0, f"30 MB parse took {elapsed:.2f}s"


def test_metadata_is_json_serialisable() -> None:
    for raw in (SIMPLE, MIXED, NESTED, FORWARD):
        meta = parse_message(raw)
        assert json.loads(json.dumps(meta.body)) == meta.body
        assert json.loads(json.dumps(meta.envelope)) == meta.envelope


# --------------------------------------------------------------------------------------------
# Property: never raises, offsets always consistent

FRAGMENTS = [
    b"--b\r\n",
    b"--b--\r\n",
    b"--c\n",
    b"--c--",
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: multipart/digest; boundary=c\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/plain; name*0*=utf-8''%C3; name*1*=%A9\r\n",
    b'Content-Disposition: attachment; filename="x\r\n',
    b'From: "a\\" b" <@r:x@y>, g: (c;\r\n',
    b"To: =?utf-8?b?w6k?= <\r\n",
    b"Subject: =?utf-8?q?=C3?=\r\n",
    b" folded\r\n",
    b"no colon\r\n",
    b"\xff\xfe\x00",
    b"body text",
]


def _check(data: bytes) -> None:
    meta = parse_message(data)
    assert_offsets_consistent(meta.body, len(data))
    assert meta.header_size == meta.body["body_start"]
    assert not any(p.startswith("internal parser error") for p in meta.problems)
    json.dumps(meta.body)
    json.dumps(meta.envelope)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_parse_message_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=8), max_size=60).map(b"".join))
def test_parse_message_never_raises_on_mime_like_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_address_and_encoded_word_parsers_never_raise(value: str) -> None:
    for address in parse_address_list(value):
        assert len(address) == 4
    assert isinstance(decode_header_value(value), str)
