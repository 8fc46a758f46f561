"""The scheduler's handle on a worker process over the bus (a :class:`WorkerHandle`).

The worker pool (service ``workers``) hands out a ready worker, a service
``worker.<id>``; the handle calls its stages.  A worker that dies shows as
``ServiceDied`` on the stage call; the pool then says how it died.  ``close()``
escalates: a ``terminate`` request (not after ``analyze``, the last stage, after which
the worker exits by itself), then SIGTERM, then SIGKILL, each step timed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Protocol

from ..protocol import BusError, DeadlineExceeded, RemoteError, ServiceDied, Unavailable
from .errors import (WorkerBuildTimeout, WorkerCrashed, WorkerError, WorkerTimeout,
                     WorkerWatchdogTimeout)
from .worker import PauseGate

__all__ = ["BusWorkerHandle", "BusCaller", "ACQUIRE_TIMEOUT_S", "BUILD_TIMEOUT_S",
           "CLOSE_STEP_S"]

logger = logging.getLogger(__name__)

#: Importing the experiment and running build().
BUILD_TIMEOUT_S = 15.0
#: Getting a ready worker: the first one after the master starts waits for the zygote's
#: imports, which a loaded machine can stretch to seconds.
ACQUIRE_TIMEOUT_S = 60.0
#: Each step of close(): terminate request, SIGTERM, SIGKILL.
CLOSE_STEP_S = 1.0
#: After analyze the worker exits by itself once its results file is on disk, which it
#: says (``workers.results_on_disk``): nothing escalates before, or a run could leave
#: the schedule before its file is on disk.  The results node takes milliseconds for a
#: small file, and may have a queue of large ones; the worker gives up on it after
#: worker.experiment.RESULTS_TIMEOUT_S (120 s) and writes the file itself.
RESULTS_WAIT_S = 180.0
#: Then it closes its devices and exits: the first step of close() after analyze.
END_STEP_S = 5.0
#: Stages without a deadline (run() may take days); bounded for the wire.
_FOREVER_S = 30 * 24 * 3600.0
#: Stages that end with the worker having written the results file when they fail.
_WRITES_RESULTS = frozenset({"run", "analyze"})


class BusCaller(Protocol):
    """What the handle calls through: an ``AsyncClient``, or inside the master a
    ``LocalClient`` (no socket)."""

    async def call(self, service: str, method: str, /, *args: Any,
                   timeout_s: float | None = None, **kwargs: Any) -> Any: ...

    def request(self, service: str, method: str, /, *args: Any,
                timeout_s: float | None = None, **kwargs: Any) -> "asyncio.Future[Any]": ...

    def send(self, service: str, method: str, /, *args: Any, **kwargs: Any) -> None: ...


class BusWorkerHandle:
    """One run's worker, reached through the broker."""

    def __init__(self, client: BusCaller, rid: int):
        self.exit_description: str | None = None
        self._client, self._rid = client, rid
        self._service: str | None = None
        self._pid: int | None = None
        self._gate = PauseGate()
        self._run_stage: asyncio.Future[Any] | None = None
        self._closed = False
        self._watchdogs: dict[int, asyncio.TimerHandle] = {}
        self._watchdog_expired = False
        self._prepare_reply: asyncio.Future[Any] | None = None
        self._ends_itself = False  # no terminate needed: the worker exits on its own

    async def build(self, rid: int, pipeline_name: str, wd: str | None,
                    expid: dict[str, Any], priority: int) -> str | None:
        # the device database comes along with the build request: the worker need not
        # ask for it while it imports the experiment
        acquired = self._client.request("workers", "acquire", timeout_s=ACQUIRE_TIMEOUT_S)
        fetching = self._client.request("devices", "get_device_db")
        fetching.add_done_callback(_retrieve)
        try:
            worker = await asyncio.shield(acquired)
        except asyncio.CancelledError:
            # the run is being deleted: a worker handed out later is let go at once
            acquired.add_done_callback(self._let_go)
            fetching.cancel()
            raise
        self._service, self._pid = worker["service"], worker["pid"]
        device_db = await self._device_db(fetching)
        logger.debug("scheduler: RID %d runs in worker %d", rid, self._pid)
        build = self._send("build", rid, pipeline_name, wd, expid, priority, device_db,
                           timeout_s=BUILD_TIMEOUT_S)
        # prepare() always follows a successful build() (both are ARTIQ's "preparing"
        # status): its request leaves now and waits in the worker, one round trip
        # less.  After a failed build the worker refuses it, and nobody reads that.
        self._prepare_reply = self._send("prepare")
        self._prepare_reply.add_done_callback(_retrieve)
        class_name = await self._outcome("build", build, BUILD_TIMEOUT_S)
        return class_name if isinstance(class_name, str) else None

    @staticmethod
    async def _device_db(fetching: "asyncio.Future[Any]") -> dict[str, Any] | None:
        """The master's device database; None (the worker then asks, and says what
        is wrong) if it cannot be had."""
        try:
            device_db: dict[str, Any] = await fetching
        except BusError:
            return None
        return device_db

    def _let_go(self, acquired: "asyncio.Future[Any]") -> None:
        """A worker acquired for a run that was deleted meanwhile: it ends at once."""
        if not acquired.cancelled() and acquired.exception() is None:
            self._client.send(acquired.result()["service"], "terminate")

    async def prepare(self) -> None:
        reply, self._prepare_reply = self._prepare_reply, None
        await self._outcome("prepare", reply if reply is not None else self._send("prepare"))

    async def run(self) -> bool:
        self._run_stage = asyncio.ensure_future(self._stage("run"))
        return await self._gate.stage(self._run_stage)

    async def resume(self, termination_requested: bool) -> bool:
        assert self._run_stage is not None
        self._gate.answer(termination_requested)
        return await self._gate.stage(self._run_stage)

    async def analyze(self) -> None:
        self._ends_itself = True  # analyze is a worker's last stage: it then exits
        await self._stage("analyze")

    async def request_pause(self) -> bool:
        return await self._gate.request()

    def watchdog(self, wid: int, timeout_s: float | None) -> None:
        """Start (``timeout_s``) or stop (None) watchdog ``wid`` of the experiment.  Its
        timer keeps running across a pause: the deadline is the experiment's."""
        timer = self._watchdogs.pop(wid, None)
        if timer is not None:
            timer.cancel()
        if timeout_s is not None and not self._closed:
            self._watchdogs[wid] = asyncio.get_running_loop().call_later(
                timeout_s, self._watchdog_expires, wid)

    def _watchdog_expires(self, wid: int) -> None:
        logger.error("scheduler: RID %d: watchdog %d expired, killing its worker",
                     self._rid, wid)
        self._watchdog_expired = True
        if self._pid is not None:
            self._client.send("workers", "signal", self._pid, int(signal.SIGKILL))

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        for timer in self._watchdogs.values():
            timer.cancel()
        self._gate.close()
        if self._run_stage is not None and not self._run_stage.done():
            self._run_stage.cancel()
        if self._service is None or self._pid is None or self.exit_description is not None:
            return  # no worker yet, or it is already gone
        try:
            if self._ends_itself:
                await self._client.call("workers", "wait_results", self._pid, RESULTS_WAIT_S,
                                        timeout_s=RESULTS_WAIT_S + 1.0)
            else:
                self._client.send(self._service, "terminate")
            first_step_s = END_STEP_S if self._ends_itself else CLOSE_STEP_S
            for signum in (None, signal.SIGTERM, signal.SIGKILL):
                step_s = first_step_s if signum is None else CLOSE_STEP_S
                if signum is not None:
                    logger.warning("scheduler: worker of RID %d does not stop (%s), "
                                   "sending %s", self._rid, reason, signum.name)
                    await self._client.call("workers", "signal", self._pid, int(signum))
                description = await self._client.call(
                    "workers", "exit_status", self._pid, step_s, timeout_s=step_s + 1.0)
                if description is not None:
                    self.exit_description = description
                    return
            logger.error("scheduler: worker of RID %d refuses to die", self._rid)
        except BusError as exc:
            logger.error("scheduler: closing the worker of RID %d failed: %s", self._rid, exc)

    def _send(self, method: str, *args: Any,
              timeout_s: float = _FOREVER_S) -> "asyncio.Future[Any]":
        """Send stage ``method``'s request now; the future of its reply."""
        assert self._service is not None
        return self._client.request(self._service, method, *args, timeout_s=timeout_s)

    async def _stage(self, method: str, *args: Any, timeout_s: float = _FOREVER_S) -> Any:
        return await self._outcome(method, self._send(method, *args, timeout_s=timeout_s),
                                   timeout_s)

    async def _outcome(self, method: str, reply: "asyncio.Future[Any]",
                       timeout_s: float = _FOREVER_S) -> Any:
        """Stage ``method``'s result, its failure told as the scheduler's errors."""
        try:
            return await reply
        except DeadlineExceeded:
            timeout = WorkerBuildTimeout if method == "build" else WorkerTimeout
            raise timeout(f"{method}() took more than {timeout_s:g} s") from None
        except (ServiceDied, Unavailable) as exc:
            self.exit_description = await self._how_it_ended()
            if self._watchdog_expired:
                raise WorkerWatchdogTimeout(f"a watchdog expired in {method}()") from None
            raise WorkerCrashed(f"worker died in {method}(): "
                                f"{self.exit_description or exc}") from None
        except RemoteError as exc:
            raise WorkerError(f"{method}() raised {exc}",
                              results_written=method in _WRITES_RESULTS) from None

    async def _how_it_ended(self) -> str | None:
        try:
            return await self._client.call("workers", "exit_status", self._pid, CLOSE_STEP_S,
                                           timeout_s=CLOSE_STEP_S + 1.0)
        except BusError:
            return None


def _retrieve(reply: "asyncio.Future[Any]") -> None:
    """A reply nobody may await (the pipelined prepare after a failed build, the device
    database of a run deleted meanwhile): its error is read here, so asyncio does not
    report it as never retrieved."""
    if not reply.cancelled():
        reply.exception()
