"""Pause, check_pause and termination (reference §3.6–3.8), on fake workers: the
experiment's pause() reaches the engine as the scheduler service would deliver it
(``Scheduler.pause(rid)``), and the handle turns it into run()/resume() returning False."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from artiq_bus.protocol import updates
from artiq_bus.scheduling import PauseNotAllowed, RIDNotFound
from artiq_bus.scheduling.errors import RunDeleted

from helpers import run_bounded
from test_scheduling_worker import (EXPID, Harness, basic_steps, forever, wait_for,
                                    yielding)


def test_pending_priority(tmp_path: Path) -> None:
    """ARTIQ's test_pending_priority: a high-priority run due far in the future does not
    block a middle-priority run that becomes due, which preempts (through pause()) a
    low-priority background run."""
    async def main() -> None:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "run", yielding())
            background = await h.submit(priority=0)
            await h.schedule.wait_status(background, "running")
            high = await h.submit(priority=3, due_date=time.time() + 1000)
            middle = await h.submit(priority=2, due_date=time.time() + 0.2)
            await h.schedule.wait_status(middle, "pending")
            await h.schedule.wait_gone(middle, timeout_s=5.0)  # real due date: ~0.2 s
            assert h.schedule.status(high) == "pending"
            await h.schedule.wait_status(background, "running")
            assert h.farm.workers[background].pauses == 1
            bg = h.schedule.statuses(background)
            assert bg == ["pending", "preparing", "prepare_done", "running", "paused",
                          "running"]
            log = h.schedule.log
            paused_at = log.index(updates.setitem([background], "status", "paused"))
            assert log.index(updates.setitem([middle], "status", "running")) > paused_at
            resumed_at = len(log) - 1 - log[::-1].index(
                updates.setitem([background], "status", "running"))
            assert resumed_at > log.index(updates.setitem([middle], "status", "run_done"))
            h.scheduler.request_termination(background)
            h.schedule.poke()
            await h.schedule.wait_gone(background)
            assert h.farm.workers[background].calls[-2:] == [
                ("resume", True), ("close", "failed in run stage")]
            assert h.schedule.status(high) == "pending"
    run_bounded(main())


def test_check_pause_transitions_and_termination(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            finish = asyncio.Event()
            h.farm.on(0, "run", yielding(until=finish))
            bg = await h.submit(priority=0)
            assert h.scheduler.check_pause(bg) is False  # pending
            await h.schedule.wait_status(bg, "running")
            assert h.scheduler.check_pause(bg) is False
            prepared = asyncio.Event()
            release = asyncio.Event()
            h.farm.on(1, "prepare", wait_for(prepared))
            h.farm.on(1, "run", wait_for(release))
            high = await h.submit(priority=1)
            await h.schedule.wait_status(high, "preparing")
            assert h.scheduler.check_pause(bg) is False  # preparing is not enough
            prepared.set()
            await h.schedule.wait_status(high, "running")
            assert h.schedule.status(bg) == "paused"
            assert h.scheduler.check_pause(bg) is False  # not running
            release.set()
            await h.schedule.wait_gone(high)
            await h.schedule.wait_status(bg, "running")
            assert h.scheduler.check_pause(bg) is False
            assert h.scheduler.check_termination(bg) is False
            h.scheduler.request_termination(bg)
            assert h.scheduler.check_pause(bg) is True
            assert h.scheduler.check_termination(bg) is True
            h.schedule.poke()
            await h.schedule.wait_gone(bg)
            assert h.results == []  # the worker wrote its own (TerminationRequested)
    run_bounded(main())


def test_pause_without_competition_resumes_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            async def pauses_twice(worker: Any) -> None:
                assert await h.scheduler.pause(worker.rid) is False
                assert await h.scheduler.pause(worker.rid) is False
            h.farm.on(0, "run", pauses_twice)
            rid = await h.submit()
            await h.schedule.wait_gone(rid)
            assert h.schedule.statuses(rid) == [
                "pending", "preparing", "prepare_done", "running", "paused", "running",
                "paused", "running", "run_done", "analyzing", "deleting", "gone"]
            assert h.farm.workers[rid].calls[2:5] == ["run", ("resume", False),
                                                      ("resume", False)]
    run_bounded(main())


def test_termination_flag_is_cleared_at_resume(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            seen = []

            async def catches_termination(worker: Any) -> None:
                await h.schedule.wait_for(lambda: h.scheduler.check_termination(worker.rid))
                seen.append(await h.scheduler.pause(worker.rid))
                seen.append(h.scheduler.check_termination(worker.rid))
            h.farm.on(0, "run", catches_termination)
            rid = await h.submit()
            await h.schedule.wait_status(rid, "running")
            h.scheduler.request_termination(rid)
            h.schedule.poke()
            await h.schedule.wait_gone(rid)
            assert seen == [True, False]
            assert "run_done" in h.schedule.statuses(rid)  # it caught it and completed
    run_bounded(main())


def test_pause_outside_run_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            errors = []

            async def pauses(worker: Any) -> None:
                try:
                    await h.scheduler.pause(worker.rid)
                except PauseNotAllowed as exc:
                    errors.append(str(exc))
            h.farm.on(0, "prepare", pauses)
            h.farm.on(0, "analyze", pauses)
            rid = await h.submit()
            await h.schedule.wait_gone(rid)
            assert h.schedule.log == basic_steps(rid, EXPID)
            assert errors == ["RID 0 is preparing: pause() is only allowed in run()",
                              "RID 0 is analyzing: pause() is only allowed in run()"]
            with pytest.raises(RIDNotFound):
                await h.scheduler.pause(rid)
            with pytest.raises(KeyError):
                h.scheduler.check_pause(rid)
            assert h.scheduler.check_termination(rid) is False
    run_bounded(main())


def test_pause_request_from_the_service_side(tmp_path: Path) -> None:
    """As the scheduler service would: pause() awaited in a task of its own, not in the
    worker's run; deleting the paused run answers the request with RunDeleted."""
    async def main() -> None:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "run", forever())
            rid = await h.submit()
            await h.schedule.wait_status(rid, "running")
            first = asyncio.create_task(h.scheduler.pause(rid))
            await h.schedule.wait_status(rid, "running")  # paused, resumed at once
            assert await first is False
            assert h.schedule.statuses(rid)[-2:] == ["paused", "running"]
            h.farm.on(1, "run", forever())
            urgent = await h.submit(priority=1)
            await h.schedule.wait_status(urgent, "prepare_done")
            second = asyncio.create_task(h.scheduler.pause(rid))
            await h.schedule.wait_status(urgent, "running")
            assert h.schedule.status(rid) == "paused" and not second.done()
            with pytest.raises(PauseNotAllowed):  # not running any more
                await h.scheduler.pause(rid)
            h.scheduler.delete(rid)
            with pytest.raises(RunDeleted):
                await second
    run_bounded(main())
