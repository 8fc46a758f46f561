"""The worker pool: keeps spare worker processes ready, so that a run's hand-over costs
a few milliseconds, and reports how workers ended.

Workers are forked by the zygote (:mod:`artiq_bus.worker.zygote`), a child process that
has imported everything once.  Each spare connects to the broker, registers a service
``worker.<id>`` and tells the pool it is ready; ``acquire`` hands one out.  Its
replacement is forked once the hand-over is over — when the worker says it is
``running`` (its ``run()`` starts) or it ends — because starting a worker costs
milliseconds of CPU that would otherwise slow the very hand-over it prepares for.  An
``acquire`` that finds no spare ready gets a worker forked for it at once (unless one
already starting is free for it).  The zygote reports every exit, so the pool can say
how a worker died (``signal 9``, ``exit code 1``).  When the master goes, the zygote
sees its stdin close and kills every worker: no orphans.

Modules named with ``--worker-preload`` are imported by the zygote before its first
fork, so that runs find them loaded (``scipy.optimize`` costs a fresh process 0.2 to
0.5 s); one that cannot be imported is logged, and runs import it themselves.

The zygote also forks the results node (:mod:`artiq_bus.nodes.results`), which writes
the workers' results files; the pool starts it again, after a pause, when it dies.

Service ``workers``: ``acquire()``; ``ready(service, pid)``, ``running(pid)`` and
``results_on_disk(pid)`` (one-way, from workers); ``signal(pid, signum)``,
``exit_status(pid, timeout_s)``, ``wait_results(pid, timeout_s)``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from ..net import BusAddress, CurveClient
from ..runtime.bus import BusConnection
from ..runtime.service import ServiceHost
from ..runtime.rpc import rpc, rpc_methods
from ..worker.zygote import ChildRole

__all__ = ["WorkerPool", "WORKERS_SERVICE", "describe_status"]

logger = logging.getLogger(__name__)

WORKERS_SERVICE = "workers"
#: How many ended workers' exit descriptions are remembered.
_EXITS_KEPT = 1000
#: Pause before the results node is started again after it died.
RESULTS_RESTART_S = 1.0


def describe_status(status: int) -> str:
    """How a process ended, in words, from an ``os.waitpid`` status."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"killed by signal {signum} ({name})"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


#: Futures waiting for something of a worker, by PID.
_Waiters = dict[int, list["asyncio.Future[Any]"]]


def _wake(waiters: _Waiters, pid: int, value: Any) -> None:
    for waiter in waiters.pop(pid, []):
        if not waiter.done():
            waiter.set_result(value)


async def _wait(waiters: _Waiters, pid: int, timeout_s: float, on_timeout: Any) -> Any:
    """What :func:`_wake` gives ``pid``'s waiters, or ``on_timeout`` after ``timeout_s``."""
    waiter = asyncio.get_running_loop().create_future()
    waiters.setdefault(pid, []).append(waiter)
    try:
        async with asyncio.timeout(timeout_s):
            return await waiter
    except TimeoutError:
        pending = waiters.get(pid, [])
        if waiter in pending:
            pending.remove(waiter)
        return on_timeout


def _log_preloaded(outcomes: list[dict[str, Any]]) -> None:
    """What the zygote says of each module of ``--worker-preload``."""
    for outcome in outcomes:
        name, error, threads = outcome["module"], outcome["error"], outcome["threads"]
        if error is not None:
            logger.error("workers: cannot preload module %r (%s): runs import it "
                         "themselves", name, error)
        elif threads:
            logger.warning("workers: module %r preloaded, but its import started %d "
                           "thread(s): workers do not get them, and one that holds a "
                           "lock when a worker is forked hangs that worker; better not "
                           "preload it", name, threads)
        else:
            logger.info("workers: module %r preloaded", name)


class WorkerPool:
    """Owns the zygote and the spare workers."""

    services: tuple[str, ...] = (WORKERS_SERVICE,)

    def __init__(self, worker_address: BusAddress, spares: int = 1,
                 log_level: int = logging.WARNING, curve: CurveClient | None = None,
                 preload: Sequence[str] = ()):
        self._worker_address = worker_address
        self._preload = list(preload)
        self._curve = curve
        self._spares_wanted = max(1, spares)
        self._log_level = log_level
        self._zygote: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._host: ServiceHost | None = None
        self._spawned: asyncio.Queue[int] = asyncio.Queue()
        self._ready: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._starting = 0
        #: Workers handed out whose replacement waits for the end of their hand-over.
        self._handing_over: set[int] = set()
        self._waiting = 0  # acquire() calls that found no worker ready
        self._reported_ready: set[int] = set()  # living workers that said "ready"
        self._exits: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._exit_waiters: _Waiters = {}
        self._results_on_disk: set[int] = set()  # living workers with no file to write
        self._results_waiters: _Waiters = {}
        self._alive: set[int] = set()
        self._results_pid: int | None = None
        self._results_restart: asyncio.TimerHandle | None = None
        self._stopping = False

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--worker-spares", type=int, default=2,
                            help="worker processes kept ready for the next run "
                                 "(default: %(default)s)")
        parser.add_argument("--worker-preload", action="append", default=[],
                            metavar="MODULE",
                            help="import MODULE once, in the process workers are forked "
                                 "from, so that runs find it loaded (installed modules "
                                 "that start no threads on import, such as scipy.optimize; "
                                 "not the repository's own, which change with its "
                                 "revisions); repeatable")

    async def start(self, bus: BusConnection) -> None:
        self._zygote = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "artiq_bus.worker.zygote",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read_zygote(), name="workers-zygote")
        self._host = bus.service(WORKERS_SERVICE, rpc_methods(self))
        await self._host.start()
        await self._host.registered.wait()
        if self._preload:
            self._command({"preload": self._preload})
        self._command({"warm_up": self._bus_config()})  # before the first fork
        self._spawn_results()
        self._top_up()

    async def stop(self) -> None:
        self._stopping = True
        if self._results_restart is not None:
            self._results_restart.cancel()
        if self._host is not None:
            await self._host.stop()
        if self._zygote is not None:
            assert self._zygote.stdin is not None
            self._zygote.stdin.close()  # the zygote kills its workers and exits
            try:
                async with asyncio.timeout(5.0):
                    await self._zygote.wait()
            except TimeoutError:
                self._zygote.kill()
                await self._zygote.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    # -- the zygote -------------------------------------------------------------------

    def _command(self, command: dict[str, Any]) -> None:
        assert self._zygote is not None and self._zygote.stdin is not None
        self._zygote.stdin.write(json.dumps(command).encode() + b"\n")

    def _top_up(self) -> None:
        """Fork workers until those ready or starting cover every waiting ``acquire``
        and the spares not owed to a hand-over in progress."""
        spares = max(0, self._spares_wanted - len(self._handing_over))
        while self._ready.qsize() + self._starting < self._waiting + spares:
            self._spawn()

    def _spawn(self) -> None:
        self._starting += 1
        self._command({"spawn": {**self._bus_config(),
                                 "service": f"worker.{uuid.uuid4().hex[:12]}"}})

    def _spawn_results(self) -> None:
        self._results_restart = None
        if not self._stopping:
            self._command({"spawn": {**self._bus_config(), "role": ChildRole.RESULTS,
                                     "root": os.path.abspath("results")}})

    def _bus_config(self) -> dict[str, Any]:
        """What a child needs to join the bus."""
        address = self._worker_address
        return {"broker": {"control": address.control, "notify": address.notify,
                           "publish": address.publish},
                "curve": self._curve.to_wire() if self._curve is not None else None,
                "log_level": self._log_level}

    def _handed_over(self, pid: int) -> None:
        """The hand-over of worker ``pid`` is over: its replacement may start."""
        if pid in self._handing_over:
            self._handing_over.discard(pid)
            self._top_up()

    async def _read_zygote(self) -> None:
        assert self._zygote is not None and self._zygote.stdout is not None
        async for line in self._zygote.stdout:
            try:
                message = json.loads(line)
            except ValueError:  # never ours: the zygote keeps user output off stdout
                logger.error("workers: the zygote wrote %r, not a reply", line[:200])
                continue
            if "spawned" in message:
                if message.get("role") == ChildRole.RESULTS:
                    self._results_pid = message["spawned"]
                else:
                    self._alive.add(message["spawned"])
            elif "exited" in message:
                if message["exited"] == self._results_pid:
                    self._on_results_exit(message["status"])
                else:
                    self._on_exit(message["exited"], message["status"])
            elif "preloaded" in message:
                _log_preloaded(message["preloaded"])
        code = await self._zygote.wait()
        if code != 0:
            logger.error("workers: the zygote ended with code %d", code)

    def _on_results_exit(self, status: int) -> None:
        self._results_pid = None
        if self._stopping:
            return
        logger.warning("workers: the results node ended (%s); starting it again in %g s "
                       "(meanwhile workers write their results files themselves)",
                       describe_status(status), RESULTS_RESTART_S)
        self._results_restart = asyncio.get_running_loop().call_later(
            RESULTS_RESTART_S, self._spawn_results)

    def _on_exit(self, pid: int, status: int) -> None:
        description = describe_status(status)
        self._alive.discard(pid)
        if pid in self._reported_ready:
            self._reported_ready.discard(pid)
            self._handed_over(pid)
        else:  # died while starting: what it was started for still needs a worker
            self._starting = max(0, self._starting - 1)
            self._top_up()
        self._exits[pid] = description
        if len(self._exits) > _EXITS_KEPT:
            self._exits.popitem(last=False)
        _wake(self._exit_waiters, pid, description)
        self._results_on_disk.discard(pid)
        _wake(self._results_waiters, pid, False)
        logger.debug("workers: worker %d ended: %s", pid, description)

    # -- the service ------------------------------------------------------------------

    @rpc
    def ready(self, service: str, pid: int) -> None:
        """A new worker is registered and waits for a run (one-way, from the worker)."""
        if pid in self._exits:  # already gone (and counted as such)
            return
        self._starting = max(0, self._starting - 1)
        self._reported_ready.add(pid)
        self._alive.add(pid)  # "ready" may overtake the zygote's "spawned"
        self._ready.put_nowait({"service": service, "pid": pid})

    @rpc
    def running(self, pid: int) -> None:
        """Worker ``pid`` starts ``run()`` (one-way, from the worker)."""
        self._handed_over(pid)

    @rpc
    def results_on_disk(self, pid: int) -> None:
        """Worker ``pid`` has no results file left to write (one-way, from the worker,
        before it closes its devices and exits)."""
        if pid in self._alive:  # else it is gone already, and its waiters were woken
            self._results_on_disk.add(pid)
            _wake(self._results_waiters, pid, True)

    @rpc
    async def wait_results(self, pid: int, timeout_s: float) -> bool:
        """Until worker ``pid`` says its results file is on disk (True), ends, or
        ``timeout_s`` passes (False)."""
        if pid in self._results_on_disk or pid not in self._alive:
            return pid in self._results_on_disk
        on_disk: bool = await _wait(self._results_waiters, pid, timeout_s, False)
        return on_disk

    @rpc
    async def acquire(self) -> dict[str, Any]:
        """A ready worker, ``{"service", "pid"}``, for one run or scan (see the module
        doc for when its replacement is forked)."""
        while True:
            if self._ready.empty():
                worker = await self._wait_for_worker()
            else:
                worker = self._ready.get_nowait()
            if worker["pid"] in self._alive:
                self._handing_over.add(worker["pid"])
                return worker

    async def _wait_for_worker(self) -> dict[str, Any]:
        """The next ready worker; one is forked for each waiter that none covers."""
        self._waiting += 1
        try:
            self._top_up()
            return await self._ready.get()
        finally:
            self._waiting -= 1

    @rpc
    def signal(self, pid: int, signum: int) -> None:
        """Send a signal to a worker (nothing if it is gone)."""
        if pid in self._alive:
            self._command({"signal": [pid, signum]})

    @rpc
    async def exit_status(self, pid: int, timeout_s: float = 0.0) -> str | None:
        """How worker ``pid`` ended, waiting at most ``timeout_s``; None if it still runs."""
        if pid in self._exits or pid not in self._alive:
            return self._exits.get(pid, "unknown worker")
        description: str | None = await _wait(self._exit_waiters, pid, timeout_s, None)
        return description
