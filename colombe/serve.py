"""``colombe serve``: open the store, start the components, stop them cleanly on SIGTERM/SIGINT.

Each component (admin endpoint, directory jobs, MTA queue and listeners, IMAP; web as its issue
lands) is built by a factory from the configuration and the shared store, started in order and
stopped in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Protocol

from colombe.addressbook import AddressBookImporter
from colombe.admin import AdminServer
from colombe.config import Config
from colombe.imap import imap_component
from colombe.mta import mx_component, queue_component, submission_component
from colombe.publication import publisher_component
from colombe.whitelist import whitelist_component
from store import Store

log = logging.getLogger(__name__)

STOP_CHILDREN = 30.0
"""Seconds the front-end processes get to finish after SIGTERM before SIGKILL."""


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
    "imap": imap_component,
}


# The components every process of `server.processes` runs (stateless front ends); the others
# run in the first process only.
FRONT_ENDS = ("mx", "submission", "imap")


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
    store = await Store.open(config.database_url, config.blob_dir, pool_size=config.store.pool_size)
    store.verified_ttl = float(config.store.login_cache_ttl)
    return store


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


def _die_with_parent() -> None:
    """Linux: this (child) process gets SIGTERM when its parent dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def serve_in_processes(
    config: Config,
    *,
    only: list[str] | None = None,
    on_ready: Callable[[list[str]], None] | None = None,
) -> int:
    """``server.processes`` processes: this one runs every selected component, the others
    (forked before any event loop or thread exists) the front ends only, on the same ports.
    SIGTERM/SIGINT to this process stops them all; returns the exit status."""
    names = select_components(only)
    front_ends = [n for n in names if n in FRONT_ENDS]
    children: list[int] = []
    if front_ends:
        for _ in range(config.server.processes - 1):
            pid = os.fork()
            if pid == 0:  # the child: front ends only, until its parent tells it to stop
                code = 0
                try:
                    _die_with_parent()
                    asyncio.run(serve(config, only=front_ends))
                except BaseException:
                    log.exception("front-end process failed")
                    code = 1
                finally:
                    os._exit(code)
            children.append(pid)
    code = 0
    try:
        asyncio.run(serve(config, only=names, on_ready=on_ready))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_CHILDREN
        for pid in children:
            while True:
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    code = code or (1 if os.waitstatus_to_exitcode(status) else 0)
                    break
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)
    return code
