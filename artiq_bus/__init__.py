"""artiq_bus: ARTIQ's management system rebuilt as nodes on a ZeroMQ bus."""

__version__ = "0.1.0"
__all__ = ["__version__"]
