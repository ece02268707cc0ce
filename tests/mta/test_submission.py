"""Submission (587 STARTTLS, 465 implicit TLS): authentication, sending rights, routing of each
recipient (local, whitelisted, patient, outside the trust space), sizes. Real TLS, real clients:
Python's smtplib and Debian's swaks."""

from __future__ import annotations

import base64
import smtplib
import subprocess

import pytest

from mta.policy import PATIENT_MAX_BYTES
from store.model import QueueStatus
from tests.mta.conftest import (
    DOCTOR,
    OTHER,
    PASSWORD,
    REMOTE,
    SECRETARY,
    Mta,
    RawClient,
    in_thread,
    message,
)

PATIENT = "279035121518989@patient.mssante.fr"  # a valid INS (mssante-spec §4.4 example)


def login(mta: Mta, user: str = DOCTOR, password: str = PASSWORD) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=10)
    client.ehlo("poste-medecin")
    client.starttls(context=mta.client_context())
    client.ehlo("poste-medecin")
    client.login(user, password)
    return client


def submit(mta: Mta, sender: str, recipients: list[str], data: bytes, user: str = DOCTOR) -> dict:
    client = login(mta, user)
    try:
        return client.sendmail(sender, recipients, data)
    finally:
        client.quit()


async def test_local_recipient_is_delivered(users: Mta) -> None:
    mta = users
    refused = await in_thread(lambda: submit(mta, DOCTOR, [OTHER], message(DOCTOR, OTHER)))
    assert refused == {}
    (stored,) = await mta.inbox(OTHER)
    assert stored.endswith(message(DOCTOR, OTHER))
    assert b"with ESMTPSA id" in stored.replace(b"\r\n ", b" ")
    assert DOCTOR.encode() not in stored.split(b"\r\nFrom:")[0]  # the login is not disclosed


async def test_whitelisted_and_patient_recipients_are_queued(users: Mta) -> None:
    mta = users
    remote = f"dr.b@{REMOTE}"
    refused = await in_thread(
        lambda: submit(mta, DOCTOR, [remote, PATIENT, OTHER], message(DOCTOR, remote))
    )
    assert refused == {}
    (entry,) = await mta.store.list_queue(status=QueueStatus.QUEUED)
    assert entry.mail_from == DOCTOR
    assert sorted(r.address for r in entry.recipients) == sorted([remote, PATIENT])
    assert entry.sender_bal == DOCTOR
    assert len(await mta.inbox(OTHER)) == 1


async def test_dsn_parameters_are_kept_in_the_queue(users: Mta) -> None:
    mta = users
    remote = f"dr.b@{REMOTE}"

    def attempt() -> None:
        client = login(mta)
        try:
            client.mail(DOCTOR, ["RET=HDRS", "ENVID=lettre-42"])
            client.rcpt(remote, ["NOTIFY=SUCCESS,DELAY", f"ORCPT=rfc822;{remote}"])
            client.data(message(DOCTOR, remote))
        finally:
            client.quit()

    await in_thread(attempt)
    (entry,) = await mta.store.list_queue()
    assert entry.envid == "lettre-42"
    assert entry.ret == "HDRS"
    (recipient,) = entry.recipients
    assert recipient.notify == "SUCCESS,DELAY"
    assert recipient.orcpt == f"rfc822;{remote}"


async def test_domain_outside_the_trust_space_is_refused_at_rcpt(users: Mta) -> None:
    mta = users

    def attempt() -> tuple[int, bytes]:
        client = login(mta)
        try:
            client.mail(DOCTOR)
            return client.rcpt("quelqu.un@gmail.com")
        finally:
            client.quit()

    code, text = await in_thread(attempt)
    assert code == 550
    assert text.startswith(b"5.7.1 Recipient domain gmail.com is not in the MSSante trust space")
    assert b"domaine hors de l'espace de confiance MSSante" in text


@pytest.mark.parametrize(
    "address",
    [
        "279035121518988@patient.mssante.fr",  # wrong key
        "27903512151898@patient.mssante.fr",  # 14 digits
        "jean.martin@patient.mssante.fr",
    ],
)
async def test_patient_address_with_a_bad_ins_is_refused(users: Mta, address: str) -> None:
    mta = users

    def attempt() -> tuple[int, bytes]:
        client = login(mta)
        try:
            client.mail(DOCTOR)
            return client.rcpt(address)
        finally:
            client.quit()

    code, text = await in_thread(attempt)
    assert (code, text[:5]) == (550, b"5.1.3")
    assert b"INS" in text


async def test_26_mb_message_to_a_patient_is_refused(users: Mta) -> None:
    mta = users
    body = ("A" * 76 + "\r\n") * (26_000_000 // 78)
    data = message(DOCTOR, PATIENT, body=body)
    assert len(data) > PATIENT_MAX_BYTES

    def attempt() -> tuple[int, bytes]:
        client = login(mta)
        try:
            client.mail(DOCTOR)
            assert client.rcpt(PATIENT)[0] == 250
            code, text = client.data(data)
            return code, text
        finally:
            client.quit()

    code, text = await in_thread(attempt)
    assert code == 552
    assert b"Mon espace sante" in text
    assert await mta.store.list_queue() == []


async def test_declared_size_over_the_patient_limit_is_refused_at_rcpt(users: Mta) -> None:
    mta = users

    def attempt() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        client = login(mta)
        try:
            client.mail(DOCTOR, [f"SIZE={PATIENT_MAX_BYTES + 1}"])
            return client.rcpt(PATIENT), client.rcpt(OTHER)
        finally:
            client.quit()

    patient, colleague = await in_thread(attempt)
    assert patient[0] == 552
    assert colleague[0] == 250  # the limit is the patient's, not the listener's


async def test_sending_as_a_bal_one_is_not_delegated_on_is_refused(users: Mta) -> None:
    mta = users

    def attempt() -> tuple[int, bytes]:
        client = login(mta, SECRETARY)
        try:
            return client.mail(OTHER)
        finally:
            client.quit()

    code, text = await in_thread(attempt)
    assert (code, text[:5]) == (553, b"5.7.1")
    assert OTHER.encode() in text


async def test_delegate_with_send_right_may_send_as_the_bal(users: Mta) -> None:
    mta = users
    refused = await in_thread(
        lambda: submit(mta, DOCTOR, [OTHER], message(DOCTOR, OTHER), user=SECRETARY)
    )
    assert refused == {}
    assert len(await mta.inbox(OTHER)) == 1


async def test_from_header_of_someone_else_is_refused_after_data(users: Mta) -> None:
    mta = users

    def attempt() -> tuple[int, bytes]:
        client = login(mta)
        try:
            client.mail(DOCTOR)
            client.rcpt(OTHER)
            return client.data(message(OTHER, OTHER))
        finally:
            client.quit()

    code, text = await in_thread(attempt)
    assert (code, text[:5]) == (550, b"5.7.1")
    assert await mta.inbox(OTHER) == []


async def test_mail_without_auth_is_refused(users: Mta) -> None:
    mta = users

    def attempt() -> tuple[int, bytes]:
        client = smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=10)
        try:
            client.ehlo("x")
            client.starttls(context=mta.client_context())
            client.ehlo("x")
            return client.mail(DOCTOR)
        finally:
            client.quit()

    assert await in_thread(attempt) == (
        530,
        b"5.7.0 Authentication required / authentification requise",
    )


async def test_auth_is_not_offered_nor_accepted_before_tls(users: Mta) -> None:
    mta = users
    client = RawClient(mta.submission_port)
    try:
        await in_thread(client.reply)
        client.send(b"EHLO x\r\n")
        ehlo = await in_thread(client.reply)
        assert b"STARTTLS" in ehlo
        assert b"AUTH" not in ehlo
        plain = base64.b64encode(f"\0{DOCTOR}\0{PASSWORD}".encode())
        client.send(b"AUTH PLAIN " + plain + b"\r\n")
        assert (await in_thread(client.reply)).startswith(b"538 5.7.11")
    finally:
        client.close()


async def test_wrong_password_is_refused_then_the_connection_closed(users: Mta) -> None:
    mta = users

    def attempt() -> list[str]:
        client = smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=10)
        client.ehlo("x")
        client.starttls(context=mta.client_context())
        client.ehlo("x")
        client.user, client.password = DOCTOR, "mauvais"
        outcomes = []
        for _ in range(4):
            try:
                client.auth("PLAIN", client.auth_plain)
                outcomes.append("ok")
            except smtplib.SMTPAuthenticationError as exc:
                outcomes.append(str(exc.smtp_code))
            except smtplib.SMTPServerDisconnected:
                outcomes.append("closed")
                break
        return outcomes

    # Three failures (the limit): the third is answered, then 421 and the connection closed.
    outcomes = await in_thread(attempt)
    assert outcomes[:3] == ["535", "535", "535"]
    assert outcomes[3] in ("421", "closed")


async def test_auth_login_mechanism(users: Mta) -> None:
    mta = users

    def attempt() -> tuple[int, bytes]:
        client = smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=10)
        try:
            client.ehlo("x")
            client.starttls(context=mta.client_context())
            client.ehlo("x")
            client.user, client.password = DOCTOR, PASSWORD
            return client.auth("LOGIN", client.auth_login)
        finally:
            client.quit()

    code, _ = await in_thread(attempt)
    assert code == 235


async def test_implicit_tls_port(users: Mta) -> None:
    mta = users

    def attempt() -> dict:
        client = smtplib.SMTP_SSL(
            "127.0.0.1", mta.submission_tls_port, timeout=10, context=mta.client_context()
        )
        try:
            client.login(DOCTOR, PASSWORD)
            return client.sendmail(DOCTOR, [OTHER], message(DOCTOR, OTHER))
        finally:
            client.quit()

    assert await in_thread(attempt) == {}
    assert len(await mta.inbox(OTHER)) == 1


async def test_swaks_submits_with_starttls_and_auth(users: Mta) -> None:
    mta = users
    result = await in_thread(
        lambda: subprocess.run(
            [
                "swaks",
                "--server", "127.0.0.1",
                "--port", str(mta.submission_port),
                "--tls",
                "--auth", "PLAIN",
                "--auth-user", DOCTOR,
                "--auth-password", PASSWORD,
                "--from", DOCTOR,
                "--to", OTHER,
                "--header", "Subject: Test swaks",
                "--body", "Bonjour depuis swaks.",
                "--helo", "poste-medecin",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 OK queued as" in result.stdout
    (stored,) = await mta.inbox(OTHER)
    assert b"Subject: Test swaks" in stored


async def test_swaks_sending_as_someone_else_fails(users: Mta) -> None:
    mta = users
    result = await in_thread(
        lambda: subprocess.run(
            [
                "swaks", "--server", "127.0.0.1", "--port", str(mta.submission_port), "--tls",
                "--auth", "PLAIN", "--auth-user", SECRETARY, "--auth-password", PASSWORD,
                "--from", OTHER, "--to", DOCTOR, "--helo", "poste",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    )  # fmt: skip
    assert result.returncode != 0
    assert "553 5.7.1" in result.stdout
    assert await mta.inbox(DOCTOR) == []
