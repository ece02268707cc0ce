"""The outbound queue in Colombe: ``colombe queue list|show|retry|delete``.

Patients' addresses (``INS@patient.mssante.fr``) carry an INS, which must never be shown nor
logged (mssante-spec §4.4): every address, ORCPT and error text printed or audited here goes
through :func:`mask` first. The message body is never shown.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from colombe.clikit import actor, emit_json, emit_table, json_option, jsonable, with_store
from mta.schedule import redact
from store import QueueEntry, Store
from store.model import QueueStatus

LAST_ERROR_WIDTH = 50
PENDING = (QueueStatus.QUEUED, QueueStatus.CLAIMED, QueueStatus.FAILED)


def mask(text: str | None) -> str | None:
    """``text`` without an INS (:func:`mta.schedule.redact`: patient local parts and INS-shaped
    runs become ``***``)."""
    return None if text is None else redact(text)


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _next_attempt(entry: QueueEntry, now: datetime) -> str:
    if entry.status in (QueueStatus.DONE, QueueStatus.FAILED):
        return "-"
    if entry.status is QueueStatus.CLAIMED:
        return "running"
    if entry.next_attempt_at <= now:
        return "now"
    return f"in {_age(entry.next_attempt_at - now)}"


def _size(octets: int) -> str:
    if octets < 1000:
        return f"{octets}B"
    if octets < 1_000_000:
        return f"{octets / 1e3:.1f}kB"
    return f"{octets / 1e6:.1f}MB"


def _truncate(text: str | None, width: int) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def masked_entry(entry: QueueEntry) -> dict[str, Any]:
    """Every field of ``entry`` as JSON values, patient addresses masked."""
    out: dict[str, Any] = jsonable(entry)
    for key in ("mail_from", "sender_bal", "envid", "last_error"):
        out[key] = mask(out[key])
    out["recipients"] = [{k: mask(v) for k, v in r.items()} for r in out["recipients"]]
    return out


def _audit_detail(entry: QueueEntry) -> dict[str, Any]:
    # Never an address: an audit reader needs the entry and its extent, not who it was for.
    # ``status`` is the one the entry had when the operator acted.
    return {"id": entry.id, "recipients": len(entry.recipients), "status": entry.status.value}


@click.group()
def queue() -> None:
    """The outbound queue: messages waiting for (or given up on) remote delivery."""


@queue.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in QueueStatus]),
    help="Only entries in this status (repeatable; default: all but done).",
)
@click.option("--domain", help="Only entries with a recipient in this domain.")
@json_option
@with_store
async def queue_list(
    store: Store, statuses: tuple[str, ...], domain: str | None, as_json: bool
) -> None:
    wanted = [QueueStatus(s) for s in statuses] if statuses else list(PENDING)
    entries = await store.list_queue(status=wanted, domain=domain)
    if as_json:
        emit_json([masked_entry(e) for e in entries])
        return
    now = datetime.now(UTC)
    emit_table(
        ["id", "status", "age", "attempts", "next", "sender", "rcpts", "size", "last error"],
        [
            (
                e.id,
                e.status.value,
                _age(now - e.created_at),
                e.attempts,
                _next_attempt(e, now),
                mask(e.mail_from) or "<>",
                len(e.recipients),
                _size(e.size),
                _truncate(mask(e.last_error), LAST_ERROR_WIDTH),
            )
            for e in entries
        ],
    )


@queue.command("show")
@click.argument("entry_id", metavar="ID", type=int)
@json_option
@with_store
async def queue_show(store: Store, entry_id: int, as_json: bool) -> None:
    entry = await store.get_queue_entry(entry_id)
    shown = masked_entry(entry)
    if as_json:
        emit_json(shown)
        return
    now = datetime.now(UTC)
    for label, value in (
        ("id", entry.id),
        ("status", entry.status.value),
        ("created", f"{entry.created_at:%Y-%m-%d %H:%M:%S} UTC ({_age(now - entry.created_at)})"),
        ("attempts", entry.attempts),
        ("next attempt", f"{entry.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC"),
        ("mail from", shown["mail_from"] or "<>"),
        ("sender BAL", shown["sender_bal"] or "-"),
        ("envid", shown["envid"] or "-"),
        ("ret", entry.ret or "-"),
        ("size", f"{entry.size} octets"),
        ("blob", entry.blob),
    ):
        click.echo(f"{label + ':':14}{value}")
    click.echo("recipients:")
    for r in shown["recipients"]:
        extras = [
            f"NOTIFY={r['notify']}" if r["notify"] else "",
            f"ORCPT={r['orcpt']}" if r["orcpt"] else "",
        ]
        click.echo("  " + " ".join([r["address"], *(x for x in extras if x)]))
    click.echo("last error:" + (f"\n  {shown['last_error']}" if shown["last_error"] else " -"))


@queue.command("retry")
@click.argument("entry_ids", metavar="ID...", nargs=-1, required=True, type=int)
@with_store
async def queue_retry(store: Store, entry_ids: tuple[int, ...]) -> None:
    """Make entries due now (queued or failed; attempts are kept)."""
    # Every id must exist before anything changes; the audit records the status it had.
    before = [await store.get_queue_entry(entry_id) for entry_id in entry_ids]
    for previous in before:
        entry = await store.retry_queue_entry(previous.id)
        await store.audit("queue.retry", actor=actor(), detail=_audit_detail(previous))
        click.echo(f"queue entry {entry.id} due now ({len(entry.recipients)} recipient(s))")


@queue.command("delete")
@click.argument("entry_ids", metavar="ID...", nargs=-1, required=True, type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_store
async def queue_delete(store: Store, entry_ids: tuple[int, ...], yes: bool) -> None:
    """Remove entries from the queue without delivering them (no DSN is sent)."""
    entries = [await store.get_queue_entry(entry_id) for entry_id in entry_ids]
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException("not deleting without --yes: stdin is not a terminal")
        for e in entries:
            click.echo(
                f"{e.id}  {e.status.value}  from {mask(e.mail_from) or '<>'}  "
                f"{len(e.recipients)} recipient(s)"
            )
        click.confirm(
            f"Delete {len(entries)} queue entr{'y' if len(entries) == 1 else 'ies'}?", abort=True
        )
    for entry_id in entry_ids:
        entry = await store.delete_queue_entry(entry_id)
        await store.audit("queue.delete", actor=actor(), detail=_audit_detail(entry))
        click.echo(f"queue entry {entry.id} deleted ({len(entry.recipients)} recipient(s))")
