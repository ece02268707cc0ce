"""The directory of BALs in Colombe: ``colombe directory import-extraction|search`` and the
periodic import of the national extraction as a ``serve`` component.

The domain logic lives in :mod:`directory`; this module turns the ``[directory]`` configuration
into it and gives it a command line.
"""

from __future__ import annotations

import click


@click.group()
def directory() -> None:
    """Our BALs and every MSSanté correspondent in France: import, search, publication."""
