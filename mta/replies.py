"""Every SMTP reply the MTA gives, in one place (sans-I/O).

A :class:`Reply` is a basic code (RFC 5321 §4.2), an enhanced status code (RFC 3463, announced
with ENHANCEDSTATUSCODES, RFC 2034) and a text. ``str(reply)`` is what aiosmtpd's handlers return
(lines joined by CRLF, no final CRLF: aiosmtpd adds it); :meth:`Reply.wire` is the exact octets.

Rules every reply obeys (checked when it is built, so a bad one fails in tests, not on the wire):

- RFC 5321 §4.2.1: a multi-line reply repeats the code on every line, ``250-`` on all lines but
  the last, ``250 `` on the last.
- RFC 2034 §3: the enhanced code follows the basic code on every line of every 2xx/4xx/5xx reply
  except the greeting and the replies to HELO/EHLO; its class digit equals the basic code's.
- RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, CRLF included.
- Texts are printable ASCII (no CR, LF or other controls): values that come from the peer (a
  domain, an address) go through :func:`printable` first, so a hostile argument can neither split a
  reply into two nor smuggle non-ASCII into it. French texts are therefore written without
  accents ("MSSante", "hors de l'espace de confiance").

Refusal texts say what is wrong in English, for the peer operator's logs, then " / " and a short
French version, for the professional who reads the bounce.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from pki.verify import Reason

MAX_REPLY_LINE: Final = 512
"""RFC 5321 §4.5.3.1.5: octets in a reply line, CRLF included."""
_MAX_LINE_TEXT: Final = MAX_REPLY_LINE - 2
MAX_VALUE_CHARS: Final = 120
"""Longest peer-supplied value (domain, address, host name) copied into a reply text."""

_ENHANCED_RE: Final = re.compile(r"[245]\.(?:0|[1-9][0-9]{0,2})\.(?:0|[1-9][0-9]{0,2})")
_PRINTABLE_RE: Final = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: ``code`` 200-599, ``enhanced`` like ``5.7.1`` (None only for the greeting
    and HELO/EHLO replies), ``text`` with ``\\n`` between the lines of a multi-line reply."""

    code: int
    enhanced: str | None
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code {self.code} outside 200-599")
        if self.enhanced is not None:
            if not _ENHANCED_RE.fullmatch(self.enhanced):
                raise ValueError(f"malformed enhanced status code {self.enhanced!r}")
            if self.enhanced[0] != str(self.code)[0]:  # RFC 3463 §3: same class; never on 3xx
                raise ValueError(f"enhanced code {self.enhanced} does not match {self.code}")
        for line in self.text.split("\n"):
            if not _PRINTABLE_RE.fullmatch(line):
                raise ValueError(f"reply text is not printable ASCII: {line!r}")
        for line in self.lines():
            if len(line) > _MAX_LINE_TEXT:
                raise ValueError(f"reply line of {len(line) + 2} octets (limit {MAX_REPLY_LINE})")

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def lines(self) -> list[str]:
        """The reply lines without CRLF (RFC 5321 §4.2.1)."""
        texts = self.text.split("\n")
        out = []
        for i, text in enumerate(texts):
            last = i == len(texts) - 1
            body = " ".join(part for part in (self.enhanced, text) if part)
            if body:
                out.append(f"{self.code}{' ' if last else '-'}{body}")
            else:  # RFC 5321 §4.2: Reply-code [ SP textstring ]
                out.append(f"{self.code}" if last else f"{self.code}-")
        return out

    def __str__(self) -> str:
        return "\r\n".join(self.lines())

    def wire(self) -> bytes:
        """The octets sent, final CRLF included."""
        return "".join(f"{line}\r\n" for line in self.lines()).encode("ascii")


def printable(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``value`` made safe to quote in a reply, a DSN field or the queue's last error: one line
    of printable ASCII (anything else becomes ``?``), at most ``limit`` characters (``...`` marks
    a cut)."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in value)
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 3] + "..."
    return cleaned


# -- connection, greeting, EHLO -------------------------------------------------------------------


def greeting(hostname: str) -> Reply:
    """220 banner (RFC 5321 §4.3.1; no enhanced code, RFC 2034 §3)."""
    return Reply(220, None, f"{printable(hostname)} ESMTP MSSante")


def helo(hostname: str) -> Reply:
    return Reply(250, None, printable(hostname))


def ehlo(hostname: str, extensions: list[str] | tuple[str, ...]) -> Reply:
    """250 multi-line EHLO reply: our name, then one extension keyword (and parameters) a line
    (RFC 5321 §4.1.1.1). ``extensions`` are ours (``SIZE 10485760``, ``STARTTLS``...)."""
    return Reply(250, None, "\n".join([printable(hostname), *extensions]))


CLOSING: Final = Reply(221, "2.0.0", "Bye")
OK: Final = Reply(250, "2.0.0", "OK")
SENDER_OK: Final = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK: Final = Reply(250, "2.1.5", "Recipient OK")
START_DATA: Final = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
READY_FOR_TLS: Final = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_SUCCEEDED: Final = Reply(235, "2.7.0", "Authentication successful")


def accepted(queue_id: str) -> Reply:
    """250 after DATA: only once the message is durable (ARCHITECTURE invariant)."""
    return Reply(250, "2.0.0", f"OK queued as {printable(queue_id, 64)}")


# -- TLS and certificates (MX) ----------------------------------------------------------------------

STARTTLS_REQUIRED: Final = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
TLS_UNAVAILABLE: Final = Reply(454, "4.7.0", "TLS not available due to temporary reason")
TLS_ALREADY_ACTIVE: Final = Reply(503, "5.5.1", "Error: TLS already active")

NO_CLIENT_CERTIFICATE: Final = Reply(
    550,
    "5.7.0",
    "No client certificate presented: an IGC-Sante server certificate is required"
    " / certificat client absent",
)

_CERTIFICATE_TEXTS: Final[dict[Reason, tuple[str, str, str]]] = {
    # reason: (enhanced, English, French)
    Reason.EXPIRED: ("5.7.0", "Client certificate expired", "certificat expire"),
    Reason.NOT_YET_VALID: (
        "5.7.0",
        "Client certificate not yet valid",
        "certificat pas encore valide",
    ),
    Reason.UNTRUSTED: (
        "5.7.0",
        "Client certificate not issued by IGC-Sante",
        "certificat hors IGC-Sante",
    ),
    Reason.BAD_SIGNATURE: ("5.7.0", "Client certificate signature invalid", "signature invalide"),
    Reason.NOT_A_CA: (
        "5.7.0",
        "Client certificate chain invalid (issuer is not a CA)",
        "chaine de certification invalide",
    ),
    Reason.WRONG_USAGE: (
        "5.7.0",
        "Client certificate not valid for TLS client authentication",
        "usage du certificat incorrect",
    ),
    Reason.POLICY_MISSING: (
        "5.7.0",
        "Client certificate lacks the IGC-Sante server certificate policy",
        "politique de certification absente",
    ),
    Reason.REVOKED: ("5.7.0", "Client certificate revoked", "certificat revoque"),
    Reason.CHAIN_TOO_LONG: (
        "5.7.0",
        "Client certificate chain too long",
        "chaine de certification trop longue",
    ),
    Reason.UNSUPPORTED_EXTENSION: (
        "5.7.0",
        "Client certificate has an unsupported critical extension",
        "extension critique non prise en charge",
    ),
    Reason.WEAK_KEY: (
        "5.7.0",
        "Client certificate uses a weak key or signature algorithm",
        "cle ou algorithme trop faible",
    ),
    Reason.CN_DIFFERS: (
        "5.7.1",
        "Client certificate CN differs from the DN listed in the MSSante whitelist",
        "CN du certificat different du DN de la liste blanche",
    ),
}


def certificate_refused(reason: Reason | None, domain: str | None = None) -> Reply:
    """The refusal at MAIL FROM on the MX for a client certificate ``reason`` (None: no
    certificate presented). ``domain`` is the MAIL FROM domain, for :attr:`Reason.DN_NOT_LISTED`.

    Invalid certificates get 5.7.0 (security status); a valid one that may not speak for the
    domain gets 5.7.1 (not authorised). Revocation status unknown (no valid CRL on our side) is
    transient, 451 4.7.0: still refused (fail closed), but the peer retries instead of bouncing
    mail because of our CRL outage."""
    if reason is None:
        return NO_CLIENT_CERTIFICATE
    if reason is Reason.OK:
        raise ValueError("certificate_refused() called for a valid certificate")
    if reason is Reason.DN_NOT_LISTED:
        return dn_not_listed(domain or "")
    if reason is Reason.REVOCATION_UNKNOWN:
        return REVOCATION_UNKNOWN
    enhanced, english, french = _CERTIFICATE_TEXTS[reason]
    return Reply(550, enhanced, f"{english} / {french}")


REVOCATION_UNKNOWN: Final = Reply(
    451,
    "4.7.0",
    "Cannot check client certificate revocation now, try again later"
    " / revocation du certificat non verifiable, reessayer plus tard",
)


def dn_not_listed(domain: str) -> Reply:
    """550 5.7.1 at MAIL FROM: the peer DN is not listed for the sender's domain (spec §2.2)."""
    return Reply(
        550,
        "5.7.1",
        f"Certificate DN not listed in the MSSante whitelist for domain {printable(domain)}"
        " / DN du certificat absent de la liste blanche pour ce domaine",
    )


NULL_SENDER_DN_NOT_LISTED: Final = Reply(
    550,
    "5.7.1",
    "Null sender refused: certificate DN not listed in the MSSante whitelist"
    " / expediteur vide refuse: DN du certificat absent de la liste blanche",
)

# -- recipients --------------------------------------------------------------------------------------

UNKNOWN_MAILBOX: Final = Reply(
    550,
    "5.1.1",
    "Recipient address rejected: no such active mailbox / boite aux lettres inconnue ou inactive",
)
"""One reply for unknown, suspended and closed BALs: refused at RCPT (no backscatter), and a
peer cannot tell a closed BAL from one that never existed."""


def outside_trust_space(domain: str) -> Reply:
    """550 5.7.1 at RCPT on submission: the domain is not on the whitelist (issue [mta] wording,
    written without the accent: "domaine hors de l'espace de confiance MSSante")."""
    return Reply(
        550,
        "5.7.1",
        f"Recipient domain {printable(domain)} is not in the MSSante trust space"
        " / domaine hors de l'espace de confiance MSSante",
    )


RELAY_DENIED: Final = Reply(
    550, "5.7.1", "Relay access denied: domain not hosted here / domaine non heberge ici"
)
NON_ASCII_DOMAIN: Final = Reply(
    501,
    "5.1.2",
    "Domain must be written in ASCII (IDNA A-labels, xn--) / domaine a ecrire en ASCII (xn--)",
)
INVALID_PATIENT_ADDRESS: Final = Reply(
    550,
    "5.1.3",
    "Patient address must be a valid 15-digit INS at patient.mssante.fr"
    " / adresse patient invalide: INS incorrect",
)
INVALID_ADDRESS: Final = Reply(
    501, "5.1.3", "Bad recipient address syntax / syntaxe d'adresse incorrecte"
)
INVALID_SENDER_ADDRESS: Final = Reply(
    501, "5.1.7", "Bad sender address syntax / syntaxe d'adresse expediteur incorrecte"
)
TOO_MANY_RECIPIENTS: Final = Reply(452, "4.5.3", "Too many recipients / trop de destinataires")

# -- sizes ---------------------------------------------------------------------------------------


def message_too_big(limit: int) -> Reply:
    """552 5.3.4: over the listener's limit (RFC 1870 §6.1, at MAIL with SIZE= or after DATA)."""
    return Reply(
        552,
        "5.3.4",
        f"Message size exceeds fixed limit of {limit} octets / message trop volumineux",
    )


def patient_message_too_big(limit: int) -> Reply:
    """552 5.3.4: a message to patient.mssante.fr over Mon espace sante's limit (spec §2.6, §7)."""
    return Reply(
        552,
        "5.3.4",
        f"Message to a patient exceeds the Mon espace sante limit of {limit} octets"
        " / message trop volumineux pour Mon espace sante",
    )


# -- limits and session ------------------------------------------------------------------------

TOO_MANY_CONNECTIONS: Final = Reply(
    421, "4.7.0", "Too many connections, try again later / trop de connexions"
)
TOO_MANY_ERRORS: Final = Reply(421, "4.7.0", "Too many errors, closing connection / trop d'erreurs")
TIMEOUT: Final = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
SESSION_FAILED: Final = Reply(
    421, "4.3.0", "Temporary failure, closing connection / erreur temporaire"
)
"""Receiving a message failed mid-stream: we hang up rather than read its text as commands."""
TLS_SETUP_FAILED: Final = Reply(421, "4.7.0", "TLS session setup failed, try again later")
SHUTTING_DOWN: Final = Reply(421, "4.3.2", "Service shutting down, try again later")

# -- authentication (submission) -----------------------------------------------------------------

AUTH_REQUIRED: Final = Reply(530, "5.7.0", "Authentication required / authentification requise")
AUTH_FAILED: Final = Reply(
    535, "5.7.8", "Authentication credentials invalid / identifiants invalides"
)
ENCRYPTION_REQUIRED_FOR_AUTH: Final = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
AUTH_MECHANISM_UNSUPPORTED: Final = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_ALREADY_DONE: Final = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_CANCELLED: Final = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_LINE_TOO_LONG: Final = Reply(500, "5.5.6", "Authentication Exchange line is too long")
AUTH_TEMPORARY_FAILURE: Final = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_THROTTLED: Final = Reply(
    454, "4.7.0", "Too many authentication failures, try again later / trop d'echecs"
)
TOO_MANY_AUTH_FAILURES: Final = Reply(
    421, "4.7.0", "Too many authentication failures / trop d'echecs"
)


def sender_not_owned(address: str) -> Reply:
    """553 5.7.1 at MAIL FROM on submission: the user neither owns ``address`` nor is delegated
    the send right on it (as Postfix's reject_sender_login_mismatch words it)."""
    return Reply(
        553,
        "5.7.1",
        f"Sender address rejected: {printable(address)} not owned by user"
        " / pas de droit d'envoi pour cette adresse",
    )


def header_from_not_owned(address: str) -> Reply:
    """550 5.7.1 after DATA: a From: address the user may not send as. 550, not 553: RFC 5321
    §4.3.2 lists 550 (policy) among the end-of-DATA replies, not 553."""
    return Reply(
        550,
        "5.7.1",
        f"From: header address {printable(address)} not owned by user"
        " / pas de droit d'envoi pour l'adresse From:",
    )


NULL_SENDER_ON_SUBMISSION: Final = Reply(
    553,
    "5.7.1",
    "Null sender not allowed on submission / expediteur vide interdit en soumission",
)
NO_HEADER_FROM: Final = Reply(
    550, "5.6.0", "Message has no valid From: header / en-tete From: absent ou invalide"
)

# -- SMTP smuggling (CVE-2023-51764 family), as Postfix 3.9 with smtpd_forbid_bare_newline=reject ---
# Postfix replies "550 5.5.2 Error: bare <LF> received" (smtpd_forbid_bare_newline_reject_code)
# and disconnects. We refuse a bare CR the same way (Postfix passes it through), which also
# covers the <CR>.<CR> and <LF>.<CR><LF> end-of-data variants: no message is ever split.

BARE_LF: Final = Reply(550, "5.5.2", "Error: bare <LF> received")
BARE_CR: Final = Reply(550, "5.5.2", "Error: bare <CR> received")
PIPELINING_VIOLATION: Final = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")
"""Commands pipelined after STARTTLS (command injection, CVE-2011-0411) or before the greeting."""

# -- syntax and sequence --------------------------------------------------------------------------

COMMAND_UNRECOGNIZED: Final = Reply(500, "5.5.2", "Error: command not recognized")
LINE_TOO_LONG: Final = Reply(500, "5.5.2", "Error: line too long")
INVALID_UTF8: Final = Reply(500, "5.5.2", "Error: command is not valid UTF-8")
SYNTAX_ERROR: Final = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
COMMAND_NOT_IMPLEMENTED: Final = Reply(502, "5.5.1", "Error: command not implemented")
NEED_EHLO: Final = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NEED_MAIL: Final = Reply(503, "5.5.1", "Error: need MAIL command")
NESTED_MAIL: Final = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_RCPT: Final = Reply(503, "5.5.1", "Error: need RCPT command")
PARAMETER_UNRECOGNIZED: Final = Reply(555, "5.5.4", "Unsupported MAIL FROM or RCPT TO parameter")

# -- transient failures ----------------------------------------------------------------------------

STORE_UNAVAILABLE: Final = Reply(
    451, "4.3.0", "Temporary failure storing the message, try again later / erreur temporaire"
)
WHITELIST_UNAVAILABLE: Final = Reply(
    451,
    "4.7.0",
    "MSSante whitelist not available yet, try again later"
    " / liste blanche indisponible, reessayer plus tard",
)
"""No whitelist loaded (a process just started, the first download failed): fail closed, but
temporarily, so no peer bounces mail because of our outage."""
CERTIFICATE_UNCHECKED: Final = Reply(
    451,
    "4.7.0",
    "Cannot check the client certificate now, try again later"
    " / certificat non verifiable, reessayer plus tard",
)


def catalogue() -> dict[str, Reply]:
    """Every reply of this module by name, the factories with example arguments: for tests, for
    the operator documentation and for ``colombe`` to list what the MTA may answer."""
    replies: dict[str, Reply] = {
        name: value for name, value in globals().items() if isinstance(value, Reply)
    }
    replies.update(
        {
            "greeting()": greeting("mx.example.mssante.fr"),
            "helo()": helo("mx.example.mssante.fr"),
            "ehlo()": ehlo(
                "mx.example.mssante.fr",
                ["PIPELINING", "SIZE 26214400", "STARTTLS", "ENHANCEDSTATUSCODES", "8BITMIME"],
            ),
            "accepted()": accepted("4f2a9c"),
            "dn_not_listed()": dn_not_listed("example.mssante.fr"),
            "outside_trust_space()": outside_trust_space("gmail.com"),
            "message_too_big()": message_too_big(10_485_760),
            "patient_message_too_big()": patient_message_too_big(25_000_000),
            "sender_not_owned()": sender_not_owned("other@example.mssante.fr"),
            "header_from_not_owned()": header_from_not_owned("other@example.mssante.fr"),
        }
    )
    for reason in Reason:
        if reason is not Reason.OK:
            replies[f"certificate_refused({reason.name})"] = certificate_refused(
                reason, "example.mssante.fr"
            )
    return replies
