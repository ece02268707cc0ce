"""``colombe queue ...`` as an operator runs it: child processes, on both engines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from store import Store
from store.model import Recipient
from tests.colombe.processes import expected_actor, refused, refused_many, run, run_many
from tests.colombe.test_cli import DOCTOR, HOPITAL, NURSE, Site, site, table  # noqa: F401
from tests.store.messages import simple_message

INS = "1234567890123"
PATIENT = f"{INS}@patient.mssante.fr"
MASKED = "***@patient.mssante.fr"


def test_operator_lists_shows_retries_and_deletes_queue_entries(site: Site) -> None:  # noqa: F811
    async def fill(store: Store) -> tuple[int, int, int]:
        await store.add_domain(HOPITAL)
        a = await store.enqueue(
            DOCTOR,
            [
                Recipient(PATIENT, notify="SUCCESS,FAILURE", orcpt=f"rfc822;{PATIENT}"),
                Recipient(NURSE),
            ],
            simple_message(1),
            sender_bal=DOCTOR,
            envid="ENV-A",
            ret="HDRS",
        )
        b = await store.enqueue(DOCTOR, [Recipient(PATIENT)], simple_message(2))
        await store.claim_queue_entries("runner-1", limit=2)
        await store.defer_queue_entry(
            a.id, "runner-1", "451 4.4.1 try later", datetime.now(UTC) + timedelta(hours=1)
        )
        long_error = f"550 5.1.1 <{PATIENT}> unknown user; " + "x" * 200
        assert await store.fail_queue_entry(b.id, "runner-1", long_error)
        c = await store.enqueue(DOCTOR, [Recipient(NURSE)], simple_message(3))
        await store.claim_queue_entries("runner-2", lease=timedelta(minutes=10))
        return a.id, b.id, c.id

    a, b, c = site.with_store(fill)
    listed, listed_json, failed, shown, shown_json = run_many(
        [
            ["queue", "list"],
            ["queue", "list", "--json"],
            ["queue", "list", "--status", "failed"],
            ["queue", "show", str(b)],
            ["queue", "show", str(a), "--json"],
        ],
        cwd=site.folder,
    )
    for done in (listed, listed_json, failed, shown, shown_json):
        assert INS not in done.stdout + done.stderr
    header = listed.stdout.splitlines()[0].split()
    assert header[:5] == ["id", "status", "age", "attempts", "next"]
    rows = table(listed.stdout)
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        (str(a), "queued", "1", "in"),
        (str(b), "failed", "1", "-"),
        (str(c), "claimed", "0", "running"),
    ]
    assert f"550 5.1.1 <{MASKED}>" in listed.stdout
    assert "…" in listed.stdout
    assert "x" * 100 not in listed.stdout
    assert [r[0] for r in table(failed.stdout)] == [str(b)]

    entries = json.loads(listed_json.stdout)
    assert [e["id"] for e in entries] == [a, b, c]
    assert entries[0]["recipients"][0] == {
        "address": MASKED,
        "notify": "SUCCESS,FAILURE",
        "orcpt": f"rfc822;{MASKED}",
    }
    assert entries[0]["recipients"][1]["address"] == NURSE
    assert entries[1]["last_error"].startswith(f"550 5.1.1 <{MASKED}>")

    assert f"  {MASKED}\n" in shown.stdout
    assert "x" * 200 in shown.stdout  # the last error in full
    assert "Bonjour" not in shown.stdout  # never the body
    detail = json.loads(shown_json.stdout)
    assert (detail["id"], detail["envid"], detail["ret"]) == (a, "ENV-A", "HDRS")
    assert (detail["sender_bal"], detail["attempts"]) == (DOCTOR, 1)
    assert len(detail["recipients"]) == 2
    assert "Bonjour" not in shown_json.stdout

    errors = refused_many(
        [
            ["queue", "show", "999"],
            ["queue", "retry", "999"],
            ["queue", "delete", "999", "--yes"],
            ["queue", "retry", str(c)],
            ["queue", "delete", str(c), "--yes"],
            ["queue", "delete", str(a)],
        ],
        cwd=site.folder,
    )
    assert errors[:3] == ["Error: no such queue entry: 999"] * 3
    assert errors[3].startswith(f"Error: queue entry {c} is being delivered by runner-2 until ")
    assert errors[4] == errors[3]
    assert errors[5] == "Error: not deleting without --yes: stdin is not a terminal"

    retried = run("queue", "retry", str(b), cwd=site.folder)
    assert retried.stdout == f"queue entry {b} due now (1 recipient(s))\n"
    deleted = run("queue", "delete", str(a), str(b), "--yes", cwd=site.folder)
    assert deleted.stdout == (
        f"queue entry {a} deleted (2 recipient(s))\nqueue entry {b} deleted (1 recipient(s))\n"
    )
    audit = run("audit", "tail", "--json", cwd=site.folder)
    assert INS not in audit.stdout

    async def look(store: Store) -> tuple[list[int], list[tuple[str, str, object]]]:
        remaining = [e.id for e in await store.list_queue()]
        records = await store.tail_audit(limit=10)
        return remaining, [
            (r.action, r.actor, r.detail) for r in records if r.action.startswith("queue.")
        ]

    remaining, records = site.with_store(look)
    assert remaining == [c]
    me = expected_actor()
    assert records == [
        ("queue.retry", me, {"id": b, "recipients": 1, "status": "failed"}),
        ("queue.delete", me, {"id": a, "recipients": 2, "status": "queued"}),
        ("queue.delete", me, {"id": b, "recipients": 1, "status": "queued"}),
    ]
    assert refused("queue", "show", str(a), cwd=site.folder) == f"Error: no such queue entry: {a}"
