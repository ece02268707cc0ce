"""Certificate validation and S/MIME throughput.

    .venv/bin/python -m bench.pki_bench [--seconds 5]

- Chain + revocation validations per second with a warm CRL cache: the test PKI's peer
  certificate (leaf -> TEST ACI-EL-ORG -> TEST root), CRLs served over HTTP on 127.0.0.1 and
  fetched once, then answered from the cache (what the MX does for each inbound session).
- S/MIME sign, verify, encrypt, decrypt per second for a 1 MB message (RSA 2048, SHA-256,
  AES-256-CBC), when pki.smime is present.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.results import write_section
from pki.crl import CrlCache
from pki.testpki import make_test_pki
from pki.verify import Role, TrustStore, Verifier
from tests.pki.crlserver import CrlServer


async def rate(fn: Callable[[], Awaitable[object]], seconds: float, limit: int = 100_000) -> float:
    await fn()  # warm up
    n = 0
    started = time.perf_counter()
    while n < limit and time.perf_counter() - started < seconds:
        await fn()
        n += 1
    return n / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    server = CrlServer()
    lines = ["| operation | per second |", "|---|---:|"]
    with tempfile.TemporaryDirectory(prefix="colombe-pki-bench-") as tmp:
        pki = make_test_pki(Path(tmp), crl_base_url=server.base_url)
        server.crl_dir = Path(tmp) / "crl"
        verifier = Verifier(TrustStore(pki.igc_roots(), pki.igc_intermediates()), CrlCache())
        leaf = pki.certs["peer-valid"].cert

        async def validate() -> None:
            verdict = await verifier.verify(leaf, role=Role.CLIENT)
            assert verdict.ok

        per_second = await rate(validate, args.seconds)
        lines.append(f"| chain + CRL validation, warm cache | {per_second:,.0f} |")
        print(lines[-1], flush=True)

        if importlib.util.find_spec("pki.smime") is not None:
            from pki import smime

            org = pki.certs["org"]
            body = b"Content-Type: application/octet-stream\r\n\r\n" + (b"A" * 76 + b"\r\n") * (
                1024 * 1024 // 78
            )
            signed = smime.sign(body, org.cert, org.key, pki.igc_intermediates()[:1])
            enveloped = smime.encrypt(body, [org.cert])

            async def do_sign() -> None:
                smime.sign(body, org.cert, org.key, pki.igc_intermediates()[:1])

            async def do_verify() -> None:
                check = await smime.verify(signed, verifier)
                assert check.valid, check.detail

            async def do_encrypt() -> None:
                smime.encrypt(body, [org.cert])

            async def do_decrypt() -> None:
                smime.decrypt(enveloped, org.cert, org.key)

            for label, fn in (
                ("S/MIME sign, 1 MB", do_sign),
                ("S/MIME verify (with certificate validation), 1 MB", do_verify),
                ("S/MIME encrypt, 1 MB", do_encrypt),
                ("S/MIME decrypt, 1 MB", do_decrypt),
            ):
                lines.append(f"| {label} | {await rate(fn, args.seconds):,.1f} |")
                print(lines[-1], flush=True)
    server.close()
    if not args.no_write:
        write_section(
            "pki",
            ".venv/bin/python -m bench.pki_bench",
            (__doc__ or "").split("\n\n", 2)[2] + "\n\n" + "\n".join(lines),
        )


if __name__ == "__main__":
    asyncio.run(main())
