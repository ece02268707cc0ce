"""The outbound queue (claims, leases, retries) and the audit trail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from store import Store
from store.model import QueueStatus, Recipient
from tests.store.messages import simple_message


async def test_enqueued_message_is_claimed_once(store: Store, doctor: str) -> None:
    entry = await store.enqueue(
        doctor,
        [Recipient("a@clinique-test.mssante.fr", notify="SUCCESS,FAILURE", orcpt="rfc822;a@x")],
        simple_message(),
        sender_bal=doctor,
        envid="ENV1",
        ret="HDRS",
    )
    assert entry.status is QueueStatus.QUEUED
    claimed = await store.claim_queue_entries("runner-1")
    assert [c.id for c in claimed] == [entry.id]
    assert claimed[0].recipients[0].notify == "SUCCESS,FAILURE"
    assert (claimed[0].envid, claimed[0].ret) == ("ENV1", "HDRS")
    assert await store.claim_queue_entries("runner-2") == []
    assert await store.blobs.read(claimed[0].blob) == simple_message()


async def test_expired_claim_is_due_again(store: Store, doctor: str) -> None:
    await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message())
    await store.claim_queue_entries("dead-runner", lease=timedelta(seconds=-1))
    again = await store.claim_queue_entries("runner-2")
    assert len(again) == 1


async def test_deferred_entry_waits_until_its_retry_time(store: Store, doctor: str) -> None:
    entry = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message())
    await store.claim_queue_entries("r")
    await store.defer_queue_entry(
        entry.id, "r", "451 4.4.1 try later", datetime.now(UTC) + timedelta(hours=1)
    )
    assert await store.claim_queue_entries("r") == []
    [queued] = await store.list_queue(status=QueueStatus.QUEUED)
    assert (queued.attempts, queued.last_error) == (1, "451 4.4.1 try later")


async def test_completed_and_failed_entries_leave_the_queue(store: Store, doctor: str) -> None:
    a = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message(1))
    b = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message(2))
    await store.claim_queue_entries("r")
    assert await store.complete_queue_entry(a.id, "r")
    assert await store.fail_queue_entry(b.id, "r", "550 5.1.1 unknown user")
    assert await store.claim_queue_entries("r") == []
    assert [e.id for e in await store.list_queue(status=QueueStatus.DONE)] == [a.id]
    assert (await store.list_queue(status=QueueStatus.FAILED))[0].last_error.startswith("550")
    assert (await store.counts())["queued"] == 0


async def test_audit_trail_is_append_only_and_tailed_in_order(store: Store, doctor: str) -> None:
    await store.audit("login", actor=doctor, bal=doctor, source="192.0.2.1", result="ok")
    await store.audit("login", actor=doctor, bal=doctor, source="192.0.2.1", result="refused")
    await store.audit("bal.create", actor="admin", bal="x@hopital-test.mssante.fr", detail={"t": 1})
    tail = await store.tail_audit(limit=2)
    assert [(r.action, r.result) for r in tail] == [("login", "refused"), ("bal.create", "ok")]
    mine = await store.tail_audit(bal=doctor)
    assert [r.result for r in mine] == ["ok", "refused"]
    assert mine[0].source == "192.0.2.1"
    assert mine[0].at.tzinfo is not None


async def test_a_runner_whose_lease_expired_cannot_overwrite_the_new_claim(
    store: Store, doctor: str
) -> None:
    entry = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message())
    await store.claim_queue_entries("slow-runner", lease=timedelta(seconds=-1))
    [again] = await store.claim_queue_entries("runner-2")
    assert await store.complete_queue_entry(again.id, "runner-2")
    # The slow runner comes back late: its outcome must not re-queue a delivered message.
    assert not await store.defer_queue_entry(entry.id, "slow-runner", "451 late", datetime.now(UTC))
    assert not await store.fail_queue_entry(entry.id, "slow-runner", "550 late")
    [done] = await store.list_queue()
    assert done.status is QueueStatus.DONE


async def test_renewed_claim_is_not_taken_by_another_runner(store: Store, doctor: str) -> None:
    entry = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message())
    await store.claim_queue_entries("busy-runner", lease=timedelta(seconds=-1))
    # The heartbeat of the runner still delivering it: the lapsed claim is extended.
    assert await store.renew_queue_claims("busy-runner", [entry.id], timedelta(minutes=2)) == 1
    assert await store.claim_queue_entries("runner-2") == []
    # Only the holder renews.
    assert await store.renew_queue_claims("runner-2", [entry.id], timedelta(minutes=2)) == 0


async def test_batched_audit_records_are_appended_in_order(store: Store) -> None:
    await store.audit_many(
        [
            {"action": "mta.inbound", "actor": "peer", "result": "accepted", "detail": {"n": 1}},
            {"action": "mta.inbound", "actor": "peer", "result": "refused", "source": "::1"},
        ]
    )
    records = await store.tail_audit(limit=2)
    assert [(r.result, r.source) for r in records] == [("accepted", None), ("refused", "::1")]
    assert records[0].detail == {"n": 1}
