"""RFC 9051 §6.3 mailbox commands, RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154
SPECIAL-USE, RFC 2342 NAMESPACE, modified UTF-7 names (RFC 3501 §5.1.3) and the BALs delegated
to a user under ``Partagés/<address>/``."""

from __future__ import annotations

from store.model import Flag
from tests.imap.conftest import DOCTOR, OTHER, SECRETARY, Client, Imap, message

SHARED = "Partag&AOk-s/jean.dupont@hopital-test.mssante.fr"
DEFAULT_LIST = [
    b'* LIST (\\HasNoChildren \\Archive) "/" Archive\r\n',
    b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts\r\n',
    b'* LIST (\\HasNoChildren) "/" INBOX\r\n',
    b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n',
    b'* LIST (\\HasNoChildren \\Trash) "/" Trash\r\n',
]


async def uidvalidity(imap: Imap, folder: str, bal: str = DOCTOR) -> int:
    return (await imap.store.get_folder(bal, folder)).uidvalidity


async def names(c: Client, command: str = 'LIST "" *') -> list[bytes]:
    lines = await c.command(command)
    assert b" OK " in lines[-1], lines
    return lines[:-1]


# -- SELECT / EXAMINE ----------------------------------------------------------------------------


async def test_select_sends_exact_untagged_responses(imap: Imap) -> None:
    uid = await imap.deliver(message("un"))
    await imap.deliver(message("deux"))
    inbox = await imap.store.get_folder(DOCTOR, "INBOX")
    await imap.store.set_flags(inbox.id, [uid], flags=Flag.SEEN)
    v = inbox.uidvalidity
    c = await imap.connect()
    assert await c.command("SELECT INBOX") == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n",
        b"* 2 EXISTS\r\n",
        b"* 0 RECENT\r\n",
        b"* OK [UNSEEN 2] First unseen\r\n",
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % v,
        b"* OK [UIDNEXT 3] Predicted next UID\r\n",
        b"* OK [HIGHESTMODSEQ 4] Highest\r\n",
        b"a2 OK [READ-WRITE] SELECT completed\r\n",
    ]


async def test_examine_is_read_only_and_closes_previous(imap: Imap) -> None:
    v = await uidvalidity(imap, "Sent")
    c = await imap.connect(select="INBOX")
    assert await c.command("EXAMINE Sent") == [
        b"* OK [CLOSED] Previous mailbox closed\r\n",
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
        b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n",
        b"* 0 EXISTS\r\n",
        b"* 0 RECENT\r\n",
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % v,
        b"* OK [UIDNEXT 1] Predicted next UID\r\n",
        b"* OK [HIGHESTMODSEQ 1] Highest\r\n",
        b"a3 OK [READ-ONLY] EXAMINE completed\r\n",
    ]
    assert await c.command("SELECT Nulle-part") == [
        b"* OK [CLOSED] Previous mailbox closed\r\n",
        b"a4 NO [NONEXISTENT] Mailbox does not exist\r\n",
    ]
    assert await c.command("FETCH 1 FLAGS") == [b"a5 BAD No mailbox selected\r\n"]


async def test_imap4rev2_select_omits_recent_and_namespace_is_utf8(imap: Imap) -> None:
    c = await imap.connect()
    await c.ok("ENABLE IMAP4rev2")
    lines = await c.command("SELECT inbox")
    assert b"* 0 EXISTS\r\n" in lines
    assert not any(b"RECENT" in line for line in lines)
    assert lines[-1] == b"a3 OK [READ-WRITE] SELECT completed\r\n"
    c = await imap.connect()
    assert await c.command("NAMESPACE") == [
        b'* NAMESPACE (("" "/")) NIL (("Partag&AOk-s/" "/"))\r\n',
        b"a2 OK NAMESPACE completed\r\n",
    ]
    await c.ok("ENABLE IMAP4rev2")
    assert (await c.command("NAMESPACE"))[0] == (
        b'* NAMESPACE (("" "/")) NIL (("Partag\xc3\xa9s/" "/"))\r\n'
    )


# -- CREATE / DELETE / RENAME --------------------------------------------------------------------


async def test_create_makes_superior_levels_and_modified_utf7_names(imap: Imap) -> None:
    c = await imap.connect()
    assert await c.command('CREATE "Comptes rendus/R&AOk-sultats"') == [
        b"a2 OK CREATE completed\r\n"
    ]
    assert await names(c, 'LIST "" "Comptes*"') == [
        b'* LIST (\\HasChildren) "/" "Comptes rendus"\r\n',
        b'* LIST (\\HasNoChildren) "/" "Comptes rendus/R&AOk-sultats"\r\n',
    ]
    # stored as Unicode
    assert (await imap.store.get_folder(DOCTOR, "Comptes rendus/Résultats")).name
    # an IMAP4rev2 client sees and sends UTF-8
    await c.ok("ENABLE IMAP4rev2")
    assert await names(c, 'LIST "Comptes rendus/" %') == [
        b'* LIST (\\HasNoChildren) "/" "Comptes rendus/R\xc3\xa9sultats"\r\n'
    ]
    assert (await c.command('SELECT "Comptes rendus/Résultats"'))[-1].startswith(b"a6 OK")


async def test_create_existing_invalid_and_special_use(imap: Imap) -> None:
    c = await imap.connect()
    assert await c.command("CREATE inbox") == [b"a2 NO [ALREADYEXISTS] Mailbox already exists\r\n"]
    assert await c.command("CREATE Projets/") == [b"a3 OK CREATE completed\r\n"]
    assert await c.command("CREATE Projets") == [
        b"a4 NO [ALREADYEXISTS] Mailbox already exists\r\n"
    ]
    assert await c.command('CREATE "R&Jjo"') == [
        b"a5 NO mailbox name is not valid modified UTF-7\r\n"
    ]
    c = await imap.connect()
    assert await c.command("CREATE Tout (USE (\\All))") == [b"a2 OK CREATE completed\r\n"]
    assert await names(c, 'LIST "" Tout') == [b'* LIST (\\HasNoChildren \\All) "/" Tout\r\n']
    assert await c.command("CREATE Autre (USE (\\Important))") == [
        b"a4 NO [USEATTR] Unsupported special-use attribute\r\n"
    ]


async def test_delete_mailbox(imap: Imap) -> None:
    c = await imap.connect()
    await c.ok("CREATE A/B")
    assert await c.command("DELETE A") == [
        b"a3 NO [HASCHILDREN] Mailbox has children, delete them first\r\n"
    ]
    assert await c.command("DELETE A/B") == [b"a4 OK DELETE completed\r\n"]
    assert await c.command("DELETE A/B") == [b"a5 NO [NONEXISTENT] Mailbox does not exist\r\n"]
    assert await c.command("DELETE INBOX") == [b"a6 NO [CANNOT] INBOX cannot be deleted\r\n"]
    assert await names(c, 'LIST "" A') == [b'* LIST (\\HasNoChildren) "/" A\r\n']
    await c.ok("CREATE Temp")
    await c.ok("SELECT Temp")
    assert await c.command("DELETE Temp") == [b"a10 OK DELETE completed\r\n"]
    assert await c.command("NOOP") == [b"a11 OK NOOP completed\r\n"]
    assert await c.command("FETCH 1 FLAGS") == [b"a12 BAD No mailbox selected\r\n"]


async def test_rename_moves_inferiors(imap: Imap) -> None:
    c = await imap.connect()
    await c.ok('CREATE "Comptes rendus/R&AOk-sultats"')
    await imap.deliver(message("cr"), folder="Comptes rendus/Résultats")
    assert await c.command('RENAME "Comptes rendus" CR') == [b"a3 OK RENAME completed\r\n"]
    assert await names(c, 'LIST "" C*') == [
        b'* LIST (\\HasChildren) "/" CR\r\n',
        b'* LIST (\\HasNoChildren) "/" CR/R&AOk-sultats\r\n',
    ]
    assert (await c.command("STATUS CR/R&AOk-sultats (MESSAGES)"))[0] == (
        b"* STATUS CR/R&AOk-sultats (MESSAGES 1)\r\n"
    )
    assert await c.command("RENAME CR Sent") == [
        b"a6 NO [ALREADYEXISTS] Mailbox already exists\r\n"
    ]
    assert await c.command("RENAME Absent X") == [b"a7 NO [NONEXISTENT] Mailbox does not exist\r\n"]


async def test_rename_creates_superior_levels(imap: Imap) -> None:
    c = await imap.connect()
    await c.ok("CREATE Projet")
    assert await c.command("RENAME Projet 2025/Archives/Projet") == [b"a3 OK RENAME completed\r\n"]
    assert await names(c, 'LIST "" 2025*') == [
        b'* LIST (\\HasChildren) "/" 2025\r\n',
        b'* LIST (\\HasChildren) "/" 2025/Archives\r\n',
        b'* LIST (\\HasNoChildren) "/" 2025/Archives/Projet\r\n',
    ]


async def test_rename_inbox_moves_messages_and_leaves_empty_inbox(imap: Imap) -> None:
    await imap.deliver(message("un"))
    await imap.deliver(message("deux"))
    c = await imap.connect()
    assert await c.command("RENAME INBOX Ancienne") == [b"a2 OK RENAME completed\r\n"]
    assert (await c.command("STATUS INBOX (MESSAGES UIDNEXT)"))[0] == (
        b"* STATUS INBOX (MESSAGES 0 UIDNEXT 3)\r\n"
    )
    assert (await c.command("STATUS Ancienne (MESSAGES)"))[0] == (
        b"* STATUS Ancienne (MESSAGES 2)\r\n"
    )
    assert await c.command("RENAME INBOX Ancienne") == [
        b"a5 NO [ALREADYEXISTS] Mailbox already exists\r\n"
    ]


# -- SUBSCRIBE / LSUB / LIST ---------------------------------------------------------------------


async def test_subscribe_lsub_and_list_extended_options(imap: Imap) -> None:
    c = await imap.connect()
    assert await c.command("UNSUBSCRIBE Trash") == [b"a2 OK UNSUBSCRIBE completed\r\n"]
    assert await names(c, 'LSUB "" *') == [
        b'* LSUB (\\HasNoChildren \\Archive) "/" Archive\r\n',
        b'* LSUB (\\HasNoChildren \\Drafts) "/" Drafts\r\n',
        b'* LSUB (\\HasNoChildren) "/" INBOX\r\n',
        b'* LSUB (\\HasNoChildren \\Sent) "/" Sent\r\n',
    ]
    assert await names(c, 'LIST (SUBSCRIBED) "" T*') == []
    assert await c.command("SUBSCRIBE Trash") == [b"a5 OK SUBSCRIBE completed\r\n"]
    assert await names(c, 'LIST (SUBSCRIBED) "" T*') == [
        b'* LIST (\\HasNoChildren \\Subscribed \\Trash) "/" Trash\r\n'
    ]
    c = await imap.connect()
    assert await names(c, 'LIST (SPECIAL-USE) "" *') == [
        DEFAULT_LIST[0],
        DEFAULT_LIST[1],
        DEFAULT_LIST[3],
        DEFAULT_LIST[4],
    ]
    assert await names(c, 'LIST "" ("INBOX" "Sent") RETURN (SUBSCRIBED SPECIAL-USE)') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "/" Sent\r\n',
    ]
    assert await names(c, 'LIST "" % RETURN (SPECIAL-USE)') == DEFAULT_LIST


async def test_list_wildcards_percent_and_star(imap: Imap) -> None:
    c = await imap.connect()
    await c.ok("CREATE Archive/2024/Janvier")
    assert await names(c, 'LIST "" *') == [
        b'* LIST (\\HasChildren \\Archive) "/" Archive\r\n',
        b'* LIST (\\HasChildren) "/" Archive/2024\r\n',
        b'* LIST (\\HasNoChildren) "/" Archive/2024/Janvier\r\n',
        *DEFAULT_LIST[1:],
    ]
    assert await names(c, 'LIST "" %') == [
        b'* LIST (\\HasChildren \\Archive) "/" Archive\r\n',
        *DEFAULT_LIST[1:],
    ]
    assert await names(c, 'LIST "" Archive/%') == [b'* LIST (\\HasChildren) "/" Archive/2024\r\n']
    assert await names(c, "LIST Archive/ %/%") == [
        b'* LIST (\\HasNoChildren) "/" Archive/2024/Janvier\r\n'
    ]
    assert await names(c, 'LIST "" inbox') == [b'* LIST (\\HasNoChildren) "/" INBOX\r\n']
    assert await c.command('LIST "" ""') == [
        b'* LIST (\\Noselect) "/" ""\r\n',
        b"a8 OK LIST completed\r\n",
    ]


async def test_list_status_returns_status_after_each_list(imap: Imap) -> None:
    await imap.deliver(message("un"))
    c = await imap.connect()
    assert await names(c, 'LIST "" (INBOX Drafts) RETURN (STATUS (MESSAGES UNSEEN UIDNEXT))') == [
        b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts\r\n',
        b"* STATUS Drafts (MESSAGES 0 UNSEEN 0 UIDNEXT 1)\r\n",
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n',
        b"* STATUS INBOX (MESSAGES 1 UNSEEN 1 UIDNEXT 2)\r\n",
    ]


async def test_status_items(imap: Imap) -> None:
    uid = await imap.deliver(message("un"))
    await imap.deliver(message("deux"))
    await imap.store.set_flags(
        (await imap.store.get_folder(DOCTOR, "INBOX")).id, [uid], flags=Flag.SEEN | Flag.DELETED
    )
    v = await uidvalidity(imap, "INBOX")
    size = sum(len(message(s)) for s in ("un", "deux"))
    c = await imap.connect()
    assert await c.command(
        "STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE HIGHESTMODSEQ)"
    ) == [
        b"* STATUS INBOX (MESSAGES 2 RECENT 0 UIDNEXT 3 UIDVALIDITY %d UNSEEN 1 DELETED 1 "
        b"SIZE %d HIGHESTMODSEQ 4)\r\n" % (v, size),
        b"a2 OK STATUS completed\r\n",
    ]
    assert await c.command("STATUS Absent (MESSAGES)") == [
        b"a3 NO [NONEXISTENT] Mailbox does not exist\r\n"
    ]
    assert await c.command("STATUS INBOX (FOO)") == [b"a4 BAD unknown STATUS item FOO\r\n"]


# -- shared BALs ---------------------------------------------------------------------------------


async def test_delegated_read_only_bal_listed_selectable_read_only(imap: Imap) -> None:
    await imap.store.add_delegation(DOCTOR, SECRETARY, can_read=True, can_write=False)
    await imap.deliver(message("pour le secrétariat"))
    c = await imap.connect(SECRETARY)
    assert await names(c, 'LIST "" "Partag&AOk-s/*/INBOX"') == [
        b'* LIST (\\HasNoChildren) "/" %s/INBOX\r\n' % SHARED.encode()
    ]
    assert await names(c, 'LIST "" Partag&AOk-s/%') == [
        b'* LIST (\\Noselect \\HasChildren) "/" %s\r\n' % SHARED.encode()
    ]
    lines = await c.command(f'SELECT "{SHARED}/INBOX"')
    assert b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n" in lines
    assert b"* 1 EXISTS\r\n" in lines
    assert lines[-1] == b"a4 OK [READ-ONLY] SELECT completed\r\n"
    assert await c.command("STORE 1 +FLAGS (\\Seen)") == [
        b"a5 NO [READ-ONLY] Mailbox is read-only\r\n"
    ]
    assert await c.command(f'APPEND "{SHARED}/INBOX" {{3+}}\r\nx\r\n') == [
        b"a6 NO [NOPERM] Read-only delegation\r\n"
    ]
    assert await c.command(f'CREATE "{SHARED}/Nouveau"') == [
        b"a7 NO [NOPERM] Read-only delegation\r\n"
    ]
    assert await c.command(f'DELETE "{SHARED}/Trash"') == [
        b"a8 NO [NOPERM] Read-only delegation\r\n"
    ]
    assert await c.command(f'MOVE 1 "{SHARED}/Trash"') == [
        b"a9 NO [READ-ONLY] Mailbox is read-only\r\n"
    ]
    assert await c.command("EXPUNGE") == [b"a10 NO [READ-ONLY] Mailbox is read-only\r\n"]
    # reading the doctor's mail does not mark it \\Seen for the doctor
    lines = await c.command("FETCH 1 BODY[TEXT]")
    assert lines[0].endswith(b"compte rendu.\r\n)\r\n"), lines
    assert await c.command("FETCH 1 FLAGS") == [
        b"* 1 FETCH (FLAGS ())\r\n",
        b"a12 OK FETCH completed\r\n",
    ]


async def test_delegated_writable_bal_allows_store_and_append(imap: Imap) -> None:
    await imap.store.add_delegation(DOCTOR, SECRETARY, can_read=True, can_write=True)
    await imap.deliver(message("un"))
    v = await uidvalidity(imap, "INBOX")
    c = await imap.connect(SECRETARY)
    lines = await c.command(f'SELECT "{SHARED}/INBOX"')
    assert lines[-1] == b"a2 OK [READ-WRITE] SELECT completed\r\n"
    assert await c.command("STORE 1 +FLAGS (\\Flagged)") == [
        b"* 1 FETCH (FLAGS (\\Flagged))\r\n",
        b"a3 OK STORE completed\r\n",
    ]
    data = message("du secrétariat")
    assert await c.command(
        b'APPEND "%s/INBOX" {%d+}\r\n%s' % (SHARED.encode(), len(data), data)
    ) == [
        b"* 2 EXISTS\r\n",
        b"* 1 RECENT\r\n",
        b"a4 OK [APPENDUID %d 2] APPEND completed\r\n" % v,
    ]
    # the doctor sees the secretary's work in their own INBOX
    d = await imap.connect(DOCTOR, select="INBOX")
    assert await d.command("FETCH 1:* (FLAGS)") == [
        b"* 1 FETCH (FLAGS (\\Flagged))\r\n",
        b"* 2 FETCH (FLAGS ())\r\n",
        b"a3 OK FETCH completed\r\n",
    ]


async def test_not_delegated_user_gets_nonexistent_and_shared_has_no_special_use(
    imap: Imap,
) -> None:
    await imap.store.add_delegation(DOCTOR, SECRETARY)
    c = await imap.connect(OTHER)
    assert await c.command(f'SELECT "{SHARED}/INBOX"') == [
        b"a2 NO [NONEXISTENT] Mailbox does not exist\r\n"
    ]
    assert await c.command(f'STATUS "{SHARED}/INBOX" (MESSAGES)') == [
        b"a3 NO [NONEXISTENT] Mailbox does not exist\r\n"
    ]
    assert await names(c) == DEFAULT_LIST
    # A client picks its Sent/Drafts/Trash by special-use: never the delegated BAL's.
    c = await imap.connect(SECRETARY)
    assert await names(c, f'LIST "" "{SHARED}/S*"') == [
        b'* LIST (\\HasNoChildren) "/" %s/Sent\r\n' % SHARED.encode()
    ]
    assert await names(c, 'LIST (SPECIAL-USE) "" *') == [
        DEFAULT_LIST[0],
        DEFAULT_LIST[1],
        DEFAULT_LIST[3],
        DEFAULT_LIST[4],
    ]


async def test_rename_under_itself_and_create_invalid_name_are_cannot(imap: Imap) -> None:
    c = await imap.connect()
    assert await c.command("RENAME Sent Sent/Sub") == [
        b"a2 NO [CANNOT] Cannot rename a mailbox under itself\r\n"
    ]
    assert await c.command("RENAME Sent INBOX") == [
        b"a3 NO INBOX cannot be renamed, nor anything renamed to INBOX\r\n"
    ]
    assert await c.command('CREATE "' + "x/" * 600 + 'y"') == [
        b"a4 NO [CANNOT] Invalid mailbox name\r\n"
    ]
    assert await c.command("RENAME INBOX INBOX/Ancien") == [b"a5 OK RENAME completed\r\n"]
    assert await names(c, 'LIST "" INBOX*') == [
        b'* LIST (\\HasChildren) "/" INBOX\r\n',
        b'* LIST (\\HasNoChildren) "/" INBOX/Ancien\r\n',
    ]


async def test_delegate_cannot_change_owner_subscriptions(imap: Imap) -> None:
    await imap.store.add_delegation(DOCTOR, SECRETARY, can_read=True, can_write=True)
    s = await imap.connect(SECRETARY)
    assert await s.command(f'UNSUBSCRIBE "{SHARED}/Trash"') == [
        b"a2 NO [CANNOT] Subscriptions of a delegated BAL belong to its owner\r\n"
    ]
    assert await s.command(f'SUBSCRIBE "{SHARED}/Trash"') == [b"a3 OK SUBSCRIBE completed\r\n"]
    d = await imap.connect(DOCTOR)
    assert await names(d, 'LSUB "" Trash') == [b'* LSUB (\\HasNoChildren \\Trash) "/" Trash\r\n']


async def test_list_recursivematch_childinfo_and_unknown_options_are_bad(imap: Imap) -> None:
    c = await imap.connect()
    await c.ok("CREATE Dossiers/Patient")
    await c.ok("UNSUBSCRIBE Dossiers")
    assert await names(c, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" Dossiers') == [
        b'* LIST (\\HasChildren) "/" Dossiers ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    ]
    assert await names(c, 'LIST (SUBSCRIBED) "" Dossiers*') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Dossiers/Patient\r\n'
    ]
    assert await c.command('LIST (RECURSIVEMATCH) "" *') == [
        b"a6 BAD RECURSIVEMATCH needs another selection option\r\n"
    ]
    assert await c.command('LIST (BOGUS) "" *') == [b"a7 BAD Unknown LIST option BOGUS\r\n"]
    assert await c.command('LIST "" * RETURN (BOGUS)') == [b"a8 BAD Unknown LIST option BOGUS\r\n"]
    assert await names(c, 'LIST (REMOTE) "" INBOX') == [b'* LIST (\\HasNoChildren) "/" INBOX\r\n']
