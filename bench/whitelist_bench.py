"""Whitelist parsing and lookups.

    .venv/bin/python -m bench.whitelist_bench [--seconds 3] [--entries 10000]

- Parse + index time of a generated whitelist of 10,000 ``Domaine`` entries (about 7,650 domains,
  400 DNs, the oddities of the real file; the real 2025-03-13 file has 6,554 entries), from
  the downloaded bytes to the immutable two-way index (what a refresh costs; median of 5).
- ``allows(domain, peer_dn)`` lookups per second, half listed pairs and half refused, with the
  peer DN given as a certificate's ``x509.Name`` (what the MX holds after the handshake) and as
  an already parsed ``DistinguishedName``; ``is_listed(domain)`` per second.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from cryptography import x509

from bench.results import write_section
from directory.whitelist import parse_whitelist
from pki.dn import DistinguishedName
from tests.directory.whitelist_gen import generate


def rate(fn: Callable[[int], object], seconds: float, limit: int = 5_000_000) -> float:
    fn(0)  # warm up
    n = 0
    started = time.perf_counter()
    while n < limit and time.perf_counter() - started < seconds:
        for i in range(1000):
            fn(n + i)
        n += 1000
    return n / (time.perf_counter() - started)


def certificate_name(dn: DistinguishedName) -> x509.Name:
    return x509.Name.from_rfc4514_string(str(dn))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    domains = round(args.entries / 1.307)
    generated = generate(domains=domains, dns=400, entries=args.entries)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        whitelist = parse_whitelist(generated.xml, min_entries=1)
        timings.append(time.perf_counter() - started)
    lines = ["| measure | value |", "|---|---:|"]
    lines.append(
        f"| parse + index, {len(whitelist.entries):,} entries ({len(generated.xml) / 1e6:.1f} MB, "
        f"{whitelist.domain_count:,} domains, {whitelist.dn_count} DNs) | "
        f"{statistics.median(timings) * 1000:,.0f} ms |"
    )
    print(lines[-1], flush=True)

    rng = random.Random(1)
    pairs = sorted(generated.pairs)
    listed = rng.sample(pairs, 500)
    dns = [DistinguishedName.parse(dn) for _, dn in listed]
    # Refused half: each domain asked with a DN that is not listed for it.
    refused = [(d, dns[(i + 1) % len(dns)]) for i, (d, _) in enumerate(listed)]
    refused = [(d, dn) for d, dn in refused if not whitelist.allows(d, dn)]
    queries = [(d, dn) for (d, _), dn in zip(listed, dns, strict=True)] + refused
    rng.shuffle(queries)
    as_x509 = [(d, certificate_name(dn)) for d, dn in queries]
    assert sum(whitelist.allows(d, dn) for d, dn in as_x509) == len(listed)

    def allows_x509(i: int) -> object:
        domain, name = as_x509[i % len(as_x509)]
        return whitelist.allows(domain, name)

    def allows_parsed(i: int) -> object:
        domain, dn = queries[i % len(queries)]
        return whitelist.allows(domain, dn)

    def is_listed(i: int) -> object:
        return whitelist.is_listed(queries[i % len(queries)][0])

    for label, fn in (
        ("`allows()`, peer DN as `x509.Name`", allows_x509),
        ("`allows()`, peer DN as `DistinguishedName`", allows_parsed),
        ("`is_listed()`", is_listed),
    ):
        lines.append(f"| {label} | {rate(fn, args.seconds):,.0f} /s |")
        print(lines[-1], flush=True)
    if not args.no_write:
        write_section(
            "whitelist",
            ".venv/bin/python -m bench.whitelist_bench",
            (__doc__ or "").split("\n\n", 2)[2] + "\n\n" + "\n".join(lines),
        )


if __name__ == "__main__":
    main()
