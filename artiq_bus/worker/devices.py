"""The device database and the per-run device manager.

``device_db.py`` defines a dict ``device_db``: name → entry, where an entry is

* ``{"type": "local", "module": M, "class": C, "arguments": {...}}`` — an object
  ``M.C(device_mgr, **arguments)`` made in the worker;
* ``{"type": "controller", "host", "port", "target_name"?, ...}`` — an RPC client to a
  controller; ``{"type": "controller_aux_target", "controller": NAME, "target_name"}``
  — a client to another target of that controller;
* ``{"type": "dummy"}`` — a :class:`DummyDevice`;
* a string — an alias of another entry.

A :class:`DeviceManager` lives for one run: it creates devices on first use, hands out
one instance per distinct (alias-resolved) description, and closes them in reverse
creation order when the run ends.
"""

from __future__ import annotations

import enum
import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ControllerUnsupported, DeviceError
from .tools import file_import, forget_new_modules

__all__ = ["DeviceType", "DeviceDB", "DummyDevice", "ActiveDevice", "DeviceManager",
           "ControllerFactory", "unsupported_controller", "rpc_controller"]

logger = logging.getLogger(__name__)

ControllerFactory = Callable[[dict[str, Any]], Any]


class DeviceType(str, enum.Enum):
    """The ``type`` of a device database entry."""

    LOCAL = "local"
    CONTROLLER = "controller"
    CONTROLLER_AUX_TARGET = "controller_aux_target"
    DUMMY = "dummy"


class DeviceDB:
    """The device database read from a ``device_db.py`` file (re-read by ``scan()``)."""

    def __init__(self, backing_file: str | os.PathLike[str] | None) -> None:
        self.backing_file = Path(backing_file) if backing_file is not None else None
        self.data: dict[str, Any] = {}
        if self.backing_file is not None:
            self.scan()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceDB:
        """A database held in memory (tools and tests)."""
        ddb = cls(None)
        ddb.data = dict(data)
        return ddb

    def scan(self) -> None:
        """Read the file again; modules it imports are re-read too."""
        if self.backing_file is None:
            return
        with forget_new_modules(self.backing_file.resolve().parent):
            module = file_import(self.backing_file, prefix="device_db_")
        try:
            data = vars(module)["device_db"]
        except KeyError:
            raise KeyError("device_db") from None
        self.data = dict(data)

    def get_device_db(self) -> dict[str, Any]:
        """All entries."""
        return self.data

    def get(self, key: str, resolve_alias: bool = False) -> Any:
        """Entry ``key``; with ``resolve_alias`` an alias is followed to its entry."""
        desc = self.data[key]
        seen = [key]
        while resolve_alias and isinstance(desc, str):
            if desc in seen:
                raise ValueError(f"device alias cycle: {' -> '.join(seen + [desc])}")
            seen.append(desc)
            desc = self.data[desc]
        return desc


class DummyDevice:
    """The device behind ``{"type": "dummy"}`` entries (and every device while an
    experiment is examined): it has no attributes."""


def unsupported_controller(desc: dict[str, Any]) -> Any:
    """A controller factory for places where controllers must not be reached."""
    raise ControllerUnsupported("controllers cannot be used here")


def rpc_controller(desc: dict[str, Any]) -> Any:
    """The default controller factory: a client of the controller at the entry's
    ``host``/``port`` (``BestEffortClient`` when ``best_effort``), closed with the run.
    A missing or ``None`` ``target_name`` selects the controller's only target."""
    from ..rpc import AutoTarget, BestEffortClient, Client  # not in the zygote's imports
    target = desc.get("target_name") or AutoTarget
    if desc.get("best_effort"):
        return BestEffortClient(desc["host"], desc["port"], target)
    return Client(desc["host"], desc["port"], target)


@dataclass
class ActiveDevice:
    """A device created in this run, under the name first used for it."""

    name: str
    desc: Any
    device: Any
    is_controller: bool


class DeviceManager:
    """Creates, shares and closes one run's devices.

    ``virtual_devices`` (``scheduler``, ``ccb``) win over the database;
    ``devarg_override`` maps a device name to arguments that replace those of its
    ``local`` entry; ``controller_factory(desc)`` makes controller clients.
    """

    def __init__(self, ddb: DeviceDB, virtual_devices: Mapping[str, Any] | None = None,
                 devarg_override: Mapping[str, Mapping[str, Any]] | None = None,
                 controller_factory: ControllerFactory = rpc_controller) -> None:
        self.ddb = ddb
        self.virtual_devices = dict(virtual_devices or {})
        self.devarg_override = {k: dict(v) for k, v in (devarg_override or {}).items()}
        self.controller_factory = controller_factory
        #: devices created in this run, in creation order
        self.active_devices: list[ActiveDevice] = []

    def get_device_db(self) -> dict[str, Any]:
        """All database entries."""
        return self.ddb.get_device_db()

    def get_desc(self, name: str) -> Any:
        """The alias-resolved entry of ``name`` (KeyError when there is none)."""
        return self.ddb.get(name, resolve_alias=True)

    def get(self, name: str) -> Any:
        """Device ``name``: created on first use, shared by equal descriptions."""
        if name in self.virtual_devices:
            return self.virtual_devices[name]
        desc = self._effective_desc(name)
        for active in self.active_devices:
            if active.desc == desc:
                return active.device
        try:
            device, is_controller = self._create(desc)
        except Exception as exc:
            raise DeviceError(f"Failed to create device {name!r}: {exc}") from exc
        self.active_devices.append(ActiveDevice(name, desc, device, is_controller))
        return device

    def _effective_desc(self, name: str) -> Any:
        """The resolved entry with overrides merged into a ``local`` entry's arguments
        (overrides given for the alias name win over those of its target)."""
        desc = self.get_desc(name)
        if not isinstance(desc, dict) or desc.get("type") != DeviceType.LOCAL.value:
            return desc
        overrides: dict[str, Any] = {}
        target = name
        while isinstance(self.ddb.data.get(target), str):
            target = self.ddb.data[target]
        overrides.update(self.devarg_override.get(target, {}))
        overrides.update(self.devarg_override.get(name, {}))
        if not overrides:
            return desc
        return {**desc, "arguments": {**desc.get("arguments", {}), **overrides}}

    def _create(self, desc: Any) -> tuple[Any, bool]:
        kind = DeviceType(desc["type"])
        if kind is DeviceType.LOCAL:
            module = importlib.import_module(desc["module"])
            cls = getattr(module, desc["class"])
            return cls(self, **desc.get("arguments", {})), False
        if kind is DeviceType.DUMMY:
            return DummyDevice(), False
        if kind is DeviceType.CONTROLLER:
            return self.controller_factory(dict(desc)), True
        return self.controller_factory(self._aux_target_desc(desc)), True

    def _aux_target_desc(self, desc: dict[str, Any]) -> dict[str, Any]:
        """An aux-target entry as a controller entry: the referenced controller's
        host and port, this entry's target name and best-effort flag."""
        controller = self.get_desc(desc["controller"])
        return {**controller, "type": DeviceType.CONTROLLER.value,
                "target_name": desc.get("target_name"),
                "best_effort": desc.get("best_effort", False)}

    def notify_run_end(self) -> None:
        """Tell every active device that ``run()`` is over."""
        for active in self.active_devices:
            notify = getattr(active.device, "notify_run_end", None)
            if notify is not None:
                notify()

    def close_devices(self) -> None:
        """Close every device, newest first; failures are logged, not raised."""
        for active in reversed(self.active_devices):
            method = "close_rpc" if active.is_controller else "close"
            close = getattr(active.device, method, None)
            if close is None:
                continue
            try:
                close()
            except Exception:
                logger.warning("Exception closing device %r", active.name, exc_info=True)
        self.active_devices.clear()
