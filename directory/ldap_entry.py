"""What a BAL looks like in the national directory over LDAP: its DN, its attributes, and how an
entry found there differs from the one we want. Pure functions (no connection): the publisher
(:mod:`directory.publisher`) does the I/O.

The schema is ours, shipped in ``directory/ldap_schema/`` (its header explains the OIDs). One entry
per published BAL, directly under the operator's base DN, RDN ``mail=<address>``; objectClass
``mssBal``. Attribute values follow the store's :class:`store.model.Bal` (mssante-spec §5.1):

==================  =========================================================================
``mail``            the address (standard attribute, core.schema), lower case, also the RDN
``mssBalType``      PER / ORG / APP / CAB
``mssPersonId``     national person id (RPPS/ADELI idNat PS) of a PER or CAB BAL
``mssStructureId``  national structure id (idNat struct) of an ORG or APP BAL
``mssDisplayName``  display name
``mssProfession``   profession code
``mssService``      service de rattachement
``mssDescription``  description
``mssListeRouge``   ``TRUE``/``FALSE`` (always FALSE: liste rouge BALs are not published)
``mssRank``         rank among the BALs of one holder, 1 = preferred
==================  =========================================================================
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ldap3 import MODIFY_REPLACE
from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import escape_rdn, parse_dn

from store.model import Bal, BalType

SCHEMA_DIR = Path(__file__).parent / "ldap_schema"
# slapd.conf form (``include``) and cn=config form (``ldapadd``) of the same definitions.
SCHEMA_FILE = SCHEMA_DIR / "mssante.schema"
LDIF_FILE = SCHEMA_DIR / "mssante.ldif"

OBJECT_CLASS = "mssBal"
RDN_ATTRIBUTE = "mail"
ADDRESS = "mail"
BAL_TYPE = "mssBalType"
PERSON_ID = "mssPersonId"
STRUCTURE_ID = "mssStructureId"
DISPLAY_NAME = "mssDisplayName"
PROFESSION = "mssProfession"
SERVICE = "mssService"
DESCRIPTION = "mssDescription"
LISTE_ROUGE = "mssListeRouge"
RANK = "mssRank"

# The attributes the publisher owns: on an entry of ours, any of them not wanted is removed and any
# differing value replaced. Other attributes someone else put on the entry are left alone (the
# directory's administrators may annotate entries; we only vouch for ours).
MANAGED_ATTRIBUTES: tuple[str, ...] = (
    ADDRESS,
    BAL_TYPE,
    PERSON_ID,
    STRUCTURE_ID,
    DISPLAY_NAME,
    PROFESSION,
    SERVICE,
    DESCRIPTION,
    LISTE_ROUGE,
    RANK,
)
_MANAGED = {name.lower(): name for name in MANAGED_ATTRIBUTES}

# The national identifier is a person's for personal and practice BALs, a structure's for
# organisational and applicative ones (mssante-spec §5.1, §5.6).
_ID_ATTRIBUTE = {
    BalType.PER: PERSON_ID,
    BalType.CAB: PERSON_ID,
    BalType.ORG: STRUCTURE_ID,
    BalType.APP: STRUCTURE_ID,
}

Attributes = dict[str, list[str]]
Changes = dict[str, list[tuple[str, list[str]]]]


def bal_dn(address: str, base_dn: str) -> str:
    """The DN of a BAL's entry: ``mail=<address>,<base_dn>`` (RFC 4514 escaping: an address may
    hold ``+`` or ``=`` in its local part)."""
    return f"{RDN_ATTRIBUTE}={escape_rdn(address.lower())},{base_dn}"


def address_of_dn(dn: str) -> str | None:
    """The address named by an entry's RDN if it is ``mail=...`` (lower case), else None."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPInvalidDnError:
        return None
    if not parts:
        return None
    attribute, value, _ = parts[0]
    if attribute.lower() != RDN_ATTRIBUTE:
        return None
    return _unescape(value).lower()


_HEX = frozenset(b"0123456789abcdefABCDEF")


def normalise_dn(dn: str) -> tuple[tuple[str, str], ...]:
    """A DN for comparison: attribute names and values lower-cased, escapes and spaces around
    separators resolved (the server may spell our base DN differently from the configuration)."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPInvalidDnError:
        return (("", dn.lower()),)
    return tuple((a.lower(), _unescape(v).lower()) for a, v, _ in parts)


def same_dn(a: str, b: str) -> bool:
    return normalise_dn(a) == normalise_dn(b)


def _unescape(value: str) -> str:
    """RFC 4514 §2.4 un-escaping of an RDN value (``\\,`` and ``\\2B`` forms)."""
    out = bytearray()
    i = 0
    raw = value.encode()
    while i < len(raw):
        c = raw[i]
        if c == 0x5C and i + 1 < len(raw):  # backslash
            pair = raw[i + 1 : i + 3]
            # int(..., 16) alone would accept "+b": check for two hex digits first.
            if len(pair) == 2 and all(ch in _HEX for ch in pair):
                out.append(int(pair, 16))
                i += 3
                continue
            out.append(raw[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return out.decode(errors="replace")


def wanted_attributes(bal: Bal) -> Attributes:
    """The entry we want for a publishable BAL (objectClass included). Empty values are left out:
    LDAP directory strings cannot be empty."""
    attrs: Attributes = {
        "objectClass": [OBJECT_CLASS],
        ADDRESS: [bal.address.lower()],
        BAL_TYPE: [BalType(bal.type).value],
        LISTE_ROUGE: ["TRUE" if bal.liste_rouge else "FALSE"],
        RANK: [str(bal.rank)],
    }
    optional = {
        _ID_ATTRIBUTE[BalType(bal.type)]: bal.national_id,
        DISPLAY_NAME: bal.display_name,
        PROFESSION: bal.profession,
        SERVICE: bal.service,
        DESCRIPTION: bal.description,
    }
    for name, value in optional.items():
        if value is not None and value.strip():
            attrs[name] = [value]
    return attrs


def _managed_view(attrs: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """The managed attributes of an entry, names lower-cased, values sorted (all are single-valued
    in our schema, but an entry edited behind our back may carry several)."""
    view: dict[str, tuple[str, ...]] = {}
    for name, values in attrs.items():
        key = name.lower()
        if key in _MANAGED and values:
            view[key] = tuple(sorted(values))
    return view


def is_ours(attrs: Mapping[str, Sequence[str]]) -> bool:
    """Whether an entry is a BAL entry (objectClass mssBal), i.e. one we may modify or delete."""
    for name, values in attrs.items():
        if name.lower() == "objectclass":
            return any(v.lower() == OBJECT_CLASS.lower() for v in values)
    return False


def entry_digest(attrs: Mapping[str, Sequence[str]]) -> bytes:
    """A short fingerprint of what we manage in an entry: equal digests, nothing to change.

    The full reconciliation keeps this instead of the entries themselves, so that its memory stays
    small for a directory of hundreds of thousands of BALs.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(b"ours" if is_ours(attrs) else b"foreign")
    for name, values in sorted(_managed_view(attrs).items()):
        h.update(b"\0" + name.encode())
        for value in values:
            h.update(b"\1" + value.encode())
    return h.digest()


def modifications(
    existing: Mapping[str, Sequence[str]], wanted: Mapping[str, Sequence[str]]
) -> Changes:
    """The LDAP modify changes that turn ``existing`` into ``wanted`` for the managed attributes
    (empty: nothing to do). Differing attributes are replaced whole; unwanted ones are replaced by
    no value, which removes them (RFC 4511 §4.6) and is harmless if they are already gone."""
    have = _managed_view(existing)
    want = _managed_view(wanted)
    changes: Changes = {}
    for key in sorted(have.keys() | want.keys()):
        if have.get(key) != want.get(key):
            changes[_MANAGED[key]] = [(MODIFY_REPLACE, list(want.get(key, ())))]
    return changes


def describe_changes(changes: Mapping[str, object]) -> str:
    """``mssDisplayName, mssRank``: which attributes a modify touches (names only, no values:
    they are personal data and end up in logs and the CLI)."""
    return ", ".join(sorted(changes))


def decode_attributes(raw: Mapping[str, Iterable[bytes]]) -> Attributes:
    """ldap3 ``raw_attributes`` (bytes) -> text values (LDAP strings are UTF-8, RFC 4511 §4.1.2)."""
    return {
        name: [v.decode("utf-8", errors="replace") for v in values] for name, values in raw.items()
    }
