"""Errors of the nodes.

Hierarchy::

    NodeError
    └── NodeConfigError    a node cannot start with what it was given (a file, a flag)
"""

from __future__ import annotations

from ..protocol.errors import BusError

__all__ = ["NodeError", "NodeConfigError"]


class NodeError(BusError):
    """Base of the nodes' own errors."""


class NodeConfigError(NodeError):
    """A node cannot start with what it was given."""
