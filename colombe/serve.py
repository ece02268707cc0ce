"""``colombe serve``: open the store, start the components, stop them cleanly on SIGTERM/SIGINT.

Each component (admin endpoint, directory jobs, MTA queue and listeners; IMAP and web as their
issues land) is built by a factory from the configuration and the shared store, started in
order and stopped in reverse.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Protocol

from colombe.addressbook import AddressBookImporter
from colombe.admin import AdminServer
from colombe.config import Config
from colombe.mta import mx_component, queue_component, submission_component
from colombe.publication import publisher_component
from colombe.whitelist import whitelist_component
from store import Store

log = logging.getLogger(__name__)


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def endpoints(self) -> list[str]: ...


ComponentFactory = Callable[[Config, Store], Component | None]

# Every component `serve` knows, in start order. A factory returns None when its listener is
# disabled in the configuration.
COMPONENTS: dict[str, ComponentFactory] = {
    "admin": AdminServer.from_config,
    "publisher": publisher_component,
    "whitelist": whitelist_component,
    "addressbook": AddressBookImporter.from_config,
    "queue": queue_component,
    "mx": mx_component,
    "submission": submission_component,
}


class UnknownComponent(Exception):
    pass


class StartError(Exception):
    """A component could not start (typically: its address is taken or not ours)."""


def select_components(only: list[str] | None) -> list[str]:
    if not only:
        return list(COMPONENTS)
    unknown = [name for name in only if name not in COMPONENTS]
    if unknown:
        raise UnknownComponent(
            f"unknown component(s) {', '.join(unknown)}; known: {', '.join(COMPONENTS)}"
        )
    return [name for name in COMPONENTS if name in only]


async def open_store(config: Config) -> Store:
    return await Store.open(config.database_url, config.blob_dir, pool_size=config.store.pool_size)


async def serve(
    config: Config,
    *,
    only: list[str] | None = None,
    on_ready: Callable[[list[str]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set)."""
    names = select_components(only)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = await open_store(config)
    started: list[Component] = []
    try:
        for name in names:
            component = COMPONENTS[name](config, store)
            if component is None:
                log.info("component %s disabled by configuration", name)
                continue
            try:
                await component.start()
            except OSError as exc:
                raise StartError(
                    f"{name} cannot start: {exc.strerror or exc} (see the [{name}] section "
                    "of colombe.toml)"
                ) from None
            started.append(component)
            log.info("component %s started", name)
        endpoints = [line for c in started for line in c.endpoints()]
        if on_ready is not None:
            on_ready(endpoints)
        await stop.wait()
        log.info("stopping")
    finally:
        for component in reversed(started):
            try:
                await component.stop()
            except Exception:
                log.exception("component %s did not stop cleanly", component.name)
        await store.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
