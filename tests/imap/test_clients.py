"""Real IMAP clients against the server: mbsync (isync), offlineimap, Python's imaplib and
aioimaplib.

The synchronisers pull a folder tree (a nested folder, a non-ASCII name); then push local flag
changes, a local deletion, a new local message and a new local folder, and pull a flag change, an
expunge and a delivery made on the server; a third run must change nothing on either side. The
IDLE clients must see a delivery as ``* n EXISTS`` within a second.

The clients run as subprocesses (or in threads) while the server runs in the test's event loop:
nothing here may block the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import imaplib
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aioimaplib
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from pki.testpki import TestPki
from store.model import Flag
from tests.imap.conftest import DOCTOR, PASSWORD, Imap, message

CLIENT_TIMEOUT = 30.0
FOLDERS = ("Projets", "Projets/2026", "Résultats")


# -- helpers -------------------------------------------------------------------------------------


async def run_client(*argv: str, cwd: Path, timeout: float = CLIENT_TIMEOUT) -> str:
    """Run a client to completion without blocking the loop; its output, or a failure showing it."""
    env = {**os.environ, "HOME": str(cwd), "LC_ALL": "C.UTF-8"}
    env.pop("PYTHONPATH", None)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"{argv[0]} timed out after {timeout}s:\n{out.decode(errors='replace')}")
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}:\n{text}"
    return text


ServerState = dict[str, list[tuple[int, Flag, tuple[str, ...], str | None]]]


async def server_state(imap: Imap) -> ServerState:
    """Every folder of DOCTOR: its messages' UIDs, flags, keywords and subjects."""
    state: ServerState = {}
    for folder in await imap.store.list_folders(DOCTOR):
        state[folder.name] = [
            (m.uid, m.flags, tuple(sorted(m.keywords)), m.subject)
            for m in await imap.store.list_messages(folder.id)
        ]
    return state


async def server_versions(imap: Imap) -> dict[str, tuple[int, int, int]]:
    """Every folder's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ: any write at all moves one."""
    return {
        f.name: (f.uidvalidity, f.uid_next, f.highest_modseq)
        for f in await imap.store.list_folders(DOCTOR)
    }


def subjects(state: ServerState, folder: str) -> list[str | None]:
    return sorted((s for *_, s in state[folder]), key=str)


def local_files(root: Path) -> list[str]:
    """Every message file under a Maildir tree, relative to it (names carry UIDs and flags)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.parent.name in ("cur", "new", "tmp")
    )


def maildir_messages(folder: Path) -> dict[str, Path]:
    """The messages of one Maildir folder by subject."""
    found: dict[str, Path] = {}
    for sub in ("cur", "new"):
        for path in (folder / sub).iterdir():
            for line in path.read_bytes().splitlines():
                if line.startswith(b"Subject: "):
                    found[line[9:].decode()] = path
                    break
    return found


def set_local_flags(path: Path, flags: str) -> Path:
    """What a MUA does to mark a Maildir message: move it to cur/ with the ``:2,<flags>`` info."""
    base = path.name.split(":2,")[0]
    target = path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(flags))}"
    path.rename(target)
    return target


def drop_new(folder: Path, data: bytes, name: str) -> None:
    """A new message written the Maildir way: tmp/ then rename into new/."""
    tmp = folder / "tmp" / name
    tmp.write_bytes(data)
    tmp.rename(folder / "new" / name)


async def populate(imap: Imap) -> None:
    for name in FOLDERS:
        await imap.store.create_folder(DOCTOR, name)
    for subject, folder in (
        ("Bilan sanguin", "INBOX"),
        ("Radio thorax", "INBOX"),
        ("Ordonnance", "INBOX"),
        ("Réunion de service", "Projets"),
        ("Protocole 2026", "Projets/2026"),
        ("Hémogramme", "Résultats"),
        ("Ionogramme", "Résultats"),
    ):
        await imap.deliver(message(subject=subject), DOCTOR, folder)


async def server_message(imap: Imap, folder: str, subject: str) -> int:
    folder_id = (await imap.store.get_folder(DOCTOR, folder)).id
    (uid,) = [m.uid for m in await imap.store.list_messages(folder_id) if m.subject == subject]
    return uid


def info_flags(path: Path) -> str:
    """The Maildir flags of a message file (``:2,<flags>``; none in new/)."""
    return path.name.partition(":2,")[2]


def check_local(maildir: Path, local: dict[str, Path], expected: dict[str, dict[str, str]]) -> None:
    """Each local folder holds exactly the expected subjects, each with the expected flags, a UID
    in its file name and the message as delivered (Maildir lines end in LF; mbsync 1.4 adds an
    X-TUID header to every message it stores)."""
    for folder, want in expected.items():
        assert (local[folder] / "cur").is_dir(), sorted(str(p) for p in maildir.rglob("*"))
        found = maildir_messages(local[folder])
        assert {s: info_flags(p) for s, p in found.items()} == want, (folder, found)
        for subject, path in found.items():
            assert ",U=" in path.name, path
            if subject not in ("Note locale", "Échographie"):
                data = message(subject=subject).replace(b"\r\n", b"\n")
                lines = path.read_bytes().replace(b"\r\n", b"\n").splitlines(keepends=True)
                assert b"".join(x for x in lines if not x.startswith(b"X-TUID: ")) == data


def new_folder(folder: Path, data: bytes) -> None:
    """A folder made by a MUA, with one message in it."""
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True)
    drop_new(folder, data, "1700000001.M2P1.colombe-test")


def change_locally(local: dict[str, Path]) -> None:
    """What a MUA does: mark a message seen and flagged, delete one, file a new one."""
    inbox = maildir_messages(local["INBOX"])
    set_local_flags(inbox["Bilan sanguin"], "SF")
    inbox["Radio thorax"].unlink()
    drop_new(local["Résultats"], message(subject="Note locale"), "1700000000.M1P1.colombe-test")


async def round_trip(
    imap: Imap, maildir: Path, names: dict[str, str], sync: Callable[[], Awaitable[str]]
) -> None:
    """The synchroniser scenario. ``names`` maps the non-ASCII folder names to the client's local
    folder names (mbsync 1.4 keeps modified UTF-7, offlineimap can decode it)."""
    await populate(imap)

    # 1. Pull the tree.
    await sync()
    local = {name: maildir / name for name in ("INBOX", "Projets", "Projets/2026")}
    local["Résultats"] = maildir / names["Résultats"]
    check_local(
        maildir,
        local,
        {
            "INBOX": {"Bilan sanguin": "", "Ordonnance": "", "Radio thorax": ""},
            "Projets": {"Réunion de service": ""},
            "Projets/2026": {"Protocole 2026": ""},
            "Résultats": {"Hémogramme": "", "Ionogramme": ""},
        },
    )

    # 2. Local changes: flags, a deletion, a new message, a new folder (Create Both). Server
    # changes: a flag, an expunge, a delivery.
    change_locally(local)
    local["Projets/Échographies"] = maildir / names["Projets/Échographies"]
    new_folder(local["Projets/Échographies"], message(subject="Échographie"))
    inbox_id = (await imap.store.get_folder(DOCTOR, "INBOX")).id
    resultats_id = (await imap.store.get_folder(DOCTOR, "Résultats")).id
    ordonnance = await server_message(imap, "INBOX", "Ordonnance")
    await imap.store.set_flags(inbox_id, [ordonnance], flags=Flag.ANSWERED, mode="add")
    ionogramme = await server_message(imap, "Résultats", "Ionogramme")
    await imap.store.set_flags(resultats_id, [ionogramme], flags=Flag.DELETED, mode="add")
    assert await imap.store.expunge(resultats_id) == [ionogramme]
    await imap.deliver(message(subject="Arrivé entre deux"), DOCTOR, "Projets/2026")
    await sync()

    state = await server_state(imap)
    inbox_state = {s: flags for _, flags, _, s in state["INBOX"]}
    assert inbox_state == {"Bilan sanguin": Flag.SEEN | Flag.FLAGGED, "Ordonnance": Flag.ANSWERED}
    assert subjects(state, "Résultats") == ["Hémogramme", "Note locale"]
    assert subjects(state, "Projets/Échographies") == ["Échographie"]
    check_local(
        maildir,
        local,
        {
            "INBOX": {"Bilan sanguin": "FS", "Ordonnance": "R"},
            "Projets": {"Réunion de service": ""},
            "Projets/2026": {"Arrivé entre deux": "", "Protocole 2026": ""},
            "Résultats": {"Hémogramme": "", "Note locale": ""},
            "Projets/Échographies": {"Échographie": ""},
        },
    )

    # 3. Nothing left to do: a third run changes nothing on either side.
    before_server, before_local = state, local_files(maildir)
    before_versions = await server_versions(imap)
    await sync()
    assert await server_state(imap) == before_server
    assert await server_versions(imap) == before_versions
    assert local_files(maildir) == before_local


# -- mbsync ---------------------------------------------------------------------------------------


async def test_mbsync_round_trip(imap: Imap, test_pki: TestPki, tmp_path: Path) -> None:
    program = shutil.which("mbsync")
    assert program is not None, "mbsync (isync) is not installed"
    # A certificate of CertificateFile that is the server's own is trusted as is, without the
    # host name check (the operator certificate names mx.colombe.test, not 127.0.0.1).
    certs = tmp_path / "mbsync-certs.pem"
    certs.write_bytes(test_pki.certs["operator"].cert.public_bytes(Encoding.PEM))
    maildir = tmp_path / "mbsync-mail"
    maildir.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"""IMAPAccount colombe
Host 127.0.0.1
Port {imap.tls_port}
User {DOCTOR}
Pass {PASSWORD}
SSLType IMAPS
SystemCertificates no
CertificateFile {certs}
Timeout 20

IMAPStore remote
Account colombe

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel colombe
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""",
        encoding="utf-8",
    )

    async def mbsync() -> str:
        return await run_client(program, "-c", str(rc), "-a", cwd=tmp_path)

    # mbsync 1.4 keeps IMAP's modified UTF-7 names on the near side.
    utf7 = {"Résultats": "R&AOk-sultats", "Projets/Échographies": "Projets/&AMk-chographies"}
    await round_trip(imap, maildir, utf7, mbsync)


# -- offlineimap ----------------------------------------------------------------------------------


async def test_offlineimap_round_trip(imap: Imap, test_pki: TestPki, tmp_path: Path) -> None:
    program = shutil.which("offlineimap")
    assert program is not None, "offlineimap (offlineimap3) is not installed"
    # offlineimap checks a CA-verified certificate's names against remotehost with no way to skip
    # it, and the operator certificate does not name 127.0.0.1: pin the certificate instead.
    fingerprint = hashlib.sha512(
        test_pki.certs["operator"].cert.public_bytes(Encoding.DER)
    ).hexdigest()
    maildir = tmp_path / "offlineimap-mail"
    config = tmp_path / "offlineimaprc"
    # The filter leaves out the special-use folders; "Projets/…" lets the new local folder in.
    config.write_text(
        f"""[general]
accounts = colombe
metadata = {tmp_path / "offlineimap-meta"}
maxsyncaccounts = 1
ui = quiet

[Account colombe]
localrepository = local
remoterepository = remote
utf8foldernames = yes

[Repository local]
type = Maildir
localfolders = {maildir}
sep = /

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {imap.tls_port}
remoteuser = {DOCTOR}
remotepass = {PASSWORD}
ssl = yes
cert_fingerprint = {fingerprint}
maxconnections = 1
timeout = 20
expunge = yes
folderfilter = lambda name: name.split("/")[0] in ["INBOX", "Projets", "Résultats"]
""",
        encoding="utf-8",
    )

    async def offlineimap() -> str:
        out = await run_client(program, "-c", str(config), "-o", "-u", "quiet", cwd=tmp_path)
        assert "ERROR" not in out, out
        return out

    # utf8foldernames: offlineimap decodes modified UTF-7 to name the local folder.
    utf8 = {"Résultats": "Résultats", "Projets/Échographies": "Projets/Échographies"}
    await round_trip(imap, maildir, utf8, offlineimap)


# -- IDLE -----------------------------------------------------------------------------------------


def _imaplib_idle(imap: Imap) -> tuple[imaplib.IMAP4_SSL, bytes]:
    client = imaplib.IMAP4_SSL("127.0.0.1", imap.tls_port, ssl_context=imap.client_context())
    client.sock.settimeout(10)
    client.login(DOCTOR, PASSWORD)
    typ, _ = client.select("INBOX")
    assert typ == "OK"
    tag = client._new_tag()  # type: ignore[attr-defined]
    client.send(tag + b" IDLE\r\n")
    line = client.readline()
    assert line.startswith(b"+"), line
    return client, tag


def _imaplib_wait_exists(client: imaplib.IMAP4_SSL, tag: bytes) -> tuple[float, bytes]:
    while True:
        line = client.readline()
        assert line, "connection closed during IDLE"
        if line.startswith(b"* ") and line.rstrip().endswith(b" EXISTS"):
            return time.monotonic(), line
        assert not line.startswith(tag), line


def _imaplib_done(client: imaplib.IMAP4_SSL, tag: bytes) -> None:
    client.send(b"DONE\r\n")
    while True:
        line = client.readline()
        assert line, "connection closed after DONE"
        if line.startswith(tag + b" "):
            assert line.startswith(tag + b" OK"), line
            break
    client.tagged_commands.pop(tag, None)  # type: ignore[attr-defined]
    typ, _ = client.logout()
    assert typ == "BYE"


async def test_imaplib_idle_sees_delivery(imap: Imap) -> None:
    await imap.deliver(message(subject="Déjà là"))
    client, tag = await asyncio.to_thread(_imaplib_idle, imap)
    try:
        waiting = asyncio.create_task(asyncio.to_thread(_imaplib_wait_exists, client, tag))
        await asyncio.sleep(0.1)
        sent = time.monotonic()
        await imap.deliver(message(subject="Résultat urgent"))
        seen, line = await asyncio.wait_for(waiting, 5)
        assert line == b"* 2 EXISTS\r\n"
        assert seen - sent < 1.0, f"EXISTS came {seen - sent:.3f}s after the delivery"
        await asyncio.to_thread(_imaplib_done, client, tag)
    finally:
        if client.state != "LOGOUT":
            await asyncio.to_thread(client.shutdown)


async def test_aioimaplib_idle_sees_delivery(imap: Imap) -> None:
    client = aioimaplib.IMAP4_SSL("127.0.0.1", imap.tls_port, ssl_context=imap.client_context())
    await client.wait_hello_from_server()
    response = await client.login(DOCTOR, PASSWORD)
    assert response.result == "OK", response
    response = await client.select("INBOX")
    assert response.result == "OK", response
    idle = await client.idle_start(timeout=10)
    assert client.has_pending_idle()
    sent = time.monotonic()
    await imap.deliver(message(subject="Résultat urgent"))
    pushed: list[bytes] = []
    while not any(line.endswith(b" EXISTS") for line in pushed):
        remaining = 1.0 - (time.monotonic() - sent)
        assert remaining > 0, f"no EXISTS within 1 s, got {pushed!r}"
        pushed.extend(await client.wait_server_push(timeout=remaining))
    assert b"1 EXISTS" in pushed, pushed
    assert time.monotonic() - sent < 1.0
    client.idle_done()
    response = await asyncio.wait_for(idle, 5)
    assert response.result == "OK", response
    response = await client.logout()
    assert response.result == "OK", response
