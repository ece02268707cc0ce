"""Operator actions on the outbound queue: look up, retry, delete, filter (both engines)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from store import Store
from store.errors import InvalidInput, QueueEntryBusy, QueueEntryNotFound
from store.model import QueueStatus, Recipient
from tests.store.messages import simple_message


async def test_get_queue_entry_and_unknown_id(store: Store, doctor: str) -> None:
    entry = await store.enqueue(
        doctor, [Recipient("a@clinique-test.mssante.fr", notify="NEVER")], simple_message()
    )
    assert await store.get_queue_entry(entry.id) == entry
    with pytest.raises(QueueEntryNotFound, match="no such queue entry: 999"):
        await store.get_queue_entry(999)
    for action in (store.retry_queue_entry, store.delete_queue_entry):
        with pytest.raises(QueueEntryNotFound):
            await action(999)


async def test_retry_of_a_failed_entry_makes_it_due_now_and_keeps_attempts(
    store: Store, doctor: str
) -> None:
    entry = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message())
    await store.claim_queue_entries("r")
    assert await store.fail_queue_entry(entry.id, "r", "550 5.1.1 unknown user")
    before = datetime.now(UTC)
    retried = await store.retry_queue_entry(entry.id)
    assert retried.status is QueueStatus.QUEUED
    assert retried.attempts == 1
    assert retried.last_error == "550 5.1.1 unknown user"
    assert retried.next_attempt_at >= before - timedelta(seconds=1)
    [claimed] = await store.claim_queue_entries("r2")
    assert claimed.id == entry.id


async def test_retry_of_a_deferred_entry_brings_it_forward(store: Store, doctor: str) -> None:
    entry = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message())
    await store.claim_queue_entries("r")
    later = datetime.now(UTC) + timedelta(hours=2)
    assert await store.defer_queue_entry(entry.id, "r", "451 later", later)
    assert await store.claim_queue_entries("r") == []
    await store.retry_queue_entry(entry.id)
    assert [e.id for e in await store.claim_queue_entries("r")] == [entry.id]


async def test_live_claim_refuses_retry_and_delete(store: Store, doctor: str) -> None:
    entry = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message())
    await store.claim_queue_entries("runner-1", lease=timedelta(minutes=10))
    with pytest.raises(
        QueueEntryBusy, match=f"queue entry {entry.id} is being delivered by runner-1"
    ):
        await store.retry_queue_entry(entry.id)
    with pytest.raises(QueueEntryBusy):
        await store.delete_queue_entry(entry.id)
    still = await store.get_queue_entry(entry.id)
    assert still.status is QueueStatus.CLAIMED
    # The runner's outcome still counts: nothing was taken from it.
    assert await store.complete_queue_entry(entry.id, "runner-1")


async def test_expired_claim_may_be_retried_or_deleted(store: Store, doctor: str) -> None:
    a = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message(1))
    b = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message(2))
    await store.claim_queue_entries("dead-runner", lease=timedelta(seconds=-1))
    retried = await store.retry_queue_entry(a.id)
    assert retried.status is QueueStatus.QUEUED
    # The dead runner lost its claim: its late outcome is ignored.
    assert not await store.complete_queue_entry(a.id, "dead-runner")
    deleted = await store.delete_queue_entry(b.id)
    assert deleted.id == b.id
    assert [e.id for e in await store.list_queue()] == [a.id]


async def test_delivered_entry_cannot_be_retried_but_can_be_deleted(
    store: Store, doctor: str
) -> None:
    entry = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message())
    await store.claim_queue_entries("r")
    assert await store.complete_queue_entry(entry.id, "r")
    with pytest.raises(InvalidInput, match="already delivered"):
        await store.retry_queue_entry(entry.id)
    await store.delete_queue_entry(entry.id)
    assert await store.list_queue() == []


async def test_deleted_entry_blob_is_collected_after_the_grace_period(
    store: Store, doctor: str
) -> None:
    entry = await store.enqueue(doctor, [Recipient("a@b.mssante.fr")], simple_message(7))
    # While the row exists its blob is referenced, however old.
    assert await store.collect_garbage(grace=timedelta(seconds=-1)) == (0, 0)
    assert store.blobs.path(entry.blob).exists()
    deleted = await store.delete_queue_entry(entry.id)
    assert deleted.blob == entry.blob
    with pytest.raises(QueueEntryNotFound):
        await store.get_queue_entry(entry.id)
    # Young: kept (a delivery may be about to reference it); past the grace period: removed.
    assert await store.collect_garbage(grace=timedelta(hours=1)) == (0, 0)
    assert store.blobs.path(entry.blob).exists()
    removed, freed = await store.collect_garbage(grace=timedelta(seconds=-1))
    assert (removed, freed) == (1, entry.size)
    assert not store.blobs.path(entry.blob).exists()


async def test_list_queue_filters(store: Store, doctor: str) -> None:
    a = await store.enqueue(doctor, [Recipient("x@Clinique-Test.mssante.fr")], simple_message(1))
    b = await store.enqueue(
        doctor,
        [Recipient("y@autre.mssante.fr"), Recipient("z@clinique-test.mssante.fr")],
        simple_message(2),
    )
    c = await store.enqueue(doctor, [Recipient("y@autre.mssante.fr")], simple_message(3))
    await store.claim_queue_entries("r", limit=1)
    assert await store.fail_queue_entry(a.id, "r", "550 no")
    ids = [e.id for e in await store.list_queue(domain="clinique-test.mssante.fr")]
    assert ids == [a.id, b.id]
    assert [e.id for e in await store.list_queue(domain="AUTRE.mssante.fr")] == [b.id, c.id]
    both = await store.list_queue(status=[QueueStatus.FAILED, QueueStatus.QUEUED])
    assert [e.id for e in both] == [a.id, b.id, c.id]
    assert [e.id for e in await store.list_queue(status=QueueStatus.FAILED)] == [a.id]
    assert await store.list_queue(created_before=datetime.now(UTC) - timedelta(hours=1)) == []
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert len(await store.list_queue(created_before=later)) == 3
