"""``artiq_run`` end to end: real processes in a scratch directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import h5py
import pytest

from conftest import Process
from helpers.threads import interrupt_through_another_thread

TIMEOUT_S = 60.0

TUTORIAL = '''\
from artiq.experiment import *


class MgmtTutorial(EnvExperiment):
    """Management tutorial"""
    def build(self):
        pass  # no devices used

    def run(self):
        print("Hello World")
'''

TUTORIAL_ARGUMENT = '''\
from artiq.experiment import *


class MgmtTutorial(EnvExperiment):
    """Management tutorial"""
    def build(self):
        self.setattr_argument("count", NumberValue(precision=0, step=1))

    def run(self):
        for i in range(self.count):
            print("Hello World", i)
'''

DEVICE = '''\
class Recorder:
    def __init__(self, dmgr, label):
        self.label = label

    def notify_run_end(self):
        print(self.label, "notify_run_end")

    def close(self):
        print(self.label, "close")
'''


def artiq_run(cwd: Path, *argv: str, stdin: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "artiq_bus.frontend.artiq_run", *argv],
                          cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def experiment(directory: Path, body: str, name: str = "exp.py") -> str:
    (directory / name).write_text("from artiq.experiment import *\n\n" + dedent(body))
    return name


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a clean failure (no traceback)."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("artiq_run: "), result.stderr
    return lines[0]


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    """A directory with a device database (one recording local device) and nothing else."""
    (tmp_path / "device_db.py").write_text(dedent('''\
        device_db = {
            "rec": {"type": "local", "module": "recorder", "class": "Recorder",
                    "arguments": {"label": "rec"}},
            "rec_alias": "rec",
        }
        '''))
    (tmp_path / "recorder.py").write_text(DEVICE)
    return tmp_path


# --- the tutorial --------------------------------------------------------------------


def test_tutorial_prints_hello_world(lab: Path) -> None:
    (lab / "mgmt_tutorial.py").write_text(TUTORIAL)
    result = artiq_run(lab, "mgmt_tutorial.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello World\n" and result.stderr == ""


def test_tutorial_argument(lab: Path) -> None:
    (lab / "mgmt_tutorial.py").write_text(TUTORIAL_ARGUMENT)
    result = artiq_run(lab, "mgmt_tutorial.py", "count=3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Hello World 0", "Hello World 1", "Hello World 2"]


def test_artiq_file_runs_unchanged(lab: Path) -> None:
    name = experiment(lab, '''\
        from artiq.language.units import MHz
        from artiq.language.core import TerminationRequested
        import artiq.language.environment as environment

        class Freq(EnvExperiment):
            def build(self):
                self.setattr_argument("f", NumberValue(2*MHz, unit="MHz"))
                self.setattr_argument("scan", Scannable(RangeScan(0, 1, 3)))
                self.setattr_argument("raw", PYONValue(None))

            def run(self):
                assert issubclass(Freq, environment.EnvExperiment)
                print(self.f / MHz, list(self.scan), self.raw)
        ''')
    result = artiq_run(lab, name, "raw=[1,{\"a\":2}]",
                       'scan={"ty":"CenterScan","center":5,"span":2,"step":1}')
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2.0 [5, 4, 6] [1, {'a': 2}]\n"


def test_stage_order_and_devices(lab: Path) -> None:
    name = experiment(lab, '''\
        class Staged(EnvExperiment):
            def build(self):
                self.setattr_device("rec")
                self.setattr_device("rec_alias")
                print("build", self.rec is self.rec_alias)

            def prepare(self):
                print("prepare")

            def run(self):
                print("run")

            def analyze(self):
                print("analyze")
                self.set_dataset("done", True)
        ''')
    result = artiq_run(lab, name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["build True", "prepare", "run",
                                          "rec notify_run_end", "analyze", "rec close",
                                          "done: True"]


# --- datasets ------------------------------------------------------------------------


DATASETS = '''\
import numpy as np

class Data(EnvExperiment):
    def run(self):
        self.set_dataset("zeta", [3, 1, 2], unit="kHz", scale=1e3, precision=1)
        self.set_dataset("alpha.beta", "text")
        self.set_dataset("matrix", np.eye(2))
        self.set_dataset("hidden", 1, archive=False, broadcast=True)
        self.set_dataset("mid", 0.5, broadcast=True)
        self.mutate_dataset("zeta", 0, 30)
        print("read", self.get_dataset("hidden"))
'''


def test_local_datasets_printed_sorted(lab: Path) -> None:
    result = artiq_run(lab, experiment(lab, DATASETS))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["read 1", "alpha.beta: text",
                                          "matrix: [[1. 0.]", " [0. 1.]]", "mid: 0.5",
                                          "zeta: [30, 1, 2]"]


def test_hdf5_output_with_metadata(lab: Path) -> None:
    result = artiq_run(lab, "-o", "out.h5", experiment(lab, DATASETS))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "read 1\n"
    with h5py.File(lab / "out.h5", "r") as f:
        assert set(f) == {"datasets", "archive"}
        assert set(f["datasets"]) == {"zeta", "alpha.beta", "matrix", "mid"}
        zeta = f["datasets/zeta"]
        assert zeta[()].tolist() == [30, 1, 2]
        assert dict(zeta.attrs) == {"unit": "kHz", "scale": 1e3, "precision": 1}
        assert f["datasets/alpha.beta"].asstr()[()] == "text"
        assert f["datasets/matrix"].shape == (2, 2)
        assert f["archive/hidden"][()] == 1  # read back from the (local) store: archived


def test_hdf5_output_also_after_run_fails(lab: Path) -> None:
    name = experiment(lab, '''\
        class Crash(EnvExperiment):
            def run(self):
                self.set_dataset("partial", [1, 2])
                raise RuntimeError("hardware on fire")
        ''')
    result = artiq_run(lab, "-o", "out.h5", name)
    assert result.returncode == 1
    with h5py.File(lab / "out.h5", "r") as f:
        assert f["datasets/partial"][()].tolist() == [1, 2]


def test_no_output_when_build_fails(lab: Path) -> None:
    name = experiment(lab, '''\
        class Crash(EnvExperiment):
            def build(self):
                self.set_dataset("early", 1)
                raise RuntimeError("no")
        ''')
    result = artiq_run(lab, "-o", "out.h5", name)
    assert result.returncode == 1 and not (lab / "out.h5").exists()


def test_unstorable_dataset_is_a_one_line_error(lab: Path) -> None:
    name = experiment(lab, '''\
        class Bad(EnvExperiment):
            def run(self):
                self.set_dataset("d", {"a": 1})
        ''')
    line = one_line_error(artiq_run(lab, "-o", "out.h5", name), 1)
    assert "cannot write out.h5: Error writing dataset 'd' of type 'dict'" in line
    assert not any(name.startswith((".out.h5", "out.h5")) for name in os.listdir(lab))


# --- choosing the experiment ---------------------------------------------------------


SEVERAL = '''\
class First(EnvExperiment):
    def run(self):
        print("first")

class Second(EnvExperiment):
    def run(self):
        print("second")

class _Private(EnvExperiment):
    def run(self):
        print("private")
'''


def test_class_name_chooses_among_several(lab: Path) -> None:
    name = experiment(lab, SEVERAL)
    assert artiq_run(lab, "-c", "Second", name).stdout == "second\n"
    assert artiq_run(lab, "--class-name", "_Private", name).stdout == "private\n"
    line = one_line_error(artiq_run(lab, name), 2)
    assert "More than one experiment" in line and "First, Second" in line and "-c" in line
    assert "Nope" in one_line_error(artiq_run(lab, "-c", "Nope", name), 2)


# --- failures ------------------------------------------------------------------------


def test_experiment_exception_shows_user_traceback(lab: Path) -> None:
    name = experiment(lab, '''\
        def helper(x):
            return 1 / x

        class Broken(EnvExperiment):
            def run(self):
                helper(0)
        ''')
    result = artiq_run(lab, name)
    assert result.returncode == 1
    err = result.stderr
    assert err.startswith("Traceback (most recent call last):")
    assert f'File "{lab / name}", line 8, in run' in err and "in helper" in err
    assert "artiq_bus" not in err  # the frames of artiq_run itself are left out
    assert err.splitlines()[-1] == ("artiq_run: Broken.run() failed: ZeroDivisionError: "
                                    "division by zero")


def test_build_exception_and_full_traceback_with_vv(lab: Path) -> None:
    name = experiment(lab, '''\
        class Broken(EnvExperiment):
            def build(self):
                self.setattr_device("nonexistent")
            def run(self):
                pass
        ''')
    result = artiq_run(lab, name)
    assert result.returncode == 1
    assert "line 5, in build" in result.stderr and "KeyError: 'nonexistent'" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("artiq_run: Broken.build() failed: ")
    verbose = artiq_run(lab, "-vv", name)
    assert verbose.returncode == 1 and "artiq_run.py" in verbose.stderr


def test_syntax_error_in_experiment_file(lab: Path) -> None:
    (lab / "exp.py").write_text("x = (\n")
    result = artiq_run(lab, "exp.py")
    assert result.returncode == 1 and "SyntaxError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("artiq_run: importing exp.py failed: "
                                                     "SyntaxError")


@pytest.mark.parametrize("argv, code, fragment", [
    (["missing.py"], 2, "missing.py: no such experiment file"),
    (["none.py"], 2, "No experiments in module"),
    (["tut.py", "count"], 2, "'count' is not KEY=VALUE"),
    (["tut.py", "=3"], 2, "'=3' is not KEY=VALUE"),
    (["tut.py", "count=three"], 2, "a string needs quotes: count='\"three\"'"),
    (["tut.py", "count=3", "count=4"], 2, "'count' is given twice"),
    (["tut.py", 'count="three"'], 2, "argument 'count': invalid literal"),
    (["tut.py"], 2, "argument 'count' was not supplied and has no default"),
    (["tut.py", "count=3", "extra=1"], 2, "not queried in experiment: extra"),
    (["kernel.elf"], 2, "precompiled kernels"),
    (["--device-db", "other_db.py", "tut.py", "count=1"], 4, "device database other_db.py "
                                                             "not found"),
    (["--device-db", "empty_db.py", "tut.py", "count=1"], 4, "defines no 'device_db'"),
    (["--device-db", "broken_db.py", "tut.py", "count=1"], 4, "ZeroDivisionError"),
    (["--dataset-db", "a_dir", "tut.py", "count=1"], 4, "cannot read dataset database"),
])
def test_clear_one_line_errors(lab: Path, argv: list[str], code: int, fragment: str) -> None:
    (lab / "tut.py").write_text(TUTORIAL_ARGUMENT)
    (lab / "none.py").write_text("from artiq.experiment import *\nX = 1\n")
    (lab / "empty_db.py").write_text("devices = {}\n")
    (lab / "broken_db.py").write_text("device_db = 1 / 0\n")
    (lab / "a_dir").mkdir()
    assert fragment in one_line_error(artiq_run(lab, *argv), code)


def test_missing_default_device_db(tmp_path: Path) -> None:
    (tmp_path / "tut.py").write_text(TUTORIAL)
    line = one_line_error(artiq_run(tmp_path, "tut.py"), 4)
    assert "device_db.py not found" in line


def test_existing_dataset_db_is_accepted_with_a_warning(lab: Path) -> None:
    (lab / "tut.py").write_text(TUTORIAL)
    (lab / "dataset_db.mdb").write_bytes(b"")
    result = artiq_run(lab, "tut.py")
    assert result.returncode == 0 and result.stdout == "Hello World\n"
    assert "persistent datasets are not read yet" in result.stderr


def test_version_and_help(lab: Path) -> None:
    version = artiq_run(lab, "--version")
    assert version.returncode == 0 and version.stdout.startswith("artiq_bus v")
    helped = artiq_run(lab, "--help")
    assert helped.returncode == 0 and "--dataset-db" in helped.stdout


# --- interactive arguments -----------------------------------------------------------


INTERACTIVE = '''\
class Repeat(EnvExperiment):
    def run(self):
        repeat = True
        while repeat:
            print("Hello World")
            with self.interactive(title="Repeat?") as ns:
                ns.setattr_argument("repeat", BooleanValue(True), group="loop",
                                    tooltip="again")
                ns.setattr_argument("note", PYONValue())
            repeat = ns.repeat
            print("note", ns.note)
'''


def test_interactive_arguments_on_stdin(lab: Path) -> None:
    # "1" is not a bool: asked again; a PYONValue gets the typed PYON
    result = artiq_run(lab, experiment(lab, INTERACTIVE),
                       stdin='1\ntrue\n[1, 2]\nfalse\n{"k": "v"}\n')
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Hello World") == 2
    assert "Repeat?" in result.stdout
    assert result.stdout.count("repeat:BooleanValue (group=loop, tooltip=again): ") == 3
    assert result.stdout.count("note:PYONValue: ") == 2
    assert "note [1, 2]" in result.stdout and "note {'k': 'v'}" in result.stdout
    assert "invalid value for repeat" in result.stderr


def test_interactive_end_of_input_cancels(lab: Path) -> None:
    result = artiq_run(lab, experiment(lab, INTERACTIVE), stdin="")
    assert result.returncode == 1
    assert "CancelledArgsError" in result.stderr.splitlines()[-1]


# --- virtual devices -----------------------------------------------------------------


def test_dummy_scheduler_and_ccb(lab: Path) -> None:
    name = experiment(lab, '''\
        class Sched(EnvExperiment):
            def build(self):
                self.setattr_device("scheduler")
                self.setattr_device("ccb")
                self.setattr_argument("n", NumberValue(0, precision=0, step=1))

            def run(self):
                s = self.scheduler
                print(s.rid, s.pipeline_name, s.priority, s.expid)
                print(s.submit(), s.submit("other", priority=5))
                print(s.check_pause(), s.check_termination(), s.get_status(), s.pause())
                s.delete(1)
                s.request_termination(2)
                self.ccb.issue("create_applet", "plot", "cmd", group="g")
        ''')
    result = artiq_run(lab, "-v", name, "n=4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "0 main 0 {'file': 'exp.py', 'class_name': None, 'arguments': {'n': 4}}",
        "1 2", "False False {} None"]
    err = result.stderr
    assert "INFO:" in err and "RID=1" in err and "RID=2 (pipeline other, priority 5" in err
    assert "Deleting RID 1" in err and "Termination request for RID 2" in err
    assert "CCB for service 'create_applet' (args ('plot', 'cmd'), kwargs {'group': 'g'})" in err
    quiet = artiq_run(lab, name, "n=4")
    assert quiet.returncode == 0 and quiet.stderr == ""  # INFO is hidden by default


def test_interactive_numbers_choices_and_scans(lab: Path) -> None:
    name = experiment(lab, '''\
        class Ask(EnvExperiment):
            def run(self):
                with self.interactive() as ns:
                    ns.setattr_argument("n", NumberValue(precision=0, step=1))
                    ns.setattr_argument("f", NumberValue(unit="MHz"))
                    ns.setattr_argument("mode", EnumerationValue(["a", "b"]))
                    ns.setattr_argument("scan", Scannable())
                print("got", ns.n, ns.f, ns.mode, list(ns.scan))
        ''')
    answers = ['"x"', "3", "2e6", '"c"', '"b"', '{"ty": "RangeScan", "start": 0, "stop": 1, '
               '"npoints": 2}']
    result = artiq_run(lab, name, stdin="\n".join(answers) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith("got 3 2000000.0 b [0.0, 1.0]")
    assert result.stderr.count("invalid value for") == 2  # "x" for n, "c" for mode


def test_ctrl_c_interrupts_a_blocking_call(lab: Path) -> None:
    """numpy's BLAS threads block SIGINT (they start with the mask the frontend sets
    while importing numpy): a SIGINT aimed at one of them goes to the main thread,
    which leaves its sleep at once (exit code 130)."""
    experiment(lab, '''\
        import time


        class Sleeper(EnvExperiment):
            def run(self):
                print("sleeping", flush=True)
                time.sleep(60)
        ''')
    process = Process([sys.executable, "-m", "artiq_bus.frontend.artiq_run", "exp.py"], lab)
    try:
        process.wait_for_line("^sleeping$")
        interrupt_through_another_thread(process.popen.pid)
        assert process.wait(10.0) == 130, process.output()
    finally:
        process.stop()
    assert "artiq_run: interrupted" in process.output()
