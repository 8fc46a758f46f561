"""Which changes wake which stage (each stage has its own wake-up, see the pipeline's
module doc): the changes that give a stage work must reach it, and a burst of runs
must not wake stages for nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from artiq_bus.protocol import updates
from artiq_bus.scheduling.pipeline import Pipeline

from test_scheduling_worker import (EXPID, Harness, basic_steps, forever, run, wait_for,
                                    yielding)


def test_flush_goes_on_when_the_run_it_waits_for_is_deleted(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "run", forever())
            first = await h.submit()
            await h.schedule.wait_status(first, "running")
            flushed = await h.submit(flush=True)
            await h.schedule.wait_status(flushed, "flushing")
            h.scheduler.delete(first)
            await h.schedule.wait_gone(flushed)
            assert h.schedule.sequence(flushed) == basic_steps(flushed, EXPID, flush=True)
    run(main())


def test_deleting_the_prepared_run_lets_a_less_important_one_be_prepared(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "run", forever())
            await h.submit()
            await h.schedule.wait_status(0, "running")
            prepared = await h.submit(priority=1)
            await h.schedule.wait_status(prepared, "prepare_done")
            waiting = await h.submit()  # behind the prepared run: stays pending
            h.scheduler.delete(prepared)
            await h.schedule.wait_status(waiting, "prepare_done")
    run(main())


def test_a_paused_run_deleted_on_the_stack_is_not_resumed(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            release = asyncio.Event()
            h.farm.on(0, "run", yielding())
            h.farm.on(1, "run", wait_for(release))
            h.farm.on(2, "run", forever())
            await h.submit(priority=0)
            await h.schedule.wait_status(0, "running")
            await h.submit(priority=1)  # RID 0 pauses for it
            await h.schedule.wait_status(1, "running")
            assert h.schedule.status(0) == "paused"
            await h.submit(priority=0)
            await h.schedule.wait_status(2, "prepare_done")
            h.scheduler.delete(0)
            await h.schedule.wait_gone(0)
            release.set()
            await h.schedule.wait_status(2, "running")
            assert h.schedule.statuses(0)[-3:] == ["paused", "deleting", "gone"]
    run(main())


def test_a_burst_wakes_each_stage_a_bounded_number_of_times_per_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stages look for work a few times per run, whatever the queue's length (they
    used to wake at every change of any run)."""
    looks = {"prepare": 0, "run": 0, "analyze": 0}
    for stage in looks:
        pick = getattr(Pipeline, f"_to_{stage}")

        def counted(self: Pipeline, now: float, pick=pick, stage=stage) -> object:
            looks[stage] += 1
            return pick(self, now)
        monkeypatch.setattr(Pipeline, f"_to_{stage}", counted)
    runs = 60

    async def main() -> None:
        async with Harness(tmp_path) as h:
            rids = await asyncio.gather(*(h.submit() for _ in range(runs)))
            await h.schedule.wait_for(lambda: not h.schedule.data, timeout_s=20.0)
            assert [u for u in h.schedule.log if u["action"] == "delitem"] == [
                updates.delitem([], rid) for rid in sorted(rids)]
    started = time.monotonic()
    run(main())
    assert time.monotonic() - started < 20.0
    assert all(count <= 3 * runs for count in looks.values()), looks
