"""The ANS whitelist (liste blanche MSSanté): parsing and the two-way index (sans-I/O).

The file (mssante-spec §2.3) binds each MSSanté domain to the subject DN of one operator MTA
certificate; a domain appears once per DN (several MTAs, several operators), a DN once per
domain. :func:`parse_whitelist` turns the bytes of the file into an immutable :class:`Whitelist`
indexed both ways, or raises :class:`WhitelistError` saying precisely why the file is unusable.
Fetching, validation against the previous copy and persistence live in
:mod:`directory.whitelist_fetch`.

Structure (namespace ``https://listeblanche.mssante.fr/schema``)::

    ListeBlancheMSSante
    ├── DateDeGeneration        ISO-8601 UTC
    └── ListeDomaines
        └── Domaine (0..n): Nom, Description, DNCertificatOperateur, ResponsableContact,
                            SupportContact, DateMAJ
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final
from xml.etree.ElementTree import Element, ParseError

from cryptography import x509
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from pki.dn import DistinguishedName, DNKey, DNSyntaxError, dn_key

NAMESPACE: Final = "https://listeblanche.mssante.fr/schema"
ROOT_TAG: Final = f"{{{NAMESPACE}}}ListeBlancheMSSante"

MAX_WHITELIST_BYTES: Final = 16 * 1024 * 1024
"""Largest file accepted: the 2025 file is 3.7 MB for 6,554 entries, so 16 MB leaves room for
four times as many while bounding what a hostile or broken server can make us hold (the parser
keeps one ``Domaine`` at a time, see :func:`parse_whitelist`)."""
MAX_ENTRIES: Final = 1_000_000
MAX_PENDING_ELEMENTS: Final = 1000
"""Elements held at once while parsing: one ``Domaine`` has 7; more means a file built to make
the parser hold millions of elements (``<a/>`` costs 4 octets on the wire, ~100 in memory)."""
MAX_PROBLEMS_KEPT: Final = 100
"""Entry-level problems remembered for display (their count is always exact)."""
MAX_DOMAIN_CHARS: Final = 253  # RFC 1035 §2.3.4, in presentation form without the final dot
MAX_TEXT_CHARS: Final = 2048  # Description and contacts are free text; longer is truncated

# RFC 1123 §2.1 host names: LDH labels of 1-63 characters, not starting or ending with '-'.
_LABEL_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

# L= written where the certificate carries ST= (the cert-expire-audit entry of the real file).
# Folding L into ST is safe for the whitelist: the peer certificate has already been validated
# up to an IGC-Santé root, and every other RDN (CN = the MTA's name, OU = national structure
# identifier, O, C) and the RDN positions must still match. A certificate whose DN differs from a
# listed one only by "L=X" instead of "ST=X" at the same place names the same server of the same
# structure: the IGC-Santé issues such certificates to that structure only, so the folding grants
# nobody a domain that its organisation was not already listed for.
ST_EQUALS_L: Final = True


class WhitelistError(Exception):
    """The file cannot be used; ``reason`` says why in one line (never the file's content)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def normalise_domain(name: str) -> str | None:
    """``name`` as the index keys it (ASCII lower case, no final dot), or None if it is not an
    ASCII host name. The file writes names as typed (one has capitals).

    Only ASCII is compared: an internationalised domain must be written, in the file and by the
    MTA asking, as its A-labels (``xn--...``). No IDNA mapping is applied, because IDNA 2003's
    (``str.encode("idna")``) folds distinct names together (``straße`` -> ``strasse``, soft
    hyphen and zero-width characters dropped, full-width letters folded), which would let the
    DN listed for one domain speak for another. A non-ASCII ``name`` therefore gives None: not
    listed, and a whitelist entry so written is left out."""
    if not name.isascii():  # before stripping: str.strip() also removes non-ASCII spaces
        return None
    name = name.strip().rstrip(".").lower()
    if not name:
        return None
    if len(name) > MAX_DOMAIN_CHARS:
        return None
    labels = name.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None
    return name


def parse_datetime(text: str) -> datetime | None:
    """An ISO-8601 timestamp of the file (``2025-03-13T14:54:10Z``) as an aware UTC datetime; a
    timestamp without offset is taken as UTC (the file's convention). None if unreadable."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``Domaine`` element that parsed: the domain (normalised) and the DN (parsed)."""

    domain: str
    dn: DistinguishedName
    description: str
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Problem:
    """A ``Domaine`` element left out of the index, by position (1-based) and reason."""

    position: int
    reason: str


@dataclass(frozen=True, eq=False)
class Whitelist:
    """An immutable snapshot of the whitelist, indexed both ways.

    Lookups never raise: an unparseable peer DN or domain is simply not listed (fail closed).
    """

    generated_at: datetime
    entries: tuple[Entry, ...]
    problems: tuple[Problem, ...] = ()
    problem_count: int = 0
    _by_domain: Mapping[str, frozenset[DNKey]] = field(default_factory=dict, repr=False)
    _by_dn: Mapping[DNKey, frozenset[str]] = field(default_factory=dict, repr=False)
    _dn_names: Mapping[DNKey, DistinguishedName] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        generated_at: datetime,
        entries: Iterable[Entry],
        problems: Iterable[Problem] = (),
        problem_count: int | None = None,
    ) -> Whitelist:
        entries = tuple(entries)
        problems = tuple(problems)
        by_domain: dict[str, set[DNKey]] = {}
        by_dn: dict[DNKey, set[str]] = {}
        names: dict[DNKey, DistinguishedName] = {}
        keys: dict[DistinguishedName, DNKey] = {}
        for entry in entries:
            key = keys.get(entry.dn)
            if key is None:
                key = keys[entry.dn] = dn_key(entry.dn, st_equals_l=ST_EQUALS_L)
            by_domain.setdefault(entry.domain, set()).add(key)
            by_dn.setdefault(key, set()).add(entry.domain)
            names.setdefault(key, entry.dn)  # the first spelling met, for display
        return cls(
            generated_at,
            entries,
            problems,
            len(problems) if problem_count is None else problem_count,
            MappingProxyType({d: frozenset(k) for d, k in by_domain.items()}),
            MappingProxyType({k: frozenset(d) for k, d in by_dn.items()}),
            MappingProxyType(names),
        )

    # -- lookups (the MTA's questions) ------------------------------------------------------------

    def is_listed(self, domain: str) -> bool:
        """Whether ``domain`` may exchange inside the Espace de confiance (any DN)."""
        name = normalise_domain(domain)
        return name is not None and name in self._by_domain

    def allows(self, domain: str, peer_dn: DistinguishedName | x509.Name | str) -> bool:
        """Whether the peer whose certificate subject is ``peer_dn`` may speak for ``domain``:
        the DN is one of those listed for the domain (mssante-spec §2.2: "peer DN ∈ set of DNs
        listed for that domain", never "the" DN). Compared RDN by RDN, never as strings.

        ``domain`` must be ASCII (A-labels for an internationalised name): any other string is
        not listed (see :func:`normalise_domain`).

        Pass the peer's certificate subject as the ``x509.Name`` itself (or a
        :class:`DistinguishedName` built with :meth:`DistinguishedName.from_x509`), never as a
        string. A string is parsed by :meth:`DistinguishedName.parse`, which decodes XML
        entities (what the whitelist file needs): ``O=A&#44;CN=b`` becomes two RDNs, so a
        subject rendered to text by someone else and parsed again can change shape. Strings are
        for DNs typed by an operator or read from the whitelist file."""
        name = normalise_domain(domain)
        if name is None:
            return False
        keys = self._by_domain.get(name)
        if keys is None:
            return False
        key = _peer_key(peer_dn)
        return key is not None and key in keys

    def dn_is_listed(self, peer_dn: DistinguishedName | x509.Name | str) -> bool:
        """Whether ``peer_dn`` is listed for at least one domain (null sender: bounces, DSNs)."""
        key = _peer_key(peer_dn)
        return key is not None and key in self._by_dn

    def dns_for(self, domain: str) -> list[DistinguishedName]:
        """The DNs listed for ``domain``, sorted by their string form."""
        name = normalise_domain(domain)
        keys = self._by_domain.get(name, frozenset()) if name is not None else frozenset()
        return sorted((self._dn_names[k] for k in keys), key=str)

    def domains_for(self, peer_dn: DistinguishedName | x509.Name | str) -> list[str]:
        """The domains ``peer_dn`` is listed for, sorted."""
        key = _peer_key(peer_dn)
        return sorted(self._by_dn.get(key, frozenset())) if key is not None else []

    # -- figures --------------------------------------------------------------------------------

    @property
    def domain_count(self) -> int:
        return len(self._by_domain)

    @property
    def dn_count(self) -> int:
        return len(self._by_dn)

    @property
    def pair_count(self) -> int:
        """Distinct (domain, DN) bindings (duplicate entries counted once)."""
        return sum(len(keys) for keys in self._by_domain.values())

    def stats(self, *, top: int = 10) -> WhitelistStats:
        """Figures for ``colombe whitelist stats`` (the measures of mssante-spec §2.3)."""
        organisations = Counter(o for e in self.entries for o in e.dn.values("O") or ("?",))
        return WhitelistStats(
            generated_at=self.generated_at,
            entries=len(self.entries),
            entries_skipped=self.problem_count,
            domains=self.domain_count,
            dns=self.dn_count,
            pairs=self.pair_count,
            organisations=len(organisations),
            domains_with_several_dns=sum(1 for k in self._by_domain.values() if len(k) > 1),
            dns_with_several_domains=sum(1 for d in self._by_dn.values() if len(d) > 1),
            top_organisations=tuple(organisations.most_common(top)),
        )


@dataclass(frozen=True, slots=True)
class WhitelistStats:
    generated_at: datetime
    entries: int
    entries_skipped: int  # Domaine elements left out (see Whitelist.problems)
    domains: int
    dns: int
    pairs: int  # distinct (domain, DN) bindings
    organisations: int  # distinct O= values
    domains_with_several_dns: int
    dns_with_several_domains: int
    top_organisations: tuple[tuple[str, int], ...]  # (O=, entries), most entries first


def _peer_key(peer_dn: DistinguishedName | x509.Name | str) -> DNKey | None:
    try:
        return dn_key(peer_dn, st_equals_l=ST_EQUALS_L)
    except DNSyntaxError:
        return None


def _text(element: Element, tag: str) -> str | None:
    child = element.find(f"{{{NAMESPACE}}}{tag}")
    if child is None:
        return None
    return "".join(child.itertext())


_DATE_TAG: Final = f"{{{NAMESPACE}}}DateDeGeneration"
_DOMAINS_TAG: Final = f"{{{NAMESPACE}}}ListeDomaines"
_DOMAIN_TAG: Final = f"{{{NAMESPACE}}}Domaine"


def parse_whitelist(data: bytes, *, min_entries: int = 1) -> Whitelist:
    """The whitelist in ``data`` (the XML file as downloaded), or :class:`WhitelistError`.

    Refused: not well-formed XML (the GitHub mirror's files stop after ``</ListeDomaines>``), any
    DTD or entity declaration (defusedxml), another root element or namespace, no readable
    ``DateDeGeneration``, no ``ListeDomaines``, fewer than ``min_entries`` usable entries and in
    any case fewer than 1 (a truncated or emptied file must never replace a good one). A
    ``Domaine`` without a valid ``Nom`` (an ASCII host name, see :func:`normalise_domain`) or
    DN is left out and counted in :attr:`Whitelist.problems`: one bad line typed at ANS must not
    block every update; it makes that binding unlisted, which is failing closed.

    Memory: at most :data:`MAX_WHITELIST_BYTES` octets, parsed incrementally; each ``Domaine``
    is dropped from the tree once read, and no more than :data:`MAX_PENDING_ELEMENTS` elements
    are held at once.
    """
    if len(data) > MAX_WHITELIST_BYTES:
        raise WhitelistError(f"{len(data)} octets, more than the {MAX_WHITELIST_BYTES} accepted")
    if not data.strip():
        raise WhitelistError("empty document")
    required = max(1, min_entries)
    generated_text: str | None = None
    seen_domains = False  # a ListeDomaines was closed (only the first one is read)
    entries: list[Entry] = []
    problems: list[Problem] = []
    problem_count = 0
    position = 0
    # ~400 distinct DN strings for ~6,500 entries: each is parsed once.
    parsed: dict[str, DistinguishedName | str] = {}
    stack: list[Element] = []  # the open elements, root first
    pending = 0  # elements started since the tree was last pruned
    try:
        # forbid_dtd: the file has no business declaring a DTD; entities and external references
        # are refused by defusedxml in any case.
        for event, element in iterparse(io.BytesIO(data), events=("start", "end"), forbid_dtd=True):
            if event == "start":
                if not stack and element.tag != ROOT_TAG:
                    raise WhitelistError(f"root element is {element.tag!r}, expected {ROOT_TAG!r}")
                pending += 1
                if pending > MAX_PENDING_ELEMENTS:
                    raise WhitelistError(
                        f"more than {MAX_PENDING_ELEMENTS} elements in one part of the file"
                    )
                stack.append(element)
                continue
            stack.pop()
            depth = len(stack)  # 0: the root, 1: its children, 2: their children...
            if depth == 1:
                if element.tag == _DATE_TAG and generated_text is None:
                    generated_text = "".join(element.itertext())
                elif element.tag == _DOMAINS_TAG:
                    seen_domains = True
            elif (
                depth == 2
                and not seen_domains
                and stack[1].tag == _DOMAINS_TAG
                and element.tag == _DOMAIN_TAG
            ):
                position += 1
                if position > MAX_ENTRIES:
                    raise WhitelistError(f"more than {MAX_ENTRIES} Domaine entries")
                entry = _entry(element, parsed)
                if isinstance(entry, str):
                    problem_count += 1
                    if len(problems) < MAX_PROBLEMS_KEPT:
                        problems.append(Problem(position, entry))
                else:
                    entries.append(entry)
            if 1 <= depth <= 2:
                # Read (or of no interest): drop it and its earlier siblings from the tree.
                element.clear()
                del stack[-1][:]
                pending = 0
    except ParseError as exc:
        line, column = exc.position
        raise WhitelistError(f"not well-formed XML at line {line}, column {column}") from None
    except DefusedXmlException as exc:
        raise WhitelistError(f"refused XML construct ({type(exc).__name__})") from None
    if generated_text is None:
        raise WhitelistError("no DateDeGeneration")
    generated_at = parse_datetime(generated_text)
    if generated_at is None:
        raise WhitelistError(f"unreadable DateDeGeneration {generated_text.strip()[:40]!r}")
    if not seen_domains:
        raise WhitelistError("no ListeDomaines")
    if len(entries) < required:
        raise WhitelistError(
            f"{len(entries)} usable entries, fewer than the {required} required "
            "(whitelist.min_entries, at least 1)"
        )
    return Whitelist.build(generated_at, entries, problems, problem_count)


def _entry(element: Element, parsed: dict[str, DistinguishedName | str]) -> Entry | str:
    """The entry of one ``Domaine`` element, or why it is left out."""
    raw_name = _text(element, "Nom")
    if raw_name is None or not raw_name.strip():
        return "no Nom"
    domain = normalise_domain(raw_name)
    if domain is None:
        return f"invalid domain name {raw_name.strip()[:80]!r}"
    raw_dn = _text(element, "DNCertificatOperateur")
    if raw_dn is None or not raw_dn.strip():
        return f"{domain}: no DNCertificatOperateur"
    # The XML parser has already decoded entities (&amp; -> &); DistinguishedName.parse decodes
    # complete references once more, so a doubly escaped "&amp;amp;" still yields "&".
    dn = parsed.get(raw_dn)
    if dn is None:
        try:
            dn = DistinguishedName.parse(raw_dn)
        except DNSyntaxError as exc:
            dn = f"DN unreadable ({exc})"
        parsed[raw_dn] = dn
    if isinstance(dn, str):
        return f"{domain}: {dn}"
    description = (_text(element, "Description") or "").strip()[:MAX_TEXT_CHARS]
    updated = _text(element, "DateMAJ")
    return Entry(domain, dn, description, parse_datetime(updated) if updated else None)
