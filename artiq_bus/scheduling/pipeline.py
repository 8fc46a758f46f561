"""A pipeline: its runs and its three stages, working concurrently (reference §3.4–3.6).

* prepare: the most important pending run that is due and takes precedence over
  every ``prepare_done`` run (so normally one run is prepared ahead); with ``flush``
  it first waits, ``flushing``, until every other active run of the pipeline is of
  lower priority; then build and prepare.
* run: the most important ``prepare_done`` run, unless a paused run (a stack) is at
  least as important, which is then resumed instead.  A run that asks to pause goes
  on the stack, and the choice is made again at once.
* analyze: the most important ``run_done`` run; the run is then deleted.

Each stage waits on a :class:`~.tasks.Signal` of its own, with a timer for the next due
date: no polling.  The engine tells the pipeline of every submission and status
change, and the pipeline wakes only the stages that may find work after it (prepare:
a run queued, a prepared one gone, a deletion, for ``flush``; run: a run prepared;
analyze: a run done): a burst of runs costs no futile wake-ups.  Runs are indexed by
status: a stage looks at the runs of the statuses it takes, not at every run.  What a
stage does to a run (status, worker calls, failures, deletion) goes through the
:class:`StageHost`, the engine.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from .errors import RunDeleted
from .runs import Run, RunKey
from .status import RunStatus, Stage
from .tasks import Signal
from .worker import WorkerHandle

__all__ = ["Pipeline", "StageHost"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Pick = Callable[[float], tuple[T | None, float | None]]


class StageHost(Protocol):
    """What the stages need from the engine."""

    def set_status(self, run: Run, status: RunStatus) -> None: ...

    def built(self, run: Run, class_name: str | None) -> None: ...

    def finish(self, run: Run, reason: str) -> None:
        """Delete a run that is done with (analysed, or failed)."""
        ...

    def worker_for(self, run: Run) -> WorkerHandle: ...

    async def call(self, run: Run, step: Awaitable[T]) -> T:
        """Await a worker call; RunDeleted as soon as the run is deleted."""
        ...

    def stage_failed(self, run: Run, stage: Stage, exc: Exception) -> None: ...


def _order(run: Run) -> RunKey:
    """Ascending in this is descending in importance (reference §3.5)."""
    priority, due, rid = run.key
    return (-priority, -due, -rid)


def _first(item: tuple[RunKey, Run]) -> RunKey:
    return item[0]


class Pipeline:
    """One pipeline's runs (by RID) and stage tasks."""

    def __init__(self, name: str, host: StageHost):
        self.name = name
        self.runs: dict[int, Run] = {}
        self._by_status: dict[RunStatus, dict[int, Run]] = {status: {} for status in RunStatus}
        # The pending runs, most important first: (the key negated, the run).
        self._queue: list[tuple[RunKey, Run]] = []
        self._wake = {stage: Signal() for stage in Stage}
        self._host = host
        self._stack: list[Run] = []  # paused runs, the most recently paused on top
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for stage, loop in ((Stage.prepare, self._prepare_loop), (Stage.run, self._run_loop),
                            (Stage.analyze, self._analyze_loop)):
            self._tasks.append(asyncio.create_task(
                self._guarded(stage, loop), name=f"pipeline {self.name!r} {stage.value} stage"))

    async def _guarded(self, stage: Stage, loop: Callable[[], Awaitable[None]]) -> None:
        """A stage loop; a bug that ends it is logged, never silent."""
        try:
            await loop()
        except Exception:
            logger.critical("pipeline %r: the %s stage stopped on an internal error "
                            "(RIDs %s)", self.name, stage.value, sorted(self.runs),
                            exc_info=True)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # -- what the engine tells ---------------------------------------------------------

    def add(self, run: Run) -> None:
        """A run submitted (or restored): queued."""
        self.runs[run.rid] = run
        self._by_status[run.status][run.rid] = run
        if run.status is RunStatus.pending:
            bisect.insort(self._queue, (_order(run), run), key=_first)
        self._wake[Stage.prepare].notify()

    def moved(self, run: Run, old: RunStatus) -> None:
        """``run``'s status changed from ``old``: wake the stages it may concern."""
        del self._by_status[old][run.rid]
        self._by_status[run.status][run.rid] = run
        if old is RunStatus.pending:
            del self._queue[bisect.bisect_left(self._queue, _order(run), key=_first)]
        new = run.status
        if old is RunStatus.prepare_done or new is RunStatus.deleting:
            self._wake[Stage.prepare].notify()  # the bar lowered; a flush may be done
        if new is RunStatus.prepare_done:
            self._wake[Stage.run].notify()  # (it never waits while runs are paused)
        if new is RunStatus.run_done:
            self._wake[Stage.analyze].notify()

    def remove(self, run: Run) -> None:
        """A deleted run is gone."""
        del self.runs[run.rid]
        del self._by_status[run.status][run.rid]

    def poke(self) -> None:
        """Wake every stage (for a change the rules above do not cover)."""
        for signal in self._wake.values():
            signal.notify()

    def with_status(self, status: RunStatus) -> list[Run]:
        """This pipeline's runs in ``status``."""
        return list(self._by_status[status].values())

    async def _next(self, stage: Stage, pick: Pick[T]) -> T:
        """The first thing ``pick(now)`` returns, waking on changes and due dates."""
        while True:
            found, wake_at = pick(time.time())
            if found is not None:
                return found
            await self._wake[stage].wait(wake_at)

    # -- prepare ----------------------------------------------------------------------

    def _to_prepare(self, now: float) -> tuple[Run | None, float | None]:
        """The run to prepare now: the most important pending run that is due and takes
        precedence over every prepared one; or None and the due date to wake at.  Looks
        at the queue from its head: past the due runs only if their due dates are to
        come, not at the whole queue."""
        bar = max((run.key for run in self.with_status(RunStatus.prepare_done)), default=None)
        wake_at = None
        for _, run in self._queue:
            if bar is not None and run.key <= bar:
                break  # and so are all after it
            if (run.due_date or 0) < now:
                return run, None
            if run.due_date and (wake_at is None or run.due_date < wake_at):
                wake_at = run.due_date
        return None, wake_at

    async def _prepare_loop(self) -> None:
        while True:
            await self._prepare(await self._next(Stage.prepare, self._to_prepare))

    def _flushed(self, run: Run) -> bool:
        return all(other is run or other.status in (RunStatus.pending, RunStatus.deleting)
                   or other.priority < run.priority for other in self.runs.values())

    async def _prepare(self, run: Run) -> None:
        try:
            if run.flush:
                self._host.set_status(run, RunStatus.flushing)
                while not self._flushed(run):
                    await self._wake[Stage.prepare].wait()
                    if run.deleted.is_set():
                        return
            run.start_time = time.time()
            self._host.set_status(run, RunStatus.preparing)
            worker = self._host.worker_for(run)
            self._host.built(run, await self._host.call(
                run, worker.build(run.rid, self.name, run.wd, run.expid, run.priority)))
            await self._host.call(run, worker.prepare())
        except RunDeleted:
            return
        except Exception as exc:
            self._host.stage_failed(run, Stage.prepare, exc)
            return
        self._host.set_status(run, RunStatus.prepare_done)

    # -- run --------------------------------------------------------------------------

    def _to_run(self, now: float) -> tuple[tuple[Run, bool] | None, None]:
        """(run, whether it is resumed) to run now, or None."""
        self._stack = [run for run in self._stack if not run.deleted.is_set()]
        prepared = self.with_status(RunStatus.prepare_done)
        best = max(prepared, key=lambda run: run.key) if prepared else None
        if self._stack and (best is None or best.key <= self._stack[-1].key):
            return (self._stack.pop(), True), None
        return ((best, False) if best is not None else None), None

    async def _run_loop(self) -> None:
        while True:
            run, resumed = await self._next(Stage.run, self._to_run)
            await self._run(run, resumed)

    async def _run(self, run: Run, resumed: bool) -> None:
        worker = run.worker
        assert worker is not None
        try:
            if resumed:
                flag, run.termination_requested = run.termination_requested, False
                self._host.set_status(run, RunStatus.running)
                completed = await self._host.call(run, worker.resume(flag))
            else:
                run.run_time = time.time()
                self._host.set_status(run, RunStatus.running)
                completed = await self._host.call(run, worker.run())
        except RunDeleted:
            return
        except Exception as exc:
            self._host.stage_failed(run, Stage.run, exc)
            return
        if completed:
            self._host.set_status(run, RunStatus.run_done)
        else:
            self._host.set_status(run, RunStatus.paused)
            self._stack.append(run)
            logger.debug("RID %d paused", run.rid)

    # -- analyze ----------------------------------------------------------------------

    def _to_analyze(self, now: float) -> tuple[Run | None, None]:
        done = self.with_status(RunStatus.run_done)
        return (max(done, key=lambda run: run.key) if done else None), None

    async def _analyze_loop(self) -> None:
        while True:
            await self._analyze(await self._next(Stage.analyze, self._to_analyze))

    async def _analyze(self, run: Run) -> None:
        worker = run.worker
        assert worker is not None
        try:
            self._host.set_status(run, RunStatus.analyzing)
            await self._host.call(run, worker.analyze())
        except RunDeleted:
            return
        except Exception as exc:
            self._host.stage_failed(run, Stage.analyze, exc)
            return
        self._host.finish(run, "completed")
