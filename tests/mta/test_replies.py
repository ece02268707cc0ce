"""mta.replies: the reply catalogue and its formatting (RFC 5321 §4.2, RFC 2034, RFC 3463)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta import replies
from mta.replies import MAX_REPLY_LINE, Reply
from pki.verify import Reason

CATALOGUE = replies.catalogue()
_LINE_RE = re.compile(r"(?P<code>[2-5][0-9]{2})(?P<sep>[ -]|$)(?P<rest>.*)")


def _check_wire(reply: Reply) -> None:
    wire = reply.wire()
    assert wire.isascii()
    assert wire.endswith(b"\r\n")
    lines = wire[:-2].split(b"\r\n")
    assert len(lines) == len(reply.lines())
    for i, line in enumerate(lines):
        assert b"\r" not in line
        assert b"\n" not in line
        assert len(line) + 2 <= MAX_REPLY_LINE
        assert all(0x20 <= c <= 0x7E for c in line)
        match = _LINE_RE.fullmatch(line.decode())
        assert match is not None
        assert int(match["code"]) == reply.code
        last = i == len(lines) - 1
        assert match["sep"] in ((" ", "") if last else ("-",))
        if reply.enhanced is not None:
            assert match["rest"].startswith(reply.enhanced)


# -- formatting -------------------------------------------------------------------------------------


def test_single_line_reply_formats_code_enhanced_text() -> None:
    reply = Reply(550, "5.1.1", "No such user")
    assert str(reply) == "550 5.1.1 No such user"
    assert reply.lines() == ["550 5.1.1 No such user"]
    assert reply.wire() == b"550 5.1.1 No such user\r\n"


def test_multi_line_reply_uses_dash_then_space_and_repeats_enhanced_code() -> None:
    reply = Reply(451, "4.3.0", "first\nsecond\nthird")
    assert reply.lines() == ["451-4.3.0 first", "451-4.3.0 second", "451 4.3.0 third"]
    assert str(reply) == "451-4.3.0 first\r\n451-4.3.0 second\r\n451 4.3.0 third"
    assert reply.wire() == b"451-4.3.0 first\r\n451-4.3.0 second\r\n451 4.3.0 third\r\n"


def test_empty_text_lines_follow_the_rfc_5321_grammar() -> None:
    assert Reply(250, None, "").lines() == ["250"]
    assert Reply(250, None, "\nx").lines() == ["250-", "250 x"]
    assert Reply(250, "2.0.0", "").lines() == ["250 2.0.0"]


def test_ehlo_lists_one_extension_a_line_without_enhanced_codes() -> None:
    reply = replies.ehlo("mx.a.fr", ["PIPELINING", "SIZE 1000", "STARTTLS"])
    assert reply.lines() == ["250-mx.a.fr", "250-PIPELINING", "250-SIZE 1000", "250 STARTTLS"]


def test_greeting_and_helo_have_no_enhanced_code() -> None:
    assert str(replies.greeting("mx.a.fr")) == "220 mx.a.fr ESMTP MSSante"
    assert str(replies.helo("mx.a.fr")) == "250 mx.a.fr"


def test_status_class_properties() -> None:
    assert replies.OK.is_positive
    assert not replies.OK.is_transient
    assert not replies.OK.is_permanent
    assert replies.STORE_UNAVAILABLE.is_transient
    assert replies.UNKNOWN_MAILBOX.is_permanent
    assert not replies.UNKNOWN_MAILBOX.is_positive


@pytest.mark.parametrize(
    ("code", "enhanced", "text"),
    [
        (199, None, "x"),
        (600, None, "x"),
        (550, "4.1.1", "class differs"),
        (250, "5.0.0", "class differs"),
        (354, "2.0.0", "no enhanced code on 3xx"),
        (550, "5.1", "too short"),
        (550, "5.01.1", "leading zero"),
        (550, "5.1.1000", "too many digits"),
        (550, "3.1.1", "bad class"),
        (550, "5.1.1", "caf\u00e9"),
        (550, "5.1.1", "a\rb"),
        (550, "5.1.1", "tab\there"),
        (550, "5.1.1", "x" * 501),
    ],
)
def test_invalid_replies_are_refused_at_construction(
    code: int, enhanced: str | None, text: str
) -> None:
    with pytest.raises(ValueError, match=r"."):
        Reply(code, enhanced, text)


def test_longest_allowed_line_is_512_octets_with_crlf() -> None:
    reply = Reply(550, "5.1.1", "x" * (512 - 2 - len("550 5.1.1 ")))
    assert len(reply.wire()) == 512
    with pytest.raises(ValueError, match="513 octets"):
        Reply(550, "5.1.1", "x" * (513 - 2 - len("550 5.1.1 ")))


def test_peer_values_are_cleaned_and_truncated() -> None:
    reply = replies.dn_not_listed("evil.fr\r\n250 OK\u00e9")
    assert "\r" not in str(reply).replace("\r\n", "")
    assert reply.lines() == [
        "550 5.7.1 Certificate DN not listed in the MSSante whitelist for domain evil.fr??250 OK?"
        " / DN du certificat absent de la liste blanche pour ce domaine"
    ]
    long = replies.sender_not_owned("a" * 500 + "@x.fr")
    assert ("a" * 117 + "...") in long.text
    assert "a" * 118 not in long.text
    assert str(replies.accepted("q" * 100)) == "250 2.0.0 OK queued as " + "q" * 61 + "..."


def test_ehlo_and_greeting_clean_the_host_name() -> None:
    assert str(replies.greeting("mx\r\nRCPT")) == "220 mx??RCPT ESMTP MSSante"
    assert replies.ehlo("mx\nX", ["SIZE 1"]).lines() == ["250-mx?X", "250 SIZE 1"]


# -- the catalogue ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_catalogued_reply_is_wire_safe(name: str) -> None:
    _check_wire(CATALOGUE[name])


def test_catalogue_holds_every_module_constant() -> None:
    constants = {n for n, v in vars(replies).items() if isinstance(v, Reply)}
    assert constants <= set(CATALOGUE)
    assert len(constants) >= 45


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (replies.STARTTLS_REQUIRED, "530 5.7.0 Must issue a STARTTLS command first"),
        (replies.TLS_UNAVAILABLE, "454 4.7.0 TLS not available due to temporary reason"),
        (
            replies.UNKNOWN_MAILBOX,
            "550 5.1.1 Recipient address rejected: no such active mailbox"
            " / boite aux lettres inconnue ou inactive",
        ),
        (
            replies.outside_trust_space("gmail.com"),
            "550 5.7.1 Recipient domain gmail.com is not in the MSSante trust space"
            " / domaine hors de l'espace de confiance MSSante",
        ),
        (
            replies.INVALID_PATIENT_ADDRESS,
            "550 5.1.3 Patient address must be a valid 15-digit INS at patient.mssante.fr"
            " / adresse patient invalide: INS incorrect",
        ),
        (
            replies.patient_message_too_big(25_000_000),
            "552 5.3.4 Message to a patient exceeds the Mon espace sante limit of 25000000"
            " octets / message trop volumineux pour Mon espace sante",
        ),
        (
            replies.message_too_big(1000),
            "552 5.3.4 Message size exceeds fixed limit of 1000 octets / message trop volumineux",
        ),
        (replies.TOO_MANY_RECIPIENTS, "452 4.5.3 Too many recipients / trop de destinataires"),
        (
            replies.TOO_MANY_CONNECTIONS,
            "421 4.7.0 Too many connections, try again later / trop de connexions",
        ),
        (replies.TOO_MANY_ERRORS, "421 4.7.0 Too many errors, closing connection / trop d'erreurs"),
        (
            replies.AUTH_FAILED,
            "535 5.7.8 Authentication credentials invalid / identifiants invalides",
        ),
        (
            replies.ENCRYPTION_REQUIRED_FOR_AUTH,
            "538 5.7.11 Encryption required for requested authentication mechanism",
        ),
        (
            replies.sender_not_owned("x@a.fr"),
            "553 5.7.1 Sender address rejected: x@a.fr not owned by user"
            " / pas de droit d'envoi pour cette adresse",
        ),
        (
            replies.header_from_not_owned("x@a.fr"),
            "550 5.7.1 From: header address x@a.fr not owned by user"
            " / pas de droit d'envoi pour l'adresse From:",
        ),
        (
            replies.NULL_SENDER_ON_SUBMISSION,
            "553 5.7.1 Null sender not allowed on submission / expediteur vide interdit en"
            " soumission",
        ),
        (replies.BARE_LF, "550 5.5.2 Error: bare <LF> received"),
        (replies.BARE_CR, "550 5.5.2 Error: bare <CR> received"),
        (replies.PIPELINING_VIOLATION, "554 5.5.0 Error: SMTP protocol synchronization"),
        (replies.COMMAND_UNRECOGNIZED, "500 5.5.2 Error: command not recognized"),
        (replies.SYNTAX_ERROR, "501 5.5.4 Syntax error in parameters or arguments"),
        (replies.NEED_MAIL, "503 5.5.1 Error: need MAIL command"),
        (replies.NEED_RCPT, "503 5.5.1 Error: need RCPT command"),
        (
            replies.STORE_UNAVAILABLE,
            "451 4.3.0 Temporary failure storing the message, try again later / erreur temporaire",
        ),
        (replies.accepted("abc"), "250 2.0.0 OK queued as abc"),
        (replies.START_DATA, "354 End data with <CR><LF>.<CR><LF>"),
    ],
)
def test_exact_reply_texts(reply: Reply, expected: str) -> None:
    assert str(reply) == expected


# -- certificate refusals ---------------------------------------------------------------------------


def test_no_certificate_is_refused_with_5_7_0() -> None:
    assert replies.certificate_refused(None) is replies.NO_CLIENT_CERTIFICATE
    assert str(replies.NO_CLIENT_CERTIFICATE) == (
        "550 5.7.0 No client certificate presented: an IGC-Sante server certificate is required"
        " / certificat client absent"
    )


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (Reason.EXPIRED, "550 5.7.0 Client certificate expired / certificat expire"),
        (Reason.REVOKED, "550 5.7.0 Client certificate revoked / certificat revoque"),
        (
            Reason.UNTRUSTED,
            "550 5.7.0 Client certificate not issued by IGC-Sante / certificat hors IGC-Sante",
        ),
        (
            Reason.CN_DIFFERS,
            "550 5.7.1 Client certificate CN differs from the DN listed in the MSSante whitelist"
            " / CN du certificat different du DN de la liste blanche",
        ),
        (
            Reason.DN_NOT_LISTED,
            "550 5.7.1 Certificate DN not listed in the MSSante whitelist for domain a.fr"
            " / DN du certificat absent de la liste blanche pour ce domaine",
        ),
        (
            Reason.REVOCATION_UNKNOWN,
            "451 4.7.0 Cannot check client certificate revocation now, try again later"
            " / revocation du certificat non verifiable, reessayer plus tard",
        ),
    ],
)
def test_certificate_refusal_texts(reason: Reason, expected: str) -> None:
    assert str(replies.certificate_refused(reason, "a.fr")) == expected


@pytest.mark.parametrize("reason", [r for r in Reason if r is not Reason.OK])
def test_every_certificate_problem_has_a_refusal(reason: Reason) -> None:
    reply = replies.certificate_refused(reason, "a.fr")
    assert reply.code in (550, 451)
    assert reply.enhanced in ("5.7.0", "5.7.1", "4.7.0")
    assert " / " in reply.text  # English then French
    _check_wire(reply)


def test_dn_not_listed_without_domain_still_formats() -> None:
    assert replies.certificate_refused(Reason.DN_NOT_LISTED).text.startswith(
        "Certificate DN not listed in the MSSante whitelist for domain  /"
    )


def test_certificate_refused_rejects_a_valid_certificate() -> None:
    with pytest.raises(ValueError, match="valid certificate"):
        replies.certificate_refused(Reason.OK)


# -- properties ---------------------------------------------------------------------------------------


@given(st.text(max_size=2000))
def test_factories_are_wire_safe_for_any_peer_value(value: str) -> None:
    for reply in (
        replies.greeting(value),
        replies.helo(value),
        replies.dn_not_listed(value),
        replies.outside_trust_space(value),
        replies.sender_not_owned(value),
        replies.header_from_not_owned(value),
        replies.accepted(value),
        replies.certificate_refused(Reason.DN_NOT_LISTED, value),
    ):
        _check_wire(reply)


@given(
    st.integers(200, 599),
    st.lists(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=600),
        min_size=1,
        max_size=5,
    ),
)
def test_any_reply_that_builds_is_wire_safe(code: int, texts: list[str]) -> None:
    enhanced = f"{str(code)[0]}.0.0" if str(code)[0] in "245" else None
    try:
        reply = Reply(code, enhanced, "\n".join(texts))
    except ValueError:
        assert any(len(t) + len(f"{code} {enhanced} ") > MAX_REPLY_LINE - 2 for t in texts)
        return
    _check_wire(reply)
    assert len(reply.lines()) == len(texts)


@given(st.text(max_size=300))
def test_construction_refuses_any_non_printable_text(text: str) -> None:
    printable = all(" " <= c <= "~" or c == "\n" for c in text)
    try:
        reply = Reply(550, "5.0.0", text)
    except ValueError:
        assert not printable or any(len(line) > 500 for line in text.split("\n"))
        return
    assert printable
    _check_wire(reply)
