"""Socket options every artiq_bus socket shares, set in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import zmq

__all__ = ["configure", "SocketReader", "send_frames", "recv_frames", "TCP_HEARTBEAT_IVL_MS",
           "TCP_HEARTBEAT_TIMEOUT_MS", "MAX_MESSAGE_BYTES"]

#: ZMTP-level pings find a peer that vanished without closing its connection.
TCP_HEARTBEAT_IVL_MS = 1000
TCP_HEARTBEAT_TIMEOUT_MS = 3000
#: A peer that sends a larger message is disconnected by ZeroMQ itself.
MAX_MESSAGE_BYTES = 1 << 30

# Plain ints: pyzmq's flag enums make every ``|`` a Python-level call.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def configure(sock: zmq.Socket, *, sndhwm: int | None = None, rcvhwm: int | None = None) -> zmq.Socket:
    """Linger 0, IPv6, heartbeats, the message size cap and optional high-water marks."""
    sock.linger = 0
    sock.ipv6 = True
    sock.setsockopt(zmq.HEARTBEAT_IVL, TCP_HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, TCP_HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    if sndhwm is not None:
        sock.sndhwm = sndhwm
    if rcvhwm is not None:
        sock.rcvhwm = rcvhwm
    return sock


def send_frames(sock: zmq.Socket, frames: Sequence[Any], *, block: bool = False) -> None:
    """``sock.send_multipart(frames, NOBLOCK, copy=False)`` at a third of its cost.

    pyzmq's ``send_multipart`` type-checks every frame and combines flag enums per
    frame; on a small request that is most of the time spent sending it.  Frames
    below pyzmq's copy threshold are copied, larger ones (arrays) are not.  Raises
    ``zmq.Again`` (nothing sent) when not ``block`` and the queue is full.
    """
    flags = 0 if block else _NOBLOCK
    more = flags | _SNDMORE
    send = sock.send
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        send(frame, more if i < last else flags, copy=False)


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


class SocketReader:
    """Waits, on the running loop, for input on a plain ZeroMQ socket and drains it.

    One ``await recv()`` per message caps a reader at tens of thousands of messages per
    second; waiting once and then draining everything ready takes a million.  ZeroMQ's
    file descriptor only says "look at EVENTS", and a send on the same socket can consume
    that signal: whoever sends on a socket this reader waits on calls :meth:`after_send`.

    Readiness is asked with ``EVENTS`` rather than found by a failed ``recv``: pyzmq
    builds an exception for every ``zmq.Again``, which costs twice as much.
    """

    def __init__(self, sock: zmq.Socket, batch: int = 4096):
        self._sock = sock
        self._batch = batch
        self._waiter: asyncio.Future[None] | None = None
        self._fd = sock.FD
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._wake)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _readable(self) -> bool:
        """Whether a message waits; also consumes the file descriptor's signal."""
        return bool(self._sock.get(_EVENTS) & _POLLIN)

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
        """Wake the reader if a send consumed the signal of waiting input."""
        if self._waiter is not None and self._readable():
            self._wake()

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
