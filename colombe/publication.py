"""Publication of our BALs to the national directory in Colombe: ``colombe directory
status|publish`` and the publisher as a ``serve`` component.

The domain logic lives in :mod:`directory`; this module turns the ``[publication]`` configuration
into it and gives it a command line.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import click
from ldap3.core.exceptions import LDAPException

from colombe.addressbook import directory
from colombe.clikit import Context, actor, emit_json, emit_table, json_option, with_store
from colombe.config import Config, ConfigError
from directory.publisher import (
    STATE_DOCUMENT,
    LdapError,
    LdapSettings,
    LeaseLost,
    PassReport,
    PublicationConfigError,
    Publisher,
)
from store import Store

__all__ = ["directory", "ldap_settings", "publisher_component"]

# The table of `directory status` shows this much of an error; --json shows it whole.
ERROR_COLUMN = 80


def _read_secret(config: Config, key: str, value: str) -> str:
    path = config.resolve(value)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"publication.{key}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"publication.{key}: {path} is not UTF-8 text") from None
    # A trailing newline is the editor's, not the password's.
    return text.rstrip("\r\n")


def ldap_settings(config: Config) -> LdapSettings:
    """The ``[publication]`` section as :class:`LdapSettings`; every problem is a ConfigError
    naming the key (an unusable or clear-text setup is refused, never tried)."""
    p = config.publication
    if not p.url:
        raise ConfigError(
            "publication.url is empty: publication to the national directory is not configured"
        )
    if p.bind_password_file and p.bind_password:
        raise ConfigError(
            "publication.bind_password_file and publication.bind_password (or "
            "COLOMBE_PUBLICATION_BIND_PASSWORD) are both set: keep one"
        )
    password = (
        _read_secret(config, "bind_password_file", p.bind_password_file)
        if p.bind_password_file
        else p.bind_password
    )
    files = {}
    for key in ("ca_file", "cert_file", "key_file"):
        value: str = getattr(p, key)
        if value:
            path = config.resolve(value)
            if not path.is_file():
                raise ConfigError(f"publication.{key}: no such file {path}")
            files[key] = path
    try:
        return LdapSettings(
            url=p.url,
            base_dn=p.base_dn,
            bind_dn=p.bind_dn,
            bind_password=password,
            starttls=p.starttls,
            ca_file=files.get("ca_file"),
            cert_file=files.get("cert_file"),
            key_file=files.get("key_file"),
            timeout=float(p.timeout),
        )
    except PublicationConfigError as exc:
        raise ConfigError(f"publication.{exc.key}: {exc}") from None


def make_publisher(config: Config, store: Store) -> Publisher:
    p = config.publication
    for key in ("poll_interval", "full_interval", "retry_min", "retry_max"):
        if getattr(p, key) < 1:
            raise ConfigError(f"publication.{key}: must be at least 1 (seconds)")
    if p.retry_max < p.retry_min:
        raise ConfigError("publication.retry_max: must not be less than retry_min")
    return Publisher(
        store,
        ldap_settings(config),
        poll_interval=p.poll_interval,
        full_interval=p.full_interval,
        retry_min=p.retry_min,
        retry_max=p.retry_max,
    )


def publisher_component(config: Config, store: Store) -> Publisher | None:
    """The ``publisher`` component of ``colombe serve``: None when ``publication.url`` is empty."""
    if not config.publication.url:
        return None
    return make_publisher(config, store)


# -- commands -----------------------------------------------------------------------------------


def _config() -> Config:
    context = click.get_current_context().find_object(Context)
    assert context is not None
    return context.config


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _short(text: str | None) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= ERROR_COLUMN else text[: ERROR_COLUMN - 1] + "…"


def _last_full_line(last: dict[str, Any] | None) -> str:
    if not last:
        return "never"
    line = f"{last.get('started_at', '?')[:19].replace('T', ' ')} UTC ({last.get('seconds', 0)} s)"
    if last.get("error"):
        return f"{line}: stopped: {last['error']}"
    return (
        f"{line}: {last.get('added', 0)} added, {last.get('modified', 0)} modified, "
        f"{last.get('deleted', 0)} deleted, {last.get('failed', 0)} failed, "
        f"{last.get('foreign', 0)} foreign entries left alone"
    )


@directory.command("status")
@click.option("--problems", is_flag=True, help="Only BALs in error or waiting to be published.")
@json_option
@with_store
async def status(store: Store, problems: bool, as_json: bool) -> None:
    """Publication of our BALs to the national directory: counts, last full reconciliation, and
    per BAL its state, published/current revision, last attempt and last error."""
    config = _config()
    counts = await store.publication_counts()
    document = await store.load_document(STATE_DOCUMENT, with_content=False)
    last_full = document.meta.get("last_full") if document is not None else None
    states = await store.publication_states(only_problems=problems)
    if as_json:
        emit_json(
            {
                "url": config.publication.url,
                "base_dn": config.publication.base_dn,
                "counts": counts,
                "last_full": last_full,
                "bals": states,
            }
        )
        return
    p = config.publication
    target = f"{p.url} under {p.base_dn}" if p.url else "not configured (publication.url is empty)"
    click.echo(f"National directory: {target}")
    click.echo(f"Last full reconciliation: {_last_full_line(last_full)}")
    by_state = ", ".join(
        f"{counts.get(s, 0)} {s}" for s in ("published", "unpublished", "pending", "error")
    )
    click.echo(f"BALs: {by_state}; {counts.get('pending_total', 0)} waiting to be published")
    if not states:
        click.echo("No BAL with a problem." if problems else "No BAL.")
        return
    click.echo()
    emit_table(
        ("address", "state", "revision", "last attempt (UTC)", "attempts", "last error"),
        [
            (
                s.address,
                s.state + ("*" if s.pending and s.state != "pending" else ""),
                f"{s.published_revision}/{s.revision}",
                _when(s.last_attempt_at),
                s.attempts,
                _short(s.last_error),
            )
            for s in states
        ],
    )
    if any(s.pending and s.state != "pending" for s in states):
        click.echo("* a newer revision is waiting to be published")


def _print_report(report: PassReport) -> None:
    verb = "Full reconciliation" if report.kind == "full" else "Publication"
    click.echo(
        f"{verb}: {report.added} added, {report.modified} modified, {report.deleted} deleted, "
        f"{report.unchanged} unchanged, {report.failed} failed in {report.seconds:.1f} s"
        + (f"; {report.foreign} foreign entries left alone" if report.foreign else "")
    )
    if report.changes:
        emit_table(("BAL or entry", "action", "detail"), [_row(c) for c in report.changes])
    shown = len(report.changes)
    total = report.changed + report.failed
    if total > shown:
        click.echo(f"... and {total - shown} more")


def _row(change: tuple[str, str, str]) -> tuple[str, str, str]:
    who, action, detail = change
    return who, action, _short(detail)


@directory.command("publish")
@click.option(
    "--full",
    is_flag=True,
    help="Reconcile the whole directory with the store (repairs entries changed behind our "
    "back), instead of publishing only the BALs changed since the last publication.",
)
@click.option(
    "--allow-mass-delete",
    is_flag=True,
    help="With --full: delete our entries that match no BAL even when they are many (more than "
    "10%% of ours) or the store holds no BAL at all, which is otherwise refused as the sign of an "
    "empty or wrong database.",
)
@json_option
@with_store
async def publish(store: Store, full: bool, allow_mass_delete: bool, as_json: bool) -> None:
    """Publish to the national directory now and print what changed."""
    if allow_mass_delete and not full:
        raise click.UsageError("--allow-mass-delete goes with --full")
    publisher = make_publisher(_config(), store)
    last_shown = [0.0]

    def progress(stage: str, n: int) -> None:
        now = time.monotonic()
        if not as_json and now - last_shown[0] >= 1.0:
            last_shown[0] = now
            click.echo(f"  {stage} {n:,}", err=True)

    try:
        if not await publisher.take_lease():
            raise click.ClickException(
                "another Colombe process holds the directory publisher lease (its `serve` "
                "publishes changes itself); try again once it is stopped or its lease expired"
            )
        if full:
            report = await publisher.reconcile_full(
                progress=progress, allow_mass_delete=allow_mass_delete
            )
        else:
            report = await publisher.publish_due(max_batches=100_000)
    except LeaseLost as exc:
        raise click.ClickException(f"stopped: {exc}") from None
    except (LdapError, PublicationConfigError, LDAPException) as exc:
        # Errors are normally reported per BAL or per pass; whatever gets here is one line too.
        raise click.ClickException(f"directory publication failed: {exc}") from None
    finally:
        await publisher.close()
    await store.audit(
        "directory.publish",
        actor=actor(),
        result="failed" if report.error or report.failed else "ok",
        detail=report.summary(),
    )
    if as_json:
        emit_json({**report.summary(), "changes": report.changes, "errors": report.errors})
    else:
        _print_report(report)
    if report.error is not None:
        raise click.ClickException(f"stopped: {report.error}")
    if report.failed:
        raise click.ClickException(
            f"{report.failed} BAL(s) failed; see `colombe directory status --problems`"
        )
