"""The master's own service: its name (the dashboard's title) and remote termination."""

from __future__ import annotations

import asyncio
import logging

from ..runtime.bus import BusConnection
from ..runtime.service import ServiceHost
from ..runtime.rpc import rpc, rpc_methods

__all__ = ["ManagementNode", "MANAGEMENT_SERVICE"]

logger = logging.getLogger(__name__)

MANAGEMENT_SERVICE = "master"


class ManagementNode:
    """Service ``master``: ``get_name()``, ``terminate()``."""

    services: tuple[str, ...] = (MANAGEMENT_SERVICE,)

    def __init__(self, name: str | None, terminate: asyncio.Event):
        self._name = name
        self._terminate = terminate
        self._host: ServiceHost | None = None

    async def start(self, bus: BusConnection) -> None:
        self._host = bus.service(MANAGEMENT_SERVICE, rpc_methods(self))
        await self._host.start()

    async def stop(self) -> None:
        if self._host is not None:
            await self._host.stop()

    @rpc
    def get_name(self) -> str | None:
        return self._name

    @rpc
    def terminate(self) -> None:
        """Stop the master, as SIGTERM does (the reply goes out first)."""
        logger.info("master: termination requested over the bus")
        asyncio.get_running_loop().call_soon(self._terminate.set)
