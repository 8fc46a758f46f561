"""A broker in the test process on loopback TCP (random ports, fast heartbeats): on the
test's own asyncio loop (:class:`TcpBroker`), or on one of its own in a background
thread (:class:`BrokerThread`) when the test's thread runs something else, such as a
worker's :class:`~artiq_bus.worker.loop.PollLoop`; and a raw ROUTER that plays a broker
on such a loop (:class:`RawBroker`).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from artiq_bus.broker import Broker, BrokerConfig
from artiq_bus.net import BusAddress
from artiq_bus.protocol import VERSION, encode_timeout
from artiq_bus.worker.link import WorkerLink
from artiq_bus.worker.loop import PollLoop

__all__ = ["HEARTBEAT_S", "tcp_config", "TcpBroker", "BrokerThread", "worker_bus_config",
           "RawBroker", "wait_on"]

HEARTBEAT_S = 0.1
#: Bound on the broker thread's start and stop.
_START_STOP_S = 10.0


def tcp_config(control_port: int = 0, heartbeat_interval_s: float = HEARTBEAT_S) -> BrokerConfig:
    return BrokerConfig(control_endpoints=[f"tcp://127.0.0.1:{control_port}"],
                        notify_endpoints=["tcp://127.0.0.1:0"],
                        publish_endpoints=["tcp://127.0.0.1:0"],
                        heartbeat_interval_s=heartbeat_interval_s)


class TcpBroker:
    """A broker on loopback TCP with a ZeroMQ context of its own, which goes with it."""

    def __init__(self, control_port: int = 0, heartbeat_interval_s: float = HEARTBEAT_S):
        self._context = zmq.Context()
        self.broker = Broker(self._context, tcp_config(control_port, heartbeat_interval_s))
        self._running = False

    async def __aenter__(self) -> "TcpBroker":
        await self.broker.start()
        self._running = True
        self.ports = self.broker.ports
        self.address = BusAddress.from_host("127.0.0.1", self.ports["control"],
                                            self.ports["notify"], self.ports["publish"])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._running:
            self._running = False
            await self.broker.stop()
            self._context.destroy(linger=0)


class BrokerThread:
    """A :class:`TcpBroker` served by an asyncio loop in a thread of its own; a context
    manager (the broker and the thread are gone when it exits)."""

    def __init__(self, heartbeat_interval_s: float = HEARTBEAT_S):
        self._loop = asyncio.new_event_loop()
        self._tcp = TcpBroker(heartbeat_interval_s=heartbeat_interval_s)
        self._thread = threading.Thread(target=self._run, name="test-broker", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # Broker.stop joins its proxy thread through the default executor: its thread
        # goes too, before the test counts threads.
        self._loop.run_until_complete(self._loop.shutdown_default_executor())

    def __enter__(self) -> "BrokerThread":
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._tcp.__aenter__(), self._loop).result(
                timeout=_START_STOP_S)
        except BaseException:
            self._shut_down()
            raise
        self.address: BusAddress = self._tcp.address
        self.ports: dict[str, int] = self._tcp.ports
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._tcp.stop(), self._loop).result(
                timeout=_START_STOP_S)
        finally:
            self._shut_down()

    def _shut_down(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_START_STOP_S)
        assert not self._thread.is_alive(), "the broker thread did not stop"
        self._loop.close()


def worker_bus_config(address: BusAddress) -> dict[str, Any]:
    """A worker's bus configuration (as the master's worker pool makes it), without its
    service name."""
    return {"broker": {"control": address.control, "notify": address.notify,
                       "publish": address.publish}, "curve": None}


def wait_on(loop: PollLoop, done: Callable[[], Any], timeout_s: float = _START_STOP_S) -> None:
    """Run ``loop`` until ``done()`` is true; AssertionError after ``timeout_s``."""
    assert loop.run_until(lambda: bool(done()), timeout_s), f"not done within {timeout_s} s"


class RawBroker:
    """A raw ROUTER on a random loopback port playing the broker for one peer, read on
    a worker's :class:`PollLoop`: for what no broker would send."""

    def __init__(self, loop: PollLoop, context: zmq.Context):
        self.loop = loop
        self.router = context.socket(zmq.ROUTER)
        self.router.linger = 0
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.address = BusAddress.from_host("127.0.0.1", port, port, port)
        #: What the peer sent (without its identity), heartbeats apart.
        self.received: collections.deque[list[bytes]] = collections.deque()
        self.heartbeats = 0
        self.peer = b""
        #: When it last sent something.
        self.last_sent = 0.0
        loop.add_reader(self.router, self._read)

    def _read(self) -> None:
        while True:
            try:
                self.peer, *frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frames[1:] == [b"HB"]:
                self.heartbeats += 1
            else:
                self.received.append(frames)

    def receive(self) -> list[bytes]:
        """The next message other than a heartbeat (running the loop meanwhile)."""
        wait_on(self.loop, lambda: self.received)
        return self.received.popleft()

    def send(self, *frames: bytes) -> None:
        self.send_raw(VERSION, *frames)

    def send_raw(self, *frames: bytes) -> None:
        """Frames as they are, version frame included (or not)."""
        self.router.send_multipart([self.peer, *frames])
        self.last_sent = time.monotonic()

    def link(self, context: zmq.Context, **options: Any) -> WorkerLink:
        """A link that registered here as service ``me`` (method ``echo``) as a worker
        does: liveness by connection, not heartbeats."""
        link = WorkerLink(self.loop, context, self.address, "me", {"echo": lambda x: x},
                          **options)
        link.connect()
        assert self.accept() == (b"me", {"methods": ["echo", "ping"],
                                         "liveness": "connection"})
        wait_on(self.loop, lambda: link.registered)
        return link

    def accept(self) -> tuple[bytes, Any]:
        """Wait for a registration and acknowledge it: the service's name and ``REG``
        body."""
        _, command, name, body = self.receive()
        assert command == b"REG", command
        self.send(b"ACK", name)
        return name, msgpack.unpackb(body)

    def assert_served(self, tag: bytes, body: bytes = msgpack.packb([[7], {}]),
                      reply: Any = 7, method: bytes = b"echo") -> None:
        """Call the peer's ``method`` (``echo`` by default): its reply must be ``reply``,
        or an error of type ``reply`` when that is a string.  It also says the peer
        handled what it was sent before."""
        self.send(b"REQ", b"caller", tag, method, encode_timeout(5.0), body)
        *frames, reply_body = self.receive()
        error = isinstance(reply, str)
        assert frames == [VERSION, b"REP", b"caller", tag, b"\x01" if error else b"\x00"]
        value = msgpack.unpackb(reply_body)
        assert (value["type"] if error else value) == reply
