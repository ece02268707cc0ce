"""A small HTTP server publishing a test PKI's CRLs, as the IGC-Santé publishes its own."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class CrlServer:
    def __init__(self, crl_dir: Path | None = None) -> None:
        self.crl_dir = crl_dir
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                name = self.path.rsplit("/", 1)[-1]
                path = server.crl_dir / name if server.crl_dir else None
                if path is None or not self.path.startswith("/crl/") or not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/pkix-crl")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/crl"

    def close(self) -> None:
        """Stop answering: the port is closed, fetches fail with connection refused."""
        self._httpd.shutdown()
        self._httpd.server_close()
