"""What a node process holds to be on the bus: one context, the broker's address, its
keys, a client for calls, a publisher for publications.

Nodes (``artiq_bus.nodes``) take a started :class:`BusConnection`; the same node class
runs inside the master (``inproc://`` endpoints) or alone on another host (TCP).
(Workers do not: their one connection is :class:`artiq_bus.worker.link.WorkerLink`.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from ..client.aio import AsyncClient
from ..net import BusAddress, CurveClient
from ..protocol import Liveness
from .rpc import LocalBroker
from .service import ServiceHost
from .structs import Publisher

__all__ = ["BusConnection", "BusNode"]


@dataclasses.dataclass
class BusConnection:
    """A started connection to a broker, shared by the nodes of one process."""

    context: zmq.Context
    address: BusAddress
    curve: CurveClient | None = None
    #: The broker, when it runs in this process: services then skip the socket.
    local: LocalBroker | None = None
    client: AsyncClient = dataclasses.field(init=False)
    publisher: Publisher = dataclasses.field(init=False)

    async def start(self) -> None:
        """Connect a client and a publisher."""
        self.client = AsyncClient(self.address, context=self.context, curve=self.curve)
        self.publisher = Publisher(self.context, self.address.publish, self.curve)
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()
        self.publisher.close()

    def service(self, name: str, methods: dict[str, Callable[..., Any]],
                reconnect: bool = True,
                liveness_by: Liveness = Liveness.HEARTBEAT) -> ServiceHost:
        """A (not yet started) service host on this connection."""
        return ServiceHost(self.context, self.address, name, methods, curve=self.curve,
                           local=self.local, reconnect=reconnect, liveness_by=liveness_by)


class BusNode(Protocol):
    """What every node offers the master and ``artiq_node``."""

    #: The services it registers: the master is ready when each answers ``ping``.
    services: tuple[str, ...]

    async def start(self, bus: BusConnection) -> None: ...

    async def stop(self) -> None: ...
