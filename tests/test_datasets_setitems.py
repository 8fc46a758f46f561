"""``setitems`` (runs of ``mutate_dataset`` calls as one update) in a real master:
malformed ones from a raw client (pyzmq and msgpack only) get clear errors and change
nothing else; mixed sequences from a real experiment keep their order and leave the
master and every replica equal to what the experiment computed itself; a worker killed
mid-stream leaves a consistent prefix with nothing of the acknowledged stage lost."""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from artiq_bus.client.replica import Replica
from artiq_bus.worker import (DatasetManager, DeviceDB, DeviceManager, LocalDatasetBackend,
                              ProcessArgumentManager, file_import)

from conftest import Master
from helpers import bus_client, same
from helpers.compare import describe_difference, view
from helpers.runs import ScheduleWatch, submit, write_experiment

DEADLINE_S = 30.0
FILTERS = ("", "o.", "o.a")


# -- a raw client -------------------------------------------------------------------------

class RawClient:
    """Calls with nothing but pyzmq and msgpack (docs/protocol.md §3)."""

    def __init__(self, master: Master):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.connect(f"tcp://127.0.0.1:{master.control}")

    def call(self, method: str, *args: Any) -> tuple[bool, Any]:
        """(ok, result or error map) of ``datasets.method(*args)``."""
        request_id = secrets.token_bytes(8)
        self.socket.send_multipart([b"ABUS1", b"REQ", request_id, b"datasets",
                                    method.encode(), (5000).to_bytes(4, "big"),
                                    msgpack.packb([list(args), {}])])
        assert self.socket.poll(DEADLINE_S * 1000), "no reply"
        _, command, reply_id, status, body, *_ = self.socket.recv_multipart()
        assert (command, reply_id) == (b"REP", request_id)
        return status == b"\x00", msgpack.unpackb(body, strict_map_key=False)

    def send(self, method: str, *args: Any) -> None:
        self.socket.send_multipart([b"ABUS1", b"MSG", b"datasets", method.encode(),
                                    msgpack.packb([list(args), {}])])

    def close(self) -> None:
        self.context.destroy(linger=0)


def _setitems(path: list[Any], keys: Any, values: Any) -> dict[str, Any]:
    return {"action": "setitems", "path": path, "keys": keys, "values": values}


def _slice(start: Any, stop: Any, step: Any = None) -> msgpack.ExtType:
    return msgpack.ExtType(5, msgpack.packb([start, stop, step]))


def _tuple(*items: Any) -> msgpack.ExtType:
    return msgpack.ExtType(3, msgpack.packb(list(items)))


MALFORMED = [
    (_setitems(["x", 1], 5, [1]), "ValueError", "setitems takes arrays of keys and values"),
    (_setitems(["x", 1], [0, 1], [1]), "ValueError", "2 keys but 1 values"),
    ({"action": "setitems", "path": ["x", 1]}, "ValueError", "setitems takes arrays"),
    (_setitems([], ["x"], [1]), "ValueError", "only setitem and delitem"),
    (_setitems(["nope", 1], [0], [1]), "KeyError", "no dataset"),
    (_setitems(["x", 0], [0], [1]), "ValueError", r"\[name, 1"),
    (_setitems(["x", 1, 0, 0], [0], [1]), "ValueError", "update does not apply"),
    (_setitems(["x", 1], [[1]], [1]), "ValueError", "1 of 1 setitems items refused"),
    (_setitems(["x", 1], ["a", 99], [1, 2]), "ValueError", "2 of 2 setitems items refused"),
]


def test_malformed_setitems_from_a_raw_client_get_clear_errors(master: Master) -> None:
    async def scenario() -> None:
        async with bus_client(master) as (_, client, subscriber):
            await client.call("datasets", "set", "x", [0, 0, 0])
            await client.call("datasets", "set", "arr", np.zeros(4))
            await client.call("datasets", "set", "mat", np.zeros((2, 3)))
            replicas = [Replica(client, subscriber, "datasets", key_filter=f)
                        for f in ("", "x", "arr")]
            for replica in replicas:
                await replica.start()
            raw = RawClient(master)
            try:
                await asyncio.to_thread(_raw_calls, raw)
            finally:
                raw.close()
            assert await client.call("datasets", "get", "x") == [1, 0, 3]
            assert same(await client.call("datasets", "get", "arr"),
                        np.array([0.0, 2.0, 7.0, 0.0]))
            assert same(await client.call("datasets", "get", "mat"),
                        np.array([[5.0, 5.0, 0.0], [6.0, 6.0, 6.0]]))
            snapshot = (await client.call("datasets", "snapshot", "datasets", ""))["struct"]
            for replica in replicas:
                await replica.wait_for(lambda s, r=replica: same(s, view(snapshot, r.key_filter)),
                                       DEADLINE_S)
                assert replica.resyncs == 1  # every message followed the one before
                await replica.stop()
    asyncio.run(scenario())
    master.wait_for_line("one-way message failed: ValueError: 2 of 3 dataset updates refused")


def _raw_calls(raw: RawClient) -> None:
    for update, error, message in MALFORMED:
        ok, body = raw.call("update", update)
        assert not ok and body["type"] == error, (update, body)
        assert re.search(message, body["message"]), (message, body["message"])
    ok, body = raw.call("get", "x")
    assert ok and body == [0, 0, 0]  # nothing of the refused updates changed it
    # partly refused: the items that fit are applied, in order, the call fails
    ok, body = raw.call("update", _setitems(["x", 1], [0, 99, 2, "k"], [1, 2, 3, 4]))
    assert not ok and body["message"].endswith(
        "2 of 4 setitems items refused; first: item 1: IndexError: list assignment index "
        "out of range"), body
    ok, body = raw.call("apply_updates", [
        _setitems(["arr", 1], [0, 1], ["a", 2.0]),  # "a" is no float: item 0 refused
        _setitems(["arr", 1], [2, 2], [9.0, 7.0]),  # the later write wins
        _setitems(["mat", 1], [_tuple(0, _slice(0, 2)), 1], [5.0, 6.0]),  # ext keys
        _setitems(["arr", 1], [0], None),
    ])
    assert not ok and body["message"].startswith(
        "2 of 4 dataset updates refused; first: ValueError: dataset 'arr': 1 of 2 setitems "
        "items refused; first: item 0: ValueError"), body
    raw.send("apply_updates", [_setitems(["x", 1], "01", [5, 6]),
                               _setitems(["x", 1], [], []),  # empty: fine
                               _setitems(["nope", 1], [0], [0])])
    ok, body = raw.call("apply_updates", [_setitems(["x", 1], [], [])])
    assert ok and body is None  # the one-way batch before it was applied (in order)


# -- mixed sequences from an experiment ---------------------------------------------------

MIXED = '''\
import random
import numpy as np
from artiq_bus.experiment import EnvExperiment, NumberValue


class Mixed(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(0, precision=0, step=1))

    def run(self):
        rng = random.Random(11)
        self.set_dataset("o.a", np.zeros(50), broadcast=True)
        self.set_dataset("o.b", np.zeros(50, dtype=np.int32), broadcast=True)
        self.set_dataset("o.m", np.zeros((4, 6)), broadcast=True)
        self.set_dataset("o.l", [0] * 20, broadcast=True)
        self.set_dataset("o.p", np.zeros(10), persist=True)
        for i in range(int(self.n)):
            c = rng.random()
            if c < 0.45:  # runs of element writes
                self.mutate_dataset("o.a", rng.randrange(-50, 50), i)
            elif c < 0.52:  # another dataset: ends a run
                self.mutate_dataset("o.b", rng.randrange(50), np.int64(i))
            elif c < 0.57:  # a slice
                self.mutate_dataset("o.a", (rng.randrange(50), 50, rng.randrange(1, 4)),
                                    i + 0.25)
            elif c < 0.62:  # one slice per dimension
                self.mutate_dataset("o.m", ((rng.randrange(4), 4), (0, 6, 2)), i + 0.5)
            elif c < 0.66:  # a 2-tuple of ints is a slice, not an element
                self.mutate_dataset("o.m", (rng.randrange(4), 4), float(i))
            elif c < 0.76:
                self.append_to_dataset("o.l", i)
            elif c < 0.84:  # values of every kind, some that cannot wait to be packed
                self.mutate_dataset("o.l", rng.randrange(20),
                                    rng.choice([i, float(i), None, True, [i], "s", 2**40]))
            elif c < 0.88:  # replaced in the middle of a run
                self.set_dataset("o.a", np.full(50, -float(i)), broadcast=True)
            elif c < 0.94:
                self.mutate_dataset("o.a", np.int32(rng.randrange(50)), np.float32(i))
            else:
                self.mutate_dataset("o.p", rng.randrange(10), i)
        self.set_dataset("o.done", True, broadcast=True)
'''


def _computed_locally(path: Path, n: int) -> dict[str, Any]:
    """The datasets the experiment broadcasts, run in this process."""
    backend = LocalDatasetBackend()
    managers = (DeviceManager(DeviceDB.from_dict({})), DatasetManager(backend),
                ProcessArgumentManager({"n": n}), {})
    experiment = file_import(path).Mixed(managers)
    experiment.prepare()
    experiment.run()
    return backend.struct


def test_mixed_sequences_keep_their_order(tmp_path: Path, master: Master) -> None:
    path = write_experiment(tmp_path, "mixed.py", MIXED)
    n = 30_000
    expected = _computed_locally(path, n)

    async def scenario() -> None:
        async with bus_client(master, timeout_s=DEADLINE_S) as (_, client, subscriber):
            seen: list[str] = []
            replicas = [Replica(client, subscriber, "datasets", key_filter=f,
                                listener=lambda u: seen.append(u["action"]))
                        for f in FILTERS]
            for replica in replicas:
                await replica.start()
            with ScheduleWatch(master) as watch:
                rid = submit(master, path, {"n": n})
                await asyncio.to_thread(watch.wait_gone, rid, 60.0)
            struct = (await client.call("datasets", "snapshot", "datasets", "o."))["struct"]
            assert same(struct, expected), describe_difference(struct, expected)
            for replica in replicas:
                await replica.wait_for(lambda s, f=replica.key_filter: same(s, view(struct, f)),
                                       DEADLINE_S)
                assert replica.resyncs == 1
                await replica.stop()
            assert "setitems" in seen and "setitem" in seen  # both kinds went by
    asyncio.run(scenario())


# -- a worker killed mid-stream -----------------------------------------------------------

KILLED = '''\
import os
import signal
import numpy as np
from artiq_bus.experiment import EnvExperiment


class Killed(EnvExperiment):
    def build(self):
        pass

    def run(self):
        self.set_dataset("f.a", np.full(1000, -1.0), broadcast=True)
        for i in range(RUN_WRITES):
            self.mutate_dataset("f.a", i % 1000, i)

    def analyze(self):  # the run stage ended: its writes were acknowledged
        for i in range(RUN_WRITES, RUN_WRITES + 400_000):
            self.mutate_dataset("f.a", i % 1000, i)
            if i == RUN_WRITES + 200_000:
                os.kill(os.getpid(), signal.SIGKILL)
'''
RUN_WRITES = 100_000


def _after_prefix(count: int) -> np.ndarray:
    """``f.a`` once writes 0 .. count-1 are applied: the last write of each index."""
    state = np.full(1000, -1.0)
    for index in range(1000):
        last = index + (count - 1 - index) // 1000 * 1000
        if last < count:
            state[index] = last
    return state


def test_a_worker_killed_mid_stream_leaves_a_consistent_prefix(tmp_path: Path,
                                                               master: Master) -> None:
    path = write_experiment(tmp_path, "killed.py",
                            KILLED.replace("RUN_WRITES", str(RUN_WRITES)))

    async def scenario() -> None:
        async with bus_client(master, timeout_s=DEADLINE_S) as (_, client, subscriber):
            replica = Replica(client, subscriber, "datasets", key_filter="f.")
            await replica.start()
            with ScheduleWatch(master) as watch:
                rid = submit(master, path)
                await asyncio.to_thread(watch.wait_gone, rid, 60.0)
            value = await client.call("datasets", "get", "f.a")
            count = int(value.max()) + 1
            assert count >= RUN_WRITES, "writes of the acknowledged stage were lost"
            assert same(value, _after_prefix(count)), "not the state after a prefix"
            await replica.wait_for(lambda s: same(s["f.a"][1], value), DEADLINE_S)
            assert replica.resyncs == 1
            await replica.stop()
    asyncio.run(scenario())
    master.wait_for_line("killed by signal 9")
