"""What an experiment in a worker reaches over the bus: the ``scheduler`` and ``ccb``
virtual devices, and the master's datasets."""

from __future__ import annotations

import collections
import itertools
import logging
import operator
import random
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ..language.core import TerminationRequested
from ..protocol import (VERSION, BusError, EncodeError, NoSuchService, RemoteError,
                        msgpack_array_header, pack, stream_topic, top_key)
from .errors import RunDeletedWhilePaused
from .snapshots import SnapshotPool

if TYPE_CHECKING:
    from .process import WorkerBus

__all__ = ["BusScheduler", "BusCCB", "BusDatasetBackend", "WAIT_FOREVER_S"]

logger = logging.getLogger(__name__)

#: The scheduler's answer to pause() when the run is being deleted (its error's name).
_RUN_DELETED = "RunDeleted"
#: Calls that wait for a person or for other runs (pause, interactive arguments).
WAIT_FOREVER_S = 30 * 24 * 3600.0
#: While a run streams dataset updates, its bus thread sends them this often: the first
#: update after a pause leaves at once, the rest at most this much later, in batches.
BATCH_WINDOW_S = 0.001
#: A batch is at most about this large (the master applies one in one go).  Not much
#: smaller: the bus thread gives the GIL up at every frame it sends, and while the
#: experiment computes it gets it back only after the switch interval (5 ms).
BATCH_MAX_BYTES = 256 * 1024
#: Position of the value in a ``(persist, value, metadata)`` dataset entry.
VALUE = 1
#: How long the end of a stage may wait for its dataset updates to be applied and stored.
SYNC_TIMEOUT_S = 120.0


class BusScheduler:
    """The ``scheduler`` virtual device: this run's identity and the master's scheduler."""

    def __init__(self, bus: WorkerBus, rid: int, pipeline_name: str, priority: int,
                 expid: dict[str, Any]):
        self._bus = bus
        self.rid, self.pipeline_name, self.priority, self.expid = (rid, pipeline_name,
                                                                   priority, expid)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._bus.call("scheduler", method, *args, **kwargs)

    def pause(self) -> None:
        """Let more important runs go first; raises TerminationRequested if asked to stop."""
        try:
            terminate = self._bus.call("scheduler", "pause", self.rid,
                                       timeout_s=WAIT_FOREVER_S)
        except RemoteError as exc:
            if exc.remote_type == _RUN_DELETED:
                raise RunDeletedWhilePaused(f"RID {self.rid} was deleted") from None
            raise
        if terminate:
            raise TerminationRequested

    def check_pause(self, rid: int | None = None) -> bool:
        return bool(self._call("check_pause", self.rid if rid is None else rid))

    def check_termination(self, rid: int | None = None) -> bool:
        return bool(self._call("check_termination", self.rid if rid is None else rid))

    def submit(self, pipeline_name: str | None = None, expid: dict[str, Any] | None = None,
               priority: int | None = None, due_date: float | None = None,
               flush: bool = False) -> int:
        return self._call("submit", self.pipeline_name if pipeline_name is None else pipeline_name,
                          self.expid if expid is None else expid,
                          self.priority if priority is None else priority, due_date, flush)

    def delete(self, rid: int) -> None:
        self._call("delete", rid)

    def request_termination(self, rid: int) -> None:
        self._call("request_termination", rid)

    def get_status(self) -> dict[int, Any]:
        return self._call("get_status")


class BusCCB:
    """The ``ccb`` virtual device: client control broadcasts on the ``ccb`` stream."""

    def __init__(self, bus: WorkerBus):
        self._bus = bus
        self._epoch = random.getrandbits(62)
        self._seq = 0

    def issue(self, service: str, *args: Any, **kwargs: Any) -> None:
        self._seq += 1
        body, buffers = pack([self._epoch, self._seq,
                              [{"service": service, "args": list(args), "kwargs": kwargs}]])
        self._bus.publish([stream_topic("ccb"), VERSION, body, *buffers])


#: Values and indices of element writes that can wait to be packed by the bus thread:
#: immutable (a later change cannot reach them) and always packable (ints checked for
#: range).  Anything else is packed at once, as an update of its own.
_SCALARS = frozenset({int, float, bool, complex, type(None)}
                     | {np.dtype(code).type for code in "?bhilqBHILQefdFD"})
_INDICES = frozenset({int} | {np.dtype(code).type for code in "bhilqBHILQ"})
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1
#: Items in one ``setitems`` update at most (the master and replicas decode one at once).
MAX_RUN_ITEMS = 1024
#: Updates packed together by one call at most (the bus thread holds the GIL meanwhile).
GROUP_UPDATES = 1024
#: The parts of a queued element write ``(name, index, value)``.
_NAME_OF, _INDEX_OF, _VALUE_OF = (operator.itemgetter(i) for i in range(3))


class BusDatasetBackend:
    """The master's datasets, for a run's DatasetManager: reads are calls, updates are
    batched one-way messages to ``datasets.apply_updates``, in order.

    Each update is packed at once in the experiment's thread (so later changes to a
    value cannot reach an update already made; large arrays are copied once, into
    reused memory: :mod:`.snapshots`) and
    queued; the bus thread takes everything queued when it next runs, so batches grow
    exactly as long as the bus thread is busy.  An update carrying out-of-band frames
    (a large array) travels in a message of its own.  :meth:`sync` (end of each stage)
    sends the last batch as a call and waits for its reply: every update of the stage
    is then applied, and persistent ones committed, before the stage's reply.

    Element writes (``mutate_dataset``) with an immutable scalar value and an integer
    index are the exception: they are queued as ``(name, index, value)``, unpacked, and
    the bus thread packs each run of consecutive ones to one dataset as one
    ``setitems`` update (a lone one as a ``setitem``), so that the master and every
    subscriber handle one update per run, not one per call.  Order is kept: a run
    ends at any other update.
    """

    def __init__(self, bus: WorkerBus, service: str = "datasets"):
        self._bus = bus
        self._service = service
        #: packed updates (bytes), (bytes, buffers) for those with frames, and element
        #: writes (name, index, value); appended by the experiment thread, popped by the
        #: bus thread (deque: no lock needed)
        self._queue: collections.deque[Any] = collections.deque()
        self._scheduled = False
        self._unsynced = False
        self._sync_lock = threading.Lock()
        self._snapshots = SnapshotPool()

    def _read(self, method: str, key: str) -> Any:
        try:
            return self._bus.call(self._service, method, key)
        except NoSuchService:
            raise KeyError(f"dataset {key!r}: the master has no dataset service") from None
        except KeyError:
            raise KeyError(key) from None  # as ARTIQ raises it (not a RemoteError)

    def get(self, key: str) -> Any:
        return self._read("get", key)

    def get_metadata(self, key: str) -> dict[str, Any]:
        return self._read("get_metadata", key)

    def update(self, mod: dict[str, Any]) -> None:
        """Queue one struct update (experiment thread).  A value that cannot be sent
        raises TypeError here, in the experiment, and nothing is queued."""
        try:
            body, buffers = pack(mod)
        except EncodeError as exc:
            raise TypeError(f"dataset {top_key(mod)!r} cannot be broadcast: {exc}") from None
        if buffers:  # the snapshot of each large array, sent as it is
            self._queue.append((body, [self._snapshots.copy(buffer) for buffer in buffers]))
        else:
            self._queue.append(body)
        self._unsynced = True
        self._wake()

    def mutate(self, key: str, index: Any, value: Any) -> None:
        """Queue ``dataset[index] = value`` (experiment thread), unpacked when it can
        wait to be packed (see the class doc)."""
        kind, index_kind = type(value), type(index)
        if (kind not in _SCALARS or index_kind not in _INDICES
                or (kind is int and not _INT_MIN <= value <= _INT_MAX)
                or (index_kind is int and not _INT_MIN <= index <= _INT_MAX)):
            self.update({"action": "setitem", "path": [key, VALUE], "key": index,
                         "value": value})
            return
        self._queue.append((key, index, value))
        self._unsynced = True
        if not self._scheduled:
            self._wake()

    def _wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._bus.loop.call_soon_threadsafe(self._drain)

    def _batches(self) -> list[tuple[bytes, list[Any]]]:
        """Everything queued, as message bodies ``[[updates], {}]`` and their frames."""
        queue, bodies, writes = self._queue, _Bodies(), _Writes()
        batches: list[tuple[bytes, list[Any]]] = []
        taken = [queue.popleft() for _ in range(len(queue))]  # what is there now
        # Consecutive writes to one dataset share their first item (its name); a packed
        # update's first item is a byte, or its body: never a name.
        for name, group in itertools.groupby(taken, _NAME_OF):
            if type(name) is str:
                writes.add(name, list(group), bodies, batches)
                continue
            writes.close(bodies, batches)
            for item in group:
                if type(item) is bytes:
                    bodies.add(item, 1, batches)
                else:
                    bodies.close(batches)
                    batches.append((_batch_body([item[0]]), item[1]))
        writes.close(bodies, batches)
        bodies.close(batches)
        return batches

    def _drain(self) -> None:
        """Send what is queued (bus thread), then look again after
        :data:`BATCH_WINDOW_S` while updates keep coming: a stream of updates then
        costs one cross-thread wake-up, not one per batch (each would hand the GIL
        over).  The flag is cleared only when a look finds nothing, before the last
        look, so an update queued after it wakes the bus thread itself."""
        with self._sync_lock:
            batches = self._batches()
            for body, buffers in batches:
                self._send(body, buffers)
        if batches:
            self._bus.loop.call_later(BATCH_WINDOW_S, self._drain)
            return
        self._scheduled = False
        if self._queue:
            self._scheduled = True
            self._drain()

    def sync(self) -> None:
        """Deliver every queued update and wait until the master applied (and, for
        persistent datasets, stored) them (experiment thread)."""
        if not self._unsynced:
            return
        self._unsynced = False
        with self._sync_lock:  # no drain in the bus thread between taking and sending
            batches = self._batches() or [(_batch_body([]), [])]
            for body, buffers in batches[:-1]:
                self._bus.loop.call_soon_threadsafe(self._send, body, buffers)
            future = self._bus.start_call_packed(self._service, "apply_updates",
                                                 *batches[-1], timeout_s=SYNC_TIMEOUT_S)
        try:
            future.result()
        except NoSuchService:
            logger.error("datasets: the master has no dataset service; broadcast "
                         "datasets were not delivered")
        except (BusError, KeyError, ValueError, TypeError) as exc:
            logger.error("datasets: the master refused dataset updates: %s", exc)

    def _send(self, body: bytes, buffers: list[Any]) -> None:
        """Send one batch (bus thread)."""
        try:
            self._bus.link.send_packed(self._service, "apply_updates", body, buffers)
        except BusError as exc:
            logger.error("datasets: %d bytes of dataset updates lost: %s", len(body), exc)


class _Bodies:
    """Packed updates gathered into batches of about :data:`BATCH_MAX_BYTES`."""

    def __init__(self) -> None:
        self.chunks: list[Any] = []  # each one or more packed updates
        self.count = 0
        self.size = 0

    def add(self, chunk: Any, count: int, batches: list[tuple[bytes, list[Any]]]) -> None:
        self.chunks.append(chunk)
        self.count += count
        self.size += len(chunk)
        if self.size >= BATCH_MAX_BYTES:
            self.close(batches)

    def close(self, batches: list[tuple[bytes, list[Any]]]) -> None:
        """End the batch being gathered (if any) and start another."""
        if self.chunks:
            batches.append((_batch_body(self.chunks, self.count), []))
            self.chunks, self.count, self.size = [], 0, 0


class _Writes:
    """Element writes taken from the queue, as updates waiting to be packed together
    (one pack call for many updates): a ``setitems`` per run of consecutive writes to
    one dataset (:data:`MAX_RUN_ITEMS` writes at most), a ``setitem`` for a lone write
    (the master's fast path, and smaller)."""

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []

    def add(self, name: str, run: list[tuple[str, Any, Any]], bodies: _Bodies,
            batches: list[tuple[bytes, list[Any]]]) -> None:
        """Consecutive writes to dataset ``name``, as updates."""
        if len(run) == 1:
            self.updates.append({"action": "setitem", "path": [name, VALUE],
                                 "key": run[0][1], "value": run[0][2]})
        else:
            for start in range(0, len(run), MAX_RUN_ITEMS):
                part = run[start:start + MAX_RUN_ITEMS]
                self.updates.append({"action": "setitems", "path": [name, VALUE],
                                     "keys": list(map(_INDEX_OF, part)),
                                     "values": list(map(_VALUE_OF, part))})
        if len(self.updates) >= GROUP_UPDATES:
            self.close(bodies, batches)

    def close(self, bodies: _Bodies, batches: list[tuple[bytes, list[Any]]]) -> None:
        """Pack the updates gathered (one call, not one per update)."""
        if self.updates:
            body = pack(self.updates)[0]
            bodies.add(memoryview(body)[_array_header_size(len(self.updates)):],
                       len(self.updates), batches)
            self.updates = []


def _array_header_size(count: int) -> int:
    """The size of msgpack's header of an array of ``count`` items."""
    return 1 if count < 16 else 3 if count < 1 << 16 else 5


def _batch_body(chunks: list[Any], count: int | None = None) -> bytes:
    """The body ``[[update, ...], {}]`` from ``count`` packed updates (default: one
    per chunk)."""
    count = len(chunks) if count is None else count
    return b"".join((b"\x92\x91", msgpack_array_header(count), *chunks, b"\x80"))
