"""Pure, incremental IMAP command parser (no I/O).

RFC 9051 §9 and RFC 3501 §9 formal syntax, literals per RFC 9051 §4.3 and RFC 7888
(LITERAL+/LITERAL-), literal8 per RFC 3516. Extensions: CONDSTORE/QRESYNC (RFC 7162),
ESEARCH (RFC 4731), SEARCHRES (RFC 5182), LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819),
SPECIAL-USE (RFC 6154), MULTIAPPEND (RFC 3502), ID (RFC 2971), QUOTA (RFC 9208), MOVE
(RFC 6851), UIDPLUS (RFC 4315), SASL-IR (RFC 4959).

Two layers:

* :class:`CommandParser` frames bytes into complete commands (lines plus literals), enforcing the
  limits and announcing synchronising literals before their octets arrive;
* :func:`parse_command` turns the bytes of one complete command into a typed value
  (:mod:`imap.model`) or a :class:`~imap.model.ParseError`. It never raises.

Usage by a session::

    parser = CommandParser()
    for event in parser.feed(data):
        if isinstance(event, ContinuationNeeded):
            if event.size > quota_left:           # refuse *before* the octets arrive
                send(f"{event.tag} NO [TOOBIG] ...")
                parser.reject_literal()
            else:
                send("+ go ahead")
        ...

After a :class:`ContinuationNeeded` or an ``IDLE`` command, :meth:`CommandParser.feed` stops
and keeps the remaining bytes; the next ``feed`` (``feed(b"")`` is fine) resumes. After IDLE
the parser expects ``DONE`` (call :meth:`CommandParser.end_idle` if IDLE was refused).
"""

from __future__ import annotations

import codecs
import datetime as dt
import re

from imap.model import (
    Append,
    AppendMessage,
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
    SearchAnd,
    SearchDateKey,
    SearchFlagKey,
    SearchHeaderKey,
    SearchKey,
    SearchModSeqKey,
    SearchNot,
    SearchNumberKey,
    SearchOr,
    SearchSeqKey,
    SearchTextKey,
    Section,
    Select,
    SeqRange,
    SequenceSet,
    Simple,
    Status,
    Store,
    Unknown,
)

# --------------------------------------------------------------------------- limits

#: Longest command line (one line between literals), CRLF excluded. RFC 7162 §4 asks for 8192.
MAX_LINE_LENGTH = 8192
#: Largest literal accepted (APPEND message size limit lives here too).
MAX_LITERAL_SIZE = 64 * 1024 * 1024
#: Largest whole command (all lines and literals together).
MAX_COMMAND_SIZE = 80 * 1024 * 1024
#: Deepest nesting of parentheses in SEARCH keys / NOT / OR chains.
MAX_NESTING = 32
#: RFC 7888 §4: LITERAL- caps non-synchronising literals at 4096 octets; not enforced here
#: (we advertise LITERAL+), exposed for a session that advertises LITERAL- instead.
LITERAL_MINUS_MAX = 4096

NUMBER_MAX = 2**32 - 1  # RFC 9051 §9 number
NUMBER64_MAX = 2**63 - 1  # RFC 9051 §9 number64, RFC 7162 mod-sequence-value

# A line ending with a literal announcement: ``{n}``, ``{n+}``, ``~{n}``, ``~{n+}``.
_LITERAL_AT_END = re.compile(rb"(~?)\{(\d+)(\+?)\}\Z")
_TAG_AT_START = re.compile(rb"([^\x00-\x20\x7f-\xff(){%*\"\\+]+)(?: |\Z)")
_COMMAND_NAME = re.compile(rb"[^ ]+ ((?:UID )?[A-Za-z0-9-]+)(?: |\Z)", re.IGNORECASE)
_TAG_BEFORE_SPACE = re.compile(rb"([^\x00-\x20\x7f-\xff(){%*\"\\+]+) ")

_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
_ASTRING_SPECIALS = _ATOM_SPECIALS - {ord("]")}
_LIST_SPECIALS = _ATOM_SPECIALS - {ord("%"), ord("*"), ord("]")}
_SEQ_CHARS = frozenset(b"0123456789:,*$")

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}

# --------------------------------------------------------------------------- framing


class CommandParser:
    """Incremental framer: :meth:`feed` bytes as they arrive, get events back."""

    def __init__(
        self,
        *,
        max_line_length: int = MAX_LINE_LENGTH,
        max_literal_size: int = MAX_LITERAL_SIZE,
        max_command_size: int = MAX_COMMAND_SIZE,
    ) -> None:
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        self.max_command_size = max_command_size
        self._buf = bytearray()
        self._cmd = bytearray()  # the current command so far (lines + literals, raw)
        self._tag: str | None = None
        self._name: str | None = None  # command name (``UID FETCH`` for UID commands)
        self._literal_left = 0  # octets of the current literal still to read
        self._skip_left = 0  # octets of a refused literal still to throw away
        self._skip_line = False  # throwing away the rest of an over-long line
        self._skip_tail = bytearray()  # last bytes of that line, to spot a trailing {n+}
        self._discarding_command = False  # throwing away the rest of a refused command
        self._paused = False
        self._idling = False

    # -- session hooks

    def reject_literal(self) -> None:
        """The server refused the synchronising literal just announced: drop the command.

        The client will not send the octets (RFC 9051 §7.5), so the next bytes start a new command.
        """
        if self._literal_left or self._cmd:
            self._reset_command()

    def end_idle(self) -> None:
        """The server refused IDLE (or ended it itself): stop waiting for ``DONE``."""
        self._idling = False

    @property
    def idling(self) -> bool:
        return self._idling

    @property
    def pending(self) -> bool:
        """True when part of a command has been read (e.g. the client vanished mid-literal)."""
        return bool(self._cmd or self._literal_left or self._buf)

    # -- feeding

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        self._paused = False
        events: list[Event] = []
        while not self._paused and self._step(events):
            pass
        return events

    def _reset_command(self) -> None:
        self._cmd.clear()
        self._tag = None
        self._literal_left = 0

    def _step(self, events: list[Event]) -> bool:
        """Consume what can be consumed; False when more input is needed."""
        buf = self._buf
        if self._skip_left:
            n = min(self._skip_left, len(buf))
            del buf[:n]
            self._skip_left -= n
            return not self._skip_left
        if self._literal_left:
            n = min(self._literal_left, len(buf))
            self._cmd += buf[:n]
            del buf[:n]
            self._literal_left -= n
            return not self._literal_left
        nl = buf.find(b"\n")
        if self._skip_line:
            if nl < 0:
                self._skip_tail = (self._skip_tail + buf)[-32:]
                buf.clear()
                return False
            tail = _strip_eol(bytes(self._skip_tail + buf[: nl + 1]))
            del buf[: nl + 1]
            self._skip_line = False
            self._skip_tail.clear()
            self._after_skipped_line(tail)
            return True
        if nl < 0:
            if len(buf) > self.max_line_length + 1 and self._discarding_command:
                self._skip_line = True  # already refused: swallow silently
                self._skip_tail = buf[-32:]
                buf.clear()
                return True
            if len(buf) > self.max_line_length + 1 and self._idling and not self._cmd:
                self._idling = False
                events.append(ParseError(None, "expected DONE to end IDLE"))
                self._skip_line = True
                self._skip_tail = buf[-32:]
                buf.clear()
                return True
            if len(buf) > self.max_line_length + 1:
                events.append(self._line_too_long(bytes(buf)))
                self._skip_line = True
                self._skip_tail = buf[-32:]
                buf.clear()
                self._reset_command()
                return True
            return False
        line = _strip_eol(bytes(buf[: nl + 1]))
        del buf[: nl + 1]
        if self._discarding_command:
            self._after_skipped_line(line)
            return True
        if self._idling and not self._cmd:
            self._idling = False
            if line.upper() == b"DONE":
                events.append(IdleDone())
            else:
                events.append(ParseError(None, "expected DONE to end IDLE"))
                self._after_skipped_line(line)
            return True
        if not self._cmd:
            m = _TAG_AT_START.match(line)
            self._tag = m.group(1).decode("ascii", "replace") if m else None
            c = _COMMAND_NAME.match(line)
            self._name = c.group(1).decode("ascii").upper() if c else None
        if len(line) > self.max_line_length:
            self._after_skipped_line(line)  # a trailing {n+} is swallowed with its command
            events.append(self._line_too_long(line))
            self._reset_command()
            return True
        lit = _LITERAL_AT_END.search(line)
        if lit is None:
            self._cmd += line
            cmd = bytes(self._cmd)
            self._reset_command()
            if not cmd:
                return True  # an empty line is ignored, as most servers do
            event = parse_command(cmd)
            events.append(event)
            if isinstance(event, Simple) and event.name == "IDLE":
                self._idling = True
                self._paused = True  # let the server answer "+ idling" (or refuse) first
            return True
        size = _literal_size(lit.group(2))
        sync = not lit.group(3)
        tag = self._tag
        if size > self.max_literal_size or len(self._cmd) + len(line) + size > (
            self.max_command_size
        ):
            self._reset_command()
            if size > self.max_literal_size:
                text = f"literal too large (limit {self.max_literal_size} octets)"
            else:
                text = f"command too large (limit {self.max_command_size} octets)"
            if sync:
                # RFC 9051 §7.5: refused before the client sends the octets.
                events.append(ParseError(tag, text, "TOOBIG", discarding=False))
            else:
                # RFC 7888 §4: the octets are coming anyway; swallow them and the rest.
                events.append(ParseError(tag, text, "TOOBIG", discarding=True))
                self._skip_left = size
                self._discarding_command = True
            return True
        self._cmd += line + b"\r\n"
        self._literal_left = size
        if sync:
            events.append(ContinuationNeeded(tag, size, self._name))
            self._paused = True
        return True

    def _after_skipped_line(self, line: bytes) -> None:
        """A thrown-away line may announce a non-synchronising literal: throw it away too."""
        lit = _LITERAL_AT_END.search(line)
        if lit is not None and lit.group(3):
            self._skip_left = _literal_size(lit.group(2))
            self._discarding_command = True
        else:
            self._discarding_command = False

    def _line_too_long(self, start: bytes) -> ParseError:
        # Only the first max_line_length + 1 octets are looked at, and ``discarding`` is always
        # True (the rest of the line, and a LITERAL+ it announces, is swallowed whether or not
        # it has arrived yet), so that the event does not depend on how the input was split.
        tag = self._tag
        if not self._cmd:
            m = _TAG_BEFORE_SPACE.match(start[: self.max_line_length + 1])
            tag = m.group(1).decode("ascii") if m else None
        return ParseError(
            tag,
            f"line too long (limit {self.max_line_length} octets)",
            "TOOBIG",
            discarding=True,
        )


def _literal_size(digits: bytes) -> int:
    # More than 20 digits is beyond any limit; avoid int() on absurdly long digit strings.
    return int(digits) if len(digits) <= 20 else NUMBER64_MAX + 1


def _strip_eol(line: bytes) -> bytes:
    line = line[:-1] if line.endswith(b"\n") else line
    return line[:-1] if line.endswith(b"\r") else line


# --------------------------------------------------------------------------- grammar


class ImapSyntaxError(ValueError):
    """Raised by the public helpers (``parse_date`` ...); :func:`parse_command` never raises."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class _Reader:
    """Cursor over the bytes of one complete command (literals inline, as ``{n}\\r\\n...``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0

    # -- primitives

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def peek_is(self, s: bytes) -> bool:
        return self.data[self.pos : self.pos + len(s)].upper() == s

    def take(self, s: bytes) -> bool:
        if self.peek_is(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: bytes, what: str | None = None) -> None:
        if not self.take(s):
            raise ImapSyntaxError(f"expected {what or s.decode()!r}")

    def sp(self) -> None:
        if not self.take(b" "):
            raise ImapSyntaxError("expected a space" if not self.at_end() else "missing argument")

    def end(self) -> None:
        if not self.at_end():
            raise ImapSyntaxError("unexpected characters at end of command")

    def run(self, specials: frozenset[int]) -> bytes:
        start = self.pos
        data = self.data
        while self.pos < len(data) and data[self.pos] not in specials and data[self.pos] < 0x80:
            self.pos += 1
        return data[start : self.pos]

    def atom(self, what: str = "atom") -> str:
        a = self.run(_ATOM_SPECIALS)
        if not a:
            raise ImapSyntaxError(f"expected {what}")
        return a.decode("ascii")

    def number(self, maximum: int = NUMBER_MAX, *, nonzero: bool = False) -> int:
        start = self.pos
        while self.peek() in range(0x30, 0x3A):
            self.pos += 1
        digits = self.data[start : self.pos]
        if not digits:
            raise ImapSyntaxError("expected a number")
        if len(digits) > 20:
            raise ImapSyntaxError("number out of range")
        n = int(digits)
        if n > maximum:
            raise ImapSyntaxError("number out of range")
        if nonzero and n == 0:
            raise ImapSyntaxError("number must not be zero")
        return n

    # -- strings

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise ImapSyntaxError("unterminated quoted string")
            c = data[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(data) or data[self.pos] not in b'"\\':
                    raise ImapSyntaxError("bad escape in quoted string")
                out.append(data[self.pos])
                self.pos += 1
            elif c in (0x0D, 0x0A, 0x00):
                raise ImapSyntaxError("bad character in quoted string")
            else:
                out.append(c)

    def literal(self, *, allow8: bool = False) -> tuple[bytes, bool]:
        binary = self.take(b"~")
        if binary and not allow8:
            raise ImapSyntaxError("literal8 not allowed here")
        self.expect(b"{")
        n = self.number(NUMBER64_MAX)
        self.take(b"+")
        self.expect(b"}")
        self.expect(b"\r\n", "CRLF after literal size")
        if self.pos + n > len(self.data):
            raise ImapSyntaxError("truncated literal")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        if not binary and 0 in value:
            raise ImapSyntaxError("NUL in literal")  # RFC 9051 §4.3: use literal8 for binary
        return value, binary

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()[0]
        raise ImapSyntaxError("expected a string")

    def astring_bytes(self) -> bytes:
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        if self.peek_is(b"~{"):
            raise ImapSyntaxError("literal8 not allowed here")
        a = self.run(_ASTRING_SPECIALS)
        if not a:
            raise ImapSyntaxError("expected a string or atom")
        return a

    def astring(self) -> str:
        return _utf8(self.astring_bytes())

    def nstring(self) -> str | None:
        if self.take(b"NIL"):
            return None
        return _utf8(self.string())

    def mailbox(self) -> str:
        return self.astring()

    def list_mailbox(self) -> str:
        c = self.peek()
        if c in (0x22, 0x7B):
            return _utf8(self.string())
        a = self.run(_LIST_SPECIALS)
        if not a:
            raise ImapSyntaxError("expected a mailbox pattern")
        return a.decode("ascii")

    # -- structures

    def open_paren(self) -> None:
        self.expect(b"(")
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ImapSyntaxError("too deeply nested")

    def close_paren(self) -> None:
        if not self.take(b")"):
            raise ImapSyntaxError("unbalanced parentheses" if self.at_end() else "expected ')'")
        self.depth -= 1

    def flag(self) -> str:
        if self.take(b"\\"):
            if self.take(b"*"):
                raise ImapSyntaxError("\\* is not a flag")
            return "\\" + self.atom("flag")
        return self.atom("flag")

    def flag_list(self) -> tuple[str, ...]:
        self.open_paren()
        flags: list[str] = []
        if not self.take(b")"):
            flags.append(self.flag())
            while self.take(b" "):
                flags.append(self.flag())
            self.close_paren()
        else:
            self.depth -= 1
        return tuple(flags)

    def atom_list(self) -> tuple[str, ...]:
        """``"(" [atom *(SP atom)] ")"``, upper-cased."""
        self.open_paren()
        items: list[str] = []
        if self.take(b")"):
            self.depth -= 1
            return ()
        items.append(self.atom().upper())
        while self.take(b" "):
            items.append(self.atom().upper())
        self.close_paren()
        return tuple(items)

    def sequence_set(self) -> SequenceSet:
        raw = self.run(frozenset(range(256)) - _SEQ_CHARS)
        if not raw:
            raise ImapSyntaxError("expected a sequence set")
        return parse_sequence_set(raw.decode("ascii"))

    def date(self) -> dt.date:
        quoted = self.take(b'"')
        text = self.run(frozenset(b' ")(') | frozenset(range(0x20)))
        if quoted:
            self.expect(b'"')
        return parse_date(text.decode("ascii"))

    def date_time(self) -> dt.datetime:
        raw = self.quoted()
        return parse_date_time(raw.decode("ascii", "replace"))


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ImapSyntaxError("string is not valid UTF-8") from None


# --------------------------------------------------------------------------- public helpers


def parse_sequence_set(text: str) -> SequenceSet:
    """``1:*,3,5:7`` or ``$`` (RFC 9051 §9 sequence-set; 0 is not a valid number)."""
    if text == "$":
        return SequenceSet(saved=True)
    ranges: list[SeqRange] = []
    for item in text.split(","):
        bounds = item.split(":")
        if len(bounds) > 2 or not item:
            raise ImapSyntaxError("invalid sequence set")
        values = [_seq_number(b) for b in bounds]
        ranges.append(SeqRange(values[0], values[-1]))
    return SequenceSet(tuple(ranges))


def _seq_number(text: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        raise ImapSyntaxError("invalid sequence set")
    n = int(text)
    if n == 0 or n > NUMBER_MAX:
        raise ImapSyntaxError("invalid sequence number in sequence set")
    return n


def parse_date(text: str) -> dt.date:
    """RFC 9051 §9 date-text: ``d-MMM-yyyy`` (1 or 2 digit day)."""
    parts = text.split("-")
    if (
        len(parts) != 3
        or not (1 <= len(parts[0]) <= 2 and parts[0].isdigit())
        or parts[1].upper() not in _MONTHS
        or not (len(parts[2]) == 4 and parts[2].isdigit())
    ):
        raise ImapSyntaxError("invalid date")
    try:
        return dt.date(int(parts[2]), _MONTHS[parts[1].upper()], int(parts[0]))
    except ValueError:
        raise ImapSyntaxError("invalid date") from None


_DATE_TIME = re.compile(
    r"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})\Z", re.ASCII
)


def parse_date_time(text: str) -> dt.datetime:
    """RFC 9051 §9 date-time: ``"dd-MMM-yyyy hh:mm:ss +zzzz"`` (day may be space-padded)."""
    m = _DATE_TIME.match(text)
    if m is None or m.group(2).upper() not in _MONTHS:
        raise ImapSyntaxError("invalid date-time")
    day, _, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        offset = dt.timedelta(hours=int(zh), minutes=int(zm))
        tz = dt.timezone(-offset if sign == "-" else offset)
        return dt.datetime(
            int(year),
            _MONTHS[m.group(2).upper()],
            int(day.strip()),
            int(hh),
            int(mm),
            int(ss),
            tzinfo=tz,
        )
    except ValueError:
        raise ImapSyntaxError("invalid date-time") from None


def parse_command(data: bytes) -> Command | ParseError:
    """Parse one complete command (final CRLF removed, literals inline). Never raises."""
    r = _Reader(data)
    tag_raw = r.run(_ASTRING_SPECIALS | {ord("+")})
    tag = tag_raw.decode("ascii") if tag_raw else None
    try:
        if tag is None:
            raise ImapSyntaxError("missing or invalid tag")
        if not r.take(b" "):
            raise ImapSyntaxError("missing command")
        name = r.atom("command name").upper()
        return _dispatch(r, tag, name)
    except ImapSyntaxError as exc:
        return ParseError(tag, exc.text, exc.code)
    except (ValueError, IndexError, RecursionError, LookupError):  # defensive: fuzzing net
        return ParseError(tag, "invalid command")


_SIMPLE = frozenset(
    {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE"}
    | {"NAMESPACE", "IDLE"}
)
_MAILBOX_ONLY = frozenset({"DELETE", "SUBSCRIBE", "UNSUBSCRIBE", "GETQUOTAROOT"})


def _dispatch(r: _Reader, tag: str, name: str) -> Command:
    if name in _SIMPLE:
        r.end()
        return Simple(tag, name)
    if name == "UID":
        r.sp()
        sub = r.atom("command name").upper()
        if sub == "EXPUNGE":
            r.sp()
            uids = r.sequence_set()
            r.end()
            return Expunge(tag, uids)
        if sub not in ("FETCH", "SEARCH", "STORE", "COPY", "MOVE"):
            raise ImapSyntaxError(f"UID {sub} is not a UID command")
        return _dispatch_seq(r, tag, sub, uid=True)
    if name in ("FETCH", "SEARCH", "STORE", "COPY", "MOVE"):
        return _dispatch_seq(r, tag, name, uid=False)
    handler = _HANDLERS.get(name)
    if handler is None:
        return Unknown(tag, name)
    return handler(r, tag, name)


def _dispatch_seq(r: _Reader, tag: str, name: str, *, uid: bool) -> Command:
    if name == "SEARCH":
        return _search(r, tag, uid)
    r.sp()
    seq = r.sequence_set()
    r.sp()
    if name == "FETCH":
        return _fetch(r, tag, uid, seq)
    if name == "STORE":
        return _store(r, tag, uid, seq)
    mailbox = r.mailbox()
    r.end()
    return Copy(tag, name, uid, seq, mailbox)


# -- authentication and session


def _authenticate(r: _Reader, tag: str, name: str) -> Command:
    r.sp()
    mech = r.atom("SASL mechanism").upper()
    initial: str | None = None
    if r.take(b" "):
        raw = r.run(_ATOM_SPECIALS)
        if not raw or not re.fullmatch(rb"=|[A-Za-z0-9+/]+=*", raw):
            raise ImapSyntaxError("invalid initial response")
        initial = raw.decode("ascii")
    r.end()
    return Authenticate(tag, mech, initial)


def _login(r: _Reader, tag: str, name: str) -> Command:
    r.sp()
    user = r.astring()
    r.sp()
    password = r.astring()
    r.end()
    return Login(tag, user, password)


def _enable(r: _Reader, tag: str, name: str) -> Command:
    caps: list[str] = []
    while r.take(b" "):
        caps.append(r.atom("capability").upper())
    if not caps:
        raise ImapSyntaxError("ENABLE needs at least one capability")
    r.end()
    return Enable(tag, tuple(caps))


def _id(r: _Reader, tag: str, name: str) -> Command:
    r.sp()
    if r.take(b"NIL"):
        r.end()
        return Id(tag, None)
    r.open_paren()
    params: list[tuple[str, str | None]] = []
    if not r.take(b")"):
        while True:
            key = _utf8(r.string())
            r.sp()
            params.append((key, r.nstring()))
            if not r.take(b" "):
                break
        r.close_paren()
    r.end()
    return Id(tag, tuple(params))


# -- mailboxes


def _select(r: _Reader, tag: str, name: str) -> Command:
    r.sp()
    mailbox = r.mailbox()
    condstore = False
    qresync: QResyncParams | None = None
    if r.take(b" "):
        # RFC 7162 §3.1.8 / §3.2.5: select-param list
        r.open_paren()
        while True:
            param = r.atom("select parameter").upper()
            if param == "CONDSTORE":
                condstore = True
            elif param == "QRESYNC":
                r.sp()
                qresync = _qresync(r)
            else:
                raise ImapSyntaxError(f"unknown SELECT parameter {param}")
            if not r.take(b" "):
                break
        r.close_paren()
    r.end()
    return Select(tag, name, mailbox, condstore, qresync)


def _qresync(r: _Reader) -> QResyncParams:
    r.open_paren()
    uidvalidity = r.number(nonzero=True)
    r.sp()
    modseq = r.number(NUMBER64_MAX, nonzero=True)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if r.take(b" "):
        known = r.sequence_set()
        if known.saved:
            raise ImapSyntaxError("$ not allowed in QRESYNC")
        if r.take(b" "):
            r.open_paren()
            seqs = r.sequence_set()
            r.sp()
            uids = r.sequence_set()
            r.close_paren()
            match = (seqs, uids)
    r.close_paren()
    return QResyncParams(uidvalidity, modseq, known, match)


def _mailbox_only(r: _Reader, tag: str, name: str) -> Command:
    r.sp()
    mailbox = r.mailbox()
    r.end()
    return MailboxCommand(tag, name, mailbox)


def _create(r: _Reader, tag: str, name: str) -> Command:
    r.sp()
    mailbox = r.mailbox()
    use: tuple[str, ...] = ()
    if r.take(b" "):
        r.open_paren()
        r.expect(b"USE", "USE")
        r.sp()
        use = r.flag_list()
        r.close_paren()
    r.end()
    return Create(tag, mailbox, use)


def _rename(r: _Reader, tag: str, name: str) -> Command:
    r.sp()
    old = r.mailbox()
    r.sp()
    new = r.mailbox()
    r.end()
    return Rename(tag, old, new)


_STATUS_ITEMS = frozenset(
    {"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT"}
    | {"HIGHESTMODSEQ", "APPENDLIMIT", "MAILBOXID"}
)


def _status_items(r: _Reader) -> tuple[str, ...]:
    items = r.atom_list()
    if not items:
        raise ImapSyntaxError("STATUS needs at least one item")
    for item in items:
        if item not in _STATUS_ITEMS:
            raise ImapSyntaxError(f"unknown STATUS item {item}")
    return items


def _status(r: _Reader, tag: str, name: str) -> Command:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    items = _status_items(r)
    r.end()
    return Status(tag, mailbox, items)


def _list(r: _Reader, tag: str, name: str) -> Command:
    # RFC 5258 §6: list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
    #                     [SP list-return-opts]
    r.sp()
    selection: tuple[str, ...] = ()
    if name == "LIST" and r.peek() == ord("("):
        selection = r.atom_list()
        r.sp()
    reference = r.mailbox()
    r.sp()
    patterns: list[str] = []
    if name == "LIST" and r.peek() == ord("("):
        r.open_paren()
        patterns.append(r.list_mailbox())
        while r.take(b" "):
            patterns.append(r.list_mailbox())
        r.close_paren()
    else:
        patterns.append(r.list_mailbox())
    returns: list[str] = []
    status: tuple[str, ...] | None = None
    if name == "LIST" and r.take(b" "):
        r.expect(b"RETURN", "RETURN")
        r.sp()
        r.open_paren()
        if not r.take(b")"):
            while True:
                opt = r.atom("return option").upper()
                returns.append(opt)
                if opt == "STATUS":  # RFC 5819
                    r.sp()
                    status = _status_items(r)
                if not r.take(b" "):
                    break
            r.close_paren()
        else:
            r.depth -= 1
    r.end()
    return ListCommand(tag, name, reference, tuple(patterns), selection, tuple(returns), status)


def _append(r: _Reader, tag: str, name: str) -> Command:
    r.sp()
    mailbox = r.mailbox()
    messages: list[AppendMessage] = []
    while r.take(b" "):
        flags: tuple[str, ...] = ()
        when: dt.datetime | None = None
        if r.peek() == ord("("):
            flags = r.flag_list()
            r.sp()
        if r.peek() == ord('"'):
            when = r.date_time()
            r.sp()
        if r.peek() not in (ord("{"), ord("~")):
            raise ImapSyntaxError("APPEND message must be a literal")
        data, binary = r.literal(allow8=True)
        messages.append(AppendMessage(flags, when, data, binary))
    if not messages:
        raise ImapSyntaxError("APPEND needs a message")
    r.end()
    return Append(tag, mailbox, tuple(messages))


def _getquota(r: _Reader, tag: str, name: str) -> Command:
    r.sp()
    root = r.astring()
    r.end()
    return GetQuota(tag, root)


# -- SEARCH


_SEARCH_NOARG = frozenset(
    {"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN"}
    | {"UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"}
)
_SEARCH_STRING = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_SEARCH_DATE = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


class _SearchReader:
    def __init__(self, r: _Reader, charset: str | None) -> None:
        self.r = r
        self.charset = charset

    def text(self) -> str:
        raw = self.r.astring_bytes()
        if self.charset is None:
            return _utf8(raw)
        try:
            return raw.decode(self.charset)
        except UnicodeDecodeError:
            raise ImapSyntaxError(f"string is not valid {self.charset}") from None

    def key(self) -> SearchKey:
        r = self.r
        c = r.peek()
        if c == ord("("):
            r.open_paren()
            keys = [self.key()]
            while r.take(b" "):
                keys.append(self.key())
            r.close_paren()
            return SearchAnd(tuple(keys))
        if c in _SEQ_CHARS:
            return SearchSeqKey(r.sequence_set())
        word = r.atom("search key").upper()
        if word in _SEARCH_NOARG:
            return SearchFlagKey(word)
        r.sp()
        if word in _SEARCH_STRING:
            return SearchTextKey(word, self.text())
        if word in ("KEYWORD", "UNKEYWORD"):
            return SearchTextKey(word, r.atom("keyword"))
        if word in _SEARCH_DATE:
            return SearchDateKey(word, r.date())
        if word in ("LARGER", "SMALLER"):
            return SearchNumberKey(word, r.number(NUMBER64_MAX))
        if word in ("OLDER", "YOUNGER"):  # RFC 5032
            return SearchNumberKey(word, r.number(nonzero=True))
        if word == "HEADER":
            field_name = r.astring()
            r.sp()
            return SearchHeaderKey(field_name.upper(), self.text())
        if word == "UID":
            return SearchSeqKey(r.sequence_set(), uid=True)
        if word == "NOT":
            r.depth += 1
            if r.depth > MAX_NESTING:
                raise ImapSyntaxError("too deeply nested")
            inner = self.key()
            r.depth -= 1
            return SearchNot(inner)
        if word == "OR":
            r.depth += 1
            if r.depth > MAX_NESTING:
                raise ImapSyntaxError("too deeply nested")
            left = self.key()
            r.sp()
            right = self.key()
            r.depth -= 1
            return SearchOr(left, right)
        if word == "MODSEQ":  # RFC 7162 §3.1.5
            if r.peek() == ord('"'):
                entry = _utf8(r.quoted())
                r.sp()
                entry_type = r.atom("entry type").lower()
                if entry_type not in ("priv", "shared", "all"):
                    raise ImapSyntaxError("invalid MODSEQ entry type")
                r.sp()
                return SearchModSeqKey(r.number(NUMBER64_MAX), entry, entry_type)
            return SearchModSeqKey(r.number(NUMBER64_MAX))
        raise ImapSyntaxError(f"unknown search key {word}")


def _search(r: _Reader, tag: str, uid: bool) -> Command:
    r.sp()
    returns: tuple[str, ...] | None = None
    if r.take(b"RETURN "):  # RFC 4731 §3
        returns = r.atom_list()
        for opt in returns:
            if opt not in _SEARCH_RETURN:
                raise ImapSyntaxError(f"unknown SEARCH RETURN option {opt}")
        r.sp()
    charset: str | None = None
    if r.take(b"CHARSET "):
        name = r.astring().upper()
        if name not in ("UTF-8", "US-ASCII"):
            try:
                codecs.lookup(name)
            except LookupError:
                raise ImapSyntaxError(f"unsupported charset {name}", "BADCHARSET") from None
        charset = name
        r.sp()
    # RFC 9051 §6.4.4: no CHARSET means UTF-8 (US-ASCII is a subset)
    sr = _SearchReader(r, None if charset in (None, "UTF-8", "US-ASCII") else charset)
    keys = [sr.key()]
    while r.take(b" "):
        keys.append(sr.key())
    if not r.at_end():
        if r.peek() == ord(")"):
            raise ImapSyntaxError("unbalanced parentheses")
        raise ImapSyntaxError("unexpected characters at end of command")
    return Search(tag, uid, charset, SearchAnd(tuple(keys)), returns)


# -- FETCH


_FETCH_SIMPLE = frozenset(
    {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "UID", "MODSEQ"}
    | {"RFC822", "RFC822.HEADER", "RFC822.TEXT"}
)
_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_NAME_CHARS = frozenset(range(256)) - frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789."
)


def _section(r: _Reader, *, binary: bool) -> Section:
    # RFC 9051 §9: section-spec = section-msgtext / (section-part ["." section-text])
    r.expect(b"[")
    part: list[int] = []
    text: str | None = None
    fields: tuple[str, ...] = ()
    dot = False
    while r.peek() in range(0x30, 0x3A):
        part.append(r.number(nonzero=True))
        dot = r.take(b".")
        if not dot:
            break
    if r.peek() == ord("]"):
        if dot:
            raise ImapSyntaxError("invalid section")
    else:
        if binary:
            raise ImapSyntaxError("BINARY section takes part numbers only")
        if part and not dot:
            raise ImapSyntaxError("invalid section")
        word = r.run(_FETCH_NAME_CHARS).decode("ascii").upper()
        if word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            r.sp()
            r.open_paren()
            names = [r.astring().upper()]
            while r.take(b" "):
                names.append(r.astring().upper())
            r.close_paren()
            fields = tuple(names)
        elif word not in ("HEADER", "TEXT", "MIME"):
            raise ImapSyntaxError("invalid section")
        if word == "MIME" and not part:
            raise ImapSyntaxError("MIME needs a part number")
        text = word
    if not r.take(b"]"):
        raise ImapSyntaxError("invalid section")
    return Section(tuple(part), text, fields)


def _partial(r: _Reader) -> tuple[int, int] | None:
    if not r.take(b"<"):
        return None
    origin = r.number()
    r.expect(b".")
    length = r.number(nonzero=True)
    r.expect(b">")
    return (origin, length)


def _fetch_attr(r: _Reader) -> FetchAttr:
    word = r.run(_FETCH_NAME_CHARS).decode("ascii").upper()
    if word in _FETCH_SIMPLE:
        return FetchAttr(word)
    if word == "BODY" and r.peek() != ord("["):
        return FetchAttr("BODY")
    if word in ("BODY", "BODY.PEEK"):
        section = _section(r, binary=False)
        return FetchAttr("BODY", section, _partial(r), peek=word == "BODY.PEEK")
    if word in ("BINARY", "BINARY.PEEK"):  # RFC 3516 / RFC 9051
        section = _section(r, binary=True)
        return FetchAttr("BINARY", section, _partial(r), peek=word == "BINARY.PEEK")
    if word == "BINARY.SIZE":
        return FetchAttr("BINARY.SIZE", _section(r, binary=True))
    raise ImapSyntaxError(
        f"unknown fetch attribute {word}" if word else "expected a fetch attribute"
    )


def _fetch(r: _Reader, tag: str, uid: bool, seq: SequenceSet) -> Command:
    attrs: list[FetchAttr] = []
    macro: str | None = None
    if r.peek() == ord("("):
        r.open_paren()
        attrs.append(_fetch_attr(r))
        while r.take(b" "):
            attrs.append(_fetch_attr(r))
        r.close_paren()
    else:
        start = r.pos
        word = r.run(_FETCH_NAME_CHARS).decode("ascii").upper()
        if word in _FETCH_MACROS:
            macro = word
            attrs.extend(FetchAttr(n) for n in _FETCH_MACROS[word])
        else:
            r.pos = start
            attrs.append(_fetch_attr(r))
    changed_since: int | None = None
    vanished = False
    if r.take(b" "):
        # RFC 7162 §3.1.4.1 / §3.2.6: fetch-modifiers
        r.open_paren()
        while True:
            mod = r.atom("fetch modifier").upper()
            if mod == "CHANGEDSINCE":
                r.sp()
                changed_since = r.number(NUMBER64_MAX, nonzero=True)
            elif mod == "VANISHED":
                vanished = True
            else:
                raise ImapSyntaxError(f"unknown fetch modifier {mod}")
            if not r.take(b" "):
                break
        r.close_paren()
    r.end()
    if vanished and (not uid or changed_since is None):
        # RFC 7162 §3.2.6: VANISHED needs UID FETCH and CHANGEDSINCE
        raise ImapSyntaxError("VANISHED requires UID FETCH with CHANGEDSINCE")
    # RFC 9051 §6.4.9: UID FETCH always returns UID; the server adds it, not the parser.
    return Fetch(tag, uid, seq, tuple(attrs), changed_since, vanished, macro)


# -- STORE


def _store(r: _Reader, tag: str, uid: bool, seq: SequenceSet) -> Command:
    unchanged: int | None = None
    if r.peek() == ord("("):
        # RFC 7162 §3.1.3: store-modifier
        r.open_paren()
        r.expect(b"UNCHANGEDSINCE", "UNCHANGEDSINCE")
        r.sp()
        unchanged = r.number(NUMBER64_MAX)
        r.close_paren()
        r.sp()
    mode = ""
    if r.take(b"+"):
        mode = "+"
    elif r.take(b"-"):
        mode = "-"
    r.expect(b"FLAGS", "FLAGS")
    silent = r.take(b".SILENT")
    r.sp()
    if r.peek() == ord("("):
        flags = r.flag_list()
    else:
        items = [r.flag()]
        while r.take(b" "):
            items.append(r.flag())
        flags = tuple(items)
    r.end()
    return Store(tag, uid, seq, mode, silent, flags, unchanged)


_HANDLERS = {
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ENABLE": _enable,
    "ID": _id,
    "SELECT": _select,
    "EXAMINE": _select,
    "CREATE": _create,
    "RENAME": _rename,
    "STATUS": _status,
    "LIST": _list,
    "LSUB": _list,
    "APPEND": _append,
    "GETQUOTA": _getquota,
    **dict.fromkeys(_MAILBOX_ONLY, _mailbox_only),
}

__all__ = [
    "LITERAL_MINUS_MAX",
    "MAX_COMMAND_SIZE",
    "MAX_LINE_LENGTH",
    "MAX_LITERAL_SIZE",
    "MAX_NESTING",
    "CommandParser",
    "ImapSyntaxError",
    "parse_command",
    "parse_date",
    "parse_date_time",
    "parse_sequence_set",
]
