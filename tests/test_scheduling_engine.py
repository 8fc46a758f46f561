"""The scheduling engine's ARTIQ semantics (reference §3), on fake workers, no sockets:
the exact schedule update sequences, ordering, due dates, flush, deletion, pipelines
and stop (pause and termination: test_scheduling_pause.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from artiq_bus.protocol import updates
from artiq_bus.scheduling import INTERRUPTED, RunStatus

from helpers import run_bounded
from test_scheduling_worker import (EXPID, Harness, basic_steps, forever, wait_for,
                                    yielding)

LOGGER = "artiq_bus.scheduling"


def test_status_names_and_numbers() -> None:
    assert [(s.name, s.value) for s in RunStatus] == [
        ("pending", 0), ("flushing", 1), ("preparing", 2), ("prepare_done", 3),
        ("running", 4), ("run_done", 5), ("analyzing", 6), ("deleting", 7), ("paused", 8)]


def test_basic_sequence(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            rid = await h.submit()
            assert rid == 0
            await h.schedule.wait_gone(rid)
            assert h.schedule.log == basic_steps(rid, EXPID)
            worker = h.farm.workers[rid]
            assert worker.calls == [("build", 0, "main", None, EXPID, 0), "prepare", "run",
                                    "analyze", ("close", "completed")]
            assert h.results == []  # the worker writes the results of a completed run
            assert h.scheduler.pipelines == []
    run_bounded(main())


def test_far_future_due_date_never_runs_even_at_high_priority(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            late = await h.submit(priority=99, due_date=time.time() + 1000)
            rid = await h.submit()
            await h.schedule.wait_gone(rid)
            assert h.schedule.log[1:] == basic_steps(rid, EXPID)
            assert h.schedule.status(late) == "pending" and late not in h.farm.workers
            h.scheduler.delete(late)
            await h.schedule.wait_gone(late)
            assert h.schedule.statuses(late) == ["pending", "deleting", "gone"]
    run_bounded(main())


def test_flush_waits_for_active_run_of_same_priority(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            release = asyncio.Event()
            h.farm.on(0, "run", wait_for(release))
            first = await h.submit()
            await h.schedule.wait_status(first, "running")
            flushed = await h.submit(flush=True)
            await h.schedule.wait_status(flushed, "flushing")
            assert flushed not in h.farm.workers  # no build while flushing
            release.set()
            await h.schedule.wait_gone(flushed)
            assert h.schedule.sequence(flushed) == basic_steps(flushed, EXPID, flush=True)
            log = h.schedule.log
            first_deleting = log.index(updates.setitem([first], "status", "deleting"))
            assert log.index(updates.setitem([flushed], "status", "preparing")) > first_deleting
    run_bounded(main())


def test_flush_ignores_lower_priority_runs(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "run", forever())
            low = await h.submit(priority=0)
            await h.schedule.wait_status(low, "running")
            high = await h.submit(priority=1, flush=True)
            await h.schedule.wait_status(high, "prepare_done")
            assert h.schedule.statuses(high)[:3] == ["pending", "flushing", "preparing"]
    run_bounded(main())


def test_order_priority_then_due_date_then_rid(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            block = asyncio.Event()
            h.farm.on(0, "run", wait_for(block))
            blocker = await h.submit(priority=10)
            await h.schedule.wait_status(blocker, "running")
            past = time.time() - 100
            a = await h.submit(priority=1)                 # (1, 0, -1)
            b = await h.submit(priority=2, due_date=past)  # highest priority
            c = await h.submit(priority=1, due_date=past)  # later due date than "none"
            d = await h.submit(priority=1)                 # same key as a, higher RID
            block.set()
            for rid in (a, b, c, d):
                await h.schedule.wait_gone(rid)
            started = [u["path"][0] for u in h.schedule.log
                       if u["path"] and u["value"] == "running"]
            assert started == [blocker, b, a, d, c]
    run_bounded(main())


def test_one_run_prepared_ahead_unless_more_important(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            release = asyncio.Event()
            h.farm.on(0, "run", wait_for(release))
            first = await h.submit()
            await h.schedule.wait_status(first, "running")
            second = await h.submit()
            third = await h.submit()
            await h.schedule.wait_status(second, "prepare_done")
            assert h.schedule.status(third) == "pending"
            urgent = await h.submit(priority=5)  # takes precedence: prepared too
            await h.schedule.wait_status(urgent, "prepare_done")
            assert h.schedule.status(third) == "pending"
            release.set()
            for rid in (second, third, urgent):
                await h.schedule.wait_gone(rid)
            started = [u["path"][0] for u in h.schedule.log
                       if u["path"] and u["value"] == "running"]
            assert started == [first, urgent, second, third]
    run_bounded(main())


def test_delete_in_every_state(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def main() -> None:
        async with Harness(tmp_path) as h:
            cases: dict[str, int] = {}
            h.farm.on(0, "run", forever())
            cases["running"] = await h.submit("p-running")
            h.farm.on(1, "analyze", forever())  # RID 2 then waits in run_done
            cases["analyzing"] = await h.submit("p-analyze")
            cases["run_done"] = await h.submit("p-analyze")
            h.farm.on(3, "build", forever())
            cases["preparing (in build)"] = await h.submit("p-build")
            h.farm.on(4, "prepare", forever())
            cases["preparing (in prepare)"] = await h.submit("p-prepare")
            h.farm.on(5, "run", forever())
            await h.submit("p-queue")
            cases["prepare_done"] = await h.submit("p-queue")
            cases["pending"] = await h.submit("p-queue")
            h.farm.on(8, "run", forever())
            await h.submit("p-flush")
            cases["flushing"] = await h.submit("p-flush", flush=True)
            h.farm.on(10, "run", yielding())
            cases["paused"] = await h.submit("p-paused")
            await h.schedule.wait_status(cases["paused"], "running")
            h.farm.on(11, "run", forever())
            await h.submit("p-paused", priority=1)
            for state, rid in cases.items():
                await h.schedule.wait_status(rid, state.split()[0])
            assert h.farm.workers[4].calls[-1] == "prepare"
            # pending first: deleting the prepare_done run lets the pending one prepare
            for state in sorted(cases, key=lambda state: state != "pending"):
                rid = cases[state]
                h.scheduler.delete(rid)
                h.scheduler.delete(rid)  # repeated: ignored
                await h.schedule.wait_gone(rid)
                assert h.schedule.statuses(rid)[-2:] == ["deleting", "gone"], state
                assert h.schedule.statuses(rid).count("deleting") == 1, state
                worker = h.farm.workers.get(rid)
                if state in ("pending", "flushing"):
                    assert worker is None
                else:
                    assert worker is not None and worker.closed.is_set(), state
                    assert worker.calls[-1] == ("close", "deleted"), state
            h.scheduler.delete(12345)  # unknown: ignored
            assert h.results == []
    run_bounded(main())
    assert [r for r in caplog.records if r.levelno >= logging.WARNING
            and "the master is stopping" not in r.getMessage()] == []


def test_request_termination_deletes_runs_that_are_not_running(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "build", forever())
            preparing = await h.submit()
            pending = await h.submit()
            await h.schedule.wait_status(preparing, "preparing")
            h.scheduler.request_termination(pending)
            h.scheduler.request_termination(preparing)
            h.scheduler.request_termination(999)  # unknown: no-op
            await h.schedule.wait_gone(pending)
            await h.schedule.wait_gone(preparing)
            assert h.schedule.statuses(pending) == ["pending", "deleting", "gone"]
            assert h.schedule.statuses(preparing) == ["pending", "preparing", "deleting",
                                                      "gone"]
            assert pending not in h.farm.workers
    run_bounded(main())


def test_stop_with_active_runs_does_not_hang(tmp_path: Path) -> None:
    async def main() -> Harness:
        h = Harness(tmp_path)
        async with h:
            h.farm.on(0, "run", forever())
            h.farm.on(1, "prepare", forever())
            h.farm.on(2, "run", yielding())
            running = await h.submit("a")
            preparing = await h.submit("b")
            paused = await h.submit("c")
            h.farm.on(3, "run", forever())
            await h.schedule.wait_status(paused, "running")
            preempt = await h.submit("c", priority=2)
            pending = await h.submit("a", due_date=time.time() + 1000)
            await h.schedule.wait_status(running, "running")
            await h.schedule.wait_status(preparing, "preparing")
            await h.schedule.wait_status(paused, "paused")
            await h.schedule.wait_status(preempt, "running")
        assert h.schedule.data == {}
        assert h.scheduler.pipelines == []
        assert all(w.closed.is_set() for w in h.farm.workers.values())
        assert sorted(r[0] for r in h.results) == [running, preparing, paused, preempt]
        assert {r[4] for r in h.results} == {INTERRUPTED}
        assert await h.scheduler.submit("main", dict(EXPID)) is None
        assert h.schedule.statuses(pending) == ["pending", "deleting", "gone"]
        return h
    run_bounded(main())


def test_pipelines_are_independent_and_collected(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            release = asyncio.Event()
            h.farm.on(0, "run", wait_for(release))
            slow = await h.submit("slow")
            await h.schedule.wait_status(slow, "running")
            assert h.scheduler.pipelines == ["slow"]
            fast = [await h.submit("fast") for _ in range(3)]
            for rid in fast:
                await h.schedule.wait_gone(rid)
            assert h.schedule.status(slow) == "running"
            await h.schedule.wait_for(lambda: h.scheduler.pipelines == ["slow"])
            release.set()
            await h.schedule.wait_gone(slow)
            await h.schedule.wait_for(lambda: h.scheduler.pipelines == [])
            again = await h.submit("slow")  # a collected pipeline comes back on demand
            await h.schedule.wait_gone(again)
    run_bounded(main())


def test_get_status_is_the_schedule(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "run", forever())
            due = time.time() + 1000
            rid = await h.submit("x", priority=3)
            other = await h.submit("x", priority=1, due_date=due)
            await h.schedule.wait_status(rid, "running")
            status = h.scheduler.get_status()
            assert status == {
                rid: {"pipeline": "x", "expid": EXPID, "priority": 3, "due_date": None,
                      "flush": False, "status": "running", "repo_msg": None},
                other: {"pipeline": "x", "expid": EXPID, "priority": 1, "due_date": due,
                        "flush": False, "status": "pending", "repo_msg": None}}
            status[rid]["status"] = "changed"  # a copy
            assert h.schedule.status(rid) == "running"
    run_bounded(main())
