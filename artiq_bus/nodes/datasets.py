"""The datasets node: owns the ``datasets`` struct, keeps persistent datasets on disk.

The struct is ARTIQ's data model: dataset name → ``(persist, value, metadata)``.
Persistent datasets live in an LMDB file (``--dataset-db``, ARTIQ 8's format, see
:mod:`artiq_bus.storage.dataset_db`), loaded at start.

Service ``datasets``:

==============================================  ======================================
``get(key)``, ``get_metadata(key)``             read one dataset (KeyError if none)
``set(key, value, persist=None, metadata=None)``  create or replace; ``None`` keeps the
                                                existing flag / metadata (or False/{})
``delete(key)``                                 remove (KeyError if none)
``update(update)``                              apply one struct update (ARTIQ's
                                                ``update(mod)``, used by dashboards)
``apply_updates(updates)``                      apply a list of struct updates in
                                                order: workers send their batches here
                                                one-way
``snapshot``, ``version``                       the replicated struct (protocol §6)
==============================================  ======================================

Durability: a call that changes a persistent dataset (or makes one non-persistent)
replies only once the change is committed and synced.  Updates sent one-way are
committed without anyone waiting; a worker ends each stage with a *call* of
``apply_updates`` (the last batch), so a run's persistent changes are on disk before
its stage reply reaches the scheduler.

Accepted updates (anything else is refused with a clear error, nothing changes):
``setitem``/``delitem`` at the root (path ``[]``; a setitem's value must be a
``(persist: bool, value, metadata: dict)`` triple), and any update inside a dataset's
value (path ``[key, 1, ...]``).  In a batch, a refused update is skipped, the others
are applied, and the call fails at the end saying how many were refused and why.  A
``setitems`` (a run of ``mutate_dataset`` calls) is applied item by item, each as the
``setitem`` it stands for (:mod:`.dataset_batches`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable
from typing import Any, Final

import numpy as np

from ..protocol import EncodeError, ProtocolError, pack
from ..protocol import updates as mods
from ..runtime.bus import BusConnection
from ..runtime.service import ServiceHost
from ..runtime.rpc import decode_arguments, packed_rpc, rpc, rpc_methods
from ..runtime.structs import StructOwner, struct_methods
from ..storage import DatasetStore, GroupCommitter, StorageError
from ..storage.dataset_db import Frozen, freeze
from .dataset_batches import (REFUSED, BatchApplier, ItemsRefused, apply_value_items,
                              check_value_update, decode_batch, refusal)
from .errors import NodeConfigError

__all__ = ["DatasetsNode", "DATASETS_SERVICE", "DATASETS_STRUCT"]

logger = logging.getLogger(__name__)

DATASETS_SERVICE = "datasets"
DATASETS_STRUCT = "datasets"

#: Positions in a ``(persist, value, metadata)`` entry.
PERSIST: Final = 0
VALUE: Final = 1
METADATA: Final = 2

_SETITEM = mods.UpdateAction.SETITEM.value
_SETITEMS = mods.UpdateAction.SETITEMS.value
_ROOT_ACTIONS = frozenset({_SETITEM, mods.UpdateAction.DELITEM.value})

Entry = tuple[bool, Any, dict[str, Any]]


class DatasetsNode:
    """Serves the datasets, publishes their changes, stores the persistent ones."""

    services: tuple[str, ...] = (DATASETS_SERVICE,)

    def __init__(self, dataset_db: str):
        # Opened and read at construction: an unreadable file stops the master at once.
        try:
            self._store = DatasetStore(dataset_db)
            stored = self._store.load()
        except StorageError as exc:
            raise NodeConfigError(str(exc)) from None
        self._initial: dict[str, Entry] = {key: (True, value, metadata)
                                           for key, (value, metadata) in stored.items()}
        self._persistent: set[str] = set(self._initial)
        self._owner: StructOwner | None = None
        self._committer: GroupCommitter | None = None
        self._host: ServiceHost | None = None
        self._batches: BatchApplier | None = None
        logger.info("datasets: %d persistent datasets loaded from %s", len(stored), dataset_db)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset-db", default="dataset_db.mdb",
                            help="persistent datasets (LMDB file, ARTIQ 8's format; "
                                 "default: %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DatasetsNode":
        return cls(args.dataset_db)

    async def start(self, bus: BusConnection) -> None:
        self._owner = StructOwner(DATASETS_STRUCT, bus.publisher, self._initial)
        self._initial = {}
        await self._owner.start()
        self._committer = GroupCommitter(self._store, self._frozen)
        self._batches = BatchApplier(self._owner, self._apply, self._persisted)
        self._host = bus.service(DATASETS_SERVICE,
                                 {**rpc_methods(self), **struct_methods(self._owner)})
        await self._host.start()

    async def stop(self) -> None:
        if self._host is not None:
            await self._host.stop()
        if self._committer is not None:
            await self._committer.close()
        if self._owner is not None:
            await self._owner.stop()
        self._store.close()

    @property
    def data(self) -> dict[str, Entry]:
        assert self._owner is not None
        return self._owner.data

    # -- reading ----------------------------------------------------------------------

    def _entry(self, key: Any) -> Entry:
        try:
            return self.data[key]
        except (KeyError, TypeError):
            raise KeyError(f"no dataset {key!r}") from None

    @rpc
    def get(self, key: str) -> Any:
        return self._entry(key)[VALUE]

    @rpc
    def get_metadata(self, key: str) -> dict[str, Any]:
        return self._entry(key)[METADATA]

    # -- changing ---------------------------------------------------------------------

    @rpc
    def set(self, key: str, value: Any, persist: bool | None = None,
            metadata: dict[str, Any] | None = None) -> Awaitable[None] | None:
        """Create or replace dataset ``key``; returns once a persistent change is on disk."""
        old = self.data.get(key) if isinstance(key, str) else None
        if persist is None:
            persist = old[PERSIST] if old is not None else False
        if metadata is None:
            metadata = old[METADATA] if old is not None else {}
        return self._finish(self._apply(mods.setitem([], key, (persist, value, metadata))),
                            [])

    @rpc
    def delete(self, key: str) -> Awaitable[None] | None:
        self._entry(key)
        return self._finish(self._apply(mods.delitem([], key)), [])

    @rpc
    def update(self, update: dict[str, Any]) -> Awaitable[None] | None:
        """Apply one struct update (ARTIQ's ``update(mod)``)."""
        try:
            durable = self._apply(update)
        except ItemsRefused as exc:
            if not exc.durable:
                raise exc.plain() from None
            assert self._committer is not None
            return _after(self._committer.durable(), exc.plain())  # applied items stored
        return self._finish(durable, [])

    @packed_rpc
    def apply_updates(self, body: Any, buffers: list[Any]) -> Awaitable[None] | None:
        """Apply struct updates in order (a worker's batch; see the module doc): the
        arguments ``(updates)``, packed.  A plain batch is forwarded to subscribers as
        received (:mod:`.dataset_batches`)."""
        batch = None if buffers else decode_batch(body)
        if batch is None:
            args, kwargs = decode_arguments(body, buffers)
            return self._apply_updates(*args, **kwargs)
        assert self._batches is not None
        durable, refused = self._batches.apply(batch)
        return self._finish(durable, refused, len(batch))

    def _apply_updates(self, updates: list[Any]) -> Awaitable[None] | None:
        if not isinstance(updates, list):
            raise TypeError(f"apply_updates takes a list of updates, not "
                            f"{type(updates).__name__}")
        durable = False
        refused: list[str] = []
        for update in updates:
            try:
                durable = self._apply(update) or durable
            except REFUSED as exc:
                refused.append(refusal(exc))
                if isinstance(exc, ItemsRefused):  # partly applied: stored all the same
                    durable = exc.durable or durable
        return self._finish(durable, refused, len(updates))

    def _apply(self, update: Any) -> bool:
        """Check and apply one update; whether it changed what is on disk."""
        assert self._owner is not None
        key = _check_update(self.data, update, self._store.max_key_bytes)
        if update["action"] == _SETITEMS:
            return self._apply_items(key, update)
        try:
            self._owner.update(update)
        except (ProtocolError, EncodeError) as exc:  # the sender's mistake, not the bus's
            raise ValueError(f"dataset {key!r}: {exc}") from None
        return self._persisted(key)

    def _apply_items(self, key: str, update: dict[str, Any]) -> bool:
        """Apply a checked ``setitems`` item by item and publish it (the dataset as it
        now is if some items were refused, or if it holds arrays sent out of band);
        whether it changed what is on disk."""
        assert self._owner is not None
        try:
            body, buffers = pack(update)  # first: a value that cannot be sent changes nothing
        except EncodeError as exc:
            raise ValueError(f"dataset {key!r}: {exc}") from None
        try:
            apply_value_items(self.data, key, update)
        except ItemsRefused as exc:
            if exc.applied:
                self._owner.setitem(key, self.data[key])
                exc.durable = self._persisted(key)
            raise
        if buffers:  # frames would have to be frozen: the owner's general path does it
            self._owner.setitem(key, self.data[key])
        else:
            self._owner.queue_packed(key, body, 1)
        return self._persisted(key)

    def _persisted(self, key: str) -> bool:
        """Record a change of ``key`` for the disk: whether it changed what is there."""
        entry = self.data.get(key)
        if entry is not None and entry[PERSIST]:
            self._persistent.add(key)
        elif key in self._persistent:
            self._persistent.discard(key)
        else:
            return False
        assert self._committer is not None
        self._committer.mark(key)
        return True

    def _finish(self, durable: bool, refused: list[str],
                total: int = 1) -> Awaitable[None] | None:
        """The reply: wait for the disk if needed, then report refused updates."""
        error = None
        if refused:
            error = ValueError(f"{len(refused)} of {total} dataset updates refused; "
                               f"first: {refused[0]}")
        if not durable:
            if error is not None:
                raise error
            return None
        assert self._committer is not None
        return _after(self._committer.durable(), error)

    def _frozen(self, key: str) -> Frozen:
        """What the store must hold for ``key`` now (None: nothing)."""
        entry = self.data.get(key)
        if entry is None or not entry[PERSIST]:
            return None
        return freeze(entry[VALUE], entry[METADATA])


async def _after(durable: Awaitable[None], error: Exception | None) -> None:
    await durable
    if error is not None:
        raise error


# -- checking updates from the wire -----------------------------------------------------

def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"a dataset name must be a non-empty str, not {key!r:.80}")
    if "\0" in key:
        raise ValueError("a dataset name cannot contain NUL")
    return key


def _check_entry(key: str, entry: Any, max_key_bytes: int) -> Entry:
    if not isinstance(entry, (tuple, list)) or len(entry) != 3:
        raise TypeError(f"dataset {key!r}: an entry is (persist, value, metadata), not "
                        f"{type(entry).__name__}")
    persist, value, metadata = entry
    if not isinstance(persist, (bool, np.bool_)):
        raise TypeError(f"dataset {key!r}: persist must be a bool, not "
                        f"{type(persist).__name__}")
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise TypeError(f"dataset {key!r}: metadata must be a dict with str keys")
    if persist and len(key.encode()) > max_key_bytes:
        raise ValueError(f"dataset {key[:40]!r}...: a persistent dataset's name is at most "
                         f"{max_key_bytes} bytes")
    # A read-only array is stored as it is: a change copies it first (apply_update).
    return (bool(persist), value, metadata)


def _check_update(data: dict[str, Entry], update: Any, max_key_bytes: int) -> str:
    """The dataset ``update`` changes; raises if it is not an accepted update
    (module doc).  Normalises a root setitem's entry in place."""
    key = check_value_update(data, update)
    if key is not None:
        return key
    action = update.get("action")
    if action not in _ROOT_ACTIONS:
        raise ValueError(f"update {action!r:.40} at the root: only setitem and delitem")
    key = _check_key(update.get("key"))
    if action == _SETITEM:
        update["value"] = _check_entry(key, update.get("value"), max_key_bytes)
    elif key not in data:
        raise KeyError(f"no dataset {key!r}")
    return key
