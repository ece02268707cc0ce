"""Sequence-set semantics (RFC 9051 §9 ``sequence-set``, RFC 5182 ``$``). Pure functions.

A :class:`~imap.model.SequenceSet` is kept as written by the parser; what it names depends on
the mailbox: ``*`` is the largest value in use (the message count for sequence numbers, the
largest UID for UID sets) and ``5:2`` is the same range as ``2:5``. The functions here resolve
sets against the existing values with ``bisect`` so that ``1:*`` over 100,000 messages or
``1:4294967295`` never loops per number.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence

from imap.model import SequenceSet

__all__ = ["compact", "compact_ordered", "contains", "intervals", "select", "validate"]


def intervals(seqset: SequenceSet, largest: int) -> list[tuple[int, int]]:
    """The ranges of ``seqset`` as sorted, merged, inclusive ``(low, high)`` pairs.

    ``largest`` is the value of ``*``; when it is 0 (empty mailbox) a range using ``*`` names
    nothing (RFC 9051 §9: ``*`` is the largest number in use, and there is none). ``$`` is not
    resolved here (see :func:`select`).
    """
    spans: list[tuple[int, int]] = []
    for rng in seqset.ranges:
        if (rng.start is None or rng.end is None) and largest <= 0:
            continue
        start = largest if rng.start is None else rng.start
        end = largest if rng.end is None else rng.end
        # RFC 9051 §9 seq-range: "2:4" and "4:2" are equivalent.
        spans.append((start, end) if start <= end else (end, start))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for low, high in spans:
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged


def select(seqset: SequenceSet, existing: Sequence[int], saved: Sequence[int] = ()) -> list[int]:
    """The members of ``existing`` (ascending, no duplicates) named by ``seqset``, ascending.

    ``*`` is ``existing[-1]``, so ``UID 900:*`` still names the largest UID when every UID is
    below 900 (RFC 9051 §6.4.8: "a UID range of 559:* always includes the UID of the last
    message in the mailbox, even if 559 is higher than any assigned UID value"). ``$`` names
    ``saved`` (RFC 5182 §2.1), restricted to values that still exist: expunged messages drop
    out of the saved result.
    """
    if seqset.saved:
        result: set[int] = set()
        for value in saved:
            i = bisect_left(existing, value)
            if i < len(existing) and existing[i] == value:
                result.add(value)
        return sorted(result)
    if not existing:
        return []
    out: list[int] = []
    for low, high in intervals(seqset, existing[-1]):
        out.extend(existing[bisect_left(existing, low) : bisect_right(existing, high)])
    return out


def contains(seqset: SequenceSet, value: int, largest: int, saved: Sequence[int] = ()) -> bool:
    """Whether ``seqset`` names ``value`` when ``*`` is ``largest`` (0: empty mailbox).

    ``$`` is a membership test on ``saved`` (RFC 5182).
    """
    if seqset.saved:
        return value in saved
    for rng in seqset.ranges:
        if (rng.start is None or rng.end is None) and largest <= 0:
            continue
        start = largest if rng.start is None else rng.start
        end = largest if rng.end is None else rng.end
        if start > end:
            start, end = end, start
        if start <= value <= end:
            return True
    return False


def validate(seqset: SequenceSet, largest: int) -> int | None:
    """For message sequence numbers: the largest number of ``seqset`` beyond ``largest``.

    RFC 9051 §9 (seq-number): a message sequence number greater than the number of messages
    in the mailbox is invalid, and the server answers BAD to non-UID commands naming it.
    Returns None when the set is valid. ``*`` and ``$`` name no explicit number and are never
    reported; whether ``*`` in an empty mailbox is acceptable is the caller's decision. Not for
    UID sets, where non-existent UIDs are simply ignored (RFC 9051 §6.4.9).
    """
    worst: int | None = None
    for rng in seqset.ranges:
        for bound in (rng.start, rng.end):
            if bound is not None and bound > largest and (worst is None or bound > worst):
                worst = bound
    return worst


def _runs(values: Iterable[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs


def _format(runs: list[tuple[int, int]]) -> str:
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in runs)


def compact(values: Iterable[int]) -> str:
    """``1:3,5,7:9``: the values sorted, duplicates removed, consecutive runs as ranges.

    The sequence-set form used by ESEARCH ``ALL`` (RFC 4731 §3.1) and ``VANISHED`` (RFC 7162
    §3.2.10). Empty input gives ``""``; callers omit the item then.
    """
    return _format(_runs(sorted(set(values))))


def compact_ordered(values: Iterable[int]) -> str:
    """Like :func:`compact` but keeping the given order (and any duplicates).

    RFC 4315 §3 (COPYUID): the source and destination UID sets must list corresponding
    messages in the same order, so ranges are only formed where values ascend by one in the
    given order; nothing is sorted or merged across the sequence.
    """
    return _format(_runs(values))
