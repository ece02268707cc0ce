"""The ``[publication]`` configuration (clear text refused, secrets from a file) and the operator's
commands ``colombe directory publish [--full]`` and ``colombe directory status [--problems]``,
run as child processes against the test slapd."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from colombe.cli import main
from colombe.config import ConfigError, PublicationSection, load_config
from colombe.publication import ldap_settings, publisher_component
from directory.publisher import (
    LdapSettings,
    LeaseLost,
    PassReport,
    PublicationConfigError,
    Publisher,
)
from store import BalType, Store
from tests.colombe.processes import run
from tests.directory.slapd import PUBLISHER_DN, PUBLISHER_PASSWORD, Slapd

HOPITAL = "hopital-test.mssante.fr"
DOCTOR = f"jean.dupont@{HOPITAL}"
NURSE = f"marie.curie@{HOPITAL}"


def _settings(**changes: object) -> LdapSettings:
    values: dict[str, object] = {
        "url": "ldaps://annuaire.example",
        "base_dn": "ou=colombe,dc=example",
        "bind_dn": "cn=colombe,dc=example",
        "bind_password": "s3cret-value",
    }
    values.update(changes)
    return LdapSettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"url": "ldap://annuaire.example"}, "starttls", "clear text"),
        ({"starttls": True}, "starttls", "already TLS"),
        ({"url": "http://annuaire.example"}, "url", "ldaps://"),
        ({"url": "ldaps://annuaire.example/ou=x"}, "url", "only"),
        ({"url": "ldaps://:636"}, "url", "no host"),
        ({"base_dn": ""}, "base_dn", "required"),
        ({"bind_dn": "not a dn"}, "bind_dn", "not a valid DN"),
        ({"bind_password": ""}, "bind_password_file", "no bind password"),
        ({"cert_file": Path("/c.pem")}, "cert_file", "together"),
    ],
)
def test_unusable_or_clear_text_settings_are_refused_naming_the_key(
    changes: dict[str, object], key: str, words: str
) -> None:
    with pytest.raises(PublicationConfigError, match=words) as caught:
        _settings(**changes)
    assert caught.value.key == key


def test_starttls_on_ldap_and_default_ports() -> None:
    s = _settings(url="ldap://annuaire.example", starttls=True)
    assert (s.host, s.port, s.use_ssl) == ("annuaire.example", 389, False)
    assert _settings().port == 636
    assert "s3cret-value" not in repr(_settings())


def _config(tmp_path: Path, publication: str) -> Path:
    path = tmp_path / "colombe.toml"
    path.write_text(
        "[store]\n"
        f'database_url = "sqlite:///{tmp_path / "colombe.db"}"\n'
        f'blob_dir = "{tmp_path / "blobs"}"\n'
        "[admin]\n"
        'listen = ""\n'
        "[log]\n"
        'level = "warning"\n'
        "[publication]\n" + publication
    )
    return path


def test_no_url_no_publisher_and_a_clear_text_url_is_a_config_error(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, ""), env={})
    assert publisher_component(config, None) is None  # type: ignore[arg-type]
    config = load_config(
        _config(
            tmp_path,
            'url = "ldap://annuaire.example"\nbase_dn = "ou=x,dc=y"\nbind_dn = "cn=z,dc=y"\n'
            'bind_password = "pw"\n',
        ),
        env={},
    )
    with pytest.raises(ConfigError, match=r"publication\.starttls: .*clear text"):
        publisher_component(config, None)  # type: ignore[arg-type]


def test_the_password_comes_from_its_file_or_the_environment_not_both(tmp_path: Path) -> None:
    (tmp_path / "bind.pw").write_text("from-the-file\n")
    common = 'url = "ldaps://a.example"\nbase_dn = "ou=x,dc=y"\nbind_dn = "cn=z,dc=y"\n'
    path = _config(tmp_path, common + 'bind_password_file = "bind.pw"\n')
    assert ldap_settings(load_config(path, env={})).bind_password == "from-the-file"
    env = {"COLOMBE_PUBLICATION_BIND_PASSWORD": "from-the-env"}
    with pytest.raises(ConfigError, match="both set"):
        ldap_settings(load_config(path, env=env))
    path = _config(tmp_path, common)
    assert ldap_settings(load_config(path, env=env)).bind_password == "from-the-env"
    path = _config(tmp_path, common + 'bind_password_file = "missing.pw"\n')
    with pytest.raises(ConfigError, match=r"publication\.bind_password_file: cannot read"):
        ldap_settings(load_config(path, env={}))


def test_publish_and_status_from_the_command_line(
    tmp_path: Path, slapd: Slapd, ldap_base: str
) -> None:
    (tmp_path / "bind.pw").write_text(PUBLISHER_PASSWORD + "\n")
    config = _config(
        tmp_path,
        f'url = "{slapd.ldap_url}"\nstarttls = true\nbase_dn = "{ldap_base}"\n'
        f'bind_dn = "{PUBLISHER_DN}"\nbind_password_file = "bind.pw"\n'
        f'ca_file = "{slapd.trust}"\ntimeout = 5\n',
    )

    async def prepare() -> None:
        store = await Store.open(f"sqlite:///{tmp_path / 'colombe.db'}", tmp_path / "blobs")
        try:
            await store.add_domain(HOPITAL)
            await store.create_bal(DOCTOR, BalType.PER, display_name="Dr Jean Dupont")
            await store.create_bal(NURSE, BalType.PER, display_name="Marie Curie")
        finally:
            await store.close()

    asyncio.run(prepare())
    cli = ("--config", str(config), "directory")

    before = json.loads(run(*cli, "status", "--json", cwd=tmp_path).stdout)
    assert before["counts"]["pending_total"] == 2
    assert before["last_full"] is None

    published = run(*cli, "publish", cwd=tmp_path).stdout
    assert "2 added" in published
    assert DOCTOR in published
    assert "added" in published

    # Someone edits an entry behind our back; the full reconciliation puts it back.
    with slapd.admin() as admin:
        assert admin.modify(
            f"mail={NURSE},{ldap_base}", {"mssDisplayName": [("MODIFY_REPLACE", ["Vandal"])]}
        )
    full = run(*cli, "publish", "--full", cwd=tmp_path).stdout
    assert "1 modified" in full
    assert NURSE in full
    assert "mssDisplayName" in full
    assert "Vandal" not in full  # values are personal data: names of attributes only
    assert slapd.entries(ldap_base)[NURSE]["mssDisplayName"] == ["Marie Curie"]

    status = run(*cli, "status", cwd=tmp_path).stdout
    assert "2 published" in status
    assert "1 modified" in status  # the last full reconciliation
    assert DOCTOR in status
    assert "1/1" in status
    assert "No BAL with a problem." in run(*cli, "status", "--problems", cwd=tmp_path).stdout
    assert PUBLISHER_PASSWORD not in status

    # The directory refuses us: the command fails, the state says why.
    (tmp_path / "bind.pw").write_text("wrong-password\n")

    async def change() -> None:
        store = await Store.open(f"sqlite:///{tmp_path / 'colombe.db'}", tmp_path / "blobs")
        try:
            await store.update_bal(DOCTOR, display_name="Dr Jean Dupont-Martin")
        finally:
            await store.close()

    asyncio.run(change())
    refused = run(*cli, "publish", cwd=tmp_path, code=1)
    assert "invalidCredentials" in refused.stderr + refused.stdout
    problems = json.loads(run(*cli, "status", "--problems", "--json", cwd=tmp_path).stdout)
    (bal,) = problems["bals"]
    # Refused as a whole (bind): an outage, backed off by the publisher, not counted per BAL.
    assert (bal["address"], bal["state"], bal["attempts"]) == (DOCTOR, "error", 0)
    assert (bal["published_revision"], bal["revision"]) == (1, 2)
    assert "invalidCredentials" in bal["last_error"]


def test_the_bind_password_is_not_in_the_configurations_repr() -> None:
    assert "s3cret-value" not in repr(PublicationSection(bind_password="s3cret-value"))


def _publishing_config(tmp_path: Path) -> Path:
    return _config(
        tmp_path,
        'url = "ldaps://annuaire.example"\nbase_dn = "ou=x,dc=y"\nbind_dn = "cn=z,dc=y"\n'
        'bind_password = "pw"\n',
    )


def test_a_lease_lost_during_publish_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lost(self: Publisher, **_: object) -> PassReport:
        raise LeaseLost("another process took the directory publisher lease")

    monkeypatch.setattr(Publisher, "publish_due", lost)
    config = _publishing_config(tmp_path)
    done = CliRunner().invoke(main, ["--config", str(config), "directory", "publish"])
    assert done.exit_code == 1, done.output
    assert done.output == "Error: stopped: another process took the directory publisher lease\n"
    assert done.exception is None or isinstance(done.exception, SystemExit)


def test_allow_mass_delete_is_passed_to_the_full_reconciliation_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    async def full(self: Publisher, *, allow_mass_delete: bool = False, **_: object) -> PassReport:
        seen.append(allow_mass_delete)
        return PassReport("full")

    monkeypatch.setattr(Publisher, "reconcile_full", full)
    config = _publishing_config(tmp_path)
    cli = ["--config", str(config), "directory", "publish"]
    runner = CliRunner()
    assert runner.invoke(main, [*cli, "--full"]).exit_code == 0
    done = runner.invoke(main, [*cli, "--full", "--allow-mass-delete"])
    assert done.exit_code == 0, done.output
    assert seen == [False, True]
    done = runner.invoke(main, [*cli, "--allow-mass-delete"])
    assert done.exit_code == 2
    assert "--allow-mass-delete goes with --full" in done.output
