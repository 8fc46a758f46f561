"""Socket options every artiq_bus socket shares, set in one place."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

__all__ = ["configure", "SocketReader", "watch_connection", "MessageHandler", "send_frames",
           "recv_frames", "readable", "keepalive_instead_of_heartbeats", "TCP_HEARTBEAT_IVL_MS",
           "TCP_HEARTBEAT_TIMEOUT_MS", "MAX_MESSAGE_BYTES"]

logger = logging.getLogger(__name__)

#: ZMTP-level pings find a peer that vanished without closing its connection.
TCP_HEARTBEAT_IVL_MS = 1000
TCP_HEARTBEAT_TIMEOUT_MS = 3000
#: A reader that stalls (a busy loop, a frozen GUI) fills its socket's queue, and ZeroMQ
#: stops reading the connection at both ends' engines: ZMTP heartbeats then time out at
#: either end, drop a healthy connection, and libzmq 4.3 aborts the reader's process when
#: a connection dropped that way is woken up (zeromq/libzmq#3937).  Publication
#: connections find a vanished peer with TCP keepalives instead, which the kernel
#: answers however slow the reader is.
_KEEPALIVE_IDLE_S = 5
_KEEPALIVE_INTERVAL_S = 1
_KEEPALIVE_PROBES = 5
#: A peer that sends a larger message is disconnected by ZeroMQ itself.
MAX_MESSAGE_BYTES = 1 << 30

# The hot path calls pyzmq's Cython socket methods with plain ints.  Its Python layer
# wraps every send (for draft-socket options), turns EVENTS into an enum and combines
# flag enums in Python: on a small message that costs more than the calls themselves.
_send = zmq.backend.Socket.send
_get: Callable[[zmq.Socket, int], int] = zmq.backend.Socket.get  # type: ignore[assignment]
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
#: Smaller ``bytes`` frames are copied into ZeroMQ (cheaper than lending them).
_COPY_BELOW = zmq.COPY_THRESHOLD
#: How long one loop turn of a :class:`SocketReader` may hand messages over.
DRAIN_BUDGET_S = 0.02


def configure(sock: zmq.Socket, *, sndhwm: int | None = None, rcvhwm: int | None = None) -> zmq.Socket:
    """Linger 0, IPv6, heartbeats, the message size cap and optional high-water marks.

    (``setsockopt``, not pyzmq's attribute names: a fresh worker pays for every line of
    Python it runs for the first time.)"""
    set_option = sock.setsockopt
    set_option(zmq.LINGER, 0)
    set_option(zmq.IPV6, 1)
    set_option(zmq.HEARTBEAT_IVL, TCP_HEARTBEAT_IVL_MS)
    set_option(zmq.HEARTBEAT_TIMEOUT, TCP_HEARTBEAT_TIMEOUT_MS)
    set_option(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    if sndhwm is not None:
        set_option(zmq.SNDHWM, sndhwm)
    if rcvhwm is not None:
        set_option(zmq.RCVHWM, rcvhwm)
    return sock


def keepalive_instead_of_heartbeats(sock: zmq.Socket) -> zmq.Socket:
    """No ZMTP heartbeats on ``sock`` (a SUB or XPUB): TCP keepalives find dead peers."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, 0)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, _KEEPALIVE_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, _KEEPALIVE_INTERVAL_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, _KEEPALIVE_PROBES)
    return sock


def send_frames(sock: zmq.Socket, frames: Sequence[Any], *, block: bool = False) -> None:
    """``sock.send_multipart(frames, NOBLOCK, copy=False)`` at a fifth of its cost.

    Small ``bytes`` frames are copied; received ``Frame``s and other buffers (arrays)
    travel without a copy.  Raises ``zmq.Again`` (nothing sent) when not ``block`` and
    the queue is full.
    """
    flags = 0 if block else _NOBLOCK
    more = flags | _SNDMORE
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        copy = type(frame) is bytes and len(frame) < _COPY_BELOW
        _send(sock, frame, more if i < last else flags, copy)


def recv_frames(sock: zmq.Socket, *, copy: bool = False, block: bool = False) -> list[Any]:
    """``sock.recv_multipart(NOBLOCK, copy=copy)`` at a third of its cost.

    Reads ``Frame.more`` instead of asking the socket for ``RCVMORE`` after every
    frame.  Raises ``zmq.Again`` when not ``block`` and nothing is waiting.
    """
    flags = 0 if block else _NOBLOCK
    recv = sock.recv
    frame = recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = recv(flags, copy=False)
        frames.append(frame)
    return [f.bytes for f in frames] if copy else frames


def readable(sock: zmq.Socket) -> bool:
    """Whether a message waits on ``sock`` (asking also consumes the signal of its file
    descriptor, as a ``recv`` would)."""
    return bool(_get(sock, _EVENTS) & _POLLIN)


#: Called with each message (its list of frames) a :class:`SocketReader` receives.
MessageHandler = Callable[[list[Any]], None]


class SocketReader:
    """Waits, on the running loop, for input on a plain ZeroMQ socket and drains it.

    One ``await recv()`` per message caps a reader at tens of thousands of messages per
    second; waiting once and then draining everything ready takes a million.  ZeroMQ's
    file descriptor only says "look at EVENTS", and a send on the same socket can consume
    that signal: whoever sends on a socket this reader waits on calls :meth:`after_send`.

    Two ways to read: one task awaits :meth:`recv_batch`, or ``on_message`` is called
    by the loop for each message as soon as the socket signals, with no task to wake in
    between (about a third of the cost of a hop; the broker, services and clients read
    this way).  Readiness is asked with ``EVENTS`` rather than found by a failed
    ``recv``: pyzmq builds an exception for every ``zmq.Again``, which costs twice as
    much.
    """

    def __init__(self, sock: zmq.Socket, batch: int = 4096, *,
                 on_message: MessageHandler | None = None, copy: bool = False):
        self._sock = sock
        self._batch = batch
        self._on_message = on_message
        self._copy = copy
        self._closed = False
        #: A drain is queued on the loop: at most one at a time, or every wake-up of the
        #: descriptor would start one more drain per loop turn (a flood then makes each
        #: turn longer and longer, and timers, heartbeats among them, fire later and later).
        self._drain_queued = False
        self._draining = False
        self._waiter: asyncio.Future[None] | None = None
        self._fd = sock.FD
        self._loop = asyncio.get_running_loop()
        if on_message is None:
            self._loop.add_reader(self._fd, self._wake)
        else:
            self._loop.add_reader(self._fd, self._on_readable)
            self._queue_drain()  # input may already wait, unsignalled

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _readable(self) -> bool:
        """Whether a message waits; also consumes the file descriptor's signal."""
        return bool(_get(self._sock, _EVENTS) & _POLLIN)

    def _on_readable(self) -> None:
        """The descriptor signalled: drain now, unless a queued drain will look anyway."""
        if not self._drain_queued:
            self._drain()

    def _queue_drain(self) -> None:
        if not self._drain_queued:
            self._drain_queued = True
            self._loop.call_soon(self._queued_drain)

    def _queued_drain(self) -> None:
        self._drain_queued = False
        self._drain()

    def _drain(self) -> None:
        """Hand every waiting message to ``on_message`` (at most ``batch`` per turn)."""
        assert self._on_message is not None
        sock, copy, handle = self._sock, self._copy, self._on_message
        self._draining = True
        # A turn also ends after DRAIN_BUDGET_S: messages that carry much work (a
        # batch of dataset updates) must not keep timers and heartbeats waiting.
        deadline = time.monotonic() + DRAIN_BUDGET_S
        try:
            for _ in range(self._batch):
                if time.monotonic() > deadline:
                    break  # and look again on the next turn
                if self._closed or not self._readable():
                    return
                frames = recv_frames(sock, copy=copy)
                try:
                    handle(frames)
                except Exception:  # one bad message must not stall the socket
                    logger.exception("reader: message handler failed")
        finally:
            self._draining = False
        self._queue_drain()  # more may wait: let the loop run others first

    async def recv_batch(self, copy: bool = False) -> list[list[Any]]:
        """At least one message, at most ``batch``, each a list of frames."""
        while not self._readable():
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        sock, batch = self._sock, self._batch
        messages = [recv_frames(sock, copy=copy)]
        while len(messages) < batch and self._readable():
            messages.append(recv_frames(sock, copy=copy))
        return messages

    def after_send(self) -> None:
        """Wake the reader if a send consumed the signal of waiting input.

        With ``on_message``, the check runs once on the next loop turn, however many
        sends came before it (a burst of calls asks EVENTS once, not once a call).
        """
        if self._on_message is not None:
            # Sends made while draining are followed by the drain's own EVENTS check.
            if not self._draining:
                self._queue_drain()
        elif self._waiter is not None and self._readable():
            self._wake()

    def close(self) -> None:
        self._closed = True
        self._loop.remove_reader(self._fd)


async def watch_connection(monitor: zmq.Socket, on_event: Callable[[int], None]) -> None:
    """Hand each event of a socket monitor (``zmq.EVENT_CONNECTED``, ...) to ``on_event``
    until cancelled; closes the monitor socket at the end."""
    reader = SocketReader(monitor)
    try:
        while True:
            for frames in await reader.recv_batch(copy=True):
                on_event(int.from_bytes(frames[0][:2], "little"))
    finally:
        reader.close()
        monitor.close()
