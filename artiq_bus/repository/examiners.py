"""Examining files in worker processes (user code never runs in the master), several at
once.

A scan takes a few workers from the pool (``workers.acquire``: forked from the
pre-imported zygote, so each costs a fork, not an interpreter start) and feeds each one
file after another; a worker examines many files.  A worker whose file failed is
replaced (the failure may have left its interpreter in a bad state, as ARTIQ does);
one that takes longer than the timeout on a file (an infinite loop at import) is
killed, and the file is reported as timed out.  When the files run out, each worker is
asked to exit (``terminate``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
from dataclasses import dataclass
from typing import Any

from ..client.aio import AsyncClient
from ..protocol import DeadlineExceeded, RemoteError, ServiceDied, Unavailable

__all__ = ["Examiners", "Outcome", "ACQUIRE_TIMEOUT_S", "EXAMINE_TIMEOUT_S"]

logger = logging.getLogger(__name__)

#: Getting a worker: the first after the master starts waits for the zygote's imports.
ACQUIRE_TIMEOUT_S = 60.0
#: Importing one file and building its experiments (ARTIQ: 20 s).
EXAMINE_TIMEOUT_S = 20.0
#: How long a worker that died may take to be reported by the pool.
_EXIT_STATUS_S = 1.0

#: ``{"classes": {class_name: description}}`` or ``{"error": {"message", "line"}}``.
Outcome = dict[str, Any]


@dataclass
class _Worker:
    service: str
    pid: int


def _error(message: str, line: int | None = None) -> Outcome:
    return {"error": {"message": message, "line": line}}


class Examiners:
    """Examines files with up to ``parallel`` workers at once."""

    def __init__(self, client: AsyncClient, timeout_s: float = EXAMINE_TIMEOUT_S,
                 parallel: int = 2):
        self._client = client
        self.timeout_s = timeout_s
        self.parallel = max(1, parallel)

    async def examine(self, paths: list[str]) -> dict[str, Outcome]:
        """Each path's outcome; a path that could not be examined gets an error (none
        is dropped).  Raises only if no worker can be had at all."""
        results: dict[str, Outcome] = {}
        todo = collections.deque(paths)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.parallel, len(paths))):
                    group.create_task(self._lane(todo, results))
        except BaseExceptionGroup as group_error:  # no worker: say why, not "TaskGroup"
            raise group_error.exceptions[0] from None
        return results

    async def _lane(self, todo: collections.deque[str], results: dict[str, Outcome]) -> None:
        worker: _Worker | None = None
        busy = False
        try:
            while todo:
                path = todo.popleft()
                if worker is None:
                    worker = await self._acquire()
                busy = True
                results[path], keep = await self._examine_one(worker, path)
                busy = False
                if not keep:
                    self._retire(worker)
                    worker = None
        finally:
            if worker is not None:
                # cancelled while examining: the worker may be stuck in user code
                self._retire(worker, kill=busy)

    async def _acquire(self) -> _Worker:
        call = asyncio.ensure_future(
            self._client.call("workers", "acquire", timeout_s=ACQUIRE_TIMEOUT_S))
        try:
            reply = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The pool may hand the worker over all the same: let it go, not leak it.
            call.add_done_callback(self._retire_unwanted)
            raise
        return _Worker(reply["service"], reply["pid"])

    def _retire_unwanted(self, call: "asyncio.Future[Any]") -> None:
        if not call.cancelled() and call.exception() is None:
            reply = call.result()
            self._retire(_Worker(reply["service"], reply["pid"]))

    async def _examine_one(self, worker: _Worker, path: str) -> tuple[Outcome, bool]:
        """The outcome, and whether the worker may examine the next file."""
        try:
            reply = await self._client.call(worker.service, "examine", path,
                                            timeout_s=self.timeout_s)
        except DeadlineExceeded:
            self._retire(worker, kill=True)
            return _error(f"timed out: examining it took more than {self.timeout_s:g} s "
                          "(an endless loop at import or in build()?)"), False
        except (ServiceDied, Unavailable):
            return _error(f"the worker examining it died ({await self._ending(worker)})"), \
                False
        except RemoteError as exc:
            return _error(f"examine failed: {exc}"), False
        if not isinstance(reply, dict) or not ("classes" in reply or "error" in reply):
            return _error(f"examine gave an unexpected reply {reply!r:.100}"), False
        return reply, "error" not in reply

    async def _ending(self, worker: _Worker) -> str:
        try:
            description = await self._client.call("workers", "exit_status", worker.pid,
                                                  _EXIT_STATUS_S,
                                                  timeout_s=_EXIT_STATUS_S + 1.0)
        except Exception:  # the pool itself is gone: say what we know
            description = None
        return description or "unknown cause"

    def _retire(self, worker: _Worker, kill: bool = False) -> None:
        """Let the worker go: ``terminate`` it, or kill it when it may be stuck."""
        if kill:
            self._client.send("workers", "signal", worker.pid, int(signal.SIGKILL))
        else:
            self._client.send(worker.service, "terminate")
