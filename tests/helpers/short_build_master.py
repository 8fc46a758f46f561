"""``artiq_master`` with a shorter build timeout: ``short_build_master.py SECONDS ARGS``.

The scheduler's worker handle reads ``bus_worker.BUILD_TIMEOUT_S`` at each build, so
setting the module constant before the master starts is enough.
"""

from __future__ import annotations

import sys

from artiq_bus.frontend import artiq_master
from artiq_bus.scheduling import bus_worker

if __name__ == "__main__":
    bus_worker.BUILD_TIMEOUT_S = float(sys.argv.pop(1))
    artiq_master.main()
