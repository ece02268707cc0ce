"""Realistic ANS MSSanté extractions (mssante-spec §5.4) for the import tests and the benchmark.

31 ``|``-separated columns, UTF-8, one header line; PER and ORG lines with French names (accents,
ligatures, hyphens), RPPS/FINESS identifiers, professions and specialties, postal addresses
("69003 LYON"), and, when ``quirks`` is on, the defects a real file has or could have: an address
repeated on a later line, lines with missing or extra columns, invalid addresses, unknown BAL
types, octets that are not UTF-8, an overlong line, blank lines. The generator says where each
one is, so that tests can check the report line by line.
"""

from __future__ import annotations

import io
import random
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HEADER = (
    "Type de BAL|Adresse BAL|Type Identifiant PP|Identifiant PP|Identification nationale PP|"
    "Type identifiant structure|Identification Structure|Service de rattachement|"
    "Civilité d'exercice|Nom d'exercice|Prénom d'exercice|Catégorie profession|"
    "Libellé de catégorie profession|Code Profession|Libellé Profession|Code savoir-faire|"
    "Libellé savoir-faire|Dématérialisation|Raison Sociale structure BAL|"
    "Enseigne commerciale structure BAL|L2COMPLEMENTLOCALISATION structure BAL|"
    "L3COMPLEMENTDISTRIBUTION structure BAL|L4NUMEROVOIE structure BAL|"
    "L4COMPLEMENTNUMEROVOIE structure BAL|NL4TYPEVOIE structure BAL|L4LIBELLEVOIE structure BAL|"
    "L5LIEUDITMENTION structure BAL|L6LIGNEACHEMINEMENT structure BAL|Code postal structure BAL|"
    "Département structure BAL|Pays structure BAL"
)
WIDTH = 31

LAST_NAMES = (
    "MARTIN", "BERNARD", "DUBOIS", "THOMAS", "ROBERT", "RICHARD", "PETIT", "DURAND", "LEROY",
    "MOREAU", "SIMON", "LAURENT", "LEFÈVRE", "MICHEL", "GARCIA", "DAVID", "BERTRAND", "ROUX",
    "VINCENT", "FOURNIER", "MOREL", "GIRARD", "ANDRÉ", "LEFEBVRE", "MERCIER", "DUPONT", "LAMBERT",
    "BONNET", "FRANÇOIS", "MARTINEZ", "LEGRAND", "GARNIER", "FAURE", "ROUSSEAU", "BLANC",
    "GUÉRIN", "MULLER", "HENRY", "ROUSSEL", "NICOLAS", "PERRIN", "MORIN", "MATHIEU", "CLÉMENT",
    "GAUTHIER", "DUMONT", "LOPEZ", "FONTAINE", "CHEVALIER", "ROBIN", "DE LA FONTAINE",
    "N'DIAYE", "NGUYEN", "BENOÎT", "CŒURDEVEY", "LÆTITIA-BRUN", "PEÑA", "ÖZTÜRK", "SAINT-ANDRÉ",
)  # fmt: skip
FIRST_NAMES = (
    "Jean", "Marie", "Pierre", "Nathalie", "Michel", "Isabelle", "Philippe", "Sylvie", "Alain",
    "Catherine", "Éric", "Françoise", "Hélène", "Jérôme", "Cécile", "Frédéric", "Sébastien",
    "Éloïse", "Zoé", "Noël", "Anaïs", "Maëlle", "Jean-Pierre", "Marie-Hélène", "Loïc", "Inès",
    "Thérèse", "Gaëlle", "Joël", "Chloé", "Léa", "Mathéo", "Élodie", "Agnès", "Benoît",
)  # fmt: skip
PROFESSIONS = (
    # (category code, category, profession code, label, specialty code, specialty, weight)
    ("C", "Civil", "10", "Médecin", "SM54", "Médecine générale", 30),
    ("C", "Civil", "10", "Médecin", "SM04", "Cardiologie et maladies vasculaires", 4),
    ("C", "Civil", "10", "Médecin", "SM26", "Psychiatrie", 3),
    ("C", "Civil", "10", "Médecin", "SM15", "Gynécologie-obstétrique", 2),
    ("C", "Civil", "10", "Médecin", "SM38", "Pédiatrie", 2),
    ("C", "Civil", "21", "Pharmacien", "", "", 10),
    ("C", "Civil", "40", "Chirurgien-Dentiste", "", "", 6),
    ("C", "Civil", "50", "Sage-Femme", "", "", 3),
    ("C", "Civil", "60", "Infirmier", "", "", 20),
    ("C", "Civil", "70", "Masseur-Kinésithérapeute", "", "", 10),
    ("C", "Civil", "80", "Pédicure-Podologue", "", "", 2),
    ("C", "Civil", "91", "Orthophoniste", "", "", 2),
)  # fmt: skip
CITIES = (
    # (postal code, city as in L6, département column)
    ("69003", "LYON", "69"), ("69008", "LYON", "69"), ("75012", "PARIS", "75"),
    ("75014", "PARIS", "75"), ("13005", "MARSEILLE", "13"), ("42000", "SAINT-ÉTIENNE", "42"),
    ("31000", "TOULOUSE", "31"), ("33000", "BORDEAUX", "33"), ("59000", "LILLE", "59"),
    ("44000", "NANTES", "44"), ("67000", "STRASBOURG", "67"), ("35000", "RENNES", "35"),
    ("20000", "AJACCIO", "2A"), ("20200", "BASTIA", "2B"), ("97400", "SAINT-DENIS", "974"),
    ("97200", "FORT-DE-FRANCE", "972"), ("01000", "BOURG-EN-BRESSE", "01"),
    ("38000", "GRENOBLE", "38"), ("63000", "CLERMONT-FERRAND", "63"), ("74000", "ANNECY", "74"),
    ("26000", "VALENCE", "26"), ("73000", "CHAMBÉRY", "73"), ("21000", "DIJON", "21"),
    ("06000", "NICE", "06"), ("34000", "MONTPELLIER", "34"),
)  # fmt: skip
STREETS = (
    ("R", "DE LA RÉPUBLIQUE"), ("AV", "JEAN JAURÈS"), ("BD", "PINEL"), ("PL", "D'ARSONVAL"),
    ("R", "GARIBALDI"), ("AV", "DES FRÈRES LUMIÈRE"), ("CHE", "DU MOULIN"), ("R", "PASTEUR"),
)  # fmt: skip
ORGANISATIONS = (
    ("HOPITAL EDOUARD HERRIOT", "Hôpital Édouard-Herriot"),
    ("CENTRE HOSPITALIER", "Centre hospitalier"),
    ("CLINIQUE DU PARC", "Clinique du Parc"),
    ("EHPAD LES TILLEULS", "Résidence Les Tilleuls"),
    ("PHARMACIE DU CENTRE", "Pharmacie du Centre"),
    ("LABORATOIRE BIOMÉDICAL", "Labo Bio Santé"),
    ("CENTRE DE SANTÉ MUNICIPAL", ""),
    ("MAISON DE SANTÉ PLURIPROFESSIONNELLE", "MSP des Cèdres"),
)  # fmt: skip
SERVICES = (
    "Cardiologie", "Urgences", "Pédiatrie", "Secrétariat médical", "Bloc opératoire",
    "Radiologie", "Gériatrie", "Maternité", "Oncologie", "Pharmacie à usage intérieur",
)  # fmt: skip
DOMAINS = (
    "medecin.mssante.fr", "pharmacien.mssante.fr", "infirmier.mssante.fr", "chu-lyon.mssante.fr",
    "ch-test.mssante.fr", "sante-ra.mssante.fr", "ap-hm.mssante.fr", "masante.mssante.fr",
)  # fmt: skip

# Entries every generated file holds at fixed lines (2.. with quirks off), for exact assertions.
PLANTED = (
    # (type, last, first, profession index, organisation index, service, city index, address)
    ("PER", "LEFÈVRE-CŒUR", "Éloïse", 7, 1, "", 12, "eloise.lefevre-coeur@medecin.mssante.fr"),
    ("ORG", "", "", None, 0, "Cardiologie", 0, "cardiologie.herriot@chu-lyon.mssante.fr"),
    ("PER", "DE LA FONTAINE", "Jean-Pierre", 1, 0, "", 0, "jp.delafontaine@chu-lyon.mssante.fr"),
    ("PER", "NGUYEN", "Thérèse", 5, 4, "", 14, "therese.nguyen@pharmacien.mssante.fr"),
)


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.replace("Œ", "OE").replace("œ", "oe"))
    folded = "".join(c for c in decomposed if c.isascii() and (c.isalnum() or c in "-"))
    return folded.lower().replace("æ", "ae")


@dataclass
class Generated:
    """Where the quirks of a generated file are. Line numbers count the header as line 1."""

    path: Path
    lines: int = 0  # data lines, blank ones excluded
    entries: int = 0  # distinct valid addresses
    bad: dict[int, str] = field(default_factory=dict)  # line -> kind of defect
    duplicates: list[int] = field(default_factory=list)
    blank: list[int] = field(default_factory=list)
    per: int = 0
    org: int = 0
    # département -> entries there (distinct valid ones)
    by_departement: dict[str, int] = field(default_factory=dict)


def _fields(
    rng: random.Random, index: int, *, planted: tuple[object, ...] | None = None
) -> tuple[list[str], str]:
    """The 31 fields of one valid line and its département."""
    if planted is not None:
        kind, last, first, prof_i, org_i, service, city_i, address = planted  # type: ignore[misc]
    else:
        kind = "PER" if rng.random() < 0.87 else "ORG"
        last = rng.choice(LAST_NAMES)
        first = rng.choice(FIRST_NAMES)
        prof_i = rng.choices(range(len(PROFESSIONS)), [p[6] for p in PROFESSIONS])[0]
        org_i = rng.randrange(len(ORGANISATIONS)) if rng.random() < 0.6 else None
        service = rng.choice(SERVICES) if kind == "ORG" else ""
        city_i = rng.randrange(len(CITIES))
        domain = rng.choice(DOMAINS)
        if kind == "PER":
            address = f"{_ascii(first)}.{_ascii(last).replace(' ', '')}.{index}@{domain}"
        else:
            address = f"{_ascii(service or 'secretariat').replace(' ', '-')}.{index}@{domain}"
    postal, l6_city, dep = CITIES[city_i]  # type: ignore[index]
    street_type, street_name = STREETS[index % len(STREETS)]
    fields = [""] * WIDTH
    fields[0] = str(kind)
    fields[1] = str(address)
    if kind == "PER":
        rpps = f"{10000000000 + index:011d}"
        cat_code, cat, code, label, sf_code, sf, _ = PROFESSIONS[prof_i]  # type: ignore[index]
        fields[2:5] = ["8", rpps, "8" + rpps]
        fields[8] = "DR" if code == "10" else ("MME" if index % 2 else "M")
        fields[9], fields[10] = str(last), str(first)
        fields[11:17] = [cat_code, cat, code, label, sf_code, sf]
    else:
        fields[7] = str(service)
    fields[17] = "True" if index % 3 else "False"
    if org_i is not None:
        finess = f"{690000000 + index % 50000:09d}"
        fields[5], fields[6] = "1", "1" + finess
        raison, enseigne = ORGANISATIONS[org_i]  # type: ignore[index]
        fields[18], fields[19] = raison, enseigne
    fields[22] = str(1 + index % 180)
    fields[23] = "B" if index % 17 == 0 else ""
    fields[24], fields[25] = street_type, street_name
    fields[27] = f"{postal} {l6_city}"
    fields[28] = postal
    fields[29] = dep
    fields[30] = "France"
    return fields, dep


def _lines(n: int, seed: int, quirks: bool, info: Generated) -> Iterator[bytes]:
    rng = random.Random(seed)
    yield HEADER.encode() + b"\n"
    line_no = 1
    emitted: list[str] = []  # some earlier valid addresses, for duplicates
    for i in range(n):
        line_no += 1
        planted = PLANTED[i] if i < len(PLANTED) else None
        roll = rng.random() if quirks and planted is None else 1.0
        if roll < 0.0004:
            info.blank.append(line_no)
            yield b"\n"
            continue
        fields, dep = _fields(rng, i, planted=planted)
        info.lines += 1
        if roll < 0.0014 and emitted:
            fields[1] = rng.choice(emitted)
            info.duplicates.append(line_no)
        elif roll < 0.0019:
            fields = fields[: rng.randrange(3, WIDTH - 1)]
            info.bad[line_no] = "missing columns"
        elif roll < 0.0021:
            fields.append("extra")
            info.bad[line_no] = "extra column"
        elif roll < 0.0024:
            fields[1] = rng.choice(("sans-arobase.mssante.fr", "", "a b@medecin.mssante.fr"))
            info.bad[line_no] = "invalid address"
        elif roll < 0.0026:
            fields[0] = rng.choice(("XYZ", ""))
            info.bad[line_no] = "unknown type"
        elif roll < 0.0028:
            info.bad[line_no] = "not UTF-8"
            yield "|".join(fields).encode().replace(b"@", b"\xff@", 1) + b"\n"
            continue
        elif roll < 0.00285:
            info.bad[line_no] = "too long"
            fields[7] = "x" * 20_000
        else:
            info.entries += 1
            info.by_departement[dep] = info.by_departement.get(dep, 0) + 1
            if fields[0] == "PER":
                info.per += 1
            else:
                info.org += 1
            if len(emitted) < 1000:
                emitted.append(fields[1])
        end = b"\r\n" if quirks and i % 101 == 0 else b"\n"
        yield "|".join(fields).encode() + end


def write_extraction(
    path: Path, n: int, *, seed: int = 0, quirks: bool = True, as_zip: bool = False
) -> Generated:
    """Write an extraction of ``n`` data lines to ``path`` (a .zip holding the .txt if
    ``as_zip``), streaming (the benchmark writes 500,000 lines)."""
    info = Generated(path)
    if as_zip:
        member = "Extraction_Correspondance_MSSante_202611220300.txt"
        with (
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
            archive.open(member, "w") as out,
        ):
            buffered = io.BufferedWriter(out, 1024 * 1024)  # type: ignore[arg-type]
            for line in _lines(n, seed, quirks, info):
                buffered.write(line)
            buffered.flush()
    else:
        with path.open("wb") as out:
            for line in _lines(n, seed, quirks, info):
                out.write(line)
    return info
