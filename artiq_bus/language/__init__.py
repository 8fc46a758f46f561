"""The experiment API: what experiment files import (``from artiq_bus.experiment import *``,
or ``from artiq.experiment import *`` through :mod:`artiq_bus.worker.compat`).

Submodules: :mod:`.units` (unit constants), :mod:`.core` (decorators, watchdog, run
control exceptions), :mod:`.types` (kernel type names), :mod:`.scan` (scan objects),
:mod:`.processors` (argument processors), :mod:`.environment` (experiment classes).
"""

from . import core, environment, errors, processors, scan, types, units
from .core import (CancelledArgsError, TerminationRequested, host_only, kernel, portable,
                   rpc, set_watchdog_factory, syscall, watchdog)
from .environment import (EnvExperiment, Experiment, HasEnvironment, is_experiment,
                          is_public_experiment)
from .processors import (BooleanValue, DefaultMissing, EnumerationValue, NoDefault,
                         NumberValue, PYONValue, Scannable, StringValue)
from .scan import (CenterScan, ExplicitScan, MultiScanManager, NoScan, RangeScan,
                   ScanObject, ScanPoint)
from .types import (TArray, TBool, TByteArray, TBytes, TFloat, TInt32, TInt64, TList, TNone,
                    TStr, TTuple)
from .units import *  # noqa: F403 - the unit constants, listed in units.__all__

__all__ = [
    # core
    "kernel", "portable", "rpc", "host_only", "syscall", "watchdog", "set_watchdog_factory",
    "TerminationRequested", "CancelledArgsError",
    # types
    "TNone", "TBool", "TInt32", "TInt64", "TFloat", "TStr", "TBytes", "TByteArray", "TList",
    "TTuple", "TArray",
    # environment and processors
    "HasEnvironment", "Experiment", "EnvExperiment", "is_experiment", "is_public_experiment",
    "NoDefault", "DefaultMissing", "PYONValue", "BooleanValue", "EnumerationValue",
    "NumberValue", "StringValue", "Scannable",
    # scans
    "ScanObject", "NoScan", "RangeScan", "CenterScan", "ExplicitScan", "ScanPoint",
    "MultiScanManager",
    # units
    *units.__all__,
]
