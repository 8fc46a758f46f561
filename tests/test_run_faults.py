"""Runs that go wrong, with a real master and real workers: experiments raising in each
stage, workers dying (exit, SIGKILL, segfault, watchdog), a build that never ends, a
compute-bound run deleted, the master killed with runs in flight, and pause/priority
(reference §3.6–3.10, §6; ARTIQ's ``test_worker.py`` and ``test_scheduler.py``).

Every wait is for a line of the master's output, an update of a replica of the
``schedule`` struct, or a process leaving /proc, each with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from artiq_bus.client.sync import Client
from conftest import Master
from helpers.runs import (DELETED, NORMAL_RUN, ScheduleWatch, ShortBuildMaster, alive, call,
                          descendants, read_results, results_file, results_files, submit,
                          wait_dead, wait_for_output, write_experiment)

#: How soon a dead or deleted worker's run must leave the schedule.
GONE_S = 5.0

FAILS = '''\
from artiq.experiment import *


class Fails(EnvExperiment):
    def build(self):
        self.setattr_argument("stage", StringValue("run"))
        if self.stage == "build":
            raise ValueError("failed in build")

    def prepare(self):
        if self.stage == "prepare":
            raise ValueError("failed in prepare")

    def run(self):
        self.set_dataset("reached_run", True)
        if self.stage == "run":
            raise ValueError("failed in run")

    def analyze(self):
        if self.stage == "analyze":
            raise ValueError("failed in analyze")
'''

DIES = '''\
import ctypes
import os
import signal
import time

from artiq.experiment import *


class Dies(EnvExperiment):
    def build(self):
        self.setattr_argument("how", StringValue("exit"))

    def run(self):
        if self.how == "exit":
            os._exit(3)
        elif self.how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.how == "segfault":
            ctypes.string_at(0)
        elif self.how == "watchdog":
            with watchdog(0.5):
                time.sleep(600)
'''

HOLDS_THE_GIL = '''\
import ctypes

from artiq.experiment import *


class HoldsTheGil(EnvExperiment):
    def run(self):
        # libc's sleep() called through PyDLL keeps the GIL: like a long C
        # computation, nothing else in this process runs Python meanwhile
        ctypes.PyDLL(None).sleep(4)
        print("computed")
'''

HELLO = '''\
from artiq.experiment import *


class Hello(EnvExperiment):
    def run(self):
        print("Hello World")
'''

SPIN = '''\
import os
import signal

from artiq.experiment import *


class Spin(EnvExperiment):
    def build(self):
        self.setattr_argument("ignore_sigterm", BooleanValue(False))

    def run(self):
        if self.ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"worker pid {os.getpid()}")
        while True:
            pass
'''

HANGS_AT_IMPORT = '''\
import os

print(f"worker pid {os.getpid()}")
while True:
    pass
'''

FOREVER = '''\
import os
import time

from artiq.experiment import *


class Forever(EnvExperiment):
    def run(self):
        print(f"worker pid {os.getpid()}")
        while True:
            time.sleep(0.05)
'''

PRIORITIES = '''\
import time

from artiq.experiment import *


class Background(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")

    def run(self):
        print("background running")
        try:
            while True:
                while not self.scheduler.check_pause():
                    time.sleep(0.01)
                print("background pausing")
                self.scheduler.pause()
                print("background resumed")
        except TerminationRequested:
            print("background terminated")


class Important(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")

    def run(self):
        print("important running")
        while not self.scheduler.check_termination():
            time.sleep(0.01)
        print("important done")
'''


def printed(rid: int, file: str, text: str) -> str:
    """The master's console line of an experiment's ``print(text)``."""
    return f"^INFO:worker\\({rid},{re.escape(file)}\\):print:{re.escape(text)}$"


def worker_pid(master: Master, rid: int, file: str) -> int:
    """The PID the experiment of RID ``rid`` printed (``worker pid N``)."""
    pattern = printed(rid, file, "worker pid ").removesuffix("$") + r"(\d+)$"
    match = re.search(pattern, master.wait_for_line(pattern))
    assert match is not None
    return int(match.group(1))


def results_written(rid: int) -> str:
    """The master's line once it has written the results file of a failed run."""
    return f"^WARNING:master:.*: RID {rid}: results file .* records: "


def test_exception_in_each_stage(master: Master, tmp_path: Path) -> None:
    """An exception in build/prepare deletes the run without results; in run or
    analyze the worker writes the results file first (ARTIQ's rules)."""
    file = write_experiment(tmp_path, "fails.py", FAILS)
    stages = ["build", "prepare", "run", "analyze"]
    with ScheduleWatch(master) as watch:
        rids = [submit(master, file, {"stage": stage}) for stage in stages]
        assert rids == [0, 1, 2, 3]
        for rid, stage in zip(rids, stages):
            watch.wait_gone(rid)
            where = (f"analyze stage of RID {rid}" if stage == "analyze"
                     else f"{'prepare' if stage in ('build', 'prepare') else 'run'} stage, "
                          f"deleting RID {rid}")
            wait_for_output(master, f"^ERROR:master:.*got worker exception in {where}: "
                                    f".*ValueError.*failed in {stage}")
            wait_for_output(master, f"^ERROR:worker\\({rid},fails.py\\):.*{stage}\\(\\) "
                                    "failed:")
    # prepare()'s request follows build()'s without waiting: after a failed build the
    # worker refuses it, and nobody hears of that
    assert not [line for line in master.lines
                if "NotBuilt" in line or "worker(0,fails.py)" in line and "prepare()" in line]
    prepare_failed = ["pending", "preparing", "deleting", DELETED]
    assert watch.statuses(0) == prepare_failed
    assert watch.statuses(1) == prepare_failed
    assert watch.statuses(2) == [*NORMAL_RUN[:4], "deleting", DELETED]
    assert watch.statuses(3) == NORMAL_RUN
    assert results_files(tmp_path, 0) == results_files(tmp_path, 1) == []
    run_failed = read_results(results_file(tmp_path, 2))
    assert run_failed["outcome"] == "error: ValueError: failed in run"
    assert run_failed["datasets"] == {"reached_run": (True, {})}
    analyze_failed = read_results(results_file(tmp_path, 3))
    assert analyze_failed["outcome"] == "error in analyze: ValueError: failed in analyze"
    assert analyze_failed["rid"] == 3 and analyze_failed["expid"]["arguments"] == {
        "stage": "analyze"}
    assert results_file(tmp_path, 2).name == "000000002-Fails.h5"


def test_a_results_directory_that_cannot_be_made(master: Master, tmp_path: Path) -> None:
    """A file where ``results/`` should be: the run fails with one clear line (no
    traceback of file-system calls that are not the experiment's), leaves the
    schedule, and the next run, with the file gone, completes."""
    file = write_experiment(tmp_path, "empty.py", "from artiq.experiment import *\n\n\n"
                            "class Empty(EnvExperiment):\n    def run(self):\n        pass\n")
    (tmp_path / "results").write_text("in the way\n")
    with ScheduleWatch(master) as watch:
        rid = submit(master, file)
        watch.wait_gone(rid, GONE_S)
        line = wait_for_output(master, rf"^ERROR:master:.*deleting RID {rid}:")
        assert re.search(r"build\(\) raised ResultsDirectoryError: cannot use the results "
                         rf"directory {re.escape(str(tmp_path / 'results'))}"
                         r"/\d{4}-\d{2}-\d{2}/\d{2}: Not a directory$", line), line
        (tmp_path / "results").unlink()
        watch.wait_gone(submit(master, file), GONE_S)
    assert "Traceback" not in master.output()
    assert read_results(results_file(tmp_path, rid + 1))["outcome"] == "completed"


def test_worker_deaths(master: Master, tmp_path: Path) -> None:
    """A worker that exits, is killed, segfaults or hangs past its watchdog: an ERROR
    line naming the RID and the cause, a results file saying so, the entry gone within
    seconds; the next experiment runs fine."""
    dies = write_experiment(tmp_path, "dies.py", DIES)
    hello = write_experiment(tmp_path, "hello.py", HELLO)
    cases = {
        "exit": ("worker died: exit code 3", "exit code 3"),
        "sigkill": ("worker died: killed by signal 9 (SIGKILL)", "signal 9 \\(SIGKILL\\)"),
        "segfault": ("worker died: killed by signal 11 (SIGSEGV)",
                     "signal 11 \\(SIGSEGV\\)"),
        "watchdog": ("watchdog expired: a watchdog expired in run()", "watchdog expired"),
    }
    with ScheduleWatch(master) as watch:
        rids = [submit(master, dies, {"how": how}) for how in cases]
        last = submit(master, hello)
        master.wait_for_line(printed(last, "hello.py", "Hello World"), 30.0)
        watch.wait_gone(last)
        for rid, (outcome, cause) in zip(rids, cases.values()):
            watch.wait_gone(rid)
            line = wait_for_output(master, f"^ERROR:master:.*got worker exception in run "
                                           f"stage, deleting RID {rid}: .*{cause}")
            assert len(re.findall(cause, line)) == 1, line  # the cause, said once
            wait_for_output(master, results_written(rid))
            assert read_results(results_file(tmp_path, rid))["outcome"] == outcome
            assert watch.statuses(rid) == [*NORMAL_RUN[:4], "deleting", DELETED]
            assert watch.time_of(rid, DELETED) - watch.time_of(rid, "running") < GONE_S
            assert results_file(tmp_path, rid).name == f"{rid:09}-Dies.h5"
    assert watch.statuses(last) == NORMAL_RUN
    assert read_results(results_file(tmp_path, last))["outcome"] == "completed"
    assert master.popen.poll() is None


def test_a_long_computation_holding_the_gil_completes(master: Master,
                                                       tmp_path: Path) -> None:
    """run() holds the GIL for 4 s, twice the broker's heartbeat liveness: the worker's
    bus thread is silent meanwhile, yet its connection is up, so the run is neither
    declared dead nor killed."""
    file = write_experiment(tmp_path, "gil.py", HOLDS_THE_GIL)
    with ScheduleWatch(master) as watch:
        rid = submit(master, file)
        master.wait_for_line(printed(rid, "gil.py", "computed"), 30.0)
        watch.wait_gone(rid)
    assert watch.statuses(rid) == NORMAL_RUN
    assert read_results(results_file(tmp_path, rid))["outcome"] == "completed"
    assert not [line for line in master.lines if "died" in line]


def test_build_timeout(tmp_path: Path) -> None:
    """A file whose import never ends is stopped by the build timeout (shortened to
    2 s here): ERROR line, results file, worker gone, the master runs the next one."""
    hangs = write_experiment(tmp_path, "hangs.py", HANGS_AT_IMPORT)
    hello = write_experiment(tmp_path, "hello.py", HELLO)
    master = ShortBuildMaster(tmp_path, 2.0)
    try:
        master.wait_ready()
        with ScheduleWatch(master) as watch:
            assert submit(master, hangs) == 0
            pid = worker_pid(master, 0, "hangs.py")
            master.wait_for_line(r"^ERROR:master:.*got worker exception in prepare stage, "
                                 r"deleting RID 0: .*build\(\) took more than 2 s")
            watch.wait_gone(0, GONE_S)
            wait_dead({pid}, GONE_S)
            assert submit(master, hello) == 1
            master.wait_for_line(printed(1, "hello.py", "Hello World"))
            watch.wait_gone(1)
        elapsed = watch.time_of(0, DELETED) - watch.time_of(0, "preparing")
        assert 2.0 <= elapsed < 2.0 + GONE_S
        assert watch.statuses(0) == ["pending", "preparing", "deleting", DELETED]
        wait_for_output(master, results_written(0))
        fields = read_results(results_file(tmp_path, 0))
        assert fields["outcome"] == "build timed out: build() took more than 2 s"
        assert results_file(tmp_path, 0).name == "000000000-hangs.h5"
    finally:
        code = master.stop()
    assert code == 0, master.output()


def test_delete_compute_bound_run(master: Master, tmp_path: Path) -> None:
    """``while True: pass`` never reads its terminate request: deleting it escalates
    to SIGTERM (and to SIGKILL if SIGTERM is ignored); the worker is gone within
    seconds."""
    spin = write_experiment(tmp_path, "spin.py", SPIN)
    with ScheduleWatch(master) as watch:
        for rid, ignore_sigterm in enumerate((False, True)):
            assert submit(master, spin, {"ignore_sigterm": ignore_sigterm}) == rid
            pid = worker_pid(master, rid, "spin.py")
            watch.wait_status(rid, "running")
            asked = time.monotonic()
            call(master, "delete", rid)
            watch.wait_gone(rid, GONE_S)
            wait_dead({pid}, GONE_S)
            assert time.monotonic() - asked < GONE_S
            assert watch.statuses(rid) == [*NORMAL_RUN[:4], "deleting", DELETED]
            wait_for_output(master, f"^WARNING:master:.*worker of RID {rid} does not stop "
                                    r".*sending SIGTERM")
    wait_for_output(master, r"^WARNING:master:.*worker of RID 1 does not stop "
                            r".*sending SIGKILL")
    assert "RID 0 does not stop (deleted), sending SIGKILL" not in master.output()
    assert results_files(tmp_path, 0) == results_files(tmp_path, 1) == []


def test_master_killed_with_runs_in_flight(tmp_path: Path) -> None:
    """kill -9 of the master while a run is running and another waits for its due date:
    no worker survives; the next master brings the pending run back with its RID and
    runs it, and reports the interrupted one (ERROR line, results file)."""
    forever = write_experiment(tmp_path, "forever.py", FOREVER)
    hello = write_experiment(tmp_path, "hello.py", HELLO)
    first = Master(tmp_path)
    try:
        first.wait_ready()
        with ScheduleWatch(first) as watch:
            assert submit(first, forever) == 0
            worker = worker_pid(first, 0, "forever.py")
            watch.wait_status(0, "running")
            due = time.time() + 3.0
            assert submit(first, hello, due_date=due) == 1
            assert watch.wait_status(1, "pending")[1]["due_date"] == due
        processes = descendants(first.popen.pid)
        assert worker in processes and len(processes) >= 2  # zygote, run (, spare)
        first.signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
        wait_dead(processes, GONE_S)
    finally:
        first.stop()

    second = Master(tmp_path, "-v")  # -v: INFO shows the restored run
    try:
        second.wait_ready()
        wait_for_output(second, r"^ERROR:master:.*RID 0 was running when the master "
                                r"stopped: interrupted")
        wait_for_output(second, r"^INFO:master:.*RID 1 restored from the persisted schedule")
        with ScheduleWatch(second) as watch:
            assert 0 not in watch.updates[0][1]["struct"]
            second.wait_for_line(printed(1, "hello.py", "Hello World"))
            watch.wait_for(lambda schedule: 1 not in schedule, what="RID 1 done")
            assert submit(second, hello) == 2
            watch.wait_gone(2)
        wait_for_output(second, results_written(0))
        interrupted = read_results(results_file(tmp_path, 0))
        assert interrupted["outcome"] == "interrupted: master stopped"
        assert interrupted["expid"]["file"] == str(forever)
        assert interrupted["rid"] == 0
        assert interrupted["start_time"] <= interrupted["run_time"] < due
        # named after the class, which the persisted schedule kept
        assert results_file(tmp_path, 0).name == "000000000-Forever.h5"
        assert read_results(results_file(tmp_path, 1))["start_time"] >= due
    finally:
        code = second.stop()
    assert code == 0, second.output()
    assert not any(alive(pid) for pid in processes)


def test_pause_for_higher_priority(master: Master, tmp_path: Path) -> None:
    """A background run polling ``check_pause()`` pauses for a more important run and
    resumes after it; termination requested while it is paused makes its ``pause()``
    raise TerminationRequested."""
    file = write_experiment(tmp_path, "priorities.py", PRIORITIES)
    with ScheduleWatch(master) as watch:
        low = submit(master, file, class_name="Background")
        master.wait_for_line(printed(low, "priorities.py", "background running"))
        assert call(master, "check_pause", low) is False
        high = submit(master, file, priority=5, class_name="Important")
        master.wait_for_line(printed(high, "priorities.py", "important running"))
        assert watch.wait_status(high, "running")[low]["status"] == "paused"
        assert call(master, "check_pause", low) is False  # not running

        call(master, "request_termination", low)
        assert call(master, "check_termination", low) is True
        assert watch.value[low]["status"] == "paused"
        call(master, "request_termination", high)
        # two workers' output: their lines may reach the master in either order (the
        # order of the runs is checked on the schedule below)
        wait_for_output(master, printed(high, "priorities.py", "important done"))
        wait_for_output(master, printed(low, "priorities.py", "background terminated"))
        watch.wait_gone(low)
        watch.wait_gone(high)
    assert watch.statuses(high) == NORMAL_RUN
    assert watch.statuses(low) == [*NORMAL_RUN[:4], "paused", *NORMAL_RUN[3:]]
    assert watch.position(low, "paused") < watch.position(high, "running")
    assert watch.position(high, "run_done") < watch.position(low, "running", 1)
    output = master.output()
    assert output.count("print:background pausing") == 1
    assert "print:background resumed" not in output
    assert read_results(results_file(tmp_path, low))["outcome"] == "completed"
    assert read_results(results_file(tmp_path, high))["outcome"] == "completed"


def test_deleting_a_paused_run_writes_no_results(master: Master, tmp_path: Path) -> None:
    """``delete`` of a run waiting in ``pause()``: it ends at once, its ``except
    TerminationRequested``/``except Exception`` blocks do not run, and it gets no
    results file (ARTIQ: deletion before analyze leaves none); the master goes on."""
    file = write_experiment(tmp_path, "priorities.py", PRIORITIES)
    with ScheduleWatch(master) as watch:
        low = submit(master, file, class_name="Background")
        master.wait_for_line(printed(low, "priorities.py", "background running"))
        high = submit(master, file, priority=5, class_name="Important")
        assert watch.wait_status(high, "running")[low]["status"] == "paused"
        call(master, "delete", low)
        watch.wait_gone(low)
        call(master, "request_termination", high)
        watch.wait_gone(high)
    assert watch.statuses(low) == [*NORMAL_RUN[:4], "paused", "deleting", DELETED]
    assert results_files(tmp_path, low) == []
    output = master.output()
    assert "background terminated" not in output
    assert "ERROR" not in output, output
    assert read_results(results_file(tmp_path, high))["outcome"] == "completed"


def test_a_run_deleted_while_its_worker_is_on_the_way_leaves_no_worker(tmp_path: Path) -> None:
    """The zygote frozen: the run waits in ``preparing`` for a worker and is deleted
    meanwhile.  Once the zygote goes on, a worker is handed to the deleted run: it must
    end, not stay behind, handed out to nobody, until the master stops (the spares
    never end while no run uses them: a worker that ends is the one let go)."""
    file = write_experiment(tmp_path, "hello.py", HELLO)
    master = Master(tmp_path, "-v")
    try:
        zygote = _zygote_of(master)
        os.kill(zygote, signal.SIGSTOP)  # while it imports: no worker is ever ready
        master.wait_ready()
        with ScheduleWatch(master) as watch, Client(master.address) as client:
            try:
                rid = submit(master, file)
                watch.wait_status(rid, "preparing")
                client.call("scheduler", "delete", rid)
                watch.wait_gone(rid)
            finally:
                os.kill(zygote, signal.SIGCONT)
        # no run is left, so the only worker that may leave is the one let go
        master.wait_for_line(r"service 'worker\.\w+' unregistered: it said goodbye", 10.0)
    finally:
        assert master.stop() == 0


def _zygote_of(master: Master, timeout_s: float = 10.0) -> int:
    """The master's zygote, as soon as it runs the zygote's program.  Not before its
    exec: the master spawns it with vfork, and waits, frozen, until its child has
    exec'd; a child stopped before that would stop the master too."""
    deadline = time.monotonic() + timeout_s
    while True:
        for child in sorted(descendants(master.popen.pid)):
            if "artiq_bus.worker.zygote" in _cmdline(child):
                return child
        assert time.monotonic() < deadline, "the master started no zygote"
        time.sleep(0.005)  # polling /proc: a process's birth has nothing to await


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""
