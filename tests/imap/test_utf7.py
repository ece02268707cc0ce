"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap.utf7 import decode, encode

# (decoded, encoded): RFC 3501 §5.1.3 examples and the usual suspects of French mailboxes.
CASES = [
    ("INBOX", "INBOX"),
    ("", ""),
    ("&", "&-"),
    ("a&b", "a&-b"),
    ("&&", "&-&-"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("Éléments envoyés", "&AMk-l&AOk-ments envoy&AOk-s"),
    ("Brouillons", "Brouillons"),
    ("é", "&AOk-"),
    ("éé", "&AOkA6Q-"),
    ("ééé", "&AOkA6QDp-"),
    ("\U0001f600", "&2D3eAA-"),  # a surrogate pair
    ("a\tb", "a&AAk-b"),  # control characters are encoded too
    ("\x7f", "&AH8-"),
    ("é&", "&AOk-&-"),
]


@pytest.mark.parametrize(("decoded", "encoded"), CASES)
def test_encode(decoded: str, encoded: str) -> None:
    assert encode(decoded) == encoded


@pytest.mark.parametrize(("decoded", "encoded"), CASES)
def test_decode(decoded: str, encoded: str) -> None:
    assert decode(encoded) == decoded


@pytest.mark.parametrize(
    "bad",
    [
        "&",  # unterminated
        "abc&AOk",  # unterminated run
        "&AOk",
        "&A-",  # 6 bits: not even one octet
        "&AO-",  # one octet: odd UTF-16
        "&AOk!-",  # not base64
        "&AO/k-",  # "/" is "," in modified base64
        "&AOk=-",  # no padding in modified base64
        "&AGE-",  # "a" encoded: must be direct
        "&ACY-",  # "&" encoded: must be "&-"
        "&AOk-&AOk-",  # two adjacent runs: must be one
        "&AOl-",  # non-zero padding bits
        "&2D0-",  # lone high surrogate
        "&3gA-",  # lone low surrogate
        "é",  # raw 8-bit character
        "a\tb",  # raw control character
        "a\x00",
    ],
)
def test_decode_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        decode(bad)


def test_encode_rejects_lone_surrogate() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        encode("\ud800")


@given(st.text())
def test_round_trip(name: str) -> None:
    encoded = encode(name)
    assert encoded.isascii()
    assert all(" " <= char <= "~" for char in encoded)
    assert decode(encoded) == name


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_printable_ascii_is_direct_but_ampersand(name: str) -> None:
    assert encode(name) == name.replace("&", "&-")


@given(st.text(alphabet="&-AOkZ,+/abc é"))
def test_decode_is_canonical_or_rejects(text: str) -> None:
    try:
        decoded = decode(text)
    except ValueError:
        return
    assert encode(decoded) == text
