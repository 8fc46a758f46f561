"""The management tutorial (``shared/reference/000_...txt``) end to end, as a new user
follows it in a fresh home directory, command by command, except the dashboard's own
clicks: where the tutorial clicks "Submit" we type ``artiq_client submit -R``, where it
looks at a dock we look at the struct the dock shows.

The master runs on free ports; ``ARTIQ_BUS_SERVER``/``ARTIQ_BUS_PORT`` let every
``artiq_client`` command (and the Git hook) be typed exactly as the tutorial gives it.
Where the tutorial leaves a file name out (``git add``, ``artiq_client submit
~/artiq-work/``) the test names ``mgmt_tutorial.py``.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import Master
from helpers.repository import HAS_GIT, StructWatch, git_env, sh
from helpers.runs import read_results, results_file, wait_for_output

pytestmark = pytest.mark.skipif(not HAS_GIT, reason="the git command is not installed")

EXAMPLES = Path(__file__).parent.parent / "examples" / "no_hardware"

HEADER = '''\
from artiq.experiment import *

class MgmtTutorial(EnvExperiment):
    """Management tutorial"""
'''
HELLO = HEADER + '''\
    def build(self):
        pass  # no devices used

    def run(self):
        print("Hello World")
'''
COUNT = HEADER + '''\
    def build(self):
        self.setattr_argument("count", NumberValue(precision=0, step=1))

    def run(self):
        for i in range(self.count):
            print("Hello World", i)
'''
# The tutorial's "def build(self):" has no body; "pass" makes it Python.
INTERACTIVE = HEADER + '''\
    def build(self):
        pass

    def run(self):
        repeat = True
        while repeat:
            print("Hello World")
            with self.interactive(title="Repeat?") as interactive:
                interactive.setattr_argument("repeat", BooleanValue(True))
            repeat = interactive.repeat
'''
PARABOLA = '''\
import time

import numpy as np

''' + COUNT.replace('''        for i in range(self.count):
            print("Hello World", i)
''', '''        self.set_dataset("parabola", np.full(self.count, np.nan), broadcast=True)
        for i in range(self.count):
            self.mutate_dataset("parabola", i, i*i)
''')

HOOK = "artiq_client scan-repository --async\n"


class Tutorial:
    """The user's shell: a home directory, a master, the commands as typed."""

    def __init__(self, tmp_path: Path):
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.env = git_env(self.home)
        self.master_dir = self.home / "artiq-master"
        self.master: Master | None = None

    def type(self, command: str) -> str:
        """A command line in the home directory; its output (it must succeed)."""
        assert self.master is not None or "artiq_client" not in command
        return sh(command, self.home, self.env)

    def start_master(self, *flags: str) -> Master:
        master = Master(self.master_dir, *flags, env=self.env).wait_ready()
        self.env.update(ARTIQ_BUS_SERVER="127.0.0.1", ARTIQ_BUS_PORT=str(master.control))
        self.master = master
        return master

    def stop_master(self) -> None:
        """Ctrl-C in the master's terminal: it ends with exit code 0."""
        assert self.master is not None
        self.master.signal(signal.SIGINT)
        assert self.master.wait(20.0) == 0, self.master.output()
        self.master = None

    def submit(self, *argv: str) -> int:
        output = self.type("artiq_client submit " + " ".join(argv))
        match = re.fullmatch(r"RID: (\d+)\n", output)
        assert match, output
        return int(match.group(1))

    def printed(self, rid: int, text: str, times: int = 1) -> None:
        """Until run ``rid`` printed ``text`` (``times`` times in all)."""
        assert self.master is not None
        pattern = rf"worker\({rid},mgmt_tutorial\.py\):print:{re.escape(text)}$"
        seen = len(re.findall(pattern, self.master.output(), re.MULTILINE))
        for _ in range(times - seen):
            self.master.wait_for_line(pattern, 30.0)


def retry(action: Callable[[], object], timeout_s: float) -> None:
    """``action()`` until it stops raising AssertionError, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            action()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # paces the attempts; the deadline bounds them


def test_the_management_tutorial(tmp_path: Path) -> None:
    user = Tutorial(tmp_path)
    try:
        first_part(user)
        git_part(user)
    finally:
        if user.master is not None:
            user.master.stop()


def first_part(user: Tutorial) -> None:
    """Starting the master, an argument, interactive arguments (filesystem backend)."""
    repository = user.master_dir / "repository"
    repository.mkdir(parents=True)
    shutil.copy(EXAMPLES / "device_db.py", user.master_dir / "device_db.py")
    (repository / "mgmt_tutorial.py").write_text(HELLO)
    master = user.start_master()
    with StructWatch(master, "explist") as explist:
        entry = explist.wait_for(lambda e: "Management tutorial" in e,
                                 what="the experiment in the explorer")
        assert entry["Management tutorial"]["file"] == "mgmt_tutorial.py"
        rid = user.submit("-R mgmt_tutorial.py")  # the dashboard's "Submit"
        user.printed(rid, "Hello World")

        # Adding an argument
        (repository / "mgmt_tutorial.py").write_text(COUNT)
        user.type("artiq_client scan-repository")
        arginfo = explist.value["Management tutorial"]["arginfo"]
        assert arginfo["count"][0]["ty"] == "NumberValue"
        rid = user.submit("-R mgmt_tutorial.py count=3")
        for i in range(3):
            user.printed(rid, f"Hello World {i}")

        # Interactive arguments
        (repository / "mgmt_tutorial.py").write_text(INTERACTIVE)
        user.type("artiq_client scan-repository")
    with StructWatch(master, "interactive_args", service="scheduler") as requests:
        rid = user.submit("-R mgmt_tutorial.py")
        user.printed(rid, "Hello World")
        request = requests.wait_for(lambda r: rid in r, what="the request")[rid]
        assert request["title"] == "Repeat?"
        assert [desc[0] for desc in request["arglist_desc"]] == ["repeat"]
        user.type(f"artiq_client supply-interactive {rid} repeat=True")
        user.printed(rid, "Hello World", times=2)  # once more, then it asks again
        # (the first request may still show for a moment: retry until the second one)
        retry(lambda: user.type(f"artiq_client cancel-interactive {rid}"), 15.0)
        wait_for_output(master, rf"^ERROR:worker\({rid},mgmt_tutorial\.py\):.*"
                                r"run\(\) failed")
        wait_for_output(master, r"CancelledArgsError")
    user.stop_master()


def git_part(user: Tutorial) -> None:
    """Setting up Git integration, the hook, a change pushed, the parabola dataset."""
    user.type("cd ~/artiq-master && mv repository ~/artiq-work && mkdir repository && "
              "cd repository && git init --bare")
    work = user.home / "artiq-work"
    (work / "mgmt_tutorial.py").write_text(HELLO)
    user.type("cd ~/artiq-work && git init")
    user.type("cd ~/artiq-work && git add mgmt_tutorial.py && "
              "git commit -m \"First version of the tutorial experiment\"")
    user.type("cd ~/artiq-work && git remote add origin ~/artiq-master/repository && "
              "git push -u origin master")
    master = user.start_master("-g")
    hook = user.master_dir / "repository" / "hooks" / "post-receive"
    hook.write_text(HOOK)
    user.type("chmod 755 ~/artiq-master/repository/hooks/post-receive")
    with StructWatch(master, "explist") as explist:
        explist.wait_for(lambda e: "Management tutorial" in e, what="the experiment")

        (work / "mgmt_tutorial.py").write_text(HELLO.replace("Hello World", "Hello World!"))
        rid = user.submit("~/artiq-work/mgmt_tutorial.py")  # from outside the repository
        user.printed(rid, "Hello World!")
        user.type("cd ~/artiq-work && git commit -a -m \"More enthusiasm\"")
        user.type("cd ~/artiq-work && git push")
        with StructWatch(master, "explist_status") as status:
            head = user.type("cd ~/artiq-master/repository && git log -1 --format=%H").strip()
            status.wait_for(lambda s: s.get("cur_rev") == head and not s["scanning"],
                            what="the scan the hook asked for")
        rid = user.submit("-R mgmt_tutorial.py")
        user.printed(rid, "Hello World!")

        # Datasets: the parabola, committed, pushed and submitted as before
        (work / "mgmt_tutorial.py").write_text(PARABOLA)
        user.type("cd ~/artiq-work && git commit -a -m \"Parabola\" && git push")
        head = user.type("cd ~/artiq-master/repository && git log -1 --format=%H").strip()
        with StructWatch(master, "explist_status") as status:
            status.wait_for(lambda s: s.get("cur_rev") == head and not s["scanning"],
                            what="the scan of the parabola commit")
        with StructWatch(master, "datasets", service="datasets") as datasets:
            rid = user.submit("-R mgmt_tutorial.py count=10")
            datasets.wait_for(lambda d: "parabola" in d and not np.isnan(d["parabola"][1][-1]),
                              what="the whole parabola in the Datasets dock")
            persist, value, _ = datasets.value["parabola"]
            assert persist is False
            assert value.tolist() == [i * i for i in range(10)]
    path = results_file(user.master_dir, rid)  # results/<date>/<hour>/
    assert path.is_relative_to(user.master_dir / "results")
    fields = read_results(path)
    assert fields["datasets"]["parabola"][0].tolist() == [i * i for i in range(10)]
    assert fields["expid"]["repo_rev"] == head  # the Git commit ID, as `git log` shows
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    user.stop_master()
