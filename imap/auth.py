"""Authentication for IMAP: SASL PLAIN (RFC 4616) and the password check behind LOGIN.

XOAUTH2/OAUTHBEARER (Pro Santé Connect tokens) are further :class:`imap.server.SaslMechanism`
implementations, provided by the API LPS.
"""

from __future__ import annotations

from imap.server import Exchange, PasswordCheck
from store import Store
from store.errors import InvalidInput
from store.store import normalise_address

MAX_CREDENTIAL = 1024


def password_check(store: Store) -> PasswordCheck:
    """(login, password) -> the BAL address when the password is right and the BAL active."""

    async def check(login: str, password: str) -> str | None:
        if len(login) > MAX_CREDENTIAL or len(password) > MAX_CREDENTIAL or not password:
            return None
        try:
            address = normalise_address(login)
        except InvalidInput:
            address = ""
        # An unknown or malformed login costs a hash too: timing does not reveal which exist.
        if await store.verify_password(address, password) and address:
            return address
        return None

    return check


def _text(value: bytes) -> str | None:
    if len(value) > MAX_CREDENTIAL:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Plain:
    """``authzid NUL authcid NUL passwd``; an authorisation identity other than the login is
    refused (a delegate opens the delegated BAL under the shared namespace instead)."""

    name = "PLAIN"

    def __init__(self, check: PasswordCheck) -> None:
        self._check = check

    async def authenticate(self, initial: bytes | None, exchange: Exchange) -> str | None:
        response = initial if initial is not None else await exchange(b"")
        if response is None:
            return None
        parts = response.split(b"\0")
        if len(parts) != 3:
            return None
        authzid, login, password = (_text(p) for p in parts)
        if not login or not password or authzid is None:
            return None
        if authzid and authzid.lower() != login.lower():
            return None
        return await self._check(login, password)
