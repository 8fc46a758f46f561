"""An 8 MB float64 array, node → broker → Replica, versus raw zero-copy PUB→SUB.

Through the bus: one process holds a broker, a StructOwner and its ServiceHost; it sets
``owner.setitem("array", a)`` with ``a`` a 1e6-element float64 array whose element 0 is
``time.time()`` at the set.  A Replica in another process acknowledges every array it
holds, straight to the node over a pipe.  Raw: a PUB process sends the same 8 MB buffer
(``copy=False``) to a SUB process that reads it in place (``copy=False``) and
acknowledges it the same way.

Latency: one array at a time, ``time.time()`` at the receiver once it holds the array
(for the bus: after the replica applied it) minus element 0; both processes run on one
machine, so one clock.  Throughput: arrays/s with ``WINDOW`` unacknowledged arrays in
flight, from the first send to the last acknowledgement (the window bounds ZeroMQ's
queues, which count messages, not bytes).  Bus and raw alternate rounds (the machine is
shared); each reports its best round.  Target: bus throughput ≥ 0.5× raw; latency is
shown beside raw's with a ≤ 2× target.

Run: ``python bench/bench_array.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from _common import (CHILD_LIFETIME_S, SPAWN, Child, Report, arecv, children, recv, run,
                     size)

from artiq_bus.broker.broker import Broker, BrokerConfig
from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.replica import Replica
from artiq_bus.client.subscriber import Subscriber
from artiq_bus.net import BusAddress
from artiq_bus.runtime.service import ServiceHost
from artiq_bus.runtime.structs import Publisher, StructOwner, struct_methods

ELEMENTS = 1_000_000  # float64: 8 MB
LATENCY_ARRAYS = size(15, 2)
THROUGHPUT_ARRAYS = size(24, 8)
WINDOW = 4
ROUNDS = size(5, 1)
STRUCT = "bench"
TIMEOUT_S = 20.0


class ArrayPool:
    """Arrays in rotation, stamped with ``time.time()`` in element 0 when taken.  With
    at most ``WINDOW`` unacknowledged, an array is reused only after it arrived."""

    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self._arrays = [rng.random(ELEMENTS) for _ in range(WINDOW + 2)]
        self._taken = 0

    def take(self) -> np.ndarray:
        array = self._arrays[self._taken % len(self._arrays)]
        self._taken += 1
        # A struct makes the arrays it publishes read-only (ZeroMQ sends them from
        # their own memory, later).  This one arrived long ago and the struct holds a
        # newer one: nobody reads it any more, so it may be written again.
        array.flags.writeable = True
        array[0] = time.time()
        return array


async def send_round(send: Callable[[], None], ack: Callable[[], Any], count: int,
                     window: int) -> float:
    """Send ``count`` arrays, at most ``window`` unacknowledged; seconds it took."""
    start = time.perf_counter()
    sent = acked = 0
    while acked < count:
        while sent < count and sent - acked < window:
            send()
            sent += 1
            await asyncio.sleep(0)  # the bus publishes when its loop comes round
        await ack()
        acked += 1
    return time.perf_counter() - start


# -- through the bus ----------------------------------------------------------------

def bus_node(conn: Any, acks: Any) -> None:
    asyncio.run(_bus_node(conn, acks))


async def _bus_node(conn: Any, acks: Any) -> None:
    context = zmq.Context()
    tcp = ["tcp://127.0.0.1:0"]
    broker = Broker(context, BrokerConfig(control_endpoints=tcp, notify_endpoints=tcp,
                                          publish_endpoints=tcp))
    await broker.start()
    publisher = Publisher(context, broker.inproc.publish)
    owner = StructOwner(STRUCT, publisher, heartbeat_interval_s=0.5)
    await owner.start()
    host = ServiceHost(context, broker.inproc, STRUCT, struct_methods(owner))
    await host.start()
    pool = ArrayPool()
    try:
        await asyncio.wait_for(host.registered.wait(), TIMEOUT_S)
        conn.send(broker.ports)
        while (command := await arecv(conn, CHILD_LIFETIME_S)) != "end":
            count, window = command
            conn.send(await send_round(lambda: owner.setitem("array", pool.take()),
                                       lambda: arecv(acks, TIMEOUT_S), count, window))
        await arecv(conn, CHILD_LIFETIME_S)  # "stop"
    except (EOFError, TimeoutError):
        pass
    finally:
        await host.stop()
        await owner.stop()
        publisher.close()
        await broker.stop()
        context.term()


def bus_replica(conn: Any, acks: Any, ports: dict[str, int]) -> None:
    asyncio.run(_bus_replica(conn, acks, ports))


async def _bus_replica(conn: Any, acks: Any, ports: dict[str, int]) -> None:
    context = zmq.Context()
    address = BusAddress.from_host("127.0.0.1", ports["control"], ports["notify"],
                                   ports["publish"])
    client = AsyncClient(address, context=context, timeout_s=TIMEOUT_S)
    subscriber = Subscriber(address.notify, context=context)
    await client.start()
    await subscriber.start()
    latencies: list[float] = []

    def listener(update: dict[str, Any]) -> None:
        if update["action"] == "setitem" and update["key"] == "array":
            array = update["value"]
            latencies.append(time.time() - array[0])
            if array.shape != (ELEMENTS,):
                raise RuntimeError(f"array of shape {array.shape}")
            acks.send(len(latencies))

    replica = Replica(client, subscriber, STRUCT, listener=listener)
    try:
        await replica.start(TIMEOUT_S)
        conn.send("ready")
        while await arecv(conn, CHILD_LIFETIME_S) == "report":
            conn.send({"latencies": latencies[:], "resyncs": replica.resyncs,
                       "dtype": str(replica.value["array"].dtype)})
            latencies.clear()
    except (EOFError, TimeoutError):
        pass
    finally:
        await replica.stop()
        await subscriber.stop()
        await client.stop()
        context.term()


# -- raw ZeroMQ ---------------------------------------------------------------------

def raw_publisher(conn: Any, acks: Any) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    sock.linger = 0
    conn.send(sock.bind_to_random_port("tcp://127.0.0.1"))
    while not conn.poll(0.01):  # probes until the subscriber is known to be connected
        sock.send(b"p")
    pool = ArrayPool()

    async def ack() -> None:
        recv(acks, TIMEOUT_S)

    while (command := recv(conn, CHILD_LIFETIME_S)) != "end":
        if command == "go":
            continue  # the end of the probes
        count, window = command
        conn.send(asyncio.run(send_round(
            lambda: sock.send(memoryview(pool.take()), copy=False), ack, count, window)))
    sock.close()
    context.term()


def raw_subscriber(conn: Any, acks: Any, port: int) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.subscribe(b"")
    sock.rcvtimeo = int(TIMEOUT_S * 1000)
    while sock.recv() != b"p":
        pass
    conn.send("ready")
    latencies: list[float] = []
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(conn.fileno(), zmq.POLLIN)
    while True:
        events = dict(poller.poll(int(CHILD_LIFETIME_S * 1000)))
        if sock in events:
            frame = sock.recv(copy=False)
            if len(frame) == ELEMENTS * 8:
                array = np.frombuffer(frame.buffer, dtype=np.float64)  # no copy
                latencies.append(time.time() - array[0])
                acks.send(len(latencies))
        elif conn.fileno() in events:
            if conn.recv() != "report":
                break
            conn.send({"latencies": latencies[:]})
            latencies.clear()
        else:
            break
    sock.close()
    context.term()


# -- main ---------------------------------------------------------------------------

def run_round(sender: Child, receiver: Child, count: int, window: int) -> dict[str, Any]:
    sender.send((count, window))
    elapsed = sender.recv(TIMEOUT_S * 2)
    receiver.send("report")
    report = receiver.recv(TIMEOUT_S)
    if len(report["latencies"]) != count:
        raise RuntimeError(f"{len(report['latencies'])} of {count} arrays arrived")
    return {"rate": count / elapsed,
            "latency_ms": float(statistics.median(report["latencies"])) * 1e3,
            **{k: v for k, v in report.items() if k != "latencies"}}


def start_pair(start: Callable[..., Child], sender: Callable[..., None],
               receiver: Callable[..., None]) -> tuple[Child, Child]:
    ack_in, ack_out = SPAWN.Pipe(duplex=False)
    send_child = start(sender, ack_in)
    address = send_child.recv(TIMEOUT_S)
    receive_child = start(receiver, ack_out, address)
    ack_in.close()
    ack_out.close()
    if receive_child.recv(TIMEOUT_S) != "ready":
        raise RuntimeError(f"{receiver.__name__} not ready")
    return send_child, receive_child


def measure(report: Report) -> None:
    rounds: dict[str, list[dict[str, Any]]] = {"raw_lat": [], "bus_lat": [], "raw_tp": [],
                                               "bus_tp": []}
    with children() as start:
        raw = start_pair(start, raw_publisher, raw_subscriber)
        raw[0].send("go")  # the probes stop
        bus = start_pair(start, bus_node, bus_replica)
        for pair in (raw, bus):  # warm-up: buffers, page faults, TCP windows
            run_round(*pair, THROUGHPUT_ARRAYS // 2, WINDOW)
        for _ in range(ROUNDS):
            for name, pair in (("raw", raw), ("bus", bus)):
                rounds[f"{name}_lat"].append(run_round(*pair, LATENCY_ARRAYS, 1))
                rounds[f"{name}_tp"].append(run_round(*pair, THROUGHPUT_ARRAYS, WINDOW))
        for child in (*raw, *bus):
            child.send("end")
    resyncs = max(r["resyncs"] for r in rounds["bus_lat"] + rounds["bus_tp"]) - 1
    if resyncs:
        raise RuntimeError(f"the replica resynchronised {resyncs} times: arrays lost")
    latency = {name: min(r["latency_ms"] for r in rounds[f"{name}_lat"])
               for name in ("raw", "bus")}
    rate = {name: max(r["rate"] for r in rounds[f"{name}_tp"]) for name in ("raw", "bus")}
    report.info.update(
        array_bytes=ELEMENTS * 8, latency_arrays_per_round=LATENCY_ARRAYS,
        throughput_arrays_per_round=THROUGHPUT_ARRAYS, window=WINDOW, rounds=ROUNDS,
        **{f"{key}_rounds": [round(r["rate" if key.endswith("tp") else "latency_ms"], 2)
                             for r in value] for key, value in rounds.items()},
        bus_resyncs=resyncs, replica_dtype=rounds["bus_tp"][-1]["dtype"])
    report.add("array latency median, best round", "ms", latency["bus"], latency["raw"], 2.0,
               higher_is_better=False)
    report.add(f"arrays/s, {WINDOW} in flight, best round", "arrays/s", rate["bus"],
               rate["raw"], 0.5, higher_is_better=True)
    report.add(f"MB/s, {WINDOW} in flight, best round", "MB/s", rate["bus"] * ELEMENTS * 8e-6,
               rate["raw"] * ELEMENTS * 8e-6, 0.5, higher_is_better=True)


if __name__ == "__main__":
    run("bench_array: 8 MB float64 array node → broker → Replica vs raw zero-copy PUB→SUB",
        measure)
