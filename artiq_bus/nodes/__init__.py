"""The nodes: one module each.  Each node class has ``services``, ``start(bus)`` and
``stop()`` (:class:`artiq_bus.runtime.BusNode`)."""

from .log import LogNode
from .management import ManagementNode

__all__ = ["LogNode", "ManagementNode"]
