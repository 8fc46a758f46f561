"""A local copy of a replicated struct, kept equal to its owner's (the Clone pattern).

Start: subscribe, wait until the subscription is active, take a snapshot, then apply
only updates numbered after it.  Every message says which version of the replica's level
it follows (``prevs``); one that does not follow means updates were lost (ZeroMQ drops
for slow readers), and the replica takes a new snapshot.  The owner's heartbeat finds a
loss at the tail, after which nothing else would arrive.  A new owner (another
``epoch``) or a broker reconnection also means: take a new snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import zmq

from ..protocol import (BusError, ProtocolError, apply_update, control_topic, filter_level,
                        struct_filter_topic, unpack, updates)
from .aio import AsyncClient
from .subscriber import Subscriber

__all__ = ["Replica", "Listener"]

logger = logging.getLogger(__name__)

#: Called after each update is applied; a resync calls it with an ``init`` update.
Listener = Callable[[dict[str, Any]], None]

_RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0)


class Replica:
    """A struct (or one key, or one dotted folder of it) mirrored from its owner."""

    def __init__(self, client: AsyncClient, subscriber: Subscriber, struct: str, *,
                 service: str | None = None, key_filter: Any = "",
                 listener: Listener | None = None):
        self.struct = struct
        self.service = service or struct
        self.key_filter = key_filter
        self.value: dict[Any, Any] = {}
        self.resyncs = 0
        self.synced = asyncio.Event()
        self._client, self._subscriber = client, subscriber
        #: a tuple, replaced on change: notifying never copies it
        self._listeners: tuple[Listener, ...] = (listener,) if listener else ()
        self._level = filter_level(key_filter)
        self._topic = struct_filter_topic(struct, key_filter)
        self._control = control_topic(struct)
        self._epoch: int | None = None
        self._version = 0
        #: The struct sequence number of the last snapshot: messages up to it are in it.
        self._snapshot_seq = 0
        self._buffer: list[list[zmq.Frame]] | None = []
        self._resync_task: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()

    def add_listener(self, listener: Listener) -> None:
        self._listeners += (listener,)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = tuple(known for known in self._listeners if known is not listener)

    async def start(self, timeout_s: float = 10.0) -> None:
        """Subscribe and wait (at most ``timeout_s``) for the first snapshot."""
        self._subscriber.subscribe(self._topic, self._on_update)
        self._subscriber.subscribe(self._control, self._on_control)
        self._subscriber.on_reconnect.append(self.resync)
        self.resync()
        # Not wait_for: on Python 3.11 it swallows a cancellation (Ctrl-C) that arrives
        # just as the snapshot does.
        async with asyncio.timeout(timeout_s):
            await self.synced.wait()

    async def stop(self) -> None:
        self._subscriber.unsubscribe(self._topic, self._on_update)
        self._subscriber.unsubscribe(self._control, self._on_control)
        if self.resync in self._subscriber.on_reconnect:
            self._subscriber.on_reconnect.remove(self.resync)
        tasks = [t for t in (self._resync_task, *self._checks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_for(self, predicate: Callable[[dict[Any, Any]], bool],
                       timeout_s: float = 10.0) -> None:
        """Wait until ``predicate(self.value)`` holds, re-checking after every update."""
        changed = asyncio.Event()

        def on_change(update: dict[str, Any]) -> None:
            changed.set()
        self.add_listener(on_change)
        try:
            async with asyncio.timeout(timeout_s):
                while not (self.synced.is_set() and predicate(self.value)):
                    changed.clear()
                    await changed.wait()
        finally:
            self.remove_listener(on_change)

    # -- synchronising ----------------------------------------------------------------

    def resync(self) -> None:
        """Take a new snapshot (unless one is being taken); buffer updates meanwhile."""
        if self._resync_task is not None and not self._resync_task.done():
            return
        self.synced.clear()
        self._buffer = []
        self._resync_task = asyncio.create_task(self._take_snapshot(),
                                                name=f"replica-{self.struct}")

    async def _take_snapshot(self) -> None:
        attempt = 0
        while True:
            try:
                await self._subscriber.sync()
                snapshot = await self._client.call(self.service, "snapshot", self.struct,
                                                   self.key_filter)
                if self._install(snapshot):
                    return
                attempt = 0
                continue
            except (BusError, asyncio.TimeoutError) as exc:
                delay = _RETRY_S[min(attempt, len(_RETRY_S) - 1)]
                logger.info("replica %s: snapshot failed (%s), retrying in %g s",
                            self.struct, exc, delay)
                attempt += 1
                await asyncio.sleep(delay)  # back off before asking a missing owner again

    def _install(self, snapshot: dict[str, Any]) -> bool:
        """Take the snapshot and the updates buffered since; False if one was lost."""
        self._epoch = snapshot["epoch"]
        self._version = snapshot["version"]
        self._snapshot_seq = snapshot["seq"]
        self.value = snapshot["struct"]
        buffered, self._buffer = self._buffer or [], None
        self.resyncs += 1
        self._notify(updates.init(self.value))
        self.synced.set()
        for frames in buffered:
            if not self._apply(*_decode(frames)):
                self.synced.clear()
                self._buffer = []
                return False
        return True

    # -- receiving --------------------------------------------------------------------

    def _on_update(self, frames: list[zmq.Frame]) -> None:
        if self._buffer is not None:
            self._buffer.append(frames)
            return
        try:
            self._apply(*_decode(frames))
        except ProtocolError as exc:
            logger.warning("replica %s: bad update (%s), resynchronising", self.struct, exc)
            self.resync()

    def _apply(self, epoch: int, first: int, prevs: list[int], items: list[Any]) -> bool:
        if epoch == self._epoch and first + len(items) - 1 <= self._snapshot_seq:
            # Already in the snapshot: published before it, but still on its way (the
            # snapshot's reply can overtake publications queued for this subscriber).
            return True
        if epoch != self._epoch or self._level >= len(prevs) or prevs[self._level] != self._version:
            logger.info("replica %s: update lost (have version %d, update follows %s), "
                        "resynchronising", self.struct, self._version,
                        prevs[self._level] if self._level < len(prevs) else "?")
            self.resync()
            return False
        try:
            for item in items:
                self.value = apply_update(self.value, item)
                for listener in self._listeners:  # _notify, inline: once per update
                    try:
                        listener(item)
                    except Exception:
                        logger.exception("replica %s: listener failed", self.struct)
        except ProtocolError as exc:
            logger.warning("replica %s: %s, resynchronising", self.struct, exc)
            self.resync()
            return False
        self._version = first + len(items) - 1
        if self._level > 0 and self.key_filter not in self.value \
                and not str(self.key_filter).endswith("."):
            self._version = 0  # the owner forgets a deleted key's version
        return True

    def _on_control(self, frames: list[zmq.Frame]) -> None:
        if self._buffer is not None:
            return
        try:
            epoch, seq = unpack(frames[2].buffer)
        except (ProtocolError, ValueError, TypeError):
            return
        if epoch != self._epoch or (self._level == 0 and seq > self._version):
            self.resync()
        elif self._level > 0 and seq > self._version:
            task = asyncio.create_task(self._check_version(seq, self._version))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _check_version(self, control_seq: int, version: int) -> None:
        """Ask the owner whether an update of our level was lost at the tail (we had
        ``version`` when its heartbeat said ``control_seq``)."""
        try:
            remote = await self._client.call(self.service, "version", self.struct,
                                             self.key_filter, timeout_s=2.0)
        except BusError:
            return
        # Updates up to control_seq were published before the heartbeat, so they have
        # arrived unless lost; a newer remote version may simply still be on its way.  An
        # update of our level made after the owner answered may have overtaken the answer
        # (and a deleted key's version goes back to 0): compare only if none arrived.
        if (remote <= control_seq and remote != version and self._version == version
                and self._buffer is None):
            self.resync()

    def _notify(self, update: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(update)
            except Exception:
                logger.exception("replica %s: listener failed", self.struct)


def _decode(frames: list[zmq.Frame]) -> tuple[int, int, list[int], list[Any]]:
    message = unpack(frames[2].buffer, frames[3:])
    if (not isinstance(message, list) or len(message) != 4 or not isinstance(message[2], list)
            or not isinstance(message[3], list)):
        raise ProtocolError("struct update body must be [epoch, seq, prevs, updates]")
    return message[0], message[1], message[2], message[3]
