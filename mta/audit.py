"""The audit trail of SMTP exchanges, written in batches.

A busy MX accepts hundreds of messages a second; one audit transaction per message would cost as
much as the delivery itself. Records are queued here and written together, at most
:data:`FLUSH_INTERVAL` seconds after they were made (or as soon as :data:`FLUSH_SIZE` are
waiting), and every pending record is written on :meth:`AuditWriter.close`. Each record is also
logged at once, so a crash loses at most the database copy of the last fraction of a second, never
the log line. Records never hold a body, an INS, a password or a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any, Final

from store import Store

log = logging.getLogger(__name__)

FLUSH_INTERVAL: Final = 0.25
FLUSH_SIZE: Final = 200
MAX_PENDING: Final = 100_000
"""Beyond this (the database is down for minutes), older records are dropped from the batch and
the loss is logged: the listener must not run out of memory for its audit trail."""


def _clean(value: Any) -> Any:
    """Strings made valid UTF-8 (a peer's bytes decoded with escapes must not reach a driver
    that refuses surrogates), recursively."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class AuditWriter:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0

    def record(
        self,
        action: str,
        *,
        actor: str,
        result: str,
        bal: str | None = None,
        source: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Queue one record (never blocks, never raises)."""
        if log.isEnabledFor(logging.INFO):
            # The essentials at once (the database copy follows in a batch); the detail is in
            # the audit trail, and at debug level here.
            log.info(
                "audit %s %s actor=%s bal=%s source=%s id=%s",
                action,
                result,
                actor,
                bal or "-",
                source or "-",
                (detail or {}).get("queue_id") or (detail or {}).get("session") or "-",
            )
            log.debug("audit detail %s", detail)
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(0)
            self.dropped += 1
        self._pending.append(
            _clean(
                {
                    "at": datetime.now(UTC),
                    "action": action,
                    "actor": actor,
                    "result": result,
                    "bal": bal,
                    "source": source,
                    "detail": detail,
                }
            )
        )
        if (self._task is None or self._task.done()) and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit")
        if len(self._pending) >= FLUSH_SIZE:
            self._wake.set()

    async def flush(self) -> None:
        while self._pending:
            batch = self._pending[:FLUSH_SIZE]
            try:
                await self._store.audit_many(batch)
            except Exception as exc:
                if not await self._write_singly(batch):
                    log.error("audit records could not be written (%s); retrying", exc)
                    return
            del self._pending[: len(batch)]

    async def _write_singly(self, batch: list[dict[str, Any]]) -> bool:
        """After a failed batch: write its records one by one, dropping (and counting) a record
        the database refuses, so that one bad record cannot block the trail. False when the
        database refuses everything (it is down: the batch is kept for the next try)."""
        refused = []
        for record in batch:
            try:
                await self._store.audit_many([record])
            except Exception:
                refused.append(record)
        if len(refused) == len(batch):
            return False
        for record in refused:
            self.dropped += 1
            log.error("audit record %s refused by the database, dropped", record["action"])
        return True

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()
