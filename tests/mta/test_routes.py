"""mta.routes: static route table, MX ordering (RFC 5321 §5.1, RFC 7505), connection limits."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta.routes import (
    NULL_MX,
    ConnectionLimits,
    RouteError,
    RouteTable,
    Target,
    mx_targets,
    normalise_host,
    parse_routes,
    parse_target,
    route_for,
)
from mta.schedule import Decision, Outcome

# -- targets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("relay.internal", Target("relay.internal", 25)),
        ("Relay.Internal.", Target("relay.internal", 25)),
        ("localhost:2525", Target("localhost", 2525)),
        ("127.0.0.1:2525", Target("127.0.0.1", 2525)),
        ("127.0.0.1", Target("127.0.0.1", 25)),
        ("[192.0.2.1]", Target("192.0.2.1", 25)),
        ("[192.0.2.1]:587", Target("192.0.2.1", 587)),
        ("[::1]:2525", Target("::1", 2525)),
        ("[IPv6:2001:DB8::1]", Target("2001:db8::1", 25)),
        ("  mx.b.fr:65535  ", Target("mx.b.fr", 65535)),
    ],
)
def test_target_syntax(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty target"),
        ("[192.0.2.1", "unclosed"),
        ("[IPv6:192.0.2.1]", "invalid IPv6"),
        ("[not.an.ip]", "invalid address literal"),
        ("[192.0.2.1]x", "unexpected"),
        ("[192.0.2.1]:0", "out of range"),
        ("::1", "brackets"),
        ("host:99999", "out of range"),
        ("host:123456", "invalid port"),
        ("host:", "invalid port"),
        ("host:ab", "invalid port"),
        ("host:٣", "invalid port"),
        ("300.1.1.1", "invalid IPv4"),
        ("bad_host", "invalid host name"),
        ("-bad.fr", "invalid host name"),
        ("h\u00f4te.fr", "invalid host name"),
        ("a" * 64 + ".fr", "invalid host name"),
        ("a." * 127 + "fr", "invalid host name"),
    ],
)
def test_bad_target_refused_with_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_target(text)


def test_target_str_and_kind() -> None:
    assert str(Target("mx.b.fr", 25)) == "mx.b.fr:25"
    assert str(Target("192.0.2.1", 2525)) == "[192.0.2.1]:2525"
    assert str(Target("::1", 25)) == "[::1]:25"
    assert Target("::1").is_address
    assert not Target("mx.b.fr").is_address


def test_normalise_host() -> None:
    assert normalise_host("LOCALHOST.") == "localhost"
    assert normalise_host(".") is None
    assert normalise_host("") is None
    assert normalise_host("a..b") is None


# -- table -----------------------------------------------------------------------------------------

CONFIG = [
    "# federation test",
    "example.mssante.fr = 127.0.0.1:2525",
    "",
    ".hopital.fr = [192.0.2.10]",
    ".chu.hopital.fr = [192.0.2.11]:26",
    "* = relay.internal:25, relay2.internal",
]


def test_exact_domain_route() -> None:
    t = parse_routes(CONFIG)
    assert route_for("Example.MSSante.fr.", t) == [Target("127.0.0.1", 2525)]


def test_suffix_matches_subdomains_only_longest_first() -> None:
    t = parse_routes(CONFIG)
    assert route_for("a.hopital.fr", t) == [Target("192.0.2.10")]
    assert route_for("x.y.hopital.fr", t) == [Target("192.0.2.10")]
    assert route_for("a.chu.hopital.fr", t) == [Target("192.0.2.11", 26)]
    assert route_for("chu.hopital.fr", t) == [Target("192.0.2.10")]
    # the suffix itself is not covered by ".hopital.fr": the wildcard applies
    assert route_for("hopital.fr", t) == [Target("relay.internal"), Target("relay2.internal")]


def test_wildcard_catches_the_rest() -> None:
    t = parse_routes(CONFIG)
    assert route_for("other.fr", t) == [Target("relay.internal"), Target("relay2.internal")]


def test_no_match_means_mx_lookup() -> None:
    t = parse_routes(["a.fr = [192.0.2.1]"])
    assert route_for("b.fr", t) is None
    assert route_for("b.fr", RouteTable()) is None


def test_route_for_refuses_invalid_domain() -> None:
    with pytest.raises(ValueError, match="invalid domain"):
        route_for("bad domain", parse_routes(CONFIG))


def test_route_lists_are_copies() -> None:
    t = parse_routes(CONFIG)
    got = route_for("example.mssante.fr", t)
    assert got is not None
    got.clear()
    assert route_for("example.mssante.fr", t) == [Target("127.0.0.1", 2525)]


@pytest.mark.parametrize(
    ("lines", "number", "reason"),
    [
        (["a.fr = [192.0.2.1]", "no equals sign"], 2, "expected 'domain = host"),
        (["a.fr = host:0"], 1, "port 0 out of range"),
        (["", "# c", "a.fr = "], 3, "empty target"),
        (["a.fr = x,"], 1, "empty target"),
        (["a b = x"], 1, "invalid domain pattern"),
        (["= x"], 1, "invalid domain pattern"),
        ([". = x"], 1, "invalid domain pattern"),
        ([".a.fr. = x"], 1, "invalid domain pattern"),
        (["*.a.fr = x"], 1, "invalid domain pattern"),
        (["a.fr = x", "A.FR = y"], 2, "duplicate route for 'a.fr'"),
        ([".a.fr = x", ".a.fr = y"], 2, "duplicate route for '.a.fr'"),
        (["* = x", "* = y"], 2, "duplicate route for '\\*'"),
        (["a.fr = [::1"], 1, "unclosed"),
    ],
)
def test_invalid_lines_refused_with_line_number_and_reason(
    lines: list[str], number: int, reason: str
) -> None:
    with pytest.raises(RouteError, match=rf"\[queue\] routes line {number}: .*{reason}") as info:
        parse_routes(lines)
    assert info.value.line_number == number


def test_empty_table() -> None:
    assert parse_routes([]) == RouteTable()


# -- MX ------------------------------------------------------------------------------------------


def test_mx_sorted_by_preference() -> None:
    got = mx_targets("b.fr", [(20, "mx2.b.fr."), (10, "MX1.b.fr"), (30, "mx3.b.fr")])
    assert got == [Target("mx1.b.fr"), Target("mx2.b.fr"), Target("mx3.b.fr")]


def test_mx_equal_preferences_shuffled_by_injected_rng() -> None:
    records = [(10, f"mx{i}.b.fr") for i in range(8)] + [(5, "first.b.fr")]
    orders = set()
    for seed in range(20):
        got = mx_targets("b.fr", records, rng=random.Random(seed))
        assert isinstance(got, list)
        assert got[0] == Target("first.b.fr")
        assert sorted(t.host for t in got[1:]) == sorted(f"mx{i}.b.fr" for i in range(8))
        orders.add(tuple(t.host for t in got))
    assert len(orders) > 1
    again = mx_targets("b.fr", records, rng=random.Random(3))
    assert again == mx_targets("b.fr", records, rng=random.Random(3))


def test_mx_default_rng_works() -> None:
    got = mx_targets("b.fr", [(10, "a.b.fr"), (10, "c.b.fr")])
    assert isinstance(got, list)
    assert {t.host for t in got} == {"a.b.fr", "c.b.fr"}


def test_mx_duplicates_dropped_keeping_best_preference() -> None:
    got = mx_targets("b.fr", [(10, "a.b.fr"), (10, "a.b.fr."), (20, "A.b.fr"), (30, "c.b.fr")])
    assert got == [Target("a.b.fr"), Target("c.b.fr")]


def test_no_mx_means_implicit_mx_on_the_domain() -> None:
    assert mx_targets("B.fr.", []) == [Target("b.fr")]


def test_port_applies_to_every_target() -> None:
    assert mx_targets("b.fr", [], port=2525) == [Target("b.fr", 2525)]
    assert mx_targets("b.fr", [(1, "mx.b.fr")], port=26) == [Target("mx.b.fr", 26)]


@pytest.mark.parametrize("records", [[(0, ".")], [(0, "")], [(10, ".")], [(0, "."), (5, ".")]])
def test_null_mx_is_a_permanent_failure_5_1_10(records: list[tuple[int, str]]) -> None:
    got = mx_targets("nomail.fr", records)
    assert got == NULL_MX
    assert isinstance(got, Decision)
    assert got.outcome is Outcome.FAIL
    assert got.status == "5.1.10"
    assert "null MX" in got.diagnostic


def test_null_mx_among_real_records_is_ignored() -> None:
    assert mx_targets("b.fr", [(0, "."), (10, "mx.b.fr")]) == [Target("mx.b.fr")]


def test_local_names_discard_our_level_and_worse() -> None:
    got = mx_targets(
        "b.fr",
        [(10, "mx1.b.fr"), (20, "us.colombe.fr"), (20, "mx2.b.fr"), (30, "mx3.b.fr")],
        local_names=["US.colombe.fr.", "not a host"],
    )
    assert got == [Target("mx1.b.fr")]


def test_we_are_the_best_mx_is_a_loop() -> None:
    got = mx_targets(
        "b.fr", [(10, "us.colombe.fr"), (20, "mx.b.fr")], local_names=["us.colombe.fr"]
    )
    assert isinstance(got, Decision)
    assert got.status == "5.4.6"
    assert "loops back" in got.diagnostic


@pytest.mark.parametrize(
    ("domain", "records", "reason"),
    [
        ("bad domain", [], "invalid domain"),
        ("b.fr", [(-1, "mx.b.fr")], "out of range"),
        ("b.fr", [(65536, "mx.b.fr")], "out of range"),
        ("b.fr", [(10, "bad host")], "invalid MX exchange"),
    ],
)
def test_mx_bad_input_is_a_bug(domain: str, records: list[tuple[int, str]], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        mx_targets(domain, records)


@given(
    st.lists(
        st.tuples(st.integers(0, 65535), st.from_regex(r"[a-z]{1,5}\.b\.fr", fullmatch=True)),
        min_size=1,
        max_size=20,
    ),
    st.integers(),
)
def test_mx_order_respects_preferences(records: list[tuple[int, str]], seed: int) -> None:
    got = mx_targets("b.fr", records, rng=random.Random(seed))
    assert isinstance(got, list)
    best: dict[str, int] = {}
    for pref, host in records:
        best[host] = min(pref, best.get(host, pref))
    assert sorted(t.host for t in got) == sorted(best)
    prefs = [best[t.host] for t in got]
    assert prefs == sorted(prefs)


# -- connection limits ----------------------------------------------------------------------------


def test_per_domain_cap() -> None:
    limits = ConnectionLimits(global_limit=10, per_domain=2)
    assert limits.try_acquire("b.fr")
    assert limits.try_acquire("B.FR.")
    assert not limits.try_acquire("b.fr")
    assert limits.try_acquire("c.fr")
    assert limits.in_use("b.fr") == 2
    assert limits.in_use() == 3


def test_global_cap() -> None:
    limits = ConnectionLimits(global_limit=2, per_domain=5)
    assert limits.try_acquire("a.fr")
    assert limits.try_acquire("b.fr")
    assert not limits.try_acquire("c.fr")
    limits.release("a.fr")
    assert limits.try_acquire("c.fr")


def test_release_frees_a_slot() -> None:
    limits = ConnectionLimits(global_limit=5, per_domain=1)
    assert limits.try_acquire("b.fr")
    assert not limits.try_acquire("b.fr")
    limits.release("b.fr")
    assert limits.in_use("b.fr") == 0
    assert limits.in_use() == 0
    assert limits.try_acquire("b.fr")


def test_release_decrements_gradually() -> None:
    limits = ConnectionLimits(per_domain=3)
    for _ in range(3):
        assert limits.try_acquire("b.fr")
    limits.release("b.fr")
    assert limits.in_use("b.fr") == 2


def test_release_without_acquire_is_a_bug() -> None:
    with pytest.raises(ValueError, match="without a matching acquire"):
        ConnectionLimits().release("b.fr")


def test_per_domain_override() -> None:
    limits = ConnectionLimits(per_domain=1, per_domain_overrides={"Patient.MSSante.fr": 3})
    assert limits.limit_for("patient.mssante.fr") == 3
    assert limits.limit_for("b.fr") == 1
    assert all(limits.try_acquire("patient.mssante.fr") for _ in range(3))
    assert not limits.try_acquire("patient.mssante.fr")


def test_defaults() -> None:
    limits = ConnectionLimits()
    assert (limits.global_limit, limits.per_domain) == (100, 20)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"global_limit": 0}, "max_connections must"),
        ({"per_domain": 0}, "max_connections_per_domain must"),
        ({"per_domain_overrides": {"b.fr": 0}}, "limit for b.fr"),
    ],
)
def test_nonsensical_limits_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConnectionLimits(**kwargs)  # type: ignore[arg-type]


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["a.fr", "b.fr", "c.fr"])), max_size=60))
def test_accounting_never_exceeds_caps(ops: list[tuple[bool, str]]) -> None:
    limits = ConnectionLimits(global_limit=4, per_domain=2)
    held: list[str] = []
    for acquire, domain in ops:
        if acquire:
            if limits.try_acquire(domain):
                held.append(domain)
        elif domain in held:
            held.remove(domain)
            limits.release(domain)
        assert limits.in_use() == len(held) <= 4
        for d in ("a.fr", "b.fr", "c.fr"):
            assert limits.in_use(d) == held.count(d) <= 2
