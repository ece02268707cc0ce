"""National address book: import rate of the extraction and search latency over it.

    .venv/bin/python -m bench.directory_bench [--entries 500000] [--queries 400] [--no-write]

Generates a realistic extraction (tests/directory/extraction_gen.py, quirks on) of ``--entries``
lines, imports it into an empty store (a temporary SQLite file, then a temporary PostgreSQL
database on COLOMBE_TEST_POSTGRES / 127.0.0.1:5432), then runs a mix of searches one at a time
through :func:`directory.search.search` (what webmail and API call) and reports p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from bench.results import write_section
from directory.extraction import import_extraction
from directory.search import search
from store import Store
from tests.directory.extraction_gen import CITIES, FIRST_NAMES, LAST_NAMES, write_extraction

PG_ADMIN = os.environ.get(
    "COLOMBE_TEST_POSTGRES", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)


def query_mix(rng: random.Random) -> tuple[str, dict[str, str | None]]:
    """One query of the mix, and its kind: what people type in an address field."""
    last = rng.choice(LAST_NAMES).split()[-1]
    first = rng.choice(FIRST_NAMES)
    _, city, dep = rng.choice(CITIES)
    kind = rng.choice(
        ("name prefix 3", "name prefix 5", "full name", "name + city", "profession + dep",
         "city", "departement", "address prefix", "organisation word", "no match")
    )  # fmt: skip
    q: dict[str, str | None] = {}
    if kind == "name prefix 3":
        q["text"] = last[:3]
    elif kind == "name prefix 5":
        q["text"] = last[:5]
    elif kind == "full name":
        q["text"] = f"{first} {last}"
    elif kind == "name + city":
        q["text"], q["city"] = last[:4], city[:4]
    elif kind == "profession + dep":
        q["profession"], q["departement"] = rng.choice(("cardio", "infirm", "pharma", "pedia")), dep
    elif kind == "city":
        q["city"] = city
    elif kind == "departement":
        q["departement"] = dep
    elif kind == "address prefix":
        q["address"] = f"{first.lower()[:4]}"
    elif kind == "organisation word":
        q["text"] = rng.choice(("herriot", "tilleuls", "clinique parc", "pharmacie centre"))
    else:
        q["text"] = "zzyzx"
    return kind, q


async def run(
    backend: str, entries: int, queries: int, tmp: Path, extraction: Path
) -> dict[str, Any]:
    pg_name = f"colombe_bench_dir_{os.getpid()}"
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'colombe.db'}"
    else:
        admin = make_url(PG_ADMIN).set(drivername="postgresql").render_as_string(False)
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{pg_name}"')
        await conn.close()
        url = make_url(PG_ADMIN).set(database=pg_name).render_as_string(hide_password=False)
    store = await Store.open(url, tmp / f"blobs-{backend}")
    try:
        started = time.perf_counter()
        report = await import_extraction(store, str(extraction), holder="bench")
        import_seconds = time.perf_counter() - started
        rng = random.Random(1)
        by_kind: dict[str, list[float]] = {}
        latencies: list[float] = []
        for _ in range(queries):
            kind, q = query_mix(rng)
            t0 = time.perf_counter()
            await search(store, **q)  # type: ignore[arg-type]
            elapsed = time.perf_counter() - t0
            latencies.append(elapsed)
            by_kind.setdefault(kind, []).append(elapsed)
    finally:
        await store.close()
        if backend == "postgresql":
            admin = make_url(PG_ADMIN).set(drivername="postgresql").render_as_string(False)
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            await conn.close()
    latencies.sort()
    return {
        "backend": backend,
        "lines": report.lines,
        "entries": report.entries,
        "import_s": import_seconds,
        "rate": report.lines / import_seconds,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "by_kind": {
            k: (statistics.median(v) * 1000, max(v) * 1000) for k, v in sorted(by_kind.items())
        },
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(
        prefix="colombe-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        tmp_path = Path(tmp)
        extraction = tmp_path / "extraction.txt"
        t0 = time.perf_counter()
        write_extraction(extraction, args.entries, seed=42)
        print(f"generated {args.entries} lines in {time.perf_counter() - t0:.1f} s", flush=True)
        for backend in args.backends.split(","):
            r = await run(backend, args.entries, args.queries, tmp_path, extraction)
            results.append(r)
            print(
                f"{backend:10} import {r['lines']} lines in {r['import_s']:.1f} s = "
                f"{r['rate']:.0f} lines/s; search p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms",
                flush=True,
            )
            for kind, (p50, worst) in r["by_kind"].items():
                print(f"    {kind:18} p50 {p50:6.1f} ms  max {worst:6.1f} ms", flush=True)
    lines = [
        f"Extraction of {args.entries:,} generated lines (tests/directory/extraction_gen.py, "
        "quirks on), imported into an empty store; then "
        f"{args.queries} searches one at a time through `directory.search.search` (limit 20, "
        "our BALs + national book), a mix of: name prefixes of 3 and 5 letters, full names, "
        "name + city, profession + département, city, département, address prefix, a word of "
        "an organisation, and a name that matches nothing.",
        "",
        "| backend | lines | import | lines/s | search p50 | search p99 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['lines']:,} | {r['import_s']:.0f} s | {r['rate']:,.0f} | "
            f"{r['p50']:.1f} ms | {r['p99']:.1f} ms |"
        )
    lines += ["", "Per kind of query (p50 / max):", ""]
    kinds = sorted({k for r in results for k in r["by_kind"]})
    lines.append("| query | " + " | ".join(r["backend"] for r in results) + " |")
    lines.append("|---|" + "---:|" * len(results))
    for kind in kinds:
        cells = [
            "{:.1f} / {:.1f} ms".format(*r["by_kind"][kind]) if kind in r["by_kind"] else ""
            for r in results
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    if not args.no_write:
        write_section(
            "directory address book",
            ".venv/bin/python -m bench.directory_bench",
            "\n".join(lines),
        )


if __name__ == "__main__":
    asyncio.run(main())
