"""A spare worker's rehearsal: while it waits to be handed a run, it builds a tiny
experiment of its own, with no bus and no files.

A forked worker shares the zygote's memory until it writes to it, and CPython writes
to every object it uses (reference counts): the first build in a fresh worker spends
most of its time copying the pages it touches (on a virtual machine, a page fault costs
microseconds).  Touching them before the run arrives takes that copying off the
hand-over; the real build then finds them copied.  The rehearsal's experiment is
loaded as a real one is (from the workers' code cache, :mod:`.code_cache`), and built
through the same managers.

The zygote rehearses too, before its first fork (:func:`warm_up`): builds, and rounds of
what a worker does on the bus (connect, register, call, leave) with a service of its
own.  Python 3.11 rewrites a function's bytecode the first times it runs (quickening,
then specialisation) and fills caches as it goes; done once in the zygote, none of it
is done, and none of those pages copied, in each worker.  The zygote ends each round
with its ZeroMQ context destroyed and its thread joined: it forks holding neither.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import types
from typing import Any

from ..runtime.rpc import rpc, rpc_methods
from .arguments import ProcessArgumentManager
from .code_cache import cached_code, compile_text
from .datasets import DatasetManager, LocalDatasetBackend
from .devices import DeviceDB, DeviceManager
from .tools import get_experiment

__all__ = ["rehearse_build", "warm_up", "ZYGOTE_ROUNDS"]

logger = logging.getLogger(__name__)

#: The zygote's rehearsal rounds.  CPython 3.11 quickens a code object after 8 calls and
#: specialises its instructions as they run again: 20 rounds do both even for code that
#: runs once per worker.  They take about 0.2 s, once, when the master starts.
ZYGOTE_ROUNDS = 20
#: Bound on each step of a bus round (the broker is local and already listening).
_BUS_STEP_S = 2.0

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
        exec(cached_code(_SOURCE, "<rehearsal>", compile_text), module.__dict__)
        cls = get_experiment(module)
        # build() only takes the scheduler device; nothing calls it
        devices = DeviceManager(DeviceDB.from_dict({}), virtual_devices={"scheduler": object()})
        datasets = DatasetManager(LocalDatasetBackend())
        arguments = ProcessArgumentManager({})
        cls((devices, datasets, arguments, {}))
        arguments.check_unprocessed_arguments()
    except Exception as exc:  # noqa: BLE001 (a rehearsal must never cost the run)
        logger.debug("build rehearsal failed: %s", exc)


def warm_up(bus_config: dict[str, Any] | None, rounds: int = ZYGOTE_ROUNDS) -> None:
    """The zygote's rehearsal (see the module doc): ``rounds`` builds and, with the
    broker of ``bus_config``, as many bus rounds.  Never raises; a failed bus round
    (no broker) ends the bus rounds, logged at DEBUG."""
    for _ in range(rounds):
        rehearse_build()
        if bus_config is not None and not _rehearse_bus(bus_config):
            bus_config = None


class _Echo:
    @rpc
    def echo(self, value: Any) -> "concurrent.futures.Future[Any]":
        """Answered through a future, as a worker's stages are."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(value)
        return future


def _rehearse_bus(config: dict[str, Any]) -> bool:
    """One bus round: a bus thread as a worker's, and calls from this thread through
    it; whether it went through."""
    from .process import serve_bus  # imports this module

    name = f"rehearsal.{os.getpid()}"
    ready: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def bus_thread() -> None:
        try:
            serve_bus(ready, {**config, "service": name}, rpc_methods(_Echo()),
                      register_timeout_s=_BUS_STEP_S)
        except Exception:  # noqa: BLE001 (``ready`` carries it to the caller)
            pass
    thread = threading.Thread(target=bus_thread, name="rehearsal-bus")
    thread.start()
    try:
        bus = ready.result(timeout=_BUS_STEP_S + 1.0)
        try:
            bus.send(name, "ping")  # first: it arrives before the calls, not after BYE
            for value in ("a", 1, {"b": [1.5]}):
                # Bounded here too: if the broker goes, the bus thread ends, and a call
                # handed to it then is never sent (a worker ends with its bus thread;
                # the zygote must not wait for good).
                bus.start_call(name, "echo", value, timeout_s=_BUS_STEP_S).result(
                    timeout=_BUS_STEP_S)
        finally:
            bus.stop()
        return True
    except Exception as exc:  # noqa: BLE001 (a rehearsal must never stop the zygote)
        logger.debug("bus rehearsal failed: %s: %s", type(exc).__name__, exc)
        return False
    finally:
        thread.join()  # every step inside is bounded
