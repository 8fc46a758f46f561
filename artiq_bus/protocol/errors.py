"""Typed errors that cross the wire.

Hierarchy::

    BusError                      base of every error this package raises
    ├── ProtocolError             a frame or body that does not follow docs/protocol.md
    ├── EncodeError (TypeError)   a value the codec cannot carry
    ├── Unavailable               the broker cannot be reached
    ├── DeadlineExceeded          no reply within the caller's deadline
    ├── NoSuchService             no service of that name is registered
    ├── NoSuchMethod              the service did not declare that method
    ├── ServiceDied               the service went away with the request in flight
    ├── Overloaded                the broker refused the request to stay within its bounds
    ├── Unauthorized              the peer is not allowed to do this
    └── RemoteError               the service's method raised; ``remote_type`` names it

A reply with an error carries ``{"type", "message", "traceback"}``.  The receiver turns
it back into an exception with :func:`error_from_wire`: bus errors map to their class,
a small allow-list of builtin exceptions maps to a ``RemoteError`` subclass that is also
that builtin (``except KeyError`` keeps working across the wire), anything else becomes a
plain ``RemoteError``.  Nothing is looked up by name outside the allow-list.
"""

from __future__ import annotations

import builtins
import traceback as _traceback
from typing import Any

__all__ = [
    "BusError", "ProtocolError", "EncodeError", "Unavailable", "DeadlineExceeded",
    "NoSuchService", "NoSuchMethod", "ServiceDied", "Overloaded", "Unauthorized",
    "RemoteError", "register_error", "error_to_wire", "error_from_wire",
]


class BusError(Exception):
    """Base of every error raised by artiq_bus."""


class ProtocolError(BusError):
    """A message that does not follow the protocol."""


class EncodeError(BusError, TypeError):
    """A value that the codec cannot carry."""


class Unavailable(BusError):
    """The broker cannot be reached, or the connection to it was lost."""


class DeadlineExceeded(BusError):
    """No reply arrived within the caller's deadline."""


class NoSuchService(BusError):
    """No service of that name is registered with the broker."""


class NoSuchMethod(BusError):
    """The service exists but did not declare that method."""


class ServiceDied(BusError):
    """The service was lost (killed, hung, replaced) while the request was in flight."""


class Overloaded(BusError):
    """The broker refused the request to keep its memory bounded."""


class Unauthorized(BusError):
    """The peer is not allowed to do this."""


class RemoteError(BusError):
    """The remote method raised an exception that is not a bus error."""

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = ""):
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        message = self.args[0] if self.args else ""
        return f"{self.remote_type}: {message}" if self.remote_type else str(message)


_BUS_ERRORS: dict[str, type[BusError]] = {
    cls.__name__: cls
    for cls in (BusError, ProtocolError, EncodeError, Unavailable, DeadlineExceeded,
                NoSuchService, NoSuchMethod, ServiceDied, Overloaded, Unauthorized)
}

# Builtins a caller may reasonably want to catch by their own type.
_BUILTIN_ALLOWED = (
    "KeyError", "ValueError", "TypeError", "IndexError", "AttributeError",
    "NotImplementedError", "RuntimeError", "FileNotFoundError", "FileExistsError",
    "PermissionError", "IsADirectoryError", "NotADirectoryError", "OSError",
    "TimeoutError", "LookupError", "ArithmeticError", "ZeroDivisionError",
    "OverflowError", "UnicodeError", "AssertionError",
)
_REMOTE_BUILTINS: dict[str, type[RemoteError]] = {
    name: type(f"Remote{name}", (RemoteError, getattr(builtins, name)), {})
    for name in _BUILTIN_ALLOWED
}
_REGISTERED: dict[str, type[BaseException]] = {}


def register_error(cls: type[BaseException]) -> type[BaseException]:
    """Let an application error cross the wire as itself (usable as a class decorator).

    The class must accept a single message argument.
    """
    _REGISTERED[cls.__name__] = cls
    return cls


def error_to_wire(exc: BaseException, with_traceback: bool = True) -> dict[str, str]:
    """The wire form of an exception: ``{"type", "message", "traceback"}``."""
    if isinstance(exc, RemoteError) and exc.remote_type:
        name = exc.remote_type
        message = str(exc.args[0]) if exc.args else ""
    else:
        name = type(exc).__name__
        message = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    tb = ""
    if with_traceback and exc.__traceback__ is not None:
        tb = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"type": name, "message": message, "traceback": tb}


def error_from_wire(wire: Any) -> BaseException:
    """The exception a caller raises for an error body received from the wire."""
    if not isinstance(wire, dict):
        return ProtocolError(f"malformed error body: {wire!r:.200}")
    name = str(wire.get("type", ""))
    message = str(wire.get("message", ""))
    tb = str(wire.get("traceback", ""))
    if name in _BUS_ERRORS:
        return _BUS_ERRORS[name](message)
    if name in _REGISTERED:
        try:
            return _REGISTERED[name](message)
        except Exception:  # a registered class with an odd constructor
            pass
    cls = _REMOTE_BUILTINS.get(name, RemoteError)
    return cls(message, name, tb)
