"""The whitelist (liste blanche) in Colombe: ``colombe whitelist ...`` and its ``serve`` component.

The domain logic lives in :mod:`directory`; this module turns the ``[whitelist]`` configuration
into it and gives it a command line.
"""

from __future__ import annotations

import click


@click.group()
def whitelist() -> None:
    """The ANS whitelist: fetch it, inspect it, check a domain and a certificate DN."""
