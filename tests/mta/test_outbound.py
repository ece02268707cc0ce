"""The outbound queue runner against a real peer MTA (aiosmtpd over real TLS on 127.0.0.1): the
ANS audit matrix outbound (bad certificates and no STARTTLS: nothing handed over, QUIT before
MAIL, a DSN that says why), DSN parameters relayed, retries with backoff and expiry, partial
outcomes, the single delay warning, no bounce to the null sender, and claims."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from directory.whitelist import Whitelist, parse_whitelist
from mta.dsn_params import format_envid
from mta.outbound import BUSY_RETRY, DotStuffer, QueueRunner
from mta.policy import PATIENT_DOMAIN
from mta.reports import ReportSender
from mta.routes import ConnectionLimits, parse_routes
from mta.schedule import RetryPolicy
from pki.crl import CrlCache
from pki.testpki import TestPki
from pki.tls import outbound_context
from pki.verify import TrustStore, Verdict, Verifier
from store import BalStatus, Store
from store.model import QueueStatus, Recipient
from store.schema import outbound_queue
from tests.directory import whitelist_gen as gen
from tests.mta.peers import (
    DataAnswered250SMTP,
    EarlyRejectSMTP,
    GarbageServer,
    PeerHandler,
    free_port,
    peer_tls_context,
    running_peer,
)

AUDIT = "espacedeconfiance.mssante.fr"
VALID = f"cert-valide-audit.{AUDIT}"
EXPIRED = f"cert-expire-audit.{AUDIT}"
REVOKED = f"cert-revoque-audit.{AUDIT}"
NON_IGC = f"cert-non-igc-audit.{AUDIT}"
NOT_LISTED = f"cert-no-match-audit.{AUDIT}"
CN_DIFF = f"cert-cn-diff-dn-audit.{AUDIT}"
SANS_TLS = f"sans-tls-audit.{AUDIT}"
REMOTE_SENDER_DOMAIN = "clinique-distante.mssante.fr"
HOSTNAME = "mx.colombe.test"


def listed_dn(fqdn: str, organisation: str = "GIP COLOMBE TEST") -> str:
    # As the whitelist writes it: ", " separators, most specific first.
    return f"CN={fqdn}, OU=0002 123456789, O={organisation}, ST=Rhône (69), C=FR"


@pytest.fixture(scope="module")
def whitelist() -> Whitelist:
    entries = [
        (VALID, listed_dn("cert-valide-audit.peer.test")),
        (EXPIRED, listed_dn("cert-expire-audit.peer.test")),
        (REVOKED, listed_dn("cert-revoque-audit.peer.test")),
        (NON_IGC, listed_dn("cert-non-igc-audit.peer.test")),
        (NOT_LISTED, listed_dn("un-autre-mta.peer.test", "AUTRE TEST")),
        (CN_DIFF, listed_dn("cert-cn-diff-dn-audit.peer.test")),
        (SANS_TLS, listed_dn("cert-valide-audit.peer.test")),
        (REMOTE_SENDER_DOMAIN, listed_dn("mx.clinique-distante.peer.test")),
        (PATIENT_DOMAIN, listed_dn("cert-valide-audit.peer.test")),
    ]
    xml = gen.document([gen.entry_xml(d, dn) for d, dn in entries])
    return parse_whitelist(xml, min_entries=1)


@pytest.fixture
def client_context(test_pki: TestPki, trust_file: Path) -> ssl.SSLContext:
    operator = test_pki.certs["operator"]
    return outbound_context(operator.chain_path, operator.key_path, trust_file)


@pytest.fixture
def verifier(test_pki: TestPki) -> Verifier:
    return Verifier(TrustStore(test_pki.igc_roots(), test_pki.igc_intermediates()), CrlCache())


@dataclass
class Env:
    store: Store
    doctor: str
    whitelist: Whitelist
    client_context: ssl.SSLContext
    verifier: Verifier

    def runner(
        self,
        routes: dict[str, int | str],
        policy: RetryPolicy | None = None,
        *,
        verifier: Verifier | None = None,
        **kwargs: object,
    ) -> QueueRunner:
        """A runner whose static routes send each domain to 127.0.0.1:port (or to the route's
        right-hand side when given as a string)."""
        table = parse_routes(
            [
                f"{d} = {to}" if isinstance(to, str) else f"{d} = 127.0.0.1:{to}"
                for d, to in routes.items()
            ]
        )
        return QueueRunner(
            store=self.store,
            hostname=HOSTNAME,
            tls_context=self.client_context,
            verifier=verifier or self.verifier,
            whitelist=self.whitelist,
            policy=policy or RetryPolicy(),
            routes=table,
            connect_timeout=5,
            command_timeout=10,
            **kwargs,  # type: ignore[arg-type]
        )

    async def inbox(self) -> list[bytes]:
        folder = await self.store.get_folder(self.doctor, "INBOX")
        return [await self.store.read_message(m) for m in await self.store.list_messages(folder.id)]


@pytest.fixture
def env(
    store: Store,
    doctor: str,
    whitelist: Whitelist,
    client_context: ssl.SSLContext,
    verifier: Verifier,
) -> Env:
    return Env(store, doctor, whitelist, client_context, verifier)


@pytest.fixture
def peer_handler() -> PeerHandler:
    return PeerHandler()


@pytest.fixture
def valid_peer(test_pki: TestPki, trust_file: Path, peer_handler: PeerHandler) -> Iterator[int]:
    with running_peer(peer_handler, peer_tls_context(test_pki, "peer-valid", trust_file)) as port:
        yield port


MESSAGE = (
    b"From: Dr Jean Dupont <jean.dupont@hopital-test.mssante.fr>\r\n"
    b"To: <a@cert-valide-audit.espacedeconfiance.mssante.fr>\r\n"
    b"Subject: Compte rendu\r\n"
    b"Message-ID: <1.test@hopital-test.mssante.fr>\r\n"
    b"\r\n"
    b"Bonjour,\r\n"
    b".une ligne qui commence par un point\r\n"
    b".\r\n"
    b"Fin.\r\n"
)


async def age(store: Store, entry_id: int, *, seconds: float) -> None:
    """Pretend the entry was queued ``seconds`` ago, and make it due now."""
    now = datetime.now(UTC)
    async with store.db.writer.begin() as conn:
        await conn.execute(
            update(outbound_queue)
            .where(outbound_queue.c.id == entry_id)
            .values(created_at=now - timedelta(seconds=seconds), next_attempt_at=now)
        )


# -- delivery -----------------------------------------------------------------------------------


async def test_message_is_delivered_over_tls_with_the_dsn_parameters_relayed(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    a, b = f"a@{VALID}", f"b@{VALID}"
    entry = await env.store.enqueue(
        env.doctor,
        [
            Recipient(a, notify="SUCCESS,FAILURE", orcpt=f"rfc822;{a}"),
            Recipient(b, notify="NEVER"),
        ],
        MESSAGE,
        sender_bal=env.doctor,
        envid="QUEUE+2D42",
        ret="HDRS",
    )
    assert await env.runner({VALID: valid_peer}).run_once() == 1

    done = await env.store.get_queue_entry(entry.id)
    assert done.status is QueueStatus.DONE
    assert [m.rcpt_tos for m in peer_handler.messages] == [[a, b]]
    # Line endings and dot-stuffing undone by the peer: the very octets we queued.
    assert peer_handler.messages[0].content == MESSAGE
    (mail,) = peer_handler.saw("MAIL")
    assert "RET=HDRS" in mail
    assert "ENVID=QUEUE+2D42" in mail
    assert f"SIZE={len(MESSAGE)}" in mail
    rcpts = peer_handler.saw("RCPT")
    assert f"NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;{a}" in rcpts[0]
    assert "NOTIFY=NEVER" in rcpts[1]
    assert peer_handler.commands.index("STARTTLS") < peer_handler.commands.index(mail)
    # The peer offers DSN: it reports the delivery itself, not us.
    assert await env.inbox() == []
    (record,) = [r for r in await env.store.tail_audit() if r.action == "mta.outbound"]
    assert record.result == "delivered"
    assert record.bal == env.doctor
    assert record.detail is not None
    assert "CN=cert-valide-audit.peer.test" in record.detail["peer_dn"]
    assert record.detail["tls"] in ("TLSv1.2", "TLSv1.3")


async def test_success_notice_is_relayed_when_the_peer_does_not_offer_dsn(
    env: Env, test_pki: TestPki, trust_file: Path
) -> None:
    handler = PeerHandler(dsn=False)
    ctx = peer_tls_context(test_pki, "peer-valid", trust_file)
    with running_peer(handler, ctx) as port:
        await env.store.enqueue(
            env.doctor,
            [Recipient(f"a@{VALID}", notify="SUCCESS")],
            MESSAGE,
            envid="E1",
            ret="FULL",
        )
        await env.runner({VALID: port}).run_once()
    (mail,) = handler.saw("MAIL")
    assert "RET=" not in mail
    assert "ENVID=" not in mail
    assert "NOTIFY=" not in handler.saw("RCPT")[0]
    (report,) = await env.inbox()
    assert b"Action: relayed" in report
    assert b"Original-Envelope-Id: E1" in report
    assert f"Final-Recipient: rfc822; a@{VALID}".encode() in report


async def test_large_8bit_message_is_streamed_intact(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    # Lines starting with "." fall on every offset of the blob's read chunks.
    body = b"".join(b".ligne %d \xc3\xa9t\xc3\xa9\r\n" % i for i in range(150_000))
    message = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + body
    assert len(message) > 3_000_000
    entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], message)
    await env.runner({VALID: valid_peer}).run_once()
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.DONE
    (received,) = peer_handler.messages
    assert received.content == message
    (mail,) = peer_handler.saw("MAIL")
    assert "BODY=8BITMIME" in mail


async def test_audit_records_never_hold_a_patient_ins(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    ins = "146026322000196"
    patient = f"{ins}@{PATIENT_DOMAIN}"
    peer_handler.rcpt_replies[patient] = [f"550 5.1.1 <{patient}> unknown"]
    await env.store.enqueue(env.doctor, [Recipient(patient)], MESSAGE, sender_bal=env.doctor)
    await env.runner({PATIENT_DOMAIN: valid_peer}).run_once()
    records = [r for r in await env.store.tail_audit() if r.action == "mta.outbound"]
    assert [r.result for r in records] == ["failed"]
    assert ins not in repr(records)
    assert records[0].detail is not None
    assert records[0].detail["recipients"] == {f"***@{PATIENT_DOMAIN}": "5.1.1"}


# -- the audit matrix, outbound ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cert", "domain", "status", "why", "handshake_ok"),
    [
        ("peer-expired", EXPIRED, "5.7.0", "server certificate expired", False),
        ("peer-non-igc", NON_IGC, "5.7.0", "server certificate not issued by IGC-Sante", False),
        ("peer-revoked", REVOKED, "5.7.0", "server certificate revoked", True),
        (
            "peer-not-listed",
            NOT_LISTED,
            "5.7.1",
            f"server certificate DN not listed in the MSSante whitelist for domain {NOT_LISTED}",
            True,
        ),
        (
            "peer-cn-diff",
            CN_DIFF,
            "5.7.1",
            "server certificate CN differs from the DN listed in the MSSante whitelist",
            True,
        ),
        (None, SANS_TLS, "5.7.10", "STARTTLS not offered", True),
    ],
)
async def test_refused_peer_gets_nothing_and_the_sender_is_told_why(
    env: Env,
    test_pki: TestPki,
    trust_file: Path,
    cert: str | None,
    domain: str,
    status: str,
    why: str,
    handshake_ok: bool,
) -> None:
    handler = PeerHandler()
    ctx = peer_tls_context(test_pki, cert, trust_file) if cert else None
    with running_peer(handler, ctx) as port:
        entry = await env.store.enqueue(
            env.doctor, [Recipient(f"x@{domain}")], MESSAGE, sender_bal=env.doctor
        )
        assert await env.runner({domain: port}).run_once() == 1

    assert handler.saw("MAIL") == []
    assert handler.messages == []
    if handshake_ok:  # a TLS session (or a clear one) we could close politely
        assert handler.commands[-1] == "QUIT"
    failed = await env.store.get_queue_entry(entry.id)
    assert failed.status is QueueStatus.FAILED
    assert failed.last_error is not None
    assert why in failed.last_error
    (report,) = await env.inbox()
    assert f"Status: {status}".encode() in report
    assert why.encode() in report
    assert b"Action: failed" in report
    (record,) = [r for r in await env.store.tail_audit() if r.action == "mta.outbound"]
    assert record.result == "refused"


# -- retries ------------------------------------------------------------------------------------


async def test_peer_down_is_retried_with_backoff_then_bounced_when_the_lifetime_ends(
    env: Env,
) -> None:
    policy = RetryPolicy(
        minimal_backoff=timedelta(seconds=100),
        maximal_backoff=timedelta(seconds=400),
        lifetime=timedelta(hours=1),
        delay_warning=None,
    )
    runner = env.runner({VALID: free_port()}, policy)  # nobody listens there
    entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)

    delays = []
    for attempt in (1, 2, 3):
        before = datetime.now(UTC)
        assert await runner.run_once() == 1
        deferred = await env.store.get_queue_entry(entry.id)
        assert deferred.status is QueueStatus.QUEUED
        assert deferred.attempts == attempt
        assert deferred.last_error is not None
        assert "connection refused" in deferred.last_error
        delays.append(round((deferred.next_attempt_at - before).total_seconds(), -2))
        await env.store.retry_queue_entry(entry.id)
    assert delays == [100, 200, 400]
    assert await env.inbox() == []

    await age(env.store, entry.id, seconds=3601)
    assert await runner.run_once() == 1
    failed = await env.store.get_queue_entry(entry.id)
    assert failed.status is QueueStatus.FAILED
    (report,) = await env.inbox()
    assert b"Status: 5.4.7" in report
    assert b"delivery time expired: connection refused by" in report


async def test_transient_refusal_is_retried_and_then_delivered(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    a = f"a@{VALID}"
    peer_handler.rcpt_replies[a] = ["451 4.3.0 Try again later"]
    runner = env.runner({VALID: valid_peer})
    entry = await env.store.enqueue(env.doctor, [Recipient(a)], MESSAGE)

    await runner.run_once()
    deferred = await env.store.get_queue_entry(entry.id)
    assert deferred.status is QueueStatus.QUEUED
    assert deferred.last_error == "451 4.3.0 Try again later"
    assert peer_handler.messages == []

    await env.store.retry_queue_entry(entry.id)
    await runner.run_once()
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.DONE
    assert [m.rcpt_tos for m in peer_handler.messages] == [[a]]
    assert await env.inbox() == []


async def test_partial_outcome_keeps_only_the_recipients_still_to_deliver(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    refused, accepted, later = f"refused@{VALID}", f"accepted@{VALID}", f"later@{VALID}"
    peer_handler.rcpt_replies[refused] = ["550 5.1.1 No such user"]
    peer_handler.rcpt_replies[later] = ["452 4.2.2 Mailbox full"]
    runner = env.runner({VALID: valid_peer})
    entry = await env.store.enqueue(
        env.doctor,
        [Recipient(refused, orcpt=f"rfc822;{refused}"), Recipient(accepted), Recipient(later)],
        MESSAGE,
    )

    await runner.run_once()
    deferred = await env.store.get_queue_entry(entry.id)
    assert deferred.status is QueueStatus.QUEUED
    assert [r.address for r in deferred.recipients] == [later]
    assert [m.rcpt_tos for m in peer_handler.messages] == [[accepted]]
    (report,) = await env.inbox()
    assert b"Status: 5.1.1" in report
    assert f"Final-Recipient: rfc822; {refused}".encode() in report
    assert f"Original-Recipient: rfc822;{refused}".encode() in report
    # Only the failed recipient is reported: the others were delivered or are still trying.
    assert report.count(b"Final-Recipient:") == 1

    await env.store.retry_queue_entry(entry.id)
    await runner.run_once()
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.DONE
    # The accepted recipient is never sent the message twice.
    assert [m.rcpt_tos for m in peer_handler.messages] == [[accepted], [later]]


async def test_delay_warning_is_sent_once(env: Env) -> None:
    policy = RetryPolicy(
        minimal_backoff=timedelta(seconds=60),
        delay_warning=timedelta(milliseconds=1),
    )
    runner = env.runner({VALID: free_port()}, policy)
    entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
    await asyncio.sleep(0.01)

    await runner.run_once()
    (warning,) = await env.inbox()
    assert b"Action: delayed" in warning
    assert b"Will-Retry-Until:" in warning
    assert (await env.store.get_queue_entry(entry.id)).delay_warned

    await env.store.retry_queue_entry(entry.id)
    await runner.run_once()
    assert len(await env.inbox()) == 1
    assert (await env.store.get_queue_entry(entry.id)).attempts == 2


async def test_delay_warning_respects_notify(env: Env) -> None:
    policy = RetryPolicy(delay_warning=timedelta(milliseconds=1))
    runner = env.runner({VALID: free_port()}, policy)
    entry = await env.store.enqueue(
        env.doctor, [Recipient(f"a@{VALID}", notify="FAILURE")], MESSAGE
    )
    await asyncio.sleep(0.01)
    await runner.run_once()
    assert await env.inbox() == []
    assert (await env.store.get_queue_entry(entry.id)).delay_warned


async def test_null_sender_entry_never_bounces(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    peer_handler.rcpt_replies[f"a@{VALID}"] = ["550 5.1.1 No such user"]
    entry = await env.store.enqueue("", [Recipient(f"a@{VALID}")], MESSAGE)
    await env.runner({VALID: valid_peer}).run_once()
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.FAILED
    assert await env.inbox() == []
    assert [e.id for e in await env.store.list_queue()] == [entry.id]
    (mail,) = peer_handler.saw("MAIL")
    assert mail.startswith("MAIL FROM:<>")


async def test_unknown_revocation_status_is_our_outage_retried_never_delivered(
    env: Env, test_pki: TestPki, valid_peer: int, peer_handler: PeerHandler
) -> None:
    async def crl_server_down(url: str) -> bytes:
        raise OSError("CRL server unreachable")

    verifier = Verifier(
        TrustStore(test_pki.igc_roots(), test_pki.igc_intermediates()),
        CrlCache(fetch=crl_server_down),
    )
    entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
    await env.runner({VALID: valid_peer}, verifier=verifier).run_once()
    deferred = await env.store.get_queue_entry(entry.id)
    assert deferred.status is QueueStatus.QUEUED
    assert deferred.last_error is not None
    assert "cannot check the server certificate's revocation" in deferred.last_error
    assert peer_handler.saw("MAIL") == []
    assert peer_handler.commands[-1] == "QUIT"
    assert await env.inbox() == []


# -- targets: static routes and MX ----------------------------------------------------------------


async def test_next_target_is_tried_when_the_first_is_down(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    down = free_port()
    route = f"127.0.0.1:{down}, 127.0.0.1:{valid_peer}"
    entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
    await env.runner({VALID: route}).run_once()
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.DONE
    assert len(peer_handler.messages) == 1
    outbound = [r for r in await env.store.tail_audit() if r.action == "mta.outbound"]
    assert [r.result for r in outbound] == ["deferred", "delivered"]


async def test_mx_records_give_the_targets(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    asked: list[str] = []

    async def resolver(domain: str) -> list[tuple[int, str]]:
        asked.append(domain)
        return [(10, "127.0.0.1")]

    entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
    await env.runner({}, resolver=resolver, port=valid_peer).run_once()
    assert asked == [VALID]
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.DONE
    assert len(peer_handler.messages) == 1


async def test_temporary_dns_failure_is_retried_and_null_mx_fails(env: Env) -> None:
    from mta.outbound import DnsTemporaryError

    async def resolver(domain: str) -> list[tuple[int, str]]:
        if domain == VALID:
            raise DnsTemporaryError("SERVFAIL")
        return [(0, ".")]

    retried = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
    failed = await env.store.enqueue(env.doctor, [Recipient(f"b@{REVOKED}")], MESSAGE)
    await env.runner({}, resolver=resolver).run_once()
    entry = await env.store.get_queue_entry(retried.id)
    assert entry.status is QueueStatus.QUEUED
    assert entry.last_error is not None
    assert entry.last_error.startswith("temporary DNS failure looking up")
    assert (await env.store.get_queue_entry(failed.id)).status is QueueStatus.FAILED
    (report,) = await env.inbox()
    assert b"Status: 5.1.10" in report


# -- claims and the background loop -------------------------------------------------------------


async def test_two_runners_never_deliver_the_same_entry_twice(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    ids = {
        (await env.store.enqueue(env.doctor, [Recipient(f"n{i}@{VALID}")], MESSAGE)).id
        for i in range(6)
    }
    one = env.runner({VALID: valid_peer}, workers=2)
    two = env.runner({VALID: valid_peer}, workers=2)
    assert one.worker != two.worker
    handled = await asyncio.gather(one.run_once(), two.run_once())
    assert sum(handled) == 6
    assert sorted(m.rcpt_tos[0] for m in peer_handler.messages) == sorted(
        f"n{i}@{VALID}" for i in range(6)
    )
    assert {e.id for e in await env.store.list_queue(status=QueueStatus.DONE)} == ids


async def test_started_runner_delivers_when_notified_and_stops_cleanly(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    runner = env.runner({VALID: valid_peer}, poll_interval=3600)
    await runner.start()
    try:
        await asyncio.sleep(0.05)  # the first (empty) claim is done: now it waits
        entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
        runner.notify()
        for _ in range(200):
            if (await env.store.get_queue_entry(entry.id)).status is QueueStatus.DONE:
                break
            await asyncio.sleep(0.05)
    finally:
        await asyncio.wait_for(runner.stop(), 10)
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.DONE
    assert len(peer_handler.messages) == 1


# -- reports ------------------------------------------------------------------------------------


async def test_report_to_a_remote_whitelisted_sender_is_queued_with_the_null_sender(
    env: Env,
) -> None:
    woken: list[bool] = []

    class Runner:
        def notify(self) -> None:
            woken.append(True)

    sender = ReportSender(env.store, hostname=HOSTNAME, whitelist=env.whitelist)
    sender.attach(Runner())
    await sender.send(f"dr.x@{REMOTE_SENDER_DOMAIN}", b"Subject: report\r\n\r\nx\r\n")
    (queued,) = await env.store.list_queue()
    assert queued.mail_from == ""
    assert [r.address for r in queued.recipients] == [f"dr.x@{REMOTE_SENDER_DOMAIN}"]
    assert woken == [True]


async def test_report_outside_the_trust_space_or_to_a_closed_bal_is_dropped(env: Env) -> None:
    sender = ReportSender(env.store, hostname=HOSTNAME, whitelist=env.whitelist)
    await sender.send("someone@gmail.com", b"Subject: report\r\n\r\nx\r\n")
    await env.store.set_bal_status(env.doctor, BalStatus.CLOSED)
    await sender.send(env.doctor, b"Subject: report\r\n\r\nx\r\n")
    assert await env.store.list_queue() == []
    records = [r for r in await env.store.tail_audit() if r.action == "mta.report"]
    assert [r.result for r in records] == ["dropped", "dropped"]


# -- DATA transparency ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_dot_stuffing_and_line_endings_survive_any_chunking(size: int) -> None:
    message = b".a\r\nb\n.c\r.d\r\n\r\n..e\r\nno final newline"
    stuffer = DotStuffer()
    out = b"".join(stuffer.feed(message[i : i + size]) for i in range(0, len(message), size))
    out += stuffer.end()
    assert out == b"..a\r\nb\r\n..c\r\n..d\r\n\r\n...e\r\nno final newline\r\n.\r\n"


def test_dot_stuffing_of_an_empty_message() -> None:
    assert DotStuffer().end() == b".\r\n"


# -- broken and hostile peers (review findings) -------------------------------------------------

INS = "146026322000196"


@pytest.mark.parametrize(
    "greeting", [b"999 hello\r\n", b"HTTP/1.1 400 Bad Request\r\n", b"-12 x\r\n", b"\x00\xff\r\n"]
)
async def test_garbage_greeting_on_the_primary_mx_hands_over_to_the_next_one(
    env: Env, valid_peer: int, peer_handler: PeerHandler, greeting: bytes
) -> None:
    with GarbageServer(greeting) as bad:
        runner = env.runner({VALID: f"127.0.0.1:{bad.port}, 127.0.0.1:{valid_peer}"})
        entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
        assert await runner.run_once() == 1
    assert bad.connections == 1
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.DONE
    assert [m.rcpt_tos for m in peer_handler.messages] == [[f"a@{VALID}"]]
    results = [r.result for r in await env.store.tail_audit() if r.action == "mta.outbound"]
    assert sorted(results) == ["deferred", "delivered"]


async def test_garbage_peer_is_retried_on_schedule_then_bounced(env: Env) -> None:
    policy = RetryPolicy(
        minimal_backoff=timedelta(seconds=100), lifetime=timedelta(hours=1), delay_warning=None
    )
    with GarbageServer(b"999 hello\r\n") as bad:
        runner = env.runner({VALID: f"127.0.0.1:{bad.port}"}, policy)
        entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
        before = datetime.now(UTC)
        await runner.run_once()
        deferred = await env.store.get_queue_entry(entry.id)
        assert deferred.status is QueueStatus.QUEUED
        assert deferred.attempts == 1
        assert deferred.last_error is not None
        assert "unexpected reply: 999" in deferred.last_error
        assert round((deferred.next_attempt_at - before).total_seconds(), -2) == 100

        await age(env.store, entry.id, seconds=3601)  # the lifetime is over
        await runner.run_once()
    failed = await env.store.get_queue_entry(entry.id)
    assert failed.status is QueueStatus.FAILED
    (report,) = await env.inbox()
    assert b"Status: 5.4.7" in report


class _FlakyVerifier(Verifier):
    """Raises on its first ``fail`` calls (a bug, a parser choking on a hostile certificate)."""

    def __init__(self, inner: Verifier, fail: int) -> None:
        self.inner, self.fail = inner, fail

    async def verify(self, leaf: object, presented: object = (), **kw: object) -> Verdict:
        if self.fail:
            self.fail -= 1
            raise RuntimeError(f"boom <{INS}@{PATIENT_DOMAIN}>")
        return await self.inner.verify(leaf, presented, **kw)  # type: ignore[arg-type]


async def test_exception_checking_a_peer_fails_that_target_only_and_closed(
    env: Env, valid_peer: int, peer_handler: PeerHandler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mta")
    # Twice the same peer: the first check raises, nothing is handed over on that session.
    routes = {VALID: f"127.0.0.1:{valid_peer}, [127.0.0.1]:{valid_peer}"}
    runner = env.runner(routes, verifier=_FlakyVerifier(env.verifier, 1))
    entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
    await runner.run_once()
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.DONE
    assert len(peer_handler.saw("MAIL")) == 1  # the second session only
    assert len(peer_handler.saw("STARTTLS")) == 2
    assert INS not in caplog.text

    # Always raising: deferred, never delivered, never wedged.
    peer_handler.commands.clear()
    runner = env.runner({VALID: valid_peer}, verifier=_FlakyVerifier(env.verifier, 99))
    entry = await env.store.enqueue(env.doctor, [Recipient(f"b@{VALID}")], MESSAGE)
    await runner.run_once()
    deferred = await env.store.get_queue_entry(entry.id)
    assert deferred.status is QueueStatus.QUEUED
    assert deferred.attempts == 1
    assert peer_handler.saw("MAIL") == []
    assert INS not in caplog.text


async def test_internal_error_follows_the_retry_policy_and_expires(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = RetryPolicy(
        minimal_backoff=timedelta(seconds=100), lifetime=timedelta(hours=1), delay_warning=None
    )
    runner = env.runner({VALID: free_port()}, policy)

    async def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(runner, "_deliver_domain", broken)
    entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
    await runner.run_once()
    deferred = await env.store.get_queue_entry(entry.id)
    assert deferred.status is QueueStatus.QUEUED
    assert deferred.last_error == "internal error in the queue runner"

    await age(env.store, entry.id, seconds=3601)
    await runner.run_once()
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.FAILED
    (report,) = await env.inbox()
    assert b"Status: 5.4.7" in report


async def test_data_answered_with_250_instead_of_354_is_not_a_delivery(
    env: Env, test_pki: TestPki, trust_file: Path
) -> None:
    handler = PeerHandler()
    ctx = peer_tls_context(test_pki, "peer-valid", trust_file)
    with running_peer(handler, ctx, DataAnswered250SMTP) as port:
        entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
        await env.runner({VALID: port}).run_once()
    assert handler.saw("DATA") == ["DATA"]
    deferred = await env.store.get_queue_entry(entry.id)
    assert deferred.status is QueueStatus.QUEUED
    assert deferred.last_error == "unexpected reply: 250 2.0.0 weird"


async def test_peer_refusing_mid_data_and_closing_is_heard(
    env: Env, test_pki: TestPki, trust_file: Path
) -> None:
    handler = PeerHandler()
    ctx = peer_tls_context(test_pki, "peer-valid", trust_file)
    big = MESSAGE + (b"x" * 998 + b"\r\n") * 6000  # ~6 MB: far more than the socket buffers
    with running_peer(handler, ctx, EarlyRejectSMTP) as port:
        entry = await env.store.enqueue(
            env.doctor, [Recipient(f"a@{VALID}")], big, sender_bal=env.doctor
        )
        await env.runner({VALID: port}).run_once()
    failed = await env.store.get_queue_entry(entry.id)
    assert failed.status is QueueStatus.FAILED
    assert failed.last_error == "552 5.3.4 message too big for this server"
    (report,) = await env.inbox()
    assert b"Status: 5.3.4" in report


async def test_envid_is_relayed_in_xtext_and_reported_decoded(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    a = f"a@{VALID}"
    peer_handler.rcpt_replies[a] = ["550 5.1.1 No such user"]
    wire = format_envid("abc+def= x")
    assert wire == "abc+2Bdef+3D+20x"
    entry = await env.store.enqueue(env.doctor, [Recipient(a)], MESSAGE, envid=wire, ret="HDRS")
    await env.runner({VALID: valid_peer}).run_once()
    (mail,) = peer_handler.saw("MAIL")
    assert mail.split(" ")[2:] == [f"SIZE={len(MESSAGE)}", "RET=HDRS", "ENVID=abc+2Bdef+3D+20x"]
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.FAILED
    (report,) = await env.inbox()
    # RFC 3464 §2.2.1 (envelope-id = *text, spelling preserved): the identifier itself, the
    # xtext being only its SMTP transfer form (RFC 3461 §4.4); Postfix and Sendmail do the same.
    assert b"\r\nOriginal-Envelope-Id: abc+def= x\r\n" in report


async def test_an_envid_not_in_xtext_never_smuggles_a_parameter(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    # A row written when the queue held the decoded form.
    await env.store.enqueue(
        env.doctor, [Recipient(f"a@{VALID}")], MESSAGE, envid="abc+def= RET=FULL", ret="HDRS"
    )
    await env.runner({VALID: valid_peer}).run_once()
    (mail,) = peer_handler.saw("MAIL")
    assert mail.split(" ")[2:] == [
        f"SIZE={len(MESSAGE)}",
        "RET=HDRS",
        "ENVID=abc+2Bdef+3D+20RET+3DFULL",
    ]


@pytest.mark.parametrize(
    "reply",
    [
        f"550 5.1.1 {INS}: unknown user",
        f"550 5.1.1 {'x' * 370} <{INS}@{PATIENT_DOMAIN}> unknown",
        f"450 4.2.1 {INS} busy",
    ],
)
async def test_no_ins_in_audit_or_last_error_even_echoed_alone_or_cut(
    env: Env,
    valid_peer: int,
    peer_handler: PeerHandler,
    caplog: pytest.LogCaptureFixture,
    reply: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="mta")
    patient = f"{INS}@{PATIENT_DOMAIN}"
    peer_handler.rcpt_replies[patient] = [reply]
    entry = await env.store.enqueue(
        env.doctor, [Recipient(patient)], MESSAGE, sender_bal=env.doctor
    )
    await env.runner({PATIENT_DOMAIN: valid_peer}).run_once()
    records = [r for r in await env.store.tail_audit() if r.action == "mta.outbound"]
    assert len(records) == 1
    last_error = (await env.store.get_queue_entry(entry.id)).last_error
    assert last_error is not None
    for text in (repr(records), last_error, caplog.text):
        assert INS not in text
        assert INS[:11] not in text


async def test_a_busy_domain_never_holds_a_worker(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    limits = ConnectionLimits(per_domain=1)
    runner = env.runner({VALID: valid_peer}, limits=limits)
    assert limits.try_acquire(VALID)  # another delivery holds the domain's only slot
    entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
    before = datetime.now(UTC)
    # Before: the worker waited for the slot, with the claim, for as long as it was held.
    assert await asyncio.wait_for(runner.run_once(), 10) == 1
    deferred = await env.store.get_queue_entry(entry.id)
    assert deferred.status is QueueStatus.QUEUED
    assert deferred.last_error is not None
    assert "connection limit reached" in deferred.last_error
    assert deferred.next_attempt_at - before <= BUSY_RETRY + timedelta(seconds=2)
    assert peer_handler.commands == []
    assert deferred.attempts == 0  # not tried: its backoff must not grow

    limits.release(VALID)
    await env.store.retry_queue_entry(entry.id)
    await runner.run_once()
    assert (await env.store.get_queue_entry(entry.id)).status is QueueStatus.DONE


async def test_a_lost_claim_cancels_the_delivery_before_data(
    env: Env, valid_peer: int, peer_handler: PeerHandler
) -> None:
    peer_handler.rcpt_delay = 1.5
    runner = env.runner(
        {VALID: valid_peer}, lease=timedelta(seconds=0.6), poll_interval=3600, stop_grace=5
    )
    entry = await env.store.enqueue(env.doctor, [Recipient(f"a@{VALID}")], MESSAGE)
    await runner.start()
    try:
        for _ in range(100):
            if peer_handler.saw("RCPT"):
                break
            await asyncio.sleep(0.05)
        assert peer_handler.saw("RCPT")
        # The database was unreachable longer than the lease: another runner took the entry.
        async with env.store.db.writer.begin() as conn:
            await conn.execute(
                update(outbound_queue)
                .where(outbound_queue.c.id == entry.id)
                .values(claimed_by="another-runner")
            )
        await asyncio.sleep(2.5)
    finally:
        await asyncio.wait_for(runner.stop(), 10)
    assert peer_handler.saw("DATA") == []
    assert peer_handler.messages == []
    taken = await env.store.get_queue_entry(entry.id)
    assert taken.status is QueueStatus.CLAIMED  # the other runner's; untouched by us


async def test_store_errors_are_logged_without_their_text(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runner = env.runner({VALID: free_port()}, poll_interval=3600)

    async def down(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"constraint failed for {INS}@{PATIENT_DOMAIN}")

    monkeypatch.setattr(env.store, "claim_queue_entries", down)
    await runner.start()
    await asyncio.sleep(0.1)
    await asyncio.wait_for(runner.stop(), 10)
    assert "cannot claim entries: RuntimeError" in caplog.text
    assert INS not in caplog.text
