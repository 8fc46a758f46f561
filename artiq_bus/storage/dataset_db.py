"""Persistent datasets in LMDB, in ARTIQ 8's file format, written by group commit.

The file (``dataset_db.mdb`` and ``dataset_db.mdb-lock``) is what ARTIQ 8's master
writes: ``lmdb.open(path, subdir=False)``, one record per persistent dataset, the key its
UTF-8 name, the value the UTF-8 PYON v2 text of ``(value, metadata)``.  Either master
reads the other's file; PYON v1 values (older ARTIQ) are read too.

Durability: every commit is synced to disk before it is reported done (LMDB's default
``sync=True``), so a change is never lost once its writer was told it is stored.
:class:`GroupCommitter` runs commits on a thread of their own, never on the event
loop, and puts every change made while one commit runs into the next one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Callable
from typing import Any

import lmdb

from .. import pyon
from ..protocol import pack, unpack
from .errors import StorageError

__all__ = ["DatasetStore", "GroupCommitter", "MAP_SIZE"]

logger = logging.getLogger(__name__)

#: Largest size the file may grow to (LMDB reserves address space, not disk).
MAP_SIZE = 2**36

#: A frozen change: the packed ``(value, metadata)`` and its buffers, or None (delete).
Frozen = tuple[bytes, list[bytes]] | None


class DatasetStore:
    """The LMDB file of persistent datasets (blocking: use from one thread at a time)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        try:
            self._env = lmdb.open(self.path, subdir=False, map_size=MAP_SIZE, max_dbs=0)
        except lmdb.Error as exc:
            raise StorageError(f"cannot open dataset database {self.path}: {exc}") from None

    @property
    def max_key_bytes(self) -> int:
        return int(self._env.max_key_size())

    def load(self) -> dict[str, tuple[Any, dict[str, Any]]]:
        """Every stored dataset: name → (value, metadata).  A record that does not
        decode is logged and skipped: one bad record must not stop the master."""
        datasets: dict[str, tuple[Any, dict[str, Any]]] = {}
        with self._env.begin() as txn:
            for raw_key, raw_value in txn.cursor():
                key = bytes(raw_key).decode("utf-8", errors="replace")
                try:
                    datasets[key] = _decode_record(bytes(raw_value))
                except (ValueError, TypeError) as exc:
                    logger.error("datasets: stored dataset %r cannot be read, skipped: %s",
                                 key, exc)
        return datasets

    def write(self, changes: dict[str, Frozen]) -> dict[str, str]:
        """Store (or delete, for None) each dataset in one synced commit; the keys that
        could not be encoded, with why (the others are committed)."""
        failed: dict[str, str] = {}
        try:
            with self._env.begin(write=True) as txn:
                for key, frozen in changes.items():
                    raw_key = key.encode()
                    if frozen is None:
                        txn.delete(raw_key)
                        continue
                    try:
                        record = _encode_record(frozen)
                    except (TypeError, ValueError) as exc:
                        failed[key] = f"{type(exc).__name__}: {exc}"
                        continue
                    txn.put(raw_key, record)
        except lmdb.Error as exc:
            raise StorageError(f"dataset database {self.path}: commit failed: {exc}") from None
        return failed

    def close(self) -> None:
        self._env.close()


def _encode_record(frozen: tuple[bytes, list[bytes]]) -> bytes:
    value, metadata = unpack(*frozen)
    return pyon.encode((value, metadata)).encode()


def _decode_record(raw: bytes) -> tuple[Any, dict[str, Any]]:
    record = pyon.decode(raw)
    if not (isinstance(record, tuple) and len(record) == 2 and isinstance(record[1], dict)):
        raise ValueError(f"not a (value, metadata) pair: {type(record).__name__}")
    return record[0], record[1]


def freeze(value: Any, metadata: dict[str, Any]) -> tuple[bytes, list[bytes]]:
    """``(value, metadata)`` packed, its out-of-band buffers copied: later changes to
    the live value cannot reach a commit in progress (cost: about one copy)."""
    body, buffers = pack((value, metadata))
    return body, [bytes(buffer) for buffer in buffers]


class GroupCommitter:
    """Commits changed datasets to a :class:`DatasetStore` on one thread, in groups.

    :meth:`mark` records that keys changed; :meth:`durable` waits until everything
    marked so far is on disk.  Values are read (through ``read``) when their commit
    starts, so a key changed many times during one commit is written once.
    """

    def __init__(self, store: DatasetStore, read: Callable[[str], Frozen]):
        self._store, self._read = store, read
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="dataset-db")
        self._dirty: set[str] = set()
        self._next: list[asyncio.Future[None]] = []     # wait for the next commit
        self._current: list[asyncio.Future[None]] = []  # wait for the running one
        self._task: asyncio.Task[None] | None = None
        self.commits = 0

    def mark(self, key: str) -> None:
        self._dirty.add(key)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._commit_all())

    def durable(self) -> asyncio.Future[None]:
        """A future done when every change marked so far is committed (its exception
        if that commit failed)."""
        future = asyncio.get_running_loop().create_future()
        if self._dirty:
            self._next.append(future)
        elif self._task is not None:
            self._current.append(future)
        else:
            future.set_result(None)
        return future

    async def _commit_all(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._dirty:
                dirty, self._dirty = self._dirty, set()
                self._current, self._next = self._next, []
                changes = {key: self._read(key) for key in dirty}
                error: Exception | None = None
                try:
                    failed = await loop.run_in_executor(self._executor, self._store.write,
                                                        changes)
                    self.commits += 1
                    if failed:
                        error = StorageError("cannot store " + "; ".join(
                            f"dataset {key!r}: {why}" for key, why in failed.items()))
                except StorageError as exc:
                    error = exc
                if error is not None:
                    logger.error("datasets: %s", error)
                self._settle(self._current, error)
                self._current = []
        finally:
            self._task = None

    @staticmethod
    def _settle(waiters: list[asyncio.Future[None]], error: Exception | None) -> None:
        for future in waiters:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def close(self) -> None:
        """Commit what is pending, then stop the thread."""
        if self._task is not None:
            await asyncio.shield(self._task)
        self._executor.shutdown(wait=True)
