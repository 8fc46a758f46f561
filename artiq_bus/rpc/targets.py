"""What a controller exposes: the public methods of its targets, with their signatures.

Only public callables (names not starting with ``_``) are callable from the wire, plus
the server's built-ins (``ping`` unless the target has its own, ``terminate`` when the
server offers it).  ARTIQ's server exposed every callable, dunders included.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["public_methods", "describe_target", "BUILTIN_DOCS"]

#: Docstrings of the built-in methods, as listed to clients.
BUILTIN_DOCS = {
    "ping": "Return True: the controller is alive (built in).",
    "terminate": "Stop the controller (built in).",
}


def public_methods(target: Any) -> dict[str, Callable[..., Any]]:
    """The callable public attributes of ``target``, by name."""
    methods = {}
    for name in dir(target):
        if name.startswith("_"):
            continue
        try:
            value = getattr(target, name)
        except Exception:  # a property that fails is not a method
            continue
        if callable(value):
            methods[name] = value
    return methods


def _signature(method: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(method))
    except (TypeError, ValueError):  # some builtins have none
        return "(...)"


def describe_target(target: Any, builtins: tuple[str, ...]) -> dict[str, Any]:
    """``{"docstring", "methods": {name: {"signature", "docstring"}}}`` of a target;
    ``builtins`` are the built-in methods the server adds to it."""
    methods = {name: {"signature": _signature(method), "docstring": inspect.getdoc(method)}
               for name, method in public_methods(target).items()}
    for name in builtins:
        methods[name] = {"signature": "()", "docstring": BUILTIN_DOCS[name]}
    doc = type(target).__doc__
    return {"docstring": inspect.cleandoc(doc) if doc else None, "methods": methods}
