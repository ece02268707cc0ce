"""Sequence-set semantics: RFC 9051 §9 ``sequence-set``, §6.4.8 UID ranges, RFC 5182 ``$``."""

from __future__ import annotations

import time

import pytest

from imap.model import SeqRange, SequenceSet
from imap.parser import parse_sequence_set
from imap.sequence import compact, compact_ordered, contains, intervals, select, validate


def seqset(text: str) -> SequenceSet:
    return parse_sequence_set(text)


UIDS = [3, 4, 7, 10, 11, 12, 20]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:*", UIDS),
        ("*", [20]),
        ("4:10", [4, 7, 10]),
        ("10:4", [4, 7, 10]),  # RFC 9051 §9: "4:10" and "10:4" are the same range
        ("*:11", [11, 12, 20]),  # "*" may be the first bound
        ("1,3,5:8,13:15", [3, 7]),
        ("11,3:4,12,4", [3, 4, 11, 12]),  # overlapping ranges: each value once, ascending
        ("5,6,8,9", []),
        ("1:4294967295", UIDS),
    ],
)
def test_select_resolves_sequence_set_against_existing_values(
    text: str, expected: list[int]
) -> None:
    assert select(seqset(text), UIDS) == expected


def test_uid_range_starting_beyond_largest_uid_still_includes_largest() -> None:
    # RFC 9051 §6.4.8: "559:*" always includes the last UID, even if 559 > every UID.
    assert select(seqset("559:*"), UIDS) == [20]
    assert contains(seqset("559:*"), 20, 20)
    assert not contains(seqset("559:*"), 12, 20)


def test_uid_range_beyond_largest_uid_without_star_names_nothing() -> None:
    assert select(seqset("21:30"), UIDS) == []


def test_star_in_empty_mailbox_names_nothing() -> None:
    assert select(seqset("1:*"), []) == []
    assert select(seqset("*"), []) == []
    assert not contains(seqset("*"), 0, 0)
    assert not contains(seqset("1:*"), 1, 0)
    assert intervals(seqset("1:*,5"), 0) == [(5, 5)]


def test_saved_result_dollar_names_saved_values_still_existing() -> None:
    # RFC 5182 §2.1: "$" is the saved result; expunged messages (UID 5) drop out.
    dollar = SequenceSet(saved=True)
    assert select(dollar, UIDS, saved=[12, 5, 3, 12]) == [3, 12]
    assert select(dollar, UIDS) == []
    assert contains(dollar, 12, 20, saved=[12])
    assert not contains(dollar, 11, 20, saved=[12])


def test_contains_handles_reversed_ranges_and_star() -> None:
    s = seqset("9:4,*")
    assert [v for v in range(1, 13) if contains(s, v, 12)] == [4, 5, 6, 7, 8, 9, 12]


def test_intervals_are_sorted_and_merged() -> None:
    assert intervals(seqset("7:9,1,2:3,10,20:*"), 15) == [(1, 3), (7, 10), (15, 20)]


def test_select_is_fast_on_large_mailboxes_and_many_ranges() -> None:
    existing = range(1, 100_001)
    many = SequenceSet(tuple(SeqRange(n, n) for n in range(1, 200_001, 2)))
    started = time.perf_counter()
    assert len(select(seqset("1:*"), existing)) == 100_000
    assert len(select(seqset("1:4294967295"), existing)) == 100_000
    assert len(select(many, existing)) == 50_000
    # Per-number loops over 1:4294967295 would take minutes; bisect takes milliseconds.
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(
    ("text", "largest", "expected"),
    [
        ("1:5", 5, None),
        ("1:*", 5, None),
        ("*", 0, None),  # "*" names no explicit number
        ("6", 5, 6),
        ("2:9,7", 5, 9),
        ("9:2", 5, 9),
        ("1", 0, 1),
    ],
)
def test_validate_reports_message_number_beyond_mailbox(
    text: str, largest: int, expected: int | None
) -> None:
    # RFC 9051 §9 seq-number: a sequence number beyond the mailbox is a BAD for non-UID commands.
    assert validate(seqset(text), largest) == expected


def test_validate_ignores_saved_result() -> None:
    assert validate(SequenceSet(saved=True), 0) is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], ""),
        ([5], "5"),
        ([1, 2, 3, 5, 7, 8, 9], "1:3,5,7:9"),
        ([9, 8, 7, 5, 3, 2, 1, 2], "1:3,5,7:9"),
        ([4, 6], "4,6"),
    ],
)
def test_compact_sorts_and_merges_consecutive_values(values: list[int], expected: str) -> None:
    # RFC 4731 §3.1 ALL and RFC 7162 VANISHED use the shortest sequence-set.
    assert compact(values) == expected


def test_compact_ordered_keeps_correspondence_for_copyuid() -> None:
    # RFC 4315 §3: COPYUID source and destination sets list messages in the same order.
    source = [3, 4, 5, 9, 10]
    destination = [107, 108, 101, 102, 103]
    assert compact_ordered(source) == "3:5,9:10"
    assert compact_ordered(destination) == "107:108,101:103"
    assert compact_ordered([5, 4, 3]) == "5,4,3"
    assert compact_ordered([]) == ""
