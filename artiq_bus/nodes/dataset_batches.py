"""A worker's batch of dataset updates, applied and forwarded without packing it again.

Workers send ``datasets.apply_updates`` one-way, with the body ``[[update, ...], {}]``:
hundreds of ``mutate_dataset`` updates a message.  The node must decode each update
(to check it and apply it to its struct), but it need not pack it again for
subscribers: an accepted change inside a value (path ``[name, 1, ...]``) is published
as the very bytes the worker sent (:meth:`StructOwner.queue_packed`), consecutive
updates of one dataset as one slice.  Packing them again would cost as much as all the
rest.
A ``setitems`` update (a run of ``mutate_dataset`` calls) is applied item by item, each
as the ``setitem`` it stands for: an item that does not fit is refused and the others
applied; subscribers then get the dataset as it now is instead of the update
(:class:`ItemsRefused`, rare: a worker checks each write before sending it).

Root updates (``setitem``/``delitem`` at path ``[]``: a dataset created, replaced or
deleted) go through the node's general path, in their place in the batch: their entry
is normalised (a tuple, a ``bool`` flag) before it is stored and published.  An update
that does not decode is refused like any other bad update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from numpy import ndarray

from ..protocol import (EncodeError, ProtocolError, UpdateAction, apply_update, body_ends,
                        msgpack_array_header, unpack)
from ..protocol.updates import check_items, thaw, walk
from ..runtime.structs import StructOwner

__all__ = ["Batch", "BatchApplier", "ItemsRefused", "decode_batch", "check_value_update",
           "apply_value_update", "apply_value_items", "refusal", "CHUNK", "REFUSED", "VALUE"]

#: Position of the value in a ``(persist, value, metadata)`` entry.
VALUE = 1
#: Updates decoded at once, and at most forwarded in one slice.  A whole large batch
#: decoded at once would outlive several garbage collections (each then costs more)
#: and make large messages, which subscribers decode at once too.
CHUNK = 256
#: What a refused update raises (reported to the sender, never fatal).
REFUSED = (ProtocolError, EncodeError, KeyError, IndexError, TypeError, ValueError, AttributeError,
           OverflowError)

_SETITEM = UpdateAction.SETITEM.value
_SETITEMS = UpdateAction.SETITEMS.value
#: What :meth:`BatchApplier._accept` says of a root update.
_ROOT = object()
_VALUE_ACTIONS = frozenset(a.value for a in UpdateAction if a is not UpdateAction.INIT)
#: msgpack markers: a 2-array, a 1-array, an empty map (``[[...], {}]``), array headers
_PAIR, _SINGLE, _NO_KWARGS = 0x92, 0x91, 0x80
_FIXARRAY, _ARRAY16, _ARRAY32 = 0x90, 0xDC, 0xDD


class Batch:
    """The updates of one ``apply_updates`` body, packed one after another in
    ``region`` (``ends``: where each one ends), decoded a chunk at a time."""

    def __init__(self, region: memoryview, ends: list[int]):
        self.region, self.ends = region, ends

    def __len__(self) -> int:
        return len(self.ends)

    def packed(self, first: int, count: int) -> memoryview:
        """The bytes of updates ``first`` to ``first + count - 1``."""
        start = self.ends[first - 1] if first else 0
        return self.region[start:self.ends[first + count - 1]]

    def chunks(self) -> Iterator[tuple[int, list[Any]]]:
        """``(index of the first, updates)``, :data:`CHUNK` updates at a time.  An
        update that does not decode is the ProtocolError that says why."""
        for first in range(0, len(self.ends), CHUNK):
            count = min(CHUNK, len(self.ends) - first)
            try:
                yield first, unpack(b"".join((msgpack_array_header(count),
                                              self.packed(first, count))))
            except ProtocolError:
                yield first, [self._decode_one(index) for index in range(first, first + count)]

    def _decode_one(self, index: int) -> Any:
        try:
            return unpack(self.packed(index, 1))
        except ProtocolError as exc:
            return exc


def decode_batch(body: Any) -> Batch | None:
    """The updates of an ``[[update, ...], {}]`` body (what workers and
    ``Client.call(..., updates)`` send), or None for a body of another shape (the
    caller then decodes it as any request)."""
    view = memoryview(body)
    if len(view) < 4 or view[0] != _PAIR or view[1] != _SINGLE or view[-1] != _NO_KWARGS:
        return None
    marker = view[2]
    if _FIXARRAY <= marker < _FIXARRAY + 16:
        count, start = marker - _FIXARRAY, 3
    elif marker == _ARRAY16:
        count, start = int.from_bytes(view[3:5], "big"), 5
    elif marker == _ARRAY32:
        count, start = int.from_bytes(view[3:7], "big"), 7
    else:
        return None
    region = view[start:-1]
    try:
        return Batch(region, body_ends(region, count))
    except ProtocolError:
        return None  # not that shape after all (a kwargs map ends with 0x80 too)


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


class ItemsRefused(ValueError):
    """Items of a ``setitems`` update refused; ``applied`` others were applied (then
    the dataset changed: publish it whole), ``durable`` whether that changed what is
    on disk (the node sets it).  Callers see a ValueError (:meth:`plain`)."""

    def __init__(self, message: str, applied: int):
        super().__init__(message)
        self.applied = applied
        self.durable = False

    def plain(self) -> ValueError:
        return ValueError(str(self))


def refusal(exc: Exception) -> str:
    """How a refused update is reported: its error's type (as callers see it) and
    message."""
    name = "ValueError" if isinstance(exc, ItemsRefused) else type(exc).__name__
    return f"{name}: {exc}"


def apply_value_items(data: dict[str, Any], key: str, update: dict[str, Any]) -> None:
    """Apply a checked ``setitems`` inside dataset ``key``'s value, each key and value
    as the ``setitem`` it stands for.  Raises a refusal type if none can be tried
    (nothing changed), :class:`ItemsRefused` if some did not fit."""
    keys: Any = update.get("keys")  # lists, once checked
    values: Any = update.get("values")
    try:
        check_items(keys, values)
        container = walk(data, update["path"])
    except REFUSED as exc:
        raise ValueError(f"dataset {key!r}: update does not apply: "
                         f"{type(exc).__name__}: {exc}") from None
    failed, first = 0, ""
    for position, (index, value) in enumerate(zip(keys, values)):
        try:
            container[index] = value
        except REFUSED as exc:
            if not failed:
                first = f"item {position}: {type(exc).__name__}: {exc}"
            failed += 1
    if failed:
        raise ItemsRefused(f"dataset {key!r}: {failed} of {len(keys)} setitems items "
                           f"refused; first: {first}", len(keys) - failed)


def _mutated(data: dict[str, Any], update: Any) -> str | None:
    """``mutate_dataset``'s update (setitem at ``[name, 1]`` of an existing dataset)
    checked and applied in one go, its dataset returned; None for any other update
    (nothing done).  The hot path: the same checks as :func:`check_value_update`,
    without its calls."""
    if type(update) is not dict or update.get("action") != _SETITEM:
        return None
    path = update.get("path")
    if type(path) is not list or len(path) != 2 or type(path[1]) is not int or path[1] != VALUE:
        return None
    key = path[0]
    entry = data.get(key) if type(key) is str else None
    if entry is None:
        return None
    value = entry[VALUE]
    if isinstance(value, ndarray) and not value.flags.writeable:
        value = thaw(data, path)  # in flight (sent without a copy): change a copy
    value[update["key"]] = update["value"]
    return key


class _Changed:
    """What :meth:`BatchApplier._accept` says of a partly refused ``setitems``."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key


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
        durable = False
        refused: list[str] = []
        touched: set[str] = set()
        for first, updates in batch.chunks():
            durable = self._apply_chunk(batch, first, updates, refused, touched) or durable
        for key in touched:
            durable = self._persistent(key) or durable
        return durable, refused

    def _apply_chunk(self, batch: Batch, first: int, updates: list[Any], refused: list[str],
                     touched: set[str]) -> bool:
        """Apply decoded updates ``first``, ``first + 1``, ...; forward runs of
        accepted changes to one dataset, each as one slice of the batch."""
        durable, queue = False, self._owner.queue_packed
        run_key, run_first, run_count = None, first, 0
        for index, update in enumerate(updates, first):
            key = self._accept(update, refused)
            if run_count and key == run_key:
                run_count += 1
                continue
            if run_count:
                queue(run_key, batch.packed(run_first, run_count), run_count)
            run_key, run_first, run_count = key, index, 0
            if key is _ROOT:  # after what came before it, before what follows
                durable = self._root(update, refused) or durable
            elif type(key) is _Changed:  # partly applied: publish the dataset as it is
                self._owner.setitem(key.key, self._owner.data[key.key])
                touched.add(key.key)
            elif key is not None:
                run_count = 1
                touched.add(key)
        if run_count:
            queue(run_key, batch.packed(run_first, run_count), run_count)
        return durable

    def _accept(self, update: Any, refused: list[str]) -> Any:
        """Apply a change inside a value and return its dataset; :data:`_ROOT` for a
        root update (not applied yet); None if refused."""
        data = self._owner.data
        try:
            key = _mutated(data, update)
            if key is not None:
                return key
            if isinstance(update, ProtocolError):
                raise update  # it did not decode
            key = check_value_update(data, update)
            if key is None:
                return _ROOT
            if update["action"] == _SETITEMS:
                apply_value_items(data, key, update)
            else:
                apply_value_update(data, key, update)
            return key
        except REFUSED as exc:
            refused.append(refusal(exc))
            if isinstance(exc, ItemsRefused) and exc.applied and key is not None:
                return _Changed(key)
            return None

    def _root(self, update: Any, refused: list[str]) -> bool:
        try:
            return self._general(update)
        except REFUSED as exc:
            refused.append(refusal(exc))
            return False
