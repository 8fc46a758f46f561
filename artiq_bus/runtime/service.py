"""Serving a service: register with the broker, answer its requests, stay registered.

A service is any object whose public methods are marked with :func:`~.rpc.rpc`.  Only
those methods (and ``ping``) are declared to the broker and callable from the wire.
Methods may be plain functions (run at once on the loop: keep them quick) or coroutines
(run as tasks, so many requests are served concurrently).  Arguments arrive as the body
``[args, kwargs]``; the return value is the reply; an exception becomes an error reply.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from ..net import BusAddress, CurveClient, SocketReader, configure, readable, send_frames
from ..protocol import (VERSION, Command, Liveness, ProtocolError, check_name, frame_buffer,
                        frame_bytes, register_envelope, reply_envelope, split_command)
from .rpc import LocalBroker, decode_arguments, find_method, with_ping

__all__ = ["ServiceHost"]

logger = logging.getLogger(__name__)

#: How long the ``BYE`` of a stopping host may take to leave (in ZeroMQ's background).
_BYE_LINGER_MS = 500
#: At most one log line per this many seconds for failing one-way messages.
_FAILURE_LOG_INTERVAL_S = 1.0

class ServiceHost:
    """One service on the bus: a DEALER connection, registration, heartbeats, dispatch.

    Survives the broker: when the broker stops answering heartbeats (or says it does
    not know us) the host connects again and registers again.
    """

    def __init__(self, context: zmq.Context, address: BusAddress, name: str,
                 methods: dict[str, Callable[..., Any]], *, curve: CurveClient | None = None,
                 heartbeat_interval_s: float = 0.5, liveness: int = 4,
                 local: LocalBroker | None = None, reconnect: bool = True,
                 liveness_by: Liveness = Liveness.HEARTBEAT):
        check_name(name.encode(), "service")
        self.name = name
        self._methods = with_ping(methods)
        self._context, self._address, self._curve = context, address, curve
        self._heartbeat_interval_s = heartbeat_interval_s
        self._liveness = liveness
        self.registered = asyncio.Event()
        self._sock: zmq.Socket | None = None
        self._reader: SocketReader | None = None
        self._task: asyncio.Task[None] | None = None
        #: Requests being answered: tasks awaiting coroutines, or methods' futures.
        self._handlers: set[asyncio.Future[Any]] = set()
        #: Done when the broker said BYE on this connection: True if taken over.
        self._bye: asyncio.Future[bool] | None = None
        self._last_heard = 0.0
        self.bad_messages = 0
        #: One-way messages whose method raised (nobody to tell but the log).
        self.failed_messages = 0
        self._failures_logged_at = -math.inf
        self._failures_unlogged = 0
        #: When the broker was lost, while connecting again.
        self._lost_at: float | None = None
        #: A broker in this process: messages are handed over, no socket, no heartbeat.
        self._local = local
        #: Connect again when the broker is lost (False: a worker, whose master is gone).
        self._reconnect = reconnect
        #: How the broker tells this service is gone (told in the registration).
        self._liveness_by = liveness_by
        #: Set when the host stopped serving for good: taken over, or broker lost
        #: without ``reconnect``.
        self.ended = asyncio.Event()
        self._local_identity = b""

    @property
    def address(self) -> BusAddress:
        return self._address

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"service-{self.name}")

    async def stop(self) -> None:
        self.leave()
        tasks = [t for t in (self._task, *self._handlers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._disconnect(linger_ms=_BYE_LINGER_MS)
        if self._local is not None and self._local_identity:
            self._local.detach_local(self._local_identity)
            self._local_identity = b""

    def leave(self) -> None:
        """Say ``BYE`` (this service stops) and nothing more: :meth:`stop` also tears
        the connection down; a process about to exit leaves that to the kernel."""
        if self._sock is not None or self._local_identity:
            self._send([VERSION, Command.BYE.value])

    # -- connection -------------------------------------------------------------------

    def _connect(self) -> None:
        sock = configure(self._context.socket(zmq.DEALER), sndhwm=100_000, rcvhwm=100_000)
        if self._curve is not None:
            self._curve.apply(sock)
        sock.connect(self._address.control)
        self._sock = sock
        self._bye = asyncio.get_running_loop().create_future()
        self._reader = SocketReader(sock, on_message=self._on_message)
        self._register()

    def _disconnect(self, linger_ms: int = 0) -> None:
        """Close the connection; what is still queued goes within ``linger_ms``, or is
        dropped (when the broker is lost, nothing queued is of use any more)."""
        self.registered.clear()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.close(linger=linger_ms)
            self._sock = None

    def _register(self) -> None:
        self._send(register_envelope(self.name, self._methods, self._liveness_by))
        self._last_heard = time.monotonic()

    def _send(self, frames: Sequence[Any]) -> None:
        if self._local_identity:
            assert self._local is not None
            self._local.receive_local(self._local_identity, frames)
            return
        try:
            send_frames(self._sock, frames)  # type: ignore[arg-type]
        except zmq.Again:
            logger.warning("service %s: broker queue full, message dropped", self.name)

    async def _run(self) -> None:
        if self._local is not None:
            await self._serve_locally(self._local)
            return
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while True:
                self._connect()
                if await self._serve_until_broker_lost():
                    logger.warning("service %s: another peer took this service over; "
                                   "no longer serving it", self.name)
                    break
                if not self._reconnect:
                    logger.warning("service %s: broker lost", self.name)
                    break
                if self.registered.is_set():  # once per outage, not every attempt
                    self._lost_at = time.monotonic()
                    logger.warning("service %s: broker lost, connecting again", self.name)
                else:
                    logger.debug("service %s: still no broker, connecting again", self.name)
                self._disconnect()
        finally:
            heartbeat.cancel()
        self._disconnect()
        self.ended.set()

    async def _serve_locally(self, broker: LocalBroker) -> None:
        """Registered with the broker of this process until stopped or taken over."""
        self._bye = asyncio.get_running_loop().create_future()
        self._local_identity = broker.attach_local(self._on_message)
        self._register()
        if await self._bye:
            logger.warning("service %s: another peer took this service over; "
                           "no longer serving it", self.name)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval_s)  # periodic by nature
            if self._sock is not None:
                self._send([VERSION, Command.HEARTBEAT.value])
                assert self._reader is not None
                self._reader.after_send()

    async def _serve_until_broker_lost(self) -> bool:
        """Serve until the broker is lost (False) or another peer took over (True).

        Messages are served by :meth:`_on_message`, called by the reader as they come;
        this only wakes when the broker says BYE or has been silent too long.
        """
        assert self._bye is not None
        bye = self._bye
        silence_s = self._liveness * self._heartbeat_interval_s
        while not bye.done():
            remaining = self._last_heard + silence_s - time.monotonic()
            if remaining <= 0:
                if not self._inbox_waiting():
                    return False
                remaining = silence_s  # our backlog, not the broker's silence
            await asyncio.wait([bye], timeout=remaining)
        return bye.result()

    def _inbox_waiting(self) -> bool:
        """Whether messages wait unread: then silence is our own backlog (this process
        was busy: a flood, a starved thread), not evidence that the broker is gone."""
        try:
            return self._sock is not None and readable(self._sock)
        except zmq.ZMQError:
            return False

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        if self._bye is None or self._bye.done():
            return  # this connection is being dropped
        self._last_heard = time.monotonic()
        try:
            if self._handle(frames) is Command.BYE:
                self._bye.set_result(len(frames) > 2)  # BYE SERVICE: taken over
        except ProtocolError as exc:
            self.bad_messages += 1
            logger.warning("service %s: dropping malformed message: %s", self.name, exc)

    # -- dispatch ---------------------------------------------------------------------

    def _handle(self, frames: list[zmq.Frame]) -> Command:
        command, rest = split_command(frames)
        if command is Command.REQUEST and len(rest) >= 5:
            caller, request_id, method = (frame_bytes(frame) for frame in rest[:3])
            self._dispatch(method, rest[4], rest[5:], (caller, request_id))
        elif command is Command.MESSAGE and len(rest) >= 3:
            self._dispatch(frame_bytes(rest[1]), rest[2], rest[3:], None)
        elif command is Command.ACK:
            self.registered.set()
            if self._lost_at is not None:
                logger.info("service %s: registered again after %.1f s without a broker",
                            self.name, time.monotonic() - self._lost_at)
                self._lost_at = None
            else:
                logger.debug("service %s: registered", self.name)
        elif command is Command.BYE:
            pass
        elif command is not Command.HEARTBEAT:
            raise ProtocolError(f"unexpected {command.name} with {len(rest)} frames")
        return command

    def _dispatch(self, method_frame: bytes, body: Any, buffers: Sequence[Any],
                  reply_to: tuple[bytes, bytes] | None) -> None:
        try:
            method = find_method(self._methods, method_frame, self.name)
            if getattr(method, "__artiq_bus_packed__", False):
                result = method(frame_buffer(body), buffers)
            else:
                args, kwargs = decode_arguments(body, buffers)
                result = method(*args, **kwargs)
        except Exception as exc:
            self._finish(reply_to, exc, None)
            return
        if isinstance(result, asyncio.Future):  # answered from its callback: no task
            self._handlers.add(result)
            result.add_done_callback(functools.partial(self._settled, reply_to))
        elif inspect.isawaitable(result):
            task = asyncio.ensure_future(self._await(result, reply_to))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        else:
            self._finish(reply_to, None, result)

    def _settled(self, reply_to: tuple[bytes, bytes] | None,
                 future: "asyncio.Future[Any]") -> None:
        """A method's future is done: its reply, as :meth:`_await` gives a coroutine's
        (none when cancelled: the host is stopping)."""
        self._handlers.discard(future)
        if future.cancelled():
            return
        error = future.exception()
        if error is not None and not isinstance(error, Exception):
            raise error  # as a task would: to the loop's exception handler
        self._finish(reply_to, error, None if error is not None else future.result())
        if self._reader is not None:
            self._reader.after_send()

    async def _await(self, awaitable: Any, reply_to: tuple[bytes, bytes] | None) -> None:
        try:
            result = await awaitable
        except Exception as exc:
            self._finish(reply_to, exc, None)
        else:
            self._finish(reply_to, None, result)
        if self._reader is not None:
            self._reader.after_send()

    def _one_way_failed(self, error: Exception) -> None:
        """Log a failed one-way message; at most one line per second, however many
        fail (a sender with a bug must not flood the log)."""
        self.failed_messages += 1
        now = time.monotonic()
        if now - self._failures_logged_at < _FAILURE_LOG_INTERVAL_S:
            self._failures_unlogged += 1
            return
        more = (f" ({self._failures_unlogged} more since the last report)"
                if self._failures_unlogged else "")
        logger.error("service %s: one-way message failed: %s: %s%s",
                     self.name, type(error).__name__, error, more)
        self._failures_logged_at, self._failures_unlogged = now, 0

    def _finish(self, reply_to: tuple[bytes, bytes] | None, error: Exception | None,
                result: Any) -> None:
        if reply_to is None:
            if error is not None:
                self._one_way_failed(error)
            return
        if self._sock is not None or self._local_identity:
            self._send(reply_envelope(*reply_to, result, error))
