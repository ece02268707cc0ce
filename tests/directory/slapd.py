"""A throw-away OpenLDAP ``slapd`` for the publication tests and the LDAP bench.

It runs in the foreground as a child process, bound on 127.0.0.1 only (one ldap:// port for
StartTLS, one ldaps:// port), with an mdb database and a slapd.conf in a temporary directory, and
loads core.schema plus the schema Colombe SHIPS (directory/ldap_schema/mssante.schema — not a
copy), so a schema error breaks these tests.

Layout: suffix ``dc=mssante,dc=test``; the root DN ``cn=admin,...`` is what the tests use to look
at (and tamper with) the tree; the publisher binds as ``cn=colombe,...``, an ordinary entry with a
password that may write under the suffix, as an operator's account at the national directory would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import ldap3

from directory.ldap_entry import SCHEMA_FILE

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
MODULE_PATH = Path("/usr/lib/ldap")
SYSTEM_SCHEMA = Path("/etc/ldap/schema")

SUFFIX = "dc=mssante,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "admin-secret-for-tests"
PUBLISHER_DN = f"cn=colombe,{SUFFIX}"
PUBLISHER_PASSWORD = "publisher-secret-for-tests"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Slapd:
    """``start()`` / ``stop()`` may be called again (same ports, same database): the "directory is
    down" tests stop it and bring it back."""

    def __init__(
        self,
        workdir: Path,
        *,
        cert_chain: Path,
        key: Path,
        trust: Path,
        nosync: bool = False,
    ) -> None:
        self.workdir = workdir
        self.ldap_port = free_port()
        self.ldaps_port = free_port()
        self.trust = trust
        self._process: subprocess.Popen[bytes] | None = None
        self._log = workdir / "slapd.log"
        (workdir / "db").mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "slapd.conf"
        self.conf.write_text(
            self._config(cert_chain=cert_chain, key=key, trust=trust, nosync=nosync)
        )
        self._initialised = False

    @property
    def ldap_url(self) -> str:
        return f"ldap://localhost:{self.ldap_port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://localhost:{self.ldaps_port}"

    def _config(self, *, cert_chain: Path, key: Path, trust: Path, nosync: bool) -> str:
        w = self.workdir
        return f"""\
include {SYSTEM_SCHEMA / "core.schema"}
include {SCHEMA_FILE}
pidfile {w / "slapd.pid"}
argsfile {w / "slapd.args"}
modulepath {MODULE_PATH}
moduleload back_mdb
TLSCACertificateFile {trust}
TLSCertificateFile {cert_chain}
TLSCertificateKeyFile {key}
sizelimit 500
database mdb
maxsize 4294967296
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {w / "db"}
{"dbnosync" if nosync else ""}
index objectClass eq
index mail eq
# Like any directory, at most 500 entries per search; the publisher's account may page through
# all of them (its full reconciliation reads the whole branch).
limits dn.exact="{PUBLISHER_DN}" size.soft=500 size.hard=500 size.pr=500 size.prtotal=unlimited
access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to dn.subtree="{SUFFIX}"
    by dn.exact="{PUBLISHER_DN}" write
    by * read
"""

    # -- process ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._process is not None:
            return
        urls = f"ldap://127.0.0.1:{self.ldap_port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
        with self._log.open("ab") as log:
            # -d 0: stay in the foreground (a child we can stop), with no debug output.
            self._process = subprocess.Popen(
                [str(SLAPD), "-d", "0", "-f", str(self.conf), "-h", urls],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"slapd exited at start:\n{self._log.read_text()[-4000:]}")
            if self._answers():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"slapd did not answer:\n{self._log.read_text()[-4000:]}")
            time.sleep(0.05)
        if not self._initialised:
            self._initialise()
            self._initialised = True

    def _answers(self) -> bool:
        for port in (self.ldap_port, self.ldaps_port):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
            except OSError:
                return False
        return True

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- content ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def admin(self) -> Iterator[ldap3.Connection]:
        """A connection as the root DN (StartTLS, verified), for looking at and tampering with
        the tree behind the publisher's back."""
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.trust))
        server = ldap3.Server("localhost", port=self.ldap_port, tls=tls, connect_timeout=5)
        conn = ldap3.Connection(
            server,
            ADMIN_DN,
            ADMIN_PASSWORD,
            auto_bind=ldap3.AUTO_BIND_TLS_BEFORE_BIND,
            receive_timeout=10,
        )
        try:
            yield conn
        finally:
            conn.unbind()

    def _initialise(self) -> None:
        with self.admin() as conn:
            ok = conn.add(SUFFIX, ["dcObject", "organization"], {"dc": "mssante", "o": "Test"})
            assert ok, conn.result
            ok = conn.add(
                PUBLISHER_DN,
                ["applicationProcess", "simpleSecurityObject"],
                {"cn": "colombe", "userPassword": PUBLISHER_PASSWORD},
            )
            assert ok, conn.result

    def add_branch(self, name: str) -> str:
        """A fresh ``ou=<name>`` under the suffix: one test's base DN."""
        dn = f"ou={name},{SUFFIX}"
        with self.admin() as conn:
            ok = conn.add(dn, ["organizationalUnit"], {"ou": name})
            assert ok, conn.result
        return dn

    def entries(self, base_dn: str) -> dict[str, dict[str, list[str]]]:
        """Every entry directly under ``base_dn``: lower-cased mail (or DN) -> attributes."""
        with self.admin() as conn:
            items = conn.extend.standard.paged_search(
                base_dn,
                "(objectClass=*)",
                search_scope=ldap3.LEVEL,
                attributes=[ldap3.ALL_ATTRIBUTES],
                paged_size=500,
                generator=False,
            )
            out: dict[str, dict[str, list[str]]] = {}
            for item in items:
                if item.get("type") != "searchResEntry":
                    continue
                attrs = {k: [v.decode() for v in vs] for k, vs in item["raw_attributes"].items()}
                key = attrs["mail"][0].lower() if "mail" in attrs else item["dn"].lower()
                out[key] = attrs
            return out


def load_ldif_schema(ldif: Path, workdir: Path) -> str:
    """Load the cn=config form of the schema into an empty cn=config with slapadd (no server):
    proves slapd accepts the LDIF. Returns slapadd's output; raises if it refused."""
    config_dir = workdir / "slapd.d"
    shutil.rmtree(config_dir, ignore_errors=True)
    config_dir.mkdir(parents=True)
    base = workdir / "config.ldif"
    core = (SYSTEM_SCHEMA / "core.ldif").read_text()
    base.write_text(
        "dn: cn=config\nobjectClass: olcGlobal\ncn: config\n\n"
        "dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n\n"
        + _strip_comments(core)
        + "\n\n"
        + _strip_comments(ldif.read_text())
        + "\n"
    )
    done = subprocess.run(
        [str(SLAPADD), "-n", "0", "-F", str(config_dir), "-l", str(base)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"slapadd refused the schema LDIF:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()
