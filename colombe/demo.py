"""Demo data for ``colombe demo``: two fictitious structures, their BALs, a delegation and mail.

Every name and identifier here is invented (national identifiers use the test prefix range).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, make_msgid
from pathlib import Path
from xml.sax.saxutils import escape

from pki.testpki import make_test_pki
from store import BalType, Store
from store.errors import BalExists, DomainExists

DEMO_PASSWORD = "colombe-demo"
DEMO_DOMAINS = ("cabinet-demo.mssante.fr", "clinique-demo.mssante.fr")
# The demo's own operator certificate DN (the subject the test PKI gives a SERV certificate).
DEMO_OPERATOR_DN = "CN=localhost,OU=0002 123456789,O=GIP COLOMBE TEST,ST=Rhône (69),C=FR"
WHITELIST_NAMESPACE = "https://listeblanche.mssante.fr/schema"


@dataclass(frozen=True)
class DemoBal:
    address: str
    type: BalType
    display_name: str
    national_id: str | None = None
    profession: str | None = None
    description: str | None = None
    service: str | None = None
    city: str | None = None
    postal_code: str | None = None


DEMO_BALS = (
    DemoBal(
        "claire.martin@cabinet-demo.mssante.fr",
        BalType.PER,
        "Dr Claire Martin",
        national_id="899700000001",
        profession="10",
        city="Villeurbanne",
        postal_code="69100",
    ),
    DemoBal(
        "secretariat@cabinet-demo.mssante.fr",
        BalType.ORG,
        "Secrétariat du cabinet",
        description="Secrétariat médical",
        city="Villeurbanne",
        postal_code="69100",
    ),
    DemoBal(
        "paul.durand@clinique-demo.mssante.fr",
        BalType.PER,
        "Dr Paul Durand",
        national_id="899700000002",
        profession="10",
        city="Lyon",
        postal_code="69008",
    ),
    DemoBal(
        "cardiologie@clinique-demo.mssante.fr",
        BalType.ORG,
        "Service de cardiologie",
        description="Cardiologie, bâtiment B",
        service="Cardiologie",
        city="Lyon",
        postal_code="69008",
    ),
    DemoBal(
        "dpi@clinique-demo.mssante.fr",
        BalType.APP,
        "DPI de la clinique",
        description="Boîte applicative lue par le DPI",
    ),
)


def demo_whitelist(now: datetime) -> bytes:
    """A whitelist in the ANS format listing the demo domains (what ``[whitelist] url`` points
    to in the demo: the real list is neither reachable nor wanted on a laptop)."""
    entries = "".join(
        "<Domaine>"
        f"<Nom>{domain}</Nom>"
        "<Description>Colombe demo</Description>"
        f"<DNCertificatOperateur>{escape(DEMO_OPERATOR_DN)}</DNCertificatOperateur>"
        "<ResponsableContact>demo</ResponsableContact>"
        "<SupportContact>demo</SupportContact>"
        f"<DateMAJ>{now:%Y-%m-%dT%H:%M:%SZ}</DateMAJ>"
        "</Domaine>"
        for domain in DEMO_DOMAINS
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<ListeBlancheMSSante xmlns="{WHITELIST_NAMESPACE}">'
        f"<DateDeGeneration>{now:%Y-%m-%dT%H:%M:%SZ}</DateDeGeneration>"
        f"<ListeDomaines>{entries}</ListeDomaines>"
        "</ListeBlancheMSSante>\n"
    ).encode()


DEMO_PKI = "pki"
DEMO_MX_LISTEN = "127.0.0.1:2525"
DEMO_SUBMISSION_LISTEN = "127.0.0.1:5870"
DEMO_SUBMISSIONS_LISTEN = "127.0.0.1:4650"
DEMO_IMAP_LISTEN = "127.0.0.1:1430"
DEMO_IMAPS_LISTEN = "127.0.0.1:9930"


def make_demo_pki(directory: Path) -> Path:
    """The IGC-Santé TEST hierarchy in ``directory``, made afresh (its CRLs are valid 7 days);
    returns the trust file (roots and intermediates). The demo's operator certificate is the
    ``localhost`` SERV certificate, whose DN is :data:`DEMO_OPERATOR_DN`."""
    pki = make_test_pki(directory, operator_fqdn="mx.colombe-demo.test")
    trust = directory / "trust.pem"
    trust.write_bytes(pki.roots_path.read_bytes() + pki.intermediates_path.read_bytes())
    return trust


def demo_config_sections(
    whitelist_path: Path,
    *,
    pki_dir: Path | None = None,
    mx_listen: str = DEMO_MX_LISTEN,
    submission_listen: str = DEMO_SUBMISSION_LISTEN,
    submissions_listen: str = DEMO_SUBMISSIONS_LISTEN,
    imap_listen: str = DEMO_IMAP_LISTEN,
    imaps_listen: str = DEMO_IMAPS_LISTEN,
) -> str:
    """What the demo's colombe.toml adds to the minimal one: a local whitelist, no download of
    the national address book (90 MB; ``colombe directory import-extraction`` does it), and,
    with ``pki_dir``, the MX, submission and IMAP listeners with the test PKI's certificates."""
    sections = (
        "\n[whitelist]\n"
        f"url = {json.dumps(whitelist_path.resolve().as_uri())}\n"
        "min_entries = 1\n\n"
        "[directory]\n"
        "import_interval = 0\n"
    )
    if pki_dir is None:
        return sections
    certs = pki_dir.resolve() / "certs"
    return sections + (
        "\n[tls]\n"
        f"cert_file = {json.dumps(str(certs / 'localhost.chain.pem'))}\n"
        f"key_file = {json.dumps(str(certs / 'localhost.key'))}\n"
        f"trust_file = {json.dumps(str(pki_dir.resolve() / 'trust.pem'))}\n"
        f"crl_dir = {json.dumps(str(pki_dir.resolve() / 'crl'))}\n\n"
        "[mx]\n"
        f"listen = {json.dumps(mx_listen)}\n\n"
        "[submission]\n"
        f"listen = {json.dumps(submission_listen)}\n"
        f"listen_tls = {json.dumps(submissions_listen)}\n\n"
        "[imap]\n"
        f"listen = {json.dumps(imap_listen)}\n"
        f"listen_tls = {json.dumps(imaps_listen)}\n"
    )


def swaks_examples(endpoints: list[str], pki_dir: Path) -> list[str]:
    """How to send a message to the running demo with Debian's swaks (``apt install swaks``)."""

    def address(name: str) -> str | None:
        for line in endpoints:
            if line.startswith(f"{name}: smtp://"):
                return line.split("smtp://", 1)[1]
        return None

    lines = []
    submission, mx = address("submission"), address("mx")
    if submission is not None:
        host, _, port = submission.rpartition(":")
        lines.append(
            f"  swaks --server {host} --port {port} --tls --auth PLAIN"
            f" --auth-user {DEMO_BALS[0].address} --auth-password {DEMO_PASSWORD}"
            f" --from {DEMO_BALS[0].address} --to paul.durand@clinique-demo.mssante.fr"
            " --header 'Subject: Compte rendu'"
        )
    if mx is not None:
        host, _, port = mx.rpartition(":")
        certs = pki_dir / "certs"
        lines.append(
            f"  swaks --server {host} --port {port} --tls"
            f" --tls-cert {certs / 'localhost.pem'} --tls-key {certs / 'localhost.key'}"
            f" --from secretariat@clinique-demo.mssante.fr --to {DEMO_BALS[0].address}"
            "   (as a peer operator: its IGC-Sante certificate, listed in the whitelist)"
        )
    return lines


def thunderbird_settings(endpoints: list[str], pki_dir: Path) -> list[str]:
    """How to read the demo BALs in Thunderbird (or any IMAP client): the account settings."""

    def address(kind: str) -> tuple[str, str] | None:
        for line in endpoints:
            if kind in line and "://" in line:
                host, _, port = line.split("://", 1)[1].rpartition(":")
                return host, port
        return None

    imaps, smtps = address("imaps://"), address("submission: smtps://")
    if imaps is None:
        return []
    user = DEMO_BALS[0].address
    lines = [
        f"  Account: {user}, password {DEMO_PASSWORD}",
        f"  Incoming: IMAP, server {imaps[0]}, port {imaps[1]}, SSL/TLS, normal password",
    ]
    if smtps is not None:
        lines.append(
            f"  Outgoing: SMTP, server {smtps[0]}, port {smtps[1]}, SSL/TLS, normal password"
        )
    lines.append(
        f"  The demo certificate is from the IGC-Santé TEST hierarchy: import {pki_dir / 'trust.pem'}"
        " in Settings > Privacy & Security > Certificates > Authorities, or accept the exception."
    )
    lines.append(
        f"  Shared BAL: log in as secretariat@cabinet-demo.mssante.fr to see {user}'s folders"
        " under Partagés/."
    )
    return lines


def _demo_messages(now: datetime) -> list[bytes]:
    def message(sent: datetime, sender: str, subject: str, body: str) -> bytes:
        return (
            f"From: {sender}\r\n"
            f"To: Dr Claire Martin <claire.martin@cabinet-demo.mssante.fr>\r\n"
            f"Subject: {subject}\r\n"
            f"Date: {format_datetime(sent)}\r\n"
            f"Message-ID: {make_msgid(domain='clinique-demo.mssante.fr')}\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 8bit\r\n"
            f"\r\n{body}\r\n"
        ).encode()

    return [
        message(
            now - timedelta(days=2),
            "Dr Paul Durand <paul.durand@clinique-demo.mssante.fr>",
            "=?utf-8?q?Compte_rendu_d=27hospitalisation?=",
            "Chère consœur,\r\n\r\nVotre patient est sorti ce jour. Compte rendu à suivre.\r\n",
        ),
        message(
            now - timedelta(hours=3),
            "Service de cardiologie <cardiologie@clinique-demo.mssante.fr>",
            "=?utf-8?q?Rendez-vous_de_contr=C3=B4le?=",
            "Bonjour,\r\n\r\nLe rendez-vous de contrôle est fixé au 3 décembre à 10 h.\r\n",
        ),
    ]


async def seed_demo(store: Store) -> bool:
    """Create the demo data; False if it was already there (idempotent)."""
    created = False
    for domain in DEMO_DOMAINS:
        try:
            await store.add_domain(domain)
            created = True
        except DomainExists:
            pass
    for bal in DEMO_BALS:
        try:
            await store.create_bal(
                bal.address,
                bal.type,
                display_name=bal.display_name,
                national_id=bal.national_id,
                profession=bal.profession,
                description=bal.description,
                service=bal.service,
                city=bal.city,
                postal_code=bal.postal_code,
                password=DEMO_PASSWORD,
            )
            created = True
        except BalExists:
            pass
    if created:
        await store.add_delegation(
            "claire.martin@cabinet-demo.mssante.fr",
            "secretariat@cabinet-demo.mssante.fr",
            can_read=True,
            can_write=True,
            can_send=True,
        )
        for raw in _demo_messages(datetime.now(UTC)):
            await store.deliver("claire.martin@cabinet-demo.mssante.fr", raw)
        await store.audit("demo.seed", actor="colombe demo", result="ok")
    return created
