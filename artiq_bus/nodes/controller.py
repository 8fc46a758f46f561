"""One controller's life under ``artiq_ctlmgr``: start, forward output, ping, restart, stop.

A :class:`ManagedController` runs its entry's command (no shell), turns what the
process prints into log records of source ``controller(NAME)``, pings it (at once
after a start, giving it ``ping_timer`` + ``ping_timeout`` s to start answering, then
every ``ping_timer`` s) and starts it again after ``retry_timer``
s, times ``retry_timer_backoff`` per failure, when it exits or stops answering; a
successful ping resets the delay.  Stopping it escalates ``terminate()`` → SIGTERM →
SIGKILL, ``term_timeout`` s apart.  The per-entry options and their defaults are
ARTIQ's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import re
import shlex
import signal
import sys
from typing import Any

from ..rpc import AsyncioClient

__all__ = ["ControllerSpec", "ControllerState", "ManagedController", "make_spec",
           "OutputParser"]

logger = logging.getLogger(__name__)

#: Entry option → default (seconds, or a factor for the back-off).
_OPTIONS = {"retry_timer": 5.0, "retry_timer_backoff": 1.1, "ping_timer": 30.0,
            "ping_timeout": 30.0, "term_timeout": 30.0}
#: Longest output line forwarded whole.
_LINE_LIMIT = 1 << 20


@dataclasses.dataclass(frozen=True)
class ControllerSpec:
    """What the manager runs for one device database entry."""

    name: str
    entry: dict[str, Any]
    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    options: dict[str, float]


def make_spec(name: str, entry: dict[str, Any], bind: str) -> ControllerSpec:
    """The spec of a ``controller`` entry with a ``command``; KeyError, ValueError or
    TypeError when the entry cannot be run.

    The command is formatted with the entry's fields, ``{name}``, ``{bind}`` and
    ``{python}`` (this interpreter), then split like a shell would, without one.
    """
    fields = {**entry, "name": name, "bind": bind, "python": sys.executable}
    argv = shlex.split(str(entry["command"]).format(**fields))
    if not argv:
        raise ValueError("empty command")
    options = {key: float(entry.get(key, default)) for key, default in _OPTIONS.items()}
    if any(value <= 0 for value in options.values()):
        raise ValueError("timers must be positive")
    environment = entry.get("environment") or {}
    if not isinstance(environment, dict):
        raise TypeError("environment must be a dict")
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           **{str(k): str(v) for k, v in environment.items()}}
    return ControllerSpec(name, dict(entry), argv, env, str(entry["host"]), int(entry["port"]),
                          options)


class ControllerState(str, enum.Enum):
    """Where a managed controller is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    WAITING = "waiting to restart"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Outcome(enum.Enum):
    EXITED = "exited"
    PING_FAILED = "ping failed"
    STOP = "stop"


_LINE = re.compile(r"(CRITICAL|ERROR|WARN|WARNING|INFO|DEBUG|TRACE)(<(\d+)>)?:([^:]*):(.*)")
_LEVELS = {"CRITICAL": logging.CRITICAL, "ERROR": logging.ERROR, "WARN": logging.WARNING,
           "WARNING": logging.WARNING, "INFO": logging.INFO, "DEBUG": logging.DEBUG,
           "TRACE": 5}


class OutputParser:
    """Turns a controller's output lines into log records.

    ``LEVEL:name:message`` lines keep their level and logger name (``LEVEL<n>:`` takes
    the next n-1 lines with it); anything else is INFO from logger ``print``.  Records
    are handed to the root logger directly: a controller's output always passes,
    whatever this process's own level.
    """

    def __init__(self, source: str):
        self.source = source
        self._pending: tuple[int, str, list[str]] | None = None
        self._missing = 0

    def feed(self, line: str) -> None:
        if self._missing:
            assert self._pending is not None
            self._pending[2].append(line)
            self._missing -= 1
            if not self._missing:
                self.flush()
            return
        match = _LINE.fullmatch(line)
        if match is None:
            self._emit(logging.INFO, "print", line)
            return
        level, _, count, name, message = match.groups()
        self._pending = (_LEVELS[level], name, [message])
        self._missing = int(count) - 1 if count else 0
        if not self._missing:
            self.flush()

    def flush(self) -> None:
        """Emit a multi-line record even if its last lines never came."""
        if self._pending is not None:
            level, name, lines = self._pending
            self._pending, self._missing = None, 0
            self._emit(level, name, "\n".join(lines))

    def _emit(self, level: int, name: str, message: str) -> None:
        record = logging.LogRecord(name, level, "", 0, message, None, None)
        record.source = self.source
        logging.getLogger().handle(record)


class ManagedController:
    """Runs one controller until :meth:`stop`; ``after`` (the stop of the controller it
    replaces) must finish before the first start."""

    def __init__(self, spec: ControllerSpec, after: asyncio.Future[Any] | None = None):
        self.spec = spec
        self.state = ControllerState.STARTING
        self.pid: int | None = None
        self.starts = 0
        self._after = after
        self._delay = spec.options["retry_timer"]
        self._stop = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._life(), name=f"controller-{self.spec.name}")

    async def stop(self) -> None:
        """Stop the controller and wait until its process has ended."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self.state = ControllerState.STOPPED

    def retry_now(self) -> None:
        """Skip the remaining restart delay."""
        self._retry_now.set()

    def status(self) -> dict[str, Any]:
        return {"state": self.state.value, "pid": self.pid, "starts": self.starts,
                "command": shlex.join(self.spec.argv)}

    async def _life(self) -> None:
        name = self.spec.name
        if self._after is not None:
            await asyncio.gather(self._after, return_exceptions=True)
        while not self._stop.is_set():
            process = await self._spawn()
            if process is not None:
                outcome, readers = await self._supervise(process)
                if outcome is _Outcome.EXITED:
                    logger.warning("controller %s: exited with code %s", name,
                                   process.returncode)
                await self._end(process, readers)
                if outcome is _Outcome.STOP:
                    break
            if self._stop.is_set():
                break
            self.state = ControllerState.WAITING
            logger.warning("controller %s: restarting in %.1f s", name, self._delay)
            await self._wait_retry(self._delay)
            self._delay *= self.spec.options["retry_timer_backoff"]

    async def _spawn(self) -> asyncio.subprocess.Process | None:
        self.state = ControllerState.STARTING
        try:
            process = await asyncio.create_subprocess_exec(
                *self.spec.argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=self.spec.env, start_new_session=True, limit=_LINE_LIMIT)
        except OSError as exc:
            logger.warning("controller %s: failed to start %s: %s", self.spec.name,
                           self.spec.argv[0], exc)
            return None
        self.pid, self.starts = process.pid, self.starts + 1
        logger.info("controller %s: started (pid %d): %s", self.spec.name, process.pid,
                    shlex.join(self.spec.argv))
        return process

    async def _supervise(self, process: asyncio.subprocess.Process
                         ) -> tuple[_Outcome, list[asyncio.Task[None]]]:
        readers = [asyncio.create_task(self._forward(stream))
                   for stream in (process.stdout, process.stderr) if stream is not None]
        exited = asyncio.ensure_future(process.wait())
        stopped = asyncio.ensure_future(self._stop.wait())
        first = True
        try:
            while True:
                ping = asyncio.ensure_future(self._ping(first))
                done, _ = await asyncio.wait({exited, stopped, ping},
                                             return_when=asyncio.FIRST_COMPLETED)
                if exited in done or stopped in done:
                    ping.cancel()
                    return (_Outcome.EXITED if exited in done else _Outcome.STOP), readers
                if not ping.result():
                    return _Outcome.PING_FAILED, readers
                first = False
        finally:
            stopped.cancel()

    async def _ping(self, first: bool) -> bool:
        """Ping the first target (at once for a new process, which may still be
        starting; else after ``ping_timer``); whether it answered truthfully.  A new
        process gets ``ping_timer`` more to start listening (ARTIQ's first ping comes
        only then): on a loaded machine an interpreter start alone can outlast a short
        ``ping_timeout``."""
        options, name = self.spec.options, self.spec.name
        if not first:
            await asyncio.sleep(options["ping_timer"])  # the ping period
        timeout_s = options["ping_timeout"] + (options["ping_timer"] if first else 0.0)
        try:
            async with asyncio.timeout(timeout_s):
                ok = await self._call_first_target("ping", connect_timeout_s=timeout_s,
                                                   retry_refused=first)
        except Exception as exc:  # whatever the reason, it did not answer
            logger.warning("controller %s: ping failed: %s", name, exc or type(exc).__name__)
            return False
        if not ok:
            logger.warning("controller %s: ping returned %r", name, ok)
            return False
        if self.state is not ControllerState.RUNNING:
            logger.info("controller %s: answering (pid %s)", name, self.pid)
        self.state = ControllerState.RUNNING
        self._delay = options["retry_timer"]
        return True

    async def _call_first_target(self, method: str, *, connect_timeout_s: float | None = None,
                                 retry_refused: bool = False) -> Any:
        if connect_timeout_s is None:
            connect_timeout_s = self.spec.options["ping_timeout"]
        client = AsyncioClient()
        await client.connect_rpc(self.spec.host, self.spec.port, None,
                                 connect_timeout=connect_timeout_s, retry_refused=retry_refused)
        try:
            targets, _ = client.get_rpc_id()
            await client.select_rpc_target(targets[0])
            return await getattr(client, method)()
        finally:
            client.close_rpc()

    async def _end(self, process: asyncio.subprocess.Process,
                   readers: list[asyncio.Task[None]]) -> None:
        """Make sure the process is gone (escalating), then finish its output."""
        if process.returncode is None:
            self.state = ControllerState.STOPPING
            await self._terminate(process)
        await asyncio.gather(*readers, return_exceptions=True)
        self.pid = None

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        name, term_s = self.spec.name, self.spec.options["term_timeout"]
        try:
            async with asyncio.timeout(term_s):
                await self._call_first_target("terminate")
        except Exception as exc:
            logger.info("controller %s: terminate() failed: %s", name, exc or type(exc).__name__)
        for signum in (None, signal.SIGTERM, signal.SIGKILL):
            if signum is not None:
                logger.warning("controller %s: still running, sending %s", name, signum.name)
                try:
                    os.killpg(process.pid, signum)  # its session: children go too
                except ProcessLookupError:
                    pass
            try:
                async with asyncio.timeout(term_s if signum is not signal.SIGKILL else None):
                    await process.wait()
                return
            except TimeoutError:
                continue

    async def _forward(self, stream: asyncio.StreamReader) -> None:
        parser = OutputParser(f"controller({self.spec.name})")
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than _LINE_LIMIT: the rest of it was dropped
                parser.feed("(an output line too long to forward was dropped)")
                continue
            if not line:
                break
            parser.feed(line.decode(errors="replace").rstrip("\r\n"))
        parser.flush()

    async def _wait_retry(self, delay: float) -> None:
        """The restart delay, cut short by :meth:`retry_now` or :meth:`stop`."""
        self._retry_now.clear()
        waits = [asyncio.ensure_future(e.wait()) for e in (self._retry_now, self._stop)]
        try:
            await asyncio.wait(waits, timeout=delay)
        finally:
            for wait in waits:
                wait.cancel()
