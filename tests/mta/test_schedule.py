"""mta.schedule: Postfix-like retry schedule, lifetimes, delay warning, retry/fail decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta.schedule import (
    EXPIRED_STATUS,
    NO_STARTTLS,
    Decision,
    Outcome,
    RetryPolicy,
    ScheduleConfigError,
    TransportProblem,
    classify_reply,
    peer_refusal,
    redact,
    transport_failure,
)
from pki.verify import Reason

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
S = timedelta(seconds=1)


# -- defaults and backoff ----------------------------------------------------------------------


def test_defaults_are_postfix_defaults() -> None:
    p = RetryPolicy()
    assert p.minimal_backoff == 300 * S
    assert p.maximal_backoff == 4000 * S
    assert p.lifetime == timedelta(days=5)
    assert p.bounce_lifetime == timedelta(days=5)
    assert p.delay_warning == timedelta(hours=4)
    assert p.jitter == 0


def test_backoff_doubles_from_the_first_failure_then_caps() -> None:
    p = RetryPolicy()
    assert [p.backoff(n).total_seconds() for n in range(1, 8)] == [
        300,
        600,
        1200,
        2400,
        4000,
        4000,
        4000,
    ]


def test_backoff_with_huge_attempt_count_stays_capped() -> None:
    assert RetryPolicy().backoff(10_000) == 4000 * S


def test_backoff_equal_min_and_max_is_constant() -> None:
    p = RetryPolicy(minimal_backoff=60 * S, maximal_backoff=60 * S)
    assert {p.backoff(n) for n in range(1, 10)} == {60 * S}


def test_backoff_refuses_zero_attempts() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy().backoff(0)


# -- next_attempt ----------------------------------------------------------------------------------


def test_next_attempt_adds_backoff_to_now() -> None:
    now = T0 + timedelta(minutes=7)
    assert RetryPolicy().next_attempt(T0, 1, now) == now + 300 * S
    assert RetryPolicy().next_attempt(T0, 3, now) == now + 1200 * S


def test_next_attempt_last_retry_is_at_the_deadline() -> None:
    p = RetryPolicy()
    now = T0 + timedelta(days=5) - 10 * S
    assert p.next_attempt(T0, 50, now) == T0 + timedelta(days=5)


def test_next_attempt_none_when_lifetime_over() -> None:
    p = RetryPolicy()
    assert p.next_attempt(T0, 50, T0 + timedelta(days=5)) is None
    assert p.next_attempt(T0, 50, T0 + timedelta(days=6)) is None


def test_next_attempt_null_sender_uses_bounce_lifetime() -> None:
    p = RetryPolicy(bounce_lifetime=timedelta(hours=1))
    now = T0 + timedelta(hours=1)
    assert p.next_attempt(T0, 3, now, null_sender=True) is None
    assert p.next_attempt(T0, 3, now) == now + 1200 * S


def test_expires_at_depends_on_sender_kind() -> None:
    p = RetryPolicy(lifetime=timedelta(days=2), bounce_lifetime=timedelta(days=1))
    assert p.expires_at(T0) == T0 + timedelta(days=2)
    assert p.expires_at(T0, null_sender=True) == T0 + timedelta(days=1)


def test_next_attempt_refuses_naive_datetimes() -> None:
    naive = datetime(2026, 1, 5, 8, 0)
    with pytest.raises(ValueError, match="time zone"):
        RetryPolicy().next_attempt(naive, 1, T0)
    with pytest.raises(ValueError, match="time zone"):
        RetryPolicy().next_attempt(T0, 1, naive)


# -- jitter ----------------------------------------------------------------------------------------


def test_jitter_is_deterministic_per_key_and_attempt() -> None:
    p = RetryPolicy(jitter=0.5)
    assert p.backoff(3, key=42) == p.backoff(3, key=42)
    assert p.backoff(3, key="a") == p.backoff(3, key="a")


def test_jitter_only_shortens_within_the_fraction() -> None:
    p = RetryPolicy(jitter=0.2)
    for key in range(200):
        d = p.backoff(2, key=key)
        assert 600 * 0.8 * S <= d <= 600 * S


def test_jitter_spreads_entries_that_failed_together() -> None:
    p = RetryPolicy(jitter=0.3)
    assert len({p.backoff(1, key=k) for k in range(50)}) > 40


def test_jitter_needs_a_key() -> None:
    assert RetryPolicy(jitter=0.5).backoff(1) == 300 * S


# -- delay warning ---------------------------------------------------------------------------------


def test_delay_warning_due_after_four_hours() -> None:
    p = RetryPolicy()
    assert not p.delay_warning_due(T0, T0 + timedelta(hours=3, minutes=59), False)
    assert p.delay_warning_due(T0, T0 + timedelta(hours=4), False)


def test_delay_warning_sent_once() -> None:
    assert not RetryPolicy().delay_warning_due(T0, T0 + timedelta(days=1), True)


def test_delay_warning_disabled() -> None:
    assert not RetryPolicy(delay_warning=None).delay_warning_due(T0, T0 + timedelta(days=4), False)


def test_delay_warning_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="time zone"):
        RetryPolicy().delay_warning_due(T0, datetime(2026, 1, 6), False)


# -- settings validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"minimal_backoff": timedelta(0)}, "minimal_backoff"),
        ({"minimal_backoff": -S}, "minimal_backoff"),
        ({"maximal_backoff": -S}, "maximal_backoff"),
        ({"minimal_backoff": 500 * S, "maximal_backoff": 400 * S}, "must not exceed"),
        ({"lifetime": timedelta(0)}, "lifetime"),
        ({"bounce_lifetime": -S}, "bounce_lifetime"),
        ({"delay_warning": timedelta(0)}, "delay_warning"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 0.6}, "jitter"),
    ],
)
def test_nonsensical_settings_are_refused_naming_the_key(
    kwargs: dict[str, object], key: str
) -> None:
    with pytest.raises(ScheduleConfigError, match=r"\[queue\] .*" + key):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_from_config_reads_seconds() -> None:
    p = RetryPolicy.from_config(
        {
            "minimal_backoff": 1,
            "maximal_backoff": 2.5,
            "lifetime": 30,
            "bounce_lifetime": 20,
            "delay_warning": 10,
            "jitter": 0.1,
            "workers": 4,  # another [queue] key: ignored
        }
    )
    assert p == RetryPolicy(
        minimal_backoff=S,
        maximal_backoff=2.5 * S,
        lifetime=30 * S,
        bounce_lifetime=20 * S,
        delay_warning=10 * S,
        jitter=0.1,
    )


def test_from_config_empty_gives_defaults() -> None:
    assert RetryPolicy.from_config({}) == RetryPolicy()


def test_from_config_zero_delay_warning_turns_it_off() -> None:
    assert RetryPolicy.from_config({"delay_warning": 0}).delay_warning is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"minimal_backoff": 0}, r"\[queue\] minimal_backoff must be positive"),
        ({"lifetime": -5}, r"\[queue\] lifetime must be a finite non-negative"),
        ({"maximal_backoff": "1h"}, r"\[queue\] maximal_backoff must be a number of seconds"),
        ({"lifetime": True}, r"\[queue\] lifetime must be a number"),
        ({"lifetime": float("inf")}, r"\[queue\] lifetime must be a finite"),
        ({"minimal_backoff": 600, "maximal_backoff": 300}, r"must not exceed maximal_backoff"),
        ({"jitter": "lots"}, r"\[queue\] jitter must be a fraction"),
    ],
)
def test_from_config_refuses_bad_values(section: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleConfigError, match=message):
        RetryPolicy.from_config(section)


# -- properties ------------------------------------------------------------------------------------

policies = st.builds(
    lambda lo, extra, periods, rest: RetryPolicy(
        minimal_backoff=lo * S,
        maximal_backoff=(lo + extra) * S,
        lifetime=((lo + extra) * periods + rest) * S,  # at most ~2000 attempts
    ),
    st.integers(1, 10_000),
    st.integers(0, 100_000),
    st.integers(0, 2000),
    st.integers(1, 10_000),
)


@given(policies, st.integers(1, 200))
def test_backoff_is_monotonic_and_capped(p: RetryPolicy, n: int) -> None:
    assert p.minimal_backoff <= p.backoff(n) <= p.backoff(n + 1) <= p.maximal_backoff


@given(policies, st.integers(0, 10_000))
def test_schedule_ends_exactly_at_lifetime(p: RetryPolicy, start_delay: int) -> None:
    """Failing every attempt: retries never pass the deadline, the last one is at it, and the
    failure there gives up."""
    now = T0 + min(start_delay * S, p.lifetime / 2)
    attempts, last_delay = 0, timedelta(0)
    deadline = T0 + p.lifetime
    while True:
        attempts += 1
        nxt = p.next_attempt(T0, attempts, now)
        if nxt is None:
            break
        assert now < nxt <= deadline
        delay = nxt - now
        if nxt < deadline:
            assert delay >= last_delay
        last_delay = delay
        now = nxt
        assert attempts < 10_000
    assert now == deadline or (attempts == 1 and now >= deadline)


@given(st.integers(0, 10**9), st.integers(1, 100), st.floats(0, 0.5))
def test_jittered_backoff_stays_within_bounds(key: int, n: int, jitter: float) -> None:
    p = RetryPolicy(jitter=jitter)
    plain = RetryPolicy().backoff(n)
    assert plain * (1 - jitter) - S / 1000 <= p.backoff(n, key=key) <= plain


# -- replies ---------------------------------------------------------------------------------------


def test_4xx_reply_is_retried_with_its_enhanced_code() -> None:
    d = classify_reply(451, "4.3.0", "Try later")
    assert d == Decision(Outcome.RETRY, "4.3.0", "451 4.3.0 Try later")


def test_5xx_reply_fails_now() -> None:
    d = classify_reply(550, "5.1.1", "No such user")
    assert d.outcome is Outcome.FAIL
    assert d.status == "5.1.1"
    assert d.diagnostic == "550 5.1.1 No such user"


def test_reply_without_enhanced_code_gets_class_default() -> None:
    assert classify_reply(554, None, "no").status == "5.0.0"
    assert classify_reply(421, None, "bye").status == "4.0.0"


@pytest.mark.parametrize("enhanced", ["4.1.1", "5.x.1", "5.1", "5.1.1234", ""])
def test_reply_with_mismatched_or_bad_enhanced_code_gets_class_default(enhanced: str) -> None:
    assert classify_reply(550, enhanced, "x").status == "5.0.0"


def test_multiline_reply_becomes_one_clean_line() -> None:
    d = classify_reply(550, "5.7.1", "line one\nline two\x00\u00e9")
    assert d.diagnostic == "550 5.7.1 line one line two??"


def test_long_reply_is_bounded() -> None:
    assert len(classify_reply(550, "5.0.0", "x" * 5000).diagnostic) <= 400


@pytest.mark.parametrize("code", [250, 354, 221])
def test_unexpected_positive_reply_is_retried_as_protocol_error(code: int) -> None:
    d = classify_reply(code, None, "odd")
    assert d.outcome is Outcome.RETRY
    assert d.status == "4.5.0"
    assert d.diagnostic.startswith("unexpected reply: ")


@pytest.mark.parametrize("code", [-1, 0, 99, 600, 999, 10**9])
def test_impossible_reply_code_is_retried_as_protocol_error(code: int) -> None:
    # A broken or hostile peer (aiosmtplib reports a malformed line as -1): never an exception
    # that would wedge the queue entry, never a failure for a fault of the peer's software.
    d = classify_reply(code, "5.1.1", "hello")
    assert d.outcome is Outcome.RETRY
    assert d.status == "4.5.0"
    assert d.diagnostic == f"unexpected reply: {code} 5.1.1 hello"


INS = "146026322000196"


@pytest.mark.parametrize(
    "text",
    [
        f"<{INS}@patient.mssante.fr> unknown",
        f"{INS}: unknown user",
        "2690499A12345: no",  # not an INS shape: kept, see below
        "x" * 380 + f" <{INS}@patient.mssante.fr>",  # the cut would leave the INS unmasked
        "x" * 385 + f" {INS}",
        "user 1460263220001 (13) and 1 46 02 63 not",
        "corse 16902" + "2A" + "00100196 unknown",
    ],
)
def test_reply_diagnostic_never_holds_an_ins(text: str) -> None:
    for d in (
        classify_reply(550, "5.1.1", text),
        classify_reply(451, None, text),
        transport_failure(TransportProblem.CONNECTION_LOST, "mx", text),
        classify_reply(450, None, text).expired(),
    ):
        assert INS not in d.diagnostic
        assert INS[:11] not in d.diagnostic  # no piece of it either
        assert "1690" + "22A00100196" not in d.diagnostic
        assert "1460263220001" not in d.diagnostic
        assert len(d.diagnostic) <= 400


def test_redact_keeps_what_is_not_an_ins() -> None:
    text = "queue id 12345, 16 digits 1234567890123456, host mx1.example.fr, code 5.1.1"
    assert redact(text) == text
    assert redact(f"{INS}@PATIENT.mssante.fr") == "***@patient.mssante.fr"
    assert redact(f"ins={INS};") == "ins=***;"


def test_decision_status_must_match_outcome() -> None:
    with pytest.raises(ValueError, match="does not match"):
        Decision(Outcome.RETRY, "5.0.0", "x")
    with pytest.raises(ValueError, match="does not match"):
        Decision(Outcome.FAIL, "4.0.0", "x")


def test_expired_decision_is_a_failure_with_5_4_7_keeping_the_last_error() -> None:
    d = classify_reply(421, "4.4.2", "busy").expired()
    assert d.outcome is Outcome.FAIL
    assert d.status == EXPIRED_STATUS == "5.4.7"
    assert d.diagnostic == "delivery time expired: 421 4.4.2 busy"


def test_expired_diagnostic_stays_bounded() -> None:
    d = classify_reply(451, "4.0.0", "y" * 1000).expired()
    assert len(d.diagnostic) == 400
    assert d.diagnostic.endswith("...")


def test_long_hostile_domain_is_cut() -> None:
    d = peer_refusal(Reason.DN_NOT_LISTED, peer="mx", domain="d" * 500)
    assert d.diagnostic.endswith("d...")


# -- transport problems ------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", list(TransportProblem))
def test_every_transport_problem_is_retried(problem: TransportProblem) -> None:
    d = transport_failure(problem, "mx.example.fr", "details")
    assert d.outcome is Outcome.RETRY
    assert d.status.startswith("4.")
    assert "mx.example.fr: details" in d.diagnostic


def test_transport_failure_without_detail() -> None:
    d = transport_failure(TransportProblem.CONNECTION_REFUSED, "[192.0.2.1]")
    assert d.diagnostic == "connection refused by [192.0.2.1]"
    assert d.status == "4.4.1"


def test_tls_handshake_failure_is_retried() -> None:
    d = transport_failure(TransportProblem.TLS_HANDSHAKE_FAILED, "mx", "alert 40\r\ninjected")
    assert d.status == "4.7.5"
    assert "\r" not in d.diagnostic
    assert "\n" not in d.diagnostic


# -- our refusals of a peer ------------------------------------------------------------------------

PERMANENT_CERT = [
    r for r in Reason if r not in {Reason.OK, Reason.REVOCATION_UNKNOWN, Reason.DN_NOT_LISTED}
]


def test_no_starttls_fails_now_with_encryption_needed() -> None:
    d = peer_refusal(NO_STARTTLS, peer="mx.b.fr", domain="b.fr")
    assert d.outcome is Outcome.FAIL
    assert d.status == "5.7.10"
    assert d.diagnostic.startswith("delivery to mx.b.fr refused: STARTTLS not offered")


@pytest.mark.parametrize("reason", PERMANENT_CERT)
def test_invalid_peer_certificate_fails_now_and_says_why(reason: Reason) -> None:
    d = peer_refusal(reason, peer="mx.b.fr", domain="b.fr")
    assert d.outcome is Outcome.FAIL
    assert d.status in {"5.7.0", "5.7.1"}
    assert "server certificate" in d.diagnostic
    assert d.diagnostic.isascii()


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (Reason.EXPIRED, "expired"),
        (Reason.REVOKED, "revoked"),
        (Reason.UNTRUSTED, "not issued by IGC-Sante"),
    ],
)
def test_audit_matrix_reasons_are_named(reason: Reason, words: str) -> None:
    d = peer_refusal(reason, peer="mx", domain="b.fr")
    assert d.status == "5.7.0"
    assert words in d.diagnostic


def test_dn_not_listed_names_the_recipient_domain() -> None:
    d = peer_refusal(Reason.DN_NOT_LISTED, peer="mx.b.fr", domain="cert-no-match-audit.fr")
    assert d.status == "5.7.1"
    assert d.diagnostic.endswith("whitelist for domain cert-no-match-audit.fr")


def test_cn_differs_names_the_domain() -> None:
    d = peer_refusal(Reason.CN_DIFFERS, peer="mx", domain="b.fr")
    assert d.status == "5.7.1"
    assert "b.fr" in d.diagnostic


def test_hostile_domain_is_cleaned_in_the_diagnostic() -> None:
    d = peer_refusal(Reason.DN_NOT_LISTED, peer="mx", domain="b.fr\r\nX: y")
    assert "\r" not in d.diagnostic
    assert "\n" not in d.diagnostic


def test_revocation_unknown_is_our_outage_and_is_retried() -> None:
    d = peer_refusal(Reason.REVOCATION_UNKNOWN, peer="mx", domain="b.fr")
    assert d.outcome is Outcome.RETRY
    assert d.status == "4.7.0"
    assert "CRL unavailable" in d.diagnostic


def test_peer_refusal_of_a_valid_certificate_is_a_bug() -> None:
    with pytest.raises(ValueError, match="valid certificate"):
        peer_refusal(Reason.OK, peer="mx", domain="b.fr")


def test_peer_refusal_unknown_reason_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown peer refusal"):
        peer_refusal("bored", peer="mx", domain="b.fr")
