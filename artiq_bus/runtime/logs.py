"""Sending a process's log records to the log service, without ever blocking.

Records are batched per loop turn and sent to ``log.emit`` as calls, a few batches of a
few hundred records in flight: the log service's replies pace the sender, so a flood
waits here, where producers that can wait (a worker's captured output) see it
(:attr:`BusLogHandler.backlogged`), instead of in socket queues where it would hold up
the log service's process.  The queue is bounded: when the bus cannot keep up the oldest
records are dropped and counted (a log storm must not take the process's memory).
Records may come from any thread.  The handler runs on an asyncio loop, or on a worker's
bus loop (:class:`~artiq_bus.worker.loop.PollLoop`, which offers the same callbacks) with
its link as the client.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from ..protocol import BusError

__all__ = ["BusLogHandler", "record_to_wire", "LOG_SERVICE"]

LOG_SERVICE = "log"
#: Records per message: the log service handles a message in one go, so a large one
#: would hold up its loop (timers, heartbeats) for as long as it takes.
BATCH_RECORDS = 256
#: Batches sent and not yet answered.
IN_FLIGHT = 4
#: How long a batch may wait for its answer before it counts as dropped.
EMIT_TIMEOUT_S = 10.0


def record_to_wire(record: logging.LogRecord, default_source: str) -> dict[str, Any]:
    """``{"level", "source", "time", "name", "message"}``: a record as the log node takes it."""
    message = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        message = f"{message}\n{record.exc_text}"
    return {"level": record.levelno, "source": getattr(record, "source", default_source),
            "time": record.created, "name": record.name, "message": message}


class Reply(Protocol):
    """The future of a call's reply (asyncio's or ``concurrent.futures``')."""

    def add_done_callback(self, callback: Callable[[Any], None]) -> None: ...

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...


class Caller(Protocol):
    """What sends the records: an ``AsyncClient``, or a worker's link."""

    def request(self, service: str, method: str, /, *args: Any, timeout_s: float | None = None,
                **kwargs: Any) -> Reply: ...


class Loop(Protocol):
    """The loop the handler sends from: asyncio's, or a worker's bus loop."""

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Any: ...

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> Any: ...

    def is_closed(self) -> bool: ...


class BusLogHandler(logging.Handler):
    """A logging handler that forwards records to the log service over the bus."""

    def __init__(self, client: Caller, source: str, level: int = logging.NOTSET,
                 max_queued: int = 10_000, loop: Loop | None = None):
        super().__init__(level)
        self.source = source
        self.dropped = 0
        self._client = client
        self._queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_queued)
        #: Made on its loop's thread (default: the running asyncio loop).
        self._loop = asyncio.get_running_loop() if loop is None else loop
        self._loop_thread = threading.get_ident()
        self._scheduled = False
        self._sending = threading.local()
        self._in_flight = 0
        #: Called (on the loop) once the handler is no longer backlogged.
        self._on_room: list[Callable[[], None]] = []

    @property
    def backlogged(self) -> bool:
        """Whether more records wait than one window of batches carries: producers that
        can wait should (read from the loop's thread)."""
        return len(self._queue) >= BATCH_RECORDS * IN_FLIGHT

    def when_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop once the handler is not :attr:`backlogged`."""
        if self.backlogged:
            self._on_room.append(callback)
        else:
            self._loop.call_soon(callback)

    @property
    def idle(self) -> bool:
        """Whether every record handed over has been answered for (read on the loop)."""
        return not self._queue and not self._in_flight

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._sending, "active", False):
            return  # a record logged while sending records: drop, do not recurse
        try:
            wire = record_to_wire(record, self.source)
        except Exception:
            self.handleError(record)
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(wire)
        if not self._scheduled:
            self._scheduled = True
            if threading.get_ident() == self._loop_thread:
                self._loop.call_soon(self._flush)
            else:
                self._loop.call_soon_threadsafe(self._flush)

    def flush(self) -> None:
        """Send queued records now (from any thread; from others, on the loop's next turn)."""
        if threading.get_ident() == self._loop_thread:
            self._flush()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        queue = self._queue
        while queue and self._in_flight < IN_FLIGHT:
            records = [queue.popleft() for _ in range(min(len(queue), BATCH_RECORDS))]
            self._sending.active = True
            try:
                reply = self._client.request(LOG_SERVICE, "emit", records,
                                             timeout_s=EMIT_TIMEOUT_S)
            except BusError:
                self.dropped += len(records)
                continue
            finally:
                self._sending.active = False
            self._in_flight += 1
            reply.add_done_callback(functools.partial(self._answered, count=len(records)))
        if not self.backlogged and self._on_room:
            callbacks, self._on_room = self._on_room, []
            for callback in callbacks:
                callback()

    def _answered(self, reply: Reply, *, count: int) -> None:
        self._in_flight -= 1
        if reply.cancelled() or reply.exception() is not None:
            self.dropped += count
        self._flush()
