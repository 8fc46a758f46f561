"""What every node is built on: serving methods, owning replicated structs, logging to
the bus."""

from .bus import BusConnection, BusNode
from .logs import BusLogHandler
from .service import ServiceHost
from .rpc import rpc, rpc_methods
from .structs import Publisher, StructOwner, struct_methods

__all__ = ["BusConnection", "BusNode", "BusLogHandler", "ServiceHost", "rpc", "rpc_methods",
           "Publisher", "StructOwner", "struct_methods"]
