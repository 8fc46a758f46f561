"""Faults with real processes: a service killed, restarted or hung (SIGSTOP), the broker
killed and restarted on the same ports, a deadline passing.  Every failure must reach
the caller as its own error type, and soon: by the liveness rules, not at the caller's
deadline.

Timing (the master's and the services' defaults): heartbeats every 0.5 s, a peer silent
for 4 of them (2 s) is dead; ZeroMQ's own ping gives up on a connection after 3 s.

The tests share one master (each starts its own echo node); the broker restart test
runs masters of its own.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.replica import Replica
from artiq_bus.client.sync import Client
from artiq_bus.protocol import DeadlineExceeded, NoSuchService, ServiceDied, Unavailable

from conftest import Master
from helpers import (EchoNode, bus_client, call_until_ok, echo_node, elapsed_since,
                     killable_master, ports_of, same)
from helpers import module_master  # noqa: F401  (this module's `master` fixture)

#: How long a caller may wait for news of a dead peer (liveness plus slack).
DEATH_NOTICED_S = 3.0
#: A hung peer is noticed by liveness (2 s, plus a heartbeat period and slack).
HANG_NOTICED_S = 4.0
#: Recovering after a restart: reconnecting, registering again, resynchronising.
RECOVERY_S = 5.0
#: An answer that needs no waiting (about a millisecond; generous for a busy machine).
FAST_S = 0.5
#: How long the broker stays away in the restart test: several reconnection attempts.
OUTAGE_S = 5.0
#: The deadline of the calls that should fail long before it.
LONG_S = 30.0


@pytest.fixture
def echo(master: Master) -> Iterator[EchoNode]:
    with echo_node(master) as node:
        yield node


async def start_slow_calls(client: AsyncClient, count: int) -> list[asyncio.Future[object]]:
    """``count`` calls that would take a minute; returns once the service has them."""
    # ``request`` sends before it returns (``call`` would send only once its task runs):
    # requests on one connection reach the service in order, so once "after" is
    # answered, the service has started every slow call.
    calls = [client.request("echo", "sleep_echo", i, 60.0, timeout_s=LONG_S)
             for i in range(count)]
    assert await client.call("echo", "echo", "after") == "after"
    assert not any(call.done() for call in calls)
    return calls


def test_killed_service_fails_calls_in_flight(master: Master, echo: EchoNode) -> None:
    async def scenario() -> None:
        async with bus_client(master, timeout_s=LONG_S) as (_, client, _):
            calls = await start_slow_calls(client, 20)
            killed = time.monotonic()
            echo.kill()
            results = await asyncio.gather(*calls, return_exceptions=True)
            waited = elapsed_since(killed)
            assert all(isinstance(r, ServiceDied) for r in results), results
            assert waited < DEATH_NOTICED_S, waited
            for _ in range(3):
                start = time.monotonic()
                with pytest.raises((NoSuchService, ServiceDied)):
                    await client.call("echo", "echo", 1)
                assert elapsed_since(start) < FAST_S
            assert "echo" not in await client.call("broker", "services")
    asyncio.run(asyncio.wait_for(scenario(), 30.0))


def test_restarted_service_serves_again(master: Master) -> None:
    async def scenario() -> None:
        async with bus_client(master) as (_, client, _):
            with echo_node(master) as first:
                assert await client.call("echo", "pid") == first.popen.pid
                first.kill()
            with pytest.raises((NoSuchService, ServiceDied)):
                await client.call("echo", "pid")
            with echo_node(master) as second:
                # READY means registered: the same client calls the new process at once.
                assert await client.call("echo", "pid") == second.popen.pid
                replies = await asyncio.gather(*(client.call("echo", "sleep_echo", i, 0.01)
                                                 for i in range(100)))
                assert replies == list(range(100))
            assert master.popen.poll() is None  # nothing else was restarted
    asyncio.run(asyncio.wait_for(scenario(), 30.0))


def test_deadline_exceeded_at_the_deadline(master: Master, echo: EchoNode) -> None:
    deadline_s = 0.5

    async def scenario() -> None:
        async with bus_client(master) as (_, client, _):
            start = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await client.call("echo", "sleep_echo", 1, 10.0, timeout_s=deadline_s)
            waited = elapsed_since(start)
            assert deadline_s - 0.05 <= waited < deadline_s + 1.0, waited
            assert await client.call("echo", "echo", 2) == 2  # the service is fine
    asyncio.run(asyncio.wait_for(scenario(), 20.0))

    with Client(master.address) as client:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.call("echo", "sleep_echo", "late", 0.7, timeout_s=deadline_s)
        waited = elapsed_since(start)
        assert deadline_s - 0.05 <= waited < deadline_s + 1.0, waited
        # The late reply (or the broker's deadline error) for the first call may arrive
        # during the next one: the next call still gets its own reply.
        assert client.call("echo", "sleep_echo", "next", 0.6, timeout_s=5.0) == "next"
        assert client.call("echo", "echo", "last") == "last"


def test_hung_service_is_dropped_then_comes_back(master: Master, echo: EchoNode) -> None:
    async def scenario() -> None:
        async with bus_client(master, timeout_s=LONG_S) as (_, client, _):
            calls = await start_slow_calls(client, 5)
            echo.signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                results = await asyncio.gather(*calls, return_exceptions=True)
                waited = elapsed_since(stopped)
                assert all(isinstance(r, ServiceDied) for r in results), results
                # Noticed by liveness: not at once, and long before the calls' deadline.
                assert 1.0 < waited < HANG_NOTICED_S, waited
                assert "echo" not in await client.call("broker", "services")
                start = time.monotonic()
                with pytest.raises(NoSuchService):
                    await client.call("echo", "echo", 1)
                assert elapsed_since(start) < FAST_S
            finally:
                echo.signal(signal.SIGCONT)
            resumed = time.monotonic()
            assert await call_until_ok(client, "echo", "pid",
                                       timeout_s=RECOVERY_S) == echo.popen.pid
            assert elapsed_since(resumed) < RECOVERY_S
            assert await client.call("echo", "sleep_echo", "again", 0.01) == "again"
    asyncio.run(asyncio.wait_for(scenario(), 30.0))


def test_restarted_broker(tmp_path: Path) -> None:
    """SIGKILL the master and start a new one on the same ports: the echo node registers
    again, and the test's client and replica recover, with nothing restarted by hand."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    with killable_master(first_dir) as first, \
            echo_node(first, "--struct", "data") as node:

        async def scenario() -> None:
            async with bus_client(first, timeout_s=LONG_S) as (_, client, subscriber):
                replica = Replica(client, subscriber, "data", service="echo")
                await replica.start(timeout_s=10.0)
                try:
                    expected = await client.call("echo", "apply_random", 1, 300)
                    await replica.wait_for(lambda value: same(value, expected), 10.0)
                    resyncs = replica.resyncs

                    in_flight = await start_slow_calls(client, 3)
                    first.signal(signal.SIGKILL)
                    killed = time.monotonic()
                    results = await asyncio.wait_for(
                        asyncio.gather(*in_flight, return_exceptions=True), 10.0)
                    assert all(isinstance(r, Unavailable) for r in results), results
                    assert elapsed_since(killed) < DEATH_NOTICED_S
                    assert first.wait() == -signal.SIGKILL
                    # an outage long enough for the node to try again a few times
                    await asyncio.sleep(OUTAGE_S)

                    with killable_master(second_dir, ports=ports_of(first)) as second:
                        restarted = time.monotonic()
                        assert await call_until_ok(client, "echo", "pid",
                                                   timeout_s=RECOVERY_S) == node.popen.pid
                        await replica.wait_for(lambda _: replica.resyncs > resyncs,
                                               RECOVERY_S)
                        assert elapsed_since(restarted) < RECOVERY_S
                        expected = await client.call("echo", "apply_random", 2, 300)
                        await replica.wait_for(lambda value: same(value, expected),
                                               RECOVERY_S)
                        assert await client.call("master", "get_name") is None
                        assert second.popen.poll() is None
                    # said once for the outage, not at every attempt
                    output = node.output()
                    assert output.count("broker lost") == 1, output
                finally:
                    await replica.stop()
        asyncio.run(asyncio.wait_for(scenario(), 60.0))
