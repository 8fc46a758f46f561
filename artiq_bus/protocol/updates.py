"""The struct-update vocabulary and the one function that applies an update.

A replicated struct is a dict owned by one node.  Every change is an update, a map::

    {"action": "init",    "struct": {...}}              replace everything
    {"action": "setitem", "path": P, "key": k, "value": v}
    {"action": "setitems", "path": P, "keys": [k1, k2, ...], "values": [v1, v2, ...]}
    {"action": "delitem", "path": P, "key": k}
    {"action": "append",  "path": P, "x": v}
    {"action": "insert",  "path": P, "i": n, "x": v}
    {"action": "pop",     "path": P, "i": n}

``path`` is the list of successive keys/indices from the struct's root to the container
the action works on (``[]`` is the root).  ``key`` may be anything a container takes as
an index, including tuples and slices for numpy arrays.  ``setitems`` is a run of
setitems on one container (``container[k1] = v1``, then ``k2``, ...): a stream of
``mutate_dataset`` calls costs one update per run instead of one per call, and two
flat arrays decode much faster than one small array per pair.  The owner, the command-line
client, the dashboard and applets all apply updates with :func:`apply_update`.
"""

from __future__ import annotations

import enum
from typing import Any

from numpy import ndarray

from .errors import ProtocolError

__all__ = ["UpdateAction", "apply_update", "thaw", "walk", "top_key", "setitem", "setitems",
           "set_items", "check_items", "delitem", "append", "insert", "pop", "init"]


class UpdateAction(str, enum.Enum):
    INIT = "init"
    SETITEM = "setitem"
    SETITEMS = "setitems"
    DELITEM = "delitem"
    APPEND = "append"
    INSERT = "insert"
    POP = "pop"


# The action names as plain strings: the hot paths compare against these (an enum
# member's ``.value`` costs about a microsecond).
_INIT, _SETITEM, _SETITEMS, _DELITEM, _APPEND, _INSERT, _POP = (a.value for a in UpdateAction)


def init(struct: dict[Any, Any]) -> dict[str, Any]:
    return {"action": _INIT, "struct": struct}


def setitem(path: list[Any], key: Any, value: Any) -> dict[str, Any]:
    return {"action": _SETITEM, "path": path, "key": key, "value": value}


def setitems(path: list[Any], keys: list[Any], values: list[Any]) -> dict[str, Any]:
    return {"action": _SETITEMS, "path": path, "keys": keys, "values": values}


def delitem(path: list[Any], key: Any) -> dict[str, Any]:
    return {"action": _DELITEM, "path": path, "key": key}


def append(path: list[Any], x: Any) -> dict[str, Any]:
    return {"action": _APPEND, "path": path, "x": x}


def insert(path: list[Any], i: int, x: Any) -> dict[str, Any]:
    return {"action": _INSERT, "path": path, "i": i, "x": x}


def pop(path: list[Any], i: int) -> dict[str, Any]:
    return {"action": _POP, "path": path, "i": i}


def top_key(update: dict[str, Any]) -> Any:
    """The root key an update touches: it decides the update's topic."""
    path = update.get("path")
    if path:
        return path[0]
    if update.get("action") in (_SETITEM, _DELITEM):
        return update.get("key")
    raise ProtocolError(f"update {update.get('action')!r} at the root has no key")


def thaw(target: Any, path: list[Any]) -> Any:
    """Replace the read-only array at ``path`` in ``target`` by a writable copy, and
    return the copy.  Tuples on the way are rebuilt (they cannot be assigned to).

    Owners make an array read-only once ZeroMQ may still be sending it without a copy
    (see :mod:`artiq_bus.runtime.structs`); a change copies it first, so what is in
    flight never changes.  Decoded arrays may also share a read-only frame.
    """
    chain = [target]
    for index in path[:-1]:
        chain.append(chain[-1][index])
    copied = chain[-1][path[-1]].copy()
    value = copied
    for parent, index in zip(reversed(chain), reversed(path)):
        if not isinstance(parent, tuple):
            parent[index] = value
            return copied
        items = list(parent)
        items[index] = value
        value = tuple(items)
    raise TypeError("the root of a struct cannot be a tuple")


def walk(target: Any, path: list[Any]) -> Any:
    """The container at ``path`` in ``target``, ready to change: a read-only array on
    the way is replaced by a writable copy first (:func:`thaw`)."""
    container = target
    for index in path:
        container = container[index]
    # An array inside a read-only one is a read-only view: checking the end suffices.
    if isinstance(container, ndarray) and not container.flags.writeable:
        return _walk_thawing(target, path)
    return container


def _walk_thawing(target: Any, path: list[Any]) -> Any:
    """:func:`walk`, copying the first read-only array on the way."""
    container = target
    for depth, index in enumerate(path):
        container = container[index]
        if isinstance(container, ndarray) and not container.flags.writeable:
            container = thaw(target, path[:depth + 1])
    return container


def set_items(container: Any, keys: Any, values: Any) -> None:
    """``container[key] = value`` for each key of ``keys`` and value of ``values`` (a
    ``setitems`` update), in order.  Raises on the first that does not fit; those
    before it stay set (an owner that must refuse atomically applies them one by one:
    :mod:`artiq_bus.nodes.dataset_batches`)."""
    check_items(keys, values)
    for key, value in zip(keys, values):
        container[key] = value


def check_items(keys: Any, values: Any) -> None:
    """Raise TypeError unless ``keys`` and ``values`` are arrays of one length."""
    if ((type(keys) is not list and type(keys) is not tuple)
            or (type(values) is not list and type(values) is not tuple)):
        raise TypeError(f"setitems takes arrays of keys and values, not "
                        f"{type(keys).__name__} and {type(values).__name__}")
    if len(keys) != len(values):
        raise TypeError(f"setitems has {len(keys)} keys but {len(values)} values")


def apply_update(target: dict[Any, Any], update: dict[str, Any]) -> dict[Any, Any]:
    """Apply ``update`` to ``target`` in place; return the struct (new after ``init``).

    Raises :class:`ProtocolError` for an update that does not fit ``target``; the
    caller treats that like a lost update and resynchronises.
    """
    try:
        action = update["action"]
        if action == _SETITEM:  # first, and walk inline: by far the commonest
            container: Any = target
            for index in update["path"]:
                container = container[index]
            if isinstance(container, ndarray) and not container.flags.writeable:
                container = _walk_thawing(target, update["path"])
            container[update["key"]] = update["value"]
        elif action == _SETITEMS:
            set_items(walk(target, update["path"]), update["keys"], update["values"])
        elif action == _APPEND:
            walk(target, update["path"]).append(update["x"])
        elif action == _DELITEM:
            del walk(target, update["path"])[update["key"]]
        elif action == _INSERT:
            walk(target, update["path"]).insert(update["i"], update["x"])
        elif action == _POP:
            walk(target, update["path"]).pop(update["i"])
        elif action == _INIT:
            struct = update["struct"]
            if not isinstance(struct, dict):
                raise TypeError("init needs a dict")
            return struct
        else:
            raise ValueError(f"unknown action {action!r:.40}")
    except (KeyError, IndexError, TypeError, ValueError, AttributeError,
            OverflowError) as exc:
        raise ProtocolError(f"update does not apply: {type(exc).__name__}: {exc}") from None
    return target
