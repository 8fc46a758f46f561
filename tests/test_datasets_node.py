"""The datasets node in a real master: its calls, persistence across restarts, the
stream (one dataset, a dotted folder, repair of lost updates), every value type, and
bad input (reference §5; DESIGN §2, §4)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from artiq_bus.client.replica import Replica
from artiq_bus.client.sync import Client
from artiq_bus.protocol import RemoteError, pack
from artiq_bus.protocol import updates as mods

from conftest import Master
from helpers import bus_client, killable_master, same

#: Every numpy dtype HDF5 can hold, as arrays.
DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8",
          "c16", "S7", ">i4", ">f8"]


def values() -> dict[str, Any]:
    """Datasets of every kind an experiment stores."""
    rng = np.random.default_rng(1)
    found: dict[str, Any] = {f"types.{np.dtype(d).name}{d[0] == '>' and '_be' or ''}":
                             rng.integers(0, 100, 5).astype(d) for d in DTYPES}
    found.update({
        "types.struct": np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
        "types.matrix": np.arange(12.0).reshape(3, 4),
        "types.nested": [[1, 2], [3, [4, "five"]], {"k": (1, 2)}],
        "types.string": "Grüße \n\t \"quoted\"",
        "types.bytes": b"\x00\x01\xff",
        "types.nan": math.nan,
        "types.inf": [math.inf, -math.inf],
        "types.scalar": np.float32(1.25),
        "types.complex": 1 + 2j,
        "types.none": None,
        "types.bigint": 2**63 - 1,
    })
    return found


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return same(a, b)


def test_set_get_metadata_delete(master: Master) -> None:
    with Client(master.address) as client:
        client.call("datasets", "set", "freq", 1.5e6, True, {"unit": "MHz", "precision": 2})
        assert client.call("datasets", "get", "freq") == 1.5e6
        assert client.call("datasets", "get_metadata", "freq") == {"unit": "MHz",
                                                                    "precision": 2}
        # None keeps the flag and the metadata (ARTIQ's set)
        client.call("datasets", "set", "freq", 2e6)
        snapshot = client.call("datasets", "snapshot", "datasets", "freq")
        assert snapshot["struct"] == {"freq": (True, 2e6, {"unit": "MHz", "precision": 2})}
        client.call("datasets", "set", "freq", 3e6, False, {})
        assert client.call("datasets", "snapshot", "datasets", "freq")["struct"] == {
            "freq": (False, 3e6, {})}
        client.call("datasets", "delete", "freq")
        with pytest.raises(KeyError, match="no dataset 'freq'"):
            client.call("datasets", "get", "freq")
        with pytest.raises(KeyError):
            client.call("datasets", "delete", "freq")


def test_persistent_datasets_survive_a_restart(tmp_path: Path) -> None:
    arrays = values()
    with killable_master(tmp_path) as master, Client(master.address) as client:
        for key, value in arrays.items():
            client.call("datasets", "set", key, value, True, {"unit": "s"})
        client.call("datasets", "set", "volatile", 1, False)
        client.call("datasets", "set", "demoted", 1, True)
        client.call("datasets", "set", "demoted", 2, False)
        client.call("datasets", "set", "gone", 1, True)
        client.call("datasets", "delete", "gone")
    with killable_master(tmp_path) as master, Client(master.address) as client:
        struct = client.call("datasets", "snapshot", "datasets", "")["struct"]
        assert set(struct) == set(arrays)
        for key, value in arrays.items():
            persist, stored, metadata = struct[key]
            assert persist is True and metadata == {"unit": "s"}
            assert equal(stored, value), (key, stored, value)


def test_file_is_artiq_8s_format(tmp_path: Path) -> None:
    """ARTIQ 8 reads our file and we read ARTIQ 8's: LMDB, PYON of (value, metadata)."""
    import lmdb
    env = lmdb.open(str(tmp_path / "dataset_db.mdb"), subdir=False, map_size=2**20)
    with env.begin(write=True) as txn:
        txn.put(b"from_artiq", b'{"__jsonclass__":["tuple",[[1.5,{"unit":"kHz"}]]]}')
        txn.put(b"legacy_v1", b"(2, {})")
        txn.put(b"broken", b"not pyon at all (")
    env.close()
    with killable_master(tmp_path) as master, Client(master.address) as client:
        struct = client.call("datasets", "snapshot", "datasets", "")["struct"]
        assert struct == {"from_artiq": (True, 1.5, {"unit": "kHz"}),
                          "legacy_v1": (True, 2, {})}
        assert "cannot be read" in master.output()
        client.call("datasets", "set", "ours", [1, 2], True, {})
    env = lmdb.open(str(tmp_path / "dataset_db.mdb"), subdir=False, readonly=True)
    with env.begin() as txn:
        assert txn.get(b"ours") == b'{"__jsonclass__":["tuple",[[[1,2],{}]]]}'
    env.close()


def test_bad_input_is_refused_and_the_master_lives(master: Master) -> None:
    with Client(master.address) as client:
        client.call("datasets", "set", "x", [1, 2, 3], False, {})
        refused = [
            ("set", (5, 1), TypeError, "non-empty str"),
            ("set", ("", 1), TypeError, "non-empty str"),
            ("set", ("m", 1, False, "meta"), TypeError, "metadata must be a dict"),
            ("set", ("p", 1, "yes"), TypeError, "persist must be a bool"),
            ("set", ("k" * 600, 1, True), ValueError, "at most"),
            ("get", ("nope",), KeyError, "no dataset"),
            ("get_metadata", ([1],), KeyError, "no dataset"),
            ("update", ("garbage",), TypeError, "an update is a map"),
            ("update", (mods.init({}),), TypeError, "needs a path"),
            ("update", ({"action": "init", "path": [], "struct": {}},), ValueError, "only"),
            ("update", (mods.setitem(["x", 0], 0, True),), ValueError, r"\[name, 1"),
            ("update", (mods.setitem(["x", 1], 7, 0),), ValueError, "IndexError"),
            ("update", (mods.append(["nope", 1], 0),), KeyError, "no dataset"),
            ("update", (mods.setitem([], "y", (True, 1)),), TypeError, "an entry is"),
            ("update", ({"action": "explode", "path": ["x", 1]},), ValueError, "unknown"),
            ("apply_updates", ("garbage",), TypeError, "list"),
        ]
        for method, args, error, message in refused:
            with pytest.raises(error, match=message):
                client.call("datasets", method, *args)
        batch = [5, mods.append(["x", 1], 4), mods.delitem([], "nope"),
                 mods.setitem(["x", 1], 0, 10)]
        with pytest.raises(ValueError, match="2 of 4 dataset updates refused"):
            client.call("datasets", "apply_updates", batch)
        # one-way garbage: logged, never answered
        client.send("datasets", "apply_updates", [None, {"action": [1]}, "x" * 10])
        body, _ = pack([["not", "a", "list", "of", "updates"], {"kw": 1}])
        client.send("datasets", "apply_updates", body)
        assert client.call("datasets", "get", "x") == [10, 2, 3, 4]
    master.wait_for_line("one-way message failed: ValueError: 3 of 3 dataset updates refused")


def test_values_of_every_kind_through_the_stream(master: Master) -> None:
    """Set, snapshot, live updates and get, for every value kind, and a 1e7 array."""
    kinds = values()
    big = np.random.default_rng(2).random(10_000_000)

    async def scenario() -> None:
        async with bus_client(master, timeout_s=30.0) as (_, client, subscriber):
            await client.call("datasets", "set", "early", kinds["types.nested"])
            replica = Replica(client, subscriber, "datasets")
            await replica.start()
            for key, value in kinds.items():
                await client.call("datasets", "set", key, value, False, {"unit": "V"})
            await client.call("datasets", "set", "big", big)
            await replica.wait_for(lambda s: "big" in s, 20.0)
            for key, value in kinds.items():
                assert equal(replica.value[key][1], value), key
                assert equal(await client.call("datasets", "get", key), value), key
            assert same(replica.value["big"][1], big)
            assert same(await client.call("datasets", "get", "big", timeout_s=30.0), big)
            await replica.stop()
    asyncio.run(scenario())


def test_a_subscriber_takes_one_dataset_or_one_folder(master: Master) -> None:
    async def scenario() -> None:
        async with bus_client(master) as (_, client, subscriber):
            seen: dict[str, list[Any]] = {"scan.": [], "scan.x": [], "": []}
            replicas = {f: Replica(client, subscriber, "datasets", key_filter=f,
                                   listener=seen[f].append) for f in seen}
            for replica in replicas.values():
                await replica.start()
            for key in ("scan.x", "scan.y", "scan.xx", "scanner", "other"):
                await client.call("datasets", "set", key, [0])
            await client.call("datasets", "update", mods.append(["scan.x", 1], 1))
            await replicas[""].wait_for(lambda s: s.get("scan.x", (0, []))[1] == [0, 1])
            await replicas["scan.x"].wait_for(lambda s: s.get("scan.x", (0, []))[1] == [0, 1])
            await replicas["scan."].wait_for(lambda s: s.get("scan.x", (0, []))[1] == [0, 1])
            assert sorted(replicas["scan."].value) == ["scan.x", "scan.xx", "scan.y"]
            assert sorted(replicas["scan.x"].value) == ["scan.x"]
            keys_seen = {u.get("key") or u["path"][0] for u in seen["scan.x"]
                         if u["action"] != "init"}
            assert keys_seen == {"scan.x"}
            for replica in replicas.values():
                assert replica.resyncs == 1
                await replica.stop()
    asyncio.run(scenario())
