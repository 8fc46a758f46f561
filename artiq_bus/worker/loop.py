"""The event loop of a worker's bus thread: ZeroMQ's poll, callbacks and timers.

A worker lives for one run, often a few milliseconds of work, and each line of Python it
runs for the first time costs it copied pages (it is a fork).  An asyncio loop, its
selector, its tasks and the runtime built on them cost a fresh worker about as much CPU
as the rest of its bus side together; this loop does what the bus thread needs, and no
more: wait on sockets and file descriptors with ``zmq.Poller`` (one call, releasing the
GIL), run callbacks handed over from other threads, run timers.  It offers the part of
asyncio's loop interface that the log handler and the output capture use
(``call_soon``, ``call_soon_threadsafe``, ``call_later``, ``add_reader``,
``remove_reader``, ``is_closed``), so they run on either loop.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

__all__ = ["PollLoop", "Timer"]

logger = logging.getLogger(__name__)

_POLLIN = int(zmq.POLLIN)
#: Cancelled timers are swept out of the heap when there are more than this many and
#: they are more than half of it.
_SWEEP_MIN = 256


class Timer:
    """A callback due at a time (from :meth:`PollLoop.call_later`); :meth:`cancel` it."""

    __slots__ = ("when", "order", "callback", "args", "cancelled", "_loop")

    def __init__(self, loop: "PollLoop", when: float, order: int,
                 callback: Callable[..., Any], args: tuple[Any, ...]):
        self.when, self.order, self.callback, self.args = when, order, callback, args
        self.cancelled = False
        self._loop = loop

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._loop._timer_cancelled()

    def __lt__(self, other: "Timer") -> bool:
        return (self.when, self.order) < (other.when, other.order)


class PollLoop:
    """A loop for one thread.  Only :meth:`call_soon_threadsafe` may be called from
    other threads."""

    def __init__(self) -> None:
        self._poller = zmq.Poller()
        #: Callbacks to run on the next turn, from this thread or others (a deque:
        #: appending and popping from two threads needs no lock).
        self._ready: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._timers: list[Timer] = []
        #: Cancelled timers still in the heap (each call's deadline is one, cancelled
        #: by its reply): swept when they are most of it.
        self._cancelled = 0
        self._order = itertools.count()
        #: What each registered socket or file descriptor calls when readable.
        self._readers: dict[Any, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        # Other threads wake the poll through a pipe, written only when the loop may be
        # asleep: a burst of hand-overs costs one write, not one each.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._poller.register(self._wake_read, _POLLIN)
        self._woken = False
        self._wake_lock = threading.Lock()
        self._closed = False

    # -- asyncio's names, for the code that runs on either loop --------------------------

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        self._ready.append((callback, args))
        if not self._woken:
            # Under the lock only here, once per wake-up: never a write to a closed
            # pipe, whose descriptor number may already be another file's.
            with self._wake_lock:
                if self._woken or self._closed:
                    return
                self._woken = True
                try:
                    os.write(self._wake_write, b"\0")
                except BlockingIOError:
                    pass  # full: the loop is behind and will look anyway

    def call_later(self, delay_s: float, callback: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(self, time.monotonic() + delay_s, next(self._order), callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    def _timer_cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled > _SWEEP_MIN and self._cancelled > len(self._timers) // 2:
            self._timers = [timer for timer in self._timers if not timer.cancelled]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def add_reader(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback(*args)`` whenever ``fd`` (a file descriptor or a ZeroMQ
        socket) is readable; the callback reads until nothing is left (or as much as it
        wants: the next poll asks again)."""
        self._readers[fd] = (callback, args)
        self._poller.register(fd, _POLLIN)

    def remove_reader(self, fd: Any) -> None:
        if self._readers.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def is_closed(self) -> bool:
        return self._closed

    # -- running -----------------------------------------------------------------------

    def run_until(self, done: Callable[[], bool], timeout_s: float = math.inf) -> bool:
        """Run until ``done()`` is true (asked after every turn) or ``timeout_s`` has
        passed; whether ``done()`` came true."""
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._run_once(remaining)
        return True

    def close(self) -> None:
        """Close the wake-up pipe: nothing can wake this loop any more (and what is
        handed over from now on is never run)."""
        with self._wake_lock:
            self._closed = True
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _run_once(self, limit_s: float) -> None:
        """Wait for input, a timer or a hand-over (at most ``limit_s``), then run what
        is due: readers first, then callbacks and timers in the order they came."""
        if self._ready:
            wait_s = 0.0
        elif self._timers:
            wait_s = min(max(self._timers[0].when - time.monotonic(), 0.0), limit_s)
        else:
            wait_s = limit_s
        events = self._poller.poll(None if wait_s == math.inf else math.ceil(wait_s * 1000))
        for target, _ in events:
            if target == self._wake_read:
                # Emptied first, then cleared, and both before the callbacks are taken:
                # a hand-over that finds the flag clear writes a byte that stays.
                _drain_pipe(self._wake_read)
                self._woken = False
            else:
                reader = self._readers.get(target)
                if reader is not None:
                    self._call(*reader)
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0].when <= now:
            timer = heapq.heappop(timers)
            if timer.cancelled:
                self._cancelled -= 1
            else:
                timer.cancelled = True  # done: a late cancel() changes nothing
                self._ready.append((timer.callback, timer.args))
        ready = self._ready
        for _ in range(len(ready)):  # those queued meanwhile wait for the next turn
            self._call(*ready.popleft())

    @staticmethod
    def _call(callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            callback(*args)
        except Exception:  # as asyncio does: one failing callback must not stop the loop
            logger.exception("worker bus loop: %r failed", callback)


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
