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
        log.info(
            "audit %s actor=%s bal=%s source=%s result=%s %s",
            action,
            actor,
            bal or "-",
            source or "-",
            result,
            detail or {},
        )
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(0)
            self.dropped += 1
        self._pending.append(
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
        if (self._task is None or self._task.done()) and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit")
        if len(self._pending) >= FLUSH_SIZE:
            self._wake.set()

    async def flush(self) -> None:
        while self._pending:
            batch = self._pending[:FLUSH_SIZE]
            try:
                await self._store.audit_many(batch)
            except Exception:
                log.exception("audit records could not be written; retrying")
                return
            del self._pending[: len(batch)]

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
