"""RFC 9051 §6.4 message commands: FETCH (§6.4.5, §7.5.2), STORE, SEARCH and ESEARCH
(RFC 4731, RFC 5182 SEARCHRES), COPY/MOVE (RFC 6851) with UIDPLUS (RFC 4315), UID EXPUNGE,
APPEND (with LITERAL+, RFC 7888) and EXPUNGE responses."""

from __future__ import annotations

import base64

from tests.imap.conftest import DOCTOR, Client, Imap, message

PDF_DATA = b"%PDF-1.4 binary\x00\x01\x02 data" * 3
PDF = base64.b64encode(PDF_DATA).decode()
NESTED = (
    "From: =?UTF-8?Q?=C3=89mile_Durand?= <emile@hopital-test.mssante.fr>\r\n"
    'To: jean.dupont@hopital-test.mssante.fr, "Secrétariat" <secretariat@hopital-test.mssante.fr>\r\n'
    "Subject: =?UTF-8?Q?R=C3=A9sultats?= d'analyse\r\n"
    "Date: Tue, 3 Feb 2026 10:00:00 +0100\r\n"
    "Message-ID: <nested@test>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="outer"\r\n'
    "\r\n"
    "preamble\r\n"
    "--outer\r\n"
    'Content-Type: multipart/alternative; boundary="alt"\r\n'
    "\r\n"
    "--alt\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Résultats normaux.\r\n"
    "--alt\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "\r\n"
    "<p>R&eacute;sultats normaux.</p>\r\n"
    "--alt--\r\n"
    "--outer\r\n"
    'Content-Type: application/pdf; name="cr.pdf"\r\n'
    'Content-Disposition: attachment; filename="cr.pdf"\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    f"{PDF}\r\n"
    "--outer\r\n"
    "Content-Type: message/rfc822\r\n"
    "\r\n"
    "From: labo@hopital-test.mssante.fr\r\n"
    "Subject: inner\r\n"
    "Content-Type: text/plain\r\n"
    "\r\n"
    "inner body\r\n"
    "--outer--\r\n"
).encode()
LABO = b'((NIL NIL "labo" "hopital-test.mssante.fr"))'
EMILE = b'(("=?UTF-8?Q?=C3=89mile_Durand?=" NIL "emile" "hopital-test.mssante.fr"))'


async def selected(imap: Imap, *messages: bytes) -> Client:
    for m in messages:
        await imap.deliver(m)
    return await imap.connect(select="INBOX")


def lit(data: bytes) -> bytes:
    return b"{%d}\r\n%s" % (len(data), data)


# -- FETCH ---------------------------------------------------------------------------------------


async def test_fetch_flags_internaldate_size_envelope(imap: Imap) -> None:
    m = message()
    c = await selected(imap, m)
    info = (await imap.store.list_messages((await imap.store.get_folder(DOCTOR, "INBOX")).id))[0]
    date = info.internal_date.strftime("%d-%b-%Y %H:%M:%S +0000").lstrip("0").rjust(26)
    msgid = m.split(b"Message-ID: ")[1].split(b"\r\n")[0]
    martin = b'(("Dr Martin" NIL "claire.martin" "hopital-test.mssante.fr"))'
    assert await c.command("FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)") == [
        b'* 1 FETCH (FLAGS () INTERNALDATE "%s" RFC822.SIZE %d ENVELOPE ("Mon, 7 Feb 1994 '
        b'21:52:25 -0800" "Compte rendu" %s %s %s ((NIL NIL "jean.dupont" '
        b'"hopital-test.mssante.fr")) NIL NIL NIL "%s"))\r\n'
        % (date.encode(), len(m), martin, martin, martin, msgid),
        b"a3 OK FETCH completed\r\n",
    ]


async def test_fetch_envelope_keeps_encoded_words_and_8bit_headers(imap: Imap) -> None:
    c = await selected(imap, NESTED)
    to = (
        b'((NIL NIL "jean.dupont" "hopital-test.mssante.fr")'
        b'(%s NIL "secretariat" "hopital-test.mssante.fr"))'
    )
    envelope = (
        b'("Tue, 3 Feb 2026 10:00:00 +0100" "=?UTF-8?Q?R=C3=A9sultats?= d\'analyse" '
        + EMILE
        + b" "
        + EMILE
        + b" "
        + EMILE
        + b" "
        + to
        + b' NIL NIL NIL "<nested@test>")'
    )
    # IMAP4rev1: 8-bit text only in a literal
    assert await c.command("FETCH 1 ENVELOPE") == [
        b"* 1 FETCH (ENVELOPE " + envelope % lit("Secrétariat".encode()) + b")\r\n",
        b"a3 OK FETCH completed\r\n",
    ]
    await c.ok("ENABLE IMAP4rev2")
    assert (await c.command("FETCH 1 ENVELOPE"))[0] == (
        b"* 1 FETCH (ENVELOPE " + envelope % '"Secrétariat"'.encode() + b")\r\n"
    )


async def test_fetch_bodystructure_nested_multipart_and_message_rfc822(imap: Imap) -> None:
    c = await selected(imap, NESTED)
    inner_env = b'(NIL "inner" %s %s %s NIL NIL NIL NIL NIL)' % (LABO, LABO, LABO)
    assert await c.command("FETCH 1 BODYSTRUCTURE") == [
        b'* 1 FETCH (BODYSTRUCTURE ((("text" "plain" ("charset" "utf-8") NIL NIL "8BIT" 19 1 NIL '
        b'NIL NIL NIL)("text" "html" ("charset" "utf-8") NIL NIL "7BIT" 32 1 NIL NIL NIL NIL) '
        b'"alternative" ("boundary" "alt") NIL NIL NIL)("application" "pdf" ("name" "cr.pdf") '
        b'NIL NIL "BASE64" 92 NIL ("attachment" ("filename" "cr.pdf")) NIL NIL)("message" '
        b'"rfc822" NIL NIL NIL "7BIT" 90 ' + inner_env + b' ("text" "plain" NIL NIL NIL "7BIT" '
        b'10 1 NIL NIL NIL NIL) 5 NIL NIL NIL NIL) "mixed" ("boundary" "outer") NIL NIL NIL))\r\n',
        b"a3 OK FETCH completed\r\n",
    ]
    assert await c.command("FETCH 1 BODY") == [
        b'* 1 FETCH (BODY ((("text" "plain" ("charset" "utf-8") NIL NIL "8BIT" 19 1)("text" '
        b'"html" ("charset" "utf-8") NIL NIL "7BIT" 32 1) "alternative")("application" "pdf" '
        b'("name" "cr.pdf") NIL NIL "BASE64" 92)("message" "rfc822" NIL NIL NIL "7BIT" 90 '
        + inner_env
        + b' ("text" "plain" NIL NIL NIL "7BIT" 10 1) 5) "mixed"))\r\n',
        b"a4 OK FETCH completed\r\n",
    ]


async def test_fetch_body_sections_and_partial_at_part_boundaries(imap: Imap) -> None:
    c = await selected(imap, NESTED)
    inner_header = (
        b"From: labo@hopital-test.mssante.fr\r\nSubject: inner\r\nContent-Type: text/plain\r\n\r\n"
    )
    assert await c.command(
        "FETCH 1 (BODY.PEEK[1.1] BODY.PEEK[1.2.MIME] BODY.PEEK[3.HEADER] BODY.PEEK[3.TEXT] "
        "BODY.PEEK[3.1] BODY.PEEK[3]<0.10> BODY.PEEK[1.1]<17.100> BODY.PEEK[1.1]<19.5>)"
    ) == [
        b"* 1 FETCH (BODY[1.1] "
        + lit("Résultats normaux.".encode())
        + b" BODY[1.2.MIME] "
        + lit(b"Content-Type: text/html; charset=utf-8\r\n\r\n")
        + b" BODY[3.HEADER] "
        + lit(inner_header)
        + b" BODY[3.TEXT] "
        + lit(b"inner body")
        + b" BODY[3.1] "
        + lit(b"inner body")
        + b" BODY[3]<0> "
        + lit(b"From: labo")
        + b" BODY[1.1]<17> "
        + lit(b"x.")
        + b" BODY[1.1]<19> "
        + lit(b"")
        + b")\r\n",
        b"a3 OK FETCH completed\r\n",
    ]
    assert await c.command("FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[TEXT]<0.8>)") == [
        b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] "
        + lit(b"Subject: =?UTF-8?Q?R=C3=A9sultats?= d'analyse\r\n\r\n")
        + b" BODY[TEXT]<0> "
        + lit(b"preamble")
        + b")\r\n",
        b"a4 OK FETCH completed\r\n",
    ]


async def test_fetch_body_peek_does_not_set_seen(imap: Imap) -> None:
    m = message()
    c = await selected(imap, m)
    assert await c.command("FETCH 1 (BODY.PEEK[] BINARY.PEEK[1])") == [
        b"* 1 FETCH (BODY[] "
        + lit(m)
        + b" BINARY[1] "
        + lit(m.split(b"\r\n\r\n", 1)[1])
        + b")\r\n",
        b"a3 OK FETCH completed\r\n",
    ]
    assert await c.command("FETCH 1 (FLAGS)") == [
        b"* 1 FETCH (FLAGS ())\r\n",
        b"a4 OK FETCH completed\r\n",
    ]


async def test_fetch_body_sets_seen_and_reports_flags(imap: Imap) -> None:
    m = message()
    c = await selected(imap, m, message("deux"))
    assert await c.command("FETCH 1 BODY[]") == [
        b"* 1 FETCH (BODY[] " + lit(m) + b" FLAGS (\\Seen))\r\n",
        b"a3 OK FETCH completed\r\n",
    ]
    assert await c.command("FETCH 2 (FLAGS BODY[HEADER.FIELDS (SUBJECT)])") == [
        b"* 2 FETCH (FLAGS (\\Seen) BODY[HEADER.FIELDS (SUBJECT)] "
        + lit(b"Subject: deux\r\n\r\n")
        + b")\r\n",
        b"a4 OK FETCH completed\r\n",
    ]
    # EXAMINE: read-only, nothing is marked \Seen
    await imap.deliver(message("trois"))
    await c.ok("EXAMINE INBOX")
    await c.ok("FETCH 3 BODY[TEXT]")
    assert await c.command("FETCH 3 FLAGS") == [
        b"* 3 FETCH (FLAGS ())\r\n",
        b"a7 OK FETCH completed\r\n",
    ]


async def test_fetch_binary_and_binary_size_decode_base64(imap: Imap) -> None:
    c = await selected(imap, NESTED)
    assert await c.command("FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2] BINARY.PEEK[2]<4.6>)") == [
        b"* 1 FETCH (BINARY.SIZE[2] %d BINARY[2] ~{%d}\r\n%s BINARY[2]<4> {6}\r\n-1.4 b)\r\n"
        % (len(PDF_DATA), len(PDF_DATA), PDF_DATA),
        b"a3 OK FETCH completed\r\n",
    ]
    assert await c.command("FETCH 1 FLAGS") == [
        b"* 1 FETCH (FLAGS ())\r\n",
        b"a4 OK FETCH completed\r\n",
    ]


async def test_fetch_rfc822_items(imap: Imap) -> None:
    m = message()
    header, text = m.split(b"\r\n\r\n", 1)
    c = await selected(imap, m)
    assert await c.command("FETCH 1 (RFC822.SIZE RFC822.HEADER)") == [
        b"* 1 FETCH (RFC822.SIZE %d RFC822.HEADER %s)\r\n" % (len(m), lit(header + b"\r\n\r\n")),
        b"a3 OK FETCH completed\r\n",
    ]
    assert await c.command("FETCH 1 RFC822.TEXT") == [
        b"* 1 FETCH (RFC822.TEXT %s FLAGS (\\Seen))\r\n" % lit(text),
        b"a4 OK FETCH completed\r\n",
    ]
    assert await c.command("UID FETCH 1 RFC822") == [
        b"* 1 FETCH (UID 1 RFC822 %s)\r\n" % lit(m),  # already \\Seen: no FLAGS
        b"a5 OK FETCH completed\r\n",
    ]


async def test_fetch_macros_and_uid_fetch_adds_uid(imap: Imap) -> None:
    c = await selected(imap, message("un"), message("deux"))
    lines = await c.command("UID FETCH 2:* (FLAGS)")
    assert lines == [b"* 2 FETCH (UID 2 FLAGS ())\r\n", b"a3 OK FETCH completed\r\n"]
    # a UID range beyond the mailbox is not an error; "*" is the largest UID
    assert await c.command("UID FETCH 5:7 FLAGS") == [b"a4 OK FETCH completed\r\n"]
    assert await c.command("UID FETCH 7:* FLAGS") == [
        b"* 2 FETCH (UID 2 FLAGS ())\r\n",
        b"a5 OK FETCH completed\r\n",
    ]
    lines = await c.command("FETCH 1 FAST")
    assert lines[0].startswith(b"* 1 FETCH (FLAGS () INTERNALDATE ")
    assert lines[0].endswith(b" RFC822.SIZE %d)\r\n" % len(message("un")))


# -- STORE ---------------------------------------------------------------------------------------


async def test_store_add_remove_replace_and_silent(imap: Imap) -> None:
    c = await selected(imap, message("un"), message("deux"))
    assert await c.command("STORE 1:2 +FLAGS (\\Flagged $Urgent)") == [
        b"* 1 FETCH (FLAGS (\\Flagged $Urgent))\r\n",
        b"* 2 FETCH (FLAGS (\\Flagged $Urgent))\r\n",
        b"a3 OK STORE completed\r\n",
    ]
    assert await c.command("STORE 2 -FLAGS (\\Flagged)") == [
        b"* 2 FETCH (FLAGS ($Urgent))\r\n",
        b"a4 OK STORE completed\r\n",
    ]
    assert await c.command("STORE 1 FLAGS (\\Seen \\Answered)") == [
        b"* 1 FETCH (FLAGS (\\Seen \\Answered))\r\n",
        b"a5 OK STORE completed\r\n",
    ]
    assert await c.command("STORE 1 +FLAGS.SILENT (\\Deleted)") == [b"a6 OK STORE completed\r\n"]
    assert await c.command("UID STORE 2 FLAGS.SILENT ()") == [b"a7 OK STORE completed\r\n"]
    assert await c.command("UID STORE 1 -FLAGS (\\Deleted)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Answered))\r\n",
        b"a8 OK STORE completed\r\n",
    ]
    assert await c.command("FETCH 1:2 FLAGS") == [
        b"* 1 FETCH (FLAGS (\\Seen \\Answered))\r\n",
        b"* 2 FETCH (FLAGS ())\r\n",
        b"a9 OK FETCH completed\r\n",
    ]
    assert await c.command("STORE 1 +FLAGS (\\Bogus)") == [
        b"a10 BAD Unknown system flag \\Bogus\r\n"
    ]


# -- SEARCH / ESEARCH ----------------------------------------------------------------------------


async def searchable(imap: Imap) -> Client:
    c = await selected(
        imap,
        message("Compte rendu opératoire", body="Résultats de l'échographie\r\n"),
        message("Ordonnance", body="Paracétamol\r\n"),
        message("Résultats biologie", body="Glycémie normale\r\n"),
        message("Rappel", body="RDV\r\n"),
    )
    await c.ok("STORE 2,4 +FLAGS.SILENT (\\Seen)")
    await c.ok("STORE 4 +FLAGS.SILENT (\\Flagged)")
    return c


async def test_search_or_not_sequence_sets(imap: Imap) -> None:
    c = await searchable(imap)
    assert await c.command("SEARCH UNSEEN") == [b"* SEARCH 1 3\r\n", b"a5 OK SEARCH completed\r\n"]
    assert await c.command("SEARCH OR FLAGGED SUBJECT ordonnance") == [
        b"* SEARCH 2 4\r\n",
        b"a6 OK SEARCH completed\r\n",
    ]
    assert await c.command("SEARCH NOT 2:3 SEEN") == [
        b"* SEARCH 4\r\n",
        b"a7 OK SEARCH completed\r\n",
    ]
    assert await c.command("SEARCH 1,3:* NOT (SEEN FLAGGED)") == [
        b"* SEARCH 1 3\r\n",
        b"a8 OK SEARCH completed\r\n",
    ]
    assert await c.command("UID SEARCH UID 2:3 ALL") == [
        b"* SEARCH 2 3\r\n",
        b"a9 OK SEARCH completed\r\n",
    ]
    assert await c.command("SEARCH KEYWORD $Absent") == [
        b"* SEARCH\r\n",
        b"a10 OK SEARCH completed\r\n",
    ]


async def test_search_header_keys_again_follow_headers_past_the_stored_copy_and_current_flags(
    imap: Imap,
) -> None:
    """A header longer than the row's copy (64 KiB) is searched whole; a search run again
    (answered from the decoded headers it kept) finds the same, with flags as they are now."""
    padding = "".join(f"X-Trace-{i}: {'x' * 990}\r\n" for i in range(70))
    c = await selected(
        imap,
        message("Long", extra=padding + "X-Late: tardif\r\n"),
        message("Court", sender="Dr Petit <petit@hopital-test.mssante.fr>"),
        message("Autre"),
    )
    for tag in ("a3", "a4"):
        assert await c.command("SEARCH HEADER X-Late tardif") == [
            b"* SEARCH 1\r\n",
            f"{tag} OK SEARCH completed\r\n".encode(),
        ]
    assert await c.command("SEARCH FROM martin UNSEEN") == [
        b"* SEARCH 1 3\r\n",
        b"a5 OK SEARCH completed\r\n",
    ]
    await c.ok("STORE 3 +FLAGS.SILENT (\\Seen)")
    assert await c.command("SEARCH FROM martin UNSEEN") == [
        b"* SEARCH 1\r\n",
        b"a7 OK SEARCH completed\r\n",
    ]
    assert await c.command("SEARCH NOT FROM martin") == [
        b"* SEARCH 2\r\n",
        b"a8 OK SEARCH completed\r\n",
    ]


async def test_search_charset_utf8_with_accents(imap: Imap) -> None:
    c = await searchable(imap)
    word = "échographie".encode()
    assert await c.command(b"SEARCH CHARSET UTF-8 BODY {%d+}\r\n%s" % (len(word), word)) == [
        b"* SEARCH 1\r\n",
        b"a5 OK SEARCH completed\r\n",
    ]
    assert await c.command('SEARCH CHARSET UTF-8 SUBJECT "R\xc3\xa9sultats"'.encode("latin-1")) == [
        b"* SEARCH 3\r\n",
        b"a6 OK SEARCH completed\r\n",
    ]
    assert await c.command("SEARCH CHARSET KOI8-R ALL") == [
        b"a7 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n"
    ]


async def test_esearch_return_min_max_count_all_and_save(imap: Imap) -> None:
    c = await searchable(imap)
    assert await c.command("SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN") == [
        b'* ESEARCH (TAG "a5") MIN 1 MAX 3 COUNT 2 ALL 1,3\r\n',
        b"a5 OK SEARCH completed\r\n",
    ]
    assert await c.command("UID SEARCH RETURN () ALL") == [
        b'* ESEARCH (TAG "a6") UID ALL 1:4\r\n',
        b"a6 OK SEARCH completed\r\n",
    ]
    assert await c.command("SEARCH RETURN (COUNT MIN) KEYWORD $Absent") == [
        b'* ESEARCH (TAG "a7") COUNT 0\r\n',
        b"a7 OK SEARCH completed\r\n",
    ]
    assert await c.command("SEARCH RETURN (SAVE) SEEN") == [b"a8 OK SEARCH completed\r\n"]
    assert await c.command("FETCH $ (UID)") == [
        b"* 2 FETCH (UID 2)\r\n",
        b"* 4 FETCH (UID 4)\r\n",
        b"a9 OK FETCH completed\r\n",
    ]
    assert await c.command("SEARCH $ FLAGGED") == [
        b"* SEARCH 4\r\n",
        b"a10 OK SEARCH completed\r\n",
    ]


# -- COPY / MOVE / EXPUNGE -----------------------------------------------------------------------


async def test_copy_and_move_report_copyuid(imap: Imap) -> None:
    c = await selected(imap, message("un"), message("deux"), message("trois"))
    archive = (await imap.store.get_folder(DOCTOR, "Archive")).uidvalidity
    assert await c.command("COPY 1,3 Archive") == [
        b"a3 OK [COPYUID %d 1,3 1:2] COPY completed\r\n" % archive
    ]
    assert await c.command("UID MOVE 2:3 Archive") == [
        b"* OK [COPYUID %d 2:3 3:4] Moved\r\n" % archive,
        b"* 2 EXPUNGE\r\n",
        b"* 2 EXPUNGE\r\n",
        b"a4 OK MOVE completed\r\n",
    ]
    assert await c.command("COPY 1 Absent") == [b"a5 NO [TRYCREATE] Mailbox does not exist\r\n"]
    assert (await c.command("STATUS Archive (MESSAGES)"))[0] == (
        b"* STATUS Archive (MESSAGES 4)\r\n"
    )


async def test_expunge_and_uid_expunge_responses_are_renumbered(imap: Imap) -> None:
    c = await selected(imap, *(message(str(i)) for i in range(1, 6)))
    await c.ok("STORE 2,3,5 +FLAGS.SILENT (\\Deleted)")
    assert await c.command("EXPUNGE") == [
        b"* 2 EXPUNGE\r\n",
        b"* 2 EXPUNGE\r\n",
        b"* 3 EXPUNGE\r\n",
        b"a4 OK EXPUNGE completed\r\n",
    ]
    assert await c.command("FETCH 1:* (UID)") == [
        b"* 1 FETCH (UID 1)\r\n",
        b"* 2 FETCH (UID 4)\r\n",
        b"a5 OK FETCH completed\r\n",
    ]
    await c.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    # UID EXPUNGE (RFC 4315): only the named UIDs, \\Deleted elsewhere stays
    assert await c.command("UID EXPUNGE 4:5") == [
        b"* 2 EXPUNGE\r\n",
        b"a7 OK EXPUNGE completed\r\n",
    ]
    assert await c.command("FETCH 1 (UID FLAGS)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Deleted))\r\n",
        b"a8 OK FETCH completed\r\n",
    ]


async def test_close_expunges_silently_unselect_does_not(imap: Imap) -> None:
    c = await selected(imap, message("un"), message("deux"))
    await c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert await c.command("UNSELECT") == [b"a4 OK UNSELECT completed\r\n"]
    await c.ok("SELECT INBOX")
    assert await c.command("CLOSE") == [b"a6 OK CLOSE completed\r\n"]
    assert (await c.command("STATUS INBOX (MESSAGES)"))[0] == b"* STATUS INBOX (MESSAGES 1)\r\n"


# -- APPEND --------------------------------------------------------------------------------------


async def test_append_with_flags_date_literal_plus_appenduid_and_exists(imap: Imap) -> None:
    c = await imap.connect()
    v = (await imap.store.get_folder(DOCTOR, "Drafts")).uidvalidity
    m = message("brouillon")
    assert await c.command(
        b'APPEND Drafts (\\Draft \\Seen $Perso) " 7-Feb-1994 21:52:25 -0800" {%d+}\r\n%s'
        % (len(m), m)
    ) == [b"a2 OK [APPENDUID %d 1] APPEND completed\r\n" % v]
    await c.ok("SELECT Drafts")
    assert await c.command("FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])") == [
        b'* 1 FETCH (FLAGS (\\Seen \\Draft $Perso) INTERNALDATE " 8-Feb-1994 05:52:25 +0000" '
        b"RFC822.SIZE %d BODY[] %s)\r\n" % (len(m), lit(m)),
        b"a4 OK FETCH completed\r\n",
    ]
    c = await selected(imap, message("un"))
    v = (await imap.store.get_folder(DOCTOR, "INBOX")).uidvalidity
    m = message("deux")
    assert await c.command(b"APPEND INBOX {%d+}\r\n%s" % (len(m), m)) == [
        b"* 2 EXISTS\r\n",
        b"* 1 RECENT\r\n",
        b"a3 OK [APPENDUID %d 2] APPEND completed\r\n" % v,
    ]


async def test_append_refusals_synchronising_literal_multiappend_and_trycreate(imap: Imap) -> None:
    c = await imap.connect()
    m = message("un")
    # RFC 3502: a MULTIAPPEND is all or nothing
    assert await c.command(b"APPEND INBOX {%d+}\r\n%s (\\Bogus) {3+}\r\nabc" % (len(m), m)) == [
        b"a2 BAD Unknown system flag \\Bogus\r\n"
    ]
    assert await c.command(b"APPEND INBOX {%d+}\r\n%s {0+}\r\n" % (len(m), m)) == [
        b"a3 NO Cannot save an empty message\r\n"
    ]
    assert await c.command(b'APPEND INBOX "31-Feb-2020 00:00:00 +0000" {3+}\r\nabc') == [
        b"a4 BAD invalid date-time\r\n"
    ]
    assert (await c.command("STATUS INBOX (MESSAGES)"))[0] == b"* STATUS INBOX (MESSAGES 0)\r\n"
    c = await imap.connect()
    v = (await imap.store.get_folder(DOCTOR, "INBOX")).uidvalidity
    m1, m2 = message("un"), message("deux")
    tag = c.next_tag()
    c.send(b"%s APPEND INBOX {%d}\r\n" % (tag.encode(), len(m1)))
    assert await c.line() == b"+ Ready for literal data\r\n"
    c.send(m1 + b" (\\Flagged) {%d+}\r\n%s\r\n" % (len(m2), m2))
    assert await c.until(tag) == [b"a2 OK [APPENDUID %d 1:2] APPEND completed\r\n" % v]
    assert await c.command(b"APPEND Absent {3+}\r\nabc") == [
        b"a3 NO [TRYCREATE] Mailbox does not exist\r\n"
    ]
