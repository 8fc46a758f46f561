"""The fork server: a process that has imported everything a worker needs, and forks
one child per worker on request, so that a new worker costs a fork, not an interpreter
start and 0.7 s of imports.

It holds no ZeroMQ context (a forked context is unusable), no threads and no event
loop when it forks; each child makes its own.  (Its rehearsal, ``warm_up``, makes and
destroys its own first: see :mod:`.warmup`.)  A CONFIG with ``"role": "results"``
starts the results node instead (:mod:`artiq_bus.nodes.results`): a long-lived child
that writes results files.  Protocol on stdin/stdout, one JSON object per line:

    → {"preload": [MODULE, ...]}            import modules every run would import
    ← {"preloaded": [{"module": MODULE, "error": null or "Type: message",
                      "threads": N started by its import}, ...]}
    → {"warm_up": BUS_CONFIG}               rehearse a worker's work (worker.warmup.warm_up)
    → {"spawn": CONFIG}                     fork a worker running worker.process.main(CONFIG)
    ← {"spawned": PID, "role": ROLE}        (ROLE: CONFIG's "role", default "worker")
    → {"signal": [PID, SIGNUM]}             signal a child (ignored if it is gone)
    ← {"exited": PID, "status": STATUS}     a child ended (STATUS as os.waitpid gives it)

When stdin closes (the master is gone, even after kill -9) it kills every child and
exits: no orphans.  It keeps a private directory where its workers share compiled
experiment code (:mod:`.code_cache`), removed when it exits.

The garbage collector is off in the zygote and everything it holds is frozen before
each fork: a child's first collection would otherwise walk every inherited object and
so copy nearly every page of the parent (copy-on-write), milliseconds of CPU per run.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import importlib
import json
import os
import selectors
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

# Imported here, before any fork, so that children start with them loaded.  Not h5py:
# workers leave results files to the results node, and h5py's hundreds of mappings
# would make every fork and exit slower.
import msgpack  # noqa: F401
import numpy  # noqa: F401
import zmq  # noqa: F401

from ..files import ScratchDirectory
from ..language import environment  # noqa: F401
from . import code_cache, experiment, process, warmup  # noqa: F401
from .compat import ALIASES, install_artiq_compat

__all__ = ["main", "ChildRole"]

class ChildRole(enum.StrEnum):
    """What a child runs (the ``"role"`` of its CONFIG)."""

    WORKER = "worker"  #: one run's worker (worker.process.main)
    RESULTS = "results"  #: the results node (nodes.results.main)

#: Signals the zygote holds back (blocked, not ignored: a child forked a moment before
#: gets a SIGTERM meant for it once it unblocks them, never loses it).  The master
#: acts on them, and then stops the zygote.
_LEFT_TO_THE_MASTER = {signal.SIGTERM, signal.SIGHUP}
#: How long children get between SIGTERM and SIGKILL when the zygote shuts down.
_SHUTDOWN_GRACE_S = 1.0
#: How long a module of ``--worker-preload`` may take to import (one that waits for
#: hardware that is off must not leave the master without workers).
PRELOAD_TIMEOUT_S = 30.0


class Zygote:
    """Forks workers and reports their exits; all in one thread, driven by a selector."""

    def __init__(self, commands: BinaryIO, replies: BinaryIO):
        self._commands, self._replies = commands, replies
        self._selector = selectors.DefaultSelector()
        self._children: dict[int, int] = {}  # pid → pidfd
        self._buffer = b""

    def serve(self) -> None:
        self._selector.register(self._commands, selectors.EVENT_READ, None)
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    if not self._read_commands():
                        self._shutdown()
                        return
                else:
                    self._reap(key.data)

    def _read_commands(self) -> bool:
        chunk = os.read(self._commands.fileno(), 65536)
        if not chunk:
            return False
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._command(json.loads(line))
        return True

    def _command(self, command: dict[str, Any]) -> None:
        if "spawn" in command:
            self._spawn(command["spawn"])
        elif "preload" in command:
            self._reply({"preloaded": [_preload(name) for name in command["preload"]]})
            gc.collect()  # the imports' garbage: the collector is off in the zygote
        elif "warm_up" in command:
            warmup.warm_up(command["warm_up"])
            gc.collect()  # the rehearsal's garbage: the collector is off in the zygote
        elif "signal" in command:
            pid, signum = command["signal"]
            if pid in self._children:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

    def _spawn(self, config: dict[str, Any]) -> None:
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            gc.enable()
            self._become_worker(config)
        pidfd = os.pidfd_open(pid)
        self._children[pid] = pidfd
        self._selector.register(pidfd, selectors.EVENT_READ, pid)
        self._reply({"spawned": pid, "role": config.get("role", ChildRole.WORKER)})

    def _become_worker(self, config: dict[str, Any]) -> None:
        code = 1
        try:
            self._selector.close()
            for pidfd in self._children.values():
                os.close(pidfd)
            os.setsid()  # a Ctrl-C in the master's terminal is for the master only
            # the master's escalation (SIGTERM) reaches us; SIGINT stays ignored
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _LEFT_TO_THE_MASTER)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)  # the zygote's commands are not for us
            os.dup2(devnull, 1)  # nor its replies: nothing of ours may go there
            os.close(devnull)
            if config.get("role") == ChildRole.RESULTS:
                from ..nodes import results as results_node  # imports h5py: not here
                process.lower_priority()  # no run waits for a file being written
                code = results_node.main(config)
            else:
                code = process.main(config)
        except BaseException:  # never return into the zygote's loop
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)

    def _reap(self, pid: int) -> None:
        pidfd = self._children.pop(pid)
        self._selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self._reply({"exited": pid, "status": status})

    def _reply(self, message: dict[str, Any]) -> None:
        self._replies.write(json.dumps(message).encode() + b"\n")
        self._replies.flush()

    def _shutdown(self) -> None:
        """SIGTERM to every child, SIGKILL to those still there after the grace."""
        self._selector.unregister(self._commands)  # at its end: it would always be ready
        for pid in self._children:
            _kill(pid, signal.SIGTERM)
        remaining = set(self._children)
        deadline = time.monotonic() + _SHUTDOWN_GRACE_S
        while remaining and (left := deadline - time.monotonic()) > 0:
            for key, _ in self._selector.select(left):
                remaining.discard(key.data)
                self._selector.unregister(key.fileobj)
                os.waitpid(key.data, 0)
        for pid in remaining:
            _kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _kill(pid: int, signum: int) -> None:
    """Signal a worker and anything it started; a worker forked a moment ago may not
    lead its process group yet, so it is then signalled alone."""
    try:
        os.killpg(pid, signum)
        return
    except ProcessLookupError:
        pass
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _preload(name: str) -> dict[str, Any]:
    """Import module ``name`` here, so that workers find it loaded; how it went.  A
    module that starts threads on import is kept, but workers do not get its threads
    (a fork copies only the calling thread)."""
    threads = _thread_count()
    try:
        with _stdout_to_stderr(), _deadline(PRELOAD_TIMEOUT_S):
            importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001 (SystemExit too: the zygote stays)
        return {"module": name, "error": f"{type(exc).__name__}: {exc}", "threads": 0}
    return {"module": name, "error": None, "threads": max(0, _thread_count() - threads)}


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """TimeoutError in this (the main) thread after ``seconds``: a wait in Python, or
    in a system call, ends; a loop inside C code does not."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"import took more than {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, expire)
    started = time.monotonic()
    delay, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if delay:  # someone's alarm was running: it goes on
            remaining = delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-6), interval)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """What user code prints goes to stderr (the master's console), never into the
    replies on stdout, from Python or from C."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def _preload_artiq_names() -> None:
    """``from artiq.experiment import *`` in an experiment finds its modules loaded."""
    if install_artiq_compat():
        for name in ALIASES:
            importlib.import_module(name)


def main() -> None:
    # The master decides when we stop (closing our stdin).  We share its process group,
    # which a terminal's Ctrl-C or hang-up, or a service manager's stop, signals whole.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, _LEFT_TO_THE_MASTER)
    gc.disable()
    _preload_artiq_names()
    with ScratchDirectory("code") as code_directory:
        code_cache.use_directory(code_directory)  # before the rehearsal: it fills it
        Zygote(sys.stdin.buffer, sys.stdout.buffer).serve()


if __name__ == "__main__":
    main()
