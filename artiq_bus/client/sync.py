"""The blocking client, for scripts and the command line.

One call at a time (it is not thread-safe); every call has a deadline.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import zmq

from ..net import BusAddress, CurveClient, configure, recv_frames, send_frames
from ..protocol import (Command, DeadlineExceeded, ProtocolError, message_envelope, pack,
                        reply_result, request_envelope, split_command)
from .aio import DEFAULT_TIMEOUT_S

__all__ = ["Client"]

_MAX_TIMEOUT_MS = 2**31 - 1


class Client:
    """Calls services through the broker, blocking until the reply or the deadline."""

    def __init__(self, address: BusAddress, *, context: zmq.Context | None = None,
                 curve: CurveClient | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.address = address
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._sock = configure((context or zmq.Context.instance()).socket(zmq.DEALER))
        if curve is not None:
            curve.apply(self._sock)
        self._sock.connect(address.control)

    def close(self, linger_s: float = 1.0) -> None:
        """Close, giving one-way messages still queued up to ``linger_s`` to leave."""
        self._sock.close(linger=int(linger_s * 1000))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, service: str, method: str, /, *args: Any, timeout_s: float | None = None,
             **kwargs: Any) -> Any:
        """Call ``service.method(*args, **kwargs)``; raise its error or a bus error."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        request_id = next(self._ids).to_bytes(8, "big")
        body, buffers = pack([list(args), kwargs])
        self._send(request_envelope(request_id, service, method, timeout_s, body, buffers),
                   f"{service}.{method}", timeout_s)
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            try:
                if remaining_ms <= 0:
                    raise zmq.Again()
                # A receive timeout rather than poll(): Socket.poll builds a Poller per call.
                self._sock.setsockopt(zmq.RCVTIMEO, min(remaining_ms, _MAX_TIMEOUT_MS))
                frames = recv_frames(self._sock, block=True)
            except zmq.Again:
                raise DeadlineExceeded(f"{service}.{method}: no reply within {timeout_s:g} s "
                                       f"from {self.address.control}") from None
            command, rest = split_command(frames)
            if command is not Command.REPLY or len(rest) < 3:
                raise ProtocolError(f"unexpected {command.name} from the broker")
            if rest[0].bytes != request_id:
                continue  # a late reply to an earlier call that timed out
            return reply_result(rest)

    def send(self, service: str, method: str, /, *args: Any, **kwargs: Any) -> None:
        """One-way message: no reply (``DeadlineExceeded`` if it cannot even be queued
        within the client's timeout)."""
        body, buffers = pack([list(args), kwargs])
        self._send(message_envelope(service, method, body, buffers), f"{service}.{method}",
                   self.timeout_s)

    def _send(self, frames: list[Any], what: str, timeout_s: float) -> None:
        """Queue a message, waiting at most ``timeout_s``: with no connection to the
        broker up (being made, or refused, as CurveZMQ refuses an unknown key) a
        DEALER has nowhere to queue it, and a send without a deadline would wait for
        good."""
        self._sock.setsockopt(zmq.SNDTIMEO, min(max(int(timeout_s * 1000), 1),
                                                _MAX_TIMEOUT_MS))
        try:
            send_frames(self._sock, frames, block=True)
        except zmq.Again:
            raise DeadlineExceeded(f"{what}: could not be sent within {timeout_s:g} s to "
                                   f"{self.address.control}") from None
