"""A worker's batch of dataset updates, applied and forwarded without packing it again.

Workers send ``datasets.apply_updates`` one-way, with the body ``[[update, ...], {}]``:
hundreds of ``mutate_dataset`` updates a message.  The node must decode each update
(to check it and apply it to its struct), but it need not pack it again for
subscribers: an accepted change inside a value (path ``[name, 1, ...]``) is published
as the very bytes the worker sent (:meth:`StructOwner.queue_packed`), consecutive
updates of one dataset as one slice.  Packing them again would cost as much as all the
rest.

Root updates (``setitem``/``delitem`` at path ``[]``: a dataset created, replaced or
deleted) go through the node's general path, in their place in the batch: their entry
is normalised (a tuple, a ``bool`` flag) before it is stored and published.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numpy import ndarray

from ..protocol import (EncodeError, ProtocolError, UpdateAction, apply_update, body_ends,
                        unpack)
from ..protocol.updates import thaw
from ..runtime.structs import StructOwner

__all__ = ["Batch", "BatchApplier", "decode_batch", "check_value_update",
           "apply_value_update", "REFUSED", "VALUE"]

#: Position of the value in a ``(persist, value, metadata)`` entry.
VALUE = 1
#: What a refused update raises (reported to the sender, never fatal).
REFUSED = (ProtocolError, EncodeError, KeyError, IndexError, TypeError, ValueError, AttributeError,
           OverflowError)

_SETITEM = UpdateAction.SETITEM.value
#: What :meth:`BatchApplier._accept` says of a root update.
_ROOT = object()
_VALUE_ACTIONS = frozenset(a.value for a in UpdateAction if a is not UpdateAction.INIT)
#: msgpack markers: a 2-array, a 1-array, an empty map (``[[...], {}]``), array headers
_PAIR, _SINGLE, _NO_KWARGS = 0x92, 0x91, 0x80
_FIXARRAY, _ARRAY16, _ARRAY32 = 0x90, 0xDC, 0xDD


class Batch:
    """Decoded updates and their bytes (``region``: the updates packed one after
    another)."""

    def __init__(self, region: memoryview, updates: list[Any]):
        self.region, self.updates = region, updates
        self._ends: list[int] | None = None

    def packed(self, first: int, count: int) -> memoryview:
        """The bytes of updates ``first`` to ``first + count - 1``."""
        if count == len(self.updates):
            return self.region  # the common case: no need to find where each one ends
        if self._ends is None:
            self._ends = body_ends(self.region, len(self.updates))
        start = self._ends[first - 1] if first else 0
        return self.region[start:self._ends[first + count - 1]]


def decode_batch(body: Any) -> Batch | None:
    """The updates of an ``[[update, ...], {}]`` body (what workers and
    ``Client.call(..., updates)`` send), or None for a body of another shape (the
    caller then decodes it as any request)."""
    view = memoryview(body)
    if len(view) < 4 or view[0] != _PAIR or view[1] != _SINGLE or view[-1] != _NO_KWARGS:
        return None
    marker = view[2]
    if _FIXARRAY <= marker < _FIXARRAY + 16:
        start = 3
    elif marker == _ARRAY16:
        start = 5
    elif marker == _ARRAY32:
        start = 7
    else:
        return None
    try:
        updates = unpack(view[2:-1])
    except ProtocolError:
        return None  # not that shape after all (a kwargs map ends with 0x80 too)
    return Batch(view[start:-1], updates)


def check_value_update(data: dict[str, Any], update: Any) -> str | None:
    """The dataset a change inside a value changes, or None for a root update (path
    ``[]``); raises if it is no accepted update."""
    if type(update) is not dict:
        raise TypeError(f"an update is a map, not {type(update).__name__}")
    path = update.get("path")
    if type(path) is not list:
        raise TypeError("an update needs a path (a list)")
    if not path:
        return None
    key = path[0]
    if type(key) is not str or key not in data:
        raise KeyError(f"no dataset {key!r:.80}")
    if len(path) < 2 or type(path[1]) is not int or path[1] != VALUE:
        raise ValueError(f"dataset {key!r}: an update inside a dataset has the path "
                         "[name, 1, ...] (it changes the value)")
    if update.get("action") not in _VALUE_ACTIONS:
        raise ValueError(f"dataset {key!r}: unknown update action "
                         f"{update.get('action')!r:.40}")
    return key


def apply_value_update(data: dict[str, Any], key: str, update: dict[str, Any]) -> None:
    """Apply a checked change inside dataset ``key``'s value (refusal types on error,
    nothing changed)."""
    path = update["path"]
    if len(path) == 2 and update["action"] == _SETITEM:  # mutate_dataset: the hot path
        value = data[key][VALUE]
        if isinstance(value, ndarray) and not value.flags.writeable:
            value = thaw(data, path)  # in flight (sent without a copy): change a copy
        value[update["key"]] = update["value"]
        return
    try:
        apply_update(data, update)
    except ProtocolError as exc:
        raise ValueError(f"dataset {key!r}: {exc}") from None


class BatchApplier:
    """Applies one decoded batch to ``owner``'s struct and forwards its bytes.

    ``general(update)`` applies a root update the node's usual way (True if it
    changed what is on disk); ``persistent(key)`` records a forwarded change of
    ``key`` for the disk (True if the key is persistent).
    """

    def __init__(self, owner: StructOwner, general: Callable[[Any], bool],
                 persistent: Callable[[str], bool]):
        self._owner, self._general, self._persistent = owner, general, persistent

    def apply(self, batch: Batch) -> tuple[bool, list[str]]:
        """Whether a persistent dataset changed, and why each refused update was."""
        owner = self._owner
        durable, refused, touched = False, [], set()
        run_key, run_first, run_count = None, 0, 0  # forwarded updates not yet queued
        for index, update in enumerate(batch.updates):
            key = self._accept(update, refused)
            if run_count and key == run_key:
                run_count += 1
                continue
            if run_count:
                owner.queue_packed(run_key, batch.packed(run_first, run_count), run_count)
            run_key, run_first, run_count = key, index, 0
            if key is _ROOT:  # after what came before it, before what follows
                durable = self._root(update, refused) or durable
            elif key is not None:
                run_count = 1
                touched.add(key)
        if run_count:
            owner.queue_packed(run_key, batch.packed(run_first, run_count), run_count)
        for key in touched:
            durable = self._persistent(key) or durable
        return durable, refused

    def _accept(self, update: Any, refused: list[str]) -> Any:
        """Apply a change inside a value and return its dataset; :data:`_ROOT` for a
        root update (not applied yet); None if refused."""
        data = self._owner.data
        try:
            key = check_value_update(data, update)
            if key is None:
                return _ROOT
            apply_value_update(data, key, update)
            return key
        except REFUSED as exc:
            refused.append(f"{type(exc).__name__}: {exc}")
            return None

    def _root(self, update: Any, refused: list[str]) -> bool:
        try:
            return self._general(update)
        except REFUSED as exc:
            refused.append(f"{type(exc).__name__}: {exc}")
            return False
