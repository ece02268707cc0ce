"""SASL PLAIN (RFC 4616) and LOGIN for submission, over a password check.

The mechanisms parse the client's responses and ask ``check(login, password)`` for the BAL
address; the server (:mod:`mta.smtpd`) frames the exchange (334 challenges, base64, ``*``) and
applies the failure delay and limit. XOAUTH2/OAUTHBEARER (Pro Santé Connect tokens) are further
:class:`mta.smtpd.SaslMechanism` implementations that the API LPS provides.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mta.smtpd import Exchange, Session

PasswordCheck = Callable[[str, str], Awaitable[str | None]]
"""(login, password) -> the authenticated BAL address, or None."""

MAX_CREDENTIAL = 1024


def _text(value: bytes) -> str | None:
    if len(value) > MAX_CREDENTIAL:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Plain:
    """``authzid NUL authcid NUL passwd``. An authorisation identity other than the login is
    refused: acting as another BAL is what delegations are for, and they apply at MAIL FROM."""

    name = "PLAIN"

    def __init__(self, check: PasswordCheck) -> None:
        self._check = check

    async def authenticate(
        self, session: Session, initial: bytes | None, exchange: Exchange
    ) -> str | None:
        response = initial if initial is not None else await exchange(b"")
        if response is None:
            return None
        parts = response.split(b"\0")
        if len(parts) != 3:
            return None
        authzid, login, password = (_text(p) for p in parts)
        if login is None or password is None or authzid is None or not login or not password:
            return None
        if authzid and authzid.lower() != login.lower():
            return None
        return await self._check(login, password)


class Login:
    """The LOGIN mechanism (draft-murchison-sasl-login): what Outlook and many practice
    programs still use."""

    name = "LOGIN"

    def __init__(self, check: PasswordCheck) -> None:
        self._check = check

    async def authenticate(
        self, session: Session, initial: bytes | None, exchange: Exchange
    ) -> str | None:
        raw_login = initial if initial is not None else await exchange(b"Username:")
        if raw_login is None:
            return None
        raw_password = await exchange(b"Password:")
        if raw_password is None:
            return None
        login, password = _text(raw_login), _text(raw_password)
        if not login or not password:
            return None
        return await self._check(login, password)
