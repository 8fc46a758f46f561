"""The log node: collects every process's log records, numbers them, keeps a bounded
backlog for late joiners, writes a rotating log file, prints them on the console, and
publishes them on the ``log`` stream.

Records arrive as ``log.emit`` calls (the replies pace the senders; one-way messages
are taken too) from every node, worker and controller manager; each is
``{"level", "source", "time", "name", "message"}``.  Processes filter their own records
by their own level before sending; the log node shows everything it receives.
A late joiner subscribes to ``stream\\0log\\0``, then calls ``log.backlog`` and skips
stream items numbered at or below the backlog's ``seq``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import logging.handlers
import queue
import random
import sys
from typing import Any

from ..protocol import VERSION, pack, stream_topic
from ..runtime.bus import BusConnection
from ..runtime.logs import LOG_SERVICE
from ..runtime.service import ServiceHost
from ..runtime.rpc import rpc, rpc_methods

__all__ = ["LogNode", "CONSOLE_FORMAT", "FILE_FORMAT"]

logger = logging.getLogger(__name__)

CONSOLE_FORMAT = "%(levelname)s:%(source)s:%(name)s:%(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s:%(source)s:%(name)s:%(message)s"
_FIELDS = ("level", "source", "time", "name", "message")


#: Record times the console, the log file and clients can show: 1970 to year 9999.
_MAX_TIME = 253402214400.0


def _valid(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("level"), int)
            and isinstance(record.get("time"), (int, float))
            and 0 <= record["time"] <= _MAX_TIME  # also false for NaN
            and all(isinstance(record.get(f), str) for f in ("source", "name", "message")))


def _to_log_record(record: dict[str, Any]) -> logging.LogRecord:
    made = logging.makeLogRecord({
        "name": record["name"], "levelno": record["level"], "msg": record["message"],
        "levelname": logging.getLevelName(record["level"]), "created": record["time"],
        "source": record["source"]})
    made.msecs = (record["time"] - int(record["time"])) * 1000
    return made


class LogNode:
    """Service ``log``: ``emit(records)`` (one-way), ``backlog(limit=None)``."""

    services: tuple[str, ...] = (LOG_SERVICE,)

    def __init__(self, log_file: str | None = None, backup_count: int = 0,
                 backlog: int = 1000, console: bool = True):
        self._backlog: collections.deque[dict[str, Any]] = collections.deque(maxlen=backlog)
        self._epoch = random.getrandbits(62)
        self._seq = 0
        self._unpublished: list[dict[str, Any]] = []
        self._host: ServiceHost | None = None
        self._bus: BusConnection | None = None
        self._topic = stream_topic("log")
        self.rejected = 0
        handlers: list[logging.Handler] = []
        if console:
            handlers.append(logging.StreamHandler(sys.stderr))
            handlers[-1].setFormatter(logging.Formatter(CONSOLE_FORMAT))
        if log_file:
            file_handler = logging.handlers.TimedRotatingFileHandler(
                log_file, when="midnight", backupCount=backup_count)
            file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
            handlers.append(file_handler)
        # Console and file writes happen on a thread of their own: never on the loop.
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._writer = logging.handlers.QueueListener(self._queue, *handlers)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("log")
        group.add_argument("--log-file", default="",
                           help="write the log to this file, rotated at midnight")
        group.add_argument("--log-backup-count", type=int, default=0,
                           help="rotated log files to keep (0: all)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LogNode":
        return cls(args.log_file or None, args.log_backup_count)

    async def start(self, bus: BusConnection) -> None:
        self._bus = bus
        self._writer.start()
        self._host = bus.service(LOG_SERVICE, rpc_methods(self))
        await self._host.start()

    async def stop(self) -> None:
        if self._host is not None:
            await self._host.stop()
        self._publish()
        self._writer.stop()
        for handler in self._writer.handlers:
            handler.close()

    @rpc
    def emit(self, records: list[dict[str, Any]]) -> None:
        """Take records: number, keep, write, print, publish."""
        if not isinstance(records, list):
            raise TypeError("emit takes a list of records")
        for record in records:
            if not _valid(record):
                self.rejected += 1
                continue
            record = {field: record[field] for field in _FIELDS}
            self._backlog.append(record)
            self._queue.put(_to_log_record(record))
            if not self._unpublished:
                asyncio.get_running_loop().call_soon(self._publish)
            self._unpublished.append(record)

    @rpc
    def backlog(self, limit: int | None = None) -> dict[str, Any]:
        """``{"epoch", "seq", "records"}``: the newest records, ``seq`` numbering the last."""
        self._publish()
        records = list(self._backlog)
        if limit is not None:
            records = records[-limit:] if limit > 0 else []
        return {"epoch": self._epoch, "seq": self._seq, "records": records}

    def _publish(self) -> None:
        if not self._unpublished or self._bus is None:
            return
        items, self._unpublished = self._unpublished, []
        first = self._seq + 1
        self._seq += len(items)
        body, buffers = pack([self._epoch, first, items])
        self._bus.publisher.send([self._topic, VERSION, body, *buffers])
