"""Worker failures in each stage: ERROR log with ARTIQ's wording and the worker's exit
description, deletion (no analyze after a failed prepare or run), and a results file
written by the engine only when the worker did not write one."""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from artiq_bus.scheduling import (WorkerBuildTimeout, WorkerCrashed, WorkerError,
                                  WorkerWatchdogTimeout)

from helpers import run_bounded
from test_scheduling_worker import EXPID, Harness, fail, forever

LOGGER = "artiq_bus.scheduling"


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def failing(tmp_path: Path, stage: str, exc: Exception,
            exit_description: str | None = None) -> tuple[Harness, list[str]]:
    """Submit one run whose ``stage`` fails; return the harness and its statuses."""
    async def main() -> tuple[Harness, list[str]]:
        async with Harness(tmp_path) as h:
            h.farm.on(0, stage, fail(exc, exit_description))
            rid = await h.submit()
            await h.schedule.wait_gone(rid)
        return h, h.schedule.statuses(rid)  # stop() waited for the results writer
    return run_bounded(main())  # type: ignore[no-any-return]


PREPARE_STEPS = ["pending", "preparing", "deleting", "gone"]
RUN_STEPS = ["pending", "preparing", "prepare_done", "running", "deleting", "gone"]
ANALYZE_STEPS = RUN_STEPS[:-2] + ["run_done", "analyzing", "deleting", "gone"]


@pytest.mark.parametrize("stage", ["build", "prepare"])
def test_experiment_exception_in_prepare_stage(tmp_path: Path, stage: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    h, statuses = failing(tmp_path, stage, WorkerError("ZeroDivisionError: division by zero"))
    assert statuses == PREPARE_STEPS
    assert errors(caplog) == ["got worker exception in prepare stage, deleting RID 0: "
                              "WorkerError: ZeroDivisionError: division by zero"]
    assert h.results == []  # as ARTIQ: no results file for build/prepare failures
    assert h.farm.workers[0].calls[-1] == ("close", "failed in prepare stage")


@pytest.mark.parametrize("exc, outcome", [
    (WorkerCrashed("worker ended unexpectedly"), "worker died: killed by signal 9"),
    (WorkerBuildTimeout("build() took more than 15 s"),
     "build timed out: build() took more than 15 s"),
])
def test_worker_failure_in_prepare_stage_is_recorded(
        tmp_path: Path, exc: Exception, outcome: str,
        caplog: pytest.LogCaptureFixture) -> None:
    description = "killed by signal 9" if isinstance(exc, WorkerCrashed) else None
    h, statuses = failing(tmp_path, "build", exc, description)
    assert statuses == PREPARE_STEPS
    [message] = errors(caplog)
    assert message.startswith("got worker exception in prepare stage, deleting RID 0: ")
    if description:
        assert message.endswith("(worker: killed by signal 9)")
    [(rid, expid, start_time, run_time, written)] = h.results
    assert (rid, expid, written) == (0, EXPID, outcome)
    assert start_time > 0 and math.isnan(run_time)


def test_run_exception_with_results_written_by_worker(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h, statuses = failing(tmp_path, "run",
                          WorkerError("TypeError: bad", results_written=True))
    assert statuses == RUN_STEPS  # no analyze
    assert errors(caplog) == ["got worker exception in run stage, deleting RID 0: "
                              "WorkerError: TypeError: bad"]
    assert h.results == []
    assert "analyze" not in h.farm.workers[0].calls


@pytest.mark.parametrize("exc, description, outcome", [
    (WorkerCrashed("pipe closed"), "killed by signal 9", "worker died: killed by signal 9"),
    (WorkerCrashed("pipe closed"), None, "worker died: pipe closed"),
    (WorkerWatchdogTimeout("watchdog of 1 s expired"), None,
     "watchdog expired: watchdog of 1 s expired"),
    (WorkerError("results could not be written"), None,
     "error: results could not be written"),
])
def test_run_stage_failure_without_results_is_recorded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, exc: Exception,
        description: str | None, outcome: str) -> None:
    h, statuses = failing(tmp_path, "run", exc, description)
    assert statuses == RUN_STEPS
    [message] = errors(caplog)
    assert message.startswith("got worker exception in run stage, deleting RID 0")
    [(rid, expid, start_time, run_time, written)] = h.results
    assert (rid, expid, written) == (0, EXPID, outcome)
    assert start_time <= run_time


def test_analyze_exception_still_deletes(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    h, statuses = failing(tmp_path, "analyze",
                          WorkerError("KeyError: 'x'", results_written=True))
    assert statuses == ANALYZE_STEPS
    assert errors(caplog) == ["got worker exception in analyze stage of RID 0: "
                              "WorkerError: KeyError: 'x'"]
    assert h.results == []


def test_worker_death_in_analyze_is_recorded(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    h, statuses = failing(tmp_path, "analyze", WorkerCrashed("eof"), "exit code 1")
    assert statuses == ANALYZE_STEPS
    assert [r[4] for r in h.results] == ["worker died: exit code 1"]


def test_handle_bug_is_logged_with_traceback_and_deleted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h, statuses = failing(tmp_path, "run", RuntimeError("handle bug"))
    assert statuses == RUN_STEPS
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None
    assert [r[4] for r in h.results] == ["error: RuntimeError: handle bug"]


def test_failure_does_not_disturb_the_next_run(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "run", fail(WorkerCrashed("gone"), "killed by signal 9"))
            bad = await h.submit()
            good = await h.submit()
            await h.schedule.wait_gone(bad)
            await h.schedule.wait_gone(good)
            assert "run_done" in h.schedule.statuses(good)
    run_bounded(main())


def test_results_writer_failure_is_logged(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async def broken_writer(*args: Any) -> None:
            raise OSError("disk full")
        async with Harness(tmp_path, results_writer=broken_writer) as h:
            h.farm.on(0, "run", fail(WorkerCrashed("gone")))
            rid = await h.submit()
            await h.schedule.wait_gone(rid)
    run_bounded(main())  # stop() waited for the results writer
    assert "RID 0: writing its results file (worker died: gone) failed: OSError: disk full" \
        in errors(caplog)


def test_close_that_hangs_or_raises_does_not_block_deletion(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import artiq_bus.scheduling.engine as engine
    monkeypatch.setattr(engine, "CLOSE_TIMEOUT_S", 0.2)

    async def main() -> None:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "run", forever())
            h.farm.on(1, "run", forever())
            hung, broken = await h.submit("a"), await h.submit("b")
            await h.schedule.wait_status(hung, "running")
            await h.schedule.wait_status(broken, "running")

            async def hangs(reason: str) -> None:
                await asyncio.Event().wait()

            async def raises(reason: str) -> None:
                raise RuntimeError("close bug")
            h.farm.workers[hung].close = hangs  # type: ignore[method-assign]
            h.farm.workers[broken].close = raises  # type: ignore[method-assign]
            h.scheduler.delete(hung)
            h.scheduler.delete(broken)
            await h.schedule.wait_gone(hung)
            await h.schedule.wait_gone(broken)
    run_bounded(main())
    assert sorted(m for m in errors(caplog) if "closing" in m) == [
        "RID 0: closing its worker failed: TimeoutError",
        "RID 1: closing its worker failed: RuntimeError: close bug"]


def test_handle_cancelling_its_own_call_is_a_failure(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    async def cancelled(worker: Any) -> None:
        raise asyncio.CancelledError

    async def main() -> Harness:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "prepare", cancelled)
            rid = await h.submit()
            await h.schedule.wait_gone(rid)
            assert h.schedule.statuses(rid) == PREPARE_STEPS
            assert await h.submit() == 1  # the pipeline still works
            await h.schedule.wait_gone(1)
            return h
    run_bounded(main())
    assert errors(caplog) == ["got worker exception in prepare stage, deleting RID 0: "
                              "WorkerError: the worker call was cancelled"]
