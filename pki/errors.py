"""Exceptions raised by the ``pki`` package.

Every error a caller can reasonably handle derives from :class:`PkiError`; malformed input
(a file, a download, a whitelist string) raises :class:`PkiInputError`, whose message names the
source and what is wrong with it, e.g. ``"resultats.p7b: PKCS#7 bundle holds no certificate"``.
"""

from __future__ import annotations


class PkiError(Exception):
    """Base class of the errors raised by the ``pki`` package."""


class PkiInputError(PkiError):
    """Unreadable input: the message names the file or source and what is wrong with it."""
