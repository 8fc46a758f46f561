"""Requests through a real master: an echo node process, blocking and asyncio clients in
the test process, and client processes of their own, all on loopback TCP.  The tests
share one master; each starts its own echo node."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import numpy as np
import pytest

from artiq_bus.client.sync import Client
from artiq_bus.protocol import NoSuchMethod, NoSuchService, RemoteError

from conftest import Master
from helpers import EchoNode, bus_client, echo_node, same, start_callers
from helpers import module_master  # noqa: F401  (this module's `master` fixture)

#: An answer from the broker itself (no service involved) takes about a millisecond.
FAST_S = 0.5
ECHO_METHODS = ["echo", "fail", "pid", "ping", "sleep_echo"]
#: Names that exist on the echo node's object (or any object) but were not declared.
UNDECLARED = ["_secret", "__init__", "__class__", "__getattribute__", "__dict__",
              "not_exported", "_methods"]


@pytest.fixture
def echo(master: Master) -> Iterator[EchoNode]:
    with echo_node(master) as node:
        yield node


def values() -> list[object]:
    """Values of every kind the codec carries, including an out-of-band array."""
    return [None, True, 7, -2**63, 1.5, "text", b"\x00bytes", [1, [2, 3]], (4, (5,)),
            {"a": {"b": [1.0, 2.0]}, 3: "int key"}, 2 + 3j, slice(1, None, 2),
            np.int16(-3), np.arange(10, dtype=np.float32).reshape(2, 5),
            np.arange(100_000, dtype=np.int64)]


def test_blocking_client(master: Master, echo: EchoNode) -> None:
    with Client(master.address, timeout_s=10.0) as client:
        assert client.call("broker", "ping") is True
        services = client.call("broker", "services")
        assert services["echo"] == ECHO_METHODS
        assert client.call("echo", "pid") == echo.popen.pid
        assert client.call("echo", "ping") is True
        for value in values():
            assert same(client.call("echo", "echo", value), value), value
        assert client.call("echo", "sleep_echo", {"k": [1]}, 0.05) == {"k": [1]}
        assert client.call("echo", "echo", x="keyword") == "keyword"


def test_async_client(master: Master, echo: EchoNode) -> None:
    async def scenario() -> None:
        async with bus_client(master) as (_, client, _):
            assert await client.call("echo", "pid") == echo.popen.pid
            for value in values():
                assert same(await client.call("echo", "echo", value), value), value
            proxy = client.proxy("echo")
            assert await proxy.sleep_echo("via proxy", 0.01) == "via proxy"
    asyncio.run(asyncio.wait_for(scenario(), 20.0))


def test_many_concurrent_calls_each_get_their_own_reply(master: Master, echo: EchoNode) -> None:
    """600 calls in flight at once on one connection, answered out of order."""
    count = 600
    rng = random.Random(20240611)
    delays = [rng.choice([0.0, rng.uniform(0.0, 0.4)]) for _ in range(count)]

    async def scenario() -> None:
        async with bus_client(master) as (_, client, _):
            done_order: list[int] = []

            async def one(i: int) -> None:
                argument = {"i": i, "delay": delays[i], "payload": [i] * (i % 7)}
                reply = await client.call("echo", "sleep_echo", argument, delays[i])
                assert reply == argument
                done_order.append(i)

            big = np.arange(50_000, dtype=np.float64)  # travels out of band
            start = time.monotonic()
            results = await asyncio.gather(
                *(one(i) for i in range(count)),
                *(client.call("echo", "echo", [j, big * j]) for j in range(20)))
            elapsed = time.monotonic() - start
            for j, (tag, array) in enumerate(results[count:]):
                assert tag == j and same(array, big * j)
            assert sorted(done_order) == list(range(count))
            assert done_order != list(range(count))  # replies did arrive out of order
            # In flight together: one after the other would take sum(delays) ~ 60 s.
            assert elapsed < max(delays) + 5.0, elapsed
    asyncio.run(asyncio.wait_for(scenario(), 60.0))


def test_several_client_processes_at_once(master: Master, echo: EchoNode) -> None:
    tags = [f"caller-{n}" for n in range(3)]
    callers = start_callers(master, tags, calls=300)
    try:
        for caller, tag in zip(callers, tags):
            caller.wait_for_line(rf"^OK {tag} 300$", timeout_s=45.0)
            assert caller.wait() == 0, caller.output()
    finally:
        for caller in callers:
            caller.stop()


def test_remote_key_error_is_a_key_error(master: Master, echo: EchoNode) -> None:
    with Client(master.address, timeout_s=10.0) as client:
        with pytest.raises(KeyError) as caught:
            client.call("echo", "fail")
    assert isinstance(caught.value, RemoteError)
    assert caught.value.remote_type == "KeyError"
    assert "no such thing" in str(caught.value)
    assert "Traceback" in caught.value.remote_traceback

    async def scenario() -> None:
        async with bus_client(master) as (_, client, _):
            try:
                await client.call("echo", "fail")
            except Exception as exc:  # noqa: BLE001 - the type is what is checked
                assert isinstance(exc, KeyError) and isinstance(exc, RemoteError), repr(exc)
            else:
                raise AssertionError("fail() returned")
            # The connection is still good after an error.
            assert await client.call("echo", "echo", 1) == 1
    asyncio.run(asyncio.wait_for(scenario(), 20.0))


def test_unknown_service_and_method_fail_fast(master: Master, echo: EchoNode) -> None:
    with Client(master.address, timeout_s=10.0) as client:
        client.call("broker", "ping")  # connected
        for service, method, error in [("nobody", "echo", NoSuchService),
                                       ("echo", "no_such_method", NoSuchMethod),
                                       ("broker", "no_such_method", NoSuchMethod)]:
            start = time.monotonic()
            with pytest.raises(error):
                client.call(service, method, 1)
            assert time.monotonic() - start < FAST_S, (service, method)

    async def scenario() -> None:
        async with bus_client(master) as (_, client, _):
            await client.call("broker", "ping")
            for service, method, error in [("nobody", "echo", NoSuchService),
                                           ("echo", "no_such_method", NoSuchMethod)]:
                start = time.monotonic()
                with pytest.raises(error):
                    await client.call(service, method)
                assert time.monotonic() - start < FAST_S, (service, method)
    asyncio.run(asyncio.wait_for(scenario(), 20.0))


def test_undeclared_methods_are_not_callable(master: Master, echo: EchoNode) -> None:
    with Client(master.address, timeout_s=10.0) as client:
        declared = client.call("broker", "services")["echo"]
        for method in UNDECLARED:
            assert method not in declared
            with pytest.raises(NoSuchMethod):
                client.call("echo", method)
            # A one-way message to it is dropped too; the service still answers.
            client.send("echo", method)
            assert client.call("echo", "echo", method) == method
