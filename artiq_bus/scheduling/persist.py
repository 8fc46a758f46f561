"""The persisted schedule: what must survive a master crash (``kill -9``, power loss).

An SQLite database (``schedule.sqlite`` beside the master, WAL journal,
``synchronous=FULL``: a commit is on disk when it returns)::

    runs(rid INTEGER PRIMARY KEY, record TEXT)   -- PYON of {"pipeline", "expid",
        "priority", "due_date", "flush", "status", "repo_msg", "start_time", "run_time"}
    meta(key TEXT PRIMARY KEY, value)            -- "version": 2, "last_rid": N

It holds every run that is queued (``pending``/``flushing``) or active (a worker holds
it); runs being deleted are left out.  Each change writes only the runs it touched, so
a full queue costs no more per change than an empty one.  One writer task hands the
runs changed since the last commit to one thread (SQLite releases the GIL while it
works): changes made while a commit is in flight go into the next one, and the thread
then brings the RID counter's own file up to date.  ``submit()`` awaits the commit of
its run before it returns the RID, so a client that got a RID can rely on it, and on
no later RID being reused: ``last_rid`` is in the same commit.  At the next start,
queued runs come back with their RIDs and active ones are reported as interrupted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import pyon
from .rid import RIDCounter
from .tasks import Signal

__all__ = ["ScheduleStore", "FORMAT_VERSION", "read_schedule"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2

Records = dict[int, dict[str, Any]]
#: Run → its record, or None once it is neither queued nor active (a deletion).
Changes = dict[int, dict[str, Any] | None]

_SCHEMA = ("CREATE TABLE IF NOT EXISTS runs (rid INTEGER PRIMARY KEY, record TEXT NOT NULL)",
           "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    for statement in _SCHEMA:
        connection.execute(statement)
    return connection


def read_schedule(path: str | os.PathLike[str]) -> tuple[int, Records]:
    """``(last_rid, records)`` in the database at ``path`` (ValueError if it is not a
    schedule database of this version)."""
    try:
        connection = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
            rows = connection.execute("SELECT rid, record FROM runs").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise ValueError(f"not a schedule database ({exc})") from None
    if meta.get("version") != FORMAT_VERSION or not isinstance(meta.get("last_rid"), int):
        raise ValueError(f"not a version {FORMAT_VERSION} schedule database")
    records = {}
    for rid, text in rows:
        try:
            records[rid] = pyon.decode(text)
        except pyon.PyonError:
            logger.error("persisted schedule: dropping the unreadable record of RID %d", rid)
    return meta["last_rid"], records


class ScheduleStore:
    """Commits the records ``record_of(rid)`` returns for changed runs, and the last RID
    of ``rids``, to ``path`` (no database if ``path`` is None; the RID file still)."""

    def __init__(self, path: str | os.PathLike[str] | None,
                 record_of: Callable[[int], dict[str, Any] | None], rids: RIDCounter):
        self.path = Path(path) if path is not None else None
        self._record_of = record_of
        self._rids = rids
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "schedule-store")
        self._connection: sqlite3.Connection | None = None
        self._dirty: set[int] = set()
        self._requested = 0  # number of changes so far
        self._written = 0  # number of changes committed
        self._wrote = Signal()
        self._writer: asyncio.Task[None] | None = None
        self._frozen = False
        self._final: Records | None = None
        self._failing = False
        self._closed = False

    async def load(self) -> Records:
        """The records in the database ({} if there is none); the RID counter is
        advanced past every RID it knows.  An unreadable database is renamed aside
        (``<name>.bad-<epoch seconds>``, logged), never overwritten."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            last_rid, records = await self._in_thread(read_schedule, self.path)
        except ValueError as exc:
            aside = self.path.with_name(f"{self.path.name}.bad-{int(time.time())}")
            logger.error("cannot read the persisted schedule %s (%s); moved to %s, "
                         "its runs are lost", self.path, exc, aside)
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return {}
        self._rids.advance_past(max([last_rid, *records]))
        return records

    def changed(self, rid: int | None = None) -> None:
        """Run ``rid`` changed (None: only the RIDs): have it committed."""
        if self._frozen:
            return
        if rid is not None:
            self._dirty.add(rid)
        self._requested += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="persist schedule")

    async def _write_loop(self) -> None:
        """Commit until the database is up to date; changes made meanwhile are
        coalesced into the next commit."""
        while self._written < self._requested and not self._frozen:
            generation = self._requested
            changes: Changes = {rid: self._record_of(rid) for rid in self._dirty}
            self._dirty.clear()
            try:
                if not await self._in_thread(self._commit, changes, False):
                    self._dirty.update(changes)  # retried with the next change
            finally:  # whatever happened, nobody waits for this generation any more
                self._written = generation
                self._wrote.notify()

    async def written(self) -> None:
        """Until every change made so far is committed (or failed to be, logged)."""
        target = self._requested
        while self._written < target and not self._frozen:
            await self._wrote.wait()

    def freeze(self, records: Records | None) -> None:
        """Make ``records`` the final content (None: leave the database as it is) and
        ignore later changes (used at stop, when deleting every run must not empty the
        database); :meth:`close` commits it."""
        if not self._frozen:
            self._frozen, self._final = True, records

    async def close(self) -> None:
        """Wait for the commit in flight, commit the final content (if frozen), close
        (once: later calls return at once)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        final, self._final = self._final, None
        if final is not None:
            await self._in_thread(self._commit, dict(final), True)
        await self._in_thread(self._disconnect)
        self._thread.shutdown(wait=False)
        self._wrote.notify()

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function,
                                                                *args)

    # -- in the store's thread -----------------------------------------------------------

    def _commit(self, changes: Changes, replace_all: bool) -> bool:
        """One transaction: ``changes`` (every other run deleted if ``replace_all``)
        and the last RID; then the RID file.  Whether it worked."""
        try:
            if self.path is not None:
                self._transaction(changes, replace_all)
            self._rids.store()
        except (sqlite3.Error, OSError, TypeError, pyon.PyonError) as exc:
            if not self._failing:  # log once per failing spell; the master goes on
                logger.error("cannot write the persisted schedule %s: %s (RIDs %s)",
                             self.path, exc, sorted(changes))
            self._failing = True
            self._disconnect()  # the next commit starts afresh
            return False
        if self._failing:
            logger.info("persisted schedule %s written again", self.path)
        self._failing = False
        return True

    def _transaction(self, changes: Changes, replace_all: bool) -> None:
        assert self.path is not None
        if self._connection is None:
            self._connection = _connect(self.path)
        rows = [(rid, pyon.encode(record)) for rid, record in changes.items()
                if record is not None]
        gone = [(rid,) for rid, record in changes.items() if record is None]
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            if replace_all:
                connection.execute("DELETE FROM runs")
            connection.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?)", rows)
            connection.executemany("DELETE FROM runs WHERE rid = ?", gone)
            connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                   [("version", FORMAT_VERSION),
                                    ("last_rid", self._rids.last)])
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise

    def _disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None
