"""Errors of configuration: addresses and keys.

Hierarchy::

    NetError
    ├── AddressError     an address or bind host that cannot be used
    └── KeyFileError     a CurveZMQ key file that is missing or malformed
"""

from __future__ import annotations

from ..protocol.errors import BusError

__all__ = ["NetError", "AddressError", "KeyFileError"]


class NetError(BusError):
    """A network configuration that cannot work."""


class AddressError(NetError):
    """An address, host name or bind host that cannot be used."""


class KeyFileError(NetError):
    """A CurveZMQ key file that is missing or malformed."""
