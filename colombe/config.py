"""Configuration: one TOML file, every key documented in deploy/colombe.example.toml, each key
overridable by an environment variable ``COLOMBE_<SECTION>_<KEY>`` (``COLOMBE_STORE_DATABASE_URL``).

Unknown keys and wrong types are refused with an error naming the key and where it came from:
a typo must not silently fall back to a default on a health-data server.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

CONFIG_FILE = "colombe.toml"
ENV_PREFIX = "COLOMBE_"
# Where a config is looked for when neither --config nor COLOMBE_CONFIG names one.
SEARCH_PATH = (Path(CONFIG_FILE), Path("var") / CONFIG_FILE, Path("/etc/colombe") / CONFIG_FILE)


class ConfigError(Exception):
    """A configuration problem, worded for the operator (names the key and the file)."""


@dataclass(frozen=True, slots=True)
class StoreSection:
    database_url: str = "sqlite:///var/colombe.db"
    blob_dir: str = "var/blobs"
    pool_size: int = 10
    # Seconds a successful password check is remembered (IMAP and SMTP logins skip the argon2
    # hash meanwhile); a password change or a suspension voids it at once. 0: never.
    login_cache_ttl: int = 300


@dataclass(frozen=True, slots=True)
class ServerSection:
    hostname: str = "localhost"
    # Processes serving the front ends (MX, submission): one per core on a busy server. They
    # share the listening ports (SO_REUSEPORT); the other components run in the first only.
    processes: int = 1


@dataclass(frozen=True, slots=True)
class AdminSection:
    listen: str = "127.0.0.1:8780"


@dataclass(frozen=True, slots=True)
class WhitelistSection:
    # The ANS whitelist (mssante-spec §2.3); https:// or file:// (http:// only to a loopback host).
    # Empty: never fetched.
    url: str = "https://espacedeconfiance.mssante.fr/listeblanchemssante.xml"
    # PEM or PKCS#7 bundle the HTTPS server is checked against (the IGC-Santé chain).
    # Empty: the system's trust store.
    ca_file: str = ""
    refresh_interval: int = 3600
    max_age: int = 86400
    min_entries: int = 1000
    timeout: int = 60


@dataclass(frozen=True, slots=True)
class DirectorySection:
    # The ANS open-data extraction of every MSSanté BAL (mssante-spec §5.4): a .zip or a .txt,
    # https:// or file:// (http:// only to a loopback host). Empty: no automatic import.
    extraction_url: str = (
        "https://www.data.gouv.fr/api/1/datasets/r/afe01105-d9a1-41fe-921f-e40ea48b2ba6"
    )
    extraction_ca_file: str = ""
    # Seconds between automatic imports; 0 disables them (`colombe directory import-extraction`).
    import_interval: int = 86400


@dataclass(frozen=True, slots=True)
class PublicationSection:
    # The national directory's LDAP server: ldaps://host:636, or ldap://host:389 with starttls.
    # Empty: BALs are not published.
    url: str = ""
    starttls: bool = False
    base_dn: str = ""
    bind_dn: str = ""
    # The bind password, read from this file (keep secrets out of colombe.toml); or
    # COLOMBE_PUBLICATION_BIND_PASSWORD.
    bind_password_file: str = ""
    bind_password: str = field(default="", repr=False)
    ca_file: str = ""
    # Client certificate and key (PEM) for servers that require mutual TLS.
    cert_file: str = ""
    key_file: str = ""
    timeout: int = 30
    # Seconds between looks for changed BALs (changes made in this process are seen at once).
    poll_interval: int = 5
    # Seconds between full reconciliations of the directory with the store.
    full_interval: int = 86400
    retry_min: int = 30
    retry_max: int = 3600


@dataclass(frozen=True, slots=True)
class TlsSection:
    # Our IGC-Santé SERV SSL certificate (PEM, leaf then intermediates) and its key: presented by
    # the MX and submission listeners, and as client certificate when delivering to peers.
    cert_file: str = ""
    key_file: str = ""
    # The IGC-Santé roots and intermediates (PEM) peers' certificates must chain to.
    trust_file: str = ""
    # A folder of CRLs (*.crl, *.pem, DER or PEM) loaded at start; CRLs are then fetched from the
    # certificates' distribution points when due. Empty: fetched only.
    crl_dir: str = ""


@dataclass(frozen=True, slots=True)
class MxSection:
    # The inbound MX for the other operators ("0.0.0.0:25" in production). Empty: no MX.
    listen: str = ""
    max_message_size: int = 26_214_400
    max_recipients: int = 100
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    max_errors: int = 20
    timeout: int = 300


@dataclass(frozen=True, slots=True)
class SubmissionSection:
    # Port 587 with STARTTLS ("0.0.0.0:587") and port 465 with implicit TLS ("0.0.0.0:465").
    # Empty: that listener is off.
    listen: str = ""
    listen_tls: str = ""
    max_message_size: int = 26_214_400
    max_recipients: int = 100
    max_connections: int = 1000
    max_connections_per_ip: int = 20
    max_errors: int = 20
    timeout: int = 300
    max_auth_failures: int = 3
    # Seconds to wait before answering a failed AUTH.
    auth_failure_delay: int = 2


@dataclass(frozen=True, slots=True)
class ImapSection:
    # Port 143 with STARTTLS ("0.0.0.0:143") and port 993 with implicit TLS ("0.0.0.0:993").
    # Empty: that listener is off.
    listen: str = ""
    listen_tls: str = ""
    max_connections: int = 10_000
    max_connections_per_ip: int = 100
    # Dovecot's mail_max_userip_connections: a client opening more is refused at login.
    max_connections_per_user: int = 20
    # Autologout after this many seconds without a command (RFC 9051: at least 30 minutes).
    timeout: int = 1800
    # Seconds a connection may take to log in.
    login_timeout: int = 60
    # The largest message APPEND accepts (announced as APPENDLIMIT).
    max_message_size: int = 26_214_400
    max_auth_failures: int = 3
    # Seconds to wait before answering a failed login.
    auth_failure_delay: int = 2
    # Octets each BAL may hold (QUOTA); 0: no quota.
    quota_storage: int = 0


@dataclass(frozen=True, slots=True)
class QueueSection:
    # Deliver queued mail to the other operators (one runner per process; several processes
    # share the queue safely).
    enabled: bool = True
    workers: int = 20
    # Seconds between looks for due entries (new mail submitted here is tried at once).
    poll_interval: int = 5
    # Retry schedule, in seconds, as Postfix's defaults.
    minimal_backoff: int = 300
    maximal_backoff: int = 4000
    lifetime: int = 432_000
    bounce_lifetime: int = 432_000
    # Send one "delayed" DSN after this many seconds in the queue; 0: never.
    delay_warning: int = 14_400
    # A static route table ("domain = host:port" per line, see mta/routes.py); used instead of
    # MX records for the domains it names. Empty: MX records only.
    routes_file: str = ""
    port: int = 25
    connect_timeout: int = 30
    command_timeout: int = 300
    max_connections_per_domain: int = 10
    # Seconds a claimed entry stays reserved for the process delivering it (renewed while it
    # works): after a crash, its entries are retried by any process within this delay.
    claim_lease: int = 120


@dataclass(frozen=True, slots=True)
class LogSection:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class Config:
    store: StoreSection = field(default_factory=StoreSection)
    server: ServerSection = field(default_factory=ServerSection)
    admin: AdminSection = field(default_factory=AdminSection)
    whitelist: WhitelistSection = field(default_factory=WhitelistSection)
    directory: DirectorySection = field(default_factory=DirectorySection)
    publication: PublicationSection = field(default_factory=PublicationSection)
    tls: TlsSection = field(default_factory=TlsSection)
    mx: MxSection = field(default_factory=MxSection)
    submission: SubmissionSection = field(default_factory=SubmissionSection)
    imap: ImapSection = field(default_factory=ImapSection)
    queue: QueueSection = field(default_factory=QueueSection)
    log: LogSection = field(default_factory=LogSection)
    # Where the file was read from; relative paths in it are relative to its directory.
    path: Path | None = None

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def database_url(self) -> str:
        """The store URL with a relative SQLite path made absolute against the config's folder."""
        url = self.store.database_url
        for prefix in ("sqlite:///", "sqlite+aiosqlite:///"):
            if url.startswith(prefix):
                rest = url[len(prefix) :]
                if rest and not rest.startswith("/") and rest != ":memory:":
                    return prefix + str(self.resolve(rest))
        return url

    @property
    def blob_dir(self) -> Path:
        return self.resolve(self.store.blob_dir)


_SECTIONS: dict[str, type[Any]] = {
    f.name: f.type if isinstance(f.type, type) else get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name != "path"
}
_LEVELS = ("debug", "info", "warning", "error")
_FORMATS = ("text", "json")


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, wanted: type[Any], where: str) -> Any:
    if wanted is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
    elif wanted is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif wanted is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {wanted.__name__}, got {value!r}")


def _build(raw: Mapping[str, Any], origin: Mapping[str, str]) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    for section_name, section_type in _SECTIONS.items():
        values = raw.get(section_name, {})
        hints = get_type_hints(section_type)
        kwargs = {}
        for key, value in values.items():
            where = f"{origin.get(f'{section_name}.{key}', 'config')}: {section_name}.{key}"
            kwargs[key] = _coerce(value, hints[key], where)
        sections[section_name] = section_type(**kwargs)
    return sections


def _check_known(raw: Mapping[str, Any], source: str) -> None:
    for section_name, values in raw.items():
        if section_name not in _SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{section_name}]{_suggest(section_name, list(_SECTIONS))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section_name} must be a [section], not a value")
        known = [f.name for f in dataclasses.fields(_SECTIONS[section_name])]
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown key {section_name}.{key}{_suggest(key, known)}"
                )


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """``COLOMBE_STORE_DATABASE_URL=...`` -> {"store": {"database_url": ...}}."""
    raw: dict[str, dict[str, str]] = {}
    origin: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section_name in sorted(_SECTIONS, key=len, reverse=True):
            if rest.startswith(section_name + "_"):
                key = rest[len(section_name) + 1 :]
                known = [f.name for f in dataclasses.fields(_SECTIONS[section_name])]
                if key not in known:
                    hint = _suggest(key, known)
                    raise ConfigError(f"environment: {name} is not a setting{hint}")
                raw.setdefault(section_name, {})[key] = value
                origin[f"{section_name}.{key}"] = f"environment {name}"
                break
    return raw, origin


def find_config(explicit: str | Path | None, env: Mapping[str, str] = os.environ) -> Path | None:
    if explicit is not None:
        return Path(explicit)
    if env.get("COLOMBE_CONFIG"):
        return Path(env["COLOMBE_CONFIG"])
    for candidate in SEARCH_PATH:
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | Path | None, env: Mapping[str, str] = os.environ) -> Config:
    """Read ``path`` (None: defaults only), then apply ``COLOMBE_*`` overrides, then validate."""
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}
    resolved: Path | None = None
    if path is not None:
        resolved = Path(path).resolve()
        try:
            raw = tomllib.loads(resolved.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        _check_known(raw, str(path))
        for section_name, values in raw.items():
            for key in values:
                origin[f"{section_name}.{key}"] = str(path)
    env_raw, env_origin = _env_overrides(env)
    for section_name, values in env_raw.items():
        raw.setdefault(section_name, {}).update(values)
    origin.update(env_origin)
    config = Config(**_build(raw, origin), path=resolved)
    _validate(config, origin)
    return config


def _validate(config: Config, origin: Mapping[str, str]) -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{origin.get(key, 'default')}: {key}: {message}")

    if config.log.level.lower() not in _LEVELS:
        fail("log.level", f"must be one of {', '.join(_LEVELS)}")
    if config.log.format.lower() not in _FORMATS:
        fail("log.format", f"must be one of {', '.join(_FORMATS)}")
    if config.store.pool_size < 1:
        fail("store.pool_size", "must be at least 1")
    if not config.store.database_url.startswith(("sqlite", "postgres")):
        fail("store.database_url", "must start with sqlite:/// or postgresql://")
    if config.admin.listen:
        parse_listen(config.admin.listen, "admin.listen", origin)
    if config.server.processes < 1:
        fail("server.processes", "must be at least 1")
    if config.server.processes > 1 and config.store.database_url.startswith("sqlite"):
        # Measured: two SQLite writers in two processes wait on each other's locks (SQLite's
        # busy handler sleeps), which makes the MX slower than one process, not faster.
        fail("server.processes", "several processes need PostgreSQL (store.database_url)")
    for key in (
        "mx.listen",
        "submission.listen",
        "submission.listen_tls",
        "imap.listen",
        "imap.listen_tls",
    ):
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value:
            _, port = parse_listen(value, key, origin)
            if port == 0 and config.server.processes > 1:
                fail(key, "several processes must share a fixed port (server.processes > 1)")
            if section == "imap":
                if not (config.tls.cert_file and config.tls.key_file):
                    fail(key, "needs tls.cert_file and tls.key_file")
            elif not (config.tls.cert_file and config.tls.key_file and config.tls.trust_file):
                fail(key, "needs tls.cert_file, tls.key_file and tls.trust_file")
    for key in (
        "mx.max_message_size",
        "mx.max_recipients",
        "mx.max_connections",
        "mx.max_connections_per_ip",
        "mx.max_errors",
        "mx.timeout",
        "submission.max_message_size",
        "submission.max_recipients",
        "submission.max_connections",
        "submission.max_connections_per_ip",
        "submission.max_errors",
        "submission.timeout",
        "submission.max_auth_failures",
        "imap.max_connections",
        "imap.max_connections_per_ip",
        "imap.max_connections_per_user",
        "imap.timeout",
        "imap.login_timeout",
        "imap.max_message_size",
        "imap.max_auth_failures",
        "queue.workers",
        "queue.poll_interval",
        "queue.connect_timeout",
        "queue.command_timeout",
        "queue.max_connections_per_domain",
        "queue.claim_lease",
    ):
        section, name = key.split(".")
        if getattr(getattr(config, section), name) < 1:
            fail(key, "must be at least 1")


def parse_listen(
    value: str, key: str = "listen", origin: Mapping[str, str] | None = None
) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    where = (origin or {}).get(key, "config")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {key}: expected host:port, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def render_config(*, database_url: str, blob_dir: str, hostname: str, admin_listen: str) -> str:
    """A minimal working colombe.toml (what ``colombe init`` writes)."""

    def q(value: str) -> str:
        # JSON string escapes (\\, \", \n, \uXXXX) are valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)

    return (
        "# Colombe configuration. Every key, with its default and meaning:\n"
        "# deploy/colombe.example.toml. Relative paths are relative to this file.\n\n"
        "[store]\n"
        f"database_url = {q(database_url)}\n"
        f"blob_dir = {q(blob_dir)}\n\n"
        "[server]\n"
        f"hostname = {q(hostname)}\n\n"
        "[admin]\n"
        f"listen = {q(admin_listen)}\n"
    )
