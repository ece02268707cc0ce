"""What every ``colombe`` command module shares: the context (configuration, store), output as
tables or JSON, running async commands, the operator's identity for the audit trail."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from colombe.config import SEARCH_PATH, Config, find_config, load_config
from colombe.logs import configure_logging
from store import Store

P = ParamSpec("P")
T = TypeVar("T")


def actor() -> str:
    """The operator's login for the audit trail: the real uid (environment variables such as
    LOGNAME are set by the caller and prove nothing), plus the sudo caller when there is one."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    sudo_user = os.environ.get("SUDO_USER")
    return f"cli:{sudo_user}(sudo {user})" if sudo_user and sudo_user != user else f"cli:{user}"


# -- output -----------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def emit_json(value: Any) -> None:
    click.echo(json.dumps(jsonable(value), ensure_ascii=False, indent=2))


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


# -- plumbing ---------------------------------------------------------------------------------


class Context:
    def __init__(self, config_path: str | None) -> None:
        self._explicit = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            path = find_config(self._explicit)
            if path is None:
                looked = ", ".join(str(p) for p in SEARCH_PATH)
                raise click.ClickException(
                    f"no configuration found (looked for {looked}); run `colombe init` "
                    "or `colombe demo`, or pass --config / set COLOMBE_CONFIG"
                )
            self._config = load_config(path)
            configure_logging(self._config.log.level, self._config.log.format)
        return self._config

    async def open_store(self) -> Store:
        from colombe.serve import open_store

        return await open_store(self.config)


def run_async(fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Run an async command to completion."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return asyncio.run(fn(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


def with_store(
    fn: Callable[..., Awaitable[T]],
) -> Callable[..., T]:
    """Give the command an open store as first argument and close it afterwards."""

    @click.pass_obj
    @wraps(fn)
    def wrapper(ctx: Context, *args: Any, **kwargs: Any) -> T:
        async def go() -> T:
            store = await ctx.open_store()
            try:
                return await fn(store, *args, **kwargs)
            finally:
                await store.close()

        return run_async(go)()

    return wrapper


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Mot de passe", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("empty password")
    return password


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
