"""The broker stays within its bounds: full in-flight table, too many services."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from artiq_bus.broker import Broker, BrokerConfig
from artiq_bus.client import AsyncClient
from artiq_bus.net import SocketReader
from artiq_bus.protocol import (Command, DeadlineExceeded, NoSuchService, Overloaded, pack,
                                reply_result, request_envelope, split_command)
from artiq_bus.runtime import ServiceHost
from helpers import FAST_BROKER


async def _never(delay: float = 30.0) -> None:
    await asyncio.sleep(delay)


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def test_full_in_flight_table_answers_overloaded_at_once(context: zmq.Context) -> None:
    asyncio.run(_full_in_flight_table(context))


async def _full_in_flight_table(context: zmq.Context) -> None:
    broker = Broker(context, BrokerConfig(max_in_flight=10))
    await broker.start()
    host = ServiceHost(context, broker.inproc, "slow", {"never": _never})
    await host.start()
    client = AsyncClient(broker.inproc, context=context)
    await client.start()
    try:
        await asyncio.wait_for(host.registered.wait(), 5)
        pending = [asyncio.ensure_future(client.call("slow", "never", timeout_s=30))
                   for _ in range(10)]
        # Sent after the first ten on the same connection, so they find the table full.
        refused = await asyncio.wait_for(asyncio.gather(
            *(client.call("slow", "never", timeout_s=30) for _ in range(15)),
            return_exceptions=True), 2)
        assert all(isinstance(result, Overloaded) for result in refused)
        assert not any(call.done() for call in pending)
        for call in pending:
            call.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # The broker's own service still answers: it holds no table entry.
        assert await client.call("broker", "ping") is True
    finally:
        await client.stop()
        await host.stop()
        await broker.stop()


def test_registrations_beyond_the_limit_are_refused(context: zmq.Context) -> None:
    asyncio.run(_registrations_beyond_the_limit(context))


async def _registrations_beyond_the_limit(context: zmq.Context) -> None:
    broker = Broker(context, BrokerConfig(max_services=3))
    await broker.start()
    hosts = [ServiceHost(context, broker.inproc, f"s{i}", {}) for i in range(5)]
    client = AsyncClient(broker.inproc, context=context)
    await client.start()
    try:
        for host in hosts:
            await host.start()
        await asyncio.wait_for(asyncio.gather(*(h.registered.wait() for h in hosts[:3])), 5)
        assert await client.call("broker", "services") == {
            f"s{i}": ["ping"] for i in range(3)}
        with pytest.raises(NoSuchService):
            await client.call("s4", "ping", timeout_s=2)
        assert broker.bad_messages.count >= 2
    finally:
        await client.stop()
        for host in hosts:
            await host.stop()
        await broker.stop()


def test_a_deadline_passed_at_the_broker_names_the_call(context: zmq.Context) -> None:
    asyncio.run(_deadline_at_the_broker(context))


async def _deadline_at_the_broker(context: zmq.Context) -> None:
    """A caller that keeps no deadline of its own (a raw DEALER) still gets one reply:
    DeadlineExceeded from the broker, in the words a client's own deadline uses."""
    broker = Broker(context, FAST_BROKER)
    await broker.start()
    host = ServiceHost(context, broker.inproc, "slow", {"never": _never})
    await host.start()
    caller = context.socket(zmq.DEALER)
    caller.connect(broker.inproc.control)
    try:
        await asyncio.wait_for(host.registered.wait(), 5)
        caller.send_multipart(request_envelope(b"r1", "slow", "never", 0.2,
                                               pack([[], {}])[0]))
        reader = SocketReader(caller)
        try:
            replies = await asyncio.wait_for(reader.recv_batch(copy=True), 5)
        finally:
            reader.close()
        command, rest = split_command(replies[0])
        assert command is Command.REPLY and rest[0] == b"r1"
        with pytest.raises(DeadlineExceeded,
                           match=r"^slow\.never: no reply within 0\.2 s \(deadline passed "
                                 r"at the broker\)$"):
            reply_result(rest)
    finally:
        caller.close(linger=0)
        await host.stop()
        await broker.stop()
