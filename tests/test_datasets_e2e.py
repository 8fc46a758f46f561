"""Datasets through real worker processes: the reference's dataset semantics
(§4.4, its ``test_datasets.py`` row), the results file (§6), persistence of what an
experiment sets, and clear errors for values that cannot be stored."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from artiq_bus.client.replica import Replica
from artiq_bus.client.sync import Client

from conftest import Master
from helpers import bus_client, killable_master, same
from helpers.runs import ScheduleWatch, read_results, results_file, submit, write_experiment

SEMANTICS = '''\
import numpy as np
from artiq.experiment import *


class Semantics(EnvExperiment):
    def build(self):
        pass

    def run(self):
        self.set_dataset("local", [1], archive=True)
        self.append_to_dataset("local", 2)
        self.set_dataset("live.list", [], broadcast=True, unit="kHz", scale=1e3, precision=2)
        for i in range(100):
            self.append_to_dataset("live.list", i)
        self.set_dataset("live.lists", [], broadcast=True, archive=False)  # ragged: no HDF5
        self.append_to_dataset("live.lists", [1, 2])
        self.append_to_dataset("live.lists", [3])
        self.set_dataset("live.array", np.zeros(10), broadcast=True)
        self.mutate_dataset("live.array", 3, 7.0)
        self.mutate_dataset("live.array", (5, 8), [1.0, 2.0, 3.0])
        self.set_dataset("live.matrix", np.zeros((4, 4)), broadcast=True)
        self.mutate_dataset("live.matrix", ((1, 3), (0, 4, 2)), [[1.0, 2.0], [3.0, 4.0]])
        self.set_dataset("live.private_later", 1, broadcast=True)
        self.set_dataset("live.private_later", 2)  # no broadcast: removed from the master
        self.set_dataset("live.persistent", 42, persist=True)
        self.set_dataset("live.not_archived", 1, broadcast=True, archive=False)
        self.set_dataset("nowhere", 1, broadcast=False, archive=False)
        self.set_dataset("from_master_copy", self.get_dataset("from_master"))
        self.setattr_dataset("from_master")
        self.setattr_dataset("absent", default="fallback")
        assert self.absent == "fallback"
        errors = []
        for call in (lambda: self.mutate_dataset("nope", 0, 1),
                     lambda: self.append_to_dataset("nope", 1),
                     lambda: self.get_dataset("nope"),
                     lambda: self.get_dataset_metadata("nope"),
                     lambda: self.append_to_dataset("local_scalar", 1)):
            try:
                self.set_dataset("local_scalar", 1.0, broadcast=True, archive=False)
                call()
            except (KeyError, AttributeError) as exc:
                errors.append(type(exc).__name__)
        self.set_dataset("errors", errors, archive=False, broadcast=True)
        self.set_dataset("metadata", str(self.get_dataset_metadata("live.list")) + " "
                         + str(self.get_dataset_metadata("from_master")), broadcast=True)
        try:
            self.set_dataset("bad", object(), broadcast=True)
        except TypeError as exc:
            self.set_dataset("bad_error", str(exc), broadcast=True)
'''


def _struct(master: Master) -> dict[str, Any]:
    with Client(master.address) as client:
        return client.call("datasets", "snapshot", "datasets", "")["struct"]


def test_semantics_through_a_worker(tmp_path: Path, master: Master) -> None:
    with Client(master.address) as client:
        client.call("datasets", "set", "from_master", [9, 8], False, {"unit": "ms"})
    path = write_experiment(tmp_path, "semantics.py", SEMANTICS)
    with ScheduleWatch(master) as watch:
        rid = submit(master, path)
        watch.wait_gone(rid, 30.0)
    struct = _struct(master)
    assert struct["live.list"] == (False, list(range(100)),
                                   {"unit": "kHz", "scale": 1e3, "precision": 2})
    assert struct["live.lists"] == (False, [[1, 2], [3]], {})
    assert same(struct["live.array"][1], np.array([0, 0, 0, 7, 0, 1, 2, 3, 0, 0.0]))
    matrix = np.zeros((4, 4))
    matrix[1:3, 0:4:2] = [[1, 2], [3, 4]]
    assert same(struct["live.matrix"][1], matrix)
    assert "live.private_later" not in struct
    assert struct["live.persistent"] == (True, 42, {})
    assert struct["errors"][1] == ["KeyError"] * 4 + ["AttributeError"]
    assert struct["metadata"][1] == ("{'unit': 'kHz', 'scale': 1000.0, 'precision': 2} "
                                     "{'unit': 'ms'}")
    assert "cannot be broadcast" in struct["bad_error"][1] and "object" in struct["bad_error"][1]
    assert "bad" not in struct and "nowhere" not in struct and "local" not in struct
    results = read_results(results_file(_master_dir(master), rid))
    datasets, archive = results["datasets"], results["archive"]
    assert list(datasets["local"][0]) == [1, 2]
    assert datasets["live.list"][1] == {"unit": "kHz", "scale": 1e3, "precision": 2}
    assert "live.not_archived" not in datasets and "nowhere" not in datasets
    assert datasets["live.private_later"][0] == 2
    assert list(archive["from_master"][0]) == [9, 8]
    assert archive["from_master"][1] == {"unit": "ms"}
    assert "from_master_copy" in datasets


def _master_dir(master: Master) -> Path:
    return Path(f"/proc/{master.popen.pid}/cwd").resolve()


PERSISTER = '''\
from artiq.experiment import *


class Persister(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(0, precision=0, step=1))

    def run(self):
        self.set_dataset("counter", [], persist=True)
        for i in range(int(self.n)):
            self.append_to_dataset("counter", i)
'''


def test_persistent_changes_of_a_run_are_on_disk_when_it_ends(tmp_path: Path) -> None:
    """Kill -9 right after the run's deletion: its persistent datasets are all there."""
    path = write_experiment(tmp_path, "persister.py", PERSISTER)
    with killable_master(tmp_path) as master:
        with ScheduleWatch(master) as watch:
            rid = submit(master, path, {"n": 5000})
            watch.wait_status(rid, "analyzing", 30.0)
        master.signal(9)
        master.wait()
    with killable_master(tmp_path) as master:
        assert _struct(master)["counter"] == (True, list(range(5000)), {})


def test_stream_of_a_run_reaches_a_folder_subscriber(tmp_path: Path, master: Master) -> None:
    """A replica of ``live.`` sees the run's broadcasts, none of the rest."""
    path = write_experiment(tmp_path, "semantics.py", SEMANTICS)

    async def scenario() -> dict[str, Any]:
        async with bus_client(master) as (_, client, subscriber):
            await client.call("datasets", "set", "from_master", [9, 8])
            replica = Replica(client, subscriber, "datasets", key_filter="live.")
            await replica.start()
            rid = await client.call("scheduler", "submit", "main",
                                    {"log_level": 30, "class_name": None, "arguments": {},
                                     "file": str(path)}, 0, None, False)
            assert isinstance(rid, int)
            await replica.wait_for(lambda s: "live.not_archived" in s, 30.0)
            value = dict(replica.value)
            await replica.stop()
            return value
    struct = asyncio.run(scenario())
    assert all(key.startswith("live.") for key in struct)
    assert struct["live.list"][1] == list(range(100))
