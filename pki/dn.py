"""Distinguished names: parsing, printing and comparison (sans-I/O).

The MSSanté whitelist binds each domain to the subject DN of an operator certificate, written as a
string in the XML file (``CN=mta.example.mssante.fr,OU=0002 123456789,O=GIP - EXEMPLE,ST=Rhône
(69),C=FR``). Those strings are typed by humans: separators vary (``,`` or ``, ``), one entry
writes ``L=`` where the certificate carries ``ST=``, some values carry XML entities. This module
turns such a string, or a certificate's :class:`cryptography.x509.Name`, into a
:class:`DistinguishedName` with one convention (RFC 4514 string order: most specific RDN, the CN,
first) and compares them attribute by attribute, never as raw strings.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

from cryptography import x509

from pki.errors import PkiInputError

RDN = tuple[tuple[str, str], ...]
"""One relative distinguished name: its (attribute key, value) pairs, sorted."""

DNKey = tuple[RDN, ...]
"""A hashable, normalised form of a DN (see :func:`dn_key`)."""

MAX_DN_CHARS: Final = 4096
MAX_RDNS: Final = 64


class DNSyntaxError(PkiInputError):
    """A DN string that cannot be parsed; ``position`` indexes the text as it was given."""

    def __init__(self, problem: str, position: int | None = None) -> None:
        self.problem = problem
        self.position = position
        super().__init__(problem if position is None else f"{problem} at {position}")


# Canonical key (upper-cased OpenSSL short name), OID, other accepted names. Names are matched
# case-insensitively (RFC 4512 §1.4: descriptors are case-insensitive). "S", "T", "G", "I" and
# "E" are the Microsoft CertStrToName spellings still found in hand-written DNs.
_ATTRIBUTES: Final[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
    ("CN", "2.5.4.3", ("commonName",)),
    ("SN", "2.5.4.4", ("surname",)),
    ("SERIALNUMBER", "2.5.4.5", ()),
    ("C", "2.5.4.6", ("countryName",)),
    ("L", "2.5.4.7", ("localityName",)),
    ("ST", "2.5.4.8", ("S", "stateOrProvinceName")),
    ("STREET", "2.5.4.9", ("streetAddress",)),
    ("O", "2.5.4.10", ("organizationName",)),
    ("OU", "2.5.4.11", ("organizationalUnitName",)),
    ("TITLE", "2.5.4.12", ("T",)),
    ("DESCRIPTION", "2.5.4.13", ()),
    ("BUSINESSCATEGORY", "2.5.4.15", ()),
    ("POSTALADDRESS", "2.5.4.16", ()),
    ("POSTALCODE", "2.5.4.17", ()),
    ("NAME", "2.5.4.41", ()),
    ("GN", "2.5.4.42", ("givenName", "G")),
    ("INITIALS", "2.5.4.43", ("I",)),
    ("GENERATIONQUALIFIER", "2.5.4.44", ()),
    ("X500UNIQUEIDENTIFIER", "2.5.4.45", ()),
    ("DNQUALIFIER", "2.5.4.46", ()),
    ("PSEUDONYM", "2.5.4.65", ()),
    ("ORGANIZATIONIDENTIFIER", "2.5.4.97", ()),
    ("UID", "0.9.2342.19200300.100.1.1", ("userId",)),
    ("DC", "0.9.2342.19200300.100.1.25", ("domainComponent",)),
    ("EMAILADDRESS", "1.2.840.113549.1.9.1", ("E", "email")),
    ("UNSTRUCTUREDNAME", "1.2.840.113549.1.9.2", ()),
    ("JURISDICTIONL", "1.3.6.1.4.1.311.60.2.1.1", ("jurisdictionLocalityName",)),
    ("JURISDICTIONST", "1.3.6.1.4.1.311.60.2.1.2", ("jurisdictionStateOrProvinceName",)),
    ("JURISDICTIONC", "1.3.6.1.4.1.311.60.2.1.3", ("jurisdictionCountryName",)),
)
_BY_OID: Final[dict[str, str]] = {oid: key for key, oid, _ in _ATTRIBUTES}
_BY_NAME: Final[dict[str, str]] = {
    name.lower(): key for key, _, aliases in _ATTRIBUTES for name in (key, *aliases)
}

# RFC 4512 §1.4: descr = keystring (ALPHA *(ALPHA / DIGIT / "-")); numericoid = number 1*("." number).
# The "OID." prefix is the RFC 1779 §2.3 spelling, still produced by some tools.
_DESCR_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_OID_RE: Final = re.compile(r"(?:OID\.)?([0-9]+(?:\.[0-9]+)+)", re.IGNORECASE)
# Only complete, ';'-terminated references are XML entities; "&para" without ';' is text, although
# html.unescape alone would turn it into "¶" (an HTML5 legacy rule that XML does not have).
_ENTITY_RE: Final = re.compile(r"&(?:#[0-9]{1,8}|#[xX][0-9a-fA-F]{1,8}|[A-Za-z][A-Za-z0-9]{0,31});")
_BER_RE: Final = re.compile(r"#(?:[0-9a-f]{2})+")
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_SPACE: Final = frozenset(" \t\r\n")
_SEPARATORS: Final = frozenset(",;")
_END_OF_VALUE: Final = frozenset(",;+")
# RFC 4514 §3: escaped = DQUOTE / PLUS / COMMA / SEMI / LANGLE / RANGLE, special = escaped /
# SPACE / SHARP / EQUALS; pair = ESC ( ESC / special / hexpair ).
_ESCAPABLE: Final = frozenset('"+,;<>\\ #=')
# RFC 4514 §2.4: characters that must be escaped anywhere in a value.
_MUST_ESCAPE: Final = frozenset('"+,;<>\\')


def _canonical_key(raw: str) -> str | None:
    """The canonical key of an attribute type written ``raw``; None if it is not a valid type."""
    match = _OID_RE.fullmatch(raw)
    if match:
        dotted = ".".join(str(int(arc)) for arc in match.group(1).split("."))
        return _BY_OID.get(dotted, dotted)
    if _DESCR_RE.fullmatch(raw):
        return _BY_NAME.get(raw.lower(), raw.upper())
    return None


def _decode_entities(text: str) -> tuple[str, list[int]]:
    """Decode XML character and entity references; also return, for each character of the
    result (and one past its end), its position in ``text``, so that errors point at the input.

    This runs once, on the raw text, before any DN parsing: the XML layer wraps the DN layer, so
    ``&amp;`` becomes ``&`` and ``&#92;,`` becomes the DN escape ``\\,``; nothing is decoded twice.
    """
    if "&" not in text:
        return text, list(range(len(text) + 1))
    parts: list[str] = []
    offsets: list[int] = []
    last = 0
    for match in _ENTITY_RE.finditer(text):
        start, end = match.span()
        parts.append(text[last:start])
        offsets.extend(range(last, start))
        decoded = html.unescape(match.group())
        parts.append(decoded)
        if decoded == match.group():  # unknown entity name: kept as written
            offsets.extend(range(start, end))
        else:
            offsets.extend([start] * len(decoded))
        last = end
    parts.append(text[last:])
    offsets.extend(range(last, len(text) + 1))
    return "".join(parts), offsets


class _Value:
    """Accumulates one attribute value: literal characters, escaped characters, and runs of
    ``\\XX`` hex escapes, whose octets together must be UTF-8 (RFC 4514 §3)."""

    def __init__(self) -> None:
        self.chars: list[str] = []
        self.keep = 0  # length of the value once unescaped trailing spaces are dropped
        self.octets = bytearray()
        self.octets_at = 0

    def literal(self, char: str) -> None:
        self.chars.append(char)
        if char not in _SPACE:
            self.keep = len(self.chars)

    def escaped(self, char: str) -> None:
        self.chars.append(char)
        self.keep = len(self.chars)

    def octet(self, value: int, at: int) -> None:
        if not self.octets:
            self.octets_at = at
        self.octets.append(value)

    def flush(self, parser: _Parser) -> None:
        if not self.octets:
            return
        try:
            decoded = self.octets.decode("utf-8")
        except UnicodeDecodeError:
            raise parser.error("hex escapes are not valid UTF-8", self.octets_at) from None
        self.octets.clear()
        for char in decoded:
            self.escaped(char)


class _Parser:
    """A recursive-descent parser for RFC 4514 §3 strings, with the leniencies of RFC 1779
    (quoted values, ``;`` separators, spaces around separators and ``=``)."""

    def __init__(self, text: str, offsets: list[int]) -> None:
        self.text = text
        self.offsets = offsets
        self.pos = 0
        self.end = len(text)

    def error(self, problem: str, at: int) -> DNSyntaxError:
        return DNSyntaxError(problem, self.offsets[at])

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < self.end else None

    def skip_spaces(self) -> None:
        while self.pos < self.end and self.text[self.pos] in _SPACE:
            self.pos += 1

    def distinguished_name(self) -> tuple[RDN, ...]:
        self.skip_spaces()
        if self.pos == self.end:
            raise DNSyntaxError("empty DN")
        rdns: list[RDN] = []
        while True:
            if len(rdns) == MAX_RDNS:
                raise self.error(f"more than {MAX_RDNS} RDNs", self.pos)
            rdns.append(self.rdn())
            separator = self.peek()
            if separator is None:
                return tuple(rdns)
            if separator not in _SEPARATORS:  # pragma: no cover - rdn() stops only at these
                raise self.error(f"unexpected {separator!r}", self.pos)
            at = self.pos
            self.pos += 1
            self.skip_spaces()
            if self.pos == self.end:
                raise self.error(f"nothing after separator {separator!r}", at)

    def rdn(self) -> RDN:
        # RFC 4514 §3: relativeDistinguishedName = attributeTypeAndValue *( PLUS ... ); it is a
        # set (RFC 5280 §4.1.2.4), hence sorted here so that the order written does not matter.
        pairs = [self.attribute()]
        while self.peek() == "+":
            at = self.pos
            self.pos += 1
            self.skip_spaces()
            if self.pos == self.end:
                raise self.error("nothing after '+'", at)
            pairs.append(self.attribute())
        return tuple(sorted(pairs))

    def attribute(self) -> tuple[str, str]:
        start = self.pos
        while self.pos < self.end and (
            self.text[self.pos] in ".-"
            or (self.text[self.pos].isascii() and self.text[self.pos].isalnum())
        ):
            self.pos += 1
        raw = self.text[start : self.pos]
        self.skip_spaces()
        char = self.peek()
        if char is None or char in _END_OF_VALUE:
            raise self.error("attribute without '='" if raw else "empty RDN", start)
        if char != "=":
            raise self.error(f"invalid character {char!r} in attribute type", self.pos)
        if not raw:
            raise self.error("missing attribute type before '='", start)
        key = _canonical_key(raw)
        if key is None:
            raise self.error(f"invalid attribute type {raw!r}", start)
        self.pos += 1
        self.skip_spaces()
        return key, self.value()

    def value(self) -> str:
        char = self.peek()
        if char is None or char in _END_OF_VALUE:
            return ""  # RFC 4514 §3 allows an empty string value
        if char == "#":
            return self.ber_value()
        if char == '"':
            return self.quoted_value()
        return self.string_value()

    def ber_value(self) -> str:
        # RFC 4514 §2.4/§3: "#" followed by the hex of the BER encoding of the value. Kept as
        # written (lower-cased), not decoded: it compares equal only to the same encoding.
        start = self.pos
        self.pos += 1
        while self.pos < self.end and self.text[self.pos] in _HEX:
            self.pos += 1
        digits = self.text[start + 1 : self.pos]
        if not digits or len(digits) % 2:
            raise self.error("'#' value needs an even, non-zero number of hex digits", start)
        self.expect_end_of_value("'#' value")
        return "#" + digits.lower()

    def quoted_value(self) -> str:
        # RFC 1779 §2.3 / RFC 2253 §4: quotation = DQUOTE *(QUOTECHAR / pair) DQUOTE; separators
        # inside are literal, the content is kept exactly (no trimming).
        start = self.pos
        self.pos += 1
        value = _Value()
        while True:
            char = self.peek()
            if char is None:
                raise self.error("unterminated quoted value", start)
            if char == '"':
                value.flush(self)
                self.pos += 1
                break
            if char == "\\":
                self.escape(value)
                continue
            value.flush(self)
            value.escaped(char)
            self.pos += 1
        self.expect_end_of_value("quoted value")
        return "".join(value.chars)

    def string_value(self) -> str:
        value = _Value()
        while True:
            char = self.peek()
            if char is None or char in _END_OF_VALUE:
                break
            if char == "\\":
                self.escape(value)
                continue
            value.flush(self)
            # Unescaped '"', '<', '>', '=' and non-leading '#' are tolerated (RFC 4514 §3 wants
            # the first three escaped): XML-decoded, hand-typed DNs carry them.
            value.literal(char)
            self.pos += 1
        value.flush(self)
        # RFC 4514 §2.4: leading and trailing spaces of a value are significant only if escaped.
        return "".join(value.chars[: value.keep])

    def escape(self, value: _Value) -> None:
        at = self.pos
        if at + 1 >= self.end:
            raise self.error("dangling '\\'", at)
        char = self.text[at + 1]
        if char in _HEX and at + 2 < self.end and self.text[at + 2] in _HEX:
            value.octet(int(self.text[at + 1 : at + 3], 16), at)
            self.pos += 3
        elif char in _ESCAPABLE:
            value.flush(self)
            value.escaped(char)
            self.pos += 2
        else:
            raise self.error(f"bad hex escape \\{self.text[at + 1 : at + 3]}", at)

    def expect_end_of_value(self, what: str) -> None:
        self.skip_spaces()
        char = self.peek()
        if char is not None and char not in _END_OF_VALUE:
            raise self.error(f"unexpected {char!r} after {what}", self.pos)


def _escape_value(value: str) -> str:
    """RFC 4514 §2.4 string form of a value."""
    if _BER_RE.fullmatch(value):
        return value  # a "#hex" BER value (see _Parser.ber_value) is written as is
    out: list[str] = []
    last = len(value) - 1
    for index, char in enumerate(value):
        at_edge = (char == " " and index in (0, last)) or (char == "#" and index == 0)
        if char in _MUST_ESCAPE or at_edge:
            out.append("\\" + char)
        elif unicodedata.category(char) == "Cc":
            # NUL must be escaped (§2.4); other controls are, for readable logs and round trips.
            out.append("".join(f"\\{octet:02X}" for octet in char.encode("utf-8")))
        else:
            out.append(char)
    return "".join(out)


def _normalise_value(key: str, value: str) -> str:
    """X.520 caseIgnoreMatch, approximately (RFC 4518 string preparation, simplified): NFC,
    whitespace runs collapsed to one space and trimmed, case folded; ``C`` upper-cased."""
    collapsed = " ".join(unicodedata.normalize("NFC", value).split())
    if key == "C":
        return collapsed.upper()
    return unicodedata.normalize("NFC", collapsed.casefold())


@dataclass(frozen=True, repr=False)
class DistinguishedName:
    """A DN as a sequence of RDNs, most specific (CN) first, as RFC 4514 strings and the MSSanté
    whitelist write them. Attribute keys are canonical (``CN``, ``ST``, ``EMAILADDRESS``, or the
    dotted OID of an unknown type); values are kept as written, minus unescaped outer spaces.

    ``==`` is exact structural equality; use :meth:`matches` (or :func:`dn_key`) to compare the
    way a human reads a DN.
    """

    rdns: tuple[RDN, ...]

    def __post_init__(self) -> None:
        # Canonicalise keys and sort each RDN, so that directly constructed values obey the same
        # invariants as parsed ones.
        rdns: list[RDN] = []
        for rdn in self.rdns:
            if not rdn:
                raise DNSyntaxError("empty RDN")
            pairs: list[tuple[str, str]] = []
            for raw, value in rdn:
                key = _canonical_key(raw)
                if key is None:
                    raise DNSyntaxError(f"invalid attribute type {raw!r}")
                pairs.append((key, value))
            rdns.append(tuple(sorted(pairs)))
        object.__setattr__(self, "rdns", tuple(rdns))

    @classmethod
    def parse(cls, text: str) -> DistinguishedName:
        """Parse an RFC 4514 (or RFC 1779-style) string, XML entities included.

        Raises :class:`DNSyntaxError` naming the position (in ``text``) and the problem.

        Complete XML character and entity references are decoded before the DN syntax is read,
        so ``&#44;`` becomes a ``,`` separator and ``&#43;`` a ``+``. That is right for the
        whitelist file (its DNs are XML text, sometimes escaped twice) and for DNs an operator
        types, but a trap for a peer's certificate subject: a value containing ``&#44;CN=x``
        would split into RDNs of the attacker's choosing. Take peer DNs from the certificate as
        an ``x509.Name`` (:meth:`from_x509`, or pass the ``x509.Name`` to the whitelist lookups),
        never as a string parsed here.
        """
        if len(text) > MAX_DN_CHARS:
            raise DNSyntaxError(f"DN of {len(text)} characters (limit {MAX_DN_CHARS})")
        decoded, offsets = _decode_entities(text)
        return cls(_Parser(decoded, offsets).distinguished_name())

    @classmethod
    def from_x509(cls, name: x509.Name) -> DistinguishedName:
        """The DN of a certificate subject or issuer, in the same order as :meth:`parse` gives.

        ``Name.rdns`` is the ASN.1 RDNSequence, C first; RFC 4514 §2.1 writes "starting with the
        last element of the sequence and moving backwards toward the first", i.e. CN first.
        Binary values (X.500 unique identifier, bit strings) become ``#hex`` like cryptography's
        ``rfc4514_string``.
        """
        rdns: list[RDN] = []
        for rdn in reversed(name.rdns):
            pairs: list[tuple[str, str]] = []
            for attribute in rdn:
                dotted = attribute.oid.dotted_string
                value = attribute.value
                text = "#" + value.hex() if isinstance(value, bytes) else value
                pairs.append((_BY_OID.get(dotted, dotted), text))
            rdns.append(tuple(pairs))
        return cls(tuple(rdns))

    def __str__(self) -> str:
        """The RFC 4514 §2 string: RDNs joined by ``,``, multi-valued RDNs by ``+``, CN first."""
        return ",".join(
            "+".join(f"{key}={_escape_value(value)}" for key, value in rdn) for rdn in self.rdns
        )

    def __repr__(self) -> str:
        return f"DistinguishedName({str(self)!r})"

    def values(self, attribute: str) -> tuple[str, ...]:
        """The values of ``attribute`` (any accepted spelling), in DN order."""
        key = _canonical_key(attribute)
        return tuple(value for rdn in self.rdns for k, value in rdn if k == key)

    def matches(self, other: DistinguishedName | x509.Name, *, st_equals_l: bool = False) -> bool:
        """Whether ``other`` names the same entity: same number of RDNs, pairwise equal after
        normalisation (canonical keys; values NFC, whitespace-collapsed, case-insensitive).

        ``L`` and ``ST`` are different attributes; with ``st_equals_l`` an ``L`` value may match
        an ``ST`` value at the same position (the whitelist's ``cert-expire-audit`` entry writes
        ``L=`` for what its certificate carries as ``ST=``).
        """
        return dn_key(self, st_equals_l=st_equals_l) == dn_key(other, st_equals_l=st_equals_l)


def dn_key(name: DistinguishedName | x509.Name | str, *, st_equals_l: bool = False) -> DNKey:
    """A hashable normalised key of ``name``: two names have equal keys iff they match (see
    :meth:`DistinguishedName.matches`). ``L`` and ``ST`` stay distinct unless ``st_equals_l``.

    A ``str`` is parsed (and may raise :class:`DNSyntaxError`).
    """
    if isinstance(name, str):
        name = DistinguishedName.parse(name)
    elif isinstance(name, x509.Name):
        name = DistinguishedName.from_x509(name)
    key: list[RDN] = []
    for rdn in name.rdns:
        pairs = []
        for attribute, value in rdn:
            folded = "ST" if st_equals_l and attribute == "L" else attribute
            pairs.append((folded, _normalise_value(attribute, value)))
        key.append(tuple(sorted(pairs)))
    return tuple(key)
