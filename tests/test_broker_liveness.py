"""How the broker tells a service is gone: by heartbeats, or (``"liveness":
"connection"`` in the registration) only by its connection, for services that may be
silent for long (a worker whose experiment holds the GIL).  Raw DEALER sockets speak
the wire protocol as docs/protocol.md §3.3 writes it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgpack
import zmq

from artiq_bus.broker import Broker
from artiq_bus.client import AsyncClient

from helpers import FAST_BROKER

SILENCE_S = 1.5
GONE_S = 1.0


@asynccontextmanager
async def broker_and_client(context: zmq.Context) -> AsyncIterator[tuple[Broker, AsyncClient]]:
    broker = Broker(context, FAST_BROKER)
    await broker.start()
    client = AsyncClient(broker.inproc, context=context)
    await client.start()
    try:
        yield broker, client
    finally:
        await client.stop()
        await broker.stop()


def register(context: zmq.Context, broker: Broker, name: str,
                   body: dict[str, object]) -> zmq.Socket:
    """A raw DEALER that sends ``REG name body`` and nothing else, ever."""
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(broker.inproc.control)
    sock.send_multipart([b"ABUS1", b"REG", name.encode(), msgpack.packb(body)])
    return sock


async def wait_registered(client: AsyncClient, name: str, present: bool,
                          timeout_s: float) -> float:
    """Seconds until ``name`` is (or is no longer) among the broker's services."""
    start = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while (name in await client.call("broker", "services")) != present:
            await asyncio.sleep(0.02)  # polling the broker's own answer: nothing to await
    return time.monotonic() - start


def test_silent_service_judged_by_its_connection_stays(context: zmq.Context) -> None:
    async def scenario() -> None:
        async with broker_and_client(context) as (broker, client):
            quiet = register(context, broker, "quiet",
                                   {"methods": ["work"], "liveness": "connection"})
            usual = register(context, broker, "usual", {"methods": ["work"]})
            await wait_registered(client, "quiet", True, 5.0)
            await wait_registered(client, "usual", True, 5.0)
            # the usual service says nothing: dropped after 4 intervals (0.4 s)
            await wait_registered(client, "usual", False, SILENCE_S)
            await asyncio.sleep(SILENCE_S)  # silence is the point of the test
            assert "quiet" in await client.call("broker", "services")
            quiet.close()
            assert await wait_registered(client, "quiet", False, 5.0) < GONE_S
            usual.close()
    asyncio.run(scenario())


def test_unknown_liveness_is_refused(context: zmq.Context) -> None:
    async def scenario() -> None:
        async with broker_and_client(context) as (broker, client):
            sock = register(context, broker, "odd",
                                  {"methods": ["work"], "liveness": "forever"})
            fine = register(context, broker, "fine",
                                  {"methods": ["work"], "liveness": "heartbeat"})
            await wait_registered(client, "fine", True, 5.0)
            assert "odd" not in await client.call("broker", "services")
            assert broker.bad_messages.count >= 1
            sock.close()
            fine.close()
    asyncio.run(scenario())
