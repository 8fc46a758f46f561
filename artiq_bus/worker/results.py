"""Results files: one HDF5 file per run, in ARTIQ's layout, written crash-safely.

Where: ``<root>/YYYY-MM-DD/HH/<rid:09>-<ClassName>.h5`` (local time of the run's start,
the experiment *class* name), see :func:`results_path`.

What (:func:`write_results`)::

    datasets/<key>   every dataset the run set with archive=True
    archive/<key>    every dataset the run read from the master with archive=True
                     (both: the dataset's metadata unit/scale/precision as attributes;
                     for archive/, the master's metadata when the run fetched it)
    artiq_version    str      the version of the software that ran the experiment
    rid              int
    start_time       float    epoch seconds, start of build
    run_time         float    epoch seconds, start of run(); NaN if run() never started
    expid            str      PYON (artiq_bus.pyon.encode) of the expid
    outcome          str      only when given: how the run ended (beyond ARTIQ)

``run_time`` is NaN rather than absent when the run never reached ``run()`` (a worker
that died in build or prepare): every results file then has the same root fields, with
the same types, and NaN never looks like a real time.  ``outcome`` is free text, by
convention ``"completed"``, ``"error: <Type>: <message>"``, ``"interrupted"`` or
``"worker died: signal 9"``; files ARTIQ wrote have no ``outcome``.

Values: strings are variable-length UTF-8; bool, int, float (NaN included) and complex
are scalars; numpy arrays and scalars of every dtype HDF5 holds are stored as they are
(string arrays become variable-length UTF-8); lists and tuples become arrays (nested
ones multi-dimensional, lists of strings string arrays); ``bytes`` are stored opaque
(``numpy.void``, as ARTIQ's thumbnails are: lossless, read back with ``.tobytes()``).
Anything else raises ``TypeError("Error writing dataset '<key>' of type '<type>': ...")``.

Crash safety: a file is written under a temporary name in the target directory,
flushed to disk, then renamed over the target in one step.  A reader sees the previous
file or the complete new one, never a part; if writing fails the temporary file is
removed and the previous file (if any) is left as it was.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5f, h5g, h5p, h5s, h5t

from .. import pyon
from ..files import atomic_replace
from .results_layout import results_dir, results_path

__all__ = ["results_dir", "results_path", "hdf5_value", "write_results", "write_datasets_only"]

logger = logging.getLogger(__name__)

Metadata = Mapping[str, Mapping[str, Any]]

_UTF8 = h5py.string_dtype("utf-8")
PathLike = str | os.PathLike[str]


# --- values ------------------------------------------------------------------------

def _leaves(value: Any) -> Iterator[Any]:
    """The non-list items of a (nested) list or tuple."""
    for item in value:
        if isinstance(item, (list, tuple)):
            yield from _leaves(item)
        else:
            yield item


def _string_array(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A str (or object-of-str) array as one HDF5 stores: variable-length UTF-8."""
    return np.asarray(array, dtype=_UTF8)


def _sequence(value: list[Any] | tuple[Any, ...]) -> np.ndarray[Any, Any]:
    """A (nested) list as an array; strings only when every item is one."""
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nesting
        raise TypeError(f"nested lists must be rectangular ({exc})") from None
    if array.dtype.kind == "U":
        if not all(isinstance(item, str) for item in _leaves(value)):
            raise TypeError("a list mixing strings and other values has no HDF5 type")
        return _string_array(array)
    return array


def _array(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if array.dtype.kind == "U":
        return _string_array(array)
    if array.dtype.kind == "O":
        if array.size and all(isinstance(item, str) for item in array.flat):
            return _string_array(array)
        raise TypeError(f"an array of Python objects (dtype {array.dtype}) has no HDF5 type")
    return array


def hdf5_value(value: Any) -> Any:
    """``value`` in a form h5py stores as described in the module doc (TypeError if
    there is none); the dtype check itself is h5py's, at write time."""
    if isinstance(value, str):
        return np.asarray(value, dtype=_UTF8)
    if isinstance(value, (bytes, bytearray)):
        return np.void(bytes(value))
    if isinstance(value, np.ndarray):
        return _array(value)
    if isinstance(value, (list, tuple)):
        return _sequence(value)
    if isinstance(value, (bool, int, float, complex, np.generic)):
        return value
    raise TypeError("no HDF5 representation")


# --- writing -------------------------------------------------------------------------

def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray[{value.dtype}]"
    return type(value).__name__


def _write_dataset(group: h5py.Group, key: str, value: Any,
                   metadata: Mapping[str, Any]) -> None:
    if not key:
        raise ValueError("Error writing dataset '': a dataset needs a name")
    try:
        dataset = group.create_dataset(key, data=hdf5_value(value))
        for name, item in metadata.items():
            dataset.attrs[name] = hdf5_value(item)
    except TypeError as exc:
        raise TypeError(f"Error writing dataset '{key}' of type '{_describe(value)}': "
                        f"{exc}") from None
    except ValueError as exc:  # a name HDF5 refuses, e.g. "."
        raise ValueError(f"Error writing dataset '{key}': {exc}") from None


def _write_group(parent: h5py.Group, name: str, datasets: Mapping[str, Any],
                 metadata: Metadata) -> None:
    group = h5py.Group(h5g.create(parent.id, name.encode()))  # low-level: see _write_root
    for key, value in datasets.items():
        _write_dataset(group, key, value, metadata.get(key, {}))


@functools.cache
def _property_lists() -> tuple[h5p.PropFAID, h5p.PropFCID]:
    """The file access and creation properties ``h5py.File(path, "w")`` uses, made
    once."""
    access = h5p.create(h5p.FILE_ACCESS)
    access.set_libver_bounds(h5f.LIBVER_EARLIEST, h5f.LIBVER_LATEST)
    access.set_fclose_degree(h5f.CLOSE_STRONG)  # closing the file closes what is in it
    creation = h5p.create(h5p.FILE_CREATE)
    creation.set_obj_track_times(False)
    return access, creation


@contextmanager
def _atomic_h5(path: PathLike, sync_directory: bool = True) -> Iterator[h5py.Group]:
    """The root group of an HDF5 file that replaces ``path`` in one step when the block
    succeeds.  Made and closed through h5py's low-level API: ``h5py.File``'s own set-up
    and close cost about 0.3 ms, a fifth of a small file's time."""
    access, creation = _property_lists()
    with atomic_replace(path, sync_directory=sync_directory) as temp:
        file_id = h5f.create(os.fsencode(temp), h5f.ACC_TRUNC, fapl=access, fcpl=creation)
        try:
            yield h5py.Group(h5g.open(file_id, b"/"))
        finally:
            file_id.close()
    logger.debug("wrote %s", path)


def _write_groups(h5file: h5py.Group, datasets: Mapping[str, Any],
                  archive: Mapping[str, Any], metadata: Metadata,
                  archive_metadata: Metadata | None = None) -> None:
    _write_group(h5file, "datasets", datasets, metadata)
    # an archived dataset's metadata: the master's when known, else this run's
    _write_group(h5file, "archive", archive, {**metadata, **(archive_metadata or {})})


@functools.cache
def _hdf5_type(dtype: np.dtype[Any]) -> h5t.TypeID:
    """HDF5's type for a root field's dtype, made once: the dataset copies it."""
    return h5t.py_create(dtype, logical=True)


def _write_root(h5file: h5py.Group, fields: Iterable[tuple[str, Any]]) -> None:
    """The root fields, scalars of known types, through h5py's low-level API: its
    high-level one costs about 0.3 ms per dataset, most of a small file's time."""
    scalar = h5s.create(h5s.SCALAR)
    for name, value in fields:
        data = np.asarray(value, dtype=_UTF8 if isinstance(value, str) else None)
        dataset = h5d.create(h5file.id, name.encode(), _hdf5_type(data.dtype), scalar)
        dataset.write(h5s.ALL, h5s.ALL, data)


def write_results(path: PathLike, *, rid: int, start_time: float, run_time: float | None,
                  expid: Mapping[str, Any], datasets: Mapping[str, Any],
                  archive: Mapping[str, Any], metadata: Metadata, version: str,
                  outcome: str | None = None,
                  archive_metadata: Metadata | None = None,
                  sync_directory: bool = True) -> None:
    """Write a run's results file (layout in the module doc); missing directories are
    created.  ``run_time=None`` (``run()`` never started) is stored as NaN.
    ``sync_directory=False``: the caller flushes the directory entry to disk itself
    (:func:`artiq_bus.files.fsync_path`), once for several files."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fields: list[tuple[str, Any]] = [
        ("artiq_version", str(version)),
        ("rid", np.int64(rid)),
        ("start_time", float(start_time)),
        ("run_time", math.nan if run_time is None else float(run_time)),
        ("expid", pyon.encode(dict(expid))),
    ]
    if outcome is not None:
        fields.append(("outcome", str(outcome)))
    with _atomic_h5(path, sync_directory) as h5file:
        _write_groups(h5file, datasets, archive, metadata, archive_metadata)
        _write_root(h5file, fields)


def write_datasets_only(path: PathLike, datasets: Mapping[str, Any],
                        archive: Mapping[str, Any], metadata: Metadata) -> None:
    """Write only the ``datasets/`` and ``archive/`` groups (``artiq_run -o``); the
    directory must exist."""
    with _atomic_h5(path) as h5file:
        _write_groups(h5file, datasets, archive, metadata)
