"""Search keys: how directory text is folded so that "Hôpital Édouard-Herriot" is found by typing
"hopital edouard herriot" or "HERRIOT". Shared by the writers (store) and the readers (directory).
"""

from __future__ import annotations

import re
import unicodedata

# Ligatures and letters that NFKD does not decompose into ASCII.
_FOLD = str.maketrans({"œ": "oe", "æ": "ae", "ß": "ss", "ø": "o", "đ": "d", "ł": "l", "ı": "i"})
_NOT_WORD = re.compile(r"[^0-9a-z]+")


def search_key(*parts: str | None) -> str:
    """Lower-case ASCII words separated by single spaces, accents and punctuation removed.

    Several parts are joined with a space; ``None`` and empty parts are skipped.
    """
    text = " ".join(p for p in parts if p)
    decomposed = unicodedata.normalize("NFKD", text.casefold().translate(_FOLD))
    ascii_only = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NOT_WORD.sub(" ", ascii_only).strip()


def search_words(query: str) -> list[str]:
    """The words of a user's query, folded like :func:`search_key`, longest first, unique."""
    words = dict.fromkeys(search_key(query).split())
    return sorted(words, key=len, reverse=True)


def prefix_upper_bound(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix`` (non-empty,
    folded by :func:`search_key`, so its last character is never the largest code point)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def departement_of(postal_code: str | None) -> str | None:
    """The département code of a French postal code: ``69003`` -> ``69``, ``20000`` -> ``2A``,
    ``20200`` -> ``2B``, ``97400`` -> ``974``. None when it is not a 5-digit code."""
    if not postal_code:
        return None
    code = postal_code.strip()
    if len(code) != 5 or not code.isdigit():
        return None
    if code.startswith("97") or code.startswith("98"):
        return code[:3]
    if code.startswith("20"):
        # Corse-du-Sud: 200xx and 201xx; Haute-Corse: 202xx to 206xx.
        return "2A" if code[2] in "01" else "2B"
    return code[:2]
