"""colombe.toml: defaults, sections, refusals that name the file and the key, environment
overrides, path resolution, the search path and the file ``colombe init`` writes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import get_type_hints

import pytest

from colombe.config import (
    SEARCH_PATH,
    AdminSection,
    Config,
    ConfigError,
    LogSection,
    ServerSection,
    StoreSection,
    find_config,
    load_config,
    parse_listen,
    render_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "deploy" / "colombe.example.toml"

EVERY_SECTION = """\
[store]
database_url = "postgresql://colombe:pw@db.example/colombe"
blob_dir = "/srv/colombe/blobs"
pool_size = 25

[server]
hostname = "mx.operateur-test.mssante.fr"

[admin]
listen = "10.0.0.5:9100"

[log]
level = "warning"
format = "json"
"""


def write(tmp_path: Path, text: str, name: str = "colombe.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def section_keys() -> dict[str, list[str]]:
    """Every section of Config and the keys of its dataclass, as the loader knows them."""
    hints = get_type_hints(Config)
    return {
        f.name: [k.name for k in dataclasses.fields(hints[f.name])]
        for f in dataclasses.fields(Config)
        if f.name != "path"
    }


# -- defaults and a complete file ---------------------------------------------------------------


def test_defaults_apply_when_no_file_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={})
    assert config.path is None
    assert config.store == StoreSection("sqlite:///var/colombe.db", "var/blobs", 10)
    assert config.server == ServerSection("localhost")
    assert config.admin == AdminSection("127.0.0.1:8780")
    assert config.log == LogSection("info", "text")
    # Without a file, relative paths are relative to the current folder.
    assert config.database_url == f"sqlite:///{tmp_path / 'var' / 'colombe.db'}"
    assert config.blob_dir == tmp_path / "var" / "blobs"


def test_file_with_every_section_sets_every_key(tmp_path: Path) -> None:
    path = write(tmp_path, EVERY_SECTION)
    config = load_config(path, env={})
    assert config.path == path.resolve()
    assert config.store == StoreSection(
        "postgresql://colombe:pw@db.example/colombe", "/srv/colombe/blobs", 25
    )
    assert config.server.hostname == "mx.operateur-test.mssante.fr"
    assert config.admin.listen == "10.0.0.5:9100"
    assert (config.log.level, config.log.format) == ("warning", "json")
    # PostgreSQL URLs and absolute blob folders are used as written.
    assert config.database_url == "postgresql://colombe:pw@db.example/colombe"
    assert config.blob_dir == Path("/srv/colombe/blobs")


def test_partial_file_keeps_defaults_for_what_it_does_not_set(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[server]\nhostname = "a.mssante.fr"\n'), env={})
    assert config.server.hostname == "a.mssante.fr"
    assert config.store.pool_size == 10
    assert config.log == LogSection()


# -- refusals -------------------------------------------------------------------------------------


def test_unknown_section_is_refused_with_the_file_and_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, '[stroe]\ndatabase_url = "sqlite:///x.db"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    message = str(refused.value)
    assert str(path) in message
    assert "unknown section [stroe]" in message
    assert "did you mean 'store'?" in message


def test_unknown_key_is_refused_with_its_name_and_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\ndatabse_url = "sqlite:///x.db"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    message = str(refused.value)
    assert str(path) in message
    assert "store.databse_url" in message
    assert "did you mean 'database_url'?" in message


def test_unknown_key_without_a_close_match_gets_no_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "[log]\nrotate_every_tuesday = true\n")
    with pytest.raises(ConfigError, match=r"unknown key log\.rotate_every_tuesday$"):
        load_config(path, env={})


def test_section_written_as_a_plain_value_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'store = "sqlite:///x.db"\n')
    with pytest.raises(ConfigError, match=r"store must be a \[section\]"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("text", "key", "wanted", "got"),
    [
        ('[store]\npool_size = "x"\n', "store.pool_size", "int", "'x'"),
        ("[store]\npool_size = true\n", "store.pool_size", "int", "True"),
        ("[store]\npool_size = 2.5\n", "store.pool_size", "int", "2.5"),
        ("[server]\nhostname = 42\n", "server.hostname", "str", "42"),
        ("[admin]\nlisten = [1, 2]\n", "admin.listen", "str", "[1, 2]"),
    ],
)
def test_wrong_type_is_refused_naming_the_key_the_type_and_the_value(
    tmp_path: Path, text: str, key: str, wanted: str, got: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert str(refused.value) == f"{path}: {key}: expected {wanted}, got {got}"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[log]\nlevel = "loud"\n', "log.level"),
        ('[log]\nformat = "xml"\n', "log.format"),
        ("[store]\npool_size = 0\n", "store.pool_size"),
        ('[store]\ndatabase_url = "mysql://db/colombe"\n', "store.database_url"),
    ],
)
def test_invalid_value_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert str(refused.value).startswith(f"{path}: {key}: ")


@pytest.mark.parametrize(
    "listen", ["8780", "127.0.0.1", "127.0.0.1:", "localhost:http", "127.0.0.1:65536", "h:-1"]
)
def test_bad_admin_listen_is_refused_naming_the_key(tmp_path: Path, listen: str) -> None:
    path = write(tmp_path, f'[admin]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert str(refused.value) == f"{path}: admin.listen: expected host:port, got {listen!r}"


def test_listen_addresses_are_parsed_into_host_and_port() -> None:
    assert parse_listen("127.0.0.1:8780") == ("127.0.0.1", 8780)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)  # any free port, for tests
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    assert parse_listen(":25") == ("0.0.0.0", 25)


def test_empty_admin_listen_disables_the_endpoint_and_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[admin]\nlisten = ""\n'), env={})
    assert config.admin.listen == ""


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[store\ndatabase_url = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as refused:
        load_config(path, env={})
    assert str(refused.value).startswith(f"{path}: ")


def test_non_utf8_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "colombe.toml"
    path.write_bytes('[server]\nhostname = "hôpital"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert str(refused.value) == f"{path}: not UTF-8 text"


def test_missing_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert str(refused.value) == f"{path}: no such configuration file"


# -- environment overrides ------------------------------------------------------------------------


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, EVERY_SECTION)
    config = load_config(
        path,
        env={
            "COLOMBE_STORE_DATABASE_URL": "postgresql://other@db2.example/colombe",
            "COLOMBE_LOG_LEVEL": "debug",
            "COLOMBE_STORE_POOL_SIZE": "3",
        },
    )
    assert config.store.database_url == "postgresql://other@db2.example/colombe"
    assert config.log.level == "debug"
    assert config.store.pool_size == 3  # coerced from the variable's text
    # What the environment does not name still comes from the file.
    assert config.store.blob_dir == "/srv/colombe/blobs"
    assert config.log.format == "json"


def test_environment_overrides_apply_without_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={"COLOMBE_SERVER_HOSTNAME": "mx.test.mssante.fr"})
    assert config.server.hostname == "mx.test.mssante.fr"


def test_misspelt_environment_variable_is_refused_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, EVERY_SECTION)
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={"COLOMBE_STORE_DATABSE_URL": "postgresql://x@y/z"})
    message = str(refused.value)
    assert "COLOMBE_STORE_DATABSE_URL" in message
    assert "did you mean 'database_url'?" in message


def test_wrong_type_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, ""), env={"COLOMBE_STORE_POOL_SIZE": "many"})
    assert str(refused.value) == (
        "environment COLOMBE_STORE_POOL_SIZE: store.pool_size: expected int, got 'many'"
    )


def test_invalid_value_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, EVERY_SECTION), env={"COLOMBE_LOG_LEVEL": "chatty"})
    assert str(refused.value).startswith("environment COLOMBE_LOG_LEVEL: log.level: ")


def test_unrelated_colombe_variables_are_not_settings(tmp_path: Path) -> None:
    path = write(tmp_path, EVERY_SECTION)
    env = {
        "COLOMBE_CONFIG": str(tmp_path / "elsewhere.toml"),
        "COLOMBE_TEST_POSTGRES": "postgresql://postgres@127.0.0.1/postgres",
        "HOME": "/root",
        "STORE_DATABASE_URL": "sqlite:///not-ours.db",
    }
    assert load_config(path, env=env) == load_config(path, env={})


# -- relative paths -------------------------------------------------------------------------------


def test_relative_sqlite_path_and_blob_dir_are_relative_to_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        '[store]\ndatabase_url = "sqlite:///data/colombe.db"\nblob_dir = "data/blobs"\n',
        name="etc/colombe.toml",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path, env={})
    etc = (tmp_path / "etc").resolve()
    assert config.database_url == f"sqlite:///{etc / 'data' / 'colombe.db'}"
    assert config.blob_dir == etc / "data" / "blobs"


def test_config_given_by_a_relative_path_resolves_against_its_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, '[store]\ndatabase_url = "sqlite:///c.db"\n', name="var/colombe.toml")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("var") / "colombe.toml", env={})
    assert config.database_url == f"sqlite:///{tmp_path.resolve() / 'var' / 'c.db'}"
    assert config.blob_dir == tmp_path.resolve() / "var" / "var" / "blobs"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////srv/colombe/colombe.db",
        "sqlite:///:memory:",
        "postgresql://colombe@db/colombe",
    ],
)
def test_absolute_memory_and_postgresql_urls_are_left_alone(tmp_path: Path, url: str) -> None:
    config = load_config(write(tmp_path, f'[store]\ndatabase_url = "{url}"\n'), env={})
    assert config.database_url == url


def test_relative_path_with_the_aiosqlite_driver_is_resolved_too(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\ndatabase_url = "sqlite+aiosqlite:///c.db"\n')
    config = load_config(path, env={})
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'c.db'}"


# -- where the file is looked for ---------------------------------------------------------------


def test_find_config_prefers_explicit_then_environment_then_current_then_var_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    etc_fallback = Path("/etc/colombe/colombe.toml")
    assert SEARCH_PATH[-1] == etc_fallback
    nothing = etc_fallback if etc_fallback.is_file() else None
    assert find_config(None, env={}) == nothing

    write(tmp_path, "", name="var/colombe.toml")
    assert find_config(None, env={}) == Path("var/colombe.toml")

    write(tmp_path, "", name="colombe.toml")
    assert find_config(None, env={}) == Path("colombe.toml")
    # An empty COLOMBE_CONFIG is no choice.
    assert find_config(None, env={"COLOMBE_CONFIG": ""}) == Path("colombe.toml")

    from_env = tmp_path / "env.toml"
    assert find_config(None, env={"COLOMBE_CONFIG": str(from_env)}) == from_env

    explicit = tmp_path / "explicit.toml"
    assert find_config(explicit, env={"COLOMBE_CONFIG": str(from_env)}) == explicit
    assert find_config(str(explicit), env={}) == explicit


# -- the file `colombe init` writes and the documented example --------------------------------


def test_rendered_config_loads_back_with_the_values_given(tmp_path: Path) -> None:
    text = render_config(
        database_url="sqlite:///var/colombe.db",
        blob_dir="var/blobs",
        hostname="mx.cabinet-test.mssante.fr",
        admin_listen="127.0.0.1:9100",
    )
    config = load_config(write(tmp_path, text), env={})
    assert config.store.database_url == "sqlite:///var/colombe.db"
    assert config.database_url == f"sqlite:///{tmp_path.resolve() / 'var' / 'colombe.db'}"
    assert config.blob_dir == tmp_path.resolve() / "var" / "blobs"
    assert config.server.hostname == "mx.cabinet-test.mssante.fr"
    assert config.admin.listen == "127.0.0.1:9100"
    assert config.store.pool_size == StoreSection().pool_size
    assert config.log == LogSection()


@pytest.mark.parametrize(
    "url",
    ["postgresql://colombe:a\\bc@db/colombe", 'postgresql://colombe:pa"ss@db/colombe'],
)
def test_rendered_config_keeps_backslashes_and_quotes_in_values(tmp_path: Path, url: str) -> None:
    text = render_config(
        database_url=url, blob_dir="blobs", hostname="localhost", admin_listen="127.0.0.1:0"
    )
    try:
        config = load_config(write(tmp_path, text), env={})
    except ConfigError as exc:
        pytest.fail(f"colombe init would write an unreadable file: {exc}")
    assert config.store.database_url == url


def test_example_config_loads() -> None:
    assert EXAMPLE.is_file(), f"{EXAMPLE} is missing: it documents every key"
    config = load_config(EXAMPLE, env={})
    assert config.path == EXAMPLE.resolve()


def test_example_config_documents_every_key_of_every_section() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    # Split the file into sections; a key counts whether it is set or shown commented out.
    found: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in text.splitlines():
        header = re.match(r"^\s*#?\s*\[([A-Za-z_]+)\]\s*$", line)
        if header:
            current = found.setdefault(header.group(1), set())
            continue
        key = re.match(r"^\s*#?\s*([a-z_]+)\s*=", line)
        if key and current is not None:
            current.add(key.group(1))
    wanted = section_keys()
    assert {"store", "server", "admin", "log"} <= set(wanted)
    missing: list[str] = []
    for section, keys in wanted.items():
        missing += [f"{section}.{k}" for k in keys if k not in found.get(section, set())]
    assert not missing, f"{EXAMPLE.name} does not document: {', '.join(missing)}"
    unknown = sorted(set(found) - set(wanted))
    assert not unknown, f"{EXAMPLE.name} has sections Colombe does not read: {unknown}"


def test_imap_listener_needs_a_certificate_and_key_but_no_trust_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[imap]\nlisten_tls = "127.0.0.1:993"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert str(refused.value) == (f"{path}: imap.listen_tls: needs tls.cert_file and tls.key_file")
    config = load_config(
        write(
            tmp_path,
            '[tls]\ncert_file = "c.pem"\nkey_file = "k.pem"\n\n[imap]\nlisten_tls = "127.0.0.1:993"\n',
        ),
        env={},
    )
    assert config.imap.listen_tls == "127.0.0.1:993"
    assert config.imap.timeout == 1800  # RFC 9051 §5.4: at least 30 minutes
