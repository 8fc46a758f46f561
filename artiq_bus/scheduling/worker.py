"""The seam between the scheduling engine and worker processes.

The engine drives one :class:`WorkerHandle` per run, created by a
:data:`WorkerFactory` when the run enters the prepare stage (not at submission, so
that a long queue holds no worker resources).  The handle's stage methods return when
the worker has finished the stage, and raise :class:`~.errors.WorkerError` when it
failed.  ``close()`` terminates the process; the engine calls it exactly when the run
is deleted, and may cancel a stage call that is still waiting at that moment.

Pause
-----
In ``run()`` an experiment calls ``scheduler.pause()``: a request that waits for its
answer, the termination flag (True → the worker raises ``TerminationRequested``).
The engine learns of it only through the handle: ``run()`` / ``resume()`` return
False ("paused, waiting") instead of True ("run() completed").  The engine then
publishes ``paused``, lets a more important prepared run go first if there is one,
and calls ``resume(termination_requested)``, which answers the waiting request and
waits for the stage to end (or pause) again.

The request may reach the master by two paths, and both end in the handle:

1. on the handle's own channel to its worker (as ARTIQ's pipe does): the handle
   returns False from ``run()`` / ``resume()`` and answers the request in
   ``resume()``;
2. as a request to the scheduler service (workers are bus nodes): the service
   awaits ``Scheduler.pause(rid)``, which checks that the run is running and hands
   the request to its handle with ``request_pause()``; that call makes the pending
   ``run()`` / ``resume()`` return False and itself returns the flag given to the
   next ``resume()``.

A pause request outside ``run()`` is refused (``Scheduler.pause`` raises
:class:`~.errors.PauseNotAllowed`; a handle refuses one on its own channel likewise)
rather than taken as a stage result, which is how ARTIQ's IPC desynchronises.

:class:`PauseGate` is that merging of "stage ended" and "pause requested", ready for
handles to use: a handle keeps a future for the end of its run stage and returns
``await gate.stage(future)`` from ``run()`` and ``resume()``.  Watchdog deadlines
belong to the handle and must be carried across a pause (ARTIQ's breaks there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from .errors import PauseNotAllowed, RunDeleted
from .tasks import Flag, either

__all__ = ["WorkerHandle", "WorkerFactory", "PauseGate"]


class WorkerHandle(Protocol):
    """One run's worker, as the engine drives it (see the module doc)."""

    #: How the process ended ("exit code 1", "killed by signal 9"), once it has.
    exit_description: str | None

    async def build(self, rid: int, pipeline_name: str, wd: str | None,
                    expid: dict[str, Any], priority: int) -> str | None:
        """Start the process (if not yet), import the experiment and run ``build()``;
        the experiment class's name (None if unknown)."""
        ...

    async def prepare(self) -> None:
        """Run the experiment's ``prepare()``."""
        ...

    async def run(self) -> bool:
        """Run ``run()``: True when it completed, False when it asked to pause."""
        ...

    async def resume(self, termination_requested: bool) -> bool:
        """Answer the pause request and wait again: True/False as for ``run()``."""
        ...

    async def analyze(self) -> None:
        """Run ``analyze()`` (the worker then writes the results file)."""
        ...

    async def request_pause(self) -> bool:
        """Deliver a pause request that reached the master outside the handle's own
        channel; returns the termination flag once the run is resumed (True if the
        handle is closed meanwhile)."""
        ...

    async def close(self, reason: str) -> None:
        """Terminate the worker.  Idempotent; never raises."""
        ...


#: Makes the handle for the run with the given RID.
WorkerFactory = Callable[[int], WorkerHandle]


class PauseGate:
    """Merges a worker's pause requests into the result of its run stage."""

    def __init__(self) -> None:
        self._answer: asyncio.Future[bool] | None = None
        self._closed = False
        self._arrivals: list[Flag] = []  # set by the next request: stage() waits

    @property
    def waiting(self) -> bool:
        """Whether a pause request waits for its answer."""
        return self._answer is not None

    async def request(self) -> bool:
        """A pause request: returns the termination flag once answered; raises
        :class:`RunDeleted` once the run is being deleted."""
        if self._closed:
            raise RunDeleted("the run is being deleted")
        if self._answer is not None:
            raise PauseNotAllowed("a pause request of this run is already waiting")
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._answer = answer
        for arrival in self._arrivals:
            arrival.set()
        try:
            return await answer
        finally:
            if self._answer is answer:  # withdrawn by the requester
                self._answer = None

    async def stage(self, stage_end: asyncio.Future[Any]) -> bool:
        """True once ``stage_end`` is done (its exception raised), False as soon as a
        pause request is waiting.  ``stage_end`` is left running either way."""
        if not stage_end.done() and self._answer is None:
            arrival = Flag()
            self._arrivals.append(arrival)
            try:
                await either(stage_end, arrival)
            finally:
                self._arrivals.remove(arrival)
        if stage_end.done():
            stage_end.result()
            return True
        return False

    def answer(self, termination_requested: bool) -> None:
        """Resume: the waiting pause request (if any) returns ``termination_requested``."""
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_result(termination_requested)

    def close(self) -> None:
        """The run is being deleted: a waiting request (and any later one) raises
        :class:`RunDeleted`, so that the experiment stops without a results file, as
        ARTIQ's (its worker is terminated while it waits)."""
        self._closed = True
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(RunDeleted("the run is being deleted"))
