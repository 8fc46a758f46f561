"""The results node: writes runs' HDF5 results files, in a long-lived process.

A worker is a fresh process per run, forked from the zygote: everything it touches is
copied page by page (copy-on-write), and HDF5 touches a lot.  Writing a small results
file there costs about 11 ms of CPU, against about 4 ms in a process that has written
one before, and keeping h5py out of the zygote makes every fork cheaper.  So workers
send their results here, and write them themselves only when this service cannot
(not registered yet, gone, or the results too large for one message): a results file
is never lost to this node.

Service ``results``: ``status()``; ``write(rid, start_time, class_name, ...)`` writes
``<root>/YYYY-MM-DD/HH/<rid:09>-<class_name>.h5`` (layout in
:mod:`artiq_bus.worker.results`) crash-safely and returns its path once it is on disk.
Files are written one at a time, off the event loop.

The worker pool starts this node in a process forked by the zygote (:func:`main`),
with the master's working directory, and starts it again if it dies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zmq

from .. import __version__
from ..net import BusAddress, CurveClient
from ..protocol import Liveness
from ..runtime.bus import BusConnection
from ..runtime.logs import BusLogHandler
from ..runtime.service import ServiceHost, rpc, rpc_methods
from ..worker.results import results_path, write_results

__all__ = ["ResultsNode", "RESULTS_SERVICE", "main"]

logger = logging.getLogger(__name__)

RESULTS_SERVICE = "results"


class ResultsNode:
    """Serves ``results.write``."""

    services = (RESULTS_SERVICE,)

    def __init__(self, root: str | Path = "results"):
        self.root = Path(root).absolute()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, "results-writer")
        self._host: ServiceHost | None = None
        self.written = 0

    async def start(self, bus: BusConnection) -> None:
        # h5py may hold the GIL through one long write: judge liveness by connection
        self._host = bus.service(RESULTS_SERVICE, rpc_methods(self), reconnect=False,
                                 liveness_by=Liveness.CONNECTION)
        await self._host.start()

    async def stop(self) -> None:
        if self._host is not None:
            await self._host.stop()
        self._writer.shutdown(wait=True)

    @property
    def host(self) -> ServiceHost | None:
        return self._host

    @rpc
    def status(self) -> dict[str, Any]:
        """``{"pid", "written", "root"}``: this node's process, how many files it wrote,
        and where."""
        return {"pid": os.getpid(), "written": self.written, "root": str(self.root)}

    @rpc
    async def write(self, rid: int, start_time: float, class_name: str,
                    run_time: float | None, expid: dict[str, Any],
                    datasets: dict[str, Any], archive: dict[str, Any],
                    metadata: dict[str, dict[str, Any]],
                    archive_metadata: dict[str, dict[str, Any]] | None = None,
                    outcome: str | None = None) -> str:
        """Write run ``rid``'s results file; its path, once it is on disk.  A value
        HDF5 cannot hold raises TypeError, as writing it in the worker would."""
        _check_request(rid, start_time, class_name, run_time, expid)
        for name, mapping in (("datasets", datasets), ("archive", archive),
                              ("metadata", metadata),
                              ("archive_metadata", archive_metadata or {})):
            if not isinstance(mapping, Mapping):
                raise TypeError(f"{name} must be a map, not {type(mapping).__name__}")
        path = results_path(self.root, start_time, rid, class_name)
        await asyncio.get_running_loop().run_in_executor(self._writer, lambda: write_results(
            path, rid=rid, start_time=start_time, run_time=run_time, expid=expid,
            datasets=datasets, archive=archive, metadata=metadata, version=__version__,
            outcome=outcome, archive_metadata=archive_metadata))
        self.written += 1
        logger.debug("results: RID %d written to %s", rid, path)
        return str(path)


def _check_request(rid: Any, start_time: Any, class_name: Any, run_time: Any,
                   expid: Any) -> None:
    """Refuse what would name a wrong file (the class name is part of the path)."""
    if not isinstance(rid, int) or isinstance(rid, bool) or rid < 0:
        raise ValueError(f"rid must be an integer ≥ 0, not {rid!r:.50}")
    if not isinstance(start_time, (int, float)) or not math.isfinite(start_time):
        raise ValueError(f"start_time must be a finite number, not {start_time!r:.50}")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise ValueError(f"class_name must be a Python identifier, not {class_name!r:.80}")
    if run_time is not None and not isinstance(run_time, (int, float)):
        raise ValueError(f"run_time must be a number or None, not {run_time!r:.50}")
    if not isinstance(expid, dict):
        raise ValueError(f"expid must be a map, not {type(expid).__name__}")


def main(config: dict[str, Any]) -> int:
    """Run the results node in this process (forked by the zygote) until the master
    is gone; the exit code."""
    return asyncio.run(_serve(config))


async def _serve(config: dict[str, Any]) -> int:
    context = zmq.Context()
    curve = CurveClient.from_wire(config["curve"]) if config.get("curve") else None
    bus = BusConnection(context, BusAddress(**config["broker"]), curve)
    node = ResultsNode(config.get("root", "results"))
    try:
        await bus.start()
        handler = BusLogHandler(bus.client, "results")
        root_logger = logging.getLogger()
        root_logger.addHandler(handler)
        root_logger.setLevel(config.get("log_level", logging.WARNING))
        await node.start(bus)
        assert node.host is not None
        await node.host.ended.wait()  # the broker (the master) is gone
        return 0
    finally:
        await node.stop()
        await bus.stop()
        context.destroy(linger=0)
