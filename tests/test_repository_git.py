"""The Git backend end to end: the tutorial's "Setting up Git integration" as a user
types it (git CLI, a real master, the post-receive hook), revisions in use while the
head moves on, checkouts removed after use, an empty repository refused.

The master's TMPDIR is the test's directory, so its checkouts can be counted.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from conftest import Master, run_cli
from helpers.repository import (HAS_GIT, StructWatch, checkout_dirs, experiment, git_env,
                                 repository_call, sh)
from helpers.runs import (ScheduleWatch, cli_submit, client_args, read_results,
                          results_file, wait_for_output)

pytestmark = pytest.mark.skipif(not HAS_GIT, reason="the git command is not installed")

TUTORIAL = '''\
from artiq.experiment import *

class MgmtTutorial(EnvExperiment):
    """Management tutorial"""
    def build(self):
        pass  # no devices used

    def run(self):
        print("Hello World")
'''

HOOK = "artiq_client scan-repository --async\n"


def _wait_until(predicate: object, timeout_s: float, what: str) -> None:
    """Until ``predicate()`` holds (a file system state no event tells about)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.05)  # paces the checks; the deadline bounds the wait


def _setup_tutorial(home: Path, env: dict[str, str]) -> None:
    """The tutorial up to ``artiq_master -g``: a plain repository moved to a work
    clone, a bare repository for the master, the first commit pushed."""
    master_dir = home / "artiq-master"
    (master_dir / "repository").mkdir(parents=True)
    (master_dir / "repository" / "mgmt_tutorial.py").write_text(TUTORIAL)
    (master_dir / "device_db.py").write_text("device_db = {}\n")
    sh("cd ~/artiq-master && mv repository ~/artiq-work && mkdir repository && "
       "cd repository && git init --bare", home, env)
    sh("cd ~/artiq-work && git init", home, env)
    sh("cd ~/artiq-work && git add mgmt_tutorial.py && "
       "git commit -m \"First version of the tutorial experiment\"", home, env)
    sh("cd ~/artiq-work && git remote add origin ~/artiq-master/repository && "
       "git push -u origin master", home, env)


def test_tutorial_git_integration(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = git_env(home)
    _setup_tutorial(home, env)
    master_dir = home / "artiq-master"
    first = sh("git --git-dir=repository rev-parse HEAD", master_dir, env).strip()
    master = Master(master_dir, "-g", env={**env, "TMPDIR": str(tmp_path)}).wait_ready()
    try:
        with StructWatch(master, "explist_status") as status, \
                StructWatch(master, "explist") as explist:
            status.wait_for(lambda s: s.get("cur_rev") == first and not s["scanning"],
                            what="first scan")
            explist.wait_for(lambda e: "Management tutorial" in e, what="the experiment")
            # the hook, exactly as the tutorial gives it
            (master_dir / "repository" / "hooks" / "post-receive").write_text(HOOK)
            sh("chmod 755 ~/artiq-master/repository/hooks/post-receive", home, env)
            # try the change from the working directory first (outside the repository)
            work = home / "artiq-work" / "mgmt_tutorial.py"
            work.write_text(work.read_text().replace('"Hello World"', '"Hello World!"'))
            rid = cli_submit(master, str(work))
            wait_for_output(master, rf"worker\({rid},mgmt_tutorial.py\):print:Hello World!$")
            # then commit and push: the hook makes the master scan the new commit
            push_env = {**env, "ARTIQ_BUS_PORT": str(master.control)}
            sh("cd ~/artiq-work && git commit -a -m \"More enthusiasm\"", home, env)
            sh("cd ~/artiq-work && git push", home, push_env)
            second = sh("git --git-dir=repository rev-parse HEAD", master_dir, env).strip()
            assert second != first
            status.wait_for(lambda s: s.get("cur_rev") == second and not s["scanning"],
                            what="the scan of the pushed commit")
            with ScheduleWatch(master) as schedule:
                rid = cli_submit(master, "-R", "mgmt_tutorial.py")
                schedule.wait_gone(rid, 20.0)
                entry = schedule.updates_of(rid)[0]["value"]  # as submitted
                assert entry["repo_msg"] == "More enthusiasm"
                assert entry["expid"]["repo_rev"] == second
            wait_for_output(master, rf"worker\({rid},mgmt_tutorial.py\):print:Hello World!$")
            fields = read_results(results_file(master_dir, rid))
            assert fields["expid"]["repo_rev"] == second
            assert fields["expid"]["file"] == "mgmt_tutorial.py"
            assert second in fields["expid_text"]
            # the exercise: another experiment, committed and pushed, appears
            (home / "artiq-work" / "another.py").write_text(
                experiment("Another", "Another experiment"))
            sh("cd ~/artiq-work && git add another.py && git commit -m \"Another\" && "
               "git push", home, push_env)
            explist.wait_for(lambda e: "Another experiment" in e, what="the new experiment")
    finally:
        code = master.stop()
    assert code == 0, master.output()
    assert checkout_dirs(tmp_path) == []


def test_empty_git_repository_is_refused(tmp_path: Path) -> None:
    env = git_env(tmp_path)
    (tmp_path / "repository").mkdir()
    sh("git init --bare", tmp_path / "repository", env)
    (tmp_path / "device_db.py").write_text("device_db = {}\n")
    result = run_cli("artiq_master", "-g", "--port-control", "0", cwd=tmp_path, env=env)
    assert result.returncode == 4, result
    assert "has no commit yet" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    result = run_cli("artiq_master", "-g", "-r", "nowhere", cwd=tmp_path, env=env)
    assert result.returncode == 4 and "not a Git repository" in result.stderr, result


WAITING = '''\
import os
import time

from artiq.experiment import *


class Waiting(EnvExperiment):
    """Waiting"""
    def run(self):
        print("version {version} runs")
        while not os.path.exists({flag!r}):
            time.sleep(0.02)
'''


def test_revision_in_use_while_head_moves_on(tmp_path: Path) -> None:
    env = git_env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    sh("git init --bare repository && cd work && git init && "
       "git remote add origin ../repository", tmp_path, env)
    flag = tmp_path / "go"

    def commit(version: int) -> str:
        (work / "waiting.py").write_text(WAITING.format(version=version, flag=str(flag)))
        sh(f"git add waiting.py && git commit -m 'version {version}' && git push -u origin "
           "master", work, env)
        return sh("git rev-parse HEAD", work, env).strip()

    first = commit(1)
    master = Master(tmp_path, "-g", env={**env, "TMPDIR": str(tmp_path)}).wait_ready()
    try:
        repository_call(master, "scan_repository")
        assert len(checkout_dirs(tmp_path)) == 1  # the current revision's
        old_rid = cli_submit(master, "-R", "waiting.py")
        wait_for_output(master, rf"worker\({old_rid},waiting.py\):print:version 1 runs")
        second = commit(2)
        repository_call(master, "scan_repository")  # the head moves on
        assert repository_call(master, "get_cur_rev") == second
        assert len(checkout_dirs(tmp_path)) == 2  # version 1 is still in use
        new_rid = cli_submit(master, "-p", "other", "-R", "waiting.py")
        wait_for_output(master, rf"worker\({new_rid},waiting.py\):print:version 2 runs")
        by_rev = cli_submit(master, "-p", "third", "-R", "-r", first[:10], "waiting.py")
        wait_for_output(master, rf"worker\({by_rev},waiting.py\):print:version 1 runs")
        flag.write_text("")
        with ScheduleWatch(master) as schedule:
            for rid in (old_rid, new_rid, by_rev):
                schedule.wait_for(lambda s, rid=rid: rid not in s, 20.0, f"RID {rid} gone")
        _wait_until(lambda: len(checkout_dirs(tmp_path)) == 1, 10.0,
                    "removal of the checkout of version 1")
        assert checkout_dirs(tmp_path)[0].name.startswith(second[:12])
        revs = {rid: read_results(results_file(tmp_path, rid))["expid"]["repo_rev"]
                for rid in (old_rid, new_rid, by_rev)}
        assert revs == {old_rid: first, new_rid: second, by_rev: first}
        # bad input: one clear line, a non-zero exit
        for argv, pattern in [(["-R", "-r", "nosuch", "waiting.py"], "RevisionNotFound"),
                              (["-R", "missing.py"], "NotInRepository: missing.py"),
                              (["-R", "-r", first, "../etc/passwd"], "NotInRepository"),
                              (["-r", "HEAD", "waiting.py"], "needs -R")]:
            result = run_cli("artiq_client", *client_args(master), "submit", *argv)
            assert result.returncode != 0 and re.search(pattern, result.stderr), result
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        result = run_cli("artiq_client", *client_args(master), "scan-repository", "nosuch")
        assert result.returncode == 1 and "RevisionNotFound" in result.stderr, result
    finally:
        master.signal(signal.SIGCONT)
        code = master.stop()
    assert code == 0, master.output()
    assert checkout_dirs(tmp_path) == []


def test_the_bundled_hook_is_the_tutorials() -> None:
    hook = Path(__file__).resolve().parent.parent / "examples" / "git" / "post-receive"
    lines = [line for line in hook.read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines == [HOOK.strip()]
    assert hook.stat().st_mode & 0o111
