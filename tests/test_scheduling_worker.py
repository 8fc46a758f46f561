"""Fakes for testing the scheduling engine without sockets, and tests of the pause gate.

``FakeWorker`` is a :class:`~artiq_bus.scheduling.WorkerHandle` whose stages run
*scripts* the test chooses per RID and stage (complete at once, wait for an event,
raise, pause through the scheduler); ``Farm`` is the worker factory; and
``RecordingSchedule`` stands in for the ``schedule`` StructOwner, recording every
update and waking tests that wait for a state.  The other ``test_scheduling_*``
modules import them from here.  Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from artiq_bus.protocol import apply_update, updates
from artiq_bus.scheduling import (PauseGate, PauseNotAllowed, RIDCounter, Scheduler,
                                  WorkerError)
from artiq_bus.scheduling.errors import RunDeleted
from artiq_bus.scheduling.tasks import Signal

from helpers import run_bounded

Script = Callable[["FakeWorker"], Awaitable[None]]
STAGES = ("build", "prepare", "run", "analyze")
EXPID: dict[str, Any] = {"log_level": 30, "class_name": "Exp", "arguments": {},
                         "content": "from artiq.experiment import *"}


def basic_steps(rid: int, expid: dict[str, Any], priority: int = 0,
                due_date: float | None = None, flush: bool = False,
                pipeline: str = "main") -> list[dict[str, Any]]:
    """ARTIQ's ``_get_basic_steps``: the updates of a run that goes straight through."""
    entry = {"pipeline": pipeline, "expid": expid, "priority": priority,
             "due_date": due_date, "flush": flush, "status": "pending", "repo_msg": None}
    statuses = ["flushing"] if flush else []
    statuses += ["preparing", "prepare_done", "running", "run_done", "analyzing", "deleting"]
    return ([updates.setitem([], rid, entry)]
            + [updates.setitem([rid], "status", status) for status in statuses]
            + [updates.delitem([], rid)])




class RecordingSchedule:
    """The ``schedule`` struct: applies and records updates (deep copies, as sent)."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.log: list[dict[str, Any]] = []
        self.changed = Signal()

    def setitem(self, key: Any, value: Any) -> None:
        self.update(updates.setitem([], key, value))

    def delitem(self, key: Any) -> None:
        self.update(updates.delitem([], key))

    def update(self, update: dict[str, Any]) -> None:
        self.log.append(copy.deepcopy(update))
        self.data = apply_update(self.data, update)
        self.changed.notify()

    def poke(self) -> None:
        """Wake waiters (for state that is not published, e.g. termination requests)."""
        self.changed.notify()

    def status(self, rid: int) -> str | None:
        entry = self.data.get(rid)
        return None if entry is None else entry["status"]

    def sequence(self, rid: int) -> list[dict[str, Any]]:
        """The updates about ``rid``, in order."""
        return [u for u in self.log if u["path"] == [rid] or u["path"] == [] and u["key"] == rid]

    def statuses(self, rid: int) -> list[str]:
        """The statuses ``rid`` went through, ``"gone"`` for its deletion."""
        out = []
        for u in self.sequence(rid):
            if u["action"] == "delitem":
                out.append("gone")
            else:
                out.append(u["value"]["status"] if u["path"] == [] else u["value"])
        return out

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float | None = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self.changed.wait()

    async def wait_status(self, rid: int, status: str, timeout_s: float = 5.0) -> None:
        await self.wait_for(lambda: self.status(rid) == status, timeout_s)

    async def wait_gone(self, rid: int, timeout_s: float = 5.0) -> None:
        await self.wait_for(lambda: rid not in self.data, timeout_s)


class FakeWorker:
    """A WorkerHandle whose stages run the farm's scripts for its RID."""

    def __init__(self, rid: int, farm: Farm):
        self.rid = rid
        self.farm = farm
        self.exit_description: str | None = None
        self.calls: list[Any] = []
        self.closed = asyncio.Event()
        self.gate = PauseGate()
        self.pauses = 0
        self._run_task: asyncio.Future[None] | None = None

    async def _stage(self, stage: str) -> None:
        await self.farm.script_for(self.rid, stage)(self)

    async def build(self, rid: int, pipeline_name: str, wd: str | None,
                    expid: dict[str, Any], priority: int) -> str:
        self.calls.append(("build", rid, pipeline_name, wd, copy.deepcopy(expid), priority))
        await self._stage("build")
        return f"Experiment{rid}"

    async def prepare(self) -> None:
        self.calls.append("prepare")
        await self._stage("prepare")

    async def run(self) -> bool:
        self.calls.append("run")
        self._run_task = asyncio.ensure_future(self._stage("run"))
        return await self.gate.stage(self._run_task)

    async def resume(self, termination_requested: bool) -> bool:
        self.calls.append(("resume", termination_requested))
        assert self._run_task is not None
        self.gate.answer(termination_requested)
        return await self.gate.stage(self._run_task)

    async def analyze(self) -> None:
        self.calls.append("analyze")
        await self._stage("analyze")

    async def request_pause(self) -> bool:
        return await self.gate.request()

    async def close(self, reason: str) -> None:
        self.calls.append(("close", reason))
        self.gate.close()
        if self._run_task is not None:
            self._run_task.cancel()
        self.closed.set()


async def _complete(worker: FakeWorker) -> None:
    return None


class Farm:
    """The worker factory: ``farm.on(rid, stage, script)`` before the stage starts."""

    def __init__(self) -> None:
        self.workers: dict[int, FakeWorker] = {}
        self.scheduler: Scheduler | None = None
        self.schedule: RecordingSchedule | None = None
        self._scripts: dict[tuple[int, str], Script] = {}

    def __call__(self, rid: int) -> FakeWorker:
        assert rid not in self.workers, f"second worker for RID {rid}"
        worker = self.workers[rid] = FakeWorker(rid, self)
        return worker

    def on(self, rid: int, stage: str, script: Script) -> None:
        assert stage in STAGES
        self._scripts[rid, stage] = script

    def script_for(self, rid: int, stage: str) -> Script:
        return self._scripts.get((rid, stage), _complete)


# -- scripts ----------------------------------------------------------------------------

def wait_for(event: asyncio.Event) -> Script:
    """The stage ends when ``event`` is set."""
    async def script(worker: FakeWorker) -> None:
        await event.wait()
    return script


def forever() -> Script:
    return wait_for(asyncio.Event())


def fail(exc: BaseException, exit_description: str | None = None) -> Script:
    """The stage raises ``exc`` (a crashed worker also has an exit description)."""
    async def script(worker: FakeWorker) -> None:
        worker.exit_description = exit_description
        raise exc
    return script


def yielding(until: asyncio.Event | None = None) -> Script:
    """A run() that pauses whenever ``check_pause()`` says so, as ARTIQ's background
    examples do; it ends when ``until`` is set, or with TerminationRequested (the
    worker writes the results file, then reports the exception)."""
    async def script(worker: FakeWorker) -> None:
        scheduler, schedule = worker.farm.scheduler, worker.farm.schedule
        assert scheduler is not None and schedule is not None
        while True:
            await schedule.wait_for(lambda: scheduler.check_pause(worker.rid)
                                    or (until is not None and until.is_set()), None)
            if until is not None and until.is_set():
                return
            worker.pauses += 1
            if await scheduler.pause(worker.rid):
                raise WorkerError("TerminationRequested", results_written=True)
    return script


class Harness:
    """A started Scheduler on fakes, files in ``tmp_path``; stopped (within a deadline)
    at the end of the ``async with`` block."""

    def __init__(self, tmp_path: Path, **options: Any):
        self.tmp_path = tmp_path
        self.schedule = RecordingSchedule()
        self.farm = Farm()
        self.results: list[tuple[int, dict[str, Any], float, float, str]] = []
        self.results_written = Signal()
        self.class_names: dict[int, str | None] = {}
        self.rid_counter = RIDCounter(tmp_path / "last_rid.pyon", tmp_path / "results")
        options.setdefault("persist_path", tmp_path / "schedule.sqlite")
        options.setdefault("results_writer", self._write_results)
        self.scheduler = Scheduler(self.farm, self.rid_counter, self.schedule, **options)
        self.farm.scheduler, self.farm.schedule = self.scheduler, self.schedule

    def _write_results(self, rid: int, expid: dict[str, Any], start_time: float,
                       run_time: float, outcome: str, class_name: str | None) -> None:
        self.results.append((rid, expid, start_time, run_time, outcome))
        self.class_names[rid] = class_name
        self.results_written.notify()

    async def wait_results(self, count: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.results) < count:
                await self.results_written.wait()

    async def __aenter__(self) -> Harness:
        await self.scheduler.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        async with asyncio.timeout(10.0):
            await self.scheduler.stop()

    async def submit(self, pipeline: str = "main", expid: dict[str, Any] | None = None,
                     priority: int = 0, due_date: float | None = None,
                     flush: bool = False) -> int:
        rid = await self.scheduler.submit(pipeline, copy.deepcopy(expid or EXPID), priority,
                                          due_date, flush)
        assert rid is not None
        return rid


# -- tests of the pause gate --------------------------------------------------------------

def test_gate_stage_end_without_pause() -> None:
    async def main() -> None:
        gate = PauseGate()
        end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(end.set_result, None)
        assert await gate.stage(end) is True
    run_bounded(main())


def test_gate_pause_then_resume_then_end() -> None:
    async def main() -> None:
        gate = PauseGate()
        end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request = asyncio.create_task(gate.request())
        assert await gate.stage(end) is False
        assert gate.waiting and not request.done()
        gate.answer(True)
        assert await request is True and not gate.waiting
        end.set_result(None)
        assert await gate.stage(end) is True
    run_bounded(main())


def test_gate_request_before_stage_is_seen_and_second_request_refused() -> None:
    async def main() -> None:
        gate = PauseGate()
        end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request = asyncio.create_task(gate.request())
        assert await gate.stage(end) is False  # returns once the request is waiting
        with pytest.raises(PauseNotAllowed):
            await gate.request()
        gate.answer(False)
        assert await request is False
        end.cancel()
    run_bounded(main())


def test_gate_stage_exception_propagates() -> None:
    async def main() -> None:
        gate = PauseGate()
        end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        end.set_exception(WorkerError("boom"))
        with pytest.raises(WorkerError, match="boom"):
            await gate.stage(end)
    run_bounded(main())


def test_gate_close_answers_run_deleted_now_and_later() -> None:
    async def main() -> None:
        gate = PauseGate()
        end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request = asyncio.create_task(gate.request())
        assert await gate.stage(end) is False
        gate.close()
        with pytest.raises(RunDeleted):
            await request
        with pytest.raises(RunDeleted):
            await gate.request()
    run_bounded(main())


def test_gate_withdrawn_request_leaves_no_pause() -> None:
    async def main() -> None:
        gate = PauseGate()
        end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request = asyncio.create_task(gate.request())
        assert await gate.stage(end) is False
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
        assert not gate.waiting
        end.set_result(None)
        assert await gate.stage(end) is True
    run_bounded(main())
