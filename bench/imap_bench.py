"""IMAP throughput, Colombe's IMAP server against Dovecot, in the same run; then IDLE at scale.

    scripts/bench-services.sh   # Debian's dovecot-core + dovecot-imapd (services off)
    .venv/bin/python -m bench.imap_bench [--quick] [--messages 1000] [--seconds 5] [--rounds 3]
        [--concurrency 1,10] [--idle-bals 90] [--idle-per-bal 100] [--idle-big 1000]
        [--idle-repeats 5] [--no-profile] [--no-write] [--keep DIR] [--dovecot-mail-fsync always]

Both servers run privately in one temporary directory, on 127.0.0.1 only, over implicit TLS
(the TEST IGC-Santé operator certificate and key, TLS >= 1.2), holding the SAME messages (a
seeded corpus of realistic 2-50 KB messages: text-only and multipart with attachments, French
subjects and names as encoded words) in one BAL's INBOX:

- **Colombe**: one process (``--serve-colombe``, below) on the embedded SQLite store (WAL) + blob
  directory, filled with ``store.deliver`` before the server starts. Two listeners in that process
  on one store: the real one (LOGIN = the store's password check: argon2, remembered for
  ``store.verified_ttl`` once it succeeded), and one whose password check the bench answers from
  its own memory after one success, used where the login is set-up and not what is measured.
- **Dovecot**: ``dovecot -F -c <conf>``, Maildir, passdb passwd-file (plaintext passwords),
  userdb static, ``ssl = yes`` on an ``imaps`` listener, ``mail_max_userip_connections`` raised;
  otherwise Debian's defaults (``imap-login`` in high-security mode: one process per connection).
  The same messages are APPENDed over IMAP.

The client load is this process (asyncio, a raw IMAP client on TLS streams): c connections each
run one operation after another for ``--seconds`` (bounded in count too); ops/s = operations
completed / elapsed. Rounds alternate the servers; the figure is the median of the rounds.

- (a) new TLS connection, LOGIN, SELECT INBOX, FETCH 1:* (ENVELOPE), LOGOUT: one op;
- (b) UID FETCH n BODY.PEEK[] of a random message (connections logged in beforehand);
- (c) UID SEARCH, in turn FROM <a sender>, UNSEEN, SINCE <date>;
- (d) UID STORE n +FLAGS (\\Flagged), then -FLAGS, on random messages;
- (e) APPEND of a 10 KB message to INBOX (last, so the other operations see the seeded 1,000).

IDLE: ``--idle-bals`` x ``--idle-per-bal`` + ``--idle-big`` TLS connections to the one Colombe
process (client processes of their own), each LOGIN, SELECT INBOX, IDLE, all through the real
listener: first one connection per BAL (cold logins, an argon2 verify each: the login rate), then
the rest. Server memory per connection = (RSS, PSS from smaps_rollup after - before) /
connections. A delivery = an APPEND from another connection to one BAL's INBOX; its latency is
until every IDLE session of that BAL has read ``* n EXISTS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.header import Header
from pathlib import Path
from typing import Any

from bench import results
from bench.mta_bench import (
    cpu_ticks,
    descendants,
    free_port,
    memory_kib,
    mib,
    running_dir,
    spawn,
    stop_process,
    wait_quiet,
)

DOMAIN = "hopital-test.mssante.fr"
USER = f"jean.dupont@{DOMAIN}"
PASSWORD = "mot-de-passe-du-bench"
REPO = Path(__file__).resolve().parent.parent
DOVECOT = "/usr/sbin/dovecot"
OPS = ("a", "b", "c", "d", "e")
OP_NAMES = {
    "a": "LOGIN+SELECT+FETCH 1:* (ENVELOPE), new TLS connection",
    "b": "UID FETCH n BODY.PEEK[] (random message)",
    "c": "UID SEARCH (FROM / UNSEEN / SINCE in turn)",
    "d": "UID STORE n +FLAGS / -FLAGS (\\Flagged)",
    "e": "APPEND 10 KB to INBOX",
}
MAX_OPS = 200_000
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n\Z")


# --------------------------------------------------------------------------------------------
# The corpus

SENDERS = [
    ("Laboratoire Biologie Médicale", "resultats@labo-test.mssante.fr"),
    ("Dr Hélène Lefèvre", "helene.lefevre@clinique-test.mssante.fr"),
    ("Dr François Mérieux", "francois.merieux@chu-test.mssante.fr"),
    ("Secrétariat Cardiologie", "cardio@chu-test.mssante.fr"),
    ("Centre d'Imagerie Médicale", "imagerie@radio-test.mssante.fr"),
    ("Dr Zoé Nguyễn", "zoe.nguyen@cabinet-test.mssante.fr"),
    ("Pharmacie de la Gare", "officine@pharma-test.mssante.fr"),
    ("Dr Jérôme Dubœuf", "jerome.duboeuf@ehpad-test.mssante.fr"),
    ("Service des Urgences", "urgences@chu-test.mssante.fr"),
    ("Mme Anaïs Cazé, IDE", "anais.caze@ide-test.mssante.fr"),
]
SUBJECTS = [
    "Résultats d'analyses",
    "Compte rendu opératoire",
    "Lettre de liaison – sortie d'hospitalisation",
    "Ordonnance renouvelée",
    "Demande d'avis spécialisé",
    "Imagerie : IRM du genou gauche",
    "Bilan pré-opératoire à compléter",
    "Synthèse de réunion de concertation pluridisciplinaire",
    "Certificat médical – aptitude",
    "Suivi post-opératoire, J+15",
]
WORDS = [
    *("patient", "bilan", "examen", "traitement", "posologie", "antécédents", "allergie"),
    *("tension", "fréquence", "cardiaque", "hémoglobine", "créatinine", "glycémie", "résultat"),
    *("normal", "contrôle", "rendez-vous", "semaine", "prescription", "surveillance"),
    *("évolution", "favorable", "consultation", "radiographie", "échographie"),
]


def _encoded(text: str, rng: random.Random) -> str:
    """An RFC 2047 encoded word, B or Q (what mail clients send)."""
    if rng.random() < 0.5:
        return Header(text, "utf-8").encode()
    q = "".join(
        c
        if c.isascii() and (c.isalnum() or c in ".-")
        else "".join(f"={b:02X}" for b in c.encode())
        for c in text.replace(" ", "_")
    ).replace("=5F", "_")
    return f"=?utf-8?q?{q}?="


def _text(rng: random.Random, size: int) -> str:
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))).capitalize() + "."
        out.append(line)
        n += len(line.encode()) + 2
    return "\r\n".join(out) + "\r\n"


def _base64(rng: random.Random, size: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    lines, n = [], 0
    while n < size:
        lines.append("".join(rng.choices(alphabet, k=76)))
        n += 78
    return "\r\n".join(lines) + "\r\n"


def make_message(n: int, size: int, rng: random.Random) -> bytes:
    name, address = SENDERS[n % len(SENDERS)]
    subject = f"{SUBJECTS[rng.randrange(len(SUBJECTS))]} n°{n}"
    date = datetime(2026, 1, 5, 8, tzinfo=UTC) + timedelta(minutes=467 * n)
    head = (
        f"From: {_encoded(name, rng)} <{address}>\r\n"
        f"To: =?utf-8?q?Jean_Dupont?= <{USER}>\r\n"
        + (f"Cc: {_encoded(SENDERS[(n + 3) % 10][0], rng)} <{SENDERS[(n + 3) % 10][1]}>\r\n")
        + f"Subject: {_encoded(subject, rng)}\r\n"
        f"Date: {date:%a, %d %b %Y %H:%M:%S} +0100\r\n"
        f"Message-ID: <{n}.{rng.getrandbits(48):x}@mssante.test>\r\n"
        f"X-MSS-NIL: TEST-LPS-1.0\r\n"
        f"MIME-Version: 1.0\r\n"
    )
    if rng.random() < 0.3:  # text only
        body = (
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + _text(rng, size - len(head) - 100)
        )
        return (head + body).encode()
    b = f"=_part{n}_{rng.getrandbits(32):x}"
    text = _text(rng, rng.randint(400, 1500))
    parts = [
        f"--{b}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{text}"
    ]
    remaining = size - len(head) - len(text) - 600
    kinds = [("application/pdf", "compte-rendu"), ("image/jpeg", "cliché"), ("text/xml", "cda")]
    for i in range(rng.choice((1, 1, 2))):
        part = remaining if i == 0 else remaining // 3
        mime, stem = kinds[rng.randrange(len(kinds))]
        ext = mime.split("/")[1]
        filename = _encoded(f"{stem}-{n}-{i}.{ext}", rng)
        parts.append(
            f'--{b}\r\nContent-Type: {mime}; name="{filename}"\r\n'
            f"Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{filename}"\r\n\r\n'
            + _base64(rng, max(200, part))
        )
    body = (
        f'Content-Type: multipart/mixed; boundary="{b}"\r\n\r\n'
        "This is a multi-part message in MIME format.\r\n" + "".join(parts) + f"--{b}--\r\n"
    )
    return (head + body).encode()


def corpus(count: int, seed: int = 2026) -> list[bytes]:
    rng = random.Random(seed)
    return [make_message(n, int(2000 * 25 ** rng.random()), rng) for n in range(count)]


def append_message(n: int) -> bytes:
    return make_message(100_000 + n, 10_240, random.Random(n))


# --------------------------------------------------------------------------------------------
# A raw IMAP client


class ImapError(Exception):
    pass


def client_context(trust: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(trust))
    ctx.check_hostname = False
    return ctx


def quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.n = 0

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext, timeout: float = 30) -> Conn:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, limit=1 << 20
            )
            conn = cls(reader, writer)
            greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            conn.abort()
            raise ImapError(f"greeting {greeting[:80]!r}")
        return conn

    async def response(self) -> bytes:
        """One response line, its literals inline."""
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("closed by the server")
        out = line
        while line.endswith(b"}\r\n"):
            m = _LITERAL.search(line)
            if m is None:
                break
            out += await self.reader.readexactly(int(m.group(1)))
            line = await self.reader.readline()
            out += line
        return out

    def _tag(self) -> bytes:
        self.n += 1
        return b"t%d" % self.n

    async def until(self, tag: bytes) -> list[bytes]:
        lines = []
        prefix = tag + b" "
        while True:
            line = await self.response()
            lines.append(line)
            if line.startswith(prefix):
                if line[len(prefix) : len(prefix) + 2] != b"OK":
                    raise ImapError(line[:200].decode(errors="replace"))
                return lines

    async def command(self, text: bytes, timeout: float = 60) -> list[bytes]:
        tag = self._tag()
        self.writer.write(tag + b" " + text + b"\r\n")
        async with asyncio.timeout(timeout):
            return await self.until(tag)

    async def login(self, user: str, password: str) -> None:
        await self.command(f"LOGIN {quote(user)} {quote(password)}".encode())

    async def append(self, folder: str, message: bytes, timeout: float = 60) -> list[bytes]:
        tag = self._tag()
        self.writer.write(tag + b" APPEND %s {%d}\r\n" % (quote(folder).encode(), len(message)))
        async with asyncio.timeout(timeout):
            while True:
                line = await self.response()
                if line.startswith(b"+"):
                    break
                if line.startswith(tag + b" "):
                    raise ImapError(line.decode(errors="replace"))
            self.writer.write(message + b"\r\n")
            return await self.until(tag)

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()

    async def logout(self) -> None:
        with contextlib.suppress(Exception):
            await self.command(b"LOGOUT", timeout=5)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


# --------------------------------------------------------------------------------------------
# The servers


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def caching_check(
    check: Callable[[str, str], Awaitable[str | None]],
) -> Callable[[str, str], Awaitable[str | None]]:
    known: dict[tuple[str, str], asyncio.Future[str | None]] = {}

    async def cached(login: str, password: str) -> str | None:
        key = (login, password)
        pending = known.get(key)
        if pending is None:  # one argon2 verify per (login, password), shared by those waiting
            pending = known[key] = asyncio.ensure_future(check(login, password))
        address = await asyncio.shield(pending)
        if address is None:
            known.pop(key, None)
        return address

    return cached


def write_text(path: Path, text: str) -> None:
    path.write_text(text)


async def serve_colombe(cfg: dict[str, Any]) -> None:
    """The Colombe server process: two implicit-TLS listeners on one store, until SIGTERM."""
    from imap.auth import Plain, password_check
    from imap.server import ImapServer, Limits
    from pki.tls import client_facing_context
    from store import Store

    raise_nofile()
    store = await Store.open(cfg["url"], cfg["blobs"])
    ctx = client_facing_context(Path(cfg["chain"]), Path(cfg["key"]))
    limits = Limits(
        max_connections=20_000,
        max_connections_per_ip=20_000,
        max_connections_per_user=cfg["per_user"],
    )

    def listener(check: Any, **shared: Any) -> ImapServer:
        return ImapServer(
            store,
            tls_context=ctx,
            limits=limits,
            mechanisms={"PLAIN": Plain(check)},
            password_check=check,
            implicit_tls=True,
            **shared,
        )

    # Garbage collector pauses, reported at exit (a full collection walks every object of
    # 10,000 sessions: the suspect when one delivery to 1,000 IDLE sessions is slow).
    pauses: list[tuple[float, int]] = []  # (seconds, objects tracked then)
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif info["generation"] == 2:
            pauses.append((time.perf_counter() - started[0], len(gc.get_objects())))

    gc.callbacks.append(on_gc)
    check = password_check(store)
    real = listener(check)
    fast = listener(caching_check(check), budget=real.budget, throttle=real.throttle)
    await real.start("127.0.0.1", cfg["port"])
    await fast.start("127.0.0.1", cfg["port_cached"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    write_text(Path(cfg["ready"]), str(os.getpid()))
    await stop.wait()
    longest, tracked = max(pauses, default=(0.0, 0))
    print(f"full collections: {len(pauses)} longest_ms: {longest * 1000:.0f} "
          f"tracked_objects: {tracked}", flush=True)  # fmt: skip
    await asyncio.wait_for(asyncio.gather(real.stop(), fast.stop()), 30)
    await store.close()


async def wait_greeting(port: int, ctx: ssl.SSLContext, seconds: float, alive: Callable[[], bool]):
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server exited")
        try:
            conn = await Conn.open(port, ctx, timeout=5)
            await conn.logout()
            return
        except (OSError, TimeoutError, ImapError, ssl.SSLError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise RuntimeError(f"no IMAP greeting on 127.0.0.1:{port} after {seconds:.0f} s: {last}")


@dataclass
class Target:
    name: str
    port: int
    setup_port: int  # where connections whose login is not measured log in
    proc: subprocess.Popen[bytes] | None = None

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc is not None else []


@dataclass
class Colombe(Target):
    base: Path = Path()

    async def seed(self, messages: list[bytes], idle_users: list[str]) -> None:
        from store import Store

        home = self.base / "colombe"
        home.mkdir(parents=True, exist_ok=True)
        store = await Store.open(f"sqlite:///{home / 'colombe.db'}", home / "blobs")
        try:
            await store.add_domain(DOMAIN)
            await store.create_bal(USER, display_name="Dr Jean Dupont")
            await store.set_password(USER, PASSWORD)
            sem = asyncio.Semaphore(8)

            async def bal(address: str) -> None:
                async with sem:
                    await store.create_bal(address, display_name=address.split("@")[0])
                    await store.set_password(address, PASSWORD)

            await asyncio.gather(*(bal(a) for a in idle_users))
            for message in messages:  # in order: the same UIDs as Dovecot's
                await store.deliver(USER, message, "INBOX")
        finally:
            await store.close()

    async def start(self, pki: Any, ctx: ssl.SSLContext, per_user: int) -> None:
        home = self.base / "colombe"
        operator = pki.certs["operator"]
        cfg = {
            "url": f"sqlite:///{home / 'colombe.db'}",
            "blobs": str(home / "blobs"),
            "chain": str(operator.chain_path),
            "key": str(operator.key_path),
            "port": self.port,
            "port_cached": self.setup_port,
            "per_user": per_user,
            "ready": str(home / "ready"),
        }
        (home / "config.json").write_text(json.dumps(cfg))
        argv = [
            sys.executable,
            "-m",
            "bench.imap_bench",
            "--serve-colombe",
            str(home / "config.json"),
        ]
        self.proc = spawn(argv, home, cwd=REPO)
        deadline = time.monotonic() + 60
        while not (home / "ready").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("colombe did not start: " + (home / "stdout.log").read_text())
            await asyncio.sleep(0.1)
        await wait_greeting(
            self.port, ctx, 20, lambda: self.proc is not None and self.proc.poll() is None
        )

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=60)
            self.proc = None


@dataclass
class Dovecot(Target):
    base: Path = Path()
    # None: Debian's default (``optimized``: mail files fsync'd, index and flag changes not).
    mail_fsync: str | None = None

    @property
    def dc(self) -> Path:
        return self.base / "dovecot"

    def write_conf(self, pki: Any) -> Path:
        for d in ("run", "state"):
            (self.dc / d).mkdir(parents=True, exist_ok=True)
        root = self.base / "maildir"
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "nobody", "nogroup")
        passwd = self.dc / "passwd"
        passwd.write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        passwd.chmod(0o644)
        operator = pki.certs["operator"]
        dh = (
            "ssl_dh = </usr/share/dovecot/dh.pem\n"
            if Path("/usr/share/dovecot/dh.pem").exists()
            else ""
        )
        conf = f"""\
base_dir = {self.dc / "run"}
state_dir = {self.dc / "state"}
log_path = {self.dc / "dovecot.log"}
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{operator.chain_path}
ssl_key = <{operator.key_path}
ssl_min_protocol = TLSv1.2
{dh}auth_mechanisms = plain
mail_location = maildir:{root}/%d/%n
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/%d/%n
}}
protocol imap {{
  mail_max_userip_connections = 2000
}}
{f"mail_fsync = {self.mail_fsync}" if self.mail_fsync else ""}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.port}
    ssl = yes
  }}
}}
"""
        path = self.dc / "dovecot.conf"
        path.write_text(conf)
        return path

    async def start(self, pki: Any, ctx: ssl.SSLContext) -> None:
        os.chmod(self.base, 0o755)  # dovecot's unprivileged users walk into it
        conf = self.write_conf(pki)
        self.proc = spawn([DOVECOT, "-F", "-c", str(conf)], self.dc)
        await wait_greeting(
            self.port, ctx, 20, lambda: self.proc is not None and self.proc.poll() is None
        )

    async def seed(self, messages: list[bytes], ctx: ssl.SSLContext) -> None:
        conn = await Conn.open(self.port, ctx)
        await conn.login(USER, PASSWORD)
        for message in messages:
            await conn.append("INBOX", message)
        await conn.logout()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def log_tail(self) -> str:
        parts = []
        for log in (self.dc / "dovecot.log", self.dc / "stdout.log"):
            with contextlib.suppress(OSError):
                parts.append("\n".join(log.read_text().splitlines()[-15:]))
        return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# The operations


@dataclass
class Shared:
    ctx: ssl.SSLContext
    uids: list[int]
    searches: list[bytes]
    count: int


async def logged_in(port: int, sh: Shared, select: bool) -> Conn:
    conn = await Conn.open(port, sh.ctx)
    await conn.login(USER, PASSWORD)
    if select:
        await conn.command(b"SELECT INBOX")
    return conn


def fetch_count(lines: list[bytes]) -> int:
    return sum(1 for line in lines if line.startswith(b"* ") and b" FETCH " in line[:20])


async def op_a(
    target: Target, port: int, sh: Shared, _conn: Conn | None, rng: random.Random, i: int
) -> None:
    conn = await Conn.open(port, sh.ctx)
    try:
        await conn.login(USER, PASSWORD)
        await conn.command(b"SELECT INBOX")
        lines = await conn.command(b"FETCH 1:* (ENVELOPE)")
        if fetch_count(lines) < sh.count:
            raise ImapError(f"{fetch_count(lines)} FETCH responses, expected {sh.count}")
    finally:
        await conn.logout()


async def op_b(
    target: Target, port: int, sh: Shared, conn: Conn | None, rng: random.Random, i: int
) -> None:
    assert conn is not None
    uid = rng.choice(sh.uids)
    lines = await conn.command(b"UID FETCH %d BODY.PEEK[]" % uid)
    if not any(b"BODY[] {" in line[:80] for line in lines):
        raise ImapError(f"no body for UID {uid}: {lines[0][:100]!r}")


async def op_c(
    target: Target, port: int, sh: Shared, conn: Conn | None, rng: random.Random, i: int
) -> None:
    assert conn is not None
    await conn.command(sh.searches[i % len(sh.searches)])


async def op_d(
    target: Target, port: int, sh: Shared, conn: Conn | None, rng: random.Random, i: int
) -> None:
    assert conn is not None
    uid = rng.choice(sh.uids)
    sign = b"+" if i % 2 == 0 else b"-"
    await conn.command(b"UID STORE %d %sFLAGS (\\Flagged)" % (uid, sign))


async def op_e(
    target: Target, port: int, sh: Shared, conn: Conn | None, rng: random.Random, i: int
) -> None:
    assert conn is not None
    await conn.append("INBOX", APPENDS[i % len(APPENDS)])


APPENDS: list[bytes] = []
OP_FUNCS = {"a": op_a, "b": op_b, "c": op_c, "d": op_d, "e": op_e}


@dataclass
class Run:
    target: str
    op: str
    c: int
    ops: int
    seconds: float
    errors: int
    client_cpu: float
    server_cpu: float
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


async def run_load(target: Target, op: str, c: int, seconds: float, sh: Shared, seed: int) -> Run:
    func = OP_FUNCS[op]
    port = target.port
    conns: list[Conn | None] = []
    if op == "a":
        conns = [None] * c
    else:
        conns = list(
            await asyncio.gather(*(logged_in(target.setup_port, sh, op != "e") for _ in range(c)))
        )
    done = errors = 0
    first_error = ""
    stop_at = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done, errors, first_error
        rng = random.Random(seed * 1000 + w)
        i = w
        while time.monotonic() < stop_at and done + errors < MAX_OPS:
            try:
                await func(target, port, sh, conns[w], rng, i)
                done += 1
            except (
                OSError,
                TimeoutError,
                ImapError,
                ssl.SSLError,
                asyncio.IncompleteReadError,
            ) as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                if conns[w] is not None:
                    with contextlib.suppress(Exception):
                        conns[w] = await logged_in(target.setup_port, sh, op != "e")
                if errors > 100:
                    return
            i += c

    hz = os.sysconf("SC_CLK_TCK")
    pids = target.pids()
    s0 = cpu_ticks(pids)[1]
    c0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(c)))
    elapsed = time.perf_counter() - t0
    client_cpu = (time.process_time() - c0) / elapsed
    server_cpu = (cpu_ticks(target.pids())[1] - s0) / hz / elapsed
    await asyncio.gather(*(x.logout() for x in conns if x is not None))
    return Run(target.name, op, c, done, elapsed, errors, client_cpu, server_cpu, first_error)


# --------------------------------------------------------------------------------------------
# Profiles (py-spy on the Colombe process)


def summarise_profile(raw: Path, top: int = 12) -> str:
    """Top functions of a py-spy ``--format raw`` file: self and inclusive share of samples."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return "(no samples)"

    def short(f: str) -> str:
        return f.replace(str(REPO) + "/", "").replace(sys.prefix + "/lib/python3.11/", "")

    out = [f"{total} samples; self time (top {top}):"]
    out += [f"  {n * 100 / total:5.1f} %  {short(f)}" for f, n in own.most_common(top)]
    interesting = [
        (f, n)
        for f, n in incl.most_common()
        if ("imap/" in f or "store/" in f or "ssl" in f or "sqlalchemy" in f or "aiosqlite" in f)
        and n < total
    ][:top]
    out.append(f"inclusive time, imap/store/ssl/sql frames (top {top}):")
    out += [f"  {n * 100 / total:5.1f} %  {short(f)}" for f, n in interesting]
    return "\n".join(out)


def find_pyspy() -> str | None:
    path = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return path if Path(path).exists() else None


async def profile_op(colombe: Colombe, op: str, seconds: float, sh: Shared, base: Path) -> str:
    pyspy = find_pyspy()
    if pyspy is None or colombe.proc is None:
        return "(py-spy not available)"
    raw = base / f"profile-{op}.txt"
    proc = await asyncio.create_subprocess_exec(
        pyspy, "record", "-p", str(colombe.proc.pid), "-d", str(int(seconds)), "-r", "250",
        "-f", "raw", "-o", str(raw), "--nonblocking", "--gil",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.5)
    await run_load(colombe, op, 10, seconds - 1, sh, seed=99)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return "(py-spy did not finish)"
    if not raw.exists():
        return f"(py-spy failed: {err.decode(errors='replace')[-300:]})"
    return summarise_profile(raw)


# --------------------------------------------------------------------------------------------
# IDLE at scale: client processes


def idle_worker(wid: int, port: int, trust: str, users: list[str], concurrency: int,
                out: Any, stop: Any, ramp_cap: float) -> None:  # fmt: skip
    raise_nofile()
    asyncio.run(_idle_worker(wid, port, trust, users, concurrency, out, stop, ramp_cap))


async def _idle_worker(wid: int, port: int, trust: str, users: list[str], concurrency: int,
                       out: Any, stop: Any, ramp_cap: float) -> None:  # fmt: skip
    ctx = client_context(Path(trust))
    sem = asyncio.Semaphore(concurrency)
    conns: list[Conn] = []
    failed = 0
    first_error = ""
    deadline = time.monotonic() + ramp_cap
    t0 = time.monotonic()

    async def watch(conn: Conn, user: str) -> None:
        with contextlib.suppress(Exception):
            while True:
                line = await conn.reader.readline()
                if not line:
                    return
                if line.endswith(b" EXISTS\r\n"):
                    out.put(("exists", user, time.monotonic()))

    async def one(user: str) -> None:
        nonlocal failed, first_error
        async with sem:
            if time.monotonic() > deadline or stop.is_set():
                failed += 1
                return
            try:
                conn = await Conn.open(port, ctx, timeout=60)
                await conn.login(USER if user == "" else user, PASSWORD)
                await conn.command(b"SELECT INBOX")
                conn.writer.write(b"i IDLE\r\n")
                async with asyncio.timeout(30):
                    line = await conn.reader.readline()
                if not line.startswith(b"+"):
                    raise ImapError(f"IDLE: {line[:80]!r}")
            except Exception as exc:  # counted and reported
                failed += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                return
            conns.append(conn)
            tasks.append(asyncio.ensure_future(watch(conn, user)))
            if len(conns) % 500 == 0:
                out.put(("progress", wid, len(conns), time.monotonic() - t0))

    tasks: list[asyncio.Future[None]] = []
    await asyncio.gather(*(one(u) for u in users))
    out.put(("ready", wid, len(conns), failed, time.monotonic() - t0, first_error))
    await asyncio.to_thread(stop.wait)
    for conn in conns:
        conn.abort()
    for t in tasks:
        t.cancel()
    out.put(("done", wid))


@dataclass
class Delivery:
    bal: str
    sessions: int
    received: int
    append_ms: float
    all_ms: float
    median_ms: float


@dataclass
class IdleResult:
    target: int
    held: int = 0
    failed: int = 0
    real_logins: int = 0
    real_seconds: float = 0.0
    ramp_seconds: float = 0.0
    rss_before: int = 0
    pss_before: int = 0
    rss_after: int = 0
    pss_after: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # From the server's exit line: full collections, the longest one (ms), objects tracked.
    gc_summary: tuple[int, int, int] | None = None


async def idle_bench(
    colombe: Colombe, trust: Path, layout: list[tuple[str, int]], repeats: int
) -> IdleResult:
    users = [u for u, n in layout for _ in range(n)]
    res = IdleResult(target=len(users))
    pid = colombe.pids()[0]
    res.rss_before, res.pss_before = memory_kib([pid])
    ctx_mp = mp.get_context("spawn")
    queue = ctx_mp.Queue()
    stop = ctx_mp.Event()
    procs = []
    # First one connection per BAL (a cold login: argon2 each), then the rest (the store
    # remembers the verification), all through the real listener.
    real_users = [u for u, _ in layout]
    rest = [u for u, n in layout for _ in range(n - 1)]
    loop = asyncio.get_running_loop()

    def get(timeout: float) -> Any:
        try:
            return queue.get(timeout=timeout)
        except Exception:  # queue.Empty
            return None

    exists: dict[str, list[float]] = defaultdict(list)

    async def wait_ready(n: int, cap: float) -> list[tuple[Any, ...]]:
        ready = []
        deadline = time.monotonic() + cap
        while len(ready) < n and time.monotonic() < deadline:
            msg = await loop.run_in_executor(None, get, 1.0)
            if msg is None:
                continue
            if msg[0] == "ready":
                ready.append(msg)
            elif msg[0] == "progress":
                print(f"  idle worker {msg[1]}: {msg[2]} connections in {msg[3]:.0f} s", flush=True)
            elif msg[0] == "exists":
                exists[msg[1]].append(msg[2])
        return ready

    t_start = time.monotonic()
    try:
        if real_users:
            p = ctx_mp.Process(
                target=idle_worker,
                args=(0, colombe.port, str(trust), real_users, 20, queue, stop, 900.0),
            )
            p.start()
            procs.append(p)
            ready = await wait_ready(1, 960)
            if ready:
                _, _, ok, failed, secs, err = ready[0]
                res.real_logins, res.real_seconds = ok, secs
                res.held += ok
                res.failed += failed
                if err:
                    res.errors.append(f"cold logins: {err}")
            print(f"  {res.real_logins} cold logins in {res.real_seconds:.1f} s", flush=True)
        workers = 2 if len(rest) > 1000 else 1
        chunks = [rest[i::workers] for i in range(workers)]
        for w, chunk in enumerate(chunks, start=1):
            p = ctx_mp.Process(
                target=idle_worker,
                args=(w, colombe.port, str(trust), chunk, 100, queue, stop, 900.0),
            )
            p.start()
            procs.append(p)
        for msg in await wait_ready(len(chunks), 1000):
            _, _, ok, failed, secs, err = msg
            res.held += ok
            res.failed += failed
            if err:
                res.errors.append(err)
        res.ramp_seconds = time.monotonic() - t_start
        print(f"  {res.held} IDLE sessions held after {res.ramp_seconds:.0f} s", flush=True)
        await asyncio.sleep(3)
        res.rss_after, res.pss_after = memory_kib([pid])
        # Deliveries: an APPEND to one BAL's INBOX from another connection.
        sh_ctx = client_context(trust)
        counts = Counter(users)
        small = [u for u, _ in layout if counts[u] == layout[0][1]]
        big = [u for u, n in layout if n != layout[0][1]]
        plan = [small[i % len(small)] for i in range(repeats)] + big[:1] * max(1, repeats // 2)
        for i, bal in enumerate(plan):
            exists.clear()
            conn = await Conn.open(colombe.setup_port, sh_ctx)
            await conn.login(bal, PASSWORD)
            t0 = time.monotonic()
            await conn.append("INBOX", append_message(i))
            t_ok = time.monotonic()
            await conn.logout()
            want = counts[bal]
            deadline = time.monotonic() + 60
            while len(exists[bal]) < want and time.monotonic() < deadline:
                msg = await loop.run_in_executor(None, get, 0.5)
                if msg is not None and msg[0] == "exists":
                    exists[msg[1]].append(msg[2])
            times = sorted(t - t0 for t in exists[bal])
            res.deliveries.append(
                Delivery(
                    bal, want, len(times), (t_ok - t0) * 1000,
                    (times[-1] * 1000) if times else float("nan"),
                    statistics.median(times) * 1000 if times else float("nan"),
                )
            )  # fmt: skip
            d = res.deliveries[-1]
            print(
                f"  delivery to {bal} ({want} IDLE): {d.received} EXISTS, all in {d.all_ms:.0f} ms"
                f" (median {d.median_ms:.0f} ms, APPEND OK after {d.append_ms:.0f} ms)",
                flush=True,
            )
            await asyncio.sleep(1)
    finally:
        stop.set()
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
                p.join(5)
        queue.close()
    return res


# --------------------------------------------------------------------------------------------
# Main


def gc_summary(log: Path) -> tuple[int, int, int] | None:
    with contextlib.suppress(OSError):
        found = re.search(
            r"full collections: (\d+) longest_ms: (\d+) tracked_objects: (\d+)", log.read_text()
        )
        if found:
            count, longest, tracked = (int(x) for x in found.groups())
            return count, longest, tracked
    return None


def ssl_buffer_kib() -> int:
    import asyncio.sslproto

    return int(asyncio.sslproto.SSLProtocol.max_size) // 1024


def verified_ttl() -> float:
    from store import store as store_module

    return float(getattr(store_module, "VERIFIED_TTL", 0.0))


def _commit() -> str:
    """The checked-out commit, read from .git (no git process)."""
    try:
        git = REPO / ".git"
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:7]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:7]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line[:7]
    except OSError:
        pass
    return "unknown"


def median_rate(runs: list[Run], target: str, op: str, c: int) -> Run | None:
    mine = [r for r in runs if r.target == target and r.op == op and r.c == c]
    if not mine:
        return None
    mine.sort(key=lambda r: r.rate)
    return mine[len(mine) // 2]


def spread(runs: list[Run], target: str, op: str, c: int) -> str:
    rates = [r.rate for r in runs if r.target == target and r.op == op and r.c == c]
    if len(rates) < 2:
        return ""
    return f"{min(rates):,.0f}-{max(rates):,.0f}"


def fmt_rate(x: float) -> str:
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


METHOD = """\
Both servers run privately in one temporary directory, on 127.0.0.1 only, over implicit TLS (the
TEST IGC-Santé operator certificate and key, TLS >= 1.2), and hold the SAME messages in one BAL's
INBOX (in the same order, so the same UIDs; every other one \\Seen; the search answers are
checked equal): a seeded corpus of realistic 2-50 KB messages, text-only or multipart with one or
two base64 attachments, French subjects, names and file names as RFC 2047 encoded words.

- **Colombe**: one process (``imap_bench --serve-colombe``: ``ImapServer`` with ``Plain`` and
  ``password_check``), embedded SQLite store (WAL) + blob directory filled with ``store.deliver``
  before the server starts; Limits(max_connections=20000, max_connections_per_ip=20000,
  max_connections_per_user=1010).
- **Dovecot** (Debian's 2.3): ``dovecot -F -c <conf>``, Maildir, passdb passwd-file (plaintext
  passwords), userdb static, ``ssl = yes``, ``ssl_min_protocol = TLSv1.2``, an ``imaps`` listener
  on 127.0.0.1, ``mail_max_userip_connections = 2000``, Debian's defaults otherwise (imap-login in
  high-security mode, one process per connection; one imap process per session). The messages
  are APPENDed over IMAP.

The load is one asyncio process with a raw IMAP client (TLS streams, one command at a time per
connection): c connections each run one operation after another for a fixed time (and at most
200,000 operations); ops/s = operations completed / elapsed. Operations: (a) a new TLS
connection, LOGIN, SELECT INBOX, FETCH 1:* (ENVELOPE), LOGOUT (one op, the 1,000 envelopes
checked); (b) UID FETCH n BODY.PEEK[] of a random message; (c) UID SEARCH FROM (a sender) /
UNSEEN / SINCE 1-Jan-2026 in turn (100, 500 and 1,000 hits); (d) UID STORE n +FLAGS (\\Flagged)
then -FLAGS on random messages; (e) APPEND of a 10 KB message to INBOX (run last). In (b)-(e) the
c connections are logged in (and, but for (e), have INBOX selected) before the clock starts.\
"""


def report(
    runs: list[Run], levels: list[int], idle: IdleResult | None, profiles: dict[str, str],
    args: argparse.Namespace, notes: list[str], argon2_ms: float, verified_ttl: float,
) -> str:  # fmt: skip
    out = [
        METHOD,
        "",
        f"{args.messages:,} messages of 2-50 KB ({args.corpus_mb:.1f} MB) in one INBOX, the same in "
        "both servers; implicit TLS on 127.0.0.1; the client load is one asyncio process (raw "
        f"IMAP client); each figure is the median of {args.rounds} rounds of {args.seconds:g} s "
        "(rounds alternate the servers). CPU columns: cores used by the client process and by "
        "the server (Colombe: its one process; Dovecot: master and every child, reaped ones "
        "included)."
        + (
            f" Dovecot ran with ``mail_fsync = {args.dovecot_mail_fsync}``."
            if args.dovecot_mail_fsync
            else ""
        ),
        "",
        "| operation | c | Colombe ops/s | Dovecot ops/s | Colombe/Dovecot | Colombe CPU "
        "(server / client) | Dovecot CPU (server / client) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for op in OPS:
        for c in levels:
            col = median_rate(runs, "Colombe", op, c)
            dov = median_rate(runs, "Dovecot", op, c)
            if col is None:
                continue
            ratio = f"{col.rate / dov.rate:.2f}" if dov and dov.rate else "-"
            dov_rate = fmt_rate(dov.rate) if dov else "-"
            dov_cpu = f"{dov.server_cpu:.2f} / {dov.client_cpu:.2f}" if dov else "-"
            out.append(
                f"| ({op}) {OP_NAMES[op]} | {c} | {fmt_rate(col.rate)} | {dov_rate} | {ratio} | "
                f"{col.server_cpu:.2f} / {col.client_cpu:.2f} | {dov_cpu} |"
            )
    errs = [r for r in runs if r.errors]
    for r in errs:
        notes.append(f"{r.target} ({r.op}) c={r.c}: {r.errors} errors, first: {r.first_error}")
    out += [
        "",
        "Rate ranges over the rounds (min-max): "
        + "; ".join(
            f"({op}) c={c}: Colombe {spread(runs, 'Colombe', op, c) or '-'}, Dovecot "
            f"{spread(runs, 'Dovecot', op, c) or '-'}"
            for op in ("a", "b", "c", "d", "e")
            for c in levels
        )
        + ".",
        "",
        f"One argon2 verify (the store's PasswordHasher, t=3, m=64 MiB, p=4) takes {argon2_ms:.0f} "
        f"ms of wall time on this machine; the store remembers a successful check for "
        f"{verified_ttl:g} s (``store.verified_ttl``), so in (a) only the first LOGIN of the run "
        "pays it (the cold rate is in the IDLE table). Dovecot checks a plaintext passwd-file "
        "(no auth cache).",
    ]
    if idle is not None:
        n = max(idle.held, 1)
        d_rss = (idle.rss_after - idle.rss_before) / n
        d_pss = (idle.pss_after - idle.pss_before) / n
        out += [
            "",
            f"### IDLE: {idle.held:,} concurrent sessions in one Colombe process",
            "",
            f"Target {idle.target:,} TLS connections (LOGIN, SELECT INBOX, IDLE) from "
            f"{'3' if idle.target - idle.real_logins > 1000 else '2'} client processes, all "
            "through the real listener; "
            f"max_connections=20000, per IP 20000, per user {args.per_user}; "
            f"RLIMIT_NOFILE raised to the hard limit ({resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,}).",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| sessions held / failed | {idle.held:,} / {idle.failed:,} |",
            f"| cold logins, one per BAL (argon2 each), 20 in flight | {idle.real_logins:,} in "
            f"{idle.real_seconds:.1f} s = {idle.real_logins / max(idle.real_seconds, 1e-9):.1f} /s |",
            f"| whole ramp-up (cold logins, then the rest, 2 processes x 100 in flight) | "
            f"{idle.ramp_seconds:.0f} s |",
            f"| server RSS before -> after | {mib(idle.rss_before)} -> {mib(idle.rss_after)} |",
            f"| server PSS before -> after | {mib(idle.pss_before)} -> {mib(idle.pss_after)} |",
            f"| memory per IDLE session (RSS / PSS) | {d_rss:.1f} KiB / {d_pss:.1f} KiB |",
        ]
        tail = [
            "",
            "Memory: asyncio's TLS transport (``asyncio.sslproto.SSLProtocol``) allocates a read "
            f"buffer of ``max_size`` = {ssl_buffer_kib()} KiB, zero-filled, for every connection.",
        ]
        if idle.gc_summary is not None:
            count, longest, tracked = idle.gc_summary
            tail += [
                "",
                f"Garbage collector: {count} full collections in the server's life, most of them "
                f"during the ramp-up; the longest stopped the process for {longest} ms, with "
                f"{tracked:,} objects tracked (an IDLE session holds about a hundred: the "
                "coroutines, tasks and futures of asyncio's streams). A delivery that meets one "
                "waits for it.",
            ]
        by_size: dict[int, list[Delivery]] = defaultdict(list)
        for d in idle.deliveries:
            by_size[d.sessions].append(d)
        for size, ds in sorted(by_size.items()):
            alls = [d.all_ms for d in ds]
            meds = [d.median_ms for d in ds]
            apps = [d.append_ms for d in ds]
            ok = all(d.received == d.sessions for d in ds)
            out.append(
                f"| delivery to a BAL with {size:,} IDLE sessions: APPEND -> every session read "
                f"`* n EXISTS` (median of {len(ds)} runs) | {statistics.median(alls):.0f} ms "
                f"({', '.join(f'{x:.0f}' for x in alls)}){'' if ok else ' INCOMPLETE'} |"
            )
            out.append(
                f"| same, median session / APPEND tagged OK | {statistics.median(meds):.0f} ms / "
                f"{statistics.median(apps):.0f} ms |"
            )
        out += tail
        for e in idle.errors:
            notes.append(f"IDLE: {e}")
    if profiles:
        out += ["", "### Profiles of Colombe (py-spy, c=10) where it is slower than Dovecot", ""]
        for op, text in profiles.items():
            out += [f"({op}) {OP_NAMES[op]}:", "", "```", text, "```", ""]
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out)


async def main(args: argparse.Namespace) -> int:
    from pki.testpki import make_test_pki

    raise_nofile()
    levels = [int(x) for x in args.concurrency.split(",")]
    notes: list[str] = []
    messages = corpus(args.messages)
    args.corpus_mb = sum(len(m) for m in messages) / 1e6
    APPENDS[:] = [append_message(i) for i in range(50)]
    small = [f"idle{i:03d}@{DOMAIN}" for i in range(args.idle_bals)]
    layout = [(u, args.idle_per_bal) for u in small]
    if args.idle_big:
        layout.append((f"idle-big@{DOMAIN}", args.idle_big))
    args.per_user = max([n for _, n in layout] + [200]) + 10
    from argon2 import PasswordHasher

    h = PasswordHasher()
    hashed = h.hash("x")
    t = time.perf_counter()
    for _ in range(5):
        h.verify(hashed, "x")
    argon2_ms = (time.perf_counter() - t) / 5 * 1000

    with contextlib.ExitStack() as stack:
        base = stack.enter_context(running_dir())
        if args.keep:
            base = Path(args.keep)
            base.mkdir(parents=True, exist_ok=True)
        pki = make_test_pki(base / "pki")
        trust = pki.directory / "trust.pem"
        trust.write_bytes(pki.roots_path.read_bytes() + pki.intermediates_path.read_bytes())
        ctx = client_context(trust)
        colombe = Colombe("Colombe", free_port(), free_port(), base=base)
        dovecot = Dovecot("Dovecot", 0, 0, base=base, mail_fsync=args.dovecot_mail_fsync)
        dovecot.port = dovecot.setup_port = free_port()
        stack.callback(colombe.stop)
        stack.callback(dovecot.stop)
        print(f"seeding {len(messages)} messages ({args.corpus_mb:.1f} MB) ...", flush=True)
        t = time.perf_counter()
        await colombe.seed(messages, [u for u, _ in layout])
        print(f"  colombe store seeded in {time.perf_counter() - t:.0f} s", flush=True)
        await colombe.start(pki, ctx, args.per_user)
        await dovecot.start(pki, ctx)
        t = time.perf_counter()
        await dovecot.seed(messages, ctx)
        print(f"  dovecot seeded in {time.perf_counter() - t:.0f} s", flush=True)

        # Same flags in both (every other message \Seen), UIDs and search answers compared.
        uids: dict[str, list[int]] = {}
        answers: dict[str, list[int]] = {}
        sender = SENDERS[3][1]
        searches = [
            f"UID SEARCH FROM {quote(sender.split('@')[0])}".encode(),
            b"UID SEARCH UNSEEN",
            b"UID SEARCH SINCE 1-Jan-2026",
        ]
        for target in (colombe, dovecot):
            conn = await logged_in(target.setup_port, Shared(ctx, [], [], 0), True)
            lines = await conn.command(b"UID SEARCH ALL")
            uids[target.name] = [int(x) for x in lines[0].split()[2:]]
            seen = ",".join(str(u) for u in uids[target.name][::2])
            await conn.command(b"UID STORE " + seen.encode() + b" +FLAGS.SILENT (\\Seen)")
            for s in searches:
                lines = await conn.command(s)
                answers.setdefault(target.name, []).append(len(lines[0].split()) - 2)
            for _ in range(2):  # warm caches (Dovecot's index cache fields, the OS page cache)
                await conn.command(b"FETCH 1:* (ENVELOPE)")
            await conn.logout()
        if answers["Colombe"] != answers["Dovecot"]:
            notes.append(f"search answer sizes differ: {answers}")
        print(f"  search answer sizes: {answers}", flush=True)
        if len(uids["Colombe"]) != len(uids["Dovecot"]):
            raise RuntimeError(
                f"message counts differ: {len(uids['Colombe'])} vs {len(uids['Dovecot'])}"
            )

        runs: list[Run] = []
        shared = {
            t.name: Shared(ctx, uids[t.name], searches, len(messages)) for t in (colombe, dovecot)
        }
        other = await wait_quiet(args.wait_quiet)
        if other > 0.15:
            notes.append(f"the machine was busy before the runs ({other * 100:.0f}% of a core)")
        for op in OPS:
            for c in levels:
                for r in range(args.rounds):
                    order = [colombe, dovecot] if r % 2 == 0 else [dovecot, colombe]
                    entries: list[tuple[Target, str]] = [(t, op) for t in order]
                    for target, o in entries:
                        run = await run_load(target, o, c, args.seconds, shared[target.name], r)
                        runs.append(run)
                        print(
                            f"({o}) c={c} round {r + 1} {target.name}: {run.rate:,.1f} ops/s "
                            f"({run.ops} ops, {run.errors} errors, server {run.server_cpu:.2f} "
                            f"cores, client {run.client_cpu:.2f})",
                            flush=True,
                        )
                        if run.errors:
                            print(f"   first error: {run.first_error}", flush=True)
        profiles: dict[str, str] = {}
        if not args.no_profile:
            for op in OPS:
                slower = False
                for c in levels:
                    col = median_rate(runs, "Colombe", op, c)
                    dov = median_rate(runs, "Dovecot", op, c)
                    if col and dov and col.rate < dov.rate:
                        slower = True
                if slower:
                    print(f"profiling ({op}) ...", flush=True)
                    profiles[op] = await profile_op(
                        colombe, op, args.profile_seconds, shared["Colombe"], base
                    )
                    print(profiles[op], flush=True)
        dovecot.stop()

        idle: IdleResult | None = None
        if args.idle_bals:
            print(f"IDLE: {sum(n for _, n in layout):,} connections ...", flush=True)
            idle = await idle_bench(colombe, trust, layout, args.idle_repeats)
        colombe.stop()
        if idle is not None:
            idle.gc_summary = gc_summary(base / "colombe" / "stdout.log")

    body = report(runs, levels, idle, profiles, args, notes, argon2_ms, verified_ttl())
    print(body)
    if not args.no_write:
        results.commit = _commit  # no git process
        results.write_section("IMAP", args.command, body)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a small run for smoke testing (no write)")
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", default="1,10")
    p.add_argument("--idle-bals", type=int, default=90)
    p.add_argument("--idle-per-bal", type=int, default=100)
    p.add_argument("--idle-big", type=int, default=1000)
    p.add_argument("--idle-repeats", type=int, default=5)
    p.add_argument("--profile-seconds", type=float, default=8.0)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--wait-quiet", type=float, default=30.0)
    p.add_argument("--no-write", action="store_true")
    p.add_argument(
        "--dovecot-mail-fsync",
        choices=["optimized", "always", "never"],
        help="Dovecot's mail_fsync (default: Debian's, optimized); 'always' fsyncs flag changes "
        "as Colombe does",
    )
    p.add_argument("--keep", help="run in this directory and keep it (logs, profiles)")
    p.add_argument("--serve-colombe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.command = ".venv/bin/python -m bench.imap_bench" + (
        " " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""
    )
    if args.quick:
        args.messages, args.seconds, args.rounds = 200, 1.5, 1
        args.idle_bals, args.idle_per_bal, args.idle_big = 4, 25, 100
        args.idle_repeats, args.profile_seconds, args.wait_quiet = 2, 4.0, 2.0
        args.no_write = True
    return args


if __name__ == "__main__":
    a = parse()
    if a.serve_colombe:
        asyncio.run(serve_colombe(json.loads(Path(a.serve_colombe).read_text())))
        sys.exit(0)
    sys.exit(asyncio.run(main(a)))
