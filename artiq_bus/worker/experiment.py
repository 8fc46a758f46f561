"""The stages of one run inside a worker: build, prepare, run, analyze, and the results
file (ARTIQ's rules: written after analyze, also when run() raises; not when build or
prepare fails)."""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import time
import types
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..language.core import set_watchdog_factory
from ..protocol import BusError, NoSuchService, RemoteError
from .arguments import ProcessArgumentManager
from .bus_devices import WAIT_FOREVER_S, BusCCB, BusDatasetBackend, BusScheduler
from .code_cache import cached_code, compile_text
from .compat import install_artiq_compat
from .datasets import DatasetManager
from .devices import DeviceDB, DeviceManager
from .errors import NotBuilt, ResultsDirectoryError, RunDeletedWhilePaused
from .examine import examine_file
from .results_layout import results_dir, results_path
from .tools import file_import, get_experiment

if TYPE_CHECKING:
    from .process import WorkerBus

__all__ = ["ExperimentRunner", "set_log_level"]

logger = logging.getLogger(__name__)

#: Results larger than this are written by the worker itself: one bus message carries at
#: most 1 GiB, and the results node would hold a copy.
RESULTS_BY_NODE_MAX_BYTES = 256 << 20
#: How long the results node may take to write a file before the worker writes it.
RESULTS_TIMEOUT_S = 120.0


class ExperimentRunner:
    """Runs one experiment's stages in the worker's main thread."""

    def __init__(self) -> None:
        self._home = Path.cwd()  # the master's directory: results/ is relative to it
        self._bus: WorkerBus | None = None
        self._experiment: Any = None
        self._devices: DeviceManager | None = None
        self._datasets: DatasetManager | None = None
        self._rid = -1
        self._expid: dict[str, Any] = {}
        self._start_time = 0.0
        self._run_time: float | None = None
        self._watchdogs = 0
        self._handed_over: _HandedOver | None = None
        install_artiq_compat()

    def attach(self, bus: WorkerBus) -> None:
        self._bus = bus
        set_watchdog_factory(self._watchdog)

    @contextlib.contextmanager
    def _watchdog(self, timeout_s: float) -> Iterator[None]:
        """``with watchdog(t):`` — the scheduler kills this worker if the block takes
        longer (it is enforced outside: a hung process cannot enforce its own)."""
        assert self._bus is not None
        self._watchdogs += 1
        wid = self._watchdogs
        self._bus.send("scheduler", "watchdog", self._rid, wid, float(timeout_s))
        try:
            yield
        finally:
            self._bus.send("scheduler", "watchdog", self._rid, wid, None)

    def forward_output(self, stream: str, line: str) -> None:
        """A line the experiment printed: a log record (``print`` at INFO, stderr at
        WARNING) that always shows, whatever the run's log level, as in ARTIQ."""
        assert self._bus is not None
        level = logging.INFO if stream == "print" else logging.WARNING
        record = logging.LogRecord(stream, level, "", 0, "%s", (line,), None)
        self._bus.log_handler.handle(record)

    # -- stages -----------------------------------------------------------------------

    def build(self, rid: int, pipeline_name: str, wd: str | None, expid: dict[str, Any],
              priority: int, device_db: dict[str, Any] | None = None) -> str:
        """Import and build the experiment; its class name (for the results file).
        ``device_db``: the master's, if the caller brought it (one round trip less)."""
        assert self._bus is not None
        self._rid, self._expid = rid, expid
        set_log_level(expid.get("log_level", logging.WARNING))
        self._start_time = time.time()
        file_name = os.path.basename(expid["file"]) if "file" in expid else "<none>"
        self._bus.set_source(f"worker({rid},{file_name})")
        fetching = (self._bus.start_call("devices", "get_device_db")  # while loading
                    if device_db is None else None)
        module = self._load(wd, expid)
        _enter(results_dir(self._home / "results", self._start_time))
        cls = get_experiment(module, expid.get("class_name"))
        if fetching is not None:
            device_db = fetching.result()
        assert device_db is not None
        self._devices = DeviceManager(
            DeviceDB.from_dict(device_db),
            virtual_devices={
                "scheduler": BusScheduler(self._bus, rid, pipeline_name, priority, expid),
                "ccb": BusCCB(self._bus)},
            devarg_override=expid.get("devarg_override") or {})
        self._datasets = DatasetManager(BusDatasetBackend(self._bus))
        arguments = ProcessArgumentManager(expid.get("arguments", {}), self._interactive)
        self._experiment = cls((self._devices, self._datasets, arguments, {}))
        arguments.check_unprocessed_arguments()
        return str(cls.__name__)

    def prepare(self) -> None:
        if self._experiment is None:
            raise NotBuilt("prepare() asked, but build() failed")
        self._experiment.prepare()

    def run(self) -> None:
        assert self._bus is not None
        self._run_time = time.time()
        # The hand-over is over: the pool may fork this worker's replacement now.  Not
        # earlier (not when the scheduler sends run): the fork and the new worker's
        # start, about 20 ms of CPU, would compete with the hand-over for the cores.
        self._bus.send("workers", "running", os.getpid())
        try:
            self._experiment.run()
            assert self._devices is not None
            self._devices.notify_run_end()
        except RunDeletedWhilePaused:
            raise  # deleted: no results file (ARTIQ)
        except BaseException as exc:
            self.write_results(f"error: {_describe(exc)}")
            raise

    def analyze(self) -> None:
        try:
            self._experiment.analyze()
        except BaseException as exc:
            self.write_results(f"error in analyze: {_describe(exc)}")
            raise
        # The analyze stage ends here: the results node writes the file meanwhile, and
        # this worker exits only once it is on disk (finish_results).  The next run's
        # analysis need not wait for this run's disk.
        content = self._results_content("completed")
        self._handed_over = self._hand_over(content) if content is not None else None

    def finish_results(self) -> None:
        """Until the results analyze() handed over are on disk.  A value HDF5 cannot
        hold is logged as a failure of analyze(), and the file then holds what the
        scheduler writes for a failed stage: the run without its datasets, and the
        error.  Never raises: the worker is ending."""
        handed_over, self._handed_over = self._handed_over, None
        if handed_over is None:
            return
        try:
            try:
                self._settle(handed_over)
            except (TypeError, ValueError) as exc:
                logger.error("analyze() failed:\n%s", _describe(exc))
                self._write({**handed_over.content, "datasets": {}, "archive": {},
                             "metadata": {}, "archive_metadata": {},
                             "outcome": f"error: {_describe(exc)}"})
        except Exception as exc:  # noqa: BLE001 (nobody above to tell)
            logger.error("results of RID %d not written: %s", self._rid, _describe(exc))

    def flush_datasets(self) -> None:
        """End of a stage: this stage's dataset updates reach the master (and persistent
        ones its disk) before the stage's reply."""
        if self._datasets is not None:
            sync = getattr(self._datasets.backend, "sync", None)
            if sync is not None:
                sync()

    def examine(self, file: str) -> dict[str, Any]:
        """What experiments ``file`` holds (see :mod:`.examine`); never raises for a
        broken file."""
        return examine_file(file, self._bus)

    def close(self) -> None:
        self.finish_results()
        if self._bus is not None:  # the master waits for this, then for the exit
            self._bus.send("workers", "results_on_disk", os.getpid())
        if self._devices is not None:
            self._devices.close_devices()

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _load(wd: str | None, expid: dict[str, Any]) -> types.ModuleType:
        if "file" in expid:
            path = os.path.join(wd, expid["file"]) if wd else expid["file"]
            return file_import(path, prefix="artiq_worker_")
        module = types.ModuleType("expmodule")
        exec(cached_code(expid["content"], "expcontent", compile_text), module.__dict__)
        return module

    def _interactive(self, arglist_desc: list[Any], title: str) -> dict[str, Any] | None:
        assert self._bus is not None
        return self._bus.call("scheduler", "get_interactive_arguments", self._rid,
                              arglist_desc, title, timeout_s=WAIT_FOREVER_S)

    def write_results(self, outcome: str) -> None:
        """The results file, on disk when this returns: written by the results node,
        or here when it cannot (see :mod:`artiq_bus.nodes.results`)."""
        content = self._results_content(outcome)
        if content is not None:
            self._write(content)

    def _results_content(self, outcome: str) -> dict[str, Any] | None:
        """What the results file holds; None before the experiment was built."""
        if self._experiment is None or self._datasets is None:
            return None
        datasets = self._datasets
        return dict(rid=self._rid, start_time=self._start_time,
                    class_name=type(self._experiment).__name__, run_time=self._run_time,
                    expid=self._expid, datasets=datasets.local, archive=datasets.archive,
                    metadata=datasets.metadata,
                    archive_metadata=datasets.archive_metadata, outcome=outcome)

    def _write(self, content: dict[str, Any]) -> None:
        handed_over = self._hand_over(content)
        if handed_over is not None:
            self._settle(handed_over)

    def _hand_over(self, content: dict[str, Any]) -> _HandedOver | None:
        """Send the results to the results node; None when they were written here at
        once instead (too large for one message, or a value the bus cannot carry)."""
        assert self._bus is not None
        if _payload_bytes(content) <= RESULTS_BY_NODE_MAX_BYTES:
            try:
                return _HandedOver(content, self._bus.start_call(
                    "results", "write", timeout_s=RESULTS_TIMEOUT_S, **content))
            except TypeError as exc:  # a value the bus cannot carry
                logger.warning("worker(%d): cannot send the results (%s): writing the "
                               "results file here", self._rid, exc)
        self._write_here(content)
        return None

    def _settle(self, handed_over: _HandedOver) -> None:
        """Until the node's answer; the file is then on disk, written by the node or,
        when the node could not, here.  A value HDF5 cannot hold raises here as it
        would when written here."""
        try:
            path = handed_over.reply.result()
        except RemoteError as exc:
            if exc.remote_type in ("TypeError", "ValueError"):
                raise getattr(builtins, exc.remote_type)(exc.args[0]) from None
            logger.warning("worker(%d): the results node failed (%s): writing the results "
                           "file here", self._rid, exc)
        except NoSuchService:  # not started yet, or starting again
            logger.debug("worker(%d): no results node: writing the results file here",
                         self._rid)
        except BusError as exc:
            logger.warning("worker(%d): cannot reach the results node (%s): writing the "
                           "results file here", self._rid, exc)
        else:
            logger.debug("worker(%d): results written to %s", self._rid, path)
            return
        self._write_here(handed_over.content)

    def _write_here(self, content: dict[str, Any]) -> None:
        from .results import write_results  # h5py: imported only when needed
        path = results_path(self._home / "results", self._start_time, self._rid,
                            content["class_name"])
        write_results(path, version=__version__,
                      **{key: value for key, value in content.items() if key != "class_name"})
        logger.debug("worker(%d): results written to %s", self._rid, path)


@dataclasses.dataclass
class _HandedOver:
    """Results sent to the results node, whose answer is still to come."""

    content: dict[str, Any]
    reply: concurrent.futures.Future[Any]


def _enter(directory: Path) -> None:
    """Make the run's working directory and go there; the trouble said in one line (not
    a traceback of the file system calls, which are not the experiment's)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.chdir(directory)
    except OSError as exc:
        raise ResultsDirectoryError(f"cannot use the results directory {directory}: "
                                    f"{exc.strerror or exc}") from None


def _payload_bytes(content: dict[str, Any]) -> int:
    """About how many bytes the results take on the wire (a list's items count 16
    bytes each, a scalar nothing)."""
    total = 0
    for values in (content["datasets"], content["archive"]):
        for value in values.values():
            if isinstance(value, (bytes, str)):
                total += len(value)
            elif isinstance(value, (list, tuple)):
                total += 16 * len(value)
            else:
                total += getattr(value, "nbytes", 0)
    return total


def _describe(exc: BaseException) -> str:
    """``"Type: message"``, or ``"Type"`` for an exception without a message (such as
    TerminationRequested)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def set_log_level(level: int) -> None:
    """The root logger's level; unchanged, it is left alone (``setLevel`` clears every
    logger's cache, a tenth of a millisecond in a fresh worker)."""
    root = logging.getLogger()
    if root.level != level:
        root.setLevel(level)
