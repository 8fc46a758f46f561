"""The experiment-side dataset manager against the in-process store
(artiq_bus.worker.datasets), including the reference's test_datasets.py rows."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from artiq_bus.language import EnvExperiment
from artiq_bus.protocol import ProtocolError
from artiq_bus.worker import (DatasetManager, DeviceDB, DeviceManager, LocalDatasetBackend,
                              ProcessArgumentManager, dataset_index)


class Exp(EnvExperiment):
    def build(self) -> None:
        pass

    def run(self) -> None:
        pass


@pytest.fixture
def backend() -> LocalDatasetBackend:
    return LocalDatasetBackend(record=True)


@pytest.fixture
def mgr(backend: LocalDatasetBackend) -> DatasetManager:
    return DatasetManager(backend)


@pytest.fixture
def exp(mgr: DatasetManager) -> Exp:
    return Exp((DeviceManager(DeviceDB.from_dict({})), mgr, ProcessArgumentManager({}), {}))


def master_value(backend: LocalDatasetBackend, key: str) -> Any:
    return backend.struct[key][1]


# --- set_dataset ---------------------------------------------------------------------


def test_local_dataset_stays_in_the_run(exp: Exp, mgr: DatasetManager,
                                        backend: LocalDatasetBackend) -> None:
    exp.set_dataset("x", 1)
    assert exp.get_dataset("x") == 1
    assert mgr.local == {"x": 1}
    assert "x" not in backend.struct and backend.updates == []


def test_broadcast_dataset_reaches_the_master(exp: Exp, backend: LocalDatasetBackend) -> None:
    exp.set_dataset("x", 1, broadcast=True)
    assert backend.struct == {"x": (False, 1, {})}
    assert backend.updates == [{"action": "setitem", "path": [], "key": "x",
                                "value": (False, 1, {})}]
    assert exp.get_dataset("x") == 1


def test_persist_implies_broadcast_and_metadata_only_given_keys(
        exp: Exp, backend: LocalDatasetBackend) -> None:
    exp.set_dataset("f", 1.5e3, unit="kHz", precision=3, persist=True)
    assert backend.struct["f"] == (True, 1.5e3, {"unit": "kHz", "precision": 3})
    exp.set_dataset("g", 2, scale=10, broadcast=True)
    assert backend.struct["g"][2] == {"scale": 10}


def test_broadcast_then_local_removes_the_master_copy(exp: Exp, mgr: DatasetManager,
                                                      backend: LocalDatasetBackend) -> None:
    exp.set_dataset("x", 1, broadcast=True)
    exp.set_dataset("x", 2, broadcast=False)
    assert "x" not in backend.struct
    assert backend.updates[-1] == {"action": "delitem", "path": [], "key": "x"}
    assert exp.get_dataset("x") == 2
    exp.set_dataset("x", 3)  # not broadcast before: nothing more is sent
    assert len(backend.updates) == 2


def test_local_set_does_not_delete_a_master_dataset_of_another_run(
        exp: Exp, backend: LocalDatasetBackend) -> None:
    backend.set("shared", 5)
    backend.updates.clear()
    exp.set_dataset("shared", 6)
    assert backend.struct["shared"] == (False, 5, {}) and backend.updates == []


def test_archive_false(exp: Exp, mgr: DatasetManager, backend: LocalDatasetBackend,
                       caplog: pytest.LogCaptureFixture) -> None:
    exp.set_dataset("x", 1)
    exp.set_dataset("x", 2, broadcast=True, archive=False)
    assert "x" not in mgr.local and master_value(backend, "x") == 2
    with caplog.at_level(logging.WARNING):
        exp.set_dataset("lost", 1, archive=False)
    assert "Dataset 'lost' will not be stored" in caplog.text
    assert "lost" not in mgr.local and "lost" not in backend.struct


# --- append --------------------------------------------------------------------------


def test_append_local(exp: Exp, backend: LocalDatasetBackend) -> None:
    exp.set_dataset("l", [])
    exp.append_to_dataset("l", 1)
    exp.append_to_dataset("l", [2, 3])
    assert exp.get_dataset("l") == [1, [2, 3]]
    assert backend.updates == []


def test_append_broadcast(exp: Exp, backend: LocalDatasetBackend) -> None:
    exp.set_dataset("l", [0], broadcast=True)
    exp.append_to_dataset("l", 1)
    assert exp.get_dataset("l") == [0, 1]
    assert master_value(backend, "l") == [0, 1]  # applied once on each side
    assert backend.updates[-1] == {"action": "append", "path": ["l", 1], "x": 1}


def test_append_errors(exp: Exp, backend: LocalDatasetBackend) -> None:
    exp.set_dataset("scalar", 1, broadcast=True)
    sent = len(backend.updates)
    with pytest.raises(AttributeError):
        exp.append_to_dataset("scalar", 2)
    assert len(backend.updates) == sent  # nothing sent for a failed append
    with pytest.raises(KeyError, match="nonexistent"):
        exp.append_to_dataset("nothing", 1)


# --- mutate ---------------------------------------------------------------------------


def test_dataset_index() -> None:
    assert dataset_index(3) == 3
    assert dataset_index((1, 5)) == slice(1, 5)
    assert dataset_index((1, 9, 2)) == slice(1, 9, 2)
    assert dataset_index(((0, 2), (1, 3))) == (slice(0, 2), slice(1, 3))


def test_mutate_broadcast_with_index_slice_and_multi_dim(exp: Exp,
                                                         backend: LocalDatasetBackend) -> None:
    exp.set_dataset("a", np.zeros((3, 4)), broadcast=True)
    exp.mutate_dataset("a", 0, np.ones(4))
    exp.mutate_dataset("a", (1, 3), 2.0)
    exp.mutate_dataset("a", ((0, 1), (2, 4)), 7.0)
    expected = np.array([[1, 1, 7, 7], [2, 2, 2, 2], [2, 2, 2, 2]], dtype=float)
    np.testing.assert_array_equal(exp.get_dataset("a"), expected)
    np.testing.assert_array_equal(master_value(backend, "a"), expected)
    assert [(m["path"], m["key"]) for m in backend.updates[1:]] == [
        (["a", 1], 0), (["a", 1], slice(1, 3)), (["a", 1], (slice(0, 1), slice(2, 4)))]


def test_mutate_tutorial_parabola(exp: Exp, backend: LocalDatasetBackend) -> None:
    exp.set_dataset("parabola", np.full(5, np.nan), broadcast=True)
    for i in range(5):
        exp.mutate_dataset("parabola", i, i * i)
    assert master_value(backend, "parabola").tolist() == [0, 1, 4, 9, 16]


def test_mutate_local_and_broadcast_only(exp: Exp, mgr: DatasetManager,
                                         backend: LocalDatasetBackend) -> None:
    exp.set_dataset("loc", [0, 0, 0])
    exp.mutate_dataset("loc", 1, 5)
    assert exp.get_dataset("loc") == [0, 5, 0] and backend.updates == []
    exp.set_dataset("bc", [0, 0], broadcast=True, archive=False)
    exp.mutate_dataset("bc", 0, 9)
    assert master_value(backend, "bc") == [9, 0]
    assert mgr.broadcast["bc"][1] == [9, 0] and "bc" not in mgr.local


def test_mutate_nonexistent(exp: Exp) -> None:
    with pytest.raises(KeyError, match="Cannot mutate nonexistent dataset 'nope'"):
        exp.mutate_dataset("nope", 0, 1)


# --- get_dataset and metadata ---------------------------------------------------------


def test_get_from_master_is_archived_once(exp: Exp, mgr: DatasetManager,
                                          backend: LocalDatasetBackend,
                                          caplog: pytest.LogCaptureFixture) -> None:
    backend.set("calib", 1.0, persist=True, metadata={"unit": "V"})
    assert exp.get_dataset("calib") == 1.0
    assert mgr.archive == {"calib": 1.0}
    backend.set("calib", 2.0, persist=True)
    with caplog.at_level(logging.WARNING):
        assert exp.get_dataset("calib") == 2.0
    assert "already in archive" in caplog.text
    assert mgr.archive == {"calib": 1.0}  # the first value read is kept
    assert exp.get_dataset("other", default=3, archive=True) == 3
    assert "other" not in mgr.archive


def test_get_without_archive_and_local_first(exp: Exp, mgr: DatasetManager,
                                             backend: LocalDatasetBackend) -> None:
    backend.set("k", "master")
    assert exp.get_dataset("k", archive=False) == "master" and mgr.archive == {}
    exp.set_dataset("k", "mine")
    assert exp.get_dataset("k") == "mine" and mgr.archive == {}


def test_values_read_from_the_master_are_copies(exp: Exp, backend: LocalDatasetBackend) -> None:
    backend.set("lst", [1, 2])
    exp.get_dataset("lst", archive=False).append(3)
    assert master_value(backend, "lst") == [1, 2]


def test_metadata(exp: Exp, backend: LocalDatasetBackend) -> None:
    exp.set_dataset("m", 1, unit="ms", scale=1e-3, precision=2)
    assert exp.get_dataset_metadata("m") == {"unit": "ms", "scale": 1e-3, "precision": 2}
    exp.set_dataset("plain", 1)
    assert exp.get_dataset_metadata("plain") == {}
    backend.set("remote", 1, metadata={"unit": "Hz"})
    assert exp.get_dataset_metadata("remote") == {"unit": "Hz"}
    with pytest.raises(KeyError):
        exp.get_dataset_metadata("absent")
    assert exp.get_dataset_metadata("absent", default=None) is None


# --- the local store ----------------------------------------------------------------


def test_local_backend_applies_and_refuses_updates() -> None:
    backend = LocalDatasetBackend({"a": (False, [1], {})})
    backend.update({"action": "append", "path": ["a", 1], "x": 2})
    assert backend.get("a") == [1, 2]
    with pytest.raises(ProtocolError):
        backend.update({"action": "append", "path": ["missing", 1], "x": 2})
    with pytest.raises(KeyError):
        backend.get("missing")
    backend.update({"action": "init", "struct": {"b": (True, 0, {})}})
    assert backend.struct == {"b": (True, 0, {})}
