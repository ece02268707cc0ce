"""The ``colombe`` command: everything an operator does, human tables by default, ``--json`` for
scripts. Every change made here is written to the audit trail with the operator's login."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from colombe import addressbook, publication, queue, whitelist  # noqa: F401 (publication adds commands)
from colombe.clikit import (
    Context,
    actor,
    emit_json,
    emit_table,
    json_option,
    jsonable,
    read_password,
    run_async,
    with_store,
)
from colombe.config import (
    ConfigError,
    load_config,
    render_config,
)
from colombe.logs import configure_logging
from store import BalStatus, BalType, Placement, Store, StoreError


class ColombeGroup(click.Group):
    """Turns the errors we raise on purpose (bad configuration, store refusals, a listener that
    cannot start) into one-line messages with exit code 1, wherever a command raises them."""

    def invoke(self, ctx: click.Context) -> Any:
        from colombe.serve import StartError, UnknownComponent

        try:
            return super().invoke(ctx)
        except (StoreError, ConfigError, StartError, UnknownComponent) as exc:
            raise click.ClickException(str(exc)) from None


# -- commands ---------------------------------------------------------------------------------


@click.group(cls=ColombeGroup)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="colombe.toml to use (default: $COLOMBE_CONFIG, ./colombe.toml, ./var/colombe.toml, "
    "/etc/colombe/colombe.toml).",
)
@click.version_option(package_name="colombe")
@click.pass_context
def main(click_ctx: click.Context, config_path: str | None) -> None:
    """Colombe, an MSSanté operator stack."""
    click_ctx.obj = Context(config_path)


@main.command()
@click.option(
    "--dir", "directory", default=".", type=click.Path(file_okay=False), show_default=True
)
@click.option("--database-url", default="sqlite:///var/colombe.db", show_default=True)
@click.option("--blob-dir", default="var/blobs", show_default=True)
@click.option("--hostname", default="localhost", show_default=True)
@click.option("--admin-listen", default="127.0.0.1:8780", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing colombe.toml.")
def init(
    directory: str,
    database_url: str,
    blob_dir: str,
    hostname: str,
    admin_listen: str,
    force: bool,
) -> None:
    """Write a working colombe.toml and create the store."""
    target = Path(directory) / "colombe.toml"
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists; use --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed only once the store opened: a failed init (database
    # unreachable, bad URL) leaves nothing behind to --force over.
    draft = target.with_name(f".{target.name}.{os.getpid()}")
    draft.write_text(
        render_config(
            database_url=database_url,
            blob_dir=blob_dir,
            hostname=hostname,
            admin_listen=admin_listen,
        ),
        encoding="utf-8",
    )

    @run_async
    async def create() -> None:
        from colombe.serve import open_store

        store = await open_store(load_config(draft))
        try:
            await store.audit("store.init", actor=actor(), detail={"config": str(target.resolve())})
        finally:
            await store.close()

    try:
        create()
        draft.replace(target)
    finally:
        draft.unlink(missing_ok=True)
    click.echo(f"wrote {target}; store ready. Next: colombe --config {target} domain add DOMAIN")


@main.command()
@click.option(
    "--dir", "directory", default="var", type=click.Path(file_okay=False), show_default=True
)
@click.option("--admin-listen", default="127.0.0.1:8780", show_default=True)
@click.option("--mx-listen", default="127.0.0.1:2525", show_default=True)
@click.option("--submission-listen", default="127.0.0.1:5870", show_default=True)
@click.option("--submissions-listen", default="127.0.0.1:4650", show_default=True)
@click.option("--imap-listen", default="127.0.0.1:1430", show_default=True)
@click.option("--imaps-listen", default="127.0.0.1:9930", show_default=True)
def demo(
    directory: str,
    admin_listen: str,
    mx_listen: str,
    submission_listen: str,
    submissions_listen: str,
    imap_listen: str,
    imaps_listen: str,
) -> None:
    """Initialise DIR with demo domains and BALs, then run the whole stack in the foreground.

    The listener options apply when DIR is initialised (they are written to its colombe.toml)."""
    from colombe.demo import (
        DEMO_BALS,
        DEMO_PASSWORD,
        DEMO_PKI,
        demo_config_sections,
        demo_whitelist,
        make_demo_pki,
        seed_demo,
        swaks_examples,
        thunderbird_settings,
    )
    from colombe.serve import open_store, serve

    target = Path(directory) / "colombe.toml"
    whitelist_file = Path(directory) / "listeblanche-demo.xml"
    if not whitelist_file.exists():
        whitelist_file.parent.mkdir(parents=True, exist_ok=True)
        whitelist_file.write_bytes(demo_whitelist(datetime.now(UTC)))
    pki_dir = Path(directory) / DEMO_PKI
    # Made afresh at every start: the test CRLs are valid for a week.
    make_demo_pki(pki_dir)
    if not target.exists():
        target.write_text(
            render_config(
                database_url="sqlite:///colombe.db",
                blob_dir="blobs",
                hostname="localhost",
                admin_listen=admin_listen,
            )
            + demo_config_sections(
                whitelist_file,
                pki_dir=pki_dir,
                mx_listen=mx_listen,
                submission_listen=submission_listen,
                submissions_listen=submissions_listen,
                imap_listen=imap_listen,
                imaps_listen=imaps_listen,
            ),
            encoding="utf-8",
        )
    config = load_config(target)
    configure_logging(config.log.level, config.log.format)

    def ready(endpoints: list[str]) -> None:
        click.echo("")
        click.echo(f"Colombe demo running (configuration: {target}).")
        click.echo("Endpoints:")
        for line in endpoints:
            click.echo(f"  {line}")
        click.echo(f"Demo BALs (password: {DEMO_PASSWORD}):")
        for bal in DEMO_BALS:
            click.echo(f"  {bal.address:42} {bal.type.value}  {bal.display_name}")
        click.echo("From another shell in this folder:")
        click.echo("  .venv/bin/colombe bal list")
        click.echo("  .venv/bin/colombe directory search --city lyon")
        click.echo("  .venv/bin/colombe whitelist show")
        click.echo("  .venv/bin/colombe queue list")
        examples = swaks_examples(endpoints, pki_dir)
        if examples:
            click.echo("Send a message with swaks (apt install swaks):")
            for line in examples:
                click.echo(line)
        settings = thunderbird_settings(endpoints, pki_dir)
        if settings:
            click.echo("Read the mail in Thunderbird (or any IMAP client):")
            for line in settings:
                click.echo(line)
        click.echo(
            "  .venv/bin/colombe directory import-extraction "
            "https://www.data.gouv.fr/api/1/datasets/r/afe01105-d9a1-41fe-921f-e40ea48b2ba6"
            "   (every MSSanté address of France, ~90 MB)"
        )
        click.echo("Stop with Ctrl-C.")

    @run_async
    async def go() -> None:
        store = await open_store(config)
        try:
            await seed_demo(store)
        finally:
            await store.close()
        await serve(config, on_ready=ready)

    go()


@main.command("serve")
@click.option("--only", multiple=True, help="Start only this component (repeatable).")
@click.pass_obj
def serve_command(ctx: Context, only: tuple[str, ...]) -> None:
    """Run the configured components until SIGTERM."""
    from colombe.serve import select_components, serve

    config = ctx.config
    select_components(list(only) or None)  # an unknown name fails before anything starts

    def ready(endpoints: list[str]) -> None:
        click.echo("ready: " + ("; ".join(endpoints) or "no listener configured"), err=True)

    selected = list(only) or None
    if config.server.processes > 1:
        from colombe.serve import serve_in_processes

        sys.exit(serve_in_processes(config, only=selected, on_ready=ready))
    run_async(serve)(config, only=selected, on_ready=ready)


# -- domain -----------------------------------------------------------------------------------


@main.group()
def domain() -> None:
    """Hosted MSSanté domains."""


@domain.command("add")
@click.argument("name")
@with_store
async def domain_add(store: Store, name: str) -> None:
    d = await store.add_domain(name)
    await store.audit("domain.add", actor=actor(), detail={"domain": d.name})
    click.echo(f"domain {d.name} added")


@domain.command("list")
@json_option
@with_store
async def domain_list(store: Store, as_json: bool) -> None:
    domains = await store.list_domains()
    if as_json:
        emit_json(domains)
    else:
        emit_table(["domain", "since"], [(d.name, f"{d.created_at:%Y-%m-%d}") for d in domains])


# -- bal --------------------------------------------------------------------------------------


@main.group()
def bal() -> None:
    """Mailboxes (BAL): create, list, show, suspend, close, set passwords."""


@bal.command("add")
@click.argument("address")
@click.option(
    "--type",
    "bal_type",
    type=click.Choice([t.value for t in BalType]),
    default="PER",
    show_default=True,
)
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--national-id", help="RPPS/ADELI (PER) or structure identifier (ORG/APP).")
@click.option("--profession", help="Profession code of the national directory.")
@click.option("--description")
@click.option("--liste-rouge", is_flag=True, help="Not published in the national directory.")
@click.option("--service", help="Service the BAL belongs to (ORG/APP), e.g. Cardiologie.")
@click.option(
    "--rank",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Preference among the BALs of one holder (1 = preferred).",
)
@click.option("--city")
@click.option("--postal-code", help="French postal code (gives the département).")
@click.option(
    "--placement", type=click.Choice([p.value for p in Placement]), default="v2", show_default=True
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--no-password", is_flag=True, help="No password (token or certificate access only).")
@with_store
async def bal_add(
    store: Store,
    address: str,
    bal_type: str,
    display_name: str,
    national_id: str | None,
    profession: str | None,
    description: str | None,
    liste_rouge: bool,
    service: str | None,
    rank: int,
    city: str | None,
    postal_code: str | None,
    placement: str,
    password_stdin: bool,
    no_password: bool,
) -> None:
    password = None if no_password else read_password(password_stdin)
    b = await store.create_bal(
        address,
        BalType(bal_type),
        display_name=display_name,
        national_id=national_id,
        profession=profession,
        description=description,
        liste_rouge=liste_rouge,
        service=service,
        rank=rank,
        city=city,
        postal_code=postal_code,
        placement=Placement(placement),
        password=password,
    )
    await store.audit("bal.create", actor=actor(), bal=b.address, detail={"type": b.type.value})
    click.echo(f"BAL {b.address} created ({b.type.value})")


@bal.command("set")
@click.argument("address")
@click.option("--name", "display_name", help="Display name.")
@click.option("--national-id", help="RPPS/ADELI (PER) or structure identifier (ORG/APP).")
@click.option("--profession", help="Profession code of the national directory.")
@click.option("--description", help='Free text; "" clears it.')
@click.option(
    "--liste-rouge/--no-liste-rouge",
    default=None,
    help="Withdraw the BAL from the national directory, or publish it again.",
)
@click.option("--service", help='Service the BAL belongs to; "" clears it.')
@click.option("--rank", type=click.IntRange(min=1))
@click.option("--city")
@click.option("--postal-code")
@with_store
async def bal_set(
    store: Store,
    address: str,
    display_name: str | None,
    national_id: str | None,
    profession: str | None,
    description: str | None,
    liste_rouge: bool | None,
    service: str | None,
    rank: int | None,
    city: str | None,
    postal_code: str | None,
) -> None:
    """Change a BAL's directory attributes (the change is published to the national directory)."""
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "display_name": display_name,
            "national_id": national_id,
            "profession": profession,
            "description": description,
            "liste_rouge": liste_rouge,
            "service": service,
            "rank": rank,
            "city": city,
            "postal_code": postal_code,
        }.items()
        if v is not None
    }
    if not changes:
        raise click.ClickException("nothing to change: give at least one option")
    b = await store.update_bal(address, **changes)
    await store.audit(
        "bal.update", actor=actor(), bal=b.address, detail={"changed": sorted(changes)}
    )
    click.echo(f"BAL {b.address} updated (revision {b.revision})")


@bal.command("list")
@click.option("--domain", "domain_name")
@click.option("--status", type=click.Choice([s.value for s in BalStatus]))
@json_option
@with_store
async def bal_list(
    store: Store, domain_name: str | None, status: str | None, as_json: bool
) -> None:
    if domain_name is not None:
        await store.get_domain(domain_name)  # an unknown domain is an error, not an empty list
    bals = await store.list_bals(domain=domain_name, status=BalStatus(status) if status else None)
    if as_json:
        emit_json(bals)
        return
    emit_table(
        ["address", "type", "status", "placement", "name"],
        [
            (b.address, b.type.value, b.status.value, b.placement.value, b.display_name)
            for b in bals
        ],
    )


@bal.command("show")
@click.argument("address")
@json_option
@with_store
async def bal_show(store: Store, address: str, as_json: bool) -> None:
    b = await store.get_bal(address)
    folders = []
    for f in await store.list_folders(b.address):
        _, total, unseen = await store.folder_status(f.id)
        folders.append(
            {
                "name": f.name,
                "special_use": f.special_use,
                "messages": total,
                "unseen": unseen,
                "uidvalidity": f.uidvalidity,
                "uidnext": f.uid_next,
            }
        )
    delegations = await store.list_delegations(bal=b.address)
    delegated_to_me = await store.list_delegations(delegate=b.address)
    if as_json:
        emit_json(
            {
                "bal": b,
                "folders": folders,
                "delegates": delegations,
                "delegated_bals": delegated_to_me,
            }
        )
        return
    for label, value in (
        ("address", b.address),
        ("type", b.type.value),
        ("name", b.display_name),
        ("national id", b.national_id or "-"),
        ("profession", b.profession or "-"),
        ("description", b.description or "-"),
        ("service", b.service or "-"),
        ("rank", b.rank),
        ("city", " ".join(p for p in (b.postal_code, b.city) if p) or "-"),
        ("liste rouge", "yes" if b.liste_rouge else "no"),
        ("status", b.status.value),
        ("placement", b.placement.value),
        ("created", f"{b.created_at:%Y-%m-%d %H:%M} UTC"),
    ):
        click.echo(f"{label:12} {value}")
    click.echo("")
    emit_table(
        ["folder", "special-use", "messages", "unseen"],
        [(f["name"], f["special_use"] or "", f["messages"], f["unseen"]) for f in folders],
    )
    if delegations or delegated_to_me:
        click.echo("")
        emit_table(
            ["bal", "delegate", "rights"],
            [
                (d.bal, d.delegate, _rights(d.can_read, d.can_write, d.can_send))
                for d in delegations + delegated_to_me
            ],
        )


def _rights(read: bool, write: bool, send: bool) -> str:
    return ",".join(n for n, on in (("read", read), ("write", write), ("send", send)) if on) or "-"


async def _set_status(store: Store, address: str, status: BalStatus) -> None:
    b = await store.set_bal_status(address, status)
    await store.audit(f"bal.{status.value}", actor=actor(), bal=b.address)
    click.echo(f"BAL {b.address} is now {b.status.value}")


@bal.command("suspend")
@click.argument("address")
@with_store
async def bal_suspend(store: Store, address: str) -> None:
    """Suspend a BAL: it keeps its mail but nobody can log in."""
    await _set_status(store, address, BalStatus.SUSPENDED)


@bal.command("activate")
@click.argument("address")
@with_store
async def bal_activate(store: Store, address: str) -> None:
    """Re-activate a suspended BAL."""
    await _set_status(store, address, BalStatus.ACTIVE)


@bal.command("close")
@click.argument("address")
@with_store
async def bal_close(store: Store, address: str) -> None:
    """Close a BAL (end of the professional's activity)."""
    await _set_status(store, address, BalStatus.CLOSED)


@bal.command("passwd")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_store
async def bal_passwd(store: Store, address: str, password_stdin: bool) -> None:
    b = await store.get_bal(address)
    await store.set_password(b.address, read_password(password_stdin))
    await store.audit("bal.passwd", actor=actor(), bal=b.address)
    click.echo(f"password of {b.address} changed")


# -- delegate ---------------------------------------------------------------------------------


@main.group()
def delegate() -> None:
    """Who may open or send as which BAL (a secretary for a doctor, a team for a service)."""


@delegate.command("add")
@click.argument("bal_address", metavar="BAL")
@click.argument("delegate_address", metavar="DELEGATE")
@click.option("--read/--no-read", default=True, show_default=True, help="Open and read the BAL.")
@click.option("--write", is_flag=True, help="Also flag, move and delete its messages.")
@click.option("--send", is_flag=True, help="Also send as the BAL.")
@with_store
async def delegate_add(
    store: Store, bal_address: str, delegate_address: str, read: bool, write: bool, send: bool
) -> None:
    d = await store.add_delegation(
        bal_address, delegate_address, can_read=read, can_write=write, can_send=send
    )
    rights = _rights(d.can_read, d.can_write, d.can_send)
    await store.audit(
        "delegation.add",
        actor=actor(),
        bal=d.bal,
        detail={"delegate": d.delegate, "rights": rights},
    )
    click.echo(f"{d.delegate} may now use {d.bal} ({rights})")


@delegate.command("list")
@click.option("--bal", "bal_address")
@click.option("--delegate", "delegate_address")
@json_option
@with_store
async def delegate_list(
    store: Store, bal_address: str | None, delegate_address: str | None, as_json: bool
) -> None:
    found = await store.list_delegations(bal=bal_address, delegate=delegate_address)
    if as_json:
        emit_json(found)
        return
    emit_table(
        ["bal", "delegate", "rights"],
        [(d.bal, d.delegate, _rights(d.can_read, d.can_write, d.can_send)) for d in found],
    )


@delegate.command("remove")
@click.argument("bal_address", metavar="BAL")
@click.argument("delegate_address", metavar="DELEGATE")
@with_store
async def delegate_remove(store: Store, bal_address: str, delegate_address: str) -> None:
    if not await store.remove_delegation(bal_address, delegate_address):
        raise click.ClickException(f"{delegate_address} has no delegation on {bal_address}")
    await store.audit(
        "delegation.remove",
        actor=actor(),
        bal=bal_address.lower(),
        detail={"delegate": delegate_address.lower()},
    )
    click.echo(f"{delegate_address} may no longer use {bal_address}")


# -- audit ------------------------------------------------------------------------------------


@main.group("audit")
def audit_group() -> None:
    """The audit trail: who did what, on which BAL, when, from where."""


@audit_group.command("tail")
@click.option("-n", "--lines", default=20, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--bal", "bal_address")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records.")
@json_option
@with_store
async def audit_tail(
    store: Store, lines: int, bal_address: str | None, follow: bool, as_json: bool
) -> None:
    records = await store.tail_audit(limit=lines, bal=bal_address)

    def show(batch: list[Any]) -> None:
        for r in batch:
            if as_json:
                click.echo(json.dumps(jsonable(r), ensure_ascii=False))
            else:
                detail = json.dumps(r.detail, ensure_ascii=False) if r.detail else ""
                click.echo(
                    f"{r.at:%Y-%m-%d %H:%M:%S} {r.result:8} {r.action:18} {r.actor:30} "
                    f"{r.bal or '-':40} {r.source or '-'} {detail}".rstrip()
                )

    show(records)
    last = records[-1].id if records else 0
    while follow:
        await asyncio.sleep(1)
        newer = [r for r in await store.tail_audit(limit=1000, bal=bal_address) if r.id > last]
        if newer:
            show(newer)
            last = newer[-1].id


# -- store ------------------------------------------------------------------------------------


@main.group("store")
def store_group() -> None:
    """The store itself: port to PostgreSQL, statistics."""


@store_group.command("port")
@click.option("--to", "target_url", required=True, help="postgresql://user@host/db (empty schema).")
@click.option("--blob-dir", type=click.Path(file_okay=False), help="Copy blobs there too.")
@click.pass_obj
def store_port(ctx: Context, target_url: str, blob_dir: str | None) -> None:
    """Copy the whole store (usually SQLite) into another database (usually PostgreSQL)."""
    from store.port import port_store

    config = ctx.config

    def progress(table: str, done: int, total: int) -> None:
        click.echo(f"\r  {table:16} {done:>10}/{total}", nl=done == total)

    report = run_async(port_store)(
        config.database_url,
        target_url,
        source_blob_dir=config.blob_dir,
        target_blob_dir=Path(blob_dir) if blob_dir else None,
        progress=progress,
    )
    click.echo(f"ported {sum(report.values())} rows; point store.database_url at the new database")


@store_group.command("gc")
@click.option(
    "--grace-hours",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Keep unreferenced blobs younger than this (deliveries in flight).",
)
@with_store
async def store_gc(store: Store, grace_hours: float) -> None:
    """Delete message files nothing references any more (after expunge or folder deletion)."""
    from datetime import timedelta

    removed, freed = await store.collect_garbage(grace=timedelta(hours=grace_hours))
    await store.audit("store.gc", actor=actor(), detail={"removed": removed, "bytes": freed})
    click.echo(f"removed {removed} unreferenced blob(s), {freed / 1e6:.1f} MB freed")


@store_group.command("stats")
@json_option
@with_store
async def store_stats(store: Store, as_json: bool) -> None:
    counts = await store.counts()
    if as_json:
        emit_json(counts)
    else:
        emit_table(["what", "count"], sorted(counts.items()))


# -- pki --------------------------------------------------------------------------------------


@main.group("pki")
def pki_group() -> None:
    """Certificates: inspect, check, generate the IGC-Santé TEST hierarchy."""


@pki_group.command("make-test-pki")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--crl-base-url", default="http://127.0.0.1:8787/crl", show_default=True)
@click.option("--operator-fqdn", default="mx.colombe.test", show_default=True)
def pki_make_test_pki(directory: str, crl_base_url: str, operator_fqdn: str) -> None:
    """Write a test PKI mirroring IGC-Santé (TEST in every CA name) and the audit certificates."""
    from pki.testpki import make_test_pki

    pki = make_test_pki(directory, crl_base_url=crl_base_url, operator_fqdn=operator_fqdn)
    click.echo(f"test PKI written to {pki.directory} (CRLs expected at {pki.crl_base_url}/)")
    for name, issued in sorted(pki.certs.items()):
        click.echo(f"  {name:16} {issued.cert.subject.rfc4514_string()}")


@pki_group.command("show")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@json_option
def pki_show(file: str, as_json: bool) -> None:
    """What a certificate file holds (PEM, DER or .p7b), for a support ticket."""
    from pki.errors import PkiError
    from pki.show import describe

    try:
        described = describe(Path(file))
    except PkiError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(described)
        return
    for n, cert in enumerate(described):
        if n:
            click.echo("")
        for key, value in cert.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            click.echo(f"{key:18} {shown}")


@pki_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--role", type=click.Choice(["server", "client", "smime"]), required=True)
@click.option(
    "--trust",
    "trust_file",
    type=click.Path(dir_okay=False, exists=True),
    required=True,
    help="PEM/DER/.p7b with the IGC-Santé roots (and intermediates) to trust.",
)
@click.option("--policy", "policies", multiple=True, help="Required certificate policy OID.")
@json_option
def pki_check(
    file: str, role: str, trust_file: str, policies: tuple[str, ...], as_json: bool
) -> None:
    """Validate a certificate (chain, dates, usage, policies, CRL) for a role.

    Exit code 0 when valid, 2 when refused; the reason is printed either way."""
    from pki.crl import CrlCache
    from pki.errors import PkiError
    from pki.loading import load_certificate_file
    from pki.verify import Role, TrustStore, Verifier

    try:
        certs = load_certificate_file(Path(file))
        anchors = load_certificate_file(Path(trust_file))
    except PkiError as exc:
        raise click.ClickException(str(exc)) from None
    verifier = Verifier(
        TrustStore.from_certificates(anchors), CrlCache(), required_policies=policies
    )
    verdict = asyncio.run(verifier.verify(certs[0], certs[1:], role=Role(role)))
    if as_json:
        emit_json(
            {
                "ok": verdict.ok,
                "reason": verdict.reason.value,
                "detail": verdict.detail,
                "subject": verdict.subject,
                "chain": [c.subject.rfc4514_string() for c in verdict.chain],
            }
        )
    else:
        click.echo(
            f"{'VALID' if verdict.ok else 'REFUSED'} ({verdict.reason.value}): {verdict.detail}"
        )
        click.echo(f"subject: {verdict.subject}")
        for depth, cert in enumerate(verdict.chain):
            click.echo(f"  {depth}: {cert.subject.rfc4514_string()}")
    if not verdict.ok:
        sys.exit(2)


# Areas with their own module (their commands and their `serve` component).
main.add_command(whitelist.whitelist)
main.add_command(addressbook.directory)
main.add_command(queue.queue)

if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
