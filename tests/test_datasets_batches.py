"""Batches of dataset updates forwarded as received: bad updates in a batch are refused
and the rest applied, in order, with versions that let replicas check every message;
random updates from a real experiment leave replicas equal to the master; arrays sent
without a copy never change in flight (copy on write, snapshots in reused memory)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from artiq_bus.client.replica import Replica
from artiq_bus.protocol import ProtocolError, apply_update, pack, unpack
from artiq_bus.protocol import updates as mods
from artiq_bus.runtime.structs import StructOwner
from artiq_bus.worker.bus_devices import _batch_body
from artiq_bus.worker.snapshots import SnapshotPool

from conftest import Master
from helpers import bus_client, same
from helpers.runs import ScheduleWatch, submit, write_experiment

SETTLE_S = 20.0


async def _replicas(client: Any, subscriber: Any, *filters: str) -> list[Replica]:
    started = []
    for key_filter in filters:
        replica = Replica(client, subscriber, "datasets", key_filter=key_filter)
        await replica.start()
        started.append(replica)
    return started


async def _settled(client: Any, replicas: list[Replica]) -> dict[str, Any]:
    """The master's struct, once every replica holds the same (numpy-aware)."""
    snapshot = await client.call("datasets", "snapshot", "datasets", "")
    for replica in replicas:
        def equal(value: dict[str, Any], r: Replica = replica) -> bool:
            return same(value, {k: v for k, v in snapshot["struct"].items()
                                if r.key_filter == "" or k.startswith(r.key_filter)})
        await replica.wait_for(equal, SETTLE_S)
    return snapshot["struct"]


def test_bad_updates_in_a_forwarded_batch_are_refused_the_others_applied(
        master: Master) -> None:
    async def scenario() -> None:
        async with bus_client(master) as (_, client, subscriber):
            await client.call("datasets", "set", "b.x", np.zeros(5))
            await client.call("datasets", "set", "b.l", [1, 2])
            await client.call("datasets", "set", "other", 0)
            replicas = await _replicas(client, subscriber, "", "b.", "b.x")
            good = [mods.setitem(["b.x", 1], 0, 1.0), mods.setitem(["b.x", 1], 1, 2.0)]
            bodies = [pack(u)[0] for u in good]
            bodies += [pack(mods.setitem(["b.x", 1], 99, 0.0))[0],  # IndexError
                       pack("garbage")[0],
                       msgpack.packb(msgpack.ExtType(99, b"")),  # does not decode
                       pack(mods.append(["b.l", 1], 3))[0],
                       pack(mods.setitem([], "b.new", (False, 7, {})))[0],  # root: in order
                       pack(mods.setitem(["b.new", 1], 0, 1))[0],  # refused: 7 is an int
                       pack(mods.append(["nope", 1], 0))[0],  # no such dataset
                       pack(mods.setitem(["b.x", 1], slice(2, 4), [3.0, 4.0]))[0],
                       pack(mods.setitem(["other", 1], 0, 0))[0]]  # refused
            with pytest.raises(ValueError, match="6 of 11 dataset updates refused"):
                await client.call_packed("datasets", "apply_updates", _batch_body(bodies), [])
            struct = await _settled(client, replicas)
            assert same(struct["b.x"][1], np.array([1.0, 2.0, 3.0, 4.0, 0.0]))
            assert struct["b.l"][1] == [1, 2, 3]
            assert struct["b.new"] == (False, 7, {})
            # every message followed the one before: no replica had to resynchronise
            assert [replica.resyncs for replica in replicas] == [1, 1, 1]
            version = await client.call("datasets", "version", "datasets", "b.")
            assert replicas[1]._version == version
            for replica in replicas:
                await replica.stop()
    asyncio.run(scenario())


RANDOM = '''\
import random
import numpy as np
from artiq.experiment import *


class Random(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(0, precision=0, step=1))

    def run(self):
        rng = random.Random(7)
        self.set_dataset("r.a", np.zeros(50), broadcast=True)
        self.set_dataset("r.b", np.zeros((4, 6)), broadcast=True)
        self.set_dataset("r.l", [], broadcast=True)
        self.set_dataset("s.x", [0] * 10, broadcast=True)
        for i in range(int(self.n)):
            choice = rng.random()
            if choice < 0.5:
                self.mutate_dataset(rng.choice(["r.a", "r.a", "s.x"]), rng.randrange(10), i)
            elif choice < 0.7:
                self.mutate_dataset("r.b", ((rng.randrange(4), 4), (0, 6, 2)), i + 0.5)
            elif choice < 0.9:
                self.append_to_dataset("r.l", i)
            elif choice < 0.95:
                self.set_dataset("r.a", np.full(50, float(i)), broadcast=True)
            else:
                big = np.full(20_000, float(i))
                self.set_dataset("r.big", big, broadcast=True)  # sent without a copy
                big[:] = -1  # must not reach the master
                self.mutate_dataset("r.big", 0, i + 1)  # the master copies before writing
        self.set_dataset("r.done", True, broadcast=True)
'''


def test_random_updates_from_an_experiment_leave_replicas_equal(tmp_path: Path,
                                                                master: Master) -> None:
    path = write_experiment(tmp_path, "random_updates.py", RANDOM)

    async def scenario() -> None:
        async with bus_client(master, timeout_s=30.0) as (_, client, subscriber):
            replicas = await _replicas(client, subscriber, "", "r.", "r.a")
            with ScheduleWatch(master) as watch:
                rid = submit(master, path, {"n": 30_000})
                await asyncio.to_thread(watch.wait_gone, rid, 60.0)
            struct = await _settled(client, replicas)
            assert struct["r.done"][1] is True and len(struct["r.l"][1]) > 1000
            big = struct["r.big"][1]
            assert big[0] == big[1] + 1 and (big[1:] == big[1]).all()
            assert [replica.resyncs for replica in replicas] == [1, 1, 1]
            for replica in replicas:
                await replica.stop()
    asyncio.run(scenario())


# -- arrays in flight ---------------------------------------------------------------------

def test_thaw_copies_a_read_only_array_inside_a_tuple() -> None:
    array = np.zeros(4)
    array.flags.writeable = False
    data = {"k": (False, array, {})}
    apply_update(data, mods.setitem(["k", 1], 1, 5.0))
    assert same(data["k"][1], np.array([0, 5.0, 0, 0])) and data["k"][0] is False
    assert same(array, np.zeros(4))  # the one in flight is untouched
    matrix = np.zeros((2, 3))
    matrix.flags.writeable = False
    data = {"m": [matrix]}
    apply_update(data, mods.setitem(["m", 0, 1], 2, 1.0))  # through a read-only view
    assert data["m"][0][1, 2] == 1.0 and matrix[1, 2] == 0.0
    with pytest.raises(ProtocolError):
        apply_update({"k": (1, 2)}, mods.setitem(["k"], 0, 5))  # tuples stay immutable


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[list[Any]] = []
        self.dropped = 0

    def send(self, frames: list[Any]) -> None:
        self.sent.append(frames)


def test_struct_owner_never_changes_an_array_it_published() -> None:
    async def scenario() -> None:
        publisher = _Recorder()
        owner = StructOwner("s", publisher)  # type: ignore[arg-type]
        big = np.zeros(100_000)
        owner.setitem("a", big)
        owner.flush()
        owner.update(mods.setitem(["a"], 3, 1.0))  # while the first message is in flight
        owner.flush()
        first = unpack(publisher.sent[0][2], publisher.sent[0][3:])
        assert same(first[3][0]["value"], np.zeros(100_000))
        assert owner.data["a"][3] == 1.0 and not big.flags.writeable
        snapshot_value = owner.snapshot("a")["struct"]["a"]
        assert snapshot_value[3] == 1.0
    asyncio.run(scenario())


def test_snapshot_pool_reuses_a_buffer_once_nothing_holds_it() -> None:
    pool = SnapshotPool()
    source = memoryview(np.arange(100_000.0)).cast("B")
    first = pool.copy(source)
    second = pool.copy(source)
    assert second is not first  # the first is still held (as if in flight)
    assert same(np.frombuffer(first, np.float64), np.arange(100_000.0))
    first_id = id(first)
    del first
    assert id(pool.copy(source)) == first_id
    assert pool.copy(b"bytes") == b"bytes"
