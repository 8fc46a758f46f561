"""Everything an experiment file needs: ``from artiq_bus.experiment import *``.

The same names as :mod:`artiq_bus.language`; ARTIQ experiment files reach this module
as ``artiq.experiment`` through :mod:`artiq_bus.worker.compat`.
"""

from artiq_bus.language import *  # noqa: F403
from artiq_bus.language import __all__ as _language_all

__all__ = list(_language_all)
