"""The persisted schedule under ``kill -9`` mid-burst, which commits are synced to the
disk, and interrupted runs reported once.  (The basic crash tests are in
``test_scheduling_persist``.)"""

from __future__ import annotations

import logging
import math
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from artiq_bus.scheduling import INTERRUPTED, RIDCounter, schedule_db
from artiq_bus.scheduling.schedule_db import ScheduleWriter, read_schedule

from test_scheduling_persist import crash_with_runs, persisted
from helpers import run_bounded
from test_scheduling_worker import EXPID, Harness, forever

LOGGER = "artiq_bus.scheduling"
TESTS = str(Path(__file__).parent)
BURST = 60


def interrupted_in(caplog: pytest.LogCaptureFixture) -> dict[int, str]:
    """RID → the status the restart reported it interrupted in."""
    found = {}
    for record in caplog.records:
        match = re.fullmatch(r"RID (\d+) was (\w+) when the master stopped: .*",
                             record.getMessage())
        if match:
            found[int(match.group(1))] = match.group(2)
    return found


def start_master(script: str, tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, str(tmp_path), TESTS],
                            stdout=subprocess.PIPE, text=True)


def read_line(master: subprocess.Popen[str], timeout_s: float = 20.0) -> str:
    assert master.stdout is not None
    ready, _, _ = select.select([master.stdout], [], [], timeout_s)
    assert ready, f"the master said nothing within {timeout_s} s"
    return master.stdout.readline().strip()


BURST_MASTER = textwrap.dedent(f"""
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_scheduling_worker import Harness

    async def work(worker):
        await asyncio.sleep(0.005)  # a run() that computes a little

    async def main():
        h = Harness(Path(sys.argv[1]))
        await h.scheduler.start()
        for rid in range({BURST}):
            h.farm.on(rid, "run", work)
        update = h.schedule.update
        def told(change):
            update(change)
            if change["action"] == "delitem":
                print("gone", change["key"], flush=True)
        h.schedule.update = told

        async def submit():
            print("acked", await h.submit(), flush=True)
        await asyncio.gather(*(submit() for _ in range({BURST})))
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def test_sigkill_mid_burst_loses_no_acknowledged_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Killed while runs are submitted, started, moved on and deleted: every RID a
    submitter got is run again (it was queued), reported interrupted (it was active)
    or was gone already; none is run twice, none reused."""
    acked: set[int] = set()
    gone: set[int] = set()
    with start_master(BURST_MASTER, tmp_path) as master:
        try:
            while len(gone) < 10:
                word, rid = read_line(master).split()
                (acked if word == "acked" else gone).add(int(rid))
        finally:
            os.kill(master.pid, signal.SIGKILL)
            master.wait(10)
        assert master.stdout is not None
        for line in master.stdout.read().split("\n"):  # what it said before it died
            if line:
                word, rid = line.split()
                (acked if word == "acked" else gone).add(int(rid))
    assert acked and len(gone) < BURST  # killed mid-burst
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def restart() -> tuple[set[int], int]:
        async with Harness(tmp_path) as h:
            restored = {u["key"] for u in h.schedule.log
                        if u["action"] == "setitem" and u["path"] == []}
            new = await h.submit()
            await h.schedule.wait_for(lambda: not h.schedule.data)
            await h.wait_results(len(interrupted_in(caplog)))
            assert set(h.farm.workers) == restored | {new}  # queued runs ran, once
            return restored, new
    restored, new = run_bounded(restart())
    interrupted = set(interrupted_in(caplog))
    assert acked <= restored | interrupted | gone
    assert not restored & (interrupted | gone)
    assert new > max(acked | restored | interrupted | gone)  # no RID reused


UNSYNCED_MASTER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_scheduling_worker import Harness, forever

    async def main():
        h = Harness(Path(sys.argv[1]))
        await h.scheduler.start()
        h.farm.on(0, "run", forever())
        h.farm.on(1, "prepare", forever())
        await h.submit(priority=1)
        await h.submit("b")
        await h.schedule.wait_status(0, "running")
        await h.schedule.wait_status(1, "preparing")
        await h.scheduler.persisted()
        print("READY", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def test_sigkill_keeps_commits_that_were_not_synced(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``prepare_done``, ``running``, the class name and the run time are committed
    without a sync to the disk: a killed master still leaves them in the file."""
    before = time.time()
    with start_master(UNSYNCED_MASTER, tmp_path) as master:
        try:
            assert read_line(master) == "READY"
        finally:
            os.kill(master.pid, signal.SIGKILL)
            master.wait(10)
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def restart() -> Harness:
        async with Harness(tmp_path) as h:
            await h.wait_results(2)
            return h
    h = run_bounded(restart())
    assert interrupted_in(caplog) == {0: "running", 1: "preparing"}
    by_rid = {r[0]: r for r in h.results}
    assert before <= by_rid[0][2] <= by_rid[0][3] <= time.time()  # its run time
    assert math.isnan(by_rid[1][3])
    assert h.class_names == {0: "Experiment0", 1: "Experiment1"}
    assert all(r[4] == INTERRUPTED for r in h.results)


def test_only_commits_that_change_the_next_start_are_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    statements: list[str] = []
    connect = schedule_db._connect

    def traced(path: Path) -> sqlite3.Connection:
        connection = connect(path)
        connection.set_trace_callback(statements.append)
        return connection
    monkeypatch.setattr(schedule_db, "_connect", traced)
    rids = RIDCounter(tmp_path / "last_rid.pyon", tmp_path / "results")
    writer = ScheduleWriter(tmp_path / "schedule.sqlite", rids)

    def mode(changes: dict[int, Any]) -> str:
        """The ``synchronous`` mode ``changes`` were committed in."""
        assert writer.commit(changes)
        modes = [s.rsplit("=", 1)[1] for s in statements if "synchronous" in s]
        return modes[-1]

    def record(status: str, **fields: Any) -> dict[str, Any]:
        return {"pipeline": "main", "expid": EXPID, "priority": 0, "due_date": None,
                "flush": False, "status": status, "repo_msg": None, "start_time": None,
                "run_time": None, "class_name": None, **fields}

    first, second = rids.get(), rids.get()
    assert mode({first: record("pending"), second: record("pending")}) == "FULL"
    assert mode({first: record("preparing", start_time=1.5)}) == "FULL"
    assert mode({first: record("preparing", start_time=1.5, class_name="E")}) == "NORMAL"
    assert mode({first: record("prepare_done", start_time=1.5, class_name="E")}) == "NORMAL"
    assert mode({second: record("flushing")}) == "FULL"
    assert mode({first: record("running", start_time=1.5, run_time=2.5,
                               class_name="E")}) == "NORMAL"
    assert read_schedule(tmp_path / "schedule.sqlite") == (1, {
        first: record("running", start_time=1.5, run_time=2.5, class_name="E"),
        second: record("flushing")})
    third = rids.get()
    assert mode({third: record("pending")}) == "FULL"
    assert mode({first: None}) == "FULL"
    assert mode({}) == "NORMAL"  # nothing new: nothing to sync
    assert read_schedule(tmp_path / "schedule.sqlite") == (2, {
        second: record("flushing"), third: record("pending")})
    writer.close()


def test_interrupted_runs_are_reported_once(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    crash_with_runs(tmp_path)  # RIDs 0-2 active, 3-5 queued

    async def crash_again() -> None:
        h = Harness(tmp_path)
        for rid in (3, 4):
            h.farm.on(rid, "build", forever())
        await h.scheduler.start()
        await h.schedule.wait_status(3, "preparing")
        await h.scheduler.persisted()
    caplog.set_level(logging.INFO, logger=LOGGER)
    run_bounded(crash_again())
    assert set(interrupted_in(caplog)) == {0, 1, 2}
    assert sorted(persisted(tmp_path)) == [3, 4, 5]
    caplog.clear()

    async def restart() -> None:
        async with Harness(tmp_path) as h:
            await h.schedule.wait_gone(4)
    run_bounded(restart())
    assert interrupted_in(caplog) == {3: "preparing"}
