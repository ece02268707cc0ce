"""A BAL as an LDAP entry, without a server: DN, attributes, differences; and the shipped schema
in its two forms (slapd.conf and cn=config), which must say the same thing."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from ldap3 import MODIFY_REPLACE

from directory.ldap_entry import (
    LDIF_FILE,
    SCHEMA_FILE,
    address_of_dn,
    bal_dn,
    entry_digest,
    is_ours,
    modifications,
    same_dn,
    wanted_attributes,
)
from store.model import Bal, BalStatus, BalType, Placement
from tests.directory.slapd import load_ldif_schema

BASE = "ou=colombe,dc=mssante,dc=test"
NOW = datetime(2026, 11, 22, tzinfo=UTC)


def bal(**changes: object) -> Bal:
    values: dict[str, object] = {
        "id": 1,
        "address": "jean.dupont@hopital-test.mssante.fr",
        "type": BalType.PER,
        "national_id": "810001234567",
        "display_name": "Dr Jean Dupont",
        "profession": "10",
        "description": None,
        "liste_rouge": False,
        "status": BalStatus.ACTIVE,
        "placement": Placement.V2,
        "created_at": NOW,
        "updated_at": NOW,
        "service": None,
        "rank": 1,
    }
    values.update(changes)
    return Bal(**values)  # type: ignore[arg-type]


def test_the_dn_is_mail_equals_the_address_under_the_base() -> None:
    assert bal_dn("Jean.Dupont@hopital-test.mssante.fr", BASE) == (
        "mail=jean.dupont@hopital-test.mssante.fr," + BASE
    )


def test_special_characters_of_a_local_part_are_escaped_and_read_back() -> None:
    address = "a+b=c@hopital-test.mssante.fr"
    dn = bal_dn(address, BASE)
    assert dn.startswith(r"mail=a\+b\=c@")
    assert address_of_dn(dn) == address
    assert address_of_dn(r"MAIL = a\2Bb@x.fr , ou=x") == "a+b@x.fr"


def test_an_entry_not_named_by_mail_has_no_address() -> None:
    assert address_of_dn("cn=someone," + BASE) is None
    assert address_of_dn("not a dn") is None


def test_dns_compare_regardless_of_case_and_spaces() -> None:
    assert same_dn(
        "mail=a@x.fr,ou=Colombe, dc=mssante,dc=test", "MAIL=A@x.fr,ou=colombe,dc=mssante,dc=test"
    )
    assert not same_dn("mail=a@x.fr," + BASE, "mail=b@x.fr," + BASE)


def test_a_personal_bal_carries_the_person_id_and_no_empty_attribute() -> None:
    attrs = wanted_attributes(bal())
    assert attrs == {
        "objectClass": ["mssBal"],
        "mail": ["jean.dupont@hopital-test.mssante.fr"],
        "mssBalType": ["PER"],
        "mssListeRouge": ["FALSE"],
        "mssRank": ["1"],
        "mssPersonId": ["810001234567"],
        "mssDisplayName": ["Dr Jean Dupont"],
        "mssProfession": ["10"],
    }


def test_an_organisational_bal_carries_the_structure_id_service_and_description() -> None:
    attrs = wanted_attributes(
        bal(
            type=BalType.ORG,
            national_id="1750000001",
            service="Cardiologie",
            description="Secrétariat de cardiologie",
            profession=None,
            rank=2,
        )
    )
    assert attrs["mssStructureId"] == ["1750000001"]
    assert "mssPersonId" not in attrs
    assert attrs["mssService"] == ["Cardiologie"]
    assert attrs["mssDescription"] == ["Secrétariat de cardiologie"]
    assert attrs["mssRank"] == ["2"]
    assert "mssProfession" not in attrs


def test_a_practice_bal_carries_a_person_id() -> None:
    assert "mssPersonId" in wanted_attributes(bal(type=BalType.CAB))


def test_an_identical_entry_needs_no_change_whatever_the_attribute_name_case() -> None:
    wanted = wanted_attributes(bal())
    existing = {k.lower(): v for k, v in wanted.items()} | {"objectclass": ["top", "mssBal"]}
    assert modifications(existing, wanted) == {}
    assert entry_digest(existing) == entry_digest(wanted)


def test_a_differing_value_is_replaced_and_an_unwanted_attribute_removed() -> None:
    wanted = wanted_attributes(bal())
    existing = dict(wanted) | {"mssDisplayName": ["Vandal"], "mssService": ["Old service"]}
    assert modifications(existing, wanted) == {
        "mssDisplayName": [(MODIFY_REPLACE, ["Dr Jean Dupont"])],
        "mssService": [(MODIFY_REPLACE, [])],
    }
    assert entry_digest(existing) != entry_digest(wanted)


def test_attributes_we_do_not_manage_are_left_alone() -> None:
    wanted = wanted_attributes(bal())
    existing = dict(wanted) | {"seeAlso": ["cn=x"]}
    assert modifications(existing, wanted) == {}
    assert entry_digest(existing) == entry_digest(wanted)


def test_an_entry_without_our_object_class_is_not_ours() -> None:
    wanted = wanted_attributes(bal())
    foreign = dict(wanted) | {"objectClass": ["inetOrgPerson"]}
    assert is_ours(wanted)
    assert not is_ours(foreign)
    assert entry_digest(foreign) != entry_digest(wanted)


# -- the shipped schema -------------------------------------------------------------------------


def _definitions_of_schema(text: str) -> list[str]:
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    found = re.findall(
        r"^(objectidentifier|attributetype|objectclass)\s+(.*?)(?=^\S|\Z)", body, re.S | re.M
    )
    return [f"{kind} {' '.join(value.split())}" for kind, value in found]


def _definitions_of_ldif(text: str) -> list[str]:
    unfolded = re.sub(r"\n ", "", text)  # RFC 2849 line folding
    names = {
        "olcObjectIdentifier": "objectidentifier",
        "olcAttributeTypes": "attributetype",
        "olcObjectClasses": "objectclass",
    }
    out = []
    for line in unfolded.splitlines():
        key, _, value = line.partition(": ")
        if key in names:
            out.append(f"{names[key]} {' '.join(value.split())}")
    return out


def test_the_ldif_form_of_the_schema_says_what_the_schema_file_says() -> None:
    schema = _definitions_of_schema(SCHEMA_FILE.read_text())
    assert len(schema) == 13  # 3 OID macros, 9 attribute types, 1 object class
    assert _definitions_of_ldif(LDIF_FILE.read_text()) == schema


def test_our_oids_are_under_our_uuid_arc_and_unique() -> None:
    schema = SCHEMA_FILE.read_text()
    assert "objectidentifier ColombeMss 2.25.83355810043332147775350547951945977195" in schema
    oids = re.findall(r"^(?:attributetype|objectclass) \( (\S+)", schema, re.M)
    assert len(oids) == len(set(oids)) == 10
    assert all(o.startswith(("ColombeMssAttr:", "ColombeMssClass:")) for o in oids)


def test_slapd_accepts_the_ldif_form_of_the_schema(tmp_path: Path) -> None:
    # slapadd into an empty cn=config: OpenLDAP's own parser, no server needed. (The slapd.conf
    # form is what the publication tests' slapd loads.)
    load_ldif_schema(LDIF_FILE, tmp_path)
    schema_dir = tmp_path / "slapd.d" / "cn=config" / "cn=schema"
    assert any("mssante" in p.name for p in schema_dir.iterdir())
