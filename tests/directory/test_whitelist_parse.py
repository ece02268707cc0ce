"""Parsing the ANS whitelist and answering the MTA's questions from it (sans-I/O)."""

from __future__ import annotations

import functools
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from directory.whitelist import (
    MAX_WHITELIST_BYTES,
    NAMESPACE,
    Whitelist,
    WhitelistError,
    parse_whitelist,
)
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


# -- security review ---------------------------------------------------------------------------


def test_non_ascii_domain_is_never_folded_onto_a_listed_ascii_domain() -> None:
    whitelist = parse_whitelist(small(gen.entry_xml("strasse.fr", gen.MIPIH_DN)))
    assert whitelist.allows("strasse.fr", gen.MIPIH_DN)
    assert whitelist.allows("STRASSE.FR.", gen.MIPIH_DN)
    # IDNA 2003 would map each of these onto strasse.fr; the MTA must pass A-labels.
    for spelling in (
        "straße.fr",
        "stras\u200bse.fr",  # zero-width space
        "stras\u00adse.fr",  # soft hyphen
        "\uff53\uff54\uff52\uff41\uff53\uff53\uff45.fr",  # full-width
        "\u3000strasse.fr",  # ideographic space, which str.strip() removes
    ):
        assert not whitelist.allows(spelling, gen.MIPIH_DN), spelling
        assert not whitelist.is_listed(spelling), spelling
        assert whitelist.dns_for(spelling) == []


def test_entry_whose_nom_is_not_an_ascii_host_name_is_left_out_and_counted() -> None:
    whitelist = parse_whitelist(
        small(
            gen.entry_xml("ok.mssante.fr", gen.MIPIH_DN),
            gen.entry_xml("straße.fr", gen.MIPIH_DN),
            gen.entry_xml("stras\u200bse.fr", gen.MIPIH_DN),
            gen.entry_xml("xn--strae-oqa.fr", gen.AMP_WRITTEN, dn_is_escaped=True),
        )
    )
    assert [e.domain for e in whitelist.entries] == ["ok.mssante.fr", "xn--strae-oqa.fr"]
    assert whitelist.problem_count == 2
    assert [p.position for p in whitelist.problems] == [2, 3]
    assert all(p.reason.startswith("invalid domain name") for p in whitelist.problems)
    assert not whitelist.is_listed("strasse.fr")
    assert whitelist.allows("XN--STRAE-OQA.FR", gen.AMP_CERT)  # A-labels compare as ASCII


def test_min_entries_below_one_still_refuses_an_empty_list() -> None:
    with pytest.raises(WhitelistError, match="0 usable entries, fewer than the 1 required"):
        parse_whitelist(small(), min_entries=0)
    with pytest.raises(WhitelistError, match="0 usable entries, fewer than the 1 required"):
        parse_whitelist(small(gen.entry_xml("not a domain", gen.MIPIH_DN)), min_entries=-5)


def test_file_larger_than_16_mb_is_refused_before_parsing() -> None:
    assert MAX_WHITELIST_BYTES == 16 * 1024 * 1024
    padded = gen.entry_xml("a.mssante.fr", gen.MIPIH_DN, description="x" * (17 * 1024 * 1024))
    with pytest.raises(WhitelistError, match="more than the 16777216 accepted"):
        parse_whitelist(small(padded))


def test_file_padded_with_millions_of_elements_is_refused_without_holding_them() -> None:
    padding = "<a/>" * 200_000
    entry = gen.entry_xml("a.mssante.fr", gen.MIPIH_DN).replace(
        "<Description>", f"<Description>{padding}"
    )
    assert tracemalloc_peak(lambda: _refused(small(entry))) < 20 * 1024 * 1024
    # Between entries, elements are dropped as soon as they end: parsed, in little memory.
    outside = small(gen.entry_xml("a.mssante.fr", gen.MIPIH_DN)).replace(
        b"<ListeDomaines>", b"<Autre>" + padding.encode() + b"</Autre><ListeDomaines>"
    )
    peak = tracemalloc_peak(lambda: parse_whitelist(outside) and None)
    assert peak < 20 * 1024 * 1024


def _refused(data: bytes) -> None:
    with pytest.raises(WhitelistError, match="more than 1000 elements in one part of the file"):
        parse_whitelist(data)


def tracemalloc_peak(fn: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_entries_are_read_one_at_a_time_with_the_same_result() -> None:
    generated, whitelist = realistic()
    # Entries are dropped from the tree as they are read: the index is still complete, and a
    # second ListeDomaines or DateDeGeneration is ignored as before (the first one counts).
    extra = gen.document([gen.entry_xml("extra.mssante.fr", gen.MIPIH_DN)]).decode()
    extra_liste = extra[extra.index("<ListeDomaines>") : extra.index("</ListeDomaines>") + 16]
    doubled = generated.xml.replace(
        b"</ListeBlancheMSSante>",
        f"<DateDeGeneration>2030-01-01T00:00:00Z</DateDeGeneration>{extra_liste}"
        "</ListeBlancheMSSante>".encode(),
    )
    again = parse_whitelist(doubled)
    assert len(again.entries) == len(whitelist.entries)
    assert again.generated_at == whitelist.generated_at
    assert not again.is_listed("extra.mssante.fr")


def test_peer_dn_given_as_a_string_decodes_xml_references_so_pass_the_x509_name() -> None:
    whitelist = parse_whitelist(small(gen.entry_xml("a.mssante.fr", "O=A,CN=b,C=FR")))
    # A certificate whose only O is literally "A&#44;CN=b": not the listed DN...
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "A&#44;CN=b"),
        ]
    )
    assert not whitelist.allows("a.mssante.fr", subject)
    # ...but rendered as text by a renderer that escapes only "," and parsed again, the
    # reference becomes a separator.
    rendered = ",".join(f"{a.rfc4514_attribute_name}={a.value}" for a in reversed(list(subject)))
    assert rendered == "O=A&#44;CN=b,C=FR"
    assert whitelist.allows("a.mssante.fr", rendered)
    assert "x509.Name" in (Whitelist.allows.__doc__ or "")
    assert "&#44;" in (DistinguishedName.parse.__doc__ or "")
