"""The persisted schedule: what must survive a master crash (``kill -9``, power loss).

The database (its format, and which commits are synced to the disk) is described in
:mod:`.schedule_db`.  It holds every run that is queued (``pending``/``flushing``) or
active (a worker holds it); runs being deleted are left out.  Each change writes only
the runs it touched, so a full queue costs no more per change than an empty one.

A change hands the run's record to the store's thread (SQLite releases the GIL while
it works), which commits until nothing is left: changes made while a commit is in
flight go into the next one.  The loop hears of a commit only when something waits
for it, and wakes the thread only when it is idle, on the next loop turn (the changes
of one turn make one commit): a hand-over costs a dict store.
After each commit the thread brings the RID counter's own file up to date.
``submit()`` awaits the commit of its run before it returns the RID, so a client that
got a RID can rely on it, and on no later RID being reused: ``last_rid`` is in the
same commit.  At the next start, queued runs come back with their RIDs and active ones
are reported as interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .rid import RIDCounter
from .schedule_db import FORMAT_VERSION, Changes, Records, ScheduleWriter, read_schedule

__all__ = ["ScheduleStore", "FORMAT_VERSION", "read_schedule"]

logger = logging.getLogger(__name__)


class ScheduleStore:
    """Commits the records ``record_of(rid)`` returns for changed runs, and the last RID
    of ``rids``, to ``path`` (no database if ``path`` is None; the RID file still)."""

    def __init__(self, path: str | os.PathLike[str] | None,
                 record_of: Callable[[int], dict[str, Any] | None], rids: RIDCounter):
        self.path = Path(path) if path is not None else None
        self._record_of = record_of
        self._rids = rids
        self._writer = ScheduleWriter(self.path, rids)  # the thread's own
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Shared with the thread, under the lock:
        self._lock = threading.Lock()
        self._pending: Changes = {}  # handed over, not in a commit yet
        self._handed = 0  # number of changes so far
        self._written = 0  # of those, committed (or failed to be, logged)
        self._draining = False  # the thread commits, or is about to
        self._waking = False  # a loop turn will wake the thread
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        # The loop's own (the thread reads _frozen):
        self._frozen = False
        self._final: Records | None = None
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
        if self._frozen or self._closed:
            return
        record = None if rid is None else self._record_of(rid)
        with self._lock:
            if rid is not None:
                self._pending[rid] = record
            self._handed += 1
            if self._draining or self._waking:
                return  # the thread takes it with its next commit
            self._waking = True
        # On the next loop turn: the changes of this one go into one commit.
        asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        """Have the thread commit, unless it does already or nothing is left."""
        with self._lock:
            self._waking = False
            if self._draining or self._written >= self._handed:
                return
            self._draining = True
        self._put(self._drain)

    async def written(self) -> None:
        """Until every change made so far is committed (or failed to be, logged)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._written >= self._handed or self._frozen:
                return
            future = loop.create_future()
            self._waiters.append((self._handed, future))
            self._loop = loop
        await future

    def freeze(self, records: Records | None) -> None:
        """Make ``records`` the final content (None: leave the database as it is) and
        ignore later changes (used at stop, when deleting every run must not empty the
        database); :meth:`close` commits it."""
        if not self._frozen:
            self._frozen, self._final = True, records
            self._release()

    async def close(self) -> None:
        """Wait for the commits in flight, commit the final content (if frozen), close
        (once: later calls return at once)."""
        if self._closed:
            return
        self._closed = True
        final, self._final = self._final, None
        self._wake()  # the changes not handed over yet
        # The thread runs its jobs in order: this one comes after every commit.
        await self._in_thread(self._finish, final)
        self._jobs.put(None)  # the thread ends
        self._release()

    def _release(self) -> None:
        """Wake the waiters whose changes are written (every one once frozen)."""
        with self._lock:
            written, waiters, frozen = self._written, self._waiters, self._frozen
            self._waiters = [(target, future) for target, future in waiters
                             if target > written and not frozen]
        for target, future in waiters:
            if (target <= written or frozen) and not future.done():
                future.set_result(None)

    # -- the thread -----------------------------------------------------------------------

    def _put(self, job: Callable[[], None]) -> None:
        if self._thread is None:
            # A daemon: a master that ends without close() has crashed anyway, and a
            # transaction cut short is rolled back.  The thread holds no reference to
            # the store: one dropped without close() (a test's crash) ends it.
            self._thread = threading.Thread(target=_serve, args=(self._jobs,),
                                            name="schedule-store", daemon=True)
            self._thread.start()
            weakref.finalize(self, self._jobs.put, None)
        self._jobs.put(job)

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` run in the thread, after every job before it."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def job() -> None:
            try:
                result = function(*args)
            except BaseException as exc:  # handed to the caller
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)
        self._put(job)
        return await future

    def _drain(self) -> None:
        """Commit until every change handed over is written (stop once frozen)."""
        while True:
            with self._lock:
                if self._written >= self._handed or self._frozen:
                    self._draining = False
                    return
                changes, self._pending = self._pending, {}
                generation = self._handed
            worked = self._writer.commit(changes)
            with self._lock:
                if not worked:  # retried with the next change
                    for rid, record in changes.items():
                        self._pending.setdefault(rid, record)
                self._written = generation
                waiting = bool(self._waiters)
            if waiting:
                self._wake_loop()

    def _wake_loop(self) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._release)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _finish(self, final: Records | None) -> None:
        if final is not None:
            self._writer.commit(dict(final), replace_all=True)
        self._writer.close()


def _serve(jobs: queue.SimpleQueue[Callable[[], None] | None]) -> None:
    """The store's thread: run jobs in order until told to end."""
    while (job := jobs.get()) is not None:
        try:
            job()
        except Exception:  # a bug: the thread must go on committing
            logger.exception("persisted schedule: %r failed", job)
        del job  # no reference to the store while waiting


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return  # its caller gave up
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
