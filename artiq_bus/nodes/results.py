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
Files are written one at a time, off the event loop; requests that arrive meanwhile
are written as one batch, whose directory entries are flushed to disk together (one
``fsync`` of a directory for the batch, not one per file) before any of them is
answered.

The worker pool starts this node in a process forked by the zygote (:func:`main`),
with the master's working directory, and starts it again if it dies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zmq

from .. import __version__
from ..files import fsync_path
from ..net import BusAddress, CurveClient
from ..protocol import Liveness
from ..runtime.bus import BusConnection
from ..runtime.logs import BusLogHandler
from ..runtime.service import ServiceHost
from ..runtime.rpc import rpc, rpc_methods
from ..worker.results import results_path, write_results

__all__ = ["ResultsNode", "RESULTS_SERVICE", "main"]

logger = logging.getLogger(__name__)

RESULTS_SERVICE = "results"


class ResultsNode:
    """Serves ``results.write``."""

    services: tuple[str, ...] = (RESULTS_SERVICE,)

    def __init__(self, root: str | Path = "results"):
        self.root = Path(root).absolute()
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "results-writer")
        self._host: ServiceHost | None = None
        self._jobs: list[_Job] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.written = 0

    async def start(self, bus: BusConnection) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="results-writer")
        # h5py may hold the GIL through one long write: judge liveness by connection
        self._host = bus.service(RESULTS_SERVICE, rpc_methods(self), reconnect=False,
                                 liveness_by=Liveness.CONNECTION)
        await self._host.start()

    async def stop(self) -> None:
        if self._host is not None:
            await self._host.stop()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        self._thread.shutdown(wait=True)

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
        content = {"rid": rid, "start_time": start_time, "run_time": run_time,
                   "expid": expid, "datasets": datasets, "archive": archive,
                   "metadata": metadata, "outcome": outcome,
                   "archive_metadata": archive_metadata}
        job = _Job(results_path(self.root, start_time, rid, class_name), content,
                   asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._wake.set()
        await job.done
        logger.debug("results: RID %d written to %s", rid, job.path)
        return str(job.path)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            jobs, self._jobs = self._jobs, []
            errors: list[Exception | None]
            try:
                errors = await loop.run_in_executor(self._thread, _write_batch, jobs)
            except Exception as exc:  # a bug here must not stop every later write
                logger.exception("results: writing %d files failed", len(jobs))
                errors = [exc for _ in jobs]
            for job, error in zip(jobs, errors):
                if job.done.done():  # its caller is gone
                    continue
                if error is None:
                    self.written += 1
                    job.done.set_result(None)
                else:
                    job.done.set_exception(error)


@dataclasses.dataclass
class _Job:
    """One file to write: where, ``write_results``'s arguments, and its outcome."""

    path: Path
    content: dict[str, Any]
    done: asyncio.Future[None]


def _write_batch(jobs: list[_Job]) -> list[Exception | None]:
    """Write every file, then flush each directory entry once (in the writer's
    thread); for each job, the error it ended with."""
    errors: list[Exception | None] = []
    written: dict[Path, list[int]] = {}
    for index, job in enumerate(jobs):
        try:
            write_results(job.path, version=__version__, sync_directory=False,
                          **job.content)
        except Exception as exc:  # noqa: BLE001 (the caller's error reply)
            errors.append(exc)
        else:
            errors.append(None)
            written.setdefault(job.path.parent, []).append(index)
    for directory, indices in written.items():
        try:
            fsync_path(directory, directory=True)
        except OSError as exc:
            for index in indices:
                errors[index] = exc
    return errors


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
