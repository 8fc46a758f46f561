"""A simulated laser power meter and its controller (an example NDSP for artiq_bus)."""

from .driver import SimulatedPowerMeter

__all__ = ["SimulatedPowerMeter"]
