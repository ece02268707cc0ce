"""The inbound MX over real TLS (mssante-spec §2.2, §10.1): the ANS audit matrix, recipients,
DSN parameters, the trace header, limits."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from tests.mta.conftest import (
    DOCTOR,
    HOSTED,
    OTHER,
    REMOTE,
    Mta,
    RawClient,
    in_thread,
    message,
    smtp_session,
)

SENDER = f"dr.b@{REMOTE}"


def send_as_peer(
    mta: Mta, cert: str | None, sender: str, recipients: list[str], data: bytes, **kw: object
) -> dict[str, tuple[int, bytes]]:
    client = smtp_session(mta.mx_port, mta.peer_context(cert))
    try:
        return client.sendmail(sender, recipients, data, **kw)  # type: ignore[arg-type]
    finally:
        client.quit()


def mail_from_reply(mta: Mta, cert: str | None, sender: str) -> tuple[int, bytes]:
    client = smtp_session(mta.mx_port, mta.peer_context(cert))
    try:
        return client.mail(sender)
    finally:
        client.quit()


async def test_listed_peer_delivers_into_the_bal(mta: Mta) -> None:
    refused = await in_thread(
        lambda: send_as_peer(mta, "peer-valid", SENDER, [DOCTOR], message(SENDER, DOCTOR))
    )
    assert refused == {}
    inbox = await mta.inbox(DOCTOR)
    assert len(inbox) == 1
    assert inbox[0].endswith(message(SENDER, DOCTOR))


async def test_received_header_names_tls_and_the_peer_dn(mta: Mta) -> None:
    await in_thread(
        lambda: send_as_peer(mta, "peer-valid", SENDER, [DOCTOR], message(SENDER, DOCTOR))
    )
    (stored,) = await mta.inbox(DOCTOR)
    received = stored.split(b"\r\n\r\n", 1)[0].split(b"\r\nFrom:", 1)[0]
    unfolded = received.replace(b"\r\n ", b" ").decode()
    assert unfolded.startswith("Received: from mx.peer.test")
    assert "using TLSv1." in unfolded
    assert 'client DN "CN=cert-valide-audit.peer.test' in unfolded
    assert "with ESMTPS id" in unfolded
    assert f"for <{DOCTOR}>" in unfolded


@pytest.mark.parametrize(
    ("cert", "sender_domain", "code", "text"),
    [
        ("peer-expired", "cert-expire-audit.peer.test", 550, b"5.7.0 Client certificate expired"),
        ("peer-revoked", "cert-revoque-audit.peer.test", 550, b"5.7.0 Client certificate revoked"),
        (
            "peer-not-listed",
            "cert-no-match-audit.peer.test",
            550,
            b"5.7.1 Certificate DN not listed in the MSSante whitelist for domain "
            b"cert-no-match-audit.peer.test",
        ),
        (
            "peer-cn-diff",
            "autre-nom.peer.test",
            550,
            b"5.7.1 Client certificate CN differs from the DN listed",
        ),
        # A valid, listed certificate speaking for another operator's domain.
        (
            "peer-valid",
            "cert-no-match-audit.peer.test",
            550,
            b"5.7.1 Certificate DN not listed",
        ),
        (None, REMOTE, 550, b"5.7.0 No client certificate presented"),
    ],
)
async def test_audit_matrix_refused_at_mail_from(
    mta: Mta, cert: str | None, sender_domain: str, code: int, text: bytes
) -> None:
    got = await in_thread(lambda: mail_from_reply(mta, cert, f"postmaster@{sender_domain}"))
    assert got[0] == code
    assert got[1].startswith(text)
    assert await mta.inbox(DOCTOR) == []


async def test_non_igc_certificate_fails_the_handshake(mta: Mta) -> None:
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        await in_thread(
            lambda: send_as_peer(
                mta,
                "peer-non-igc",
                "a@cert-non-igc-audit.peer.test",
                [DOCTOR],
                b"Subject: x\r\n\r\nx\r\n",
            )
        )
    assert await mta.inbox(DOCTOR) == []
    await mta.audit.flush()
    records = await mta.store.tail_audit(limit=20)
    assert any(
        r.action == "mta.inbound" and r.detail and r.detail.get("stage") == "tls" for r in records
    )


async def test_mail_before_starttls_is_refused(mta: Mta) -> None:
    def attempt() -> tuple[int, bytes]:
        client = smtp_session(mta.mx_port, None, starttls=False)
        try:
            return client.mail(SENDER)
        finally:
            client.quit()

    code, text = await in_thread(attempt)
    assert (code, text) == (530, b"5.7.0 Must issue a STARTTLS command first")


async def test_null_sender_needs_a_listed_dn(mta: Mta) -> None:
    ok = await in_thread(lambda: mail_from_reply(mta, "peer-valid", ""))
    assert ok[0] == 250
    refused = await in_thread(lambda: mail_from_reply(mta, "peer-not-listed", ""))
    assert refused[0] == 550
    assert b"Null sender refused" in refused[1]


async def test_unknown_suspended_and_foreign_recipients_refused_at_rcpt(mta: Mta) -> None:
    from store.model import BalStatus

    await mta.store.set_bal_status(OTHER, BalStatus.SUSPENDED)

    def attempt() -> list[tuple[int, bytes]]:
        client = smtp_session(mta.mx_port, mta.peer_context("peer-valid"))
        try:
            client.mail(SENDER)
            return [
                client.rcpt(f"nobody@{HOSTED}"),
                client.rcpt(OTHER),
                client.rcpt("someone@gmail.com"),
                client.rcpt(DOCTOR.upper()),
            ]
        finally:
            client.quit()

    unknown, suspended, foreign, ok = await in_thread(attempt)
    assert unknown[0] == suspended[0] == 550
    assert unknown[1] == suspended[1]  # a suspended BAL cannot be told from an unknown one
    assert unknown[1].startswith(b"5.1.1")
    assert foreign[:2] == (550, foreign[1])
    assert foreign[1].startswith(b"5.7.1 Relay access denied")
    assert ok[0] == 250


async def test_dsn_parameters_are_accepted_and_success_is_reported(mta: Mta) -> None:
    def attempt() -> tuple[int, bytes]:
        client = smtp_session(mta.mx_port, mta.peer_context("peer-valid"))
        try:
            assert client.has_extn("dsn")
            code, _ = client.mail(SENDER, ["RET=HDRS", "ENVID=env+2B42"])
            assert code == 250
            code, _ = client.rcpt(DOCTOR, ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{DOCTOR}"])
            assert code == 250
            return client.data(message(SENDER, DOCTOR))
        finally:
            client.quit()

    code, text = await in_thread(attempt)
    assert code == 250
    assert text.startswith(b"2.0.0 OK queued as ")
    assert len(await mta.inbox(DOCTOR)) == 1


async def test_ehlo_advertises_the_extensions(mta: Mta) -> None:
    def attempt() -> tuple[str, str]:
        client = smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=10)
        try:
            client.ehlo("mx.peer.test")
            before = client.ehlo_resp.decode()
            client.starttls(context=mta.peer_context("peer-valid"))
            client.ehlo("mx.peer.test")
            return before, client.ehlo_resp.decode()
        finally:
            client.quit()

    before, after = await in_thread(attempt)
    for keyword in ("PIPELINING", "SIZE 30000000", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN"):
        assert keyword in before
        assert keyword in after
    assert "STARTTLS" in before
    assert "STARTTLS" not in after
    assert "AUTH" not in after  # no AUTH on the MX


async def test_declared_size_over_the_limit_is_refused_at_mail(mta: Mta) -> None:
    def attempt() -> tuple[int, bytes]:
        client = smtp_session(mta.mx_port, mta.peer_context("peer-valid"))
        try:
            return client.mail(SENDER, ["SIZE=30000001"])
        finally:
            client.quit()

    code, text = await in_thread(attempt)
    assert code == 552
    assert text.startswith(b"5.3.4")


async def test_too_many_recipients(mta: Mta) -> None:
    from mta.smtpd import Limits

    mta.mx.limits = Limits(max_recipients=2, timeout=10)

    def attempt() -> list[int]:
        client = smtp_session(mta.mx_port, mta.peer_context("peer-valid"))
        try:
            client.mail(SENDER)
            return [client.rcpt(DOCTOR)[0] for _ in range(3)]
        finally:
            client.quit()

    assert await in_thread(attempt) == [250, 250, 452]


async def test_connections_per_ip_are_limited(mta: Mta) -> None:
    from mta.smtpd import ConnectionBudget, Limits

    mta.mx.limits = Limits(max_connections_per_ip=2, timeout=10)
    mta.mx.budget = ConnectionBudget(mta.mx.limits)
    first, second = RawClient(mta.mx_port), RawClient(mta.mx_port)
    try:
        assert (await in_thread(first.reply)).startswith(b"220 ")
        assert (await in_thread(second.reply)).startswith(b"220 ")
        third = RawClient(mta.mx_port)
        try:
            assert (await in_thread(third.reply)).startswith(b"421 4.7.0 Too many connections")
            assert await in_thread(third.closed)
        finally:
            third.close()
    finally:
        first.close()
        second.close()


async def test_errors_per_session_are_limited(mta: Mta) -> None:
    from mta.smtpd import Limits

    mta.mx.limits = Limits(max_errors=3, timeout=10)
    client = RawClient(mta.mx_port)
    try:
        await in_thread(client.reply)
        replies = []
        for _ in range(3):
            client.send(b"BOGUS\r\n")
            replies.append(await in_thread(client.reply))
        assert replies[0].startswith(b"500 5.5.2")
        assert b"421 4.7.0 Too many errors" in replies[2] or (
            b"421 4.7.0" in await in_thread(client.reply)
        )
        assert await in_thread(client.closed)
    finally:
        client.close()


async def test_overlong_command_line_is_refused(mta: Mta) -> None:
    client = RawClient(mta.mx_port)
    try:
        await in_thread(client.reply)
        client.send(b"EHLO " + b"a" * 5000 + b"\r\n")
        assert (await in_thread(client.reply)).startswith(b"500 5.5.2 Error: line too long")
        client.send(b"NOOP\r\n")
        assert (await in_thread(client.reply)).startswith(b"250 2.0.0")
    finally:
        client.close()


async def test_vrfy_does_not_reveal_mailboxes(mta: Mta) -> None:
    client = RawClient(mta.mx_port)
    try:
        await in_thread(client.reply)
        client.send(f"VRFY {DOCTOR}\r\n".encode())
        assert (await in_thread(client.reply)).startswith(b"502 5.5.1")
    finally:
        client.close()


async def test_several_recipients_get_one_copy_each(mta: Mta) -> None:
    from tests.mta.conftest import SECRETARY

    refused = await in_thread(
        lambda: send_as_peer(
            mta, "peer-valid", SENDER, [DOCTOR, SECRETARY], message(SENDER, DOCTOR)
        )
    )
    assert refused == {}
    assert len(await mta.inbox(DOCTOR)) == 1
    assert len(await mta.inbox(SECRETARY)) == 1


async def test_large_message_is_streamed_and_stored_whole(mta: Mta) -> None:
    body = ("x" * 76 + "\r\n") * 40_000  # 3.1 MB: beyond the in-memory threshold
    data = message(SENDER, DOCTOR, body=body)
    await in_thread(lambda: send_as_peer(mta, "peer-valid", SENDER, [DOCTOR], data))
    (stored,) = await mta.inbox(DOCTOR)
    assert stored.endswith(data)


async def test_accepted_exchanges_are_audited_without_body(mta: Mta) -> None:
    await in_thread(
        lambda: send_as_peer(
            mta,
            "peer-valid",
            SENDER,
            [DOCTOR],
            message(SENDER, DOCTOR, body="secret clinique").replace(
                b"Subject:", b"X-MSS-NIL: LPS-TEST-1.0\r\nX-MSS-INS: O\r\nSubject:"
            ),
        )
    )
    await mta.audit.flush()
    records = [r for r in await mta.store.tail_audit(limit=20) if r.action == "mta.inbound"]
    accepted = [r for r in records if r.result == "accepted"]
    assert len(accepted) == 1
    detail = accepted[0].detail or {}
    assert detail["peer_dn"].startswith("CN=cert-valide-audit.peer.test")
    assert detail["mss"] == {"X-MSS-NIL": "LPS-TEST-1.0", "X-MSS-INS": "O"}
    assert "secret" not in repr(accepted[0])
