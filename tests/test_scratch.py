"""Scratch directories (artiq_bus.files.ScratchDirectory): private, removed by their
owner, and removed by the next one made when their owner was killed (SIGKILL) and so
could not remove them itself."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Master
from helpers.runs import descendants, wait_dead

from artiq_bus.files import SCRATCH_PREFIX, ScratchDirectory, remove_abandoned

#: Makes a scratch directory in TMPDIR, writes its path and the PID that holds it, then
#: sleeps.  With ``fork``: forks a child that inherits it and writes instead, and the
#: owner exits at once, as a zygote killed with SIGKILL leaves its workers behind.
OWNER = """\
import os, sys, time
from artiq_bus.files import ScratchDirectory
scratch = ScratchDirectory("test")
if sys.argv[1:] == ["fork"] and os.fork() != 0:
    os._exit(0)
os.write(1, f"{scratch.path} {os.getpid()}\\n".encode())
time.sleep(60)
"""


@pytest.fixture
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of the test's own, for this process and its children."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    monkeypatch.setenv("TMPDIR", str(directory))
    return directory


@pytest.fixture
def owners() -> Iterator[list[tuple[subprocess.Popen[str], int]]]:
    """Processes started by :func:`start_owner`, and the holders, killed at the end."""
    started: list[tuple[subprocess.Popen[str], int]] = []
    yield started
    for process, holder in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder, signal.SIGKILL)
        process.kill()
        process.communicate(timeout=10)  # and closes its pipe


def start_owner(owners: list[tuple[subprocess.Popen[str], int]],
                *args: str) -> tuple[Path, int]:
    """A process that holds a scratch directory: its path and the holder's PID."""
    process = subprocess.Popen([sys.executable, "-c", OWNER, *args],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    path, pid = process.stdout.readline().split()
    owners.append((process, int(pid)))
    return Path(path), int(pid)


def kill(pid: int) -> None:
    """SIGKILL, and wait until it has ended (its files are closed, its lock released)."""
    os.kill(pid, signal.SIGKILL)
    wait_dead({pid}, 10.0)


def test_a_scratch_directory_is_private_and_removed_by_its_owner(temp: Path) -> None:
    with ScratchDirectory("unit") as path:
        assert path.parent == temp and path.name.startswith(f"{SCRATCH_PREFIX}unit-")
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        (path / "socket").write_text("in use")
        assert remove_abandoned() == []  # its owner lives
    assert list(temp.iterdir()) == []


def test_the_next_one_removes_those_of_killed_owners(
        temp: Path, owners: list[tuple[subprocess.Popen[str], int]]) -> None:
    """A killed owner's directory is removed; a live owner's, an unlocked directory
    (an older version's, or one being made) and another prefix's are not."""
    killed, killed_pid = start_owner(owners)
    alive, _ = start_owner(owners)
    (killed / "ipc").write_text("left behind")
    (temp / f"{SCRATCH_PREFIX}old").mkdir()
    (temp / "other-prefix").mkdir()
    kill(killed_pid)
    assert killed.exists()
    with ScratchDirectory("next") as path:
        assert not killed.exists()
        assert sorted(entry.name for entry in temp.iterdir()) == sorted(
            [alive.name, path.name, f"{SCRATCH_PREFIX}old", "other-prefix"])


def test_a_child_that_inherited_the_lock_keeps_the_directory(
        temp: Path, owners: list[tuple[subprocess.Popen[str], int]]) -> None:
    """The owner is gone but a child it forked (no exec) still uses the directory."""
    path, child = start_owner(owners, "fork")
    owners[-1][0].wait(10)  # the owner
    assert remove_abandoned() == [] and path.exists()
    kill(child)
    assert remove_abandoned() == [path] and not path.exists()


def test_a_killed_master_leaves_nothing_after_the_next_one(tmp_path: Path) -> None:
    """kill -9 of a master leaves its socket directory (its zygote removes its own
    when it sees the master gone); the next master removes it, and says so, and leaves
    nothing when it stops, even at once (its zygote ends in time, and removes its own)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp)}
    first = Master(tmp_path, env=env).wait_ready()
    (ipc,) = temp.glob(f"{SCRATCH_PREFIX}ipc-*")
    # its zygote up and done warming up (it forked the results node and the spares)
    wait_for(lambda: len(descendants(first.popen.pid)) >= 4, 30.0)
    (code,) = temp.glob(f"{SCRATCH_PREFIX}code-*")
    first.popen.kill()
    first.wait()
    assert ipc.exists()
    second = Master(tmp_path, "-v", env=env).wait_ready()
    try:
        assert not ipc.exists()
        assert (f"removed temporary directories left by stopped processes: {ipc.name}\n"
                in second.output())
        wait_for(lambda: not code.exists(), 30.0)  # the first zygote's, removed by it
        first.output()  # read to its end: the first zygote and its children are gone
    finally:
        assert second.stop() == 0, second.output()
    assert list(temp.iterdir()) == []  # and the second master left nothing either


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)

