"""Owning replicated structs: apply updates, publish them numbered, serve snapshots.

The owner applies each update to its own dict at once and packs it at once (so later
changes to a value cannot leak into an update already made).  Updates are published
when the loop comes round, grouped by root key: one message per key per loop turn (or
sooner, when a key's updates reach :data:`MAX_GROUP_BYTES`), its updates numbered
consecutively in the struct's sequence (see :mod:`artiq_bus.protocol.publications` for
the numbering and the levels).

Large arrays travel without a copy: ZeroMQ sends them from the struct's own memory,
later, from its I/O thread.  So an array packed that way is made read-only, and every
change goes through :func:`~artiq_bus.protocol.apply_update`, which copies a read-only
array before changing it: what is in flight never changes.  A node that changes its
struct's values itself must do the same (:func:`~artiq_bus.protocol.updates.thaw`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from typing import Any

import msgpack
import zmq

from ..net import CurveClient, configure, send_frames
from ..protocol import (VERSION, ProtocolError, apply_update, control_topic, filter_level,
                        freeze_buffers, levels, msgpack_array_header, pack, pack_into,
                        struct_topic, top_key, updates)

__all__ = ["Publisher", "StructOwner", "struct_methods", "MAX_GROUP_BYTES"]

logger = logging.getLogger(__name__)

#: A key's queued updates are published at once when their bodies reach this size:
#: a burst does not become one huge message (subscribers' queues count messages).
MAX_GROUP_BYTES = 64 * 1024


class Publisher:
    """A node's PUB socket into the broker's XSUB.  Never blocks: at its high-water mark
    it drops, and subscribers repair the gap from a snapshot."""

    def __init__(self, context: zmq.Context, endpoint: str, curve: CurveClient | None = None,
                 hwm: int = 100_000):
        self._sock = configure(context.socket(zmq.PUB), sndhwm=hwm)
        if curve is not None:
            curve.apply(self._sock)
        self._sock.connect(endpoint)
        self.dropped = 0

    def send(self, frames: list[Any]) -> None:
        try:
            send_frames(self._sock, frames)
        except zmq.Again:
            self.dropped += 1

    def close(self) -> None:
        self._sock.close()


@dataclasses.dataclass
class _Pending:
    """Packed updates of one root key waiting for the next publication."""

    #: packed updates, one or more per item (``count`` in all), in order
    bodies: list[Any] = dataclasses.field(default_factory=list)
    buffers: list[Any] = dataclasses.field(default_factory=list)
    count: int = 0
    size: int = 0


class StructOwner:
    """The one owner of a replicated struct (a dict with ``str`` or ``int`` root keys)."""

    def __init__(self, name: str, publisher: Publisher,
                 initial: dict[Any, Any] | None = None, heartbeat_interval_s: float = 1.0):
        self.name = name
        self.data: dict[Any, Any] = dict(initial or {})
        self.epoch = random.getrandbits(62)
        self.seq = 0
        self._publisher = publisher
        self._versions: dict[Any, int] = {}
        self._levels: dict[Any, tuple[list[Any], bytes]] = {}
        self._pending: dict[Any, _Pending] = {}
        self._flush_scheduled = False
        self._heartbeat_interval_s = heartbeat_interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._heartbeat(), name=f"struct-{self.name}")

    async def stop(self) -> None:
        self.flush()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- changing the struct ----------------------------------------------------------

    def update(self, update: dict[str, Any]) -> None:
        """Apply an update (:mod:`artiq_bus.protocol.updates`) and queue it for publication.

        Ownership of the values passes to the struct.
        """
        key = top_key(update)
        pending = self._pending_for(key)
        lent = len(pending.buffers)
        body = pack_into(pending.buffers, update)
        try:
            self.data = apply_update(self.data, update)
        except ProtocolError:
            del pending.buffers[lent:]  # refused: its frames go nowhere
            raise
        freeze_buffers(pending.buffers, lent)  # after applying: it may copy (thaw)
        self._queue(key, pending, body, 1)

    def setitem(self, key: Any, value: Any) -> None:
        # The commonest update, and at the root one dict store: no need to walk a path.
        pending = self._pending_for(key)
        lent = len(pending.buffers)
        body = pack_into(pending.buffers, updates.setitem([], key, value))
        self.data[key] = value
        freeze_buffers(pending.buffers, lent)
        self._queue(key, pending, body, 1)

    def queue_packed(self, key: Any, packed: Any, count: int) -> None:
        """Publish ``count`` updates of root key ``key`` that the caller has already
        applied to :attr:`data`, given packed (consecutive msgpack maps, no out-of-band
        frames; bytes or a memoryview, kept until published).  A node that receives
        packed updates forwards them this way instead of packing them again."""
        self._queue(key, self._pending_for(key), packed, count)

    def delitem(self, key: Any) -> None:
        self.update(updates.delitem([], key))

    def replace(self, new: dict[Any, Any]) -> None:
        """Make the struct equal ``new`` with root-level setitem/delitem updates."""
        for key in [k for k in self.data if k not in new]:
            self.delitem(key)
        for key, value in new.items():
            if key not in self.data or not _equal(self.data[key], value):
                self.setitem(key, value)

    def _pending_for(self, key: Any) -> _Pending:
        """The updates of ``key`` waiting for the next publication (validates the key
        before anything changes)."""
        pending = self._pending.get(key)
        if pending is None:
            self._levels_of(key)
            pending = self._pending[key] = _Pending()
        return pending

    def _queue(self, key: Any, pending: _Pending, body: Any, count: int) -> None:
        pending.bodies.append(body)
        pending.count += count
        pending.size += len(body)
        if pending.size >= MAX_GROUP_BYTES:
            del self._pending[key]
            self._publish(key, pending)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def _levels_of(self, key: Any) -> tuple[list[Any], bytes]:
        cached = self._levels.get(key)
        if cached is None:
            cached = self._levels[key] = (levels(key)[1:], struct_topic(self.name, key))
        return cached

    # -- publishing -------------------------------------------------------------------

    def flush(self) -> None:
        """Publish every queued update now."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for key, group in pending.items():
            self._publish(key, group)

    def _publish(self, key: Any, group: _Pending) -> None:
        """One message: ``group``'s updates, numbered from the next sequence number."""
        if not group.count:
            return  # its only update was refused
        key_levels, topic = self._levels_of(key)
        prevs = [self.seq] + [self._versions.get(level, 0) for level in key_levels]
        first = self.seq + 1
        self.seq += group.count
        for level in key_levels:
            self._versions[level] = self.seq
        if key not in self.data:
            del self._versions[key], self._levels[key]
        body = b"".join((b"\x94", msgpack.packb(self.epoch), msgpack.packb(first),
                         msgpack.packb(prevs), msgpack_array_header(group.count),
                         *group.bodies))
        self._publisher.send([topic, VERSION, body, *group.buffers])

    async def _heartbeat(self) -> None:
        topic = control_topic(self.name)
        while True:
            body, _ = pack([self.epoch, self.seq])
            self._publisher.send([topic, VERSION, body])
            await asyncio.sleep(self._heartbeat_interval_s)  # periodic by nature

    # -- reading ----------------------------------------------------------------------

    def version(self, key_filter: Any = "") -> int:
        """The version of a level: the sequence number of its last update."""
        self.flush()
        if filter_level(key_filter) == 0:
            return self.seq
        return self._versions.get(key_filter, 0)

    def snapshot(self, key_filter: Any = "") -> dict[str, Any]:
        """``{"epoch", "seq", "version", "struct"}`` for everything, a dotted folder
        (``"scan."``) or one key."""
        version = self.version(key_filter)
        if filter_level(key_filter) == 0:
            selected = self.data
        elif isinstance(key_filter, str) and key_filter.endswith("."):
            selected = {k: v for k, v in self.data.items()
                        if isinstance(k, str) and k.startswith(key_filter)}
        else:
            selected = {key_filter: self.data[key_filter]} if key_filter in self.data else {}
        return {"epoch": self.epoch, "seq": self.seq, "version": version, "struct": selected}


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except ValueError:  # numpy arrays compare element-wise
        return False


def struct_methods(*owners: StructOwner) -> dict[str, Any]:
    """The ``snapshot`` and ``version`` methods a service declares for its structs."""
    by_name = {owner.name: owner for owner in owners}

    def owner_of(struct: str) -> StructOwner:
        try:
            return by_name[struct]
        except (KeyError, TypeError):
            raise KeyError(f"this service owns no struct {struct!r}") from None

    def snapshot(struct: str, key_filter: Any = "") -> dict[str, Any]:
        return owner_of(struct).snapshot(key_filter)

    def version(struct: str, key_filter: Any = "") -> int:
        return owner_of(struct).version(key_filter)

    return {"snapshot": snapshot, "version": version}
