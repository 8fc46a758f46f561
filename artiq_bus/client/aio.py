"""The asyncio client: calls with deadlines, many in flight on one connection.

Replies are matched to callers by request id.  When the connection to the broker drops,
every call in flight fails at once with :class:`Unavailable`; ZeroMQ reconnects by
itself and later calls go through when the broker is back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from ..net import BusAddress, CurveClient, SocketReader, configure, send_frames, watch_connection
from ..protocol import (Command, DeadlineExceeded, Overloaded, ProtocolError, Unavailable,
                        frame_bytes, message_envelope, pack, reply_result, request_envelope,
                        split_command)

__all__ = ["AsyncClient", "ServiceProxy", "DEFAULT_TIMEOUT_S"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0


def _not_started(frames: Sequence[Any]) -> None:
    raise Unavailable("client not started, or stopped")


class AsyncClient:
    """Calls services through the broker from an asyncio program."""

    def __init__(self, address: BusAddress, *, context: zmq.Context | None = None,
                 curve: CurveClient | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.address = address
        self.timeout_s = timeout_s
        #: None: the process's shared context, made when first needed.
        self._context = context
        self._curve = curve
        self._ids = itertools.count(1)
        self._pending: dict[bytes, asyncio.Future[Any]] = {}
        self._sock: zmq.Socket | None = None
        self._reader: SocketReader | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Where requests go: this client's socket, or nowhere (not started, stopped).
        self._transmit: Callable[[Sequence[Any]], None] = _not_started
        self.connected = asyncio.Event()
        #: Replies dropped: malformed, or for no call in flight (late, or never made).
        self.bad_replies = 0
        self.unmatched_replies = 0

    async def start(self) -> None:
        context = self._context or zmq.Context.instance()
        sock = configure(context.socket(zmq.DEALER), sndhwm=100_000, rcvhwm=100_000)
        if self._curve is not None:
            self._curve.apply(sock)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.address.control)
        self._sock, self._reader = sock, SocketReader(sock, on_message=self._receive)
        self._transmit = self._send_own
        self._tasks = [asyncio.create_task(watch_connection(monitor, self._on_connection_event),
                                          name="client-monitor")]

    async def stop(self) -> None:
        self._transmit = _not_started
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_all(Unavailable("client stopped"))
        if self._reader is not None:
            self._reader.close()
        if self._sock is not None:
            self._sock.disable_monitor()
            self._sock.close()
        self._sock = self._reader = None

    async def __aenter__(self) -> "AsyncClient":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- calling ----------------------------------------------------------------------

    async def call(self, service: str, method: str, /, *args: Any,
                   timeout_s: float | None = None, **kwargs: Any) -> Any:
        """Call ``service.method(*args, **kwargs)``; raise its error or a bus error.

        ``timeout_s`` (default: the client's) bounds the whole round trip.
        """
        body, buffers = pack([list(args), kwargs])
        return await self.call_packed(service, method, body, buffers, timeout_s=timeout_s)

    async def call_packed(self, service: str, method: str, body: bytes, buffers: Sequence[Any],
                          *, timeout_s: float | None = None) -> Any:
        """:meth:`call` with the body ``[args, kwargs]`` already packed (by
        :func:`~artiq_bus.protocol.pack`), followed by its out-of-band ``buffers``."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        request_id = next(self._ids).to_bytes(8, "big")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending[request_id] = future
        # A timer on the future itself: wait_for would wrap every call in another
        # future and two more callbacks.
        timer = loop.call_later(timeout_s, self._expire, future, service, method, timeout_s)
        try:
            self._send(request_envelope(request_id, service, method, timeout_s, body, buffers))
            return await future
        finally:
            timer.cancel()
            self._pending.pop(request_id, None)

    def request(self, service: str, method: str, /, *args: Any,
                timeout_s: float | None = None, **kwargs: Any) -> "asyncio.Future[Any]":
        """Send a call now; the future of its reply.  Unlike :meth:`call` (a coroutine,
        which sends when first awaited), the request leaves before this returns: it
        keeps its place among the one-way messages and calls sent around it."""
        body, buffers = pack([list(args), kwargs])
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        request_id = next(self._ids).to_bytes(8, "big")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        timer = loop.call_later(timeout_s, self._expire, future, service, method, timeout_s)

        def forget(_: asyncio.Future[Any]) -> None:
            timer.cancel()
            self._pending.pop(request_id, None)

        self._pending[request_id] = future
        try:
            self._send(request_envelope(request_id, service, method, timeout_s, body, buffers))
        except BaseException:
            forget(future)
            raise
        future.add_done_callback(forget)
        return future

    def _expire(self, future: asyncio.Future[Any], service: str, method: str,
                timeout_s: float) -> None:
        if not future.done():
            future.set_exception(DeadlineExceeded(
                f"{service}.{method}: no reply within {timeout_s:g} s "
                f"from {self.address.control}"))

    def send(self, service: str, method: str, /, *args: Any, **kwargs: Any) -> None:
        """One-way message: no reply, no error report (for high-rate traffic)."""
        body, buffers = pack([list(args), kwargs])
        self.send_packed(service, method, body, buffers)

    def send_packed(self, service: str, method: str, body: bytes,
                    buffers: Sequence[Any]) -> None:
        """:meth:`send` with the body ``[args, kwargs]`` already packed."""
        self._send(message_envelope(service, method, body, buffers))

    def proxy(self, service: str) -> "ServiceProxy":
        return ServiceProxy(self, service)

    def _send(self, frames: Sequence[Any]) -> None:
        self._transmit(frames)

    def _send_own(self, frames: Sequence[Any]) -> None:
        try:
            send_frames(self._sock, frames)  # type: ignore[arg-type]
        except zmq.Again:
            raise Overloaded("too many messages queued for the broker") from None
        assert self._reader is not None
        self._reader.after_send()

    # -- receiving --------------------------------------------------------------------

    def _receive(self, frames: list[zmq.Frame]) -> None:
        """Called by the reader for each message from the broker."""
        try:
            command, rest = split_command(frames)
        except ProtocolError as exc:
            self._bad_reply(str(exc))
            return
        if command is Command.REPLY:
            self._receive_reply(rest)
        else:
            self._bad_reply(f"unexpected {command.name} from the broker")

    def _receive_reply(self, rest: Sequence[Any]) -> None:
        """A ``REP`` (its frames after the command): settle the call it answers."""
        if len(rest) < 3:
            self._bad_reply(f"REP with {len(rest)} frames")
            return
        request_id = frame_bytes(rest[0])
        future = self._pending.get(request_id)
        if future is None or future.done():
            # Its caller gave up (deadline, connection lost), or never asked.
            self.unmatched_replies += 1
            logger.debug("client: reply to no call in flight dropped (id %s)",
                         request_id[:16].hex())
            return
        try:
            future.set_result(reply_result(rest))
        except Exception as exc:  # the error it carries, or a malformed body
            future.set_exception(exc)

    def _bad_reply(self, why: str) -> None:
        self.bad_replies += 1
        logger.warning("client: dropping malformed reply from broker: %s", why)

    def _on_connection_event(self, event: int) -> None:
        """Fail calls in flight as soon as the connection drops."""
        if event == zmq.EVENT_CONNECTED:
            self.connected.set()
        elif event == zmq.EVENT_DISCONNECTED:
            self.connected.clear()
            self._fail_all(Unavailable(
                f"connection to the broker at {self.address.control} lost"))

    def _fail_all(self, exc: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)


class ServiceProxy:
    """``client.proxy("scheduler").submit(...)`` instead of ``client.call(...)``."""

    def __init__(self, client: AsyncClient, service: str):
        self._client, self._service = client, service

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._client.call(self._service, method, *args, **kwargs)
        return call
