"""mta.received: the Received trace header (RFC 5321 §4.4, RFC 3848, RFC 6531), folded and safe."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta.received import (
    FOLD_WIDTH,
    MAX_LINE,
    PROTOCOLS,
    fold,
    received_header,
    with_protocol,
)

AT = datetime(2026, 11, 22, 7, 18, 39, tzinfo=UTC)
DN = "CN=mx.peer.fr,OU=123456789,O=Peer,ST=Rhone (69),C=FR"


def _mx(**overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "from_helo": "mx.peer.fr",
        "peer_ip": "192.0.2.7",
        "peer_rdns": "mx.peer.fr",
        "by_host": "mx.colombe.fr",
        "with_protocol": "ESMTPS",
        "queue_id": "4XyZ",
        "at": AT,
        "tls_version": "TLSv1.3",
        "tls_cipher": "TLS_AES_256_GCM_SHA384",
        "tls_bits": 256,
        "peer_dn": DN,
        "recipient": "dr.a@colombe.fr",
    }
    kwargs.update(overrides)
    return received_header(**kwargs)


def _unfold(header: str) -> str:
    assert header.endswith("\r\n")
    return header[:-2].replace("\r\n", "")


def _check_lines(header: str) -> None:
    assert header.endswith("\r\n")
    lines = header[:-2].split("\r\n")
    for i, line in enumerate(lines):
        assert "\r" not in line
        assert "\n" not in line
        assert len(line.encode()) <= MAX_LINE
        if i:
            assert line.startswith(" ")
            assert line.strip()


# -- layout ------------------------------------------------------------------------------------


def test_mx_header_like_postfix_with_tls_and_peer_dn() -> None:
    assert _unfold(_mx()) == (
        "Received: from mx.peer.fr (mx.peer.fr [192.0.2.7])"
        " (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
        ' client DN "CN=mx.peer.fr,OU=123456789,O=Peer,ST=Rhone \\(69\\),C=FR")'
        " by mx.colombe.fr (Colombe) with ESMTPS id 4XyZ for <dr.a@colombe.fr>;"
        " Sun, 22 Nov 2026 07:18:39 +0000"
    )


def test_header_is_folded_to_78_octets() -> None:
    header = _mx()
    _check_lines(header)
    assert all(len(line) <= FOLD_WIDTH for line in header[:-2].split("\r\n"))
    assert header.count("\r\n") > 1


def test_email_parser_reads_the_header_back() -> None:
    msg = email.message_from_string(_mx() + "\r\nbody\r\n", policy=email.policy.default)
    value = str(msg["Received"])
    assert "by mx.colombe.fr (Colombe) with ESMTPS id 4XyZ" in value
    assert value.endswith("Sun, 22 Nov 2026 07:18:39 +0000")


def test_no_recipient_clause_when_not_given() -> None:
    assert " for " not in _unfold(_mx(recipient=None))


def test_tls_without_bits_or_dn() -> None:
    got = _unfold(_mx(tls_bits=None, peer_dn=None))
    assert "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384) by" in got


def test_plain_esmtp_has_no_tls_comment() -> None:
    got = _unfold(
        _mx(with_protocol="ESMTP", tls_version=None, tls_cipher=None, tls_bits=None, peer_dn=None)
    )
    assert "using" not in got
    assert "with ESMTP id" in got


def test_unknown_rdns_and_empty_helo() -> None:
    got = _unfold(_mx(peer_rdns=None, from_helo="  "))
    assert got.startswith("Received: from unknown (unknown [192.0.2.7])")


def test_ipv6_peer_uses_rfc5321_literal() -> None:
    assert "[IPv6:2001:db8::7]" in _unfold(_mx(peer_ip="2001:DB8:0::7"))


def test_ipv4_mapped_peer_shown_as_ipv4() -> None:
    assert "(mx.peer.fr [192.0.2.7])" in _unfold(_mx(peer_ip="::ffff:192.0.2.7"))


def test_date_keeps_its_offset() -> None:
    paris = timezone(timedelta(hours=1))
    assert _unfold(_mx(at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=paris))).endswith(
        "Fri, 02 Jan 2026 03:04:05 +0100"
    )


# -- authentication and privacy ------------------------------------------------------------------


def test_authenticated_login_hidden_by_default() -> None:
    got = _unfold(
        _mx(with_protocol="ESMTPSA", peer_dn=None, authenticated_as="dr.secret@colombe.fr")
    )
    assert "secret" not in got
    assert "with ESMTPSA id" in got


def test_authenticated_login_revealed_when_asked() -> None:
    got = _unfold(
        _mx(
            with_protocol="ESMTPSA",
            peer_dn=None,
            authenticated_as="dr.a (x)",
            reveal_login=True,
        )
    )
    assert "(Authenticated sender: dr.a \\(x\\)) by" in got


def test_auth_and_protocol_must_agree() -> None:
    with pytest.raises(ValueError, match="authenticated_as disagree"):
        _mx(authenticated_as="u")
    with pytest.raises(ValueError, match="authenticated_as disagree"):
        _mx(with_protocol="ESMTPSA")


# -- WITH types ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "protocol"),
    [
        ((False, False, False, False), "SMTP"),
        ((True, False, False, False), "ESMTP"),
        ((True, True, False, False), "ESMTPS"),
        ((True, False, True, False), "ESMTPA"),
        ((True, True, True, False), "ESMTPSA"),
        ((True, False, False, True), "UTF8SMTP"),
        ((True, True, False, True), "UTF8SMTPS"),
        ((True, False, True, True), "UTF8SMTPA"),
        ((True, True, True, True), "UTF8SMTPSA"),
    ],
)
def test_with_protocol_types(flags: tuple[bool, bool, bool, bool], protocol: str) -> None:
    esmtp, tls, auth, utf8 = flags
    assert with_protocol(esmtp=esmtp, tls=tls, authenticated=auth, utf8=utf8) == protocol
    assert protocol in PROTOCOLS


@pytest.mark.parametrize(
    "flags", [(True, False, False), (False, True, False), (False, False, True)]
)
def test_helo_session_cannot_have_extensions(flags: tuple[bool, bool, bool]) -> None:
    tls, auth, utf8 = flags
    with pytest.raises(ValueError, match="need EHLO"):
        with_protocol(esmtp=False, tls=tls, authenticated=auth, utf8=utf8)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_every_protocol_builds(protocol: str) -> None:
    tls = protocol in {"ESMTPS", "ESMTPSA", "UTF8SMTPS", "UTF8SMTPSA"}
    header = _mx(
        with_protocol=protocol,
        tls_version="TLSv1.2" if tls else None,
        tls_cipher="ECDHE-RSA-AES256-GCM-SHA384" if tls else None,
        tls_bits=256 if tls else None,
        peer_dn=DN if tls else None,
        authenticated_as="u" if protocol.endswith("A") else None,
    )
    assert f"with {protocol} id" in _unfold(header)


# -- our own values are checked ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"with_protocol": "HTTP"}, "unknown WITH protocol"),
        ({"tls_version": None}, "disagree"),
        ({"with_protocol": "ESMTP"}, "disagree"),
        ({"tls_cipher": None}, "tls_cipher is required"),
        ({"tls_bits": 0}, "invalid cipher bits"),
        ({"tls_version": "TLS 1.3"}, "invalid TLS name"),
        ({"tls_cipher": "AES\r\nX"}, "invalid TLS name"),
        ({"by_host": "bad host"}, "invalid by_host"),
        ({"queue_id": "id;x"}, "invalid queue id"),
        ({"queue_id": ""}, "invalid queue id"),
        ({"at": datetime(2026, 1, 1)}, "time zone"),
        ({"peer_ip": "mx.peer.fr"}, "does not appear to be an IPv4 or IPv6"),
    ],
)
def test_bad_own_values_are_bugs(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _mx(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [{"peer_dn": "CN=x"}, {"tls_cipher": "X"}, {"tls_bits": 128}],
)
def test_tls_details_without_tls_refused(overrides: dict[str, Any]) -> None:
    base = {"with_protocol": "ESMTP", "tls_version": None, "tls_cipher": None, "tls_bits": None}
    base["peer_dn"] = None
    base.update(overrides)
    with pytest.raises(ValueError, match="TLS details without tls_version"):
        _mx(**base)


# -- peer strings are sanitised ------------------------------------------------------------------


def test_hostile_helo_cannot_inject_a_header_or_structure() -> None:
    got = _mx(from_helo="evil\r\nX-Injected: 1 (by (me)) <x>;")
    _check_lines(got)
    assert not any(line.startswith("X-") for line in got.split("\r\n"))
    assert _unfold(got).startswith("Received: from evil?X-Injected:?1??by??me????x?? (mx.peer")


def test_hostile_dn_cannot_close_the_comment() -> None:
    got = _unfold(_mx(peer_dn='CN=x") by forged (\\'))
    assert 'client DN "CN=x\\"\\) by forged \\(\\\\")' in got


def test_dn_controls_and_bidi_become_question_marks_and_spaces_collapse() -> None:
    got = _unfold(_mx(peer_dn="CN=a\x00b\u202ec\t\t d\u00e9"))
    assert 'client DN "CN=a?b?c d?"' in got


def test_recipient_is_sanitised() -> None:
    got = _unfold(_mx(recipient="a b>;c@d.fr\r\n"))
    assert "for <a?b??c@d.fr>;" in got


def test_rdns_is_sanitised() -> None:
    assert "(x?y [192.0.2.7])" in _unfold(_mx(peer_rdns="x(y"))


def test_utf8_protocol_keeps_non_ascii_peer_strings() -> None:
    got = _unfold(_mx(with_protocol="UTF8SMTPS", from_helo="mx.hôpital.fr", recipient="é@b.fr"))
    assert "from mx.hôpital.fr " in got
    assert "for <é@b.fr>" in got


def test_ascii_protocol_replaces_non_ascii() -> None:
    got = _unfold(_mx(from_helo="mx.hôpital.fr", recipient="é@b.fr"))
    assert got.isascii()
    assert "from mx.h?pital.fr " in got


def test_long_peer_values_are_cut_in_octets() -> None:
    got = _mx(
        with_protocol="UTF8SMTPS",
        from_helo="é" * 1000,
        peer_rdns="r" * 1000,
        peer_dn="€" * 1000,
        recipient="a" * 2000,
    )
    _check_lines(got)
    unfolded = _unfold(got)
    assert "..." in unfolded
    helo = unfolded.split(" ")[2]
    assert len(helo.encode()) <= 255
    assert helo.endswith("...")


# -- folding -------------------------------------------------------------------------------------


def test_fold_short_value_is_one_line() -> None:
    assert fold("X", "short") == "X: short\r\n"


def test_fold_breaks_before_a_space() -> None:
    assert fold("X", "aaaa bbbb cccc", width=9) == "X: aaaa\r\n bbbb\r\n cccc\r\n"


def test_fold_keeps_an_overlong_word_whole() -> None:
    assert fold("X", "a " + "b" * 20 + " c", width=8) == "X: a\r\n " + "b" * 20 + "\r\n c\r\n"


def test_fold_overlong_last_word() -> None:
    assert fold("X", "a " + "b" * 20, width=8) == "X: a\r\n " + "b" * 20 + "\r\n"


def test_fold_refuses_line_breaks() -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        fold("X", "a\nb")


words = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters=" \r\n"),
    min_size=1,
    max_size=120,
)


@given(st.lists(words, min_size=1, max_size=40))
def test_fold_unfolds_to_the_same_content(parts: list[str]) -> None:
    value = " ".join(parts)
    header = fold("Received", value)
    assert _unfold(header) == f"Received: {value}"
    lines = header[:-2].split("\r\n")
    for i, line in enumerate(lines):
        if " " in line[1:]:  # a line with a break opportunity respects the width
            first_space = line.find(" ", 1)
            assert len(line.encode()) <= FOLD_WIDTH or len(line[:first_space].encode()) > (
                FOLD_WIDTH
            )
        if i:
            assert line.startswith(" ")


peer_text = st.text(max_size=1500)


@given(
    helo=peer_text,
    rdns=st.none() | peer_text,
    dn=st.none() | peer_text,
    rcpt=st.none() | peer_text,
    login=peer_text,
    reveal=st.booleans(),
    utf8=st.booleans(),
    ipv6=st.booleans(),
)
def test_any_peer_input_gives_a_well_formed_header(
    helo: str,
    rdns: str | None,
    dn: str | None,
    rcpt: str | None,
    login: str,
    reveal: bool,
    utf8: bool,
    ipv6: bool,
) -> None:
    header = _mx(
        with_protocol="UTF8SMTPSA" if utf8 else "ESMTPSA",
        from_helo=helo,
        peer_rdns=rdns,
        peer_dn=dn,
        recipient=rcpt,
        authenticated_as=login,
        reveal_login=reveal,
        peer_ip="2001:db8::1" if ipv6 else "192.0.2.1",
    )
    _check_lines(header)
    unfolded = _unfold(header)
    assert "\r" not in unfolded
    assert "\n" not in unfolded
    if not utf8:
        assert unfolded.isascii()
    assert unfolded.endswith("; Sun, 22 Nov 2026 07:18:39 +0000")
    assert " by mx.colombe.fr (Colombe) with " in unfolded
    assert fold("Received", unfolded.removeprefix("Received: ")) == header
