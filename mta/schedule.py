"""The outbound retry schedule and the retry/fail decision for one delivery attempt (sans-I/O).

:class:`RetryPolicy` is Postfix's queue manager schedule with Postfix's defaults
(``minimal_backoff_time`` 300 s, ``maximal_backoff_time`` 4000 s, ``maximal_queue_lifetime`` and
``bounce_queue_lifetime`` 5 days, ``delay_warning_time`` 4 hours, sent once). The delay after the
n-th failed attempt is ``minimal_backoff * 2**(n-1)`` capped at ``maximal_backoff``: 300, 600,
1200, 2400, 4000, 4000... seconds. The last retry is moved to the moment the lifetime ends, so a
message is tried one last time at its deadline and a failure then (or later) gives up:
:meth:`RetryPolicy.next_attempt` returns None and the runner fails the entry with a DSN whose
status is :data:`EXPIRED_STATUS` (5.4.7, RFC 3463 "delivery time expired").

Jitter (off by default, ``jitter=0``): a fraction *j* in [0, 0.5] that shortens each delay by a
factor in [1 - j, 1] computed from a hash of a caller key (the queue id) and the attempt number, so
the same entry always gets the same schedule (reproducible, testable) while entries that failed
together (a peer down) spread out instead of retrying in a herd. Jitter only shortens, so the cap
still holds; the delays of one entry are then no longer strictly monotonic.

The settings come from ``[queue]`` in colombe.toml, in seconds (:meth:`RetryPolicy.from_config`):
``minimal_backoff``, ``maximal_backoff``, ``lifetime``, ``bounce_lifetime``, ``delay_warning``
(0 turns the warning off) and ``jitter``. A nonsensical value is refused with a
:class:`ScheduleConfigError` that names the key.

Classification (:func:`classify_reply`, :func:`transport_failure`, :func:`peer_refusal`): a 4xx
reply and every connection, DNS or TLS-handshake problem are retried; a 5xx reply fails the
recipient now. A peer that our own checks refuse (no STARTTLS, a certificate that is not a valid
IGC-Santé one, a DN not listed in the whitelist for the recipient domain) fails at once with a DSN
that says why (issue [mta]: "QUIT before MAIL ... the message fails with a DSN that says why"),
except when we cannot tell whether its certificate is revoked (our CRL is unavailable): that is
*our* outage, so the message is retried (4.7.0) - never delivered (fail closed), never bounced
for a fault of ours. It bounces only if the outage outlasts the queue lifetime.

Postfix defers (4.7.4/4.7.5) on TLS policy failures; we fail instead, as the issue requires: the
trust space's peers are known operators, and a sender learns within minutes, not after 5 days,
that the recipient operator's MX is misconfigured.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from mta.replies import printable
from pki.verify import Reason

EXPIRED_STATUS: Final = "5.4.7"
"""RFC 3463 X.4.7 "Delivery time expired": the status of the failure DSN after the lifetime."""

MAX_DIAGNOSTIC: Final = 400
"""Characters of a remote reply or a refusal reason kept in :attr:`Decision.diagnostic`."""

_MAX_JITTER: Final = 0.5

_PATIENT_ADDRESS: Final = re.compile(
    r"[^\s<>;:,\"'()\[\]@]+@(patient\.mssante\.fr)\b", re.IGNORECASE
)
_INS_LIKE: Final = re.compile(
    r"(?<![0-9A-Za-z])[0-9]{5}(?:[0-9]{2}|2[ABab])[0-9]{6,8}(?![0-9A-Za-z])"
)
"""A run of 13 to 15 characters shaped like an INS/NIR: digits, the department at positions 6-7
possibly "2A"/"2B" (Corsica), with or without its 2-digit key. Peers echo a patient's local part
alone ("146026322000196: unknown user"), so the address rule alone does not catch it."""


def redact(text: str) -> str:
    """``text`` (a peer's reply, an exception's text) without an INS: the local part of every
    patient address becomes ``***``, and so does every INS-shaped run of characters. Apply it
    *before* cutting the text (:func:`mta.replies.printable`), or a truncated address escapes."""
    text = _PATIENT_ADDRESS.sub(lambda m: f"***@{m.group(1).lower()}", text)
    return _INS_LIKE.sub("***", text)


class ScheduleConfigError(ValueError):
    """A ``[queue]`` setting is nonsensical; the message names the key."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to retry an outbound queue entry and when to give up. Defaults are Postfix's."""

    minimal_backoff: timedelta = timedelta(seconds=300)
    maximal_backoff: timedelta = timedelta(seconds=4000)
    lifetime: timedelta = timedelta(days=5)
    bounce_lifetime: timedelta = timedelta(days=5)
    """Lifetime of a message with the null sender (a DSN we generated): Postfix's
    ``bounce_queue_lifetime``."""
    delay_warning: timedelta | None = timedelta(hours=4)
    """Age at which the sender gets one "delayed" DSN (if NOTIFY asks for it); None: never."""
    jitter: float = 0.0

    def __post_init__(self) -> None:
        zero = timedelta(0)
        if self.minimal_backoff <= zero:
            raise ScheduleConfigError("[queue] minimal_backoff must be positive")
        if self.maximal_backoff <= zero:
            raise ScheduleConfigError("[queue] maximal_backoff must be positive")
        if self.minimal_backoff > self.maximal_backoff:
            raise ScheduleConfigError(
                "[queue] minimal_backoff must not exceed maximal_backoff"
                f" ({self.minimal_backoff.total_seconds():g} s >"
                f" {self.maximal_backoff.total_seconds():g} s)"
            )
        if self.lifetime <= zero:
            raise ScheduleConfigError("[queue] lifetime must be positive")
        if self.bounce_lifetime <= zero:
            raise ScheduleConfigError("[queue] bounce_lifetime must be positive")
        if self.delay_warning is not None and self.delay_warning <= zero:
            raise ScheduleConfigError(
                "[queue] delay_warning must be positive (0 in the config turns it off)"
            )
        if not (isinstance(self.jitter, int | float) and 0.0 <= self.jitter <= _MAX_JITTER):
            raise ScheduleConfigError(f"[queue] jitter must be between 0 and {_MAX_JITTER}")

    @classmethod
    def from_config(cls, section: Mapping[str, object]) -> RetryPolicy:
        """The policy from the ``[queue]`` table (seconds); missing keys keep the defaults,
        unknown keys are ignored (the table holds other settings too)."""
        defaults = cls()

        def span(key: str, default: timedelta) -> timedelta:
            return timedelta(seconds=_seconds(key, section[key])) if key in section else default

        warning = defaults.delay_warning
        if "delay_warning" in section:
            seconds = _seconds("delay_warning", section["delay_warning"])
            warning = None if seconds == 0 else timedelta(seconds=seconds)
        jitter = (
            _seconds("jitter", section["jitter"], "a fraction")
            if "jitter" in section
            else defaults.jitter
        )
        return cls(
            minimal_backoff=span("minimal_backoff", defaults.minimal_backoff),
            maximal_backoff=span("maximal_backoff", defaults.maximal_backoff),
            lifetime=span("lifetime", defaults.lifetime),
            bounce_lifetime=span("bounce_lifetime", defaults.bounce_lifetime),
            delay_warning=warning,
            jitter=jitter,
        )

    def backoff(self, attempts: int, key: str | int | None = None) -> timedelta:
        """The wait after ``attempts`` failed attempts (1 for the first failure), before jitter
        when ``key`` is None or jitter is 0."""
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        ratio = self.maximal_backoff / self.minimal_backoff
        # 2**(attempts-1) >= ratio means the cap is reached; avoids huge powers.
        if attempts - 1 >= math.log2(ratio):
            delay = self.maximal_backoff
        else:
            delay = min(self.maximal_backoff, self.minimal_backoff * 2 ** (attempts - 1))
        if self.jitter and key is not None:
            delay = delay * (1.0 - self.jitter * _unit_hash(key, attempts))
        return delay

    def expires_at(self, first_queued_at: datetime, *, null_sender: bool = False) -> datetime:
        """When the entry gives up (the DSN's Will-Retry-Until)."""
        _require_aware(first_queued_at)
        return first_queued_at + (self.bounce_lifetime if null_sender else self.lifetime)

    def next_attempt(
        self,
        first_queued_at: datetime,
        attempts: int,
        now: datetime,
        *,
        null_sender: bool = False,
        key: str | int | None = None,
    ) -> datetime | None:
        """When to try again after the ``attempts``-th failed attempt, which ended at ``now``;
        None when the lifetime is over: fail the entry with a DSN (:data:`EXPIRED_STATUS`).

        The retry never goes past the deadline: the last one happens at the deadline itself."""
        _require_aware(now)
        deadline = self.expires_at(first_queued_at, null_sender=null_sender)
        if now >= deadline:
            return None
        return min(now + self.backoff(attempts, key), deadline)

    def delay_warning_due(
        self, first_queued_at: datetime, now: datetime, already_warned: bool
    ) -> bool:
        """Whether to send the (single) "delayed" DSN now: warnings on, not sent yet, and the
        entry older than ``delay_warning``. Whether the sender asked for it (NOTIFY=DELAY, never
        for the null sender) is :func:`mta.dsn.dsn_requested`'s business."""
        _require_aware(first_queued_at)
        _require_aware(now)
        if already_warned or self.delay_warning is None:
            return False
        return now - first_queued_at >= self.delay_warning


def _seconds(key: str, value: object, unit: str = "a number of seconds") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScheduleConfigError(f"[queue] {key} must be {unit}, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ScheduleConfigError(f"[queue] {key} must be a finite non-negative number")
    return float(value)


def _unit_hash(key: str | int, attempts: int) -> float:
    """A number in [0, 1) fixed by ``key`` and ``attempts``."""
    digest = hashlib.blake2b(f"{key}\x00{attempts}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _require_aware(when: datetime) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("datetimes must carry a time zone")


# -- classifying an attempt ------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a recipient after a failed attempt: ``status`` is the RFC 3463 code for
    the DSN (class 4 for RETRY, 5 for FAIL) and ``diagnostic`` a one-line plain-ASCII text for
    its Diagnostic-Code and the queue's ``last_error``."""

    outcome: Outcome
    status: str
    diagnostic: str

    def __post_init__(self) -> None:
        want = "4" if self.outcome is Outcome.RETRY else "5"
        if not self.status.startswith(want + "."):
            raise ValueError(f"status {self.status} does not match outcome {self.outcome.value}")

    def expired(self) -> Decision:
        """The final failure when the lifetime ran out after this (transient) decision."""
        return Decision(
            Outcome.FAIL,
            EXPIRED_STATUS,
            printable(f"delivery time expired: {self.diagnostic}", MAX_DIAGNOSTIC),
        )


def classify_reply(code: int, enhanced: str | None, text: str) -> Decision:
    """A negative reply of the peer to MAIL, RCPT, DATA or the end of data. 4xx: retry; 5xx:
    fail now. The peer's enhanced code is kept when its class agrees with the basic code,
    otherwise 4.0.0/5.0.0 (RFC 3463 "other undefined status"). A positive or 1xx/3xx reply where
    a final one was due is a protocol error: retried (4.5.0), like Postfix ("unexpected reply"),
    and so is a code outside 100-599 (a broken or hostile peer; aiosmtplib reports a malformed
    reply line as -1): the function is total, it never raises.

    The text is :func:`redact`-ed before it is cut to :data:`MAX_DIAGNOSTIC`: the diagnostic goes
    to ``last_error``, the audit trail and the logs, which never hold an INS."""
    line = redact(" ".join(p for p in (str(code), enhanced, text.replace("\n", " ")) if p))
    diagnostic = printable(line, MAX_DIAGNOSTIC)
    if not 100 <= code <= 599 or code < 400:
        return Decision(
            Outcome.RETRY, "4.5.0", printable(f"unexpected reply: {line}", MAX_DIAGNOSTIC)
        )
    klass = str(code)[0]
    status = enhanced if enhanced and _is_status(enhanced, klass) else f"{klass}.0.0"
    outcome = Outcome.RETRY if klass == "4" else Outcome.FAIL
    return Decision(outcome, status, diagnostic)


def _is_status(value: str, klass: str) -> bool:
    parts = value.split(".")
    return (
        len(parts) == 3
        and parts[0] == klass
        and all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts[1:])
    )


class TransportProblem(enum.StrEnum):
    """Failures below SMTP: all transient."""

    DNS_TEMPORARY = "dns-temporary"  # SERVFAIL, timeout
    PROTOCOL_ERROR = "protocol-error"  # a malformed reply, anything unexpected from the peer
    DNS_NO_ADDRESS = "dns-no-address"  # the MX host has no A/AAAA (Postfix defers too)
    CONNECTION_REFUSED = "connection-refused"
    CONNECTION_TIMEOUT = "connection-timeout"
    CONNECTION_LOST = "connection-lost"  # closed or reset mid-session
    TLS_HANDSHAKE_FAILED = "tls-handshake-failed"  # alert, reset, protocol/cipher mismatch
    STARTTLS_REFUSED = "starttls-refused"  # STARTTLS offered, then answered 4xx/5xx


_TRANSPORT: Final[dict[TransportProblem, tuple[str, str]]] = {
    TransportProblem.DNS_TEMPORARY: ("4.4.3", "temporary DNS failure looking up"),
    TransportProblem.PROTOCOL_ERROR: ("4.5.0", "protocol error with"),
    TransportProblem.DNS_NO_ADDRESS: ("4.4.4", "no address found for"),
    TransportProblem.CONNECTION_REFUSED: ("4.4.1", "connection refused by"),
    TransportProblem.CONNECTION_TIMEOUT: ("4.4.1", "connection timed out to"),
    TransportProblem.CONNECTION_LOST: ("4.4.2", "connection lost with"),
    TransportProblem.TLS_HANDSHAKE_FAILED: ("4.7.5", "TLS handshake failed with"),
    TransportProblem.STARTTLS_REFUSED: ("4.7.5", "STARTTLS refused by"),
}


def transport_failure(problem: TransportProblem, peer: str, detail: str = "") -> Decision:
    """A connection, DNS or TLS-handshake problem with ``peer`` (host name or address): retry.
    ``detail`` (often an exception's or a peer's text) is :func:`redact`-ed before the cut."""
    status, words = _TRANSPORT[problem]
    text = f"{words} {peer}" + (f": {detail}" if detail else "")
    return Decision(Outcome.RETRY, status, printable(redact(text), MAX_DIAGNOSTIC))


NO_STARTTLS: Final = "no-starttls"
"""The peer refusal "STARTTLS not offered in the EHLO reply" (not a certificate :class:`Reason`)."""

_PEER_TEXTS: Final[dict[Reason, tuple[str, str]]] = {
    Reason.EXPIRED: ("5.7.0", "server certificate expired"),
    Reason.NOT_YET_VALID: ("5.7.0", "server certificate not yet valid"),
    Reason.UNTRUSTED: ("5.7.0", "server certificate not issued by IGC-Sante"),
    Reason.BAD_SIGNATURE: ("5.7.0", "server certificate signature invalid"),
    Reason.NOT_A_CA: ("5.7.0", "server certificate chain invalid (issuer is not a CA)"),
    Reason.WRONG_USAGE: ("5.7.0", "server certificate not valid for TLS server authentication"),
    Reason.POLICY_MISSING: (
        "5.7.0",
        "server certificate lacks the IGC-Sante server certificate policy",
    ),
    Reason.REVOKED: ("5.7.0", "server certificate revoked"),
    Reason.CHAIN_TOO_LONG: ("5.7.0", "server certificate chain too long"),
    Reason.UNSUPPORTED_EXTENSION: (
        "5.7.0",
        "server certificate has an unsupported critical extension",
    ),
    Reason.WEAK_KEY: ("5.7.0", "server certificate uses a weak key or signature algorithm"),
    Reason.DN_NOT_LISTED: (
        "5.7.1",
        "server certificate DN not listed in the MSSante whitelist for domain {domain}",
    ),
    Reason.CN_DIFFERS: (
        "5.7.1",
        "server certificate CN differs from the DN listed in the MSSante whitelist"
        " for domain {domain}",
    ),
}


def peer_refusal(reason: Reason | str, *, peer: str, domain: str) -> Decision:
    """Our refusal to hand mail for ``domain`` to ``peer`` (we send QUIT before MAIL).

    ``reason`` is the :class:`pki.verify.Reason` of the peer certificate's verification or
    :data:`NO_STARTTLS`. Every reason fails the recipients now (5.7.0 invalid certificate, 5.7.1
    DN not authorised for the domain, 5.7.10 "encryption needed" for a missing STARTTLS) except
    :attr:`Reason.REVOCATION_UNKNOWN` - our CRL is unavailable - which is retried (4.7.0)."""
    prefix = f"delivery to {peer} refused: "
    if reason == NO_STARTTLS:
        text = "STARTTLS not offered; the MSSante trust space never exchanges mail in clear"
        return Decision(Outcome.FAIL, "5.7.10", printable(prefix + text, MAX_DIAGNOSTIC))
    if not isinstance(reason, Reason):
        raise ValueError(f"unknown peer refusal {reason!r}")
    if reason is Reason.OK:
        raise ValueError("peer_refusal() called for a valid certificate")
    if reason is Reason.REVOCATION_UNKNOWN:
        text = "cannot check the server certificate's revocation now (CRL unavailable), will retry"
        return Decision(Outcome.RETRY, "4.7.0", printable(prefix + text, MAX_DIAGNOSTIC))
    status, template = _PEER_TEXTS[reason]
    text = template.format(domain=printable(domain, 120))
    return Decision(Outcome.FAIL, status, printable(prefix + text, MAX_DIAGNOSTIC))
