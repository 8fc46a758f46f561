"""The scheduler node: ARTIQ's scheduling (:mod:`artiq_bus.scheduling`) on the bus.

Owns the ``schedule`` and ``interactive_args`` structs.  Service ``scheduler``:
``submit(pipeline_name, expid, priority=0, due_date=None, flush=False)`` → RID,
``delete(rid)``, ``request_termination(rid)``, ``check_pause(rid)``,
``check_termination(rid)``, ``get_status()``; for workers ``pause(rid)`` and
``get_interactive_arguments(rid, arglist_desc, title)``; for clients
``supply_interactive(rid, values)`` and ``cancel_interactive(rid)``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..broker import Broker
from ..broker.local import LocalClient
from ..runtime.bus import BusConnection
from ..runtime.service import ServiceHost
from ..runtime.rpc import rpc, rpc_methods
from ..runtime.structs import StructOwner, struct_methods
from ..scheduling import RIDCounter, Scheduler
from ..scheduling.bus_worker import BusCaller, BusWorkerHandle
from ..worker.results import results_path, write_results
from .repository import RepositoryClient

__all__ = ["SchedulerNode", "SCHEDULER_SERVICE"]

logger = logging.getLogger(__name__)

SCHEDULER_SERVICE = "scheduler"


def _class_name(expid: dict[str, Any]) -> str:
    """The name a results file gets when the run was never built."""
    if expid.get("class_name"):
        return str(expid["class_name"]).rsplit(".", 1)[-1]
    if expid.get("file"):
        return Path(expid["file"]).stem
    return "experiment"


class SchedulerNode:
    """The scheduler, its structs and its service."""

    services: tuple[str, ...] = (SCHEDULER_SERVICE,)

    def __init__(self, log_submissions: str | None = None,
                 persist_path: str = "schedule.sqlite", results: str = "results"):
        self._log_submissions = log_submissions
        self._persist_path = persist_path
        self._results = Path(results)
        self._scheduler: Scheduler | None = None
        self._owners: list[StructOwner] = []
        self._host: ServiceHost | None = None
        self._interactive: dict[int, asyncio.Future[dict[str, Any] | None]] = {}
        self._local_client: LocalClient | None = None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--log-submissions", default=None, metavar="FILE",
                            help="append a CSV line (RID, time, file) per submission")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SchedulerNode":
        return cls(args.log_submissions)

    async def start(self, bus: BusConnection) -> None:
        schedule = StructOwner("schedule", bus.publisher)
        self._interactive_args = StructOwner("interactive_args", bus.publisher)
        self._owners = [schedule, self._interactive_args]
        for owner in self._owners:
            await owner.start()
        repository = RepositoryClient(bus.client)  # checkouts of repository runs
        # Inside the master, calls to the pool and the workers skip the client's
        # socket: several per run.
        workers: BusCaller = bus.client
        if isinstance(bus.local, Broker):
            workers = self._local_client = LocalClient(bus.local)
        self._scheduler = Scheduler(
            lambda rid: BusWorkerHandle(workers, rid),
            RIDCounter("last_rid.pyon", str(self._results)), schedule,
            log_submissions=self._log_submissions, persist_path=self._persist_path,
            results_writer=self._write_results,
            resolve_repository=repository.resolve, release_revision=repository.release)
        await self._scheduler.start()
        self._host = bus.service(SCHEDULER_SERVICE,
                                 {**rpc_methods(self), **struct_methods(*self._owners)})
        await self._host.start()

    async def stop(self) -> None:
        # The scheduler first: the experiments it is closing still call the service
        # (check_pause, check_termination) until their workers are gone, and must not
        # fail for want of it (an error would overwrite the "interrupted" results file).
        if self._scheduler is not None:
            await self._scheduler.stop()
        if self._host is not None:
            await self._host.stop()
        for future in self._interactive.values():
            future.cancel()
        for owner in self._owners:
            await owner.stop()
        if self._local_client is not None:
            self._local_client.stop()

    @property
    def scheduler(self) -> Scheduler:
        assert self._scheduler is not None, "scheduler node not started"
        return self._scheduler

    # -- ARTIQ's schedule API ---------------------------------------------------------

    @rpc
    async def submit(self, pipeline_name: str, expid: dict[str, Any], priority: int = 0,
                     due_date: float | None = None, flush: bool = False) -> int | None:
        return await self.scheduler.submit(pipeline_name, expid, priority, due_date, flush)

    @rpc
    def delete(self, rid: int) -> None:
        self.scheduler.delete(rid)

    @rpc
    def request_termination(self, rid: int) -> None:
        self.scheduler.request_termination(rid)

    @rpc
    def check_pause(self, rid: int) -> bool:
        return self.scheduler.check_pause(rid)

    @rpc
    def check_termination(self, rid: int) -> bool:
        return self.scheduler.check_termination(rid)

    @rpc
    def get_status(self) -> dict[int, dict[str, Any]]:
        return self.scheduler.get_status()

    @rpc
    async def pause(self, rid: int) -> bool:
        """From a running experiment: returns when resumed (True: terminate)."""
        return await self.scheduler.pause(rid)

    @rpc
    def watchdog(self, rid: int, wid: int, timeout_s: float | None) -> None:
        """From a running experiment (one-way): start or stop one of its watchdogs."""
        handle = self.scheduler.worker_of(rid)
        if isinstance(handle, BusWorkerHandle):
            handle.watchdog(wid, timeout_s)

    # -- interactive arguments --------------------------------------------------------

    @rpc
    async def get_interactive_arguments(self, rid: int, arglist_desc: list[Any],
                                        title: str) -> dict[str, Any] | None:
        """From a running experiment: publish the request and wait for a user."""
        if rid in self._interactive:
            raise ValueError(f"RID {rid} already waits for interactive arguments")
        future = asyncio.get_running_loop().create_future()
        self._interactive[rid] = future
        self._interactive_args.setitem(rid, {"title": title, "arglist_desc": arglist_desc})
        try:
            return await future
        finally:
            del self._interactive[rid]
            self._interactive_args.delitem(rid)

    @rpc
    def supply_interactive(self, rid: int, values: dict[str, Any]) -> None:
        """Answer a run's request; the keys must be exactly those requested."""
        future = self._interactive.get(rid)
        if future is None or future.done():
            raise KeyError(f"RID {rid} is not waiting for interactive arguments")
        requested = {desc[0] for desc in self._interactive_args.data[rid]["arglist_desc"]}
        if set(values) != requested:
            raise ValueError(f"RID {rid} asks for {sorted(requested)}, "
                             f"not {sorted(values)}")
        future.set_result(values)

    @rpc
    def cancel_interactive(self, rid: int) -> None:
        """Cancel a run's request: the experiment gets CancelledArgsError."""
        future = self._interactive.get(rid)
        if future is None or future.done():
            raise KeyError(f"RID {rid} is not waiting for interactive arguments")
        future.set_result(None)

    # -- results for runs whose worker could not write them ---------------------------

    async def _write_results(self, rid: int, expid: dict[str, Any], start_time: float,
                             run_time: float, outcome: str,
                             class_name: str | None = None) -> None:
        if math.isnan(start_time):
            start_time = time.time()
        path = results_path(self._results, start_time, rid,
                            class_name or _class_name(expid))
        await asyncio.to_thread(
            write_results, path, rid=rid, start_time=start_time,
            run_time=None if math.isnan(run_time) else run_time, expid=expid, datasets={},
            archive={}, metadata={}, version=__version__, outcome=outcome)
        logger.warning("scheduler: RID %d: results file %s records: %s", rid, path, outcome)
