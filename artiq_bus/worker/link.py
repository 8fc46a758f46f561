"""A worker's one connection to the broker, served by its bus thread's :class:`PollLoop`.

The connection carries everything the worker exchanges with the master (docs/protocol.md
§3.3 and §3.4): its service (the stages the scheduler calls), its own calls and one-way
messages (so they leave in the order the experiment made them, and before the reply of
the stage that made them) and the replies to those calls.  Its publications go on a
second socket, opened only if the experiment publishes (``ccb``).

The worker registers with ``"liveness": "connection"`` (an experiment may hold the GIL
for minutes) and never registers again: when the broker is lost or says ``BYE``, the
master is gone or has replaced this worker, and :attr:`WorkerLink.ended` is set.

Calls return ``concurrent.futures.Future`` objects, settled on the loop's thread: the
experiment's thread waits on them with ``result()``.  Every method of the link runs on
the loop's thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from ..net import BusAddress, CurveClient, configure, recv_frames, send_frames
from ..client.aio import DEFAULT_TIMEOUT_S
from ..protocol import (VERSION, Command, DeadlineExceeded, Liveness, Overloaded, ProtocolError,
                        Unavailable, frame_bytes, message_envelope, pack, register_envelope,
                        reply_envelope, reply_result, request_envelope, split_command)
from ..runtime.rpc import decode_arguments, find_method, with_ping
from .loop import PollLoop, Timer

__all__ = ["WorkerLink"]

logger = logging.getLogger(__name__)

#: Messages read per turn at most: timers and hand-overs are not held up by a flood.
_READ_BATCH = 1024
#: Messages queued for the broker at most (then calls fail with ``Overloaded``).
_QUEUE_LIMIT = 100_000


class WorkerLink:
    """Service ``name`` with ``methods`` (plain functions, run on the loop; one may
    return a ``concurrent.futures.Future``, settled from any thread, and is answered
    when it is done), and the worker's calls, messages and publications."""

    def __init__(self, loop: PollLoop, context: zmq.Context, address: BusAddress, name: str,
                 methods: dict[str, Callable[..., Any]], *, curve: CurveClient | None = None,
                 heartbeat_interval_s: float = 0.5, liveness: int = 4):
        self.name = name
        self._loop, self._context, self._address, self._curve = loop, context, address, curve
        self._methods = with_ping(methods)
        self._heartbeat_interval_s = heartbeat_interval_s
        self._silence_s = liveness * heartbeat_interval_s
        self._sock: zmq.Socket | None = None
        self._last_heard = 0.0
        self._ids = itertools.count(1)
        #: Calls in flight: request id → (future, deadline timer).
        self._pending: dict[bytes, tuple[concurrent.futures.Future[Any], Timer]] = {}
        self._publisher = _Publisher(loop, context, address.publish, curve)
        #: The broker acknowledged the registration.
        self.registered = False
        #: The broker was lost or said ``BYE``: nobody will use this worker again.
        self.ended = False
        self.bad_messages = 0
        self.unmatched_replies = 0

    def connect(self) -> None:
        """Connect and register (the reply, ``ACK``, sets :attr:`registered`)."""
        sock = configure(self._context.socket(zmq.DEALER), sndhwm=_QUEUE_LIMIT,
                         rcvhwm=_QUEUE_LIMIT)
        if self._curve is not None:
            self._curve.apply(sock)
        sock.connect(self._address.control)
        self._sock = sock
        self._loop.add_reader(sock, self._on_readable)
        self._transmit(register_envelope(self.name, self._methods, Liveness.CONNECTION))
        self._last_heard = time.monotonic()
        self._loop.call_later(self._heartbeat_interval_s, self._heartbeat)

    def leave(self) -> None:
        """Say ``BYE``: this service stops (the process is about to exit)."""
        if self._sock is not None:
            self._transmit([VERSION, Command.BYE.value])

    @property
    def publications_held(self) -> bool:
        """Whether publications wait for the publication socket to be ready."""
        return self._publisher.holding

    # -- calling -----------------------------------------------------------------------

    def request(self, service: str, method: str, /, *args: Any, timeout_s: float | None = None,
                **kwargs: Any) -> "concurrent.futures.Future[Any]":
        """Send a call now; the future of its reply.  Raises :class:`Unavailable` once
        the link has ended, :class:`Overloaded` when the queue to the broker is full."""
        body, buffers = pack([list(args), kwargs])
        return self.request_packed(service, method, body, buffers, timeout_s=timeout_s)

    def request_packed(self, service: str, method: str, body: bytes, buffers: Sequence[Any],
                       *, timeout_s: float | None = None,
                       future: "concurrent.futures.Future[Any] | None" = None,
                       ) -> "concurrent.futures.Future[Any]":
        """:meth:`request` with the body ``[args, kwargs]`` already packed; the reply
        settles ``future`` if given (a caller in another thread made it)."""
        timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
        if future is None:
            future = concurrent.futures.Future()
        # From now on its caller cannot cancel it: only this link settles it.
        if not future.set_running_or_notify_cancel():
            return future  # cancelled before it left: not sent
        request_id = next(self._ids).to_bytes(8, "big")
        self._send_as_caller(request_envelope(request_id, service, method, timeout_s, body,
                                              buffers))
        timer = self._loop.call_later(timeout_s, self._expire, request_id,
                                      f"{service}.{method}", timeout_s)
        self._pending[request_id] = (future, timer)
        return future

    def send(self, service: str, method: str, /, *args: Any, **kwargs: Any) -> None:
        """A one-way message (raises as :meth:`request` does)."""
        body, buffers = pack([list(args), kwargs])
        self.send_packed(service, method, body, buffers)

    def send_packed(self, service: str, method: str, body: bytes,
                    buffers: Sequence[Any]) -> None:
        self._send_as_caller(message_envelope(service, method, body, buffers))

    def publish(self, frames: list[Any]) -> None:
        self._publisher.send(frames)

    def _send_as_caller(self, frames: list[Any]) -> None:
        if self.ended or self._sock is None:
            raise Unavailable(f"worker {self.name}: no connection to the broker")
        if not self._transmit(frames):
            raise Overloaded("too many messages queued for the broker")

    def _transmit(self, frames: Sequence[Any]) -> bool:
        """Queue a message for the broker; False when the queue is full."""
        try:
            send_frames(self._sock, frames)  # type: ignore[arg-type]
        except zmq.Again:
            return False
        return True

    def _expire(self, request_id: bytes, what: str, timeout_s: float) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            entry[0].set_exception(DeadlineExceeded(
                f"{what}: no reply within {timeout_s:g} s from {self._address.control}"))

    # -- receiving ---------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        for _ in range(_READ_BATCH):
            try:
                frames = recv_frames(sock)  # type: ignore[arg-type]
            except zmq.Again:
                return
            self._last_heard = time.monotonic()
            try:
                self._handle(frames)
            except ProtocolError as exc:
                self.bad_messages += 1
                logger.warning("worker %s: dropping malformed message: %s", self.name, exc)

    def _handle(self, frames: list[Any]) -> None:
        command, rest = split_command(frames)
        if command is Command.REQUEST and len(rest) >= 5:
            reply_to = (frame_bytes(rest[0]), frame_bytes(rest[1]))
            self._dispatch(rest[2], rest[4], rest[5:], reply_to)
        elif command is Command.MESSAGE and len(rest) >= 3:
            self._dispatch(rest[1], rest[2], rest[3:], None)
        elif command is Command.REPLY and len(rest) >= 3:
            self._settle(rest)
        elif command is Command.ACK:
            self.registered = True
        elif command is Command.BYE:
            self._end("taken over by another peer" if len(rest) else "the broker said BYE")
        elif command is not Command.HEARTBEAT:
            raise ProtocolError(f"unexpected {command.name} with {len(rest)} frames")

    def _dispatch(self, method_frame: Any, body: Any, buffers: Sequence[Any],
                  reply_to: tuple[bytes, bytes] | None) -> None:
        try:
            method = find_method(self._methods, frame_bytes(method_frame), self.name)
            args, kwargs = decode_arguments(body, buffers)
            result = method(*args, **kwargs)
        except Exception as exc:
            self._answer(reply_to, None, exc)
            return
        if isinstance(result, concurrent.futures.Future):
            result.add_done_callback(
                lambda done: self._loop.call_soon_threadsafe(self._answer_future, reply_to, done))
        else:
            self._answer(reply_to, result, None)

    def _answer_future(self, reply_to: tuple[bytes, bytes] | None,
                       future: "concurrent.futures.Future[Any]") -> None:
        error = (concurrent.futures.CancelledError("the method's result was cancelled")
                 if future.cancelled() else future.exception())
        self._answer(reply_to, None if error is not None else future.result(), error)

    def _answer(self, reply_to: tuple[bytes, bytes] | None, result: Any,
                error: BaseException | None) -> None:
        if reply_to is None:
            if error is not None:  # nobody to tell but the log
                logger.error("worker %s: one-way message failed: %s: %s", self.name,
                             type(error).__name__, error)
            return
        if self._sock is not None and not self._transmit(reply_envelope(*reply_to, result,
                                                                         error)):
            logger.warning("worker %s: broker queue full, reply dropped", self.name)

    def _settle(self, rest: Sequence[Any]) -> None:
        entry = self._pending.pop(frame_bytes(rest[0]), None)
        if entry is None:  # its caller gave up (deadline), or never asked
            self.unmatched_replies += 1
            return
        future, timer = entry
        timer.cancel()
        try:
            value = reply_result(rest)
        except ProtocolError as exc:  # malformed: its call fails, and it counts
            self.bad_messages += 1
            future.set_exception(exc)
        except Exception as exc:  # the error it carries
            future.set_exception(exc)
        else:
            future.set_result(value)

    # -- liveness ----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Every interval: a sign of life for the broker, and a look at its own."""
        if self.ended:
            return
        silent_s = time.monotonic() - self._last_heard
        if silent_s > self._silence_s:
            # Messages may wait unread: this thread was starved (an experiment held the
            # GIL), and the poll that woke it is older than they are.  Then the silence
            # was ours, not the broker's.
            self._on_readable()
            silent_s = time.monotonic() - self._last_heard
        if silent_s > self._silence_s:
            self._end(f"broker lost (silent for {silent_s:.1f} s)")
            return
        self._transmit([VERSION, Command.HEARTBEAT.value])
        self._loop.call_later(self._heartbeat_interval_s, self._heartbeat)

    def _end(self, why: str) -> None:
        if self.ended:
            return
        self.ended = True
        logger.warning("worker %s: %s", self.name, why)
        pending, self._pending = self._pending, {}
        for future, timer in pending.values():
            timer.cancel()
            future.set_exception(Unavailable(f"worker {self.name}: {why}"))


class _Publisher:
    """Publications on an XPUB socket connected at the first one (most workers never
    publish).  A fresh connection drops what is sent before the broker's subscription
    reaches it, so publications are held until it has (an XPUB receives it; a PUB
    would not tell)."""

    def __init__(self, loop: PollLoop, context: zmq.Context, endpoint: str,
                 curve: CurveClient | None, hwm: int = _QUEUE_LIMIT):
        self._loop, self._context, self._endpoint, self._curve = loop, context, endpoint, curve
        self._hwm = hwm
        self._sock: zmq.Socket | None = None
        #: Publications waiting for the broker's subscription (None once it came).
        self._held: collections.deque[list[Any]] | None = collections.deque()
        self.dropped = 0

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def send(self, frames: list[Any]) -> None:
        if self._held is None:
            self._send(frames)
            return
        if self._sock is None:
            self._connect()
        if len(self._held) >= self._hwm:
            self.dropped += 1
        else:
            self._held.append(frames)

    def _connect(self) -> None:
        sock = configure(self._context.socket(zmq.XPUB), sndhwm=self._hwm)
        if self._curve is not None:
            self._curve.apply(sock)
        sock.connect(self._endpoint)
        self._sock = sock
        self._loop.add_reader(sock, self._on_readable)

    def _on_readable(self) -> None:
        """The broker subscribes to everything (``\\x01``): what was held goes now."""
        while True:
            try:
                frames = recv_frames(self._sock, copy=True)  # type: ignore[arg-type]
            except zmq.Again:
                return
            if self._held is not None and frames[0][:1] == b"\x01":
                held, self._held = self._held, None
                for message in held:
                    self._send(message)

    def _send(self, frames: list[Any]) -> None:
        try:
            send_frames(self._sock, frames)  # type: ignore[arg-type]
        except zmq.Again:
            self.dropped += 1
