"""Full reconciliation of the national directory over LDAP.

    .venv/bin/python -m bench.ldap_bench [--count 100000] [--database-url URL]

A throw-away OpenLDAP slapd on 127.0.0.1 (the tests' one: shipped schema, mdb, LDAPS with the
TEST IGC-Santé PKI), a store (SQLite by default) holding ``--count`` BALs, then:

1. a full reconciliation into an empty directory (every entry added),
2. a second full reconciliation with nothing to change (paged search + digest comparison),
3. an incremental pass after 1,000 BALs changed.

slapd runs with ``dbnosync``: the national directory's own durability settings are not ours to
measure; what is measured is the publisher (LDAP round trips, store pages, bookkeeping).
The BALs are inserted with ``Store.insert_bals_for_bench`` (no folders): ``create_bal`` does about
50 BALs/s on SQLite, which would make the setup last half an hour.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.results import write_section
from directory.publisher import LdapSettings, PassReport, Publisher
from pki.testpki import make_test_pki
from store import BalType, Store
from tests.directory.slapd import PUBLISHER_DN, PUBLISHER_PASSWORD, Slapd

DOMAIN = "bench-hopital.mssante.fr"
TYPES = (BalType.PER, BalType.PER, BalType.PER, BalType.ORG, BalType.CAB, BalType.APP)


def bal_rows(count: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i in range(count):
        bal_type = TYPES[i % len(TYPES)]
        personal = bal_type in (BalType.PER, BalType.CAB)
        rows.append(
            {
                "address": f"bal{i:07d}@{DOMAIN}",
                "bal_type": bal_type,
                "display_name": f"Dr Prénom{i} Nom{i}" if personal else f"Service {i}",
                "national_id": f"8{i:011d}" if personal else f"1{i:09d}",
                "profession": "10" if personal else None,
                "service": None if personal else f"Service de cardiologie {i % 97}",
                "description": None if personal else "Secrétariat, prise de rendez-vous",
                "rank": 1 + i % 2,
                # One in twenty on liste rouge: read and compared, never published.
                "liste_rouge": i % 20 == 0,
            }
        )
    return rows


def line(label: str, count: int, report: PassReport) -> str:
    seconds = report.seconds
    return (
        f"| {label} | {count:,} | {seconds / 60:.2f} min ({seconds:.1f} s) | "
        f"{count / seconds:,.0f} | {report.added:,} / {report.modified:,} / {report.deleted:,} "
        f"/ {report.failed:,} |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    lines = [
        "| pass | BALs | time | BALs/s | added / modified / deleted / failed |",
        "|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="colombe-ldap-bench-") as tmp_name:
        tmp = Path(tmp_name)
        pki = make_test_pki(tmp / "pki", crl_base_url="http://127.0.0.1:9/")
        trust = tmp / "trust.pem"
        trust.write_bytes(pki.roots_path.read_bytes() + pki.intermediates_path.read_bytes())
        localhost = pki.certs["localhost"]
        slapd = Slapd(
            tmp / "slapd",
            cert_chain=localhost.chain_path,
            key=localhost.key_path,
            trust=trust,
            nosync=True,
        )
        slapd.start()
        store = await Store.open(args.database_url or f"sqlite:///{tmp / 'c.db'}", tmp / "blobs")
        try:
            base = slapd.add_branch("colombe")
            await store.add_domain(DOMAIN)
            started = time.perf_counter()
            await store.insert_bals_for_bench(DOMAIN, bal_rows(args.count))
            setup = time.perf_counter() - started
            print(f"store: {args.count:,} BALs inserted in {setup:.1f} s", flush=True)
            settings = LdapSettings(
                url=slapd.ldaps_url,
                base_dn=base,
                bind_dn=PUBLISHER_DN,
                bind_password=PUBLISHER_PASSWORD,
                ca_file=trust,
                timeout=30,
            )
            publisher = Publisher(store, settings, retry_min=1, retry_max=60)
            try:
                assert await publisher.take_lease()
                first = await asyncio.wait_for(publisher.reconcile_full(), args.max_seconds)
                assert first.error is None, first.error
                lines.append(line("full, empty directory", first.seen_bals, first))
                print(lines[-1], flush=True)
                second = await asyncio.wait_for(publisher.reconcile_full(), args.max_seconds)
                assert second.error is None, second.error
                assert second.changed == 0, second.summary()
                lines.append(line("full, nothing to change", second.seen_bals, second))
                print(lines[-1], flush=True)
                changed = min(1000, args.count)
                for i in range(1, changed + 1):
                    await store.update_bal(f"bal{i:07d}@{DOMAIN}", description=f"changed {i}")
                incremental = await publisher.publish_due(max_batches=1000)
                assert incremental.error is None, incremental.error
                lines.append(line("incremental, 1,000 changed", changed, incremental))
                print(lines[-1], flush=True)
            finally:
                await publisher.close()
        finally:
            await store.close()
            slapd.stop()
    backend = "PostgreSQL" if args.database_url.startswith("postgres") else "SQLite"
    body = (
        "\n".join(lines)
        + f"\n\nStore: {backend}; {args.count:,} BALs (1 in 20 on liste rouge: compared, never "
        "published), inserted in bulk "
        f"in {setup:.0f} s. Directory: OpenLDAP slapd 2.5 (mdb, dbnosync) on 127.0.0.1 over "
        "LDAPS, one connection; paged search and store pages of 500. The no-change pass reads "
        "every entry and the whole store and writes nothing."
    )
    if not args.no_write:
        write_section("LDAP publication", "python -m bench.ldap_bench", body)


if __name__ == "__main__":
    asyncio.run(main())
