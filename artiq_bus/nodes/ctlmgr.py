"""The controller manager node: runs the controllers the device database gives its host.

It follows the ``devices`` struct with a :class:`~artiq_bus.client.Replica` and, after
every change, compares the entries it should run with those it runs: a new entry is
started, a removed or changed one stopped (a changed one then started anew), an
unchanged one left alone.  A master restart is only a resynchronisation of the replica
with the same entries, so healthy controllers keep running (ARTIQ restarts them all).

An entry is this host's when it is of type ``controller``, has a ``command``, and its
``host`` resolves to an address of the host filter (ARTIQ's rule).  Entries without a
command are not managed and not an error.

Service ``ctlmgr.HOSTNAME``: ``controllers()`` (name → state, pid, starts, command) and
``retry_now(name)``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from ..client.replica import Replica
from ..client.subscriber import Subscriber
from ..runtime.bus import BusConnection
from ..runtime.service import ServiceHost
from ..runtime.rpc import rpc, rpc_methods
from .controller import ControllerSpec, ManagedController, make_spec

__all__ = ["ControllerManager", "ctlmgr_service"]

logger = logging.getLogger(__name__)


def ctlmgr_service(node: str) -> str:
    """The bus service of the controller manager of host ``node``."""
    return f"ctlmgr.{node}"[:128]


class ControllerManager:
    """Starts, watches and stops the controllers of one host."""

    def __init__(self, host_filter: str, bind: str, node: str):
        self.host_filter = host_filter
        self.bind = bind
        self.node = node
        self.services = (ctlmgr_service(node),)
        self._controllers: dict[str, ManagedController] = {}
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._addresses: dict[str, frozenset[str]] = {}
        self._reported: set[tuple[str, str]] = set()
        self._changed = asyncio.Event()
        self._subscriber: Subscriber | None = None
        self._replica: Replica | None = None
        self._host: ServiceHost | None = None
        self._reconciler: asyncio.Task[None] | None = None

    async def start(self, bus: BusConnection) -> None:
        self._subscriber = Subscriber(bus.address.notify, context=bus.context, curve=bus.curve)
        await self._subscriber.start()
        self._reconciler = asyncio.create_task(self._reconcile_forever(), name="ctlmgr")
        self._replica = Replica(bus.client, self._subscriber, "devices",
                                listener=lambda update: self._changed.set())
        await self._replica.start()
        self._host = bus.service(self.services[0], rpc_methods(self))
        await self._host.start()

    async def stop(self) -> None:
        """Stop every controller (they do not outlive their manager), then the node."""
        if self._reconciler is not None:
            self._reconciler.cancel()
            await asyncio.gather(self._reconciler, return_exceptions=True)
        controllers = list(self._controllers.values())
        self._controllers.clear()
        await asyncio.gather(*(c.stop() for c in controllers), *self._stopping.values(),
                             return_exceptions=True)
        for part in (self._host, self._replica, self._subscriber):
            if part is not None:
                await part.stop()

    @rpc
    def controllers(self) -> dict[str, Any]:
        """Name → ``{"state", "pid", "starts", "command"}`` of every managed controller."""
        return {name: c.status() for name, c in self._controllers.items()}

    @rpc
    def retry_now(self, name: str) -> None:
        """Restart controller ``name`` now if it waits to be restarted."""
        self._controllers[name].retry_now()

    # -- following the device database ------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            assert self._replica is not None
            try:
                await self._reconcile(dict(self._replica.value))
            except Exception:  # a bug here must not stop the manager
                logger.exception("ctlmgr %s: failed to apply the device database", self.node)

    async def _reconcile(self, devices: dict[str, Any]) -> None:
        wanted = await self._wanted(devices)
        for name, controller in list(self._controllers.items()):
            spec = wanted.get(name)
            if spec is None or spec.entry != controller.spec.entry:
                logger.info("ctlmgr %s: stopping controller %s (entry %s)", self.node, name,
                            "removed" if spec is None else "changed")
                del self._controllers[name]
                self._stopping[name] = asyncio.create_task(self._stop(name, controller))
        for name, spec in wanted.items():
            if name not in self._controllers:
                controller = ManagedController(spec, after=self._stopping.get(name))
                self._controllers[name] = controller
                controller.start()

    async def _stop(self, name: str, controller: ManagedController) -> None:
        await controller.stop()
        if self._stopping.get(name) is asyncio.current_task():
            del self._stopping[name]

    async def _wanted(self, devices: dict[str, Any]) -> dict[str, ControllerSpec]:
        wanted = {}
        for name, entry in devices.items():
            if (not isinstance(entry, dict) or entry.get("type") != "controller"
                    or not entry.get("command")):
                continue
            try:
                if not await self._is_local(entry["host"]):
                    continue
                wanted[name] = make_spec(name, entry, self.bind)
            except (KeyError, ValueError, TypeError, IndexError, OSError) as exc:
                self._report(name, entry, exc)
        return wanted

    def _report(self, name: str, entry: dict[str, Any], exc: Exception) -> None:
        """Log an unusable entry once (the database is re-applied at every change)."""
        key = (name, repr(entry))
        if key not in self._reported:
            self._reported.add(key)
            logger.error("ctlmgr %s: cannot run controller %s: %s: %s", self.node, name,
                         type(exc).__name__, exc)

    async def _is_local(self, host: Any) -> bool:
        """Whether ``host`` names an address of the host filter."""
        mine = await self._resolve(self.host_filter)
        return bool(mine & await self._resolve(str(host)))

    async def _resolve(self, host: str) -> frozenset[str]:
        cached = self._addresses.get(host)
        if cached is None:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, None, type=socket.SOCK_STREAM)
            except OSError:
                return frozenset()  # not cached: the name may resolve later
            cached = self._addresses[host] = frozenset(str(info[4][0]) for info in infos)
        return cached
