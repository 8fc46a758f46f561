"""Datasets from an experiment to a subscriber: mutations per second, and a large array.

A real ``artiq_master`` (its own process) runs a real experiment in a worker; this
process holds a ``Replica`` of the datasets folder ``bench.`` (as a dashboard or an
applet would) and counts what arrives.

* ``mutate_dataset`` rate: the experiment broadcasts ``bench.m`` (1000 float64) and then
  calls ``mutate_dataset("bench.m", i % 1000, i)`` ``MUTATIONS`` times as fast as it can,
  after broadcasting ``bench.start = time.time()``.  The figure is ``MUTATIONS`` divided
  by the time from ``bench.start`` to the arrival of the last mutation at the replica;
  every mutation must arrive (a run of them travels as one ``setitems`` update: the
  replica's listener records each index and value), in order, with its own index
  and value (checked after the clock stops), with no resynchronisation, and the replica
  must end equal to the expected array.  Raw limit:
  a PUB process sending the same updates, each msgpack-packed beforehand in its own
  one-frame message (topic and body), to a SUB process that drains them in batches and
  unpacks each (pyzmq + msgpack, nothing of this package): the limit of one message
  per call, which the bus beats by sending a run of calls as one update.
* 1e6-element float64 ``set_dataset(broadcast=True)``: element 0 holds ``time.time()``;
  the experiment measures how long the call blocks it, the replica when the array is
  applied.  ``ARRAYS`` arrays, 50 ms apart; medians.  Raw limit: the same 8 MB buffer
  PUB → SUB, zero-copy both ends, latency of one message.

Targets (DESIGN §9), absolute: ≥ 200,000 mutations/s; blocked ≤ 5 ms; subscriber has
it ≤ 20 ms (ARTIQ: 4,400/s, 195 ms, 266 ms on this kind of machine).

Run: ``python bench/bench_datasets.py``.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
from _common import Report, children, run, size

from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.replica import Replica
from artiq_bus.client.subscriber import Subscriber
from artiq_bus.net import BusAddress

READY_LINE = "ARTIQ master is now ready."
MUTATIONS = size(300_000, 3_000)
ARRAYS = size(15, 2)
ARRAY_SIZE = 1_000_000
TIMEOUT_S = 60.0

EXPERIMENT = '''\
import time
import numpy as np
from artiq.experiment import *


class Bench(EnvExperiment):
    def build(self):
        self.setattr_argument("mode", StringValue("mutate"))
        self.setattr_argument("n", NumberValue(0, precision=0, step=1))

    def run(self):
        getattr(self, self.mode)(int(self.n))

    def mutate(self, n):
        self.set_dataset("bench.m", np.zeros(1000), broadcast=True)
        self.set_dataset("bench.start", time.time(), broadcast=True)
        mutate = self.mutate_dataset
        start = time.perf_counter()
        for i in range(n):
            mutate("bench.m", i % 1000, i)
        self.set_dataset("bench.loop_s", time.perf_counter() - start, broadcast=True)
        self.set_dataset("bench.done", n, broadcast=True)

    def arrays(self, n):
        blocked = []
        for _ in range(n):
            array = np.random.random(1_000_000)
            array[0] = time.time()
            start = time.perf_counter()
            self.set_dataset("bench.arr", array, broadcast=True)
            blocked.append(time.perf_counter() - start)
            time.sleep(0.05)  # pacing: one array at a time reaches the subscriber
        self.set_dataset("bench.blocked", blocked, broadcast=True)
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_master(directory: Path) -> tuple[subprocess.Popen[str], BusAddress]:
    (directory / "device_db.py").write_text("device_db = {}\n")
    ports = [_free_port() for _ in range(3)]
    process = subprocess.Popen(
        [sys.executable, "-m", "artiq_bus.frontend.artiq_master", "-q",
         "--port-control", str(ports[0]), "--port-notify", str(ports[1]),
         "--port-publish", str(ports[2])],
        cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    for line in process.stdout:
        if READY_LINE in line:
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, BusAddress.from_host("127.0.0.1", *ports)
    raise RuntimeError(f"the master exited ({process.wait()}) before it was ready")


class Watch:
    """The replica's view of the benchmark: mutation count, arrival times, and every
    index and value received (checked once the clock has stopped)."""

    def __init__(self) -> None:
        self.mutations = 0
        self.last_mutation = 0.0
        self.array_latencies: list[float] = []
        self.received: list[tuple[list[Any], list[Any]]] = []

    def reset(self) -> None:
        self.mutations = 0
        self.received = []

    def __call__(self, update: dict[str, Any]) -> None:
        now = time.time()
        path = update.get("path")
        if path == ["bench.m", 1]:
            if update["action"] == "setitems":
                self.received.append((update["keys"], update["values"]))
                self.mutations += len(update["keys"])
            else:
                self.received.append(([update["key"]], [update["value"]]))
                self.mutations += 1
            self.last_mutation = now
        elif path == [] and update.get("key") == "bench.arr" and update["action"] == "setitem":
            self.array_latencies.append(now - float(update["value"][1][0]))


async def through_bus(address: BusAddress, experiment: Path) -> dict[str, Any]:
    watch = Watch()
    async with AsyncClient(address, timeout_s=TIMEOUT_S) as client:
        subscriber = Subscriber(address.notify)
        await subscriber.start()
        replica = Replica(client, subscriber, "datasets", key_filter="bench.", listener=watch)
        await replica.start()
        try:
            async def submit(mode: str, n: int, until: str) -> None:
                expid = {"log_level": 30, "class_name": None, "file": str(experiment),
                         "arguments": {"mode": mode, "n": n}}
                await client.call("scheduler", "submit", "main", expid, 0, None, False)
                await replica.wait_for(lambda s: until in s, TIMEOUT_S)

            await submit("mutate", size(20_000, 2_000), "bench.done")  # warm-up: worker, imports
            await client.call("datasets", "delete", "bench.done")
            watch.reset()
            await submit("mutate", MUTATIONS, "bench.done")
            await replica.wait_for(lambda s: watch.mutations >= MUTATIONS, TIMEOUT_S)
            expected = np.zeros(1000)
            for i in range(MUTATIONS - 1000, MUTATIONS):
                expected[i % 1000] = i
            result = {"mutations": watch.mutations, "resyncs": replica.resyncs,
                      "in_order": in_order(watch.received),
                      "equal": bool(np.array_equal(replica.value["bench.m"][1], expected)),
                      "rate": MUTATIONS / (watch.last_mutation - replica.value["bench.start"][1])}
            await submit("arrays", ARRAYS, "bench.blocked")
            result["loop_s"] = replica.value["bench.loop_s"][1]
            result["blocked"] = replica.value["bench.blocked"][1]
            result["latencies"] = watch.array_latencies
            return result
        finally:
            await replica.stop()
            await subscriber.stop()


def in_order(received: list[tuple[list[Any], list[Any]]]) -> bool:
    """Whether the writes received are exactly ``[i % 1000] = i`` for i = 0, 1, ...:
    none lost, none repeated, none out of order."""
    keys = [key for run_keys, _ in received for key in run_keys]
    values = [value for _, run_values in received for value in run_values]
    return (keys == [i % 1000 for i in range(MUTATIONS)]
            and values == list(range(MUTATIONS)))


# -- raw limits -----------------------------------------------------------------------------

RAW_TOPIC = b"struct\0datasets\0bench.m\0"


def _raw_publisher(conn: Any, endpoint: str, count: int) -> None:
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.sndhwm = 0
    pub.bind(endpoint)
    conn.send("ready")
    conn.recv()  # the subscriber is connected
    # Packed beforehand (packing is the producer's work, not ZeroMQ's), topic and body
    # in one frame (SUB filters on the frame's prefix): the most a PUB socket carries.
    messages = [RAW_TOPIC + msgpack.packb({"action": "setitem", "path": ["bench.m", 1],
                                           "key": i % 1000, "value": i})
                for i in range(count)]
    send = pub.send
    conn.send(time.time())
    for message in messages:
        send(message)
    conn.recv()
    context.destroy(linger=0)


def raw_messages_per_s(start_child: Any) -> float:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    child = start_child(_raw_publisher, endpoint, MUTATIONS, name="raw-pub")
    child.recv(TIMEOUT_S)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.rcvhwm = 0
    sub.subscribe(b"struct\0")
    sub.connect(endpoint)
    time.sleep(0.3)  # a PUB drops until the subscription arrives: no probe in raw ZeroMQ
    child.send("go")
    started = child.recv(TIMEOUT_S)
    received, recv, unpackb = 0, sub.recv, msgpack.unpackb
    while received < MUTATIONS:  # wait once, then drain everything ready
        if not sub.poll(TIMEOUT_S * 1000):
            raise TimeoutError(f"raw: {received} of {MUTATIONS} messages arrived")
        while True:
            try:
                message = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            unpackb(memoryview(message)[len(RAW_TOPIC):])
            received += 1
    rate = MUTATIONS / (time.time() - started)
    child.send("done")
    context.destroy(linger=0)
    return rate


def _raw_array_publisher(conn: Any, endpoint: str, count: int) -> None:
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.bind(endpoint)
    conn.send("ready")
    conn.recv()
    for _ in range(count):
        array = np.random.random(ARRAY_SIZE)
        array[0] = time.time()
        pub.send_multipart([b"arr", array], copy=False)
        conn.recv()  # one at a time
    context.destroy(linger=0)


def raw_array_latency_s(start_child: Any) -> float:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    child = start_child(_raw_array_publisher, endpoint, ARRAYS, name="raw-array-pub")
    child.recv(TIMEOUT_S)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.subscribe(b"arr")
    sub.connect(endpoint)
    time.sleep(0.3)  # see raw_messages_per_s
    child.send("go")
    latencies = []
    for _ in range(ARRAYS):
        frames = sub.recv_multipart(copy=False)
        array = np.frombuffer(frames[1].buffer, dtype=np.float64)
        latencies.append(time.time() - array[0])
        child.send("next")
    context.destroy(linger=0)
    return statistics.median(latencies)


def body(report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as temp:
        directory = Path(temp)
        experiment = directory / "bench_experiment.py"
        experiment.write_text(EXPERIMENT)
        master, address = start_master(directory)
        try:
            bus = asyncio.run(through_bus(address, experiment))
        finally:
            master.terminate()
            master.wait(TIMEOUT_S)
    with children() as start_child:
        raw_rate = raw_messages_per_s(start_child)
        raw_latency = raw_array_latency_s(start_child)
    if (bus["mutations"] != MUTATIONS or bus["resyncs"] != 1 or not bus["equal"]
            or not bus["in_order"]):
        raise AssertionError(f"mutations lost: {bus['mutations']} of {MUTATIONS} arrived, "
                             f"{bus['resyncs']} snapshots, each in order: "
                             f"{bus['in_order']}, final array equal: {bus['equal']}")
    blocked_ms = statistics.median(bus["blocked"]) * 1e3
    latency_ms = statistics.median(bus["latencies"]) * 1e3
    report.info.update({"mutations": MUTATIONS, "arrays": ARRAYS,
                        # where the time goes: the experiment's own loop alone
                        "experiment_loop_calls_per_s": round(MUTATIONS / bus["loop_s"]),
                        "blocked_max_ms": round(max(bus["blocked"]) * 1e3, 2),
                        "array_latency_max_ms": round(max(bus["latencies"]) * 1e3, 2)})
    report.add("mutate_dataset reaching a subscriber", "calls/s", bus["rate"], raw_rate,
               200_000, higher_is_better=True, absolute=True)
    report.add("1e6 float64 broadcast: experiment blocked", "ms", blocked_ms,
               raw_latency * 1e3, 5.0, higher_is_better=False, absolute=True)
    report.add("1e6 float64 broadcast: subscriber has it", "ms", latency_ms,
               raw_latency * 1e3, 20.0, higher_is_better=False, absolute=True)


if __name__ == "__main__":
    run("datasets", body, deadline_s=240.0)
