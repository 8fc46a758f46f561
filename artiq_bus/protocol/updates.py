"""The struct-update vocabulary and the one function that applies an update.

A replicated struct is a dict owned by one node.  Every change is an update, a map::

    {"action": "init",    "struct": {...}}              replace everything
    {"action": "setitem", "path": P, "key": k, "value": v}
    {"action": "delitem", "path": P, "key": k}
    {"action": "append",  "path": P, "x": v}
    {"action": "insert",  "path": P, "i": n, "x": v}
    {"action": "pop",     "path": P, "i": n}

``path`` is the list of successive keys/indices from the struct's root to the container
the action works on (``[]`` is the root).  ``key`` may be anything a container takes as
an index, including tuples and slices for numpy arrays.  The owner, the command-line
client, the dashboard and applets all apply updates with :func:`apply_update`.
"""

from __future__ import annotations

import enum
from typing import Any

from .errors import ProtocolError

__all__ = ["UpdateAction", "apply_update", "top_key", "setitem", "delitem", "append",
           "insert", "pop", "init"]


class UpdateAction(str, enum.Enum):
    INIT = "init"
    SETITEM = "setitem"
    DELITEM = "delitem"
    APPEND = "append"
    INSERT = "insert"
    POP = "pop"


_ACTIONS = {action.value: action for action in UpdateAction}


def init(struct: dict[Any, Any]) -> dict[str, Any]:
    return {"action": UpdateAction.INIT.value, "struct": struct}


def setitem(path: list[Any], key: Any, value: Any) -> dict[str, Any]:
    return {"action": UpdateAction.SETITEM.value, "path": path, "key": key, "value": value}


def delitem(path: list[Any], key: Any) -> dict[str, Any]:
    return {"action": UpdateAction.DELITEM.value, "path": path, "key": key}


def append(path: list[Any], x: Any) -> dict[str, Any]:
    return {"action": UpdateAction.APPEND.value, "path": path, "x": x}


def insert(path: list[Any], i: int, x: Any) -> dict[str, Any]:
    return {"action": UpdateAction.INSERT.value, "path": path, "i": i, "x": x}


def pop(path: list[Any], i: int) -> dict[str, Any]:
    return {"action": UpdateAction.POP.value, "path": path, "i": i}


def top_key(update: dict[str, Any]) -> Any:
    """The root key an update touches: it decides the update's topic."""
    path = update.get("path")
    if path:
        return path[0]
    if update.get("action") in (UpdateAction.SETITEM, UpdateAction.DELITEM):
        return update.get("key")
    raise ProtocolError(f"update {update.get('action')!r} at the root has no key")


def _writable(parent: Any, index: Any, child: Any) -> Any:
    """``child`` made writable in place in ``parent`` (decoded arrays may share a
    read-only frame)."""
    flags = getattr(child, "flags", None)
    if flags is not None and not flags.writeable:
        child = child.copy()
        parent[index] = child
    return child


def _walk(target: Any, path: list[Any]) -> Any:
    container = target
    for index in path:
        container = _writable(container, index, container[index])
    return container


def apply_update(target: dict[Any, Any], update: dict[str, Any]) -> dict[Any, Any]:
    """Apply ``update`` to ``target`` in place; return the struct (new after ``init``).

    Raises :class:`ProtocolError` for an update that does not fit ``target``; the
    caller treats that like a lost update and resynchronises.
    """
    try:
        action = _ACTIONS[update["action"]]  # a dict: UpdateAction(...) costs microseconds
        if action is UpdateAction.INIT:
            struct = update["struct"]
            if not isinstance(struct, dict):
                raise TypeError("init needs a dict")
            return struct
        container = _walk(target, update["path"])
        if action is UpdateAction.SETITEM:
            container[update["key"]] = update["value"]
        elif action is UpdateAction.DELITEM:
            del container[update["key"]]
        elif action is UpdateAction.APPEND:
            container.append(update["x"])
        elif action is UpdateAction.INSERT:
            container.insert(update["i"], update["x"])
        else:
            container.pop(update["i"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError,
            OverflowError) as exc:
        raise ProtocolError(f"update does not apply: {type(exc).__name__}: {exc}") from None
    return target
