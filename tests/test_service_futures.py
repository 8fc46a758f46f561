"""A service method may return an ``asyncio.Future`` (a worker's stages do: the main
thread settles it): the host answers from the future's callback, with no task, as it
answers a coroutine — value, error, or nothing when it stops first.  Real broker and
host on inproc sockets, in this process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import zmq

from artiq_bus.broker import Broker
from artiq_bus.broker.local import LocalClient
from artiq_bus.protocol import RemoteError, ServiceDied
from artiq_bus.runtime.rpc import rpc, rpc_methods
from artiq_bus.runtime.service import ServiceHost

from helpers import FAST_BROKER, run_bounded





class Deferred:
    """``later()`` returns a future that the test settles."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []

    @rpc
    def later(self) -> "asyncio.Future[Any]":
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


async def _with_host(context: zmq.Context, scenario: Any) -> None:
    broker = Broker(context, FAST_BROKER)
    await broker.start()
    service = Deferred()
    host = ServiceHost(context, broker.inproc, "deferred", rpc_methods(service),
                       heartbeat_interval_s=0.1)
    await host.start()
    client = LocalClient(broker)
    try:
        async with asyncio.timeout(5.0):
            await host.registered.wait()
        await scenario(client, service, host)
    finally:
        client.stop()
        await host.stop()
        await broker.stop()


async def _first_request(client: LocalClient, service: Deferred) -> "asyncio.Future[Any]":
    reply = client.request("deferred", "later", timeout_s=5)
    async with asyncio.timeout(5.0):
        while len(service.futures) < 1:
            await asyncio.sleep(0.005)  # the request crosses a socket: nothing to await
    return reply


def test_a_future_s_value_and_error_are_the_replies(context: zmq.Context) -> None:
    async def scenario(client: LocalClient, service: Deferred, _: ServiceHost) -> None:
        reply = await _first_request(client, service)
        assert not reply.done()
        service.futures[0].set_result({"a": [1, 2]})
        assert await reply == {"a": [1, 2]}
        service.futures.clear()
        reply = await _first_request(client, service)
        service.futures[0].set_exception(KeyError("gone"))
        with pytest.raises(RemoteError, match="gone") as raised:
            await reply
        assert raised.value.remote_type == "KeyError"
    run_bounded(_with_host(context, scenario))


def test_a_future_pending_when_the_host_stops_is_cancelled(context: zmq.Context) -> None:
    async def scenario(client: LocalClient, service: Deferred, host: ServiceHost) -> None:
        reply = await _first_request(client, service)
        await host.stop()
        assert service.futures[0].cancelled()
        with pytest.raises(ServiceDied):
            await reply
    run_bounded(_with_host(context, scenario))
