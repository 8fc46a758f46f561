"""Submission (reference §3.11): where the experiment is (repository revision pinned and
released, absolute file, content), validation, the submissions log, the life cycle
around start/stop, and the engine driving a real StructOwner."""

from __future__ import annotations

import asyncio
import csv
import os
from pathlib import Path
from typing import Any

import pytest

from artiq_bus.runtime import StructOwner
from artiq_bus.scheduling import (InvalidSubmission, RepositoryUnavailable, RIDCounter,
                                  Scheduler, SchedulerNotStarted)

from artiq_bus.scheduling.tasks import Signal

from helpers import run_bounded
from test_scheduling_worker import EXPID, Farm, Harness


class Revisions:
    """A fake repository: resolves to a checkout, counts releases."""

    def __init__(self, tmp_path: Path, fail: bool = False):
        self.tmp_path = tmp_path
        self.fail = fail
        self.requests: list[dict[str, Any]] = []
        self.released: list[str] = []
        self.gate: asyncio.Event | None = None
        self.requested = asyncio.Event()

    async def resolve(self, expid: dict[str, Any]) -> tuple[str, str | None, str]:
        self.requests.append(dict(expid))
        self.requested.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise KeyError("no such revision")
        return str(self.tmp_path / "checkout"), "Commit message", "0123abcd"

    async def release(self, rev: str) -> None:
        self.released.append(rev)

    def options(self) -> dict[str, Any]:
        return {"resolve_repository": self.resolve, "release_revision": self.release}


def test_repository_submission(tmp_path: Path) -> None:
    revisions = Revisions(tmp_path)

    async def main() -> Harness:
        async with Harness(tmp_path, **revisions.options()) as h:
            expid = {**EXPID, "file": "sub/exp.py", "repo_rev": None}
            rid = await h.submit(expid=expid)
            pinned = {**expid, "repo_rev": "0123abcd"}
            assert h.schedule.log[0]["value"]["expid"] == pinned
            assert h.schedule.log[0]["value"]["repo_msg"] == "Commit message"
            await h.schedule.wait_gone(rid)
            assert h.farm.workers[rid].calls[0] == (
                "build", rid, "main", str(tmp_path / "checkout"), pinned, 0)
            return h
    run_bounded(main())
    assert revisions.requests == [{**EXPID, "file": "sub/exp.py", "repo_rev": None}]
    assert revisions.released == ["0123abcd"]


def test_failed_resolution_consumes_no_rid(tmp_path: Path) -> None:
    revisions = Revisions(tmp_path, fail=True)

    async def main() -> None:
        async with Harness(tmp_path, **revisions.options()) as h:
            with pytest.raises(KeyError):
                await h.submit(expid={**EXPID, "file": "x.py", "repo_rev": "nope"})
            assert h.schedule.log == []
            assert await h.submit() == 0
    run_bounded(main())


def test_repository_submission_without_repository(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            with pytest.raises(RepositoryUnavailable):
                await h.submit(expid={**EXPID, "file": "x.py", "repo_rev": None})
    run_bounded(main())


def test_file_outside_repository_is_made_absolute(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    caller_expid = {**EXPID, "file": "exps/exp.py"}

    async def main() -> None:
        async with Harness(tmp_path) as h:
            rid = await h.scheduler.submit("main", caller_expid)
            assert rid is not None
            assert h.schedule.log[0]["value"]["expid"]["file"] == os.path.join(
                str(tmp_path), "exps", "exp.py")
            await h.schedule.wait_gone(rid)
            assert h.farm.workers[rid].calls[0][3] is None  # wd
    run_bounded(main())
    assert caller_expid["file"] == "exps/exp.py"  # the caller's dict is not changed


@pytest.mark.parametrize("args", [
    (1, EXPID, 0, None, False),
    ("main", "expid", 0, None, False),
    ("main", EXPID, 1.5, None, False),
    ("main", EXPID, True, None, False),
    ("main", EXPID, 0, "tomorrow", False),
    ("main", EXPID, 0, float("nan"), False),
    ("main", EXPID, 0, None, 1),
])
def test_invalid_submissions(tmp_path: Path, args: tuple[Any, ...]) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            with pytest.raises(InvalidSubmission):
                await h.scheduler.submit(*args)
            assert h.schedule.log == []
    run_bounded(main())


def test_submit_before_start_and_after_stop(tmp_path: Path) -> None:
    async def main() -> None:
        h = Harness(tmp_path)
        with pytest.raises(SchedulerNotStarted):
            await h.scheduler.submit("main", dict(EXPID))
        await h.scheduler.start()
        await h.scheduler.stop()
        assert await h.scheduler.submit("main", dict(EXPID)) is None
        await h.scheduler.stop()  # idempotent
    run_bounded(main())


def test_stop_during_resolution_releases_the_revision(tmp_path: Path) -> None:
    revisions = Revisions(tmp_path)

    async def main() -> None:
        revisions.gate = asyncio.Event()
        h = Harness(tmp_path, **revisions.options())
        await h.scheduler.start()
        submission = asyncio.create_task(
            h.scheduler.submit("main", {**EXPID, "file": "x.py", "repo_rev": None}))
        async with asyncio.timeout(5):
            await revisions.requested.wait()
        await h.scheduler.stop()
        revisions.gate.set()
        assert await submission is None
    run_bounded(main())
    assert revisions.released == ["0123abcd"]


def test_log_submissions(tmp_path: Path) -> None:
    log = tmp_path / "submissions.csv"

    async def main() -> None:
        async with Harness(tmp_path, log_submissions=log) as h:
            await h.submit(expid={**EXPID, "file": "/abs/exp.py"})
            await h.submit()  # content: no file (ARTIQ raises KeyError here)
    run_bounded(main())
    with log.open() as file:
        rows = list(csv.reader(file))
    assert [(row[0], row[2]) for row in rows] == [("0", "/abs/exp.py"), ("1", "")]
    assert all(float(row[1]) > 0 for row in rows)


class _Publisher:
    def __init__(self) -> None:
        self.messages: list[list[Any]] = []

    def send(self, frames: list[Any]) -> None:
        self.messages.append(frames)


class _WatchedOwner(StructOwner):
    """A StructOwner that also wakes the test at each change."""

    def __init__(self) -> None:
        self.publisher = _Publisher()
        super().__init__("schedule", self.publisher)  # type: ignore[arg-type]
        self.changed = Signal()
        self.statuses: list[Any] = []

    def setitem(self, key: Any, value: Any) -> None:
        super().setitem(key, value)
        self.statuses.append(value["status"])
        self.changed.notify()

    def update(self, update: dict[str, Any]) -> None:
        super().update(update)
        self.statuses.append(update.get("value", "gone"))
        self.changed.notify()


def test_drives_a_real_struct_owner(tmp_path: Path) -> None:
    """No persistence file, a real StructOwner: the schedule is published."""
    async def main() -> None:
        owner = _WatchedOwner()
        scheduler = Scheduler(Farm(), RIDCounter(tmp_path / "rid", tmp_path / "results"),
                              owner)
        await scheduler.start()
        rid = await scheduler.submit("main", dict(EXPID))
        async with asyncio.timeout(5):
            while "gone" not in owner.statuses:
                await owner.changed.wait()
        assert owner.data == {} and scheduler.get_status() == {}
        assert owner.statuses == ["pending", "preparing", "prepare_done", "running",
                                  "run_done", "analyzing", "deleting", "gone"]
        await scheduler.stop()
        owner.flush()
        assert owner.publisher.messages and rid == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["rid"]
    run_bounded(main())
