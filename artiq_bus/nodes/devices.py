"""The devices node: owns the ``devices`` struct, read from the device database file
(``--device-db``, a Python file defining ``device_db``).

Service ``devices``: ``get_device_db()``, ``get(key, resolve_alias=False)``, ``scan()``
(read the file again and publish what changed), plus ``snapshot``/``version``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ..runtime.bus import BusConnection
from ..runtime.service import ServiceHost
from ..runtime.rpc import rpc, rpc_methods
from ..runtime.structs import StructOwner, struct_methods
from ..worker.devices import DeviceDB
from .errors import NodeConfigError

__all__ = ["DevicesNode", "DEVICES_SERVICE"]

logger = logging.getLogger(__name__)

DEVICES_SERVICE = "devices"


class DevicesNode:
    """Serves the device database and publishes its changes."""

    services: tuple[str, ...] = (DEVICES_SERVICE,)

    def __init__(self, device_db: str):
        # Read at construction: a broken file stops the master before it starts.
        try:
            self._db = DeviceDB(device_db)
        except FileNotFoundError:
            raise NodeConfigError(f"device database {device_db} not found (give "
                                  "--device-db FILE)") from None
        except Exception as exc:  # the file is Python: it can raise anything
            raise NodeConfigError(f"cannot read device database {device_db}: "
                                  f"{type(exc).__name__}: {exc}") from None
        self._owner: StructOwner | None = None
        self._host: ServiceHost | None = None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--device-db", default="device_db.py",
                            help="device database file (default: %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DevicesNode":
        return cls(args.device_db)

    async def start(self, bus: BusConnection) -> None:
        self._owner = StructOwner("devices", bus.publisher, self._db.get_device_db())
        await self._owner.start()
        self._host = bus.service(DEVICES_SERVICE,
                                 {**rpc_methods(self), **struct_methods(self._owner)})
        await self._host.start()

    async def stop(self) -> None:
        if self._host is not None:
            await self._host.stop()
        if self._owner is not None:
            await self._owner.stop()

    @rpc
    def get_device_db(self) -> dict[str, Any]:
        return self._db.get_device_db()

    @rpc
    def get(self, key: str, resolve_alias: bool = False) -> Any:
        return self._db.get(key, resolve_alias)

    @rpc
    def scan(self) -> None:
        """Read the device database file again; subscribers see the differences."""
        self._db.scan()
        assert self._owner is not None
        self._owner.replace(self._db.get_device_db())
        logger.info("devices: device database read again (%d entries)",
                    len(self._db.get_device_db()))
