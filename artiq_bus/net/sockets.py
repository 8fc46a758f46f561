"""Socket options every artiq_bus socket shares, set in one place."""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

__all__ = ["configure", "SocketReader", "TCP_HEARTBEAT_IVL_MS", "TCP_HEARTBEAT_TIMEOUT_MS",
           "MAX_MESSAGE_BYTES"]

#: ZMTP-level pings find a peer that vanished without closing its connection.
TCP_HEARTBEAT_IVL_MS = 1000
TCP_HEARTBEAT_TIMEOUT_MS = 3000
#: A peer that sends a larger message is disconnected by ZeroMQ itself.
MAX_MESSAGE_BYTES = 1 << 30


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


class SocketReader:
    """Waits, on the running loop, for input on a plain ZeroMQ socket and drains it.

    One ``await recv()`` per message caps a reader at tens of thousands of messages per
    second; waiting once and then draining everything ready takes a million.  ZeroMQ's
    file descriptor only says "look at EVENTS", and a send on the same socket can consume
    that signal: whoever sends on a socket this reader waits on calls :meth:`after_send`.
    """

    def __init__(self, sock: zmq.Socket, batch: int = 4096):
        self._sock = sock
        self._batch = batch
        self._ready = asyncio.Event()
        self._fd = sock.FD
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._ready.set)

    async def recv_batch(self, copy: bool = False) -> list[list[Any]]:
        """At least one message, at most ``batch``, each a list of frames."""
        sock, messages = self._sock, []
        while True:
            try:
                while len(messages) < self._batch:
                    messages.append(sock.recv_multipart(zmq.NOBLOCK, copy=copy))
            except zmq.Again:
                pass
            if messages:
                return messages
            self._ready.clear()
            if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                continue
            await self._ready.wait()

    def after_send(self) -> None:
        """Wake the reader if a send consumed the signal of waiting input."""
        if not self._ready.is_set() and self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._ready.set()

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
