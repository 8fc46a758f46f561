"""Sending a process's log records to the log service, without ever blocking.

Records are batched per loop turn and sent one-way to ``log.emit``.  The queue is
bounded: when the bus cannot keep up the oldest records are dropped and counted (a log
storm must not take the process's memory).  Records may come from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any

from ..protocol import BusError
from ..client.aio import AsyncClient

__all__ = ["BusLogHandler", "record_to_wire", "LOG_SERVICE"]

LOG_SERVICE = "log"


def record_to_wire(record: logging.LogRecord, default_source: str) -> dict[str, Any]:
    """``{"level", "source", "time", "name", "message"}``: a record as the log node takes it."""
    message = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        message = f"{message}\n{record.exc_text}"
    return {"level": record.levelno, "source": getattr(record, "source", default_source),
            "time": record.created, "name": record.name, "message": message}


class BusLogHandler(logging.Handler):
    """A logging handler that forwards records to the log service over the bus."""

    def __init__(self, client: AsyncClient, source: str, level: int = logging.NOTSET,
                 max_queued: int = 10_000):
        super().__init__(level)
        self.source = source
        self.dropped = 0
        self._client = client
        self._queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_queued)
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._scheduled = False
        self._sending = threading.local()

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
        records = list(self._queue)
        self._queue.clear()
        if not records:
            return
        self._sending.active = True
        try:
            self._client.send(LOG_SERVICE, "emit", records)
        except BusError:
            self.dropped += len(records)
        finally:
            self._sending.active = False
