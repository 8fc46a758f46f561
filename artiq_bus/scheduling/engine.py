"""The scheduler: ARTIQ's run scheduling (reference §3), as an asyncio engine.

It owns the runs, the pipelines (created on first use, dropped when empty) and the
deletions, and publishes the ``schedule`` struct with ARTIQ's exact update sequence:
``setitem RID {…, "status": "pending", "repo_msg"}`` at submission, ``setitem
[RID] "status" NAME`` at each change, ``delitem RID`` when the deletion is complete.
It knows nothing of sockets: workers are :class:`~.worker.WorkerHandle` objects and
the ``schedule`` struct anything with ``data``, ``setitem``, ``delitem`` and
``update`` (a :class:`~artiq_bus.runtime.structs.StructOwner`).

Beyond ARTIQ: the queued and active runs are persisted (:mod:`.persist`); at start
queued runs come back with their RIDs and runs a worker held when the master died
are reported as interrupted (ERROR log, results file), not run again.  A clean
``stop()`` keeps the queued runs for the next start and reports the active ones it
kills.  A worker that fails in a stage is logged and deleted; when it died (or the
run or analyze stage failed) without writing its results file, the engine has one
written through ``results_writer``.  The pause protocol is described in
:mod:`.worker`.
"""

from __future__ import annotations

import asyncio
import csv
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ..protocol import updates
from .errors import (InvalidSubmission, PauseNotAllowed, RepositoryUnavailable, RIDNotFound,
                     RunDeleted, SchedulerNotStarted, WorkerError)
from .persist import ScheduleStore
from .pipeline import Pipeline
from .rid import RIDCounter
from .runs import (INTERRUPTED, Run, check_submission, describe, failure_outcome,
                   needs_results)
from .status import ACTIVE, QUEUED, RunStatus, Stage
from .tasks import TaskSet, either
from .worker import WorkerFactory, WorkerHandle

__all__ = ["Scheduler", "ScheduleStruct", "ResultsWriter"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Bound on a handle's close(): it terminates, then kills, within a few seconds; after
#: analyze it first waits, up to bus_worker.RESULTS_WAIT_S (180 s), for the worker to
#: have its results file on disk.
CLOSE_TIMEOUT_S = 200.0

#: ``results_writer(rid, expid, start_time, run_time, outcome, class_name)``; may be async.
ResultsWriter = Callable[[int, dict[str, Any], float, float, str, str | None],
                         Awaitable[None] | None]
#: ``resolve_repository(expid) -> (wd, repo_msg, pinned_rev)``.
RepositoryResolver = Callable[[dict[str, Any]], Awaitable[tuple[str, str | None, str]]]


class ScheduleStruct(Protocol):
    """The replicated ``schedule`` struct (a StructOwner)."""

    data: dict[Any, Any]

    def setitem(self, key: Any, value: Any) -> None: ...

    def delitem(self, key: Any) -> None: ...

    def update(self, update: dict[str, Any]) -> None: ...


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if inspect.isawaitable(value):
        await value


class Scheduler:
    """Runs, pipelines and deletions; public API as ARTIQ's ``schedule`` target."""

    def __init__(self, worker_factory: WorkerFactory, rid_counter: RIDCounter,
                 schedule: ScheduleStruct, *,
                 log_submissions: str | os.PathLike[str] | None = None,
                 persist_path: str | os.PathLike[str] | None = None,
                 results_writer: ResultsWriter | None = None,
                 resolve_repository: RepositoryResolver | None = None,
                 release_revision: Callable[[str], Awaitable[None] | None] | None = None):
        self._worker_factory = worker_factory
        self._rid_counter = rid_counter
        self._schedule = schedule
        self._log_submissions = log_submissions
        self._results_writer = results_writer
        self._resolve_repository = resolve_repository
        self._release_revision = release_revision
        self._file = ScheduleStore(persist_path, self._record_of, rid_counter)
        self._runs: dict[int, Run] = {}
        self._pipelines: dict[str, Pipeline] = {}
        self._tasks = TaskSet("scheduler")
        self._abandoned = TaskSet("scheduler (abandoned worker calls)")
        self._started = False
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Bring back the persisted schedule, then accept submissions."""
        if self._started or self._stopping:
            return
        records = await self._file.load()
        for rid, record in sorted(records.items()):
            status = RunStatus.__members__.get(str(record.get("status")))
            if status in QUEUED:
                await self._restore(rid, record)
            else:
                logger.error("RID %d was %s when the master stopped: interrupted, not run "
                             "again", rid, record.get("status"))
                self._report(rid, record, INTERRUPTED)
                self._file.changed(rid)  # reported once: out of the database
        self._file.changed()
        await self._file.written()
        self._started = True

    async def stop(self) -> None:
        """Delete every run (closing its worker) and wait for that; queued runs stay in
        the persisted schedule, active ones are reported as interrupted."""
        if not self._stopping:
            self._stopping = True
            # never started: the file still holds what start() would have loaded
            self._file.freeze({rid: run.record() for rid, run in self._runs.items()
                               if run.status in QUEUED} if self._started else None)
            for run in list(self._runs.values()):
                if run.status in ACTIVE:
                    logger.warning("RID %d interrupted (%s): the master is stopping",
                                   run.rid, run.status.name)
                    self._report(run.rid, run.record(), INTERRUPTED)
                self._delete(run, "master stopping")
        await self._file.close()
        await self._tasks.join()
        for pipeline in list(self._pipelines.values()):
            logger.warning("pipeline %r still has RIDs %s after stop", pipeline.name,
                           sorted(pipeline.runs))
            await pipeline.stop()
        await self._abandoned.cancel(CLOSE_TIMEOUT_S)

    async def persisted(self) -> None:
        """Until the persisted schedule holds every change made so far."""
        await self._file.written()

    async def _restore(self, rid: int, record: dict[str, Any]) -> None:
        try:
            run = Run.from_record(rid, record)
            await self._resolve(run)
        except Exception as exc:
            logger.error("RID %d could not be restored from the persisted schedule: %s",
                         rid, exc)
            return
        logger.info("RID %d restored from the persisted schedule", rid)
        self._add(run)

    # -- submission ---------------------------------------------------------------------

    async def submit(self, pipeline_name: str, expid: dict[str, Any], priority: int = 0,
                     due_date: float | None = None, flush: bool = False) -> int | None:
        """Queue a run; its RID (None once the scheduler is stopping)."""
        if self._stopping:
            return None
        if not self._started:
            raise SchedulerNotStarted("the scheduler has not been started")
        try:
            check_submission(pipeline_name, expid, priority, due_date, flush)
        except ValueError as exc:
            raise InvalidSubmission(str(exc)) from None
        run = Run(rid=-1, pipeline=pipeline_name, expid=dict(expid), priority=priority,
                  due_date=due_date, flush=flush)
        await self._resolve(run)  # before the RID: a failure consumes none
        if self._stopping:
            await self._release(run)
            return None
        run.rid = self._rid_counter.get()
        self._add(run)
        self._log_submission(run)
        logger.debug("RID %d submitted to pipeline %r", run.rid, run.pipeline)
        await self._file.written()  # the run may start meanwhile; the RID is durable
        return run.rid

    async def _resolve(self, run: Run) -> None:
        """Where the run's experiment is: repository checkout, absolute file, content."""
        expid = run.expid
        if "repo_rev" in expid:
            if self._resolve_repository is None:
                raise RepositoryUnavailable("this scheduler has no experiment repository")
            run.wd, run.repo_msg, run.pinned_rev = await self._resolve_repository(expid)
            expid["repo_rev"] = run.pinned_rev
        elif "file" in expid:
            expid["file"] = os.path.abspath(expid["file"])

    def _add(self, run: Run) -> None:
        self._runs[run.rid] = run
        pipeline = self._pipelines.get(run.pipeline)
        if pipeline is None:
            pipeline = self._pipelines[run.pipeline] = Pipeline(run.pipeline, self)
            pipeline.start()
        self._schedule.setitem(run.rid, run.entry())
        self._file.changed(run.rid)
        pipeline.add(run)

    def _log_submission(self, run: Run) -> None:
        if self._log_submissions is None:
            return
        try:
            with open(self._log_submissions, "a", newline="", encoding="utf-8") as file:
                csv.writer(file).writerow([run.rid, time.time(), run.expid.get("file", "")])
        except OSError as exc:
            logger.error("RID %d: cannot log the submission to %s: %s", run.rid,
                         self._log_submissions, exc)

    # -- public API ---------------------------------------------------------------------

    def delete(self, rid: int) -> None:
        """Delete a run in any state (unknown or already deleted RIDs are ignored)."""
        run = self._runs.get(rid)
        if run is not None:
            self._delete(run, "deleted")

    def request_termination(self, rid: int) -> None:
        """Ask a running or paused run to stop (its ``pause()`` returns True, its
        ``check_pause()`` turns True); delete a run in any other state."""
        run = self._runs.get(rid)
        if run is None:
            return
        if run.status in (RunStatus.running, RunStatus.paused):
            logger.info("RID %d: termination requested", rid)
            run.termination_requested = True
            self._pipelines[run.pipeline].poke()
        else:
            self._delete(run, "termination requested")

    def check_pause(self, rid: int) -> bool:
        """Whether a running run should pause: termination was requested, or a more
        important run of its pipeline is prepared."""
        run = self._runs.get(rid)
        if run is None:
            raise RIDNotFound(rid)
        if run.status is not RunStatus.running:
            return False
        if run.termination_requested:
            return True
        return any(other.key > run.key for other in
                   self._pipelines[run.pipeline].with_status(RunStatus.prepare_done))

    def check_termination(self, rid: int) -> bool:
        """Whether termination of the run was requested (False for unknown RIDs)."""
        run = self._runs.get(rid)
        return run is not None and run.termination_requested

    @property
    def pipelines(self) -> list[str]:
        """Names of the pipelines that exist now (they come and go with their runs)."""
        return sorted(self._pipelines)

    def get_status(self) -> dict[int, dict[str, Any]]:
        """The schedule: RID → entry (copies of the entries)."""
        return {rid: dict(entry) for rid, entry in self._schedule.data.items()}

    def worker_of(self, rid: int) -> WorkerHandle | None:
        """The worker handle of run ``rid``, if it has one."""
        run = self._runs.get(rid)
        return None if run is None else run.worker

    async def pause(self, rid: int) -> bool:
        """A running run's ``scheduler.pause()``: returns when the run is resumed, True
        if termination was requested (the worker then raises TerminationRequested)."""
        run = self._runs.get(rid)
        if run is None:
            raise RIDNotFound(rid)
        if run.status is not RunStatus.running or run.worker is None:
            raise PauseNotAllowed(f"RID {rid} is {run.status.name}: pause() is only "
                                  "allowed in run()")
        return await run.worker.request_pause()

    # -- StageHost: what the pipelines' stages do to runs ---------------------------------

    def set_status(self, run: Run, status: RunStatus) -> None:
        if run.status is RunStatus.deleting:
            return  # deletion is final: nothing more is published
        old, run.status = run.status, status
        self._schedule.update(updates.setitem([run.rid], "status", status.name))
        self._file.changed(run.rid)
        self._pipelines[run.pipeline].moved(run, old)

    def built(self, run: Run, class_name: str | None) -> None:
        run.class_name = class_name
        self._file.changed(run.rid)

    def worker_for(self, run: Run) -> WorkerHandle:
        if run.deleted.is_set():
            raise RunDeleted(run.rid)
        if run.worker is None:
            run.worker = self._worker_factory(run.rid)
        return run.worker

    async def call(self, run: Run, step: Awaitable[T]) -> T:
        task = asyncio.ensure_future(step)
        try:
            await either(task, run.deleted)
        finally:
            if not task.done():
                task.cancel()
                self._abandoned.adopt(task)
        if run.deleted.is_set():
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a deleted run's worker errors are moot
            raise RunDeleted(run.rid)
        if task.cancelled():  # by the handle itself: a failure, not our cancellation
            raise WorkerError("the worker call was cancelled")
        return task.result()

    def stage_failed(self, run: Run, stage: Stage, exc: Exception) -> None:
        exit_description = run.worker.exit_description if run.worker is not None else None
        where = (f"analyze stage of RID {run.rid}" if stage is Stage.analyze
                 else f"{stage.value} stage, deleting RID {run.rid}")
        told = describe(exc)
        if exit_description and exit_description not in told:  # say how, once
            told += f" (worker: {exit_description})"
        logger.error("got worker exception in %s: %s", where, told,
                     exc_info=None if isinstance(exc, WorkerError) else exc)
        if needs_results(stage, exc):
            outcome = failure_outcome(exc, exit_description)
            self._report(run.rid, run.record(), outcome)
        self._delete(run, f"failed in {stage.value} stage")

    def finish(self, run: Run, reason: str) -> None:
        self._delete(run, reason)

    # -- deletion -----------------------------------------------------------------------

    def _delete(self, run: Run, reason: str) -> None:
        if run.status is RunStatus.deleting:
            return
        self.set_status(run, RunStatus.deleting)
        run.deleted.set()
        self._tasks.spawn(self._complete_deletion(run, reason), f"delete RID {run.rid}")

    async def _complete_deletion(self, run: Run, reason: str) -> None:
        """Close the worker, drop the entry, release the revision, GC the pipeline."""
        if run.worker is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await run.worker.close(reason)
            except Exception as exc:
                logger.error("RID %d: closing its worker failed: %s", run.rid, describe(exc))
        self._schedule.delitem(run.rid)
        del self._runs[run.rid]
        await self._release(run)
        pipeline = self._pipelines[run.pipeline]
        pipeline.remove(run)
        if not pipeline.runs:
            del self._pipelines[run.pipeline]
            await pipeline.stop()
        logger.debug("RID %d deleted (%s)", run.rid, reason)

    async def _release(self, run: Run) -> None:
        if self._release_revision is None or run.pinned_rev is None:
            return
        try:
            await _maybe_await(self._release_revision(run.pinned_rev))
        except Exception as exc:
            logger.error("RID %d: releasing revision %s failed: %s", run.rid, run.pinned_rev,
                         describe(exc))

    # -- persistence and results --------------------------------------------------------

    def _record_of(self, rid: int) -> dict[str, Any] | None:
        """What the persisted schedule keeps of run ``rid``: None once it is gone or
        being deleted."""
        run = self._runs.get(rid)
        if run is None or not (run.status in QUEUED or run.status in ACTIVE):
            return None
        return run.record()

    def _report(self, rid: int, record: dict[str, Any], outcome: str) -> None:
        """Have a results file written for a run that will not write its own."""
        if self._results_writer is not None:
            self._tasks.spawn(self._write_results(rid, record, outcome), f"results RID {rid}")

    async def _write_results(self, rid: int, record: dict[str, Any], outcome: str) -> None:
        assert self._results_writer is not None
        start_time, run_time = record.get("start_time"), record.get("run_time")
        try:
            await _maybe_await(self._results_writer(
                rid, record.get("expid") or {},
                float("nan") if start_time is None else start_time,
                float("nan") if run_time is None else run_time, outcome,
                record.get("class_name")))
        except Exception as exc:
            logger.error("RID %d: writing its results file (%s) failed: %s", rid, outcome,
                         describe(exc))

