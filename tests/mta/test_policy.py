"""mta.policy: the MTA's pure decisions, branch by branch, with the exact replies."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from directory.whitelist import Entry, Whitelist
from mta import policy, replies
from mta.policy import (
    PATIENT_MAX_BYTES,
    Address,
    Route,
    RouteKind,
    check_inbound_recipient,
    check_inbound_sender,
    check_message_size,
    ins_key,
    mss_headers,
    parse_address,
    route_recipient,
    sender_allowed,
    size_limit_for,
    valid_ins,
)
from pki.dn import DistinguishedName
from store.model import BalStatus

HOSTED = frozenset({"colombe.mssante.fr", "Hopital.Example.FR"})
PEER_DN = "CN=mx.autre.mssante.fr,OU=10002030405,O=GCS AUTRE,ST=Rhone (69),C=FR"
CNAM_DN = "CN=smtps1.ens.atos-infogerance.fr,OU=180000000,O=CNAM,ST=Paris (75),C=FR"
OTHER_DN = "CN=mx.tiers.mssante.fr,OU=1234,O=TIERS,ST=Nord (59),C=FR"


def _name(cn: str, ou: str, o: str, st_: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, st_),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, o),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


PEER = _name("mx.autre.mssante.fr", "10002030405", "GCS AUTRE", "Rhone (69)")
UNLISTED = _name("mx.pirate.fr", "999", "PIRATE", "Nord (59)")
OTHER = _name("mx.tiers.mssante.fr", "1234", "TIERS", "Nord (59)")


def _whitelist(*pairs: tuple[str, str]) -> Whitelist:
    entries = [Entry(d, DistinguishedName.parse(dn), "", None) for d, dn in pairs]
    return Whitelist.build(datetime(2026, 1, 1, tzinfo=UTC), entries)


WHITELIST = _whitelist(
    ("autre.mssante.fr", PEER_DN),
    ("xn--hpital-bva.mssante.fr", PEER_DN),
    ("colombe.mssante.fr", OTHER_DN),
    ("tiers.mssante.fr", OTHER_DN),
    ("patient.mssante.fr", CNAM_DN),
)
NO_PATIENT_WHITELIST = _whitelist(("autre.mssante.fr", PEER_DN))

GOOD_INS = "146026322000196"
GOOD_INS_2 = "279035121518989"


def _route(
    address: str, status: BalStatus | None = None, whitelist: Whitelist = WHITELIST
) -> Route:
    return route_recipient(
        address, hosted_domains=HOSTED, local_bal_status=status, whitelist=whitelist
    )


# -- INS ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ins", [GOOD_INS, GOOD_INS_2])
def test_spec_examples_are_valid_ins(ins: str) -> None:
    assert valid_ins(ins)


def test_spec_example_keys_are_computed_as_documented() -> None:
    assert ins_key("1460263220001") == 96 == 97 - 1460263220001 % 97
    assert ins_key("2790351215189") == 89 == 97 - 2790351215189 % 97


@pytest.mark.parametrize(
    "local",
    [
        "146026322000197",  # wrong key
        "146026322000100",
        "14602632200019",  # 14 characters
        "1460263220001960",  # 16
        "",
        "14602632200019a",
        "1460A6322000196",  # letter outside positions 6-7
        "14602632200019\n",
        "146026322000196\n",
        " 146026322000196",
        "١٤٦٠٢٦٣٢٢٠٠٠١٩٦",  # Arabic-Indic digits: str.isdigit() would take them
        "146022C22000196",  # 2C is not Corsica
        "1460263220001+6",
    ],
)
def test_invalid_ins_are_refused(local: str) -> None:
    assert not valid_ins(local)


def test_corsica_2a_and_2b_count_as_19_and_18() -> None:
    nir_2a, nir_2b = "18001" + "2A" + "004123", "18001" + "2B" + "004123"
    key_2a = 97 - int("18001" + "19" + "004123") % 97
    key_2b = 97 - int("18001" + "18" + "004123") % 97
    assert ins_key(nir_2a) == key_2a
    assert ins_key(nir_2b) == key_2b
    assert valid_ins(f"{nir_2a}{key_2a:02d}")
    assert valid_ins(f"{nir_2b}{key_2b:02d}")
    assert valid_ins(f"{nir_2a.lower()}{key_2a:02d}")  # the store lowers addresses
    assert not valid_ins(f"{nir_2a}{key_2b:02d}")


def test_key_97_when_the_nir_is_a_multiple_of_97() -> None:
    nir = f"{97 * 10_000_000_000:013d}"
    assert ins_key(nir) == 97
    assert valid_ins(nir + "97")
    assert not valid_ins(nir + "00")


@pytest.mark.parametrize("bad", ["123", "14602632200019", "146022C220001", "١٤٦٠٢٦٣٢٢٠٠٠١"])
def test_ins_key_rejects_non_nir_input(bad: str) -> None:
    with pytest.raises(ValueError, match="NIR"):
        ins_key(bad)


_nir13 = st.builds(
    lambda head, dept, tail: head + dept + tail,
    st.from_regex(r"[0-9]{5}", fullmatch=True),
    st.one_of(st.from_regex(r"[0-9]{2}", fullmatch=True), st.sampled_from(["2A", "2B"])),
    st.from_regex(r"[0-9]{6}", fullmatch=True),
)


@given(_nir13)
def test_computed_key_always_passes(nir: str) -> None:
    assert valid_ins(f"{nir}{ins_key(nir):02d}")


@given(_nir13, st.integers(0, 99))
def test_any_other_key_fails(nir: str, key: int) -> None:
    assert valid_ins(f"{nir}{key:02d}") is (key == ins_key(nir))


# -- addresses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("Jean.Dupont@Autre.MSSante.fr", Address("Jean.Dupont", "autre.mssante.fr")),
        ("a+b@x.fr", Address("a+b", "x.fr")),
        ("o'brien@x.fr", Address("o'brien", "x.fr")),
        ("a@xn--hpital-bva.mssante.fr", Address("a", "xn--hpital-bva.mssante.fr")),
    ],
)
def test_parse_address_accepts_dot_atoms(address: str, expected: Address) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        "",
        "@x.fr",
        "nobody",
        "a@",
        '"john doe"@x.fr',  # quoted local part
        '"a"@x.fr',
        "a..b@x.fr",
        ".a@x.fr",
        "a.@x.fr",
        "a b@x.fr",
        "jos\u00e9@x.fr",  # SMTPUTF8 local part
        "a" * 65 + "@x.fr",
        "a@x.fr.",  # final dot
        "a@ x.fr",
        "a@x..fr",
        "a@[127.0.0.1]",
        "a@localhost",
        "a@-x.fr",
        "a@x.fr\n",
    ],
)
def test_parse_address_refuses_malformed_addresses(address: str) -> None:
    assert parse_address(address) is replies.INVALID_ADDRESS


def test_parse_address_refuses_u_labels() -> None:
    assert parse_address("a@h\u00f4pital.mssante.fr") is replies.NON_ASCII_DOMAIN


def test_local_part_of_64_octets_is_accepted() -> None:
    assert isinstance(parse_address("a" * 64 + "@x.fr"), Address)


def test_address_str_and_lowered() -> None:
    address = Address("Jean.Dupont", "x.fr")
    assert str(address) == "Jean.Dupont@x.fr"
    assert address.lowered == "jean.dupont@x.fr"


# -- routing at submission -----------------------------------------------------------------------------


def test_active_hosted_bal_is_local_lower_cased() -> None:
    assert _route("Dr.Martin@COLOMBE.mssante.fr", BalStatus.ACTIVE) == Route(
        RouteKind.LOCAL, "dr.martin@colombe.mssante.fr"
    )


def test_hosted_domains_are_compared_normalised() -> None:
    assert _route("a@hopital.example.fr", BalStatus.ACTIVE).kind is RouteKind.LOCAL


@pytest.mark.parametrize("status", [None, BalStatus.SUSPENDED, BalStatus.CLOSED])
def test_unknown_or_inactive_hosted_bal_is_refused_5_1_1(status: BalStatus | None) -> None:
    route = _route("absent@colombe.mssante.fr", status)
    assert route == Route(RouteKind.REFUSED, "absent@colombe.mssante.fr", replies.UNKNOWN_MAILBOX)
    assert str(route.reply) == (
        "550 5.1.1 Recipient address rejected: no such active mailbox"
        " / boite aux lettres inconnue ou inactive"
    )


def test_hosted_domain_is_never_remote_even_when_whitelisted() -> None:
    assert WHITELIST.is_listed("colombe.mssante.fr")
    assert _route("x@colombe.mssante.fr", None).kind is RouteKind.REFUSED


def test_whitelisted_domain_is_remote_keeping_the_local_part() -> None:
    assert _route("Jean.Dupont@AUTRE.mssante.fr") == Route(
        RouteKind.REMOTE, "Jean.Dupont@autre.mssante.fr"
    )


def test_status_is_ignored_for_a_remote_domain() -> None:
    assert _route("a@tiers.mssante.fr", BalStatus.CLOSED).kind is RouteKind.REMOTE


def test_a_label_domain_on_the_whitelist_is_remote() -> None:
    assert _route("a@XN--hpital-bva.mssante.fr").kind is RouteKind.REMOTE


def test_u_label_domain_is_refused_even_if_its_a_label_is_listed() -> None:
    route = _route("a@h\u00f4pital.mssante.fr")
    assert route.kind is RouteKind.REFUSED
    assert route.reply is replies.NON_ASCII_DOMAIN
    assert str(route.reply) == (
        "501 5.1.2 Domain must be written in ASCII (IDNA A-labels, xn--)"
        " / domaine a ecrire en ASCII (xn--)"
    )


def test_domain_outside_the_trust_space_is_refused_5_7_1() -> None:
    route = _route("someone@gmail.com")
    assert route.kind is RouteKind.REFUSED
    assert route.address == "someone@gmail.com"
    assert str(route.reply) == (
        "550 5.7.1 Recipient domain gmail.com is not in the MSSante trust space"
        " / domaine hors de l'espace de confiance MSSante"
    )


def test_malformed_recipient_is_refused_501() -> None:
    route = _route('"quoted"@autre.mssante.fr')
    assert route == Route(RouteKind.REFUSED, '"quoted"@autre.mssante.fr', replies.INVALID_ADDRESS)
    assert (
        str(route.reply) == "501 5.1.3 Bad recipient address syntax / syntaxe d'adresse incorrecte"
    )


@pytest.mark.parametrize("ins", [GOOD_INS, GOOD_INS_2])
def test_patient_with_valid_ins_is_patient(ins: str) -> None:
    assert _route(f"{ins}@Patient.MSSante.fr") == Route(
        RouteKind.PATIENT, f"{ins}@patient.mssante.fr"
    )


def test_patient_test_mailbox_is_routed_as_patient() -> None:
    assert _route("Reponse.Automatique-Test@patient.mssante.fr") == Route(
        RouteKind.PATIENT, "reponse.automatique-test@patient.mssante.fr"
    )


@pytest.mark.parametrize("local", ["146026322000197", "14602632200019", "jean.dupont"])
def test_patient_with_bad_ins_is_refused_5_1_3(local: str) -> None:
    route = _route(f"{local}@patient.mssante.fr")
    assert route.kind is RouteKind.REFUSED
    assert str(route.reply) == (
        "550 5.1.3 Patient address must be a valid 15-digit INS at patient.mssante.fr"
        " / adresse patient invalide: INS incorrect"
    )


def test_patient_domain_missing_from_whitelist_is_refused() -> None:
    route = _route(f"{GOOD_INS}@patient.mssante.fr", whitelist=NO_PATIENT_WHITELIST)
    assert route.kind is RouteKind.REFUSED
    assert route.reply == replies.outside_trust_space("patient.mssante.fr")


def test_bad_ins_is_reported_before_a_missing_patient_domain() -> None:
    route = _route("123@patient.mssante.fr", whitelist=NO_PATIENT_WHITELIST)
    assert route.reply is replies.INVALID_PATIENT_ADDRESS


def test_hosting_the_patient_domain_makes_it_local() -> None:
    route = route_recipient(
        f"{GOOD_INS}@patient.mssante.fr",
        hosted_domains={"patient.mssante.fr"},
        local_bal_status=BalStatus.ACTIVE,
        whitelist=WHITELIST,
    )
    assert route.kind is RouteKind.LOCAL


# -- inbound MX: sender ------------------------------------------------------------------------------


def test_listed_peer_for_the_sender_domain_is_accepted() -> None:
    assert check_inbound_sender("a@autre.mssante.fr", PEER, WHITELIST) is None
    assert check_inbound_sender("a@AUTRE.mssante.fr", PEER, WHITELIST) is None
    assert check_inbound_sender('"odd local"@autre.mssante.fr', PEER, WHITELIST) is None


def test_peer_listed_for_another_domain_only_is_refused_5_7_1() -> None:
    reply = check_inbound_sender("a@tiers.mssante.fr", PEER, WHITELIST)
    assert str(reply) == (
        "550 5.7.1 Certificate DN not listed in the MSSante whitelist for domain"
        " tiers.mssante.fr / DN du certificat absent de la liste blanche pour ce domaine"
    )


def test_unlisted_peer_dn_is_refused_with_5_7_1() -> None:
    assert check_inbound_sender("a@autre.mssante.fr", UNLISTED, WHITELIST) == (
        replies.dn_not_listed("autre.mssante.fr")
    )


def test_unlisted_sender_domain_is_refused_with_5_7_1() -> None:
    assert check_inbound_sender("a@gmail.com", PEER, WHITELIST) == replies.dn_not_listed(
        "gmail.com"
    )


def test_no_certificate_is_refused_5_7_0() -> None:
    assert check_inbound_sender("a@autre.mssante.fr", None, WHITELIST) is (
        replies.NO_CLIENT_CERTIFICATE
    )
    assert check_inbound_sender("", None, WHITELIST) is replies.NO_CLIENT_CERTIFICATE


def test_null_sender_from_a_listed_dn_is_accepted() -> None:
    assert check_inbound_sender("", PEER, WHITELIST) is None
    assert check_inbound_sender("", OTHER, WHITELIST) is None


def test_null_sender_from_an_unlisted_dn_is_refused() -> None:
    reply = check_inbound_sender("", UNLISTED, WHITELIST)
    assert reply is replies.NULL_SENDER_DN_NOT_LISTED
    assert str(reply) == (
        "550 5.7.1 Null sender refused: certificate DN not listed in the MSSante whitelist"
        " / expediteur vide refuse: DN du certificat absent de la liste blanche"
    )


@pytest.mark.parametrize("mail_from", ["nobody", "@autre.mssante.fr", "a@", "a@[1.2.3.4]"])
def test_malformed_sender_is_refused_501_5_1_7(mail_from: str) -> None:
    assert check_inbound_sender(mail_from, PEER, WHITELIST) is replies.INVALID_SENDER_ADDRESS


def test_u_label_sender_domain_is_refused() -> None:
    assert check_inbound_sender("a@h\u00f4pital.mssante.fr", PEER, WHITELIST) is (
        replies.NON_ASCII_DOMAIN
    )
    assert check_inbound_sender("a@xn--hpital-bva.mssante.fr", PEER, WHITELIST) is None


# -- inbound MX: recipient ---------------------------------------------------------------------------


def test_active_hosted_bal_is_accepted_inbound() -> None:
    assert (
        check_inbound_recipient(
            "A@Colombe.mssante.fr", hosted_domains=HOSTED, bal_status=BalStatus.ACTIVE
        )
        is None
    )


@pytest.mark.parametrize("status", [None, BalStatus.SUSPENDED, BalStatus.CLOSED])
def test_unknown_or_inactive_bal_is_refused_inbound_5_1_1(status: BalStatus | None) -> None:
    assert (
        check_inbound_recipient("a@colombe.mssante.fr", hosted_domains=HOSTED, bal_status=status)
        is replies.UNKNOWN_MAILBOX
    )


def test_other_domain_is_relay_denied_inbound() -> None:
    reply = check_inbound_recipient(
        "a@autre.mssante.fr", hosted_domains=HOSTED, bal_status=BalStatus.ACTIVE
    )
    assert str(reply) == (
        "550 5.7.1 Relay access denied: domain not hosted here / domaine non heberge ici"
    )


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ('"x"@colombe.mssante.fr', replies.INVALID_ADDRESS),
        ("a@c\u00f4lombe.fr", replies.NON_ASCII_DOMAIN),
    ],
)
def test_malformed_inbound_recipient_is_refused(address: str, expected: replies.Reply) -> None:
    assert (
        check_inbound_recipient(address, hosted_domains=HOSTED, bal_status=BalStatus.ACTIVE)
        is expected
    )


# -- sizes ----------------------------------------------------------------------------------------


MB26 = 26 * 1_000_000


def test_patient_limit_is_25_million_octets() -> None:
    assert PATIENT_MAX_BYTES == 25_000_000
    assert PATIENT_MAX_BYTES < 26 * 1_000_000
    assert PATIENT_MAX_BYTES < 26 * 1_048_576


@pytest.mark.parametrize(
    ("kinds", "listener", "expected"),
    [
        ([], 50_000_000, 50_000_000),
        ([RouteKind.LOCAL, RouteKind.REMOTE], 50_000_000, 50_000_000),
        ([RouteKind.PATIENT], 50_000_000, PATIENT_MAX_BYTES),
        ([RouteKind.LOCAL, RouteKind.PATIENT], 50_000_000, PATIENT_MAX_BYTES),
        ([RouteKind.PATIENT], 10_000_000, 10_000_000),
        (iter([RouteKind.PATIENT]), 30_000_000, PATIENT_MAX_BYTES),
    ],
)
def test_size_limit_for(kinds: list[RouteKind], listener: int, expected: int) -> None:
    assert size_limit_for(kinds, listener) == expected


@pytest.mark.parametrize("size", [26 * 1_000_000, 26 * 1_048_576, PATIENT_MAX_BYTES + 1])
def test_message_over_25_mb_to_a_patient_is_refused_552_5_3_4(size: int) -> None:
    reply = check_message_size(size, [RouteKind.REMOTE, RouteKind.PATIENT], 50_000_000)
    assert str(reply) == (
        "552 5.3.4 Message to a patient exceeds the Mon espace sante limit of 25000000 octets"
        " / message trop volumineux pour Mon espace sante"
    )


def test_patient_message_at_the_limit_is_accepted() -> None:
    assert check_message_size(PATIENT_MAX_BYTES, [RouteKind.PATIENT], 50_000_000) is None


def test_patient_limit_equal_to_listener_limit_gives_the_patient_reply() -> None:
    reply = check_message_size(PATIENT_MAX_BYTES + 1, [RouteKind.PATIENT], PATIENT_MAX_BYTES)
    assert reply == replies.patient_message_too_big(PATIENT_MAX_BYTES)


def test_26_mb_to_professionals_follows_the_listener_limit() -> None:
    assert check_message_size(MB26, [RouteKind.REMOTE, RouteKind.LOCAL], 50_000_000) is None
    assert check_message_size(MB26, [RouteKind.REMOTE], 20_000_000) == (
        replies.message_too_big(20_000_000)
    )


def test_listener_limit_applies_when_smaller_than_the_patient_limit() -> None:
    reply = check_message_size(10_000_001, [RouteKind.PATIENT], 10_000_000)
    assert str(reply) == (
        "552 5.3.4 Message size exceeds fixed limit of 10000000 octets / message trop volumineux"
    )


def test_size_at_mail_from_uses_the_listener_limit() -> None:
    assert check_message_size(MB26, [], 50_000_000) is None
    assert check_message_size(MB26, [], 20_000_000) == replies.message_too_big(20_000_000)
    assert check_message_size(20_000_000, [], 20_000_000) is None


# -- submission senders --------------------------------------------------------------------------------

USER = "dr.martin@colombe.mssante.fr"
SHARED = {"Secretariat@Colombe.mssante.fr", "cabinet@colombe.mssante.fr"}


def test_user_may_send_as_itself_in_any_case() -> None:
    assert sender_allowed(USER, "Dr.Martin@COLOMBE.mssante.fr", None, set()) is None
    assert sender_allowed(USER, USER, ["DR.MARTIN@colombe.mssante.fr"], set()) is None


def test_user_may_send_as_a_delegated_bal() -> None:
    assert sender_allowed(USER, "secretariat@colombe.mssante.fr", None, SHARED) is None
    assert (
        sender_allowed(
            USER, "secretariat@colombe.mssante.fr", ["cabinet@colombe.mssante.fr", USER], SHARED
        )
        is None
    )


def test_empty_envelope_sender_is_refused_on_submission() -> None:
    reply = sender_allowed(USER, "", None, SHARED)
    assert reply is replies.NULL_SENDER_ON_SUBMISSION
    assert str(reply) == (
        "553 5.7.1 Null sender not allowed on submission / expediteur vide interdit en soumission"
    )


def test_envelope_sender_not_owned_is_refused_553_5_7_1() -> None:
    reply = sender_allowed(USER, "chef@colombe.mssante.fr", None, SHARED)
    assert str(reply) == (
        "553 5.7.1 Sender address rejected: chef@colombe.mssante.fr not owned by user"
        " / pas de droit d'envoi pour cette adresse"
    )


def test_malformed_envelope_sender_is_refused() -> None:
    assert sender_allowed(USER, "not-an-address", None, SHARED) is replies.INVALID_SENDER_ADDRESS


def test_header_from_not_owned_is_refused_naming_the_address() -> None:
    reply = sender_allowed(USER, USER, [USER, "chef@colombe.mssante.fr"], SHARED)
    assert reply == replies.header_from_not_owned("chef@colombe.mssante.fr")
    assert str(reply) == (
        "550 5.7.1 From: header address chef@colombe.mssante.fr not owned by user"
        " / pas de droit d'envoi pour l'adresse From:"
    )


def test_malformed_header_from_is_not_owned() -> None:
    assert sender_allowed(USER, USER, ["garbage"], SHARED) == replies.header_from_not_owned(
        "garbage"
    )


def test_missing_header_from_is_refused() -> None:
    assert sender_allowed(USER, USER, [], SHARED) is replies.NO_HEADER_FROM


def test_malformed_delegations_are_ignored() -> None:
    assert sender_allowed(USER, "x@y.fr", None, {"garbage", "x@y.fr"}) is None
    assert sender_allowed(USER, "garbage@", None, {"garbage@"}) is replies.INVALID_SENDER_ADDRESS


# -- X-MSS-* headers ---------------------------------------------------------------------------------


def test_mss_headers_summary_never_logs_sensitive_values() -> None:
    headers = [
        ("Subject", "XDM/1.0/DDM"),
        ("x-mss-codecda", "34112-3,PRESC-BIO"),
        ("X-MSS-INS", "O"),
        ("X-MSS-NIL", "  ABC-123  "),
        ("X-Mss-Mes", "FIN"),
        ("X-MSS-FUTURE", "secret"),
    ]
    assert mss_headers(headers) == {
        "X-MSS-CODECDA": "present",
        "X-MSS-INS": "O",
        "X-MSS-NIL": "ABC-123",
        "X-MSS-MES": "FIN",
        "X-MSS-FUTURE": "present",
    }


def test_mss_ins_other_than_o_or_n_is_invalid_not_logged() -> None:
    assert mss_headers([("X-MSS-INS", "N")]) == {"X-MSS-INS": "N"}
    assert mss_headers([("X-MSS-INS", GOOD_INS)]) == {"X-MSS-INS": "invalid"}
    assert mss_headers([("X-MSS-INS", "o")]) == {"X-MSS-INS": "invalid"}


def test_mss_mes_other_than_fin_is_invalid() -> None:
    assert mss_headers([("X-MSS-MES", "fin")]) == {"X-MSS-MES": "invalid"}


@pytest.mark.parametrize("value", ["", "two words", "x" * 65, "caf\u00e9"])
def test_mss_nil_that_is_not_one_short_ascii_token_is_invalid(value: str) -> None:
    assert mss_headers([("X-MSS-NIL", value)]) == {"X-MSS-NIL": "invalid"}


def test_folded_values_are_unfolded() -> None:
    assert mss_headers([("X-MSS-INS", "\r\n O")]) == {"X-MSS-INS": "O"}


def test_repeated_mss_header_is_duplicate() -> None:
    assert mss_headers([("X-MSS-INS", "O"), ("x-mss-ins", "N"), ("X-MSS-INS", "O")]) == {
        "X-MSS-INS": "duplicate"
    }


def test_mss_header_names_that_are_not_field_names_are_skipped() -> None:
    assert (
        mss_headers([("X-MSS-\u00c9", "x"), ("X-MSS-A:B", "y"), ("X-MSS-" + "A" * 71, "z")]) == {}
    )


def test_many_mss_headers_are_bounded() -> None:
    headers = [(f"X-MSS-H{i}", "v") for i in range(40)]
    summary = mss_headers([*headers, ("X-MSS-H0", "again")])
    assert len(summary) == policy.MAX_MSS_HEADERS + 1
    assert summary["X-MSS-*"] == "present"
    assert summary["X-MSS-H0"] == "duplicate"
    assert "X-MSS-H39" not in summary


def test_no_mss_headers() -> None:
    assert mss_headers([("From", "a@b.fr"), ("X-Mailer", "x"), ("X-MSSX", "y")]) == {}


def test_mss_headers_reads_an_email_message() -> None:
    from email import message_from_bytes

    message = message_from_bytes(b"X-MSS-NIL: LPS-42\r\nX-MSS-INS: N\r\n\r\nbody\r\n")
    assert mss_headers(message.items()) == {"X-MSS-NIL": "LPS-42", "X-MSS-INS": "N"}


def test_policy_module_exports_the_patient_domain() -> None:
    assert policy.PATIENT_DOMAIN == "patient.mssante.fr"
