"""Where to deliver a recipient domain (sans-I/O): the static route table, the MX target order,
and per-domain connection accounting.

Static routes (``[queue] routes`` in colombe.toml, one string per route)::

    "example.mssante.fr = 127.0.0.1:2525"       # exactly this domain
    ".hopital.fr = [192.0.2.10]"                # every subdomain of hopital.fr (not hopital.fr)
    "* = relay.internal:25, relay2.internal"    # everything else
    "# a comment"                               # blank lines and comments are skipped

Lookup order (like Postfix's transport maps): the exact domain, then the longest matching
``.suffix``, then ``*``; no match means an MX lookup (:func:`route_for` returns None). A target is a
host name, an IPv4 address (bare or ``[...]``) or an IPv6 literal (``[2001:db8::1]`` or
``[IPv6:2001:db8::1]``), with an optional ``:port`` (default 25); several targets separated by
commas are tried in order. A routed host name is resolved to addresses, never MX-looked-up (a
static route names the machine). An invalid line is refused with its line number and the reason
(:class:`RouteError`).

MX order (:func:`mx_targets`, RFC 5321 §5.1): records sorted by preference, equal preferences
shuffled (injectable RNG), duplicates dropped; no MX record: the domain itself is the implicit MX;
if one of our own names is listed, that record and every less preferred one are discarded (and
if ours is the best, mail would loop: 5.4.6). A null MX (RFC 7505, ``0 .``, the domain's only
record) means the domain accepts no mail: a permanent failure 5.1.10 with no connection attempt.
A ``.`` among other records breaks RFC 7505 §3; we drop it and use the others (trying a real host
is safer than bouncing on a publisher's mistake). The peer certificate check that follows is what
makes any MX trustworthy; DNS gives order, not trust.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from mta.schedule import Decision, Outcome

DEFAULT_PORT: Final = 25
MAX_DOMAIN: Final = 253

_LABEL_RE: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class RouteError(ValueError):
    """An invalid route line; the message names the line number and the reason."""

    def __init__(self, line_number: int, reason: str) -> None:
        super().__init__(f"[queue] routes line {line_number}: {reason}")
        self.line_number = line_number
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """One place to connect to: a host name to resolve, or an address (``is_address``)."""

    host: str
    port: int = DEFAULT_PORT

    @property
    def is_address(self) -> bool:
        return _ip(self.host) is not None

    def __str__(self) -> str:
        ip = _ip(self.host)
        if ip is None:
            return f"{self.host}:{self.port}"
        return f"[{ip}]:{self.port}"


@dataclass(frozen=True, slots=True)
class RouteTable:
    exact: Mapping[str, tuple[Target, ...]] = field(default_factory=dict)
    suffixes: Mapping[str, tuple[Target, ...]] = field(default_factory=dict)
    """Keyed by the suffix without its leading dot."""
    wildcard: tuple[Target, ...] | None = None


def normalise_host(name: str) -> str | None:
    """``name`` in ASCII lower case without a final dot if it is an LDH host name (one label is
    enough: ``localhost``, ``relay``), else None."""
    if not name.isascii():
        return None
    name = name[:-1].lower() if name.endswith(".") else name.lower()
    if not name or len(name) > MAX_DOMAIN:
        return None
    if not all(_LABEL_RE.fullmatch(label) for label in name.split(".")):
        return None
    return name


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_target(text: str) -> Target:
    """``host``, ``host:port``, ``1.2.3.4[:port]``, ``[1.2.3.4][:port]``, ``[IPv6:...][:port]``
    or ``[...v6...][:port]``; ValueError with the reason otherwise."""
    text = text.strip()
    if not text:
        raise ValueError("empty target")
    port = DEFAULT_PORT
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        inner, rest = text[1:close], text[close + 1 :]
        if inner[:5].lower() == "ipv6:":
            inner = inner[5:]
            if not isinstance(_ip(inner), ipaddress.IPv6Address):
                raise ValueError(f"invalid IPv6 address {inner!r}")
        if _ip(inner) is None:
            raise ValueError(f"invalid address literal [{inner}]")
        host = str(_ip(inner))
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected {rest!r} after ']'")
            port = _port(rest[1:])
        return Target(host, port)
    if text.count(":") > 1:
        raise ValueError(f"IPv6 address must be written in brackets: {text!r}")
    name, sep, port_text = text.partition(":")
    if sep:
        port = _port(port_text)
    ip = _ip(name)
    if ip is not None:
        return Target(str(ip), port)
    if name.replace(".", "").isdigit():
        raise ValueError(f"invalid IPv4 address {name!r}")
    normalised = normalise_host(name)
    if normalised is None:
        raise ValueError(f"invalid host name {name!r}")
    return Target(normalised, port)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ValueError(f"invalid port {text!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1-65535")
    return port


def parse_routes(lines: Iterable[str]) -> RouteTable:
    """The route table from the config's lines (numbered from 1 in errors)."""
    exact: dict[str, tuple[Target, ...]] = {}
    suffixes: dict[str, tuple[Target, ...]] = {}
    wildcard: tuple[Target, ...] | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, rhs = line.partition("=")
        if not sep:
            raise RouteError(number, "expected 'domain = host[:port]'")
        pattern = pattern.strip()
        targets: list[Target] = []
        for part in rhs.split(","):
            try:
                targets.append(parse_target(part))
            except ValueError as exc:
                raise RouteError(number, str(exc)) from None
        if pattern == "*":
            if wildcard is not None:
                raise RouteError(number, "duplicate route for '*'")
            wildcard = tuple(targets)
            continue
        is_suffix = pattern.startswith(".")
        domain = normalise_host(pattern[1:] if is_suffix else pattern)
        if domain is None or (is_suffix and pattern.endswith(".")):
            raise RouteError(number, f"invalid domain pattern {pattern!r}")
        table = suffixes if is_suffix else exact
        if domain in table:
            raise RouteError(number, f"duplicate route for {pattern.lower()!r}")
        table[domain] = tuple(targets)
    return RouteTable(exact, suffixes, wildcard)


def route_for(domain: str, table: RouteTable) -> list[Target] | None:
    """The static targets for ``domain``, or None: look up its MX. ValueError for a domain that
    is not a host name (the policy refused it long before)."""
    name = normalise_host(domain)
    if name is None:
        raise ValueError(f"invalid domain {domain!r}")
    if name in table.exact:
        return list(table.exact[name])
    labels = name.split(".")
    for i in range(1, len(labels)):  # longest suffix first
        suffix = ".".join(labels[i:])
        if suffix in table.suffixes:
            return list(table.suffixes[suffix])
    return list(table.wildcard) if table.wildcard is not None else None


# -- MX ---------------------------------------------------------------------------------------------

NULL_MX: Final = Decision(
    Outcome.FAIL,
    "5.1.10",
    "Recipient domain publishes a null MX (RFC 7505): it accepts no mail",
)


def mail_loops(domain: str) -> Decision:
    return Decision(
        Outcome.FAIL, "5.4.6", f"mail for {domain} loops back to myself (we are its best MX)"
    )


def mx_targets(
    domain: str,
    records: Sequence[tuple[int, str]],
    *,
    rng: random.Random | None = None,
    local_names: Collection[str] = (),
    port: int = DEFAULT_PORT,
) -> list[Target] | Decision:
    """The ordered targets for ``domain`` from its MX ``records`` (preference, exchange), or a
    failure :class:`Decision` (null MX, mail loop). ``records`` empty: the implicit MX (the
    domain itself, RFC 5321 §5.1). ``rng`` shuffles equal preferences (tests pass a seeded one)."""
    rng = rng or random.Random()
    name = normalise_host(domain)
    if name is None:
        raise ValueError(f"invalid domain {domain!r}")
    if not records:
        return [Target(name, port)]
    hosts: list[tuple[int, str]] = []
    for preference, exchange in records:
        if not 0 <= preference <= 65535:
            raise ValueError(f"MX preference {preference} out of range 0-65535")
        host = normalise_host(exchange)
        if host is not None:
            hosts.append((preference, host))
        elif exchange.strip() not in {".", ""}:
            raise ValueError(f"invalid MX exchange {exchange!r}")
    if not hosts:  # only "." records: null MX
        return NULL_MX
    by_pref: dict[int, list[str]] = {}
    for preference, host in hosts:
        by_pref.setdefault(preference, []).append(host)
    ordered: list[str] = []
    ours = {h for h in (normalise_host(n) for n in local_names) if h is not None}
    for preference in sorted(by_pref):
        group = list(dict.fromkeys(by_pref[preference]))
        if ours.intersection(group):
            if not ordered:
                return mail_loops(name)
            break  # RFC 5321 §5.1: discard our own preference level and worse
        rng.shuffle(group)
        ordered.extend(h for h in group if h not in ordered)
    return [Target(host, port) for host in ordered]


# -- connection accounting ------------------------------------------------------------------------


class ConnectionLimits:
    """Outbound connections in use, globally and per recipient domain (case-insensitive).

    ``try_acquire`` takes a slot if both caps allow it; every successful acquire must be paired
    with exactly one ``release``. ``per_domain_overrides`` raises or lowers the cap of a domain
    (Postfix's ``*_destination_concurrency_limit`` per transport)."""

    def __init__(
        self,
        *,
        global_limit: int = 100,
        per_domain: int = 20,
        per_domain_overrides: Mapping[str, int] | None = None,
    ) -> None:
        if global_limit < 1:
            raise ValueError("[queue] max_connections must be at least 1")
        if per_domain < 1:
            raise ValueError("[queue] max_connections_per_domain must be at least 1")
        overrides = dict(per_domain_overrides or {})
        for domain, limit in overrides.items():
            if limit < 1:
                raise ValueError(f"[queue] connection limit for {domain} must be at least 1")
        self.global_limit = global_limit
        self.per_domain = per_domain
        self._overrides = {d.lower().rstrip("."): n for d, n in overrides.items()}
        self._in_use: dict[str, int] = {}
        self._total = 0

    @staticmethod
    def _key(domain: str) -> str:
        return domain.lower().rstrip(".")

    def limit_for(self, domain: str) -> int:
        return self._overrides.get(self._key(domain), self.per_domain)

    def in_use(self, domain: str | None = None) -> int:
        """Connections open to ``domain``, or in total when None."""
        if domain is None:
            return self._total
        return self._in_use.get(self._key(domain), 0)

    def try_acquire(self, domain: str) -> bool:
        key = self._key(domain)
        if self._total >= self.global_limit:
            return False
        if self._in_use.get(key, 0) >= self.limit_for(key):
            return False
        self._in_use[key] = self._in_use.get(key, 0) + 1
        self._total += 1
        return True

    def release(self, domain: str) -> None:
        key = self._key(domain)
        count = self._in_use.get(key, 0)
        if count == 0:
            raise ValueError(f"release({domain!r}) without a matching acquire")
        if count == 1:
            del self._in_use[key]
        else:
            self._in_use[key] = count - 1
        self._total -= 1
