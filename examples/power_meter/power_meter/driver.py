"""The driver: a laser power meter simulated in software.

A real driver would talk to the instrument over a serial port or USB; this one draws
each reading from the laser's nominal power, a slow drift and Gaussian noise, so that
an experiment has something to plot.  Powers are in watts (SI, as ARTIQ datasets).
"""

from __future__ import annotations

import math
import time

import numpy as np


class SimulatedPowerMeter:
    """A simulated optical power meter (Thorlabs PM100-like)."""

    def __init__(self, power: float = 1e-3, noise: float = 0.02, drift: float = 0.05,
                 wavelength: float = 780e-9, seed: int | None = None):
        self._power = power
        self._noise = noise
        self._drift = drift
        self._wavelength = wavelength
        self._offset = 0.0
        self._rng = np.random.default_rng(seed)
        self._start = time.monotonic()

    def get_identity(self) -> str:
        """The instrument's identification string."""
        return "Simulated power meter, serial SIM0001"

    def _true_power(self) -> float:
        # A drift with a 60 s period: successive scans see the laser wander.
        phase = 2 * math.pi * (time.monotonic() - self._start) / 60.0
        return self._power * (1 + self._drift * math.sin(phase))

    def read_power(self) -> float:
        """One reading, in watts."""
        reading = self._true_power() * (1 + self._noise * self._rng.standard_normal())
        return float(reading - self._offset)

    def read_powers(self, count: int) -> np.ndarray:
        """``count`` readings at once, in watts (an array)."""
        if not 0 < count <= 1_000_000:
            raise ValueError(f"count must be in 1..1000000, not {count}")
        noise = 1 + self._noise * self._rng.standard_normal(count)
        return self._true_power() * noise - self._offset

    def zero(self) -> None:
        """Take the present reading as the dark offset (block the beam first)."""
        self._offset = 0.0
        self._offset = float(np.mean(self.read_powers(100)))

    def get_wavelength(self) -> float:
        """The calibration wavelength, in metres."""
        return self._wavelength

    def set_wavelength(self, wavelength: float) -> None:
        """Set the calibration wavelength, in metres (400 nm to 1100 nm)."""
        if not 400e-9 <= wavelength <= 1100e-9:
            raise ValueError(f"wavelength {wavelength} m is outside 400-1100 nm")
        self._wavelength = wavelength

    def ping(self) -> bool:
        """Whether the instrument answers (the controller manager calls this)."""
        return True

    def close(self) -> None:
        """Release the instrument."""
