"""One IMAP connection: the RFC 9051 §3 state machine over asyncio streams.

The pure parser (:mod:`imap.parser`) turns octets into commands; this module checks each against
the session state, runs it on the store and writes the responses formatted by
:mod:`imap.response`. Commands run one at a time, in order. Untagged updates about the selected
mailbox (:mod:`imap.selected`) go out at the end of each command and during IDLE, as soon as
the store's change feed reports a change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import enum
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from imap import response, search, sections, sequence, utf7
from imap.mailboxes import (
    DELIMITER,
    MAX_PATTERN,
    SHARED_PREFIX,
    Namespace,
    NoPermission,
    NoSuchMailbox,
    Target,
    has_children,
    matches,
)
from imap.model import (
    Append,
    Authenticate,
    Command,
    ContinuationNeeded,
    Copy,
    Create,
    Enable,
    Event,
    Expunge,
    Fetch,
    FetchAttr,
    GetQuota,
    Id,
    IdleDone,
    ListCommand,
    Login,
    MailboxCommand,
    ParseError,
    QResyncParams,
    Rename,
    Search,
    Section,
    Select,
    SequenceSet,
    Simple,
    Status,
    Store,
    Unknown,
)
from imap.parser import CommandParser
from imap.selected import Modes, SelectedMailbox
from imap.server import AuthUnavailable
from store.errors import BalNotFound, FolderExists, FolderNotFound, InvalidInput, StoreError
from store.index import INDEXED_FIELDS
from store.model import Flag, MessageInfo
from store.store import HEADER_ROW_LIMIT

if TYPE_CHECKING:
    from imap.server import ImapServer

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 256 * 1024
SERVER_ID = (("name", "Colombe"), ("vendor", "Colombe"), ("support-url", "https://colombe.dev"))


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class Closed(Exception):
    """The client went away, or we said BYE."""


_ANY = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
_NOT_AUTHENTICATED = frozenset({"STARTTLS", "AUTHENTICATE", "LOGIN"})
_AUTHENTICATED = frozenset(
    {"ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE"}
    | {"LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE", "GETQUOTA", "GETQUOTAROOT"}
)
_SELECTED = frozenset(
    {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE"}
)
# RFC 9051 §7.5.1: no EXPUNGE response while these run by sequence number.
_NO_EXPUNGE_DURING = frozenset({"FETCH", "STORE", "SEARCH"})

_BASE_CAPABILITIES = "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE"
_AUTHENTICATED_CAPABILITIES = (
    "IDLE NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN LIST-EXTENDED LIST-STATUS SPECIAL-USE "
    "ESEARCH SEARCHRES CONDSTORE QRESYNC QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE BINARY "
    "STATUS=SIZE WITHIN"
)
_STATUS_ITEMS = frozenset(
    {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "HIGHESTMODSEQ"}
    | {"APPENDLIMIT"}
)
_ENABLEABLE = {"CONDSTORE", "QRESYNC", "IMAP4REV2"}
_LIST_SELECTION = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "STATUS", "SPECIAL-USE"})
_FLAGS_RESPONSE = b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
_PERMANENT = (
    b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n"
)


class Session:
    def __init__(
        self,
        server: ImapServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ip: str,
    ) -> None:
        self.server = server
        self.store = server.store
        self.limits = server.limits
        self.reader = reader
        self.writer = writer
        self.ip = ip
        self.id = secrets.token_hex(6)
        self.task: asyncio.Task[None] | None = None
        self.state = State.NOT_AUTHENTICATED
        self.tls = False
        self.user: str | None = None
        self.namespace: Namespace | None = None
        self.selected: SelectedMailbox | None = None
        self._watch_cm: contextlib.AbstractAsyncContextManager[object] | None = None
        self.modes = Modes()
        self.parser = CommandParser(
            max_line_length=self.limits.max_line_length,
            max_literal_size=self.limits.max_login_literal,
            max_command_size=self.limits.max_login_literal * 2 + self.limits.max_line_length,
        )
        self.out = bytearray()
        self.errors = 0
        self.auth_failures = 0
        self.login_deadline = time.monotonic() + self.limits.login_timeout
        self._queued = False

    # -- output --------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.out += data

    async def flush(self) -> None:
        if self.out:
            self.writer.write(bytes(self.out))
            self.out.clear()
        await self.writer.drain()

    async def maybe_flush(self) -> None:
        if len(self.out) >= WRITE_HIGH_WATER:
            await self.flush()

    def tagged(self, tag: str, status: str, text: str, code: str | None = None) -> None:
        code_part = f"[{code}] " if code else ""
        self.send(f"{tag} {status} {code_part}{text}\r\n".encode())

    def bad(self, tag: str | None, text: str, code: str | None = None) -> None:
        self.errors += 1
        self.tagged(tag or "*", "BAD", text, code)

    # -- lifecycle -----------------------------------------------------------------------------

    def capabilities(self) -> str:
        caps = [_BASE_CAPABILITIES]
        if self.state is State.NOT_AUTHENTICATED:
            if not self.tls:
                caps.append("STARTTLS LOGINDISABLED")
            else:
                caps.extend(f"AUTH={name}" for name in self.server.mechanisms)
        else:
            caps.append(_AUTHENTICATED_CAPABILITIES)
            caps.append(f"APPENDLIMIT={self.limits.max_message_size}")
        return " ".join(caps)

    async def run(self) -> None:
        try:
            if self.server.implicit_tls:
                assert self.server.tls_context is not None
                await self._start_tls(self.server.tls_context)
            self.send(f"* OK [CAPABILITY {self.capabilities()}] Colombe IMAP ready\r\n".encode())
            await self.flush()
            while self.state is not State.LOGOUT:
                data = await self._read()
                await self._handle(self.parser.feed(data))
                await self.flush()
        except Closed:
            pass
        except asyncio.CancelledError:
            if self.server.stopping:
                self.send(b"* BYE [UNAVAILABLE] Server shutting down\r\n")
            raise
        except StoreError:
            log.exception("IMAP session %s: store failure", self.id)
            self.send(b"* BYE [UNAVAILABLE] Internal error, try again later\r\n")

    async def close(self) -> None:
        await self._unselect()
        if self.user is not None:
            self.server.budget.release_user(self.user)
            self.user = None
        with contextlib.suppress(Exception):
            if self.out:
                self.writer.write(bytes(self.out))
                self.out.clear()
                await asyncio.wait_for(self.writer.drain(), 2)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1)

    def _timeout(self) -> float:
        if self.state is State.NOT_AUTHENTICATED:
            # A whole deadline, not one per read: a stranger sending NOOP every minute must
            # not hold a connection slot for ever.
            return max(0.0, self.login_deadline - time.monotonic())
        return self.limits.timeout

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout()):
                data = await self.reader.read(65536)
        except TimeoutError:
            self.send(b"* BYE Autologout; idle for too long\r\n")
            raise Closed from None
        if not data:
            raise Closed
        return data

    async def _handle(self, events: list[Event]) -> None:
        queue = deque(events)
        while queue and self.state is not State.LOGOUT:
            event = queue.popleft()
            if isinstance(event, ContinuationNeeded):
                refusal = self._literal_refusal(event)
                if refusal is None:
                    self.send(b"+ Ready for literal data\r\n")
                    await self.flush()
                else:
                    self.bad(event.tag, refusal[1], refusal[0])
                    self.parser.reject_literal()
                queue.extend(self.parser.feed(b""))
            elif isinstance(event, ParseError):
                self.bad(event.tag, event.text, event.code)
            elif isinstance(event, IdleDone):
                self.bad(None, "DONE without IDLE")
            else:
                # Commands already framed behind this one (STARTTLS must refuse them).
                self._queued = bool(queue)
                leftover = await self._run_command(event)
                if leftover:
                    queue.extendleft(reversed(leftover))
            if self.errors >= self.limits.max_errors:
                self.send(b"* BYE Too many errors\r\n")
                raise Closed
            await self.maybe_flush()

    def _literal_refusal(self, event: ContinuationNeeded) -> tuple[str, str] | None:
        if event.command == "APPEND" and self.state is State.NOT_AUTHENTICATED:
            return ("CLIENTBUG", "APPEND needs authentication")
        if event.command == "APPEND" and event.size > self.limits.max_message_size:
            return ("TOOBIG", f"Message too large (limit {self.limits.max_message_size} octets)")
        return None

    # -- dispatch ------------------------------------------------------------------------------

    def _allowed(self, name: str) -> str | None:
        """Why ``name`` may not run now, or None."""
        base = name[4:] if name.startswith("UID ") else name
        if base in _ANY:
            return None
        if base in _NOT_AUTHENTICATED:
            return None if self.state is State.NOT_AUTHENTICATED else "Already authenticated"
        if self.state is State.NOT_AUTHENTICATED:
            return "Not authenticated" if base in _AUTHENTICATED | _SELECTED else None
        if base in _SELECTED and self.state is not State.SELECTED:
            return "No mailbox selected"
        return None

    async def _run_command(self, cmd: Command) -> list[Event] | None:
        if isinstance(cmd, Unknown):
            self.bad(cmd.tag, f"Unknown command {cmd.name[:40]}")
            return None
        refusal = self._allowed(cmd.name)
        if refusal is not None:
            self.bad(cmd.tag, refusal)
            if cmd.name == "IDLE" and self.parser.idling:
                # The parser waits for DONE after IDLE: not after a refused one.
                self.parser.end_idle()
                return self.parser.feed(b"")
            return None
        leftover: list[Event] | None = None
        errors_before = self.errors
        try:
            leftover = await self._dispatch(cmd)
        except NoSuchMailbox:
            self.tagged(cmd.tag, "NO", "Mailbox does not exist", "NONEXISTENT")
        except NoPermission as exc:
            self.tagged(cmd.tag, "NO", str(exc) or "Permission denied", "NOPERM")
        except InvalidInput as exc:
            self.tagged(cmd.tag, "NO", str(exc)[:200].replace("\r", " ").replace("\n", " "))
        except (FolderNotFound, BalNotFound):
            # Deleted or renamed by someone else while this command ran.
            self.tagged(cmd.tag, "NO", "Mailbox does not exist", "NONEXISTENT")
        if self.errors == errors_before:
            # Only consecutive errors count (as Dovecot): a long-lived client's occasional
            # BAD must not add up to a disconnection.
            self.errors = 0
        return leftover

    async def _dispatch(self, cmd: Command) -> list[Event] | None:
        match cmd:
            case Simple(name="IDLE"):
                return await self._idle(cmd.tag)
            case Simple():
                await self._simple(cmd)
            case Login():
                await self._login(cmd)
            case Authenticate():
                await self._authenticate(cmd)
            case Enable():
                self._enable(cmd)
            case Id():
                params = " ".join(f'"{k}" "{v}"' for k, v in SERVER_ID)
                self.send(f"* ID ({params})\r\n".encode())
                self.tagged(cmd.tag, "OK", "ID completed")
            case Select():
                await self._select(cmd)
            case Create():
                await self._create(cmd)
            case MailboxCommand():
                await self._mailbox_command(cmd)
            case Rename():
                await self._rename(cmd)
            case ListCommand():
                await self._list(cmd)
            case Status():
                await self._status(cmd)
            case Append():
                await self._append(cmd)
            case Expunge():
                await self._expunge(cmd.tag, cmd.uids)
            case Search():
                await self._search(cmd)
            case Fetch():
                await self._fetch(cmd)
            case Store():
                await self._store(cmd)
            case Copy():
                await self._copy(cmd)
            case GetQuota():
                await self._getquota(cmd)
        return None

    async def _updates(self, command: str, *, woken: bool = False) -> None:
        """Untagged updates owed before the tagged completion of ``command``."""
        if self.selected is not None:
            allowed = command not in _NO_EXPUNGE_DURING
            self.send(await self.selected.poll(self.modes, expunges_allowed=allowed, woken=woken))

    # -- any state -----------------------------------------------------------------------------

    async def _simple(self, cmd: Simple) -> None:
        name, tag = cmd.name, cmd.tag
        if name == "CAPABILITY":
            self.send(f"* CAPABILITY {self.capabilities()}\r\n".encode())
            self.tagged(tag, "OK", "CAPABILITY completed")
        elif name == "NOOP" or name == "CHECK":
            await self._updates(name)
            self.tagged(tag, "OK", f"{name} completed")
        elif name == "LOGOUT":
            self.send(b"* BYE Colombe IMAP logging out\r\n")
            self.tagged(tag, "OK", "LOGOUT completed")
            self.state = State.LOGOUT
        elif name == "STARTTLS":
            await self._starttls(tag)
        elif name == "NAMESPACE":
            shared = response.string(
                self._wire_name(SHARED_PREFIX + DELIMITER), utf8=self.modes.rev2
            )
            self.send(b'* NAMESPACE (("" "/")) NIL ((%s "/"))\r\n' % shared)
            self.tagged(tag, "OK", "NAMESPACE completed")
        elif name == "CLOSE":
            selected = self.selected
            assert selected is not None
            if await self._still_writable():
                await self.store.expunge(selected.id)
            await self._unselect()
            self.tagged(tag, "OK", "CLOSE completed")
        elif name == "UNSELECT":
            await self._unselect()
            self.tagged(tag, "OK", "UNSELECT completed")
        elif name == "EXPUNGE":
            await self._expunge(tag, None)

    # -- not authenticated ---------------------------------------------------------------------

    async def _starttls(self, tag: str) -> None:
        context = self.server.tls_context
        if context is None or self.tls:
            self.bad(tag, "STARTTLS not available")
            return
        self.tagged(tag, "OK", "Begin TLS negotiation now")
        await self.flush()
        if self._queued or self.parser.pending or self.reader._buffer:  # type: ignore[attr-defined]
            # Commands sent in clear after STARTTLS would run as if sent over TLS
            # (CVE-2011-0411 for IMAP: RFC 9051 §6.2.1 forbids pipelining past STARTTLS).
            self.send(b"* BYE Commands pipelined after STARTTLS\r\n")
            raise Closed
        await self._start_tls(context)

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        try:
            async with asyncio.timeout(self.limits.login_timeout):
                await self.writer.start_tls(context)
        except (ssl.SSLError, TimeoutError, OSError):
            raise Closed from None
        self.tls = True

    async def _login(self, cmd: Login) -> None:
        if not self.tls:
            self.tagged(cmd.tag, "NO", "LOGIN needs TLS (STARTTLS first)", "PRIVACYREQUIRED")
            return
        await self._authenticated_as(cmd.tag, lambda: self._check(cmd.username, cmd.password))

    async def _check(self, login: str, password: str) -> str | None:
        try:
            return await self.server.password_check(login, password)
        except AuthUnavailable:
            raise
        except Exception as exc:
            raise AuthUnavailable(type(exc).__name__) from exc

    async def _authenticate(self, cmd: Authenticate) -> None:
        if not self.tls:
            self.tagged(cmd.tag, "NO", "Authentication needs TLS", "PRIVACYREQUIRED")
            return
        mechanism = self.server.mechanisms.get(cmd.mechanism)
        if mechanism is None:
            self.tagged(cmd.tag, "NO", "Unsupported mechanism", "CANNOT")
            return
        initial: bytes | None = None
        if cmd.initial_response is not None:
            decoded = _b64(cmd.initial_response)
            if decoded is None:
                self.bad(cmd.tag, "Invalid base64 in initial response")
                return
            initial = decoded
        cancelled = False

        async def exchange(challenge: bytes) -> bytes | None:
            nonlocal cancelled
            self.send(b"+ " + base64.b64encode(challenge) + b"\r\n")
            await self.flush()
            line = await self._read_sasl_line()
            if line == b"*":
                cancelled = True
                return None
            decoded = _b64(line.decode("ascii", "replace"))
            if decoded is None:
                cancelled = True
            return decoded

        async def attempt() -> str | None:
            return await mechanism.authenticate(initial, exchange)

        await self._authenticated_as(cmd.tag, attempt, cancelled_flag=lambda: cancelled)

    async def _read_sasl_line(self) -> bytes:
        # A SASL response is a line outside the command grammar: read it from the parser's
        # buffer first (pipelined), then the socket.
        buffered = self.parser._buf
        while True:
            nl = buffered.find(b"\n")
            if nl >= 0:
                line = bytes(buffered[:nl]).rstrip(b"\r")
                del buffered[: nl + 1]
                return line
            if len(buffered) > 16 * 1024:
                self.send(b"* BYE SASL response too long\r\n")
                raise Closed
            buffered += await self._read()

    async def _authenticated_as(
        self,
        tag: str,
        attempt: Callable[[], Awaitable[str | None]],
        cancelled_flag: Callable[[], bool] | None = None,
    ) -> None:
        throttle = self.server.throttle
        if throttle.blocked(self.ip):
            self.tagged(
                tag, "NO", "Trop d'echecs d'authentification, reessayez plus tard", "UNAVAILABLE"
            )
            return
        try:
            user = await attempt()
        except AuthUnavailable:
            self.tagged(tag, "NO", "Authentication temporarily unavailable", "UNAVAILABLE")
            return
        if cancelled_flag is not None and cancelled_flag():
            self.bad(tag, "Authentication cancelled")
            return
        if user is None:
            self.auth_failures += 1
            throttle.failed(self.ip)
            await self.store.audit(
                actor="imap", action="login", bal=None, source=self.ip, result="refused"
            )
            await self.flush()
            # A delay after each failure slows password guessing.
            await asyncio.sleep(self.limits.auth_failure_delay)
            self.tagged(tag, "NO", "Identifiants invalides", "AUTHENTICATIONFAILED")
            if self.auth_failures >= self.limits.max_auth_failures:
                self.send(b"* BYE Too many authentication failures\r\n")
                raise Closed
            return
        if not self.server.budget.acquire_user(user):
            self.tagged(tag, "NO", "Trop de connexions pour ce compte", "LIMIT")
            return
        self.user = user
        self.namespace = Namespace(self.store, user)
        self.state = State.AUTHENTICATED
        self.parser.max_literal_size = self.limits.max_message_size
        self.parser.max_command_size = self.limits.max_message_size + 64 * 1024
        await self.store.audit(actor="imap", action="login", bal=user, source=self.ip, result="ok")
        self.tagged(tag, "OK", f"[CAPABILITY {self.capabilities()}] Logged in")

    # -- authenticated -------------------------------------------------------------------------

    def _enable(self, cmd: Enable) -> None:
        enabled = []
        for cap in cmd.capabilities:
            if cap not in _ENABLEABLE:
                continue
            enabled.append(cap if cap != "IMAP4REV2" else "IMAP4rev2")
            if cap == "CONDSTORE":
                self.modes.condstore = True
            elif cap == "QRESYNC":
                self.modes.qresync = self.modes.condstore = True
            elif cap == "IMAP4REV2":
                self.modes.rev2 = True
        if enabled:
            self.send(f"* ENABLED {' '.join(enabled)}\r\n".encode())
        else:
            self.send(b"* ENABLED\r\n")
        self.tagged(cmd.tag, "OK", "ENABLE completed")

    def _name(self, wire: str) -> str:
        """A mailbox name as the client sent it -> Unicode (RFC 3501 §5.1.3)."""
        if self.modes.rev2:
            return wire
        try:
            return utf7.decode(wire)
        except ValueError:
            raise InvalidInput("mailbox name is not valid modified UTF-7") from None

    def _wire_name(self, name: str) -> str:
        return name if self.modes.rev2 else utf7.encode(name)

    def _mailbox(self, name: str) -> bytes:
        return response.astring(self._wire_name(name), utf8=self.modes.rev2)

    async def _unselect(self) -> None:
        if self._watch_cm is not None:
            cm, self._watch_cm = self._watch_cm, None
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)
        self.selected = None
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    async def _select(self, cmd: Select) -> None:
        assert self.namespace is not None
        if self.selected is not None:
            await self._unselect()
            self.send(b"* OK [CLOSED] Previous mailbox closed\r\n")
        if cmd.qresync is not None and not self.modes.qresync:
            self.bad(cmd.tag, "QRESYNC must be enabled first")
            return
        if cmd.condstore:
            self.modes.condstore = True
        target, folder = await self.namespace.folder(self._name(cmd.mailbox))
        read_only = cmd.name == "EXAMINE" or not target.writable
        cm = self.store.changes.watch(folder.id)
        watch = await cm.__aenter__()
        self._watch_cm = cm
        # The watch is in place before the mailbox is read, and the folder's HIGHESTMODSEQ is
        # read before its UIDs: a change committed in between is both in the UID list and
        # after the known MODSEQ, so the next poll reports it (at worst twice), never loses it.
        first: int | None = None
        folder = await self.store.folder(folder.id)
        indexed = await self.store.indexed_messages(folder.id, folder.highest_modseq)
        if indexed is not None:
            uids = list(indexed)
            first = next((u for u, i in indexed.items() if Flag.SEEN not in i.flags), None)
        else:
            totals = await self.store.folder_totals(folder.id)
            folder = totals.folder
            uids = await self.store.uids(folder.id)
            if totals.unseen:
                first = await self.store.first_unseen_uid(folder.id)
        uid_next = max(folder.uid_next, uids[-1] + 1 if uids else 1)
        self.selected = SelectedMailbox(
            self.store, target, folder, read_only, watch, uids, folder.highest_modseq
        )
        self.state = State.SELECTED
        out = bytearray(_FLAGS_RESPONSE)
        out += _PERMANENT if not read_only else b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n"
        out += b"* %d EXISTS\r\n" % len(uids)
        if not self.modes.rev2:
            out += b"* 0 RECENT\r\n"
            # RFC 3501 §6.3.1 (gone from IMAP4rev2): the first unseen message, as Dovecot does.
            seq = self.selected.seq_of(first) if first is not None else None
            if seq is not None:
                out += b"* OK [UNSEEN %d] First unseen\r\n" % seq
        out += b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % folder.uidvalidity
        out += b"* OK [UIDNEXT %d] Predicted next UID\r\n" % uid_next
        out += b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % folder.highest_modseq
        if cmd.qresync is not None and cmd.qresync.uidvalidity == folder.uidvalidity:
            out += await self._qresync(cmd.qresync)
        self.send(bytes(out))
        code = "READ-ONLY" if read_only else "READ-WRITE"
        self.tagged(cmd.tag, "OK", f"{cmd.name} completed", code)

    async def _still_writable(self) -> bool:
        """Whether the selected mailbox may be changed now. A delegation is looked up again at
        each change: rights the owner withdrew do not survive in an open session."""
        selected = self.selected
        assert selected is not None
        assert self.namespace is not None
        if selected.read_only:
            return False
        if not selected.target.shared:
            return True
        rights = {d.bal: d for d in await self.namespace.delegations()}
        delegation = rights.get(selected.target.bal)
        if delegation is None or not delegation.can_write:
            selected.read_only = True
            return False
        return True

    async def _qresync(self, params: QResyncParams) -> bytes:
        """RFC 7162 §3.2.5.1: what changed since the client's MODSEQ: VANISHED (EARLIER) and
        FETCH for changed messages."""
        selected = self.selected
        assert selected is not None
        changes = await self.store.changes_since(selected.id, params.modseq)
        out = bytearray()
        vanished = list(changes.vanished)
        if params.known_uids is not None:
            vanished = sequence.select(params.known_uids, sorted(vanished))
        if vanished:
            out += b"* VANISHED (EARLIER) %s\r\n" % sequence.compact(vanished).encode()
        for change in changes.changed:
            seq = selected.seq_of(change.uid)
            if seq is not None:
                out += selected.flags_response(
                    seq, change.uid, change.flags, change.keywords, change.modseq, self.modes
                )
        return bytes(out)

    async def _create(self, cmd: Create) -> None:
        assert self.namespace is not None
        name = self._name(cmd.mailbox).rstrip(DELIMITER)
        try:
            target = await self.namespace.resolve(name)
        except NoSuchMailbox:
            if name.split(DELIMITER)[0] == SHARED_PREFIX:
                raise  # no such delegated BAL
            # Too long, an empty level, control characters: Dovecot says CANNOT.
            self.tagged(cmd.tag, "NO", "Invalid mailbox name", "CANNOT")
            return
        if target.shared and not target.writable:
            raise NoPermission("Read-only delegation")
        special = cmd.special_use[0] if cmd.special_use else None
        if special is not None and special not in (
            "\\Sent",
            "\\Drafts",
            "\\Trash",
            "\\Archive",
            "\\Junk",
            "\\All",
            "\\Flagged",
        ):
            self.tagged(cmd.tag, "NO", "Unsupported special-use attribute", "USEATTR")
            return
        # RFC 9051 §6.3.4: the missing superior levels are created too.
        parts = target.folder.split(DELIMITER)
        try:
            for depth in range(1, len(parts)):
                with contextlib.suppress(FolderExists):
                    await self.store.create_folder(target.bal, DELIMITER.join(parts[:depth]))
            await self.store.create_folder(target.bal, target.folder, special)
        except FolderExists:
            self.tagged(cmd.tag, "NO", "Mailbox already exists", "ALREADYEXISTS")
            return
        self.tagged(cmd.tag, "OK", "CREATE completed")

    async def _mailbox_command(self, cmd: MailboxCommand) -> None:
        assert self.namespace is not None
        if cmd.name == "GETQUOTAROOT":
            await self._getquotaroot(cmd)
            return
        target, folder = await self.namespace.folder(self._name(cmd.mailbox))
        if cmd.name == "DELETE":
            if target.shared and not target.writable:
                raise NoPermission("Read-only delegation")
            if folder.name == "INBOX":
                self.tagged(cmd.tag, "NO", "INBOX cannot be deleted", "CANNOT")
                return
            names = {f.name for f in await self.store.list_folders(target.bal)}
            if has_children(folder.name, names):
                # RFC 9051 §6.3.5: a folder with inferiors keeps its place; Dovecot refuses.
                self.tagged(cmd.tag, "NO", "Mailbox has children, delete them first", "HASCHILDREN")
                return
            if self.selected is not None and self.selected.id == folder.id:
                await self._unselect()
            await self.store.delete_folder(target.bal, folder.name)
            self.tagged(cmd.tag, "OK", "DELETE completed")
        elif target.shared:
            # Subscriptions are the user's own (RFC 9051 §6.3.7), but the store keeps one flag
            # per folder, the owner's: a delegate must not change it. Delegated mailboxes are
            # listed as the owner subscribed them.
            if cmd.name == "UNSUBSCRIBE":
                self.tagged(
                    cmd.tag, "NO", "Subscriptions of a delegated BAL belong to its owner", "CANNOT"
                )
            else:
                self.tagged(cmd.tag, "OK", "SUBSCRIBE completed")
        else:
            await self.store.set_subscribed(folder.id, cmd.name == "SUBSCRIBE")
            self.tagged(cmd.tag, "OK", f"{cmd.name} completed")

    async def _rename(self, cmd: Rename) -> None:
        assert self.namespace is not None
        old_target, folder = await self.namespace.folder(self._name(cmd.old))
        new_target = await self.namespace.resolve(self._name(cmd.new))
        if old_target.bal != new_target.bal:
            self.tagged(cmd.tag, "NO", "Cannot move a mailbox to another BAL", "CANNOT")
            return
        if old_target.shared and not old_target.writable:
            raise NoPermission("Read-only delegation")
        if folder.name != "INBOX" and new_target.folder.startswith(folder.name + DELIMITER):
            self.tagged(cmd.tag, "NO", "Cannot rename a mailbox under itself", "CANNOT")
            return
        # RFC 9051 §6.3.6: the superior levels the new name needs are created.
        parts = new_target.folder.split(DELIMITER)
        for depth in range(1, len(parts)):
            with contextlib.suppress(FolderExists):
                await self.store.create_folder(new_target.bal, DELIMITER.join(parts[:depth]))
        if folder.name == "INBOX":
            # RFC 9051 §6.3.6: renaming INBOX moves its messages to the new folder.
            try:
                created = await self.store.create_folder(new_target.bal, new_target.folder)
            except FolderExists:
                self.tagged(cmd.tag, "NO", "Mailbox already exists", "ALREADYEXISTS")
                return
            uids = await self.store.uids(folder.id)
            if uids:
                await self.store.copy_messages(folder.id, uids, created.id, move=True)
            self.tagged(cmd.tag, "OK", "RENAME completed")
            return
        try:
            await self.store.rename_folder(old_target.bal, folder.name, new_target.folder)
        except FolderExists:
            self.tagged(cmd.tag, "NO", "Mailbox already exists", "ALREADYEXISTS")
            return
        self.tagged(cmd.tag, "OK", "RENAME completed")

    async def _list(self, cmd: ListCommand) -> None:
        assert self.namespace is not None
        lsub = cmd.name == "LSUB"
        reference = self._name(cmd.reference) if cmd.reference else ""
        patterns = [self._name(p) for p in cmd.patterns]
        if not lsub and patterns == [""] and not cmd.selection:
            # RFC 9051 §6.3.9: the hierarchy delimiter and the root of the reference.
            self.send(b'* LIST (\\Noselect) "/" ""\r\n')
            self.tagged(cmd.tag, "OK", "LIST completed")
            return
        unknown = [o for o in cmd.selection if o not in _LIST_SELECTION] + [
            o for o in cmd.returns if o not in _LIST_RETURN
        ]
        if unknown:
            self.bad(cmd.tag, f"Unknown LIST option {unknown[0][:30]}")
            return
        recursive = "RECURSIVEMATCH" in cmd.selection
        if recursive and not set(cmd.selection) - {"RECURSIVEMATCH", "REMOTE"}:
            # RFC 5258 §3: RECURSIVEMATCH alone (or with REMOTE) is an error.
            self.bad(cmd.tag, "RECURSIVEMATCH needs another selection option")
            return
        subscribed_only = lsub or "SUBSCRIBED" in cmd.selection
        want_subscribed = subscribed_only or "SUBSCRIBED" in cmd.returns
        want_children = True
        special_only = "SPECIAL-USE" in cmd.selection
        if any(len(reference) + len(p) > MAX_PATTERN for p in patterns):
            self.bad(cmd.tag, f"LIST pattern longer than {MAX_PATTERN} characters")
            return
        entries = await self.namespace.visible()
        names = {e.name for e in entries}
        subscribed_names = {e.name for e in entries if e.folder is not None and e.folder.subscribed}
        for entry in entries:
            if not any(matches(reference, p, entry.name) for p in patterns):
                continue
            folder = entry.folder
            # RFC 5258 §3.5: with RECURSIVEMATCH a parent of subscribed mailboxes is returned
            # (subscribed or not) with CHILDINFO.
            childinfo = (
                not lsub
                and recursive
                and subscribed_only
                and has_children(entry.name, subscribed_names)
            )
            if subscribed_only and (folder is None or not folder.subscribed) and not childinfo:
                continue
            # A delegated BAL's Sent or Trash is not the user's: no special-use there.
            special = (
                folder.special_use
                if folder is not None and entry.target is not None and not entry.target.shared
                else None
            )
            if special_only and not special:
                continue
            attributes: list[str] = []
            if folder is None:
                attributes.append("\\Noselect")
            if want_children:
                attributes.append(
                    "\\HasChildren" if has_children(entry.name, names) else "\\HasNoChildren"
                )
            if want_subscribed and folder is not None and folder.subscribed and not lsub:
                attributes.append("\\Subscribed")
            if special:
                # RFC 6154 §2 lets them appear without RETURN (SPECIAL-USE): as Dovecot does.
                attributes.append(special)
            verb = b"LSUB" if lsub else b"LIST"
            extended = b' ("CHILDINFO" ("SUBSCRIBED"))' if childinfo else b""
            self.send(
                b'* %s (%s) "/" %s%s\r\n'
                % (verb, " ".join(attributes).encode(), self._mailbox(entry.name), extended)
            )
            if cmd.return_status is not None and folder is not None:
                self.send(await self._status_response(entry.name, folder.id, cmd.return_status))
            await self.maybe_flush()
        self.tagged(cmd.tag, "OK", f"{cmd.name} completed")

    async def _status_response(self, name: str, folder_id: int, items: tuple[str, ...]) -> bytes:
        totals = await self.store.folder_totals(folder_id)
        folder = totals.folder
        values = {
            "MESSAGES": totals.messages,
            "RECENT": 0,
            "UIDNEXT": folder.uid_next,
            "UIDVALIDITY": folder.uidvalidity,
            "UNSEEN": totals.unseen,
            "DELETED": totals.deleted,
            "SIZE": totals.size,
            "HIGHESTMODSEQ": folder.highest_modseq,
            "APPENDLIMIT": self.limits.max_message_size,  # RFC 7889 §3
        }
        parts = " ".join(f"{item} {values[item]}" for item in items)
        return b"* STATUS %s (%s)\r\n" % (self._mailbox(name), parts.encode())

    async def _status(self, cmd: Status) -> None:
        assert self.namespace is not None
        unknown = [i for i in cmd.items if i not in _STATUS_ITEMS]
        if unknown:
            self.bad(cmd.tag, f"Unknown STATUS item {unknown[0][:30]}")
            return
        if "HIGHESTMODSEQ" in cmd.items:
            self.modes.condstore = True
        name = self._name(cmd.mailbox)
        _, folder = await self.namespace.folder(name)
        self.send(await self._status_response(name, folder.id, cmd.items))
        self.tagged(cmd.tag, "OK", "STATUS completed")

    async def _over_quota(self, bal: str, adding: int) -> bool:
        if not self.limits.quota_storage:
            return False
        used, _ = await self.store.usage(bal)
        return used + adding > self.limits.quota_storage

    async def _append(self, cmd: Append) -> None:
        assert self.namespace is not None
        try:
            target, folder = await self.namespace.folder(self._name(cmd.mailbox))
        except NoSuchMailbox:
            self.tagged(cmd.tag, "NO", "Mailbox does not exist", "TRYCREATE")
            return
        if target.shared and not target.writable:
            raise NoPermission("Read-only delegation")
        total = sum(len(m.data) for m in cmd.messages)
        if await self._over_quota(target.bal, total):
            self.tagged(cmd.tag, "NO", "Quota depasse", "OVERQUOTA")
            return
        # RFC 3502 §6.3.11: all messages or none, so every check comes before the first save.
        for message in cmd.messages:
            if len(message.data) > self.limits.max_message_size:
                self.tagged(cmd.tag, "NO", "Message too large", "TOOBIG")
                return
            if not message.data:
                # An empty literal is no RFC 5322 message; Dovecot refuses it too.
                self.tagged(cmd.tag, "NO", "Cannot save an empty message")
                return
        try:
            split = [_split_flags(m.flags) for m in cmd.messages]
        except ValueError as exc:
            self.bad(cmd.tag, str(exc))
            return
        uids: list[int] = []
        for message, (flags, keywords) in zip(cmd.messages, split, strict=True):
            result = await self.store.deliver(
                target.bal,
                message.data,
                folder.name,
                flags=flags,
                keywords=keywords,
                internal_date=message.internal_date,
            )
            uids.append(result.uid)
        await self._updates("APPEND")
        code = f"APPENDUID {folder.uidvalidity} {sequence.compact_ordered(uids)}"
        self.tagged(cmd.tag, "OK", "APPEND completed", code)

    async def _getquotaroot(self, cmd: MailboxCommand) -> None:
        assert self.namespace is not None
        name = self._name(cmd.mailbox)
        target, _ = await self.namespace.folder(name)
        if not self.limits.quota_storage:
            # RFC 9208 §4.3: no quota applies to this mailbox.
            self.send(b"* QUOTAROOT %s\r\n" % self._mailbox(name))
            self.tagged(cmd.tag, "OK", "GETQUOTAROOT completed")
            return
        root = "" if not target.shared else target.bal
        self.send(b"* QUOTAROOT %s %s\r\n" % (self._mailbox(name), response.string(root)))
        self.send(await self._quota_response(target.bal, root))
        self.tagged(cmd.tag, "OK", "GETQUOTAROOT completed")

    async def _quota_response(self, bal: str, root: str) -> bytes:
        used, _count = await self.store.usage(bal)
        if self.limits.quota_storage:
            storage = f"STORAGE {(used + 1023) // 1024} {self.limits.quota_storage // 1024}"
        else:
            storage = ""
        # RFC 9208 §5.1: a resource without a limit is not listed; messages are not limited.
        return b"* QUOTA %s (%s)\r\n" % (response.string(root), storage.encode())

    async def _getquota(self, cmd: GetQuota) -> None:
        assert self.namespace is not None
        assert self.user is not None
        if cmd.root == "":
            bal = self.user
        else:
            delegated = {d.bal for d in await self.namespace.delegations()}
            if cmd.root.lower() not in delegated:
                self.tagged(cmd.tag, "NO", "No such quota root", "NONEXISTENT")
                return
            bal = cmd.root.lower()
        self.send(await self._quota_response(bal, cmd.root))
        self.tagged(cmd.tag, "OK", "GETQUOTA completed")

    # -- IDLE (RFC 2177, RFC 9051 §6.3.13) -----------------------------------------------------

    async def _idle(self, tag: str) -> list[Event]:
        await self._updates("IDLE")
        self.send(b"+ idling\r\n")
        await self.flush()
        events = self.parser.feed(b"")
        deadline = time.monotonic() + self.limits.timeout
        read_task: asyncio.Task[bytes] | None = None
        watch_task: asyncio.Future[bool] | None = None
        try:
            while True:
                if events:
                    first, rest = events[0], events[1:]
                    if isinstance(first, IdleDone):
                        await self._updates("IDLE")
                        self.tagged(tag, "OK", "IDLE terminated")
                        return rest
                    # Anything but DONE ends IDLE with an error: one tagged BAD, the
                    # parser's own error for that line is not sent as well.
                    self.bad(tag, "Expected DONE")
                    return rest if isinstance(first, ParseError) else events
                if read_task is None:
                    read_task = asyncio.ensure_future(self.reader.read(65536))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.send(b"* BYE Autologout; idle for too long\r\n")
                    raise Closed
                waiters: set[asyncio.Future[object]] = {read_task}  # type: ignore[arg-type]
                if self.selected is not None:
                    watch_task = asyncio.ensure_future(self.selected.watch.wait())
                    waiters.add(watch_task)  # type: ignore[arg-type]
                try:
                    done, _ = await asyncio.wait(
                        waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    if watch_task is not None:
                        watch_task.cancel()
                if watch_task is not None and watch_task in done and watch_task.result():
                    await self._updates("IDLE", woken=True)
                    await self.flush()
                if read_task in done:
                    data = read_task.result()
                    read_task = None
                    if not data:
                        raise Closed
                    events = self.parser.feed(data)
        finally:
            if read_task is not None:
                read_task.cancel()
                with contextlib.suppress(BaseException):
                    await read_task

    # -- selected ------------------------------------------------------------------------------

    async def _expunge(self, tag: str, uid_set: SequenceSet | None) -> None:
        selected = self.selected
        assert selected is not None
        if not await self._still_writable():
            self.tagged(tag, "NO", "Mailbox is read-only", "READ-ONLY")
            return
        uids = None if uid_set is None else selected_uids(selected, uid_set)
        removed = await self.store.expunge(selected.id, uids)
        self.send(selected.expunge_responses(removed, self.modes))
        await self._updates("EXPUNGE")
        self.tagged(tag, "OK", "EXPUNGE completed")

    def _check_sequence(self, tag: str, seqset: SequenceSet, uid: bool) -> bool:
        selected = self.selected
        assert selected is not None
        if uid or seqset.saved:
            return True
        bad = sequence.validate(seqset, selected.exists)
        if bad is not None:
            self.bad(tag, f"Invalid message sequence number {bad}")
            return False
        return True

    async def _search(self, cmd: Search) -> None:
        selected = self.selected
        assert selected is not None
        if cmd.charset is not None and cmd.charset.upper() not in ("UTF-8", "US-ASCII"):
            self.tagged(cmd.tag, "NO", "Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
            return
        need = search.needs(cmd.criteria)
        if search.uses_modseq(cmd.criteria):
            self.modes.condstore = True
        positions = selected.positions()
        matched = await self._search_matches(cmd, need, positions)
        numbers = [uid if cmd.uid else positions[uid] for uid, _ in matched]
        modseq = (
            max((m for _, m in matched), default=None) if search.uses_modseq(cmd.criteria) else None
        )
        returns = cmd.returns
        if returns is not None and "SAVE" in returns:
            selected.saved = [uid for uid, _ in matched]
        if returns is None and self.modes.rev2:
            returns = ()
        if returns is None:
            self.send(search.search_response(numbers, modseq))
        elif search.should_respond(returns):
            self.send(
                search.esearch_response(
                    cmd.tag, uid=cmd.uid, matched=numbers, returns=returns, highest_modseq=modseq
                )
            )
        await self._updates("UID SEARCH" if cmd.uid else "SEARCH")
        self.tagged(cmd.tag, "OK", "SEARCH completed")

    async def _search_matches(
        self, cmd: Search, need: search.Need, positions: dict[int, int]
    ) -> list[tuple[int, int]]:
        """``(UID, MODSEQ)`` of the messages matching, in mailbox order: by the database when
        the criteria allow, else message by message. ``positions``: the selected mailbox's
        UID -> sequence number, as the client knows it."""
        selected = self.selected
        assert selected is not None
        # Flags, dates and sizes need no MIME structure; header keys need the header block,
        # unless a search decoded it lately (a blob never changes).
        columns = None if need is search.Need.FULL else search.columns(cmd.criteria)
        indexed = None
        if columns is not None and columns <= INDEXED_FIELDS:
            indexed = await self._indexed()
        in_database = search.database_filter(cmd.criteria)
        infos: Sequence[MessageInfo]
        if indexed is not None and in_database is not None:
            keep = in_database.test()
            return [(i.uid, i.modseq) for i in indexed.values() if keep(i) and i.uid in positions]
        if indexed is not None:
            infos = list(indexed.values())
        elif in_database is not None:
            found = await self.store.find_messages(selected.id, in_database)
            return [(uid, modseq) for uid, modseq in found if uid in positions]
        else:
            infos = await self.store.list_messages(selected.id, columns=columns)
        known: dict[int, list[tuple[str, str]]] = {}
        headers: dict[int, MessageInfo] = {}
        missing: list[int] = []
        if need is search.Need.HEADER:
            for info in infos:
                if (fields := search.decoded_header(info.blob)) is not None:
                    known[info.uid] = fields
            missing = [i.uid for i in infos if i.uid not in known]
            if missing:
                for info in await self.store.list_messages(
                    selected.id, missing, columns=("header",)
                ):
                    headers[info.uid] = info
        scope = search.Scope(
            uids=selected.uids,
            count=selected.exists,
            saved=selected.saved,
            now=datetime.now(UTC),
        )
        matched: list[tuple[int, int]] = []
        test = search.matcher(cmd.criteria, scope)
        if need is search.Need.METADATA or (need is search.Need.HEADER and not missing):
            # Nothing to read per message: one pass, no await (1,000 candidates).
            make, recent = search.Candidate, selected.recent
            return [
                (i.uid, i.modseq)
                for i in infos
                if (seq := positions.get(i.uid)) is not None
                and test(make(seq, i.uid, i, i.uid in recent, fields=known.get(i.uid)))
            ]
        for info in infos:
            seq = positions.get(info.uid)
            if seq is None:
                continue
            candidate = search.Candidate(
                seq, info.uid, info, info.uid in selected.recent, fields=known.get(info.uid)
            )
            if need is search.Need.HEADER and candidate.fields is None:
                with_header = headers.get(info.uid)
                if with_header is None:
                    continue  # expunged since the first read
                candidate.header = await self._header_block(with_header)
            elif need is search.Need.FULL:
                candidate.raw = await self.store.read_message(info)
            if test(candidate):
                matched.append((info.uid, info.modseq))
        return matched

    async def _indexed(self) -> dict[int, MessageInfo] | None:
        """The selected mailbox's message index (:meth:`store.Store.indexed_messages`), up to
        every change this session was told of or notified of."""
        selected = self.selected
        assert selected is not None
        covering = max(selected.known_modseq, selected.watch.modseq)
        return await self.store.indexed_messages(selected.id, covering)

    async def _header_block(self, info: MessageInfo) -> bytes:
        """The complete top-level header: the stored copy unless it was cut at delivery."""
        if len(info.header) < HEADER_ROW_LIMIT:
            return info.header
        (whole,) = await self.store.list_messages(info.folder_id, [info.uid])
        return await self.store.read_header(whole)

    async def _fetch(self, cmd: Fetch) -> None:
        selected = self.selected
        assert selected is not None
        if not self._check_sequence(cmd.tag, cmd.sequence, cmd.uid):
            return
        if cmd.vanished and not (cmd.uid and self.modes.qresync and cmd.changed_since is not None):
            self.bad(cmd.tag, "VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE")
            return
        attributes = list(cmd.attributes)
        if cmd.changed_since is not None or any(a.name == "MODSEQ" for a in attributes):
            self.modes.condstore = True
        if cmd.uid and not any(a.name == "UID" for a in attributes):
            attributes.insert(0, FetchAttr("UID"))
        pairs = selected.resolve(cmd.sequence, uid=cmd.uid)
        if cmd.vanished and cmd.changed_since is not None:
            changes = await self.store.changes_since(selected.id, cmd.changed_since)
            gone = sequence.select(cmd.sequence, sorted(changes.vanished))
            if gone:
                self.send(b"* VANISHED (EARLIER) %s\r\n" % sequence.compact(gone).encode())
        infos = await self._fetch_metadata(selected.id, [u for _, u in pairs], attributes)
        sets_seen = any(_sets_seen(a) for a in attributes) and await self._still_writable()
        # RFC 9051 §6.4.5: FLAGS go with the data only for the messages \Seen was set on now.
        newly_seen: set[int] = set()
        if sets_seen:
            unseen = [u for u in infos if Flag.SEEN not in infos[u].flags]
            if unseen:
                changes_made = await self.store.set_flags(
                    selected.id, unseen, flags=Flag.SEEN, mode="add"
                )
                for change in changes_made:
                    newly_seen.add(change.uid)
                    old = infos[change.uid]
                    infos[change.uid] = _with_flags(
                        old, change.flags, change.keywords, change.modseq
                    )
                    selected.reported[change.uid] = change.modseq
        missing = False
        reads_header = any(_reads_header(a) for a in attributes)
        reads_content = any(_reads_content(a) for a in attributes)
        for seq, uid in pairs:
            info = infos.get(uid)
            if info is None:
                missing = True
                continue
            if cmd.changed_since is not None and info.modseq <= cmd.changed_since:
                continue
            header = await self.store.read_header(info) if reads_header else None
            raw = await self.store.read_message(info) if reads_content else None
            self.send(self._fetch_response(seq, info, attributes, uid in newly_seen, header, raw))
            if len(self.out) >= WRITE_HIGH_WATER:
                await self.flush()
        await self._updates("UID FETCH" if cmd.uid else "FETCH")
        if missing and not cmd.uid:
            self.tagged(cmd.tag, "NO", "Some messages were expunged meanwhile", "EXPUNGEISSUED")
        else:
            self.tagged(cmd.tag, "OK", "FETCH completed")

    async def _fetch_metadata(
        self, folder_id: int, uids: list[int], attributes: list[FetchAttr]
    ) -> dict[int, MessageInfo]:
        """The rows FETCH needs, decoding the MIME structure only where it must: for sections,
        and for ENVELOPE/BODYSTRUCTURE not already formatted in the cache."""
        if any(_needs_structure(a) for a in attributes):
            return {i.uid: i for i in await self.store.list_messages(folder_id, uids)}
        columns: set[str] = set()
        for attr in attributes:
            columns.update(_COLUMNS_OF.get(attr.name, ()))
            if _sets_seen(attr):
                columns.update(("flags", "keywords", "modseq"))
        if self.modes.condstore:
            columns.add("modseq")
        found: Sequence[MessageInfo]
        indexed = await self._indexed() if columns <= INDEXED_FIELDS else None
        if indexed is not None:
            found = [info for uid in uids if (info := indexed.get(uid)) is not None]
        else:
            found = await self.store.list_messages(folder_id, uids, columns=columns)
        infos = {i.uid: i for i in found}
        kinds = [k for a in attributes if (k := _formatted_kind(a)) is not None]
        cache, utf8 = self.server.formatted, self.modes.rev2
        missing = [i.uid for i in found if any((i.blob, k, utf8) not in cache for k in kinds)]
        if missing:
            columns.update(("envelope", "body"))
            for info in await self.store.list_messages(folder_id, missing, columns=columns):
                infos[info.uid] = info
        return infos

    def _formatted(self, info: MessageInfo, kind: str) -> bytes:
        utf8 = self.modes.rev2

        def compute() -> bytes:
            if kind == "ENVELOPE":
                return response.envelope(info.envelope, utf8=utf8)
            return response.bodystructure(info.body, extensible=kind == "BODYSTRUCTURE", utf8=utf8)

        return self.server.formatted.get((info.blob, kind, utf8), compute)

    def _fetch_response(
        self,
        seq: int,
        info: MessageInfo,
        attributes: list[FetchAttr],
        seen_set: bool,
        header: bytes | None,
        raw: bytes | None,
    ) -> bytes:
        """One ``* n FETCH``; ``header`` and ``raw`` were read if an attribute needs them
        (:func:`_reads_header`, :func:`_reads_content`)."""
        selected = self.selected
        assert selected is not None
        items: list[bytes] = []
        flags_sent = False
        for attr in attributes:
            name = attr.name
            if name == "UID":
                items.append(b"UID %d" % info.uid)
            elif name == "FLAGS":
                flags_sent = True
                items.append(
                    b"FLAGS "
                    + response.flag_list(info.flags, info.keywords, info.uid in selected.recent)
                )
            elif name == "INTERNALDATE":
                items.append(b"INTERNALDATE " + response.internal_date(info.internal_date))
            elif name == "RFC822.SIZE":
                items.append(b"RFC822.SIZE %d" % info.size)
            elif name == "ENVELOPE":
                items.append(b"ENVELOPE " + self._formatted(info, "ENVELOPE"))
            elif name == "BODYSTRUCTURE":
                items.append(b"BODYSTRUCTURE " + self._formatted(info, "BODYSTRUCTURE"))
            elif name == "BODY" and attr.section is None:
                items.append(b"BODY " + self._formatted(info, "BODY"))
            elif name == "MODSEQ":
                pass  # added below, once
            elif _reads_header(attr):
                assert header is not None
                section = attr.section if name == "BODY" else Section(text="HEADER")
                assert section is not None
                data = sections.section_bytes(header, info.body, section) or b""
                items.append(_body_item(name, attr, data))
            elif _reads_content(attr):
                assert raw is not None
                items.append(self._content_item(raw, info, attr))
        if self.modes.condstore or any(a.name == "MODSEQ" for a in attributes):
            items.append(b"MODSEQ (%d)" % info.modseq)
        if seen_set and not flags_sent:
            items.append(
                b"FLAGS "
                + response.flag_list(info.flags, info.keywords, info.uid in selected.recent)
            )
        return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items))

    def _content_item(self, raw: bytes, info: MessageInfo, attr: FetchAttr) -> bytes:
        name = attr.name
        if name == "RFC822":
            return b"RFC822 " + response.literal(raw)
        if name == "RFC822.TEXT":
            data = sections.section_bytes(raw, info.body, Section(text="TEXT")) or b""
            return b"RFC822.TEXT " + response.literal(data)
        if name == "BODY":
            assert attr.section is not None
            data = sections.section_bytes(raw, info.body, attr.section) or b""
            return _body_item(name, attr, data)
        part = attr.section.part if attr.section is not None else ()
        label = ".".join(str(p) for p in part)
        try:
            if name == "BINARY.SIZE":
                size = sections.binary_size(raw, info.body, part)
                return b"BINARY.SIZE[%s] %s" % (
                    label.encode(),
                    b"%d" % size if size is not None else b"NIL",
                )
            data_or_none = sections.binary_section(raw, info.body, part)
        except sections.UnknownTransferEncoding:
            raise InvalidInput("[UNKNOWN-CTE] Unknown Content-Transfer-Encoding") from None
        data = data_or_none or b""
        origin = b""
        if attr.partial is not None:
            data = sections.partial(data, *attr.partial)
            origin = b"<%d>" % attr.partial[0]
        encoded = response.literal8(data) if b"\0" in data else response.literal(data)
        return b"BINARY[%s]%s %s" % (label.encode(), origin, encoded)

    async def _store(self, cmd: Store) -> None:
        selected = self.selected
        assert selected is not None
        if not self._check_sequence(cmd.tag, cmd.sequence, cmd.uid):
            return
        if not await self._still_writable():
            self.tagged(cmd.tag, "NO", "Mailbox is read-only", "READ-ONLY")
            return
        try:
            flags, keywords = _split_flags(cmd.flags)
        except ValueError as exc:
            self.bad(cmd.tag, str(exc))
            return
        if cmd.unchanged_since is not None:
            self.modes.condstore = True
        pairs = selected.resolve(cmd.sequence, uid=cmd.uid)
        uids = [u for _, u in pairs]
        mode = {"": "replace", "+": "add", "-": "remove"}[cmd.mode]
        changes = await self.store.set_flags(
            selected.id,
            uids,
            flags=flags,
            keywords=keywords,
            mode=mode,  # type: ignore[arg-type]
            unchanged_since=cmd.unchanged_since,
        )
        changed = {c.uid: c for c in changes}
        modified: list[int] = []
        conflicting: set[int] = set()
        current: dict[int, MessageInfo] = {}
        unchanged_uids = [u for u in uids if u not in changed]
        if unchanged_uids and (cmd.unchanged_since is not None or not cmd.silent):
            # The flags of messages the STORE left alone, as the transaction found them: the
            # index knows them exactly only where every writer is this process (SQLite); a
            # conflict with UNCHANGEDSINCE is always judged on the database.
            indexed = None
            if cmd.unchanged_since is None and self.store.writes_only_here:
                indexed = await self._indexed()
            if indexed is not None:
                unchanged = [i for u in unchanged_uids if (i := indexed.get(u)) is not None]
            else:
                unchanged = await self.store.list_messages(
                    selected.id, unchanged_uids, columns=("modseq", "flags", "keywords")
                )
            for info in unchanged:
                current[info.uid] = info
                if cmd.unchanged_since is not None and info.modseq > cmd.unchanged_since:
                    conflicting.add(info.uid)
                    modified.append(info.uid if cmd.uid else selected.seq_of(info.uid) or 0)
        for seq, uid in pairs:
            change = changed.get(uid)
            if change is None:
                # RFC 9051 §6.4.6: the flags of every message named, changed or not (but
                # those UNCHANGEDSINCE refused, RFC 7162 §3.1.3).
                now = current.get(uid)
                if cmd.silent or now is None or uid in conflicting:
                    continue
                items = b"FLAGS " + response.flag_list(
                    now.flags, now.keywords, uid in selected.recent
                )
                if cmd.uid or self.modes.qresync:
                    items = b"UID %d " % uid + items
                if self.modes.condstore:
                    items += b" MODSEQ (%d)" % now.modseq
                self.send(b"* %d FETCH (%s)\r\n" % (seq, items))
                continue
            selected.reported[uid] = change.modseq
            if cmd.silent and not self.modes.condstore:
                continue
            items = b"FLAGS " + response.flag_list(
                change.flags, change.keywords, uid in selected.recent
            )
            if cmd.silent:
                items = b""
            if cmd.uid or self.modes.qresync:
                items = b"UID %d " % uid + items if items else b"UID %d" % uid
            if self.modes.condstore:
                items = (
                    items + b" MODSEQ (%d)" % change.modseq
                    if items
                    else b"MODSEQ (%d)" % change.modseq
                )
            self.send(b"* %d FETCH (%s)\r\n" % (seq, items))
        await self._updates("UID STORE" if cmd.uid else "STORE")
        if modified:
            self.tagged(
                cmd.tag, "OK", "Conditional STORE failed", f"MODIFIED {sequence.compact(modified)}"
            )
        else:
            self.tagged(cmd.tag, "OK", "STORE completed")

    async def _copy(self, cmd: Copy) -> None:
        selected = self.selected
        assert selected is not None
        assert self.namespace is not None
        if not self._check_sequence(cmd.tag, cmd.sequence, cmd.uid):
            return
        move = cmd.name == "MOVE"
        if move and not await self._still_writable():
            self.tagged(cmd.tag, "NO", "Mailbox is read-only", "READ-ONLY")
            return
        try:
            target, folder = await self.namespace.folder(self._name(cmd.mailbox))
        except NoSuchMailbox:
            self.tagged(cmd.tag, "NO", "Mailbox does not exist", "TRYCREATE")
            return
        if target.shared and not target.writable:
            raise NoPermission("Read-only delegation")
        pairs = selected.resolve(cmd.sequence, uid=cmd.uid)
        uids = [u for _, u in pairs]
        same_bal = move and target.bal == selected.target.bal
        if self.limits.quota_storage and uids and not same_bal:
            infos = await self.store.list_messages(selected.id, uids, columns=("size",))
            if await self._over_quota(target.bal, sum(i.size for i in infos)):
                self.tagged(cmd.tag, "NO", "Quota depasse", "OVERQUOTA")
                return
        copied = await self.store.copy_messages(selected.id, uids, folder.id, move=move)
        if not copied:
            self.tagged(cmd.tag, "OK", f"{cmd.name} completed (nothing to do)")
            return
        code = (
            f"COPYUID {folder.uidvalidity} {sequence.compact_ordered(s for s, _ in copied)} "
            f"{sequence.compact_ordered(d for _, d in copied)}"
        )
        if not move:
            await self._updates("COPY")
            self.tagged(cmd.tag, "OK", "COPY completed", code)
            return
        # RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
        self.send(f"* OK [{code}] Moved\r\n".encode())
        self.send(selected.expunge_responses([s for s, _ in copied], self.modes))
        await self._updates("MOVE")
        self.tagged(cmd.tag, "OK", "MOVE completed")


def selected_uids(selected: SelectedMailbox, uid_set: SequenceSet) -> list[int]:
    return [u for _, u in selected.resolve(uid_set, uid=True)]


def _split_flags(names: tuple[str, ...]) -> tuple[Flag, list[str]]:
    system = Flag(0)
    keywords: list[str] = []
    for name in names:
        if name.startswith("\\"):
            flag = Flag.from_imap([name])
            if flag:
                system |= flag
            elif name.lower() == "\\recent":
                continue  # RFC 3501 §2.3.2: \Recent cannot be stored; ignored
            else:
                raise ValueError(f"Unknown system flag {name[:30]}")
        else:
            keywords.append(name)
    return system, keywords


def _sets_seen(attr: FetchAttr) -> bool:
    if attr.name in ("RFC822", "RFC822.TEXT"):
        return True
    return attr.name in ("BODY", "BINARY") and attr.section is not None and not attr.peek


# The message columns each FETCH item reads (uid and blob always come).
_COLUMNS_OF: dict[str, tuple[str, ...]] = {
    "FLAGS": ("flags", "keywords"),
    "INTERNALDATE": ("internal_date",),
    "RFC822.SIZE": ("size",),
    "MODSEQ": ("modseq",),
}


def _formatted_kind(attr: FetchAttr) -> str | None:
    if attr.name in ("ENVELOPE", "BODYSTRUCTURE"):
        return attr.name
    if attr.name == "BODY" and attr.section is None:
        return "BODY"
    return None


def _needs_structure(attr: FetchAttr) -> bool:
    """Whether the item reads the MIME structure (part offsets): every section but the whole
    message, and BINARY."""
    if attr.name in ("RFC822.HEADER", "RFC822.TEXT", "BINARY", "BINARY.SIZE"):
        return True
    section = attr.section
    return attr.name == "BODY" and section is not None and bool(section.part or section.text)


def _reads_header(attr: FetchAttr) -> bool:
    """Whether the item is cut from the top-level header block alone."""
    if attr.name == "RFC822.HEADER":
        return True
    return attr.name == "BODY" and attr.section is not None and _header_only(attr.section)


def _reads_content(attr: FetchAttr) -> bool:
    """Whether the item is cut from the raw message (the blob)."""
    if attr.name in ("RFC822", "RFC822.TEXT", "BINARY", "BINARY.SIZE"):
        return True
    return attr.name == "BODY" and attr.section is not None and not _header_only(attr.section)


def _header_only(section: Section) -> bool:
    return not section.part and section.text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT")


def _section_label(section: Section) -> bytes:
    parts = [".".join(str(p) for p in section.part)] if section.part else []
    if section.text:
        text = section.text
        if section.fields:
            text += " (" + " ".join(section.fields) + ")"
        parts.append(text)
    return ".".join(parts).encode()


def _body_item(name: str, attr: FetchAttr, data: bytes) -> bytes:
    if name == "RFC822.HEADER":
        return b"RFC822.HEADER " + response.literal(data)
    assert attr.section is not None
    origin = b""
    if attr.partial is not None:
        data = sections.partial(data, *attr.partial)
        origin = b"<%d>" % attr.partial[0]
    return b"BODY[%s]%s %s" % (_section_label(attr.section), origin, response.literal(data))


def _with_flags(
    info: MessageInfo, flags: Flag, keywords: tuple[str, ...], modseq: int
) -> MessageInfo:
    return dataclasses.replace(info, flags=flags, keywords=keywords, modseq=modseq)


def _b64(text: str) -> bytes | None:
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


__all__ = ["Closed", "Session", "State", "Target"]
