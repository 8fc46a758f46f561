"""The zygote's own process (artiq_bus.worker.zygote), driven through its stdin as the
worker pool drives it: it ends when its stdin closes, and takes its children with it
within its grace, even one forked a moment before; signals that reach the master's
whole process group are the master's to act on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.runs import alive, descendants
from helpers.tcp_broker import BrokerThread, worker_bus_config



@pytest.fixture
def config() -> Iterator[dict[str, Any]]:
    """A worker's configuration for a broker in this process: such a worker registers
    and waits, alive, until it is told to stop."""
    with BrokerThread() as broker:
        yield {**worker_bus_config(broker.address), "service": "worker.test"}


#: The zygote's grace (1 s) and its imports, on a loaded machine.
DEADLINE_S = 15.0


def start_zygote(tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "artiq_bus.worker.zygote"], cwd=tmp_path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            start_new_session=True)


def command(zygote: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert zygote.stdin is not None
    zygote.stdin.write(json.dumps(message).encode() + b"\n")
    zygote.stdin.flush()


def spawned(zygote: subprocess.Popen[bytes]) -> int:
    assert zygote.stdout is not None
    reply = json.loads(zygote.stdout.readline())
    pid: int = reply["spawned"]
    return pid


def end(zygote: subprocess.Popen[bytes]) -> int:
    """Close its stdin, as the master does when it stops; its exit code."""
    assert zygote.stdin is not None and zygote.stdout is not None
    if not zygote.stdin.closed:
        zygote.stdin.close()
    try:
        return zygote.wait(DEADLINE_S)
    finally:
        zygote.kill()
        zygote.wait()
        zygote.stdout.close()


def test_a_child_forked_a_moment_before_the_end_goes_with_it(
        tmp_path: Path, config: dict[str, Any]) -> None:
    """The end comes right behind a spawn: the child may not have unblocked SIGTERM
    yet, and still gets it."""
    zygote = start_zygote(tmp_path)
    command(zygote, {"warm_up": None})  # what a zygote does first: the spawn comes after
    for _ in range(3):
        command(zygote, {"spawn": config})
    assert zygote.stdin is not None
    zygote.stdin.close()  # right behind the spawns
    children = [spawned(zygote) for _ in range(3)]
    assert end(zygote) == 0
    assert not any(alive(child) for child in children)


def test_signals_to_the_group_are_left_to_the_master(
        tmp_path: Path, config: dict[str, Any]) -> None:
    """SIGTERM and SIGHUP to the zygote's group (as to the master's) do not end it,
    nor its children, which are in sessions of their own; its stdin still does."""
    zygote = start_zygote(tmp_path)
    command(zygote, {"spawn": config})
    child = spawned(zygote)
    deadline = time.monotonic() + DEADLINE_S
    while os.getsid(child) != child:  # until it left the group (a child that has not
        assert time.monotonic() < deadline  # yet is the zygote's, and stops with it)
        time.sleep(0.01)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.killpg(zygote.pid, signum)
    command(zygote, {"spawn": config})  # answered: it ran on after the signals
    other = spawned(zygote)
    assert zygote.poll() is None and {child, other} <= descendants(zygote.pid)
    assert end(zygote) == 0
    assert not alive(child)
