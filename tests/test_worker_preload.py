"""``artiq_master --worker-preload MODULE``: the zygote imports the module once, and
every worker forked from it finds it loaded; a module that cannot be imported (missing,
raising, even ``SystemExit``) or that starts threads is reported, and the master runs
experiments as before.  Real master, zygote and workers."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import Master
from helpers.runs import ScheduleWatch, submit, write_experiment

from artiq_bus.worker import zygote

#: Modules for the zygote to preload, on the master's PYTHONPATH.
MODULES = {
    # records which process imported it: a worker tells whether it was the zygote
    "labmod": "import os\nIMPORTED_BY = os.getpid()\n",
    "threadmod": "import threading, time\n"
                 "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n",
    "raisemod": 'raise RuntimeError("no hardware here")\n',
    "exitmod": "raise SystemExit(3)\n",
    # prints on import, three ways: none of it may reach the zygote's replies (stdout)
    "printmod": "import os, sys\nprint('printmod: print')\nos.write(1, b'printmod: fd 1\\n')\n"
                "sys.__stdout__.write('printmod: __stdout__\\n')\n",
}

PRINTS_WHERE = '''\
import os

from artiq.experiment import *


class Where(EnvExperiment):
    def run(self):
        import labmod
        loaded = labmod.IMPORTED_BY != os.getpid()
        print("labmod " + ("preloaded" if loaded else "imported here"))
'''


def start_master(tmp_path: Path, *modules: str) -> Master:
    library = tmp_path / "lib"
    library.mkdir()
    for name, source in MODULES.items():
        (library / f"{name}.py").write_text(source)
    preload = [argument for name in modules for argument in ("--worker-preload", name)]
    return Master(tmp_path, "-v", *preload, env={"PYTHONPATH": str(library)}).wait_ready()


def run_where(master: Master, tmp_path: Path, rid: int) -> str:
    file = write_experiment(tmp_path, "where.py", PRINTS_WHERE)
    with ScheduleWatch(master) as watch:
        assert submit(master, file) == rid
        line = master.wait_for_line(rf"^INFO:worker\({rid},where\.py\):print:labmod ")
        watch.wait_gone(rid)
    return line.rsplit(":", 1)[1]


def test_workers_find_a_preloaded_module_loaded(tmp_path: Path) -> None:
    master = start_master(tmp_path, "labmod")
    try:
        master.wait_for_line(r"workers: module 'labmod' preloaded$")
        assert run_where(master, tmp_path, 0) == "labmod preloaded"
    finally:
        assert master.stop() == 0, master.output()


def test_without_preload_each_run_imports_it(tmp_path: Path) -> None:
    master = start_master(tmp_path)
    try:
        assert run_where(master, tmp_path, 0) == "labmod imported here"
    finally:
        assert master.stop() == 0, master.output()


def test_modules_that_fail_or_start_threads_are_reported(tmp_path: Path) -> None:
    """Each problem gets one clear line; the zygote lives on, preloads the rest and
    forks workers as usual.  What a module prints shows on the master's console."""
    master = start_master(tmp_path, "nosuchmod", "raisemod", "exitmod", "printmod",
                          "threadmod", "labmod")
    try:
        expected = [
            r"ERROR:.*cannot preload module 'nosuchmod' \(ModuleNotFoundError: No module "
            r"named 'nosuchmod'\): runs import it themselves",
            r"ERROR:.*cannot preload module 'raisemod' \(RuntimeError: no hardware here\)",
            r"ERROR:.*cannot preload module 'exitmod' \(SystemExit: 3\)",
            r"INFO:.*module 'printmod' preloaded$",
            r"WARNING:.*module 'threadmod' preloaded, but its import started 1 thread\(s\)",
            r"INFO:.*module 'labmod' preloaded$",
        ]
        for pattern in expected:
            master.wait_for_line(pattern)
        assert run_where(master, tmp_path, 0) == "labmod preloaded"
        output = master.output()
        assert not re.search(r"Traceback|not a reply", output)
        for way in ("print", "fd 1", "__stdout__"):
            assert f"printmod: {way}" in output.splitlines()
    finally:
        assert master.stop() == 0, master.output()


def test_an_import_that_hangs_is_given_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module waiting for hardware that is off: the import is abandoned after
    PRELOAD_TIMEOUT_S and reported; an alarm set before goes on."""
    (tmp_path / "hangmod.py").write_text("import time\ntime.sleep(3600)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(zygote, "PRELOAD_TIMEOUT_S", 0.2)
    handler = signal.getsignal(signal.SIGALRM)  # pytest-timeout's, perhaps
    signal.setitimer(signal.ITIMER_REAL, 600.0)  # another alarm, running
    started = time.monotonic()
    outcome = zygote._preload("hangmod")
    assert time.monotonic() - started < 5.0
    assert outcome == {"module": "hangmod", "error": "TimeoutError: import took more than "
                       "0.2 s", "threads": 0}
    try:
        assert 590.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 600.0  # still running
        assert signal.getsignal(signal.SIGALRM) is handler
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    assert "hangmod" not in sys.modules
