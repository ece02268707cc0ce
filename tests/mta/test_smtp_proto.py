"""The pure SMTP server protocol: command lines, paths, and the DATA stream (RFC 5321 §4.1.1,
§4.5.2; the SMTP smuggling variants)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta import replies
from mta.smtp_proto import (
    Command,
    DataProblem,
    DataReader,
    Path,
    check_line_ending,
    parse_command,
    parse_path,
)


def read_all(stream: bytes, cuts: list[int] | None = None, max_size: int | None = None):
    """Feed ``stream`` cut at ``cuts``, as the server does: unconsumed octets are kept."""
    reader = DataReader(max_size)
    points = sorted({c for c in (cuts or []) if 0 < c < len(stream)})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    buffer = b""
    content = b""
    for i, chunk in enumerate(chunks):
        buffer += chunk
        out, used = reader.feed(buffer)
        content += out
        buffer = buffer[used:]
        if reader.done:
            return content, reader, buffer + b"".join(chunks[i + 1 :])
    return content, reader, buffer


def stuff(message: bytes) -> bytes:
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


# -- command lines -------------------------------------------------------------------------------


def test_command_line_must_end_with_crlf() -> None:
    assert check_line_ending(b"NOOP\r\n") is None
    assert check_line_ending(b"NOOP\n") == replies.BARE_LF
    assert check_line_ending(b"NO\rOP\r\n") == replies.BARE_CR


def test_verb_is_case_insensitive_and_argument_trimmed() -> None:
    assert parse_command(b"mail FROM:<a@b.fr>  ") == Command("MAIL", "FROM:<a@b.fr>")
    assert parse_command(b"QUIT") == Command("QUIT", "")


@pytest.mark.parametrize("line", [b"", b" NOOP", b"NO-OP", b"NOOP\0", b"\xc3\xa9HLO x"])
def test_not_a_command(line: bytes) -> None:
    assert parse_command(line) == replies.COMMAND_UNRECOGNIZED


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("FROM:<a@b.fr>", Path("a@b.fr", "")),
        ("from:<a@b.fr> SIZE=10 BODY=8BITMIME", Path("a@b.fr", "SIZE=10 BODY=8BITMIME")),
        ("FROM: <a@b.fr>", Path("a@b.fr", "")),  # a space after the colon, as Postfix takes it
        ("FROM:<>", Path("", "")),
        ("FROM:a@b.fr", Path("a@b.fr", "")),  # no brackets
        ("FROM:<@relay.fr,@other.fr:a@b.fr>", Path("a@b.fr", "")),  # source route removed
    ],
)
def test_mail_paths(argument: str, expected: Path) -> None:
    assert parse_path(argument, "FROM:") == expected


@pytest.mark.parametrize(
    "argument", ["TO:<a@b.fr>", "FROM:<a@b.fr", "FROM:<a b@c.fr>", "FROM:<a@b.fr>SIZE=1", "FROM:"]
)
def test_bad_mail_paths(argument: str) -> None:
    assert parse_path(argument, "FROM:") == replies.SYNTAX_ERROR


# -- DATA ----------------------------------------------------------------------------------------


def test_dots_are_removed_and_the_end_found() -> None:
    content, reader, rest = read_all(b"a\r\n..b\r\n.\r\nQUIT\r\n")
    assert content == b"a\r\n.b\r\n"
    assert reader.done
    assert reader.problem is DataProblem.NONE
    assert rest == b"QUIT\r\n"  # the next pipelined command is left for the session


def test_empty_message() -> None:
    content, reader, _ = read_all(b".\r\n")
    assert (content, reader.done) == (b"", True)


@pytest.mark.parametrize(
    ("stream", "problem"),
    [
        # The smuggling variants: none of them ends the data, every one is refused.
        (b"a\r\n\n.\nMAIL FROM:<x@y>\r\n.\r\n", DataProblem.BARE_LF),  # <LF>.<LF>
        (b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n", DataProblem.BARE_LF),  # <LF>.<CR><LF>
        (b"a\r.\rMAIL FROM:<x@y>\r\n.\r\n", DataProblem.BARE_CR),  # <CR>.<CR>
        (b"a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n", DataProblem.BARE_LF),  # <CR><LF>.<LF>
        (b"a\r.\r\nMAIL FROM:<x@y>\r\n.\r\n", DataProblem.BARE_CR),  # <CR>.<CR><LF>
        (b"Subject: x\nTo: y\r\n\r\nz\r\n.\r\n", DataProblem.BARE_LF),
        (b"z\r\r\n.\r\n", DataProblem.BARE_CR),
    ],
)
def test_smuggling_variants_are_one_refused_message(stream: bytes, problem: DataProblem) -> None:
    for cuts in ([], list(range(1, len(stream))), [3, 7]):
        content, reader, rest = read_all(stream, cuts)
        assert reader.done, "the data ends only at the final <CRLF>.<CRLF>"
        assert rest == b""
        assert reader.problem is problem
        # Nothing after the problem is passed on (the server drops what came before it).
        assert b"MAIL" not in content


def test_size_limit() -> None:
    _, reader, _ = read_all(b"x" * 100 + b"\r\n.\r\n", max_size=50)
    assert reader.done
    assert reader.problem is DataProblem.TOO_BIG
    assert reader.size == 102


message_lines = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=12,
)


@given(message_lines, st.lists(st.integers(min_value=0, max_value=600), max_size=8))
def test_any_clean_message_survives_any_cutting(lines: list[bytes], cuts: list[int]) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    content, reader, rest = read_all(stuff(message) + b".\r\nNEXT", cuts)
    assert reader.done
    assert reader.problem is DataProblem.NONE
    assert content == message
    assert rest == b"NEXT"


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=6))
def test_any_input_is_read_the_same_whatever_the_cuts(data: bytes, cuts: list[int]) -> None:
    whole = read_all(data + b"\r\n.\r\n")
    cut = read_all(data + b"\r\n.\r\n", cuts)
    assert (whole[0], whole[1].problem, whole[1].done) == (cut[0], cut[1].problem, cut[1].done)
