"""Generated whitelist files shaped like the real ANS one (mssante-spec §2.3), for tests and bench.

Deterministic (seeded). Besides volume (by default 5,000 domains, 400 DNs, ~6,500 entries), each
file carries the oddities measured on the 2025-03-13 snapshot, as named entries the tests can ask
about: a DN with ``", "`` separators, one with ``L=`` where the certificate has ``ST=``, DNs with
``&amp;``, ``ST=<name> (<code>)`` everywhere, a domain written with capitals, a domain with five
DNs of three organisations, a DN serving most domains, duplicate entries.

The ground truth (:attr:`GeneratedList.pairs`) gives each binding as the *certificate* would
carry it: lower-case domain, RFC 4514 DN with ``ST=`` and ``&`` decoded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from xml.sax.saxutils import escape

NAMESPACE = "https://listeblanche.mssante.fr/schema"
GENERATED_AT = datetime(2025, 3, 13, 14, 54, 10, tzinfo=UTC)

DEPARTEMENTS = (
    ("Haute-Garonne", "31"),
    ("Bouches-du-Rhône", "13"),
    ("Paris", "75"),
    ("Rhône", "69"),
    ("Gironde", "33"),
    ("Nord", "59"),
    ("Côte-d'Or", "21"),
    ("Finistère", "29"),
    ("Isère", "38"),
    ("Loire-Atlantique", "44"),
    ("Bas-Rhin", "67"),
    ("Hauts-de-Seine", "92"),
)
PREFIXES = ("GIP", "GCS", "CH", "CHU", "CLINIQUE", "SELARL", "SAS", "ASSOCIATION", "EHPAD")
WORDS = (
    "SANTE", "SUD", "OUEST", "ALPES", "LOIRE", "OCEAN", "VALLEE", "MONT", "SAINT", "JOSEPH",
    "MARIE", "PROVENCE", "ARMOR", "BRETAGNE", "NORMANDIE", "CENTRE", "EST", "RIVIERA", "LAC",
)  # fmt: skip

# The named oddities (domain, DN as written in the file, DN as the certificate carries it).
MIPIH_DN = "CN=medimail-asip.mipih.fr,OU=318310021300028,O=GIP MIPIH,ST=Haute-Garonne (31),C=FR"
COMMA_SPACE_DOMAIN = "ch-comma.mssante.fr"
COMMA_SPACE_WRITTEN = "CN=mss.ch-comma.fr, OU=1590000017, O=CH COMMA, ST=Nord (59), C=FR"
COMMA_SPACE_CERT = "CN=mss.ch-comma.fr,OU=1590000017,O=CH COMMA,ST=Nord (59),C=FR"
L_FOR_ST_DOMAIN = "cert-expire-audit.espacedeconfiance.mssante.fr"
L_FOR_ST_WRITTEN = (
    "CN=cert-expire-audit.espacedeconfiance.mssante.fr,OU=0002 130007669,O=GIP - TEST9962,"
    "L=Paris (75),C=FR"
)
L_FOR_ST_CERT = L_FOR_ST_WRITTEN.replace("L=Paris", "ST=Paris")
AMP_DOMAIN = "soins-et-sante.mssante.fr"
AMP_WRITTEN = "CN=smtp.soins-sante.fr,OU=1690000025,O=SOINS &amp; SANTE,ST=Rhône (69),C=FR"
AMP_CERT = "CN=smtp.soins-sante.fr,OU=1690000025,O=SOINS & SANTE,ST=Rhône (69),C=FR"
CAPITALS_WRITTEN = "UC-CMP.mssante.fr"
CAPITALS_DOMAIN = "uc-cmp.mssante.fr"
MULTI_DOMAIN = "15-20.mssante.fr"
MULTI_DNS = (
    "CN=mss.enovacom.fr,OU=344368557300034,O=ENOVACOM,ST=Bouches-du-Rhône (13),C=FR",
    "CN=smtp-1.sesan.santnet.com,OU=1750048886,O=GIP SESAN,ST=Paris (75),C=FR",
    "CN=smtp-2.sesan.santnet.com,OU=1750048886,O=GIP SESAN,ST=Paris (75),C=FR",
    "CN=smtp-1.sante.santnet.com,OU=341459958900028,O=DEDALUS HEALTHCARE FRANCE,ST=Gironde (33),C=FR",
    "CN=smtp-2.sante.santnet.com,OU=341459958900028,O=DEDALUS HEALTHCARE FRANCE,ST=Gironde (33),C=FR",
)
_NAMED_DNS = (
    (COMMA_SPACE_WRITTEN, COMMA_SPACE_CERT),
    (L_FOR_ST_WRITTEN, L_FOR_ST_CERT),
    (AMP_WRITTEN, AMP_CERT),
    *((dn, dn) for dn in MULTI_DNS),
)


@dataclass
class GeneratedList:
    xml: bytes
    generated_at: datetime
    entries: int
    # (domain, DN as its certificate carries it), every binding of the file
    pairs: set[tuple[str, str]] = field(default_factory=set)
    domains: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)  # as certificates carry them
    duplicates: int = 0

    def dns_of(self, domain: str) -> set[str]:
        return {dn for d, dn in self.pairs if d == domain}


def entry_xml(
    name: str,
    dn: str,
    *,
    description: str = "Domaine de messagerie MSSanté",
    updated_at: datetime = GENERATED_AT,
    contact: str = "01 23 45 67 89, support@operateur.example",
    dn_is_escaped: bool = False,
) -> str:
    """One ``Domaine`` element; ``dn`` is escaped for XML unless ``dn_is_escaped``."""
    dn_text = dn if dn_is_escaped else escape(dn)
    return (
        "        <Domaine>\n"
        f"            <Nom>{escape(name)}</Nom>\n"
        f"            <Description>{escape(description)}</Description>\n"
        f"            <DNCertificatOperateur>{dn_text}</DNCertificatOperateur>\n"
        f"            <ResponsableContact>{escape(contact)}</ResponsableContact>\n"
        f"            <SupportContact>{escape(contact)}</SupportContact>\n"
        f"            <DateMAJ>{updated_at:%Y-%m-%dT%H:%M:%SZ}</DateMAJ>\n"
        "        </Domaine>\n"
    )


def document(entries: list[str], generated_at: datetime = GENERATED_AT) -> bytes:
    """A whole file around ``entries`` (``entry_xml`` strings), as ANS writes it."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<ListeBlancheMSSante xmlns="{NAMESPACE}">\n'
        f"    <DateDeGeneration>{generated_at:%Y-%m-%dT%H:%M:%SZ}</DateDeGeneration>\n"
        "    <ListeDomaines>\n" + "".join(entries) + "    </ListeDomaines>\n"
        "</ListeBlancheMSSante>\n"
    ).encode()


def truncated_like_the_mirror(xml: bytes) -> bytes:
    """The file cut after ``</ListeDomaines>``, the root left open: what the GitHub mirror holds."""
    end = xml.index(b"</ListeDomaines>") + len(b"</ListeDomaines>")
    return xml[:end] + b"\n"


def _organisation(rng: random.Random, n: int) -> str:
    return f"{rng.choice(PREFIXES)} {rng.choice(WORDS)} {rng.choice(WORDS)} {n}"


def _structure_id(rng: random.Random) -> str:
    # mssante-spec §2.3: 10 digits (1 + FINESS) or 15 digits (3 + SIRET).
    if rng.random() < 0.8:
        return "1" + "".join(rng.choice("0123456789") for _ in range(9))
    return "3" + "".join(rng.choice("0123456789") for _ in range(14))


def generate(
    *,
    domains: int = 5000,
    dns: int = 400,
    entries: int | None = None,
    seed: int = 20250313,
    generated_at: datetime = GENERATED_AT,
) -> GeneratedList:
    """A whitelist of ``domains`` distinct domains and ``dns`` distinct DNs in about ``entries``
    ``Domaine`` elements (default 1.31 per domain, the snapshot's ratio), named oddities
    included. Needs ``domains >= dns >= 20``."""
    if not domains >= dns >= 20:
        raise ValueError("need domains >= dns >= 20")
    rng = random.Random(seed)
    entries = entries if entries is not None else round(domains * 1.31)
    written_and_cert: list[tuple[str, str]] = [(MIPIH_DN, MIPIH_DN), *_NAMED_DNS]
    n = 0
    while len(written_and_cert) < dns:
        n += 1
        organisation = _organisation(rng, n)
        slug = organisation.lower().replace(" ", "-")
        departement, code = rng.choice(DEPARTEMENTS)
        structure = _structure_id(rng)
        # Redundant MTAs / v1-v2 platforms: one organisation with two or three certificates.
        for mta in range(rng.choice((1, 1, 1, 2, 3))):
            if len(written_and_cert) == dns:
                break
            dn = f"CN=smtp{mta + 1}.{slug}.fr,OU={structure},O={organisation},ST={departement} ({code}),C=FR"
            written_and_cert.append((dn, dn))
    result = GeneratedList(xml=b"", generated_at=generated_at, entries=0)
    result.dns = [cert for _, cert in written_and_cert]
    names = [CAPITALS_DOMAIN, MULTI_DOMAIN, COMMA_SPACE_DOMAIN, L_FOR_ST_DOMAIN, AMP_DOMAIN]
    seen = set(names)
    while len(names) < domains:
        name = f"{rng.choice(WORDS).lower()}-{rng.choice(WORDS).lower()}-{len(names)}.mssante.fr"
        if name not in seen:
            seen.add(name)
            names.append(name)
    result.domains = names
    lines: list[str] = []
    by_domain: dict[str, set[str]] = {}
    written_of = {cert: written for written, cert in written_and_cert}

    def add(domain: str, cert_dn: str) -> None:
        written = written_of[cert_dn]
        shown = CAPITALS_WRITTEN if domain == CAPITALS_DOMAIN else domain
        days = rng.randrange(0, 5 * 365)
        lines.append(
            entry_xml(
                shown,
                written,
                description=f"Domaine de messagerie MSSanté {domain.split('.')[0].upper()}",
                updated_at=generated_at - timedelta(days=days),
                dn_is_escaped="&amp;" in written,
            )
        )
        result.pairs.add((domain, cert_dn))
        by_domain.setdefault(domain, set()).add(cert_dn)

    # The named oddities first.
    add(CAPITALS_DOMAIN, MIPIH_DN)
    for dn in MULTI_DNS:
        add(MULTI_DOMAIN, dn)
    add(COMMA_SPACE_DOMAIN, COMMA_SPACE_CERT)
    add(L_FOR_ST_DOMAIN, L_FOR_ST_CERT)
    add(AMP_DOMAIN, AMP_CERT)
    add(AMP_DOMAIN, MIPIH_DN)  # the same domain also served by the big operator
    # Every DN serves at least one domain; then the big operator takes ~40% of the rest.
    others = names[5:]
    for i, domain in enumerate(others):
        if i < len(result.dns):
            add(domain, result.dns[i])
        elif rng.random() < 0.42:
            add(domain, MIPIH_DN)
        else:
            add(domain, rng.choice(result.dns[1:]))
    # DNs with several domains come from the above; now domains with several DNs, and
    # duplicate entries (~1%, the same binding written twice).
    attempts = 0
    while len(lines) < entries and attempts < entries * 10:
        attempts += 1
        domain = rng.choice(others)
        if rng.random() < 0.01:
            add(domain, rng.choice(sorted(by_domain[domain])))
            result.duplicates += 1
            continue
        dn = rng.choice(result.dns)
        if (domain, dn) not in result.pairs:
            add(domain, dn)
    rng.shuffle(lines)
    result.entries = len(lines)
    result.xml = document(lines, generated_at)
    return result
