"""The persisted schedule: after a master crash (the Scheduler dropped without stop(),
or the process killed with SIGKILL) queued runs come back with their RIDs and then run,
and runs a worker held are reported as interrupted, not run again."""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from artiq_bus import pyon
from artiq_bus.scheduling import INTERRUPTED
from artiq_bus.scheduling.persist import read_schedule

from helpers import run_bounded
from test_scheduling_worker import EXPID, Harness, forever

LOGGER = "artiq_bus.scheduling"
FAR = 4_000_000_000.0  # a due date that never comes during a test


def persisted(tmp_path: Path) -> dict[int, dict[str, Any]]:
    return read_schedule(tmp_path / "schedule.sqlite")[1]


def crash_with_runs(tmp_path: Path) -> None:
    """A master that dies with: RID 0 running, 1 preparing (pipeline b), 2 prepare_done,
    3 pending, 4 pending with flush, 5 pending with a far due date.  The Scheduler is
    never stopped: its loop just ends."""
    async def main() -> None:
        h = Harness(tmp_path)
        await h.scheduler.start()
        h.farm.on(0, "run", forever())
        h.farm.on(1, "prepare", forever())
        await h.submit(priority=1)
        await h.submit("b")
        await h.submit(priority=1)
        await h.submit()
        await h.submit(priority=-1, flush=True)
        await h.submit(priority=5, due_date=FAR)
        await h.schedule.wait_status(0, "running")
        await h.schedule.wait_status(1, "preparing")
        await h.schedule.wait_status(2, "prepare_done")
    run_bounded(main())


def test_crash_restores_queued_runs_and_reports_active_ones(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = time.time()
    crash_with_runs(tmp_path)
    assert {rid: r["status"] for rid, r in persisted(tmp_path).items()} == {
        0: "running", 1: "preparing", 2: "prepare_done", 3: "pending", 4: "pending",
        5: "pending"}
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def restart() -> Harness:
        async with Harness(tmp_path) as h:
            # restored runs may have started already: look at what was published
            entries = {u["key"]: u["value"] for u in h.schedule.log
                       if u["path"] == [] and u["action"] == "setitem"}
            assert sorted(entries) == [3, 4, 5]
            assert h.schedule.log[0] == {
                "action": "setitem", "path": [], "key": 3,
                "value": {"pipeline": "main", "expid": EXPID, "priority": 0,
                          "due_date": None, "flush": False, "status": "pending",
                          "repo_msg": None}}
            assert entries[4]["flush"] is True and entries[4]["priority"] == -1
            assert h.schedule.data[5]["due_date"] == FAR
            await h.schedule.wait_gone(3)
            await h.schedule.wait_gone(4)
            assert h.schedule.statuses(4)[:3] == ["pending", "flushing", "preparing"]
            assert await h.submit() == 6  # RIDs are never reused
            await h.schedule.wait_gone(6)
            assert sorted(h.farm.workers) == [3, 4, 6]  # interrupted runs are not re-run
            await h.wait_results(3)
            return h
    h = run_bounded(restart())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "RID 0 was running when the master stopped: interrupted, not run again",
        "RID 1 was preparing when the master stopped: interrupted, not run again",
        "RID 2 was prepare_done when the master stopped: interrupted, not run again"]
    by_rid = {r[0]: r for r in h.results}
    assert sorted(by_rid) == [0, 1, 2]
    for rid, expid, start_time, run_time, outcome in h.results:
        assert expid == EXPID and outcome == INTERRUPTED
        assert before <= start_time <= time.time()
    assert by_rid[0][2] <= by_rid[0][3] and math.isnan(by_rid[1][3])


def test_crash_with_lost_rid_file_does_not_reuse_rids(tmp_path: Path) -> None:
    crash_with_runs(tmp_path)
    (tmp_path / "last_rid.pyon").unlink()

    async def restart() -> None:
        async with Harness(tmp_path) as h:
            assert await h.submit() == 6
    run_bounded(restart())


def test_rid_of_a_deleted_run_is_never_reused_after_a_crash(tmp_path: Path) -> None:
    """RIDs are durable through the persisted schedule (``last_rid``), even when the
    RID file is stale: a submission commits once, off the event loop."""
    async def first() -> None:
        h = Harness(tmp_path)
        await h.scheduler.start()
        h.farm.on(0, "build", forever())
        rid = await h.submit(due_date=FAR)
        h.scheduler.delete(rid)
        await h.scheduler.persisted()
        assert read_schedule(tmp_path / "schedule.sqlite") == (0, {})
    run_bounded(first())
    (tmp_path / "last_rid.pyon").write_text("-1\n")  # as if its write never happened

    async def restart() -> None:
        async with Harness(tmp_path) as h:
            assert await h.submit() == 1
    run_bounded(restart())
    assert (tmp_path / "last_rid.pyon").read_text() == "1\n"


def test_clean_stop_keeps_queued_runs_and_reports_active_ones(tmp_path: Path) -> None:
    async def first() -> Harness:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "run", forever())
            await h.submit()
            await h.submit(due_date=FAR)
            await h.schedule.wait_status(0, "running")
        return h
    h = run_bounded(first())
    assert [(r[0], r[4]) for r in h.results] == [(0, INTERRUPTED)]
    assert h.schedule.data == {}  # stop deletes every run, as ARTIQ's does
    assert {rid: r["status"] for rid, r in persisted(tmp_path).items()} == {1: "pending"}

    async def second() -> None:
        async with Harness(tmp_path) as h:
            assert h.schedule.data[1]["due_date"] == FAR
            assert h.results == []
    run_bounded(second())


def test_submission_is_written_before_submit_returns(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            h.farm.on(0, "build", forever())
            rid = await h.submit(due_date=time.time() - 1)
            assert persisted(tmp_path)[rid]["due_date"] is not None
            await h.schedule.wait_status(rid, "preparing")
            await h.scheduler.persisted()
            assert persisted(tmp_path)[rid]["status"] == "preparing"
            h.scheduler.delete(rid)
            await h.scheduler.persisted()
            assert persisted(tmp_path) == {}
    run_bounded(main())


def test_unreadable_file_is_moved_aside(tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "schedule.sqlite").write_text("{not a database")

    async def main() -> None:
        async with Harness(tmp_path) as h:
            rid = await h.submit()
            await h.schedule.wait_gone(rid)
    run_bounded(main())
    [aside] = [p.name for p in tmp_path.iterdir() if ".bad-" in p.name]
    assert (tmp_path / aside).read_text() == "{not a database"
    assert any("cannot read the persisted schedule" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)


def test_unwritable_file_is_logged_not_fatal(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with Harness(tmp_path, persist_path=tmp_path / "missing" / "s.sqlite") as h:
            rid = await h.submit()
            await h.schedule.wait_gone(rid)
    run_bounded(main())
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(messages) == 1 and "cannot write the persisted schedule" in messages[0]


def test_restored_repository_run_gets_a_fresh_checkout(tmp_path: Path) -> None:
    resolved: list[dict[str, Any]] = []
    released: list[str] = []

    async def resolve(expid: dict[str, Any]) -> tuple[str, str, str]:
        resolved.append(dict(expid))
        return str(tmp_path / f"checkout{len(resolved)}"), "fix things", "c0ffee"

    options = {"resolve_repository": resolve, "release_revision": released.append}
    repo_expid = {**EXPID, "file": "exp.py", "repo_rev": None}

    async def crash() -> None:
        h = Harness(tmp_path, **options)
        await h.scheduler.start()
        h.farm.on(0, "prepare", forever())
        await h.submit()
        await h.schedule.wait_status(0, "preparing")
        await h.submit(expid=repo_expid)  # waits behind RID 0's prepare
    run_bounded(crash())
    pinned = {**repo_expid, "repo_rev": "c0ffee"}
    assert persisted(tmp_path)[1]["expid"] == pinned
    assert released == []

    async def restart() -> Harness:
        async with Harness(tmp_path, **options) as h:
            await h.schedule.wait_gone(1)
            assert h.schedule.sequence(1)[0]["value"]["repo_msg"] == "fix things"
            return h
    h = run_bounded(restart())
    assert [e["repo_rev"] for e in resolved] == [None, "c0ffee"]
    assert h.farm.workers[1].calls[0] == ("build", 1, "main", str(tmp_path / "checkout2"),
                                          pinned, 0)
    assert released == ["c0ffee"]


KILLED_MASTER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_scheduling_worker import Harness, forever

    async def main():
        h = Harness(Path(sys.argv[1]))
        await h.scheduler.start()
        h.farm.on(0, "run", forever())
        await h.submit(priority=1)
        await h.submit(priority=1)  # prepared ahead: prepare_done
        await h.submit()            # pending
        await h.schedule.wait_status(0, "running")
        await h.schedule.wait_status(1, "prepare_done")
        print("READY", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def test_sigkill_master(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tests_dir = str(Path(__file__).parent)
    with subprocess.Popen([sys.executable, "-c", KILLED_MASTER, str(tmp_path), tests_dir],
                          stdout=subprocess.PIPE, text=True) as master:
        try:
            assert master.stdout is not None
            ready, _, _ = select.select([master.stdout], [], [], 20.0)
            assert ready, "the master did not get ready within 20 s"
            assert master.stdout.readline().strip() == "READY"
        finally:
            os.kill(master.pid, signal.SIGKILL)
            master.wait(10)
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def restart() -> Harness:
        async with Harness(tmp_path) as h:
            await h.schedule.wait_gone(2)
            assert "run_done" in h.schedule.statuses(2)
            assert await h.submit() == 3
            await h.schedule.wait_gone(3)
            await h.wait_results(2)
            return h
    h = run_bounded(restart())
    assert sorted((r[0], r[4]) for r in h.results) == [(0, INTERRUPTED), (1, INTERRUPTED)]
    # built before the crash: the results files are named after the class
    assert h.class_names == {0: "Experiment0", 1: "Experiment1"}
    assert sorted(h.farm.workers) == [2, 3]


def test_stop_without_start_keeps_the_file(tmp_path: Path) -> None:
    crash_with_runs(tmp_path)
    before = persisted(tmp_path)

    async def main() -> None:
        h = Harness(tmp_path)
        await h.scheduler.stop()
    run_bounded(main())
    assert persisted(tmp_path) == before
