"""Small struct updates per second, node → broker → Replica, versus raw PUB→SUB.

Through the bus: one process holds a broker, a StructOwner and its ServiceHost (as a
node embedded in the master would); it makes ``UPDATES`` small updates (appends of
ints to four list keys, setitems of floats on four scalar keys), yielding to its loop
every ``YIELD_EVERY`` updates.  A Replica in another process counts every update it
applies; at the end its value must equal the owner's, with no resynchronisation (no
update lost).  Raw: a PUB process sends ``RAW_MESSAGES`` 16-byte messages as fast as
it can to a SUB process that counts what arrives (ZeroMQ may drop at its high-water
mark; only what arrives counts).

Both rates are counted over the same span: from the sender's first send to the
receiver's last receipt (``time.time()`` on one machine).  Bus and raw alternate
``ROUNDS`` rounds against processes that stay up (the machine is shared and its load
drifts); each side reports its best round.  Target: bus ≥ 0.5× raw.

Run: ``python bench/bench_updates.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq

from _common import CHILD_LIFETIME_S, Child, Report, arecv, children, recv, run, size

from artiq_bus.broker.broker import Broker, BrokerConfig
from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.replica import Replica
from artiq_bus.client.subscriber import Subscriber
from artiq_bus.net import BusAddress
from artiq_bus.runtime.service import ServiceHost
from artiq_bus.runtime.structs import Publisher, StructOwner, struct_methods

UPDATES = size(150_000, 5_000)
ROUNDS = size(4, 1)
YIELD_EVERY = 500
LIST_KEYS = [f"scan.y{k}" for k in range(4)]
SCALAR_KEYS = [f"scan.x{k}" for k in range(4)]
RAW_MESSAGES = size(500_000, 10_000)
RAW_PAYLOAD = b"d" + bytes(15)
RAW_HWM = 100_000
STRUCT = "bench"
TIMEOUT_S = 30.0


# -- through the bus ----------------------------------------------------------------
#
# The machine is shared and its load drifts, so bus and raw run in alternating rounds
# (the processes stay up between rounds) and each reports its best round.

def bus_node(conn: Any) -> None:
    asyncio.run(_bus_node(conn))


async def _bus_node(conn: Any) -> None:
    context = zmq.Context()
    tcp = ["tcp://127.0.0.1:0"]
    broker = Broker(context, BrokerConfig(control_endpoints=tcp, notify_endpoints=tcp,
                                          publish_endpoints=tcp))
    await broker.start()
    publisher = Publisher(context, broker.inproc.publish)
    owner = StructOwner(STRUCT, publisher, {key: [] for key in LIST_KEYS},
                        heartbeat_interval_s=0.5)
    await owner.start()
    host = ServiceHost(context, broker.inproc, STRUCT, struct_methods(owner))
    await host.start()
    try:
        await asyncio.wait_for(host.registered.wait(), TIMEOUT_S)
        conn.send(broker.ports)
        while await arecv(conn, CHILD_LIFETIME_S) == "go":
            start = time.time()
            for i in range(UPDATES):
                k = i % 8
                if k < 4:
                    owner.update({"action": "append", "path": [LIST_KEYS[k]], "x": i})
                else:
                    owner.setitem(SCALAR_KEYS[k - 4], i * 0.5)
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # let the owner publish and the broker serve
            owner.flush()
            conn.send({"start": start, "made_s": time.time() - start, "seq": owner.seq,
                       "dropped": publisher.dropped})
        conn.send(owner.data)
        await arecv(conn, CHILD_LIFETIME_S)  # "stop"
    except (EOFError, TimeoutError):
        pass
    finally:
        await host.stop()
        await owner.stop()
        publisher.close()
        await broker.stop()
        context.term()


def bus_replica(conn: Any, ports: dict[str, int]) -> None:
    asyncio.run(_bus_replica(conn, ports))


async def _bus_replica(conn: Any, ports: dict[str, int]) -> None:
    context = zmq.Context()
    address = BusAddress.from_host("127.0.0.1", ports["control"], ports["notify"],
                                   ports["publish"])
    client = AsyncClient(address, context=context, timeout_s=TIMEOUT_S)
    subscriber = Subscriber(address.notify, context=context, hwm=10_000)
    await client.start()
    await subscriber.start()
    loop = asyncio.get_running_loop()
    round_state: dict[str, Any] = {"count": 0, "last": 0.0, "done": loop.create_future()}

    def listener(update: dict[str, Any]) -> None:
        if update["action"] == "init":
            return  # the snapshot (and any resync, counted separately)
        round_state["count"] += 1
        if round_state["count"] == UPDATES:
            round_state["last"] = time.time()
            round_state["done"].set_result(None)

    replica = Replica(client, subscriber, STRUCT, listener=listener)
    try:
        await replica.start(TIMEOUT_S)
        while await arecv(conn, CHILD_LIFETIME_S) == "expect":
            round_state.update(count=0, last=0.0, done=loop.create_future())
            conn.send("armed")
            try:
                await asyncio.wait_for(round_state["done"], TIMEOUT_S)
            except TimeoutError:
                pass
            conn.send({"count": round_state["count"], "last": round_state["last"],
                       "resyncs": replica.resyncs})
        conn.send(replica.value)
        await arecv(conn, CHILD_LIFETIME_S)  # "stop"
    except (EOFError, TimeoutError):
        pass
    finally:
        await replica.stop()
        await subscriber.stop()
        await client.stop()
        context.term()


# -- raw ZeroMQ ---------------------------------------------------------------------

def raw_publisher(conn: Any) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    sock.linger = 0
    sock.sndhwm = RAW_HWM
    conn.send(sock.bind_to_random_port("tcp://127.0.0.1"))
    while not conn.poll(0.01):  # probes until the subscriber is known to be connected
        sock.send(b"p")
    send, payload = sock.send, RAW_PAYLOAD
    while recv(conn, CHILD_LIFETIME_S) == "go":
        start = time.time()
        for _ in range(RAW_MESSAGES):
            send(payload)
        conn.send({"start": start, "made_s": time.time() - start})
    sock.close()
    context.term()


def raw_subscriber(conn: Any, port: int) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.linger = 0
    sock.rcvhwm = RAW_HWM
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.subscribe(b"")
    sock.rcvtimeo = int(TIMEOUT_S * 1000)
    while sock.recv() != b"p":
        pass
    conn.send("ready")
    sock.rcvtimeo = 500  # the end of a round: half a second without a message
    receive = sock.recv
    while recv(conn, CHILD_LIFETIME_S) == "expect":
        conn.send("armed")
        count, last = 0, 0.0
        try:
            while count < RAW_MESSAGES:
                if receive()[0] == 0x64:  # b"d": data, not a late probe
                    count += 1
                    last = time.time()
        except zmq.Again:
            pass
        conn.send({"count": count, "last": last})
    sock.close()
    context.term()


# -- main ---------------------------------------------------------------------------

def raw_round(publisher: Child, subscriber: Child) -> dict[str, Any]:
    subscriber.send("expect")
    if subscriber.recv(TIMEOUT_S) != "armed":
        raise RuntimeError("raw subscriber not armed")
    publisher.send("go")
    sent = publisher.recv(TIMEOUT_S)
    got = subscriber.recv(TIMEOUT_S)
    return {"rate": got["count"] / (got["last"] - sent["start"]), "received": got["count"],
            "lost": RAW_MESSAGES - got["count"], "send_rate": RAW_MESSAGES / sent["made_s"]}


def bus_round(node: Child, replica: Child) -> dict[str, Any]:
    replica.send("expect")
    if replica.recv(TIMEOUT_S) != "armed":
        raise RuntimeError("replica not armed")
    node.send("go")
    made = node.recv(TIMEOUT_S)
    got = replica.recv(TIMEOUT_S + 5)
    if got["count"] != UPDATES or got["resyncs"] != 1:
        raise RuntimeError(f"updates lost: received {got['count']} of {UPDATES}, "
                           f"{got['resyncs'] - 1} resyncs")
    return {"rate": UPDATES / (got["last"] - made["start"]), "received": got["count"],
            "make_rate": UPDATES / made["made_s"], "dropped": made["dropped"]}


def measure(report: Report) -> None:
    raw_rounds, bus_rounds = [], []
    with children() as start:
        publisher = start(raw_publisher)
        subscriber = start(raw_subscriber, publisher.recv(TIMEOUT_S))
        if subscriber.recv(TIMEOUT_S) != "ready":
            raise RuntimeError("raw subscriber not ready")
        publisher.send("go")  # the probes stop
        node = start(bus_node)
        replica = start(bus_replica, node.recv(TIMEOUT_S))
        for _ in range(ROUNDS):
            raw_rounds.append(raw_round(publisher, subscriber))
            bus_rounds.append(bus_round(node, replica))
        node.send("end")
        replica.send("end")
        owner_data, replica_value = node.recv(TIMEOUT_S), replica.recv(TIMEOUT_S)
    if replica_value != owner_data:
        raise RuntimeError("the replica's final value differs from the owner's")
    raw, bus = (max(rounds, key=lambda r: r["rate"]) for rounds in (raw_rounds, bus_rounds))
    report.info.update(
        updates_per_round=UPDATES, rounds=ROUNDS, yield_every=YIELD_EVERY,
        keys=len(LIST_KEYS) + len(SCALAR_KEYS), raw_messages_per_round=RAW_MESSAGES,
        raw_lost=sum(r["lost"] for r in raw_rounds),
        raw_send_rate=round(raw["send_rate"]),
        raw_rounds=[round(r["rate"]) for r in raw_rounds],
        bus_rounds=[round(r["rate"]) for r in bus_rounds],
        bus_lost=0, bus_resyncs=0, bus_publisher_dropped=bus_rounds[-1]["dropped"],
        bus_owner_rate=round(bus["make_rate"]), replica_equals_owner=True)
    report.add("updates/s received (Replica vs raw SUB), best round", "msgs/s", bus["rate"],
               raw["rate"], 0.5, higher_is_better=True)


if __name__ == "__main__":
    run("bench_updates: small updates node → broker → Replica vs raw PUB→SUB", measure)
