"""Request round trip through the broker versus raw ZeroMQ DEALER→ROUTER echo.

Through the bus: this process calls ``echo.echo(i)``; the broker and the echo
ServiceHost run together in one other process (ServiceHost on the broker's inproc
endpoint, as in the master).  Raw: this process's DEALER and a ROUTER echo loop in
another process, both plain blocking pyzmq.  Loopback TCP on random free ports.

Figures: median and p99 of sequential round trips (blocking Client, AsyncClient; target
≤ 2× raw), and calls/s with 100 in flight (AsyncClient + asyncio.gather of 100 calls, vs
100 pipelined DEALER sends then 100 receives; target ≥ 0.5× raw).  Bus and raw are
measured in alternating blocks against servers that stay up, so that drifting load on
the machine hits both alike.

Run: ``python bench/bench_rpc.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq

from _common import CHILD_LIFETIME_S, Report, arecv, children, run, size, summarise_ns

from artiq_bus.broker.broker import Broker, BrokerConfig
from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.sync import Client
from artiq_bus.net import BusAddress
from artiq_bus.runtime.service import ServiceHost
from artiq_bus.runtime.rpc import rpc, rpc_methods

WARMUP = size(500, 20)
CALLS = size(3000, 60)
BLOCKS = 6
IN_FLIGHT = 100
ROUNDS = size(120, 6)
#: Raw messages carry as many bytes as the bus body of ``[[i], {}]``.
RAW_PAYLOAD = b"\x92\x91\xcd\x0b\xb8\x80"
TIMEOUT_S = 10.0


# -- the two servers, each in a process of its own -----------------------------------

class Echo:
    @rpc
    def echo(self, x: Any) -> Any:
        return x


def bus_echo_server(conn: Any) -> None:
    asyncio.run(_bus_echo_server(conn))


async def _bus_echo_server(conn: Any) -> None:
    context = zmq.Context()
    broker = Broker(context, BrokerConfig(control_endpoints=["tcp://127.0.0.1:0"]))
    await broker.start()
    host = ServiceHost(context, broker.inproc, "echo", rpc_methods(Echo()),
                       local=broker)  # as the master runs its nodes
    await host.start()
    try:
        await asyncio.wait_for(host.registered.wait(), TIMEOUT_S)
        conn.send(broker.ports["control"])
        await arecv(conn, CHILD_LIFETIME_S)  # "stop"
    except (EOFError, TimeoutError):
        pass
    finally:
        await host.stop()
        await broker.stop()
        context.term()


def raw_echo_server(conn: Any) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.linger = 0
    sock.rcvtimeo = 200  # look at the pipe for "stop" when idle
    conn.send(sock.bind_to_random_port("tcp://127.0.0.1"))
    while True:
        try:
            sock.send_multipart(sock.recv_multipart())
        except zmq.Again:
            if conn.poll(0):
                break
    sock.close()
    context.term()


# -- the clients, in this process ---------------------------------------------------
#
# The machine is shared and its load drifts, so the bus and the raw figures are measured
# in alternating blocks: a drift hits both alike and the ratios stay meaningful.

class RawClient:
    def __init__(self, port: int):
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvtimeo = int(TIMEOUT_S * 1000)
        self.sock.connect(f"tcp://127.0.0.1:{port}")

    def latency(self, calls: int) -> list[int]:
        sock, clock, samples = self.sock, time.perf_counter_ns, []
        for _ in range(calls):
            start = clock()
            sock.send(RAW_PAYLOAD)
            sock.recv()
            samples.append(clock() - start)
        return samples

    def throughput(self, rounds: int) -> tuple[int, float]:
        sock = self.sock
        start = time.perf_counter()
        for _ in range(rounds):
            for _ in range(IN_FLIGHT):
                sock.send(RAW_PAYLOAD)
            for _ in range(IN_FLIGHT):
                sock.recv()
        return rounds * IN_FLIGHT, time.perf_counter() - start

    def close(self) -> None:
        self.sock.close()
        self.context.term()


class SyncBusClient:
    def __init__(self, address: BusAddress):
        self.context = zmq.Context()
        self.client = Client(address, context=self.context, timeout_s=TIMEOUT_S)

    def latency(self, calls: int) -> list[int]:
        call, clock, samples = self.client.call, time.perf_counter_ns, []
        for i in range(calls):
            start = clock()
            result = call("echo", "echo", i)
            samples.append(clock() - start)
            assert result == i, (result, i)
        return samples

    def close(self) -> None:
        self.client.close()
        self.context.term()


class AsyncBusClient:
    """An AsyncClient on a loop of its own, run only while a block is measured."""

    def __init__(self, address: BusAddress):
        self.context = zmq.Context()
        self.loop = asyncio.new_event_loop()
        self.client = AsyncClient(address, context=self.context, timeout_s=TIMEOUT_S)
        self.loop.run_until_complete(self.client.start())

    def latency(self, calls: int) -> list[int]:
        async def run() -> list[int]:
            call, clock, samples = self.client.call, time.perf_counter_ns, []
            for i in range(calls):
                start = clock()
                result = await call("echo", "echo", i)
                samples.append(clock() - start)
                assert result == i, (result, i)
            return samples
        return self.loop.run_until_complete(run())

    def throughput(self, rounds: int) -> tuple[int, float]:
        async def run() -> tuple[int, float]:
            call = self.client.call
            start = time.perf_counter()
            for _ in range(rounds):
                results = await asyncio.gather(*(call("echo", "echo", i)
                                                 for i in range(IN_FLIGHT)))
                assert results == list(range(IN_FLIGHT))
            return rounds * IN_FLIGHT, time.perf_counter() - start
        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.stop())
        self.loop.close()
        self.context.term()


def rate(parts: list[tuple[int, float]]) -> float:
    return sum(n for n, _ in parts) / sum(t for _, t in parts)


def measure(report: Report) -> None:
    report.info.update(warmup=WARMUP, calls=CALLS, blocks=BLOCKS, in_flight=IN_FLIGHT,
                       rounds=ROUNDS)
    with children() as start:
        raw_server = start(raw_echo_server)
        bus_server = start(bus_echo_server)
        raw = RawClient(raw_server.recv(TIMEOUT_S))
        address = BusAddress.from_host("127.0.0.1", bus_server.recv(TIMEOUT_S), 1, 1)
        sync, aio = SyncBusClient(address), AsyncBusClient(address)
        try:
            samples: dict[str, list[int]] = {"raw": [], "sync": [], "aio": []}
            for client in (raw, sync, aio):
                client.latency(WARMUP)
            for _ in range(BLOCKS):
                for name, client in (("raw", raw), ("sync", sync), ("aio", aio)):
                    samples[name] += client.latency(CALLS // BLOCKS)
            raw.throughput(ROUNDS // BLOCKS)
            aio.throughput(ROUNDS // BLOCKS)
            raw_parts, bus_parts = [], []
            for _ in range(BLOCKS):
                raw_parts.append(raw.throughput(ROUNDS // BLOCKS))
                bus_parts.append(aio.throughput(ROUNDS // BLOCKS))
        finally:
            for client in (raw, sync, aio):
                client.close()

    raw_stats = summarise_ns(samples["raw"])
    for label, name in (("Client", "sync"), ("AsyncClient", "aio")):
        bus_stats = summarise_ns(samples[name])
        for stat in ("median", "p99"):
            report.add(f"rtt {stat} ({label})", "us", bus_stats[f"{stat}_us"],
                       raw_stats[f"{stat}_us"], 2.0, higher_is_better=False)
    report.add(f"calls/s, {IN_FLIGHT} in flight (AsyncClient)", "calls/s",
               rate(bus_parts), rate(raw_parts), 0.5, higher_is_better=True)


if __name__ == "__main__":
    run("bench_rpc: request round trip, broker+service process vs raw DEALER/ROUTER", measure)
