"""The ``colombe`` command as an operator runs it: a child process per call, on both engines.

Each call starts an interpreter (about a second), so every test walks through one operator
session and checks many things on the way; read-only calls run side by side.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from colombe.config import load_config, render_config
from store import BalStatus, BalType, Store
from tests.colombe.processes import (
    cli_env,
    expected_actor,
    refused,
    refused_many,
    run,
    run_many,
)
from tests.conftest import StoreLocation

T = TypeVar("T")

HOPITAL = "hopital-test.mssante.fr"
CLINIQUE = "clinique-test.mssante.fr"
DOCTOR = f"jean.dupont@{HOPITAL}"
SECRETARIAT = f"secretariat@{HOPITAL}"
NURSE = f"marie.curie@{CLINIQUE}"
FIRST_PASSWORD = "Premier-mot-de-passe-7f3a"
SECOND_PASSWORD = "Second-mot-de-passe-c41e"
DEFAULT_FOLDERS = {"INBOX", "Sent", "Drafts", "Trash", "Archive"}


@dataclass(frozen=True)
class Site:
    """A folder initialised by ``colombe init``: the CLI finds ./colombe.toml from there."""

    folder: Path
    location: StoreLocation

    @property
    def config(self) -> Path:
        return self.folder / "colombe.toml"

    def with_store(self, use: Callable[[Store], Awaitable[T]]) -> T:
        """Look at the store directly, through its own API."""

        async def go() -> T:
            store = await Store.open(self.location.url, self.location.blob_dir)
            try:
                return await use(store)
            finally:
                await store.close()

        return asyncio.run(go())


@pytest.fixture
def site(store_location: StoreLocation, tmp_path: Path) -> Site:
    done = run(
        "init",
        "--dir",
        str(tmp_path),
        "--database-url",
        store_location.url,
        "--blob-dir",
        str(store_location.blob_dir),
        cwd=tmp_path,
    )
    config = tmp_path / "colombe.toml"
    assert done.stdout.startswith(f"wrote {config}; store ready.")
    return Site(tmp_path, store_location)


def table(output: str) -> list[list[str]]:
    """The rows of a table the CLI printed (header and rule line dropped)."""
    lines = output.splitlines()
    assert set(lines[1].replace(" ", "")) <= {"-"}, output
    return [line.split() for line in lines[2:]]


# -- set-up: init, domains, BALs --------------------------------------------------------------


def test_init_writes_a_working_config_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    done = run("init", "--dir", "site", cwd=tmp_path)
    config_path = tmp_path / "site" / "colombe.toml"
    assert done.stdout == (
        "wrote site/colombe.toml; store ready. Next: colombe --config site/colombe.toml "
        "domain add DOMAIN\n"
    )
    # The defaults are relative to the config's folder, not to where init ran.
    config = load_config(config_path, env={})
    site = (tmp_path / "site").resolve()
    assert config.database_url == f"sqlite:///{site / 'var' / 'colombe.db'}"
    assert (site / "var" / "colombe.db").is_file()
    assert config.blob_dir == site / "var" / "blobs"
    assert config.admin.listen == "127.0.0.1:8780"
    written = config_path.read_text(encoding="utf-8")

    message = refused("init", "--dir", "site", "--hostname", "other", cwd=tmp_path)
    assert message == "Error: site/colombe.toml exists; use --force to overwrite it"
    assert config_path.read_text(encoding="utf-8") == written

    run("init", "--dir", "site", "--force", "--hostname", "mx.test.mssante.fr", cwd=tmp_path)
    assert load_config(config_path, env={}).server.hostname == "mx.test.mssante.fr"


def test_operator_adds_domains_and_bals_and_lists_them(site: Site) -> None:
    cwd = site.folder
    # Independent calls run side by side; the audit order among them is not checked.
    added = run_many(
        [
            ["domain", "add", "Hopital-Test.MSSante.fr"],
            ["--config", str(site.config), "domain", "add", CLINIQUE],
        ],
        cwd=cwd,
    )
    assert [d.stdout for d in added] == [f"domain {HOPITAL} added\n", f"domain {CLINIQUE} added\n"]
    doctor = [
        "bal",
        "add",
        DOCTOR,
        "--name",
        "Dr Jean Dupont",
        "--national-id",
        "810001234567",
        "--profession",
        "10",
        "--password-stdin",
    ]
    added = run_many(
        [
            doctor,
            ["bal", "add", SECRETARIAT, "--type", "ORG", "--no-password"],
            ["bal", "add", NURSE.upper(), "--no-password"],
        ],
        stdin=FIRST_PASSWORD + "\n",
        cwd=cwd,
    )
    assert [d.stdout for d in added] == [
        f"BAL {DOCTOR} created (PER)\n",
        f"BAL {SECRETARIAT} created (ORG)\n",
        f"BAL {NURSE} created (PER)\n",
    ]
    assert not any(FIRST_PASSWORD in d.stdout + d.stderr for d in added)
    assert refused("bal", "add", DOCTOR, "--no-password", cwd=cwd) == (
        f"Error: BAL already exists: {DOCTOR}"
    )

    domains, domains_json, bals, bals_json, clinique_json, show, show_json, stats, audit = run_many(
        [
            ["domain", "list"],
            ["domain", "list", "--json"],
            ["bal", "list"],
            ["bal", "list", "--json"],
            ["bal", "list", "--domain", CLINIQUE, "--json"],
            ["bal", "show", DOCTOR],
            ["bal", "show", DOCTOR, "--json"],
            ["store", "stats", "--json"],
            ["audit", "tail", "-n", "100"],
        ],
        cwd=cwd,
    )
    assert domains.stdout.splitlines()[0].split() == ["domain", "since"]
    assert [row[0] for row in table(domains.stdout)] == [CLINIQUE, HOPITAL]
    assert [d["name"] for d in json.loads(domains_json.stdout)] == [CLINIQUE, HOPITAL]

    assert bals.stdout.splitlines()[0].split() == ["address", "type", "status", "placement", "name"]
    assert table(bals.stdout) == [
        [DOCTOR, "PER", "active", "v2", "Dr", "Jean", "Dupont"],
        [NURSE, "PER", "active", "v2"],
        [SECRETARIAT, "ORG", "active", "v2"],
    ]
    listed = json.loads(bals_json.stdout)
    assert [(b["address"], b["type"], b["status"]) for b in listed] == [
        (DOCTOR, "PER", "active"),
        (NURSE, "PER", "active"),
        (SECRETARIAT, "ORG", "active"),
    ]
    assert (listed[0]["national_id"], listed[0]["profession"]) == ("810001234567", "10")
    assert [b["address"] for b in json.loads(clinique_json.stdout)] == [NURSE]

    assert f"address      {DOCTOR}" in show.stdout.splitlines()
    assert "name         Dr Jean Dupont" in show.stdout.splitlines()
    assert "status       active" in show.stdout.splitlines()
    folder_table = show.stdout.split("\n\n")[1]
    assert folder_table.splitlines()[0].split() == ["folder", "special-use", "messages", "unseen"]
    assert {row[0] for row in table(folder_table)} == DEFAULT_FOLDERS
    shown = json.loads(show_json.stdout)
    assert set(shown) == {"bal", "folders", "delegates", "delegated_bals"}
    assert shown["bal"]["address"] == DOCTOR
    assert {f["name"]: f["special_use"] for f in shown["folders"]} == {
        "INBOX": None,
        "Sent": "\\Sent",
        "Drafts": "\\Drafts",
        "Trash": "\\Trash",
        "Archive": "\\Archive",
    }
    assert all(f["messages"] == f["unseen"] == 0 for f in shown["folders"])
    assert shown["delegates"] == shown["delegated_bals"] == []

    assert json.loads(stats.stdout) == {"domains": 2, "bals": 3, "messages": 0, "queued": 0}
    assert FIRST_PASSWORD not in audit.stdout
    assert [line.split()[3] for line in audit.stdout.splitlines()] == [
        "store.init",
        "domain.add",
        "domain.add",
        "bal.create",
        "bal.create",
        "bal.create",
    ]

    async def passwords(store: Store) -> tuple[bool, bool, bool]:
        return (
            await store.verify_password(DOCTOR, FIRST_PASSWORD),
            await store.verify_password(DOCTOR, SECOND_PASSWORD),
            await store.verify_password(SECRETARIAT, ""),
        )

    assert site.with_store(passwords) == (True, False, False)


def test_bad_input_is_refused_with_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "colombe.toml").write_text(
        render_config(
            database_url="sqlite:///colombe.db",
            blob_dir="blobs",
            hostname="localhost",
            admin_listen="127.0.0.1:0",
        ),
        encoding="utf-8",
    )
    site = Site(
        tmp_path, StoreLocation("sqlite", f"sqlite:///{tmp_path}/colombe.db", tmp_path / "blobs")
    )

    async def setup(store: Store) -> None:
        await store.add_domain(HOPITAL)

    site.with_store(setup)
    assert refused_many(
        [
            ["bal", "add", "x@inconnu-test.mssante.fr", "--no-password"],
            ["bal", "add", "pas-une-adresse", "--no-password"],
            ["bal", "suspend", f"personne@{HOPITAL}"],
            ["bal", "add", DOCTOR, "--password-stdin"],
        ],
        stdin="\n",
        cwd=tmp_path,
    ) == [
        "Error: domain not hosted here: inconnu-test.mssante.fr",
        "Error: not a valid mailbox address: 'pas-une-adresse'",
        f"Error: no such BAL: personne@{HOPITAL}",
        "Error: empty password",
    ]

    async def bals(store: Store) -> list[str]:
        return [b.address for b in await store.list_bals()]

    assert site.with_store(bals) == []


# -- life of a BAL: status, password, delegations, audit -----------------------------------------


def test_status_password_and_delegation_changes_are_applied_and_audited(site: Site) -> None:
    cwd = site.folder

    async def setup(store: Store) -> None:
        await store.add_domain(HOPITAL)
        await store.create_bal(DOCTOR, password=FIRST_PASSWORD)
        await store.create_bal(SECRETARIAT, BalType.ORG, password=FIRST_PASSWORD)

    site.with_store(setup)

    async def state(store: Store) -> dict[str, Any]:
        return {
            "secretariat": (await store.get_bal(SECRETARIAT)).status,
            "secretariat logs in": await store.verify_password(SECRETARIAT, FIRST_PASSWORD),
            "old password": await store.verify_password(DOCTOR, FIRST_PASSWORD),
            "new password": await store.verify_password(DOCTOR, SECOND_PASSWORD),
            "delegations": len(await store.list_delegations()),
        }

    # Independent changes run side by side (so their order in the audit trail is free).
    changed = run_many(
        [
            ["bal", "passwd", DOCTOR, "--password-stdin"],
            ["bal", "suspend", SECRETARIAT],
            ["delegate", "add", DOCTOR, SECRETARIAT, "--write", "--send"],
        ],
        stdin=SECOND_PASSWORD + "\n",
        cwd=cwd,
    )
    assert [c.stdout for c in changed] == [
        f"password of {DOCTOR} changed\n",
        f"BAL {SECRETARIAT} is now suspended\n",
        f"{SECRETARIAT} may now use {DOCTOR} (read,write,send)\n",
    ]
    # A suspended BAL keeps its password but nobody can log in.
    assert site.with_store(state) == {
        "secretariat": BalStatus.SUSPENDED,
        "secretariat logs in": False,
        "old password": False,
        "new password": True,
        "delegations": 1,
    }
    suspended, delegations = run_many(
        [["bal", "list", "--status", "suspended", "--json"], ["delegate", "list", "--json"]],
        cwd=cwd,
    )
    assert [b["address"] for b in json.loads(suspended.stdout)] == [SECRETARIAT]
    [delegation] = json.loads(delegations.stdout)
    assert {k: v for k, v in delegation.items() if k != "created_at"} == {
        "bal": DOCTOR,
        "delegate": SECRETARIAT,
        "can_read": True,
        "can_write": True,
        "can_send": True,
    }

    changed = run_many(
        [["bal", "activate", SECRETARIAT], ["delegate", "remove", DOCTOR, SECRETARIAT]], cwd=cwd
    )
    assert [c.stdout for c in changed] == [
        f"BAL {SECRETARIAT} is now active\n",
        f"{SECRETARIAT} may no longer use {DOCTOR}\n",
    ]
    after = site.with_store(state)
    assert (after["secretariat"], after["secretariat logs in"]) == (BalStatus.ACTIVE, True)
    assert after["delegations"] == 0
    assert refused("delegate", "remove", DOCTOR, SECRETARIAT, cwd=cwd) == (
        f"Error: {SECRETARIAT} has no delegation on {DOCTOR}"
    )
    assert run("bal", "close", SECRETARIAT, cwd=cwd).stdout == (
        f"BAL {SECRETARIAT} is now closed\n"
    )
    after = site.with_store(state)
    assert (after["secretariat"], after["secretariat logs in"]) == (BalStatus.CLOSED, False)

    tail, tail_json = run_many(
        [["audit", "tail"], ["audit", "tail", "--json", "-n", "100"]], cwd=cwd
    )
    actor = expected_actor()
    # The records, in batches whose members ran side by side.
    batches: list[set[tuple[str, str | None]]] = [
        {("store.init", None)},
        {("bal.passwd", DOCTOR), ("bal.suspended", SECRETARIAT), ("delegation.add", DOCTOR)},
        {("bal.active", SECRETARIAT), ("delegation.remove", DOCTOR)},
        {("bal.closed", SECRETARIAT)},
    ]
    records = [json.loads(line) for line in tail_json.stdout.splitlines()]
    assert len(records) == sum(len(b) for b in batches)
    seen = iter((r["action"], r["bal"]) for r in records)
    assert [{next(seen) for _ in batch} for batch in batches] == batches
    assert {r["actor"] for r in records} == {actor}
    assert {r["result"] for r in records} == {"ok"}
    [added] = [r for r in records if r["action"] == "delegation.add"]
    assert added["detail"] == {"delegate": SECRETARIAT, "rights": "read,write,send"}
    # The table shows the same records, oldest first: time, result, action, actor, BAL.
    assert [line.split()[2:6] for line in tail.stdout.splitlines()] == [
        ["ok", r["action"], actor, r["bal"] or "-"] for r in records
    ]
    for output in (tail.stdout, tail_json.stdout):
        assert FIRST_PASSWORD not in output
        assert SECOND_PASSWORD not in output


# -- finding the configuration; the console script ---------------------------------------------


def test_command_in_an_empty_folder_without_colombe_config_says_how_to_start(
    tmp_path: Path,
) -> None:
    message = refused("bal", "list", cwd=tmp_path)
    assert message.startswith("Error: no configuration found (looked for colombe.toml, ")
    assert "colombe init" in message
    assert "COLOMBE_CONFIG" in message
    assert list(tmp_path.iterdir()) == []  # nothing created on the way


def test_config_named_by_colombe_config_is_used_and_its_errors_name_the_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "colombe.toml").write_text('[store]\npool_size = "x"\n', encoding="utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text('[store]\ndatabse_url = "sqlite:///c.db"\n', encoding="utf-8")
    # COLOMBE_CONFIG wins over ./colombe.toml; --config wins over COLOMBE_CONFIG.
    assert refused_many(
        [["bal", "list"], ["--config", "colombe.toml", "domain", "list"]],
        cwd=tmp_path,
        env=cli_env(COLOMBE_CONFIG=str(bad)),
    ) == [
        f"Error: {bad}: unknown key store.databse_url (did you mean 'database_url'?)",
        "Error: colombe.toml: store.pool_size: expected int, got 'x'",
    ]
    message = refused(
        "domain", "list", cwd=tmp_path, env=cli_env(COLOMBE_STORE_DATABSE_URL="sqlite:///x.db")
    )
    assert "COLOMBE_STORE_DATABSE_URL" in message


def test_unreachable_database_is_one_line_naming_the_store(tmp_path: Path) -> None:
    # Nothing listens on port 1 of the loopback: the connection is refused at once.
    (tmp_path / "colombe.toml").write_text(
        render_config(
            database_url="postgresql://colombe@127.0.0.1:1/colombe",
            blob_dir="blobs",
            hostname="localhost",
            admin_listen="127.0.0.1:0",
        ),
        encoding="utf-8",
    )
    message = refused("bal", "list", cwd=tmp_path)
    assert "127.0.0.1:1" in message


def test_console_script_is_installed_and_lists_the_command_groups(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "colombe"
    assert script.is_file(), f"{script}: the colombe console script is not installed"
    done = subprocess.run(
        [str(script), "--help"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listing = done.stdout.split("Commands:")[1]
    commands = re.findall(r"^  (\S+)", listing, flags=re.MULTILINE)
    for group in ("init", "demo", "serve", "domain", "bal", "delegate", "audit", "store"):
        assert group in commands


def test_bal_set_changes_directory_attributes_and_queues_publication(site: Site) -> None:
    cwd = site.folder

    async def setup(store: Store) -> None:
        await store.add_domain(HOPITAL)
        await store.create_bal(SECRETARIAT, BalType.ORG, display_name="Secrétariat")

    site.with_store(setup)
    done = run(
        "bal", "set", SECRETARIAT, "--service", "Cardiologie", "--postal-code", "69003",
        "--city", "Lyon", "--liste-rouge", "--rank", "2", cwd=cwd,
    )  # fmt: skip
    assert done.stdout == f"BAL {SECRETARIAT} updated (revision 2)\n"

    async def look(store: Store) -> tuple[Any, ...]:
        b = await store.get_bal(SECRETARIAT)
        due = [(bal.address, s.wanted_revision) for bal, s in await store.due_publications()]
        audit = await store.tail_audit(limit=1)
        return b.service, b.departement, b.city, b.rank, b.liste_rouge, due, audit[0].detail

    assert site.with_store(look) == (
        "Cardiologie",
        "69",
        "Lyon",
        2,
        True,
        [(SECRETARIAT, 2)],
        {"changed": ["city", "liste_rouge", "postal_code", "rank", "service"]},
    )
    run("bal", "set", SECRETARIAT, "--no-liste-rouge", "--service", "", cwd=cwd)
    b = site.with_store(lambda store: store.get_bal(SECRETARIAT))
    assert (b.liste_rouge, b.service, b.revision) == (False, None, 3)
    assert "nothing to change" in refused("bal", "set", SECRETARIAT, cwd=cwd)
    zero = run("bal", "set", SECRETARIAT, "--rank", "0", cwd=cwd, code=2)
    assert "--rank" in zero.stderr
