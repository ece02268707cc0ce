"""RFC 3461 DSN parameters, xtext, and the generic ESMTP parameter list (mta.dsn_params)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta.dsn_params import (
    MAX_ENVID_LENGTH,
    MAX_ORCPT_LENGTH,
    MAX_PARAM_LENGTH,
    MAX_PARAMS,
    Body,
    MailParams,
    Notify,
    OriginalRecipient,
    ParamError,
    RcptParams,
    Ret,
    format_envid,
    format_notify,
    format_orcpt,
    parse_body,
    parse_envid,
    parse_esmtp_params,
    parse_mail_params,
    parse_notify,
    parse_orcpt,
    parse_rcpt_params,
    parse_ret,
    parse_size,
    xtext_decode,
    xtext_encode,
)

ASCII = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=200)


def refused(exc: pytest.ExceptionInfo[ParamError], reason: str, reply: str = "501 5.5.4") -> None:
    assert str(exc.value) == reason
    assert exc.value.reason == reason
    assert exc.value.reply() == f"{reply} {reason}"


# --- xtext (RFC 3461 §4) ---


@given(ASCII)
def test_xtext_round_trips_any_ascii(text: str) -> None:
    encoded = xtext_encode(text)
    assert xtext_decode(encoded) == text
    assert all(0x21 <= ord(c) <= 0x7E and c != "=" for c in encoded)


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=100))
def test_xtext_decode_then_encode_is_identity_on_canonical_xtext(text: str) -> None:
    encoded = xtext_encode(text)
    assert xtext_encode(xtext_decode(encoded)) == encoded


@given(st.text(max_size=60))
def test_xtext_decode_never_raises_anything_but_param_error(value: str) -> None:
    try:
        decoded = xtext_decode(value)
    except ParamError:
        return
    assert decoded.isascii()


def test_xtext_encodes_plus_equals_space_and_controls_as_uppercase_hex() -> None:
    assert xtext_encode("a+b=c d\r\n") == "a+2Bb+3Dc+20d+0D+0A"
    assert xtext_encode("\x7f") == "+7F"
    assert xtext_encode("Bob@Big-Bucks.COM") == "Bob@Big-Bucks.COM"


def test_xtext_decodes_hexchars() -> None:
    assert xtext_decode("a+2Bb+3Dc+20d") == "a+b=c d"
    assert xtext_decode("") == ""


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a+2b", "malformed xtext: '+' must be followed by two upper-case hex digits"),
        ("a+", "malformed xtext: '+' must be followed by two upper-case hex digits"),
        ("a+2", "malformed xtext: '+' must be followed by two upper-case hex digits"),
        ("+G0", "malformed xtext: '+' must be followed by two upper-case hex digits"),
        ("+C3+A9", "malformed xtext: encoded octet is not US-ASCII"),
        ("a=b", "malformed xtext: invalid character"),
        ("a b", "malformed xtext: invalid character"),
        ("a\tb", "malformed xtext: invalid character"),
        ("é", "malformed xtext: invalid character"),
        ("\x7f", "malformed xtext: invalid character"),
    ],
)
def test_malformed_xtext_is_refused(value: str, reason: str) -> None:
    with pytest.raises(ParamError) as exc:
        xtext_decode(value)
    refused(exc, reason)


def test_xtext_cannot_encode_non_ascii() -> None:
    with pytest.raises(ParamError) as exc:
        xtext_encode("é")
    refused(exc, "xtext can only encode US-ASCII")


# --- NOTIFY (RFC 3461 §4.1) ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("NEVER", frozenset()),
        ("never", frozenset()),
        ("SUCCESS", {Notify.SUCCESS}),
        ("success,Failure", {Notify.SUCCESS, Notify.FAILURE}),
        ("DELAY,FAILURE,SUCCESS", {Notify.SUCCESS, Notify.FAILURE, Notify.DELAY}),
    ],
)
def test_notify_is_never_or_a_case_insensitive_list(value: str, expected: set[Notify]) -> None:
    assert parse_notify(value) == frozenset(expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("NEVER,SUCCESS", "NOTIFY=NEVER cannot be combined with other values"),
        ("FAILURE,never", "NOTIFY=NEVER cannot be combined with other values"),
        ("NEVER,NEVER", "NOTIFY=NEVER cannot be combined with other values"),
        ("SUCCESS,SUCCESS", "duplicate NOTIFY value SUCCESS"),
        ("delay,DELAY", "duplicate NOTIFY value DELAY"),
        ("SUCCESS,READ", "NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY"),
        ("SUCCESS,", "NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY"),
        ("", "NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY"),
    ],
)
def test_notify_never_with_others_duplicates_and_unknowns_are_refused(
    value: str, reason: str
) -> None:
    with pytest.raises(ParamError) as exc:
        parse_notify(value)
    refused(exc, reason)


def test_notify_formats_canonically_in_rfc_order() -> None:
    assert format_notify(frozenset()) == "NEVER"
    assert format_notify(frozenset({Notify.DELAY, Notify.SUCCESS})) == "SUCCESS,DELAY"
    every = frozenset(Notify)
    assert format_notify(every) == "SUCCESS,FAILURE,DELAY"
    assert parse_notify(format_notify(every)) == every


# --- RET (RFC 3461 §4.3) ---


def test_ret_is_full_or_hdrs_case_insensitive() -> None:
    assert parse_ret("FULL") is Ret.FULL
    assert parse_ret("hdrs") is Ret.HDRS


@pytest.mark.parametrize("value", ["HEADERS", "", "FULL,HDRS"])
def test_other_ret_values_are_refused(value: str) -> None:
    with pytest.raises(ParamError) as exc:
        parse_ret(value)
    refused(exc, "RET must be FULL or HDRS")


# --- ENVID (RFC 3461 §4.4) ---


def test_envid_is_xtext_decoded() -> None:
    assert parse_envid("QQ314159") == "QQ314159"
    assert parse_envid("id+2Bwith+20space") == "id+with space"
    assert format_envid("id+with space") == "id+2Bwith+20space"


def test_envid_of_100_decoded_characters_is_accepted_even_if_longer_encoded() -> None:
    envid = "+" * MAX_ENVID_LENGTH
    assert parse_envid(format_envid(envid)) == envid
    assert len(format_envid(envid)) == 3 * MAX_ENVID_LENGTH


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("A" * 101, "ENVID too long (at most 100 characters)"),
        ("", "ENVID must not be empty"),
        ("a+0Db", "ENVID must be printable US-ASCII"),
        ("a+7F", "ENVID must be printable US-ASCII"),
        ("a+2b", "malformed xtext: '+' must be followed by two upper-case hex digits"),
    ],
)
def test_bad_envid_is_refused(value: str, reason: str) -> None:
    with pytest.raises(ParamError) as exc:
        parse_envid(value)
    refused(exc, reason)


def test_format_envid_checks_like_parse() -> None:
    with pytest.raises(ParamError) as exc:
        format_envid("x" * 101)
    refused(exc, "ENVID too long (at most 100 characters)")


# --- ORCPT (RFC 3461 §4.2, RFC 6533 §3) ---


def test_orcpt_rfc822_is_decoded_and_type_lowercased() -> None:
    orcpt = parse_orcpt("RFC822;Bob+2Bfiltre@Big-Bucks.COM")
    assert orcpt == OriginalRecipient("rfc822", "Bob+filtre@Big-Bucks.COM")
    assert orcpt.to_param() == "rfc822;Bob+2Bfiltre@Big-Bucks.COM"
    assert orcpt.to_field(utf8=False) == "rfc822;Bob+filtre@Big-Bucks.COM"


def test_orcpt_other_address_types_are_kept() -> None:
    assert parse_orcpt("x400;c+3Dfr") == OriginalRecipient("x400", "c=fr")


def test_orcpt_utf8_type_decodes_rfc6533_escapes() -> None:
    orcpt = parse_orcpt("utf-8;h\\x{E9}l\\x{E8}ne@h\\x{F4}pital.fr")
    assert orcpt == OriginalRecipient("utf-8", "hélène@hôpital.fr")
    assert orcpt.to_param() == "utf-8;h\\x{E9}l\\x{E8}ne@h\\x{F4}pital.fr"
    assert orcpt.to_field(utf8=True) == "utf-8;hélène@hôpital.fr"
    assert orcpt.to_field(utf8=False) == "utf-8;h\\x{E9}l\\x{E8}ne@h\\x{F4}pital.fr"


def test_orcpt_utf8_type_accepts_raw_utf8_unitext() -> None:
    assert parse_orcpt("UTF-8;hélène+2B1@hôpital.fr") == OriginalRecipient(
        "utf-8", "hélène+1@hôpital.fr"
    )


@given(
    st.text(
        alphabet=st.characters(min_codepoint=0x20, exclude_categories=("Cs", "Cc")),
        min_size=1,
        max_size=80,
    )
)
def test_orcpt_utf8_round_trips(address: str) -> None:
    orcpt = OriginalRecipient("utf-8", address)
    assert parse_orcpt(format_orcpt(orcpt)) == orcpt


@given(
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=200
    )
)
def test_orcpt_rfc822_round_trips(address: str) -> None:
    orcpt = OriginalRecipient("rfc822", address)
    assert parse_orcpt(format_orcpt(orcpt)) == orcpt


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("rfc822", "ORCPT must be addr-type;address"),
        ("rfc822;", "ORCPT address must not be empty"),
        (";bob@x", "ORCPT address type must be an atom such as rfc822"),
        ("rfc 822;bob@x", "ORCPT address type must be an atom such as rfc822"),
        ("a" * 33 + ";bob@x", "ORCPT address type must be an atom such as rfc822"),
        ("rfc822;bob+0A@x", "ORCPT address must be printable US-ASCII"),
        ("rfc822;bob=x", "malformed xtext: invalid character"),
        ("rfc822;bob+zz", "malformed xtext: '+' must be followed by two upper-case hex digits"),
        ("rfc822;héllo@x", "malformed xtext: invalid character"),
        (
            "rfc822;" + "a" * (MAX_ORCPT_LENGTH + 1),
            "ORCPT address too long (at most 500 characters)",
        ),
        ("utf-8;a\\x{D800}", "ORCPT \\x{...} escape is not a Unicode scalar value"),
        ("utf-8;a\\x{110000}", "ORCPT \\x{...} escape is not a Unicode scalar value"),
        ("utf-8;a\\x{7}", "ORCPT address must not contain control characters"),
        ("utf-8;a+0D", "ORCPT address must not contain control characters"),
        ("utf-8;a b", "malformed xtext: invalid character"),
    ],
)
def test_bad_orcpt_is_refused(value: str, reason: str) -> None:
    with pytest.raises(ParamError) as exc:
        parse_orcpt(value)
    refused(exc, reason)


# --- the generic list (RFC 5321 §4.1.2) ---


def test_params_are_an_ordered_mapping_with_upper_cased_keys() -> None:
    params = parse_esmtp_params("size=1000 BODY=8bitmime  SmtpUtf8 RET=HDRS")
    assert list(params.items()) == [
        ("SIZE", "1000"),
        ("BODY", "8bitmime"),
        ("SMTPUTF8", None),
        ("RET", "HDRS"),
    ]
    assert parse_esmtp_params("") == {}
    assert parse_esmtp_params("   ") == {}


def test_values_keep_their_case_and_may_hold_semicolons_and_plus() -> None:
    assert parse_esmtp_params("ORCPT=rfc822;Bob+2B1@X.org") == {"ORCPT": "rfc822;Bob+2B1@X.org"}


def test_non_ascii_values_only_with_smtputf8() -> None:
    assert parse_esmtp_params("ORCPT=utf-8;é@x", utf8=True) == {"ORCPT": "utf-8;é@x"}
    with pytest.raises(ParamError) as exc:
        parse_esmtp_params("ORCPT=utf-8;é@x")
    refused(exc, "invalid character in the value of parameter ORCPT", "501 5.5.2")


@pytest.mark.parametrize(
    ("text", "reason", "reply"),
    [
        ("SIZE=1 size=2", "duplicate parameter SIZE", "501 5.5.4"),
        ("SMTPUTF8 smtputf8", "duplicate parameter SMTPUTF8", "501 5.5.4"),
        ("=1", "invalid parameter keyword ''", "501 5.5.2"),
        ("-X=1", "invalid parameter keyword '-X'", "501 5.5.2"),
        ("S_IZE=1", "invalid parameter keyword 'S_IZE'", "501 5.5.2"),
        ("SIZE=", "empty value for parameter SIZE", "501 5.5.2"),
        ("SIZE=1=2", "invalid character in the value of parameter SIZE", "501 5.5.2"),
        ("X=a\x01", "invalid character in the value of parameter X", "501 5.5.2"),
        ("X=a\tb", "invalid character in the value of parameter X", "501 5.5.2"),
        ("X=\x7f", "invalid character in the value of parameter X", "501 5.5.2"),
    ],
)
def test_malformed_parameter_lists_are_refused(text: str, reason: str, reply: str) -> None:
    with pytest.raises(ParamError) as exc:
        parse_esmtp_params(text)
    refused(exc, reason, reply)


def test_parameter_count_is_bounded() -> None:
    ok = " ".join(f"X{i}" for i in range(MAX_PARAMS))
    assert len(parse_esmtp_params(ok)) == MAX_PARAMS
    with pytest.raises(ParamError) as exc:
        parse_esmtp_params(ok + " LAST")
    refused(exc, "too many parameters (at most 16)", "501 5.5.2")


def test_parameter_length_is_bounded() -> None:
    ok = "X=" + "a" * (MAX_PARAM_LENGTH - 2)
    assert parse_esmtp_params(ok) == {"X": "a" * (MAX_PARAM_LENGTH - 2)}
    with pytest.raises(ParamError) as exc:
        parse_esmtp_params(ok + "a")
    refused(exc, "parameter too long (at most 600 characters)", "501 5.5.2")


@given(st.text(max_size=300))
def test_param_list_parser_never_raises_anything_but_param_error(text: str) -> None:
    try:
        params = parse_esmtp_params(text, utf8=True)
    except ParamError:
        return
    assert len(params) <= MAX_PARAMS
    assert all(k == k.upper() for k in params)


# --- SIZE, BODY ---


def test_size_is_a_decimal_number() -> None:
    assert parse_size("0") == 0
    assert parse_size("26214400") == 26214400


@pytest.mark.parametrize("value", ["-1", "1e6", "", "١٢", "1" * 21, "+5"])
def test_bad_size_is_refused(value: str) -> None:
    with pytest.raises(ParamError) as exc:
        parse_size(value)
    refused(exc, "SIZE must be a decimal number of octets")


def test_body_types() -> None:
    assert parse_body("7bit") is Body.SEVEN_BIT
    assert parse_body("8BITMIME") is Body.EIGHT_BIT_MIME
    assert parse_body("BinaryMime") is Body.BINARY_MIME
    with pytest.raises(ParamError) as exc:
        parse_body("8BIT")
    refused(exc, "BODY must be 7BIT, 8BITMIME or BINARYMIME")


# --- the MAIL and RCPT sets, with the RFC 3461 §4 example transaction ---


def test_rfc3461_example_mail_from() -> None:
    # RFC 3461 §4.4 / §6 example: MAIL FROM:<Alice@Pure-Heart.ORG> RET=HDRS ENVID=QQ314159
    assert parse_mail_params("RET=HDRS ENVID=QQ314159") == MailParams(
        ret=Ret.HDRS, envid="QQ314159"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "NOTIFY=SUCCESS ORCPT=rfc822;Bob@Big-Bucks.COM",
            RcptParams(
                frozenset({Notify.SUCCESS}), OriginalRecipient("rfc822", "Bob@Big-Bucks.COM")
            ),
        ),
        (
            "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Dana@Ivory.EDU",
            RcptParams(
                frozenset({Notify.SUCCESS, Notify.FAILURE}),
                OriginalRecipient("rfc822", "Dana@Ivory.EDU"),
            ),
        ),
        ("NOTIFY=NEVER", RcptParams(frozenset(), None)),
        ("", RcptParams(None, None)),
    ],
)
def test_rfc3461_example_rcpt_to(text: str, expected: RcptParams) -> None:
    assert parse_rcpt_params(text) == expected


def test_mail_params_all_extensions() -> None:
    assert parse_mail_params(
        "SIZE=20480 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=a+2Bb", utf8=True
    ) == MailParams(size=20480, body=Body.EIGHT_BIT_MIME, smtputf8=True, ret=Ret.FULL, envid="a+b")


@pytest.mark.parametrize(
    ("text", "reason", "reply"),
    [
        ("AUTH=<>", "parameter AUTH not supported", "555 5.5.4"),
        ("NOTIFY=SUCCESS", "parameter NOTIFY not supported", "555 5.5.4"),
        ("SMTPUTF8=yes", "parameter SMTPUTF8 takes no value", "501 5.5.4"),
        ("RET", "parameter RET requires a value", "501 5.5.4"),
        ("SIZE", "parameter SIZE requires a value", "501 5.5.4"),
        ("BODY", "parameter BODY requires a value", "501 5.5.4"),
        ("ENVID", "parameter ENVID requires a value", "501 5.5.4"),
        ("RET=FULL ret=HDRS", "duplicate parameter RET", "501 5.5.4"),
    ],
)
def test_bad_mail_params_are_refused(text: str, reason: str, reply: str) -> None:
    with pytest.raises(ParamError) as exc:
        parse_mail_params(text)
    refused(exc, reason, reply)


@pytest.mark.parametrize(
    ("text", "reason", "reply"),
    [
        ("RET=FULL", "parameter RET not supported", "555 5.5.4"),
        ("NOTIFY", "parameter NOTIFY requires a value", "501 5.5.4"),
        ("ORCPT", "parameter ORCPT requires a value", "501 5.5.4"),
        ("NOTIFY=NEVER notify=SUCCESS", "duplicate parameter NOTIFY", "501 5.5.4"),
    ],
)
def test_bad_rcpt_params_are_refused(text: str, reason: str, reply: str) -> None:
    with pytest.raises(ParamError) as exc:
        parse_rcpt_params(text)
    refused(exc, reason, reply)


def test_canonical_forms_are_what_the_store_keeps_and_relays() -> None:
    rcpt = parse_rcpt_params("notify=failure,success ORCPT=RFC822;a+2Bb@x.fr")
    assert rcpt.notify is not None
    assert rcpt.orcpt is not None
    assert format_notify(rcpt.notify) == "SUCCESS,FAILURE"
    assert format_orcpt(rcpt.orcpt) == "rfc822;a+2Bb@x.fr"
