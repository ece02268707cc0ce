"""``colombe serve`` and ``colombe demo`` as child processes: the admin endpoint over real
sockets, readiness on stderr, clean exit on SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import imaplib
import json
import re
import shlex
import signal
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

from colombe.config import render_config
from colombe.demo import DEMO_BALS, DEMO_OPERATOR_DN, DEMO_PASSWORD
from colombe.serve import COMPONENTS
from store import Store
from tests.colombe.processes import Background, http, refused, run_many
from tests.conftest import StoreLocation

READY = r"^ready: admin +http://127\.0\.0\.1:(\d+)/healthz +http://127\.0\.0\.1:\d+/metrics$"


def write_config(folder: Path, database_url: str, blob_dir: Path, listen: str) -> Path:
    path = folder / "colombe.toml"
    path.write_text(
        render_config(
            database_url=database_url,
            blob_dir=str(blob_dir),
            hostname="localhost",
            admin_listen=listen,
        ),
        encoding="utf-8",
    )
    return path


# Straight to the loopback, whatever proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_admin_endpoint_answers_health_and_metrics_then_stops_on_sigterm(
    store_location: StoreLocation, tmp_path: Path
) -> None:
    async def populate() -> None:
        store = await Store.open(store_location.url, store_location.blob_dir)
        try:
            await store.add_domain("hopital-test.mssante.fr")
            await store.create_bal("a@hopital-test.mssante.fr")
            await store.create_bal("b@hopital-test.mssante.fr")
        finally:
            await store.close()

    asyncio.run(populate())
    config = write_config(tmp_path, store_location.url, store_location.blob_dir, "127.0.0.1:0")
    server = Background("--config", str(config), "serve", cwd=tmp_path)
    try:
        port = int(server.wait_for("stderr", READY).group(1))
        assert port != 0

        with DIRECT.open(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert (answer.status, answer.read()) == (200, b"ok\n")
        with DIRECT.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/plain")
            metrics = answer.read().decode().splitlines()
        assert "colombe_up 1.0" in metrics
        assert "colombe_store_domains 1.0" in metrics
        assert "colombe_store_bals 2.0" in metrics
        assert "colombe_store_queued 0.0" in metrics

        status, headers, body = http(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body) == (404, b"not found\n")
        assert headers["content-length"] == str(len(body))
        assert headers["connection"] == "close"
        status, _, _ = http(port, b"GET /healthz?probe=lb HTTP/1.1\r\n\r\n")
        assert status == 200
        status, _, _ = http(port, b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert status == 405
        status, _, body = http(port, b"garbage\r\n\r\n")
        assert (status, body) == (400, b"bad request\n")
        status, _, _ = http(port, b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n")
        assert status == 400
        status, _, _ = http(port, b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 100 + b"\r\n")
        assert status == 431
        # The endpoint is still up after the bad requests.
        assert http(port, b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 200

        assert server.stop(signal.SIGTERM) == 0
        assert refuses_connections(port)
        assert "Traceback" not in "".join(server.stderr)
    finally:
        server.kill()


def test_admin_endpoint_follows_http_for_head_and_refused_methods(tmp_path: Path) -> None:
    config = write_config(tmp_path, "sqlite:///colombe.db", tmp_path / "blobs", "127.0.0.1:0")
    server = Background("--config", str(config), "serve", cwd=tmp_path)
    try:
        port = int(server.wait_for("stderr", READY).group(1))
        post = http(port, b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        head = http(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.kill()
    status, headers, _ = post
    assert status == 405
    assert headers.get("allow") == "GET, HEAD"
    status, headers, body = head
    assert (status, headers["content-length"], body) == (200, "3", b"")


def test_serve_without_listeners_starts_and_stops_on_sigint(tmp_path: Path) -> None:
    config = write_config(tmp_path, "sqlite:///colombe.db", tmp_path / "blobs", listen="")
    server = Background("--config", str(config), "serve", cwd=tmp_path)
    try:
        server.wait_for("stderr", r"^ready: no listener configured$")
        assert server.stop(signal.SIGINT) == 0
        stderr = "".join(server.stderr)
        assert "KeyboardInterrupt" not in stderr
        assert "Traceback" not in stderr
    finally:
        server.kill()


def test_serve_only_unknown_component_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    config = write_config(tmp_path, "sqlite:///colombe.db", tmp_path / "blobs", "127.0.0.1:0")
    message = refused("--config", str(config), "serve", "--only", "nosuch", cwd=tmp_path)
    assert message.startswith("Error: unknown component(s) nosuch; known: ")
    for name in COMPONENTS:
        assert name in message.split("known: ")[1]


def test_serve_with_a_broken_config_exits_with_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "colombe.toml"
    config.write_text('[store]\npool_size = "x"\n', encoding="utf-8")
    message = refused("serve", cwd=tmp_path)
    assert message == "Error: colombe.toml: store.pool_size: expected int, got 'x'"


def test_demo_seeds_bals_serves_them_and_stops_on_sigterm(tmp_path: Path) -> None:
    demo = Background(
        "demo",
        "--dir", str(tmp_path / "var"),
        "--admin-listen", "127.0.0.1:0",
        "--mx-listen", "127.0.0.1:0",
        "--submission-listen", "127.0.0.1:0",
        "--submissions-listen", "127.0.0.1:0",
        "--imap-listen", "127.0.0.1:0",
        "--imaps-listen", "127.0.0.1:0",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        demo.wait_for("stdout", r"^Stop with Ctrl-C\.$")
        out = "".join(demo.stdout)
        assert "Endpoints:" in out
        assert f"Demo BALs (password: {DEMO_PASSWORD}):" in out
        for bal in DEMO_BALS:
            assert bal.address in out
        port = int(demo.wait_for("stdout", r"admin +http://127\.0\.0\.1:(\d+)/healthz").group(1))
        assert http(port, b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 200

        # From the folder holding var/, the CLI finds var/colombe.toml by itself.
        listed, shown, found, listed_dn = run_many(
            [
                ["bal", "list"],
                ["bal", "show", "claire.martin@cabinet-demo.mssante.fr", "--json"],
                ["directory", "search", "--city", "villeur", "--json"],
                ["whitelist", "check", "cabinet-demo.mssante.fr", DEMO_OPERATOR_DN],
            ],
            cwd=tmp_path,
        )
        # The demo's directory and its local whitelist answer.
        assert sorted(e["address"] for e in json.loads(found.stdout)) == [
            "claire.martin@cabinet-demo.mssante.fr",
            "secretariat@cabinet-demo.mssante.fr",
        ]
        assert listed_dn.stdout.startswith("allowed")
        addresses = [line.split()[0] for line in listed.stdout.splitlines()[2:]]
        assert "claire.martin@cabinet-demo.mssante.fr" in addresses
        assert sorted(addresses) == sorted(bal.address for bal in DEMO_BALS)
        claire = json.loads(shown.stdout)
        inbox = next(f for f in claire["folders"] if f["name"] == "INBOX")
        assert (inbox["messages"], inbox["unseen"]) == (2, 2)
        assert [d["delegate"] for d in claire["delegates"]] == [
            "secretariat@cabinet-demo.mssante.fr"
        ]

        # The printed swaks commands work as printed: one submission, one peer-operator delivery.
        assert "mx: smtp://127.0.0.1:" in out
        assert "submission: smtps://127.0.0.1:" in out
        commands = [
            shlex.split(line.split("   (", 1)[0])
            for line in out.splitlines()
            if line.strip().startswith("swaks ")
        ]
        assert len(commands) == 2
        for command in commands:
            sent = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert "250 2.0.0 OK queued as" in sent.stdout
        (claire_after, paul) = run_many(
            [
                ["bal", "show", "claire.martin@cabinet-demo.mssante.fr", "--json"],
                ["bal", "show", "paul.durand@clinique-demo.mssante.fr", "--json"],
            ],
            cwd=tmp_path,
        )
        inboxes = [
            next(f for f in json.loads(r.stdout)["folders"] if f["name"] == "INBOX")["messages"]
            for r in (claire_after, paul)
        ]
        assert inboxes == [3, 1]

        # IMAP serves the same mailboxes, with the settings printed for Thunderbird.
        assert "imap: imap://127.0.0.1:" in out
        incoming = re.search(r"Incoming: IMAP, server ([\d.]+), port (\d+), SSL/TLS", out)
        assert incoming is not None, out
        context = ssl.create_default_context(cafile=str(tmp_path / "var" / "pki" / "trust.pem"))
        context.check_hostname = False
        with imaplib.IMAP4_SSL(incoming[1], int(incoming[2]), ssl_context=context) as client:
            client.login("claire.martin@cabinet-demo.mssante.fr", DEMO_PASSWORD)
            status, data = client.select("INBOX", readonly=True)
            assert (status, data) == ("OK", [b"3"])

        assert demo.stop(signal.SIGTERM) == 0
        assert refuses_connections(port)
    finally:
        demo.kill()
    assert (tmp_path / "var" / "colombe.toml").is_file()
    assert (tmp_path / "var" / "colombe.db").is_file()
