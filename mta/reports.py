"""Where a delivery status notification we generate goes (RFC 3464 reports, built by mta.dsn).

A report is addressed to the envelope sender of the message it is about. :class:`ReportSender`
sends it the way any message to that address would go, with one difference: a report always
travels with the null sender (RFC 5321 §4.5.5, RFC 3461 §6.2), so it can never cause another
report and never loops.

- A hosted, active BAL: delivered locally into its INBOX (``store.deliver``), durable on return.
- A domain on the whitelist: queued for the outbound runner with the null sender; the runner is
  woken if one is attached (:meth:`ReportSender.attach`).
- Anything else (a closed BAL, a domain that left the trust space): dropped with a log line and
  an audit record. A report may not leave the Espace de confiance either (mssante-spec §10.2.1).

Patient addresses carry an INS in their local part: every address logged or audited here goes
through :func:`mask` first.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

from directory.whitelist import normalise_domain
from mta.policy import WhitelistView
from mta.schedule import redact
from store import BalStatus, Store
from store.errors import BalNotFound, DomainNotFound, InvalidInput
from store.model import Recipient

log = logging.getLogger(__name__)

AUDIT_ACTION: Final = "mta.report"
ACTOR: Final = "mta"


def mask(text: str) -> str:
    """``text`` with the local part (an INS) of every patient address replaced by ``***``
    (the same rule as ``colombe queue``: no INS in logs or audit records), and every INS-shaped
    run of characters too (:func:`mta.schedule.redact`: peers echo a local part alone)."""
    return redact(text)


class Waker(Protocol):
    """What the report sender asks of the outbound runner: deliver what was just queued."""

    def notify(self) -> None: ...


class ReportSender:
    """Sends the reports of the MTA (failure, delay, relayed and success DSNs)."""

    def __init__(self, store: Store, *, hostname: str, whitelist: WhitelistView) -> None:
        self.store = store
        self.hostname = hostname
        self.whitelist = whitelist
        self._runner: Waker | None = None

    def attach(self, runner: Waker) -> None:
        """Wake ``runner`` after each report queued for a remote domain."""
        self._runner = runner

    async def send(self, envelope_sender: str, report: bytes) -> None:
        """Deliver or queue ``report`` (a whole message) to ``envelope_sender``. Never called
        for the null sender (there is no one to report to)."""
        if not envelope_sender:
            raise ValueError("no report is ever sent to the null sender")
        shown = mask(envelope_sender)
        local, _, raw_domain = envelope_sender.rpartition("@")
        domain = normalise_domain(raw_domain) if local else None
        if domain is None:
            await self._drop(shown, "invalid address")
            return
        if await self._hosted(domain):
            try:
                bal = await self.store.get_bal(envelope_sender)
            except (BalNotFound, InvalidInput):
                bal = None
            if bal is None or bal.status is not BalStatus.ACTIVE:
                await self._drop(shown, "no active mailbox")
                return
            await self.store.deliver(bal.address, report)
            await self._audit(shown, "delivered", {"to": shown})
            log.info("report delivered to %s", shown)
            return
        if self.whitelist.is_listed(domain):
            entry = await self.store.enqueue("", [Recipient(envelope_sender)], report)
            await self._audit(shown, "queued", {"to": shown, "queue_id": entry.id})
            log.info("report to %s queued as %s", shown, entry.id)
            if self._runner is not None:
                self._runner.notify()
            return
        await self._drop(shown, "domain outside the MSSante trust space")

    async def _hosted(self, domain: str) -> bool:
        try:
            await self.store.get_domain(domain)
        except (DomainNotFound, InvalidInput):
            return False
        return True

    async def _drop(self, shown: str, why: str) -> None:
        log.warning("report to %s dropped: %s", shown, why)
        await self._audit(shown, "dropped", {"to": shown, "reason": why})

    async def _audit(self, shown: str, result: str, detail: dict[str, object]) -> None:
        try:
            await self.store.audit(AUDIT_ACTION, actor=ACTOR, result=result, detail=detail)
        except Exception as exc:  # the report itself was handled; the trail is best effort here
            log.error("audit of the report to %s failed: %s", shown, type(exc).__name__)
