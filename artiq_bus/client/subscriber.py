"""Reading publications: one SUB socket, handlers by topic prefix, drained in batches.

:meth:`Subscriber.sync` answers "are my subscriptions active yet?" (see
:mod:`artiq_bus.broker.pubsub`), which a :class:`~artiq_bus.client.replica.Replica`
needs before it takes a snapshot.  When the connection to the broker comes back after a
loss, the ``on_reconnect`` callbacks run: replicas resynchronise from there.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

import zmq

from ..net import (CurveClient, SocketReader, configure, keepalive_instead_of_heartbeats,
                   watch_connection)
from ..protocol import sync_topic

__all__ = ["Subscriber", "Handler"]

logger = logging.getLogger(__name__)


#: Called with a message's frames: ``[topic, version, body, *buffers]``.
Handler = Callable[[list[zmq.Frame]], None]


class Subscriber:
    """A SUB socket on the broker's notify endpoint, shared by many readers."""

    def __init__(self, endpoint: str, *, context: zmq.Context | None = None,
                 curve: CurveClient | None = None, hwm: int = 10_000):
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._curve = curve
        self._hwm = hwm
        self._handlers: dict[bytes, list[Handler]] = {}
        self._sock: zmq.Socket | None = None
        self._reader: SocketReader | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.on_reconnect: list[Callable[[], None]] = []
        self.connected = asyncio.Event()
        self._lost = False

    async def start(self) -> None:
        sock = configure(self._context.socket(zmq.SUB), rcvhwm=self._hwm)
        keepalive_instead_of_heartbeats(sock)
        if self._curve is not None:
            self._curve.apply(sock)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.endpoint)
        for prefix in self._handlers:
            sock.subscribe(prefix)
        self._sock = sock
        self._reader = SocketReader(sock, on_message=self._dispatch)
        self._tasks = [asyncio.create_task(watch_connection(monitor, self._on_connection_event),
                                          name="subscriber-monitor")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.disable_monitor()
            self._sock.close()
            self._sock = None

    def subscribe(self, prefix: bytes, handler: Handler) -> None:
        handlers = self._handlers.setdefault(prefix, [])
        if not handlers and self._sock is not None:
            self._sock.subscribe(prefix)
        handlers.append(handler)

    def unsubscribe(self, prefix: bytes, handler: Handler) -> None:
        handlers = self._handlers.get(prefix, [])
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            self._handlers.pop(prefix, None)
            if self._sock is not None:
                self._sock.unsubscribe(prefix)

    async def sync(self, timeout_s: float = 5.0) -> None:
        """Return once every subscription made so far is active at the broker."""
        topic = sync_topic(secrets.token_hex(8).encode())
        arrived = asyncio.get_running_loop().create_future()

        def on_sync(frames: list[zmq.Frame]) -> None:
            if not arrived.done():
                arrived.set_result(None)
        self.subscribe(topic, on_sync)
        try:
            async with asyncio.timeout(timeout_s):
                await arrived
        finally:
            self.unsubscribe(topic, on_sync)

    def _dispatch(self, frames: list[zmq.Frame]) -> None:
        topic = frames[0].bytes
        for prefix, handlers in list(self._handlers.items()):
            if topic.startswith(prefix):
                for handler in list(handlers):
                    try:
                        handler(frames)
                    except Exception:
                        logger.exception("subscriber: handler for %r failed", prefix)

    def _on_connection_event(self, event: int) -> None:
        if event == zmq.EVENT_CONNECTED:
            self.connected.set()
            if self._lost:
                self._lost = False
                logger.info("subscriber: reconnected to %s", self.endpoint)
                for callback in list(self.on_reconnect):
                    callback()
        elif event == zmq.EVENT_DISCONNECTED:
            self.connected.clear()
            self._lost = True
