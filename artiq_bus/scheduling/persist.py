"""The persisted schedule: what must survive a master crash (``kill -9``).

The file (PYON, replaced atomically, see :func:`artiq_bus.pyon.store_file`)::

    {"version": 1, "last_rid": N,
     "runs": {RID: {"pipeline", "expid", "priority", "due_date", "flush",
                    "status", "repo_msg", "start_time", "run_time"}}}

It holds every run that is queued (``pending``/``flushing``) or active (a worker holds
it); runs being deleted are left out.  Writing (with its fsync, milliseconds) happens
in a thread, never on the event loop, by one writer task: changes made while a write
is in flight are coalesced into the next one.  The same thread then brings the RID
counter's own file up to date.  ``submit()`` awaits the write of its run before it
returns the RID, so a client that got a RID can rely on it, and on no later RID being
reused: ``last_rid`` is in the same write.  At the next start, queued runs come back
with their RIDs and active ones are reported as interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import pyon
from .rid import RIDCounter
from .tasks import Signal

__all__ = ["ScheduleFile", "FORMAT_VERSION"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

Records = dict[int, dict[str, Any]]


class ScheduleFile:
    """Writes the records ``snapshot()`` returns and the last RID of ``rids`` to
    ``path`` (no schedule file if ``path`` is None; the RID file still)."""

    def __init__(self, path: str | os.PathLike[str] | None,
                 snapshot: Callable[[], Records], rids: RIDCounter):
        self.path = Path(path) if path is not None else None
        self._snapshot = snapshot
        self._rids = rids
        self._requested = 0  # number of changes so far
        self._written = 0  # number of changes on disk
        self._wrote = Signal()
        self._writer: asyncio.Task[None] | None = None
        self._frozen = False
        self._final: Records | None = None
        self._failing = False

    def load(self) -> Records:
        """The records in the file ({} if there is none); the RID counter is advanced
        past every RID the file knows.  An unreadable file is renamed aside
        (``<name>.bad-<epoch seconds>``, logged), never overwritten."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            content = pyon.load_file(self.path)
            if not isinstance(content, dict) or content.get("version") != FORMAT_VERSION:
                raise ValueError(f"not a version {FORMAT_VERSION} schedule file")
            runs = content["runs"]
            if not isinstance(runs, dict):
                raise ValueError("'runs' is not a dict")
            last_rid = content.get("last_rid", -1)
            if not isinstance(last_rid, int):
                raise ValueError("'last_rid' is not an integer")
        except (OSError, ValueError, KeyError) as exc:
            aside = self.path.with_name(f"{self.path.name}.bad-{int(time.time())}")
            logger.error("cannot read the persisted schedule %s (%s); moved to %s, "
                         "its runs are lost", self.path, exc, aside)
            os.replace(self.path, aside)
            return {}
        records = {rid: record for rid, record in runs.items() if self._valid(rid, record)}
        self._rids.advance_past(max([last_rid, *records]))
        return records

    @staticmethod
    def _valid(rid: Any, record: Any) -> bool:
        if isinstance(rid, int) and isinstance(record, dict):
            return True
        logger.error("persisted schedule: dropping malformed entry for RID %r", rid)
        return False

    def changed(self) -> None:
        """The content changed: have it written (by the writer task, in a thread)."""
        if self._frozen:
            return
        self._requested += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="persist schedule")

    async def _write_loop(self) -> None:
        """Write until the file is up to date; changes made meanwhile are coalesced
        into the next write."""
        while self._written < self._requested and not self._frozen:
            generation = self._requested
            try:
                await asyncio.to_thread(self._store, self._snapshot())
            finally:  # whatever happened, nobody waits for this generation any more
                self._written = generation
                self._wrote.notify()

    async def written(self) -> None:
        """Until every change made so far is on disk (or failed to be, logged)."""
        target = self._requested
        while self._written < target and not self._frozen:
            await self._wrote.wait()

    def freeze(self, records: Records | None) -> None:
        """Make ``records`` the final content (None: leave the file as it is) and
        ignore later changes (used at stop, when deleting every run must not empty the
        file); :meth:`close` writes it."""
        if not self._frozen:
            self._frozen, self._final = True, records

    async def close(self) -> None:
        """Wait for the write in flight, then write the final content (if frozen)."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        final, self._final = self._final, None
        if final is not None:
            await asyncio.to_thread(self._store, final)
        self._wrote.notify()

    def _store(self, records: Records) -> None:
        """Write the schedule, then the RID file (in the writer thread)."""
        try:
            if self.path is not None:
                pyon.store_file(self.path, {"version": FORMAT_VERSION,
                                            "last_rid": self._rids.last, "runs": records})
            self._rids.store()
        except Exception as exc:  # the master goes on without persistence; logged
            if not self._failing:  # log once per failing spell
                logger.error("cannot write the persisted schedule %s: %s (RIDs %s)",
                             self.path, exc, sorted(records))
            self._failing = True
        else:
            if self._failing:
                logger.info("persisted schedule %s written again", self.path)
            self._failing = False
