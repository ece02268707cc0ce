"""The directory of BALs in Colombe: ``colombe directory import-extraction|search`` and the
periodic import of the national extraction as a ``serve`` component.

The domain logic lives in :mod:`directory`; this module turns the ``[directory]`` configuration
into it and gives it a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

import click

from colombe.clikit import Context, emit_json, emit_table, json_option, with_store
from colombe.config import Config
from directory.extraction import (
    DOWNLOAD_DEADLINE,
    ExtractionError,
    ExtractionRefused,
    ExtractionReport,
    ImportBusy,
    describe_source,
    import_extraction,
)
from directory.search import SearchError, search
from store import Store
from store.address_book import KEPT_IMPORTS, MAX_SEARCH_LIMIT

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 2.0
# After a failed automatic import (source unavailable, another process importing): try again
# after this long (or the interval, if shorter). After a refused file: this long, doubled at each
# refusal in a row, up to the interval.
RETRY_SECONDS = 600
# An automatic import may take DOWNLOAD_DEADLINE to read the source, plus this for the database
# (the last batches, the switch, deleting the old book); past that it is cancelled.
IMPORT_MARGIN = 600
SHOWN_PROBLEMS = 10


def _holder(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}"


@click.group()
def directory() -> None:
    """Our BALs and every MSSanté correspondent in France: import, search, publication."""


# -- import-extraction ------------------------------------------------------------------------


def _report_json(report: ExtractionReport) -> dict[str, Any]:
    return {
        "source": report.source,
        "name": report.name,
        "generation": report.generation,
        "lines": report.lines,
        "entries": report.entries,
        "bad_lines": report.bad_lines,
        "duplicates": report.duplicates,
        "seconds": round(report.seconds, 1),
        "bad_line_samples": [{"line": n, "problem": p} for n, p in report.bad_line_samples],
        "duplicate_samples": report.duplicate_samples,
    }


@directory.command("import-extraction")
@click.argument("source", required=False, metavar="[FILE|URL]")
@click.option(
    "--ca-file",
    help="PEM or PKCS#7 bundle for an https:// source (default: directory.extraction_ca_file).",
)
@click.option(
    "--force", is_flag=True, help="Accept a file that shrinks the address book by half or more."
)
@json_option
@with_store
async def import_extraction_command(
    store: Store, source: str | None, ca_file: str | None, force: bool, as_json: bool
) -> None:
    """Import the ANS extraction of every MSSanté BAL (.zip or .txt, file or URL; default:
    directory.extraction_url) as the national address book. The current book stays in use
    until the new one is complete; a refused file leaves it unchanged (exit 1)."""
    config: Config = click.get_current_context().find_object(Context).config  # type: ignore[union-attr]
    source = source or config.directory.extraction_url
    if not source:
        raise click.ClickException(
            "no source given and directory.extraction_url is empty in the configuration"
        )
    ca = ca_file if ca_file is not None else config.directory.extraction_ca_file
    last = time.monotonic()

    def progress(report: ExtractionReport) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_SECONDS:
            last = time.monotonic()
            click.echo(
                f"  {report.lines:,} lines read, {report.entries:,} entries, "
                f"{report.bad_lines} bad lines, {report.duplicates} duplicates "
                f"({report.seconds:.0f} s)",
                err=True,
            )

    try:
        report = await import_extraction(
            store, source, holder=_holder("cli"), ca_file=ca or None, force=force, progress=progress
        )
    except ExtractionError as exc:
        # One line, whatever the error (every error of an import is an ExtractionError).
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise click.ClickException(f"extraction not imported: {message}") from None
    if as_json:
        emit_json(_report_json(report))
        return
    click.echo(
        f"imported {report.entries} entries from {report.name or report.source} in "
        f"{report.seconds:.1f} s: {report.bad_lines} bad lines, {report.duplicates} duplicates"
    )
    for number, problem in report.bad_line_samples[:SHOWN_PROBLEMS]:
        click.echo(f"  line {number}: {problem}")
    if report.bad_lines > SHOWN_PROBLEMS:
        click.echo(f"  ... and {report.bad_lines - SHOWN_PROBLEMS} more bad lines")
    if report.duplicate_samples:
        shown = ", ".join(str(n) for n in report.duplicate_samples[:SHOWN_PROBLEMS])
        more = " ..." if report.duplicates > SHOWN_PROBLEMS else ""
        click.echo(f"  duplicate addresses (first line kept) on lines {shown}{more}")


# -- search -----------------------------------------------------------------------------------


@directory.command("search")
@click.argument("text", nargs=-1)
@click.option("--profession", help="Profession code, or the start of the profession/specialty.")
@click.option("--city", help="Start of the city name.")
@click.option("--departement", help='Département code: "69", "2A", "974".')
@click.option(
    "--type",
    "bal_type",
    type=click.Choice(["PER", "ORG", "APP", "CAB"], case_sensitive=False),
    help="BAL type.",
)
@click.option("--address", help="Start of the address.")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_SEARCH_LIMIT),
    default=20,
    show_default=True,
)
@click.option(
    "--all",
    "include_all",
    is_flag=True,
    help="Also our liste rouge, suspended and closed BALs (operators only).",
)
@click.option("--local", "local_only", is_flag=True, help="Only our own BALs.")
@json_option
@with_store
async def search_command(
    store: Store,
    text: tuple[str, ...],
    profession: str | None,
    city: str | None,
    departement: str | None,
    bal_type: str | None,
    address: str | None,
    limit: int,
    include_all: bool,
    local_only: bool,
    as_json: bool,
) -> None:
    """Find correspondents: our BALs and the national address book. Every word of TEXT must
    start a word of the name (accents and case ignored)."""
    try:
        found = await search(
            store,
            " ".join(text) or None,
            profession=profession,
            city=city,
            departement=departement,
            bal_type=bal_type,
            address=address,
            limit=limit,
            include_unpublishable=include_all,
            national=not local_only,
        )
    except SearchError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(found)
        return
    if not found:
        click.echo("no correspondent found", err=True)
        return
    emit_table(
        ["ADDRESS", "TYPE", "NAME", "PROFESSION", "CITY", "DEP", "SOURCE"],
        [
            (
                e.address,
                e.bal_type,
                e.display_name,
                e.specialty or e.profession or e.profession_code,
                e.city,
                e.departement,
                e.source if e.listed else f"{e.source} (unlisted)",
            )
            for e in found
        ],
    )


# -- the serve component ----------------------------------------------------------------------


class AddressBookImporter:
    """The ``addressbook`` component of ``colombe serve``: imports the configured extraction
    every ``directory.import_interval`` seconds, in whichever process of the cluster holds the
    import lease. A failure is logged (one line) and retried later; it never stops serve: after
    RETRY_SECONDS when the source is unavailable, after a wait doubling from RETRY_SECONDS up to
    the interval when the file is refused. Each import is bounded in time (DOWNLOAD_DEADLINE +
    IMPORT_MARGIN), and asks conditionally (ETag, Last-Modified) for a file other than the
    latest one imported or refused: a 304 means nothing to download."""

    name = "addressbook"

    def __init__(self, store: Store, url: str, ca_file: str | None, interval: int) -> None:
        self._store = store
        self._url = url
        self._ca_file = ca_file
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._refusals = 0  # refused files in a row (the backoff)

    @classmethod
    def from_config(cls, config: Config, store: Store) -> AddressBookImporter | None:
        section = config.directory
        if not section.extraction_url or section.import_interval <= 0:
            return None
        return cls(
            store,
            section.extraction_url,
            section.extraction_ca_file or None,
            section.import_interval,
        )

    async def start(self) -> None:
        # In the background: serve is ready at once, the first import runs meanwhile.
        self._task = asyncio.create_task(self._run(), name="addressbook-import")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def endpoints(self) -> list[str]:
        return []

    async def _seconds_until_due(self) -> float:
        current = await self._store.current_address_book()
        if current is None or current.finished_at is None:
            return 0.0
        age = (datetime.now(UTC) - current.finished_at).total_seconds()
        return max(0.0, self._interval - age)

    def _retry(self) -> float:
        return float(min(RETRY_SECONDS, self._interval))

    def _backoff(self) -> float:
        """The wait after ``self._refusals`` refusals in a row: doubling, up to the interval."""
        doubled = RETRY_SECONDS * 2 ** min(max(self._refusals - 1, 0), 32)
        return float(min(doubled, self._interval))

    async def _known_validators(self) -> tuple[str | None, str | None, bool]:
        """ETag and Last-Modified of the latest file of our source that was imported or refused,
        and whether it was refused: while the server still serves that file, it answers our
        conditional request with 304 and nothing is downloaded."""
        shown = describe_source(self._url)
        for record in await self._store.address_book_imports(limit=KEPT_IMPORTS):
            detail = record.detail or {}
            refused = record.status == "failed" and detail.get("refused") is True
            if record.source != shown or not (record.status == "done" or refused):
                continue
            etag, last_modified = detail.get("etag"), detail.get("last_modified")
            return (
                etag if isinstance(etag, str) else None,
                last_modified if isinstance(last_modified, str) else None,
                refused,
            )
        return None, None, False

    async def _run(self) -> None:
        # Bounded by the process's life: one import per interval, stopped by cancellation.
        while True:
            delay = await self._attempt()
            await asyncio.sleep(delay)

    async def _attempt(self) -> float:
        """One look at the address book, importing it if due; the seconds until the next."""
        retry = self._retry()
        try:
            # Another process of the cluster may have imported meanwhile.
            wait = await self._seconds_until_due()
            if wait > 0:
                return wait
            etag, last_modified, refused = await self._known_validators()
            async with asyncio.timeout(DOWNLOAD_DEADLINE + IMPORT_MARGIN):
                report = await import_extraction(
                    self._store,
                    self._url,
                    holder=_holder("serve"),
                    ca_file=self._ca_file,
                    etag=etag,
                    last_modified=last_modified,
                )
        except ImportBusy:
            return retry
        except ExtractionRefused as exc:
            self._refusals += 1
            delay = self._backoff()
            log.warning("national address book refused (next try in %d s): %s", int(delay), exc)
            return delay
        except ExtractionError as exc:
            log.warning("national address book not imported (retry in %d s): %s", int(retry), exc)
            return retry
        except TimeoutError:
            log.warning(
                "national address book not imported (retry in %d s): the import took longer "
                "than %d s",
                int(retry),
                DOWNLOAD_DEADLINE + IMPORT_MARGIN,
            )
            return retry
        except Exception as exc:
            log.warning(
                "national address book import failed (retry in %d s): %s: %s",
                int(retry),
                type(exc).__name__,
                exc,
            )
            return retry
        if report.not_modified:
            if refused:
                # Still the file we refused: no download, and we look again less and less often.
                self._refusals += 1
                delay = self._backoff()
                log.info(
                    "national address book: the source still serves the file refused "
                    "(next look in %d s)",
                    int(delay),
                )
                return delay
            self._refusals = 0
            log.debug("national address book: the source still serves the file imported")
            return retry
        self._refusals = 0
        log.info(
            "national address book imported: %d entries, %d bad lines",
            report.entries,
            report.bad_lines,
        )
        return 0.0
