"""The results node (artiq_bus.nodes.results): workers' results files are written by a
long-lived process, byte for byte what the worker would write; bad requests are
refused; a dead node costs no results file (workers write their own until it is back).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Master
from helpers.runs import (
    ScheduleWatch,
    read_results,
    results_file,
    results_files,
    submit,
    wait_dead,
    write_experiment,
)
from helpers.threads import python_threads, thread_stopped

from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.sync import Client
from artiq_bus.protocol import RemoteError
from artiq_bus.scheduling.bus_worker import END_STEP_S
from artiq_bus.worker.process import BACKGROUND_NICE, lower_priority
from artiq_bus.worker.results import write_results

MANY_TYPES = '''\
import numpy as np

from artiq.experiment import *


class ManyTypes(EnvExperiment):
    def build(self):
        pass

    def run(self):
        self.set_dataset("frequency", 1.5e6, unit="kHz", scale=1e3, precision=3)
        self.set_dataset("label", "first")
        self.set_dataset("counts", np.arange(1000, dtype=np.int32))
        self.set_dataset("image", np.linspace(0, 1, 12).reshape(3, 4))
        self.set_dataset("names", ["a", "bc"])
        self.set_dataset("blob", b"\\x00\\x01")
        self.set_dataset("z", 1 + 2j)
        self.set_dataset("flag", True)
        self.set_dataset("missing", float("nan"))
        self.set_dataset("not_archived", 1, archive=False)
'''

BAD_VALUE = '''\
from artiq.experiment import *


class BadValue(EnvExperiment):
    def run(self):
        self.set_dataset("bad", {"a": 1})
'''

EMPTY = '''\
from artiq.experiment import *


class Empty(EnvExperiment):
    def run(self):
        pass
'''


def node_status(master: Master, timeout_s: float = 10.0) -> dict[str, Any]:
    """The results node's ``status()``, once it is registered."""
    deadline = time.monotonic() + timeout_s
    with Client(master.address) as client:
        while True:
            try:
                status: dict[str, Any] = client.call("results", "status", timeout_s=2.0)
                return status
            except Exception:
                if time.monotonic() > deadline:
                    raise
                client.call("broker", "ping", timeout_s=2.0)  # a round trip, not a sleep


def test_the_node_writes_what_the_worker_would(master: Master, tmp_path: Path) -> None:
    """Every dataset type arrives as set; the file equals one written in-process."""
    node_status(master)
    file = write_experiment(tmp_path, "many.py", MANY_TYPES)
    with ScheduleWatch(master) as watch:
        rid = submit(master, file)
        watch.wait_gone(rid)
    assert node_status(master)["written"] == 1
    fields = read_results(results_file(tmp_path, rid))
    reference = tmp_path / "reference.h5"
    write_results(reference, rid=rid, start_time=fields["start_time"],
                  run_time=fields["run_time"], expid=fields["expid"], version=fields[
                      "artiq_version"], outcome="completed", archive={}, metadata={
                      "frequency": {"unit": "kHz", "scale": 1e3, "precision": 3}},
                  datasets={"frequency": 1.5e6, "label": "first",
                            "counts": np.arange(1000, dtype=np.int32),
                            "image": np.linspace(0, 1, 12).reshape(3, 4),
                            "names": ["a", "bc"], "blob": b"\x00\x01", "z": 1 + 2j,
                            "flag": True, "missing": float("nan")})
    expected = read_results(reference)
    assert fields.keys() == expected.keys()
    assert fields["datasets"].keys() == expected["datasets"].keys()
    for key, (value, attributes) in expected["datasets"].items():
        got, got_attributes = fields["datasets"][key]
        assert got_attributes == attributes, key
        np.testing.assert_equal(got, value, err_msg=key)
        assert np.asarray(got).dtype == np.asarray(value).dtype, key
    for name in ("rid", "start_time", "run_time", "expid_text", "outcome", "artiq_version"):
        assert fields[name] == expected[name], name


def test_a_value_hdf5_cannot_hold_fails_as_in_the_worker(master: Master,
                                                           tmp_path: Path) -> None:
    """The node's TypeError reaches the experiment's log as the worker's own would."""
    file = write_experiment(tmp_path, "bad.py", BAD_VALUE)
    with ScheduleWatch(master) as watch:
        rid = submit(master, file)
        watch.wait_gone(rid)
    line = master.wait_for_line(r"analyze\(\) failed")
    assert "ERROR:worker(" in line
    master.wait_for_line(r"^TypeError: Error writing dataset 'bad' of type 'dict'")
    assert "RemoteTypeError" not in master.output()
    # the run is still on record: without its datasets, with the error
    fields = read_results(results_file(tmp_path, rid))
    assert fields["outcome"].startswith(
        "error: TypeError: Error writing dataset 'bad' of type 'dict'"), fields["outcome"]
    assert fields["rid"] == rid and fields["datasets"] == {}


@pytest.mark.parametrize("change, error", [
    ({"class_name": "../../escaped"}, "class_name must be a Python identifier"),
    ({"rid": -1}, "rid must be an integer"),
    ({"rid": "7"}, "rid must be an integer"),
    ({"start_time": float("inf")}, "start_time must be a finite number"),
    ({"expid": [1]}, "expid must be a map"),
    ({"datasets": [1, 2]}, "datasets must be a map"),
    ({"datasets": {"x": {"nested": 1}}}, "Error writing dataset 'x' of type 'dict'"),
])
def test_bad_requests_are_refused(master: Master, tmp_path: Path, change: dict[str, Any],
                                  error: str) -> None:
    before = node_status(master)
    request = {"rid": 1, "start_time": time.time(), "class_name": "Fine", "run_time": None,
               "expid": {"file": "x.py"}, "datasets": {}, "archive": {}, "metadata": {},
               **change}
    with Client(master.address) as client:
        with pytest.raises(RemoteError, match=error):
            client.call("results", "write", **request)
        with pytest.raises(RemoteError):
            client.call("results", "write", 1, 2)  # missing arguments
    assert node_status(master) == before  # alive, nothing written
    assert not list(tmp_path.rglob("*.h5")) and not list(tmp_path.rglob("*.tmp"))


def test_a_killed_node_loses_no_results_file(master: Master, tmp_path: Path) -> None:
    """Runs that end while the node is dead write their own file; the pool starts the
    node again and later runs go through it."""
    first = node_status(master)
    file = write_experiment(tmp_path, "empty.py", EMPTY)
    os.kill(first["pid"], signal.SIGKILL)
    wait_dead({first["pid"]}, 5.0)
    with ScheduleWatch(master) as watch:
        rids = [submit(master, file) for _ in range(5)]
        for rid in rids:
            watch.wait_gone(rid)
    master.wait_for_line(r"WARNING:.*the results node ended \(killed by signal 9")
    for rid in rids:
        assert read_results(results_file(tmp_path, rid))["outcome"] == "completed"

    again = node_status(master)
    assert again["pid"] != first["pid"]
    with ScheduleWatch(master) as watch:
        rid = submit(master, file)
        watch.wait_gone(rid)
    assert node_status(master)["written"] == again["written"] + 1
    assert read_results(results_file(tmp_path, rid))["rid"] == rid


def test_many_requests_at_once_are_all_written(master: Master, tmp_path: Path) -> None:
    """Requests arriving while a file is written form batches; each one is answered
    with its own path, and every file is complete."""
    before = node_status(master)["written"]
    start = time.time()

    async def write_all() -> list[str]:
        async with AsyncClient(master.address) as client:
            return list(await asyncio.gather(*(client.call(
                "results", "write", rid=rid, start_time=start, class_name="Many",
                run_time=start, expid={"file": "many.py"}, datasets={"x": np.arange(rid)},
                archive={}, metadata={}, outcome="completed", timeout_s=30.0)
                for rid in range(40))))
    paths = asyncio.run(write_all())
    assert [Path(path).name for path in paths] == [f"{rid:09}-Many.h5" for rid in range(40)]
    for rid, path in enumerate(paths):
        fields = read_results(Path(path))
        assert fields["rid"] == rid
        assert fields["datasets"]["x"][0].tolist() == list(range(rid))
    assert node_status(master)["written"] == before + 40
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_analyze_stage_does_not_wait_for_the_disk(master: Master,
                                                      tmp_path: Path) -> None:
    """With the node stopped (SIGSTOP) no file can be written: both runs still go
    through analyze (the second's analyze() after the first's), and each stays in the
    schedule (deleting) until its file is on disk."""
    node = node_status(master)["pid"]
    file = write_experiment(tmp_path, "empty.py", EMPTY)
    os.kill(node, signal.SIGSTOP)
    try:
        with ScheduleWatch(master) as watch:
            first, second = submit(master, file), submit(master, file)
            watch.wait_status(second, "deleting")
            assert watch.value[first]["status"] == "deleting"
            assert watch.position(first, "deleting") < watch.position(second, "analyzing")
            assert not list(tmp_path.rglob("*.h5"))
            os.kill(node, signal.SIGCONT)
            watch.wait_gone(first)
            watch.wait_gone(second)
    finally:
        os.kill(node, signal.SIGCONT)
    for rid in (first, second):
        assert read_results(results_file(tmp_path, rid))["outcome"] == "completed"
    assert node_status(master)["written"] == 2


def test_a_stalled_disk_never_ends_a_run_before_its_file_is_on_disk(
        master: Master, tmp_path: Path) -> None:
    """The node's writer thread stuck (stopped alone, as by a stalled disk; the node
    itself answers) for longer than the worker's last step (END_STEP_S, then SIGTERM):
    nothing escalates while the worker waits for its file, and the run leaves the
    schedule only once the file is on disk."""
    node = node_status(master)["pid"]  # registered: it writes the next run's file
    file = write_experiment(tmp_path, "empty.py", EMPTY)
    with ScheduleWatch(master) as watch:
        watch.wait_gone(submit(master, file))
        assert node_status(master)["written"] == 1
        (writer,) = python_threads(node)  # the node's one thread of its own
        with thread_stopped(writer):
            rid = submit(master, file)
            watch.wait_status(rid, "deleting")
            time.sleep(END_STEP_S + 1.5)  # what is tested: this time passing
            assert watch.value[rid]["status"] == "deleting"
            assert results_files(tmp_path, rid) == []
        watch.wait_gone(rid)
    assert read_results(results_file(tmp_path, rid))["outcome"] == "completed"
    assert "does not stop" not in master.output()


def test_a_node_killed_with_results_in_hand_costs_no_file(master: Master,
                                                           tmp_path: Path) -> None:
    """The node dies holding a run's results, after the run's analyze stage: the
    worker, which waits for the file before it exits, writes it itself."""
    node = node_status(master)["pid"]
    file = write_experiment(tmp_path, "empty.py", EMPTY)
    os.kill(node, signal.SIGSTOP)
    with ScheduleWatch(master) as watch:
        rid = submit(master, file)
        watch.wait_status(rid, "deleting")
        os.kill(node, signal.SIGKILL)
        watch.wait_gone(rid)
    assert read_results(results_file(tmp_path, rid))["outcome"] == "completed"
    assert "does not stop" not in master.output()  # it ended by itself, in time


def nice_values(pid: int) -> set[int]:
    """The nice value of each thread of ``pid`` (field 19 of its stat)."""
    return {int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
            for task in Path(f"/proc/{pid}/task").iterdir()}


def test_the_node_runs_behind_the_runs(master: Master, tmp_path: Path) -> None:
    """No run waits for the node: every thread of it has a lower CPU priority than
    the master (and its workers)."""
    file = write_experiment(tmp_path, "empty.py", EMPTY)
    with ScheduleWatch(master) as watch:
        watch.wait_gone(submit(master, file))  # the writer thread exists now
    node = node_status(master)["pid"]
    (base,) = nice_values(master.popen.pid)
    assert nice_values(node) == {base + BACKGROUND_NICE}


def test_lower_priority_reaches_every_thread() -> None:
    """Linux gives each thread its own priority: the helper lowers them all (in a
    child, so that this process keeps its own)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child reports through the pipe)
        try:
            started = threading.Event()
            done = threading.Event()
            thread = threading.Thread(target=lambda: (started.set(), done.wait(5.0)))
            thread.start()
            started.wait(5.0)
            before = nice_values(os.getpid())
            lower_priority()
            os.write(write, f"{sorted(before)} {sorted(nice_values(os.getpid()))}".encode())
            done.set()
            thread.join()
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    (base,) = nice_values(os.getpid())
    assert report == f"[{base}] [{base + BACKGROUND_NICE}]"
