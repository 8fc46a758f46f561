"""Owning replicated structs: apply updates, publish them numbered, serve snapshots.

The owner applies each update to its own dict at once and packs it at once (so later
changes to a value cannot leak into an update already made).  Updates are published
when the loop comes round, grouped by root key: one message per key per loop turn, its
updates numbered consecutively in the struct's sequence (see
:mod:`artiq_bus.protocol.publications` for the numbering and the levels).
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
from ..protocol import (VERSION, apply_update, control_topic, filter_level, levels,
                        msgpack_array_header, pack, pack_into, struct_topic, top_key, updates)

__all__ = ["Publisher", "StructOwner", "struct_methods"]

logger = logging.getLogger(__name__)


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

    bodies: list[bytes] = dataclasses.field(default_factory=list)
    buffers: list[Any] = dataclasses.field(default_factory=list)


class StructOwner:
    """The one owner of a replicated struct (a dict with ``str`` or ``int`` root keys)."""

    def __init__(self, name: str, publisher: Publisher, initial: dict[Any, Any] | None = None,
                 heartbeat_interval_s: float = 1.0):
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
        pending = self._pending_for(top_key(update))
        body = pack_into(pending.buffers, update)
        self.data = apply_update(self.data, update)
        self._queue(pending, body)

    def setitem(self, key: Any, value: Any) -> None:
        # The commonest update, and at the root one dict store: no need to walk a path.
        pending = self._pending_for(key)
        body = pack_into(pending.buffers, updates.setitem([], key, value))
        self.data[key] = value
        self._queue(pending, body)

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

    def _queue(self, pending: _Pending, body: bytes) -> None:
        pending.bodies.append(body)
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
        header = msgpack.packb(self.epoch)
        for key, group in pending.items():
            key_levels, topic = self._levels_of(key)
            prevs = [self.seq] + [self._versions.get(level, 0) for level in key_levels]
            first = self.seq + 1
            self.seq += len(group.bodies)
            for level in key_levels:
                self._versions[level] = self.seq
            if key not in self.data:
                del self._versions[key], self._levels[key]
            body = b"".join((b"\x94", header, msgpack.packb(first), msgpack.packb(prevs),
                             msgpack_array_header(len(group.bodies)), *group.bodies))
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
