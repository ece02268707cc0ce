"""RFC 3464 / RFC 6522 / RFC 6533 delivery status notifications (mta.dsn), parsed back with email."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.dsn import (
    DEFAULT_MAX_RETURNED_SIZE,
    MAX_DIAGNOSTIC_LENGTH,
    Action,
    RecipientReport,
    build_dsn,
    dsn_requested,
)
from mta.dsn_params import Notify, OriginalRecipient, Ret

ARRIVAL = datetime(2026, 3, 2, 9, 15, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 9, 20, 0, tzinfo=timezone(timedelta(hours=1)))
ATTEMPT = datetime(2026, 3, 2, 9, 19, 30, tzinfo=UTC)
UNTIL = datetime(2026, 3, 7, 9, 15, 0, tzinfo=UTC)

ORIGINAL = (
    b"From: Dr Alice Martin <alice@a.mssante.fr>\r\n"
    b"To: bob@b.mssante.fr\r\n"
    b"Subject: Compte rendu\r\n"
    b"Message-ID: <cr-1@a.mssante.fr>\r\n"
    b"X-MSS-NIL: 1\r\n"
    b"\r\n"
    b"CONFIDENTIAL BODY LINE\r\n"
)


def delivered(addr: str = "bob@b.mssante.fr", **kw: object) -> RecipientReport:
    return RecipientReport(addr, Action.DELIVERED, "2.0.0", **kw)  # type: ignore[arg-type]


def failed(addr: str = "bob@b.mssante.fr") -> RecipientReport:
    return RecipientReport(
        addr,
        Action.FAILED,
        "5.1.1",
        original_recipient=OriginalRecipient("rfc822", "Bob@B.mssante.fr"),
        remote_mta="mx.b.mssante.fr",
        diagnostic="550 5.1.1 <bob@b.mssante.fr>: Recipient address rejected",
        last_attempt=ATTEMPT,
    )


def delayed(addr: str = "carol@c.mssante.fr") -> RecipientReport:
    return RecipientReport(
        addr,
        Action.DELAYED,
        "4.4.1",
        remote_mta="mx.c.mssante.fr",
        diagnostic="connect to mx.c.mssante.fr: Connection refused",
        last_attempt=ATTEMPT,
        will_retry_until=UNTIL,
    )


def build(recipients: list[RecipientReport], **kw: object) -> bytes:
    args: dict[str, object] = {
        "reporting_mta": "mx.a.mssante.fr",
        "envelope_sender": "alice@a.mssante.fr",
        "recipients": recipients,
        "original": ORIGINAL,
        "arrival_date": ARRIVAL,
        "now": NOW,
    }
    args.update(kw)
    return build_dsn(**args)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(msg: EmailMessage) -> list[EmailMessage]:
    payload = msg.get_payload()
    assert isinstance(payload, list)
    assert all(isinstance(p, EmailMessage) for p in payload)
    return [p for p in payload if isinstance(p, EmailMessage)]


def raw_part(raw: bytes, index: int) -> bytes:
    """The raw bytes of part ``index`` (headers and body) of the top multipart."""
    m = re.search(rb'boundary="([^"]+)"', raw)
    assert m is not None
    sections = raw.split(b"\r\n--" + m.group(1))
    return sections[index + 1].removeprefix(b"\r\n")


def status_blocks(raw: bytes) -> list[dict[str, str]]:
    """The field blocks of the status part, each parsed as headers (RFC 3464 §2.1)."""
    body = raw_part(raw, 1).split(b"\r\n\r\n", 1)[1]
    blocks = [b for b in body.split(b"\r\n\r\n") if b.strip()]
    out = []
    for block in blocks:
        fields = email.message_from_bytes(block + b"\r\n\r\n", policy=email.policy.default)
        out.append({k: str(v) for k, v in fields.items()})
    return out


# --- structure (RFC 6522) ---


def test_failure_dsn_is_a_multipart_report_with_three_parts() -> None:
    raw = build([failed()], ret=Ret.HDRS, envid="QQ314159")
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["MIME-Version"] == "1.0"
    kinds = [p.get_content_type() for p in parts(msg)]
    assert kinds == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert not msg.defects
    for p in parts(msg):
        assert not p.defects


def test_top_level_headers() -> None:
    msg = parse(build([failed()]))
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.a.mssante.fr"
    assert msg["To"].addresses[0].addr_spec == "alice@a.mssante.fr"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"].datetime == NOW
    assert re.fullmatch(r"<[0-9a-f]{32}@mx\.a\.mssante\.fr>", msg["Message-ID"])
    assert msg["Subject"] == "Échec de distribution / Undelivered mail returned to sender"


def test_postmaster_address_is_configurable() -> None:
    msg = parse(build([failed()], postmaster="postmaster@a.mssante.fr"))
    assert msg["From"].addresses[0].addr_spec == "postmaster@a.mssante.fr"


def test_message_ids_are_unique() -> None:
    ids = {parse(build([failed()]))["Message-ID"] for _ in range(20)}
    assert len(ids) == 20


def test_date_defaults_to_now_in_utc() -> None:
    raw = build_dsn(
        reporting_mta="mx.a.mssante.fr",
        envelope_sender="alice@a.mssante.fr",
        recipients=[failed()],
        original=ORIGINAL,
        arrival_date=ARRIVAL,
    )
    sent = parse(raw)["Date"].datetime
    assert abs(sent - datetime.now(UTC)) < timedelta(minutes=1)


def test_every_line_ends_with_crlf_and_fits_998_octets() -> None:
    raw = build([failed(), delayed(), delivered("dan@a.mssante.fr")], ret=Ret.FULL)
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_ascii_report_is_7bit() -> None:
    raw = build([failed(), delayed()], ret=Ret.FULL)
    assert raw.isascii()


@pytest.mark.parametrize(
    ("recipients", "subject"),
    [
        ([delivered()], "Accusé de réception / Delivery receipt"),
        ([delayed()], "Distribution retardée / Delivery delayed"),
        ([delayed(), failed()], "Échec de distribution / Undelivered mail returned to sender"),
        ([delivered(), delayed()], "Distribution retardée / Delivery delayed"),
    ],
)
def test_subject_names_the_worst_outcome(recipients: list[RecipientReport], subject: str) -> None:
    assert parse(build(recipients))["Subject"] == subject


# --- the machine-readable part (RFC 3464 §2.2, §2.3) ---


def test_per_message_fields() -> None:
    raw = build([failed()], envid="QQ314159")
    fields = status_blocks(raw)[0]
    assert fields == {
        "Reporting-MTA": "dns; mx.a.mssante.fr",
        "Original-Envelope-Id": "QQ314159",
        "Arrival-Date": "Mon, 02 Mar 2026 09:15:00 +0000",
    }


def test_original_envelope_id_only_when_envid_was_given() -> None:
    fields = status_blocks(build([failed()]))[0]
    assert "Original-Envelope-Id" not in fields


def test_python_email_sees_one_block_per_message_and_per_recipient() -> None:
    msg = parse(build([failed(), delayed()]))
    blocks = parts(parts(msg)[1])
    assert len(blocks) == 3
    assert blocks[0]["Reporting-MTA"] == "dns; mx.a.mssante.fr"
    assert blocks[1]["Final-Recipient"] == "rfc822; bob@b.mssante.fr"
    assert blocks[2]["Final-Recipient"] == "rfc822; carol@c.mssante.fr"


def test_failed_recipient_fields() -> None:
    fields = status_blocks(build([failed()]))[1]
    assert fields == {
        "Original-Recipient": "rfc822;Bob@B.mssante.fr",
        "Final-Recipient": "rfc822; bob@b.mssante.fr",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.b.mssante.fr",
        "Diagnostic-Code": "smtp; 550 5.1.1 <bob@b.mssante.fr>: Recipient address rejected",
        "Last-Attempt-Date": "Mon, 02 Mar 2026 09:19:30 +0000",
    }


def test_delayed_recipient_has_will_retry_until() -> None:
    fields = status_blocks(build([delayed()]))[1]
    assert fields["Action"] == "delayed"
    assert fields["Status"] == "4.4.1"
    assert fields["Will-Retry-Until"] == "Sat, 07 Mar 2026 09:15:00 +0000"
    assert fields["Last-Attempt-Date"] == "Mon, 02 Mar 2026 09:19:30 +0000"


def test_success_dsn_is_the_mssante_accuse_de_reception() -> None:
    raw = build(
        [delivered(original_recipient=OriginalRecipient("rfc822", "bob@b.mssante.fr"))],
        envid="envoi-42",
        ret=Ret.FULL,
    )
    msg = parse(raw)
    blocks = status_blocks(raw)
    assert blocks[1] == {
        "Original-Recipient": "rfc822;bob@b.mssante.fr",
        "Final-Recipient": "rfc822; bob@b.mssante.fr",
        "Action": "delivered",
        "Status": "2.0.0",
    }
    assert blocks[0]["Original-Envelope-Id"] == "envoi-42"
    # RFC 3461 §4.3: FULL is for failed DSNs; a success report returns the headers only.
    assert parts(msg)[2].get_content_type() == "text/rfc822-headers"
    assert b"CONFIDENTIAL BODY LINE" not in raw


@pytest.mark.parametrize("action", [Action.RELAYED, Action.EXPANDED])
def test_relayed_and_expanded_actions(action: Action) -> None:
    raw = build([RecipientReport("list@a.mssante.fr", action, "2.0.0")])
    assert status_blocks(raw)[1]["Action"] == action.value


def test_mixed_report_keeps_recipient_order() -> None:
    raw = build([delayed("z@c.fr"), failed("a@b.fr"), delivered("m@a.fr")])
    finals = [b["Final-Recipient"] for b in status_blocks(raw)[1:]]
    assert finals == ["rfc822; z@c.fr", "rfc822; a@b.fr", "rfc822; m@a.fr"]


def test_diagnostic_is_one_clean_line_whatever_the_peer_sent() -> None:
    report = RecipientReport(
        "bob@b.fr",
        Action.FAILED,
        "5.7.1",
        diagnostic="550-5.7.1 first line\r\n550 5.7.1 second\r\nInjected: header\x00",
    )
    raw = build([report])
    fields = status_blocks(raw)[1]
    assert (
        fields["Diagnostic-Code"] == "smtp; 550-5.7.1 first line 550 5.7.1 second Injected: header"
    )
    assert "Injected" not in fields


def test_long_diagnostic_is_truncated() -> None:
    report = RecipientReport("bob@b.fr", Action.FAILED, "5.0.0", diagnostic="550 " + "x" * 5000)
    value = status_blocks(build([report]))[1]["Diagnostic-Code"]
    assert value.endswith("...")
    assert len(value) == len("smtp; ") + MAX_DIAGNOSTIC_LENGTH


def test_non_ascii_diagnostic_is_replaced_in_ascii_reports() -> None:
    report = RecipientReport("bob@b.fr", Action.FAILED, "5.0.0", diagnostic="550 refusé")
    raw = build([report])
    assert raw.isascii()
    assert status_blocks(raw)[1]["Diagnostic-Code"] == "smtp; 550 refus?"


# --- the human-readable part ---


def test_human_part_is_french_then_english_and_says_why() -> None:
    msg = parse(build([failed(), delayed()]))
    text = parts(msg)[0].get_content()
    assert parts(msg)[0]["Content-Transfer-Encoding"] == "quoted-printable"
    fr = text.index("[Français]")
    en = text.index("[English]")
    assert fr < en
    french, english = text[fr:en], text[en:]
    assert "Votre message n'a pas pu être remis" in french
    assert "<bob@b.mssante.fr> : cette adresse n'existe pas (5.1.1)" in french
    assert "<carol@c.mssante.fr> : le serveur destinataire ne répond pas (4.4.1)" in french
    assert "Sat, 07 Mar 2026 09:15:00 +0000" in french
    assert "réponse du serveur distant (mx.b.mssante.fr)" in french
    assert "Your message could not be delivered to the following recipients" in english
    assert "<bob@b.mssante.fr> : this address does not exist (5.1.1)" in english
    assert "Recipient address rejected" in english
    assert "retrying until Sat, 07 Mar 2026 09:15:00 +0000" in english


def test_human_part_of_a_receipt() -> None:
    text = parts(parse(build([delivered()])))[0].get_content()
    assert "Votre message a été remis dans la boîte aux lettres" in text
    assert "Your message was delivered to the mailbox" in text
    assert "<bob@b.mssante.fr> : distribué (2.0.0)" in text


def test_unknown_detail_code_falls_back_to_its_class() -> None:
    report = RecipientReport("bob@b.fr", Action.FAILED, "5.9.99")
    text = parts(parse(build([report])))[0].get_content()
    assert "erreur définitive (5.9.99)" in text
    assert "permanent error (5.9.99)" in text


# --- the returned content (RFC 3461 §4.3, RFC 6522 §4) ---


def test_ret_hdrs_returns_the_headers_only() -> None:
    raw = build([failed()], ret=Ret.HDRS)
    returned = parts(parse(raw))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    headers = raw_part(raw, 2).split(b"\r\n\r\n", 1)[1]
    assert headers == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert b"CONFIDENTIAL BODY LINE" not in raw


def test_no_ret_returns_the_headers_only() -> None:
    raw = build([failed()])
    assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"
    assert b"CONFIDENTIAL BODY LINE" not in raw


def test_ret_full_returns_the_whole_original_in_a_failure() -> None:
    raw = build([failed()], ret=Ret.FULL)
    returned = parts(parse(raw))[2]
    assert returned.get_content_type() == "message/rfc822"
    (inner,) = parts(returned)
    assert inner["Message-ID"] == "<cr-1@a.mssante.fr>"
    assert inner["X-MSS-NIL"] == "1"
    assert inner.get_content().strip() == "CONFIDENTIAL BODY LINE"
    assert raw_part(raw, 2).split(b"\r\n\r\n", 1)[1] == ORIGINAL


def test_ret_full_in_a_delay_only_report_returns_headers() -> None:
    raw = build([delayed()], ret=Ret.FULL)
    assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"


def test_size_cap_falls_back_to_headers() -> None:
    assert (
        build([failed()], ret=Ret.FULL, max_returned_size=len(ORIGINAL)).count(b"CONFIDENTIAL") == 1
    )
    raw = build([failed()], ret=Ret.FULL, max_returned_size=len(ORIGINAL) - 1)
    assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"
    assert b"CONFIDENTIAL BODY LINE" not in raw


def test_default_size_cap() -> None:
    line = b"w" * 98 + b"\r\n"
    filler = line * ((DEFAULT_MAX_RETURNED_SIZE - len(ORIGINAL)) // len(line))
    at_cap = ORIGINAL + filler + b"v" * (DEFAULT_MAX_RETURNED_SIZE - len(ORIGINAL) - len(filler))
    assert len(at_cap) == DEFAULT_MAX_RETURNED_SIZE
    raw = build([failed()], ret=Ret.FULL, original=at_cap)
    assert parts(parse(raw))[2].get_content_type() == "message/rfc822"
    raw = build([failed()], ret=Ret.FULL, original=at_cap + b"v")
    assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"


def test_original_with_overlong_lines_or_nul_returns_headers() -> None:
    for body in (b"a" * 1200 + b"\r\n", b"nul\x00here\r\n"):
        raw = build([failed()], ret=Ret.FULL, original=ORIGINAL + body)
        assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"


def test_bare_lf_original_is_returned_with_crlf() -> None:
    lf = ORIGINAL.replace(b"\r\n", b"\n")
    raw = build([failed()], ret=Ret.FULL, original=lf)
    assert raw_part(raw, 2).split(b"\r\n\r\n", 1)[1] == ORIGINAL


def test_original_without_body_returns_its_headers() -> None:
    headers_only = b"Subject: x\r\nFrom: a@b.fr"
    raw = build([failed()], ret=Ret.HDRS, original=headers_only)
    assert raw_part(raw, 2).split(b"\r\n\r\n", 1)[1] == headers_only + b"\r\n"


def test_8bit_original_is_labelled_8bit() -> None:
    latin = ORIGINAL.replace(b"CONFIDENTIAL BODY LINE", "résultat".encode()).replace(
        b"X-MSS-NIL: 1\r\n", b"Content-Type: text/plain; charset=utf-8\r\n"
    )
    raw = build([failed()], ret=Ret.FULL, original=latin)
    part = raw_part(raw, 2)
    assert b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n" in part
    (inner,) = parts(parts(parse(raw))[2])
    assert inner.get_content().strip() == "résultat"


# --- SMTPUTF8 / non-ASCII addresses (RFC 6533) ---


def test_non_ascii_recipient_uses_global_types() -> None:
    report = RecipientReport(
        "hélène@hôpital.fr",
        Action.FAILED,
        "5.1.1",
        original_recipient=OriginalRecipient("utf-8", "Hélène@hôpital.fr"),
    )
    raw = build([report], ret=Ret.HDRS)
    msg = parse(raw)
    kinds = [p.get_content_type() for p in parts(msg)]
    assert kinds == ["text/plain", "message/global-delivery-status", "message/global-headers"]
    fields = status_blocks(raw)[1]
    assert fields["Final-Recipient"] == "utf-8; hélène@hôpital.fr"
    assert fields["Original-Recipient"] == "utf-8;Hélène@hôpital.fr"
    assert b"Content-Transfer-Encoding: 8bit" in raw_part(raw, 1)


def test_global_full_return_is_message_global() -> None:
    raw = build([failed()], ret=Ret.FULL, smtputf8=True)
    kinds = [p.get_content_type() for p in parts(parse(raw))]
    assert kinds == ["text/plain", "message/global-delivery-status", "message/global"]
    assert raw_part(raw, 2).split(b"\r\n\r\n", 1)[1] == ORIGINAL
    # ASCII addresses keep the rfc822 type even in a global report.
    assert status_blocks(raw)[1]["Final-Recipient"] == "rfc822; bob@b.mssante.fr"


def test_non_ascii_sender_gets_a_utf8_to_header() -> None:
    raw = build([failed()], envelope_sender="rené@a.mssante.fr")
    assert b"\r\nTo: <ren\xc3\xa9@a.mssante.fr>\r\n" in raw  # RFC 6532 §3.2: raw UTF-8
    msg = email.message_from_string(raw.decode(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["To"].addresses[0].addr_spec == "rené@a.mssante.fr"
    assert parts(msg)[1].get_content_type() == "message/global-delivery-status"


def test_ascii_report_escapes_nothing_and_global_keeps_utf8_diagnostic() -> None:
    report = RecipientReport("bob@b.fr", Action.FAILED, "5.0.0", diagnostic="550 refusé")
    raw = build([report], smtputf8=True)
    assert status_blocks(raw)[1]["Diagnostic-Code"] == "smtp; 550 refusé"


# --- refusals ---


@pytest.mark.parametrize(
    ("action", "status"),
    [
        (Action.DELIVERED, "5.0.0"),
        (Action.FAILED, "4.4.1"),
        (Action.DELAYED, "2.0.0"),
        (Action.RELAYED, "4.0.0"),
    ],
)
def test_status_class_must_match_action(action: Action, status: str) -> None:
    with pytest.raises(ValueError, match=f"status {status} does not match action {action.value}"):
        RecipientReport("a@b.fr", action, status)


@pytest.mark.parametrize("status", ["5.1", "6.0.0", "5.1.1.1", "5.1234.1", "x.y.z", ""])
def test_malformed_status_is_refused(status: str) -> None:
    with pytest.raises(ValueError, match="invalid status code"):
        RecipientReport("a@b.fr", Action.FAILED, status)


def test_will_retry_until_only_for_delays() -> None:
    with pytest.raises(ValueError, match="Will-Retry-Until only goes with action delayed"):
        RecipientReport("a@b.fr", Action.FAILED, "5.0.0", will_retry_until=UNTIL)


@pytest.mark.parametrize("addr", ["", "a@b.fr\r\nBcc: x@y", "<a@b.fr>", "a b@c.fr"])
def test_bad_final_recipient_is_refused(addr: str) -> None:
    with pytest.raises(ValueError, match="invalid final recipient address"):
        RecipientReport(addr, Action.FAILED, "5.0.0")


def test_bad_remote_mta_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid remote MTA name"):
        RecipientReport("a@b.fr", Action.FAILED, "5.0.0", remote_mta="mx.b.fr\r\nX: y")


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="must carry a time zone"):
        RecipientReport("a@b.fr", Action.FAILED, "5.0.0", last_attempt=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="must carry a time zone"):
        build([failed()], arrival_date=datetime(2026, 1, 1))


def test_no_dsn_to_the_null_sender() -> None:
    with pytest.raises(ValueError, match="no DSN is ever sent to the null sender"):
        build([failed()], envelope_sender="")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"recipients": []}, "a DSN reports on at least one recipient"),
        ({"reporting_mta": "mx a"}, "invalid reporting MTA name"),
        ({"envid": "a\r\nb"}, "ENVID must be printable US-ASCII"),
        ({"envelope_sender": "a@b.fr\r\nBcc: c@d"}, "invalid address"),
        ({"postmaster": "pm@a.fr>\r\nX: y"}, "invalid address"),
    ],
)
def test_bad_build_arguments_are_refused(kw: dict[str, object], message: str) -> None:
    recipients = kw.pop("recipients", [failed()])
    assert isinstance(recipients, list)
    with pytest.raises(ValueError, match=message):
        build(recipients, **kw)


# --- when to send one (RFC 3461 §4.1, §6.2) ---


@pytest.mark.parametrize(
    ("notify", "action", "wanted"),
    [
        (frozenset({Notify.SUCCESS}), Action.DELIVERED, True),
        (frozenset({Notify.SUCCESS}), Action.RELAYED, True),
        (frozenset({Notify.SUCCESS}), Action.EXPANDED, True),
        (frozenset({Notify.SUCCESS}), Action.FAILED, False),
        (frozenset({Notify.FAILURE}), Action.FAILED, True),
        (frozenset({Notify.FAILURE}), Action.DELAYED, False),
        (frozenset({Notify.DELAY}), Action.DELAYED, True),
        (frozenset(), Action.FAILED, False),
        (frozenset(), Action.DELIVERED, False),
        (None, Action.FAILED, True),
        (None, Action.DELAYED, True),
        (None, Action.DELIVERED, False),
    ],
)
def test_notify_decides_which_reports_are_sent(
    notify: frozenset[Notify] | None, action: Action, wanted: bool
) -> None:
    assert dsn_requested("alice@a.fr", notify, action) is wanted


def test_null_sender_never_gets_a_report() -> None:
    assert dsn_requested("", frozenset(Notify), Action.FAILED) is False


# --- robustness ---


@settings(max_examples=60, deadline=None)
@given(
    original=st.binary(max_size=3000),
    diagnostic=st.text(max_size=300),
    ret=st.sampled_from([None, Ret.FULL, Ret.HDRS]),
)
def test_any_original_and_diagnostic_yield_a_parseable_report(
    original: bytes, diagnostic: str, ret: Ret | None
) -> None:
    report = RecipientReport("bob@b.fr", Action.FAILED, "5.0.0", diagnostic=diagnostic)
    raw = build([report], original=original, ret=ret)
    msg = parse(raw)
    assert [p.get_content_type() for p in parts(msg)][:2] == [
        "text/plain",
        "message/delivery-status",
    ]
    assert b"\n" not in raw.replace(b"\r\n", b"")
    blocks = status_blocks(raw)
    assert len(blocks) == 2
    assert blocks[1]["Action"] == "failed"
