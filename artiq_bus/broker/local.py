"""A client inside the broker's process: its calls are handed to the broker by a
function call, like the master's services (``Broker.attach_local``), not sent on a
DEALER socket.

Same messages, same routing, same errors as :class:`~artiq_bus.client.aio.AsyncClient`
(deadlines on the caller's side too), without the two socket hops and the loop turns
per request and reply: the scheduler calls the pool, the device database and its
workers several times per run.  A request to a service in this process is answered
within the call that sends it when the service's method is a plain function.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from ..client.aio import DEFAULT_TIMEOUT_S
from ..protocol import (Command, DeadlineExceeded, ProtocolError, Unavailable, frame_bytes,
                        message_envelope, pack, reply_result, request_envelope,
                        split_command)
from .broker import Broker

__all__ = ["LocalClient"]

logger = logging.getLogger(__name__)

class LocalClient:
    """Calls services through the broker of this process (``request``, ``call``,
    ``send`` as :class:`~artiq_bus.client.aio.AsyncClient`'s)."""

    def __init__(self, broker: Broker, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.timeout_s = timeout_s
        self._broker = broker
        self._where = broker.inproc.control  # named in deadline errors, as the client's
        self._ids = itertools.count(1)
        self._pending: dict[bytes, tuple[asyncio.Future[Any], asyncio.TimerHandle]] = {}
        self._identity: bytes | None = broker.attach_local(self._receive)

    def stop(self) -> None:
        """Fail the calls in flight and leave the broker (later calls fail)."""
        if self._identity is not None:
            self._broker.detach_local(self._identity)
            self._identity = None
        pending, self._pending = self._pending, {}
        for future, timer in pending.values():
            timer.cancel()
            if not future.done():
                future.set_exception(Unavailable("client stopped"))

    # -- calling ----------------------------------------------------------------------

    async def call(self, service: str, method: str, /, *args: Any,
                   timeout_s: float | None = None, **kwargs: Any) -> Any:
        """Call ``service.method(*args, **kwargs)``; raise its error or a bus error."""
        return await self.request(service, method, *args, timeout_s=timeout_s, **kwargs)

    def request(self, service: str, method: str, /, *args: Any,
                timeout_s: float | None = None, **kwargs: Any) -> "asyncio.Future[Any]":
        """Send a call now; the future of its reply (possibly done already)."""
        body, buffers = pack([list(args), kwargs])
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        request_id = next(self._ids).to_bytes(8, "big")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # Forgotten at its reply or its deadline (a caller that gives up earlier leaves
        # it until then): no callback per call.
        timer = loop.call_later(timeout_s, self._expire, request_id, service, method,
                                timeout_s)
        self._pending[request_id] = (future, timer)
        try:
            self._send(request_envelope(request_id, service, method, timeout_s, body, buffers))
        except BaseException:
            self._forget(request_id)
            raise
        return future

    def send(self, service: str, method: str, /, *args: Any, **kwargs: Any) -> None:
        """One-way message: no reply, no error report."""
        body, buffers = pack([list(args), kwargs])
        self._send(message_envelope(service, method, body, buffers))

    def _send(self, frames: list[Any]) -> None:
        if self._identity is None:
            raise Unavailable("client stopped")
        self._broker.receive_local(self._identity, frames)

    def _forget(self, request_id: bytes) -> asyncio.Future[Any] | None:
        """The future of a call in flight, no longer in flight (None: none)."""
        future, timer = self._pending.pop(request_id, (None, None))
        if timer is not None:
            timer.cancel()
        return future

    def _expire(self, request_id: bytes, service: str, method: str,
                timeout_s: float) -> None:
        future = self._forget(request_id)
        if future is not None and not future.done():
            future.set_exception(DeadlineExceeded(
                f"{service}.{method}: no reply within {timeout_s:g} s from {self._where}"))

    # -- receiving --------------------------------------------------------------------

    def _receive(self, frames: list[Any]) -> None:
        """What the broker sends us: replies."""
        try:
            self._on_reply(frames)
        except ProtocolError as exc:
            logger.warning("local client: dropping malformed reply from broker: %s", exc)

    def _on_reply(self, frames: list[Any]) -> None:
        command, rest = split_command(frames)
        if command is not Command.REPLY or len(rest) < 3:
            raise ProtocolError(f"unexpected {command.name} from the broker")
        future = self._forget(frame_bytes(rest[0]))
        if future is None or future.done():
            return  # its caller gave up
        try:
            future.set_result(reply_result(rest))
        except Exception as exc:  # the error it carries, or a malformed body
            future.set_exception(exc)
