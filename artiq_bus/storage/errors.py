"""Errors of the embedded stores.

Hierarchy::

    StorageError          a store cannot be opened, read or written
"""

from __future__ import annotations

from ..protocol.errors import BusError

__all__ = ["StorageError"]


class StorageError(BusError):
    """A store cannot be opened, read or written (a full map, a bad file)."""
