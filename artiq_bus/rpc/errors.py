"""Errors of controller RPC (``artiq_bus.rpc``).

Hierarchy::

    BusError
    ├── Unavailable
    │    └── ControllerUnavailable (ConnectionError)  no controller answers, or the
    │                                                  connection was lost mid-call
    ├── DeadlineExceeded
    │    └── ControllerTimeout (TimeoutError)         no reply within the client's timeout
    └── ServerConfigError                            a server cannot start as asked

:class:`~artiq_bus.protocol.rpc.NoSuchTarget` (the controller has no such target)
crosses the wire and lives with the wire format.  Both network errors are ``OSError``
subclasses, as sipyco's socket errors were: driver code that catches ``OSError`` keeps
working.
"""

from __future__ import annotations

from ..protocol.errors import BusError, DeadlineExceeded, Unavailable
from ..protocol.rpc import NoSuchTarget

__all__ = ["ControllerUnavailable", "ControllerTimeout", "ServerConfigError", "NoSuchTarget",
           "NETWORK_ERRORS"]


class ControllerUnavailable(Unavailable, ConnectionError):
    """No controller answers at that address, or the connection to it was lost."""


class ControllerTimeout(DeadlineExceeded, TimeoutError):
    """The controller did not reply within the client's timeout."""


class ServerConfigError(BusError):
    """A controller server cannot start as asked (an insecure bind, a port in use)."""


#: What :class:`~artiq_bus.rpc.BestEffortClient` turns into ``None``.
NETWORK_ERRORS = (ControllerUnavailable, ControllerTimeout)
