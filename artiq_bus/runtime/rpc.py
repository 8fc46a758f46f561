"""What a service host agrees on with its service and its peers: the methods it serves
(marked with :func:`rpc` or :func:`packed_rpc`; :class:`~.service.ServiceHost` declares
to the broker, and calls, only those), how their arguments are decoded, and the
interface of a broker in the same process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from ..protocol import NoSuchMethod, ProtocolError, unpack

__all__ = ["rpc", "packed_rpc", "rpc_methods", "with_ping", "find_method", "decode_arguments",
           "LocalBroker"]

F = TypeVar("F", bound=Callable[..., Any])


def rpc(function: F) -> F:
    """Declare a method callable from the bus."""
    function.__artiq_bus_rpc__ = True  # type: ignore[attr-defined]
    return function


def packed_rpc(function: F) -> F:
    """Declare a method callable from the bus that takes the request undecoded:
    ``method(body, buffers)``, the ``[args, kwargs]`` body (a buffer) and its
    out-of-band frames.  For hot paths that can forward what they receive instead of
    decoding and packing it again (:func:`decode_arguments` decodes it the usual way)."""
    function.__artiq_bus_packed__ = True  # type: ignore[attr-defined]
    return rpc(function)


def rpc_methods(target: object) -> dict[str, Callable[..., Any]]:
    """The methods of ``target`` marked with :func:`rpc`, by name."""
    methods = {}
    for name in dir(type(target)):
        if name.startswith("_"):
            continue
        if getattr(getattr(type(target), name, None), "__artiq_bus_rpc__", False):
            methods[name] = getattr(target, name)
    return methods


def _ping() -> bool:
    return True


def with_ping(methods: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """``methods`` and ``ping``, which every service declares (docs/protocol.md §3.3)."""
    return {"ping": _ping, **methods}


def find_method(methods: dict[str, Callable[..., Any]], name: bytes,
                service: str) -> Callable[..., Any]:
    """The method a request names (its frame), or :class:`NoSuchMethod`."""
    method = methods.get(name.decode(errors="replace"))
    if method is None:
        raise NoSuchMethod(f"service {service!r} has no method {name[:64]!r}")
    return method


def decode_arguments(body: Any, buffers: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` from a request body and its out-of-band frames."""
    arguments = unpack(body, buffers)
    if (not isinstance(arguments, list) or len(arguments) != 2
            or not isinstance(arguments[0], list) or not isinstance(arguments[1], dict)
            or not all(isinstance(k, str) for k in arguments[1])):
        raise ProtocolError("request body must be [args, kwargs]")
    return arguments[0], arguments[1]


class LocalBroker(Protocol):
    """A broker in this process (see ``Broker.attach_local``)."""

    def attach_local(self, deliver: Callable[[list[Any]], None]) -> bytes: ...

    def detach_local(self, identity: bytes) -> None: ...

    def receive_local(self, identity: bytes, frames: Sequence[Any]) -> None: ...
