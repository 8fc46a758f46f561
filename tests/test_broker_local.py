"""The broker's in-process client (``LocalClient``): the calls and errors of an
``AsyncClient``, handed to the broker by function calls, to services in the same
process and to services behind a socket."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import zmq

from artiq_bus.broker import Broker
from artiq_bus.broker.local import LocalClient
from artiq_bus.net import BusAddress
from artiq_bus.protocol import (DeadlineExceeded, NoSuchMethod, NoSuchService, RemoteError,
                                ServiceDied, Unavailable)
from artiq_bus.runtime.service import ServiceHost
from artiq_bus.runtime.rpc import rpc, rpc_methods

from helpers import FAST_BROKER, run_bounded





class Echo:
    """A service with a plain method, a coroutine, a failing one and a one-way sink."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    @rpc
    def echo(self, value: Any, suffix: str = "") -> Any:
        return value + suffix if suffix else value

    @rpc
    async def later(self, value: Any) -> Any:
        self.entered.set()
        await self.release.wait()
        return value

    @rpc
    def fail(self) -> None:
        raise ValueError("no such thing")

    @rpc
    def note(self, value: Any) -> None:
        self.received.append(value)


@asynccontextmanager
async def serving(context: zmq.Context, local: bool) -> AsyncIterator[tuple[Broker, Echo]]:
    """A broker and the service ``echo``, in this process (``local``) or on a socket."""
    broker = Broker(context, FAST_BROKER)
    await broker.start()
    echo = Echo()
    host = ServiceHost(context, broker.inproc, "echo", rpc_methods(echo),
                       local=broker if local else None, heartbeat_interval_s=0.1)
    await host.start()
    try:
        async with asyncio.timeout(5.0):
            await host.registered.wait()
        yield broker, echo
    finally:
        await host.stop()
        await broker.stop()


async def _calls_reach_services(context: zmq.Context, local: bool) -> None:
    async with serving(context, local) as (broker, echo):
        client = LocalClient(broker)
        try:
            assert await client.call("echo", "echo", "a", suffix="b", timeout_s=5) == "ab"
            array = np.arange(100_000, dtype=np.float64)  # out of band
            assert np.array_equal(await client.call("echo", "echo", array, timeout_s=5),
                                  array)
            later = client.request("echo", "later", 7, timeout_s=5)
            client.send("echo", "note", 1)
            assert not later.done()
            echo.release.set()
            assert await later == 7
            async with asyncio.timeout(5.0):
                while echo.received != [1]:
                    await asyncio.sleep(0.01)  # a one-way message: nothing to await
        finally:
            client.stop()


async def _plain_method_answers_within_the_request(context: zmq.Context) -> None:
    async with serving(context, True) as (broker, _):
        client = LocalClient(broker)
        reply = client.request("echo", "echo", 5, timeout_s=5)
        assert reply.done() and reply.result() == 5
        client.stop()


async def _errors(context: zmq.Context) -> None:
    async with serving(context, True) as (broker, _):
        client = LocalClient(broker)
        with pytest.raises(RemoteError, match="no such thing") as raised:
            await client.call("echo", "fail", timeout_s=5)
        assert raised.value.remote_type == "ValueError"
        with pytest.raises(NoSuchService):
            await client.call("nobody", "echo", timeout_s=5)
        with pytest.raises(NoSuchMethod):
            await client.call("echo", "nothing", timeout_s=5)
        with pytest.raises(DeadlineExceeded, match=r"echo\.later: no reply within 0\.2 s"):
            await client.call("echo", "later", 1, timeout_s=0.2)
        client.stop()


async def _stop(context: zmq.Context) -> None:
    async with serving(context, True) as (broker, echo):
        client = LocalClient(broker)
        later = client.request("echo", "later", 1, timeout_s=5)
        await echo.entered.wait()
        client.stop()
        with pytest.raises(Unavailable):
            await later
        with pytest.raises(Unavailable):
            await client.call("echo", "echo", 1, timeout_s=5)


async def _service_leaves(context: zmq.Context) -> None:
    broker = Broker(context, FAST_BROKER)
    await broker.start()
    echo = Echo()
    host = ServiceHost(context, broker.inproc, "echo", rpc_methods(echo),
                       heartbeat_interval_s=0.1)
    await host.start()
    client = LocalClient(broker)
    try:
        async with asyncio.timeout(5.0):
            await host.registered.wait()
        later = client.request("echo", "later", 1, timeout_s=5)
        await echo.entered.wait()
        await host.stop()
        with pytest.raises(ServiceDied):
            await later
    finally:
        client.stop()
        await broker.stop()


@pytest.mark.parametrize("local", [True, False], ids=["local", "socket"])
def test_calls_reach_services_in_this_process_and_behind_sockets(context: zmq.Context,
                                                                 local: bool) -> None:
    run_bounded(_calls_reach_services(context, local))


def test_a_plain_method_in_this_process_answers_within_the_request(
        context: zmq.Context) -> None:
    run_bounded(_plain_method_answers_within_the_request(context))


def test_errors_are_those_of_the_asyncio_client(context: zmq.Context) -> None:
    run_bounded(_errors(context))


def test_stop_fails_calls_in_flight_and_later_ones(context: zmq.Context) -> None:
    run_bounded(_stop(context))


def test_a_service_that_leaves_fails_its_calls(context: zmq.Context) -> None:
    run_bounded(_service_leaves(context))


def test_a_stopped_broker_leaves_its_context_free_to_terminate() -> None:
    """``Broker.stop`` closes every socket the broker made, its publication pair too:
    the context's ``term()``, which waits for every open socket, then returns."""
    context = zmq.Context()

    async def start_and_stop() -> None:
        broker = Broker(context, FAST_BROKER)
        await broker.start()
        await broker.stop()
    run_bounded(start_and_stop())
    term = threading.Thread(target=context.term, daemon=True)
    term.start()
    term.join(5.0)
    assert not term.is_alive(), "a socket of the stopped broker is still open"


def test_a_stopping_host_s_bye_reaches_the_broker(context: zmq.Context) -> None:
    """``ServiceHost.stop`` lets what it queued leave before the socket goes: a host
    stopped while its connection is still being made (its ``REG`` and ``BYE`` queued)
    still says both.  A raw ROUTER on TCP plays the broker; twenty rounds."""
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.rcvtimeo = 5000  # every wait below is bounded: zmq.Again fails the test
    port = router.bind_to_random_port("tcp://127.0.0.1")
    address = BusAddress.from_host("127.0.0.1", port, port, port)

    async def one_round() -> list[bytes]:
        host = ServiceHost(context, address, "leaving", {})
        await host.start()
        await asyncio.sleep(0)  # the host connects and queues its REG
        await host.stop()
        received = []
        while received[-1:] != [b"BYE"]:
            _, _, command, *_ = await asyncio.to_thread(router.recv_multipart)
            received.append(command)
        return received
    try:
        for _ in range(20):
            assert run_bounded(one_round()) == [b"REG", b"BYE"]
    finally:
        router.close()
