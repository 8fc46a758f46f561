"""Signals aimed at a process's other threads, as /proc shows them."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest


def other_threads(pid: int) -> list[int]:
    """The IDs of the process's threads other than its main one."""
    return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()
            if int(task.name) != pid]


def blocks(pid: int, tid: int, signum: signal.Signals) -> bool:
    """Whether thread ``tid`` of ``pid`` blocks ``signum``."""
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    match = re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.M)
    assert match, status
    return bool(int(match[1], 16) >> (signum - 1) & 1)


def interrupt_through_another_thread(pid: int) -> None:
    """Check that every thread of ``pid`` but the main one blocks SIGINT, then send
    SIGINT aimed at one of them (skip the test if there is none).  ``kill()`` on a
    thread's ID is a process-wide signal that this thread is the first to be offered:
    the kernel gives it to another thread only if this one blocks it."""
    others = other_threads(pid)
    if not others:
        pytest.skip("no thread besides the main one on this machine")
    assert all(blocks(pid, tid, signal.SIGINT) for tid in others)
    os.kill(others[0], signal.SIGINT)
