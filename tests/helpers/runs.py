"""Helpers of the end-to-end run tests: a recorded replica of the master's ``schedule``,
experiment files, results files, worker processes seen through /proc, and a master
whose build timeout is shortened.

Every wait has a deadline; the schedule watch runs its own event loop in a thread and
is closed (replica, subscriber, client, context) when its ``with`` block ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import os
import re
import select
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py

from artiq_bus import pyon
from artiq_bus.client.replica import Replica
from artiq_bus.client.sync import Client
from artiq_bus.net import BusAddress

from conftest import Master, Process, free_port, run_cli
from helpers import HELPERS, bus_client

SHORT_BUILD_MASTER = HELPERS / "short_build_master.py"
#: Marks a run's deletion in :meth:`ScheduleWatch.statuses`.
DELETED = "<deleted>"

Schedule = dict[Any, Any]


class ScheduleWatch:
    """A :class:`Replica` of the master's ``schedule`` (service ``scheduler``) that
    records every update it applies, with the time it arrived."""

    def __init__(self, master: Master, timeout_s: float = 10.0):
        self.updates: list[tuple[float, dict[str, Any]]] = []
        self._value: Schedule = {}
        self._condition = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(master, started, timeout_s),
                                        name="schedule-watch", daemon=True)
        self._thread.start()
        started.result(timeout_s + 5.0)

    def __enter__(self) -> "ScheduleWatch":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10.0)
        assert not self._thread.is_alive(), "the schedule watch did not stop"
        if self._error is not None:
            raise AssertionError(f"the schedule watch failed: {self._error!r}")

    def _main(self, master: Master, started: "concurrent.futures.Future[None]",
              timeout_s: float) -> None:
        try:
            asyncio.run(self._serve(master, started, timeout_s))
        except BaseException as exc:  # reported by close() or by the constructor
            if not started.done():
                started.set_exception(exc)
            else:
                self._error = exc

    async def _serve(self, master: Master, started: "concurrent.futures.Future[None]",
                     timeout_s: float) -> None:
        async with bus_client(master) as (_, client, subscriber):
            replica = Replica(client, subscriber, "schedule", service="scheduler")
            replica.add_listener(lambda update: self._record(replica, update))
            await replica.start(timeout_s)
            try:
                self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
                started.set_result(None)
                await self._stop.wait()
            finally:
                await replica.stop()

    def _record(self, replica: Replica, update: dict[str, Any]) -> None:
        with self._condition:
            self.updates.append((time.monotonic(), copy.deepcopy(update)))
            self._value = copy.deepcopy(replica.value)
            self._condition.notify_all()

    # -- reading --------------------------------------------------------------------

    @property
    def value(self) -> Schedule:
        with self._condition:
            return copy.deepcopy(self._value)

    def wait_for(self, predicate: Callable[[Schedule], bool], timeout_s: float = 10.0,
                 what: str = "condition") -> Schedule:
        """The schedule once ``predicate`` holds for it, within ``timeout_s``."""
        with self._condition:
            if not self._condition.wait_for(lambda: predicate(self._value), timeout_s):
                raise AssertionError(f"schedule: no {what} within {timeout_s} s; schedule "
                                     f"{self._value!r}; updates:\n{self.describe()}")
            return copy.deepcopy(self._value)

    def wait_status(self, rid: int, status: str, timeout_s: float = 10.0) -> Schedule:
        return self.wait_for(lambda s: s.get(rid, {}).get("status") == status, timeout_s,
                             f"RID {rid} {status}")

    def wait_gone(self, rid: int, timeout_s: float = 10.0) -> None:
        """Until RID ``rid`` was in the schedule and has been deleted from it."""
        with self._condition:
            if not self._condition.wait_for(lambda: DELETED in self._statuses(rid),
                                            timeout_s):
                raise AssertionError(f"RID {rid} not deleted within {timeout_s} s; "
                                     f"updates:\n{self.describe()}")

    def statuses(self, rid: int) -> list[str]:
        """The statuses RID ``rid`` went through, in order; :data:`DELETED` at the end
        once its entry was removed."""
        with self._condition:
            return self._statuses(rid)

    def _statuses(self, rid: int) -> list[str]:
        return [status for _, status in self._events(rid)]

    def _events(self, rid: int) -> list[tuple[float, str]]:
        events = []
        for when, update in self.updates:
            if update["action"] == "init" and rid in update["struct"]:
                events.append((when, "init:" + update["struct"][rid]["status"]))
            elif (status := _status_of(update, rid)) is not None:
                events.append((when, status))
        return events

    def updates_of(self, rid: int) -> list[dict[str, Any]]:
        """The updates about RID ``rid`` (its entry's creation, status changes,
        removal), in order."""
        with self._condition:
            return [update for _, update in self.updates
                    if _status_of(update, rid) is not None]

    def time_of(self, rid: int, status: str, occurrence: int = 0) -> float:
        """When (monotonic) the ``occurrence``-th ``status`` of RID ``rid`` arrived."""
        with self._condition:
            times = [when for when, seen in self._events(rid) if seen == status]
        return times[occurrence]

    def position(self, rid: int, status: str, occurrence: int = 0) -> int:
        """Index in :attr:`updates` of the ``occurrence``-th ``status`` of ``rid``."""
        with self._condition:
            positions = [i for i, (_, update) in enumerate(self.updates)
                         if _status_of(update, rid) == status]
        return positions[occurrence]

    def describe(self) -> str:
        return "\n".join(f"  {update!r:.300}" for _, update in self.updates)


def _status_of(update: dict[str, Any], rid: int) -> str | None:
    action, path, key = update["action"], update.get("path"), update.get("key")
    if action == "setitem" and path == [] and key == rid:
        return str(update["value"]["status"])
    if action == "setitem" and path == [rid] and key == "status":
        return str(update["value"])
    if action == "delitem" and path == [] and key == rid:
        return DELETED
    return None


#: ARTIQ's normal sequence of a run (reference §3.2).
NORMAL_RUN = ["pending", "preparing", "prepare_done", "running", "run_done", "analyzing",
              "deleting", DELETED]


# -- experiments and submissions -----------------------------------------------------

def write_experiment(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.write_text(source)
    return path


def client_args(master: Master) -> list[str]:
    return ["-s", "127.0.0.1", "--port", str(master.control)]


def cli_submit(master: Master, *argv: str, cwd: Path | None = None) -> int:
    """``artiq_client submit ARGV``; the RID it printed."""
    result = run_cli("artiq_client", *client_args(master), "submit", *argv, cwd=cwd)
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"RID: (\d+)\n", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def submit(master: Master, file: Path, arguments: dict[str, Any] | None = None, *,
           pipeline: str = "main", priority: int = 0, due_date: float | None = None,
           flush: bool = False, class_name: str | None = None) -> int:
    """A submission as ``artiq_client submit`` makes it, through the bus (faster)."""
    expid = {"log_level": 30, "class_name": class_name, "arguments": arguments or {},
             "file": str(file)}
    with Client(master.address) as client:
        rid = client.call("scheduler", "submit", pipeline, expid, priority, due_date, flush)
    assert isinstance(rid, int)
    return rid


def call(master: Master, method: str, *args: Any) -> Any:
    with Client(master.address) as client:
        return client.call("scheduler", method, *args)


# -- results files -------------------------------------------------------------------

def results_files(directory: Path, rid: int) -> list[Path]:
    return sorted(directory.glob(f"results/*/*/{rid:09}-*.h5"))


def results_file(directory: Path, rid: int) -> Path:
    """The one results file of RID ``rid``, in ``results/YYYY-MM-DD/HH/``."""
    found = results_files(directory, rid)
    assert len(found) == 1, f"results files of RID {rid}: {found}"
    path = found[0]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.parent.parent.name), path
    assert re.fullmatch(r"\d{2}", path.parent.name), path
    return path


def _decoded(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def read_results(path: Path) -> dict[str, Any]:
    """The root fields of a results file (``expid`` decoded, its text as
    ``expid_text``), plus ``datasets`` and ``archive``: key → (value, attributes)."""
    with h5py.File(path, "r") as h5file:
        fields: dict[str, Any] = {name: _decoded(h5file[name][()]) for name in h5file
                                  if isinstance(h5file[name], h5py.Dataset)}
        for group in ("datasets", "archive"):
            fields[group] = {key: (_decoded(item[()]), {k: _decoded(v) for k, v
                                                        in item.attrs.items()})
                             for key, item in h5file[group].items()}
    fields["expid_text"] = fields["expid"]
    fields["expid"] = pyon.decode(fields["expid"])
    return fields


def expected_results_dir(start_time: float) -> str:
    local = time.localtime(start_time)
    return time.strftime("%Y-%m-%d", local) + "/" + time.strftime("%H", local)


# -- processes -----------------------------------------------------------------------

def wait_for_output(process: Process, pattern: str, timeout_s: float = 10.0) -> str:
    """The first line of ``process``'s output, already read or still to come, that
    matches ``pattern``, within ``timeout_s``."""
    for line in process.output().splitlines():
        if re.search(pattern, line):
            return line
    return process.wait_for_line(pattern, timeout_s)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()  # state, ppid, ...


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (the zygote, the workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                children.setdefault(int(stat[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def wait_dead(pids: set[int], timeout_s: float) -> None:
    """Until none of ``pids`` runs (each watched through a pidfd, which becomes
    readable when the process ends); AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    for pid in sorted(pids):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            readable, _, _ = select.select([pidfd], [], [],
                                           max(0.0, deadline - time.monotonic()))
        finally:
            os.close(pidfd)
        if not readable:
            raise AssertionError(f"still running after {timeout_s} s: "
                                 f"{sorted(pid for pid in pids if alive(pid))}")


class ShortBuildMaster(Master):
    """``artiq_master`` whose build timeout (``bus_worker.BUILD_TIMEOUT_S``) is
    ``build_timeout_s``, set by ``short_build_master.py`` before it starts."""

    def __init__(self, cwd: Path, build_timeout_s: float):
        self.control, self.notify, self.publish = free_port(), free_port(), free_port()
        if not (cwd / "device_db.py").exists():
            (cwd / "device_db.py").write_text("device_db = {}\n")
        Process.__init__(self, [sys.executable, str(SHORT_BUILD_MASTER), str(build_timeout_s),
                                "--port-control", str(self.control),
                                "--port-notify", str(self.notify),
                                "--port-publish", str(self.publish)], cwd)
        self.address = BusAddress.from_host("127.0.0.1", self.control, self.notify,
                                            self.publish)


__all__ = ["ScheduleWatch", "DELETED", "NORMAL_RUN", "write_experiment", "client_args",
           "cli_submit", "submit", "call", "results_files", "results_file", "read_results",
           "expected_results_dir", "wait_for_output", "alive", "descendants", "wait_dead",
           "ShortBuildMaster"]
