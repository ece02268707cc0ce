"""Publication of our BALs to the national directory in Colombe: ``colombe directory
status|publish`` and the publisher as a ``serve`` component.

The domain logic lives in :mod:`directory`; this module turns the ``[publication]`` configuration
into it and gives it a command line.
"""

from __future__ import annotations

from colombe.addressbook import directory

__all__ = ["directory"]
