"""Decorators that mark where code runs, and the run-control primitives.

``@kernel``, ``@portable``, ``@rpc``, ``@host_only`` and ``@syscall`` record what the
function is (an :class:`EmbeddedInfo` in ``function.artiq_embedded``) and otherwise
leave it alone: on the host a kernel is plain Python until the compiler arrives.  Each
works bare (``@kernel``) or with options (``@kernel("core2")``, ``@rpc(flags={"async"})``).

``watchdog(timeout)`` returns a context manager made by a settable factory: the worker
installs one that enforces the deadline; elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ContextManager, TypeVar, overload

from .errors import CancelledArgsError, TerminationRequested

__all__ = ["EmbedKind", "EmbeddedInfo", "kernel", "portable", "rpc", "host_only", "syscall",
           "watchdog", "set_watchdog_factory", "TerminationRequested", "CancelledArgsError"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
WatchdogFactory = Callable[[float], ContextManager[Any]]


class EmbedKind(str, enum.Enum):
    """Where a marked function runs."""

    KERNEL = "kernel"          # on the core device
    PORTABLE = "portable"      # on whichever side calls it
    RPC = "rpc"                # on the host, called from a kernel
    HOST_ONLY = "host_only"    # on the host; kernels may not call it
    SYSCALL = "syscall"        # a core-device runtime function


@dataclass(frozen=True)
class EmbeddedInfo:
    """What a decorator recorded about a function."""

    kind: EmbedKind
    core_name: str | None = None
    flags: frozenset[str] = field(default_factory=frozenset)
    syscall_name: str | None = None


def _mark(function: F, info: EmbeddedInfo) -> F:
    function.artiq_embedded = info  # type: ignore[attr-defined]
    return function


@overload
def kernel(arg: F) -> F: ...
@overload
def kernel(arg: str | None = None, flags: set[str] | frozenset[str] = ...) -> Callable[[F], F]: ...


def kernel(arg: Any = None, flags: set[str] | frozenset[str] = frozenset()) -> Any:
    """Mark a method as a kernel; ``@kernel("name")`` names the core device attribute."""
    if callable(arg):
        return _mark(arg, EmbeddedInfo(EmbedKind.KERNEL, "core"))
    core_name = arg if arg is not None else "core"
    return lambda function: _mark(function, EmbeddedInfo(EmbedKind.KERNEL, core_name,
                                                         frozenset(flags)))


def _simple_marker(kind: EmbedKind, arg: Any, flags: set[str] | frozenset[str]) -> Any:
    if callable(arg):
        return _mark(arg, EmbeddedInfo(kind))
    return lambda function: _mark(function, EmbeddedInfo(kind, flags=frozenset(flags)))


def portable(arg: Any = None, flags: set[str] | frozenset[str] = frozenset()) -> Any:
    """Mark a function that runs on whichever side calls it."""
    return _simple_marker(EmbedKind.PORTABLE, arg, flags)


def rpc(arg: Any = None, flags: set[str] | frozenset[str] = frozenset()) -> Any:
    """Mark a host function callable from kernels (``flags={"async"}``: no reply)."""
    return _simple_marker(EmbedKind.RPC, arg, flags)


def host_only(function: F) -> F:
    """Mark a function that kernels must not call."""
    return _mark(function, EmbeddedInfo(EmbedKind.HOST_ONLY))


def syscall(arg: Any = None, flags: set[str] | frozenset[str] = frozenset()) -> Any:
    """Mark a core-device runtime function (``@syscall("name")`` gives its name)."""
    if callable(arg):
        return _mark(arg, EmbeddedInfo(EmbedKind.SYSCALL, syscall_name=arg.__name__))

    def decorate(function: F) -> F:
        name = arg if arg is not None else function.__name__
        return _mark(function, EmbeddedInfo(EmbedKind.SYSCALL, flags=frozenset(flags),
                                             syscall_name=name))
    return decorate


@contextlib.contextmanager
def _no_watchdog(timeout: float) -> Iterator[None]:
    """The watchdog outside a worker: nothing to enforce."""
    yield


_watchdog_factory: WatchdogFactory = _no_watchdog


def set_watchdog_factory(factory: WatchdogFactory | None) -> None:
    """Make ``watchdog(t)`` return ``factory(t)`` (the worker installs its own);
    ``None`` restores the default, which enforces nothing."""
    global _watchdog_factory
    _watchdog_factory = factory if factory is not None else _no_watchdog


def watchdog(timeout: float) -> ContextManager[Any]:
    """A context manager that fails the run if its block lasts longer than ``timeout`` s."""
    return _watchdog_factory(timeout)
