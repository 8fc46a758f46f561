"""Results files in ARTIQ's layout (artiq_bus.worker.results)."""

from __future__ import annotations

import math
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from artiq_bus import pyon
from artiq_bus.worker import results
from artiq_bus.worker.results import (results_dir, results_path, write_datasets_only,
                                      write_results)

EXPID = {"file": "repository/flopping_f.py", "class_name": "FloppingF", "log_level": 30,
         "arguments": {"npoints": 10, "scan": {"ty": "NoScan", "value": 1.0}},
         "repo_rev": "0123abcd"}

# the test_h5types row: every numpy dtype HDF5 holds, as scalar and as array
NUMERIC_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                  "float16", "float32", "float64", "longdouble", "complex64", "complex128",
                  "bool"]


def write(path: Path, datasets: dict[str, Any] | None = None, *,
          archive: dict[str, Any] | None = None,
          metadata: dict[str, dict[str, Any]] | None = None, **fields: Any) -> Path:
    args: dict[str, Any] = {"rid": 42, "start_time": 1.7e9, "run_time": 1.7e9 + 2.5,
                            "expid": EXPID, "version": "9.0+test"}
    args.update(fields)
    write_results(path, datasets=datasets or {}, archive=archive or {},
                  metadata=metadata or {}, **args)
    return path


def stored(tmp_path: Path, value: Any) -> Any:
    """``value`` written as dataset ``x`` and read back."""
    path = write(tmp_path / "r.h5", {"x": value})
    with h5py.File(path, "r") as f:
        return f["datasets/x"][()]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- layout --------------------------------------------------------------------------


def test_results_path_uses_local_time_rid_and_class_name(tmp_path: Path) -> None:
    start = time.mktime((2024, 3, 5, 7, 59, 30, 0, 0, -1))
    assert results_dir(tmp_path, start) == tmp_path / "2024-03-05" / "07"
    path = results_path(tmp_path, start, 42, "FloppingF")
    assert path == tmp_path / "2024-03-05" / "07" / "000000042-FloppingF.h5"
    assert results_path("results", start, 123456789, "X").name == "123456789-X.h5"


def test_every_root_field_readable(tmp_path: Path) -> None:
    path = write(results_path(tmp_path, 1.7e9, 42, "FloppingF"), {"a": 1})
    assert path.is_file()  # the date/hour directories were created
    with h5py.File(path, "r") as f:
        assert set(f) == {"datasets", "archive", "artiq_version", "rid", "start_time",
                          "run_time", "expid"}
        assert f["artiq_version"][()].decode() == "9.0+test"
        assert f["rid"][()] == 42 and f["rid"].dtype.kind == "i"
        assert f["start_time"][()] == 1.7e9 and f["start_time"].dtype == np.float64
        assert f["run_time"][()] == 1.7e9 + 2.5
        assert pyon.decode(f["expid"][()]) == EXPID
        assert isinstance(f["datasets"], h5py.Group) and isinstance(f["archive"], h5py.Group)


def test_run_time_nan_when_run_never_started(tmp_path: Path) -> None:
    with h5py.File(write(tmp_path / "r.h5", run_time=None), "r") as f:
        assert math.isnan(f["run_time"][()]) and f["run_time"].dtype == np.float64


def test_outcome_only_when_given(tmp_path: Path) -> None:
    with h5py.File(write(tmp_path / "a.h5", outcome="worker died: signal 9"), "r") as f:
        assert f["outcome"][()].decode() == "worker died: signal 9"
    with h5py.File(write(tmp_path / "b.h5"), "r") as f:
        assert "outcome" not in f


def test_datasets_archive_and_metadata_attributes(tmp_path: Path) -> None:
    metadata = {"freq": {"unit": "MHz", "scale": 1e6, "precision": 3},
                "ref": {"unit": "V"}}
    path = write(tmp_path / "r.h5", {"freq": [1e6, 2e6], "plain": 7},
                 archive={"ref": 0.5, "other": "x"}, metadata=metadata)
    with h5py.File(path, "r") as f:
        freq = f["datasets/freq"]
        assert freq[()].tolist() == [1e6, 2e6]
        assert dict(freq.attrs) == {"unit": "MHz", "scale": 1e6, "precision": 3}
        assert dict(f["datasets/plain"].attrs) == {}
        assert f["archive/ref"][()] == 0.5 and dict(f["archive/ref"].attrs) == {"unit": "V"}
        assert f["archive/other"][()].decode() == "x"


def test_write_datasets_only(tmp_path: Path) -> None:
    path = tmp_path / "out.h5"
    write_datasets_only(path, {"a": [1, 2]}, {"b": 1.5}, {"a": {"unit": "s"}})
    with h5py.File(path, "r") as f:
        assert set(f) == {"datasets", "archive"}
        assert f["datasets/a"][()].tolist() == [1, 2] and f["datasets/a"].attrs["unit"] == "s"
        assert f["archive/b"][()] == 1.5


def test_datasets_only_needs_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such directory"):
        write_datasets_only(tmp_path / "missing" / "out.h5", {}, {}, {})
    assert leftovers(tmp_path) == []


def test_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write(tmp_path / "r.h5")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# --- values --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES)
def test_numpy_scalars_and_arrays_of_every_holdable_dtype(tmp_path: Path, dtype: str) -> None:
    array = np.arange(6).reshape(2, 3).astype(dtype)
    scalar = array.flat[5]
    path = write(tmp_path / "r.h5", {"scalar": scalar, "array": array})
    with h5py.File(path, "r") as f:
        assert f["datasets/scalar"].dtype == np.dtype(dtype)
        assert f["datasets/scalar"][()] == scalar
        assert f["datasets/array"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(f["datasets/array"][()], array)


def test_python_scalars(tmp_path: Path) -> None:
    values = {"t": True, "i": -3, "big": 2**62, "f": 0.25, "c": 1 - 2j, "nan": math.nan,
              "inf": -math.inf}
    with h5py.File(write(tmp_path / "r.h5", values), "r") as f:
        back = {key: f["datasets"][key][()] for key in values}
    assert back["t"] is np.True_ and back["i"] == -3 and back["big"] == 2**62
    assert back["f"] == 0.25 and back["c"] == 1 - 2j
    assert math.isnan(back["nan"]) and back["inf"] == -math.inf


def test_strings_are_variable_length_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "r.h5", {"s": "µs → ok", "empty": "", "words": ["a", "ünï"],
                                     "grid": np.array([["x", "yy"], ["z", ""]])})
    with h5py.File(path, "r") as f:
        for key in ("s", "empty", "words", "grid"):
            string_info = h5py.check_string_dtype(f["datasets"][key].dtype)
            assert string_info is not None and string_info.length is None
            assert string_info.encoding == "utf-8"
        assert f["datasets/s"].asstr()[()] == "µs → ok"
        assert f["datasets/empty"].asstr()[()] == ""
        assert f["datasets/words"].asstr()[()].tolist() == ["a", "ünï"]
        assert f["datasets/grid"].asstr()[()].tolist() == [["x", "yy"], ["z", ""]]


def test_bytes_are_kept_exactly(tmp_path: Path) -> None:
    blob = b"\x89PNG\x00\x00data\x00"
    assert stored(tmp_path, blob).tobytes() == blob
    assert stored(tmp_path, np.void(blob)).tobytes() == blob


def test_lists_become_arrays(tmp_path: Path) -> None:
    numbers = stored(tmp_path, [1, 2, 3])
    assert isinstance(numbers, np.ndarray) and numbers.tolist() == [1, 2, 3]
    assert stored(tmp_path, [0.5, math.nan])[0] == 0.5
    assert math.isnan(stored(tmp_path, [0.5, math.nan])[1])
    nested = stored(tmp_path, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert nested.shape == (3, 2) and nested[2, 1] == 6.0
    assert stored(tmp_path, (True, False)).tolist() == [True, False]
    assert stored(tmp_path, []).shape == (0,)


def test_structured_and_fixed_string_arrays(tmp_path: Path) -> None:
    record = np.array([(1, 2.5), (3, 4.5)], dtype=[("n", "<i4"), ("x", "<f8")])
    back = stored(tmp_path, record)
    assert back.dtype == record.dtype and back.tolist() == record.tolist()
    assert stored(tmp_path, np.array([b"ab", b"c"])).tolist() == [b"ab", b"c"]


@pytest.mark.parametrize("value, type_name", [
    ({"a": 1}, "dict"),
    (None, "NoneType"),
    (object(), "object"),
    ([[1, 2], [3]], "list"),
    ([1, "a"], "list"),
    ([1, None], "list"),
    (np.array([1, "x", None], dtype=object), "ndarray[object]"),
    (np.arange(2).astype("datetime64[s]"), "ndarray[datetime64[s]]"),
    (2**70, "int"),
])
def test_unstorable_value_raises_type_error_naming_it(tmp_path: Path, value: Any,
                                                      type_name: str) -> None:
    with pytest.raises(TypeError) as info:
        write(tmp_path / "r.h5", {"ok": 1, "bad": value})
    assert str(info.value).startswith(f"Error writing dataset 'bad' of type '{type_name}': ")
    assert leftovers(tmp_path) == []


def test_unstorable_metadata_names_the_dataset(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Error writing dataset 'x' of type 'int'"):
        write(tmp_path / "r.h5", {"x": 1}, metadata={"x": {"unit": {"no": "dict"}}})


@pytest.mark.parametrize("datasets, key", [({"": 1}, ""), ({".": 1}, "."),
                                           ({"a": 1, "a/b": 2}, "a/b")])
def test_names_hdf5_refuses_are_clear_errors(tmp_path: Path, datasets: dict[str, Any],
                                             key: str) -> None:
    with pytest.raises((TypeError, ValueError), match=f"Error writing dataset '{key}'"):
        write(tmp_path / "r.h5", datasets)
    assert leftovers(tmp_path) == []


# --- crash safety --------------------------------------------------------------------


def test_failed_rewrite_leaves_previous_file_and_no_temp(tmp_path: Path) -> None:
    path = write(tmp_path / "r.h5", {"first": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write(path, {"a": np.arange(1000), "b": {"not": "storable"}})
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == ["r.h5"]


def test_failure_before_rename_leaves_nothing(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk pulled out")

    monkeypatch.setattr(results.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk pulled out"):
        write(tmp_path / "r.h5", {"a": [1, 2, 3]})
    assert leftovers(tmp_path) == []


def test_interrupted_write_leaves_nothing(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a KeyboardInterrupt halfway through the datasets removes the partial file."""
    real = results._write_dataset
    calls = []

    def interrupting(group: Any, key: str, value: Any, metadata: Any) -> None:
        calls.append(key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(group, key, value, metadata)

    monkeypatch.setattr(results, "_write_dataset", interrupting)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "r.h5", {"a": 1, "b": 2, "c": 3})
    assert leftovers(tmp_path) == []


def test_reader_sees_complete_file_only(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """While a file is being written, the target name does not exist yet."""
    path = tmp_path / "r.h5"
    seen: list[bool] = []
    real = results._write_dataset

    def spying(group: Any, key: str, value: Any, metadata: Any) -> None:
        seen.append(path.exists())
        real(group, key, value, metadata)

    monkeypatch.setattr(results, "_write_dataset", spying)
    write(path, {"a": 1})
    assert seen and not any(seen)
    with h5py.File(path, "r") as f:
        assert f["datasets/a"][()] == 1


def test_hdf5_tools_read_a_results_file(tmp_path: Path) -> None:
    """The HDF5 command-line tools (Debian's hdf5-tools, built on HDF5 1.10, not the
    library h5py brings) read every field, group, dataset and attribute."""
    h5dump = shutil.which("h5dump")
    if h5dump is None:
        pytest.skip("no h5dump here (.ci/run installs Debian's hdf5-tools)")
    path = write(tmp_path / "r.h5", {"counts": np.arange(3, dtype=np.int32),
                                     "label": "first", "blob": b"\x00\x01"},
                 archive={"freq": 1.5e6}, metadata={"freq": {"unit": "MHz"}},
                 outcome="completed")
    result = subprocess.run([h5dump, str(path)], capture_output=True, text=True,
                            timeout=30.0)
    assert result.returncode == 0 and not result.stderr, result.stderr
    dump = result.stdout
    for name in ("datasets", "archive"):
        assert f'GROUP "{name}"' in dump
    for name in ("artiq_version", "rid", "start_time", "run_time", "expid", "outcome",
                 "counts", "label", "blob", "freq"):
        assert f'DATASET "{name}"' in dump, name
    assert 'ATTRIBUTE "unit"' in dump and '"MHz"' in dump
    assert "(0): 42" in dump and "0, 1, 2" in dump and '"completed"' in dump
