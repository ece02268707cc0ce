"""The pure IMAP command parser: framing (literals, limits, IDLE) and RFC 9051 §9 grammar."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imap.model import (
    Append,
    AppendMessage,
    Authenticate,
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
from imap.parser import (
    MAX_NESTING,
    CommandParser,
    ImapSyntaxError,
    parse_command,
    parse_date,
    parse_date_time,
    parse_sequence_set,
)


def one(line: bytes) -> object:
    """Feed one command (CRLF added) through the framer and return its single event."""
    events = CommandParser().feed(line + b"\r\n")
    assert len(events) == 1, events
    return events[0]


def feed_all(parser: CommandParser, data: bytes) -> list[Event]:
    """Feed everything, resuming after pauses (continuation / IDLE) like a server would."""
    events = parser.feed(data)
    while True:
        more = parser.feed(b"")
        if not more:
            return events
        events += more


def seq(*ranges: tuple[int | None, int | None]) -> SequenceSet:
    return SequenceSet(tuple(SeqRange(a, b) for a, b in ranges))


def bad(event: object) -> ParseError:
    assert isinstance(event, ParseError), event
    return event


# --------------------------------------------------------------------------- simple commands


@pytest.mark.parametrize(
    "name",
    ["CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE",
     "NAMESPACE"],
)  # fmt: skip
def test_argumentless_commands_parse_to_simple(name: str) -> None:
    assert one(f"a1 {name}".encode()) == Simple("a1", name)


def test_command_names_are_case_insensitive() -> None:
    assert one(b"a1 noop") == Simple("a1", "NOOP")


def test_argumentless_command_with_arguments_is_bad() -> None:
    assert bad(one(b"a1 NOOP now")).tag == "a1"


def test_unknown_command_keeps_tag_and_name() -> None:
    assert one(b"x7 XYZZY 1 2") == Unknown("x7", "XYZZY")


def test_missing_tag_gives_untagged_bad() -> None:
    assert bad(one(b"+ NOOP")).tag is None
    assert bad(one(b"*")).tag is None


def test_tag_without_command_is_bad_with_tag() -> None:
    assert bad(one(b"a1")).tag == "a1"


def test_empty_lines_are_ignored() -> None:
    assert CommandParser().feed(b"\r\n\r\na NOOP\r\n") == [Simple("a", "NOOP")]


def test_bare_lf_ends_a_line() -> None:
    assert CommandParser().feed(b"a NOOP\n") == [Simple("a", "NOOP")]


# --------------------------------------------------------------------------- strings


def test_login_with_atoms() -> None:
    assert one(b"a LOGIN bob secret") == Login("a", "bob", "secret")


def test_quoted_string_unescapes_quote_and_backslash() -> None:
    assert one(b'a LOGIN "bob smith" "p\\"w\\\\d"') == Login("a", "bob smith", 'p"w\\d')


def test_quoted_string_with_bad_escape_is_bad() -> None:
    assert bad(one(b'a LOGIN "a\\b" x')).text == "bad escape in quoted string"


def test_unterminated_quoted_string_is_bad() -> None:
    assert bad(one(b'a LOGIN "abc')).text == "unterminated quoted string"


def test_astring_may_contain_close_bracket() -> None:
    assert one(b"a LOGIN a]b c") == Login("a", "a]b", "c")


def test_utf8_mailbox_name_is_kept_as_str() -> None:
    assert one('a DELETE "Boîte"'.encode()) == MailboxCommand("a", "DELETE", "Boîte")


def test_invalid_utf8_string_is_bad() -> None:
    assert bad(one(b'a DELETE "\xff"')).text == "string is not valid UTF-8"


# --------------------------------------------------------------------------- literals


def test_synchronising_literal_asks_for_continuation_before_the_octets() -> None:
    p = CommandParser()
    assert p.feed(b"a LOGIN {3}\r\n") == [ContinuationNeeded("a", 3, "LOGIN")]
    assert p.feed(b"bob {2}\r\n") == [ContinuationNeeded("a", 2, "LOGIN")]
    assert p.feed(b"pw\r\n") == [Login("a", "bob", "pw")]


def test_literal_containing_crlf_and_parentheses() -> None:
    p = CommandParser()
    data = b"a APPEND INBOX {13}\r\n(x)\r\n) ((\r\n\r\n\r\n"
    events = feed_all(p, data)
    assert events == [
        ContinuationNeeded("a", 13, "APPEND"),
        Append("a", "INBOX", (AppendMessage((), None, b"(x)\r\n) ((\r\n\r\n"),)),
    ]


def test_non_synchronising_literal_needs_no_continuation() -> None:
    # RFC 7888 LITERAL+
    assert CommandParser().feed(b"a LOGIN {3+}\r\nbob {2+}\r\npw\r\n") == [Login("a", "bob", "pw")]


def test_zero_length_literal() -> None:
    assert CommandParser().feed(b"a LOGIN {0+}\r\n {1+}\r\nx\r\n") == [Login("a", "", "x")]


def test_parser_pauses_after_continuation_until_next_feed() -> None:
    p = CommandParser()
    # a client that does not wait: the octets stay buffered until the server resumes
    assert p.feed(b"a LOGIN {3}\r\nbob x\r\n") == [ContinuationNeeded("a", 3, "LOGIN")]
    assert p.feed(b"") == [Login("a", "bob", "x")]


def test_continuation_names_the_command_so_the_server_can_refuse_it() -> None:
    p = CommandParser()
    assert p.feed(b"a uid search subject {4}\r\n") == [ContinuationNeeded("a", 4, "UID SEARCH")]


def test_rejected_synchronising_literal_drops_the_command() -> None:
    p = CommandParser()
    assert p.feed(b"a APPEND INBOX {99}\r\n") == [ContinuationNeeded("a", 99, "APPEND")]
    p.reject_literal()
    assert p.feed(b"b NOOP\r\n") == [Simple("b", "NOOP")]


def test_synchronising_literal_over_limit_is_refused_before_the_data() -> None:
    p = CommandParser(max_literal_size=10)
    assert p.feed(b"a APPEND INBOX {11}\r\n") == [
        ParseError("a", "literal too large (limit 10 octets)", "TOOBIG", discarding=False)
    ]
    # the client was never told to go ahead: the next line is a new command
    assert p.feed(b"b NOOP\r\n") == [Simple("b", "NOOP")]


def test_non_synchronising_literal_over_limit_is_discarded_with_the_rest_of_the_command() -> None:
    p = CommandParser(max_literal_size=10)
    events = p.feed(b"a APPEND INBOX {20+}\r\n" + b"(" * 20 + b" {3+}\r\nabc\r\nb NOOP\r\n")
    assert events == [
        ParseError("a", "literal too large (limit 10 octets)", "TOOBIG", discarding=True),
        Simple("b", "NOOP"),
    ]


def test_command_over_total_limit_is_refused() -> None:
    p = CommandParser(max_literal_size=100, max_command_size=50)
    events = feed_all(p, b"a APPEND x {30+}\r\n" + b"x" * 30 + b" {30+}\r\n" + b"y" * 30 + b"\r\n")
    assert bad(events[0]).code == "TOOBIG"
    assert bad(events[0]).text == "command too large (limit 50 octets)"
    assert len(events) == 1


def test_client_disconnecting_mid_literal_is_no_command_yet() -> None:
    p = CommandParser()
    assert p.feed(b"a LOGIN {3+}\r\nbo") == []
    assert p.pending


def test_literal8_in_append() -> None:
    # RFC 3516 §4.4: APPEND with ~{n}
    events = CommandParser().feed(b"a APPEND INBOX ~{3+}\r\n\x00\x01\x02\r\n")
    assert events == [Append("a", "INBOX", (AppendMessage((), None, b"\x00\x01\x02", True),))]


def test_literal8_outside_append_is_bad() -> None:
    events = CommandParser().feed(b"a LOGIN ~{1+}\r\nx y\r\n")
    assert bad(events[0]).text == "literal8 not allowed here"


def test_nul_in_ordinary_literal_is_bad() -> None:
    events = CommandParser().feed(b"a APPEND INBOX {1+}\r\n\x00\r\n")
    assert bad(events[0]).text == "NUL in literal"


def test_literal_split_at_every_byte_boundary() -> None:
    data = b"a LOGIN {3+}\r\nb\r\n {4}\r\n(\r\n)\r\nb NOOP\r\n"
    expected = [
        ContinuationNeeded("a", 4, "LOGIN"),
        Login("a", "b\r\n", "(\r\n)"),
        Simple("b", "NOOP"),
    ]
    for cut in range(len(data) + 1):
        p = CommandParser()
        events = feed_all(p, data[:cut]) + feed_all(p, data[cut:])
        assert events == expected, cut


def test_literal_fed_one_byte_at_a_time() -> None:
    data = b"a APPEND INBOX (\\Seen) {5}\r\nhello\r\n"
    p = CommandParser()
    events: list[Event] = []
    for i in range(len(data)):
        events += p.feed(data[i : i + 1])
    assert events == [
        ContinuationNeeded("a", 5, "APPEND"),
        Append("a", "INBOX", (AppendMessage(("\\Seen",), None, b"hello"),)),
    ]


# --------------------------------------------------------------------------- line limits


def test_over_long_line_is_refused_and_discarded_until_crlf() -> None:
    p = CommandParser(max_line_length=20)
    events = p.feed(b"a1 LOGIN " + b"x" * 40)
    assert events == [
        ParseError("a1", "line too long (limit 20 octets)", "TOOBIG", discarding=True)
    ]
    assert p.feed(b"y" * 100 + b"\r\nb NOOP\r\n") == [Simple("b", "NOOP")]


def test_over_long_complete_line_is_refused() -> None:
    p = CommandParser(max_line_length=20)
    assert p.feed(b"a1 LOGIN " + b"x" * 40 + b"\r\nb NOOP\r\n") == [
        ParseError("a1", "line too long (limit 20 octets)", "TOOBIG", discarding=True),
        Simple("b", "NOOP"),
    ]


def test_over_long_line_announcing_literal_plus_also_discards_the_literal() -> None:
    p = CommandParser(max_line_length=20)
    events = p.feed(b"a1 LOGIN " + b"x" * 40 + b" {5+}\r\n(((((\r\nb NOOP\r\n")
    assert events[1:] == [Simple("b", "NOOP")]
    assert bad(events[0]).discarding


# --------------------------------------------------------------------------- IDLE


def test_idle_then_done() -> None:
    p = CommandParser()
    assert p.feed(b"a IDLE\r\n") == [Simple("a", "IDLE")]
    assert p.idling
    assert p.feed(b"done\r\n") == [IdleDone()]
    assert not p.idling


def test_anything_but_done_while_idling_is_bad() -> None:
    p = CommandParser()
    p.feed(b"a IDLE\r\n")
    assert p.feed(b"b NOOP\r\n") == [ParseError(None, "expected DONE to end IDLE")]


def test_over_long_line_while_idling_ends_idle() -> None:
    p = CommandParser(max_line_length=10)
    p.feed(b"a IDLE\r\n")
    assert p.feed(b"x" * 20) == [ParseError(None, "expected DONE to end IDLE")]
    assert p.feed(b"x\r\nb NOOP\r\n") == [Simple("b", "NOOP")]


def test_refused_idle_returns_to_commands() -> None:
    p = CommandParser()
    assert p.feed(b"a IDLE\r\nb NOOP\r\n") == [Simple("a", "IDLE")]
    p.end_idle()
    assert p.feed(b"") == [Simple("b", "NOOP")]


# --------------------------------------------------------------------------- sequence sets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", seq((1, 1))),
        ("1:*", seq((1, None))),
        ("*", seq((None, None))),
        ("*:4", seq((None, 4))),
        ("7:5", seq((7, 5))),
        ("1:*,3,5:7", seq((1, None), (3, 3), (5, 7))),
        ("4294967295", seq((4294967295, 4294967295))),
        ("$", SequenceSet(saved=True)),
    ],
)
def test_valid_sequence_sets(text: str, expected: SequenceSet) -> None:
    assert parse_sequence_set(text) == expected


@pytest.mark.parametrize(
    "text", ["0", "1:0", "0:*", "1,", ",1", "1::2", "1:2:3", "4294967296", "$,1", "1:$", ""]
)
def test_invalid_sequence_sets(text: str) -> None:
    with pytest.raises(ImapSyntaxError):
        parse_sequence_set(text)


def test_invalid_sequence_set_in_command_is_bad() -> None:
    assert bad(one(b"a FETCH 0:3 FLAGS")).tag == "a"


# --------------------------------------------------------------------------- dates


def test_date_with_one_and_two_digit_days() -> None:
    assert parse_date("1-Feb-2024") == dt.date(2024, 2, 1)
    assert parse_date("29-feb-2024") == dt.date(2024, 2, 29)


@pytest.mark.parametrize("text", ["30-Feb-2024", "1-Fob-2024", "1-Feb-24", "001-Feb-2024", ""])
def test_invalid_dates(text: str) -> None:
    with pytest.raises(ImapSyntaxError):
        parse_date(text)


def test_date_time_with_space_padded_day_and_zone() -> None:
    assert parse_date_time(" 5-Dec-2026 12:30:01 -0130") == dt.datetime(
        2026, 12, 5, 12, 30, 1, tzinfo=dt.timezone(-dt.timedelta(hours=1, minutes=30))
    )


@pytest.mark.parametrize(
    "text", ["5-Dec-2026 12:30:01 +0000", "05-Dec-2026 25:00:00 +0000", "05-Dec-2026 12:30 +0000"]
)
def test_invalid_date_times(text: str) -> None:
    with pytest.raises(ImapSyntaxError):
        parse_date_time(text)


# --------------------------------------------------------------------------- session commands


def test_authenticate_without_and_with_initial_response() -> None:
    assert one(b"a AUTHENTICATE xoauth2") == Authenticate("a", "XOAUTH2")
    assert one(b"a AUTHENTICATE PLAIN AGJvYgBwdw==") == Authenticate("a", "PLAIN", "AGJvYgBwdw==")
    assert one(b"a AUTHENTICATE PLAIN =") == Authenticate("a", "PLAIN", "=")


def test_authenticate_with_invalid_base64_is_bad() -> None:
    assert bad(one(b"a AUTHENTICATE PLAIN ab*c")).tag == "a"


def test_enable() -> None:
    assert one(b"a ENABLE CONDSTORE qresync") == Enable("a", ("CONDSTORE", "QRESYNC"))
    assert bad(one(b"a ENABLE")).text == "ENABLE needs at least one capability"


def test_id_with_parameters_and_nil() -> None:
    assert one(b'a ID ("name" "Thunderbird" "os" NIL)') == Id(
        "a", (("name", "Thunderbird"), ("os", None))
    )
    assert one(b"a ID NIL") == Id("a", None)


# --------------------------------------------------------------------------- mailboxes


def test_select_and_examine() -> None:
    assert one(b"a SELECT INBOX") == Select("a", "SELECT", "INBOX")
    assert one(b'a EXAMINE "Sent Items"') == Select("a", "EXAMINE", "Sent Items")


def test_select_condstore() -> None:
    assert one(b"a SELECT INBOX (CONDSTORE)") == Select("a", "SELECT", "INBOX", condstore=True)


def test_select_qresync_with_known_uids_and_sequence_match() -> None:
    # RFC 7162 §3.2.5 example
    cmd = b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541 (1:3 5:7)))"
    assert one(cmd) == Select(
        "a",
        "SELECT",
        "INBOX",
        qresync=QResyncParams(
            67890007,
            20050715194045000,
            seq((41, 41), (43, 211), (214, 541)),
            (seq((1, 3)), seq((5, 7))),
        ),
    )


def test_select_qresync_minimal() -> None:
    assert one(b"a SELECT INBOX (QRESYNC (1 2))") == Select(
        "a", "SELECT", "INBOX", qresync=QResyncParams(1, 2)
    )


def test_select_unknown_parameter_is_bad() -> None:
    assert bad(one(b"a SELECT INBOX (FOO)")).text == "unknown SELECT parameter FOO"


@pytest.mark.parametrize("name", ["DELETE", "SUBSCRIBE", "UNSUBSCRIBE", "GETQUOTAROOT"])
def test_single_mailbox_commands(name: str) -> None:
    assert one(f"a {name} Archive".encode()) == MailboxCommand("a", name, "Archive")


def test_create_with_special_use() -> None:
    assert one(b"a CREATE Drafts") == Create("a", "Drafts")
    assert one(b"a CREATE Drafts (USE (\\Drafts))") == Create("a", "Drafts", ("\\Drafts",))


def test_rename() -> None:
    assert one(b'a RENAME Old "New One"') == Rename("a", "Old", "New One")


def test_status() -> None:
    assert one(b"a STATUS INBOX (MESSAGES uidnext HIGHESTMODSEQ)") == Status(
        "a", "INBOX", ("MESSAGES", "UIDNEXT", "HIGHESTMODSEQ")
    )


def test_status_unknown_item_is_bad() -> None:
    assert bad(one(b"a STATUS INBOX (FOO)")).text == "unknown STATUS item FOO"


def test_basic_list_and_lsub() -> None:
    assert one(b'a LIST "" *') == ListCommand("a", "LIST", "", ("*",))
    assert one(b"a LIST ~/Mail/ %") == ListCommand("a", "LIST", "~/Mail/", ("%",))
    assert one(b'a LSUB "#news." "comp.mail.*"') == ListCommand(
        "a", "LSUB", "#news.", ("comp.mail.*",)
    )


def test_list_extended_with_selection_patterns_and_return_status() -> None:
    # RFC 5258 §6 / RFC 5819 / RFC 6154
    cmd = b'a LIST (SUBSCRIBED SPECIAL-USE) "" ("INBOX" Dra%) RETURN (CHILDREN STATUS (MESSAGES UNSEEN))'
    assert one(cmd) == ListCommand(
        "a",
        "LIST",
        "",
        ("INBOX", "Dra%"),
        ("SUBSCRIBED", "SPECIAL-USE"),
        ("CHILDREN", "STATUS"),
        ("MESSAGES", "UNSEEN"),
    )


def test_list_return_special_use_and_empty_return() -> None:
    assert one(b'a LIST "" % RETURN (SPECIAL-USE)') == ListCommand(
        "a", "LIST", "", ("%",), returns=("SPECIAL-USE",)
    )
    assert one(b'a LIST "" % RETURN ()') == ListCommand("a", "LIST", "", ("%",))


def test_getquota() -> None:
    assert one(b'a GETQUOTA ""') == GetQuota("a", "")


# --------------------------------------------------------------------------- APPEND


def test_append_with_flags_and_date_time() -> None:
    events = CommandParser().feed(
        b'a APPEND Sent (\\Seen $Label) "05-Dec-2026 12:00:00 +0100" {3+}\r\nabc\r\n'
    )
    when = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert events == [Append("a", "Sent", (AppendMessage(("\\Seen", "$Label"), when, b"abc"),))]


def test_multiappend() -> None:
    # RFC 3502
    events = CommandParser().feed(b"a APPEND x {1+}\r\n1 (\\Draft) {1+}\r\n2\r\n")
    assert events == [
        Append("a", "x", (AppendMessage((), None, b"1"), AppendMessage(("\\Draft",), None, b"2")))
    ]


def test_append_with_bad_date_is_bad() -> None:
    events = CommandParser().feed(b'a APPEND x "31-Feb-2026 12:00:00 +0100" {1+}\r\n1\r\n')
    assert bad(events[0]).text == "invalid date-time"


def test_append_with_quoted_message_is_bad() -> None:
    assert bad(one(b'a APPEND x "hello"')).tag == "a"


# --------------------------------------------------------------------------- SEARCH


def s(*keys: object) -> SearchAnd:
    return SearchAnd(tuple(keys))  # type: ignore[arg-type]


def test_search_all_simple_keys() -> None:
    words = ["ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN",
             "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"]  # fmt: skip
    assert one(("a SEARCH " + " ".join(words)).encode()) == Search(
        "a", False, None, s(*(SearchFlagKey(w) for w in words))
    )


def test_search_keys_with_arguments() -> None:
    cmd = (
        b'a SEARCH FROM "Dr Smith" TO bob CC x BCC y SUBJECT {2+}\r\nhi BODY b TEXT t '
        b'KEYWORD $Urgent UNKEYWORD $Junk BEFORE 1-Jan-2024 ON "2-Jan-2024" SINCE 3-Jan-2024 '
        b"SENTBEFORE 4-Jan-2024 SENTON 5-Jan-2024 SENTSINCE 6-Jan-2024 LARGER 100 "
        b"SMALLER 5000000000 OLDER 60 YOUNGER 30 HEADER Message-ID <x@y> UID 1:* 2,4:5"
    )
    (event,) = CommandParser().feed(cmd + b"\r\n")
    d = dt.date
    assert event == Search(
        "a",
        False,
        None,
        s(
            SearchTextKey("FROM", "Dr Smith"),
            SearchTextKey("TO", "bob"),
            SearchTextKey("CC", "x"),
            SearchTextKey("BCC", "y"),
            SearchTextKey("SUBJECT", "hi"),
            SearchTextKey("BODY", "b"),
            SearchTextKey("TEXT", "t"),
            SearchTextKey("KEYWORD", "$Urgent"),
            SearchTextKey("UNKEYWORD", "$Junk"),
            SearchDateKey("BEFORE", d(2024, 1, 1)),
            SearchDateKey("ON", d(2024, 1, 2)),
            SearchDateKey("SINCE", d(2024, 1, 3)),
            SearchDateKey("SENTBEFORE", d(2024, 1, 4)),
            SearchDateKey("SENTON", d(2024, 1, 5)),
            SearchDateKey("SENTSINCE", d(2024, 1, 6)),
            SearchNumberKey("LARGER", 100),
            SearchNumberKey("SMALLER", 5000000000),
            SearchNumberKey("OLDER", 60),
            SearchNumberKey("YOUNGER", 30),
            SearchHeaderKey("MESSAGE-ID", "<x@y>"),
            SearchSeqKey(seq((1, None)), uid=True),
            SearchSeqKey(seq((2, 2), (4, 5))),
        ),
    )


def test_search_nested_parentheses_or_and_not() -> None:
    cmd = b"a UID SEARCH OR (SEEN (FLAGGED NOT (FROM x))) NOT OR DELETED DRAFT"
    assert one(cmd) == Search(
        "a",
        True,
        None,
        s(
            SearchOr(
                s(
                    SearchFlagKey("SEEN"),
                    s(SearchFlagKey("FLAGGED"), SearchNot(s(SearchTextKey("FROM", "x")))),
                ),
                SearchNot(SearchOr(SearchFlagKey("DELETED"), SearchFlagKey("DRAFT"))),
            ),
        ),
    )


@pytest.mark.parametrize("cmd", [b"a SEARCH (SEEN", b"a SEARCH SEEN)", b"a SEARCH ((SEEN)"])
def test_search_unbalanced_parentheses_is_bad(cmd: bytes) -> None:
    assert bad(one(cmd)).text == "unbalanced parentheses"


def test_search_nesting_is_bounded() -> None:
    deep = b"a SEARCH " + b"(" * (MAX_NESTING + 1) + b"SEEN" + b")" * (MAX_NESTING + 1)
    assert bad(one(deep)).text == "too deeply nested"
    nots = b"a SEARCH " + b"NOT " * (MAX_NESTING + 1) + b"SEEN"
    assert bad(one(nots)).text == "too deeply nested"


def test_search_charset_and_esearch_return_options() -> None:
    # RFC 4731 §3, RFC 5182 SAVE
    assert one(b"a SEARCH RETURN (MIN MAX ALL COUNT SAVE) CHARSET UTF-8 SEEN") == Search(
        "a", False, "UTF-8", s(SearchFlagKey("SEEN")), ("MIN", "MAX", "ALL", "COUNT", "SAVE")
    )
    assert one(b"a SEARCH RETURN () SEEN") == Search("a", False, None, s(SearchFlagKey("SEEN")), ())


def test_search_non_utf8_charset_decodes_strings() -> None:
    assert one(b'a SEARCH CHARSET ISO-8859-1 SUBJECT "caf\xe9"') == Search(
        "a", False, "ISO-8859-1", s(SearchTextKey("SUBJECT", "café"))
    )


def test_search_unknown_charset_is_badcharset() -> None:
    err = bad(one(b"a SEARCH CHARSET X-NOPE SEEN"))
    assert (err.tag, err.code) == ("a", "BADCHARSET")


def test_search_saved_result_reference() -> None:
    assert one(b"a UID SEARCH UID $ SEEN") == Search(
        "a", True, None, s(SearchSeqKey(SequenceSet(saved=True), uid=True), SearchFlagKey("SEEN"))
    )


def test_search_modseq_with_and_without_entry() -> None:
    # RFC 7162 §3.1.5
    assert one(b'a SEARCH MODSEQ "/flags/\\\\draft" all 620162338') == Search(
        "a", False, None, s(SearchModSeqKey(620162338, "/flags/\\draft", "all"))
    )
    assert one(b"a SEARCH MODSEQ 0") == Search("a", False, None, s(SearchModSeqKey(0)))


@pytest.mark.parametrize(
    "cmd",
    [b"a SEARCH", b"a SEARCH FOO", b"a SEARCH SINCE 1-Foo-2024", b"a SEARCH LARGER x",
     b"a SEARCH OR SEEN", b"a SEARCH RETURN (BOGUS) ALL", b"a SEARCH 0"],
)  # fmt: skip
def test_malformed_search_is_bad(cmd: bytes) -> None:
    assert bad(one(cmd)).tag == "a"


# --------------------------------------------------------------------------- FETCH


def fa(name: str, **kw: object) -> FetchAttr:
    return FetchAttr(name, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("macro", "names"),
    [
        ("ALL", ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")),
        ("FAST", ("FLAGS", "INTERNALDATE", "RFC822.SIZE")),
        ("FULL", ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")),
    ],
)
def test_fetch_macros_expand(macro: str, names: tuple[str, ...]) -> None:
    assert one(f"a FETCH 1 {macro}".encode()) == Fetch(
        "a", False, seq((1, 1)), tuple(FetchAttr(n) for n in names), macro=macro
    )


def test_fetch_simple_attributes() -> None:
    names = (
        "FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY UID MODSEQ RFC822 "
        "RFC822.HEADER RFC822.TEXT"
    )
    assert one(f"a FETCH 1:* ({names.lower()})".encode()) == Fetch(
        "a", False, seq((1, None)), tuple(FetchAttr(n) for n in names.split())
    )


def test_fetch_single_attribute_without_parentheses() -> None:
    assert one(b"a FETCH 2 BODY[]") == Fetch(
        "a", False, seq((2, 2)), (fa("BODY", section=Section()),)
    )


def test_fetch_body_peek_header_fields_with_partial() -> None:
    assert one(b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>)") == Fetch(
        "a",
        False,
        seq((1, 1)),
        (
            fa(
                "BODY",
                section=Section((), "HEADER.FIELDS", ("FROM", "TO")),
                partial=(0, 100),
                peek=True,
            ),
        ),
    )


def test_fetch_sections() -> None:
    cmd = (
        b"a FETCH 1 (BODY[HEADER] BODY[TEXT] BODY[1.2.3] BODY[1.2.MIME] BODY[2.HEADER] "
        b'BODY[HEADER.FIELDS.NOT ("X-Spam" Received)] BODY[3.TEXT]<10.20>)'
    )
    attrs = one(cmd)
    assert isinstance(attrs, Fetch)
    assert [a.section for a in attrs.attributes] == [
        Section((), "HEADER"),
        Section((), "TEXT"),
        Section((1, 2, 3)),
        Section((1, 2), "MIME"),
        Section((2,), "HEADER"),
        Section((), "HEADER.FIELDS.NOT", ("X-SPAM", "RECEIVED")),
        Section((3,), "TEXT"),
    ]
    assert attrs.attributes[-1].partial == (10, 20)


def test_fetch_binary_items() -> None:
    # RFC 3516 / RFC 9051 §6.4.5
    assert one(b"a FETCH 1 (BINARY[1.2] BINARY.PEEK[]<0.10> BINARY.SIZE[3])") == Fetch(
        "a",
        False,
        seq((1, 1)),
        (
            fa("BINARY", section=Section((1, 2))),
            fa("BINARY", section=Section(), partial=(0, 10), peek=True),
            fa("BINARY.SIZE", section=Section((3,))),
        ),
    )


@pytest.mark.parametrize(
    "cmd",
    [b"a FETCH 1 (BODY[MIME])", b"a FETCH 1 BODY[1.]", b"a FETCH 1 BODY[0]", b"a FETCH 1 BODY[FOO]",
     b"a FETCH 1 BINARY[HEADER]", b"a FETCH 1 BODY[1]<5>", b"a FETCH 1 BODY.PEEK",
     b"a FETCH 1 BODY[HEADER.FIELDS ()]", b"a FETCH 1 BODY[HEADER"],
)  # fmt: skip
def test_invalid_sections_are_bad(cmd: bytes) -> None:
    assert bad(one(cmd)).tag == "a"


def test_unknown_fetch_attribute_is_bad() -> None:
    assert bad(one(b"a FETCH 1 (FLAGS FOO)")).text == "unknown fetch attribute FOO"


def test_fetch_unbalanced_parentheses_is_bad() -> None:
    assert bad(one(b"a FETCH 1 (FLAGS UID")).text == "unbalanced parentheses"


def test_uid_fetch_changedsince_vanished() -> None:
    # RFC 7162 §3.2.6
    assert one(b"a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)") == Fetch(
        "a", True, seq((300, 500)), (fa("FLAGS"),), changed_since=12345, vanished=True
    )


def test_vanished_without_uid_or_changedsince_is_bad() -> None:
    assert bad(one(b"a FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)")).tag == "a"
    assert bad(one(b"a UID FETCH 1 FLAGS (VANISHED)")).tag == "a"


# --------------------------------------------------------------------------- STORE / COPY / MOVE / EXPUNGE


def test_store_variants() -> None:
    assert one(b"a STORE 2:4 +FLAGS (\\Deleted)") == Store(
        "a", False, seq((2, 4)), "+", False, ("\\Deleted",)
    )
    assert one(b"a STORE 1 -FLAGS.SILENT \\Seen $x") == Store(
        "a", False, seq((1, 1)), "-", True, ("\\Seen", "$x")
    )
    assert one(b"a UID STORE 1 FLAGS ()") == Store("a", True, seq((1, 1)), "", False, ())


def test_store_unchangedsince() -> None:
    # RFC 7162 §3.1.3
    assert one(b"a STORE 1 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)") == Store(
        "a", False, seq((1, 1)), "+", True, ("\\Deleted",), 320162338
    )


def test_store_wildcard_flag_is_bad() -> None:
    assert bad(one(b"a STORE 1 +FLAGS (\\*)")).text == "\\* is not a flag"


@pytest.mark.parametrize("name", ["COPY", "MOVE"])
def test_copy_and_move_with_and_without_uid(name: str) -> None:
    assert one(f"a {name} 1:3 Archive".encode()) == Copy("a", name, False, seq((1, 3)), "Archive")
    assert one(f"a UID {name} $ Archive".encode()) == Copy(
        "a", name, True, SequenceSet(saved=True), "Archive"
    )


def test_uid_expunge() -> None:
    assert one(b"a UID EXPUNGE 3000:3002") == Expunge("a", seq((3000, 3002)))


def test_uid_with_non_uid_command_is_bad() -> None:
    assert bad(one(b"a UID NOOP")).text == "UID NOOP is not a UID command"


# --------------------------------------------------------------------------- properties


COMMANDS = [
    b"a LOGIN {3+}\r\nbob {2}\r\npw\r\n",
    b'b APPEND INBOX (\\Seen) " 5-Dec-2026 12:00:00 +0100" {7}\r\n(\r\n)\r\n{\r\n',
    b"c UID FETCH 1:*,3 (BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100> FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n",
    b"d SEARCH OR (FROM {1+}\r\nx NOT SEEN) UID $\r\n",
    b"e IDLE\r\nDONE\r\nf NOOP\r\n",
    b'g FETCH 0 FLAGS\r\nh LIST "" %\r\n',
]


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, len(COMMANDS) - 1), cuts=st.lists(st.integers(0, 200), max_size=8))
def test_splitting_input_anywhere_gives_the_same_events(index: int, cuts: list[int]) -> None:
    data = COMMANDS[index]
    whole = feed_all(CommandParser(), data)
    p = CommandParser()
    events: list[Event] = []
    prev = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        events += feed_all(p, data[prev:cut])
        prev = cut
    assert events == whole
    assert not any(isinstance(e, ParseError) for e in whole if not data.startswith(b"g"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=6))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    p = CommandParser(max_line_length=100, max_literal_size=50)
    for chunk in chunks:
        p.feed(chunk)
        if p.feed(b"") and p.idling:
            p.end_idle()


_TOKENS = [b"a", b" ", b"(", b")", b"[", b"]", b"{3}", b"{2+}", b"\r\n", b'"', b"\\", b"*", b"1:",
           b"FETCH", b"SEARCH", b"UID", b"BODY", b"HEADER.FIELDS", b"OR", b"NOT", b"APPEND", b"~{1}",
           b"<0.1>", b"$", b"0", b"IDLE", b"DONE", b"LIST", b"RETURN"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=30))
def test_token_soup_never_raises(tokens: list[bytes]) -> None:
    data = b"".join(tokens)
    assert isinstance(parse_command(data), object)
    p = CommandParser(max_line_length=64, max_literal_size=8)
    feed_all(p, data + b"\r\n")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([*_TOKENS, b"x" * 70, b"{100+}", b"{5+}", b"\n"]), max_size=30),
    st.lists(st.integers(0, 2000), max_size=6),
)
def test_token_soup_split_anywhere_gives_the_same_events(
    tokens: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(tokens)

    def parser() -> CommandParser:
        return CommandParser(max_line_length=64, max_literal_size=8)

    whole = feed_all(parser(), data)
    p = parser()
    events: list[Event] = []
    prev = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        events += feed_all(p, data[prev:cut])
        prev = cut
    assert events == whole
