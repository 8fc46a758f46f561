"""Shared plumbing of the bus benchmarks: child processes, deadlines, the report.

Every benchmark compares a figure measured through artiq_bus with the same figure
measured on raw ZeroMQ in the same run, prints a table and, as the last line of
stdout, one JSON object with every figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import zmq

__all__ = ["Figure", "Report", "Child", "children", "recv", "arecv", "percentile",
           "MasterProcess", "QUICK", "size",
           "summarise_ns", "watchdog", "run", "SPAWN"]

SPAWN = multiprocessing.get_context("spawn")

#: ``ARTIQ_BUS_BENCH_QUICK=1``: tiny sizes, only to check that a benchmark still runs to
#: the end (tests/test_bench_smoke.py); its figures then mean nothing.
QUICK = os.environ.get("ARTIQ_BUS_BENCH_QUICK") == "1"


def size(full: int, quick: int) -> int:
    """A benchmark's count: ``full``, or ``quick`` in a :data:`QUICK` run."""
    return quick if QUICK else full

#: A child that outlives this is stopped by its own watchdog.
CHILD_LIFETIME_S = 120.0


def watchdog(seconds: float) -> None:
    """Kill this process with SIGALRM's default action after ``seconds``: a hung
    benchmark must never hang its caller."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, int(seconds)))


# -- child processes ---------------------------------------------------------------

@dataclasses.dataclass
class Child:
    """A spawned process and the parent's end of a duplex pipe to it."""

    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection

    def recv(self, timeout_s: float) -> Any:
        return recv(self.conn, timeout_s, what=self.process.name)

    def send(self, obj: Any) -> None:
        self.conn.send(obj)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask politely (``"stop"``), then terminate, then kill."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send("stop")
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2.0)
        self.conn.close()


def _child_main(target: Callable[..., None], conn: multiprocessing.connection.Connection,
                args: tuple[Any, ...]) -> None:
    watchdog(CHILD_LIFETIME_S)
    target(conn, *args)


@contextlib.contextmanager
def children() -> Iterator[Callable[..., Child]]:
    """``with children() as start: child = start(fn, *args)``; all stopped on exit.

    ``fn(conn, *args)`` runs in a spawned process; ``conn`` is its end of the pipe.
    """
    started: list[Child] = []

    def start(target: Callable[..., None], *args: Any, name: str | None = None) -> Child:
        parent, child = SPAWN.Pipe()
        process = SPAWN.Process(target=_child_main, args=(target, child, args),
                                name=name or target.__name__, daemon=True)
        process.start()
        child.close()
        started.append(Child(process, parent))
        return started[-1]

    try:
        yield start
    finally:
        for child in reversed(started):
            child.stop()


def recv(conn: multiprocessing.connection.Connection, timeout_s: float,
         what: str = "peer") -> Any:
    """The next object from a pipe, or :class:`TimeoutError` after ``timeout_s``."""
    if not conn.poll(timeout_s):
        raise TimeoutError(f"nothing from {what} within {timeout_s:g} s")
    return conn.recv()


async def arecv(conn: multiprocessing.connection.Connection, timeout_s: float) -> Any:
    """:func:`recv` without blocking the running loop."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(conn.fileno(), ready.set)
    try:
        async with asyncio.timeout(timeout_s):
            while not conn.poll():
                ready.clear()
                await ready.wait()
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv()


# -- statistics ---------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))
    return ordered[index]


def summarise_ns(samples_ns: Sequence[int]) -> dict[str, float]:
    """Median and p99 in microseconds."""
    return {"median_us": statistics.median(samples_ns) / 1e3,
            "p99_us": percentile(samples_ns, 99) / 1e3}


# -- a real master -------------------------------------------------------------------

READY_LINE = "ARTIQ master is now ready."
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the benchmark dies (its watchdog kills
    it without cleanup), so that no master outlives it."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class MasterProcess:
    """``artiq_master -q FLAGS`` in ``directory`` on free loopback ports (with an empty
    ``device_db.py`` unless there is one), started as users start it."""

    def __init__(self, directory: Path, *flags: str, timeout_s: float = 60.0):
        from artiq_bus.net import BusAddress  # noqa: PLC0415 (benchmarks import late)
        if not (directory / "device_db.py").exists():
            (directory / "device_db.py").write_text("device_db = {}\n")
        ports = [_free_port() for _ in range(3)]
        self.address = BusAddress.from_host("127.0.0.1", *ports)
        self._timeout_s = timeout_s
        self.process = subprocess.Popen(
            [sys.executable, "-m", "artiq_bus.frontend.artiq_master", "-q", *flags,
             "--port-control", str(ports[0]), "--port-notify", str(ports[1]),
             "--port-publish", str(ports[2])],
            cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until the ready line (the benchmark's watchdog bounds a silent master); the
        output is then drained on a thread so that a full pipe never stalls it."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if READY_LINE in line:
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                return
        raise RuntimeError(f"the master exited ({self.process.wait()}) before it was ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(self._timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(self._timeout_s)


# -- the report -----------------------------------------------------------------------

@dataclasses.dataclass
class Figure:
    """One figure through the bus beside the raw-ZeroMQ limit measured in the same run.

    ``higher_is_better``: throughput (target: ratio ≥ target); otherwise latency
    (target: ratio ≤ target).  ``ratio`` is always bus / raw.  With ``absolute`` the
    target applies to the figure itself (DESIGN §9 sets some in ms or runs/s), and the
    raw limit is shown for scale.
    """

    name: str
    unit: str
    bus: float
    raw: float
    target: float
    higher_is_better: bool
    absolute: bool = False

    @property
    def ratio(self) -> float:
        return self.bus / self.raw if self.raw else float("inf")

    @property
    def passed(self) -> bool:
        measured = self.bus if self.absolute else self.ratio
        if self.higher_is_better:
            return measured >= self.target
        return measured <= self.target

    @property
    def target_text(self) -> str:
        bound = "≥" if self.higher_is_better else "≤"
        if self.absolute:
            return f"{bound} {self.target:g} {self.unit}"
        return f"{bound} {self.target:g}× raw"

    def as_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "bus": self.bus, "raw": self.raw,
                "ratio": round(self.ratio, 4), "target": self.target_text,
                "pass": self.passed}


class Report:
    """Collects figures and extra facts; prints the table and the JSON line."""

    def __init__(self, benchmark: str):
        self.benchmark = benchmark
        self.figures: list[Figure] = []
        self.error: str | None = None
        self.info: dict[str, Any] = {
            "python": platform.python_version(), "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(), "cpus": os.cpu_count(),
            # Other work on the machine moves every figure; the ratios less so.
            "loadavg_1min_before": round(os.getloadavg()[0], 2)}
        self._started = time.perf_counter()

    def add(self, name: str, unit: str, bus: float, raw: float, target: float,
            higher_is_better: bool, absolute: bool = False) -> Figure:
        figure = Figure(name, unit, float(bus), float(raw), float(target), higher_is_better,
                        absolute)
        self.figures.append(figure)
        return figure

    def print(self) -> None:
        self.info["elapsed_s"] = round(time.perf_counter() - self._started, 2)
        self.info["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
        header = ("figure", "unit", "bus", "raw limit", "ratio", "target", "")
        rows = [(f.name, f.unit, _fmt(f.bus), _fmt(f.raw), f"{f.ratio:.2f}×", f.target_text,
                 "PASS" if f.passed else "FAIL") for f in self.figures]
        widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
        line = "  ".join("{:<%d}" % w if i < 2 else "{:>%d}" % w for i, w in enumerate(widths))
        print(f"\n== {self.benchmark} ==")
        for key, value in self.info.items():
            print(f"  {key}: {value}")
        print()
        print(line.format(*header))
        print(line.format(*("-" * w for w in widths)))
        for row in rows:
            print(line.format(*row))
        passed = sum(f.passed for f in self.figures)
        print(f"\n{passed}/{len(self.figures)} targets pass")
        if self.error is not None:
            print(f"ERROR: {self.error}")
        sys.stdout.flush()
        print(json.dumps({"benchmark": self.benchmark, "info": self.info,
                          "figures": {f.name: f.as_json() for f in self.figures},
                          "all_pass": self.error is None and passed == len(self.figures),
                          "error": self.error}))
        sys.stdout.flush()


def run(benchmark: str, body: Callable[[Report], None], deadline_s: float = 90.0) -> None:
    """Run ``body(report)`` under a watchdog, then print the report; an exception is
    reported (and makes the exit status 1) instead of hiding the figures."""
    watchdog(deadline_s)
    report = Report(benchmark)
    try:
        body(report)
    except Exception as exc:
        traceback.print_exc()
        report.error = f"{type(exc).__name__}: {exc}"
    report.print()
    sys.exit(0 if report.error is None else 1)


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
