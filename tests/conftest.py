"""Fixtures shared by every suite.

The store suite runs on both engines: every test that takes ``store`` (or ``store_url``) runs once on
SQLite and once on PostgreSQL. PostgreSQL is the one at ``COLOMBE_TEST_POSTGRES`` (default: the
machine's 127.0.0.1:5432); if it cannot be reached the PostgreSQL half fails loudly, it is never
skipped (`make test` starts a server on machines that lack one).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from pki.testpki import TestPki, make_test_pki
from store import Store
from store.schema import TABLES_IN_DEPENDENCY_ORDER
from tests.pki.crlserver import CrlServer

PG_ADMIN_URL = os.environ.get(
    "COLOMBE_TEST_POSTGRES", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ("sqlite", "postgresql")


async def _pg_admin(sql: str) -> None:
    import asyncpg

    dsn = make_url(PG_ADMIN_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except Exception as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}). `make test` starts one; "
            "or point COLOMBE_TEST_POSTGRES at a server where we may create databases."
        ) from exc
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_admin_sync(sql: str) -> None:
    # In a thread of its own: session fixtures may be first requested from inside a running loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _pg_admin(sql)).result()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A database created for this test session on the PostgreSQL server, dropped at the end."""
    name = f"colombe_test_{os.getpid()}"
    _pg_admin_sync(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _pg_admin_sync(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    _pg_admin_sync(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class StoreLocation:
    backend: str
    url: str
    blob_dir: Path


async def _empty_postgres(url: str) -> None:
    """Truncate every table (the schema stays): each test starts from an empty store."""
    from store.database import Database, migrate

    db = Database.connect(url)
    try:
        await migrate(db)
        names = ", ".join(t.name for t in TABLES_IN_DEPENDENCY_ORDER)
        async with db.writer.begin() as conn:
            await conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await db.dispose()


@pytest.fixture(params=BACKENDS)
async def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> StoreLocation:
    backend: str = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'colombe.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        await _empty_postgres(url)
    return StoreLocation(backend, url, tmp_path / "blobs")


@pytest.fixture
async def store(store_location: StoreLocation) -> AsyncIterator[Store]:
    s = await Store.open(store_location.url, store_location.blob_dir)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def doctor(store: Store) -> str:
    """A hosted domain with one PER BAL; returns its address."""
    await store.add_domain("hopital-test.mssante.fr")
    bal = await store.create_bal(
        "jean.dupont@hopital-test.mssante.fr",
        display_name="Dr Jean Dupont",
        national_id="810001234567",
        profession="10",
    )
    return bal.address


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPki]:
    """The IGC-Santé TEST hierarchy with its CRLs served over HTTP on 127.0.0.1."""
    server = CrlServer()
    directory = tmp_path_factory.mktemp("pki")
    pki = make_test_pki(directory, crl_base_url=server.base_url)
    server.crl_dir = directory / "crl"
    trust = directory / "trust.pem"
    trust.write_bytes(pki.roots_path.read_bytes() + pki.intermediates_path.read_bytes())
    yield pki
    server.close()


@pytest.fixture
def trust_file(test_pki: TestPki) -> Path:
    """The TEST roots and intermediates in one PEM file (what a trust bundle setting names)."""
    return test_pki.directory / "trust.pem"
