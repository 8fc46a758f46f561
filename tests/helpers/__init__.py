"""Shared helpers of the bus integration tests: echo node processes, masters that a test
may kill, retries with deadlines, numpy-aware struct comparison.

Every wait has a deadline; every process started here is stopped when its ``with``
block ends (SIGCONT first, in case a test left it stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from artiq_bus.broker import BrokerConfig
from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.subscriber import Subscriber
from artiq_bus.protocol import BusError

from conftest import Master, Process

from .compare import describe_difference, same, view

HELPERS = Path(__file__).resolve().parent
ECHO_NODE = HELPERS / "echo_node.py"
ECHO_CALLER = HELPERS / "echo_caller.py"
STALLING_REPLICA = HELPERS / "stalling_replica.py"


class EchoNode(Process):
    """``echo_node.py`` against ``master``'s broker."""

    def __init__(self, master: Master, *extra: str, name: str = "echo"):
        self.name = name
        super().__init__([sys.executable, str(ECHO_NODE), "--control", master.address.control,
                          "--publish", master.address.publish, "--name", name, *extra],
                         HELPERS)

    def wait_ready(self, timeout_s: float = 15.0) -> "EchoNode":
        self.wait_for_line(r"^READY$", timeout_s)
        return self

    def kill(self) -> int:
        """SIGKILL; the exit code (``-SIGKILL``)."""
        self.signal(signal.SIGKILL)
        return self.wait()


@contextlib.contextmanager
def echo_node(master: Master, *extra: str, name: str = "echo") -> Iterator[EchoNode]:
    """A ready echo node; stopped afterwards.  It must exit 0 (or have been killed by
    the test)."""
    node = EchoNode(master, *extra, name=name)
    try:
        node.wait_ready()
        yield node
    finally:
        node.signal(signal.SIGCONT)  # in case the test left it stopped
        code = node.stop()
    assert code in (0, -signal.SIGKILL), f"echo node exited with {code}:\n{node.output()}"


@contextlib.contextmanager
def killable_master(cwd: Path, ports: tuple[int, int, int] | None = None) -> Iterator[Master]:
    """A ready master (on ``ports`` if given) that the test may SIGKILL; stopped
    afterwards, and it must exit 0 unless killed."""
    process = Master(cwd, ports=ports)
    try:
        process.wait_ready()
        yield process
    finally:
        code = process.stop()
    assert code in (0, -signal.SIGKILL), f"master exited with {code}:\n{process.output()}"


@pytest.fixture(scope="module", name="master")
def module_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    """One master for every test of a module (import this into a test module to
    replace conftest's per-test ``master``): for tests that do not hurt it."""
    with pytest.MonkeyPatch.context() as patch:  # as conftest's clean_environ does
        for name in [n for n in os.environ if n.startswith("ARTIQ_BUS_")]:
            patch.delenv(name)
        process = Master(tmp_path_factory.mktemp("master"))
    try:
        process.wait_ready()
        yield process
    finally:
        code = process.stop()
    assert code == 0, process.output()


def ports_of(master: Master) -> tuple[int, int, int]:
    return master.control, master.notify, master.publish


def start_callers(master: Master, tags: list[str], calls: int) -> list[Process]:
    return [Process([sys.executable, str(ECHO_CALLER), "--control", master.address.control,
                     "--tag", tag, "--calls", str(calls)], HELPERS) for tag in tags]


def start_stalling_replica(master: Master, stall_s: float, *extra: str) -> Process:
    return Process([sys.executable, str(STALLING_REPLICA), "--control", master.address.control,
                    "--notify", master.address.notify, "--stall", str(stall_s), *extra],
                   HELPERS)


# -- asyncio side ------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def bus_client(master: Master, *, timeout_s: float = 10.0,
                     subscriber_hwm: int | None = None
                     ) -> AsyncIterator[tuple[zmq.Context, AsyncClient, Subscriber]]:
    """A context, a started AsyncClient and a started Subscriber on ``master``; all closed
    afterwards."""
    context = zmq.Context()
    try:
        client = AsyncClient(master.address, context=context, timeout_s=timeout_s)
        subscriber = Subscriber(master.address.notify, context=context,
                                **({} if subscriber_hwm is None else {"hwm": subscriber_hwm}))
        await client.start()
        try:
            await subscriber.start()
            try:
                yield context, client, subscriber
            finally:
                await subscriber.stop()
        finally:
            await client.stop()
    finally:
        context.destroy(linger=0)


async def call_until_ok(client: AsyncClient, service: str, method: str, *args: Any,
                        timeout_s: float = 10.0) -> Any:
    """``client.call`` repeated until it succeeds (a service still registering);
    AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{service}.{method} did not answer within {timeout_s} s")
        try:
            return await client.call(service, method, *args, timeout_s=min(1.0, remaining))
        except BusError:
            await asyncio.sleep(0.02)  # paces the retries; the reply is what we wait for


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


__all__ = ["EchoNode", "echo_node", "killable_master", "module_master", "ports_of",
           "start_callers", "start_stalling_replica", "bus_client", "call_until_ok",
           "elapsed_since", "same", "view", "describe_difference", "ECHO_NODE",
           "ECHO_CALLER", "STALLING_REPLICA", "HELPERS"]


#: A broker with short heartbeats, for brokers in the test process: a peer silent for
#: 0.1 s × 4 is gone.
FAST_BROKER = BrokerConfig(heartbeat_interval_s=0.1, liveness=4)


def run_bounded(coro: Coroutine[Any, Any, Any], timeout_s: float = 20.0) -> Any:
    """Run ``coro`` in a fresh loop, failing after ``timeout_s``."""
    async def guarded() -> Any:
        async with asyncio.timeout(timeout_s):
            return await coro
    return asyncio.run(guarded())
