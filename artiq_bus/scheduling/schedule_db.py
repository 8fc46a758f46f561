"""The persisted schedule's database file: its format, reading it, and the writer
that commits changes to it from the store's thread (:mod:`.persist` says when).

An SQLite database (``schedule.sqlite`` beside the master, WAL journal)::

    runs(rid INTEGER PRIMARY KEY, record TEXT)   -- PYON of {"pipeline", "expid",
        "priority", "due_date", "flush", "status", "repo_msg", "start_time", "run_time",
        "class_name"}
    meta(key TEXT PRIMARY KEY, value)            -- "version": 2, "last_rid": N

Every commit is in the file when it returns, so a killed master loses nothing that was
committed.  A commit is also synced to the disk (``synchronous=FULL``: it survives a
power loss) when it changes what the next start does: a new RID, a run queued, started
(queued → active) or gone.  A commit that only moves active runs on (``prepare_done``,
``running``, ..., their class name and run time) is not synced (``NORMAL``; the next
synced commit syncs it too): after a power loss such a run may be reported as
interrupted in an earlier active status.  Syncing is most of a commit's cost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from .. import pyon
from .rid import RIDCounter
from .status import QUEUED

__all__ = ["ScheduleWriter", "read_schedule", "FORMAT_VERSION", "Records", "Changes"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2

Records = dict[int, dict[str, Any]]
#: Run → its record, or None once it is neither queued nor active (a deletion).
Changes = dict[int, dict[str, Any] | None]

#: Fields of a record that never change during a run's life (encoded once per run).
_FIXED = ("pipeline", "expid", "priority", "due_date", "flush", "repo_msg")
_CHANGING = ("status", "start_time", "run_time", "class_name")
_JSON = json.JSONEncoder(separators=(",", ":"))  # PYON's own settings
_QUEUED_NAMES = frozenset(status.name for status in QUEUED)

_SCHEMA = ("CREATE TABLE IF NOT EXISTS runs (rid INTEGER PRIMARY KEY, record TEXT NOT NULL)",
           "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
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


class ScheduleWriter:
    """Commits changes, and the last RID of ``rids``, to the database at ``path`` (only
    the RID file if ``path`` is None).  Used from one thread at a time."""

    def __init__(self, path: Path | None, rids: RIDCounter):
        self.path = path
        self._rids = rids
        self._connection: sqlite3.Connection | None = None
        self._fixed: dict[int, str] = {}  # RID → its record's fixed fields, encoded
        self._active: set[int] = set()  # runs the database holds as active
        self._synced_rid: int | None = None  # the last RID in a synced commit
        # of the connection (None: unknown):
        self._meta_rid: int | None = None  # the last RID in its meta table
        self._synced: bool | None = None  # its mode: synchronous=FULL or NORMAL
        self._failing = False

    def commit(self, changes: Changes, replace_all: bool = False) -> bool:
        """One transaction: ``changes`` (every other run deleted if ``replace_all``)
        and the last RID; then the RID file.  Whether it worked (a failure is logged
        once per failing spell: the master goes on)."""
        try:
            if self.path is not None:
                self._transaction(changes, replace_all)
            self._rids.store()
        except (sqlite3.Error, OSError, TypeError, ValueError, pyon.PyonError) as exc:
            if not self._failing:
                logger.error("cannot write the persisted schedule %s: %s (RIDs %s)",
                             self.path, exc, sorted(changes))
            self._failing = True
            self.close()  # the next commit starts afresh
            return False
        if self._failing:
            logger.info("persisted schedule %s written again", self.path)
        self._failing = False
        return True

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None

    def _encode(self, rid: int, record: dict[str, Any]) -> str:
        """PYON of ``record``, its fixed fields encoded at the run's first commit (the
        others are strings, numbers and None: plain JSON)."""
        fixed = self._fixed.get(rid)
        if fixed is None:
            fixed = self._fixed[rid] = pyon.encode({k: record[k] for k in _FIXED})[:-1]
        changing = _JSON.encode({k: record[k] for k in _CHANGING})
        return f"{fixed},{changing[1:]}"

    def _must_sync(self, changes: Changes) -> bool:
        """Whether ``changes`` change what the next start does (see the module doc)."""
        if self._rids.last != self._synced_rid:
            return True
        return any(record is None or rid not in self._active
                   or record["status"] in _QUEUED_NAMES for rid, record in changes.items())

    def _transaction(self, changes: Changes, replace_all: bool) -> None:
        assert self.path is not None
        if self._connection is None:
            self._connection = _connect(self.path)
            self._synced = self._meta_rid = None
        connection = self._connection
        rows = [(rid, self._encode(rid, record)) for rid, record in changes.items()
                if record is not None]
        gone = [(rid,) for rid, record in changes.items() if record is None]
        last_rid = self._rids.last
        sync = replace_all or self._must_sync(changes)
        if sync is not self._synced:
            connection.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
            self._synced = sync
        connection.execute("BEGIN IMMEDIATE")
        try:
            if replace_all:
                connection.execute("DELETE FROM runs")
            if rows:
                connection.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?)", rows)
            if gone:
                connection.executemany("DELETE FROM runs WHERE rid = ?", gone)
            if last_rid != self._meta_rid:
                connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                       [("version", FORMAT_VERSION), ("last_rid", last_rid)])
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise
        self._meta_rid = last_rid
        if sync:
            self._synced_rid = last_rid
        self._committed(changes, replace_all)

    def _committed(self, changes: Changes, replace_all: bool) -> None:
        """Remember what the database now holds."""
        if replace_all:
            self._active.clear()
            self._fixed = {rid: text for rid, text in self._fixed.items() if rid in changes}
        for rid, record in changes.items():
            if record is not None and record["status"] not in _QUEUED_NAMES:
                self._active.add(rid)
            else:
                self._active.discard(rid)
                if record is None:
                    self._fixed.pop(rid, None)
