"""SEARCH matching and SEARCH / ESEARCH responses.

RFC 9051 §6.4.4 (search keys), RFC 7162 §3.1.5 (MODSEQ), RFC 5032 (OLDER / YOUNGER),
RFC 4731 (ESEARCH), RFC 5182 (SEARCHRES).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Sequence

import pytest

from imap.model import (
    Search,
    SearchAnd,
    SearchDateKey,
    SearchFlagKey,
    SearchHeaderKey,
    SearchKey,
    SearchModSeqKey,
    SearchNot,
    SearchNumberKey,
    SearchOr,
    SearchSeqKey,
    SearchTextKey,
    SequenceSet,
)
from imap.parser import parse_command
from imap.search import (
    Candidate,
    Need,
    Scope,
    columns,
    esearch_response,
    matches,
    needs,
    result_modseq,
    search,
    search_response,
    should_respond,
    uses_modseq,
)
from store.mime import parse_message
from store.model import NO_FLAGS, Flag, MessageInfo

UTC = dt.UTC
NOW = dt.datetime(2026, 3, 20, 12, 0, 0, tzinfo=UTC)
DEFAULT_INTERNAL = dt.datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)


def info_of(
    raw: bytes,
    *,
    uid: int = 1,
    modseq: int = 1,
    flags: Flag = NO_FLAGS,
    keywords: tuple[str, ...] = (),
    internal_date: dt.datetime = DEFAULT_INTERNAL,
) -> MessageInfo:
    meta = parse_message(raw)
    return MessageInfo(
        folder_id=1,
        uid=uid,
        modseq=modseq,
        internal_date=internal_date,
        size=len(raw),
        blob=hashlib.sha256(raw).hexdigest(),  # content-addressed, as in the store
        flags=flags,
        keywords=keywords,
        envelope=meta.envelope,
        body=meta.body,
        header=raw[: meta.header_size],
        subject=meta.subject,
        message_id=meta.message_id,
        sent_date=meta.sent_date,
        from_addr=meta.from_addr,
        problems=meta.problems,
    )


def candidate(
    raw: bytes = b"Subject: x\r\n\r\nbody\r\n",
    *,
    seq: int = 1,
    uid: int = 1,
    recent: bool = False,
    **kwargs: object,
) -> Candidate:
    info = info_of(raw, uid=uid, **kwargs)  # type: ignore[arg-type]
    return Candidate(seq=seq, uid=uid, info=info, recent=recent, raw=raw)


def scope(uids: Sequence[int] = (1,), count: int | None = None, saved: Sequence[int] = ()) -> Scope:
    return Scope(uids=uids, count=len(uids) if count is None else count, saved=saved, now=NOW)


def criteria(text: str) -> SearchAnd:
    """The criteria of ``SEARCH <text>`` as the real parser builds them."""
    command = parse_command(b"A1 SEARCH " + text.encode())
    assert isinstance(command, Search), command
    return command.criteria


def hit(key: SearchKey | str, c: Candidate, s: Scope | None = None) -> bool:
    parsed = criteria(key) if isinstance(key, str) else key
    return matches(parsed, c, s or scope((c.uid,)))


# --------------------------------------------------------------------------- messages

ENCODED_HEADERS = (
    b"From: =?iso-8859-1?b?yW1pbGllIE38bGxlcg==?= <emilie.muller@chu-lyon.mssante.fr>\r\n"
    b"To: Secretariat <secretariat@chu-lyon.mssante.fr>\r\n"
    b"Cc: Dr House <house@ppth.mssante.fr>\r\n"
    b"Subject: =?utf-8?q?R=C3=A9sultats_d=27analyse?= du patient\r\n"
    b"Date: Wed, 11 Mar 2026 00:30:00 +0100\r\n"
    b"X-Dossier: 2026-0042\r\n"
    b"X-Dossier: urgence-cardio\r\n"
    b"\r\n"
    b"Voir pi\xc3\xa8ce jointe.\r\n"
)

FOLDED = (
    b"From: a@example.org\r\n"
    b"Subject: Compte rendu\r\n"
    b" de consultation\r\n"
    b"X-Service: =?utf-8?q?Cardiologie_p=C3=A9diatrique?=\r\n"
    b"\t=?utf-8?q?_et_n=C3=A9onatale?=\r\n"
    b"\r\n"
    b"Texte.\r\n"
)

BASE64_BODY = (
    b"From: labo@example.org\r\n"
    b"Subject: IRM\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"Qm9uam91ciwNCnZvaWNpIGxlcyByw6lzdWx0YXRzIGRlIGwnSVJNIGPDqXLDqWJyYWxlLg0KQ29y\r\n"
    b"ZGlhbGVtZW50DQo=\r\n"
)

QP_BODY = (
    b"From: urgences@example.org\r\n"
    b"Subject: Admission\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: text/plain; charset="ISO-8859-1"\r\n'
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Le patient pr=E9sente une fi=\r\n"
    b"=E8vre depuis trois jours.\r\n"
)

NESTED = (
    b"From: medecin@example.org\r\n"
    b"Subject: Dossier complet\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"preambule-invisible\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Ci-joint le dossier.\r\n"
    b"--outer\r\n"
    b"Content-Type: application/pdf\r\n"
    b"\r\n"
    b"%PDF-1.4 motsecretpdf\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: pharmacie@example.org\r\n"
    b"Subject: =?utf-8?q?Transfert_d=27ordonnance?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Posologie : parac=C3=A9tamol 1 g.\r\n"
    b"--outer--\r\n"
)


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("key", "flags", "recent", "expected"),
    [
        ("ALL", Flag(0), False, True),
        ("SEEN", Flag.SEEN, False, True),
        ("SEEN", Flag(0), False, False),
        ("UNSEEN", Flag(0), False, True),
        ("UNSEEN", Flag.SEEN, False, False),
        ("ANSWERED", Flag.ANSWERED, False, True),
        ("UNANSWERED", Flag.ANSWERED, False, False),
        ("DELETED", Flag.DELETED | Flag.SEEN, False, True),
        ("UNDELETED", Flag.SEEN, False, True),
        ("DRAFT", Flag.DRAFT, False, True),
        ("UNDRAFT", Flag.DRAFT, False, False),
        ("FLAGGED", Flag.FLAGGED, False, True),
        ("UNFLAGGED", Flag.FLAGGED, False, False),
        ("RECENT", Flag(0), True, True),
        ("RECENT", Flag(0), False, False),
        ("OLD", Flag(0), False, True),
        ("OLD", Flag(0), True, False),
        ("NEW", Flag(0), True, True),  # NEW is RECENT UNSEEN
        ("NEW", Flag.SEEN, True, False),
        ("NEW", Flag(0), False, False),
    ],
)
def test_flag_keys_follow_system_flags_and_recent(
    key: str, flags: Flag, recent: bool, expected: bool
) -> None:
    assert hit(key, candidate(flags=flags, recent=recent)) is expected


def test_keyword_is_case_insensitive() -> None:
    # RFC 9051 §2.3.2: flag and keyword names are case-insensitive.
    c = candidate(keywords=("$Forwarded", "NonJunk"))
    assert hit("KEYWORD $forwarded", c)
    assert hit("KEYWORD NONJUNK", c)
    assert not hit("KEYWORD $Label1", c)
    assert not hit("UNKEYWORD nonjunk", c)
    assert hit("UNKEYWORD $MDNSent", c)


def test_keyword_naming_a_system_flag_tests_that_flag() -> None:
    assert hit(SearchTextKey("KEYWORD", "\\seen"), candidate(flags=Flag.SEEN))
    assert not hit(SearchTextKey("KEYWORD", "\\Seen"), candidate())


# --------------------------------------------------------------------------- boolean structure


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (Flag.SEEN, True),
        (Flag.FLAGGED, True),
        (Flag.SEEN | Flag.DELETED, False),
        (Flag.FLAGGED | Flag.DRAFT, False),
        (Flag(0), False),
        (Flag.ANSWERED, False),
    ],
)
def test_or_and_not_nest_as_parsed(flags: Flag, expected: bool) -> None:
    text = "OR SEEN FLAGGED NOT (OR DELETED DRAFT)"
    assert hit(text, candidate(flags=flags)) is expected


def test_nested_or_chains_and_double_negation() -> None:
    c = candidate(flags=Flag.DRAFT)
    assert hit("OR SEEN OR FLAGGED OR ANSWERED DRAFT", c)
    assert not hit("OR SEEN OR FLAGGED OR ANSWERED DELETED", c)
    assert hit("NOT NOT DRAFT", c)
    assert not hit("NOT (DRAFT ALL)", c)
    assert hit(SearchAnd(()), c)  # an empty group constrains nothing


# --------------------------------------------------------------------------- headers


def test_subject_matches_decoded_utf8_encoded_word_with_accents() -> None:
    c = candidate(ENCODED_HEADERS)
    assert hit(SearchTextKey("SUBJECT", "Résultats d'analyse du"), c)
    assert hit(SearchTextKey("SUBJECT", "RÉSULTATS"), c)  # case-insensitive, accents kept
    assert not hit(SearchTextKey("SUBJECT", "Resultats"), c)
    assert not hit(SearchTextKey("SUBJECT", "=?utf-8?q?"), c)


def test_subject_match_accepts_decomposed_accents() -> None:
    assert hit(SearchTextKey("SUBJECT", "re\u0301sultats"), candidate(ENCODED_HEADERS))


def test_from_matches_decoded_iso_8859_1_base64_encoded_word() -> None:
    c = candidate(ENCODED_HEADERS)
    assert hit(SearchTextKey("FROM", "émilie müller"), c)
    assert hit(SearchTextKey("FROM", "EMILIE.MULLER@CHU-LYON"), c)
    assert not hit(SearchTextKey("FROM", "secretariat"), c)


def test_to_cc_bcc_search_their_own_field() -> None:
    c = candidate(ENCODED_HEADERS)
    assert hit(SearchTextKey("TO", "secretariat@"), c)
    assert not hit(SearchTextKey("TO", "house"), c)
    assert hit(SearchTextKey("CC", "Dr House"), c)
    assert not hit(SearchTextKey("BCC", "house"), c)  # no Bcc field at all
    assert not hit(SearchTextKey("BCC", ""), c)


def test_folded_header_is_unfolded_before_matching() -> None:
    c = candidate(FOLDED)
    assert hit(SearchTextKey("SUBJECT", "rendu de consultation"), c)
    # Adjacent encoded-words across a fold are joined (RFC 2047 §6.2).
    assert hit(SearchHeaderKey("X-SERVICE", "pédiatrique et néonatale"), c)


def test_header_matches_any_occurrence_of_the_field() -> None:
    c = candidate(ENCODED_HEADERS)
    assert hit(SearchHeaderKey("X-DOSSIER", "2026-0042"), c)
    assert hit(SearchHeaderKey("X-DOSSIER", "cardio"), c)
    assert not hit(SearchHeaderKey("X-DOSSIER", "pediatrie"), c)


def test_header_with_empty_string_matches_messages_having_the_field() -> None:
    # RFC 9051 §6.4.4: a zero-length string matches every message with that field.
    assert hit(SearchHeaderKey("X-DOSSIER", ""), candidate(ENCODED_HEADERS))
    assert not hit(SearchHeaderKey("X-DOSSIER", ""), candidate(FOLDED))


def test_header_search_ignores_embedded_message_headers() -> None:
    c = candidate(NESTED)
    assert hit(SearchTextKey("SUBJECT", "dossier complet"), c)
    assert not hit(SearchTextKey("SUBJECT", "ordonnance"), c)
    assert not hit(SearchTextKey("FROM", "pharmacie"), c)


def test_header_in_latin1_8bit_is_read_as_latin1() -> None:
    raw = b"Subject: R\xe9sultats bruts\r\n\r\nx\r\n"
    assert hit(SearchTextKey("SUBJECT", "résultats"), candidate(raw))


def test_complete_header_block_is_preferred_over_stored_one() -> None:
    # MessageInfo.header may be truncated at delivery: the session loads the full block.
    raw = b"X-Long: " + b"x" * 200 + b"\r\nSubject: Nouveau\r\n\r\ncorps\r\n"
    complete = info_of(raw).header
    cut = dataclasses.replace(info_of(raw), header=complete[:50])
    assert not hit(SearchTextKey("SUBJECT", "nouveau"), Candidate(1, 1, cut, recent=False))
    c = Candidate(1, 1, cut, recent=False, header=complete)
    assert hit(SearchTextKey("SUBJECT", "nouveau"), c)


def test_stored_header_is_used_when_nothing_else_was_loaded() -> None:
    c = Candidate(1, 1, info_of(FOLDED), recent=False)
    assert hit(SearchTextKey("SUBJECT", "compte rendu"), c)


# --------------------------------------------------------------------------- bodies


def test_body_matches_decoded_base64_utf8_text() -> None:
    c = candidate(BASE64_BODY)
    assert hit(SearchTextKey("BODY", "résultats de l'IRM cérébrale"), c)
    assert not hit(SearchTextKey("BODY", "Qm9uam91"), c)


def test_body_matches_decoded_quoted_printable_latin1_across_soft_break() -> None:
    c = candidate(QP_BODY)
    assert hit(SearchTextKey("BODY", "présente une fièvre"), c)
    assert not hit(SearchTextKey("BODY", "pr=E9sente"), c)


def test_body_descends_into_nested_message_rfc822() -> None:
    c = candidate(NESTED)
    assert hit(SearchTextKey("BODY", "ci-joint le dossier"), c)
    assert hit(SearchTextKey("BODY", "paracétamol"), c)
    # The embedded message's header is body text of the enclosing message, decoded.
    assert hit(SearchTextKey("BODY", "transfert d'ordonnance"), c)


def test_body_skips_non_text_parts_and_preamble() -> None:
    c = candidate(NESTED)
    assert not hit(SearchTextKey("BODY", "motsecretpdf"), c)
    assert not hit(SearchTextKey("BODY", "preambule-invisible"), c)


def test_body_does_not_search_the_top_level_header() -> None:
    assert not hit(SearchTextKey("BODY", "Admission"), candidate(QP_BODY))


def test_body_with_unknown_charset_is_read_as_utf8() -> None:
    raw = b"Content-Type: text/plain; charset=x-unknown\r\n\r\nd\xc3\xa9j\xc3\xa0 vu\r\n"
    assert hit(SearchTextKey("BODY", "déjà vu"), candidate(raw))


def test_text_searches_header_and_body() -> None:
    c = candidate(QP_BODY)
    assert hit(SearchTextKey("TEXT", "admission"), c)
    assert hit(SearchTextKey("TEXT", "fièvre"), c)
    assert hit(SearchTextKey("TEXT", "subject: admission"), c)
    assert not hit(SearchTextKey("TEXT", "hospitalisation"), c)


def test_body_search_without_raw_message_is_a_caller_error() -> None:
    c = Candidate(1, 1, info_of(QP_BODY), recent=False)
    with pytest.raises(ValueError, match=r"needs Candidate\.raw"):
        hit(SearchTextKey("BODY", "x"), c)


# --------------------------------------------------------------------------- dates and sizes


@pytest.mark.parametrize(
    ("key", "internal", "expected"),
    [
        ("ON 10-Mar-2026", dt.datetime(2026, 3, 10, 0, 0, 0, tzinfo=UTC), True),
        ("ON 10-Mar-2026", dt.datetime(2026, 3, 10, 23, 59, 59, tzinfo=UTC), True),
        ("ON 10-Mar-2026", dt.datetime(2026, 3, 11, 0, 0, 0, tzinfo=UTC), False),
        ("ON 10-Mar-2026", dt.datetime(2026, 3, 9, 23, 59, 59, tzinfo=UTC), False),
        ("BEFORE 11-Mar-2026", dt.datetime(2026, 3, 10, 23, 59, 59, tzinfo=UTC), True),
        ("BEFORE 11-Mar-2026", dt.datetime(2026, 3, 11, 0, 0, 0, tzinfo=UTC), False),
        ("SINCE 11-Mar-2026", dt.datetime(2026, 3, 11, 0, 0, 0, tzinfo=UTC), True),
        ("SINCE 11-Mar-2026", dt.datetime(2026, 3, 10, 23, 59, 59, tzinfo=UTC), False),
    ],
)
def test_internal_date_keys_compare_calendar_day_at_boundaries(
    key: str, internal: dt.datetime, expected: bool
) -> None:
    assert hit(key, candidate(internal_date=internal)) is expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("SENTON 11-Mar-2026", True),  # 00:30 +0100: 11 March in the sender's timezone
        ("SENTON 10-Mar-2026", False),  # although it is 10 March 23:30 in UTC
        ("SENTBEFORE 11-Mar-2026", False),
        ("SENTBEFORE 12-Mar-2026", True),
        ("SENTSINCE 11-Mar-2026", True),
        ("SENTSINCE 12-Mar-2026", False),
    ],
)
def test_sent_date_keys_use_date_header_in_its_own_timezone(key: str, expected: bool) -> None:
    internal = dt.datetime(2026, 3, 15, 8, 0, tzinfo=UTC)
    assert hit(key, candidate(ENCODED_HEADERS, internal_date=internal)) is expected


def test_sent_date_keys_fall_back_to_internal_date_without_date_header() -> None:
    c = candidate(b"Subject: sans date\r\n\r\nx\r\n", internal_date=DEFAULT_INTERNAL)
    assert c.info.sent_date is None
    assert hit("SENTON 10-Mar-2026", c)
    assert not hit("SENTSINCE 11-Mar-2026", c)


def test_larger_and_smaller_are_strict_on_rfc822_size() -> None:
    c = candidate(b"Subject: x\r\n\r\n12345\r\n")  # 21 octets
    assert c.info.size == 21
    assert hit("LARGER 20", c)
    assert not hit("LARGER 21", c)
    assert hit("SMALLER 22", c)
    assert not hit("SMALLER 21", c)


def test_older_and_younger_are_complementary_around_now() -> None:
    # RFC 5032: YOUNGER n is "within n seconds", OLDER n its complement.
    c = candidate(internal_date=NOW - dt.timedelta(seconds=3600))
    assert hit(SearchNumberKey("YOUNGER", 3600), c)
    assert not hit(SearchNumberKey("OLDER", 3600), c)
    assert hit(SearchNumberKey("OLDER", 3599), c)
    assert not hit(SearchNumberKey("YOUNGER", 3599), c)


def test_modseq_matches_messages_changed_at_or_after_value() -> None:
    # RFC 7162 §3.1.5: MODSEQ n matches mod-sequence >= n.
    c = candidate(modseq=42)
    assert hit("MODSEQ 42", c)
    assert hit("MODSEQ 41", c)
    assert not hit("MODSEQ 43", c)
    assert hit('MODSEQ "/flags/\\\\draft" all 40', c)


# --------------------------------------------------------------------------- sequence sets

MAILBOX_UIDS = (4, 9, 15, 16, 30)


def mailbox() -> list[Candidate]:
    return [candidate(seq=i + 1, uid=u) for i, u in enumerate(MAILBOX_UIDS)]


def found(text: str, saved: Sequence[int] = ()) -> list[tuple[int, int]]:
    s = scope(MAILBOX_UIDS, saved=saved)
    return [(c.seq, c.uid) for c in search(criteria(text), mailbox(), s)]


def test_sequence_numbers_with_star_and_reversed_range() -> None:
    assert found("*") == [(5, 30)]
    assert found("4:2") == [(2, 9), (3, 15), (4, 16)]
    assert found("3:*") == [(3, 15), (4, 16), (5, 30)]
    assert found("1,5") == [(1, 4), (5, 30)]


def test_uid_set_star_is_the_largest_uid() -> None:
    assert found("UID 16:*") == [(4, 16), (5, 30)]
    assert found("UID *") == [(5, 30)]
    assert found("UID 10:5") == [(2, 9)]


def test_uid_range_beyond_largest_uid_includes_the_largest() -> None:
    # RFC 9051 §6.4.8: "UID 100:*" names the last message even if 100 > every UID.
    assert found("UID 100:*") == [(5, 30)]
    assert found("UID 31:100") == []


def test_saved_result_is_matched_by_uid_in_both_forms() -> None:
    # RFC 5182 §2.1: "$" holds UIDs, used as a sequence set or after UID.
    assert found("$", saved=[9, 30, 77]) == [(2, 9), (5, 30)]
    assert found("UID $", saved=[9]) == [(2, 9)]
    assert found("$") == []
    assert found("NOT $ 1:3", saved=[9]) == [(1, 4), (3, 15)]


def test_search_keeps_candidate_order_and_combines_keys() -> None:
    assert found("2:* UID 1:15") == [(2, 9), (3, 15)]
    assert found("OR 1 UID 30") == [(1, 4), (5, 30)]


# --------------------------------------------------------------------------- needs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ALL", Need.METADATA),
        ("SEEN KEYWORD $x LARGER 5 UID 1:* 1:3 MODSEQ 4", Need.METADATA),
        ("SENTON 1-Jan-2026 SINCE 1-Jan-2026 YOUNGER 60", Need.METADATA),
        ("FROM a", Need.HEADER),
        ("NOT TO a", Need.HEADER),
        ("OR SEEN (CC a)", Need.HEADER),
        ("BCC a", Need.HEADER),
        ("SUBJECT a", Need.HEADER),
        ('HEADER X-Foo ""', Need.HEADER),
        ("SUBJECT a BODY b", Need.FULL),
        ("OR SEEN NOT (TEXT a)", Need.FULL),
    ],
)
def test_needs_reports_what_to_load(text: str, expected: Need) -> None:
    assert needs(criteria(text)) is expected


_EMPTY_FIELDS = {
    "modseq": 0,
    "internal_date": dt.datetime(1970, 1, 1, tzinfo=UTC),
    "size": 0,
    "flags": NO_FLAGS,
    "keywords": (),
    "sent_date": None,
}


@pytest.mark.parametrize(
    "text",
    [
        "UNSEEN",
        "NEW",
        "OLD",
        "KEYWORD $Label1",
        "UNKEYWORD Classe",
        "SINCE 9-Mar-2026",
        "SENTBEFORE 1-Jan-2026",
        "LARGER 40",
        "SMALLER 40",
        "YOUNGER 864000",
        "OLDER 864000",
        "MODSEQ 4",
        "OR FROM martin NOT (FLAGGED)",
        "NOT (OR LARGER 40 SENTON 22-Nov-2026)",
        "FROM martin SUBJECT compte",
        "1:2 UID 1",
    ],
)
@pytest.mark.parametrize("variant", range(4))
def test_columns_names_every_field_the_criteria_read(text: str, variant: int) -> None:
    """A row holding only the columns the criteria name (the others empty, as the store
    returns them) matches exactly as the whole row does."""
    raw = (
        b"From: Dr Martin <martin@clinique-test.mssante.fr>\r\n"
        b"Subject: Compte rendu\r\nDate: Sun, 22 Nov 2026 10:00:00 +0100\r\n\r\nbody\r\n"
    )
    whole = candidate(
        raw,
        modseq=3 + variant,
        flags=[NO_FLAGS, Flag.SEEN, Flag.FLAGGED | Flag.SEEN, Flag.DELETED][variant],
        keywords=[(), ("$Label1",), (), ("Classe",)][variant],
        internal_date=DEFAULT_INTERNAL - dt.timedelta(days=4 * variant),
        recent=variant % 2 == 0,
    )
    parsed = criteria(text)
    kept = columns(parsed)
    reduced_info = dataclasses.replace(
        whole.info, **{k: v for k, v in _EMPTY_FIELDS.items() if k not in kept}
    )
    reduced = dataclasses.replace(whole, info=reduced_info)
    assert matches(parsed, reduced, scope((1,))) == matches(parsed, whole, scope((1,)))


def test_columns_of_a_header_search_are_none_of_the_metadata() -> None:
    assert columns(criteria("FROM martin")) == frozenset()
    assert columns(criteria("OR FROM a (TO b)")) == frozenset()


def test_uses_modseq_finds_nested_modseq_keys() -> None:
    assert uses_modseq(criteria("OR SEEN NOT (MODSEQ 5)"))
    assert not uses_modseq(criteria("OR SEEN NOT (LARGER 5)"))
    assert uses_modseq(SearchModSeqKey(1))
    assert not uses_modseq(SearchDateKey("ON", dt.date(2026, 1, 1)))
    assert not uses_modseq(SearchNot(SearchOr(SearchFlagKey("ALL"), SearchSeqKey(SequenceSet()))))


# --------------------------------------------------------------------------- responses

ESEARCH_CASES = [
    ((), "ALL 2,5,9:11"),
    (("ALL",), "ALL 2,5,9:11"),
    (("MIN",), "MIN 2"),
    (("MAX",), "MAX 11"),
    (("COUNT",), "COUNT 5"),
    (("MIN", "MAX"), "MIN 2 MAX 11"),
    (("MIN", "COUNT"), "MIN 2 COUNT 5"),
    (("MIN", "ALL"), "MIN 2 ALL 2,5,9:11"),
    (("MAX", "COUNT"), "MAX 11 COUNT 5"),
    (("MAX", "ALL"), "MAX 11 ALL 2,5,9:11"),
    (("COUNT", "ALL"), "COUNT 5 ALL 2,5,9:11"),
    (("MIN", "MAX", "COUNT"), "MIN 2 MAX 11 COUNT 5"),
    (("MIN", "MAX", "ALL"), "MIN 2 MAX 11 ALL 2,5,9:11"),
    (("MIN", "COUNT", "ALL"), "MIN 2 COUNT 5 ALL 2,5,9:11"),
    (("MAX", "COUNT", "ALL"), "MAX 11 COUNT 5 ALL 2,5,9:11"),
    (("ALL", "COUNT", "MAX", "MIN"), "MIN 2 MAX 11 COUNT 5 ALL 2,5,9:11"),
    (("SAVE", "MIN"), "MIN 2"),
    (("COUNT", "SAVE"), "COUNT 5"),
]


@pytest.mark.parametrize(("returns", "items"), ESEARCH_CASES)
def test_esearch_response_for_every_return_option_combination(
    returns: tuple[str, ...], items: str
) -> None:
    # RFC 4731 §3.1; "RETURN ()" means "RETURN (ALL)".
    line = esearch_response("A1", uid=False, matched=[2, 5, 9, 10, 11], returns=returns,
                            highest_modseq=None)  # fmt: skip
    assert line == f'* ESEARCH (TAG "A1") {items}\r\n'.encode()


EMPTY_CASES = [
    ((), ""),
    (("ALL",), ""),
    (("MIN",), ""),
    (("MAX",), ""),
    (("MIN", "MAX"), ""),
    (("COUNT",), " COUNT 0"),
    (("MIN", "MAX", "COUNT", "ALL"), " COUNT 0"),
    (("SAVE", "COUNT"), " COUNT 0"),
]


@pytest.mark.parametrize(("returns", "items"), EMPTY_CASES)
def test_esearch_response_with_no_match_keeps_only_count(
    returns: tuple[str, ...], items: str
) -> None:
    # RFC 4731 §3.1: MIN, MAX and ALL are absent for an empty result; COUNT 0 is reported.
    line = esearch_response("A1", uid=True, matched=[], returns=returns, highest_modseq=7)
    assert line == f'* ESEARCH (TAG "A1") UID{items}\r\n'.encode()


def test_esearch_response_carries_uid_and_modseq() -> None:
    # RFC 4731 §3.2 / RFC 7162 §3.1.5: "MODSEQ n" is the last item of a non-empty result.
    line = esearch_response("a7", uid=True, matched=[2, 9], returns=("MIN", "MAX", "COUNT"),
                            highest_modseq=917162500)  # fmt: skip
    assert line == b'* ESEARCH (TAG "a7") UID MIN 2 MAX 9 COUNT 2 MODSEQ 917162500\r\n'


def test_search_response_lists_numbers_and_modseq() -> None:
    # RFC 9051 §7.3.4 / RFC 3501 §7.2.5 SEARCH; RFC 7162 §3.1.5 "(MODSEQ n)".
    assert search_response([2, 5, 9], None) == b"* SEARCH 2 5 9\r\n"
    assert search_response([2, 5, 9], 917162500) == b"* SEARCH 2 5 9 (MODSEQ 917162500)\r\n"
    assert search_response([], None) == b"* SEARCH\r\n"
    assert search_response([], 12) == b"* SEARCH\r\n"


@pytest.mark.parametrize(
    ("returns", "expected"),
    [
        (None, True),
        ((), True),
        (("SAVE",), False),  # RFC 5182 §2.4: SAVE alone sends no ESEARCH
        (("SAVE", "MIN"), True),
        (("COUNT",), True),
    ],
)
def test_should_respond_is_false_only_for_save_alone(
    returns: tuple[str, ...] | None, expected: bool
) -> None:
    assert should_respond(returns) is expected


@pytest.mark.parametrize(
    ("returns", "expected"),
    [
        (None, 50),  # plain SEARCH: every returned message
        ((), 50),
        (("ALL",), 50),
        (("COUNT",), 50),
        (("MIN",), 10),  # RFC 4731 §3.2: only the message(s) returned
        (("MAX",), 20),
        (("MIN", "MAX"), 20),
        (("MIN", "SAVE"), 10),
    ],
)
def test_result_modseq_covers_the_messages_returned(
    returns: tuple[str, ...] | None, expected: int
) -> None:
    modseq_of = {1: 10, 2: 50, 3: 20}
    assert result_modseq(returns, [1, 2, 3], modseq_of) == expected


def test_result_modseq_is_none_for_empty_result() -> None:
    assert result_modseq(("ALL",), [], {}) is None


def test_body_with_truncated_base64_decodes_complete_octets() -> None:
    # A damaged last quantum (one stray sextet, no padding) must not hide the rest of the text.
    raw = (
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        b"Qm9uam91ciBkb2N0ZXVyLCBtZXJjaSEhQ\r\n"
    )
    assert hit(SearchTextKey("BODY", "bonjour docteur, merci!!"), candidate(raw))


def test_decoded_header_cache_is_keyed_by_content() -> None:
    """Two messages never share decoded fields, however often they are searched."""
    first = info_of(b"Subject: Premier\r\n\r\nx\r\n")
    second = info_of(b"Subject: Second\r\n\r\nx\r\n")
    for _ in range(2):
        for info, subject in ((first, "Premier"), (second, "Second")):
            c = Candidate(1, 1, info, False, header=info.header)
            assert hit(SearchTextKey("SUBJECT", subject), c)
            assert not hit(
                SearchTextKey("SUBJECT", "Premier" if subject == "Second" else "Second"), c
            )
