"""Controller RPC: lab-device servers and their clients, with sipyco's call API.

A controller (NDSP) serves one or more *targets* (driver objects) on its own port::

    from artiq_bus.rpc import simple_server_loop
    simple_server_loop({"power_meter": PowerMeter()}, "::1", 3280)

and clients call their public methods::

    from artiq_bus.rpc import Client
    meter = Client("::1", 3280, "power_meter")
    meter.read_power()

The wire format is :mod:`artiq_bus.protocol.rpc` (docs/protocol.md §11).
"""

from .aio import AsyncioClient
from .client import BestEffortClient, Client
from .connection import AutoTarget
from .errors import ControllerTimeout, ControllerUnavailable, NoSuchTarget, ServerConfigError
from .server import Server, simple_server_loop

__all__ = ["simple_server_loop", "Server", "Client", "AsyncioClient", "BestEffortClient",
           "AutoTarget", "ControllerUnavailable", "ControllerTimeout", "NoSuchTarget",
           "ServerConfigError"]
