"""A worker process: runs one experiment's stages on command, as a service on the bus.

Two threads.  The main thread runs user code (build, prepare, run, analyze): libraries
that insist on the main thread get it, and a long computation blocks nobody else.  A bus
thread runs the worker's connection to the broker (:class:`~.link.WorkerLink`) on a
small loop of its own (:class:`~.loop.PollLoop`, not asyncio: a fresh process pays for
every line it runs for the first time), with the log handler and the output capture:
heartbeats go on while the experiment computes.  Calls from the experiment to the
master's services (scheduler, datasets, devices) are packed in the main thread, handed to
the bus thread, and waited for there.

Everything the process writes on file descriptors 1 and 2 (``print``, C libraries,
tracebacks) becomes log records of source ``worker(RID,FILE)``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import zmq

from ..net import BusAddress, CurveClient
from ..protocol import BusError, pack
from ..runtime.logs import BusLogHandler
from ..runtime.rpc import rpc, rpc_methods
from .errors import NotBuilt, RunDeletedWhilePaused
from .link import WorkerLink
from .loop import PollLoop

__all__ = ["main", "WorkerBus", "serve_bus", "lower_priority", "BACKGROUND_NICE"]

logger = logging.getLogger(__name__)

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: How much lower the CPU priority (nice) of work that no run waits for: a worker's
#: last steps after its stages (its results file, its exit) and the results node.  On
#: two busy cores the runs still to come (a build, a hand-over) go first.
BACKGROUND_NICE = 5

#: A stage job for the main thread: its name, what to call, where the result goes.
Job = tuple[str, Callable[[], Any], "concurrent.futures.Future[Any]"]


class WorkerBus:
    """The bus side of a worker, for the main thread: what it sends is packed here
    (a value that cannot be sent raises in the experiment) and handed to the bus
    thread, in order."""

    def __init__(self, loop: PollLoop, link: WorkerLink, handler: BusLogHandler):
        self.loop, self.link, self.log_handler = loop, link, handler
        self.output: _OutputCapture | None = None
        #: Set (on the loop) when the main thread is done: the bus side then stops.
        self.stopped = False

    def capture_output(self, forward: Callable[[str, str], None]) -> None:
        """Make fds 1 and 2 log records (from the main thread, before user code)."""
        self.output = _OutputCapture(self.loop, forward, self.log_handler)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(setattr, self, "stopped", True)

    def call(self, service: str, method: str, *args: Any, timeout_s: float | None = None,
             **kwargs: Any) -> Any:
        """A blocking call from user code (main thread) through the bus thread."""
        return self.start_call(service, method, *args, timeout_s=timeout_s,
                               **kwargs).result()

    def start_call(self, service: str, method: str, *args: Any,
                   timeout_s: float | None = None,
                   **kwargs: Any) -> "concurrent.futures.Future[Any]":
        """A call whose reply the caller collects later (``.result()``): work can go on
        meanwhile.  It leaves in its place among the one-way messages sent around it."""
        body, buffers = pack([list(args), kwargs])
        return self.start_call_packed(service, method, body, buffers, timeout_s=timeout_s)

    def start_call_packed(self, service: str, method: str, body: bytes, buffers: list[Any],
                          *, timeout_s: float | None = None,
                          ) -> "concurrent.futures.Future[Any]":
        """:meth:`start_call` with the body ``[args, kwargs]`` already packed."""
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def request() -> None:
            try:
                self.link.request_packed(service, method, body, buffers, timeout_s=timeout_s,
                                         future=result)
            except BusError as exc:
                result.set_exception(exc)
        self.loop.call_soon_threadsafe(request)
        return result

    def send(self, service: str, method: str, *args: Any, **kwargs: Any) -> None:
        """A one-way message; messages keep their order."""
        body, buffers = pack([list(args), kwargs])
        self.send_packed(service, method, body, buffers)

    def send_packed(self, service: str, method: str, body: bytes, buffers: list[Any]) -> None:
        """:meth:`send` with the body ``[args, kwargs]`` already packed."""
        self.loop.call_soon_threadsafe(self._transmit, service, method, body, buffers)

    def _transmit(self, service: str, method: str, body: bytes, buffers: list[Any]) -> None:
        try:
            self.link.send_packed(service, method, body, buffers)
        except BusError as exc:
            logger.error("worker %s: message to %s.%s lost: %s", self.link.name, service,
                         method, exc)

    def publish(self, frames: list[Any]) -> None:
        self.loop.call_soon_threadsafe(self.link.publish, frames)

    def set_source(self, source: str) -> None:
        self.log_handler.source = source


class _StageService:
    """The methods the scheduler calls; each hands a job to the main thread at once
    and returns the future of its result (the reply leaves when it is settled)."""

    def __init__(self, jobs: "queue.SimpleQueue[Job | None]", runner: Any):
        self._jobs, self._runner = jobs, runner

    def _in_main_thread(self, name: str,
                        job: Callable[[], Any]) -> "concurrent.futures.Future[Any]":
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((name, job, future))
        return future

    @rpc
    def build(self, rid: int, pipeline_name: str, wd: str | None, expid: dict[str, Any],
              priority: int, device_db: dict[str, Any] | None = None,
              ) -> "concurrent.futures.Future[str]":
        return self._in_main_thread(
            "build", lambda: self._runner.build(rid, pipeline_name, wd, expid, priority,
                                                device_db))

    @rpc
    def prepare(self) -> "concurrent.futures.Future[None]":
        return self._in_main_thread("prepare", self._runner.prepare)

    @rpc
    def run(self) -> "concurrent.futures.Future[None]":
        return self._in_main_thread("run", self._runner.run)

    @rpc
    def analyze(self) -> "concurrent.futures.Future[None]":
        """The last stage: the worker ends once it is over and its results file is on
        disk, without a ``terminate``."""
        future = self._in_main_thread("analyze", self._runner.analyze)
        self._jobs.put(None)
        return future

    @rpc
    def examine(self, file: str) -> "concurrent.futures.Future[dict[str, Any]]":
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

    def __init__(self, loop: PollLoop, forward: Callable[[str, str], None],
                 handler: BusLogHandler):
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


def serve_bus(ready: "concurrent.futures.Future[WorkerBus]", config: dict[str, Any],
              methods: dict[str, Callable[..., Any]],
              on_registered: Callable[[WorkerLink], None] | None = None,
              register_timeout_s: float = _REGISTER_TIMEOUT_S) -> bool:
    """The bus thread: connect to the broker of ``config`` as service
    ``config["service"]`` with ``methods``, hand the main thread its
    :class:`WorkerBus` through ``ready``, serve until it stops the bus side, then
    deliver what is left (output, log records, publications) and say ``BYE``.  False
    when the broker was lost first (the master is gone: nobody will use this worker
    again)."""
    loop = PollLoop()
    context = zmq.Context()
    curve = CurveClient.from_wire(config["curve"]) if config.get("curve") else None
    link = WorkerLink(loop, context, BusAddress(**config["broker"]), config["service"],
                      methods, curve=curve)
    linger_ms = 0
    try:
        link.connect()
        if not loop.run_until(lambda: link.registered or link.ended, register_timeout_s):
            raise TimeoutError(f"worker {link.name}: not registered with the broker at "
                               f"{config['broker']['control']} within "
                               f"{register_timeout_s:g} s")
        if on_registered is not None:
            on_registered(link)
        bus = WorkerBus(loop, link, BusLogHandler(link, "worker", loop=loop))
        ready.set_result(bus)
        loop.run_until(lambda: bus.stopped or link.ended)
        if link.ended:
            return False
        if bus.output is not None:
            bus.output.drain()
        # Within main()'s 5 s wait for this thread: the last records go out first.
        bus.log_handler.flush()
        loop.run_until(lambda: bus.log_handler.idle or link.ended, 3.0)
        loop.run_until(lambda: not link.publications_held or link.ended, 1.0)
        link.leave()
        linger_ms = _BYE_LINGER_MS  # ZeroMQ puts it on the wire before the exit
        return True
    except BaseException as exc:
        if not ready.done():
            ready.set_exception(exc)
        raise
    finally:
        context.destroy(linger=linger_ms)
        loop.close()


def _run_bus(ready: "concurrent.futures.Future[WorkerBus]", config: dict[str, Any],
             jobs: "queue.SimpleQueue[Job | None]", runner: Any) -> None:
    """The worker's bus thread; it ends the process when it is done.  Its work done
    and its last records answered, nothing is torn down: the kernel frees memory and
    file descriptors, and tearing down in order would cost a tenth of an empty run's
    CPU."""
    def announce(link: WorkerLink) -> None:
        link.send("workers", "ready", link.name, os.getpid())
    delivered = serve_bus(ready, config, rpc_methods(_StageService(jobs, runner)), announce)
    os._exit(0 if delivered else 1)


def main(config: dict[str, Any]) -> int:
    """Run a worker until its last stage (analyze) or a ``terminate``; the exit code
    (when the bus side does not end the process first, see :func:`_run_bus`)."""
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
        if error is None:
            future.set_result(result)
        else:  # not an Exception (SystemExit, ...): the caller still gets an error
            future.set_exception(error if isinstance(error, Exception)
                                 else RuntimeError(repr(error)))
    lower_priority()  # what is left (the results file, the exit) is nobody's hand-over
    runner.close()
    worker_bus.stop()
    bus_thread.join(5.0)
    return 0


def lower_priority() -> None:
    """Every thread of this process ``BACKGROUND_NICE`` lower (Linux gives each thread
    its own priority; a thread that ends meanwhile is skipped)."""
    with contextlib.suppress(OSError):
        for tid in map(int, os.listdir("/proc/self/task")):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid,
                               os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE)


def user_traceback(exc: BaseException) -> str:
    """The traceback from the first frame outside artiq_bus: the experiment's own."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
