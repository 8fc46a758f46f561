"""The experiment side of datasets.

A run keeps three things:

* ``local`` — datasets it set with ``archive=True``: written to the results file
  (HDF5 group ``datasets/``);
* ``archive`` — datasets it read from the master with ``archive=True`` (group
  ``archive/``); the first value read is the one kept;
* ``metadata`` — the metadata of every dataset it set (``archive_metadata``: of those
  in ``archive``, as the master had it; both become HDF5 attributes).

Broadcast datasets are also sent to a :class:`DatasetBackend` (the master's dataset
store) as struct updates of ``key → (persist, value, metadata)``: ``setitem``/``delitem``
at the root, and element changes as ``setitem``/``append`` with ``path=[key, 1]``
(element writes through :meth:`DatasetBackend.mutate`, which may send a run of them as
one ``setitems``).
:class:`LocalDatasetBackend` is the in-process store used by ``artiq_run`` and tests.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any, Final, Protocol

from ..protocol import apply_update
from ..protocol import updates as mods

__all__ = ["DatasetBackend", "DatasetManager", "LocalDatasetBackend", "dataset_index"]

logger = logging.getLogger(__name__)

#: Positions in a ``(persist, value, metadata)`` dataset entry.
VALUE_INDEX: Final = 1
METADATA_INDEX: Final = 2


class DatasetBackend(Protocol):
    """The master's dataset store, as the experiment side sees it."""

    def get(self, key: str) -> Any:
        """The value of dataset ``key`` (KeyError when there is none)."""
        ...

    def get_metadata(self, key: str) -> dict[str, Any]:
        """The metadata of dataset ``key`` (KeyError when there is none)."""
        ...

    def update(self, mod: dict[str, Any]) -> None:
        """Apply one struct update to the store."""
        ...

    def mutate(self, key: str, index: Any, value: Any) -> None:
        """``dataset[index] = value`` of dataset ``key`` in the store (``index`` as
        :func:`dataset_index` made it); the same as a ``setitem`` update at
        ``[key, 1]``, but a backend may send consecutive ones together."""
        ...


def dataset_index(index: Any) -> Any:
    """The index used by ``mutate_dataset``: a tuple of ints is a slice
    (``(1, 5)`` → ``slice(1, 5)``), a tuple of tuples one slice per dimension."""
    if not isinstance(index, tuple):
        return index
    if index and isinstance(index[0], tuple):
        return tuple(slice(*dim) for dim in index)
    return slice(*index)


class DatasetManager:
    """One run's datasets (see the module doc)."""

    def __init__(self, backend: DatasetBackend) -> None:
        self.backend = backend
        #: datasets broadcast in this run: key → (persist, value, metadata)
        self.broadcast: dict[str, tuple[bool, Any, dict[str, Any]]] = {}
        self.local: dict[str, Any] = {}
        self.archive: dict[str, Any] = {}
        self.metadata: dict[str, dict[str, Any]] = {}
        #: metadata of the datasets in ``archive``, as the master had it
        self.archive_metadata: dict[str, dict[str, Any]] = {}

    def set(self, key: str, value: Any, metadata: dict[str, Any] | None = None,
            broadcast: bool = False, persist: bool = False, archive: bool = True) -> None:
        """Create or replace dataset ``key`` (``persist`` implies ``broadcast``)."""
        metadata = dict(metadata or {})
        broadcast = broadcast or persist
        if not (broadcast or archive):
            logger.warning("Dataset '%s' will not be stored. Both 'broadcast' and "
                           "'archive' are set to False.", key)
        if broadcast:
            entry = (persist, value, metadata)
            self.backend.update(mods.setitem([], key, entry))  # first: it may refuse
            self.broadcast[key] = entry
        elif key in self.broadcast:
            # broadcast earlier in this run, now private: the master's copy goes
            del self.broadcast[key]
            self.backend.update(mods.delitem([], key))
        if archive:
            self.local[key] = value
        else:
            self.local.pop(key, None)
        self.metadata[key] = metadata

    def _target(self, key: str, verb: str) -> Any:
        if key in self.broadcast:
            return self.broadcast[key][VALUE_INDEX]
        if key in self.local:
            return self.local[key]
        raise KeyError(f"Cannot {verb} nonexistent dataset '{key}'")

    def mutate(self, key: str, index: Any, value: Any) -> None:
        """``dataset[index] = value``, here and (if broadcast) in the master."""
        entry = self.broadcast.get(key)
        if entry is None:
            self._target(key, "mutate")[dataset_index(index)] = value
            return
        if isinstance(index, tuple):  # the hot path: one check for the common int index
            index = dataset_index(index)
        entry[VALUE_INDEX][index] = value  # first: an index that does not fit raises here
        self.backend.mutate(key, index, value)

    def append_to(self, key: str, value: Any) -> None:
        """``dataset.append(value)``, here and (if broadcast) in the master."""
        target = self._target(key, "append to")
        target.append(value)
        if key in self.broadcast:
            self.backend.update(mods.append([key, VALUE_INDEX], value))

    def get(self, key: str, archive: bool = False) -> Any:
        """This run's own dataset ``key``, else the master's (KeyError if none).

        With ``archive`` a value read from the master is kept for the results file;
        when a key is read again the first value stays (a warning says so).
        """
        if key in self.local:
            return self.local[key]
        value = self.backend.get(key)
        if archive:
            if key in self.archive:
                logger.warning("Dataset '%s' is already in archive, keeping the first "
                               "value read", key)
            else:
                self.archive[key] = value
                self._archive_metadata(key)
        return value

    def _archive_metadata(self, key: str) -> None:
        """The master's metadata of an archived dataset, for the results file."""
        try:
            self.archive_metadata[key] = self.backend.get_metadata(key)
        except KeyError:  # deleted since it was read
            pass

    def get_metadata(self, key: str) -> dict[str, Any]:
        """Metadata of dataset ``key``: this run's own, else the master's."""
        if key in self.metadata:
            return self.metadata[key]
        return self.backend.get_metadata(key)


class LocalDatasetBackend:
    """An in-process dataset store: ``key → (persist, value, metadata)``.

    Updates are copied before they are applied, and values are copied when read, as
    if the store were in another process: what the experiment holds and what the
    store holds never alias.  With ``record`` every applied update is kept in
    ``updates`` (tests inspect them).
    """

    def __init__(self, initial: Mapping[str, tuple[bool, Any, dict[str, Any]]] | None = None,
                 record: bool = False) -> None:
        self.struct: dict[str, Any] = copy.deepcopy(dict(initial or {}))
        self.record = record
        self.updates: list[dict[str, Any]] = []

    def get(self, key: str) -> Any:
        return copy.deepcopy(self.struct[key][VALUE_INDEX])

    def get_metadata(self, key: str) -> dict[str, Any]:
        return copy.deepcopy(self.struct[key][METADATA_INDEX])  # type: ignore[no-any-return]

    def update(self, mod: dict[str, Any]) -> None:
        self.struct = apply_update(self.struct, copy.deepcopy(mod))
        if self.record:
            self.updates.append(copy.deepcopy(mod))

    def mutate(self, key: str, index: Any, value: Any) -> None:
        self.update(mods.setitem([key, VALUE_INDEX], index, value))

    def set(self, key: str, value: Any, persist: bool = False,
            metadata: dict[str, Any] | None = None) -> None:
        """Create or replace a dataset directly (as a dashboard edit would)."""
        self.update(mods.setitem([], key, (persist, value, dict(metadata or {}))))
