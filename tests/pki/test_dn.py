"""Distinguished names as the MSSanté whitelist writes them and as certificates carry them."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from pki.dn import MAX_DN_CHARS, MAX_RDNS, RDN, DistinguishedName, DNSyntaxError, dn_key
from pki.errors import PkiInputError

WHITELIST_DN = "CN=mta.example.mssante.fr,OU=0002 123456789,O=GIP - EXEMPLE,ST=Rhône (69),C=FR"


def parse(text: str) -> DistinguishedName:
    return DistinguishedName.parse(text)


def test_whitelist_dn_parses_into_rdns_cn_first() -> None:
    dn = parse(WHITELIST_DN)
    assert dn.rdns == (
        (("CN", "mta.example.mssante.fr"),),
        (("OU", "0002 123456789"),),
        (("O", "GIP - EXEMPLE"),),
        (("ST", "Rhône (69)"),),
        (("C", "FR"),),
    )
    assert str(dn) == WHITELIST_DN


@pytest.mark.parametrize(
    "text",
    [
        "CN=mta.example.mssante.fr, OU=0002 123456789, O=GIP - EXEMPLE, ST=Rhône (69), C=FR",
        "  CN = mta.example.mssante.fr ;OU=0002 123456789;  O=GIP - EXEMPLE ,ST=Rhône (69),C=FR ",
        "CN=mta.example.mssante.fr,\n  OU=0002 123456789,\tO=GIP - EXEMPLE,ST=Rhône (69),C=FR",
    ],
)
def test_separators_and_spaces_around_them_do_not_matter(text: str) -> None:
    assert parse(text) == parse(WHITELIST_DN)
    assert parse(text).matches(parse(WHITELIST_DN))


@pytest.mark.parametrize(
    "text",
    [
        "commonName=a,organizationalUnitName=b,organizationName=c,stateOrProvinceName=d,countryName=FR",
        "2.5.4.3=a,2.5.4.11=b,2.5.4.10=c,2.5.4.8=d,2.5.4.6=FR",
        "OID.2.5.4.3=a,oid.2.5.4.11=b,OID.2.5.4.10=c,OID.2.5.4.8=d,OID.2.5.4.6=FR",
        "cn=a,ou=b,o=c,S=d,c=FR",
    ],
)
def test_long_names_oids_and_lower_case_keys_become_short_names(text: str) -> None:
    assert str(parse(text)) == "CN=a,OU=b,O=c,ST=d,C=FR"


@pytest.mark.parametrize(
    ("written", "key"),
    [
        ("E", "EMAILADDRESS"),
        ("emailAddress", "EMAILADDRESS"),
        ("1.2.840.113549.1.9.1", "EMAILADDRESS"),
        ("serialNumber", "SERIALNUMBER"),
        ("streetAddress", "STREET"),
        ("dc", "DC"),
        ("domainComponent", "DC"),
        ("userId", "UID"),
        ("givenName", "GN"),
        ("surname", "SN"),
        ("T", "TITLE"),
        ("localityName", "L"),
        ("1.2.3.004", "1.2.3.4"),  # an unknown OID stays dotted, arcs normalised
        ("fooBar", "FOOBAR"),  # an unknown name is kept, upper-cased
    ],
)
def test_attribute_key_aliases(written: str, key: str) -> None:
    assert parse(f"{written}=x").rdns == (((key, "x"),),)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r"O=GIP\2C Santé", "GIP, Santé"),
        (r"O=GIP\, Santé", "GIP, Santé"),
        (r"O=Rh\C3\B4ne", "Rhône"),  # multi-byte UTF-8 from consecutive hex pairs
        (r"O=\E2\82\AC and \F0\9F\98\80", "€ and 😀"),
        (r"O=a\+b\;c\"d\\e\<f\>g\=h", 'a+b;c"d\\e<f>g=h'),
        (r"O=\#1 Hospital", "#1 Hospital"),
        (r"O=\ padded\ ", " padded "),  # escaped outer spaces are kept
        ("O=   trimmed   ", "trimmed"),  # unescaped ones are not (RFC 4514 §2.4)
        ("O=inner   spaces", "inner   spaces"),
        ("O=", ""),
    ],
)
def test_rfc4514_escapes(text: str, value: str) -> None:
    assert parse(text).rdns == ((("O", value),),)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('O="Hôpital, Nord"', "Hôpital, Nord"),
        ('O = "a;b+c=d<e>" ', "a;b+c=d<e>"),
        (r'O="say \"hi\" \C3\A9"', 'say "hi" é'),
        ('O=" kept "', " kept "),
    ],
)
def test_quoted_values_in_rfc1779_style(text: str, value: str) -> None:
    assert parse(text).rdns == ((("O", value),),)


def test_ber_hex_value_is_kept_lower_cased_and_round_trips() -> None:
    dn = parse("CN=#0C03414243,O=x")
    assert dn.rdns[0] == (("CN", "#0c03414243"),)
    assert str(dn) == "CN=#0c03414243,O=x"
    # A literal value that merely starts with '#' stays distinguishable when printed.
    literal = parse(r"CN=\#ABC")
    assert str(literal) == r"CN=\#ABC"
    assert parse(str(literal)) == literal


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("O=GIP &amp; Co", "GIP & Co"),
        ("O=L&apos;hôpital", "L'hôpital"),
        ("O=&quot;A, B&quot;", "A, B"),  # the entity makes a quoted value, as in the XML
        ("O=a &lt;b&gt;", "a <b>"),
        ("O=Clinique Saint-J&#233;r&#xE9;me", "Clinique Saint-Jéréme"),
        ("O=a&#92;,b", "a,b"),  # an entity for '\' makes a DN escape: XML wraps the DN syntax
        ("O=x &amp;#233", "x &#233"),  # decoded once, not twice
        ("O=R&D", "R&D"),
        ("O=a&para b", "a&para b"),  # no ';': not an entity (html.unescape alone would say ¶)
        ('O="a &nosuchentity; b"', "a &nosuchentity; b"),
    ],
)
def test_xml_entities_are_decoded_once_before_parsing(text: str, value: str) -> None:
    assert parse(text).rdns == ((("O", value),),)


def test_multi_valued_rdn_is_a_set() -> None:
    dn = parse("CN=a + UID=b,O=c")
    assert dn.rdns == ((("CN", "a"), ("UID", "b")), (("O", "c"),))
    assert dn == parse("uid=b+cn=a,o=c")
    assert str(dn) == "CN=a+UID=b,O=c"
    assert not dn.matches(parse("CN=a,UID=b,O=c"))


def test_match_ignores_case_whitespace_and_unicode_normalisation() -> None:
    listed = parse(WHITELIST_DN)
    typed = parse(
        "cn=MTA.Example.MSSANTE.fr , ou=0002  123456789, o= gip -  exemple ,"
        "st=RHO\u0302NE\u00a0(69), c=fr"  # decomposed Ô, a non-breaking space
    )
    assert typed.matches(listed)
    assert listed.matches(typed)
    assert dn_key(typed) == dn_key(listed)


def test_match_requires_same_rdns_in_same_order() -> None:
    listed = parse(WHITELIST_DN)
    assert not listed.matches(
        parse("CN=mta.example.mssante.fr,OU=0002 123456789,O=GIP - EXEMPLE,C=FR")
    )
    assert not listed.matches(
        parse("CN=mta2.example.mssante.fr,OU=0002 123456789,O=GIP - EXEMPLE,ST=Rhône (69),C=FR")
    )
    assert not listed.matches(
        parse("OU=0002 123456789,CN=mta.example.mssante.fr,O=GIP - EXEMPLE,ST=Rhône (69),C=FR")
    )


def test_l_and_st_differ_unless_the_caller_merges_them() -> None:
    # The ANS audit entry cert-expire-audit writes L= where the certificate carries ST=.
    listed = parse(
        "CN=cert-expire-audit.example.fr,OU=0002 187512751,O=GIP - TEST9962,L=Paris (75),C=FR"
    )
    presented = parse(
        "CN=cert-expire-audit.example.fr,OU=0002 187512751,O=GIP - TEST9962,ST=Paris (75),C=FR"
    )
    assert not listed.matches(presented)
    assert dn_key(listed) != dn_key(presented)
    assert listed.matches(presented, st_equals_l=True)
    assert presented.matches(listed, st_equals_l=True)
    assert dn_key(listed, st_equals_l=True) == dn_key(presented, st_equals_l=True)
    assert not listed.matches(parse(str(presented).replace("Paris", "Lyon")), st_equals_l=True)


def test_dn_key_indexes_whitelist_dns_in_a_dict() -> None:
    index = {dn_key(WHITELIST_DN): ["example.mssante.fr"]}
    presented = parse(
        "CN=mta.example.mssante.fr, OU=0002 123456789, O=gip - exemple, ST=rhône (69), C=fr"
    )
    assert index[dn_key(presented)] == ["example.mssante.fr"]
    assert dn_key(parse(WHITELIST_DN)) == dn_key(WHITELIST_DN)


@pytest.mark.parametrize(
    "text",
    [
        WHITELIST_DN,
        r'CN=a\,b+UID=" x ",O=\#hash,OU=\ lead and trail\ ,L=<>\;\"\\',
        "CN=tab\\09inside,O=\\00nul,C=FR",
        "O=GIP &amp; Co,EMAILADDRESS=a@b.fr,1.2.3.4=#0101ff",
    ],
)
def test_round_trip_through_the_rfc4514_string(text: str) -> None:
    dn = parse(text)
    assert parse(str(dn)) == dn


def _certificate_subject() -> x509.Name:
    # In ASN.1 (RDNSequence) order, as a CA writes it: C first, CN last.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Rhône (69)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GIP - SANTÉ, EXEMPLE"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "0002 123456789"),
            x509.NameAttribute(NameOID.COMMON_NAME, "mta.example.mssante.fr"),
        ]
    )


def test_from_x509_is_cn_first_like_the_whitelist() -> None:
    name = _certificate_subject()
    dn = DistinguishedName.from_x509(name)
    assert dn.rdns[0] == (("CN", "mta.example.mssante.fr"),)
    assert dn.rdns[-1] == (("C", "FR"),)
    listed = parse(
        r"CN=mta.example.mssante.fr,OU=0002 123456789,O=GIP - Santé\, exemple,ST=Rhône (69),C=FR"
    )
    assert dn.matches(listed)
    assert listed.matches(name)  # an x509.Name is accepted directly
    assert str(dn) == name.rfc4514_string()  # same string as cryptography prints
    assert parse(str(dn)) == dn


def test_from_x509_multi_valued_rdn_and_unusual_attributes() -> None:
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.SERIAL_NUMBER, "123"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Dr Exemple"),
                ]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.EMAIL_ADDRESS, "dr@example.fr")]
            ),
        ]
    )
    dn = DistinguishedName.from_x509(name)
    assert dn.rdns == (
        (("EMAILADDRESS", "dr@example.fr"),),
        (("CN", "Dr Exemple"), ("SERIALNUMBER", "123")),
        (("C", "FR"),),
    )
    assert dn.matches(parse("E=dr@example.fr,serialNumber=123+CN=dr exemple,C=FR"))
    assert dn.values("E") == ("dr@example.fr",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty DN"),
        ("   ", "empty DN"),
        ('CN=a,OU=b,O="GIP, Nord', "unterminated quoted value at 12"),
        ("mta.example.mssante.fr", "attribute without '=' at 0"),
        ("CN=a,OU", "attribute without '=' at 5"),
        ("CN=a,OU=b\\Z1", "bad hex escape \\Z1 at 9"),
        ("CN=abc\\4", "bad hex escape \\4 at 6"),
        ("CN=abc\\", "dangling '\\' at 6"),
        ("CN=\\C3(", "hex escapes are not valid UTF-8 at 3"),
        ("CN=a,,O=b", "empty RDN at 5"),
        ("CN=a,", "nothing after separator ',' at 4"),
        ("CN=a+", "nothing after '+' at 4"),
        ("=a", "missing attribute type before '=' at 0"),
        ("C N=a", "invalid character 'N' in attribute type at 2"),
        ("1=a", "invalid attribute type '1' at 0"),
        ("CN=#abc", "'#' value needs an even, non-zero number of hex digits at 3"),
        ('O="a"b', "unexpected 'b' after quoted value at 5"),
        ("O=&amp;,X", "attribute without '=' at 8"),  # positions count in the text as given
        # Decoded once: the ';' of "&amp;amp;" is left over, and is a DN separator.
        ("O=GIP &amp;amp; Co", "attribute without '=' at 16"),
    ],
)
def test_syntax_errors_name_position_and_problem(text: str, message: str) -> None:
    with pytest.raises(DNSyntaxError) as caught:
        parse(text)
    assert str(caught.value) == message
    assert isinstance(caught.value, PkiInputError)


def test_input_is_bounded() -> None:
    parse(",".join(["DC=x"] * MAX_RDNS))
    with pytest.raises(DNSyntaxError, match=f"more than {MAX_RDNS} RDNs at {5 * MAX_RDNS}"):
        parse(",".join(["DC=x"] * (MAX_RDNS + 1)))
    parse("CN=" + "x" * (MAX_DN_CHARS - 3))
    with pytest.raises(DNSyntaxError, match="limit 4096"):
        parse("CN=" + "x" * (MAX_DN_CHARS - 2))


def test_direct_construction_is_canonicalised() -> None:
    dn = DistinguishedName(((("uid", "b"), ("commonName", "a")), (("2.5.4.6", "FR"),)))
    assert dn == parse("CN=a+UID=b,C=FR")
    with pytest.raises(DNSyntaxError):
        DistinguishedName(((),))
    with pytest.raises(DNSyntaxError):
        DistinguishedName(((("not a key", "x"),),))


# -- properties -----------------------------------------------------------------------------

_DN_ALPHABET = list('CNOUSTL=,;+\\"# &;amp#x3C9é 0123456789abcdefZ<>.\t')


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), st.text(alphabet=_DN_ALPHABET, max_size=40)))
def test_parse_raises_only_dn_syntax_error(text: str) -> None:
    try:
        dn = parse(text)
    except DNSyntaxError:
        return
    assert parse(str(dn)) == dn


_KEYS = st.sampled_from(["CN", "OU", "O", "L", "ST", "C", "EMAILADDRESS", "DC", "UID", "1.2.3.4"])
_RDNS: st.SearchStrategy[RDN] = st.lists(
    st.tuples(_KEYS, st.text(max_size=12)), min_size=1, max_size=3
).map(tuple)


@settings(max_examples=300, deadline=None)
@given(st.lists(_RDNS, min_size=1, max_size=5))
def test_printed_dn_parses_back_to_a_matching_dn(rdns: list[RDN]) -> None:
    dn = DistinguishedName(tuple(rdns))
    again = parse(str(dn))
    assert again.matches(dn)
    assert again == dn
