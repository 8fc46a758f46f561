"""Unit constants: multiply by them to get SI values, divide to display.

Experiments write ``10*us`` or ``2*MHz``; every value the system stores is in SI
units.  The set (prefix × base unit) is ARTIQ's: ``s`` with p, n, u, m; ``Hz`` with
m, k, M, G; ``dB`` alone; ``V`` with u, m, k; ``A`` with u, m; ``W`` with n, u, m.
:data:`UNITS` maps every name to its scale (argument processors look units up there).
"""

from __future__ import annotations

import logging

__all__ = [
    "ps", "ns", "us", "ms", "s",
    "mHz", "Hz", "kHz", "MHz", "GHz",
    "dB",
    "uV", "mV", "V", "kV",
    "uA", "mA", "A",
    "nW", "uW", "mW", "W",
]

logger = logging.getLogger(__name__)

ps: float = 1e-12
ns: float = 1e-9
us: float = 1e-6
ms: float = 1e-3
s: float = 1.0

mHz: float = 1e-3
Hz: float = 1.0
kHz: float = 1e3
MHz: float = 1e6
GHz: float = 1e9

dB: float = 1.0

uV: float = 1e-6
mV: float = 1e-3
V: float = 1.0
kV: float = 1e3

uA: float = 1e-6
mA: float = 1e-3
A: float = 1.0

nW: float = 1e-9
uW: float = 1e-6
mW: float = 1e-3
W: float = 1.0

#: Every unit name above and its scale.
UNITS: dict[str, float] = {name: globals()[name] for name in __all__}
