"""SMTP server-side protocol: command lines, paths and the DATA stream (sans-I/O).

Nothing here reads a socket: :mod:`mta.smtpd` feeds bytes in and sends the replies out, so every
rule below is unit-tested and fuzzable on its own.

Command lines (RFC 5321 §4.1.1, §2.3.8, §4.5.3.1.4):

- a command ends with CRLF. A bare LF (or a CR not followed by LF) anywhere in a command is refused
  with :data:`~mta.replies.BARE_LF` / :data:`~mta.replies.BARE_CR` and the connection is closed,
  as Postfix 3.9 does with ``smtpd_forbid_bare_newline = reject``: a peer whose line endings
  disagree with ours is how SMTP smuggling starts;
- a command line is at most :data:`MAX_COMMAND_LINE` octets, CRLF included (RFC 5321 allows 512;
  SMTPUTF8 addresses and DSN parameters need more, Postfix allows 2048 as well);
- the verb is ASCII letters, compared case-insensitively; the argument must be UTF-8 (RFC 6531),
  anything else is refused with 500 5.5.2 before it reaches the policy, the logs or the audit.

DATA (RFC 5321 §4.1.1.4, §4.5.2): :class:`DataReader` removes the transparency dots and finds the
end of data, which is ``<CRLF>.<CRLF>`` and nothing else. Every line of the content must end in
CRLF: a bare LF or a bare CR anywhere is refused once the data is over (the whole message is read
first, so the end of data is never guessed from a malformed line). This makes every "smuggling"
variant (``<LF>.<LF>``, ``<LF>.<CR><LF>``, ``<CR>.<CR>``, ``<CR><LF>.<LF>``...) a refused message:
nothing that follows can be taken for a second message, and nothing we store or relay carries
line endings another MTA could read differently. Lines may be longer than RFC 5321's 1000 octets
(Postfix accepts them too, real software sends them); the size of the message is bounded instead.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from mta import replies
from mta.replies import Reply

MAX_COMMAND_LINE: Final = 2048
"""Octets in a command line, CRLF included."""

_VERB_RE: Final = re.compile(rb"[A-Za-z]{1,16}")


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  # upper case
    argument: str  # "" when none; leading/trailing spaces removed


def check_line_ending(line: bytes) -> Reply | None:
    """``line`` is a complete command line as read (up to and including its first LF). The reply
    refusing it when its line ending is not CRLF or it holds a CR elsewhere, else None."""
    if not line.endswith(b"\r\n"):
        return replies.BARE_LF
    if b"\r" in line[:-2]:
        return replies.BARE_CR
    return None


def parse_command(line: bytes) -> Command | Reply:
    """A command line without its CRLF -> :class:`Command`, or the 500 reply for a line that is
    not a command (no verb, non-letters in the verb, NUL)."""
    if b"\0" in line:
        return replies.COMMAND_UNRECOGNIZED
    verb, _, argument = line.partition(b" ")
    if not _VERB_RE.fullmatch(verb):
        return replies.COMMAND_UNRECOGNIZED
    try:
        text = argument.strip(b" \t").decode("utf-8")
    except UnicodeDecodeError:
        return replies.INVALID_UTF8
    return Command(verb.decode("ascii").upper(), text)


# -- MAIL FROM / RCPT TO ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Path:
    address: str  # "" for the null reverse-path <>
    parameters: str  # the ESMTP parameters after the path, unparsed


def parse_path(argument: str, keyword: str) -> Path | Reply:
    """The argument of MAIL (``keyword`` "FROM:") or RCPT ("TO:") -> the address and the text of
    its parameters, or 501 5.5.4.

    ``<address>`` is the RFC 5321 form; like Postfix (``strict_rfc821_envelopes = no``) we also
    take a space after the colon and an address without angle brackets when no parameter follows
    (old software sends both). A source route (``<@a,@b:user@d>``, RFC 5321 §4.1.2 and C.) is
    removed, as the RFC tells receivers to. Quotes are not unfolded: a quoted local part is
    refused by the policy as no BAL can have one."""
    if argument[: len(keyword)].upper() != keyword:
        return replies.SYNTAX_ERROR
    rest = argument[len(keyword) :].lstrip(" ")
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            return replies.SYNTAX_ERROR
        address, parameters = rest[1:end], rest[end + 1 :]
        if parameters and not parameters.startswith(" "):
            return replies.SYNTAX_ERROR
    else:
        address, _, parameters = rest.partition(" ")
        if not address:
            return replies.SYNTAX_ERROR
    if address.startswith("@"):
        _, colon, address = address.partition(":")
        if not colon:
            return replies.SYNTAX_ERROR
    if any(c in address for c in " <>\t"):
        return replies.SYNTAX_ERROR
    return Path(address, parameters.strip(" "))


# -- DATA -------------------------------------------------------------------------------------------


class DataProblem(enum.StrEnum):
    NONE = "none"
    BARE_LF = "bare-lf"
    BARE_CR = "bare-cr"
    TOO_BIG = "too-big"


class DataReader:
    """Turns the octets that follow ``354`` into the message (dots removed) and finds its end.

    ``feed(data)`` returns ``(content, consumed)``: the message octets found in ``data`` and how
    many octets of ``data`` it used. Octets after ``<CRLF>.<CRLF>`` are the next commands of a
    pipelining client and are not consumed; neither are up to two final octets that cannot be
    judged yet (a CR that may start a CRLF, a "." or ".<CR>" at the start of a line): the caller
    keeps them and feeds them again, followed by what it reads next. Content
    is returned only while the message is acceptable; once a problem is seen (``problem``) the
    rest is consumed and dropped until the end marker, and ``size`` keeps counting.

    ``max_size`` bounds the content kept (octets after unstuffing); ``None``: unbounded.
    """

    __slots__ = ("_at_line_start", "done", "max_size", "problem", "size")

    def __init__(self, max_size: int | None = None) -> None:
        self.max_size = max_size
        self.size = 0
        self.done = False
        self.problem = DataProblem.NONE
        # The stream starts at the beginning of a line (right after "DATA<CRLF>").
        self._at_line_start = True

    def feed(self, data: bytes) -> tuple[bytes, int]:
        if self.done:
            return b"", 0
        out: list[bytes] = []
        pos = 0
        n = len(data)
        fast = True
        while pos < n:
            if fast and self._at_line_start and data[pos] != 0x2E:
                # Fast path: the whole lines before the next line that starts with a dot (or
                # the last LF), when every CR and LF in them pairs up as CRLF: one scan per
                # chunk instead of one step per line. Anything irregular goes the slow way.
                dot = data.find(b"\n.", pos)
                last = dot if dot >= 0 else data.rfind(b"\n", pos)
                if last > pos:
                    block = data[pos : last + 1]
                    crlf = block.count(b"\r\n")
                    if block.count(b"\n") == crlf and block.count(b"\r") == crlf:
                        out.append(block)
                        pos = last + 1
                        continue
                    fast = False
            if self._at_line_start and data[pos] == 0x2E:  # "."
                # Transparency (RFC 5321 §4.5.2) or the end marker.
                if data.startswith(b".\r\n", pos):
                    self.done = True
                    return self._emit(out), pos + 3
                if n - pos < 3 and b".\r\n".startswith(data[pos:]):
                    break  # "." or ".\r": undecided until more arrives; not consumed
                pos += 1  # drop the stuffed dot
                self._at_line_start = False
                continue
            lf = data.find(b"\n", pos)
            if lf < 0:
                # A CR at the very end may be the start of a CRLF: keep it for the next feed.
                end = n - 1 if data[n - 1] == 0x0D else n
                if end == pos:
                    break
                if b"\r" in data[pos:end]:
                    self._flag(DataProblem.BARE_CR)
                out.append(data[pos:end])
                self._at_line_start = False
                pos = end
                continue
            crlf = lf > pos and data[lf - 1] == 0x0D
            if not crlf:
                self._flag(DataProblem.BARE_LF)
            if b"\r" in data[pos : lf - 1 if crlf else lf]:
                self._flag(DataProblem.BARE_CR)
            out.append(data[pos : lf + 1])
            # Only a CRLF starts a line: after a bare LF, ".<CRLF>" is content, not the end of
            # data (the <LF>.<CR><LF> smuggling variant).
            self._at_line_start = crlf
            pos = lf + 1
        return self._emit(out), pos

    def _flag(self, problem: DataProblem) -> None:
        if self.problem is DataProblem.NONE:
            self.problem = problem

    def _emit(self, out: list[bytes]) -> bytes:
        content = b"".join(out)
        self.size += len(content)
        if (
            self.problem is DataProblem.NONE
            and self.max_size is not None
            and self.size > self.max_size
        ):
            self.problem = DataProblem.TOO_BIG
        return content if self.problem is DataProblem.NONE else b""


def data_refusal(problem: DataProblem, max_size: int) -> Reply:
    """The reply after the end of data for a message with ``problem``."""
    if problem is DataProblem.BARE_LF:
        return replies.BARE_LF
    if problem is DataProblem.BARE_CR:
        return replies.BARE_CR
    if problem is DataProblem.TOO_BIG:
        return replies.message_too_big(max_size)
    raise ValueError("no problem to refuse")
