"""``artiq_client show ...`` live views, ``supply-interactive`` and
``cancel-interactive`` against a real master: each view redraws on updates and ends
quietly on Ctrl-C; bad input gets one line and a non-zero exit code."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from artiq_bus.client.sync import Client

from conftest import Master, Process, run_cli
from helpers.runs import client_args, submit, write_experiment
from helpers.threads import interrupt_through_another_thread

FAR = 4_000_000_000.0  # a due date that never comes during a test

ASK = '''\
from artiq.experiment import *


class Ask(EnvExperiment):
    def run(self):
        try:
            with self.interactive(title="Repeat?") as ns:
                ns.setattr_argument("count", NumberValue(1, precision=0, step=1),
                                    group="loop", tooltip="how often")
                ns.setattr_argument("word", StringValue("hi"))
        except CancelledArgsError:
            print("cancelled")
            return
        for _ in range(ns.count):
            print("said", ns.word)
'''

CCB = '''\
import time

from artiq.experiment import *


class Plot(EnvExperiment):
    def build(self):
        self.setattr_device("ccb")

    def run(self):
        for _ in range(100):  # until the test saw one and deleted the run
            self.ccb.issue("create_applet", "plot", "plot_xy y", group="demo")
            time.sleep(0.1)
'''


@contextlib.contextmanager
def show(master: Master, tmp_path: Path, what: str) -> Iterator[Process]:
    """``artiq_client show WHAT``, killed at the end if the test did not end it."""
    view = Process([sys.executable, "-m", "artiq_bus.frontend.artiq_client",
                    *client_args(master), "show", what], tmp_path)
    try:
        yield view
    finally:
        view.stop()


def interrupt(view: Process) -> str:
    """Ctrl-C: the view ends with exit code 0 and no traceback; its whole output."""
    view.signal(signal.SIGINT)
    assert view.wait(10.0) == 0, view.output()
    output = view.output()
    assert "Traceback" not in output, output
    return output


def client(master: Master, *argv: str) -> tuple[int, str, str]:
    result = run_cli("artiq_client", *client_args(master), *argv)
    return result.returncode, result.stdout, result.stderr


def test_show_schedule_redraws(master: Master, tmp_path: Path) -> None:
    file = write_experiment(tmp_path, "ask.py", ASK)
    with show(master, tmp_path, "schedule") as view:
        view.wait_for_line(r"^RID\s+Pipeline\s+Status\s+Prio\s+Due date\s+Revision\s+File\s+"
                           r"Class name$")
        rid = submit(master, file, due_date=FAR, priority=3, pipeline="later")
        when = time.strftime("%m/%d %H:%M:%S", time.localtime(FAR))
        view.wait_for_line(rf"^{rid}\s+later\s+pending\s+3\s+{when}\s+Outside repo\.\s+"
                           rf"{re.escape(str(file))}$")
        assert client(master, "delete", str(rid))[0] == 0
        other = submit(master, file, due_date=FAR, pipeline="later")  # after the deletion
        view.wait_for_line(rf"^{other}\s+later\s+pending")
        last_table = interrupt(view).rsplit("Class name", 1)[1].splitlines()
    assert [line.split()[0] for line in last_table[2:]] == [str(other)], last_table


def test_show_devices(tmp_path: Path) -> None:
    (tmp_path / "device_db.py").write_text(
        'device_db = {"led": {"type": "local", "module": "m", "class": "C"},\n'
        '             "light": "led"}\n')
    master = Master(tmp_path).wait_ready()
    try:
        with show(master, tmp_path, "devices") as view:
            view.wait_for_line(r"^Name\s+Description$")
            view.wait_for_line(r"^led\s+\{'class': 'C', 'module': 'm', 'type': 'local'\}$")
            view.wait_for_line(r"^light\s+'led'$")
            interrupt(view)
    finally:
        assert master.stop() == 0


def test_show_datasets(master: Master, tmp_path: Path) -> None:
    with show(master, tmp_path, "datasets") as datasets:
        datasets.wait_for_line(r"^Dataset\s+Persistent\s+Value$")
        assert client(master, "set-dataset", "--unit", "ms", "scan.delay", "0.0125")[0] == 0
        datasets.wait_for_line(r"^scan\.delay\s+N\s+0\.0125 ms$")  # stored in s
        assert client(master, "del-dataset", "scan.delay")[0] == 0
        datasets.wait_for_line(r"^Dataset\s+Persistent\s+Value$")
        assert "scan.delay" not in interrupt(datasets).split("Dataset")[-1]


def test_interactive_arguments_from_the_command_line(master: Master, tmp_path: Path) -> None:
    file = write_experiment(tmp_path, "ask.py", ASK)
    with show(master, tmp_path, "interactive-args") as view:
        view.wait_for_line(r"^RID\s+Title\s+Key\s+Type\s+Group\s+Tooltip$")
        rid = submit(master, file)
        view.wait_for_line(rf"^{rid}\s+Repeat\?\s+count\s+NumberValue\s+loop\s+how often$")

        code, _, stderr = client(master, "supply-interactive", str(rid), "count=2")
        assert code != 0 and stderr.count("\n") == 1 and "word" in stderr, stderr
        code, _, stderr = client(master, "supply-interactive", str(rid), "count=two")
        assert code != 0 and stderr.count("\n") == 1 and "PYON" in stderr, stderr
        code, _, stderr = client(master, "supply-interactive", str(rid), "count=2", 'word="ho"')
        assert code == 0, stderr
        master.wait_for_line(r"print:said ho")
        view.wait_for_line(r"^RID\s+Title")  # the request is gone
        interrupt(view)

    rid = submit(master, file)
    deadline = time.monotonic() + 15.0
    while True:  # until the run asks (cancel before that is refused)
        code, _, stderr = client(master, "cancel-interactive", str(rid))
        if code == 0 or time.monotonic() > deadline:
            break
        assert "not waiting" in stderr, stderr
    assert code == 0, stderr
    master.wait_for_line(r"print:cancelled")


def test_show_ccb(master: Master, tmp_path: Path) -> None:
    with show(master, tmp_path, "ccb") as view:
        rid = submit(master, write_experiment(tmp_path, "plot.py", CCB))
        view.wait_for_line(r"^create_applet args: \['plot', 'plot_xy y'\] "
                           r"kwargs: \{'group': 'demo'\}$")
        assert client(master, "delete", str(rid))[0] == 0
        interrupt(view)


def test_bad_input_is_one_line_and_an_exit_code(master: Master) -> None:
    for argv in (("supply-interactive", "12345", "x=1"), ("cancel-interactive", "12345"),
                 ("delete", "notanumber"), ("show", "everything"), ("frobnicate",)):
        code, _, stderr = client(master, *argv)
        assert code != 0, argv
        assert "Traceback" not in stderr, stderr
        assert stderr.strip(), argv


def test_sigterm_ends_a_view_as_ctrl_c_does(master: Master, tmp_path: Path) -> None:
    """A view stopped by SIGTERM (a service manager, ``kill``) also ends cleanly."""
    file = write_experiment(tmp_path, "ask.py", ASK)
    with show(master, tmp_path, "schedule") as view:
        view.wait_for_line(r"^RID\s+Pipeline\s+Status")
        rid = submit(master, file, due_date=FAR)
        view.wait_for_line(rf"^{rid}\s+main\s+pending")  # a redraw: the view waits
        view.signal(signal.SIGTERM)
        assert view.wait(10.0) == 0, view.output()
    assert "Traceback" not in view.output(), view.output()


def test_a_ctrl_c_aimed_at_another_thread_ends_the_view(master: Master,
                                                       tmp_path: Path) -> None:
    """The kernel may hand a process's SIGINT to any thread that does not block it:
    numpy's BLAS threads block it (artiq_bus.frontend), so the main thread takes it,
    and the view ends (its loop wakes through its own signal handling)."""
    with Client(master.address) as bus:
        bus.call("log", "emit", [{"level": logging.INFO, "source": "test", "name": "test",
                                  "time": time.time(), "message": "backlog"}])
    with show(master, tmp_path, "log") as view:
        view.wait_for_line(r"^INFO\s+test\s.* backlog$")  # the view runs
        interrupt_through_another_thread(view.popen.pid)
        assert view.wait(10.0) == 0, view.output()
    assert "Traceback" not in view.output(), view.output()
