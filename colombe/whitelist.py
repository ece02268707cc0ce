"""The whitelist (liste blanche) in Colombe: ``colombe whitelist ...`` and its ``serve`` component.

The domain logic lives in :mod:`directory`; this module turns the ``[whitelist]`` configuration
into it and gives it a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import weakref
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from colombe.admin import register_collector, unregister_collector
from colombe.clikit import Context, emit_json, emit_table, json_option, jsonable, with_store
from colombe.config import Config
from directory.whitelist import Whitelist, WhitelistError, parse_whitelist
from directory.whitelist_fetch import (
    DOCUMENT,
    Outcome,
    RefreshResult,
    WhitelistKeeper,
    WhitelistSettings,
)
from pki.dn import DistinguishedName, DNSyntaxError
from pki.errors import PkiError
from pki.loading import load_certificate_file
from store import Store

log = logging.getLogger(__name__)

STOP_GRACE = 2.0  # seconds a refresh in progress gets to finish when serve stops


def settings_from_config(config: Config) -> WhitelistSettings:
    section = config.whitelist
    return WhitelistSettings(
        url=section.url.strip(),
        ca_file=config.resolve(section.ca_file) if section.ca_file else None,
        refresh_interval=float(max(1, section.refresh_interval)),
        max_age=float(section.max_age),
        min_entries=max(1, section.min_entries),  # an empty list never replaces a good one
        timeout=float(max(1, section.timeout)),
    )


# -- serve component --------------------------------------------------------------------------


class WhitelistCollector:
    """The whitelist's figures on the admin endpoint's /metrics."""

    def __init__(self, keeper: WhitelistKeeper) -> None:
        self._keeper = keeper

    def collect(self) -> Iterator[Metric]:
        status = self._keeper.status()
        for name, doc, value in (
            ("entries", "Domaine entries of the whitelist in use", status.entries),
            ("domains", "Distinct domains of the whitelist in use", status.domains),
            ("dns", "Distinct operator certificate DNs of the whitelist in use", status.dns),
        ):
            yield GaugeMetricFamily(f"colombe_whitelist_{name}", doc, value=value)
        generated = status.generated_at.timestamp() if status.generated_at else 0.0
        yield GaugeMetricFamily(
            "colombe_whitelist_generated_timestamp_seconds",
            "DateDeGeneration of the whitelist in use (0: none)",
            value=generated,
        )
        yield GaugeMetricFamily(
            "colombe_whitelist_age_seconds",
            "Seconds since the server last confirmed the copy (200 or 304); +Inf: never",
            value=math.inf if status.age_seconds is None else status.age_seconds,
        )
        yield GaugeMetricFamily(
            "colombe_whitelist_stale",
            "1 when the copy is missing or older than whitelist.max_age",
            value=1 if status.stale else 0,
        )
        fetches = CounterMetricFamily(
            "colombe_whitelist_fetches",
            "Whitelist refresh attempts of this process, by result",
            labels=["result"],
        )
        for outcome in Outcome:
            fetches.add_metric([outcome.value], status.results.get(outcome.value, 0))
        yield fetches


class WhitelistComponent:
    """The ``whitelist`` component of ``colombe serve``: the last good copy from the store at
    start, then a refresh every ``refresh_interval``. The MTA asks it :meth:`allows` and
    :meth:`is_listed`; both answer from the current snapshot, never block, never raise."""

    name = "whitelist"

    def __init__(self, keeper: WhitelistKeeper) -> None:
        self.keeper = keeper
        self._collector = WhitelistCollector(keeper)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def allows(self, domain: str, peer_dn: DistinguishedName | x509.Name | str) -> bool:
        return self.keeper.allows(domain, peer_dn)

    def is_listed(self, domain: str) -> bool:
        return self.keeper.is_listed(domain)

    def dn_is_listed(self, peer_dn: DistinguishedName | x509.Name | str) -> bool:
        return self.keeper.dn_is_listed(peer_dn)

    @property
    def loaded(self) -> bool:
        """Whether a whitelist is in memory (until then, the MTA answers 451, never 550)."""
        return self.keeper.current is not None

    def dns_for(self, domain: str) -> list[str]:
        """The DNs listed for ``domain`` (none while no whitelist is loaded)."""
        current = self.keeper.current
        return [str(dn) for dn in current.dns_for(domain)] if current is not None else []

    async def start(self) -> None:
        """Idempotent: the MTA may start it when run without this component (``--only``)."""
        if self._task is not None:
            return
        try:
            await self.keeper.load()
        except Exception as exc:  # the refresh loop loads it as soon as the store answers
            log.warning("whitelist: cannot read the stored copy (%s)", type(exc).__name__)
        self._stop.clear()
        register_collector(self._collector)
        self._task = asyncio.create_task(self.keeper.run(self._stop), name="whitelist-refresh")

    async def stop(self) -> None:
        task, self._task = self._task, None
        unregister_collector(self._collector)
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_GRACE)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def endpoints(self) -> list[str]:
        return []  # no listener of its own


# One component per store, so that the MTA's factory, given the same store, gets the instance
# `serve` started instead of a second keeper downloading the same file.
_components: weakref.WeakKeyDictionary[Store, WhitelistComponent] = weakref.WeakKeyDictionary()


def whitelist_component(config: Config, store: Store) -> WhitelistComponent:
    """The ``COMPONENTS`` factory of ``colombe serve`` (never disabled: with an empty URL the
    stored copy is still served)."""
    component = _components.get(store)
    if component is None:
        component = WhitelistComponent(WhitelistKeeper(store, settings_from_config(config)))
        _components[store] = component
    return component


# -- command line -----------------------------------------------------------------------------


def _config() -> Config:
    context = click.get_current_context().find_object(Context)
    assert context is not None
    config = context.config
    # The commands print the outcome themselves (one line on error): the keeper's log lines,
    # written for `serve`, would say it twice.
    logging.getLogger("directory.whitelist_fetch").setLevel(logging.ERROR)
    return config


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _stored(store: Store) -> tuple[Whitelist, dict[str, Any]]:
    document = await store.load_document(DOCUMENT)
    if document is None or document.content is None:
        raise click.ClickException("no whitelist in the store; run `colombe whitelist fetch`")
    try:
        return parse_whitelist(document.content, min_entries=1), dict(document.meta)
    except WhitelistError as exc:
        raise click.ClickException(f"the stored whitelist is unusable: {exc.reason}") from None


@click.group()
def whitelist() -> None:
    """The ANS whitelist: fetch it, inspect it, check a domain and a certificate DN."""


@whitelist.command("fetch")
@click.option(
    "--force",
    is_flag=True,
    help="Accept a valid list even if its DateDeGeneration is older than the copy in use, or "
    "it has fewer than half its entries (e.g. to leave a copy dated in the future). Never "
    "accepts an invalid or empty list, one below whitelist.min_entries or one dated more "
    "than a day ahead.",
)
@json_option
@with_store
async def fetch(store: Store, force: bool, as_json: bool) -> None:
    """Download the whitelist now (conditionally), validate it and keep it in the store.

    The copy in the store is replaced only by a valid list, not older than it and with at least
    half its entries unless --force; exit code 1 when nothing new could be obtained, with the
    reason."""
    keeper = WhitelistKeeper(store, settings_from_config(_config()))
    await keeper.load()
    result: RefreshResult = await keeper.refresh(force=True, override=force)
    if as_json:
        emit_json({"result": result.outcome, "detail": result.detail, "status": keeper.status()})
    if result.outcome in (Outcome.FAILED, Outcome.REJECTED, Outcome.DISABLED):
        raise click.ClickException(f"whitelist {result.outcome.value}: {result.detail}")
    if result.outcome is Outcome.SKIPPED:
        raise click.ClickException(f"whitelist not fetched: {result.detail}")
    if not as_json:
        if result.outcome is Outcome.UPDATED:
            click.echo(f"whitelist updated: {result.detail}")
        else:
            status = keeper.status()
            click.echo(
                f"whitelist not modified (generated {_iso(status.generated_at)}, "
                f"{status.entries} entries)"
            )


@whitelist.command("show")
@json_option
@with_store
async def show(store: Store, as_json: bool) -> None:
    """Where the copy in use comes from, how old it is, whether the alarm is on."""
    keeper = WhitelistKeeper(store, settings_from_config(_config()))
    await keeper.load()
    if keeper.current is None:
        await _stored(store)  # raises the reason
    status = keeper.status()
    if as_json:
        emit_json(status)
        return
    age = status.age_seconds
    rows = [
        ("url", status.url or "(empty: never fetched)"),
        ("generated", _iso(status.generated_at)),
        ("entries", status.entries),
        ("domains", status.domains),
        ("DNs", status.dns),
        ("fetched", _iso(status.fetched_at)),
        ("confirmed", _iso(status.checked_at)),
        ("age", "never confirmed" if age is None else f"{age / 3600:.1f} h"),
        ("stale", "YES (older than whitelist.max_age)" if status.stale else "no"),
        ("last error", status.last_error or "-"),
    ]
    for key, value in rows:
        click.echo(f"{key:10} {value}")


@whitelist.command("check")
@click.argument("domain")
@click.argument("dn", required=False)
@click.option(
    "--cert",
    "cert_file",
    type=click.Path(dir_okay=False, exists=True),
    help="Take the DN from this certificate's subject (PEM, DER or .p7b, first certificate).",
)
@json_option
def check(domain: str, dn: str | None, cert_file: str | None, as_json: bool) -> None:
    """Whether DOMAIN is listed and, given a DN (or --cert), whether that DN may speak for it.

    Exit code 0 when listed/allowed, 1 when not; the reason is printed either way."""
    peer: DistinguishedName | None = None
    if dn is not None and cert_file is not None:
        raise click.ClickException("give a DN or --cert, not both")
    try:
        if dn is not None:
            peer = DistinguishedName.parse(dn)
        elif cert_file is not None:
            peer = DistinguishedName.from_x509(load_certificate_file(Path(cert_file))[0].subject)
    except DNSyntaxError as exc:
        raise click.ClickException(f"DN unreadable: {exc}") from None
    except PkiError as exc:
        raise click.ClickException(str(exc)) from None

    @with_store
    async def look(store: Store) -> tuple[Whitelist, dict[str, Any]]:
        return await _stored(store)

    current, _ = look()
    listed = current.is_listed(domain)
    listed_dns = [str(d) for d in current.dns_for(domain)]
    allowed = listed if peer is None else current.allows(domain, peer)
    if not listed:
        reason = f"{domain} is not in the whitelist"
    elif peer is None:
        reason = f"{domain} is listed with {len(listed_dns)} DN(s)"
    elif allowed:
        reason = f"{peer} is listed for {domain}"
    else:
        reason = f"{peer} is not listed for {domain}"
    if as_json:
        emit_json(
            {
                "domain": domain,
                "dn": None if peer is None else str(peer),
                "listed": listed,
                "allowed": allowed,
                "listed_dns": listed_dns,
                "reason": reason,
                "generated_at": current.generated_at,
            }
        )
    else:
        click.echo(f"{'allowed' if allowed else 'refused'}: {reason}")
        if listed and not (peer is not None and allowed):
            for listed_dn in listed_dns:
                click.echo(f"  listed: {listed_dn}")
    if not allowed:
        sys.exit(1)


@whitelist.command("stats")
@click.option("--top", default=10, show_default=True, type=click.IntRange(0, 1000))
@json_option
@with_store
async def stats(store: Store, top: int, as_json: bool) -> None:
    """Figures of the copy in use: entries, domains, DNs, organisations, multi-DN domains."""
    current, _ = await _stored(store)
    figures = current.stats(top=top)
    if as_json:
        emit_json(
            {
                **jsonable(figures),
                "top_organisations": [
                    {"organisation": o, "entries": n} for o, n in figures.top_organisations
                ],
            }
        )
        return
    for key, value in asdict(figures).items():
        if key == "top_organisations":
            continue
        shown = _iso(value) if isinstance(value, datetime) else value
        click.echo(f"{key.replace('_', ' '):26} {shown}")
    if top:
        click.echo("")
        emit_table(["organisation (O=)", "entries"], figures.top_organisations)
