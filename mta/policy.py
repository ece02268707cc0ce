"""The MTA's decisions as pure functions (sans-I/O): who may send, where a recipient goes, which
sizes apply, what an X-MSS-* header may tell the logs.

Every function takes plain values (strings, sets, :class:`store.model.BalStatus`, an object with
the three whitelist lookups) and returns a value or a :class:`mta.replies.Reply`; the SMTP layer
fetches what they need (a BAL's status from the store, the peer certificate's subject from the TLS
session) and sends the reply. Nothing here reads a socket, a file or the database.

Address rules (submission and MX alike):

- An address is ``local@domain``. The domain is compared in ASCII lower case, without a final dot,
  and must be a host name of LDH labels (:func:`directory.whitelist.normalise_domain`). An
  internationalised domain must be written as its A-labels (``xn--...``): a U-label is refused
  with :data:`~mta.replies.NON_ASCII_DOMAIN`, never converted, because IDNA 2003 mapping folds
  distinct names together (see the whitelist's docstring) and the whitelist keys A-labels only.
- The local part must be an RFC 5321 §4.1.2 Dot-string of ASCII ``atext`` of at most 64 octets
  (§4.5.3.1.1). Quoted local parts (``"a b"@x``) and non-ASCII (SMTPUTF8) local parts are refused
  as bad syntax: no BAL can have one (``store.normalise_address``), MSSanté addresses are
  published in the national directory as plain ASCII, and refusing them removes the
  quoting/escaping ambiguities from every later comparison.
- Hosted and patient addresses are compared in lower case (the store keeps BAL addresses lower
  case); a remote address keeps its local part as written (RFC 5321 §2.4: only the receiving
  operator may interpret its case) with its domain lowered.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography import x509

from directory.whitelist import normalise_domain
from mta import replies
from mta.replies import Reply
from store.model import BalStatus

PATIENT_DOMAIN: Final = "patient.mssante.fr"
"""Mon espace santé's domain (mssante-spec §7): local part = the patient's INS matricule."""

PATIENT_TEST_MAILBOXES: Final = frozenset({"reponse.automatique-test"})
"""Local parts of ``patient.mssante.fr`` that are not INS but are routed as patients: CNAM's test
auto-reply mailbox named in the whitelist description (mssante-spec §7), which operators use to
check their link to Mon espace santé."""

PATIENT_MAX_BYTES: Final = 25_000_000
"""Largest message to a patient: "25 Mo total" (mssante-spec §2.6 and §7, CNAM *ENS Mon espace
santé Messagerie* v1.3 as summarised; the digest does not say whether Mo means 10^6 or 2^20).
We take 25 × 1,000,000, the smaller reading: a message between 25,000,000 and 26,214,400 octets
is refused at submission with an explicit 552 5.3.4 rather than accepted and later bounced by
Mon espace santé with "Undelivered Mail Returned to Sender" (fail early, fail closed). Compared
with the message as received (after dot-unstuffing), so our trace header (< 1 KB) may push a
message at the very edge over a 10^6-based limit at CNAM. A 26 MB message is refused under both
readings."""

MAX_LOCAL_PART: Final = 64  # RFC 5321 §4.5.3.1.1

# RFC 5321 §4.1.2 Dot-string = Atom *("." Atom); Atom = 1*atext (RFC 5322 §3.2.3).
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING_RE: Final = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")

# INS matricule = NIR (or NIA) of 13 characters + 2-digit key. Positions 6-7 (1-based) are the
# département of birth, "2A"/"2B" for Corsica since 1976.
_INS_RE: Final = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}", re.IGNORECASE)
_CORSICA: Final = {"2A": "19", "2B": "18"}


class WhitelistView(Protocol):
    """What the policy asks of :class:`directory.whitelist.Whitelist` (a fake in tests)."""

    def allows(self, domain: str, peer_dn: x509.Name) -> bool: ...

    def is_listed(self, domain: str) -> bool: ...

    def dn_is_listed(self, peer_dn: x509.Name) -> bool: ...


# -- addresses -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address: ``local`` as written, ``domain`` normalised (ASCII, lower case)."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def lowered(self) -> str:
        """The address as the store keys BALs (all lower case)."""
        return f"{self.local.lower()}@{self.domain}"


def parse_address(address: str) -> Address | Reply:
    """``address`` (as given in MAIL FROM/RCPT TO, without angle brackets) parsed, or the reply
    refusing it: :data:`~mta.replies.NON_ASCII_DOMAIN` for a domain that is not ASCII,
    :data:`~mta.replies.INVALID_ADDRESS` for anything else malformed (see the module docstring)."""
    local, at, raw_domain = address.rpartition("@")
    if not at or not local:
        return replies.INVALID_ADDRESS
    if not raw_domain.isascii():
        return replies.NON_ASCII_DOMAIN
    domain = normalise_domain(raw_domain)
    # RFC 5321 §4.1.2: no spaces, no final dot in an SMTP Domain.
    if domain is None or raw_domain != raw_domain.strip() or raw_domain.endswith("."):
        return replies.INVALID_ADDRESS
    if len(local) > MAX_LOCAL_PART or not _DOT_STRING_RE.fullmatch(local):
        return replies.INVALID_ADDRESS
    return Address(local, domain)


def _hosted(domain: str, hosted_domains: Collection[str]) -> bool:
    return any(normalise_domain(d) == domain for d in hosted_domains)


# -- INS ------------------------------------------------------------------------------------------


def ins_key(nir13: str) -> int:
    """The control key of a 13-character NIR/NIA: 97 − (NIR mod 97), Corsica's ``2A``/``2B`` in
    positions 6-7 counted as ``19``/``18`` (INSEE's rule for the NIR key, also applied to the NIA
    and hence to the INS matricule; see https://fr.wikipedia.org/wiki/Num%C3%A9ro_de_s%C3%A9curit%C3%A9_sociale_en_France
    §Clé de contrôle, and ANS *Référentiel INS*: the matricule INS is the NIR or NIA). The key is
    1..97, written on two digits."""
    if len(nir13) != 13:
        raise ValueError("a NIR has 13 characters")
    dept = nir13[5:7].upper()
    digits = nir13[:5] + _CORSICA.get(dept, dept) + nir13[7:]
    if not digits.isascii() or not digits.isdigit():
        raise ValueError("a NIR has digits only, but for 2A/2B in positions 6-7")
    return 97 - int(digits) % 97


def valid_ins(local_part: str) -> bool:
    """Whether ``local_part`` is an INS matricule: 15 characters, the 13-character NIR/NIA then
    its 2-digit key (:func:`ins_key`). All digits, except ``2A``/``2B`` (either case: the store
    lowers addresses) in positions 6-7 for people born in Corsica; refusing those would make
    their Mon espace santé unreachable.

    Both examples of mssante-spec §4.4 pass: ``146026322000196`` (NIR 1460263220001, 97 −
    1460263220001 mod 97 = 96) and ``279035121518989`` (NIR 2790351215189, key 89).

    Only the form and the key are checked, not that the INS is *qualified* (ECO.2.2.6): that
    needs the INSi teleservice, which the sending software calls, not the MTA."""
    if not _INS_RE.fullmatch(local_part):
        return False
    return ins_key(local_part[:13]) == int(local_part[13:])


# -- recipients at submission ----------------------------------------------------------------------


class RouteKind(enum.StrEnum):
    LOCAL = "local"  # a hosted, active BAL: store.deliver()
    REMOTE = "remote"  # a whitelisted MSSanté domain: outbound queue
    PATIENT = "patient"  # patient.mssante.fr: outbound queue, patient rules
    REFUSED = "refused"  # refused at RCPT with ``reply``


@dataclass(frozen=True, slots=True)
class Route:
    """Where one recipient goes. ``address`` is what to deliver or queue to (lower case for LOCAL
    and PATIENT, the local part as written for REMOTE); for REFUSED it is the input and ``reply``
    the refusal."""

    kind: RouteKind
    address: str
    reply: Reply | None = None


def route_recipient(
    address: str,
    *,
    hosted_domains: Collection[str],
    local_bal_status: BalStatus | None,
    whitelist: WhitelistView,
) -> Route:
    """Route one RCPT TO of an authenticated submission (issue [mta], ARCHITECTURE flow 2).

    ``local_bal_status`` is the status of the BAL at ``address`` if the caller found one in the
    store (None: no such BAL, or not looked up because the domain is not hosted). In order:

    1. malformed address -> REFUSED with 501 5.1.3 (or 501 5.1.2 for a non-ASCII domain);
    2. a hosted domain -> LOCAL if the BAL is active, else REFUSED 550 5.1.1. A hosted domain is
       never REMOTE even though it is on the whitelist (we are an operator like any other): the
       queue would hand the message to our own MX; and a closed BAL is refused now, not bounced;
    3. ``patient.mssante.fr`` -> REFUSED 550 5.1.3 unless the local part is a valid INS (or
       CNAM's test mailbox); REFUSED 550 5.7.1 if the domain is missing from the whitelist (a
       damaged whitelist: the queue could not check CNAM's DN, fail closed); else PATIENT;
    4. a domain on the whitelist -> REMOTE;
    5. anything else -> REFUSED 550 5.7.1 "domaine hors de l'espace de confiance MSSante"
       (mssante-spec §2.2, §10.2.1: never queue for the Internet).
    """
    parsed = parse_address(address)
    if isinstance(parsed, Reply):
        return Route(RouteKind.REFUSED, address, parsed)
    if _hosted(parsed.domain, hosted_domains):
        if local_bal_status is BalStatus.ACTIVE:
            return Route(RouteKind.LOCAL, parsed.lowered)
        return Route(RouteKind.REFUSED, address, replies.UNKNOWN_MAILBOX)
    if parsed.domain == PATIENT_DOMAIN:
        local = parsed.local.lower()
        if not (valid_ins(local) or local in PATIENT_TEST_MAILBOXES):
            return Route(RouteKind.REFUSED, address, replies.INVALID_PATIENT_ADDRESS)
        if not whitelist.is_listed(PATIENT_DOMAIN):
            return Route(RouteKind.REFUSED, address, replies.outside_trust_space(PATIENT_DOMAIN))
        return Route(RouteKind.PATIENT, parsed.lowered)
    if whitelist.is_listed(parsed.domain):
        return Route(RouteKind.REMOTE, str(parsed))
    return Route(RouteKind.REFUSED, address, replies.outside_trust_space(parsed.domain))


# -- inbound MX ----------------------------------------------------------------------------------


def check_inbound_sender(
    mail_from: str, peer_dn: x509.Name | None, whitelist: WhitelistView
) -> Reply | None:
    """MAIL FROM on the MX, once the peer certificate has been validated by ``pki`` (a
    certificate ``pki`` refused is answered with :func:`mta.replies.certificate_refused`).

    ``peer_dn`` is the certificate subject as an ``x509.Name`` (never a string, see
    :meth:`directory.whitelist.Whitelist.allows`); None: no certificate -> 550 5.7.0.
    Null sender (``<>``, bounces and DSNs): the DN must be listed for at least one domain, else
    550 5.7.1 (mssante-spec §2.2, §10.1.3). Otherwise the DN must be listed for the MAIL FROM
    domain, else 550 5.7.1 naming the domain. Only the domain of the sender is read: the local
    part is the sending operator's business, so it is not checked beyond being non-empty."""
    if peer_dn is None:
        return replies.NO_CLIENT_CERTIFICATE
    if mail_from == "":
        return None if whitelist.dn_is_listed(peer_dn) else replies.NULL_SENDER_DN_NOT_LISTED
    local, at, raw_domain = mail_from.rpartition("@")
    if not at or not local:
        return replies.INVALID_SENDER_ADDRESS
    if not raw_domain.isascii():
        return replies.NON_ASCII_DOMAIN
    domain = normalise_domain(raw_domain)
    if domain is None:
        return replies.INVALID_SENDER_ADDRESS
    return None if whitelist.allows(domain, peer_dn) else replies.dn_not_listed(domain)


def check_inbound_recipient(
    address: str, *, hosted_domains: Collection[str], bal_status: BalStatus | None
) -> Reply | None:
    """RCPT TO on the MX: only active BALs of our hosted domains (mssante-spec §10.1.4).

    ``bal_status`` is the status of the BAL at ``address`` (None: none found). Malformed ->
    501 5.1.3 / 5.1.2; a domain we do not host -> 550 5.7.1 relay denied; unknown, suspended or
    closed BAL -> the same 550 5.1.1 (refused at RCPT: no backscatter)."""
    parsed = parse_address(address)
    if isinstance(parsed, Reply):
        return parsed
    if not _hosted(parsed.domain, hosted_domains):
        return replies.RELAY_DENIED
    return None if bal_status is BalStatus.ACTIVE else replies.UNKNOWN_MAILBOX


# -- sizes ------------------------------------------------------------------------------------------


def size_limit_for(route_kinds: Iterable[RouteKind], listener_limit: int) -> int:
    """The largest message accepted for recipients of ``route_kinds``: the listener's limit,
    lowered to :data:`PATIENT_MAX_BYTES` when one recipient is a patient."""
    if RouteKind.PATIENT in set(route_kinds):
        return min(listener_limit, PATIENT_MAX_BYTES)
    return listener_limit


def check_message_size(
    size: int, route_kinds: Iterable[RouteKind], listener_limit: int
) -> Reply | None:
    """The refusal for a message of ``size`` octets, or None. Use it at MAIL FROM with the SIZE=
    parameter and no kinds (the listener limit), at each RCPT with ``[route.kind]`` and the
    declared SIZE (so only the patient recipient is refused), and after DATA with every kind
    accepted (a message is one transaction: over 25 MB with a patient among its recipients, it
    is refused as a whole). Patient reply when the patient limit is the one exceeded."""
    kinds = set(route_kinds)
    if size <= size_limit_for(kinds, listener_limit):
        return None
    if RouteKind.PATIENT in kinds and listener_limit >= PATIENT_MAX_BYTES:
        return replies.patient_message_too_big(PATIENT_MAX_BYTES)
    return replies.message_too_big(listener_limit)


# -- submission senders -----------------------------------------------------------------------------


def sender_allowed(
    user: str,
    envelope_from: str,
    header_from_addresses: Sequence[str] | None,
    may_send_as: Collection[str],
) -> Reply | None:
    """Whether the authenticated ``user`` (its own BAL address) may send this message.

    Every address must be ``user`` or one of ``may_send_as`` (the BALs the user is delegated the
    send right on, from the store's delegations), compared in lower case:

    - ``envelope_from`` (MAIL FROM): empty -> 553 5.7.1 (a user never sends bounces); malformed
      -> 501 5.1.7; someone else's -> 553 5.7.1 naming it;
    - ``header_from_addresses`` (the From: addresses, RFC 5322 allows several): None when not
      known yet (the MAIL FROM stage); empty -> 550 5.6.0; any one not allowed -> 550 5.7.1
      naming it. The envelope and From: may differ (a secretary sending as the practice) as long
      as both are allowed."""
    allowed = {a for a in map(_lower, (user, *may_send_as)) if a is not None}
    if envelope_from == "":
        return replies.NULL_SENDER_ON_SUBMISSION
    envelope = _lower(envelope_from)
    if envelope is None:
        return replies.INVALID_SENDER_ADDRESS
    if envelope not in allowed:
        return replies.sender_not_owned(envelope_from)
    if header_from_addresses is None:
        return None
    if not header_from_addresses:
        return replies.NO_HEADER_FROM
    for address in header_from_addresses:
        if _lower(address) not in allowed:
            return replies.header_from_not_owned(address)
    return None


def _lower(address: str) -> str | None:
    parsed = parse_address(address)
    return None if isinstance(parsed, Reply) else parsed.lowered


# -- X-MSS-* headers -------------------------------------------------------------------------------

MSS_HEADER_PREFIX: Final = "x-mss-"
MAX_LOGGED_NIL: Final = 64
PRESENT: Final = "present"
INVALID: Final = "invalid"
DUPLICATE: Final = "duplicate"

MAX_MSS_HEADERS: Final = 16
"""Distinct X-MSS-* names summarised; a message with more gets one :data:`MORE_MSS_HEADERS` key
(bounded log lines whatever the sender writes)."""
MORE_MSS_HEADERS: Final = "X-MSS-*"

# RFC 5322 §3.6.8 field-name: printable ASCII but ":"; 76 keeps a logged name under a line.
_FIELD_NAME_RE: Final = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")
_NIL_RE: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_LOGGED_NIL}}}")


def mss_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Which X-MSS-* headers a message carries (mssante-spec §4.2), as a log-safe summary:
    upper-case header name -> what may be logged about it.

    - ``X-MSS-INS``: ``O`` or ``N`` (the flag), else ``invalid``: a wrong value may be an INS
      typed by mistake, and no INS may reach the logs (spec §4.4, ARCHITECTURE invariants);
    - ``X-MSS-MES``: ``FIN``, else ``invalid``;
    - ``X-MSS-NIL``: the LPS product reference (not personal, wanted for indicators) if it is one
      token of printable ASCII of at most 64 characters, else ``invalid``;
    - ``X-MSS-CODECDA`` and any other ``X-MSS-*``: ``present`` only: the CDA type code tells what
      kind of health document the message carries, and unknown headers may carry anything;
    - a header that occurs more than once: ``duplicate`` (never its values);
    - names that are not RFC 5322 field names are skipped; past :data:`MAX_MSS_HEADERS` distinct
      names, the others are summed up as ``X-MSS-*: present``.

    ``headers`` are (name, value) pairs, as ``email.message.Message.items()`` gives them; names
    are matched case-insensitively, values are unfolded and stripped."""
    seen: dict[str, str] = {}
    for name, value in headers:
        key = name.strip().upper()
        if not key.lower().startswith(MSS_HEADER_PREFIX):
            continue
        if not _FIELD_NAME_RE.fullmatch(key):  # not a header field name: nothing safe to log
            continue
        if key in seen:
            seen[key] = DUPLICATE
            continue
        if len(seen) >= MAX_MSS_HEADERS:
            seen[MORE_MSS_HEADERS] = PRESENT
            continue
        seen[key] = _summarise(key, " ".join(value.split()))
    return seen


def _summarise(key: str, value: str) -> str:
    if key == "X-MSS-INS":
        return value if value in ("O", "N") else INVALID
    if key == "X-MSS-MES":
        return value if value == "FIN" else INVALID
    if key == "X-MSS-NIL":
        return value if _NIL_RE.fullmatch(value) else INVALID
    return PRESENT
