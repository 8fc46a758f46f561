"""Examining an experiment file for the repository: what experiments it holds and what
arguments each one asks for, without running anything but import and ``build()``.

As in ARTIQ: the file is imported (from source, never from a stale bytecode cache), and
every public experiment class in its namespace (imported ones included) is built with
an argument manager that records each argument's description (``procdesc``, group,
tooltip) and gives ``None`` for every value.  Every device is a :class:`DummyDevice`
(``get_device_db()`` is the real database), datasets can be read but not changed.

The result never raises for a broken file: it is ``{"classes": {...}}`` or
``{"error": {"message", "line"}}``, so the master can report the file, the line and
the message, and list every other file.
"""

from __future__ import annotations

import inspect
import logging
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..language.environment import is_public_experiment
from .arguments import TraceArgumentManager
from .bus_devices import BusDatasetBackend
from .compat import install_artiq_compat
from .devices import DummyDevice
from .tools import file_import, forget_new_modules

if TYPE_CHECKING:
    from .process import WorkerBus

__all__ = ["examine_file", "experiment_name"]

logger = logging.getLogger(__name__)


class _ExamineDevices:
    """Every device is a dummy; the database itself is real (read on first use)."""

    def __init__(self, read_db: Callable[[], dict[str, Any]]):
        self._read_db = read_db

    def get_device_db(self) -> dict[str, Any]:
        return self._read_db()

    def get(self, name: str) -> Any:
        return DummyDevice()


class _ExamineDatasets:
    """The master's datasets, read-only: examining must not change anything."""

    def __init__(self, bus: WorkerBus | None):
        self._backend = BusDatasetBackend(bus) if bus is not None else None

    def get(self, key: str, archive: bool = False) -> Any:
        if self._backend is None:
            raise KeyError(key)
        return self._backend.get(key)

    def get_metadata(self, key: str) -> dict[str, Any]:
        if self._backend is None:
            raise KeyError(key)
        return self._backend.get_metadata(key)

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("datasets cannot be changed while an experiment is examined "
                        "(in a repository scan)")

    set = mutate = append_to = _read_only


def experiment_name(cls: type[Any]) -> str:
    """The explorer's name: the docstring's first line without a final ``.``, else
    the class name."""
    doc = (cls.__doc__ or "").strip()
    if not doc:
        return cls.__name__
    name = doc.splitlines()[0].strip()
    return name[:-1] if name.endswith(".") else name


def _describe_class(cls: type[Any], devices: _ExamineDevices,
                    datasets: _ExamineDatasets) -> dict[str, Any]:
    arguments = TraceArgumentManager()
    scheduler_defaults: dict[str, Any] = {}
    cls((devices, datasets, arguments, scheduler_defaults))
    return {"name": experiment_name(cls), "arginfo": arguments.requested_args,
            "argument_ui": getattr(cls, "argument_ui", None),
            "scheduler_defaults": scheduler_defaults}


def _error_line(exc: BaseException, filename: str) -> int | None:
    """The line of ``filename`` where ``exc`` happened (the deepest frame in it)."""
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        return exc.lineno
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            line = lineno
    return line


def _message(exc: BaseException, filename: str) -> str:
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        return f"{type(exc).__name__}: {exc.msg}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def examine_file(path: str, bus: WorkerBus | None = None) -> dict[str, Any]:
    """``{"classes": {class_name: {"name", "arginfo", "argument_ui",
    "scheduler_defaults"}}, "uses": [...]}`` for the experiment file ``path``, or
    ``{"error": {"message", "line"}}`` when importing it or building one of its
    experiments fails.  ``uses``: the files of the modules beside it that it imported,
    ``/``-separated, relative to its folder (its outcome depends on them too)."""
    filename = str(Path(path).resolve())
    install_artiq_compat()  # files written for ARTIQ import artiq.experiment
    if bus is not None:
        bus.set_source(f"worker(scan,{os.path.basename(path)})")
        devices = _ExamineDevices(lambda: bus.call("devices", "get_device_db"))
    else:
        devices = _ExamineDevices(dict)
    datasets = _ExamineDatasets(bus)
    directory = Path(filename).parent
    try:
        with forget_new_modules(directory) as loaded:
            module = file_import(filename)
            classes = {name: _describe_class(cls, devices, datasets)
                       for name, cls in inspect.getmembers(module, is_public_experiment)}
    except BaseException as exc:  # user code may raise anything, SystemExit included
        logger.debug("examining %s failed", path, exc_info=True)
        return {"error": {"message": _message(exc, filename),
                          "line": _error_line(exc, filename)}}
    uses = sorted({loaded_file.relative_to(directory).as_posix() for loaded_file in loaded
                   if str(loaded_file) != filename})
    return {"classes": classes, "uses": uses}
