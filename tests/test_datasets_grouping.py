"""The worker side of element writes (artiq_bus.worker.bus_devices): runs of
``mutate_dataset`` calls to one dataset leave as ``setitems`` updates, lone ones as
``setitem``, anything else as before, all in call order; the batches rebuild exactly
the experiment's own datasets; a bus thread taking batches while the experiment writes
loses and reorders nothing."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import numpy as np
import pytest

from artiq_bus.protocol import apply_update, unpack
from artiq_bus.worker import DatasetManager
from artiq_bus.worker.bus_devices import MAX_RUN_ITEMS, BusDatasetBackend

from helpers import same

DEADLINE_S = 30.0


class _Loop:
    """Stands for the bus thread's loop: the tests take batches themselves."""

    def call_soon_threadsafe(self, *args: Any) -> None:
        pass


class _Bus:
    loop = _Loop()


@pytest.fixture
def backend() -> BusDatasetBackend:
    return BusDatasetBackend(_Bus())  # type: ignore[arg-type]


def _updates(backend: BusDatasetBackend) -> list[dict[str, Any]]:
    """Everything queued, decoded as the master decodes it, in order."""
    updates = []
    for body, buffers in backend._batches():
        args, kwargs = unpack(body, buffers)
        assert kwargs == {}
        updates.extend(args[0])
    return updates


def _replay(updates: list[dict[str, Any]]) -> dict[str, Any]:
    struct: dict[str, Any] = {}
    for update in updates:
        struct = apply_update(struct, update)
    return struct


def test_runs_become_setitems_and_lone_writes_setitem(backend: BusDatasetBackend) -> None:
    mgr = DatasetManager(backend)
    mgr.set("a", np.zeros(5), broadcast=True)
    mgr.set("b", [0, 0], broadcast=True)
    for i in range(4):
        mgr.mutate("a", i, float(i))
    mgr.mutate("b", 1, 7)
    mgr.mutate("a", 4, 9.0)
    mgr.append_to("b", 3)
    mgr.mutate("b", 0, np.int64(5))
    mgr.mutate("b", np.int32(1), np.float32(0.5))
    updates = _updates(backend)
    assert [u["action"] for u in updates] == ["setitem", "setitem", "setitems", "setitem",
                                              "setitem", "append", "setitems"]
    assert updates[2] == {"action": "setitems", "path": ["a", 1], "keys": [0, 1, 2, 3],
                          "values": [0.0, 1.0, 2.0, 3.0]}
    assert updates[3] == {"action": "setitem", "path": ["b", 1], "key": 1, "value": 7}
    assert type(updates[6]["values"][0]) is np.int64
    assert type(updates[6]["values"][1]) is np.float32
    struct = _replay(updates)
    assert same(struct["a"][1], mgr.broadcast["a"][1])
    assert same(struct["b"][1], mgr.broadcast["b"][1])
    assert struct["b"][1] == [np.int64(5), np.float32(0.5), 3]


def test_writes_that_cannot_wait_are_sent_as_before(backend: BusDatasetBackend) -> None:
    """Slices, multi-dimensional indices, mutable or huge values: a setitem each, packed
    at once (a later change of the value does not reach it)."""
    mgr = DatasetManager(backend)
    mgr.set("m", np.zeros((3, 4)), broadcast=True)
    mgr.set("l", [0, 0, 0], broadcast=True)
    mgr.set("d", {}, broadcast=True)
    mgr.mutate("m", 0, 1.0)
    mgr.mutate("m", ((0, 2), (1, 4, 2)), 2.0)
    mgr.mutate("m", (1, 3), 3.0)
    value = [1, 2]
    mgr.mutate("l", 0, value)
    value.append(3)  # the update was packed before
    mgr.mutate("l", 1, "text")
    mgr.mutate("m", 1, 2**40)  # an int a float64 array takes
    for index, value in ((2**64, 1), ("k", 2**64), ("k", -2**63 - 1)):
        with pytest.raises(TypeError, match="cannot be broadcast"):
            mgr.mutate("d", index, value)  # too large for msgpack: refused in the experiment
    updates = _updates(backend)
    assert [u["action"] for u in updates[3:]] == ["setitem"] * 6
    assert updates[4]["key"] == (slice(0, 2), slice(1, 4, 2))
    assert updates[5]["key"] == slice(1, 3)
    assert updates[6]["value"] == [1, 2]
    assert updates[8] == {"action": "setitem", "path": ["m", 1], "key": 1, "value": 2**40}
    struct = _replay(updates)
    assert same(struct["m"][1], mgr.broadcast["m"][1]) and struct["d"][1] == {}
    assert struct["l"][1] == [[1, 2], "text", 0]


def test_a_long_run_is_cut_into_updates_of_bounded_size(backend: BusDatasetBackend) -> None:
    mgr = DatasetManager(backend)
    mgr.set("a", np.zeros(10), broadcast=True)
    count = 2 * MAX_RUN_ITEMS + 5
    for i in range(count):
        mgr.mutate("a", i % 10, i)
    updates = _updates(backend)[1:]
    assert [len(u["keys"]) for u in updates] == [MAX_RUN_ITEMS, MAX_RUN_ITEMS, 5]
    assert [v for u in updates for v in u["values"]] == list(range(count))


def test_random_mixed_sequences_rebuild_the_experiments_datasets(
        backend: BusDatasetBackend) -> None:
    rng = random.Random(3)
    mgr = DatasetManager(backend)
    mgr.set("a", np.zeros(8), broadcast=True)
    mgr.set("l", [0] * 8, broadcast=True)
    mgr.set("m", np.zeros((4, 4), dtype=np.int32), broadcast=True)
    batches: list[dict[str, Any]] = []
    for step in range(5000):
        choice = rng.random()
        key = rng.choice(["a", "l"])
        if choice < 0.6:
            mgr.mutate(key, rng.randrange(-8, 8), rng.choice([step, step + 0.5, None, True]))
        elif choice < 0.7:
            mgr.mutate("m", ((rng.randrange(4), 4), (0, 4, 2)), step)
        elif choice < 0.8:
            mgr.mutate("m", (rng.randrange(4), rng.randrange(4)), np.int16(step % 1000))
        elif choice < 0.9:
            mgr.append_to("l", step)
        elif choice < 0.95:
            mgr.set("a", np.full(8, float(step)), broadcast=True)
        else:
            batches.extend(_updates(backend))  # the bus thread came round
    batches.extend(_updates(backend))
    assert {u["action"] for u in batches} >= {"setitems", "setitem", "append"}
    struct = _replay(batches)
    for key in ("a", "l", "m"):
        assert same(struct[key][1], mgr.broadcast[key][1]), key


def test_a_bus_thread_taking_batches_meanwhile_loses_nothing(
        backend: BusDatasetBackend) -> None:
    """The experiment thread writes while another thread takes batches (as the bus
    thread does): every write arrives once, in order."""
    mgr = DatasetManager(backend)
    mgr.set("a", np.zeros(100), broadcast=True)
    mgr.set("b", np.zeros(100), broadcast=True)
    count = 200_000
    received: list[dict[str, Any]] = []
    done = threading.Event()

    def bus_thread() -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not done.is_set() and time.monotonic() < deadline:
            received.extend(_updates(backend))
        received.extend(_updates(backend))

    thread = threading.Thread(target=bus_thread)
    thread.start()
    try:
        for i in range(count):
            mgr.mutate("a" if i % 1000 < 700 else "b", i % 100, i)
    finally:
        done.set()
        thread.join(DEADLINE_S)
    assert not thread.is_alive()
    values = []
    for update in received[2:]:
        if update["action"] == "setitems":
            values.extend(update["values"])
        else:
            values.append(update["value"])
    assert values == list(range(count))
    assert sum(u["action"] == "setitems" for u in received) < count / 10  # runs formed
    struct = _replay(received)
    assert same(struct["a"][1], mgr.broadcast["a"][1])
    assert same(struct["b"][1], mgr.broadcast["b"][1])
