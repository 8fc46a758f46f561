"""A worker process: runs one experiment's stages on command, as a service on the bus.

Two threads.  The main thread runs user code (build, prepare, run, analyze): libraries
that insist on the main thread get it, and a long computation blocks nobody else.  A bus
thread runs the asyncio loop with the worker's service, its log handler and its client:
heartbeats go on while the experiment computes.  Calls from the experiment to the
master's services (scheduler, datasets, devices) cross from the main thread into the bus
thread and wait there for the reply.

The worker has one connection to the broker: its service's, which also carries its
calls and one-way messages (so they leave in the order the experiment made them, and
before the reply of the stage that made them).  Its publication socket is opened only
if the experiment publishes (``ccb``).

Everything the process writes on file descriptors 1 and 2 (``print``, C libraries,
tracebacks) becomes log records of source ``worker(RID,FILE)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import zmq

from ..net import BusAddress, CurveClient
from ..protocol import Liveness
from ..runtime.bus import BusConnection
from ..runtime.logs import BusLogHandler
from ..runtime.service import ServiceHost
from ..runtime.rpc import rpc, rpc_methods
from .errors import NotBuilt, RunDeletedWhilePaused

__all__ = ["main", "WorkerBus", "worker_connection", "register"]

logger = logging.getLogger(__name__)

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A stage job for the main thread: its name, what to call, where the result goes.
Job = tuple[str, Callable[[], Any], "asyncio.Future[Any]"]


class WorkerBus:
    """The bus side of a worker: used from the main thread to reach the master."""

    def __init__(self, loop: asyncio.AbstractEventLoop, bus: BusConnection,
                 handler: BusLogHandler):
        self.loop, self.bus, self.log_handler = loop, bus, handler
        self.output: _OutputCapture | None = None
        #: Set (on the loop) when the main thread is done: the bus side then stops.
        self.stopped = asyncio.Event()

    def capture_output(self, forward: Callable[[str, str], None]) -> None:
        """Make fds 1 and 2 log records (from the main thread, before user code)."""
        self.output = _OutputCapture(self.loop, forward, self.log_handler)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopped.set)

    def call(self, service: str, method: str, *args: Any, timeout_s: float | None = None,
             **kwargs: Any) -> Any:
        """A blocking call from user code (main thread) through the bus thread."""
        return self.start_call(service, method, *args, timeout_s=timeout_s,
                               **kwargs).result()

    def start_call(self, service: str, method: str, *args: Any,
                   timeout_s: float | None = None,
                   **kwargs: Any) -> "concurrent.futures.Future[Any]":
        """A call whose reply the caller collects later (``.result()``): work can go on
        meanwhile.  It leaves in its place among the one-way messages sent around it
        (sent by a plain callback, as :meth:`send` is, not by a task a turn later)."""
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def request() -> None:
            if not result.set_running_or_notify_cancel():
                return  # cancelled before it left
            try:
                reply = self.bus.client.request(service, method, *args, timeout_s=timeout_s,
                                                **kwargs)
            except Exception as exc:
                result.set_exception(exc)
                return
            reply.add_done_callback(lambda done: _pass_on(done, result))
        self.loop.call_soon_threadsafe(request)
        return result

    def send(self, service: str, method: str, *args: Any, **kwargs: Any) -> None:
        """A one-way message; messages keep their order."""
        self.loop.call_soon_threadsafe(
            lambda: self.bus.client.send(service, method, *args, **kwargs))

    def publish(self, frames: list[Any]) -> None:
        self.loop.call_soon_threadsafe(self.bus.publisher.send, frames)

    def set_source(self, source: str) -> None:
        self.log_handler.source = source


class _StageService:
    """The methods the scheduler calls; each hands a job to the main thread at once
    (not from a task of its own: that would wait a loop turn) and returns the future
    of its result."""

    def __init__(self, jobs: "queue.SimpleQueue[Job | None]", runner: Any):
        self._jobs, self._runner = jobs, runner

    def _in_main_thread(self, name: str, job: Callable[[], Any]) -> "asyncio.Future[Any]":
        future = asyncio.get_running_loop().create_future()
        self._jobs.put((name, job, future))
        return future

    @rpc
    def build(self, rid: int, pipeline_name: str, wd: str | None, expid: dict[str, Any],
              priority: int, device_db: dict[str, Any] | None = None) -> "asyncio.Future[str]":
        return self._in_main_thread(
            "build", lambda: self._runner.build(rid, pipeline_name, wd, expid, priority,
                                                device_db))

    @rpc
    def prepare(self) -> "asyncio.Future[None]":
        return self._in_main_thread("prepare", self._runner.prepare)

    @rpc
    def run(self) -> "asyncio.Future[None]":
        return self._in_main_thread("run", self._runner.run)

    @rpc
    def analyze(self) -> "asyncio.Future[None]":
        """The last stage: the worker ends once it is over, without a ``terminate``."""
        future = self._in_main_thread("analyze", self._runner.analyze)
        self._jobs.put(None)
        return future

    @rpc
    def examine(self, file: str) -> "asyncio.Future[dict[str, Any]]":
        return self._in_main_thread("examine", lambda: self._runner.examine(file))

    @rpc
    def terminate(self) -> None:
        """Exit now: the run is being deleted (pending output is flushed first)."""
        self._jobs.put(None)


#: How long a new worker may take to register with the broker.
_REGISTER_TIMEOUT_S = 10.0
#: How long the last message (``BYE``) may take to leave when the worker exits.
_BYE_LINGER_MS = 500

#: Bytes read from a pipe at a time: so few lines that, read on top of a backlog that
#: has just paused the pipes, they never overflow the log handler's queue.
_READ_BYTES = 8192


class _OutputCapture:
    """File descriptors 1 and 2 point at pipes that the bus loop reads (no thread of
    their own): each line becomes a log record via ``forward(stream, line)``.

    While the log handler is backlogged the pipes are not read: an experiment that
    prints faster than the log service takes its lines then waits in ``write`` (a full
    pipe), instead of its lines piling up in this process or the master's.
    """

    _STREAMS = ((1, "print"), (2, "stderr"))

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 forward: Callable[[str, str], None], handler: BusLogHandler):
        self._loop, self._forward, self._handler = loop, forward, handler
        self._partial: dict[int, bytes] = {}
        self._names: dict[int, str] = {}
        self._paused = False
        self._drained = False
        for fd, name in self._STREAMS:
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            os.set_blocking(read_end, False)
            self._partial[read_end] = b""
            self._names[read_end] = name
            loop.call_soon_threadsafe(loop.add_reader, read_end, self._read, read_end, name)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (lives forever)
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115

    def _read(self, fd: int, name: str) -> None:
        try:
            chunk = os.read(fd, _READ_BYTES)
        except BlockingIOError:
            return
        *lines, self._partial[fd] = (self._partial[fd] + chunk).split(b"\n")
        for line in lines:
            self._forward(name, line.decode(errors="replace"))
        if self._handler.backlogged and not self._paused:
            self._paused = True
            for read_end in self._partial:
                self._loop.remove_reader(read_end)
            self._handler.when_room(self._resume)

    def _resume(self) -> None:
        if not self._paused or self._drained:
            return
        self._paused = False
        for read_end, name in self._names.items():
            self._loop.add_reader(read_end, self._read, read_end, name)

    def drain(self) -> None:
        """Forward what is still in the pipes (on the loop, before it stops)."""
        self._drained = True
        for fd in self._partial:
            self._loop.remove_reader(fd)
        # Empty the pipes before flushing: a paused pipe may be full, and a flush into
        # a full pipe would block this loop, its only reader, for good.
        self._read_all()
        sys.stdout.flush()
        sys.stderr.flush()
        self._read_all()
        for fd, name in self._names.items():
            *lines, rest = self._partial[fd].split(b"\n")
            for line in [*lines, rest] if rest else lines:
                self._forward(name, line.decode(errors="replace"))

    def _read_all(self) -> None:
        for fd in self._partial:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                self._partial[fd] += chunk


def worker_connection(context: zmq.Context, config: dict[str, Any], service: str,
                      methods: dict[str, Callable[..., Any]]) -> tuple[BusConnection,
                                                                       ServiceHost]:
    """A worker's connection to the broker of ``config`` and its service host (not
    started).  An experiment may hold the GIL for minutes (a long C call): the host's
    heartbeats then stop, but the process is alive and its connection too, so the
    broker judges it by the connection."""
    curve = CurveClient.from_wire(config["curve"]) if config.get("curve") else None
    bus = BusConnection(context, BusAddress(**config["broker"]), curve)
    host = bus.service(service, methods, reconnect=False, liveness_by=Liveness.CONNECTION)
    return bus, host


async def register(bus: BusConnection, host: ServiceHost, timeout_s: float) -> None:
    """Start ``host`` and ``bus`` (its calls on the host's connection: one connection for
    all) and wait until the broker has registered the service."""
    await host.start()
    await bus.start(sharing=host)
    async with asyncio.timeout(timeout_s):
        await host.registered.wait()


def _run_bus(ready: "concurrent.futures.Future[WorkerBus]", config: dict[str, Any],
             jobs: "queue.SimpleQueue[Job | None]", runner: Any) -> None:
    async def serve() -> None:
        context = zmq.Context()
        bus, host = worker_connection(context, config, config["service"],
                                      rpc_methods(_StageService(jobs, runner)))
        try:
            await register(bus, host, _REGISTER_TIMEOUT_S)
            handler = BusLogHandler(bus.client, "worker")
            bus.client.send("workers", "ready", config["service"], os.getpid())
            worker_bus = WorkerBus(asyncio.get_running_loop(), bus, handler)
            ready.set_result(worker_bus)
            stop = asyncio.ensure_future(worker_bus.stopped.wait())
            ended = asyncio.ensure_future(host.ended.wait())
            await asyncio.wait({stop, ended}, return_when=asyncio.FIRST_COMPLETED)
            if ended.done():  # the master is gone: nobody will use this worker again
                os._exit(1)
            if worker_bus.output is not None:
                worker_bus.output.drain()
            # Within main()'s 5 s wait for this thread: the last records go out first.
            await handler.drained(timeout_s=3.0)
            await bus.publisher.drained(timeout_s=1.0)
            _leave(host, context)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            await host.stop()
            await bus.stop()
            context.destroy(linger=0)
    asyncio.run(serve())


def _leave(host: ServiceHost, context: zmq.Context) -> NoReturn:
    """End the process, its work done and its last records answered: say ``BYE``, let
    ZeroMQ put it on the wire, exit.  Tearing down the loop, its tasks, the sockets and
    the context in order would cost a tenth of an empty run's CPU, for memory and file
    descriptors the kernel frees anyway."""
    host.leave()
    context.destroy(linger=_BYE_LINGER_MS)
    os._exit(0)


def main(config: dict[str, Any]) -> int:
    """Run a worker until its last stage (analyze) or a ``terminate``; the exit code
    (when the bus side does not end the process first, see :func:`_leave`)."""
    from .experiment import ExperimentRunner, set_log_level  # user-facing: imported here
    from .warmup import rehearse_build

    jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
    ready: concurrent.futures.Future[WorkerBus] = concurrent.futures.Future()
    runner = ExperimentRunner()
    bus_thread = threading.Thread(target=_run_bus, args=(ready, config, jobs, runner),
                                  name="worker-bus", daemon=True)
    bus_thread.start()
    rehearse_build()  # while the bus thread connects
    worker_bus = ready.result(timeout=30.0)
    runner.attach(worker_bus)
    worker_bus.capture_output(runner.forward_output)
    logging.getLogger().addHandler(worker_bus.log_handler)
    set_log_level(config.get("log_level", logging.WARNING))
    while (job := jobs.get()) is not None:
        name, function, future = job
        error: BaseException | None = None
        result = None
        try:
            result = function()
        except RunDeletedWhilePaused as exc:
            logger.info("%s() stopped: %s while paused", name, exc)
            error = exc
        except NotBuilt as exc:  # build() failed and said why; the master drops this
            error = exc
        except BaseException as exc:
            # The experiment's own traceback, for its author, under its run's source.
            logger.error("%s() failed:\n%s", name, user_traceback(exc))
            error = exc
        runner.flush_datasets()  # the stage's dataset updates arrive before its reply
        worker_bus.loop.call_soon_threadsafe(_settle, future, error, result)
    runner.close()
    worker_bus.stop()
    bus_thread.join(5.0)
    return 0


def user_traceback(exc: BaseException) -> str:
    """The traceback from the first frame outside artiq_bus: the experiment's own."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


def _pass_on(reply: "asyncio.Future[Any]", result: "concurrent.futures.Future[Any]") -> None:
    """A reply's outcome, on to the thread that waits for it."""
    if reply.cancelled():
        result.set_exception(concurrent.futures.CancelledError())
    elif (error := reply.exception()) is not None:
        result.set_exception(error)
    else:
        result.set_result(reply.result())


def _settle(future: "asyncio.Future[Any]", error: BaseException | None, result: Any) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error if isinstance(error, Exception) else RuntimeError(repr(error)))
    else:
        future.set_result(result)
