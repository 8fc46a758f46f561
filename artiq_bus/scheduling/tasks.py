"""Small asyncio building blocks of the engine: a broadcast wake-up, a flag set once,
waiting for a future or a flag, and owned tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Signal", "Flag", "either", "TaskSet"]

logger = logging.getLogger(__name__)


class Signal:
    """Wakes every waiter at each :meth:`notify` (a condition without a lock: check
    the state, then wait, with no ``await`` in between)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, until: float | None = None) -> None:
        """Until the next :meth:`notify`, or until the epoch time ``until`` if given
        (a timer for the next due date: no polling)."""
        event = self._event
        if until is None:
            await event.wait()
            return
        delay = until - time.time()
        if delay <= 0:
            return
        try:
            async with asyncio.timeout(delay):
                await event.wait()
        except TimeoutError:
            pass


class Flag:
    """Set once, never cleared; tells callbacks when it is set.  Waiting for it beside
    a future (:func:`either`) takes one future, where an ``asyncio.Event`` takes a
    task: the engine does that for every worker call."""

    def __init__(self) -> None:
        self._set = False
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)


async def either(future: asyncio.Future[Any], flag: Flag) -> None:
    """Until ``future`` is done or ``flag`` is set, whichever comes first."""
    if future.done() or flag.is_set():
        return
    waiter = asyncio.get_running_loop().create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)
    future.add_done_callback(wake)
    flag.add_callback(wake)
    try:
        await waiter
    finally:
        future.remove_done_callback(wake)
        flag.remove_callback(wake)


class TaskSet:
    """Tasks owned by one object: kept until done, awaited or cancelled together."""

    def __init__(self, name: str):
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as an owned task; an exception it ends with is logged."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Own an abandoned task (usually cancelled already) until it ends; its
        outcome is of no interest any more."""
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: task %s failed", self._name, task.get_name(),
                         exc_info=task.exception())

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: nothing to report

    async def join(self) -> None:
        """Until every task (including those started meanwhile) has ended."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def cancel(self, timeout_s: float) -> None:
        """Cancel every task and wait for them, at most ``timeout_s``."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        if pending:
            logger.error("%s: %d task(s) ignored cancellation: %s", self._name, len(pending),
                         ", ".join(sorted(t.get_name() for t in pending)))
