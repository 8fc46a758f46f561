"""Experiments run end to end: a real ``artiq_master``, ``artiq_client submit/delete``,
forked worker processes, HDF5 results files read back with h5py (reference §3, §6;
ARTIQ's ``test_client.py`` and ``test_scheduler.py``).

Every wait is for a line of the master's output or for an update of a replica of the
``schedule`` struct, each with a deadline.
"""

from __future__ import annotations

import datetime
import re
import time
from pathlib import Path

import artiq_bus
from conftest import Master, run_cli
from helpers.runs import (DELETED, NORMAL_RUN, ScheduleWatch, cli_submit, client_args,
                          expected_results_dir, read_results, results_file, results_files,
                          submit, write_experiment)

#: The management tutorial's experiment, as ARTIQ's manual gives it.
TUTORIAL = '''\
from artiq.experiment import *


class MgmtTutorial(EnvExperiment):
    """Management tutorial"""
    def build(self):
        pass  # no devices used

    def run(self):
        print("Hello World")
'''

GREETERS = '''\
from artiq.experiment import *


class Greeter(EnvExperiment):
    def build(self):
        self.setattr_argument("count", NumberValue(1, precision=0, step=1))
        self.setattr_argument("word", StringValue("Hello"))

    def run(self):
        for i in range(self.count):
            print(f"{self.word} {i}")
        self.set_dataset("frequency", 1500.0, unit="kHz", scale=1e3, precision=3)
        self.set_dataset("counts", [1, 2, 3])
        self.set_dataset("label", "first")


class Other(EnvExperiment):
    def run(self):
        print("Other ran")
'''

CONTENT = '''\
from artiq.experiment import *


class ContentExperiment(EnvExperiment):
    def run(self):
        print("test content")
'''

LOOPS = '''\
import time

from artiq.experiment import *


class Loop(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("mode", StringValue("termination"))

    def run(self):
        print("looping")
        if self.mode == "termination":
            while not self.scheduler.check_termination():
                time.sleep(0.01)
        else:
            try:
                while True:
                    while not self.scheduler.check_pause():
                        time.sleep(0.01)
                    self.scheduler.pause()
            except TerminationRequested:
                if self.mode == "uncaught":
                    raise
        print("terminated gracefully")
'''


def worker_line(rid: int, file: str, text: str) -> str:
    """The master's console line of an experiment's ``print(text)``."""
    return f"^INFO:worker\\({rid},{re.escape(file)}\\):print:{re.escape(text)}$"


def entry(expid: dict[str, object], **changes: object) -> dict[str, object]:
    """A schedule entry as submitted (reference §3.2)."""
    return {"pipeline": "main", "expid": expid, "priority": 0, "due_date": None,
            "flush": False, "status": "pending", "repo_msg": None, **changes}


def test_tutorial_experiment(master: Master, tmp_path: Path) -> None:
    """``artiq_client submit`` of the tutorial: RID 0, its print in the master's output,
    ARTIQ's exact schedule updates, a results file with ARTIQ's root fields."""
    write_experiment(tmp_path, "mgmt_tutorial.py", TUTORIAL)
    with ScheduleWatch(master) as watch:
        before = time.time()
        result = run_cli("artiq_client", *client_args(master), "submit", "mgmt_tutorial.py",
                         cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "RID: 0\n"
        master.wait_for_line(worker_line(0, "mgmt_tutorial.py", "Hello World"))
        watch.wait_gone(0)
        after = time.time()
    expid = {"log_level": 30, "class_name": None, "arguments": {},
             "file": str(tmp_path.resolve() / "mgmt_tutorial.py")}
    assert watch.updates_of(0) == [
        {"action": "setitem", "path": [], "key": 0, "value": entry(expid)},
        *({"action": "setitem", "path": [0], "key": "status", "value": status}
          for status in NORMAL_RUN[1:-1]),
        {"action": "delitem", "path": [], "key": 0}]
    assert watch.value == {}

    path = results_file(tmp_path, 0)
    assert path.name == "000000000-MgmtTutorial.h5"
    fields = read_results(path)
    assert isinstance(fields.pop("expid_text"), str)
    assert fields["rid"] == 0
    assert before <= fields["start_time"] <= fields["run_time"] <= after
    assert path.parent.relative_to(tmp_path / "results").as_posix() == \
        expected_results_dir(fields["start_time"])
    assert fields["expid"] == expid
    assert fields["artiq_version"] == artiq_bus.__version__
    assert fields["outcome"] == "completed"
    assert fields["datasets"] == {} and fields["archive"] == {}
    assert master.output().count("print:Hello World") == 1


def test_arguments_class_choice_and_datasets(master: Master, tmp_path: Path) -> None:
    """KEY=VALUE arguments reach the experiment; ``-c`` picks one of several classes (no
    choice fails in build); datasets set locally land in ``datasets/`` with their
    metadata as attributes."""
    write_experiment(tmp_path, "greeters.py", GREETERS)
    with ScheduleWatch(master) as watch:
        assert cli_submit(master, "greeters.py", "count=3", cwd=tmp_path) == 0
        master.wait_for_line(r"^ERROR:master:.*got worker exception in prepare stage, "
                             r"deleting RID 0\b.*More than one experiment")
        watch.wait_gone(0)

        assert cli_submit(master, "-c", "Greeter", "greeters.py", "count=3", 'word="Hi"',
                          cwd=tmp_path) == 1
        for i in range(3):
            master.wait_for_line(worker_line(1, "greeters.py", f"Hi {i}"))
        watch.wait_gone(1)

        assert cli_submit(master, "-c", "Other", "greeters.py", cwd=tmp_path) == 2
        master.wait_for_line(worker_line(2, "greeters.py", "Other ran"))
        watch.wait_gone(2)
    assert watch.statuses(0) == ["pending", "preparing", "deleting", DELETED]
    assert watch.statuses(1) == NORMAL_RUN
    assert results_files(tmp_path, 0) == []  # build failed: no file (ARTIQ's rule)
    assert master.output().count("INFO:worker(1,greeters.py):print:Hi ") == 3

    fields = read_results(results_file(tmp_path, 1))
    assert fields["expid"]["arguments"] == {"count": 3, "word": "Hi"}
    assert fields["expid"]["class_name"] == "Greeter"
    assert fields["datasets"]["frequency"] == (1500.0, {"unit": "kHz", "scale": 1e3,
                                                        "precision": 3})
    assert fields["datasets"]["label"] == ("first", {})
    counts, attributes = fields["datasets"]["counts"]
    assert counts.tolist() == [1, 2, 3] and attributes == {}
    assert set(fields["datasets"]) == {"frequency", "label", "counts"}
    assert fields["outcome"] == "completed"
    assert results_file(tmp_path, 2).name == "000000002-Other.h5"


def test_content_submission(master: Master, tmp_path: Path) -> None:
    """``--content`` sends the file's text: the expid has ``content``, no ``file``; the
    worker's log source says ``<none>``."""
    write_experiment(tmp_path, "content.py", CONTENT)
    with ScheduleWatch(master) as watch:
        assert cli_submit(master, "--content", "content.py", cwd=tmp_path) == 0
        master.wait_for_line(worker_line(0, "<none>", "test content"))
        watch.wait_gone(0)
    expid = {"log_level": 30, "class_name": None, "arguments": {}, "content": CONTENT}
    assert watch.updates_of(0)[0]["value"] == entry(expid)
    assert watch.statuses(0) == NORMAL_RUN
    fields = read_results(results_file(tmp_path, 0))
    assert fields["expid"] == expid
    assert fields["outcome"] == "completed"


def test_pipeline_priority_due_date_and_delete(master: Master, tmp_path: Path) -> None:
    """``-p``, ``-P``, ``-t`` and ``-f`` reach the schedule entry; a run due in the
    future waits for its date (and is deleted with ``delete RID`` while pending)."""
    write_experiment(tmp_path, "mgmt_tutorial.py", TUTORIAL)
    far = datetime.datetime(2099, 6, 1, 12, 0, 0)
    with ScheduleWatch(master) as watch:
        assert cli_submit(master, "-p", "slow", "-P", "3", "-t", far.isoformat(" "), "-f",
                          "mgmt_tutorial.py", cwd=tmp_path) == 0
        soon = datetime.datetime.now() + datetime.timedelta(seconds=2.0)
        assert cli_submit(master, "-p", "soon", "-P", "-2", "-t", soon.isoformat(" "),
                          "mgmt_tutorial.py", cwd=tmp_path) == 1
        schedule = watch.wait_status(0, "pending")
        expid = schedule[0]["expid"]
        assert schedule[0] == entry(expid, pipeline="slow", priority=3,
                                    due_date=far.timestamp(), flush=True)
        submitted = watch.updates_of(1)[0]["value"]
        assert submitted == entry(expid, pipeline="soon", priority=-2,
                                  due_date=submitted["due_date"])
        assert abs(submitted["due_date"] - soon.timestamp()) < 1e-3

        master.wait_for_line(worker_line(1, "mgmt_tutorial.py", "Hello World"))
        watch.wait_gone(1)
        result = run_cli("artiq_client", *client_args(master), "delete", "0")
        assert result.returncode == 0, result.stderr
        watch.wait_gone(0)
    assert watch.statuses(0) == ["pending", "deleting", DELETED]
    assert watch.statuses(1) == NORMAL_RUN
    assert read_results(results_file(tmp_path, 1))["start_time"] >= soon.timestamp()
    assert results_files(tmp_path, 0) == []


def test_delete_and_graceful_termination(master: Master, tmp_path: Path) -> None:
    """``delete RID`` ends a running run at once (no results file); ``delete -g RID``
    lets it end by itself, whether it polls ``check_termination()`` or
    ``check_pause()``/``pause()`` (which raises TerminationRequested: uncaught, the run
    fails and its results file says so)."""
    file = write_experiment(tmp_path, "loop.py", LOOPS)
    cases = [([], "termination"), (["-g"], "termination"), (["-g"], "pause"),
             (["-g"], "uncaught")]
    with ScheduleWatch(master) as watch:
        for rid, (flags, mode) in enumerate(cases):
            assert submit(master, file, {"mode": mode}) == rid
            master.wait_for_line(worker_line(rid, "loop.py", "looping"))
            watch.wait_status(rid, "running")
            asked = time.monotonic()
            result = run_cli("artiq_client", *client_args(master), "delete", *flags,
                             str(rid))
            assert result.returncode == 0, result.stderr
            watch.wait_gone(rid)
            assert watch.time_of(rid, DELETED) - asked < 5.0
    running = NORMAL_RUN[:4]
    assert watch.statuses(0) == [*running, "deleting", DELETED]
    assert results_files(tmp_path, 0) == []
    assert watch.statuses(1) == NORMAL_RUN
    assert watch.statuses(2) == [*running, "paused", *NORMAL_RUN[3:]]
    assert watch.statuses(3) == [*running, "paused", "running", "deleting", DELETED]
    output = master.output()
    for rid in (1, 2):
        assert re.search(worker_line(rid, "loop.py", "terminated gracefully"), output,
                         re.MULTILINE)
        assert read_results(results_file(tmp_path, rid))["outcome"] == "completed"
    assert output.count("print:terminated gracefully") == 2
    assert re.search(r"^ERROR:master:.*got worker exception in run stage, deleting RID 3: "
                     r".*TerminationRequested", output, re.MULTILINE)
    assert read_results(results_file(tmp_path, 3))["outcome"] == "error: TerminationRequested"


def test_clean_restart(tmp_path: Path) -> None:
    """SIGTERM to the master while a run polls ``check_pause()`` and another waits: exit
    0, the active run reported as interrupted (its experiment does not fail meanwhile);
    the next master in the same directory has the waiting run back with its RID and
    continues the RIDs."""
    write_experiment(tmp_path, "mgmt_tutorial.py", TUTORIAL)
    loop = write_experiment(tmp_path, "loop.py", LOOPS)
    master = Master(tmp_path)
    try:
        master.wait_ready()
        with ScheduleWatch(master) as watch:
            assert submit(master, tmp_path / "mgmt_tutorial.py") == 0
            watch.wait_gone(0)
            assert submit(master, loop, {"mode": "pause"}) == 1
            watch.wait_status(1, "running")
            assert submit(master, loop, {"mode": "termination"}, due_date=4e9) == 2
            watch.wait_status(2, "pending")
    finally:
        code = master.stop()
    output = master.output()
    assert code == 0, output
    assert re.search(r"^WARNING:master:.*RID 1 interrupted \(running\): the master is "
                     r"stopping$", output, re.MULTILINE)
    assert "run() failed" not in output and "\nTraceback" not in output
    fields = read_results(results_file(tmp_path, 1))
    assert fields["outcome"] == "interrupted: master stopped"
    assert fields["start_time"] <= fields["run_time"]
    assert (tmp_path / "last_rid.pyon").read_text() == "2\n"

    master = Master(tmp_path)
    try:
        master.wait_ready()
        with ScheduleWatch(master) as watch:
            assert set(watch.value) == {2}
            assert watch.value[2]["due_date"] == 4e9
            assert cli_submit(master, "mgmt_tutorial.py", cwd=tmp_path) == 3
            master.wait_for_line(worker_line(3, "mgmt_tutorial.py", "Hello World"))
            watch.wait_gone(3)
    finally:
        assert master.stop() == 0
    assert sorted(path.name for path in tmp_path.glob("results/*/*/*.h5")) == [
        "000000000-MgmtTutorial.h5", "000000001-Loop.h5", "000000003-MgmtTutorial.h5"]
