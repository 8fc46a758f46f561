"""Which changes wake which stage (each stage has its own wake-up, see the pipeline's
module doc): the changes that give a stage work must reach it, and a burst of runs
must not wake stages for nothing."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from artiq_bus.protocol import updates
from artiq_bus.scheduling import RunStatus
from artiq_bus.scheduling.pipeline import Pipeline
from artiq_bus.scheduling.runs import Run

from helpers import run_bounded
from test_scheduling_worker import (EXPID, Harness, basic_steps, forever, wait_for,
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
    run_bounded(main())


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
    run_bounded(main())


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
    run_bounded(main())


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
    run_bounded(main())
    assert time.monotonic() - started < 20.0
    assert all(count <= 3 * runs for count in looks.values()), looks


def _scanned(runs: list[Run], now: float) -> tuple[Run | None, float | None]:
    """The prepare stage's choice by a scan of every run (as it was made before the
    pipeline kept a queue)."""
    bar = max((run.key for run in runs if run.status is RunStatus.prepare_done), default=None)
    candidates = [run for run in runs if run.status is RunStatus.pending
                  and (bar is None or run.key > bar)]
    due = [run for run in candidates if (run.due_date or 0) < now]
    if due:
        return max(due, key=lambda run: run.key), None
    return None, min((run.due_date for run in candidates if run.due_date), default=None)


@pytest.mark.parametrize("seed", range(40))
def test_the_queue_chooses_as_a_scan_of_every_run(seed: int) -> None:
    rng = random.Random(seed)
    now = 1000.0
    pipeline = Pipeline("main", host=None)  # type: ignore[arg-type]  # never calls it
    runs = []
    for rid in range(rng.randrange(1, 40)):
        later = now + rng.randrange(1, 50)
        due = rng.choice([None, 0.0, now - 5, later, later])
        run = Run(rid=rid, pipeline="main", expid={}, priority=rng.randrange(-2, 3),
                  due_date=due, flush=False)
        pipeline.add(run)
        runs.append(run)
    for _ in range(60):
        assert pipeline._to_prepare(now) == _scanned(runs, now)
        pending = [run for run in runs if run.status is RunStatus.pending]
        others = [run for run in runs if run.status not in (RunStatus.pending,
                                                              RunStatus.deleting)]
        if not pending and not others:
            break
        run = rng.choice(pending + others)
        old, run.status = run.status, rng.choice(
            [RunStatus.prepare_done, RunStatus.running, RunStatus.deleting]
            if run.status is RunStatus.pending else [RunStatus.deleting])
        pipeline.moved(run, old)
