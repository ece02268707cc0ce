"""Parsing the ANS whitelist and answering the MTA's questions from it (sans-I/O)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from directory.whitelist import NAMESPACE, Whitelist, WhitelistError, parse_whitelist
from pki.dn import DistinguishedName
from pki.testpki import TestPki
from tests.directory import whitelist_gen as gen


@functools.cache
def realistic() -> tuple[gen.GeneratedList, Whitelist]:
    generated = gen.generate()
    return generated, parse_whitelist(generated.xml, min_entries=1000)


def certificate_name(dn: str) -> x509.Name:
    """The subject a certificate would carry for ``dn`` (built with cryptography, not parsed by
    us: the comparison must work against the real thing)."""
    oids = {
        "CN": NameOID.COMMON_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "O": NameOID.ORGANIZATION_NAME,
        "ST": NameOID.STATE_OR_PROVINCE_NAME,
        "L": NameOID.LOCALITY_NAME,
        "C": NameOID.COUNTRY_NAME,
    }
    parts = [part.split("=", 1) for part in dn.split(",")]
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in reversed(parts)])


def small(*entries: str, generated_at: datetime = gen.GENERATED_AT) -> bytes:
    return gen.document(list(entries), generated_at)


# -- the realistic file --------------------------------------------------------------------------


def test_realistic_file_indexes_every_binding_both_ways() -> None:
    generated, whitelist = realistic()
    assert len(whitelist.entries) == generated.entries > 6000
    assert whitelist.domain_count == 5000
    assert whitelist.dn_count == 400
    assert whitelist.pair_count == len(generated.pairs)
    assert whitelist.generated_at == datetime(2025, 3, 13, 14, 54, 10, tzinfo=UTC)
    for domain, dn in generated.pairs:
        assert whitelist.allows(domain, dn), (domain, dn)
    by_dn: dict[str, set[str]] = {}
    for domain, dn in generated.pairs:
        by_dn.setdefault(dn, set()).add(domain)
    for dn, domains in by_dn.items():
        assert set(whitelist.domains_for(dn)) == domains
    stats = whitelist.stats()
    assert stats.domains_with_several_dns > 1000
    assert stats.top_organisations[0][0] == "GIP MIPIH"


def test_duplicate_entries_are_counted_once_in_the_index() -> None:
    generated, whitelist = realistic()
    assert generated.duplicates > 0
    # Every Domaine element is kept, each binding indexed once.
    assert whitelist.pair_count == generated.entries - generated.duplicates


def test_dn_listed_for_one_domain_is_refused_for_a_domain_it_does_not_serve() -> None:
    _generated, whitelist = realistic()
    assert not whitelist.allows(gen.COMMA_SPACE_DOMAIN, gen.MIPIH_DN)
    assert not whitelist.allows(gen.MULTI_DOMAIN, gen.AMP_CERT)
    assert whitelist.allows(gen.AMP_DOMAIN, gen.MIPIH_DN)
    # A listed DN asked for an unlisted domain, and an unlisted DN for a listed domain.
    assert not whitelist.allows("absent.mssante.fr", gen.MIPIH_DN)
    stranger = gen.MIPIH_DN.replace("medimail-asip", "medimail-pirate")
    assert not whitelist.allows(gen.CAPITALS_DOMAIN, stranger)
    assert not whitelist.dn_is_listed(stranger)
    assert whitelist.dn_is_listed(gen.L_FOR_ST_CERT)


def test_domain_with_several_dns_of_several_operators_accepts_each_of_them_only() -> None:
    _, whitelist = realistic()
    listed = {str(dn) for dn in whitelist.dns_for(gen.MULTI_DOMAIN)}
    assert listed == set(gen.MULTI_DNS)
    for dn in gen.MULTI_DNS:
        assert whitelist.allows(gen.MULTI_DOMAIN, certificate_name(dn))
    assert not whitelist.allows(gen.MULTI_DOMAIN, gen.MIPIH_DN)


def test_dn_written_with_comma_space_separators_matches_the_certificate() -> None:
    _, whitelist = realistic()
    assert whitelist.allows(gen.COMMA_SPACE_DOMAIN, certificate_name(gen.COMMA_SPACE_CERT))


def test_dn_written_with_l_matches_the_certificate_carrying_st() -> None:
    _, whitelist = realistic()
    cert = certificate_name(gen.L_FOR_ST_CERT)
    assert cert.get_attributes_for_oid(NameOID.STATE_OR_PROVINCE_NAME)
    assert whitelist.allows(gen.L_FOR_ST_DOMAIN, cert)
    # Only L/ST are folded: another attribute differing still refuses.
    other_org = gen.L_FOR_ST_CERT.replace("O=GIP - TEST9962", "O=GIP - TEST9963")
    assert not whitelist.allows(gen.L_FOR_ST_DOMAIN, certificate_name(other_org))


def test_xml_entity_in_a_dn_matches_the_decoded_organisation() -> None:
    _, whitelist = realistic()
    cert = certificate_name(gen.AMP_CERT)
    assert cert.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "SOINS & SANTE"
    assert whitelist.allows(gen.AMP_DOMAIN, cert)
    assert not whitelist.allows(gen.AMP_DOMAIN, gen.AMP_CERT.replace("&", "&amp;&amp;"))


def test_departement_written_name_and_code_is_compared_whole_and_case_insensitively() -> None:
    _, whitelist = realistic()
    assert whitelist.allows(
        gen.CAPITALS_DOMAIN, gen.MIPIH_DN.replace("Haute-Garonne", "HAUTE-GARONNE")
    )
    assert not whitelist.allows(gen.CAPITALS_DOMAIN, gen.MIPIH_DN.replace(" (31)", ""))


def test_domain_lookup_ignores_case_and_a_final_dot() -> None:
    _, whitelist = realistic()
    for spelling in (gen.CAPITALS_WRITTEN, gen.CAPITALS_DOMAIN, "UC-CMP.MSSANTE.FR."):
        assert whitelist.is_listed(spelling)
        assert whitelist.allows(spelling, gen.MIPIH_DN)
    assert not whitelist.is_listed("mssante.fr")
    assert not whitelist.is_listed("")
    assert not whitelist.is_listed("not a domain")


def test_peer_dn_in_another_rdn_order_or_with_an_extra_rdn_is_refused() -> None:
    _, whitelist = realistic()
    reordered = ",".join(reversed(gen.MIPIH_DN.split(",")))
    assert not whitelist.allows(gen.CAPITALS_DOMAIN, reordered)
    assert not whitelist.allows(gen.CAPITALS_DOMAIN, gen.MIPIH_DN + ",DC=extra")


def test_unreadable_peer_dn_is_never_allowed_and_does_not_raise() -> None:
    _, whitelist = realistic()
    for garbage in ("", "CN", "CN=a,,", "=x", "\\"):
        assert not whitelist.allows(gen.CAPITALS_DOMAIN, garbage)
        assert not whitelist.dn_is_listed(garbage)


def test_certificate_subject_from_the_test_pki_is_matched_with_its_listed_dn(
    test_pki: TestPki,
) -> None:
    subject = test_pki.certs["peer-valid"].cert.subject
    written = (
        "CN=cert-valide-audit.peer.test, OU=0002 123456789, O=GIP COLOMBE TEST, ST=Rhône (69), C=FR"
    )
    whitelist = parse_whitelist(
        small(gen.entry_xml("cert-valide-audit.peer.test", written)), min_entries=1
    )
    assert whitelist.allows("cert-valide-audit.peer.test", subject)
    other = test_pki.certs["peer-cn-diff"].cert.subject
    assert not whitelist.allows("cert-valide-audit.peer.test", other)


# -- refusals: the file as a whole -----------------------------------------------------------------


def test_truncated_file_like_the_github_mirror_is_rejected() -> None:
    generated, _ = realistic()
    truncated = gen.truncated_like_the_mirror(generated.xml)
    assert truncated.rstrip().endswith(b"</ListeDomaines>")
    with pytest.raises(WhitelistError, match="not well-formed XML"):
        parse_whitelist(truncated)
    with pytest.raises(WhitelistError, match="not well-formed XML"):
        parse_whitelist(generated.xml[: len(generated.xml) // 2])


def test_empty_list_is_rejected() -> None:
    with pytest.raises(WhitelistError, match="0 usable entries, fewer than the 1 required"):
        parse_whitelist(small())
    with pytest.raises(WhitelistError, match="empty document"):
        parse_whitelist(b"  \n")


def test_list_with_fewer_entries_than_min_entries_is_rejected() -> None:
    data = small(*(gen.entry_xml(f"d{i}.mssante.fr", gen.MIPIH_DN) for i in range(5)))
    assert len(parse_whitelist(data, min_entries=5).entries) == 5
    with pytest.raises(WhitelistError, match="5 usable entries, fewer than the 6 required"):
        parse_whitelist(data, min_entries=6)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            b'<ListeBlancheMSSante xmlns="https://example.org/other"><DateDeGeneration>'
            b"2025-03-13T14:54:10Z</DateDeGeneration><ListeDomaines/></ListeBlancheMSSante>",
            "root element is '{https://example.org/other}ListeBlancheMSSante'",
        ),
        (
            b"<ListeBlancheMSSante><ListeDomaines/></ListeBlancheMSSante>",
            "root element is 'ListeBlancheMSSante'",
        ),
        (f'<Autre xmlns="{NAMESPACE}"/>'.encode(), "root element is"),
        (b"<html><body>502 Bad Gateway</body></html>", "root element is 'html'"),
        (
            f'<ListeBlancheMSSante xmlns="{NAMESPACE}"><ListeDomaines/></ListeBlancheMSSante>'.encode(),
            "no DateDeGeneration",
        ),
        (
            f'<ListeBlancheMSSante xmlns="{NAMESPACE}"><DateDeGeneration>hier</DateDeGeneration>'
            "<ListeDomaines/></ListeBlancheMSSante>".encode(),
            "unreadable DateDeGeneration 'hier'",
        ),
        (
            f'<ListeBlancheMSSante xmlns="{NAMESPACE}"><DateDeGeneration>2025-03-13T14:54:10Z'
            "</DateDeGeneration></ListeBlancheMSSante>".encode(),
            "no ListeDomaines",
        ),
    ],
)
def test_wrong_root_namespace_or_missing_parts_are_rejected_with_the_reason(
    data: bytes, reason: str
) -> None:
    with pytest.raises(WhitelistError) as refused:
        parse_whitelist(data, min_entries=0)
    assert refused.value.reason.startswith(reason)


def test_dtd_and_entity_declarations_from_the_network_are_refused() -> None:
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        + f'<ListeBlancheMSSante xmlns="{NAMESPACE}"><DateDeGeneration>&lol2;'.encode()
        + b"</DateDeGeneration><ListeDomaines/></ListeBlancheMSSante>"
    )
    with pytest.raises(WhitelistError, match="refused XML construct"):
        parse_whitelist(laughs, min_entries=0)
    external = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        + f'<ListeBlancheMSSante xmlns="{NAMESPACE}">&e;</ListeBlancheMSSante>'.encode()
    )
    with pytest.raises(WhitelistError, match="refused XML construct"):
        parse_whitelist(external, min_entries=0)


def test_generation_date_without_offset_is_taken_as_utc() -> None:
    data = small(gen.entry_xml("a.mssante.fr", gen.MIPIH_DN)).replace(b"14:54:10Z", b"14:54:10")
    assert parse_whitelist(data).generated_at == datetime(2025, 3, 13, 14, 54, 10, tzinfo=UTC)


# -- refusals: one entry --------------------------------------------------------------------------


def test_unusable_entries_are_left_out_and_reported_without_blocking_the_rest() -> None:
    data = small(
        gen.entry_xml("ok.mssante.fr", gen.MIPIH_DN),
        gen.entry_xml("bad-dn.mssante.fr", "CN=x,,O=y"),
        gen.entry_xml("not a domain", gen.MIPIH_DN),
        gen.entry_xml("no-dn.mssante.fr", ""),
        gen.entry_xml("ok2.mssante.fr", gen.AMP_WRITTEN, dn_is_escaped=True),
    )
    whitelist = parse_whitelist(data, min_entries=2)
    assert [e.domain for e in whitelist.entries] == ["ok.mssante.fr", "ok2.mssante.fr"]
    assert whitelist.problem_count == 3
    assert [(p.position, p.reason.split(":")[0]) for p in whitelist.problems] == [
        (2, "bad-dn.mssante.fr"),
        (3, "invalid domain name 'not a domain'"),
        (4, "no-dn.mssante.fr"),
    ]
    # A binding that could not be read is not allowed: failing closed.
    assert not whitelist.is_listed("bad-dn.mssante.fr")
    # The bad entries count against min_entries.
    with pytest.raises(WhitelistError, match="2 usable entries"):
        parse_whitelist(data, min_entries=3)


def test_entry_lookups_accept_parsed_names_strings_and_certificate_names() -> None:
    _, whitelist = realistic()
    parsed = DistinguishedName.parse(gen.MIPIH_DN)
    for form in (parsed, gen.MIPIH_DN, certificate_name(gen.MIPIH_DN)):
        assert whitelist.allows(gen.CAPITALS_DOMAIN, form)
