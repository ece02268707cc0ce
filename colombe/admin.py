"""The admin endpoint: ``/healthz`` for load balancers and ``/metrics`` for Prometheus.

A deliberately small HTTP/1.1 server (GET only, one request per connection, bounded request size
and time): it must stay up when everything else is in trouble, and it carries no user data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import text

from colombe.config import Config, parse_listen
from store import Store

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 8192
MAX_HEADERS = 64
REQUEST_TIMEOUT = 10.0

# Collectors of other components (the whitelist...), exposed on /metrics next to the store's.
# Looked up at each scrape: components start after the admin endpoint and stop before it.
_component_collectors: list[Any] = []


def register_collector(collector: Any) -> None:
    """Expose ``collector`` (an object with ``collect() -> Iterator[Metric]``) on /metrics."""
    _component_collectors.append(collector)


def unregister_collector(collector: Any) -> None:
    if collector in _component_collectors:
        _component_collectors.remove(collector)


class _ComponentCollectors:
    def collect(self) -> Iterator[Metric]:
        for collector in list(_component_collectors):
            yield from collector.collect()


class _StoreCollector:
    """Exposes the last snapshot taken from the store (collect() cannot await)."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        yield GaugeMetricFamily("colombe_up", "1 when the store answered", value=s.get("up", 0))
        for name, doc in (
            ("domains", "Hosted domains"),
            ("bals", "BALs (all statuses)"),
            ("messages", "Messages stored"),
            ("queued", "Outbound queue entries not yet delivered"),
        ):
            if name in s:
                yield GaugeMetricFamily(f"colombe_store_{name}", doc, value=s[name])
        if "commits" in s:
            yield CounterMetricFamily(
                "colombe_delivery_commits", "Group commits of deliveries", value=s["commits"]
            )
            yield CounterMetricFamily(
                "colombe_deliveries", "Messages delivered by this process", value=s["delivered"]
            )
        if "watchers" in s:
            yield GaugeMetricFamily(
                "colombe_change_watchers", "Sessions waiting on folder changes", value=s["watchers"]
            )


class AdminServer:
    """The ``admin`` component of ``colombe serve``."""

    name = "admin"

    def __init__(self, store: Store, host: str, port: int) -> None:
        self._store = store
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._collector = _StoreCollector()
        self._registry = CollectorRegistry()
        self._registry.register(self._collector)
        self._registry.register(_ComponentCollectors())
        self._started = time.monotonic()

    @classmethod
    def from_config(cls, config: Config, store: Store) -> AdminServer | None:
        if not config.admin.listen:
            return None
        host, port = parse_listen(config.admin.listen, "admin.listen")
        return cls(store, host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, limit=MAX_REQUEST_LINE
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def endpoints(self) -> list[str]:
        host = f"[{self._host}]" if ":" in self._host else self._host
        base = f"http://{host}:{self.port}"
        return [f"admin    {base}/healthz  {base}/metrics"]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                status, body, ctype, head_only = await self._respond(reader)
        except (TimeoutError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            status, body, ctype = "400 Bad Request", b"bad request\n", "text/plain"
        except Exception:
            log.exception("admin request failed")
            status, body, ctype = "500 Internal Server Error", b"error\n", "text/plain"
        # RFC 9110 §15.5.6: a 405 lists the methods the resource supports.
        allow = "Allow: GET, HEAD\r\n" if status.startswith("405") else ""
        with contextlib.suppress(ConnectionError):
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{allow}"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                # RFC 9110 §9.3.2: HEAD gets the headers of GET, without the content.
                + (b"" if head_only else body)
            )
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, bytes, str, bool]:
        request_line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        for _ in range(MAX_HEADERS + 1):
            if (await reader.readline()) in (b"\r\n", b"\n", b""):
                break
        else:
            return "431 Request Header Fields Too Large", b"too many headers\n", "text/plain", False
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError("malformed request line")
        method, path = parts[0], parts[1].split("?", 1)[0]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"GET only\n", "text/plain", False
        if path == "/healthz":
            ok = await self._store_answers()
            if ok:
                return "200 OK", b"ok\n", "text/plain", head
            return "503 Service Unavailable", b"store unavailable\n", "text/plain", head
        if path == "/metrics":
            await self._refresh_snapshot()
            return "200 OK", generate_latest(self._registry), "text/plain; version=0.0.4", head
        return "404 Not Found", b"not found\n", "text/plain", head

    async def _store_answers(self) -> bool:
        try:
            async with asyncio.timeout(5):
                async with self._store.db.reader.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            return True
        except Exception as exc:
            log.warning("health check: store does not answer (%s)", type(exc).__name__)
            return False

    async def _refresh_snapshot(self) -> None:
        snapshot: dict[str, Any] = {"up": 0}
        try:
            async with asyncio.timeout(5):
                snapshot.update(await self._store.counts())
            snapshot["up"] = 1
        except Exception as exc:
            log.warning("metrics: store does not answer (%s)", type(exc).__name__)
        snapshot["commits"], snapshot["delivered"] = self._store.commit_stats
        snapshot["watchers"] = self._store.changes.watcher_count()
        self._collector.snapshot = snapshot
