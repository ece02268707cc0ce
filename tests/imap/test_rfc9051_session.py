"""RFC 9051 §3, §6.1, §6.2 (greeting, CAPABILITY, NOOP, ID, LOGOUT, STARTTLS, LOGIN,
AUTHENTICATE), the autologout timer (§5.4) and the listener's connection limits."""

from __future__ import annotations

import asyncio
import base64

import pytest

from imap.server import Limits
from tests.imap.conftest import DOCTOR, OTHER, PASSWORD, Client, Imap, make_limits

BASE = b"IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE"
AUTHENTICATED = (
    BASE + b" IDLE NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN LIST-EXTENDED LIST-STATUS SPECIAL-USE "
    b"ESEARCH SEARCHRES CONDSTORE QRESYNC QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE BINARY "
    b"STATUS=SIZE WITHIN APPENDLIMIT=26214400"
)
LOGGED_IN = b"OK [CAPABILITY " + AUTHENTICATED + b"] Logged in\r\n"
FAILED = b"NO [AUTHENTICATIONFAILED] Identifiants invalides\r\n"


async def raw_tls(imap: Imap) -> tuple[Client, bytes]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", imap.tls_port, ssl=imap.client_context()
    )
    client = Client(reader, writer)
    imap.clients.append(client)
    return client, await client.line()


async def raw_plain(imap: Imap) -> tuple[Client, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", imap.port)
    client = Client(reader, writer)
    imap.clients.append(client)
    return client, await client.line()


def plain(user: str = DOCTOR, password: str = PASSWORD, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


async def assert_closed(c: Client) -> None:
    assert await c.line(timeout=5) == b""


# -- greeting, CAPABILITY, NOOP, ID ----------------------------------------------------------------


async def test_greeting_carries_capabilities_for_the_connection(imap: Imap) -> None:
    _, greeting = await raw_tls(imap)
    assert greeting == b"* OK [CAPABILITY " + BASE + b" AUTH=PLAIN] Colombe IMAP ready\r\n"
    _, greeting = await raw_plain(imap)
    assert greeting == (
        b"* OK [CAPABILITY " + BASE + b" STARTTLS LOGINDISABLED] Colombe IMAP ready\r\n"
    )


async def test_capability_per_state(imap: Imap) -> None:
    c = await imap.connect(None)
    assert await c.command("CAPABILITY") == [
        b"* CAPABILITY " + BASE + b" AUTH=PLAIN\r\n",
        b"a1 OK CAPABILITY completed\r\n",
    ]
    assert await c.command(f'LOGIN "{DOCTOR}" "{PASSWORD}"') == [b"a2 " + LOGGED_IN]
    expected = b"* CAPABILITY " + AUTHENTICATED + b"\r\n"
    assert await c.command("CAPABILITY") == [expected, b"a3 OK CAPABILITY completed\r\n"]
    await c.ok("SELECT INBOX")
    assert await c.command("CAPABILITY") == [expected, b"a5 OK CAPABILITY completed\r\n"]


async def test_noop_and_id_in_any_state(imap: Imap) -> None:
    c = await imap.connect(None)
    assert await c.command("NOOP") == [b"a1 OK NOOP completed\r\n"]
    server_id = (
        b'* ID ("name" "Colombe" "vendor" "Colombe" "support-url" "https://colombe.dev")\r\n'
    )
    assert await c.command('ID ("name" "test")') == [server_id, b"a2 OK ID completed\r\n"]
    await c.ok(f'LOGIN "{DOCTOR}" "{PASSWORD}"')
    assert await c.command("NOOP") == [b"a4 OK NOOP completed\r\n"]
    assert await c.command("ID NIL") == [server_id, b"a5 OK ID completed\r\n"]


# -- STARTTLS and LOGINDISABLED --------------------------------------------------------------------


async def test_logindisabled_before_starttls_then_capabilities_change(imap: Imap) -> None:
    c, _ = await raw_plain(imap)
    assert await c.command(f'LOGIN "{DOCTOR}" "{PASSWORD}"') == [
        b"a1 NO [PRIVACYREQUIRED] LOGIN needs TLS (STARTTLS first)\r\n"
    ]
    assert await c.command(f"AUTHENTICATE PLAIN {plain()}") == [
        b"a2 NO [PRIVACYREQUIRED] Authentication needs TLS\r\n"
    ]
    assert await c.command("STARTTLS") == [b"a3 OK Begin TLS negotiation now\r\n"]
    await c.writer.start_tls(imap.client_context())
    # RFC 9051 §6.2.1: the client must ask again; no STARTTLS, no LOGINDISABLED now
    assert await c.command("CAPABILITY") == [
        b"* CAPABILITY " + BASE + b" AUTH=PLAIN\r\n",
        b"a4 OK CAPABILITY completed\r\n",
    ]
    assert await c.command("STARTTLS") == [b"a5 BAD STARTTLS not available\r\n"]
    assert await c.command(f'LOGIN "{DOCTOR}" "{PASSWORD}"') == [b"a6 " + LOGGED_IN]
    assert await c.command("STARTTLS") == [b"a7 BAD Already authenticated\r\n"]


async def test_starttls_pipelined_command_injection_refused(imap: Imap) -> None:
    # RFC 9051 §6.2.1 / CVE-2011-0411: what followed STARTTLS in clear must never run over TLS.
    for injected in ("a2 CAPABILITY", f'a2 LOGIN "{DOCTOR}" "{PASSWORD}"', "a2 NOOP"):
        c, _ = await raw_plain(imap)
        c.send(f"a1 STARTTLS\r\n{injected}\r\n")
        assert await c.line() == b"a1 OK Begin TLS negotiation now\r\n"
        assert await c.line() == b"* BYE Commands pipelined after STARTTLS\r\n"
        await assert_closed(c)
    # also when the injected command arrives in the same segment but unfinished
    c, _ = await raw_plain(imap)
    c.send(b"a1 STARTTLS\r\na2 CAPA")
    assert await c.line() == b"a1 OK Begin TLS negotiation now\r\n"
    assert await c.line() == b"* BYE Commands pipelined after STARTTLS\r\n"
    await assert_closed(c)


# -- LOGIN -----------------------------------------------------------------------------------------


async def test_login_with_literals_and_any_case_address(imap: Imap) -> None:
    c = await imap.connect(None)
    c.send(f"{c.next_tag()} LOGIN {{{len(DOCTOR)}}}\r\n")
    assert await c.line() == b"+ Ready for literal data\r\n"
    c.send(f"{DOCTOR.upper()} {{{len(PASSWORD)}+}}\r\n{PASSWORD}\r\n")
    assert await c.until("a1") == [b"a1 " + LOGGED_IN]


async def test_login_failures_authenticationfailed_then_bye_after_three(imap: Imap) -> None:
    c = await imap.connect(None)
    assert await c.command(f'LOGIN "{DOCTOR}" "wrong"') == [b"a1 " + FAILED]
    # an unknown login gets the very same answer
    assert await c.command('LOGIN "nobody@hopital-test.mssante.fr" "x"') == [b"a2 " + FAILED]
    assert await c.command(f'LOGIN "{DOCTOR}" ""') == [b"a3 " + FAILED]
    assert await c.line() == b"* BYE Too many authentication failures\r\n"
    await assert_closed(c)


# -- AUTHENTICATE PLAIN (RFC 4616, SASL-IR RFC 4959) -----------------------------------------------


async def test_authenticate_plain_initial_response_and_continuation(imap: Imap) -> None:
    c = await imap.connect(None)
    assert await c.command(f"AUTHENTICATE PLAIN {plain()}") == [b"a1 " + LOGGED_IN]
    await c.ok("SELECT INBOX")
    d = await imap.connect(None)
    d.send(f"{d.next_tag()} AUTHENTICATE plain\r\n")
    assert await d.line() == b"+ \r\n"
    d.send(plain(authzid=DOCTOR) + "\r\n")
    assert await d.until("a1") == [b"a1 " + LOGGED_IN]


async def test_authenticate_cancel_and_invalid_base64_are_bad(imap: Imap) -> None:
    c = await imap.connect(None)
    c.send(f"{c.next_tag()} AUTHENTICATE PLAIN\r\n")
    assert await c.line() == b"+ \r\n"
    c.send(b"*\r\n")
    assert await c.until("a1") == [b"a1 BAD Authentication cancelled\r\n"]
    c.send(f"{c.next_tag()} AUTHENTICATE PLAIN\r\n")
    assert await c.line() == b"+ \r\n"
    c.send(b"%%%not-base64\r\n")
    assert await c.until("a2") == [b"a2 BAD Authentication cancelled\r\n"]
    assert await c.command("AUTHENTICATE PLAIN !!!") == [b"a3 BAD invalid initial response\r\n"]
    # not authenticated, not counted as failures, still usable
    assert await c.command("SELECT INBOX") == [b"a4 BAD Not authenticated\r\n"]
    assert await c.command(f"AUTHENTICATE PLAIN {plain()}") == [b"a5 " + LOGGED_IN]


async def test_authenticate_refusals(imap: Imap) -> None:
    c = await imap.connect(None)
    assert await c.command("AUTHENTICATE CRAM-MD5") == [b"a1 NO [CANNOT] Unsupported mechanism\r\n"]
    assert await c.command(f"AUTHENTICATE PLAIN {plain(password='nope')}") == [b"a2 " + FAILED]
    # an authorisation identity other than the login is refused
    assert await c.command(f"AUTHENTICATE PLAIN {plain(authzid=OTHER)}") == [b"a3 " + FAILED]


# -- state machine ---------------------------------------------------------------------------------


async def test_commands_in_the_wrong_state_are_bad(imap: Imap) -> None:
    c = await imap.connect(None)
    for command in (
        "SELECT INBOX",
        'LIST "" *',
        "STATUS INBOX (MESSAGES)",
        "IDLE",
        "FETCH 1 FLAGS",
    ):
        assert await c.command(command) == [b"a%d BAD Not authenticated\r\n" % c.counter]
    for command in ("UID FETCH 1 FLAGS", "EXPUNGE", "CLOSE", "APPEND INBOX {1+}\r\nx"):
        assert await c.command(command) == [b"a%d BAD Not authenticated\r\n" % c.counter]
    c = await imap.connect()
    for command in ("FETCH 1 FLAGS", "STORE 1 +FLAGS (\\Seen)", "SEARCH ALL", "UNSELECT", "CHECK"):
        assert await c.command(command) == [b"a%d BAD No mailbox selected\r\n" % c.counter]
    for command in ("EXPUNGE", "UID SEARCH ALL", "MOVE 1 Trash", "CLOSE"):
        assert await c.command(command) == [b"a%d BAD No mailbox selected\r\n" % c.counter]
    for command in (f'LOGIN "{DOCTOR}" "{PASSWORD}"', f"AUTHENTICATE PLAIN {plain()}"):
        assert await c.command(command) == [b"a%d BAD Already authenticated\r\n" % c.counter]
    # UNSELECT and CLOSE go back to the authenticated state
    await c.ok("SELECT INBOX")
    assert await c.command("UNSELECT") == [b"a14 OK UNSELECT completed\r\n"]
    assert await c.command("CHECK") == [b"a15 BAD No mailbox selected\r\n"]
    await c.ok("SELECT INBOX")
    assert await c.command("CLOSE") == [b"a17 OK CLOSE completed\r\n"]
    assert await c.command("CHECK") == [b"a18 BAD No mailbox selected\r\n"]


async def test_logout_and_shutdown_say_bye_then_close(imap: Imap) -> None:
    c = await imap.connect(select="INBOX")
    assert await c.command("LOGOUT") == [
        b"* BYE Colombe IMAP logging out\r\n",
        b"a3 OK LOGOUT completed\r\n",
    ]
    await assert_closed(c)
    # before login too; commands pipelined after LOGOUT are not run
    c = await imap.connect(None)
    c.send(b"a1 LOGOUT\r\na2 NOOP\r\n")
    assert await c.until("a1") == [
        b"* BYE Colombe IMAP logging out\r\n",
        b"a1 OK LOGOUT completed\r\n",
    ]
    await assert_closed(c)
    # the server shutting down tells every session (RFC 9051 §7.1.5)
    c = await imap.connect(select="INBOX")
    idle = await imap.connect()
    idle.send(b"a2 IDLE\r\n")
    assert await idle.line() == b"+ idling\r\n"
    await imap.server_tls.stop()
    for client in (c, idle):
        assert await client.line() == b"* BYE [UNAVAILABLE] Server shutting down\r\n"
        await assert_closed(client)


# -- autologout timer (RFC 9051 §5.4) --------------------------------------------------------------


class TestAutologout:
    @pytest.fixture
    def imap_limits(self) -> Limits:
        return make_limits(login_timeout=0.2, timeout=0.4)

    async def test_autologout_before_login(self, imap: Imap) -> None:
        c = await imap.connect(None)
        assert await c.line(timeout=3) == b"* BYE Autologout; idle for too long\r\n"
        await assert_closed(c)

    async def test_autologout_when_authenticated_and_during_idle(self, imap: Imap) -> None:
        c = await imap.connect(select="INBOX")
        await asyncio.sleep(0.25)  # longer than login_timeout: the authenticated timer applies
        assert await c.command("NOOP") == [b"a3 OK NOOP completed\r\n"]
        assert await c.line(timeout=3) == b"* BYE Autologout; idle for too long\r\n"
        await assert_closed(c)
        c = await imap.connect(select="INBOX")
        c.send(f"{c.next_tag()} IDLE\r\n")
        assert await c.line() == b"+ idling\r\n"
        assert await c.line(timeout=3) == b"* BYE Autologout; idle for too long\r\n"
        await assert_closed(c)


# -- connection limits -----------------------------------------------------------------------------


class TestConnectionLimits:
    @pytest.fixture
    def imap_limits(self) -> Limits:
        return make_limits(max_connections_per_user=2, max_connections_per_ip=4)

    async def test_login_past_per_user_limit_is_no_limit(self, imap: Imap) -> None:
        first = await imap.connect()
        await imap.connect()
        c = await imap.connect(None)
        assert await c.command(f'LOGIN "{DOCTOR}" "{PASSWORD}"') == [
            b"a1 NO [LIMIT] Trop de connexions pour ce compte\r\n"
        ]
        # another user is not affected
        await c.ok(f'LOGIN "{OTHER}" "{PASSWORD}"')
        # a logout frees a slot
        await first.ok("LOGOUT")
        await assert_closed(first)
        again = await imap.connect(None)
        for _ in range(50):
            lines = await again.command(f'LOGIN "{DOCTOR}" "{PASSWORD}"')
            if b" OK " in lines[-1]:
                break
            await asyncio.sleep(0.02)
        assert b" OK " in lines[-1]

    async def test_connection_past_per_ip_limit_gets_bye(self, imap: Imap) -> None:
        for _ in range(4):
            await imap.connect(None)
        c, greeting = await raw_plain(imap)
        assert greeting == b"* BYE [UNAVAILABLE] Too many connections, try later\r\n"
        await assert_closed(c)
        # on the implicit TLS port too, once the handshake is done
        c, greeting = await raw_tls(imap)
        assert greeting == b"* BYE [UNAVAILABLE] Too many connections, try later\r\n"
        await assert_closed(c)
