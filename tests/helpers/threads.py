"""A process's threads one by one, as /proc shows them: signals aimed at them, one
stopped alone."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
from collections.abc import Iterator
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


def python_threads(pid: int) -> list[int]:
    """The IDs of the process's threads other than its main one and ZeroMQ's (Python
    3.11 does not name its threads for the OS; ZeroMQ does: ``ZMQbg/...``)."""
    return [tid for tid in other_threads(pid)
            if not Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith("ZMQbg")]


_PTRACE_SEIZE, _PTRACE_INTERRUPT, _PTRACE_DETACH = 0x4206, 0x4207, 17
_WALL = 0x40000000  # waitpid() for a thread that is not a child


@contextlib.contextmanager
def thread_stopped(tid: int) -> Iterator[None]:
    """Thread ``tid`` alone stopped (ptrace), its process's other threads running: a
    thread stuck in a system call, as a stalled disk leaves a writer.  Skips the test
    where ptrace is not allowed."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long

    def ptrace(request: int) -> None:
        if libc.ptrace(request, tid, None, None) == -1:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    try:
        ptrace(_PTRACE_SEIZE)
    except PermissionError:
        pytest.skip("ptrace is not allowed here")
    try:
        ptrace(_PTRACE_INTERRUPT)
        os.waitpid(tid, _WALL)  # until it is stopped
        yield
    finally:
        ptrace(_PTRACE_DETACH)
