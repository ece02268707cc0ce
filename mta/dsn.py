"""Delivery status notifications: RFC 3464 reports in an RFC 6522 ``multipart/report``.

One builder, :func:`build_dsn`, for every kind of report: each recipient carries its own
:class:`Action` (RFC 3464 §2.3.3 allows one DSN to mix them). A report whose recipients were all
``delivered`` is what MSSanté calls an *accusé de réception* (mssante-spec §2.5). Whether a report is
wanted at all is :func:`dsn_requested` (NOTIFY, RFC 3461 §4.1; never to the null sender).

Pure: no I/O, no logging (the original message never reaches a log). The result is CRLF-terminated
bytes, 7bit unless the original itself holds 8-bit octets or a non-ASCII address makes it an RFC 6533
report (``message/global-delivery-status``), which must then be sent with SMTPUTF8/8BITMIME.
"""

from __future__ import annotations

import enum
import quopri
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime

from mta.dsn_params import Notify, OriginalRecipient, Ret

DEFAULT_MAX_RETURNED_SIZE = 1024 * 1024  # a larger original is returned as headers only
MAX_DIAGNOSTIC_LENGTH = 800  # characters of a remote reply copied into Diagnostic-Code
MAX_LINE = 998  # RFC 5322 §2.1.1

_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\Z")
_DNS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")


class Action(enum.StrEnum):
    """RFC 3464 §2.3.3 action values."""

    DELIVERED = "delivered"
    DELAYED = "delayed"
    FAILED = "failed"
    RELAYED = "relayed"  # handed to an MTA that does not speak DSN
    EXPANDED = "expanded"  # delivered to a list/alias and forwarded further


# RFC 3464 §2.3.4: the status class that goes with each action.
_CLASS_OF_ACTION = {
    Action.DELIVERED: "2",
    Action.RELAYED: "2",
    Action.EXPANDED: "2",
    Action.DELAYED: "4",
    Action.FAILED: "5",
}

_NOTIFY_OF_ACTION = {
    Action.DELIVERED: Notify.SUCCESS,
    Action.RELAYED: Notify.SUCCESS,
    Action.EXPANDED: Notify.SUCCESS,
    Action.DELAYED: Notify.DELAY,
    Action.FAILED: Notify.FAILURE,
}


def dsn_requested(envelope_sender: str, notify: frozenset[Notify] | None, action: Action) -> bool:
    """Whether a DSN reporting ``action`` must be sent for a recipient with this NOTIFY.

    Never to the null sender (RFC 5321 §4.5.5, RFC 3461 §6.2). Without NOTIFY, RFC 3461 §4.1 lets us
    behave as ``FAILURE,DELAY`` (as Postfix does); ``relayed`` and ``expanded`` are success notices,
    sent only when SUCCESS was asked.
    """
    if not envelope_sender:
        return False
    wanted = frozenset({Notify.FAILURE, Notify.DELAY}) if notify is None else notify
    return _NOTIFY_OF_ACTION[action] in wanted


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """The per-recipient fields of a report (RFC 3464 §2.3).

    ``status`` is an RFC 3463 code whose class matches ``action`` (2 for delivered, relayed,
    expanded; 4 for delayed; 5 for failed). ``diagnostic`` is the remote SMTP reply
    (``550 5.1.1 ...``) when there was one; ``remote_mta`` the DNS name of the peer that gave it.
    Datetimes must carry a time zone.
    """

    final_recipient: str
    action: Action
    status: str
    original_recipient: OriginalRecipient | None = None
    remote_mta: str | None = None
    diagnostic: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None

    def __post_init__(self) -> None:
        m = _STATUS.match(self.status)
        if m is None:
            raise ValueError(f"invalid status code {self.status!r} (expected X.Y.Z)")
        if m.group(1) != _CLASS_OF_ACTION[self.action]:
            raise ValueError(f"status {self.status} does not match action {self.action.value}")
        if not self.final_recipient or _bad_address(self.final_recipient):
            raise ValueError("invalid final recipient address")
        if self.remote_mta is not None and not _DNS_NAME.match(self.remote_mta):
            raise ValueError(f"invalid remote MTA name {self.remote_mta!r}")
        if self.will_retry_until is not None and self.action is not Action.DELAYED:
            raise ValueError("Will-Retry-Until only goes with action delayed")
        for when in (self.last_attempt, self.will_retry_until):
            _require_aware(when)


def build_dsn(
    *,
    reporting_mta: str,
    envelope_sender: str,
    recipients: Sequence[RecipientReport],
    original: bytes,
    arrival_date: datetime,
    envid: str | None = None,
    ret: Ret | None = None,
    smtputf8: bool = False,
    postmaster: str | None = None,
    max_returned_size: int = DEFAULT_MAX_RETURNED_SIZE,
    now: datetime | None = None,
) -> bytes:
    """Build the report sent to ``envelope_sender`` about ``recipients`` of ``original``.

    - From ``postmaster`` (default ``MAILER-DAEMON@<reporting_mta>``), To the envelope sender,
      ``Auto-Submitted: auto-replied`` (RFC 3834 §5), a fresh Message-ID, Date ``now``.
    - Part 1: text/plain, French then English: what happened, to whom, and why in plain words.
    - Part 2: ``message/delivery-status`` (RFC 3464), or ``message/global-delivery-status``
      (RFC 6533) when ``smtputf8`` was used or an address is not ASCII.
    - Part 3: the whole original (``message/rfc822``, or ``message/global``) only when ``ret`` is
      FULL, some recipient failed (RFC 3461 §4.3: FULL is for "failed" DSNs), and the original is at
      most ``max_returned_size`` octets with lines a MIME part can carry; else its header block
      (``text/rfc822-headers``, or ``message/global-headers``).

    The envelope sender must not be null: see :func:`dsn_requested`.
    """
    if not envelope_sender:
        raise ValueError("no DSN is ever sent to the null sender")
    if not recipients:
        raise ValueError("a DSN reports on at least one recipient")
    if not _DNS_NAME.match(reporting_mta):
        raise ValueError(f"invalid reporting MTA name {reporting_mta!r}")
    _require_aware(arrival_date)
    _require_aware(now)
    if envid is not None and not all(0x20 <= ord(c) <= 0x7E for c in envid):
        raise ValueError("ENVID must be printable US-ASCII")
    sender_from = postmaster or f"MAILER-DAEMON@{reporting_mta}"
    for address in (envelope_sender, sender_from):
        if _bad_address(address):
            raise ValueError("invalid address")
    now = now or datetime.now(UTC)

    utf8 = smtputf8 or not all(
        _ascii(a)
        for a in (
            envelope_sender,
            sender_from,
            *(r.final_recipient for r in recipients),
            *(r.original_recipient.address for r in recipients if r.original_recipient),
        )
    )
    data = _crlf(original)
    headers = _header_block(data)
    full = (
        ret is Ret.FULL
        and any(r.action is Action.FAILED for r in recipients)
        and len(original) <= max_returned_size
        and _mime_safe(data)
    )

    text_part = _part(
        [
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Transfer-Encoding: quoted-printable",
        ],
        _qp(_human_text(reporting_mta, recipients)),
    )
    status_type = b"message/global-delivery-status" if utf8 else b"message/delivery-status"
    status_body = _status_fields(reporting_mta, envid, arrival_date, recipients, utf8)
    status_part = _part(
        [b"Content-Type: " + status_type, _cte(status_body)],
        status_body,
    )
    if full:
        ctype = b"message/global" if utf8 else b"message/rfc822"
        returned = _part([b"Content-Type: " + ctype, _cte(data)], data)
    else:
        ctype = b"message/global-headers" if utf8 else b"text/rfc822-headers"
        returned = _part([b"Content-Type: " + ctype, _cte(headers)], headers)

    parts = [text_part, status_part, returned]
    boundary = _boundary(parts)
    top = [
        _header("From", f"Mail Delivery System <{sender_from}>", utf8),
        _header("To", f"<{envelope_sender}>", utf8),
        _header("Subject", _subject(recipients), utf8),
        b"Date: " + format_datetime(now).encode(),
        b"Message-ID: <" + secrets.token_hex(16).encode() + b"@" + reporting_mta.encode() + b">",
        b"Auto-Submitted: auto-replied",
        b"MIME-Version: 1.0",
        b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
        b' boundary="' + boundary + b'"',
    ]
    out = b"\r\n".join(top) + b"\r\n\r\n"
    out += b"This is a MIME-encapsulated delivery status notification.\r\n"
    for part in parts:
        out += b"\r\n--" + boundary + b"\r\n" + part
    out += b"\r\n--" + boundary + b"--\r\n"
    return out


# --- the machine-readable part (RFC 3464 §2.2-2.3, RFC 6533 §3) ----------------------------------


def _status_fields(
    reporting_mta: str,
    envid: str | None,
    arrival_date: datetime,
    recipients: Sequence[RecipientReport],
    utf8: bool,
) -> bytes:
    lines = [f"Reporting-MTA: dns; {reporting_mta}"]
    if envid is not None:
        lines.append(f"Original-Envelope-Id: {envid}")
    lines.append(f"Arrival-Date: {format_datetime(arrival_date)}")
    for r in recipients:
        lines.append("")
        if r.original_recipient is not None:
            value = r.original_recipient.to_field(utf8=utf8)
            lines.append(f"Original-Recipient: {_clean(value, utf8)}")
        addr_type = "rfc822" if _ascii(r.final_recipient) else "utf-8"
        lines.append(f"Final-Recipient: {addr_type}; {r.final_recipient}")
        lines.append(f"Action: {r.action.value}")
        lines.append(f"Status: {r.status}")
        if r.remote_mta is not None:
            lines.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.diagnostic is not None:
            lines.append(f"Diagnostic-Code: smtp; {_clean(r.diagnostic, utf8)}")
        if r.last_attempt is not None:
            lines.append(f"Last-Attempt-Date: {format_datetime(r.last_attempt)}")
        if r.will_retry_until is not None:
            lines.append(f"Will-Retry-Until: {format_datetime(r.will_retry_until)}")
    return ("\r\n".join(lines) + "\r\n").encode()


def _clean(value: str, utf8: bool) -> str:
    """One header-safe line: controls (CR, LF...) become spaces, non-ASCII ``?`` unless utf8."""
    text = "".join(
        " " if ord(c) < 0x20 or ord(c) == 0x7F else (c if utf8 or ord(c) < 0x80 else "?")
        for c in value
    )
    text = " ".join(text.split())
    if len(text) > MAX_DIAGNOSTIC_LENGTH:
        text = text[: MAX_DIAGNOSTIC_LENGTH - 3] + "..."
    return text


# --- the human-readable part ---------------------------------------------------------------------

# Plain words for the common RFC 3463 codes (subject.detail), French then English.
_REASONS: dict[str, tuple[str, str]] = {
    "0.0": ("", ""),
    "1.1": ("cette adresse n'existe pas", "this address does not exist"),
    "1.2": ("le domaine de destination n'existe pas", "the destination domain does not exist"),
    "1.10": ("cette adresse n'accepte pas de messages", "this address does not accept mail"),
    "2.1": ("la boîte aux lettres est désactivée", "the mailbox is disabled"),
    "2.2": ("la boîte aux lettres est pleine", "the mailbox is full"),
    "3.4": ("le message est trop volumineux", "the message is too large"),
    "2.3": ("le message est trop volumineux", "the message is too large"),
    "4.1": (
        "le serveur destinataire ne répond pas",
        "the receiving server does not answer",
    ),
    "4.2": ("la connexion a été interrompue", "the connection was broken"),
    "4.4": ("aucun serveur de destination n'a été trouvé", "no destination server was found"),
    "4.7": (
        "le délai de distribution est dépassé",
        "the delivery time limit was exceeded",
    ),
    "7.0": (
        "la sécurité de l'échange n'a pas pu être établie",
        "the exchange could not be secured",
    ),
    "7.1": (
        "la distribution a été refusée par la politique du destinataire",
        "delivery was refused by the recipient's policy",
    ),
    "7.5": ("erreur de certificat ou de chiffrement", "certificate or encryption failure"),
}
_CLASS_WORDS = {
    "2": ("distribué", "delivered"),
    "4": ("erreur temporaire", "temporary error"),
    "5": ("erreur définitive", "permanent error"),
}

_WHAT = {
    Action.DELIVERED: (
        "Votre message a été remis dans la boîte aux lettres des destinataires suivants :",
        "Your message was delivered to the mailbox of the following recipients:",
    ),
    Action.RELAYED: (
        "Votre message a été transmis à un serveur qui ne renvoie pas d'accusé de réception,"
        " pour les destinataires suivants :",
        "Your message was relayed to a server that does not send delivery receipts,"
        " for the following recipients:",
    ),
    Action.EXPANDED: (
        "Votre message a été remis à la liste ou à l'alias suivant, qui l'a redistribué :",
        "Your message was delivered to the following list or alias, which forwarded it:",
    ),
    Action.DELAYED: (
        "Votre message n'a pas encore pu être remis aux destinataires suivants."
        " De nouvelles tentatives auront lieu ; vous n'avez rien à faire pour l'instant :",
        "Your message could not be delivered yet to the following recipients."
        " Delivery will be retried; you do not need to do anything yet:",
    ),
    Action.FAILED: (
        "Votre message n'a pas pu être remis aux destinataires suivants."
        " Aucune nouvelle tentative ne sera faite :",
        "Your message could not be delivered to the following recipients. It will not be retried:",
    ),
}


def _reason(status: str, lang: int) -> str:
    cls, rest = status.split(".", 1)
    plain = _REASONS.get(rest, ("", ""))[lang]
    return plain or _CLASS_WORDS[cls][lang]


def _human_text(reporting_mta: str, recipients: Sequence[RecipientReport]) -> str:
    out: list[str] = []
    intros = (
        f"Ceci est un message automatique du serveur de messagerie {reporting_mta}.",
        f"This is an automatic message from the mail server {reporting_mta}.",
    )
    headings = ("[Français]", "[English]")
    remote = ("réponse du serveur distant", "remote server reply")
    until = ("nouvelles tentatives jusqu'au", "retrying until")
    for lang in (0, 1):
        out += [headings[lang], "", intros[lang]]
        for action in Action:
            group = [r for r in recipients if r.action is action]
            if not group:
                continue
            out += ["", _WHAT[action][lang], ""]
            for r in group:
                out.append(f"  <{r.final_recipient}> : {_reason(r.status, lang)} ({r.status})")
                if r.diagnostic is not None:
                    where = f" ({r.remote_mta})" if r.remote_mta else ""
                    out.append(f"    {remote[lang]}{where} : {_clean(r.diagnostic, True)}")
                if r.will_retry_until is not None:
                    out.append(f"    {until[lang]} {format_datetime(r.will_retry_until)}")
        out.append("")
    return "\n".join(out)


def _subject(recipients: Sequence[RecipientReport]) -> str:
    actions = {r.action for r in recipients}
    if Action.FAILED in actions:
        return "Échec de distribution / Undelivered mail returned to sender"
    if Action.DELAYED in actions:
        return "Distribution retardée / Delivery delayed"
    return "Accusé de réception / Delivery receipt"


# --- MIME plumbing -------------------------------------------------------------------------------


def _part(headers: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


def _cte(body: bytes) -> bytes:
    return b"Content-Transfer-Encoding: " + (b"7bit" if body.isascii() else b"8bit")


def _qp(text: str) -> bytes:
    encoded = quopri.encodestring(text.encode("utf-8"))
    return encoded.replace(b"\n", b"\r\n") + (b"" if encoded.endswith(b"\n") else b"\r\n")


def _header(name: str, value: str, utf8: bool) -> bytes:
    if _ascii(value):
        return f"{name}: {value}".encode()
    if name == "Subject":
        return b"Subject: " + Header(value, "utf-8", header_name=name).encode(
            linesep="\r\n"
        ).encode("ascii")
    if not utf8:
        raise ValueError(f"non-ASCII {name} needs an RFC 6533 (utf8) report")
    return f"{name}: {value}".encode()  # RFC 6532 §3.2: UTF-8 header, sent with SMTPUTF8


def _boundary(parts: list[bytes]) -> bytes:
    while True:
        boundary = b"=_colombe_dsn_" + secrets.token_hex(12).encode()
        if not any(boundary in p for p in parts):
            return boundary


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _header_block(data: bytes) -> bytes:
    if data.startswith(b"\r\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[: end + 2]
    return data if data.endswith(b"\r\n") else data + b"\r\n"  # headers only, no body


def _mime_safe(data: bytes) -> bool:
    """Whether the original can ride as a 7bit/8bit message part (no NUL, lines <= 998)."""
    return b"\x00" not in data and all(len(line) <= MAX_LINE for line in data.split(b"\r\n"))


def _ascii(text: str) -> bool:
    return text.isascii()


def _bad_address(text: str) -> bool:
    """Controls, spaces or angle brackets: would break the header or field it goes into."""
    return any(ord(c) < 0x21 or ord(c) == 0x7F for c in text) or any(c in text for c in "<>")


def _require_aware(when: datetime | None) -> None:
    if when is not None and when.utcoffset() is None:
        raise ValueError("datetimes in a DSN must carry a time zone")
