"""Downloads that cannot hang or leak: the pieces the whitelist and extraction fetchers share.

A :class:`Deadline` bounds a whole download (connection, TLS handshake, status line, headers,
redirects, body) and can abort it from any thread; :class:`SafeRedirects` never follows a redirect
from https down to http or to plain http off this machine; :func:`redact_url` and
:func:`scrub_secrets` keep user, password and query string out of what is logged or stored.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization

from pki.loading import load_certificate_file


def client_context(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """A client context trusting only the certificates of ``ca_file`` (PEM or PKCS#7 bundle, the
    IGC-Santé chain), or the system's store when None. Host name checked, TLS 1.2 at least.

    Raises :class:`pki.errors.PkiError` for an unreadable bundle."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not ca_file:
        context.load_default_certs()
        return context
    # ssl wants PEM text; the bundle may be a .p7b, which only pki.loading reads.
    context.load_verify_locations(
        cadata="".join(
            c.public_bytes(serialization.Encoding.PEM).decode("ascii")
            for c in load_certificate_file(ca_file)
        )
    )
    return context


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (a URL's host name, without brackets) names this machine: ``localhost``,
    127.0.0.0/8 or ::1. Only these may be reached over plain http."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """``url`` as it may be shown, logged or stored: user and password replaced by ``***``, and
    the query string too (a token often travels there); the fragment dropped."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(unreadable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, "***" if parts.query else "", "")
    )


def scrub_secrets(text: str, url: str) -> str:
    """``text`` with ``url`` and its secrets (userinfo, password, query) replaced, for messages
    that may quote them (urllib and http.client errors do)."""
    text = text.replace(url, redact_url(url))
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return text
    secrets = [parts.netloc.rpartition("@")[0] if "@" in parts.netloc else "", parts.query]
    with contextlib.suppress(ValueError):
        secrets.append(parts.password or "")
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def redirect_refusal(old_url: str, new_url: str) -> str | None:
    """Why a redirect from ``old_url`` to ``new_url`` must not be followed, or None: only to
    https, or to http on a loopback host, and never from https down to http (the trust in the
    file rests on the TLS check)."""
    old = urllib.parse.urlsplit(old_url).scheme.lower()
    new = urllib.parse.urlsplit(new_url)
    scheme = new.scheme.lower()
    if scheme not in ("http", "https") or (old == "https" and scheme != "https"):
        return f"redirect from {old}:// to {scheme or '?'}:// refused"
    if scheme == "http" and not is_loopback_host(new.hostname):
        return f"redirect from {old}:// to http:// on a non-loopback host refused"
    return None


class SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows only the redirects :func:`redirect_refusal` allows; raises ``error(reason)``."""

    def __init__(self, error: Callable[[str], Exception]) -> None:
        super().__init__()
        self._error = error

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        refusal = redirect_refusal(req.full_url, newurl)
        if refusal is not None:
            raise self._error(refusal)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Deadline:
    """The time left to a download, enforced on every socket it opens.

    A server can answer one octet at a time, each within a socket timeout, and so keep a
    download (status line, headers, redirects, TLS handshake, body) going for ever. Each socket
    gets the remaining time as its timeout when it is opened, and at the deadline a watchdog
    shuts every socket down, which ends whatever read or write is blocked on it. The watchdog
    holds a duplicate of each socket (``dup``): shutdown acts on the connection, and the
    duplicate stays valid when TLS takes over the original object.

    ``socket_timeout`` also caps each socket operation once connected, so that a stalled server
    is seen long before a generous deadline."""

    def __init__(self, timeout: float, *, socket_timeout: float | None = None) -> None:
        self.at = time.monotonic() + timeout
        self.socket_timeout = socket_timeout
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False
        self._timer = threading.Timer(max(0.0, timeout), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        """Seconds left; :class:`TimeoutError` when none."""
        left = self.at - time.monotonic()
        if left <= 0 or self.expired:
            raise TimeoutError("deadline reached")
        return left

    def watch(self, sock: socket.socket) -> None:
        duplicate = sock.dup()
        with self._lock:
            self._sockets.append(duplicate)
            expired = self.expired
        if expired:
            _shutdown(duplicate)

    def abort(self) -> None:
        """End the download now, from any thread: every socket is shut down."""
        self._expire()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def connect_within(
    deadline: Deadline,
    address: tuple[str, int],
    timeout: object = None,  # http.client's per-operation timeout: the deadline replaces it
    source_address: tuple[str, int] | None = None,
) -> socket.socket:
    """``socket.create_connection`` with the time left for all the addresses tried together
    (not each), every socket watched."""
    host, port = address
    error: OSError | None = None
    for family, kind, proto, _, where in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            deadline.watch(sock)
            sock.settimeout(deadline.remaining())
            if source_address:
                sock.bind(source_address)
            sock.connect(where)
            left = deadline.remaining()
            cap = deadline.socket_timeout
            sock.settimeout(left if cap is None else min(cap, left))
            return sock
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"no address for {host}")


class BoundedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(connect_within, deadline)


class BoundedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(connect_within, deadline)


class BoundedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        factory = functools.partial(BoundedHTTPConnection, deadline=self._deadline)
        return self.do_open(factory, req)


class BoundedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._deadline = deadline
        self._bounded_context = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        factory = functools.partial(
            BoundedHTTPSConnection, deadline=self._deadline, context=self._bounded_context
        )
        return self.do_open(factory, req)
