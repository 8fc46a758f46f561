"""A spare worker's rehearsal: while it waits to be handed a run, it builds a tiny
experiment of its own, with no bus and no files.

A forked worker shares the zygote's memory until it writes to it, and CPython writes
to every object it uses (reference counts): the first build in a fresh worker spends
most of its time copying the pages it touches (on a virtual machine, a page fault costs
microseconds).  Touching them before the run arrives takes that copying off the
hand-over; the real build then finds them copied.  The rehearsal's experiment is
compiled from source as a real one is, and built through the same managers.
"""

from __future__ import annotations

import logging
import types

from .arguments import ProcessArgumentManager
from .datasets import DatasetManager, LocalDatasetBackend
from .devices import DeviceDB, DeviceManager
from .tools import get_experiment

__all__ = ["rehearse_build"]

logger = logging.getLogger(__name__)

_SOURCE = '''\
from artiq.experiment import *


class Rehearsal(EnvExperiment):
    """What a typical experiment's build() does"""

    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("count", NumberValue(10, precision=0, step=1))
        self.setattr_argument("scan", Scannable(default=RangeScan(0, 1, 3)))
        self.setattr_argument("flag", BooleanValue(False))
'''


def rehearse_build() -> None:
    """Import and build the rehearsal experiment; never raises (it is only a
    speed-up: a failure is logged at DEBUG and forgotten)."""
    try:
        module = types.ModuleType("artiq_worker_rehearsal")
        exec(compile(_SOURCE, "<rehearsal>", "exec"), module.__dict__)
        cls = get_experiment(module)
        # build() only takes the scheduler device; nothing calls it
        devices = DeviceManager(DeviceDB.from_dict({}), virtual_devices={"scheduler": object()})
        datasets = DatasetManager(LocalDatasetBackend())
        arguments = ProcessArgumentManager({})
        cls((devices, datasets, arguments, {}))
        arguments.check_unprocessed_arguments()
    except Exception as exc:  # noqa: BLE001 (a rehearsal must never cost the run)
        logger.debug("build rehearsal failed: %s", exc)
