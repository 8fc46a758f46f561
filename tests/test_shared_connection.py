"""One connection for a service and its process's calls (docs/protocol.md §3.4), and a
publisher that connects at its first publication: what a worker is built on.

A broker runs in the test process on loopback TCP (random ports, heartbeats every
0.1 s) unless a test needs one it can kill: then it is a master process.  A raw ROUTER
plays the broker where a test must send what no broker would.
"""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from artiq_bus.broker import Broker, BrokerConfig
from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.subscriber import Subscriber
from artiq_bus.net import BusAddress, SocketReader
from artiq_bus.protocol import (VERSION, Liveness, ProtocolError, Unavailable, encode_timeout,
                                stream_topic)
from artiq_bus.runtime.bus import BusConnection
from artiq_bus.runtime.service import ServiceHost
from artiq_bus.runtime.rpc import rpc, rpc_methods
from artiq_bus.runtime.structs import LazyPublisher

from conftest import Master, free_port
from helpers import bus_client, echo_node, elapsed_since, killable_master
from helpers.runs import submit, write_experiment

HEARTBEAT_S = 0.1
#: The host gives the broker up after 4 silent heartbeats (0.4 s); plus slack.
LOST_NOTICED_S = 2.0
#: The same with a worker's heartbeats (0.5 s × 4 = 2 s); plus slack.
WORKER_LOST_NOTICED_S = 3.5
LONG_S = 30.0
WAIT_S = 10.0


class Recorder:
    """A service that echoes and remembers, in order, what it was told."""

    def __init__(self) -> None:
        self.notes: list[Any] = []
        #: Calls out, for ``relay`` and ``work`` (set once the client exists).
        self.client: AsyncClient | None = None

    @rpc
    def echo(self, x: Any) -> Any:
        return x

    @rpc
    async def sleep_echo(self, x: Any, delay: float) -> Any:
        await asyncio.sleep(delay)  # the point of this method: answer later
        return x

    @rpc
    def note(self, x: Any) -> None:
        self.notes.append(x)

    @rpc
    def note_call(self, x: Any) -> Any:
        self.notes.append(x)
        return x

    @rpc
    def seen(self) -> list[Any]:
        return self.notes

    @rpc
    async def relay(self, x: Any) -> Any:
        """Call ``other.echo`` from inside a request: on the connection it came in by."""
        assert self.client is not None
        return await self.client.call("other", "echo", x)

    @rpc
    def work(self, count: int) -> str:
        """Tell ``other`` ``count`` notes, one way, then reply."""
        assert self.client is not None
        for i in range(count):
            self.client.send("other", "note", i)
        return "done"


def tcp_config(control_port: int = 0) -> BrokerConfig:
    return BrokerConfig(control_endpoints=[f"tcp://127.0.0.1:{control_port}"],
                        notify_endpoints=["tcp://127.0.0.1:0"],
                        publish_endpoints=["tcp://127.0.0.1:0"],
                        heartbeat_interval_s=HEARTBEAT_S)


class TcpBroker:
    """A broker on loopback TCP with a ZeroMQ context of its own.

    ``Broker.stop`` leaves its publication sockets for its context to close: a broker
    dropped while its context lives warns about them (an error in these tests), and the
    context's ``term`` then waits for them for ever.  So the context goes with it.
    """

    def __init__(self, control_port: int = 0):
        self._context = zmq.Context()
        self.broker = Broker(self._context, tcp_config(control_port))
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


@asynccontextmanager
async def service(context: zmq.Context, address: BusAddress, name: str, target: Recorder,
                  **options: Any) -> AsyncIterator[ServiceHost]:
    """A started, registered host of its own connection."""
    host = ServiceHost(context, address, name, rpc_methods(target),
                       heartbeat_interval_s=HEARTBEAT_S, **options)
    await host.start()
    try:
        async with asyncio.timeout(WAIT_S):
            await host.registered.wait()
        yield host
    finally:
        await host.stop()


@asynccontextmanager
async def sharing(host: ServiceHost, target: Recorder | None = None,
                  timeout_s: float = WAIT_S) -> AsyncIterator[AsyncClient]:
    """A started client that calls on ``host``'s connection."""
    client = AsyncClient.over(host, timeout_s=timeout_s)
    await client.start()
    if target is not None:
        target.client = client
    try:
        yield client
    finally:
        await client.stop()


@asynccontextmanager
async def own_client(context: zmq.Context, address: BusAddress) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(address, context=context)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


def established_to(port: int) -> int:
    """Established TCP connections from any local port to ``port`` (IPv6 sockets carry
    IPv4 connections too: both tables count)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


# -- calls on a service's connection ---------------------------------------------------

def test_calls_to_others_and_to_itself_many_in_flight(context: zmq.Context) -> None:
    rng = random.Random(20250101)
    count = 300
    delays = [rng.choice([0.0, rng.uniform(0.0, 0.3)]) for _ in range(count)]

    async def scenario() -> None:
        me, other = Recorder(), Recorder()
        async with TcpBroker() as broker:
            address = broker.address
            async with service(context, address, "other", other), \
                    service(context, address, "me", me) as host, \
                    sharing(host, me) as client:
                calls = [client.request(name, "sleep_echo", [name, i], delays[i])
                         for i in range(count) for name in ("other", "me")]
                relayed = [client.request("me", "relay", i) for i in range(50)]
                results = await asyncio.gather(*calls, *relayed)
                assert results[:2 * count] == [[name, i] for i in range(count)
                                              for name in ("other", "me")]
                assert results[2 * count:] == list(range(50))
                assert client.connected.is_set()
                assert client.unmatched_replies == client.bad_replies == 0
                # one connection to the control port: the host's (the broker's own
                # sockets listen; "other" is the second)
                assert established_to(broker.ports["control"]) == 2
    asyncio.run(asyncio.wait_for(scenario(), 60.0))


def test_one_way_messages_keep_their_order_among_calls(context: zmq.Context) -> None:
    async def scenario() -> None:
        me, other = Recorder(), Recorder()
        async with TcpBroker() as broker:
            address = broker.address
            async with service(context, address, "other", other), \
                    service(context, address, "me", me) as host, sharing(host, me) as client:
                replies = []
                for i in range(600):
                    if i % 5 == 0:
                        replies.append(client.request("other", "note_call", i))
                    else:
                        client.send("other", "note", i)
                assert await asyncio.gather(*replies) == list(range(0, 600, 5))
                assert await client.call("other", "seen") == list(range(600))
    asyncio.run(asyncio.wait_for(scenario(), 30.0))


def test_messages_sent_while_serving_arrive_before_the_reply(context: zmq.Context) -> None:
    """A service's one-way messages and its reply share its connection: a caller who
    has the reply and then asks the messages' recipient finds them delivered."""
    async def scenario() -> None:
        me, other = Recorder(), Recorder()
        async with TcpBroker() as broker:
            address = broker.address
            async with service(context, address, "other", other), \
                    service(context, address, "me", me) as host, sharing(host, me), \
                    own_client(context, address) as outside:
                for _ in range(20):
                    other.notes.clear()
                    assert await outside.call("me", "work", 50) == "done"
                    assert await outside.call("other", "seen") == list(range(50))
    asyncio.run(asyncio.wait_for(scenario(), 30.0))


# -- faults ----------------------------------------------------------------------------

def test_killed_broker_fails_calls_in_flight_soon(tmp_path: Path) -> None:
    """A worker's set-up (no reconnection, liveness by connection, 0.5 s heartbeats)
    against a master that is SIGKILLed with calls in flight."""
    with killable_master(tmp_path) as master, echo_node(master):
        async def scenario() -> None:
            context = zmq.Context()
            host = ServiceHost(context, master.address, "sharer", rpc_methods(Recorder()),
                               reconnect=False, liveness_by=Liveness.CONNECTION)
            try:
                await host.start()
                async with sharing(host, timeout_s=LONG_S) as client:
                    async with asyncio.timeout(WAIT_S):
                        await host.registered.wait()
                    calls = [client.request("echo", "sleep_echo", i, 60.0) for i in range(20)]
                    assert await client.call("echo", "echo", "after") == "after"
                    killed = time.monotonic()
                    master.signal(signal.SIGKILL)
                    results = await asyncio.gather(*calls, return_exceptions=True)
                    assert elapsed_since(killed) < WORKER_LOST_NOTICED_S
                    assert all(isinstance(r, Unavailable) for r in results), results
                    assert host.ended.is_set()
                    with pytest.raises(Unavailable):
                        await client.call("echo", "echo", 1)
            finally:
                await host.stop()
                context.destroy(linger=0)
        asyncio.run(asyncio.wait_for(scenario(), 30.0))


def test_broker_stopped_and_back_fails_calls_then_serves_again(context: zmq.Context) -> None:
    """A host that connects again on a new socket: calls in flight on the old one fail,
    later calls go on the new one."""
    port = free_port()

    async def scenario() -> None:
        me = Recorder()
        async with TcpBroker(port) as broker, \
                service(context, broker.address, "me", me) as host, \
                sharing(host, me, timeout_s=LONG_S) as client:
            calls = [client.request("me", "sleep_echo", i, 60.0) for i in range(20)]
            assert await client.call("me", "echo", "after") == "after"
            await broker.stop()
            stopped = time.monotonic()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert elapsed_since(stopped) < LOST_NOTICED_S
            assert all(isinstance(r, Unavailable) for r in results), results
            assert not client.connected.is_set()
            async with TcpBroker(port):
                async with asyncio.timeout(WAIT_S):
                    await host.registered.wait()
                assert client.connected.is_set()
                assert await client.call("me", "echo", "again") == "again"
                assert await client.call("broker", "ping") is True
    asyncio.run(asyncio.wait_for(scenario(), 30.0))


class FakeBroker:
    """A raw ROUTER on a random loopback port, speaking to one peer."""

    def __init__(self, context: zmq.Context):
        self._router = context.socket(zmq.ROUTER)
        self._router.linger = 0
        port = self._router.bind_to_random_port("tcp://127.0.0.1")
        self.address = BusAddress.from_host("127.0.0.1", port, port, port)
        self._reader = SocketReader(self._router)
        self._received: collections.deque[list[bytes]] = collections.deque()
        self.peer = b""

    async def receive(self) -> list[bytes]:
        """The next message (within WAIT_S), without its peer identity or heartbeats."""
        async with asyncio.timeout(WAIT_S):
            while True:
                if not self._received:
                    self._received.extend(await self._reader.recv_batch(copy=True))
                self.peer, *frames = self._received.popleft()
                if frames[1] != b"HB":
                    return frames

    def send(self, *frames: bytes) -> None:
        self._router.send_multipart([self.peer, VERSION, *frames])
        self._reader.after_send()

    def close(self) -> None:
        self._reader.close()
        self._router.close()


def test_unexpected_replies_are_dropped_and_counted(context: zmq.Context) -> None:
    """A raw ROUTER as the broker sends replies nobody asked for, short ones, ones with
    a body that does not decode and commands nobody sends to a service: each is
    dropped and counted, and the host and its caller go on."""
    async def scenario() -> None:
        broker = FakeBroker(context)
        # Heartbeats far apart: this broker never sends any, and the host must not
        # give it up for silence during the test.
        host = ServiceHost(context, broker.address, "me", rpc_methods(Recorder()),
                           heartbeat_interval_s=5.0, reconnect=False)
        to_host = broker.send
        try:
            await host.start()
            _, command, name, _ = await broker.receive()
            assert (command, name) == (b"REG", b"me")
            to_host(b"ACK", b"me")
            async with asyncio.timeout(WAIT_S):
                await host.registered.wait()
            ok, one = b"\x00", msgpack.packb(1)

            async def served(tag: bytes) -> None:
                """Ask the host to echo: once it answers, it has handled what came
                before, and it still serves."""
                to_host(b"REQ", b"caller", tag, b"echo", encode_timeout(5.0),
                        msgpack.packb([[7], {}]))
                assert await broker.receive() == [VERSION, b"REP", b"caller", tag, ok,
                                                  msgpack.packb(7)]
            to_host(b"REP", b"x" * 8, ok, one)  # no caller attached yet: the host's
            await served(b"r0")
            assert host.bad_messages == 1
            async with sharing(host) as client:
                first = client.request("svc", "m")
                second = client.request("svc", "m")
                ids = []
                for _ in range(2):
                    frames = await broker.receive()
                    assert frames[1] == b"REQ"
                    ids.append(frames[2])
                to_host(b"REP", b"\xff" * 8, ok, one)  # no such call
                to_host(b"REP", ids[0])  # too short
                to_host(b"REP", ids[1], ok, b"\xc1")  # a body that does not decode
                to_host(b"BOGUS", b"1")
                to_host(b"REP", ids[0], ok, msgpack.packb("fine"))
                assert await first == "fine"
                with pytest.raises(ProtocolError):
                    await second
                assert client.unmatched_replies == 1
                assert client.bad_replies == 1
                assert host.bad_messages == 2  # BOGUS
                await served(b"r1")
                assert not host.ended.is_set()
        finally:
            await host.stop()
            broker.close()
    asyncio.run(asyncio.wait_for(scenario(), 30.0))


def test_stopping_the_client_leaves_the_host_serving(context: zmq.Context) -> None:
    async def scenario() -> None:
        me = Recorder()
        async with TcpBroker() as broker:
            address = broker.address
            async with service(context, address, "me", me) as host, \
                    own_client(context, address) as outside:
                async with sharing(host, me, timeout_s=LONG_S) as client:
                    calls = [client.request("me", "sleep_echo", i, 60.0) for i in range(5)]
                    assert await client.call("me", "echo", "after") == "after"
                    start = time.monotonic()
                await asyncio.gather(*calls, return_exceptions=True)
                assert elapsed_since(start) < 0.5
                assert all(isinstance(call.exception(), Unavailable) for call in calls)
                with pytest.raises(Unavailable):
                    client.send("me", "note", 1)
                assert host.registered.is_set()
                assert await outside.call("me", "echo", 5) == 5
                async with sharing(host, me) as again:  # another caller may attach
                    assert await again.call("me", "echo", 6) == 6
    asyncio.run(asyncio.wait_for(scenario(), 30.0))


def test_stopping_the_host_fails_its_callers(context: zmq.Context) -> None:
    async def scenario() -> None:
        me = Recorder()
        async with TcpBroker() as broker:
            address = broker.address
            async with service(context, address, "other", Recorder()), \
                    service(context, address, "me", me) as host, \
                    sharing(host, me, timeout_s=LONG_S) as client:
                calls = [client.request("other", "sleep_echo", i, 60.0) for i in range(5)]
                assert await client.call("me", "echo", "after") == "after"
                await host.stop()
                results = await asyncio.gather(*calls, return_exceptions=True)
                assert all(isinstance(r, Unavailable) for r in results), results
                with pytest.raises(Unavailable):
                    client.send("me", "note", 1)
    asyncio.run(asyncio.wait_for(scenario(), 30.0))


# -- publications ----------------------------------------------------------------------

async def receive_all(subscriber: Subscriber, topic: bytes,
                      publish: Any, count: int) -> list[bytes]:
    """Subscribe to ``topic``, run ``publish()``, and return the ``count`` bodies."""
    bodies: list[bytes] = []
    arrived = asyncio.Event()

    def on_message(frames: list[zmq.Frame]) -> None:
        bodies.append(frames[2].bytes)
        if len(bodies) >= count:
            arrived.set()
    subscriber.subscribe(topic, on_message)
    await subscriber.sync()
    publish()
    async with asyncio.timeout(WAIT_S):
        await arrived.wait()
    return bodies


def test_lazy_publisher_connects_at_first_publication_and_loses_nothing(
        context: zmq.Context) -> None:
    """A fresh PUB connection drops what it sends before the broker's subscription
    reaches it; the lazy publisher holds it back instead."""
    topic = stream_topic("test")

    async def scenario() -> None:
        async with TcpBroker() as broker:
            address = broker.address
            subscriber = Subscriber(address.notify, context=context)
            await subscriber.start()
            publishers = [LazyPublisher(context, address.publish) for _ in range(20)]
            try:
                assert established_to(broker.ports["publish"]) == 0

                def publish() -> None:
                    for n, publisher in enumerate(publishers):
                        for i in range(3):
                            publisher.send([topic, VERSION, msgpack.packb([n, i])])
                bodies = await receive_all(subscriber, topic, publish, 60)
                for n in range(20):  # each publisher's messages, in order
                    assert [b for b in map(msgpack.unpackb, bodies) if b[0] == n] == \
                        [[n, i] for i in range(3)]
                for publisher in publishers:
                    await publisher.drained(timeout_s=1.0)
                    assert publisher.dropped == 0
            finally:
                for publisher in publishers:
                    publisher.close()
                await subscriber.stop()
    asyncio.run(asyncio.wait_for(scenario(), 30.0))


def test_bus_connection_sharing_a_host_opens_one_connection(context: zmq.Context) -> None:
    async def scenario() -> None:
        async with TcpBroker() as broker:
            address = broker.address
            bus = BusConnection(context, address)
            me = Recorder()
            host = bus.service("me", rpc_methods(me), reconnect=False,
                               liveness_by=Liveness.CONNECTION)
            await host.start()
            await bus.start(sharing=host)
            subscriber = Subscriber(address.notify, context=context)
            await subscriber.start()
            try:
                me.client = bus.client
                async with asyncio.timeout(WAIT_S):
                    await host.registered.wait()
                assert await bus.client.call("me", "echo", 1) == 1
                assert established_to(broker.ports["control"]) == 1
                assert established_to(broker.ports["publish"]) == 0
                topic = stream_topic("ccb")
                bodies = await receive_all(subscriber, topic, lambda: bus.publisher.send(
                    [topic, VERSION, b"\x01"]), 1)
                assert bodies == [b"\x01"]
                assert established_to(broker.ports["publish"]) == 1
            finally:
                await subscriber.stop()
                await host.stop()
                await bus.stop()
    asyncio.run(asyncio.wait_for(scenario(), 30.0))


# -- a worker --------------------------------------------------------------------------

CCB_ONCE = '''\
from artiq.experiment import *


class Once(EnvExperiment):
    def build(self):
        self.setattr_device("ccb")

    def run(self):
        self.ccb.issue("create_applet", "once", "plot_xy y")
'''


def test_a_workers_first_publication_arrives(master: Master, tmp_path: Path) -> None:
    """The worker's publication socket is made at its first publication, and that
    publication is not lost."""
    async def scenario() -> None:
        async with bus_client(master) as (_, _, subscriber):
            topic = stream_topic("ccb")
            file = write_experiment(tmp_path, "once.py", CCB_ONCE)
            bodies = await receive_all(
                subscriber, topic, lambda: submit(master, file), 1)
            assert msgpack.unpackb(bodies[0], strict_map_key=False)[2][0]["args"] == \
                ["once", "plot_xy y"]
    asyncio.run(asyncio.wait_for(scenario(), 30.0))
